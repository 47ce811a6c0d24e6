"""fp16 (mixed-precision graph pass) and int8 (QDQ) ONNX: structure, ONNX Runtime accuracy, TensorRT check.

Accuracy is measured on the small trained test model (see ``_shared.py``) on held-out synthetic scenes at two
sizes, against PyTorch fp32: fp16 ≥ 99.5 % equal labels and ≥ 99 % mIoU agreement; int8 ≥ 99 % and ≥ 97 %.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import torch  # noqa: E402
from semask_deploy.export.int8 import quantize_int8  # noqa: E402
from semask_deploy.export.precision import attention_roles, convert_fp16  # noqa: E402
from semask_deploy.export.trt_check import check_onnx_for_tensorrt  # noqa: E402

from semask_deploy.data.synthetic import SyntheticScenes  # noqa: E402
from semask_deploy.data.transforms import normalize  # noqa: E402
from semask_deploy.metrics import label_agreement, miou_between  # noqa: E402

from ._shared import small_export, small_model  # noqa: E402

SIZES = [(96, 128), (81, 121)]
F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def fp32_path(tmp_path_factory):
    return small_export(tmp_path_factory).onnx_path


@pytest.fixture(scope="module")
def reference():
    """Held-out scenes at two sizes: normalised inputs and torch fp32 labels."""
    model = small_model()
    cases = []
    for i, (h, w) in enumerate(SIZES):
        scenes = SyntheticScenes(8, size=(h, w), seed=100 + i, length=6)
        x = np.stack([normalize(scenes[j][0]) for j in range(6)])
        with torch.inference_mode():
            cases.append((x, model.predict(torch.from_numpy(x)).numpy()))
    return cases


@pytest.fixture(scope="module")
def fp16_model(fp32_path):
    return convert_fp16(onnx.load(str(fp32_path)))


@pytest.fixture(scope="module")
def int8_path(fp32_path, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("calib_cache")
    mp.setenv("SEMASK_CACHE_DIR", str(cache))
    scenes = SyntheticScenes(8, size=(96, 96), seed=1234, length=16)
    calib = [normalize(scenes[i][0])[None] for i in range(16)]
    out = tmp_path_factory.mktemp("int8") / "small_int8.onnx"
    t0 = time.perf_counter()
    info = quantize_int8(fp32_path, out, calib, progress=False)
    first = time.perf_counter() - t0
    yield out, info, calib, first
    mp.undo()


def _size(x):
    """The output_size input for labels at the input's own size."""
    return np.asarray(x.shape[2:], dtype=np.int64)


def _agreement(sess, reference):
    agree, miou = [], []
    for x, ref in reference:
        labels = np.concatenate([sess.run(["labels"], {"image": x[i:i + 1], "output_size": _size(x)})[0]
                                 for i in range(len(x))])
        agree.append(label_agreement(labels, ref))
        miou.append(miou_between(labels, ref, 8))
    return min(agree), min(miou)


