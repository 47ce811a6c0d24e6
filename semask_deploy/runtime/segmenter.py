"""One ``Segmenter`` over PyTorch checkpoints, ONNX files and TensorRT engines."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, RuntimeBackendError, check_cpu_threads
from .pipeline import labels_from_logits, labels_to_size, prepare, prepare_with_rule, slide_logits

TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
TRT_SUFFIXES = (".engine", ".plan", ".trt")
#: ``backend=`` names and the files each runs (``None``/``"auto"``: chosen by the suffix)
BACKEND_SUFFIXES = {"torch": TORCH_SUFFIXES, "onnxruntime": (".onnx",), "openvino": (".onnx", ".xml"),
                    "tensorrt": TRT_SUFFIXES, "aoti": (".pt2",)}


def _check_stride(stride: Sequence[int], crop: Sequence[int]) -> None:
    """Slide windows further apart than their size leave pixels without any prediction."""
    if any(s > c for s, c in zip(stride, crop)):
        raise ConfigError(f"the slide stride {stride[0]}x{stride[1]} is larger than the crop {crop[0]}x{crop[1]}: "
                          "pixels between the windows would get no prediction; use a stride <= the crop")


def _image_hint(image: Any) -> str:
    """What to do with an image :meth:`Segmenter.predict` does not take."""
    if isinstance(image, (list, tuple)):
        return "predict takes one image per call (call it once per image)"
    if not isinstance(image, np.ndarray):
        return "pass a numpy array (np.asarray(pil_image) for PIL; semask_deploy.data.read_image_rgb reads a file)"
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 4)):
        return ("convert it to RGB first, e.g. cv2.cvtColor(img, cv2.COLOR_GRAY2RGB) or img[..., :3] for RGBA "
                "(read_image_rgb does this for files)")
    if image.ndim == 3 and image.dtype != np.uint8 and image.shape[2] == 3:
        if np.issubdtype(image.dtype, np.floating):
            return "scale it to 0-255 uint8 first, e.g. (img * 255).round().astype(np.uint8) for floats in [0, 1]"
        if image.dtype == np.uint16:
            return "scale 16-bit pixels to 8 bits first, e.g. (img >> 8).astype(np.uint8), as OpenCV reads them"
        if image.dtype == np.bool_:
            return "a boolean array is a mask, not an image"
        return "convert it to uint8 first, e.g. img.astype(np.uint8) for whole numbers in 0-255"
    return "one (H, W, 3) RGB image per call"


def _cpu_threads(threads: Any, suffix: str, backend: str | None) -> int | None:
    """``threads`` checked: a count ≥ 1, 0 (the runtime's default) or None (unset)."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 0:
        raise ConfigError(f"threads must be a whole number >= 0 (0 = all cores), got {threads!r}")
    if threads and (backend == "tensorrt" or suffix in TRT_SUFFIXES):
        raise ConfigError("threads is a CPU setting; a TensorRT engine runs on the GPU (leave threads unset)")
    check_cpu_threads(threads)
    return int(threads)


def _size_pair(value: Any, what: str) -> tuple[int, int]:
    """``value`` checked as two positive whole numbers (an API caller's ``scale``/``crop``/``stride``)."""
    try:
        pair = tuple(value)
    except TypeError:
        pair = ()
    if (len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in pair)
            or min(pair) <= 0):
        raise ConfigError(f"{what} must be two positive whole numbers, got {value!r}")
    return int(pair[0]), int(pair[1])


_TORCH_DEFAULT_THREADS: list[int] = []  # PyTorch's own count, noted before a Segmenter first changes it


#: above this, an export with logits gets its labels on the host (row by row) instead of from the graph's labels
#: head, whose K×H×W float buffer at the image's own size is 14 GB for 150 classes at 4000×6000
LARGE_LABELS_HEAD_BYTES = 1 << 30


