"""Data-set readers on tiny on-disk trees in each layout, and their errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from semask_deploy.data.datasets import (
    ADE20K,
    Cityscapes,
    COCOStuff,
    FolderDataset,
    detect_kind,
    open_dataset,
    reduce_zero_label,
)
from semask_deploy.errors import ConfigError, DatasetError

H, W = 6, 8


def _img(path: Path, seed=0, size=(H, W)):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return img


def _lab(path: Path, values, size=(H, W)):
    path.parent.mkdir(parents=True, exist_ok=True)
    lab = np.resize(np.asarray(values, np.uint8), size)
    assert cv2.imwrite(str(path), lab)
    return lab


def test_reduce_zero_label():
    out = reduce_zero_label(np.array([0, 1, 2, 150, 255], np.uint8))
    assert out.tolist() == [255, 0, 1, 149, 255]


def test_ade20k(tmp_path):
    for stem in ("ADE_val_2", "ADE_val_1"):
        _img(tmp_path / "images/validation" / f"{stem}.jpg")
        _lab(tmp_path / "annotations/validation" / f"{stem}.png", [0, 1, 150, 255])
    ds = ADE20K(tmp_path, "val")
    assert isinstance(ds, ADE20K) and len(ds) == 2 and ds.num_classes == 150 and ds.classes[0] == "wall"
    img, lab, name = ds[0]
    assert name == "ADE_val_1"  # sorted
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    assert lab.dtype == np.uint8 and lab[0, :4].tolist() == [255, 0, 149, 255]
    assert [n for *_, n in ds] == ["ADE_val_1", "ADE_val_2"]
    with pytest.raises(DatasetError, match="training"):
        ADE20K(tmp_path, "training")
    (tmp_path / "annotations/validation/ADE_val_1.png").unlink()
    with pytest.raises(DatasetError, match="no label map"):
        ADE20K(tmp_path)


def test_cityscapes(tmp_path):
    base = "frankfurt_000000_000294"
    _img(tmp_path / "leftImg8bit/val/frankfurt" / f"{base}_leftImg8bit.png")
    _lab(tmp_path / "gtFine/val/frankfurt" / f"{base}_gtFine_labelTrainIds.png", [0, 18, 255])
    _lab(tmp_path / "gtFine/val/frankfurt" / f"{base}_gtFine_labelIds.png", [7, 33, 0])  # ignored
    ds = Cityscapes(tmp_path)
    img, lab, name = ds[0]
    assert ds.num_classes == 19 and name == f"{base}_leftImg8bit"
    assert lab[0, :3].tolist() == [0, 18, 255]
    # only labelIds available: mapped to train ids
    (tmp_path / "gtFine/val/frankfurt" / f"{base}_gtFine_labelTrainIds.png").unlink()
    _, lab2, _ = Cityscapes(tmp_path)[0]
    assert lab2[0, :3].tolist() == [0, 18, 255]
    _lab(tmp_path / "gtFine/val/frankfurt" / f"{base}_gtFine_labelIds.png", [26, 1, 24])
    assert Cityscapes(tmp_path)[0][1][0, :3].tolist() == [13, 255, 11]
    with pytest.raises(DatasetError, match="leftImg8bit"):
        Cityscapes(tmp_path, "train")


def test_coco_stuff_10k_and_164k(tmp_path):
    _img(tmp_path / "images/test2014/COCO_1.jpg")
    _lab(tmp_path / "annotations/test2014/COCO_1_labelTrainIds.png", [0, 1, 171, 255])
    _img(tmp_path / "images/test2014/COCO_2.jpg")
    _lab(tmp_path / "annotations/test2014/COCO_2_labelTrainIds.png", [5])
    ds = COCOStuff(tmp_path)
    assert ds.num_classes == 171 and len(ds) == 2
    assert ds[0][1][0, :4].tolist() == [255, 0, 170, 255]
    assert (ds[1][1] == 4).all()
    _img(tmp_path / "images/val2017/0001.jpg")
    _lab(tmp_path / "annotations/val2017/0001_labelTrainIds.png", [0, 170, 255])
    assert COCOStuff(tmp_path, "val2017")[0][1][0, :3].tolist() == [0, 170, 255]


def test_coco_stuff_raw_annotations_are_refused(tmp_path):
    """The unzipped stuffthingmaps (<stem>.png, COCO ids 0..181) are not train ids: the official loader reads only
    *_labelTrainIds.png; taking them as train ids scored shifted classes without a word."""
    _img(tmp_path / "images/val2017/0001.jpg")
    _lab(tmp_path / "annotations/val2017/0001.png", [12, 118])
    with pytest.raises(DatasetError, match="raw COCO-Stuff annotations.*coco_stuff164k.py"):
        COCOStuff(tmp_path, "val2017")


def _folder(root: Path, n=2, classes="sky\nground\ncar\n"):
    for i in range(n):
        _img(root / "images" / f"s{i}.png", seed=i)
        _lab(root / "labels" / f"s{i}.png", [0, 1, 2, 255])
    (root / "classes.txt").write_text(classes)
    return root


def test_folder(tmp_path):
    root = _folder(tmp_path / "f")
    ds = FolderDataset(root)
    assert ds.classes == ("sky", "ground", "car") and ds.num_classes == 3 and len(ds.palette) == 3
    img, lab, name = ds[1]
    assert name == "s1" and lab[0, :4].tolist() == [0, 1, 2, 255]
    np.testing.assert_array_equal(img, cv2.imread(str(root / "images/s1.png"))[..., ::-1])
    # a value >= K that is not 255 is an error with the file name
    _lab(root / "labels/s0.png", [3])
    with pytest.raises(DatasetError, match="outside 0..2"):
        ds[0]
    # image and label of different sizes
    _lab(root / "labels/s0.png", [0], size=(H + 1, W))
    with pytest.raises(DatasetError, match="same size"):
        ds[0]


def test_folder_errors(tmp_path):
    root = _folder(tmp_path / "f")
    (root / "labels/s1.png").unlink()
    with pytest.raises(DatasetError, match="no label map"):
        FolderDataset(root)
    (root / "classes.txt").unlink()
    with pytest.raises(DatasetError, match="classes.txt"):
        FolderDataset(root)
    (root / "classes.txt").write_text("\n")
    with pytest.raises(DatasetError, match="no classes"):
        FolderDataset(root)
    with pytest.raises(DatasetError, match="labels"):
        FolderDataset(tmp_path / "f" / "images")


def test_open_dataset(tmp_path):
    root = _folder(tmp_path / "f", n=3)
    assert len(open_dataset("folder", root)) == 3
    assert len(open_dataset("auto", root, limit=2)) == 2
    assert detect_kind(root) == "folder"
    _img(tmp_path / "ade/images/validation/a.jpg")
    _lab(tmp_path / "ade/annotations/validation/a.png", [1])
    assert detect_kind(tmp_path / "ade") == "ade20k"
    assert open_dataset("ADE20K", tmp_path / "ade", split="validation").num_classes == 150
    with pytest.raises(ConfigError, match="unknown data set kind"):
        open_dataset("pascal", root)
    with pytest.raises(ConfigError, match="limit"):
        open_dataset("folder", root, limit=0)
    with pytest.raises(DatasetError, match="not found"):
        open_dataset("cityscapes", tmp_path / "missing")
    with pytest.raises(DatasetError, match="layout"):
        detect_kind(tmp_path)
    # unreadable image inside a data set surfaces as DatasetError
    (root / "images/s0.png").write_text("not an image")
    with pytest.raises(DatasetError, match="cannot decode"):
        open_dataset("folder", root)[0]
