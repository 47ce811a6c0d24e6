"""Pre-processing and training augmentation that reproduce mmseg/mmcv exactly, with OpenCV.

Test time (what every backend is fed):
    :func:`rescale_size` + :func:`resize_image` = ``mmcv.imrescale`` (keep ratio, bilinear, no pad),
    :func:`normalize` = ``Normalize(mean, std, to_rgb=True)`` → float32 ``(3, H, W)``.

Training (mmseg's ``train_pipeline`` order): :func:`random_resize` → :func:`random_crop` →
:func:`random_flip` → :func:`photo_metric_distortion` → normalise → :func:`pad`; bundled in
:class:`TrainAugment`. Random numbers come from a caller-supplied ``numpy.random.Generator`` drawn in the
same order and with the same distributions as mmseg's ``np.random`` calls, so a seed gives one result.

Images are ``uint8`` ``(H, W, 3)`` RGB; labels are ``uint8`` ``(H, W)`` with 255 = ignore.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..config import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:  # pragma: no cover
    import torch

Size2 = tuple[int, int]


def _pair(x: int | Sequence[int]) -> Size2:
    if isinstance(x, (int, np.integer)):
        return int(x), int(x)
    a, b = x
    return int(a), int(b)


# --------------------------------------------------------------------------------------------------
# Test-time resize and normalisation
# --------------------------------------------------------------------------------------------------


def rescale_size(h: int, w: int, scale: Sequence[int] | float) -> Size2:
    """Output size of ``mmcv.imrescale`` (keep aspect ratio).

    With ``scale = (long, short)`` (order does not matter) the factor is
    ``min(max(scale) / max(h, w), min(scale) / min(h, w))``; with a number it is that number.
    The new size is ``int(w * f + 0.5)`` × ``int(h * f + 0.5)``.

    Args:
        h: input height.
        w: input width.
        scale: ``(long_edge_max, short_edge_max)`` or a scale factor.

    Returns:
        ``(new_h, new_w)``. Example: 480×640 with (2048, 512) → (512, 683).
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    if isinstance(scale, (int, float, np.integer, np.floating)):
        factor = float(scale)
        if factor <= 0:
            raise ValueError(f"scale factor must be positive, got {scale}")
    else:
        s0, s1 = (float(s) for s in scale)
        factor = min(max(s0, s1) / max(h, w), min(s0, s1) / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))  # a 1×N strip never becomes 0 wide


def resize_image(img: np.ndarray, size_hw: Sequence[int], interpolation: str = "bilinear") -> np.ndarray:
    """Resize like ``mmcv.imresize`` with the cv2 backend.

    Args:
        img: ``(H, W)`` or ``(H, W, C)`` array.
        size_hw: output ``(height, width)``.
        interpolation: ``"bilinear"`` (``cv2.INTER_LINEAR``, images) or ``"nearest"`` (labels).

    Returns:
        The resized array, same dtype.
    """
    codes = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}
    if interpolation not in codes:
        raise ValueError(f"interpolation must be one of {sorted(codes)}, got {interpolation!r}")
    h, w = _pair(size_hw)
    if (h, w) == img.shape[:2]:
        return img.copy()
    return cv2.resize(img, (w, h), interpolation=codes[interpolation])


def rescale_image(img: np.ndarray, scale: Sequence[int] | float, interpolation: str = "bilinear") -> np.ndarray:
    """``mmcv.imrescale``: keep-ratio resize so the image fits ``scale``.

    Args:
        img: ``(H, W[, C])`` array.
        scale: ``(long, short)`` bound or a factor (see :func:`rescale_size`).
        interpolation: ``"bilinear"`` or ``"nearest"``.

    Returns:
        The resized array.
    """
    return resize_image(img, rescale_size(img.shape[0], img.shape[1], scale), interpolation)


