"""Run a serialized TensorRT engine from numpy arrays (TensorRT 10.x / 11.x name-based tensor API).

Device memory comes from torch CUDA tensors when torch has CUDA (simplest, and it shares torch's caching
allocator), otherwise from cuda-python (``cudaMalloc``/``cudaMemcpyAsync`` on a private stream). Every call
sets the input shapes (engines have dynamic N, H, W within their optimisation profile), binds addresses
with ``set_tensor_address`` and runs ``execute_async_v3`` on the runner's stream.

Nothing here imports tensorrt, torch or cuda-python at module level.

Example::

    with TensorRTRunner("semask_t_ade.engine") as runner:
        out = runner.run({"image": x})          # x: float32 (N, 3, H, W), normalised
        labels = out["labels"]                   # int32 (N, H, W)
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from semask_deploy.errors import RuntimeBackendError
from semask_deploy.trt_common import cudart as _cudart
from semask_deploy.trt_common import gpu_compute_capability, import_tensorrt, load_plugins

_NO_TRT_HINT = "Use the onnxruntime backend elsewhere."


def _import_tensorrt() -> Any:
    return import_tensorrt(_NO_TRT_HINT)


class _TorchMemory:
    """Device buffers as torch CUDA tensors, work on a private torch stream."""

    def __init__(self, torch: Any, device: int) -> None:
        self.torch = torch
        self.index = int(device)
        self.device = torch.device("cuda", self.index)
        with torch.cuda.device(self.index):
            self.stream = torch.cuda.Stream(device=self.device)
        self.handle = int(self.stream.cuda_stream)
        self.buffers: dict[str, Any] = {}

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Make the runner's device the current CUDA device (TensorRT deserialises and runs on it)."""
        with self.torch.cuda.device(self.index):
            yield

    def upload(self, name: str, array: np.ndarray) -> int:
        flat = np.require(array, requirements=["C", "W"]).reshape(-1) if array.size else np.zeros(1, array.dtype)
        host = self.torch.from_numpy(flat)
        with self.torch.cuda.stream(self.stream):
            self.buffers[name] = host.to(self.device)
        return int(self.buffers[name].data_ptr())

    def allocate(self, name: str, numel: int, dtype: np.dtype) -> int:
        torch_dtype = self.torch.from_numpy(np.empty(0, dtype)).dtype
        with self.torch.cuda.stream(self.stream):
            self.buffers[name] = self.torch.empty(max(numel, 1), dtype=torch_dtype, device=self.device)
        return int(self.buffers[name].data_ptr())

    def download(self, specs: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, np.ndarray]:
        self.stream.synchronize()
        out = {}
        for name, (shape, dtype) in specs.items():
            numel = int(np.prod(shape, dtype=np.int64))
            out[name] = self.buffers[name][:numel].cpu().numpy().astype(dtype, copy=False).reshape(shape)
        return out

    def close(self) -> None:
        self.buffers.clear()


class _CudaPythonMemory:
    """Device buffers from cuda-python's runtime API, reused while large enough."""

    def __init__(self, cudart: Any, device: int) -> None:
        self.rt = cudart
        self.index = int(device)
        self._check(cudart.cudaSetDevice(device), "cudaSetDevice")
        self.stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.handle = int(self.stream)
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, capacity in bytes)
        self._keep: list[np.ndarray] = []  # host arrays referenced by in-flight copies

    def _check(self, result: Any, what: str) -> Any:
        err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if err != self.rt.cudaError_t.cudaSuccess:
            raise RuntimeBackendError(f"{what} failed: {getattr(err, 'name', err)}; is an NVIDIA GPU and driver available?")
        return rest[0] if len(rest) == 1 else (rest or None)

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Make the runner's device current (``cudaSetDevice`` is per thread), then restore the previous one."""
        previous = self.rt.cudaGetDevice() if hasattr(self.rt, "cudaGetDevice") else None
        before = previous[1] if isinstance(previous, tuple) and len(previous) > 1 and previous[0] == self.rt.cudaError_t.cudaSuccess else None
        self._check(self.rt.cudaSetDevice(self.index), "cudaSetDevice")
        try:
            yield
        finally:
            if before is not None and int(before) != self.index:
                self.rt.cudaSetDevice(int(before))

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, capacity = self.buffers.get(name, (0, 0))
        if capacity < max(nbytes, 1):
            if ptr:
                self._check(self.rt.cudaFree(ptr), "cudaFree")
            ptr = int(self._check(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
            self.buffers[name] = (ptr, max(nbytes, 1))
        return ptr

    def upload(self, name: str, array: np.ndarray) -> int:
        host = np.ascontiguousarray(array)
        ptr = self._buffer(name, host.nbytes)
        if host.nbytes:
            kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
            self._check(self.rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, self.stream), "cudaMemcpyAsync")
            self._keep.append(host)
        return ptr

    def allocate(self, name: str, numel: int, dtype: np.dtype) -> int:
        return self._buffer(name, numel * np.dtype(dtype).itemsize)

    def download(self, specs: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, np.ndarray]:
        out = {}
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, (shape, dtype) in specs.items():
            host = np.empty(shape, dtype)
            if host.nbytes:
                ptr = self.buffers[name][0]
                self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, self.stream), "cudaMemcpyAsync")
            out[name] = host
        self._check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        self._keep.clear()
        return out

    def close(self) -> None:
        for ptr, _ in self.buffers.values():
            self.rt.cudaFree(ptr)
        self.buffers.clear()
        if self.stream is not None:
            self.rt.cudaStreamDestroy(self.stream)
            self.stream = None


