"""OpenVINO backend: f32 labels vs torch, bf16 gated on the CPU's native bf16, int8 Q/DQ, IR export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semask_deploy.errors import ConfigError
from semask_deploy.runtime import cpu_info

pytest.importorskip("openvino")

# the fp32 dynamic export with logits of the small trained test model, shared with the export tests (one per session)
from export._shared import SMALL_CKPT, small_export  # noqa: E402

_CACHE: dict[str, object] = {}


def small_model():
    if "model" not in _CACHE:
        from semask_deploy import load_model

        _CACHE["model"] = load_model(SMALL_CKPT).float().eval()
    return _CACHE["model"]


def _scene(hw=(97, 131), seed=5):
    from semask_deploy.data.synthetic import SyntheticScenes
    from semask_deploy.data.transforms import normalize

    img = SyntheticScenes(num_classes=8, size=hw, seed=seed, length=1)[0][0]
    return normalize(img)[None]


def _torch_labels(x):
    import torch

    model = small_model()  # loaded outside inference mode (its parameters must stay normal tensors)
    with torch.inference_mode():
        return model(torch.from_numpy(x)).argmax(1).numpy()


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_openvino_f32_matches_torch(tmp_path_factory):
    from semask_deploy.runtime import Segmenter

    res = small_export(tmp_path_factory)
    seg = Segmenter(res.onnx_path, backend="openvino", precision="fp32", scale="none")
    be = seg.backend
    assert be.kind == "openvino" and be.ran["hint"] == "f32"
    assert "bf16" not in be.ran["layers"]  # nothing silently ran in bf16
    x = _scene()
    ref = _torch_labels(x)
    assert (be.labels(x) == ref).mean() >= 0.999
    logits = be.logits(x).numpy()
    import torch

    model = small_model()
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    assert np.linalg.norm(logits - want) / np.linalg.norm(want) <= 1e-4
    assert be.describe()["ran"]["hint"] == "f32"
    # the ONNX Runtime graph's Winograd convs reach OpenVINO as plain convs (export.winograd.plain_convs)
    import onnx

    from semask_deploy.runtime.openvino_backend import _model_source

    assert sum(n.op_type == "DepthToSpace" for n in onnx.load(str(res.onnx_path)).graph.node) == 2
    given = onnx.load_from_string(_model_source(res.onnx_path))
    assert not any(n.op_type == "DepthToSpace" or n.name.startswith("winograd") and n.op_type != "Conv"
                   for n in given.graph.node)


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_static_specialisations_give_the_dynamic_labels(tmp_path_factory):
    """auto: a size seen twice gets its own static compile (output size baked in); labels never change."""
    from semask_deploy.runtime.openvino_backend import STATIC_CACHE, OpenVinoBackend

    res = small_export(tmp_path_factory)
    dynamic = OpenVinoBackend(res.onnx_path, static_shapes="dynamic")
    auto = OpenVinoBackend(res.onnx_path)
    assert auto.static_shapes == "auto" and auto.describe()["static_shapes"] == "auto"
    x, y = _scene(), _scene((64, 96), seed=7)

    def same(a, b):  # other kernels, other float rounding: a near-tie may flip
        assert a.shape == b.shape and (a == b).mean() >= 0.9999

    for size in (None, (50, 77)):
        want = dynamic.labels(x, size)
        np.testing.assert_array_equal(auto.labels(x, size), want)  # first time: the dynamic model itself
        assert len(auto._static) == (0 if size is None else 1)
        same(auto.labels(x, size), want)  # second time: compiled for it
        same(auto.labels(x, size), want)
    assert len(auto._static) == 2
    got, want = auto.logits(x).numpy(), dynamic.logits(x).numpy()
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-5
    assert len(auto._static) == 2  # logits at the input size: the first key again
    static = OpenVinoBackend(res.onnx_path, static_shapes="static")
    for i in range(STATIC_CACHE + 1):
        same(static.labels(y, (30 + i, 40)), dynamic.labels(y, (30 + i, 40)))
    assert len(static._static) == STATIC_CACHE  # the oldest was dropped
    with pytest.raises(ConfigError, match="static_shapes"):
        OpenVinoBackend(res.onnx_path, static_shapes="sometimes")


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_one_backend_called_from_threads_gives_the_single_thread_labels(tmp_path_factory):
    """OpenVINO's infer requests are not thread-safe: sharing one between threads gave other images' labels
    (up to 87 % of pixels) and KeyErrors in the specialisation cache. Each call now takes its own request."""
    import threading

    from semask_deploy.runtime.openvino_backend import OpenVinoBackend

    res = small_export(tmp_path_factory)
    be = OpenVinoBackend(res.onnx_path, threads=1)
    images = [_scene((64, 96), seed=s) for s in (1, 2, 3)] + [_scene((48, 80), seed=4)]
    want = [OpenVinoBackend(res.onnx_path, threads=1, static_shapes="dynamic").labels(x) for x in images]
    bad: list[str] = []

    def work(offset: int) -> None:
        try:
            for i in range(8):
                k = (offset + i) % len(images)
                if not np.array_equal(be.labels(images[k]), want[k]):
                    bad.append(f"thread {offset} call {i}: image {k} got other labels")
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            bad.append(repr(exc))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad, bad


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_auto_specialisation_stops_recompiling_when_more_sizes_alternate_than_it_keeps(tmp_path_factory, monkeypatch):
    """3 sizes in turn with a cache of 2 compiled a model on every call (~50x slower); now each eviction
    doubles how often a size must come before it is compiled."""
    from semask_deploy.runtime import openvino_backend as ovb

    res = small_export(tmp_path_factory)
    be = ovb.OpenVinoBackend(res.onnx_path, threads=1)
    compiles = []
    real = ovb._compile
    monkeypatch.setattr(ovb, "_compile", lambda *a, **k: compiles.append(1) or real(*a, **k))
    sizes = [(40, 56), (48, 64), (56, 40)]
    assert len(sizes) == ovb.STATIC_CACHE + 1
    images = [_scene(hw, seed=1) for hw in sizes]
    for _ in range(12):
        for x in images:
            be.labels(x)
    assert len(compiles) <= 5, len(compiles)  # was 34: one per call from the second round on


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
@pytest.mark.skipif(not cpu_info.native_bf16(), reason="this CPU has no native bf16 (avx512_bf16/AMX)")
def test_openvino_bf16_where_native(tmp_path_factory):
    from semask_deploy.runtime.openvino_backend import OpenVinoBackend

    res = small_export(tmp_path_factory)
    be = OpenVinoBackend(res.onnx_path, precision="bf16")
    assert be.ran["hint"] == "bf16" and be.ran["layers"].get("bf16", 0) > 0
    x = _scene()
    assert (be.labels(x) == _torch_labels(x)).mean() >= 0.99


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_bf16_without_native_support_is_an_error(tmp_path_factory, monkeypatch):
    from semask_deploy.runtime import Segmenter

    monkeypatch.setattr(cpu_info, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_vnni"}))
    assert not cpu_info.native_bf16()
    res = small_export(tmp_path_factory)
    with pytest.raises(ConfigError, match="native bf16"):
        Segmenter(res.onnx_path, backend="openvino", precision="bf16")
    monkeypatch.setattr(cpu_info, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert cpu_info.native_bf16()


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_bad_backend_and_precision_combinations(tmp_path_factory):
    from semask_deploy.runtime import Segmenter

    res = small_export(tmp_path_factory)
    with pytest.raises(ConfigError, match="backend"):
        Segmenter(res.onnx_path, backend="tvm")
    with pytest.raises(ConfigError, match="OpenVINO/PyTorch option"):
        Segmenter(res.onnx_path, precision="bf16")
    with pytest.raises(ConfigError, match="fp32 or bf16"):
        Segmenter(res.onnx_path, backend="openvino", precision="fp8")
    with pytest.raises(ConfigError, match=r"openvino backend runs \.onnx/\.xml files"):
        Segmenter(SMALL_CKPT, backend="openvino")
    with pytest.raises(ConfigError, match=r"onnxruntime backend runs \.onnx files"):
        Segmenter(SMALL_CKPT, backend="onnxruntime")
    assert Segmenter(res.onnx_path, backend="onnxruntime").backend.kind == "onnxruntime"  # the suffix's own
    assert Segmenter(res.onnx_path, backend="auto").backend.kind == "onnxruntime"
    with pytest.raises(ConfigError, match="fp32 or bf16"):
        Segmenter(SMALL_CKPT, precision="int8")


@pytest.mark.slow
def test_export_int8_openvino_ir(tmp_path):
    """--fmt openvino --precision int8: the IR runs its Q/DQ layers in int8, labels stay close to torch."""
    from semask_deploy.export.pipeline import ExportOptions, run_export
    from semask_deploy.runtime import Segmenter

    res = run_export(ExportOptions(ckpt=SMALL_CKPT, out=tmp_path, fmt="openvino", precision="int8", calib_count=8,
                                   quiet=True))
    xml = tmp_path / "semask_small_synthetic8_int8_ov.xml"
    assert res.engine_path == xml and xml.is_file() and xml.with_suffix(".bin").is_file()
    meta = json.loads(xml.with_suffix(".json").read_text())
    assert meta["kind"] == "openvino" and meta["precision"] == "int8"
    assert meta["openvino"]["ran"]["hint"] == "f32" and meta["openvino"]["check"]["label_agreement"] >= 0.96
    seg = Segmenter(xml, scale="none")
    layers = seg.backend.ran["layers"]
    assert layers.get("i8", 0) > 0, layers  # (u8 also counts boolean masks in float graphs)
    x = _scene(seed=11)
    assert (seg.backend.labels(x) == _torch_labels(x)).mean() >= 0.96


def test_identity_resizes_of_a_static_model_are_bypassed():
    """A linear resize to its own input's size returns the input: specialize() drops it, nothing else."""
    import openvino as ov
    import openvino.opset11 as ops

    from semask_deploy.runtime.openvino_backend import _drop_identity_resizes

    def resize(x, hw, mode="linear_onnx"):
        return ops.interpolate(x, ops.constant(np.array(hw, np.int64)), mode, "sizes", axes=[2, 3],
                               coordinate_transformation_mode="half_pixel")

    param = ops.parameter([1, 3, 5, 7], np.float32, name="x")
    same = resize(param, [5, 7])                  # identity: dropped
    up = resize(same, [10, 14])                   # an upsample: kept
    back = resize(up, [10, 14], mode="cubic")     # same shape but cubic: kept (only linear modes are dropped)
    model = ov.Model([back], [param])
    x = np.random.default_rng(0).standard_normal((1, 3, 5, 7)).astype(np.float32)
    core = ov.Core()
    want = core.compile_model(model.clone(), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({"x": x})[0]
    assert _drop_identity_resizes(model) == 1
    model.validate_nodes_and_infer_types()
    assert sum(op.get_type_name() == "Interpolate" for op in model.get_ordered_ops()) == 2
    got = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({"x": x})[0]
    np.testing.assert_array_equal(got, want)


def test_openvino_errors_keep_the_reason_not_the_source_location():
    from semask_deploy.runtime.openvino_backend import error_text

    exc = RuntimeError("Exception from src/inference/src/cpp/core.cpp:84:\nException from src/inference/src/"
                       "model_reader.cpp:148:\nUnable to read the model: \"m.onnx\" Please check that model format\n\n")
    assert error_text(exc) == 'Unable to read the model: "m.onnx" Please check that model format'
    assert error_text(RuntimeError("")) == "RuntimeError"


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_threads_reach_every_cpu_runtime(tmp_path_factory):
    """Segmenter(threads=N): ONNX Runtime's intra-op threads, OpenVINO's INFERENCE_NUM_THREADS, torch's count."""
    import torch

    from semask_deploy.runtime import Segmenter

    res = small_export(tmp_path_factory)
    ort_seg = Segmenter(res.onnx_path, threads=1, scale="none")
    assert ort_seg.backend.session.get_session_options().intra_op_num_threads == 1
    ov_seg = Segmenter(res.onnx_path, backend="openvino", threads=1, scale="none")
    assert int(ov_seg.backend.compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    x = _scene()
    assert (ort_seg.backend.labels(x) == ov_seg.backend.labels(x)).mean() >= 0.999
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        Segmenter(SMALL_CKPT, threads=1)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        Segmenter(SMALL_CKPT, threads=0)  # 0 = the runtime's default: left as it is
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert Segmenter(res.onnx_path, threads=0).backend.session.get_session_options().intra_op_num_threads == 0


@pytest.mark.parametrize("threads, path, match", [
    (-1, "model.onnx", "whole number >= 0"), (1.5, "model.onnx", "whole number"), (True, "model.pth", "whole number"),
    (2, "model.engine", "runs on the GPU"),
])
def test_bad_threads_are_refused_before_anything_loads(threads, path, match, tmp_path):
    """Checked before the file is even looked at (none of these files exists)."""
    from semask_deploy.runtime import Segmenter

    with pytest.raises(ConfigError, match=match):
        Segmenter(tmp_path / path, threads=threads)


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_clis_say_which_precision_openvino_ran(tmp_path_factory, tmp_path, capsys):
    """semask-eval (its JSON and its summary) and semask-infer name the precision read back from the compile."""
    from semask_deploy.cli.eval import main as eval_main
    from semask_deploy.cli.infer import main as infer_main
    from semask_deploy.data import write_png
    from semask_deploy.data.synthetic import SyntheticScenes

    res = small_export(tmp_path_factory)
    out = tmp_path / "eval.json"
    assert eval_main(["--model", str(res.onnx_path), "--backend", "openvino", "--dataset", "synthetic", "--limit",
                      "1", "--threads", "1", "--out", str(out)]) == 0
    assert "OpenVINO ran hint f32; layers: " in capsys.readouterr().out
    runtime = json.loads(out.read_text())["runtime"]
    assert runtime["backend"] == "openvino" and runtime["ran"]["hint"] == "f32" and runtime["ran"]["layers"]
    image = tmp_path / "scene.png"
    write_png(image, SyntheticScenes(num_classes=8, size=(64, 80), seed=1, length=1)[0][0])
    assert infer_main(["--model", str(res.onnx_path), "--backend", "openvino", "--image", str(image), "--out",
                       str(tmp_path / "o"), "--threads", "1", "--scale", "none"]) == 0
    assert "OpenVINO ran hint f32; layers: " in capsys.readouterr().err
