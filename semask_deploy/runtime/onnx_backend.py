"""ONNX Runtime backend for :class:`~semask_deploy.runtime.Segmenter`: an exported ``.onnx`` + its sidecar.

The sidecar (``model.json`` beside ``model.onnx``, written by ``semask-export``) gives the classes,
palette, test scale, crop size, whether the graph outputs logits and whether its input is uint8
(``--preprocess``). Providers: ``device="cpu"`` → CPU; ``device="cuda"`` → CUDA (then CPU for
unsupported ops); or an explicit list, e.g. ``["TensorrtExecutionProvider", "CUDAExecutionProvider"]``.

onnxruntime-gpu lists GPU providers even when their CUDA libraries cannot load and then silently runs on
the CPU (``session.get_providers()`` lacks them). That is detected and refused with
:class:`~semask_deploy.errors.RuntimeBackendError` unless ``allow_cpu_fallback=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, RuntimeBackendError, require
from .artifact import (OUTPUT_SIZE, ImageInput, apply_sidecar, check_graph_matches_sidecar, check_preprocess_flag,
                       cuda_index, graph_input, output_size_feed)

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
                 "MIGraphXExecutionProvider", "DmlExecutionProvider")

#: providers that take a ``device_id`` option
_DEVICE_ID_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
                        "MIGraphXExecutionProvider")


def _providers_for(device: str, providers: Sequence[str] | None) -> list[str]:
    if providers:
        return list(providers)
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ConfigError(f"device must be 'cpu' or 'cuda', got {device!r}")


class OnnxBackend:
    """Runs an exported SeMask ONNX with ONNX Runtime on numpy batches.

    Args:
        path: the ``.onnx`` file (its ``.json`` sidecar must be beside it).
        device: ``"cpu"`` or ``"cuda"`` (ignored when ``providers`` is given).
        providers: ONNX Runtime execution providers in priority order.
        allow_cpu_fallback: accept a session that fell back to the CPU although a GPU provider was asked for.
        threads: intra-op threads (default: ONNX Runtime's choice).

    Attributes:
        has_logits, num_classes, class_names, palette, test_scale, crop_size, precision: from the sidecar.
        accepts_uint8: the graph takes uint8 (N, H, W, 3) RGB (``--preprocess``); see :meth:`labels_uint8`.
        has_output_size: the graph takes ``output_size`` int64 [2] and gives its labels at that size (the
            official resize of the logits back to the original image, then argmax); see :meth:`labels`.
        input_hw: (H, W) of a static-size export (inputs must have exactly that size), else None.
        input_batch: the batch size of a fixed-batch export, else None.
        providers: the providers the session really uses.
    """

    kind = "onnxruntime"

    def __init__(self, path: str | Path, *, device: str = "cpu", providers: Sequence[str] | None = None,
                 allow_cpu_fallback: bool = False, threads: int | None = None) -> None:
        from semask_deploy.export.metadata import read_sidecar

        self.path = Path(path)
        if not self.path.is_file():
            raise RuntimeBackendError(f"ONNX file not found: {self.path}")
        self.meta: dict[str, Any] = read_sidecar(self.path)
        ort = require("onnxruntime", "gpu" if device != "cpu" else "dev")
        wanted = _providers_for(device, providers)
        available = ort.get_available_providers()
        missing = [p for p in wanted if p not in available]
        gpu_wanted = [p for p in wanted if p in GPU_PROVIDERS]
        if missing and not allow_cpu_fallback:
            raise RuntimeBackendError(
                f"ONNX Runtime provider(s) {', '.join(missing)} are not available (installed: {', '.join(available)}); "
                "install onnxruntime-gpu (pip install 'semask-deploy[gpu]', never together with onnxruntime) or use "
                "device='cpu'"
            )
        use = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 4  # FATAL only: a failed run is reported once, as our error line
        if threads:
            opts.intra_op_num_threads = int(threads)
        index = 0 if providers else cuda_index(device)  # "cuda:N": the session's GPU (ORT's default is 0)
        gpu = {"provider_options": [{"device_id": str(index)} if p in _DEVICE_ID_PROVIDERS else {} for p in use]}
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=use, **(gpu if index else {}))
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            why = str(exc).splitlines()[0][:300]
            raise RuntimeBackendError(f"ONNX Runtime cannot load {self.path.name}: {why}") from exc
        self.providers = list(self.session.get_providers())
        lost = [p for p in gpu_wanted if p not in self.providers]
        if lost and not allow_cpu_fallback:
            raise RuntimeBackendError(
                f"ONNX Runtime could not start {', '.join(lost)} (its CUDA/cuDNN/TensorRT libraries did not load) and "
                "would silently run on the CPU; fix the GPU installation, use device='cpu' (--device cpu), or pass "
                "allow_cpu_fallback=True (Python API) to accept the CPU"
            )
        m = self.meta
        names = [i.name for i in self.session.get_inputs()]
        self.input_name = next(n for n in names if n != OUTPUT_SIZE)
        self.has_output_size = OUTPUT_SIZE in names
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.has_logits = "logits" in self.output_names
        image = next(i for i in self.session.get_inputs() if i.name == self.input_name)
        self.accepts_uint8 = image.type == "tensor(uint8)"
        logits = next((o for o in self.session.get_outputs() if o.name == "logits"), None)
        check_graph_matches_sidecar(m, names, self.output_names,
                                    logits.shape[1] if logits is not None and len(logits.shape) == 4 else None,
                                    self.path.name, _image_input(image))
        check_preprocess_flag(m, self.accepts_uint8, self.path.name)
        apply_sidecar(self, m)

    # -- numpy in, numpy/torch out --------------------------------------------------------------------
    def _run(self, x: np.ndarray, names: list[str], size: Sequence[int] | None = None) -> list[np.ndarray]:
        feed = {self.input_name: x}
        if size is not None and not self.has_output_size:
            raise ConfigError(f"{self.path.name} has no output_size input (exported with --no-output-size): its "
                              "labels are at the input size; re-export without --no-output-size")
        if self.has_output_size:
            feed[OUTPUT_SIZE] = output_size_feed(x, size, self.accepts_uint8)
        try:
            return self.session.run(names, feed)
        except Exception as exc:  # noqa: BLE001
            raise RuntimeBackendError(f"ONNX Runtime failed on an input of shape {tuple(x.shape)} {x.dtype}: "
                                      f"{str(exc).splitlines()[0][:300]}") from exc

    def logits(self, x: np.ndarray) -> torch.Tensor:
        """Normalised float32 (N, 3, H, W) → float32 logits (N, K, H, W)."""
        if not self.has_logits:
            raise ConfigError(f"{self.path.name} outputs labels only: re-export with --with-logits")
        out = self._run(graph_input(x, self.accepts_uint8), ["logits"])[0]
        return torch.from_numpy(out.astype(np.float32, copy=False))

    def labels(self, x: np.ndarray, size: Sequence[int] | None = None) -> np.ndarray:
        """Normalised float32 (N, 3, H, W) → int32 labels (N, H, W), or (N, Ho, Wo) at ``size`` = (Ho, Wo)
        (graphs with the ``output_size`` input only: logits resized there, then argmax — exact)."""
        return self._run(graph_input(x, self.accepts_uint8), ["labels"], size)[0].astype(np.int32, copy=False)

    def _uint8(self, images: np.ndarray) -> np.ndarray:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ConfigError(f"expected uint8 RGB images (N, H, W, 3), got {images.dtype} {images.shape}")
        if self.accepts_uint8:
            return np.ascontiguousarray(images)
        from ..data.transforms import normalize

        return np.stack([normalize(im) for im in images])

    def labels_uint8(self, images: np.ndarray, size: Sequence[int] | None = None) -> np.ndarray:
        """uint8 RGB (N, H, W, 3) → int32 labels (N, H, W) (or at ``size``, see :meth:`labels`); normalised in
        the graph for --preprocess exports."""
        return self._run(self._uint8(images), ["labels"], size)[0].astype(np.int32, copy=False)

    def logits_uint8(self, images: np.ndarray) -> torch.Tensor:
        """uint8 RGB (N, H, W, 3) → float32 logits (N, K, H, W)."""
        if not self.has_logits:
            raise ConfigError(f"{self.path.name} outputs labels only: re-export with --with-logits")
        return torch.from_numpy(self._run(self._uint8(images), ["logits"])[0].astype(np.float32, copy=False))

    def describe(self) -> dict[str, Any]:
        return {"backend": "onnxruntime", "providers": self.providers, "precision": self.precision,
                "input": self.input_name, "outputs": self.output_names, "output_size_input": self.has_output_size}


_ORT_ELEMENT_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(float16)": "float16",
                      "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(int32)": "int32"}


def _image_input(arg: Any) -> ImageInput:
    """ONNX Runtime's description of the image input (``NodeArg``: dims are ints, or names/None where dynamic)."""
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape) if arg.shape is not None else None
    return ImageInput(arg.name, _ORT_ELEMENT_TYPES.get(arg.type, arg.type), shape)