def _memory_backend(device: int) -> Any:
    try:
        import torch

        if torch.cuda.is_available() and device < torch.cuda.device_count():
            return _TorchMemory(torch, device)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    cudart = _cudart()
    if cudart is not None:
        err, count = cudart.cudaGetDeviceCount()
        if err == cudart.cudaError_t.cudaSuccess and device < count:
            return _CudaPythonMemory(cudart, device)
    raise RuntimeBackendError(
        f"no CUDA device {device}: TensorRT engines run only on an NVIDIA GPU (install a CUDA build of torch or "
        "'semask-deploy[trt]', which brings cuda-python, on a machine with a GPU and driver)"
    )


def _check_sidecar(engine_path: Path, trt_version: str, device: int) -> None:
    """Refuse an engine whose sidecar ``<name>.json`` names another TensorRT version or GPU."""
    sidecar = engine_path.with_suffix(".json")
    if not sidecar.is_file():
        return
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    built_with = meta.get("tensorrt_version") if isinstance(meta, dict) else None
    if built_with and str(built_with) != trt_version:
        raise RuntimeBackendError(
            f"{engine_path.name} was built with TensorRT {built_with} but TensorRT {trt_version} is installed; "
            "rebuild the engine (semask-export) with this TensorRT"
        )
    built_for = meta.get("gpu_compute_capability") if isinstance(meta, dict) else None
    if built_for:
        here = _compute_capability(device)
        if here is not None and here != str(built_for):
            raise RuntimeBackendError(
                f"{engine_path.name} was built for a GPU of compute capability {built_for}, this GPU is {here}; "
                "rebuild the engine on this GPU"
            )


def _compute_capability(device: int) -> str | None:
    return gpu_compute_capability(device)


