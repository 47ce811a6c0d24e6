"""Images as users have them: gray, RGBA, 16-bit, EXIF-rotated JPEG, one pixel, 1×500 strips — each is read
the way OpenCV's IMREAD_COLOR reads it and segmented by Segmenter, semask-infer and semask-eval; only
unreadable files are errors."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from semask_deploy.cli.eval import run_eval
from semask_deploy.cli.infer import main as infer_main
from semask_deploy.cli.infer import run_infer
from semask_deploy.data.io import read_image_rgb, write_png
from semask_deploy.errors import ImageError
from semask_deploy.runtime import Segmenter

SMALL = Path(__file__).resolve().parent / "data" / "semask_small_synthetic8.pth"
SCALE = (128, 64)  # keep-ratio test resize for the small model (exercised on every image)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A BGR uint8 image with a few flat regions (so the model predicts several classes)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    img[: max(1, h // 2), : max(1, w // 3)] = rng.integers(0, 256, 3)
    img[h // 2:, w // 2:] = rng.integers(0, 256, 3)
    return img


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 Exif segment holding only the Orientation tag (0x0112) right after the JPEG's SOI."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + app1 + jpeg[2:]


def make_user_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    bgr = _scene(30, 44, 1)
    files = {
        "gray": ("gray.png", cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)),
        "rgba": ("rgba.png", np.dstack([bgr, np.full(bgr.shape[:2], 7, np.uint8)])),
        "gray16": ("gray16.png", cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257 + 3),
        "rgb16": ("rgb16.tif", bgr.astype(np.uint16) * 256 + 200),
        "one": ("one.png", _scene(1, 1, 2)),
        "thin": ("thin.png", _scene(1, 500, 3)),
        "tall": ("tall.png", _scene(500, 1, 4)),
    }
    out = {}
    for key, (name, arr) in files.items():
        assert cv2.imwrite(str(folder / name), arr)
        out[key] = folder / name
    ok, buf = cv2.imencode(".jpg", _scene(24, 40, 5))
    out["exif"] = folder / "exif.jpg"
    out["exif"].write_bytes(with_exif_orientation(buf.tobytes(), 6))  # 6: rotate 90° clockwise to display
    return out


def test_reader_matches_opencv_imread_color(tmp_path):
    files = make_user_images(tmp_path / "imgs")
    for key, path in files.items():
        rgb = read_image_rgb(path)
        want = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, key
        np.testing.assert_array_equal(rgb, want[:, :, ::-1], err_msg=key)
    # EXIF orientation 6 is applied: the stored 24×40 picture is shown rotated 90° clockwise, 40×24
    raw = cv2.imread(str(files["exif"]), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert raw.shape[:2] == (24, 40)
    rotated = read_image_rgb(files["exif"])
    assert rotated.shape[:2] == (40, 24)
    np.testing.assert_array_equal(rotated, cv2.rotate(raw, cv2.ROTATE_90_CLOCKWISE)[:, :, ::-1])
    # 16-bit: scaled to 8 bits (v >> 8, as OpenCV does), gray replicated; RGBA: alpha dropped
    g16 = cv2.imread(str(files["gray16"]), cv2.IMREAD_UNCHANGED)
    assert g16.dtype == np.uint16
    np.testing.assert_array_equal(read_image_rgb(files["gray16"])[:, :, 1], (g16 >> 8).astype(np.uint8))
    assert read_image_rgb(files["one"]).shape == (1, 1, 3) and read_image_rgb(files["thin"]).shape == (1, 500, 3)
    with pytest.raises(ImageError, match="16-bit"):
        read_image_rgb(files["gray16"], allow_16bit=False)


def test_segmenter_and_infer_segment_every_user_image(tmp_path, capsys):
    files = make_user_images(tmp_path / "imgs")
    seg = Segmenter(SMALL, scale=SCALE)
    for key, path in files.items():
        rgb = read_image_rgb(path)
        labels = seg.predict(rgb)
        assert labels.shape == rgb.shape[:2], key
        assert labels.min() >= 0 and labels.max() < seg.num_classes
    res = run_infer(SMALL, tmp_path / "imgs", tmp_path / "out", scale=SCALE, quiet=True)
    assert not res.failed and len(res.written) == 2 * len(files)
    lab = cv2.imread(str(tmp_path / "out" / "exif_labels.png"), cv2.IMREAD_UNCHANGED)
    assert lab.shape == (40, 24)  # at the oriented size
    # only unreadable files are errors: one line, exit 2
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert infer_main(["--model", str(SMALL), "--image", str(tmp_path / "bad.png"), "--out", str(tmp_path / "o2"),
                       "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "bad.png" in err[0]


def test_eval_on_user_images(tmp_path):
    files = make_user_images(tmp_path / "imgs")
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    seg = Segmenter(SMALL, scale=SCALE)
    for key, path in files.items():
        target = root / "images" / path.name
        target.write_bytes(path.read_bytes())
        pred = seg.predict(read_image_rgb(path))
        write_png(root / "labels" / f"{path.stem}.png", pred.astype(np.uint8))  # labels at the oriented size
    (root / "classes.txt").write_text("\n".join(f"c{j}" for j in range(seg.num_classes)) + "\n")
    res = run_eval(SMALL, "folder", root, scale=SCALE)
    assert res["images"] == len(files)
    assert res["aAcc"] == pytest.approx(1.0)  # its own predictions as ground truth: every image was segmented


@pytest.mark.parametrize("gray", [False, True])
def test_float_tiff_says_what_is_wrong(tmp_path, capfd, gray):
    """A 32-bit float TIFF decodes, but IMREAD_COLOR has no 8-bit form of it: say so, not "corrupt", and
    without OpenCV's own ``[ WARN ]``/``[ERROR]`` line before our message (a 1-channel one fails even to decode
    in colour)."""
    path = tmp_path / "f32.tiff"
    scene = _scene(8, 12).astype(np.float32) / 255
    assert cv2.imwrite(str(path), scene[:, :, 0] if gray else scene)
    capfd.readouterr()
    with pytest.raises(ImageError, match="float32 image that OpenCV cannot convert to 8 bits"):
        read_image_rgb(path)
    err = capfd.readouterr().err
    assert "WARN" not in err and "ERROR" not in err


@pytest.mark.parametrize("kwargs", [
    {"scale": (0, 0)}, {"scale": (-1, 64)}, {"scale": 512}, {"scale": (512,)}, {"scale": (128.5, 64)},
    {"mode": "slide", "crop": (0, 32)}, {"mode": "slide", "stride": (0, 0)}, {"mode": "slide", "stride": 16},
])
def test_segmenter_refuses_bad_sizes_when_built(kwargs):
    """A zero or negative scale once shrank every image to 1×1 silently (garbage labels); an int scale or a
    zero stride failed later with a TypeError / ValueError."""
    from semask_deploy.errors import ConfigError

    with pytest.raises(ConfigError, match="must be two positive whole numbers"):
        Segmenter(SMALL, **kwargs)


def test_segmenter_predict_refuses_empty_or_non_array_images():
    from semask_deploy.errors import ConfigError

    seg = Segmenter(SMALL, scale=SCALE)
    for bad, hint in ((np.zeros((0, 5, 3), np.uint8), "one"), (np.zeros((4, 0, 3), np.uint8), "one"),
                      (_scene(4, 5).tolist(), "one image per call"), (_scene(4, 5)[:, :, 0], "COLOR_GRAY2RGB"),
                      (_scene(4, 5).astype(np.float32), "astype"), ("img.png", "read_image_rgb")):
        with pytest.raises(ConfigError, match=r"expected a uint8 \(H, W, 3\) RGB image") as exc:
            seg.predict(bad)
        assert hint in str(exc.value)
    with pytest.raises(ConfigError, match="expected the path of a model file"):
        Segmenter(None)


def test_attention_backend_is_refused_for_exported_models(tmp_path):
    """--attention / attention_backend used to be ignored silently for ONNX, OpenVINO, TensorRT and AOTInductor
    files (their attention is compiled in); checked before the file is even opened."""
    from semask_deploy.errors import ConfigError

    for name in ("m.onnx", "m.xml", "m.engine", "m.pt2"):
        with pytest.raises(ConfigError, match="attention_backend .--attention. is for PyTorch checkpoints"):
            Segmenter(tmp_path / name, attention_backend="eager")
    assert Segmenter(SMALL, attention_backend="eager", scale=SCALE).backend is not None
