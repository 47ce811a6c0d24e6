"""examples/cpp/semask_pipeline.h (shared by the AOTInductor and TensorRT apps) against the Python pipeline.

Compiles ``semask_pipeline_test.cpp`` with the system C++ compiler (a few seconds) and compares each function
with its Python reference on the same data: the keep-ratio size with ``rescale_size``, the image resize with
``cv2.resize(INTER_LINEAR)`` (bit for bit), the normalisation with ``normalize``, the logits resize + argmax
with ``resize_argmax`` / ``F.interpolate`` + argmax, and the labels-only nearest resize with cv2.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semask_deploy.assets import sample_images
from semask_deploy.data.io import read_image_rgb
from semask_deploy.data.transforms import normalize, rescale_size
from semask_deploy.model.fast import resize_argmax

from ._cpp import CPP, cxx, read_ppm, run, write_ppm


@pytest.fixture(scope="module")
def tool(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("cpp") / "semask_pipeline_test"
    run([cxx(), "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-o", str(exe),
         str(CPP / "semask_pipeline_test.cpp")])
    return exe


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return read_image_rgb(sample_images()[0])


def test_keep_ratio_size(tool):
    for h, w in [(240, 320), (480, 640), (1, 5000), (1024, 2048), (333, 777), (512, 512), (7, 3)]:
        for scale in [(2048, 512), (512, 2048), (2048, 1024), (2560, 640)]:
            got = run([str(tool), "size", str(w), str(h), str(scale[0]), str(scale[1])]).split()
            assert (int(got[1]), int(got[0])) == rescale_size(h, w, scale), (h, w, scale)


@pytest.mark.parametrize("wh", [(683, 512), (341, 256), (100, 77), (1000, 700), (160, 120), (321, 241)])
def test_resize_matches_cv2_bit_for_bit(tool, tmp_path, scene, wh):
    src = write_ppm(tmp_path / "in.ppm", scene)
    run([str(tool), "resize", str(src), str(wh[0]), str(wh[1]), str(tmp_path / "out.ppm")])
    ref = cv2.resize(scene, wh, interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(read_ppm(tmp_path / "out.ppm"), ref)


@pytest.mark.parametrize("wh", [(11, 7), (106, 74), (7, 100), (5, 5), (200, 31), (26, 18)])
def test_resize_random_sizes(tool, tmp_path, wh):
    img = np.random.default_rng(wh[0] * 1000 + wh[1]).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    run([str(tool), "resize", str(write_ppm(tmp_path / "in.ppm", img)), str(wh[0]), str(wh[1]),
         str(tmp_path / "out.ppm")])
    np.testing.assert_array_equal(read_ppm(tmp_path / "out.ppm"), cv2.resize(img, wh, interpolation=cv2.INTER_LINEAR))


def test_normalize(tool, tmp_path, scene):
    run([str(tool), "normalize", str(write_ppm(tmp_path / "in.ppm", scene)), str(tmp_path / "x.f32")])
    got = np.fromfile(tmp_path / "x.f32", np.float32).reshape(3, *scene.shape[:2])
    np.testing.assert_array_equal(got, normalize(scene))


@pytest.mark.parametrize("shape", [(10, 60, 80, 240, 320), (7, 13, 17, 50, 67), (150, 9, 11, 35, 43), (3, 20, 20, 20, 20)])
def test_resize_argmax(tool, tmp_path, shape):
    k, h, w, out_h, out_w = shape
    logits = torch.randn(1, k, h, w, generator=torch.Generator().manual_seed(k + h))
    logits.numpy().tofile(tmp_path / "l.f32")
    run([str(tool), "argmax", str(tmp_path / "l.f32"), str(k), str(h), str(w), str(out_h), str(out_w),
         str(tmp_path / "out.i32")])
    got = np.fromfile(tmp_path / "out.i32", np.int32).reshape(out_h, out_w)
    fused = resize_argmax(logits, (out_h, out_w))[0].numpy()
    plain = F.interpolate(logits, size=(out_h, out_w), mode="bilinear", align_corners=False).argmax(1)[0].numpy()
    # float rounding order may differ only where two classes tie to ~1e-7: none in random logits
    assert (got == fused).mean() == 1.0
    assert (got == plain).mean() == 1.0


def test_nearest_labels(tool, tmp_path):
    labels = np.random.default_rng(3).integers(0, 150, (33, 47), dtype=np.int32)
    labels.tofile(tmp_path / "l.i32")
    for out_h, out_w in [(240, 320), (20, 30), (33, 47), (100, 19)]:
        run([str(tool), "nearest", str(tmp_path / "l.i32"), "33", "47", str(out_h), str(out_w), str(tmp_path / "o.i32")])
        got = np.fromfile(tmp_path / "o.i32", np.int32).reshape(out_h, out_w)
        np.testing.assert_array_equal(got, cv2.resize(labels, (out_w, out_h), interpolation=cv2.INTER_NEAREST))


def test_resize_kind_from_the_sidecar(tool, tmp_path):
    """The TensorRT app refuses a mask-classification engine (detectron2's shortest-edge resize with PIL's filter,
    which the header does not reproduce): it reads the kind from the sidecar beside the engine."""
    import json

    (tmp_path / "m2f_fp32_trt.json").write_text(json.dumps({"resize": {"kind": "shortest_edge", "min_size": 640}}))
    (tmp_path / "fpn_fp32_trt.json").write_text(json.dumps({"resize": {"kind": "keep_ratio", "scale": [2048, 512]}}))
    assert run([str(tool), "resize-kind", str(tmp_path / "m2f_fp32_trt.engine")]).strip() == "shortest_edge"
    assert run([str(tool), "resize-kind", str(tmp_path / "fpn_fp32_trt.engine")]).strip() == "keep_ratio"
    assert run([str(tool), "resize-kind", str(tmp_path / "none.engine")]).strip() == "keep_ratio"  # no sidecar
