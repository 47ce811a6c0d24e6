"""ov_profile: OpenVINO's per-layer counters read back per layer type and kernel (tiny real graph)."""

from __future__ import annotations

import numpy as np
import pytest

from semask_deploy.benchmarks.ov_profile import layer_times, median_profile, profiled_request, summarize, to_markdown

pytest.importorskip("onnx")
pytest.importorskip("openvino")


def test_counters_split_matrix_layers_from_the_rest(tiny_matmul_onnx):
    req, names = profiled_request(tiny_matmul_onnx, 1, None)
    x = np.ones((128, 64), np.float32)
    calls = []
    for _ in range(3):
        req.infer({names[0]: x})
        calls.append(layer_times(req))
    p = median_profile([1.0, 2.0, 3.0], calls)
    assert p["wall_ms"] == 2.0
    layers = {key.split("|")[0] for key in p["layer_ms"]}
    assert "FullyConnected" in layers  # a MatMul by a constant is a FullyConnected layer in the CPU plugin
    s = summarize(p)
    assert s["matrix_ms"] > 0 and s["other_ms"] == pytest.approx(s["wall_ms"] - s["matrix_ms"])


def test_report_states_what_the_goal_needs():
    def prof(wall, fc, other):
        return {"wall_ms": wall, "layer_ms": {"FullyConnected|gemm_f32": fc, **other}}

    r = {"variant": "v", "size": [512, 512], "cpu": "Test CPU", "isa": "AVX2", "openvino": "1", "runs": 3,
         "warmup": 1, "threads": [1],
         "profiles": {"1": {"naive": prof(1200.0, 900.0, {"Reorder|ref": 20.0}),
                            "ours": prof(1100.0, 800.0, {"Reorder|ref": 40.0})}}}
    text = to_markdown(r)
    assert "| everything else | 300 ms | 300 ms |" in text
    assert "would have to take 200 ms instead of 300 ms" in text  # 1200 / 1.2 − 800
    assert "| FullyConnected (matrix) | gemm_f32 | 900.0 | 800.0 |" in text and "| Reorder | ref | 20.0 | 40.0 |" in text
    assert "1.09× the naive" in text
