"""TensorRT plumbing of the ``output_size`` input, on fakes (no TensorRT here): it is a shape tensor, so the
runner binds it to HOST memory and the builder gives it a VALUE range in the optimisation profile."""

from __future__ import annotations

import ctypes
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from semask_deploy.errors import ExportError  # noqa: E402
from semask_deploy.export.tensorrt import build_engine  # noqa: E402
from semask_deploy.runtime import trt_runner  # noqa: E402
from semask_deploy.runtime.trt_runner import TensorRTRunner  # noqa: E402


def _trt_test_module():
    path = Path(__file__).resolve().parents[1] / "export" / "test_tensorrt.py"
    spec = importlib.util.spec_from_file_location("_semask_test_tensorrt", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_runtime():
    """tensorrt + cuda-python fakes: inputs image f32 (N, 2) and output_size i64 [2] (a shape tensor read from
    host memory); output labels i32 (N, Ho, Wo) = the first image value, rounded."""
    keep = {}

    def malloc(n):
        buf = ctypes.create_string_buffer(n)
        keep[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    cudart = types.SimpleNamespace(
        cudaError_t=types.SimpleNamespace(cudaSuccess=0),
        cudaMemcpyKind=types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2),
        cudaSetDevice=lambda d: (0,), cudaStreamCreate=lambda: (0, 7), cudaStreamSynchronize=lambda s: (0,),
        cudaStreamDestroy=lambda s: (0,), cudaMalloc=malloc, cudaFree=lambda p: (keep.pop(p, None), 0)[1:],
        cudaMemcpyAsync=lambda dst, src, n, kind, stream: (ctypes.memmove(dst, src, n), 0)[1:],
    )
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.15.1"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.nptype = lambda t: {"f32": np.float32, "i32": np.int32, "i64": np.int64}[t]
    host_pointers = {}

    class Context:
        def __init__(self):
            self.shapes, self.addr = {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return True

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def _size(self):
            # TensorRT reads shape-tensor values from host memory when it resolves output shapes
            return tuple(np.ctypeslib.as_array(ctypes.cast(self.addr["output_size"], ctypes.POINTER(ctypes.c_int64)),
                                               (2,)))

        def get_tensor_shape(self, name):
            return (self.shapes["image"][0], *self._size())

        def execute_async_v3(self, stream):
            n = self.shapes["image"][0]
            ho, wo = self._size()
            x = np.ctypeslib.as_array(ctypes.cast(self.addr["image"], ctypes.POINTER(ctypes.c_float)), (n, 2))
            y = np.ctypeslib.as_array(ctypes.cast(self.addr["labels"], ctypes.POINTER(ctypes.c_int32)), (n, ho, wo))
            y[:] = np.rint(x[:, :1, None]).astype(np.int32)
            host_pointers["output_size"] = self.addr["output_size"]
            return True

    class Engine:
        num_io_tensors, num_optimization_profiles = 3, 1

        def get_tensor_name(self, i):
            return ["image", "output_size", "labels"][i]

        def get_tensor_mode(self, name):
            return "out" if name == "labels" else "in"

        def get_tensor_dtype(self, name):
            return {"image": "f32", "output_size": "i64", "labels": "i32"}[name]

        def is_shape_inference_io(self, name):
            return name == "output_size"

        def get_tensor_profile_shape(self, name, index):
            return [(1, 2), (1, 2), (2, 2)]

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine()

    trt.Runtime = Runtime
    return trt, cudart, host_pointers


def test_runner_binds_output_size_in_host_memory(monkeypatch, tmp_path):
    trt, cudart, host_pointers = _fake_runtime()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_runner, "_memory_backend", lambda device: trt_runner._CudaPythonMemory(cudart, device))
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"ENGINE")
    with TensorRTRunner(engine) as runner:
        assert runner.input_names == ["image", "output_size"]
        for size in [(3, 5), (7, 2)]:
            x = np.array([[4.2, 0.0]], np.float32)
            out = runner.run({"image": x, "output_size": np.array(size, np.int64)})
            assert out["labels"].shape == (1, *size) and (out["labels"] == 4).all()
            # the address TensorRT got is the host array the runner keeps alive, not a device buffer
            assert host_pointers["output_size"] == runner._host_inputs["output_size"].ctypes.data
            assert "output_size" not in runner._mem.buffers


def test_builder_gives_output_size_a_value_range(monkeypatch, tmp_path):
    mod = _trt_test_module()
    fake = mod._fake_tensorrt("10.15.1")
    tensor_cls = type(fake.Builder(None).create_network(0).get_input(0))

    class Network:
        num_inputs, num_outputs = 2, 1

        def get_input(self, i):
            t = tensor_cls(["image", "output_size"][i], [(-1, 3, -1, -1), (2,)][i], "DataType.FLOAT")
            t.is_shape_tensor = i == 1
            return t

        def get_output(self, i):
            return tensor_cls("labels", (-1, -1, -1), "DataType.INT32")

    values = {}
    make_profile = fake.Builder.create_optimization_profile

    def create_optimization_profile(self):
        profile = make_profile(self)
        profile.set_shape_input = lambda name, mn, opt, mx: values.__setitem__(name, (mn, opt, mx))
        return profile

    monkeypatch.setattr(fake.Builder, "create_network", lambda self, flags: Network())
    monkeypatch.setattr(fake.Builder, "create_optimization_profile", create_optimization_profile)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    onnx_path = tmp_path / "m.onnx"
    onnx.save(mod._seg_model("fp32"), str(onnx_path))
    size = {"name": "output_size", "values": True, "min": [1, 1], "opt": [64, 64], "max": [128, 128]}
    build_engine(onnx_path, tmp_path / "m.engine", precision="fp32", profiles=[*mod.PROFILE, size])
    assert values == {"output_size": ([1, 1], [64, 64], [128, 128])}
    assert fake.calls["profiles"] == [{"image": ((1, 3, 32, 32), (1, 3, 64, 64), (2, 3, 128, 128))}]
    with pytest.raises(ExportError, match="shape-tensor input"):
        build_engine(onnx_path, tmp_path / "m2.engine", precision="fp32", profiles=mod.PROFILE)


def test_runner_called_from_threads_gives_each_call_its_own_answer(monkeypatch, tmp_path):
    """One execution context, stream and set of buffers: semask-serve's instances share one Segmenter, and calls
    that overlapped read each other's shapes and buffers. The runner now lets them take turns."""
    import threading
    import time

    trt, cudart, _ = _fake_runtime()
    context_cls = type(trt.Runtime(None).deserialize_cuda_engine(b"").create_execution_context())
    execute = context_cls.execute_async_v3

    def slow_execute(self, stream):  # a GPU kernel takes a while: another thread gets to run meanwhile
        time.sleep(0.002)
        return execute(self, stream)

    monkeypatch.setattr(context_cls, "execute_async_v3", slow_execute)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_runner, "_memory_backend", lambda device: trt_runner._CudaPythonMemory(cudart, device))
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"ENGINE")
    bad: list[str] = []
    with TensorRTRunner(engine) as runner:
        def work(k: int) -> None:
            try:
                for i in range(15):
                    size = (2 + k, 3 + i % 4)
                    out = runner.run({"image": np.array([[float(k), 0.0]], np.float32),
                                      "output_size": np.array(size, np.int64)})["labels"]
                    if out.shape != (1, *size) or not (out == k).all():
                        bad.append(f"thread {k} call {i}: {out.shape} {np.unique(out)}")
            except Exception as exc:  # noqa: BLE001 - collected below
                bad.append(repr(exc))

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not bad, bad[:5]
