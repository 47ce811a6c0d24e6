"""TensorRT engine build + runner.

CPU tests cover the decisions and the error paths (with ``tensorrt`` made unimportable, and with a small
fake ``tensorrt`` module that records what the builder was asked to do). Tests marked ``trt`` build and
run a real engine and are skipped without TensorRT and a GPU.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from semask_deploy.errors import ExportError, MissingDependencyError, RuntimeBackendError  # noqa: E402
from semask_deploy.export.tensorrt import (  # noqa: E402
    build_engine,
    choose_build_mode,
    gpu_compute_capability,
    inspect_onnx_precision,
    tensorrt_version,
    validate_profiles,
)
from semask_deploy.runtime.trt_runner import TensorRTRunner  # noqa: E402


def _seg_model(kind: str = "fp32") -> onnx.ModelProto:
    """image (N,3,H,W) float32 → Conv 1x1 (3→4 classes) → ArgMax → labels int32 (N,H,W); dynamic N,H,W."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    inits, nodes, src = [w], [], "image"
    if kind == "fp16":
        nodes += [helper.make_node("Cast", ["image"], ["x16"], to=TensorProto.FLOAT16),
                  helper.make_node("Cast", ["w"], ["w16"], to=TensorProto.FLOAT16),
                  helper.make_node("Conv", ["x16", "w16"], ["l16"]),
                  helper.make_node("Cast", ["l16"], ["logits"], to=TensorProto.FLOAT)]
    else:
        if kind == "int8":
            inits += [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                      numpy_helper.from_array(np.array(0, np.int8), "zp")]
            nodes += [helper.make_node("QuantizeLinear", ["image", "s", "zp"], ["q"]),
                      helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"])]
            src = "dq"
        nodes.append(helper.make_node("Conv", [src, "w"], ["logits"]))
    nodes += [helper.make_node("ArgMax", ["logits"], ["am"], axis=1, keepdims=0),
              helper.make_node("Cast", ["am"], ["labels"], to=TensorProto.INT32)]
    graph = helper.make_graph(nodes, "seg", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("labels", TensorProto.INT32, ["N", "H", "W"])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "seg.onnx"
    onnx.save(_seg_model(), str(path))
    return path


# ---------------------------------------------------------------------------------------------- decisions
@pytest.mark.parametrize(
    "major, precision, qdq, fp16, expected",
    [
        (10, "fp32", False, False, (False, [])),
        (10, "fp16", False, False, (False, ["FP16"])),
        (10, "fp16", False, True, (True, [])),
        (10, "int8", True, False, (True, [])),
        (10, "int8", True, True, (True, [])),
        (11, "fp32", False, False, (True, [])),
        (11, "fp16", False, True, (True, [])),
        (11, "int8", True, False, (True, [])),
        (12, "INT8", True, True, (True, [])),
    ],
)
def test_choose_build_mode(major, precision, qdq, fp16, expected):
    assert choose_build_mode(major, precision, qdq, fp16) == expected


@pytest.mark.parametrize(
    "major, precision, qdq, fp16, match",
    [
        (10, "int8", False, False, "Q/DQ"),
        (11, "int8", False, True, "Q/DQ"),
        (11, "fp16", False, False, "strongly typed"),
        (10, "fp32", False, True, "fp16"),
        (10, "fp16", True, False, "quantized"),
        (9, "fp32", False, False, ">= 10"),
        (10, "bf16", False, False, "unknown precision"),
    ],
)
def test_choose_build_mode_refuses(major, precision, qdq, fp16, match):
    with pytest.raises(ExportError, match=match):
        choose_build_mode(major, precision, qdq, fp16)


def test_inspect_onnx_precision(tmp_path):
    assert inspect_onnx_precision(_seg_model("fp32")) == (False, False)
    assert inspect_onnx_precision(_seg_model("fp16")) == (False, True)
    path = tmp_path / "q.onnx"
    onnx.save(_seg_model("int8"), str(path))
    assert inspect_onnx_precision(path) == (True, False)


def test_validate_profiles():
    shapes = {"image": (-1, 3, -1, -1)}
    spec = {"name": "image", "min": (1, 3, 64, 64), "opt": (1, 3, 512, 512), "max": (2, 3, 1024, 1024)}
    groups = validate_profiles([spec], shapes)
    assert groups == [{"image": {"min": (1, 3, 64, 64), "opt": (1, 3, 512, 512), "max": (2, 3, 1024, 1024)}}]
    assert len(validate_profiles([spec, dict(spec, profile=1)], shapes)) == 2
    assert validate_profiles(None, {"image": (1, 3, 64, 64)}) == []
    with pytest.raises(ExportError, match="dynamic input"):
        validate_profiles(None, shapes)
    with pytest.raises(ExportError, match="unknown input"):
        validate_profiles([dict(spec, name="img")], shapes)
    with pytest.raises(ExportError, match="fixed dimension 1"):
        validate_profiles([dict(spec, min=(1, 4, 64, 64))], shapes)
    with pytest.raises(ExportError, match="min <= opt <= max"):
        validate_profiles([dict(spec, opt=(1, 3, 2048, 512))], shapes)
    with pytest.raises(ExportError, match="rank"):
        validate_profiles([dict(spec, max=(2, 3, 1024))], shapes)


# ---------------------------------------------------------------------------------------------- no TensorRT
@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError


def test_build_engine_without_tensorrt(no_tensorrt, onnx_file, tmp_path):
    with pytest.raises(MissingDependencyError) as info:
        build_engine(onnx_file, tmp_path / "seg.engine", precision="fp16")
    message = str(info.value)
    assert "TensorRT is not installed" in message
    assert "pip install 'semask-deploy[trt]'" in message and "NVIDIA GPU" in message
    assert not (tmp_path / "seg.engine").exists()
    assert tensorrt_version() is None


def test_build_engine_argument_errors(onnx_file, tmp_path):
    with pytest.raises(ExportError, match="not found"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "x.engine")
    with pytest.raises(ExportError, match="unknown precision"):
        build_engine(onnx_file, tmp_path / "x.engine", precision="fp8")


def test_runner_without_tensorrt(no_tensorrt, tmp_path):
    engine = tmp_path / "seg.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(MissingDependencyError, match=r"semask-deploy\[trt\]"):
        TensorRTRunner(engine)
    with pytest.raises(RuntimeBackendError, match="not found"):
        TensorRTRunner(tmp_path / "missing.engine")


def test_gpu_compute_capability_format():
    cc = gpu_compute_capability()
    assert cc is None or (cc.count(".") == 1 and all(p.isdigit() for p in cc.split(".")))


# ---------------------------------------------------------------------------------------------- fake TensorRT
def _fake_tensorrt(version: str, *, parse_ok: bool = True) -> types.ModuleType:
    """Just enough of the tensorrt module for build_engine; records the calls in ``trt.calls``."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = {}

    class ILogger:
        def __init__(self):
            pass

    class IProgressMonitor:
        def __init__(self):
            pass

    class Tensor:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, shape, dtype

    class Network:
        num_inputs = num_outputs = 1

        def get_input(self, i):
            return Tensor("image", (-1, 3, -1, -1), "DataType.FLOAT")

        def get_output(self, i):
            return Tensor("labels", (-1, -1, -1), "DataType.INT32")

    class Cache:
        def __init__(self, data=b""):
            self.data = data

        def serialize(self):
            if trt.calls.get("serialize_fails"):
                raise RuntimeError("serialize failed")
            return b"CACHE"

    class Config:
        def __init__(self):
            trt.calls["flags"] = []

        def set_memory_pool_limit(self, pool, size):
            trt.calls["workspace"] = size

        def set_flag(self, flag):
            trt.calls["flags"].append(flag)

        def add_optimization_profile(self, profile):
            trt.calls.setdefault("profiles", []).append(profile.shapes)
            return 0

        def create_timing_cache(self, data):
            trt.calls["cache_in"] = bytes(data)
            return Cache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):  # like TensorRT: false for another device's cache
            trt.calls.setdefault("cache_set", []).append(cache.data)
            return cache.data != b"FOREIGN"

        def get_timing_cache(self):
            return Cache()

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, mn, opt, mx):  # the Python API raises where C++ returns false
            if mn[0] == 0:
                raise RuntimeError("Error in set_shape")
            self.shapes[name] = (mn, opt, mx)

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            trt.calls["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            monitor = getattr(config, "progress_monitor", None)
            if monitor is not None:
                monitor.phase_start("Building", None, 2)
                monitor.step_complete("Building", 0)
                monitor.step_complete("Building", 1)
                monitor.phase_finish("Building")
            return b"ENGINE"

    class ParserError:
        def desc(self):
            return "Unsupported operator Foo"

        def node(self):
            return 3

        def node_operator(self):
            return "Foo"

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse(self, model, path=None):  # TensorRT: parse(model: buffer, path: str = None) -> bool
            trt.calls["parsed"], trt.calls["parsed_bytes"] = path, bytes(model)
            trt.calls.setdefault("order", []).append("parse")
            return parse_ok

        def parse_from_file(self, path):
            trt.calls["parsed"] = path
            trt.calls.setdefault("order", []).append("parse")
            return parse_ok

        def get_error(self, i):
            return ParserError()

    def init_libnvinfer_plugins(logger, namespace):
        trt.calls.setdefault("order", []).append(f"plugins:{namespace!r}")
        return True

    trt.ILogger, trt.IProgressMonitor, trt.Builder, trt.OnnxParser = ILogger, IProgressMonitor, Builder, OnnxParser
    trt.init_libnvinfer_plugins = init_libnvinfer_plugins
    # as in TensorRT's NvInfer.h: 10.x kSTRONGLY_TYPED = 1 (kEXPLICIT_BATCH = 0); 11.x kSTRONGLY_TYPED = 0
    # (deprecated, ignored) and BuilderFlag has no FP16/INT8/BF16 any more
    major = int(version.split(".")[0])
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1 if major < 11 else 0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16") if major < 11 else types.SimpleNamespace(TF32="TF32")
    trt.nptype = lambda dtype: {"DataType.FLOAT": np.float32, "DataType.INT32": np.int32}[dtype]
    return trt


PROFILE = [{"name": "image", "min": (1, 3, 32, 32), "opt": (1, 3, 64, 64), "max": (2, 3, 128, 128)}]


@pytest.mark.parametrize("version, kind, precision, network_flags, flags", [
    ("10.15.1", "fp32", "fp16", 0, ["FP16"]),
    ("10.15.1", "fp16", "fp16", 1 << 1, []),
    ("10.15.1", "int8", "int8", 1 << 1, []),
    ("11.2.0", "fp16", "fp16", 0, []),
    ("11.2.0", "fp32", "fp32", 0, []),
])
def test_build_engine_with_fake_tensorrt(monkeypatch, tmp_path, version, kind, precision, network_flags, flags):
    fake = _fake_tensorrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    onnx_path, engine = tmp_path / "m.onnx", tmp_path / "out" / "m.engine"
    onnx.save(_seg_model(kind), str(onnx_path))
    cache = tmp_path / "timing.cache"
    info = build_engine(onnx_path, engine, precision=precision, profiles=PROFILE, timing_cache=cache, workspace_gb=0.5)
    assert engine.read_bytes() == b"ENGINE" and cache.read_bytes() == b"CACHE"
    assert fake.calls["network_flags"] == network_flags and fake.calls["flags"] == flags
    assert fake.calls["workspace"] == 1 << 29 and fake.calls["cache_in"] == b""
    assert fake.calls["profiles"] == [{"image": ((1, 3, 32, 32), (1, 3, 64, 64), (2, 3, 128, 128))}]
    assert info["strongly_typed"] == (network_flags != 0 or version.startswith("11"))
    assert info["builder_flags"] == flags and info["tensorrt_version"] == version
    assert info["inputs"] == [{"name": "image", "dtype": "float32", "shape": [-1, 3, -1, -1]}]
    assert info["engine_bytes"] == 6 and not info["timing_cache_loaded"]
    assert sorted(p.name for p in engine.parent.iterdir()) == ["m.engine"]  # no temp files left
    assert fake.calls["order"] == ["plugins:''", "parse"] and info["plugins_loaded"]  # DeformConv's plugin
    build_engine(onnx_path, engine, precision=precision, profiles=PROFILE, timing_cache=cache, progress=False)
    assert fake.calls["cache_in"] == b"CACHE"  # the saved cache is loaded next time


def _build_with_cache(monkeypatch, tmp_path, cache_bytes, **calls):
    fake = _fake_tensorrt("10.15.1")
    fake_calls = dict(calls)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    onnx_path, engine, cache = tmp_path / "m.onnx", tmp_path / "m.engine", tmp_path / "timing.cache"
    onnx.save(_seg_model(), str(onnx_path))
    cache.write_bytes(cache_bytes)
    original = fake.Builder.create_builder_config

    def config(self):
        made = original(self)
        fake.calls.update(fake_calls)
        return made

    monkeypatch.setattr(fake.Builder, "create_builder_config", config)
    info = build_engine(onnx_path, engine, profiles=PROFILE, timing_cache=cache, progress=False)
    return fake, info, engine, cache


def test_timing_cache_from_another_device_is_not_reported_loaded(monkeypatch, tmp_path):
    fake, info, engine, cache = _build_with_cache(monkeypatch, tmp_path, b"FOREIGN")
    assert fake.calls["cache_set"] == [b"FOREIGN", b""]  # refused, then an empty cache
    assert not info["timing_cache_loaded"] and info["timing_cache_saved"]
    assert engine.read_bytes() == b"ENGINE" and cache.read_bytes() == b"CACHE"  # rewritten for this device
    fake, info, engine, cache = _build_with_cache(monkeypatch, tmp_path, b"MINE")
    assert fake.calls["cache_set"] == [b"MINE"] and info["timing_cache_loaded"]


def test_engine_is_written_before_the_timing_cache(monkeypatch, tmp_path):
    fake, info, engine, cache = _build_with_cache(monkeypatch, tmp_path, b"OLD", serialize_fails=True)
    assert engine.read_bytes() == b"ENGINE"  # a failure saving the cache does not lose the finished engine
    assert not info["timing_cache_saved"] and cache.read_bytes() == b"OLD"


def test_profile_set_shape_runtime_error_becomes_export_error(monkeypatch, tmp_path, onnx_file):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("11.2.0"))
    bad = [dict(PROFILE[0], min=(0, 3, 32, 32))]
    with pytest.raises(ExportError, match="rejected the shape range"):
        build_engine(onnx_file, tmp_path / "m.engine", profiles=bad, progress=False)
    assert not (tmp_path / "m.engine").exists()


def test_build_engine_parser_errors_and_profiles(monkeypatch, tmp_path, onnx_file):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("10.15.1", parse_ok=False))
    with pytest.raises(ExportError, match=r"(?s)rejected.*node 3 op Foo: Unsupported operator Foo"):
        build_engine(onnx_file, tmp_path / "m.engine")
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("10.15.1"))
    with pytest.raises(ExportError, match="dynamic input"):
        build_engine(onnx_file, tmp_path / "m.engine", profiles=None)
    with pytest.raises(ExportError, match="Q/DQ"):
        build_engine(onnx_file, tmp_path / "m.engine", precision="int8", profiles=PROFILE)
    assert not (tmp_path / "m.engine").exists()


def test_build_engine_without_gpu(monkeypatch, onnx_file, tmp_path):
    fake = _fake_tensorrt("10.15.1")

    def no_gpu(logger):
        raise TypeError("pybind11::init(): factory function returned nullptr")

    fake.Builder = no_gpu
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(ExportError, match="no usable NVIDIA GPU"):
        build_engine(onnx_file, tmp_path / "m.engine", profiles=PROFILE)


# ---------------------------------------------------------------------------------------------- real TensorRT
def _real_trt_or_skip():
    trt = pytest.importorskip("tensorrt")
    if gpu_compute_capability() is None:
        pytest.skip("TensorRT is installed but no CUDA GPU is visible")
    return trt


@pytest.mark.trt
@pytest.mark.parametrize("kind, precision", [("fp32", "fp32"), ("fp16", "fp16"), ("int8", "int8")])
def test_build_and_run_real_engine(tmp_path, kind, precision):
    _real_trt_or_skip()
    model = _seg_model(kind)
    onnx_path, engine = tmp_path / "seg.onnx", tmp_path / "seg.engine"
    onnx.save(model, str(onnx_path))
    info = build_engine(onnx_path, engine, precision=precision, profiles=PROFILE, timing_cache=tmp_path / "tc.cache",
                        workspace_gb=1, progress=False)
    assert engine.stat().st_size == info["engine_bytes"] > 0 and info["outputs"][0]["name"] == "labels"
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 37, 45)).astype(np.float32)  # odd H, W inside the profile
    w = numpy_helper.to_array(model.graph.initializer[0])[:, :, 0, 0]
    logits = np.einsum("kc,nchw->nkhw", w, x)
    expected = logits.argmax(1).astype(np.int32)
    with TensorRTRunner(engine) as runner:
        assert runner.input_names == ["image"] and runner.output_names == ["labels"]
        out = runner.run({"image": x})
        assert out["labels"].dtype == np.int32 and out["labels"].shape == (2, 37, 45)
        agreement = (out["labels"] == expected).mean()
        assert agreement > (0.999 if kind == "fp32" else 0.95)
        with pytest.raises(RuntimeBackendError, match="outside"):
            runner.run({"image": np.zeros((1, 3, 300, 300), np.float32)})


# ---------------------------------------------------------------------------------------------- runner, faked
def _fake_runtime_modules(num_profiles: int = 1):
    """A fake tensorrt (engine: labels = round(2 * x) as int32) and a host-memory fake of cuda-python.

    ``trt.events`` records, in order, plugin registration and the CUDA device that is current (per the fake
    cudart or the fake torch, which share ``trt.state``) when the engine is deserialised and executed.
    """
    import ctypes

    keep = {}
    state = {"current": 0}
    events = []

    def set_device(d):
        state["current"] = d
        return (0,)

    def malloc(n):
        buf = ctypes.create_string_buffer(n)
        keep[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    cudart = types.SimpleNamespace(
        cudaError_t=types.SimpleNamespace(cudaSuccess=0),
        cudaMemcpyKind=types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2),
        cudaSetDevice=set_device, cudaGetDevice=lambda: (0, state["current"]), cudaStreamCreate=lambda: (0, 7), cudaStreamSynchronize=lambda s: (0,),
        cudaStreamDestroy=lambda s: (0,), cudaMalloc=malloc, cudaFree=lambda p: (keep.pop(p, None), 0)[1:],
        cudaMemcpyAsync=lambda dst, src, n, kind, stream: (ctypes.memmove(dst, src, n), 0)[1:],
    )
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.15.1"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.nptype = lambda t: {"f32": np.float32, "i32": np.int32}[t]
    trt.state, trt.events = state, events
    trt.init_libnvinfer_plugins = lambda logger, namespace: events.append(f"plugins:{namespace!r}") or True

    class Context:
        def __init__(self):
            self.shape, self.addr = None, {}

        def set_input_shape(self, name, shape):
            ok = len(shape) == 2 and 1 <= shape[0] <= 2 and 2 <= shape[1] <= 8
            self.shape = shape if ok else None
            return ok

        def get_tensor_shape(self, name):
            return self.shape

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def set_optimization_profile_async(self, index, stream):  # the Python API raises, never returns false
            if index >= num_profiles:
                raise RuntimeError("Error in set optimization profile.")
            return True

        def execute_async_v3(self, stream):
            events.append(f"execute on cuda:{state['current']}")
            n = int(np.prod(self.shape))
            x = np.ctypeslib.as_array(ctypes.cast(self.addr["image"], ctypes.POINTER(ctypes.c_float)), (n,))
            y = np.ctypeslib.as_array(ctypes.cast(self.addr["labels"], ctypes.POINTER(ctypes.c_int32)), (n,))
            y[:] = np.rint(2 * x).astype(np.int32)
            return stream == 7

    class Engine:
        num_io_tensors, num_optimization_profiles = 2, max(num_profiles, 1)

        def get_tensor_name(self, i):
            return ["image", "labels"][i]

        def get_tensor_mode(self, name):
            return "in" if name == "image" else "out"

        def get_tensor_dtype(self, name):
            return "f32" if name == "image" else "i32"

        def get_tensor_profile_shape(self, name, index):
            return [(1, 2), (1, 4), (2, 8)]

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            events.append(f"deserialize on cuda:{state['current']}")
            return Engine() if data == b"ENGINE" else None

    trt.Runtime = Runtime
    return trt, cudart


def test_runner_with_fake_tensorrt_and_cuda_python(monkeypatch, tmp_path):
    from semask_deploy.runtime import trt_runner

    trt, cudart = _fake_runtime_modules()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_runner, "_memory_backend", lambda device: trt_runner._CudaPythonMemory(cudart, device))
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"ENGINE")
    with TensorRTRunner(engine) as runner:
        assert runner.input_names == ["image"] and runner.output_names == ["labels"]
        for shape in [(1, 3), (2, 8), (1, 5)]:  # buffers grow and are reused
            x = np.random.default_rng(0).uniform(-5, 5, shape)  # float64: cast to float32
            out = runner.run({"image": x})
            np.testing.assert_array_equal(out["labels"], np.rint(2 * x.astype(np.float32)).astype(np.int32))
            assert out["labels"].dtype == np.int32
        with pytest.raises(RuntimeBackendError, match="outside the engine's profile"):
            runner.run({"image": np.zeros((3, 3), np.float32)})
        with pytest.raises(RuntimeBackendError, match="missing"):
            runner.run({"img": np.zeros((1, 3), np.float32)})
        with pytest.raises(RuntimeBackendError, match="must be float32"):
            runner.run({"image": np.zeros((1, 3), np.complex64)})
    (tmp_path / "m.json").write_text('{"tensorrt_version": "10.3.0"}')
    with pytest.raises(RuntimeBackendError, match="built with TensorRT 10.3.0"):
        TensorRTRunner(engine)
    (tmp_path / "m.json").unlink()
    engine.write_bytes(b"garbage")
    with pytest.raises(RuntimeBackendError, match="could not deserialize"):
        TensorRTRunner(engine)


def _fake_torch(state):
    """torch with CPU tensors standing in for device memory; ``cuda.device(i)`` sets ``state['current']``."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def device(index):
        previous, state["current"] = state["current"], int(index)
        try:
            yield
        finally:
            state["current"] = previous

    stream = types.SimpleNamespace(cuda_stream=7, synchronize=lambda: None)
    cuda = types.SimpleNamespace(device=device, Stream=lambda device=None: stream, stream=lambda s: contextlib.nullcontext())
    return types.SimpleNamespace(cuda=cuda, from_numpy=torch.from_numpy, device=lambda kind, index: torch.device("cpu"),
                                 empty=lambda n, dtype, device: torch.empty(n, dtype=dtype))


@pytest.mark.parametrize("memory", ["torch", "cuda-python"])
def test_runner_makes_its_device_current_for_load_and_run(monkeypatch, tmp_path, memory):
    from semask_deploy.runtime import trt_runner

    trt, cudart = _fake_runtime_modules()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    if memory == "torch":
        backend = lambda device: trt_runner._TorchMemory(_fake_torch(trt.state), device)  # noqa: E731
    else:
        backend = lambda device: trt_runner._CudaPythonMemory(cudart, device)  # noqa: E731
    monkeypatch.setattr(trt_runner, "_memory_backend", backend)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"ENGINE")
    with TensorRTRunner(engine, device=1) as runner:
        trt.state["current"] = 0  # e.g. torch or another runner switched devices in between
        x = np.array([[0.5, 1.0, -2.0]], np.float32)
        np.testing.assert_array_equal(runner.run({"image": x})["labels"], [[1, 2, -4]])
    assert trt.events == ["plugins:''", "deserialize on cuda:1", "execute on cuda:1"]
    assert trt.state["current"] == 0  # the caller's device is restored


def test_runner_profile_selection_error_is_a_backend_error(monkeypatch, tmp_path):
    from semask_deploy.runtime import trt_runner

    trt, cudart = _fake_runtime_modules(num_profiles=2)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_runner, "_memory_backend", lambda device: trt_runner._CudaPythonMemory(cudart, device))
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"ENGINE")
    with TensorRTRunner(engine, profile_index=1) as runner:  # a profile the engine has
        assert runner.profile_index == 1
    engine_cls = type(trt.Runtime(None).deserialize_cuda_engine(b"ENGINE"))
    monkeypatch.setattr(engine_cls, "num_optimization_profiles", 3)  # claims 3, the context raises for index 2
    with pytest.raises(RuntimeBackendError, match="optimisation profile 2"):
        TensorRTRunner(engine, profile_index=2)
