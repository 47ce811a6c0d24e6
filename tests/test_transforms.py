"""mmseg-exact test-time resize/normalisation, sliding windows, and deterministic augmentation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from semask_deploy.config import IMAGENET_MEAN, IMAGENET_STD
from semask_deploy.data import transforms as T


@pytest.mark.parametrize(
    "hw, scale, expected",
    [
        ((480, 640), (2048, 512), (512, 683)),  # 640x480 -> 683x512
        ((480, 640), (512, 2048), (512, 683)),  # order of the bound does not matter
        ((512, 512), (2048, 512), (512, 512)),
        ((1024, 2048), (2048, 1024), (1024, 2048)),  # Cityscapes native
        ((1000, 300), (2048, 512), (1707, 512)),  # tall: 300*1.70667, 1000*1.70667 = 1706.67
        ((333, 517), (2048, 512), (512, 795)),  # odd: 517*512/333 = 794.9
        ((200, 3000), (2048, 512), (137, 2048)),  # panorama limited by the long edge: 136.5 -> 137
        ((480, 640), (2560, 640), (640, 853)),  # 640-crop L models
        ((3, 5), 0.5, (2, 3)),  # +0.5 rounding: 1.5 -> 2, 2.5 -> 3 (not banker's rounding)
    ],
)
def test_rescale_size(hw, scale, expected):
    assert T.rescale_size(*hw, scale) == expected


def test_resize_and_rescale_match_cv2():
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = T.rescale_image(img, (2048, 512))
    h, w = T.rescale_size(37, 53, (2048, 512))
    np.testing.assert_array_equal(out, cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR))
    lab = np.random.default_rng(1).integers(0, 5, (37, 53), dtype=np.uint8)
    out_l = T.resize_image(lab, (70, 90), "nearest")
    assert out_l.shape == (70, 90) and set(np.unique(out_l)) <= set(np.unique(lab))
    with pytest.raises(ValueError):
        T.resize_image(img, (5, 5), "cubic")


def test_normalize_and_batch():
    img = np.zeros((4, 6, 3), np.uint8)
    img[..., 0] = 255
    x = T.normalize(img)
    assert x.shape == (3, 4, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], (255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], rtol=1e-6)
    np.testing.assert_allclose(x[2], -IMAGENET_MEAN[2] / IMAGENET_STD[2], rtol=1e-6)
    b = T.to_tensor_batch([img, img])
    assert isinstance(b, torch.Tensor) and b.shape == (2, 3, 4, 6) and b.dtype == torch.float32
    torch.testing.assert_close(b[1], torch.from_numpy(x))
    assert T.to_tensor_batch([x]).shape == (1, 3, 4, 6)
    with pytest.raises(ValueError):
        T.to_tensor_batch([img, img[:2]])
    assert T.preprocess(np.zeros((480, 640, 3), np.uint8), (2048, 512)).shape == (3, 512, 683)


def test_slide_windows():
    assert T.slide_windows(512, 512, 512, 341) == [(0, 0, 512, 512)]
    assert T.slide_windows(512, 683, 512, 341) == [(0, 0, 512, 512), (0, 171, 512, 683)]
    # Cityscapes 769 crop / 513 stride on 1024x2048: 2 x 4 windows, last ones flush with the border
    wins = T.slide_windows(1024, 2048, 769, 513)
    assert len(wins) == 8
    assert wins[0] == (0, 0, 769, 769) and wins[-1] == (255, 1279, 1024, 2048)
    assert T.slide_windows(100, 200, (512, 512), (341, 341)) == [(0, 0, 100, 200)]
    for h, w in [(700, 1333), (513, 1024), (1, 1)]:
        cover = np.zeros((h, w), bool)
        for y1, x1, y2, x2 in T.slide_windows(h, w, (512, 384), (341, 256)):
            assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w
            assert y2 - y1 == min(512, h) and x2 - x1 == min(384, w)
            cover[y1:y2, x1:x2] = True
        assert cover.all()


# ---------------------------------------------------------------------------------------- training

LUT = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]], np.uint8)


def _scene(h=120, w=160, seed=0):
    """Label of 20x20 blocks; the image colour encodes the label exactly."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 6, (h // 20 + 1, w // 20 + 1)).astype(np.uint8)
    lab = np.kron(blocks, np.ones((20, 20), np.uint8))[:h, :w]
    return LUT[lab], lab


def test_crop_and_flip_keep_alignment():
    img, lab = _scene()
    for seed in range(6):
        rng = np.random.default_rng(seed)
        i2, l2 = T.random_crop(img, lab, rng, (64, 48), cat_max_ratio=0.75)
        i2, l2 = T.random_flip(i2, l2, rng, 0.5)
        assert i2.shape == (64, 48, 3) and l2.shape == (64, 48)
        np.testing.assert_array_equal(LUT[l2], i2)
    i3, l3 = T.random_flip(img, lab, np.random.default_rng(0), prob=1.0)
    np.testing.assert_array_equal(i3, img[:, ::-1])
    np.testing.assert_array_equal(l3, lab[:, ::-1])
    i4, _ = T.random_flip(img, lab, np.random.default_rng(0), prob=0.0)
    assert i4 is img


