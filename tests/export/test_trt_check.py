"""Offline TensorRT ONNX-parser compatibility check (no TensorRT needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from semask_deploy.errors import ExportError  # noqa: E402
from semask_deploy.export.trt_check import TRT_OPS_PATH, check_onnx_for_tensorrt, load_trt_ops  # noqa: E402

OPSET = 17


def _model(nodes, inputs, outputs, initializers=(), opset=OPSET, functions=(), extra_opsets=()):
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions))


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _reasons(report, op):
    return [reason for o, reason, _ in report.unsupported if o == op]


def test_json_table_sanity():
    table = json.loads(TRT_OPS_PATH.read_text())
    assert table["source"].startswith("onnx-tensorrt")
    assert table["tensorrt_version"]
    assert table["opset_min"] <= 17 <= table["opset_max"]
    ops = table["ops"]
    assert len(ops) >= 100
    needed = ["Conv", "MatMul", "Softmax", "LayerNormalization", "Resize", "QuantizeLinear", "DequantizeLinear",
              "Einsum", "Add", "Gemm", "Transpose", "Reshape", "Erf", "ArgMax", "Cast", "Pad", "Where", "Gelu"]
    for op in needed:
        assert ops[op]["supported"], op
        assert ops[op]["dtypes"], op
    known = set(table["data_types"])
    for name, entry in ops.items():
        assert set(entry) == {"supported", "dtypes", "notes"}, name
        assert set(entry["dtypes"]) <= known, name
        assert entry["supported"] or not entry["dtypes"], name
    assert "INT8" in ops["DequantizeLinear"]["dtypes"]
    assert ops["QLinearConv"]["supported"] is False
    assert load_trt_ops() == table


def test_supported_graph_ok():
    w = numpy_helper.from_array(np.random.rand(4, 3, 3, 3).astype(np.float32), "w")
    s = numpy_helper.from_array(np.ones(4, np.float32), "s")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    sizes = numpy_helper.from_array(np.array([1, 4, 16, 16], np.int64), "sizes")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["t", "s", "b"], ["ln"], axis=-1),
        helper.make_node("Softmax", ["ln"], ["sm"], axis=-1),
        helper.make_node("Transpose", ["sm"], ["u"], perm=[0, 3, 1, 2]),
        helper.make_node("Resize", ["u", "", "", "sizes"], ["r"], mode="linear",
                         coordinate_transformation_mode="half_pixel"),
        helper.make_node("ArgMax", ["r"], ["am"], axis=1, keepdims=0),
        helper.make_node("Cast", ["am"], ["labels"], to=TensorProto.INT32),
    ]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, [1, 3, 8, 8])], [_vi("labels", TensorProto.INT32, None)],
                   [w, s, b, sizes])
    report = check_onnx_for_tensorrt(model)
    assert report.ok, report.format()
    assert report.op_counts["Transpose"] == 2
    assert report.num_nodes == len(nodes)
    d = report.to_dict()
    assert d["ok"] and d["unsupported"] == [] and json.dumps(d)
    assert "OK" in report.format()


def test_custom_domain_and_unlisted_ops_reported(tmp_path):
    nodes = [
        helper.make_node("BiasGelu", ["x", "bias"], ["y"], domain="com.microsoft", name="bg"),
        helper.make_node("ConvInteger", ["xi", "wi"], ["z"], name="ci"),  # listed as N
        helper.make_node("Det", ["m"], ["d"], name="det"),  # listed as N
        helper.make_node("BitwiseAnd", ["i1", "i2"], ["ba"], name="band"),
    ]
    inputs = [_vi("x", TensorProto.FLOAT, [2, 4]), _vi("bias", TensorProto.FLOAT, [4]),
              _vi("xi", TensorProto.INT8, [1, 1, 4, 4]), _vi("wi", TensorProto.INT8, [1, 1, 3, 3]),
              _vi("m", TensorProto.FLOAT, [3, 3]), _vi("i1", TensorProto.INT32, [2]), _vi("i2", TensorProto.INT32, [2])]
    outputs = [_vi(n, TensorProto.FLOAT, None) for n in ("y", "d")] + [_vi("z", TensorProto.INT32, None),
                                                                       _vi("ba", TensorProto.INT32, None)]
    model = _model(nodes, inputs, outputs, extra_opsets=[("com.microsoft", 1)], opset=18)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    report = check_onnx_for_tensorrt(path)
    assert not report.ok
    ops = {op: names for op, _, names in report.unsupported}
    assert ops["com.microsoft::BiasGelu"] == ["bg"]
    assert ops["ConvInteger"] == ["ci"] and ops["Det"] == ["det"] and ops["BitwiseAnd"] == ["band"]
    assert "plugin" in _reasons(report, "com.microsoft::BiasGelu")[0]
    text = report.format()
    assert "UNSUPPORTED com.microsoft::BiasGelu" in text and "ConvInteger" in text


def test_op_absent_from_list_is_unsupported():
    model = _model([helper.make_node("ImageDecoder", ["enc"], ["img"], name="dec")],
                   [_vi("enc", TensorProto.UINT8, [100])], [_vi("img", TensorProto.UINT8, None)], opset=20)
    table = {"tensorrt_version": "x", "opset_min": 9, "opset_max": 24, "ops": {"Add": {"supported": True, "dtypes": ["FP32"], "notes": ""}}}
    report = check_onnx_for_tensorrt(model, ops_table=table)
    assert [op for op, _, _ in report.unsupported] == ["ImageDecoder"]
    assert "not in the TensorRT" in report.unsupported[0][1]


def test_dtype_violation_reported():
    nodes = [
        helper.make_node("MatMul", ["a", "b"], ["c"], name="mm_int"),  # MatMul: FP32/FP16/BF16 only
        helper.make_node("Add", ["p", "q"], ["r"], name="add_i16"),  # INT16: no TensorRT type
        helper.make_node("Transpose", ["img"], ["img_t"], name="tr_u8", perm=[0, 3, 1, 2]),  # UINT8 only for Cast
        helper.make_node("Cast", ["img_t"], ["img_f"], to=TensorProto.FLOAT, name="cast_ok"),
        helper.make_node("Add", ["i", "j"], ["k"], name="add_i64"),  # INT64 fine
    ]
    inputs = [_vi("a", TensorProto.INT32, [2, 2]), _vi("b", TensorProto.INT32, [2, 2]),
              _vi("p", TensorProto.INT16, [2]), _vi("q", TensorProto.INT16, [2]),
              _vi("img", TensorProto.UINT8, [1, 8, 8, 3]),
              _vi("i", TensorProto.INT64, [2]), _vi("j", TensorProto.INT64, [2])]
    outputs = [_vi("c", TensorProto.INT32, None), _vi("r", TensorProto.INT16, None),
               _vi("img_f", TensorProto.FLOAT, None), _vi("k", TensorProto.INT64, None)]
    report = check_onnx_for_tensorrt(_model(nodes, inputs, outputs))
    bad = {(op, tuple(names)) for op, _, names in report.unsupported}
    assert ("MatMul", ("mm_int",)) in bad
    assert ("Add", ("add_i16",)) in bad
    assert ("Transpose", ("tr_u8",)) in bad
    assert not any("cast_ok" in names or "add_i64" in names for _, _, names in report.unsupported)
    assert any("INT32 tensors are not supported" in r for r in _reasons(report, "MatMul"))


def test_double_is_a_warning_not_an_error():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", TensorProto.DOUBLE, [2])],
                   [_vi("y", TensorProto.DOUBLE, None)])
    report = check_onnx_for_tensorrt(model)
    assert report.ok and any("DOUBLE" in w for w in report.warnings)


def _qdq_model(zero_point=0, zp_type=TensorProto.INT8, scale=(0.02,), axis=None):
    scale_arr = np.array(scale, np.float32).reshape(() if len(scale) == 1 and axis is None else (len(scale),))
    zp_np = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8}[zp_type]
    zp_arr = np.full(scale_arr.shape, zero_point, zp_np)
    w = np.random.randint(-127, 127, size=(4, 3, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(scale_arr, "x_scale"), numpy_helper.from_array(zp_arr, "x_zp"),
        numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
    ]
    qattrs = {"axis": axis} if axis is not None else {}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="q_x", **qattrs),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xdq"], name="dq_x", **qattrs),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=0),
        helper.make_node("Conv", ["xdq", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    return _model(nodes, [_vi("x", TensorProto.FLOAT, [1, 3, 8, 8])], [_vi("y", TensorProto.FLOAT, None)], inits)


def test_qdq_symmetric_int8_ok():
    report = check_onnx_for_tensorrt(_qdq_model())  # per-tensor activation, per-channel int8 weight (dq_w)
    assert report.ok, report.format()
    assert report.op_counts["DequantizeLinear"] == 2


def test_per_channel_qdq_only_for_weights():
    # TensorRT: per-channel scales are for weights only; an activation must be quantized per-tensor
    per_channel = check_onnx_for_tensorrt(_qdq_model(scale=(0.1, 0.2, 0.3), axis=1))
    assert not per_channel.ok
    bad = {(op, tuple(names)) for op, _, names in per_channel.unsupported}
    assert ("QuantizeLinear", ("q_x",)) in bad and ("DequantizeLinear", ("dq_x",)) in bad
    assert not any("dq_w" in names for _, _, names in per_channel.unsupported)  # the int8 weight stays fine
    assert any("weights only" in r for r in _reasons(per_channel, "QuantizeLinear"))
    # a float weight quantized per channel through Q -> DQ is a weight, too
    inits = [numpy_helper.from_array(np.random.rand(4, 3, 3, 3).astype(np.float32), "w_f"),
             numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_s"),
             numpy_helper.from_array(np.zeros(4, np.int8), "w_z")]
    nodes = [helper.make_node("QuantizeLinear", ["w_f", "w_s", "w_z"], ["w_q"], axis=0, name="q_w"),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=0, name="dq_w"),
             helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, [1, 3, 8, 8])], [_vi("y", TensorProto.FLOAT, None)], inits)
    assert check_onnx_for_tensorrt(model).ok


def test_qdq_without_zero_point_is_int8():
    # ONNX infers UINT8 for a QuantizeLinear without a zero point; the TensorRT parser makes it INT8
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s"], ["y"], name="dq")]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, [1, 4])], [_vi("y", TensorProto.FLOAT, None)], inits)
    report = check_onnx_for_tensorrt(model)
    assert report.ok, report.format()
    # an explicit uint8 zero point is still UINT8, and refused
    zp = numpy_helper.from_array(np.array(0, np.uint8), "zp")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["y"], name="dq")]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, [1, 4])], [_vi("y", TensorProto.FLOAT, None)], inits + [zp])
    assert any("UINT8" in r for r in _reasons(check_onnx_for_tensorrt(model), "QuantizeLinear"))


@pytest.mark.parametrize("qtype, ok", [(TensorProto.FLOAT8E4M3FN, True), (TensorProto.INT4, True),
                                       (TensorProto.INT8, False)])
def test_block_quantization(qtype, ok):
    # weight (4, 8) quantized in blocks of 4 along axis 1: scale (4, 2)
    zp_np = {TensorProto.INT8: np.int8}.get(qtype)
    zp = (numpy_helper.from_array(np.zeros((4, 2), zp_np), "zp") if zp_np is not None
          else helper.make_tensor("zp", qtype, [4, 2], [0] * 8))
    inits = [numpy_helper.from_array(np.random.rand(4, 8).astype(np.float32), "w_f"),
             numpy_helper.from_array(np.full((4, 2), 0.01, np.float32), "w_s"), zp]
    nodes = [helper.make_node("QuantizeLinear", ["w_f", "w_s", "zp"], ["w_q"], axis=1, block_size=4, name="q_w"),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "zp"], ["w"], axis=1, block_size=4, name="dq_w"),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, [2, 4])], [_vi("y", TensorProto.FLOAT, None)], inits, opset=21)
    report = check_onnx_for_tensorrt(model)
    assert report.ok is ok, report.format()
    if not ok:
        assert any("block quantization" in r for r in _reasons(report, "DequantizeLinear"))


def test_deform_conv_supported_through_the_plugin():
    inits = [numpy_helper.from_array(np.random.rand(4, 3, 3, 3).astype(np.float32), "w")]
    nodes = [helper.make_node("DeformConv", ["x", "w", "offset", "", "mask"], ["y"], name="dcn",
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    inputs = [_vi("x", TensorProto.FLOAT, [1, 3, 8, 8]), _vi("offset", TensorProto.FLOAT, [1, 18, 8, 8]),
              _vi("mask", TensorProto.FLOAT, [1, 9, 8, 8])]
    report = check_onnx_for_tensorrt(_model(nodes, inputs, [_vi("y", TensorProto.FLOAT, None)], inits, opset=19))
    assert report.ok, report.format()
    assert any("ModulatedDeformConv2d" in w and "init_libnvinfer_plugins" in w for w in report.warnings)


def test_qdq_constraints_reported():
    nonzero = check_onnx_for_tensorrt(_qdq_model(zero_point=3))
    assert any("non-zero zero point" in r for r in _reasons(nonzero, "QuantizeLinear"))
    uint8 = check_onnx_for_tensorrt(_qdq_model(zero_point=128, zp_type=TensorProto.UINT8))
    assert any("UINT8" in r for r in _reasons(uint8, "QuantizeLinear"))
    assert any("UINT8" in r for r in _reasons(uint8, "DequantizeLinear"))
    negative = check_onnx_for_tensorrt(_qdq_model(scale=(-0.5,)))
    assert any("positive" in r for r in _reasons(negative, "QuantizeLinear"))


def test_int8_constant_feeding_dq_is_a_weight():
    nodes = [
        helper.make_node("Constant", [], ["wq"], value=numpy_helper.from_array(np.ones((2, 2), np.int8), "c")),
        helper.make_node("DequantizeLinear", ["wq", "s"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s")]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, [2, 2])], [_vi("y", TensorProto.FLOAT, None)], inits)
    assert check_onnx_for_tensorrt(model).ok


def test_attribute_restrictions():
    s = numpy_helper.from_array(np.ones(4, np.float32), "s")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["r"], name="cubic", mode="cubic"),
        helper.make_node("LayerNormalization", ["x", "s"], ["ln", "mean"], name="ln2", axis=-1),
        helper.make_node("Identity", ["mean"], ["mean_out"]),
    ]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, [1, 4, 4, 4])],
                   [_vi("r", TensorProto.FLOAT, None), _vi("ln", TensorProto.FLOAT, None),
                    _vi("mean_out", TensorProto.FLOAT, None)], [s, scales])
    report = check_onnx_for_tensorrt(model)
    assert any("cubic" in r for r in _reasons(report, "Resize"))
    assert any("first output" in r for r in _reasons(report, "LayerNormalization"))


def test_constant_inputs_ranks_and_limits_the_parser_needs():
    """The table's notes: Reduce axes / CumSum axis constants, TopK K < 3840, 4-D GridSample, Resize axes iota
    with scales; and Identity's data type (its type parameter is V from opset 16)."""
    x = _vi("x", TensorProto.FLOAT, [1, 4, 8, 8])
    inits = [numpy_helper.from_array(np.array([1], np.int64), "ax"), numpy_helper.from_array(np.array([5000], np.int64), "k"),
             numpy_helper.from_array(np.array([3], np.int64), "k3"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc"),
             numpy_helper.from_array(np.zeros((1, 2, 2, 2, 3), np.float32), "grid5")]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "ax", "k3"], ["dyn_axes"]),  # axes computed in the graph
        helper.make_node("ReduceSum", ["x", "dyn_axes"], ["rs"], name="rs_dyn"),
        helper.make_node("ReduceSum", ["x", "ax"], ["rs_ok"], name="rs_const"),
        helper.make_node("CumSum", ["x", "dyn_axes"], ["cs"], name="cs_dyn"),
        helper.make_node("TopK", ["x", "k"], ["tv", "ti"], name="topk_big"),
        helper.make_node("TopK", ["x", "k3"], ["tv3", "ti3"], name="topk_ok"),
        helper.make_node("Resize", ["x", "", "sc"], ["rz"], name="rz_axes", mode="linear", axes=[3, 2]),
        helper.make_node("Unsqueeze", ["x", "ax"], ["x5"]),
        helper.make_node("GridSample", ["x5", "grid5"], ["gs"], name="gs5"),
        helper.make_node("Cast", ["x"], ["u16"], to=TensorProto.UINT16),
        helper.make_node("Identity", ["u16"], ["u16_id"], name="id_u16"),
    ]
    outs = [_vi(n, TensorProto.FLOAT, None) for n in ("rs", "rs_ok", "cs", "tv", "tv3", "rz", "gs")]
    report = check_onnx_for_tensorrt(_model(nodes, [x], outs + [_vi("u16_id", TensorProto.UINT16, None)], inits,
                                            opset=20))
    where = {name: reason for _, reason, names in report.unsupported for name in names}
    flagged = " | ".join(f"{k}: {v}" for k, v in where.items())
    assert any("rs_dyn" in k and "constant" in v for k, v in where.items()), flagged
    assert any("cs_dyn" in k and "`axis`" in v for k, v in where.items()), flagged
    assert any("topk_big" in k and "3840" in v for k, v in where.items()), flagged
    assert any("rz_axes" in k and "axes" in v for k, v in where.items()), flagged
    assert any("gs5" in k and "4-D" in v for k, v in where.items()), flagged
    assert any("id_u16" in k and "UINT16" in v for k, v in where.items()), flagged
    assert not any(k.endswith(("rs_const", "topk_ok")) or "rs_const" in k or "topk_ok" in k for k in where), flagged


