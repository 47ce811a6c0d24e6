"""``semask-infer`` end to end: real command, outputs identical to the official logits' argmax, bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semask_deploy.cli.infer import main, run_infer


def _write_rgb(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    return path


@pytest.fixture()
def images(tmp_path, golden_tiny) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    _write_rgb(d / "main.png", golden_tiny["input_rgb_uint8"])
    _write_rgb(d / "odd.png", golden_tiny["input_odd_rgb_uint8"])
    return d


def test_labels_equal_official_argmax_at_native_size(tiny_ckpt, images, tmp_path, golden_tiny):
    out = tmp_path / "out"
    res = run_infer(tiny_ckpt, images, out, scale="none", quiet=True)
    assert not res.failed
    for name, suffix in (("main", ""), ("odd", "_odd")):
        labels = cv2.imread(str(out / f"{name}_labels.png"), cv2.IMREAD_UNCHANGED)
        want = golden_tiny["seg_logits" + suffix][0].argmax(0)
        assert labels.shape == want.shape
        assert (labels == want).all()
        overlay = cv2.imread(str(out / f"{name}_overlay.png"))
        assert overlay.shape == (*want.shape, 3)


def test_keep_ratio_rescale_maps_back_to_original_size(tiny_ckpt, images, tmp_path, golden_tiny):
    """Default scale for ADE20K is (2048, 512): the 37×53 image is upscaled, segmented, mapped back."""
    from semask_deploy import load_model
    from semask_deploy.data.transforms import normalize, rescale_image

    out = tmp_path / "out"
    run_infer(tiny_ckpt, images / "odd.png", out, quiet=True)
    rgb = golden_tiny["input_odd_rgb_uint8"]
    model = load_model(tiny_ckpt)
    x = torch.from_numpy(normalize(rescale_image(rgb, (2048, 512)))[None])
    assert x.shape[2] == 512
    with torch.inference_mode():
        logits = F.interpolate(model(x), size=rgb.shape[:2], mode="bilinear", align_corners=False)
    labels = cv2.imread(str(out / "odd_labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == rgb.shape[:2]
    assert (labels == logits.argmax(1)[0].numpy()).all()


def test_slide_mode_runs_and_averages(tiny_ckpt, images, tmp_path):
    out = tmp_path / "out"
    res = run_infer(tiny_ckpt, images / "main.png", out, scale="none", mode="slide", crop=(32, 48), stride=(16, 24),
                    quiet=True)
    assert not res.failed and (out / "main_labels.png").exists()


def test_grayscale_and_rgba_images(tiny_ckpt, tmp_path, golden_tiny):
    d = tmp_path / "imgs"
    d.mkdir()
    rgb = golden_tiny["input_odd_rgb_uint8"]
    cv2.imwrite(str(d / "gray.png"), rgb[:, :, 0])
    cv2.imwrite(str(d / "rgba.png"), np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 128, np.uint8)]))
    res = run_infer(tiny_ckpt, d, tmp_path / "out", scale="none", quiet=True)
    assert not res.failed and len(res.written) == 4


def test_cli_subprocess_end_to_end(tiny_ckpt, images, tmp_path):
    out = tmp_path / "out"
    exe = shutil.which("semask-infer") or str(Path(sys.executable).parent / "semask-infer")
    proc = subprocess.run([exe, "--model", str(tiny_ckpt), "--image", str(images), "--out", str(out),
                           "--scale", "none", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "main_labels.png", "main_overlay.png", "odd_labels.png", "odd_overlay.png"]


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ")
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_negative_threads_is_an_error_before_loading(tmp_path, images, capsys):
    assert main(["--model", str(tmp_path / "none.pth"), "--image", str(images), "--out", str(tmp_path / "o"),
                 "--threads", "-2"]) == 2
    assert "threads must be a whole number >= 0" in _err(capsys)
    assert not (tmp_path / "o").exists()


def test_missing_checkpoint(tmp_path, images, capsys):
    assert main(["--model", str(tmp_path / "none.pth"), "--image", str(images), "--out", str(tmp_path / "o")]) == 2
    assert "checkpoint not found" in _err(capsys)
    assert not (tmp_path / "o").exists()


def test_not_a_checkpoint(tmp_path, images, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00" * 100)
    assert main(["--model", str(bad), "--image", str(images), "--out", str(tmp_path / "o")]) == 2
    _err(capsys)
    assert not (tmp_path / "o").exists()


def test_unreadable_image_is_reported_others_written(tiny_ckpt, images, tmp_path, capsys):
    (images / "broken.jpg").write_bytes(b"definitely not a jpeg")
    out = tmp_path / "o"
    assert main(["--model", str(tiny_ckpt), "--image", str(images), "--out", str(out), "--scale", "none",
                 "--quiet"]) == 2
    assert "broken.jpg" in _err(capsys)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["main_labels.png", "main_overlay.png", "odd_labels.png", "odd_overlay.png"]


def test_missing_image(tiny_ckpt, tmp_path, capsys):
    assert main(["--model", str(tiny_ckpt), "--image", str(tmp_path / "x.png"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in _err(capsys)


def test_bad_scale_is_a_usage_error(tiny_ckpt, images, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--model", str(tiny_ckpt), "--image", str(images), "--crop", "abc"])
    assert info.value.code == 2
    assert "HxW" in capsys.readouterr().err


def test_unknown_model_format(tmp_path, images, capsys):
    f = tmp_path / "model.xyz"
    f.write_text("x")
    assert main(["--model", str(f), "--image", str(images), "--out", str(tmp_path / "o")]) == 2
    assert "cannot tell the format" in _err(capsys)


def test_unreadable_image_in_a_folder_is_skipped_and_reported(tiny_ckpt, images, tmp_path, capsys):
    (images / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "o"
    assert main(["--model", str(tiny_ckpt), "--image", str(images), "--out", str(out), "--scale", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any(line.startswith("wrote ") for line in err)  # the readable images were segmented
    (bad,) = [line for line in err if line.startswith("error: ")]
    assert "broken.png" in bad and bad.endswith("(skipped)")
    assert not list(out.glob("broken*")) and list(out.glob("*_labels.png"))


def test_a_single_unreadable_image_gives_one_error_line(tiny_ckpt, tmp_path, capsys):
    """Nothing segmented: no 'wrote 0 file(s)' line naming a folder that is removed again, no '(skipped)'."""
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    out = tmp_path / "o"
    assert main(["--model", str(tiny_ckpt), "--image", str(bad), "--out", str(out), "--scale", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "broken.png" in err[0]
    assert not err[0].endswith("(skipped)") and not out.exists()


def test_slide_stride_larger_than_the_crop_is_refused(tiny_ckpt, images, tmp_path, capsys):
    """Windows 64 apart with a 32 crop leave pixels without any prediction (they came out as class 0)."""
    out = tmp_path / "o"
    assert main(["--model", str(tiny_ckpt), "--image", str(images), "--out", str(out), "--mode", "slide",
                 "--crop", "32x32", "--stride", "64x64"]) == 2
    assert "stride 64x64 is larger than the crop 32x32" in _err(capsys)
    assert not out.exists()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_out_folder_that_cannot_be_created_fails_before_the_model_runs(tiny_ckpt, images, capsys):
    """os.access says yes to root under /proc: the check makes a real write, so the error comes at once."""
    assert main(["--model", str(tiny_ckpt), "--image", str(images), "--out", "/proc/semask_x"]) == 2
    assert "--out /proc/semask_x cannot be written" in _err(capsys)


def test_outputs_that_would_collide_are_refused_before_anything_runs(tmp_path, images, capsys):
    """a.png and a.jpg both map to a_labels.png: one would silently overwrite the other."""
    shutil.copy(images / "main.png", images / "odd.jpg")
    out = tmp_path / "o"
    assert main(["--model", str(tmp_path / "none.pth"), "--image", str(images), "--out", str(out)]) == 2
    err = _err(capsys)
    assert "odd.jpg and odd.png" in err and "odd_labels.png" in err
    assert not out.exists()


def test_several_image_paths_each_segmented_once(tiny_ckpt, images, tmp_path, capsys):
    """--image a.png b.png (a shell glob) and --image repeated: every file once, none silently dropped; two
    files of one stem from different folders are refused before anything runs."""
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(images / "odd.png", other / "extra.png")
    out = tmp_path / "o"
    assert main(["--model", str(tiny_ckpt), "--image", str(images / "main.png"), str(images / "main.png"),
                 "--image", str(other), "--out", str(out), "--scale", "none", "--no-overlay", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["extra_labels.png", "main_labels.png"]
    shutil.copy(images / "main.png", other / "main.png")
    out2 = tmp_path / "o2"
    assert main(["--model", str(tiny_ckpt), "--image", str(images), str(other), "--out", str(out2)]) == 2
    assert f"{images / 'main.png'} and {other / 'main.png'} would both be written" in _err(capsys)
    assert not out2.exists()


def test_output_that_would_overwrite_an_input_image_is_refused(tmp_path, images, capsys):
    """--out the image folder that holds main_labels.png: main.png's labels would overwrite that image."""
    before = (images / "odd.png").read_bytes()
    (images / "main_labels.png").write_bytes(before)
    assert main(["--model", str(tmp_path / "none.pth"), "--image", str(images), "--out", str(images)]) == 2
    assert "would overwrite the input image main_labels.png" in _err(capsys)
    assert (images / "main_labels.png").read_bytes() == before
    assert sorted(p.name for p in images.iterdir()) == ["main.png", "main_labels.png", "odd.png"]


