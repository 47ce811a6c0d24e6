"""The launch-configuration sweep (needs a GPU to time) and the launch rules it chose (checked here)."""

from __future__ import annotations

import itertools
import subprocess
import sys

import torch

from semask_deploy.benchmarks import kernel_tuning as kt
from semask_deploy.kernels import semantic_attention as sa
from semask_deploy.kernels._triton import fp32_dot_precision


def test_sweep_without_gpu_is_a_clean_error():
    proc = subprocess.run([sys.executable, "-m", "semask_deploy.benchmarks.kernel_tuning", "--out", "unused"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_unknown_group_is_refused(capsys):
    assert kt.main(["--out", "unused", "--only", "upsample,nope"]) == 2
    assert "unknown group(s) nope" in capsys.readouterr().err


def test_semantic_row_names_are_unique_and_start_with_eager():
    names = kt.semantic_row_names()
    assert names[0] == "eager" and len(names) == len(set(names))
    assert any("classes=128+32" in n for n in names) and any("dot=tf32x3" in n for n in names)


def test_report_lists_crashes_and_speedups():
    meta = {"device": "X", "crashed_configs": {"M64 N64": "illegal memory access"}}
    cases = [{"kernel": "semantic_global", "case": "c", "dtype": "float16", "err": "max abs vs fp64",
              "rows": [{"config": "eager", "ms": 2.0, "err": 1e-3}, {"config": "M128", "ms": 1.0, "err": 2e-4},
                       {"config": "M32", "error": "OutOfResources: shared memory"}]}]
    md = kt.render_markdown(meta, cases)
    assert "`M64 N64` crashed its process: illegal memory access" in md
    assert "| M128 | 1.0000 | 2.00× | 2.00e-04 |" in md
    assert "| M32 | failed: OutOfResources: shared memory | | |" in md


def test_fp32_dots_are_ieee_off_gpu():
    assert fp32_dot_precision(torch.device("cpu")) == "ieee"


def test_class_blocks_pad_less_than_one_power_of_two():
    assert sa.class_blocks(150) == (128, 32)
    assert sa.class_blocks(171) == (128, 64)
    assert sa.class_blocks(19) == (32, 0)  # 16 + 16 saves nothing
    assert sa.class_blocks(200) == (256, 0)
    assert sa.class_blocks(150, split=False) == (256, 0)
    for k in range(1, 700):
        first, second = sa.class_blocks(k)
        assert first + second >= k and first + second <= max(16, sa.next_pow2(k))


def test_launch_rules_never_pick_the_faulting_pairing():
    """A split class block with 64-token tiles and 8 warps faulted on Triton 3.6 / H200: never chosen."""
    for n, k, c, dt, win in itertools.product((49, 144, 400, 1600, 2048, 8192, 32768), (19, 150, 171, 300),
                                              (96, 384, 768, 1536), (torch.float16, torch.bfloat16, torch.float32),
                                              (0, 7, 12)):
        cfg = sa.launch_config(n if win == 0 else win * win, k, c, dt, win, interpreted=False)
        assert not (cfg.block_k2 and cfg.block_m == 64 and cfg.num_warps == 8), cfg
        if dt == torch.float32:  # fits an A100's shared memory (the AOT test measures it)
            assert (cfg.block_m, cfg.block_n, cfg.block_c) == (32, 32, 64)
    big = sa.launch_config(8192, 150, 384, torch.float16, 0, interpreted=False)
    assert big == sa.LaunchConfig(128, 64, 128, 32, 256, 8, 2)
    assert sa.launch_config(2048, 150, 768, torch.float16, 0, interpreted=False).block_c == 128
    assert sa.launch_config(8192, 150, 384, torch.float16, 12, interpreted=False).block_m == 64  # windows: small tiles