def test_subgraphs_and_functions_walked():
    then_g = helper.make_graph([helper.make_node("Hardmax", ["x"], ["t"], name="in_then")], "then", [],
                               [_vi("t", TensorProto.FLOAT, [2])])
    else_g = helper.make_graph([helper.make_node("Det", ["m"], ["e"], name="in_else")], "else", [],
                               [_vi("e", TensorProto.FLOAT, [])])
    fn = helper.make_function("local", "MyFn", ["a"], ["b"],
                              [helper.make_node("Unique", ["a"], ["b"], name="uniq")],
                              [helper.make_opsetid("", OPSET)])
    nodes = [
        helper.make_node("If", ["cond"], ["o"], name="if0", then_branch=then_g, else_branch=else_g),
        helper.make_node("MyFn", ["x"], ["f"], domain="local", name="call"),
    ]
    inputs = [_vi("cond", TensorProto.BOOL, []), _vi("x", TensorProto.FLOAT, [2]), _vi("m", TensorProto.FLOAT, [2, 2])]
    outputs = [_vi("o", TensorProto.FLOAT, None), _vi("f", TensorProto.FLOAT, None)]
    model = _model(nodes, inputs, outputs, functions=[fn], extra_opsets=[("local", 1)])
    report = check_onnx_for_tensorrt(model)
    ops = {op: names for op, _, names in report.unsupported}
    assert "Det" in ops and ops["Det"][0].startswith("if0/else_branch/")
    assert "Unique" in ops  # from the inlined function body
    assert "local::MyFn" not in ops
    assert "Hardmax" not in ops  # supported in the 10.x list