def _available_memory() -> int | None:
    """Bytes the kernel says a new allocation can get without swapping (Linux ``MemAvailable``), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _check_labels_head_memory(head_bytes: int, classes: int, size: tuple[int, int], name: str) -> None:
    """Refuse, before running, a labels head that cannot fit in memory (the runtime would fail to allocate it,
    or the system would kill the process)."""
    if head_bytes <= LARGE_LABELS_HEAD_BYTES:
        return
    available = _available_memory()
    if available is not None and head_bytes > 0.8 * available:
        raise RuntimeBackendError(
            f"{name} resizes its {classes} class scores to the image's own size {size[0]}x{size[1]} inside the "
            f"graph: that needs {head_bytes / 1e9:.1f} GB, more than the {available / 1e9:.1f} GB available. "
            "Re-export with --with-logits (the labels are then resized on the host a few rows at a time, same "
            "labels), use the .pth checkpoint, or segment a smaller image")


def _set_torch_threads(threads: int | None) -> None:
    """PyTorch (and AOTInductor packages) take the process-wide thread count: N sets it, 0 gives back
    PyTorch's own default (all cores) if a Segmenter changed it, None leaves it."""
    import torch

    if threads:
        if not _TORCH_DEFAULT_THREADS:
            _TORCH_DEFAULT_THREADS.append(torch.get_num_threads())
        torch.set_num_threads(threads)
    elif threads == 0 and _TORCH_DEFAULT_THREADS:
        torch.set_num_threads(_TORCH_DEFAULT_THREADS[0])


