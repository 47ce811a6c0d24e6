"""torch → ONNX: one dynamic export matches PyTorch at several shapes; static and --preprocess graphs."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import torch  # noqa: E402
from semask_deploy.export.onnx import trace_size  # noqa: E402
from semask_deploy.export.pipeline import ExportOptions, run_export  # noqa: E402
from semask_deploy.export.trt_check import check_onnx_for_tensorrt  # noqa: E402

from semask_deploy.data.synthetic import SyntheticScenes  # noqa: E402
from semask_deploy.data.transforms import normalize  # noqa: E402
from semask_deploy.errors import ConfigError  # noqa: E402

from ._shared import SMALL_CKPT, small_export, small_model  # noqa: E402

REL_L2, AGREE = 1e-4, 0.999


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return small_export(tmp_path_factory)


@pytest.fixture(scope="module")
def model():
    return small_model()


def _images(n: int, h: int, w: int, seed: int = 5) -> np.ndarray:
    scenes = SyntheticScenes(8, size=(h, w), seed=seed, length=n)
    return np.stack([scenes[i][0] for i in range(n)])


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
@pytest.mark.parametrize("shape", [(1, 96, 96), (1, 61, 83), (2, 77, 130), (1, 33, 47), (3, 160, 112)])
def test_one_dynamic_export_matches_torch(exported, model, shape):
    n, h, w = shape
    x = np.stack([normalize(im) for im in _images(n, h, w)])
    sess = ort.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])
    labels, logits = sess.run(["labels", "logits"], {"image": x, "output_size": np.array([h, w], np.int64)})
    with torch.inference_mode():
        ref_t = model(torch.from_numpy(x))
    ref = ref_t.numpy()
    assert labels.dtype == np.int32 and labels.shape == (n, h, w)
    assert logits.dtype == np.float32 and logits.shape == (n, 8, h, w)
    rel = np.linalg.norm(logits - ref) / np.linalg.norm(ref)
    assert rel <= REL_L2, rel
    assert (labels == ref.argmax(1)).mean() >= AGREE
    # the official second resize in the graph: logits (at the input size) → any output size, argmax there
    for size in [(2 * h + 3, w // 2 + 1), (1, 1), (h, 1)]:
        (got,) = sess.run(["labels"], {"image": x, "output_size": np.array(size, np.int64)})
        want = torch.nn.functional.interpolate(ref_t, size=size, mode="bilinear", align_corners=False).argmax(1)
        assert got.shape == (n, *size) and (got == want.numpy()).mean() >= AGREE, size


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_graph_is_dynamic_clean_and_checked(exported):
    m = onnx.load(str(exported.onnx_path))
    onnx.checker.check_model(m)
    inp, size = m.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 3, "H", "W"]
    assert size.name == "output_size" and size.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.dim_value for d in size.type.tensor_type.shape.dim] == [2]
    outs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output}
    assert outs == {"labels": ["N", "Ho", "Wo"], "logits": ["N", 8, "H", "W"]}
    assert next(o.version for o in m.opset_import if o.domain == "") >= 17
    ops = {n.op_type for n in m.graph.node}
    assert {"MatMul", "Softmax", "LayerNormalization", "ArgMax", "Resize"} <= ops
    assert "Constant" not in ops or sum(n.op_type == "Constant" for n in m.graph.node) < 50
    # the training-only semantic branch is not in the graph: the head has 6 ×2 upsamples + 3 resizes to the
    # stride-4 grid, plus the final resize of the logits, the channels-last one of the labels head and the one
    # to output_size; the semantic branch would add 9 more
    assert sum(n.op_type == "Resize" for n in m.graph.node) == 12
    assert any(n.name == "labels_head_resize" for n in m.graph.node)
    assert any(n.name == "output_size_resize" for n in m.graph.node)
    # the fp32 ONNX Runtime graph: the two 3×3 head convs with ≥ 64 input channels (64→32, 128→32) as Winograd,
    # the other five stay convs (plus the patch embed's, the two 6×6 input transforms and conv_seg)
    assert sum(n.op_type == "DepthToSpace" for n in m.graph.node) == 2
    assert sum(n.op_type == "Conv" and n.name.endswith("/v") for n in m.graph.node) == 2
    assert exported.metadata["export"]["winograd"] is True
    assert exported.metadata["tensorrt_check"]["ok"]  # plain ONNX ops that TensorRT's parser takes, too
    assert any("2 3×3 convolutions as Winograd" in note for note in exported.metadata["export"]["notes"])
    # verification ran on two sizes other than the opt shape (labels at the input size and at another size)
    ver = exported.verification
    assert ver["ok"] and len(ver["cases"]) == 4
    assert [c["output_size"] is not None for c in ver["cases"]] == [False, True, False, True]
    meta = exported.metadata
    assert meta["output_size_input"] and [i["name"] for i in meta["inputs"]] == ["image", "output_size"]
    assert "output_size" in meta["postprocess"] and meta["profiles"][0]["output_size"]["min"] == [1, 1]
    assert all(c["shape"][2:] != [96, 96] for c in ver["cases"])


def test_trace_size_is_generic():
    for window in (7, 12):
        h, w = trace_size(window, window)
        assert h != w and h % 4 and w % 4
        for side in (h, w):
            t = (side + 3) // 4
            for _ in range(4):
                assert t % 2 == 1 and t % window and t > window
                t = (t + 1) // 2


@pytest.fixture(scope="module")
def static_preprocess(tmp_path_factory):
    out = tmp_path_factory.mktemp("static_pre")
    return run_export(ExportOptions(ckpt=SMALL_CKPT, out=out, static=(64, 96), batch=2, preprocess=True, quiet=True,
                                    winograd=False))  # semask-export --no-winograd


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_static_preprocess_graph_equals_normalise_plus_model(static_preprocess, model):
    path = static_preprocess.onnx_path
    m = onnx.load(str(path))
    inp = m.graph.input[0]
    assert inp.name == "image_uint8" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [2, 64, 96, 3]
    assert [o.name for o in m.graph.output] == ["labels"]
    assert [d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim] == [2, "Ho", "Wo"]
    rgb = _images(2, 64, 96, seed=11)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (labels,) = sess.run(None, {"image_uint8": rgb, "output_size": np.array([64, 96], np.int64)})
    with torch.inference_mode():
        ref = model.predict(torch.from_numpy(np.stack([normalize(im) for im in rgb]))).numpy()
    assert (labels == ref).mean() >= AGREE
    with pytest.raises(Exception, match="dimensions"):  # static: another size is rejected by ONNX Runtime
        sess.run(None, {"image_uint8": _images(2, 64, 64), "output_size": np.array([64, 64], np.int64)})
    meta = static_preprocess.metadata
    assert meta["export"]["winograd"] is False and not any(n.op_type == "DepthToSpace" for n in m.graph.node)
    assert meta["preprocess_in_graph"] and meta["input_layout"] == "NHWC"
    assert meta["dynamic"] == {"N": False, "H": False, "W": False}
    assert meta["profiles"] == [{"image_uint8": {"min": [2, 64, 96, 3], "opt": [2, 64, 96, 3], "max": [2, 64, 96, 3]},
                                 "output_size": {"min": [1, 1], "opt": [64, 96], "max": [2048, 2048]}}]


def test_preprocess_graph_casts_uint8_first_for_tensorrt(static_preprocess):
    """TensorRT needs a uint8 network input to go through a Cast to float before any other layer; the offline
    parser check flags anything else (it flagged the Transpose that came first before the fix)."""
    m = onnx.load(str(static_preprocess.onnx_path))
    users = [n for n in m.graph.node if "image_uint8" in n.input]
    assert [n.op_type for n in users] == ["Cast"]
    report = check_onnx_for_tensorrt(static_preprocess.onnx_path)
    assert report.ok, report.format()
    assert static_preprocess.trt_check["ok"]


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_preprocess_backend_takes_uint8_and_normalised(static_preprocess, model):
    from semask_deploy.runtime.onnx_backend import OnnxBackend

    be = OnnxBackend(static_preprocess.onnx_path)
    assert be.accepts_uint8 and not be.has_logits and be.input_hw == (64, 96)
    rgb = _images(2, 64, 96, seed=12)
    x = np.stack([normalize(im) for im in rgb])
    a, b = be.labels_uint8(rgb), be.labels(x)  # the float path inverts the normalisation exactly
    assert a.dtype == np.int32 and np.array_equal(a, b)


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_segmenter_runs_a_static_fixed_batch_export_on_any_image(static_preprocess, model):
    """A --static 64x96 --batch 2 export: images of any size are resized to 64×96, repeated to batch 2, and
    the labels come back at the image's size — the same as the PyTorch model on that resized input."""
    from semask_deploy.runtime import Segmenter
    from semask_deploy.runtime.pipeline import labels_from_logits, prepare

    seg = Segmenter(static_preprocess.onnx_path)
    assert seg.input_hw == (64, 96) and seg.input_batch == 2
    for h, w in [(50, 70), (130, 41)]:
        rgb = _images(1, h, w, seed=13)[0]
        labels = seg.predict(rgb)
        assert labels.shape == (h, w)
        with torch.inference_mode():  # logits of the resized input, resized back to the image (exact path)
            ref = labels_from_logits(model(torch.from_numpy(prepare(rgb, None, exact_size=(64, 96)))), (h, w))
        assert (labels == ref).mean() >= AGREE
    with pytest.raises(ConfigError, match="static 64x96 export"):
        Segmenter(static_preprocess.onnx_path, scale=(2048, 512))


@pytest.mark.slow
def test_nchw_head_with_output_size_for_tensorrt(model, tmp_path):
    """What engine builds get (--fmt trt/all): the NCHW labels head + output_size; exact and TensorRT-clean."""
    from semask_deploy.export.onnx import export_onnx

    path = tmp_path / "nchw.onnx"
    info = export_onnx(model, path, labels_head="nchw", output_size=True)
    assert [i["name"] for i in info.inputs] == ["image", "output_size"]
    report = check_onnx_for_tensorrt(path)
    assert report.ok, report.format()
    x = np.stack([normalize(im) for im in _images(2, 61, 83, seed=7)])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        ref = model(torch.from_numpy(x))
    for size in [(61, 83), (100, 40)]:
        (got,) = sess.run(None, {"image": x, "output_size": np.array(size, np.int64)})
        want = torch.nn.functional.interpolate(ref, size=size, mode="bilinear", align_corners=False).argmax(1)
        assert got.shape == (2, *size) and (got == want.numpy()).mean() >= AGREE
