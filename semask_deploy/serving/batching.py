"""Batched, bucketed inference over a :class:`~semask_deploy.runtime.Segmenter` (no server dependency).

The served model takes uint8 RGB images (N, H, W, 3) and returns int32 labels (N, H, W) at each image's
own size — exactly what ``Segmenter.predict`` gives image by image. Triton's dynamic batcher merges
requests whose tensors have the same shape; within one execution the images are **bucketed by their
network input size** (the keep-ratio test resize maps many image sizes to one network size), each
bucket runs as one forward pass in chunks of at most ``max_batch`` images, and the logits of each
image are resized back to its own size and arg-maxed. Backends or modes that cannot batch (slide
windows, labels-only or fixed-batch exports) run image by image through ``Segmenter.predict``.

Requests are checked before any work; a bad request fails alone with a :class:`RequestError` whose
message says what was wrong.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import SemaskError

DEFAULT_MAX_PIXELS = 4096 * 4096


class RequestError(SemaskError):
    """A request the server refuses (wrong dtype, rank, channels or size)."""


@dataclass(frozen=True)
class Limits:
    """What one request may contain.

    Attributes:
        max_pixels: largest H·W of an image.
        min_side: smallest H or W.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = 1


def check_images(images: np.ndarray, limits: Limits = Limits()) -> np.ndarray:
    """Validate one request's ``image`` tensor.

    Args:
        images: uint8 (N, H, W, 3) RGB, or one (H, W, 3) image.

    Returns:
        The images as (N, H, W, 3) uint8.

    Raises:
        RequestError: wrong dtype, rank or channel count, an empty or too large image.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise RequestError(f"image must be uint8 RGB, got {images.dtype}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise RequestError(f"image must be (H, W, 3) or (N, H, W, 3) RGB, got shape {tuple(images.shape)}")
    n, h, w, _ = images.shape
    if n == 0 or min(h, w) < max(1, limits.min_side):
        raise RequestError(f"image is empty or smaller than {limits.min_side} px: shape {tuple(images.shape)}")
    if h * w > limits.max_pixels:
        raise RequestError(f"image of {h}x{w} has more than the server's limit of {limits.max_pixels} pixels "
                           "(semask-serve --max-pixels); resize it first")
    return images


def _batchable(seg) -> bool:
    return (seg.mode == "whole" and seg.backend.has_logits and seg.input_batch is None)


def predict_batch(seg, images: Sequence[np.ndarray], max_batch: int = 8) -> list[np.ndarray]:
    """Labels of many images, bucketed by network input size.

    Args:
        seg: a :class:`~semask_deploy.runtime.Segmenter`.
        images: uint8 (H_i, W_i, 3) RGB images (sizes may differ).
        max_batch: most images per forward pass.

    Returns:
        int32 (H_i, W_i) labels per image, equal to ``seg.predict(image)``.
    """
    from ..runtime.pipeline import labels_from_logits, prepare

    if not _batchable(seg):
        return [seg.predict(img).astype(np.int32) for img in images]
    out: list[np.ndarray | None] = [None] * len(images)
    buckets: "OrderedDict[tuple[int, int], list[tuple[int, np.ndarray]]]" = OrderedDict()
    for i, img in enumerate(images):
        if seg.input_hw is not None:
            x = prepare(img, None, exact_size=seg.input_hw)
        else:
            x = prepare(img, seg.scale)
        buckets.setdefault(tuple(x.shape[2:]), []).append((i, x))
    for items in buckets.values():
        for start in range(0, len(items), max(1, max_batch)):
            chunk = items[start:start + max(1, max_batch)]
            logits = seg.backend.logits(np.concatenate([x for _, x in chunk]))
            for j, (i, _) in enumerate(chunk):
                size = (int(images[i].shape[0]), int(images[i].shape[1]))
                out[i] = labels_from_logits(logits[j:j + 1], size).astype(np.int32)
    return out  # type: ignore[return-value]
