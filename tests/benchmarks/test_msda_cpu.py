"""benchmarks/msda_cpu.py: level sizes, realistic inputs, and one tiny timed run that writes its JSON."""

from __future__ import annotations

import json

import torch

from semask_deploy.benchmarks import msda_cpu


def test_levels_and_inputs():
    assert msda_cpu.mask2former_levels(640, 640) == [(20, 20), (40, 40), (80, 80)]
    assert msda_cpu.mask2former_levels(1024, 2048) == [(32, 64), (64, 128), (128, 256)]
    value, shapes, starts, loc, aw = msda_cpu.make_inputs([(3, 5), (6, 10)], heads=2, points=3, dim=4)
    assert value.shape == (1, 75, 2, 4) and loc.shape == (1, 75, 2, 2, 3, 2) and aw.shape == (1, 75, 2, 2, 3)
    assert starts.tolist() == [0, 15] and shapes.tolist() == [[3, 5], [6, 10]]
    torch.testing.assert_close(aw.sum((-2, -1)), torch.ones(1, 75, 2))
    outside = ((loc < 0) | (loc > 1)).any(-1).float().mean().item()
    assert 0.01 < outside < 0.9  # some points leave the level, most do not


def test_tiny_run_writes_json(tmp_path):
    r = msda_cpu.run_msda_cpu_bench([(2, 3), (4, 6)], runs=2, warmup=0)
    assert set(r["results"]) == {"official_grid_sample", "fast_cpu"} and r["max_abs_diff"] < 1e-5
    assert len(r["results"]["fast_cpu"]["times_ms"]) == 2 and r["speedup_p50"] > 0
    out = tmp_path / "m.json"
    assert msda_cpu.main(["--res", "640x640", "--runs", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["queries"] == 8400 and data["max_abs_diff"] < 1e-4
    assert not list(tmp_path.glob("*.tmp"))
