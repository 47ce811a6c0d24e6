"""Procedurally generated scenes with exact label maps, for training smoke tests and demos.

Each scene has a sky gradient above a wavy horizon and a textured ground below, then 3–8 objects drawn
in order (later ones occlude earlier ones). Every object class has its own shape, texture and colour
family (hue), with per-instance jitter in hue, brightness, size, position and orientation, so a small
model can learn them. Labels are exact: the very mask used to paint an object's pixels is written to
the label map; pixel noise is added to the image only.

Samples are deterministic per ``(seed, index)`` and any size works (shapes scale with the image). A
256×256 sample takes a few milliseconds.
"""

from __future__ import annotations

import colorsys
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..classes import generic_palette
from ..fileio import write_text_atomic

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "sky", "ground", "disc", "box", "triangle", "striped blob", "checker patch", "dotted polygon",
    "ring", "pole", "star", "cross",
)

SHAPES = ("circle", "rect", "triangle", "ellipse", "rotrect", "polygon", "ring", "pole", "star", "cross")
TEXTURES = ("radial", "shaded", "stripes", "checker", "dots", "solid")


@dataclass(frozen=True)
class _ObjectClass:
    shape: str
    texture: str
    hue: float  # degrees
    sat: float
    val: float


# classes 2.. (0 = sky, 1 = ground are backgrounds)
_NAMED: tuple[_ObjectClass, ...] = (
    _ObjectClass("circle", "radial", 0.0, 0.85, 0.85),
    _ObjectClass("rect", "shaded", 55.0, 0.9, 0.95),
    _ObjectClass("triangle", "shaded", 125.0, 0.8, 0.7),
    _ObjectClass("ellipse", "stripes", 275.0, 0.7, 0.75),
    _ObjectClass("rotrect", "checker", 180.0, 0.9, 0.8),
    _ObjectClass("polygon", "dots", 28.0, 0.95, 0.95),
    _ObjectClass("ring", "solid", 320.0, 0.75, 0.9),
    _ObjectClass("pole", "shaded", 0.0, 0.0, 0.55),
    _ObjectClass("star", "shaded", 90.0, 0.85, 0.8),
    _ObjectClass("cross", "stripes", 225.0, 0.8, 0.7),
)


