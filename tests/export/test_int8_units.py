"""int8 parts that need no exported model: Linear layers as MatMuls, nearly constant tensors, the speed note."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from onnxruntime.quantization.calibrate import HistogramCollector  # noqa: E402

from semask_deploy.errors import ConfigError  # noqa: E402
from semask_deploy.export import int8  # noqa: E402
from semask_deploy.export import pipeline  # noqa: E402
from semask_deploy.runtime import cpu_info  # noqa: E402


def _collector():
    return HistogramCollector("percentile", symmetric=True, num_bins=2048, num_quantized_bins=128,
                              percentile=99.999, scenario="same")


def _near_uniform_softmax():
    """What an almost uniform softmax over 256 keys gives: every value 1/256 ± 3e-7 (float32)."""
    rng = np.random.default_rng(0)
    return (np.float32(1 / 256) + rng.uniform(-3e-7, 3e-7, 524288)).astype(np.float32)


def test_onnxruntime_alone_fails_on_a_nearly_constant_tensor():
    """The failure the workaround exists for (if ONNX Runtime fixes it, the workaround can go)."""
    with pytest.raises(ValueError, match="bins"):
        _collector().collect({"probs": _near_uniform_softmax()})


def test_nearly_constant_tensor_gets_a_histogram_from_zero():
    c = _collector()
    probs = _near_uniform_softmax()
    wide = np.random.default_rng(1).standard_normal(4096).astype(np.float32)
    with int8._tolerant_abs_histograms():
        c.collect({"wide": wide, "probs": probs})
        c.collect({"wide": wide * 2, "probs": probs})  # a second batch merges into the first histogram
    hist, edges, lo, hi = c.histogram_dict["probs"]
    assert hist.sum() == 2 * probs.size and edges[0] == 0 and edges.dtype == np.float32
    assert lo == probs.min() and hi == probs.max()
    threshold = c.compute_percentile()["probs"][1]
    assert abs(float(threshold) - 1 / 256) < 1e-5
    # every other tensor is binned exactly as ONNX Runtime does it
    stock = _collector()
    stock.collect({"wide": wide})
    stock.collect({"wide": wide * 2})
    np.testing.assert_array_equal(c.histogram_dict["wide"][0], stock.histogram_dict["wide"][0])
    np.testing.assert_array_equal(c.histogram_dict["wide"][1], stock.histogram_dict["wide"][1])
    # and the stock method is back afterwards
    with pytest.raises(ValueError, match="bins"):
        _collector().collect({"probs": probs})


def test_int8_dot_product_flags(monkeypatch):
    for flags, want in ((("avx2", "fma"), False), (("avx2", "avx512f", "avx512_vnni"), True),
                        (("avx2", "avx_vnni"), True), (("amx_int8",), True)):
        monkeypatch.setattr(cpu_info, "cpu_flags", lambda f=flags: frozenset(f))
        assert cpu_info.int8_dot_product() is want


class _Steps:
    def __init__(self):
        self.lines = []

    def info(self, text):
        self.lines.append(text)


def test_int8_export_says_when_this_cpu_has_no_int8_dot_products(monkeypatch):
    monkeypatch.setattr(cpu_info, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    steps = _Steps()
    pipeline._note_int8_speed(steps)
    assert len(steps.lines) == 1 and "no int8 dot-product" in steps.lines[0] and "VNNI" in steps.lines[0]
    monkeypatch.setattr(cpu_info, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_vnni"}))
    steps = _Steps()
    pipeline._note_int8_speed(steps)
    assert steps.lines == []


def test_gemms_become_matmuls_with_the_same_results():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4)).astype(np.float32)     # (out, in): a torch Linear, transB=1
    b = rng.standard_normal(6).astype(np.float32)
    v = rng.standard_normal((6, 3)).astype(np.float32)     # (in, out), transB=0, no bias
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"), (v, "v"))]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y1"], name="fc1", transB=1),
             helper.make_node("Gemm", ["x", "w", "b"], ["y2"], name="fc2", transB=1),   # shares fc1's weight
             helper.make_node("Gemm", ["y1", "v"], ["y3"], name="fc3"),
             helper.make_node("Gemm", ["y2", "v"], ["y4"], name="scaled", alpha=0.5)]  # not rewritten
    nodes[0].metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'mlp.fc1']")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["n", 3]) for o in ("y3", "y4")],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((5, 4)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})

    want = run(model)
    assert int8.gemms_as_matmuls(model) == 3
    onnx.checker.check_model(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    assert ops == {"fc1": "MatMul", "fc1/bias": "Sum", "fc2": "MatMul", "fc2/bias": "Sum", "fc3": "MatMul",
                   "scaled": "Gemm"}
    fc1 = next(n for n in model.graph.node if n.name == "fc1")
    assert fc1.metadata_props[0].value == "['', 'mlp.fc1']" and fc1.input[1] == "w_kn"
    names = [t.name for t in model.graph.initializer]
    assert names.count("w_kn") == 1 and "w" not in names  # one transposed copy for both users replaces it
    for got, ref in zip(run(model), want):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_onnxruntime_keeps_the_rewritten_linear_layers_as_int8_matmuls(tmp_path):
    """A Q/DQ MatMul + bias must reach ONNX Runtime's int8 kernel, not be folded back into a float Gemm."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")])
    fp32 = tmp_path / "fc.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
    calib = [rng.standard_normal((8, 16)).astype(np.float32) for _ in range(4)]
    int8.quantize_int8(fp32, tmp_path / "fc_int8.onnx", calib, use_cache=False, progress=False)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "fc_int8.onnx"), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert "MatMulIntegerToFloat" in ops and "Gemm" not in ops and "MatMul" not in ops


