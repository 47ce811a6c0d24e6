"""The official (mmseg) test pipeline around any backend that maps a normalised batch to logits.

    image (H, W, 3 RGB uint8) → keep-ratio rescale to the test scale (cv2 bilinear) → normalise
    → whole image, or sliding windows whose logits are summed and divided by the overlap count
    → logits resized bilinearly to the original H×W → argmax.

Exported graphs with the ``output_size`` input do the last two steps themselves (exactly); only
labels-only graphs exported with ``--no-output-size`` fall back to a nearest-neighbour resize of the labels.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..data.transforms import normalize, rescale_image, resize_image, resize_shortest_edge, slide_windows
from ..errors import ConfigError
from ..model.fast import resize_argmax

LogitsFn = Callable[[np.ndarray], torch.Tensor]  # float32 (1, 3, h, w) → logits (1, K, h, w)


def prepare(
    image_rgb: np.ndarray, scale: Sequence[int] | None, exact_size: Sequence[int] | None = None
) -> np.ndarray:
    """uint8 (H, W, 3) RGB → normalised float32 (1, 3, h, w) at the test scale (``None`` keeps the size),
    or resized (bilinear, aspect ratio not kept) to ``exact_size`` (h, w) for static-size exports."""
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ConfigError(f"expected a uint8 (H, W, 3) RGB image, got {image_rgb.dtype} {image_rgb.shape}")
    if exact_size is not None:
        img = resize_image(image_rgb, (int(exact_size[0]), int(exact_size[1])), "bilinear")
    else:
        img = rescale_image(image_rgb, scale) if scale is not None else image_rgb
    return normalize(img)[None]


def prepare_with_rule(image_rgb: np.ndarray, rule: Mapping[str, Any]) -> np.ndarray:
    """uint8 (H, W, 3) RGB → normalised float32 (1, 3, h, w) with a model's own test resize rule.

    ``rule["kind"] == "shortest_edge"`` (the detectron2 mask-classification models): ResizeShortestEdge
    (``min_size``, ``max_size``; PIL bilinear on uint8), then ``(x − mean) / std`` in float32 as detectron2
    normalises. The model pads to its size divisibility itself.
    """
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ConfigError(f"expected a uint8 (H, W, 3) RGB image, got {image_rgb.dtype} {image_rgb.shape}")
    if rule.get("kind") != "shortest_edge":
        raise ConfigError(f"unknown test resize rule {rule.get('kind')!r}")
    img = resize_shortest_edge(image_rgb, int(rule["min_size"]), int(rule["max_size"]))
    x = img.astype(np.float32).transpose(2, 0, 1)
    mean = np.asarray(IMAGENET_MEAN, np.float32).reshape(3, 1, 1)
    std = np.asarray(IMAGENET_STD, np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray(((x - mean) / std)[None])


def slide_logits(
    fn: LogitsFn, x: np.ndarray, num_classes: int, crop: Sequence[int], stride: Sequence[int]
) -> torch.Tensor:
    """mmseg ``slide_inference``: logits of overlapping crops, summed and divided by the count.

    Args:
        fn: backend, normalised (1, 3, h, w) → logits (1, K, h, w) at the crop's resolution.
        x: normalised (1, 3, H, W).
        num_classes: K.
        crop, stride: (h, w) of the window and the step.

    Returns:
        float32 logits (1, K, H, W).
    """
    _, _, h, w = x.shape
    preds = torch.zeros((1, num_classes, h, w), dtype=torch.float32)
    count = torch.zeros((1, 1, h, w), dtype=torch.float32)
    for y1, x1, y2, x2 in slide_windows(h, w, crop, stride):
        logits = fn(np.ascontiguousarray(x[:, :, y1:y2, x1:x2])).float().cpu()
        preds[:, :, y1:y2, x1:x2] += logits
        count[:, :, y1:y2, x1:x2] += 1
    return preds / count


def labels_from_logits(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Resize logits (1, K, h, w) bilinearly (align_corners=False) to ``size`` and take the argmax → (H, W).

    On the CPU the resize and argmax run a few rows at a time (:func:`resize_argmax`), without the
    K×H×W buffer of the resized logits.
    """
    if tuple(logits.shape[2:]) == tuple(size):
        return logits.argmax(1)[0].numpy()
    if logits.device.type == "cpu":
        return resize_argmax(logits.float(), size)[0].numpy()
    logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].cpu().numpy()


def labels_to_size(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map (for label-only backends)."""
    if labels.shape == tuple(size):
        return labels
    return resize_image(labels.astype(np.uint8 if labels.max() < 256 else np.int32), size, "nearest")
