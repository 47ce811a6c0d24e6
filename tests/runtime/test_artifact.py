"""The sidecar facts every artifact backend shares (runtime/artifact.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from semask_deploy.export.metadata import resize_rule
from semask_deploy.runtime.artifact import apply_sidecar


def _meta(resize: dict) -> dict:
    return {"num_classes": 2, "classes": ["a", "b"], "palette": [[0, 0, 0], [255, 0, 0]], "test_scale": [2560, 640],
            "crop_size": [640, 640], "precision": "fp16", "resize": resize,
            "inputs": [{"name": "image", "shape": ["N", 3, "H", "W"]}]}


def test_mask_classification_exports_keep_detectron2_resize():
    """An exported Mask2Former must be resized as its checkpoint is (ResizeShortestEdge), not as SeMask-FPN."""
    rule = {"kind": "shortest_edge", "min_size": 640, "max_size": 2560, "interpolation": "pil_bilinear",
            "size_divisibility": 32, "test_scale": [2560, 640]}
    backend = SimpleNamespace()
    apply_sidecar(backend, _meta(rule))
    assert backend.resize_rule["kind"] == "shortest_edge" and backend.resize_rule["min_size"] == 640
    assert backend.num_classes == 2 and backend.class_names == ("a", "b") and backend.palette[1] == (255, 0, 0)
    assert backend.precision == "fp16" and backend.input_hw is None and backend.input_batch is None


def test_fpn_exports_use_the_keep_ratio_scale():
    backend = SimpleNamespace()
    apply_sidecar(backend, _meta(resize_rule((2048, 512), (512, 512))))
    assert backend.resize_rule is None and backend.test_scale == (2560, 640)


def _conv_graph(path, classes: int, out_names=("logits", "labels")) -> None:
    """A stand-in ONNX: a 1×1 conv to ``classes`` channels (``logits``) and its argmax (``labels``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((classes, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], [out_names[0]]),
             helper.make_node("ArgMax", [out_names[0]], ["labels64"], axis=1, keepdims=0),
             helper.make_node("Cast", ["labels64"], [out_names[1]], to=TensorProto.INT32)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info(out_names[0], TensorProto.FLOAT, ["N", classes, "H", "W"]),
         helper.make_tensor_value_info(out_names[1], TensorProto.INT32, ["N", "H", "W"])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _sidecar(path, **change) -> None:
    meta = {"format_version": 2, "kind": "onnx", "precision": "fp32", "num_classes": 4,
            "classes": ["a", "b", "c", "d"], "palette": [[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]],
            "test_scale": [64, 64], "crop_size": [32, 32],
            "inputs": [{"name": "image", "dtype": "float32", "shape": ["N", 3, "H", "W"]}],
            "outputs": [{"name": "logits"}, {"name": "labels"}]}
    meta.update(change)
    path.with_suffix(".json").write_text(json.dumps(meta))


@pytest.mark.parametrize("change,needle", [
    ({"num_classes": "ten"}, "num_classes must be a positive integer"),
    ({"classes": ["a"]}, "classes must list 4 names"),
    ({"palette": [[300, -1, 0]] * 4}, "palette must hold 4 colours"),
    ({"test_scale": [0, 0]}, "test_scale must be two positive integers"),
    ({"crop_size": [-5, 256]}, "crop_size must be two positive integers"),
    ({"inputs": []}, "inputs must list"),
])
def test_an_edited_sidecar_is_refused(tmp_path, change, needle):
    from semask_deploy.errors import RuntimeBackendError
    from semask_deploy.runtime import Segmenter

    pytest.importorskip("onnxruntime")
    _conv_graph(tmp_path / "m.onnx", 4)
    _sidecar(tmp_path / "m.onnx")
    assert Segmenter(tmp_path / "m.onnx").num_classes == 4  # the unedited pair loads
    _sidecar(tmp_path / "m.onnx", **change)
    with pytest.raises(RuntimeBackendError, match=needle):
        Segmenter(tmp_path / "m.onnx")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_graph_its_sidecar_does_not_describe_is_refused(tmp_path, backend):
    """A copied sidecar next to a foreign graph, or one edited to another class count: refused at load (they ran
    and gave wrong labels, or failed deep inside slide mode or OpenVINO's output lookup)."""
    from semask_deploy.errors import RuntimeBackendError
    from semask_deploy.runtime import Segmenter

    pytest.importorskip(backend)
    _conv_graph(tmp_path / "k.onnx", 5)
    _sidecar(tmp_path / "k.onnx")  # says 4 classes; the graph has 5
    with pytest.raises(RuntimeBackendError, match="logits of 5 classes but its sidecar says 4"):
        Segmenter(tmp_path / "k.onnx", backend=backend)
    _conv_graph(tmp_path / "f.onnx", 4, out_names=("y", "z"))
    _sidecar(tmp_path / "f.onnx")
    with pytest.raises(RuntimeBackendError, match="does not match its metadata sidecar"):
        Segmenter(tmp_path / "f.onnx", backend=backend)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_sidecar_of_another_input_shape_or_type_is_refused(tmp_path, backend):
    """A dynamic graph beside a --static export's sidecar ran and gave wrong labels (images squashed to the
    sidecar's size); a static graph beside a dynamic sidecar, or a float graph whose sidecar says uint8 input,
    failed at the first image with the runtime's own message. All are refused at load, naming the sidecar."""
    from semask_deploy.errors import RuntimeBackendError
    from semask_deploy.runtime import Segmenter

    pytest.importorskip(backend)
    _conv_graph(tmp_path / "m.onnx", 4)  # dynamic N, H, W; float32
    for change, needle in [
        ({"inputs": [{"name": "image", "dtype": "float32", "shape": [1, 3, 64, 64]}]},
         r"has shape \(\?, 3, \?, \?\), the sidecar says \(1, 3, 64, 64\)"),
        ({"inputs": [{"name": "image", "dtype": "uint8", "shape": ["N", 3, "H", "W"]}]}, "is float32, the sidecar says uint8"),
        ({"preprocess_in_graph": True}, "preprocess_in_graph=True"),
    ]:
        _sidecar(tmp_path / "m.onnx", **change)
        with pytest.raises(RuntimeBackendError, match=needle):
            Segmenter(tmp_path / "m.onnx", backend=backend)
    _sidecar(tmp_path / "m.onnx", preprocess_in_graph=False)
    assert Segmenter(tmp_path / "m.onnx", backend=backend).input_hw is None


def test_graph_input_refuses_pixels_that_were_not_normalised():
    from semask_deploy.errors import ConfigError
    from semask_deploy.runtime.artifact import graph_input

    with pytest.raises(ConfigError, match="normalised float32 batch"):
        graph_input(np.zeros((1, 3, 4, 4), np.uint8), accepts_uint8=False)
    assert graph_input(np.zeros((1, 3, 4, 4), np.float64), accepts_uint8=False).dtype == np.float32


def _static_conv_graph(path, classes: int, hw: tuple[int, int]) -> None:
    """:func:`_conv_graph` with a fixed (1, 3, H, W) input, as ``--static HxW --batch 1`` writes it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h, w = hw
    weight = numpy_helper.from_array(np.ones((classes, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["logits"]),
             helper.make_node("ArgMax", ["logits"], ["labels64"], axis=1, keepdims=0),
             helper.make_node("Cast", ["labels64"], ["labels"], to=TensorProto.INT32)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes, h, w]),
         helper.make_tensor_value_info("labels", TensorProto.INT32, [1, h, w])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_static_export_in_slide_mode_refuses_an_image_smaller_than_its_window(tmp_path):
    """Slide windows are clipped to the image (mmseg), so an image smaller than a --static export's one size gave
    a window the graph cannot take and ONNX Runtime's "Got invalid dimensions"; now a message says what to do."""
    from semask_deploy.errors import ConfigError
    from semask_deploy.runtime import Segmenter

    pytest.importorskip("onnxruntime")
    _static_conv_graph(tmp_path / "s.onnx", 4, (32, 32))
    _sidecar(tmp_path / "s.onnx", inputs=[{"name": "image", "dtype": "float32", "shape": [1, 3, 32, 32]}])
    seg = Segmenter(tmp_path / "s.onnx", mode="slide")
    assert seg.crop == (32, 32)
    rng = np.random.default_rng(0)
    assert seg.predict(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).shape == (40, 50)  # ≥ one window
    with pytest.raises(ConfigError, match=r"static 32x32 export, so its slide windows must be 32x32, but this "
                                          r"image is 3x64 after its test resize"):
        seg.predict(rng.integers(0, 256, (8, 200, 3), dtype=np.uint8))
    assert Segmenter(tmp_path / "s.onnx").predict(rng.integers(0, 256, (8, 200, 3), dtype=np.uint8)).shape == (8, 200)


def test_crop_and_stride_without_slide_mode_are_refused(tmp_path):
    """--crop/--stride in whole mode did nothing, silently."""
    from semask_deploy.errors import ConfigError
    from semask_deploy.runtime import Segmenter

    pytest.importorskip("onnxruntime")
    _conv_graph(tmp_path / "m.onnx", 4)
    _sidecar(tmp_path / "m.onnx")
    for kw in ({"crop": (32, 32)}, {"stride": (16, 16)}):
        with pytest.raises(ConfigError, match="windows of slide mode"):
            Segmenter(tmp_path / "m.onnx", **kw)
    assert Segmenter(tmp_path / "m.onnx", mode="slide", crop=(32, 32), stride=(16, 16)).crop == (32, 32)


@pytest.mark.parametrize("image,needle", [
    (np.zeros((4, 4, 3), np.float32), r"\(img \* 255\)"),
    (np.zeros((4, 4, 3), np.uint16), r"img >> 8"),
    (np.zeros((4, 4, 3), np.int64), r"img.astype\(np.uint8\) for whole numbers"),
    (np.zeros((4, 4, 3), bool), "a mask, not an image"),
])
def test_predict_says_how_to_convert_each_kind_of_array(tmp_path, image, needle):
    from semask_deploy.errors import ConfigError
    from semask_deploy.runtime import Segmenter

    pytest.importorskip("onnxruntime")
    _conv_graph(tmp_path / "m.onnx", 4)
    _sidecar(tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match=needle):
        Segmenter(tmp_path / "m.onnx").predict(image)


def test_a_model_in_a_triton_repository_reads_its_semask_metadata_json(tmp_path):
    """`semask-export --fmt triton` puts the sidecar beside model.onnx as semask_metadata.json (Triton's layout);
    Segmenter("repo/<name>/1/model.onnx") said it had no sidecar."""
    from semask_deploy.runtime import Segmenter

    pytest.importorskip("onnxruntime")
    version = tmp_path / "repo" / "demo" / "1"
    version.mkdir(parents=True)
    _conv_graph(version / "model.onnx", 4)
    _sidecar(version / "model.onnx")
    (version / "model.json").rename(version / "semask_metadata.json")
    assert Segmenter(version / "model.onnx").num_classes == 4


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_labels_only_graph_that_predicts_past_its_sidecars_classes_is_an_error(tmp_path, backend):
    """A labels-only graph has no logits whose width can be checked at load: a sidecar of fewer classes ran and
    wrote labels no class name or colour describes. A predicted class past the sidecar's count proves it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from semask_deploy.errors import RuntimeBackendError
    from semask_deploy.runtime import Segmenter

    pytest.importorskip(backend)
    w = np.ones((5, 3, 1, 1), np.float32)
    w[4] = 2.0  # class 4 wins everywhere on a positive image
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["scores"]),
         helper.make_node("ArgMax", ["scores"], ["labels64"], axis=1, keepdims=0),
         helper.make_node("Cast", ["labels64"], ["labels"], to=TensorProto.INT32)], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("labels", TensorProto.INT32, ["N", "H", "W"])],
        [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    _sidecar(tmp_path / "m.onnx", outputs=[{"name": "labels"}])  # says 4 classes
    seg = Segmenter(tmp_path / "m.onnx", backend=backend, scale="none")
    with pytest.raises(RuntimeBackendError, match="predicted class 4, but it is described as a 4-class model"):
        seg.predict(np.full((8, 8, 3), 200, np.uint8))