def _tiny_fc(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
        [numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")])
    fp32 = tmp_path / "fc.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
    return fp32, [rng.standard_normal((8, 16)).astype(np.float32) for _ in range(4)]


def test_a_damaged_calibration_cache_file_is_recomputed(tmp_path, monkeypatch):
    """A truncated cache file used to fail every later int8 export ("int8 quantization failed: Unterminated
    string …") until the user found and deleted it."""
    monkeypatch.setenv("SEMASK_CACHE_DIR", str(tmp_path / "cache"))
    fp32, calib = _tiny_fc(tmp_path)
    first = int8.quantize_int8(fp32, tmp_path / "a.onnx", calib, progress=False)
    cache = Path(first["calibration_cache"])
    assert cache.is_file() and not first["calibration_cache_hit"]
    good = cache.read_text()
    cache.write_text(good[: len(good) // 2])  # truncated
    again = int8.quantize_int8(fp32, tmp_path / "b.onnx", calib, progress=False)
    assert not again["calibration_cache_hit"] and cache.read_text() == good  # recomputed and replaced
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_an_unusable_cache_folder_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("SEMASK_CACHE_DIR", str(blocker / "cache"))
    fp32, calib = _tiny_fc(tmp_path)
    with pytest.raises(ConfigError, match="SEMASK_CACHE_DIR"):
        int8.quantize_int8(fp32, tmp_path / "a.onnx", calib, progress=False)
    assert not (tmp_path / "a.onnx").exists()


def _one_conv(path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 64, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 64, 64])
    w = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))
    return path


def _input_threshold(path: Path) -> float:
    from onnx import load, numpy_helper

    q = load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    node = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    return float(inits[node.input[1]]) * 127


def test_entropy_calibration_clips_unlike_minmax(tmp_path, monkeypatch):
    """KL-entropy ranges are searched over a histogram: on Gaussian data they clip the tails (TensorRT's
    algorithm: about 0.85 of max|x| here), where ONNX Runtime's default 128-bin entropy returned max|x|."""
    monkeypatch.setenv("SEMASK_CACHE_DIR", str(tmp_path / "cache"))
    fp32 = _one_conv(tmp_path / "conv.onnx")
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((1, 1, 64, 64)).astype(np.float32) for _ in range(8)]
    amax = max(float(np.abs(b).max()) for b in batches)
    out = {}
    for method in ("minmax", "entropy"):
        int8.quantize_int8(fp32, tmp_path / f"{method}.onnx", batches, calibration=method, progress=False)
        out[method] = _input_threshold(tmp_path / f"{method}.onnx")
    assert out["minmax"] == pytest.approx(amax, rel=1e-5)
    assert 0.7 * amax < out["entropy"] < 0.92 * amax
    # the histogram settings are part of the cache key: a rerun hits its own cache, not an older entropy run's
    again = int8.quantize_int8(fp32, tmp_path / "again.onnx", batches, calibration="entropy", progress=False)
    assert again["calibration_cache_hit"] and _input_threshold(tmp_path / "again.onnx") == out["entropy"]


