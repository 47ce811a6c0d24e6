"""What the artifact backends (ONNX Runtime, OpenVINO, TensorRT, AOTInductor) share about an exported artifact:
the model facts in its sidecar, its fixed input shape (``--static``, ``--batch``), the conversion of a normalised batch to what the graph takes, and the
``output_size`` input (int64 [2]) of graphs that resize their logits to the original image size."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConfigError

OUTPUT_SIZE = "output_size"  # graph input: (Ho, Wo) of the labels (semask-export's default)


def apply_sidecar(backend: Any, meta: dict[str, Any]) -> None:
    """Set the model facts every artifact backend reads from its metadata sidecar on ``backend``:
    ``num_classes``, ``class_names``, ``palette``, ``test_scale``, ``crop_size``, ``precision``,
    ``input_batch``/``input_hw`` (fixed by a static export, else None) and ``resize_rule`` (the model's own
    test resize, e.g. detectron2's ResizeShortestEdge of the mask-classification models; None for the
    keep-ratio ``test_scale`` rule of SeMask-FPN)."""
    backend.num_classes = int(meta["num_classes"])
    backend.class_names = tuple(meta["classes"])
    backend.palette = [tuple(int(v) for v in c) for c in meta["palette"]]
    backend.test_scale = tuple(meta["test_scale"])
    backend.crop_size = tuple(meta["crop_size"])
    backend.precision = meta.get("precision", "fp32")
    backend.input_batch, backend.input_hw = static_input(meta)
    rule = meta.get("resize")
    backend.resize_rule = dict(rule) if isinstance(rule, dict) and rule.get("kind") == "shortest_edge" else None


def check_graph_matches_sidecar(meta: dict[str, Any], inputs: Sequence[str], outputs: Sequence[str],
                                logits_classes: Any, name: str, image_input: ImageInput | None = None) -> None:
    """Refuse a model whose graph is not the one its sidecar describes (a copied or edited sidecar, a foreign
    model): the same input and output names, the logits' class count (where the graph states it) and, given
    ``image_input``, the image input's element type and which of its axes are fixed to what size — a dynamic
    graph beside a ``--static`` export's sidecar would otherwise be fed squashed images without a word.

    Raises:
        RuntimeBackendError: they differ.
    """
    from ..errors import RuntimeBackendError

    want_in = sorted(t["name"] for t in meta["inputs"])
    want_out = sorted(t["name"] for t in meta["outputs"])
    redo = "re-export it with semask-export (the sidecar belongs next to the model it was written with)"
    if sorted(inputs) != want_in or sorted(outputs) != want_out:
        raise RuntimeBackendError(
            f"{name} does not match its metadata sidecar: the graph has inputs {sorted(inputs)} and outputs "
            f"{sorted(outputs)}, the sidecar says {want_in} and {want_out}; {redo}")
    if isinstance(logits_classes, (int, np.integer)) and int(logits_classes) != int(meta["num_classes"]):
        raise RuntimeBackendError(
            f"{name} outputs logits of {int(logits_classes)} classes but its sidecar says {meta['num_classes']}; "
            "re-export it with semask-export")
    if image_input is None:
        return
    described = next(t for t in meta["inputs"] if t["name"] == image_input.name)
    if described.get("dtype") is not None and str(described["dtype"]) != image_input.dtype:
        raise RuntimeBackendError(
            f"{name} does not match its metadata sidecar: its input {image_input.name!r} is {image_input.dtype}, "
            f"the sidecar says {described['dtype']}; {redo}")
    shape = described.get("shape")
    if shape is None or image_input.shape is None:
        return
    fixed = [v if isinstance(v, int) and v > 0 else None for v in shape]  # (0, -1: an unnamed dynamic axis)
    if len(fixed) != len(image_input.shape) or fixed != list(image_input.shape):
        def show(dims: Sequence[int | None]) -> str:
            return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"

        raise RuntimeBackendError(
            f"{name} does not match its metadata sidecar: its input {image_input.name!r} has shape "
            f"{show(image_input.shape)}, the sidecar says {show(fixed)} (? = any size); {redo}")


def check_preprocess_flag(meta: dict[str, Any], graph_takes_uint8: bool, name: str) -> None:
    """Refuse a sidecar whose ``preprocess_in_graph`` contradicts the graph's input type (uint8 = in the graph).

    Raises:
        RuntimeBackendError: they differ.
    """
    from ..errors import RuntimeBackendError

    flag = meta.get("preprocess_in_graph")
    if flag is not None and bool(flag) != graph_takes_uint8:
        raise RuntimeBackendError(
            f"{name} does not match its metadata sidecar: the graph takes {'uint8 pixels' if graph_takes_uint8 else 'a normalised float image'}, "
            f"the sidecar says preprocess_in_graph={bool(flag)}; re-export it with semask-export")


@dataclass(frozen=True)
class ImageInput:
    """A graph's image input as the runtime reports it: name, numpy dtype name and shape (None per dynamic
    axis; ``shape=None`` when the rank is unknown)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...] | None


