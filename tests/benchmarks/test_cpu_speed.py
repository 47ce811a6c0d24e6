"""The CPU speed benchmark runs end to end on a small input and reports every call."""

from __future__ import annotations

from semask_deploy.benchmarks import cpu_speed, op_profile


def test_cpu_speed_small_run_reports_every_call():
    r = cpu_speed.run(size=64, runs=1, warmup=0, threads=1, profile=False)
    assert set(r["results"]) == set(cpu_speed.CALLS)
    for res in r["results"].values():
        assert res["eager"]["median_ms"] > 0 and res["sdpa"]["median_ms"] > 0
    assert r["label_agreement"] == 1.0 and r["max_abs_logit_diff_sdpa_vs_eager"] < 1e-4
    md = cpu_speed.to_markdown(r)
    for call in cpu_speed.CALLS.values():
        assert f"`model.{call}(x)`" in md
    assert r["cpu"] in md


def test_cpu_speed_profiles_model_call_and_states_the_limit(tmp_path):
    """The command as a user runs it (in its own process: the torch profiler stays out of the test worker)."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "semask_deploy.benchmarks.cpu_speed", "--size", "64", "--runs", "1", "--threads", "1",
           "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    r = json.loads((tmp_path / "cpu_speed.json").read_text())
    prof = r["profile_forward"]
    for path in ("eager", "sdpa"):
        groups = prof[path]["groups"]
        assert groups[op_profile.GEMM] > 0 and abs(sum(groups.values()) - prof[path]["total_ms"]) < 1e-6
        assert prof[path]["top"] and all(ms > 0 for _, ms in prof[path]["top"])
    md = (tmp_path / "cpu_speed.md").read_text()
    assert "Where `model(x)` spends its time" in md and "could be at most" in md


def test_op_groups():
    assert op_profile.group_of("aten::upsample_bilinear2d") == "resize"  # not a Linear, despite the name
    assert op_profile.group_of("aten::addmm") == op_profile.GEMM
    assert op_profile.group_of("mkldnn::_linear_pointwise") == op_profile.GEMM
    assert op_profile.group_of("aten::baddbmm") == op_profile.GEMM
    assert op_profile.group_of("aten::_softmax") == "softmax"
    assert op_profile.group_of("aten::native_layer_norm") == "normalisation"
    assert op_profile.group_of("aten::constant_pad_nd").startswith("copies")
    assert op_profile.group_of("aten::argmax") == "argmax"
    assert op_profile.group_of("aten::some_new_op") == op_profile.OTHER


def test_limit_is_eager_total_over_fast_gemm_time():
    eager = {"total_ms": 1800.0, "groups": {op_profile.GEMM: 900.0, "other": 900.0}, "top": [["aten::addmm", 900.0]]}
    fast = {"total_ms": 1000.0, "groups": {op_profile.GEMM: 800.0, "other": 200.0}, "top": [["aten::addmm", 800.0]]}
    assert "at most 2.25×" in op_profile.limit_text(eager, fast)
    assert "80 %" in "\n".join(op_profile.to_markdown(eager, fast))