def test_random_resize_alignment_and_bounds():
    img, lab = _scene()
    for seed in range(4):
        i2, l2 = T.random_resize(img, lab, np.random.default_rng(seed), (640, 480), (0.5, 2.0))
        assert i2.shape[:2] == l2.shape
        assert max(i2.shape[:2]) <= 1280 and min(i2.shape[:2]) <= 960 and min(i2.shape[:2]) >= 240
        # away from block borders colours encode labels exactly (bilinear blends there, and cv2's
        # nearest mapping is offset from bilinear's by up to half a source pixel, as in mmcv)
        r = int(np.ceil(i2.shape[0] / img.shape[0])) + 1
        kernel = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
        same = cv2.erode(l2, kernel) == cv2.dilate(l2, kernel)
        assert same.mean() > 0.5
        np.testing.assert_array_equal(LUT[l2][same], i2[same])
    i5, _ = T.random_resize(img, lab, np.random.default_rng(0), (160, 120), [1.0])  # list: choice
    assert i5.shape == img.shape


def test_random_crop_retries_like_mmseg():
    lab = np.zeros((100, 100), np.uint8)  # one class: every try fails -> 10 retries, last kept
    img = np.zeros((100, 100, 3), np.uint8)
    img[..., 0], img[..., 1] = np.arange(100)[:, None], np.arange(100)[None, :]  # pixel = its (y, x)
    rng = np.random.default_rng(3)
    i2, _ = T.random_crop(img, lab, rng, (30, 40), cat_max_ratio=0.75)
    ref = np.random.default_rng(3)
    for _ in range(11):
        oy, ox = ref.integers(0, 71), ref.integers(0, 61)
    assert i2[0, 0, :2].tolist() == [oy, ox]  # the 11th draw is kept
    assert rng.random() == ref.random()  # same number of draws consumed
    # cat_max_ratio steers crops towards mixed content
    lab2 = np.zeros((200, 200), np.uint8)
    lab2[100:, 100:] = 1
    img2 = np.zeros((200, 200, 3), np.uint8)

    def balanced(r, s):
        crop = T.random_crop(img2, lab2, np.random.default_rng(s), (64, 64), r)[1]
        return np.bincount(crop.ravel(), minlength=2).max() / crop.size < 0.75

    assert sum(balanced(0.75, s) for s in range(30)) > 25 > 10 > sum(balanced(1.0, s) for s in range(30))


def _photometric_mmseg_bgr(img_bgr, rng):
    """mmseg's PhotoMetricDistortion on a BGR image, drawing from ``rng`` in mmseg's order."""
    def convert(x, alpha=1.0, beta=0.0):
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    img = img_bgr
    if rng.integers(2):
        img = convert(img, beta=rng.uniform(-32, 32))
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):
        img = convert(img, alpha=rng.uniform(0.5, 1.5))
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = convert(hsv[:, :, 1], alpha=rng.uniform(0.5, 1.5))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + rng.integers(-18, 18)) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if mode == 0 and rng.integers(2):
        img = convert(img, alpha=rng.uniform(0.5, 1.5))
    return img


def test_photometric_matches_mmseg_on_bgr():
    img = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    changed = 0
    for seed in range(12):
        ours = T.photo_metric_distortion(img, np.random.default_rng(seed))
        ref = _photometric_mmseg_bgr(img[..., ::-1].copy(), np.random.default_rng(seed))[..., ::-1]
        np.testing.assert_array_equal(ours, ref)
        changed += int(not np.array_equal(ours, img))
    assert changed >= 8


def test_pad():
    img = np.ones((3, 4, 3), np.uint8)
    lab = np.zeros((3, 4), np.uint8)
    i2, l2 = T.pad(img, lab, (5, 6))
    assert i2.shape == (5, 6, 3) and l2.shape == (5, 6)
    assert i2[3:].max() == 0 and i2[:, 4:].max() == 0 and (l2[3:] == 255).all() and (l2[:, 4:] == 255).all()
    np.testing.assert_array_equal(i2[:3, :4], img)
    i3, l3 = T.pad(img, lab, (2, 2))  # never crops
    assert i3 is img and l3 is lab


def test_train_augment_deterministic_and_aligned():
    img, lab = _scene(90, 130)
    aug = T.TrainAugment(crop_size=(64, 64), img_scale=(130, 90), ratio_range=(0.5, 2.0),
                         photometric=False, normalize=False)
    outs = [aug(img, lab, np.random.default_rng(s)) for s in (5, 5, 6)]
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert not np.array_equal(outs[0][0], outs[2][0]) or not np.array_equal(outs[0][1], outs[2][1])
    for seed in range(8):
        i2, l2 = aug(img, lab, np.random.default_rng(seed))
        assert i2.shape == (64, 64, 3) and i2.dtype == np.uint8 and l2.shape == (64, 64)
        valid = l2 != 255
        assert ((i2 == LUT[np.where(valid, l2, 0)]).all(-1) | ~valid).mean() > 0.8
        assert (i2[~valid] == 0).all()  # padding
    full = T.TrainAugment(crop_size=(64, 64), img_scale=(130, 90))
    x, y = full(img, lab, np.random.default_rng(1))
    assert x.shape == (3, 64, 64) and x.dtype == np.float32 and y.shape == (64, 64) and y.dtype == np.uint8
    x2, y2 = full(img, lab, np.random.default_rng(1))
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert (x[:, y == 255] == 0).all()  # padded after normalisation, as mmseg
