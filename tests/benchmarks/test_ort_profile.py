"""ort_profile: ONNX Runtime's profiler read back per op type, with the GEMMs' multiply-adds (tiny real graph)."""

from __future__ import annotations

import numpy as np
import pytest

from semask_deploy.benchmarks.ort_profile import profiled_session, read_profile, summarize, to_markdown

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_profile_counts_op_types_and_gemm_multiply_adds(tiny_matmul_onnx, tmp_path):
    sess = profiled_session(tiny_matmul_onnx, 1, tmp_path / "trace")
    x = np.ones((128, 64), np.float32)
    for _ in range(5):
        sess.run(None, {"x": x})
    p = read_profile(sess, warmup=2)
    assert p["gemm_macs"] == 128 * 32 * 64  # output elements × inner dimension, per call
    assert "Relu" in p["op_ms"] and any(op in p["op_ms"] for op in ("MatMul", "Gemm"))
    s = summarize(p)
    assert 0 < s["matrix_ms"] <= s["wall_ms"] and s["other_ms"] == pytest.approx(s["wall_ms"] - s["matrix_ms"])
    assert s["gemm_gflops"] > 0


def test_report_states_what_the_goal_needs():
    def prof(wall, gemm, other_ops):
        return {"wall_ms": wall, "op_ms": {"Gemm": gemm, **other_ops}, "gemm_macs": gemm * 40e6}  # 80 GFLOP/s

    r = {"variant": "v", "size": [512, 512], "cpu": "Test CPU", "isa": "AVX2", "onnxruntime": "1", "runs": 3,
         "warmup": 1, "threads": [1], "peak_gflops": {"1": 100.0},
         "profiles": {"1": {"naive": prof(1200.0, 900.0, {"Transpose": 20.0}),
                            "ours": prof(1100.0, 800.0, {"Transpose": 40.0})}}}
    text = to_markdown(r)
    assert "| everything else | 300 ms | 300 ms |" in text
    assert "80 GFLOP/s (80 % of torch.mm)" in text
    assert "would have to take 200 ms instead of 300 ms" in text  # 1200 / 1.2 − 800
    assert "| Gemm (matrix) | 900.0 | 800.0 |" in text and "| Transpose | 20.0 | 40.0 |" in text


def test_script_options_are_checked_by_argparse():
    """A bad size or an unknown variant was a traceback (ValueError / KeyError) after imports and exports."""
    import argparse

    from semask_deploy.benchmarks.profile_common import hw_arg, hw_list_arg, int_list_arg, profile_parser

    assert hw_list_arg("512x512,499x667") == [(512, 512), (499, 667)] and int_list_arg("1,2") == [1, 2]
    for bad in ("64", "0x5", "axb", "64x64x3"):
        with pytest.raises(argparse.ArgumentTypeError):
            hw_arg(bad)
    with pytest.raises(SystemExit):
        profile_parser("doc", "ort_profile").parse_args(["--out", "x", "--variant", "demo"])
