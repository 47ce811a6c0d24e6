"""OpenCV image/label I/O: formats, channel handling, clear errors, atomic writes, colouring."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from semask_deploy.data.io import (
    colorize,
    list_images,
    overlay,
    read_image_rgb,
    read_label,
    write_png,
)
from semask_deploy.errors import ImageError, SemaskError


def _rgb(h=5, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_roundtrip_is_rgb(tmp_path):
    img = _rgb()
    write_png(tmp_path / "a.png", img)
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "a.png"), img)
    # the file really holds BGR for OpenCV: red stays red
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    write_png(tmp_path / "r.png", red)
    assert cv2.imread(str(tmp_path / "r.png"))[0, 0].tolist() == [0, 0, 255]
    assert read_image_rgb(tmp_path / "r.png")[0, 0].tolist() == [255, 0, 0]


def test_gray_rgba_jpeg(tmp_path):
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    out = read_image_rgb(tmp_path / "g.png")
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 1], gray)
    rgba = np.dstack([_rgb(), np.full((5, 7), 7, np.uint8)])
    write_png(tmp_path / "a.png", rgba)
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "a.png"), rgba[..., :3])
    cv2.imwrite(str(tmp_path / "j.jpg"), np.full((8, 8, 3), 100, np.uint8))
    assert np.abs(read_image_rgb(tmp_path / "j.jpg").astype(int) - 100).max() <= 2


def test_16bit(tmp_path):
    a = np.full((4, 4, 3), 0x1234, np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), a)
    with pytest.raises(ImageError, match="16-bit"):
        read_image_rgb(tmp_path / "d.png", allow_16bit=False)
    assert read_image_rgb(tmp_path / "d.png")[0, 0].tolist() == [0x12] * 3  # scaled by default, as IMREAD_COLOR


def test_bad_inputs(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        read_image_rgb(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="directory"):
        read_image_rgb(tmp_path)
    (tmp_path / "t.png").write_text("hello")
    with pytest.raises(ImageError, match="cannot decode"):
        read_image_rgb(tmp_path / "t.png")
    (tmp_path / "e.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        read_image_rgb(tmp_path / "e.jpg")
    with pytest.raises(SemaskError):
        read_label(tmp_path / "t.png")
    for err in (ImageError,):
        with pytest.raises(err):
            write_png(tmp_path / "x.jpg", _rgb())
        with pytest.raises(err):
            write_png(tmp_path / "x.png", np.zeros((3, 3), np.float32))


def test_read_label(tmp_path):
    lab = np.array([[0, 1, 255], [149, 7, 3]], np.uint8)
    write_png(tmp_path / "l.png", lab)
    out = read_label(tmp_path / "l.png")
    assert out.dtype == np.uint8 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, lab)
    # a grayscale map stored as 3 identical channels is accepted
    cv2.imwrite(str(tmp_path / "l3.png"), np.dstack([lab] * 3))
    np.testing.assert_array_equal(read_label(tmp_path / "l3.png"), lab)
    # a colour-coded map is refused
    write_png(tmp_path / "c.png", _rgb())
    with pytest.raises(ImageError, match="single-channel"):
        read_label(tmp_path / "c.png")
    lab16 = np.array([[0, 300]], np.uint16)
    cv2.imwrite(str(tmp_path / "l16.png"), lab16)
    np.testing.assert_array_equal(read_label(tmp_path / "l16.png"), lab16)


def test_read_palette_label(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    idx = np.array([[0, 1], [2, 255]], np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9] * (253 * 3))
    im.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_label(tmp_path / "p.png"), idx)


def test_list_images(tmp_path):
    for n in ("b.png", "a.JPG", "c.txt", ".hidden.png", "d.gif", "e.jfif"):
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "d.gif", "e.jfif"]
    assert list_images(tmp_path / "b.png") == [tmp_path / "b.png"]
    with pytest.raises(ImageError, match="does not look like an image"):
        list_images(tmp_path / "c.txt")
    with pytest.raises(ImageError, match="no images"):
        list_images(tmp_path / "sub")
    with pytest.raises(ImageError, match="no such"):
        list_images(tmp_path / "nope")


def test_write_png_atomic(tmp_path):
    target = tmp_path / "deep" / "out.png"
    write_png(target, _rgb())
    write_png(target, _rgb(seed=1))  # overwrite
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.png"]
    np.testing.assert_array_equal(read_image_rgb(target), _rgb(seed=1))


def test_colorize_overlay():
    pal = [(10, 20, 30), (200, 100, 0)]
    lab = np.array([[0, 1], [255, 1]], np.uint8)
    col = colorize(lab, pal, ignore_color=(1, 2, 3))
    assert col.dtype == np.uint8 and col.shape == (2, 2, 3)
    assert col[0, 0].tolist() == [10, 20, 30] and col[0, 1].tolist() == [200, 100, 0]
    assert col[1, 0].tolist() == [1, 2, 3]
    img = np.full((2, 2, 3), 100, np.uint8)
    ov = overlay(img, lab, pal, alpha=0.5)
    assert ov[0, 1].tolist() == [150, 100, 50]
    assert ov[1, 0].tolist() == [100, 100, 100]  # ignored pixels keep the image
    np.testing.assert_array_equal(overlay(img, lab, pal, alpha=0.0), img)
    with pytest.raises(ValueError):
        overlay(img, lab[:1], pal)


def test_gif_reads_as_pillow_does(tmp_path):
    """OpenCV ≥ 4.11 decodes GIF: a GIF is an image like the others (its first frame)."""
    Image = pytest.importorskip("PIL.Image")
    if tuple(int(v) for v in cv2.__version__.split(".")[:2]) < (4, 11):
        pytest.skip(f"OpenCV {cv2.__version__} has no GIF decoder")
    Image.fromarray(_rgb(6, 9)).save(tmp_path / "g.gif")
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "g.gif"),
                                  np.asarray(Image.open(tmp_path / "g.gif").convert("RGB")))


def test_concurrent_decodes_restore_opencv_log_level(tmp_path):
    """OpenCV's log level is process-wide: decoding from many threads at once (some of them files OpenCV
    cannot read) must leave it as it was, not stuck at "silent"."""
    from concurrent.futures import ThreadPoolExecutor

    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is None:
        pytest.skip("this OpenCV build has no logging module")
    write_png(tmp_path / "ok.png", _rgb(256, 256))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    paths = [tmp_path / ("ok.png" if i % 2 else "bad.png") for i in range(256)]

    def read(p):
        try:
            return read_image_rgb(p).shape
        except ImageError:
            return None

    before = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_WARNING)
    try:
        with ThreadPoolExecutor(8) as pool:
            shapes = list(pool.map(read, paths))
        assert log.getLogLevel() == log.LOG_LEVEL_WARNING
    finally:
        log.setLogLevel(before)
    assert shapes == [None if i % 2 == 0 else (256, 256, 3) for i in range(256)]
