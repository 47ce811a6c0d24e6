"""Pre- and post-processing of the Triton ensemble, in numpy + OpenCV only.

``semask-export --fmt triton`` copies this file next to the Python-backend ``model.py`` files, so a stock
Triton server needs only numpy and opencv-python-headless in its Python backend. The arithmetic is
the official test pipeline (the same as :mod:`semask_deploy.runtime.pipeline`):

    uint8 (N, H, W, 3) RGB → keep-ratio resize (mmcv ``imrescale``: factor = min(long/max(H, W),
    short/min(H, W)), size = int(x·f + 0.5), cv2 bilinear), or the mask-classification models'
    detectron2 ``ResizeShortestEdge`` (PIL bilinear: those models also need Pillow in the Python backend),
    or an exact resize for static exports → (x − mean) / std → float32 (N, 3, h, w)

    logits (N, K, h, w) → bilinear resize (half-pixel centres, = torch align_corners=False) to (H, W)
    → argmax → int32 (N, H, W)

Keep this module free of semask_deploy and torch imports.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
INV_STD = (1.0 / np.array([58.395, 57.12, 57.375], dtype=np.float64)).astype(np.float32)


def network_size(h: int, w: int, test_scale: Sequence[int] | None, exact: Sequence[int] | None = None,
                 shortest_edge: Sequence[int] | None = None) -> tuple[int, int]:
    """Network input (h, w) of an H×W image: ``exact``, detectron2's ResizeShortestEdge(``shortest_edge`` =
    (min_size, max_size)), the keep-ratio test resize, or unchanged (all None)."""
    if exact is not None:
        return int(exact[0]), int(exact[1])
    if shortest_edge is not None:  # ResizeShortestEdge.get_output_shape
        short, cap = float(shortest_edge[0]), float(shortest_edge[1])
        f = short / min(h, w)
        nh, nw = (short, f * w) if h < w else (f * h, short)
        if max(nh, nw) > cap:  # detectron2's order of operations: the same float rounding, the same sizes
            scale = cap / max(nh, nw)
            nh, nw = nh * scale, nw * scale
        return max(1, int(nh + 0.5)), max(1, int(nw + 0.5))  # a 1×N strip stays one pixel high
    if test_scale is None:
        return int(h), int(w)
    s0, s1 = float(test_scale[0]), float(test_scale[1])
    f = min(max(s0, s1) / max(h, w), min(s0, s1) / min(h, w))
    return max(1, int(h * f + 0.5)), max(1, int(w * f + 0.5))


def preprocess(images: np.ndarray, test_scale: Sequence[int] | None,
               exact: Sequence[int] | None = None, shortest_edge: Sequence[int] | None = None,
               max_pixels: int | None = None) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB → normalised float32 (N, 3, h, w) at the network size (:func:`network_size`).

    Raises ValueError for other arrays, and for images of more than ``max_pixels`` pixels (when given).
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or min(images.shape) == 0:
        raise ValueError(f"expected uint8 (N, H, W, 3) RGB images, got {images.dtype} {tuple(images.shape)}")
    n, h, w, _ = images.shape
    if max_pixels and h * w > max_pixels:
        raise ValueError(f"image of {h}x{w} has more than the server's limit of {max_pixels} pixels (the "
                         "max_pixels parameter of the pre-processing model's config.pbtxt); resize it first")
    nh, nw = network_size(h, w, test_scale, exact, None if exact is not None else shortest_edge)
    out = np.empty((n, 3, nh, nw), dtype=np.float32)
    for i in range(n):
        if (nh, nw) == (h, w):
            img = images[i]
        elif shortest_edge is not None and exact is None:  # detectron2 resizes with PIL, not OpenCV
            from PIL import Image

            img = np.asarray(Image.fromarray(images[i]).resize((nw, nh), Image.BILINEAR))
        else:
            img = cv2.resize(images[i], (nw, nh), interpolation=cv2.INTER_LINEAR)
        if shortest_edge is not None and exact is None:  # detectron2 divides by the std (bit-equal inputs)
            out[i] = ((img.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)
        else:
            out[i] = ((img.astype(np.float32) - MEAN) * INV_STD).transpose(2, 0, 1)
    return out


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps with half-pixel centres (torch ``align_corners=False``): i0, i1, weight of i1."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def postprocess(logits: np.ndarray, size: Sequence[int], rows: int = 16) -> np.ndarray:
    """float32 logits (N, K, h, w) → int32 labels (N, H, W): bilinear resize to ``size``, then argmax.

    Works a few output rows at a time, so the K×H×W resized logits are never held at once.
    """
    logits = np.asarray(logits, dtype=np.float32)
    n, k, h, w = logits.shape
    out_h, out_w = int(size[0]), int(size[1])
    y0, y1, wy = _taps(h, out_h)
    x0, x1, wx = _taps(w, out_w)
    labels = np.empty((n, out_h, out_w), dtype=np.int32)
    for b in range(n):
        src = logits[b]
        cols = src[:, :, x0] * (1.0 - wx) + src[:, :, x1] * wx  # (K, h, W)
        for start in range(0, out_h, rows):
            sl = slice(start, min(start + rows, out_h))
            a = wy[sl][None, :, None]
            block = cols[:, y0[sl]] * (1.0 - a) + cols[:, y1[sl]] * a  # (K, r, W)
            labels[b, sl] = block.argmax(0)
    return labels
