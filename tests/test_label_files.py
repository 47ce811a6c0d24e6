"""Label reading as the official mmseg evaluation reads it (Pillow): 1-bit PNGs and the out-of-range message."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semask_deploy.data import open_dataset
from semask_deploy.data.io import read_label
from semask_deploy.errors import DatasetError


def test_one_bit_png_label_is_0_1_like_pillow(tmp_path):
    mask = np.zeros((6, 8), bool)
    mask[2:4, 3:6] = True
    Image.fromarray(mask).save(tmp_path / "m.png")  # Pillow writes mode "1" as a 1-bit grayscale PNG
    official = np.array(Image.open(tmp_path / "m.png")).astype(np.uint8)  # mmcv.imread(..., backend="pillow")
    np.testing.assert_array_equal(read_label(tmp_path / "m.png"), official)
    assert read_label(tmp_path / "m.png").max() == 1


def test_out_of_range_message_names_the_stored_value(tmp_path: Path):
    root = tmp_path / "ade"
    (root / "images/validation").mkdir(parents=True)
    (root / "annotations/validation").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images/validation/a.jpg")
    lab = np.ones((4, 4), np.uint8)
    lab[0, 0] = 151  # one past ADE20K's 150 classes as stored (1..150)
    Image.fromarray(lab).save(root / "annotations/validation/a.png")
    ds = open_dataset("ade20k", root)
    with pytest.raises(DatasetError, match=r"values \[151\]"):
        ds.load_label(0)
