"""``Segmenter`` over exported artifacts: the same labels from the .pth and its .onnx; backend errors.

The golden SeMask-T (ADE20K, official layout) checkpoint is exported once (fp32, dynamic, with logits);
``Segmenter`` then runs the official pipeline on the golden RGB images with the .pth and with the .onnx.
Required: ≥ 99.9 % identical labels (measured: 100 %).
"""

from __future__ import annotations

import json
import shutil
import types

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from semask_deploy.export.pipeline import ExportOptions, run_export  # noqa: E402

from semask_deploy.errors import MissingDependencyError, RuntimeBackendError  # noqa: E402
from semask_deploy.runtime import Segmenter  # noqa: E402
from semask_deploy.runtime.onnx_backend import OnnxBackend  # noqa: E402


@pytest.fixture(scope="module")
def golden_onnx(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("golden_onnx")
    return run_export(ExportOptions(ckpt=tiny_ckpt, out=out, with_logits=True, quiet=True))


@pytest.mark.slow
@pytest.mark.parametrize("scale", [None, "none"])
def test_pth_and_onnx_give_the_same_labels(golden_tiny, tiny_ckpt, golden_onnx, scale):
    pth = Segmenter(tiny_ckpt, scale=scale)
    onx = Segmenter(golden_onnx.onnx_path, scale=scale)
    assert onx.backend.kind == "onnxruntime" and onx.backend.has_logits
    assert onx.num_classes == pth.num_classes == 150
    assert onx.class_names == pth.class_names and onx.palette == pth.palette
    assert tuple(onx.backend.test_scale) == tuple(pth.backend.test_scale) == (2048, 512)
    for key in ("input_rgb_uint8", "input_odd_rgb_uint8"):
        rgb = golden_tiny[key]
        a, b = pth.predict(rgb), onx.predict(rgb)
        assert a.shape == b.shape == rgb.shape[:2]
        assert (a == b).mean() >= 0.999


@pytest.mark.slow
def test_onnx_backend_interface(golden_onnx, golden_tiny):
    be = OnnxBackend(golden_onnx.onnx_path)
    x = golden_tiny["input"]
    logits = be.logits(x)
    labels = be.labels(x)
    assert logits.dtype.is_floating_point and tuple(logits.shape) == (1, 150, 64, 96)
    assert labels.dtype == np.int32 and labels.shape == (1, 64, 96)
    np.testing.assert_allclose(logits.numpy(), golden_tiny["seg_logits"], rtol=1e-4, atol=1e-4)
    assert be.providers == ["CPUExecutionProvider"] and not be.accepts_uint8 and be.input_hw is None
    assert be.describe()["backend"] == "onnxruntime"


@pytest.mark.slow
def test_onnx_without_sidecar_is_refused(golden_onnx, tmp_path):
    lone = tmp_path / "lone.onnx"
    shutil.copy(golden_onnx.onnx_path, lone)
    with pytest.raises(RuntimeBackendError, match="re-export it with semask-export"):
        Segmenter(lone)


@pytest.mark.slow
def test_cuda_request_without_gpu_provider(golden_onnx):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    with pytest.raises(RuntimeBackendError, match="not available"):
        OnnxBackend(golden_onnx.onnx_path, device="cuda")
    be = OnnxBackend(golden_onnx.onnx_path, device="cuda", allow_cpu_fallback=True)
    assert be.providers == ["CPUExecutionProvider"]


@pytest.mark.slow
def test_silent_cpu_fallback_of_onnxruntime_gpu_is_detected(golden_onnx, monkeypatch):
    """onnxruntime-gpu lists CUDA, then runs on the CPU when its libraries are missing: refuse that."""
    real = ort.InferenceSession

    def fake_session(path, opts=None, providers=None):
        return real(path, opts, providers=["CPUExecutionProvider"])  # what a CUDA-less onnxruntime-gpu does

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", fake_session)
    with pytest.raises(RuntimeBackendError, match="silently run on the CPU"):
        OnnxBackend(golden_onnx.onnx_path, device="cuda")
    be = OnnxBackend(golden_onnx.onnx_path, device="cuda", allow_cpu_fallback=True)
    assert be.providers == ["CPUExecutionProvider"]


# ---------------------------------------------------------------------------------------- TensorRT backend
def _engine(tmp_path, **meta):
    engine = tmp_path / "m_trt.engine"
    engine.write_bytes(b"not really an engine")
    base = {"format_version": 1, "kind": "tensorrt", "inputs": [{"name": "image"}], "outputs": [{"name": "labels"}],
            "num_classes": 2,
            "classes": ["a", "b"], "palette": [[0, 0, 0], [1, 1, 1]], "test_scale": [2048, 512],
            "crop_size": [512, 512], "precision": "fp16", "tensorrt_version": "10.15.1.29",
            "gpu_compute_capability": "8.9"}
    base.update(meta)
    (tmp_path / "m_trt.json").write_text(json.dumps(base))
    return engine


def test_engine_without_tensorrt_says_what_to_install(tmp_path):
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed")
    except ImportError:
        pass
    with pytest.raises(MissingDependencyError, match="semask-deploy\\[trt\\]"):
        Segmenter(_engine(tmp_path))


def test_engine_of_another_tensorrt_or_gpu_is_refused(tmp_path, monkeypatch):
    import semask_deploy.export.tensorrt as trt_mod

    monkeypatch.setattr(trt_mod, "tensorrt_version", lambda: "10.9.0.34")
    with pytest.raises(RuntimeBackendError, match="built with TensorRT 10.15.1.29"):
        Segmenter(_engine(tmp_path))
    monkeypatch.setattr(trt_mod, "tensorrt_version", lambda: "10.15.1.29")
    monkeypatch.setattr(trt_mod, "gpu_compute_capability", lambda device=0: "9.0")
    with pytest.raises(RuntimeBackendError, match="compute capability 8.9"):
        Segmenter(_engine(tmp_path))


def test_engine_sidecar_problems(tmp_path):
    engine = _engine(tmp_path)
    (tmp_path / "m_trt.json").unlink()
    with pytest.raises(RuntimeBackendError, match="re-export"):
        Segmenter(engine)
    engine = _engine(tmp_path, kind="onnx", tensorrt_version=None)
    with pytest.raises(RuntimeBackendError, match="does not describe a TensorRT engine"):
        Segmenter(engine)


def test_backend_interface_is_what_segmenter_uses():
    from semask_deploy.runtime.trt_backend import TensorRTBackend

    for cls in (OnnxBackend, TensorRTBackend):
        for name in ("logits", "labels", "labels_uint8", "describe"):
            assert isinstance(getattr(cls, name), types.FunctionType), (cls, name)
