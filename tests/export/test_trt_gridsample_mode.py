"""GridSample-20's mode names ("linear"/"cubic") reach TensorRT's ONNX parser as "bilinear"/"bicubic": the parser
(10.x, 11.x) reads the new names as NEAREST (NVIDIA/TensorRT#4646, onnx/onnx-tensorrt#1060)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from semask_deploy.export.tensorrt import build_engine, rename_gridsample_modes_for_tensorrt  # noqa: E402
from semask_deploy.export.trt_check import check_onnx_for_tensorrt  # noqa: E402


def _trt_test_module():
    path = Path(__file__).resolve().with_name("test_tensorrt.py")
    spec = importlib.util.spec_from_file_location("_semask_test_tensorrt_gs", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _gridsample_model(mode: str | None, opset: int = 20) -> onnx.ModelProto:
    grid = numpy_helper.from_array(np.zeros((1, 4, 4, 2), np.float32), "grid")
    kwargs = {} if mode is None else {"mode": mode}
    nodes = [helper.make_node("GridSample", ["image", "grid"], ["s"], padding_mode="zeros", align_corners=0, **kwargs),
             helper.make_node("ArgMax", ["s"], ["am"], axis=1, keepdims=0),
             helper.make_node("Cast", ["am"], ["labels"], to=TensorProto.INT32)]
    graph = helper.make_graph(nodes, "gs", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("labels", TensorProto.INT32, ["N", 4, 4])], initializer=[grid])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _modes(model: onnx.ModelProto) -> list[str]:
    return [helper.get_attribute_value(a).decode() for n in model.graph.node if n.op_type == "GridSample"
            for a in n.attribute if a.name == "mode"]


@pytest.mark.parametrize("mode, sent, renamed", [("linear", "bilinear", 1), ("cubic", "bicubic", 1),
                                                 ("nearest", None, 0), (None, None, 0)])
def test_build_engine_gives_the_parser_the_names_it_knows(monkeypatch, tmp_path, mode, sent, renamed):
    mod = _trt_test_module()
    fake = mod._fake_tensorrt("11.1.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    onnx_path = tmp_path / "gs.onnx"
    onnx.save(_gridsample_model(mode), str(onnx_path), save_as_external_data=True, location="gs.onnx.data",
              size_threshold=0)
    info = build_engine(onnx_path, tmp_path / "gs.engine", precision="fp32", profiles=[
        {"name": "image", "min": (1, 3, 4, 4), "opt": (1, 3, 4, 4), "max": (2, 3, 4, 4)}], progress=False)
    assert info["gridsample_modes_renamed"] == renamed
    assert fake.calls["parsed"] == str(onnx_path)  # the path: the parser finds gs.onnx.data beside it
    if sent is not None:
        parsed = onnx.load_from_string(fake.calls["parsed_bytes"])
        assert _modes(parsed) == [sent]
        assert parsed.graph.initializer[0].external_data  # weights stay external, found through the path
    assert _modes(onnx.load(str(onnx_path), load_external_data=False)) == ([mode] if mode else [])  # file untouched


def test_rename_reaches_subgraphs():
    inner = _gridsample_model("linear").graph
    cond = helper.make_node("If", ["c"], ["labels"], then_branch=inner, else_branch=inner)
    outer = helper.make_graph([cond], "o", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("labels", TensorProto.INT32, None)])
    model = helper.make_model(outer, opset_imports=[helper.make_opsetid("", 20)])
    assert rename_gridsample_modes_for_tensorrt(model) == 2


def test_offline_check_warns_about_the_opset20_names():
    report = check_onnx_for_tensorrt(_gridsample_model("linear"))
    assert report.ok and any("NEAREST" in w for w in report.warnings)
    report = check_onnx_for_tensorrt(_gridsample_model("bilinear", opset=18))
    assert not any("NEAREST" in w for w in report.warnings)


def test_the_no_engine_message_does_not_suggest_trtexec_for_gridsample_graphs(tmp_path):
    from semask_deploy.export.pipeline import _trtexec_hint

    onnx.save(_gridsample_model("linear"), str(tmp_path / "gs.onnx"))
    assert "not trtexec" in _trtexec_hint(tmp_path / "gs.onnx")
    plain = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["image"], ["labels"])], "p",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("labels", TensorProto.FLOAT, [1])]), opset_imports=[helper.make_opsetid("", 20)])
    onnx.save(plain, str(tmp_path / "p.onnx"))
    assert _trtexec_hint(tmp_path / "p.onnx") == ", or trtexec --onnx=p.onnx"
