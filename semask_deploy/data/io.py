"""Image and label-map I/O with OpenCV, plus colouring of label maps.

Images are returned as ``uint8`` ``H×W×3`` RGB arrays, decoded the way mmseg's ``LoadImageFromFile``
does (OpenCV, colour mode, EXIF orientation applied): grayscale is replicated to 3 channels, an
alpha channel is dropped, 16-bit and float images are scaled to 8 bits as ``IMREAD_COLOR`` does. Label maps are read unchanged (no orientation, no colour conversion).
Every file written goes to a temporary name first and is renamed (see :mod:`semask_deploy.fileio`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..errors import ImageError
from ..fileio import atomic_path

IMAGE_EXTENSIONS: tuple[str, ...] = (  # the file types OpenCV's imread decodes
    ".jpg", ".jpeg", ".jpe", ".jfif", ".jfi", ".jif", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif", ".avif", ".jp2",
    ".ppm", ".pgm", ".pbm", ".pnm", ".pxm", ".pfm", ".sr", ".ras", ".hdr", ".pic",
)

PathLike = str | os.PathLike


def _read_bytes(path: PathLike, what: str) -> bytes:
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{what} not found: {p} (check the path)")
    if p.is_dir():
        raise ImageError(f"{what} path is a directory, not a file: {p} (pass an image file)")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {what} {p}: {exc.strerror or exc} (check its permissions)") from exc
    if not data:
        raise ImageError(f"{what} is an empty file: {p} (not fully written or copied: write or copy it again)")
    return data


_quiet = {"lock": threading.Lock(), "depth": 0, "level": None}  # shared by the threads that decode at once


def _imdecode_quietly(data: bytes, flags: int) -> np.ndarray | None:
    """``cv2.imdecode`` with OpenCV's own log lines held back: a decoder that cannot honour ``flags`` prints
    a ``[ WARN ]`` or ``[ERROR]`` line to stderr before returning None, and the caller reports that case itself.

    OpenCV's log level is process-wide, so concurrent decodes (loader threads, a server) share one "silent"
    span: the first to enter saves the level, the last to leave restores it, and decoding itself is not
    serialised."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is None:  # an OpenCV build without the logging module
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    with _quiet["lock"]:
        if _quiet["depth"] == 0:
            _quiet["level"] = log.getLogLevel()
            log.setLogLevel(log.LOG_LEVEL_SILENT)
        _quiet["depth"] += 1
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    finally:
        with _quiet["lock"]:
            _quiet["depth"] -= 1
            if _quiet["depth"] == 0:
                log.setLogLevel(_quiet["level"])


def _decode(data: bytes, flags: int, path: Path, what: str) -> np.ndarray:
    arr = _imdecode_quietly(data, flags)
    if (arr is None or arr.size == 0) and flags != cv2.IMREAD_UNCHANGED:
        raw = _imdecode_quietly(data, cv2.IMREAD_UNCHANGED)  # a valid file OpenCV cannot give in this form?
        if raw is not None and raw.size:
            channels = 1 if raw.ndim == 2 else raw.shape[2]
            raise ImageError(f"{path} is a {channels}-channel {raw.dtype} image that OpenCV cannot convert to 8 bits "
                             "per channel; save it as an 8-bit (or 16-bit) PNG/TIFF first")
    if arr is None or arr.size == 0:
        raise ImageError(
            f"cannot decode {what} {path}: not an image OpenCV can read or the file is corrupt "
            f"(use PNG/JPEG/BMP/TIFF/WebP)"
        )
    return arr