def test_more_threads_than_cpus_is_an_error_before_loading(tmp_path, images, capsys):
    """--threads 100000 once made ONNX Runtime start 10 000+ threads and eat all memory."""
    too_many = (os.cpu_count() or 1) + 1
    assert main(["--model", str(tmp_path / "none.pth"), "--image", str(images), "--out", str(tmp_path / "o"),
                 "--threads", str(too_many)]) == 2
    assert f"threads={too_many} is more than the" in _err(capsys)
    assert not (tmp_path / "o").exists()


def test_output_name_that_is_a_folder_is_refused_before_anything_runs(tmp_path, images, capsys):
    """out/odd_labels.png is a folder: once the run stopped there with a write error, main.png done, the rest not."""
    out = tmp_path / "o"
    (out / "odd_labels.png").mkdir(parents=True)
    assert main(["--model", str(tmp_path / "none.pth"), "--image", str(images), "--out", str(out)]) == 2
    assert "odd_labels.png exists as a folder" in _err(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["odd_labels.png"]


def test_an_output_that_cannot_be_written_fails_that_image_alone(tiny_ckpt, images, tmp_path, capsys, monkeypatch):
    """A labels file that cannot be replaced (immutable, read-only) once stopped the run there: the images after it
    were never segmented."""
    import semask_deploy.data.io as io_mod
    from semask_deploy.errors import ImageError

    real = io_mod.write_png

    def refuse_main(path, *args, **kwargs):
        if Path(path).name == "main_labels.png":
            raise ImageError(f"cannot write {path}: Operation not permitted (check the directory and free space)")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(io_mod, "write_png", refuse_main)
    out = tmp_path / "o"
    assert main(["--model", str(tiny_ckpt), "--image", str(images / "main.png"), str(images / "odd.png"),
                 "--out", str(out), "--scale", "none", "--quiet"]) == 2
    assert "main_labels.png: Operation not permitted" in _err(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["odd_labels.png", "odd_overlay.png"]


@pytest.mark.parametrize("failure", ["backend", "allocation"])
def test_an_image_the_runtime_fails_on_fails_alone(tiny_ckpt, images, tmp_path, capsys, monkeypatch, failure):
    """One image too large for the runtime's memory stopped the whole run: the images after it were never
    segmented."""
    from semask_deploy.errors import RuntimeBackendError
    from semask_deploy.runtime import Segmenter

    real = Segmenter.predict

    def fail_on_main(self, rgb):
        if rgb.shape[:2] == first_shape:
            if failure == "backend":
                raise RuntimeBackendError("ONNX Runtime failed: Failed to allocate memory for requested buffer")
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
        return real(self, rgb)

    from semask_deploy.data.io import read_image_rgb

    first_shape = read_image_rgb(images / "main.png").shape[:2]
    assert read_image_rgb(images / "odd.png").shape[:2] != first_shape
    monkeypatch.setattr(Segmenter, "predict", fail_on_main)
    out = tmp_path / "o"
    assert main(["--model", str(tiny_ckpt), "--image", str(images / "main.png"), str(images / "odd.png"),
                 "--out", str(out), "--scale", "none", "--quiet"]) == 2
    err = _err(capsys)
    assert "main.png: " in err and "(skipped)" in err
    assert sorted(p.name for p in out.iterdir()) == ["odd_labels.png", "odd_overlay.png"]
