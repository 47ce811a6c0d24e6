"""ort_profile: ONNX Runtime's profiler read back per op type, with the GEMMs' multiply-adds (tiny real graph)."""

from __future__ import annotations

import numpy as np
import pytest

from semask_deploy.benchmarks.ort_profile import profiled_session, read_profile, summarize, to_markdown

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _tiny(path):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), helper.make_node("Relu", ["y"], ["z"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [128, 64])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [128, 32])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_profile_counts_op_types_and_gemm_multiply_adds(tmp_path):
    _tiny(tmp_path / "m.onnx")
    sess = profiled_session(tmp_path / "m.onnx", 1, tmp_path / "trace")
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