def read_image_rgb(path: PathLike, allow_16bit: bool = True) -> np.ndarray:
    """Read any image OpenCV decodes as 8-bit RGB — exactly what ``cv2.imread(path, cv2.IMREAD_COLOR)`` (mmseg's
    ``LoadImageFromFile``) gives, converted to RGB.

    * EXIF orientation (JPEG, TIFF, …) is applied, as ``IMREAD_COLOR`` does;
    * grayscale is replicated to 3 channels, an alpha channel is dropped (not blended);
    * 16-bit and floating-point images are converted to 8 bits by OpenCV's own ``IMREAD_COLOR`` conversion
      (16-bit: ``v >> 8``);
    * any size, including one pixel and 1×N strips.

    Args:
        path: image file (any format OpenCV decodes).
        allow_16bit: False refuses 16-bit images instead of scaling them (so no precision is lost silently).

    Returns:
        ``uint8`` array ``(H, W, 3)`` in RGB order.

    Raises:
        ImageError: missing, unreadable, empty or undecodable file (or 16-bit when not allowed).
    """
    p = Path(path)
    data = _read_bytes(p, "image")
    img = _decode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH, p, "image")  # orientation applied (not UNCHANGED)
    if img.dtype != np.uint8:
        if img.dtype == np.uint16 and not allow_16bit:
            raise ImageError(f"{p} is a 16-bit image; convert it to 8 bits per channel first (or call "
                             "read_image_rgb(..., allow_16bit=True) to scale it)")
        depth = img.dtype
        img = _imdecode_quietly(data, cv2.IMREAD_COLOR)  # OpenCV's own conversion to 8 bits
        if img is None or img.size == 0:  # e.g. a 32-bit float TIFF: decodable, but IMREAD_COLOR has no 8-bit form
            raise ImageError(f"{p} is a {depth} image that OpenCV cannot convert to 8 bits per channel; "
                             "save it as an 8-bit (or 16-bit) PNG/TIFF first")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _png_color_type(data: bytes) -> int | None:
    """PNG IHDR colour type (3 = palette) or None if ``data`` is not a PNG."""
    if len(data) >= 26 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return data[25]
    return None


def read_label(path: PathLike) -> np.ndarray:
    """Read a label map with its stored values unchanged.

    Palette ("P"-mode) PNGs yield their palette indices, as with Pillow in mmseg (needs Pillow).
    A 3-channel file is accepted only if its channels are identical (a grayscale map saved as RGB).

    Args:
        path: label image, usually an 8-bit single-channel PNG.

    Returns:
        ``(H, W)`` array, ``uint8`` for 8-bit files (``uint16`` for 16-bit ones).

    Raises:
        ImageError: unreadable file, or a colour (multi-channel) label map.
    """
    p = Path(path)
    data = _read_bytes(p, "label map")
    if _png_color_type(data) == 3:
        try:
            from PIL import Image
        except ImportError as exc:
            raise ImageError(
                f"{p} is a palette PNG; install Pillow to read its indices, or save the label map "
                f"as a single-channel (grayscale) PNG"
            ) from exc
        import io

        with Image.open(io.BytesIO(data)) as im:
            return np.array(im, dtype=np.uint8)
    lab = _decode(data, cv2.IMREAD_UNCHANGED, p, "label map")
    if _png_color_type(data) == 0 and data[24] == 1:
        # a 1-bit grayscale PNG (Pillow's mode "1", e.g. Image.fromarray(bool_mask).save): OpenCV expands its
        # bits to 0/255, Pillow (mmseg's label reader) to 0/1 — class 1, not ignore
        lab = (lab != 0).astype(np.uint8)
    if lab.ndim == 3:
        if lab.shape[2] == 1:
            lab = lab[:, :, 0]
        elif lab.shape[2] in (3, 4) and np.array_equal(lab[:, :, 0], lab[:, :, 1]) and np.array_equal(
            lab[:, :, 0], lab[:, :, 2]
        ):
            lab = lab[:, :, 0]
        else:
            raise ImageError(
                f"label map {p} has {lab.shape[2]} colour channels; label maps must be single-channel "
                f"images of class indices (save it as a grayscale PNG with values 0..K-1, 255 = ignore)"
            )
    if lab.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"label map {p} has {lab.dtype} values; save it as an 8-bit grayscale PNG")
    return np.ascontiguousarray(lab)