def _object_class(c: int) -> _ObjectClass:
    """Description of object class ``c`` (``c >= 2``); classes past the named ones are generated."""
    k = c - 2
    if k < len(_NAMED):
        return _NAMED[k]
    hue = (k * 0.618033988749895 * 360.0) % 360.0
    return _ObjectClass(
        SHAPES[k % len(SHAPES)], TEXTURES[(k // len(SHAPES) + k) % len(TEXTURES)], hue,
        0.55 + 0.4 * ((k * 7) % 5) / 4, 0.55 + 0.4 * ((k * 3) % 4) / 3,
    )


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return np.array([r, g, b], dtype=np.float32) * 255.0


def synthetic_classes(num_classes: int) -> tuple[str, ...]:
    """Class names for ``num_classes`` synthetic classes (extra ones are named ``"object <k>"``)."""
    names = list(SYNTHETIC_CLASSES[:num_classes])
    names += [f"object {k}" for k in range(len(names), num_classes)]
    return tuple(names)


def synthetic_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """A display colour per class: each class's base colour (sky blue, ground brown, ...)."""
    pal = [(135, 185, 235), (115, 90, 55)]
    for c in range(2, num_classes):
        oc = _object_class(c)
        pal.append(tuple(int(x) for x in _hsv(oc.hue, oc.sat, oc.val)))  # type: ignore[misc]
    # keep colours distinct for display even where two classes share a hue (e.g. grey pole)
    if len(set(pal)) < len(pal):
        extra = generic_palette(num_classes, seed=1)
        seen: set[tuple[int, int, int]] = set()
        for i, c in enumerate(pal):
            if c in seen:
                pal[i] = extra[i]
            seen.add(pal[i])
    return pal


class SyntheticScenes:
    """A deterministic, indexable data set of synthetic scenes.

    Args:
        num_classes: number of classes, at least 8 (0 = sky, 1 = ground, then object classes).
        size: ``(H, W)`` of every sample.
        seed: data-set seed; sample ``i`` depends only on ``(seed, i)``.
        length: number of samples ``len()`` reports.
        noise: amplitude of the uniform per-pixel noise added to images (0 disables it).

    Attributes:
        classes: class names. palette: display colours. num_classes, ignore_index (255, unused).
    """

    def __init__(
        self, num_classes: int = 8, size: tuple[int, int] = (256, 256), seed: int = 0, length: int = 1000,
        noise: int = 6,
    ) -> None:
        if num_classes < 8:
            raise ValueError(f"SyntheticScenes needs num_classes >= 8, got {num_classes}")
        if num_classes > 255:
            raise ValueError("SyntheticScenes supports at most 255 classes (labels are uint8)")
        h, w = int(size[0]), int(size[1])
        if h < 4 or w < 4:
            raise ValueError(f"size must be at least 4x4, got {size}")
        if length < 0:
            raise ValueError("length must be >= 0")
        self.num_classes = num_classes
        self.size = (h, w)
        self.seed = int(seed)
        self.length = int(length)
        self.noise = int(noise)
        self.classes = synthetic_classes(num_classes)
        self.palette = synthetic_palette(num_classes)
        self.ignore_index = 255

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index``: ``(image uint8 (H, W, 3) RGB, label uint8 (H, W))``."""
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        return self.render(index)

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Render sample ``index`` (no bounds check; any non-negative index works)."""
        rng = np.random.default_rng([self.seed, int(index)])
        h, w = self.size
        img = np.empty((h, w, 3), dtype=np.float32)
        label = np.empty((h, w), dtype=np.uint8)
        self._background(rng, img, label)
        for _ in range(int(rng.integers(3, 9))):
            self._draw_object(rng, img, label, int(rng.integers(2, self.num_classes)))
        if self.noise > 0:
            img += rng.integers(-self.noise, self.noise + 1, size=img.shape, dtype=np.int16)
        np.clip(img, 0, 255, out=img)
        return img.astype(np.uint8), label

    # -- background ---------------------------------------------------------------------------------

    def _background(self, rng: np.random.Generator, img: np.ndarray, label: np.ndarray) -> None:
        h, w = self.size
        ys = np.arange(h, dtype=np.float32)[:, None]
        xs = np.arange(w, dtype=np.float32)[None, :]
        base = rng.uniform(0.3, 0.65) * h
        amp = rng.uniform(0.0, 0.08) * h
        freq = rng.uniform(0.5, 3.0) * 2 * math.pi / w
        phase = rng.uniform(0, 2 * math.pi)
        horizon = base + amp * np.sin(xs * freq + phase)  # (1, W)
        sky = ys < horizon  # (H, W)
        # sky: vertical gradient from deep blue (top) to pale blue (horizon)
        top = _hsv(rng.uniform(205, 225), rng.uniform(0.6, 0.8), rng.uniform(0.55, 0.75))
        bottom = _hsv(rng.uniform(195, 210), rng.uniform(0.15, 0.35), rng.uniform(0.9, 1.0))
        t = np.clip(ys / max(float(base + amp), 1.0), 0.0, 1.0)[:, :, None]  # (H, 1, 1)
        sky_rgb = top * (1 - t) + bottom * t  # (H, 1, 3)
        # ground: brown/olive with low-frequency blotches, darker towards the bottom
        g_col = _hsv(rng.uniform(25, 45), rng.uniform(0.45, 0.65), rng.uniform(0.35, 0.5))
        coarse = rng.uniform(0.75, 1.25, size=(max(h // 16, 2), max(w // 16, 2))).astype(np.float32)
        blotch = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)[:, :, None]
        depth = (0.8 + 0.3 * ys / h)[:, :, None]
        np.multiply(blotch * depth, g_col, out=img)  # ground everywhere, (H, W, 3)
        np.copyto(img, np.broadcast_to(sky_rgb, img.shape), where=sky[:, :, None])
        np.subtract(1, sky, out=label, casting="unsafe")  # 0 = sky, 1 = ground

    # -- objects ------------------------------------------------------------------------------------

    def _mask(self, rng: np.random.Generator, shape: str) -> np.ndarray:
        """Binary mask (uint8 H×W, 1 inside) of one instance of ``shape``."""
        h, w = self.size
        s = min(h, w)
        mask = np.zeros((h, w), dtype=np.uint8)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.06, 0.2) * s + 1.0
        ang = rng.uniform(0, 2 * math.pi)

        def poly(points: np.ndarray) -> None:
            cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1, lineType=cv2.LINE_8)

        def rotated(half_w: float, half_h: float, a: float) -> np.ndarray:
            c, sn = math.cos(a), math.sin(a)
            corners = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
            rot = np.array([[c, -sn], [sn, c]])
            return corners @ rot.T + [cx, cy]

        if shape == "circle":
            cv2.circle(mask, (int(cx), int(cy)), max(int(r), 1), 1, thickness=-1, lineType=cv2.LINE_8)
        elif shape == "ring":
            cv2.circle(mask, (int(cx), int(cy)), max(int(r * 1.2), 2), 1, thickness=-1, lineType=cv2.LINE_8)
            cv2.circle(mask, (int(cx), int(cy)), max(int(r * 0.6), 1), 0, thickness=-1, lineType=cv2.LINE_8)
        elif shape == "rect":
            poly(rotated(r * rng.uniform(0.6, 1.4), r * rng.uniform(0.6, 1.4), 0.0))
        elif shape == "rotrect":
            poly(rotated(r * rng.uniform(0.6, 1.4), r * rng.uniform(0.6, 1.4), ang))
        elif shape == "pole":
            poly(rotated(max(r * 0.12, 1.0), r * 2.5, rng.uniform(-0.15, 0.15)))
        elif shape == "ellipse":
            axes = (max(int(r * rng.uniform(0.9, 1.5)), 1), max(int(r * rng.uniform(0.4, 0.8)), 1))
            cv2.ellipse(mask, (int(cx), int(cy)), axes, math.degrees(ang), 0, 360, 1, thickness=-1)
        elif shape == "triangle":
            a = ang + np.array([0, 2 * math.pi / 3, 4 * math.pi / 3]) + rng.uniform(-0.3, 0.3, 3)
            poly(np.stack([cx + r * 1.3 * np.cos(a), cy + r * 1.3 * np.sin(a)], 1))
        elif shape == "polygon":
            n = int(rng.integers(5, 8))
            a = np.sort(rng.uniform(0, 2 * math.pi, n))
            rr = r * rng.uniform(0.8, 1.2, n)
            poly(np.stack([cx + rr * np.cos(a), cy + rr * np.sin(a)], 1))
        elif shape == "star":
            a = ang + np.arange(10) * math.pi / 5
            rr = np.where(np.arange(10) % 2 == 0, r * 1.3, r * 0.55)
            poly(np.stack([cx + rr * np.cos(a), cy + rr * np.sin(a)], 1))
        elif shape == "cross":
            poly(rotated(r * 1.2, r * 0.35, ang))
            poly(rotated(r * 0.35, r * 1.2, ang))
        else:  # pragma: no cover - SHAPES is closed
            raise ValueError(shape)
        return mask

    def _draw_object(self, rng: np.random.Generator, img: np.ndarray, label: np.ndarray, cls: int) -> None:
        oc = _object_class(cls)
        mask = self._mask(rng, oc.shape)
        x0, y0, bw, bh = cv2.boundingRect(mask)
        if bw == 0 or bh == 0:
            return
        y1, x1 = y0 + bh, x0 + bw
        m = mask[y0:y1, x0:x1].astype(bool)
        hh, ww = m.shape
        yy = np.arange(hh, dtype=np.float32)[:, None]
        xx = np.arange(ww, dtype=np.float32)[None, :]
        col = _hsv(oc.hue + rng.uniform(-8, 8), oc.sat * rng.uniform(0.9, 1.05), oc.val * rng.uniform(0.85, 1.05))
        tex = self._texture(rng, oc.texture, col, yy, xx, hh, ww)
        region = img[y0:y1, x0:x1]
        region[m] = tex[m]
        label[y0:y1, x0:x1][m] = cls

    @staticmethod
    def _texture(
        rng: np.random.Generator, kind: str, col: np.ndarray, yy: np.ndarray, xx: np.ndarray, hh: int, ww: int
    ) -> np.ndarray:
        """RGB float texture ``(hh, ww, 3)`` of one object in its bounding box."""
        light = col * 0.35 + 255.0 * 0.65
        dark = col * 0.45
        if kind == "radial":
            d = np.sqrt((yy - hh / 2) ** 2 + (xx - ww / 2) ** 2) / (max(hh, ww) / 2 + 1e-6)
            return col * (1.15 - 0.5 * np.clip(d, 0, 1))[:, :, None]
        if kind == "shaded":
            a = rng.uniform(0, 2 * math.pi)
            g = (xx * math.cos(a) + yy * math.sin(a)) / (max(hh, ww) + 1e-6)
            return col * (0.85 + 0.3 * g)[:, :, None]
        if kind == "stripes":
            a = rng.uniform(0, math.pi)
            period = rng.uniform(4.0, 9.0)
            s = np.floor((xx * math.cos(a) + yy * math.sin(a)) / period) % 2
            return np.where(s[:, :, None] > 0, col, light)
        if kind == "checker":
            p = int(rng.integers(3, 8))
            s = ((yy // p + xx // p) % 2)[:, :, None]
            return np.where(s > 0, col, dark)
        if kind == "dots":
            p = rng.uniform(5.0, 9.0)
            dy = (yy % p) - p / 2
            dx = (xx % p) - p / 2
            s = (dy * dy + dx * dx < (p * 0.3) ** 2)[:, :, None]
            return np.where(s, dark, col)
        return np.broadcast_to(col, (hh, ww, 3))  # solid


def write_synthetic_dataset(
    root: str | os.PathLike,
    n: int,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
    num_classes: int = 8,
) -> Path:
    """Write ``n`` synthetic samples as a ``folder``-format data set.

    Layout: ``root/images/00000.png``, ``root/labels/00000.png`` (uint8 class indices) and
    ``root/classes.txt`` (one name per line). Every file is written atomically.

    Args:
        root: output directory (created).
        n: number of samples.
        size: ``(H, W)``.
        seed: data-set seed.
        num_classes: classes (>= 8).

    Returns:
        ``root`` as a Path.
    """
    from .io import write_png

    root = Path(root)
    scenes = SyntheticScenes(num_classes=num_classes, size=size, seed=seed, length=n)
    for i in range(n):
        img, lab = scenes[i]
        write_png(root / "images" / f"{i:05d}.png", img)
        write_png(root / "labels" / f"{i:05d}.png", lab)
    write_text_atomic(root / "classes.txt", "\n".join(scenes.classes) + "\n")
    return root