def static_input(meta: dict[str, Any]) -> tuple[int | None, tuple[int, int] | None]:
    """(batch, (H, W)) fixed by the export, from the sidecar's input shape; None where dynamic.

    Args:
        meta: the metadata sidecar (``inputs[0].shape`` holds ints for fixed axes, names for dynamic ones).
    """
    inputs = meta.get("inputs") or [{}]
    shape = inputs[0].get("shape") or []
    if len(shape) != 4:
        return None, None
    batch = int(shape[0]) if isinstance(shape[0], int) else None
    hw = shape[1:3] if meta.get("input_layout") == "NHWC" else shape[2:4]
    return batch, ((int(hw[0]), int(hw[1])) if all(isinstance(v, int) for v in hw) else None)


def graph_input(x: np.ndarray, accepts_uint8: bool) -> np.ndarray:
    """Normalised float32 (N, 3, H, W) → the graph's input: the same array, or uint8 RGB (N, H, W, 3) for a
    ``--preprocess`` graph.

    Normalised input made from uint8 pixels inverts exactly (the rounding error is ~1e-5 of a level);
    callers that hold the pixels should pass them directly (``labels_uint8``).
    """
    if x.ndim != 4 or x.shape[1] != 3 or not np.issubdtype(x.dtype, np.floating):
        raise ConfigError(f"expected a normalised float32 batch (N, 3, H, W), got {x.dtype} {x.shape} (uint8 "
                          "images: Segmenter.predict, or semask_deploy.data.normalize first)")
    if not accepts_uint8:
        return np.ascontiguousarray(x, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    mean = np.asarray(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    rgb = np.clip(np.rint(x * std + mean), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb.transpose(0, 2, 3, 1))


def output_size_feed(x: np.ndarray, size: Sequence[int] | None, nhwc: bool) -> np.ndarray:
    """The ``output_size`` input: int64 [2] = ``size`` (Ho, Wo), or the graph input's own (H, W) when None.

    Args:
        x: the graph's image input, (N, 3, H, W) or, for ``--preprocess`` graphs (``nhwc``), (N, H, W, 3).
        size: (Ho, Wo) of the labels wanted (both ≥ 1), or None for labels at the input size.
    """
    hw = x.shape[1:3] if nhwc else x.shape[2:4]
    want = tuple(int(v) for v in (size if size is not None else hw))
    if len(want) != 2 or min(want) < 1:
        raise ConfigError(f"output size must be two positive integers (Ho, Wo), got {size!r}")
    return np.asarray(want, dtype=np.int64)


def cuda_index(device: str) -> int:
    """The GPU index of ``"cuda"`` (0) / ``"cuda:N"`` (N); ``"cpu"`` gives 0 (engines always run on a GPU)."""
    if not isinstance(device, str) or not (device in ("cpu", "cuda") or re.fullmatch(r"cuda:\d+", device)):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return int(device.split(":", 1)[1]) if ":" in device else 0
