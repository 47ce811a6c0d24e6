"""Synthetic scenes: deterministic, any size, exact and learnable labels, fast, writable as a data set."""

from __future__ import annotations

import time

import numpy as np
import pytest

from semask_deploy.data.datasets import FolderDataset
from semask_deploy.data.synthetic import (
    SYNTHETIC_CLASSES,
    SyntheticScenes,
    write_synthetic_dataset,
)


def test_deterministic_per_seed_and_index():
    a = SyntheticScenes(8, (64, 80), seed=1)
    b = SyntheticScenes(8, (64, 80), seed=1)
    for i in (0, 5, 999):
        np.testing.assert_array_equal(a[i][0], b[i][0])
        np.testing.assert_array_equal(a[i][1], b[i][1])
    assert not np.array_equal(a[0][0], a[1][0])
    assert not np.array_equal(a[0][0], SyntheticScenes(8, (64, 80), seed=2)[0][0])
    np.testing.assert_array_equal(a[-1][1], a[len(a) - 1][1])
    with pytest.raises(IndexError):
        a[len(a)]


@pytest.mark.parametrize("size", [(256, 256), (37, 53), (90, 300), (8, 8)])
def test_shapes_and_label_range(size):
    ds = SyntheticScenes(10, size, seed=0, length=5)
    for img, lab in ds:
        assert img.shape == size + (3,) and img.dtype == np.uint8
        assert lab.shape == size and lab.dtype == np.uint8
        assert lab.max() < 10


def test_classes_and_validation():
    ds = SyntheticScenes(20, (32, 32))
    assert len(ds.classes) == 20 and ds.classes[:12] == SYNTHETIC_CLASSES
    assert len(ds.palette) == 20 and len(set(ds.palette)) == 20
    assert max(ds[i][1].max() for i in range(30)) >= 12  # generated extra classes appear
    with pytest.raises(ValueError):
        SyntheticScenes(7)


def test_labels_are_exact_and_occlusion():
    ds = SyntheticScenes(12, (128, 128), seed=3, noise=0)
    seen = set()
    for i in range(40):
        img, lab = ds[i]
        seen |= set(np.unique(lab).tolist())
        sky = img[lab == 0].astype(int)
        assert (sky[:, 2] > sky[:, 0]).all()  # every sky-labelled pixel is blue-ish
        ring = img[lab == 8]  # solid texture: one colour per instance, all pink/magenta
        if ring.size:
            assert len(np.unique(ring, axis=0)) <= 8
            assert (ring[:, 0].astype(int) > ring[:, 1]).all() and (ring[:, 2].astype(int) > ring[:, 1]).all()
    assert seen == set(range(12))


def test_learnable_by_colour_alone():
    """A nearest-mean colour classifier already gets most pixels right: classes are distinguishable."""
    ds = SyntheticScenes(8, (96, 96), seed=0)
    xs, ys = zip(*(ds[i] for i in range(15)), strict=True)
    x = np.concatenate([a.reshape(-1, 3) for a in xs]).astype(np.float32)
    y = np.concatenate([b.ravel() for b in ys])
    means = np.stack([x[y == c].mean(0) for c in range(8)])
    img, lab = ds[500]
    d = ((img.reshape(-1, 1, 3).astype(np.float32) - means[None]) ** 2).sum(-1)
    assert (d.argmin(1) == lab.ravel()).mean() > 0.7


def test_fast():
    ds = SyntheticScenes(12, (256, 256), seed=0)
    ds[0]
    t = time.perf_counter()
    for i in range(20):
        ds[i]
    assert (time.perf_counter() - t) / 20 < 0.03  # a few ms in practice; loose for slow CI


def test_write_dataset_roundtrip(tmp_path):
    root = write_synthetic_dataset(tmp_path / "syn", n=3, size=(40, 50), seed=7, num_classes=9)
    ds = FolderDataset(root)
    assert len(ds) == 3 and ds.num_classes == 9 and ds.classes == SyntheticScenes(9).classes
    ref = SyntheticScenes(9, (40, 50), seed=7)
    for i in range(3):
        img, lab, name = ds[i]
        assert name == f"{i:05d}"
        np.testing.assert_array_equal(img, ref[i][0])
        np.testing.assert_array_equal(lab, ref[i][1])
    assert not [p for p in root.rglob("*") if ".tmp" in p.name]