def normalize(
    img_rgb: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Normalise an RGB uint8 image to float32 CHW, as mmcv ``imnormalize`` does.

    Args:
        img_rgb: ``uint8`` ``(H, W, 3)`` RGB image (values 0–255).
        mean: per-channel mean on 0–255 (RGB).
        std: per-channel std on 0–255 (RGB).

    Returns:
        ``float32`` ``(3, H, W)`` array ``(img - mean) * (1 / std)``.
    """
    if img_rgb.ndim != 3 or img_rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img_rgb.shape}")
    m = np.asarray(mean, dtype=np.float32)
    inv = (1.0 / np.asarray(std, dtype=np.float64)).astype(np.float32)
    out = (img_rgb.astype(np.float32) - m) * inv
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def preprocess(img_rgb: np.ndarray, scale: Sequence[int] | float | None = None) -> np.ndarray:
    """Test-time pipeline: optional keep-ratio rescale, then :func:`normalize`.

    Args:
        img_rgb: ``uint8`` ``(H, W, 3)`` RGB image.
        scale: ``(long, short)`` test scale (e.g. ``(2048, 512)``) or ``None`` to keep the size.

    Returns:
        ``float32`` ``(3, H', W')``.
    """
    if scale is not None:
        img_rgb = rescale_image(img_rgb, scale)
    return normalize(img_rgb)


def to_tensor_batch(
    images: Sequence[np.ndarray],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Normalise and stack images of one size into a batch tensor.

    Args:
        images: ``uint8`` ``(H, W, 3)`` RGB images (all the same size), or float32 ``(3, H, W)``
            arrays that are already normalised.
        mean: per-channel mean on 0–255.
        std: per-channel std on 0–255.

    Returns:
        ``torch.float32`` tensor ``(N, 3, H, W)``.
    """
    import torch

    if len(images) == 0:
        raise ValueError("to_tensor_batch needs at least one image")
    arrays = []
    for im in images:
        a = np.asarray(im)
        if a.dtype == np.uint8:
            a = normalize(a, mean, std)
        elif not (a.ndim == 3 and a.shape[0] == 3):
            raise ValueError(f"expected uint8 (H, W, 3) or normalised (3, H, W) arrays, got {a.shape} {a.dtype}")
        arrays.append(a.astype(np.float32, copy=False))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images in a batch must have one size, got {sorted(shapes)}")
    return torch.from_numpy(np.stack(arrays))


def slide_windows(
    h: int, w: int, crop: int | Sequence[int], stride: int | Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """Window grid of mmseg's ``slide_inference``.

    ``h_grids = max(h - h_crop + h_stride - 1, 0) // h_stride + 1``; each window starts at
    ``idx * stride`` and is shifted back to end inside the image (so the last row/column is flush with
    the border); windows never exceed the image, and are smaller than ``crop`` only if the image is.

    Args:
        h: image height.
        w: image width.
        crop: window ``(h_crop, w_crop)`` or one int.
        stride: ``(h_stride, w_stride)`` or one int.

    Returns:
        ``[(y1, x1, y2, x2), ...]`` in row-major order.
    """
    hc, wc = _pair(crop)
    hs, ws = _pair(stride)
    if min(hc, wc, hs, ws) <= 0:
        raise ValueError("crop and stride must be positive")
    h_grids = max(h - hc + hs - 1, 0) // hs + 1
    w_grids = max(w - wc + ws - 1, 0) // ws + 1
    out = []
    for hi in range(h_grids):
        for wi in range(w_grids):
            y2 = min(hi * hs + hc, h)
            x2 = min(wi * ws + wc, w)
            y1 = max(y2 - hc, 0)
            x1 = max(x2 - wc, 0)
            out.append((y1, x1, y2, x2))
    return out


# --------------------------------------------------------------------------------------------------
# Training augmentation (mmseg train_pipeline)
# --------------------------------------------------------------------------------------------------


def _check_pair(img: np.ndarray, label: np.ndarray) -> None:
    if img.shape[:2] != label.shape[:2]:
        raise ValueError(f"image {img.shape[:2]} and label {label.shape[:2]} sizes differ")


def random_resize(
    img: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    img_scale: Sequence[int] = (2048, 512),
    ratio_range: tuple[float, float] | Sequence[float] = (0.5, 2.0),
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``Resize(img_scale, ratio_range, keep_ratio=True)``.

    A ratio ``r`` is drawn uniformly from a ``(min, max)`` tuple (or chosen from a list of values),
    the bound becomes ``(int(scale0 * r), int(scale1 * r))``, and image (bilinear) and label (nearest)
    are rescaled to fit it with :func:`rescale_size`.

    Args:
        img: ``uint8`` ``(H, W, 3)``.
        label: ``uint8`` ``(H, W)``.
        rng: random generator.
        img_scale: ``(long, short)`` base bound.
        ratio_range: ``(min, max)`` tuple, or a list of ratios to choose from.

    Returns:
        ``(img, label)`` resized.
    """
    _check_pair(img, label)
    if isinstance(ratio_range, tuple):
        lo, hi = ratio_range
        if lo > hi:
            raise ValueError(f"ratio_range min > max: {ratio_range}")
        ratio = rng.random() * (hi - lo) + lo
    else:
        ratio = float(ratio_range[int(rng.integers(len(ratio_range)))])
    bound = (int(img_scale[0] * ratio), int(img_scale[1] * ratio))
    size = rescale_size(img.shape[0], img.shape[1], bound)
    return resize_image(img, size, "bilinear"), resize_image(label, size, "nearest")


def _crop_bbox(shape: Sequence[int], crop_hw: Size2, rng: np.random.Generator) -> tuple[int, int, int, int]:
    margin_h = max(shape[0] - crop_hw[0], 0)
    margin_w = max(shape[1] - crop_hw[1], 0)
    oy = int(rng.integers(0, margin_h + 1))
    ox = int(rng.integers(0, margin_w + 1))
    return oy, oy + crop_hw[0], ox, ox + crop_hw[1]


def random_crop(
    img: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    crop_size: int | Sequence[int] = (512, 512),
    cat_max_ratio: float = 0.75,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``RandomCrop(crop_size, cat_max_ratio)``.

    Draws a crop (offset uniform in ``[0, margin]``); if ``cat_max_ratio < 1`` it redraws up to 10
    times until the crop holds more than one non-ignored class and none covers ``>= cat_max_ratio``
    of the non-ignored pixels (the last draw is kept otherwise). Images smaller than the crop are
    cropped to their own size (padding comes later).

    Args:
        img: ``(H, W, 3)`` image.
        label: ``(H, W)`` label.
        rng: random generator.
        crop_size: ``(h, w)`` or one int.
        cat_max_ratio: largest allowed share of one class.
        ignore_index: label value not counted.

    Returns:
        ``(img, label)`` cropped (views are copied to contiguous arrays).
    """
    _check_pair(img, label)
    crop_hw = _pair(crop_size)
    y1, y2, x1, x2 = _crop_bbox(img.shape, crop_hw, rng)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            seg = label[y1:y2, x1:x2]
            cnt = np.bincount(seg.ravel(), minlength=256) if seg.dtype == np.uint8 else None
            if cnt is None:
                vals, cnt = np.unique(seg, return_counts=True)
                cnt = cnt[vals != ignore_index]
            else:
                if 0 <= ignore_index < 256:
                    cnt[ignore_index] = 0
                cnt = cnt[cnt > 0]
            if len(cnt) > 1 and cnt.max() / cnt.sum() < cat_max_ratio:
                break
            y1, y2, x1, x2 = _crop_bbox(img.shape, crop_hw, rng)
    return (
        np.ascontiguousarray(img[y1:y2, x1:x2]),
        np.ascontiguousarray(label[y1:y2, x1:x2]),
    )


def random_flip(
    img: np.ndarray, label: np.ndarray, rng: np.random.Generator, prob: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``RandomFlip(prob)``: horizontal flip of both when ``rng.random() < prob``.

    Args:
        img: ``(H, W, 3)`` image.
        label: ``(H, W)`` label.
        rng: random generator (one draw).
        prob: flip probability.

    Returns:
        ``(img, label)``, flipped or unchanged.
    """
    _check_pair(img, label)
    if rng.random() < prob:
        return np.ascontiguousarray(img[:, ::-1]), np.ascontiguousarray(label[:, ::-1])
    return img, label


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    out = img.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(out, 0, 255).astype(np.uint8)


def photo_metric_distortion(
    img_rgb: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: int = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion`` with its order and coin flips.

    1. brightness (p=0.5): ``+ U(-delta, delta)``; 2. draw ``mode``; if ``mode == 1`` contrast
    (p=0.5): ``× U(lo, hi)``; 3. saturation in HSV (p=0.5): ``S × U(lo, hi)``; 4. hue in HSV (p=0.5):
    ``H + randint(-delta, delta)`` mod 180 (upper bound exclusive, as ``np.random.randint``);
    5. if ``mode == 0`` contrast. Each step clips to 0–255 and truncates to uint8. HSV conversion on RGB
    input gives the same H, S, V as mmcv's on the equivalent BGR image.

    Args:
        img_rgb: ``uint8`` ``(H, W, 3)`` RGB image.
        rng: random generator.
        brightness_delta: brightness shift bound.
        contrast_range: contrast factor range.
        saturation_range: saturation factor range.
        hue_delta: hue shift bound (OpenCV hue units, 0–179).

    Returns:
        ``uint8`` ``(H, W, 3)`` RGB image.
    """
    img = img_rgb
    if rng.integers(2):
        img = _convert(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    mode = int(rng.integers(2))

    def contrast(x: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            return _convert(x, alpha=rng.uniform(*contrast_range))
        return x

    if mode == 1:
        img = contrast(img)
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rng.uniform(*saturation_range))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        shift = int(rng.integers(-hue_delta, hue_delta))
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int64) + shift) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if mode == 0:
        img = contrast(img)
    return img


def pad(
    img: np.ndarray,
    label: np.ndarray | None,
    size: int | Sequence[int],
    pad_val: float = 0,
    seg_pad_val: int = 255,
) -> tuple[np.ndarray, np.ndarray | None]:
    """mmseg ``Pad(size)``: pad bottom/right up to ``size`` (never crops).

    Args:
        img: ``(H, W, C)`` (HWC) image, any dtype.
        label: ``(H, W)`` label or ``None``.
        size: target ``(h, w)`` or one int.
        pad_val: image fill value.
        seg_pad_val: label fill value.

    Returns:
        ``(img, label)`` of at least ``size``.
    """
    th, tw = _pair(size)
    h, w = img.shape[:2]
    ph, pw = max(th - h, 0), max(tw - w, 0)
    if ph == 0 and pw == 0:
        return img, label
    out = np.full((h + ph, w + pw) + img.shape[2:], pad_val, dtype=img.dtype)
    out[:h, :w] = img
    if label is not None:
        lab = np.full((h + ph, w + pw), seg_pad_val, dtype=label.dtype)
        lab[:h, :w] = label
        label = lab
    return out, label


@dataclass(frozen=True)
class TrainAugment:
    """mmseg's SeMask training pipeline: Resize → RandomCrop → RandomFlip → PhotoMetricDistortion →
    Normalize → Pad.

    Attributes:
        crop_size: ``(h, w)`` crop, also the padded output size.
        img_scale: ``(long, short)`` base scale for the random resize (``(2048, 512)`` for ADE20K,
            ``(2048, 1024)`` for Cityscapes).
        ratio_range: ``(min, max)`` ratio range (or a list of ratios as in the COCO-Stuff config).
        cat_max_ratio: :func:`random_crop`'s class-share limit (1.0 disables it).
        flip_prob: horizontal flip probability.
        photometric: apply :func:`photo_metric_distortion`.
        ignore_index: label value of ignored pixels (also the label pad value).
        normalize: return a normalised float32 ``(3, h, w)`` image padded with 0 AFTER
            normalisation (exactly mmseg); if False return the ``uint8`` ``(h, w, 3)`` image padded
            with 0.
    """

    crop_size: tuple[int, int] = (512, 512)
    img_scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] | tuple[float, ...] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    ignore_index: int = 255
    normalize: bool = True

    def __call__(
        self, img: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment one ``(image uint8 (H, W, 3) RGB, label uint8 (H, W))`` pair.

        Returns:
            ``(image, label)``: image float32 ``(3, h, w)`` (or uint8 ``(h, w, 3)``), label uint8
            ``(h, w)`` with ``ignore_index`` in the padding.
        """
        ratio = self.ratio_range if len(self.ratio_range) == 2 else list(self.ratio_range)
        img, label = random_resize(img, label, rng, self.img_scale, ratio)
        img, label = random_crop(img, label, rng, self.crop_size, self.cat_max_ratio, self.ignore_index)
        img, label = random_flip(img, label, rng, self.flip_prob)
        if self.photometric:
            img = photo_metric_distortion(img, rng)
        if self.normalize:
            chw = normalize(img)
            hwc, label = pad(chw.transpose(1, 2, 0), label, self.crop_size, 0.0, self.ignore_index)
            return np.ascontiguousarray(hwc.transpose(2, 0, 1)), label
        img, label = pad(img, label, self.crop_size, 0, self.ignore_index)
        return img, label


def shortest_edge_size(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge.get_output_shape``: the short side to ``min_size``, capped so the long
    side is ≤ ``max_size``; each side rounded as ``int(x + 0.5)`` and at least 1 (detectron2 itself fails on a
    strip whose short side rounds to 0; here a 1×N strip stays one pixel high, as in :func:`rescale_size`).

    Returns:
        (new_h, new_w).
    """
    size = min_size * 1.0
    scale = size / min(h, w)
    newh, neww = (size, scale * w) if h < w else (scale * h, size)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return max(1, int(newh + 0.5)), max(1, int(neww + 0.5))


def resize_shortest_edge(img: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """detectron2's test-time ``ResizeShortestEdge`` on a uint8 ``(H, W, 3)`` image: PIL bilinear
    (``ResizeTransform.apply_image``) to :func:`shortest_edge_size`."""
    from PIL import Image

    h, w = img.shape[:2]
    new_h, new_w = shortest_edge_size(h, w, min_size, max_size)
    if (new_h, new_w) == (h, w):
        return img
    return np.array(Image.fromarray(img).resize((new_w, new_h), Image.BILINEAR))