def _types(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_attention_roles_of_the_small_graph(fp32_path):
    roles = attention_roles(onnx.load(str(fp32_path)))
    # 4 stages × 2 Swin blocks (window attention) + 4 semantic layers
    assert len(roles.softmax) == 12 and len(roles.window_scores) == 8 and len(roles.semantic_scores) == 4
    assert len(roles.layernorm) >= 4 * 2 * 2 + 4 + 4
    assert set(roles.semantic_scores) <= set(roles.semantic_islands)
    assert {n for n in roles.final} and not set(roles.window_scores) & set(roles.semantic_islands)


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_fp16_graph_keeps_sensitive_ops_in_fp32(fp32_path, fp16_model):
    m = fp16_model
    onnx.checker.check_model(m)
    assert not any(n.op_type == "DepthToSpace" for n in m.graph.node)  # plain convs, not the fp32 graph's Winograd
    types = _types(m)
    assert m.graph.input[0].type.tensor_type.elem_type == F32
    assert {o.name: o.type.tensor_type.elem_type for o in m.graph.output} == {
        "labels": onnx.TensorProto.INT32, "logits": F32}
    roles = attention_roles(onnx.load(str(fp32_path)))
    by_name = {n.name: n for n in m.graph.node}
    for name in roles.layernorm + roles.softmax + roles.semantic_scores:
        node = by_name[name]
        assert types[node.input[0]] == F32 and types[node.output[0]] == F32, node.name
    for name in roles.window_scores:  # window-attention scores run in fp16, only their softmax in fp32
        assert types[by_name[name].output[0]] == F16
    heavy = [n for n in m.graph.node if n.op_type in ("MatMul", "Conv")]
    half = [n for n in heavy if types.get(n.output[0]) == F16]
    assert len(half) >= 0.75 * len(heavy)
    assert sum(n.op_type == "Cast" for n in m.graph.node) > 10
    assert any(t.data_type == F16 for t in m.graph.initializer)


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_fp16_runs_in_onnxruntime_within_tolerance(fp16_model, reference, tmp_path):
    path = tmp_path / "small_fp16.onnx"
    onnx.save(fp16_model, str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    agree, miou = _agreement(sess, reference)
    assert agree >= 0.995 and miou >= 0.99, (agree, miou)
    assert check_onnx_for_tensorrt(path).ok


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_int8_qdq_structure_and_tolerance(int8_path, fp32_path, reference):
    path, info, _, _ = int8_path
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    # the fp32 source is the ONNX Runtime graph: its Winograd convs are quantized as the plain convs they stand for
    assert any(n.op_type == "DepthToSpace" for n in onnx.load(str(fp32_path)).graph.node)
    assert not any(n.op_type == "DepthToSpace" for n in m.graph.node)
    assert not list(path.parent.glob(".*plain.onnx"))  # the plain copy it quantized is gone
    q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    assert q and dq and info["qdq_nodes"] == len(q) + len(dq)
    producer = {o: n for n in m.graph.node for o in n.output}
    roles = attention_roles(onnx.load(str(fp32_path)))
    by_name = {n.name: n for n in m.graph.node}
    excluded = roles.softmax + roles.layernorm + roles.semantic_scores + roles.final + roles.classifier
    assert len(roles.classifier) == 1
    for name in excluded:  # kept float: no DequantizeLinear in front
        node = by_name[name]
        assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in node.input), name
    convs = [n for n in m.graph.node if n.op_type == "Conv" and n.name not in roles.classifier]
    assert convs and all(producer[n.input[1]].op_type == "DequantizeLinear" for n in convs)
    # the Swin Linear layers (Gemm on token matrices: most of the backbone's FLOPs) are int8 too, as MatMuls
    # with their bias Add (ONNX Runtime computes a Q/DQ MatMul in int8, a Q/DQ Gemm only fake-quantized); the
    # semantic-score projections stay float, and float_layers lists them like every other float Conv/MatMul
    fp32_gemms = [n for n in onnx.load(str(fp32_path)).graph.node if n.op_type == "Gemm"]
    assert len(fp32_gemms) >= 4 * 2 * 4 and not any(n.op_type == "Gemm" for n in m.graph.node)
    linears = [by_name[n.name] for n in fp32_gemms]
    assert all(n.op_type == "MatMul" for n in linears)
    int8_linears = [n for n in linears if producer[n.input[1]].op_type == "DequantizeLinear"]
    assert len(int8_linears) >= 4 * 2 * 4  # qkv, proj, fc1, fc2 of 4 stages × 2 blocks
    float_nodes = {layer["node"] for layer in info["float_layers"]}
    assert {n.name for n in linears} - {n.name for n in int8_linears} <= float_nodes
    # MatMul/Gemm outputs stay float (scores, residual stream); Conv outputs are quantized (int8 convs in ORT)
    consumers = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for n in m.graph.node:
        if n.op_type in ("MatMul", "Gemm"):
            assert all(c.op_type != "QuantizeLinear" for c in consumers.get(n.output[0], [])), n.name
    assert any(c.op_type == "QuantizeLinear" for n in convs for c in consumers.get(n.output[0], []))
    # symmetric int8 (TensorRT-compatible): int8 zero points, all zero, float biases
    zps = [t for t in m.graph.initializer if t.name.endswith("zero_point")]
    assert zps and all(t.data_type == onnx.TensorProto.INT8 for t in zps)
    assert all(not onnx.numpy_helper.to_array(t).any() for t in zps)
    # weights in a 7-bit range: u8×s8 pairs must not saturate int16 on CPUs without VNNI
    weights = [onnx.numpy_helper.to_array(t) for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT8
               and not t.name.endswith("zero_point")]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64
    assert "7-bit" in info["weights"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    agree, miou = _agreement(sess, reference)
    assert agree >= 0.99 and miou >= 0.97, (agree, miou)
    report = check_onnx_for_tensorrt(path)
    assert report.ok, report.format()


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_int8_calibration_cache_makes_a_rerun_fast(int8_path, fp32_path, tmp_path):
    path, info, calib, _ = int8_path
    assert not info["calibration_cache_hit"] and info["calibration_cache"]
    again = quantize_int8(fp32_path, tmp_path / "again.onnx", calib, progress=False)
    assert again["calibration_cache_hit"] and again["calibration_cache"] == info["calibration_cache"]
    assert (tmp_path / "again.onnx").read_bytes() == path.read_bytes()
    # a cache hit hands ONNX Runtime no data reader at all, so no calibration inference can have run


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_uint8_activations_run_but_are_not_for_tensorrt(fp32_path, int8_path, tmp_path):
    _, _, calib, _ = int8_path
    out = tmp_path / "u8.onnx"
    info = quantize_int8(fp32_path, out, calib[:4], activations="u8", progress=False)
    assert info["activations"] == "uint8 asymmetric"
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(["labels"], {"image": calib[0], "output_size": _size(calib[0])})[0].shape == (1, 96, 96)
    report = check_onnx_for_tensorrt(out)
    assert not report.ok and any("UINT8" in reason for _, reason, _ in report.unsupported)


def test_fp16_constants_sentinels_quietly_and_other_overflow_said():
    """Mask2Former's masked-attention fill (-finfo(float32).max) printed numpy's bare "overflow encountered in
    cast" during every fp16 export; it becomes -inf on purpose. A real value beyond fp16's range is named."""
    import warnings

    from semask_deploy.errors import SemaskWarning
    from semask_deploy.export.precision import _to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        half = _to_float16(np.array([-np.finfo(np.float32).max, 2.5], np.float32), "fill")
    assert half.dtype == np.float16 and np.isneginf(half[0]) and half[1] == 2.5
    with pytest.warns(SemaskWarning, match="constant scale holds values up to 1e"):
        assert np.isinf(_to_float16(np.array([1e6], np.float32), "scale")[0])