def list_images(path_or_dir: PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """List the image files given by a file or a directory.

    Args:
        path_or_dir: one image file, or a directory searched (non-recursively) for images.
        extensions: accepted lower-case suffixes.

    Returns:
        Sorted list of paths (a one-element list for a file).

    Raises:
        ImageError: the path does not exist, a file has an unknown extension, or a directory holds
            no images.
    """
    p = Path(path_or_dir)
    exts = {e.lower() for e in extensions}
    if not p.exists():
        raise ImageError(f"no such file or directory: {p}")
    if p.is_file():
        if p.suffix.lower() not in exts:
            raise ImageError(f"{p} does not look like an image (extensions: {' '.join(sorted(exts))}; an image saved "
                             "under another name: rename or copy it with one of these)")
        return [p]
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in exts and not f.name.startswith("."))
    if not files:
        raise ImageError(f"no images in {p} (looked for {' '.join(sorted(exts))})")
    return files


def write_png(path: PathLike, array: np.ndarray, rgb: bool = True) -> Path:
    """Write an array as a PNG, atomically (temporary name, then rename).

    Args:
        path: destination (``.png`` is enforced).
        array: ``(H, W)`` uint8/uint16 (a label map or grayscale image) or ``(H, W, 3|4)`` uint8.
        rgb: whether a colour array is in RGB(A) order (converted to OpenCV's BGR(A)).

    Returns:
        The written path.

    Raises:
        ImageError: unsupported dtype/shape, wrong extension, or the encoder/filesystem failed.
    """
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ImageError(f"write_png needs a .png path, got {p}")
    a = np.asarray(array)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if a.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"cannot write {a.dtype} data as PNG; convert it to uint8 first")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and a.shape[2] in (3, 4):
        if rgb:
            a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR if a.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    elif a.ndim != 2:
        raise ImageError(f"cannot write an array of shape {a.shape} as PNG (need H,W or H,W,3/4)")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(a))
    if not ok:
        raise ImageError(f"OpenCV failed to encode {p}")
    try:
        with atomic_path(p) as tmp:
            tmp.write_bytes(buf.tobytes())
    except OSError as exc:
        raise ImageError(f"cannot write {p}: {exc.strerror or exc} (check the directory and free space)") from exc
    return p


def colorize(
    labels: np.ndarray, palette: Sequence[Sequence[int]], ignore_color: Sequence[int] = (0, 0, 0)
) -> np.ndarray:
    """Map a label map to colours.

    Args:
        labels: ``(H, W)`` integer labels (numpy or anything ``np.asarray`` accepts).
        palette: ``(K, 3)`` RGB colour per class.
        ignore_color: colour of values outside ``[0, K)`` (e.g. 255 = ignore).

    Returns:
        ``uint8`` ``(H, W, 3)`` RGB image.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {lab.shape}")
    pal = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    k = pal.shape[0]
    lut = np.empty((k + 1, 3), dtype=np.uint8)
    lut[:k] = np.clip(pal, 0, 255)
    lut[k] = np.asarray(ignore_color, dtype=np.uint8)
    idx = lab.astype(np.int64, copy=False)
    if lab.dtype == np.uint8 and k >= 256:
        return lut[idx]
    idx = np.where((idx < 0) | (idx >= k), k, idx)
    return lut[idx]


def overlay(
    image_rgb: np.ndarray,
    labels: np.ndarray,
    palette: Sequence[Sequence[int]],
    alpha: float = 0.5,
    ignore_color: Sequence[int] | None = None,
) -> np.ndarray:
    """Blend a colourised label map over an image.

    Args:
        image_rgb: ``uint8`` ``(H, W, 3)`` RGB image.
        labels: ``(H, W)`` labels of the same size.
        palette: RGB colour per class.
        alpha: weight of the label colours (0 = image only, 1 = colours only).
        ignore_color: colour for labels outside the palette; ``None`` leaves those pixels unblended.

    Returns:
        ``uint8`` ``(H, W, 3)`` RGB image ``(1 - alpha) * image + alpha * colours``.
    """
    img = np.asarray(image_rgb)
    lab = np.asarray(labels)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[:2] != lab.shape:
        raise ValueError(f"image {img.shape} and labels {lab.shape} must be (H, W, 3) and (H, W)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colours = colorize(lab, palette, ignore_color if ignore_color is not None else (0, 0, 0))
    out = cv2.addWeighted(img.astype(np.uint8), 1.0 - alpha, colours, alpha, 0.0)
    if ignore_color is None:
        outside = (lab < 0) | (lab >= len(palette))
        if outside.any():
            out[outside] = img[outside]
    return out
