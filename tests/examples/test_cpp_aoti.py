"""End to end: ``semask-export --demo --fmt aoti`` → the C++ app ``semask_aoti`` (CMake, LibTorch from the torch
wheel) on a bundled sample scene → the same label map as ``semask-infer --demo``; ``Segmenter("x.pt2")`` too.

The package is compiled for the scene's run size (``--static HxW --batch 1``: the keep-ratio size the app
and ``semask-infer`` resize the scene to), which AOTInductor compiles in ~2 min on this 2-core machine; the
default dynamic-shape package of the same model takes ~35 min here (Inductor's code generation for
symbolic sizes), too long for CI. The app and the loader are the same for both. The app build (~1 min)
runs in parallel with the export. Everything lives in pytest's tmp folders.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from semask_deploy.assets import sample_images
from semask_deploy.data.io import read_image_rgb

from ._cpp import CPP, cxx, read_pgm, run, write_ppm


def _cmake_build(build: Path) -> subprocess.Popen:
    import torch.utils

    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    script = (f'cmake -S "{CPP}" -B "{build}" -DCMAKE_PREFIX_PATH="{torch.utils.cmake_prefix_path}" '
              f'-DCMAKE_CXX_COMPILER="{cxx()}" -DSEMASK_REQUIRE_AOTI=ON && cmake --build "{build}" --target semask_aoti')
    return subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_aoti_cpp_app_matches_semask_infer(tmp_path, monkeypatch):
    from semask_deploy.api import load_model
    from semask_deploy.assets import demo_checkpoint
    from semask_deploy.cli.export import main as export_main
    from semask_deploy.cli.infer import run_infer
    from semask_deploy.data.transforms import rescale_size
    from semask_deploy.runtime import Segmenter

    scene = sample_images()[0]
    rgb = read_image_rgb(scene)
    test_scale = load_model(demo_checkpoint()).config.test_scale
    run_h, run_w = rescale_size(*rgb.shape[:2], test_scale)  # what the app and semask-infer resize the scene to
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # a fresh compile, cached nowhere else
    build = _cmake_build(tmp_path / "build")  # the C++ build runs while the model compiles
    try:
        rc = export_main(["--demo", "--fmt", "aoti", "--with-logits", "--static", f"{run_h}x{run_w}", "--batch", "1",
                          "--out", str(tmp_path / "exported")])
        assert rc == 0
    finally:
        log, _ = build.communicate(timeout=1200)
    assert build.returncode == 0, log
    package = tmp_path / "exported" / "semask_demo_fp32_aoti.pt2"
    sidecar = package.with_suffix(".json")
    assert package.is_file() and sidecar.is_file()
    meta = __import__("json").loads(sidecar.read_text())
    assert meta["kind"] == "aoti" and meta["verification"]["ok"]
    assert meta["aoti"]["package_metadata"]["semask.static_hw"] == f"{run_h},{run_w}"
    assert [o["name"] for o in meta["outputs"]] == ["labels", "logits"]
    assert meta["inputs"][0]["shape"] == [1, 3, run_h, run_w]

    run_infer(None, scene, tmp_path / "infer", demo=True, overlay=False, quiet=True)
    expected = cv2.imread(str(tmp_path / "infer" / f"{scene.stem}_labels.png"), cv2.IMREAD_UNCHANGED)
    assert expected.shape == rgb.shape[:2] and len(np.unique(expected)) > 1

    ppm = write_ppm(tmp_path / "scene.ppm", rgb)
    out = run([str(tmp_path / "build" / "semask_aoti"), str(package), str(ppm), str(tmp_path / "labels.pgm")])
    got = read_pgm(tmp_path / "labels.pgm")
    # an image of another run size: the static package would read out of bounds, the app refuses it
    tall = write_ppm(tmp_path / "tall.ppm", np.ascontiguousarray(cv2.resize(rgb, (100, 300))))
    proc = subprocess.run([str(tmp_path / "build" / "semask_aoti"), str(package), str(tall), str(tmp_path / "t.pgm")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "was compiled for" in proc.stderr and not (tmp_path / "t.pgm").exists()
    missing = subprocess.run([str(tmp_path / "build" / "semask_aoti"), str(tmp_path / "none.pt2"), str(ppm),
                              str(tmp_path / "t.pgm")], capture_output=True, text=True, timeout=600)
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        f"error: cannot open the package {tmp_path / 'none.pt2'}"]
    agreement = float((got == expected).mean())
    print(f"C++ app vs semask-infer --demo: {agreement * 100:.4f} % equal pixels\n{out}", file=sys.stderr)
    # The same package from Python through Segmenter: identical logits, and the header's resize + argmax
    # reproduces resize_argmax bit for bit (tests/examples/test_cpp_pipeline.py) -> identical labels.
    seg = Segmenter(package)
    from_python = seg.predict(rgb)
    np.testing.assert_array_equal(got, from_python)
    # the static package does not check its input itself: the backend refuses another size or batch
    from semask_deploy.errors import ConfigError

    for shape in ((1, 3, run_h + 8, run_w), (2, 3, run_h, run_w)):
        with pytest.raises(ConfigError, match="was exported for"):
            seg.backend.labels(np.zeros(shape, np.float32))
    # vs the PyTorch model: the compiled kernels' logits differ by ~1e-6, which can move an argmax only where two
    # classes tie to that precision (0 pixels when measured; the bound allows a handful of the 76 800)
    assert agreement >= 0.9999, agreement