def test_opset_out_of_range_and_missing_file(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", TensorProto.FLOAT, [2])],
                   [_vi("y", TensorProto.FLOAT, None)], opset=7)
    report = check_onnx_for_tensorrt(model)
    assert _reasons(report, "opset")
    with pytest.raises(ExportError, match="not found"):
        check_onnx_for_tensorrt(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not onnx\xff" * 10)
    with pytest.raises(ExportError):
        check_onnx_for_tensorrt(tmp_path / "junk.onnx")


def test_a_json_file_and_missing_external_data_are_clear_errors(tmp_path):
    """A sidecar passed by mistake: onnx picked its JSON parser from the suffix and printed a two-line protobuf
    error. A model whose external weights file is missing passed the check although TensorRT cannot parse it."""
    (tmp_path / "model.json").write_text(json.dumps({"format": "semask-deploy", "inputs": []}))
    with pytest.raises(ExportError, match=r"cannot read ONNX file .*model.json.*is it an .onnx model") as info:
        check_onnx_for_tensorrt(tmp_path / "model.json")
    assert "\n" not in str(info.value)
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", TensorProto.FLOAT, [1, 64])],
                   [_vi("y", TensorProto.FLOAT, [1, 64])], initializers=[w])
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.data",
              size_threshold=0)
    assert check_onnx_for_tensorrt(tmp_path / "ext.onnx").ok
    (tmp_path / "ext.data").unlink()
    with pytest.raises(ExportError, match="external data files that are not beside it: ext.data"):
        check_onnx_for_tensorrt(tmp_path / "ext.onnx")