class Segmenter:
    """Segment RGB images with any exported SeMask artifact, with the official test pipeline.

    Args:
        path: ``.pth``/``.safetensors`` (PyTorch), ``.onnx`` (ONNX Runtime, or OpenVINO with
            ``backend="openvino"``), ``.xml`` (OpenVINO IR), ``.engine`` (TensorRT) or ``.pt2``
            (AOTInductor package).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (that GPU; ONNX Runtime, TensorRT, PyTorch, AOTInductor).
        mode: ``"whole"`` or ``"slide"`` (sliding windows, logits averaged as mmseg does).
        scale: keep-ratio test resize ``(long, short)``; default the model's (sidecar's) test scale, or
            its own resize rule when it has one (Mask2Former & co: detectron2 ResizeShortestEdge);
            ``"none"`` keeps the input size.
        crop, stride: sliding-window size and step (default: the training crop and 2/3 of it).
        attention_backend: PyTorch only: ``eager`` | ``sdpa`` | ``triton``.
        providers: ONNX Runtime only: execution providers, e.g. ``["CUDAExecutionProvider"]``.
        allow_cpu_fallback: ONNX Runtime only: accept running on the CPU when a GPU provider was asked
            for but cannot load (otherwise that is an error, never a silent fallback).
        backend: ``None``/``"auto"`` (default): by the file suffix (``.onnx`` → ONNX Runtime); ``"openvino"`` runs
            an ``.onnx`` with OpenVINO (``.xml`` always does); ``"onnxruntime"``, ``"torch"``, ``"tensorrt"``,
            ``"aoti"`` name the suffix's own backend (an error for a file that backend does not run).
        precision: OpenVINO: ``fp32`` (default) or ``bf16`` float layers (bf16 only on CPUs with native
            bf16; always set explicitly, see :mod:`.openvino_backend`); PyTorch on the CPU: ``bf16`` =
            autocast (native-bf16 CPUs only).
        threads: CPU threads of the runtime: ONNX Runtime's intra-op threads, OpenVINO's
            ``INFERENCE_NUM_THREADS``, PyTorch's ``torch.set_num_threads`` (process-wide, also for ``.pt2``
            packages). ``None`` (default) or 0: the runtime's own choice (all cores); for PyTorch, whose count
            is process-wide, 0 also gives back its default after another Segmenter set one, and ``None`` leaves
            the count as it is. A TensorRT engine runs on the GPU: giving it threads is an error.

    Whole mode runs the official pipeline exactly on every backend: exports with the ``output_size`` input
    (semask-export's default) resize their logits to the image's size in the graph and take the argmax
    there; PyTorch and ``--with-logits`` exports do it here. Only ``--no-output-size`` labels-only exports
    fall back to a nearest-neighbour resize of their labels. Slide mode needs logits (``--with-logits``).

    A static-size export (``semask-export --static HxW``) takes exactly that size: in whole mode every image
    is resized to it (bilinear, aspect ratio not kept) and the labels are mapped back to the image's size;
    in slide mode the windows are that size. A fixed-batch export gets each image repeated to its batch.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "cpu",
        mode: str = "whole",
        scale: Sequence[int] | str | None = None,
        crop: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        attention_backend: str | None = None,
        providers: Sequence[str] | None = None,
        allow_cpu_fallback: bool = False,
        backend: str | None = None,
        precision: str | None = None,
        threads: int | None = None,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(f"expected the path of a model file (.pth, .safetensors, .onnx, .xml, .engine, .pt2), "
                              f"got {type(path).__name__}")
        path = Path(path)
        suffix = path.suffix.lower()
        if backend == "auto":
            backend = None
        if backend is not None:
            if backend not in BACKEND_SUFFIXES:
                raise ConfigError(f"backend must be one of auto, {', '.join(BACKEND_SUFFIXES)} or None (by the file "
                                  f"suffix), got {backend!r}")
            if suffix not in BACKEND_SUFFIXES[backend]:
                raise ConfigError(f"the {backend} backend runs {'/'.join(BACKEND_SUFFIXES[backend])} files, got "
                                  f"{path.name}")
        if mode not in ("whole", "slide"):
            raise ConfigError(f"mode must be 'whole' or 'slide', got {mode!r}")
        threads = _cpu_threads(threads, suffix, backend)
        if attention_backend is not None and (suffix not in TORCH_SUFFIXES or backend not in (None, "torch")):
            raise ConfigError(f"attention_backend (--attention) is for PyTorch checkpoints; {path.name} runs the "
                              "attention its export compiled in (leave it unset)")
        env_attention = os.environ.get("SEMASK_ATTN")
        if attention_backend is not None and env_attention and env_attention != attention_backend:
            raise ConfigError(f"attention_backend={attention_backend!r} (--attention) conflicts with the environment "
                              f"variable SEMASK_ATTN={env_attention!r}, which would override it; unset SEMASK_ATTN or "
                              "drop the attention backend")
        if (providers or allow_cpu_fallback) and not (suffix == ".onnx" and backend in (None, "onnxruntime")):
            raise ConfigError(f"providers and allow_cpu_fallback are ONNX Runtime options; "
                              f"{path.name} does not run on ONNX Runtime here (leave them unset)")
        if isinstance(scale, str):
            if scale.lower() != "none":
                raise ConfigError(f"scale must be (long, short) or 'none', got {scale!r}")
        elif scale is not None:  # checked before loading: a zero or negative scale would shrink images to 1×1
            scale = _size_pair(scale, "scale (long, short)")
        crop = None if crop is None else _size_pair(crop, "crop (h, w)")
        stride = None if stride is None else _size_pair(stride, "stride (h, w)")
        if mode == "whole" and (crop is not None or stride is not None):
            raise ConfigError("crop and stride are the windows of slide mode; whole mode runs the whole image "
                              "(pass mode='slide', --mode slide, or leave them out)")
        if mode == "slide" and crop is not None and stride is not None:
            _check_stride(stride, crop)  # before loading anything (again below against the model's own crop)
        if backend == "openvino" or suffix == ".xml":
            from .openvino_backend import OpenVinoBackend

            self.backend = OpenVinoBackend(path, device=device, precision=precision, threads=threads)
        elif suffix in TORCH_SUFFIXES:
            from .torch_backend import TorchBackend

            if precision not in (None, "fp32", "bf16"):
                raise ConfigError(f"PyTorch precision must be fp32 or bf16 (autocast), got {precision!r}")
            _set_torch_threads(threads)
            self.backend = TorchBackend(path, device=device, attention_backend=attention_backend,
                                        precision=precision or "fp32")
        elif precision not in (None, "fp32"):
            raise ConfigError(f"precision={precision!r} is an OpenVINO/PyTorch option; ONNX Runtime and TensorRT run "
                              "the precision of the artifact")
        elif suffix == ".onnx":
            from .onnx_backend import OnnxBackend

            self.backend = OnnxBackend(path, device=device, providers=providers, allow_cpu_fallback=allow_cpu_fallback,
                                       threads=threads)
        elif suffix == ".pt2":
            from .aoti_backend import AotiBackend

            _set_torch_threads(threads)
            self.backend = AotiBackend(path, device=device)
        elif suffix in TRT_SUFFIXES:
            from .artifact import cuda_index
            from .trt_backend import TensorRTBackend

            self.backend = TensorRTBackend(path, device=cuda_index(device))
        else:
            raise ConfigError(
                f"cannot tell the format of {path}: use a .pth/.safetensors checkpoint, an .onnx file, an OpenVINO "
                ".xml, a .engine file or a .pt2 AOTInductor package"
            )
        self.path = path
        self.mode = mode
        if isinstance(scale, str):  # "none" (checked above)
            self.scale = None
        else:
            self.scale = tuple(scale) if scale is not None else tuple(self.backend.test_scale)
        self.crop = tuple(crop) if crop is not None else tuple(self.backend.crop_size)
        # the model's own test resize (detectron2 models: ResizeShortestEdge), used unless a scale is given
        self.resize_rule = getattr(self.backend, "resize_rule", None) if scale is None else None
        # A static export takes exactly one input size (and batch): whole images are resized to it (the
        # aspect ratio is not kept), slide windows must be that size.
        self.input_hw = getattr(self.backend, "input_hw", None)
        self.input_batch = getattr(self.backend, "input_batch", None)
        if self.input_hw is not None:
            fixed = "x".join(str(v) for v in self.input_hw)
            if mode == "whole" and scale is not None:
                raise ConfigError(
                    f"{path.name} is a static {fixed} export: every image is resized to {fixed}, so a test "
                    "scale does not apply; drop the scale, or re-export without --static"
                )
            if mode == "slide" and crop is not None and self.crop != self.input_hw:
                raise ConfigError(f"{path.name} is a static {fixed} export: the slide crop must be {fixed}")
            if mode == "slide":
                self.crop = self.input_hw
        self.stride = tuple(stride) if stride is not None else tuple(max(1, c * 2 // 3) for c in self.crop)
        if mode == "slide":
            _check_stride(self.stride, self.crop)
        if mode == "slide" and not self.backend.has_logits:
            raise ConfigError(
                f"{path.name} outputs labels only; slide mode needs logits: re-export with --with-logits"
            )

    @property
    def num_classes(self) -> int:
        return self.backend.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.backend.class_names)

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return [tuple(c) for c in self.backend.palette]

    def prepare(self, image_rgb: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) RGB → the normalised float32 (1, 3, h, w) network input, by this model's test resize:
        a static export's fixed size (whole mode), the detectron2 models' shortest-edge rule, or the keep-ratio
        ``scale``. :meth:`predict` and the serving batcher both prepare images through here."""
        if self.input_hw is not None and self.mode == "whole":
            return prepare(image_rgb, None, exact_size=self.input_hw)
        if self.resize_rule:
            return prepare_with_rule(image_rgb, self.resize_rule)
        return prepare(image_rgb, self.scale)

    def predict(self, image_rgb: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) RGB image → int64 labels (H, W) at the image's own size."""
        labels = self._predict(image_rgb)
        top = int(labels.max())
        if top >= self.num_classes:  # a labels-only graph beside the sidecar of another model
            raise RuntimeBackendError(
                f"{self.path.name} predicted class {top}, but it is described as a {self.num_classes}-class model "
                f"(its {'sidecar' if self.backend.kind != 'torch' else 'checkpoint'}): the description belongs to "
                "another model; export it again")
        return labels

    def _predict(self, image_rgb: np.ndarray) -> np.ndarray:
        shape = getattr(image_rgb, "shape", None)
        if (not isinstance(image_rgb, np.ndarray) or image_rgb.dtype != np.uint8 or image_rgb.ndim != 3
                or shape[2] != 3 or min(shape[:2]) < 1):
            what = f"{image_rgb.dtype} {shape}" if isinstance(image_rgb, np.ndarray) else type(image_rgb).__name__
            raise ConfigError(f"expected a uint8 (H, W, 3) RGB image with H, W >= 1, got {what}; "
                              f"{_image_hint(image_rgb)}")
        size = (int(image_rgb.shape[0]), int(image_rgb.shape[1]))
        x = self.prepare(image_rgb)
        if self.mode == "slide":
            if self.input_hw is not None and (x.shape[2] < self.crop[0] or x.shape[3] < self.crop[1]):
                fixed = "x".join(str(v) for v in self.input_hw)
                raise ConfigError(
                    f"{self.path.name} is a static {fixed} export, so its slide windows must be {fixed}, but this "
                    f"image is {x.shape[2]}x{x.shape[3]} after its test resize (smaller than one window); use "
                    "whole mode, or an export without --static")
            logits = slide_logits(self._logits, x, self.num_classes, self.crop, self.stride)
            return labels_from_logits(logits, size).astype(np.int64)
        if getattr(self.backend, "has_output_size", False):
            head_bytes = self._graph_labels_head_bytes(size)
            if head_bytes > LARGE_LABELS_HEAD_BYTES and self.backend.has_logits:
                # the same labels from the input-size logits, resized on the host a few rows at a time
                return labels_from_logits(self._logits(x), size).astype(np.int64)
            if self._labels_head_on_cpu():
                _check_labels_head_memory(head_bytes, self.num_classes, size, self.path.name)
            # the graph resizes its logits to the original size and takes the argmax there (official, exact)
            return self._fixed_batch(lambda b: self.backend.labels(b, size), x)[0].astype(np.int64)
        if self.backend.has_logits:
            return labels_from_logits(self._logits(x), size).astype(np.int64)
        return labels_to_size(self._fixed_batch(self.backend.labels, x)[0], size).astype(np.int64)

    def _graph_labels_head_bytes(self, size: tuple[int, int]) -> int:
        """What the graph's labels head holds for an output of ``size``: the float32 logits of every image of
        the batch resized to it (N × K × H × W × 4 bytes; OpenVINO keeps about two such buffers)."""
        copies = 2 if self.backend.kind == "openvino" else 1
        return copies * (self.input_batch or 1) * self.num_classes * size[0] * size[1] * 4

    def _labels_head_on_cpu(self) -> bool:
        """Whether the graph runs in this machine's memory (OpenVINO, ONNX Runtime on its CPU provider)."""
        if self.backend.kind == "openvino":
            return True
        return self.backend.kind == "onnxruntime" and self.backend.providers[:1] == ["CPUExecutionProvider"]

    def _logits(self, x: np.ndarray) -> Any:
        return self._fixed_batch(self.backend.logits, x)

    def _fixed_batch(self, fn: Callable[[np.ndarray], Any], x: np.ndarray) -> Any:
        """Run ``fn`` on one image; a fixed-batch export gets the image repeated to its batch size."""
        if self.input_batch is None or self.input_batch == x.shape[0]:
            return fn(x)
        return fn(np.repeat(x, self.input_batch, axis=0))[:1]
