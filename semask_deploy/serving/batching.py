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
    from ..runtime.pipeline import labels_from_logits

    if not _batchable(seg):
        return [seg.predict(img).astype(np.int32) for img in images]
    out: list[np.ndarray | None] = [None] * len(images)
    buckets: "OrderedDict[tuple[int, int], list[tuple[int, np.ndarray]]]" = OrderedDict()
    for i, img in enumerate(images):
        x = seg.prepare(img)
        buckets.setdefault(tuple(x.shape[2:]), []).append((i, x))
    for items in buckets.values():
        for start in range(0, len(items), max(1, max_batch)):
            chunk = items[start:start + max(1, max_batch)]
            logits = seg.backend.logits(np.concatenate([x for _, x in chunk]))
            for j, (i, _) in enumerate(chunk):
                size = (int(images[i].shape[0]), int(images[i].shape[1]))
                out[i] = labels_from_logits(logits[j:j + 1], size).astype(np.int32)
    return out  # type: ignore[return-value]


class Bucketer:
    """Cross-request bucketing: network inputs of equal size from concurrent callers run as one forward.

    Triton only merges requests of one image size; with several model instances (``semask-serve
    --instances N``) executions of different image sizes run concurrently, and this merges the images
    whose keep-ratio resize gives the same network size (e.g. 480×640 and 240×320 → 192×256 for the demo
    model) within ``window_s``, at most ``max_batch`` per forward.

    Args:
        seg: a batchable :class:`~semask_deploy.runtime.Segmenter` (whole mode, logits, dynamic batch).
        max_batch: most images per forward.
        window_s: how long the first image of a bucket waits for others.
    """

    def __init__(self, seg, max_batch: int = 8, window_s: float = 0.005) -> None:
        import threading

        if not _batchable(seg):
            raise ValueError("cross-request bucketing needs whole mode, logits and a dynamic batch")
        self.seg, self.max_batch, self.window_s = seg, max(1, max_batch), window_s
        self._cv = threading.Condition()
        self._queue: list[tuple[np.ndarray, dict]] = []
        self.forwards = 0
        self._worker = threading.Thread(target=self._run, name="semask-bucketer", daemon=True)
        self._worker.start()

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Same contract as :func:`predict_batch`; blocks until this caller's images are done."""
        from ..runtime.pipeline import labels_from_logits

        slots = []
        with self._cv:
            for img in images:
                x = self.seg.prepare(img)
                slot: dict = {}
                self._queue.append((x, slot))
                slots.append(slot)
            self._cv.notify_all()
            self._cv.wait_for(lambda: all("out" in s for s in slots))
        out = []
        for img, slot in zip(images, slots):
            if isinstance(slot["out"], BaseException):
                raise slot["out"]
            out.append(labels_from_logits(slot["out"], (int(img.shape[0]), int(img.shape[1]))).astype(np.int32))
        return out

    def _run(self) -> None:
        import time

        while True:
            with self._cv:
                self._cv.wait_for(lambda: bool(self._queue))
            time.sleep(self.window_s)  # let concurrent callers add to the buckets
            with self._cv:
                shape = self._queue[0][0].shape[2:]
                take = [q for q in self._queue if q[0].shape[2:] == shape][: self.max_batch]
                self._queue = [q for q in self._queue if not any(q is t for t in take)]
            try:
                logits = self.seg.backend.logits(np.concatenate([x for x, _ in take]))
                results = [logits[i:i + 1] for i in range(len(take))]
            except BaseException as exc:  # noqa: BLE001 - handed to the callers
                results = [exc] * len(take)
            with self._cv:
                self.forwards += 1
                for (_, slot), r in zip(take, results):
                    slot["out"] = r
                self._cv.notify_all()
