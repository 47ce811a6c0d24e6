"""No silent fallbacks: an option the user named is honoured or refused, never replaced without a word."""

from __future__ import annotations

import json
import sys
import types
from types import SimpleNamespace

import pytest

from semask_deploy.errors import ConfigError, SemaskWarning


def test_explicit_attention_is_not_overridden_by_env_silently(monkeypatch):
    from semask_deploy.assets import demo_checkpoint
    from semask_deploy.runtime import Segmenter

    monkeypatch.setenv("SEMASK_ATTN", "sdpa")
    with pytest.raises(ConfigError, match="SEMASK_ATTN"):
        Segmenter(demo_checkpoint(), attention_backend="eager")
    assert Segmenter(demo_checkpoint(), attention_backend="sdpa").backend.model.attention_backend == "sdpa"


def test_onnxruntime_options_on_another_backend_are_refused():
    from semask_deploy.assets import demo_checkpoint
    from semask_deploy.runtime import Segmenter

    with pytest.raises(ConfigError, match="ONNX Runtime options"):
        Segmenter(demo_checkpoint(), providers=["CUDAExecutionProvider"])


def test_cuda_device_index_reaches_onnxruntime(tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    import semask_deploy.export.metadata as md
    from semask_deploy.runtime import Segmenter

    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    seen = {}

    def session(path, opts=None, providers=None, provider_options=None):
        seen.update(providers=providers, provider_options=provider_options)
        raise RuntimeError("recorded")

    monkeypatch.setattr(md, "read_sidecar", lambda p: {})
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", session)
    with pytest.raises(Exception, match="recorded"):
        Segmenter(model, device="cuda:1")
    assert seen["provider_options"] == [{"device_id": "1"}, {}]


def test_cuda_device_index_reaches_tensorrt(tmp_path, monkeypatch):
    import semask_deploy.runtime.trt_backend as tb
    from semask_deploy.runtime import Segmenter

    seen = {}

    class Fake:
        def __init__(self, path, **kw):
            seen.update(kw)
            raise RuntimeError("recorded")

    monkeypatch.setattr(tb, "TensorRTBackend", Fake)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(RuntimeError, match="recorded"):
        Segmenter(engine, device="cuda:1")
    assert seen.get("device") == 1


def test_checkpoint_class_names_of_the_wrong_length_are_not_replaced_silently():
    from semask_deploy.api import set_class_info

    model = SimpleNamespace(config=SimpleNamespace(num_classes=150))
    with pytest.warns(SemaskWarning, match="class names"):
        set_class_info(model, {"CLASSES": [f"mine_{i}" for i in range(149)]})


def test_folder_dataset_refuses_a_split_it_would_ignore(tmp_path):
    from semask_deploy.data import open_dataset
    from semask_deploy.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "ds", 1, size=(32, 32))
    with pytest.raises(ConfigError, match="no splits"):
        open_dataset("folder", tmp_path / "ds", split="val")
    assert len(open_dataset("folder", tmp_path / "ds")) == 1


def test_triton_python_runtime_gpu_instance_refuses_cpu_fallback(tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a CUDA provider is available here")
    from onnx import TensorProto, helper

    from semask_deploy.serving.triton_repo import ORT_MODEL_PY

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["labels"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("labels", TensorProto.FLOAT, [1])])
    (tmp_path / "1").mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "1" / "model.onnx"))
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    ns: dict = {}
    exec(compile(ORT_MODEL_PY, "model.py", "exec"), ns)
    args = {"model_repository": str(tmp_path), "model_version": "1", "model_instance_kind": "GPU",
            "model_config": json.dumps({"output": [{"name": "labels"}]})}
    with pytest.raises(RuntimeError, match="silently run on the CPU"):
        ns["TritonPythonModel"]().initialize(args)


def test_load_model_with_an_attention_backend_other_than_semask_attn_is_an_error(monkeypatch):
    """load_model(attention_backend=) was silently overridden by SEMASK_ATTN, unlike Segmenter and the CLIs."""
    from semask_deploy import load_model
    from semask_deploy.assets import demo_checkpoint

    monkeypatch.setenv("SEMASK_ATTN", "sdpa")
    with pytest.raises(ConfigError, match="conflicts with the environment variable SEMASK_ATTN='sdpa'"):
        load_model(demo_checkpoint(), attention_backend="eager")
    assert load_model(demo_checkpoint()).attention_backend == "sdpa"
    monkeypatch.setenv("SEMASK_ATTN", "eager")
    assert load_model(demo_checkpoint()).attention_backend == "eager"
    assert load_model(demo_checkpoint(), attention_backend="eager").attention_backend == "eager"


def test_threads_zero_gives_pytorch_its_default_back():
    """threads=0 means 'the runtime's own choice (all cores)': after a Segmenter with threads=1 it stayed 1."""
    import torch

    from semask_deploy.assets import demo_checkpoint
    from semask_deploy.runtime import Segmenter

    before = torch.get_num_threads()
    try:
        Segmenter(demo_checkpoint(), threads=1)
        assert torch.get_num_threads() == 1
        Segmenter(demo_checkpoint())  # None leaves the count alone
        assert torch.get_num_threads() == 1
        Segmenter(demo_checkpoint(), threads=0)
        from semask_deploy.runtime.segmenter import _TORCH_DEFAULT_THREADS

        assert torch.get_num_threads() == _TORCH_DEFAULT_THREADS[0]
    finally:
        torch.set_num_threads(before)