def test_onnxruntime_without_a_calibration_cache_still_quantizes(tmp_path, monkeypatch):
    """quantize_static has no calibration_cache_path before ONNX Runtime 1.27 (pyproject allows >= 1.18, and
    Python 3.10 gets nothing newer): int8 export then calibrates every time instead of failing."""
    from onnx import TensorProto, helper, numpy_helper, save
    from onnxruntime import quantization as q

    monkeypatch.setenv("SEMASK_CACHE_DIR", str(tmp_path / "cache"))
    real = q.quantize_static

    def quantize_static(model_input, model_output, calibration_data_reader, quant_format=q.QuantFormat.QDQ,
                        op_types_to_quantize=None, per_channel=False, reduce_range=False,
                        activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8, nodes_to_quantize=None,
                        nodes_to_exclude=None, use_external_data_format=False,
                        calibrate_method=q.CalibrationMethod.MinMax, calibration_providers=None,
                        extra_options=None):  # ONNX Runtime 1.22's signature
        kwargs = dict(locals())
        kwargs.pop("real", None)  # the closure variable
        return real(**kwargs)

    monkeypatch.setattr(q, "quantize_static", quantize_static)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    w = numpy_helper.from_array(np.ones((3, 2, 1, 1), np.float32), "w")
    model = helper.make_model(helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], "g",
                                                [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(tmp_path / "m.onnx"))
    inputs = [np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)]
    info = int8.quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", inputs, progress=False)
    assert info["qdq_nodes"] > 0 and info["calibration_cache"] is None and not info["calibration_cache_hit"]


def test_a_calibration_cache_that_cannot_be_written_does_not_fail_the_export(tmp_path, monkeypatch):
    """A full disk under SEMASK_CACHE_DIR (by default ~/.cache) failed every int8 export with "int8 quantization
    failed: [Errno 28]": the cache is only an optimisation, so the export warns and calibrates without it."""
    import errno

    from onnxruntime import quantization as q

    from semask_deploy.errors import SemaskWarning

    monkeypatch.setenv("SEMASK_CACHE_DIR", str(tmp_path / "cache"))
    real, calls = q.quantize_static, []

    def cache_write_fails(model_input, model_output, calibration_data_reader, *, calibration_cache_path=None,
                          **kwargs):
        calls.append(calibration_cache_path)
        if calibration_cache_path:
            while calibration_data_reader.get_next() is not None:  # the calibration runs, then writing its ranges fails
                pass
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(model_input, model_output, calibration_data_reader, **kwargs)

    monkeypatch.setattr(q, "quantize_static", cache_write_fails)
    fp32 = _one_conv(tmp_path / "conv.onnx")
    batches = [np.random.default_rng(0).standard_normal((1, 1, 64, 64)).astype(np.float32) for _ in range(2)]
    with pytest.warns(SemaskWarning, match="calibration cache cannot be written.*No space left.*calibrating again"):
        info = int8.quantize_int8(fp32, tmp_path / "q.onnx", batches, progress=False)
    assert info["qdq_nodes"] > 0 and len(calls) == 2 and calls[1] is None
    assert not list((tmp_path / "cache").glob("*.json")) and not list((tmp_path / "cache").glob(".*"))