class TensorRTRunner:
    """Deserialize a TensorRT engine and run it on numpy inputs.

    Args:
        engine_path: serialized engine (``.engine``/``.plan``).
        device: CUDA device index.
        profile_index: optimisation profile to run with (engines built with several profiles).
        check_sidecar: refuse the engine when its ``<name>.json`` sidecar names another TensorRT version or
            GPU compute capability.

    Raises:
        MissingDependencyError: tensorrt is not installed.
        RuntimeBackendError: no GPU, unreadable/incompatible engine, or a bad profile index.
    """

    def __init__(self, engine_path: str | os.PathLike, *, device: int = 0, profile_index: int = 0,
                 check_sidecar: bool = True) -> None:
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise RuntimeBackendError(f"engine file not found: {self.engine_path}")
        trt = _import_tensorrt()
        self._trt = trt
        self.tensorrt_version = str(getattr(trt, "__version__", ""))
        if check_sidecar:
            _check_sidecar(self.engine_path, self.tensorrt_version, device)
        self._mem = _memory_backend(device)
        # one execution context, stream and set of device buffers: calls from several threads (semask-serve's
        # instances share one Segmenter) take turns
        self._lock = threading.Lock()
        try:
            with self._mem.current():  # deserialise on cuda:<device>, not on whatever device is current
                self._load(trt, profile_index)
        except BaseException:
            self.close()
            raise

    def _load(self, trt: Any, profile_index: int) -> None:
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.plugins_loaded = load_plugins(trt, self._logger)  # engines with DeformConv need the plugin library
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            plugin_note = "" if self.plugins_loaded else (
                " (TensorRT's plugin library libnvinfer_plugin could not be loaded either: an engine with plugin "
                "layers such as DeformConv needs it)")
            raise RuntimeBackendError(
                f"TensorRT {self.tensorrt_version} could not deserialize {self.engine_path}: engines only load with "
                f"the TensorRT version (and usually the GPU model) they were built with; rebuild it here{plugin_note}"
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeBackendError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names: list[str] = [n for n in names if is_input[n]]
        self.output_names: list[str] = [n for n in names if not is_input[n]]
        self.dtypes: dict[str, np.dtype] = {}
        for n in names:
            try:
                self.dtypes[n] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(n)))
            except TypeError as exc:  # bf16/fp8 I/O has no numpy type
                raise RuntimeBackendError(f"I/O tensor {n!r} has type {self.engine.get_tensor_dtype(n)}, which numpy "
                                          "cannot hold; export with float32/int32 I/O") from exc
        self.profile_index = int(profile_index)
        if not 0 <= self.profile_index < self.engine.num_optimization_profiles:
            raise RuntimeBackendError(f"profile_index {profile_index} out of range: the engine has "
                                      f"{self.engine.num_optimization_profiles} profile(s)")
        if self.profile_index:
            try:  # the Python API raises RuntimeError where the C++ API returns false
                ok = self.context.set_optimization_profile_async(self.profile_index, self._mem.handle)
            except RuntimeError as exc:
                raise RuntimeBackendError(f"TensorRT could not select optimisation profile {self.profile_index}: {exc}") from exc
            if ok is False:
                raise RuntimeBackendError(f"TensorRT could not select optimisation profile {self.profile_index}")

    def input_shape_range(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """``(min, opt, max)`` shape of input ``name`` in the runner's optimisation profile."""
        shapes = self.engine.get_tensor_profile_shape(name, self.profile_index)
        return tuple(tuple(int(d) for d in s) for s in shapes)  # type: ignore[return-value]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the engine once.

        Args:
            inputs: one array per engine input, e.g. ``{"image": float32 (N, 3, H, W)}``; a dtype that
                converts within its kind (float64 → float32) is cast, anything else is an error.

        Returns:
            Every engine output by name, e.g. ``{"labels": int32 (N, H, W)}``.

        Raises:
            RuntimeBackendError: missing/unknown inputs, wrong dtype, a shape outside the profile, or a
                failed execution.
        """
        with self._lock, self._mem.current():  # buffers, stream and context all live on cuda:<device>
            return self._run(inputs)

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        unknown = [n for n in inputs if n not in self.input_names]
        if missing or unknown:
            raise RuntimeBackendError(f"engine inputs are {self.input_names}; missing {missing}, unknown {unknown}")
        is_shape_io = getattr(self.engine, "is_shape_inference_io", None)
        self._host_inputs: dict[str, np.ndarray] = {}
        for name in self.input_names:
            array = np.asarray(inputs[name])
            want = self.dtypes[name]
            if array.dtype != want:
                if not np.can_cast(array.dtype, want, casting="same_kind"):
                    raise RuntimeBackendError(f"input {name!r} must be {want}, got {array.dtype}")
                array = array.astype(want)
            if is_shape_io is not None and is_shape_io(name):
                # a shape tensor (e.g. output_size): TensorRT reads its values from HOST memory
                host = np.ascontiguousarray(array)
                self._host_inputs[name] = host  # alive until the next run
                if not self.context.set_input_shape(name, tuple(int(d) for d in host.shape)):
                    raise RuntimeBackendError(f"input {name!r} of shape {host.shape} does not fit the engine")
                self.context.set_tensor_address(name, int(host.ctypes.data))
                continue
            if not self.context.set_input_shape(name, tuple(int(d) for d in array.shape)):
                lo, _, hi = self.input_shape_range(name)
                raise RuntimeBackendError(
                    f"input {name!r} of shape {tuple(array.shape)} is outside the engine's profile (min {lo}, max {hi})"
                )
            self.context.set_tensor_address(name, self._mem.upload(name, array))
        specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for name in self.output_names:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeBackendError(f"output {name!r} has unresolved shape {shape} (data-dependent outputs are not supported)")
            specs[name] = (shape, self.dtypes[name])
            numel = int(np.prod(shape, dtype=np.int64))
            self.context.set_tensor_address(name, self._mem.allocate(name, numel, self.dtypes[name]))
        if not self.context.execute_async_v3(self._mem.handle):
            raise RuntimeBackendError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        return self._mem.download(specs)

    def close(self) -> None:
        """Free device buffers and the stream; the runner cannot be used afterwards."""
        mem = getattr(self, "_mem", None)
        if mem is not None:
            mem.close()
        self.context = None
        self.engine = None

    def __enter__(self) -> "TensorRTRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
