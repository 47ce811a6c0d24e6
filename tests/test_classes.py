"""Class names and palettes match mmseg's dataset definitions; generic palettes are deterministic."""

from __future__ import annotations

import pytest

from semask_deploy import classes as C


@pytest.mark.parametrize(
    "n, name, first, last, pal_first, pal_last",
    [
        (150, "ade20k", "wall", "flag", (120, 120, 120), (92, 0, 255)),
        (19, "cityscapes", "road", "bicycle", (128, 64, 128), (119, 11, 32)),
        (171, "coco-stuff", "person", "wood", (0, 192, 64), (64, 64, 0)),
    ],
)
def test_standard_sets(n, name, first, last, pal_first, pal_last):
    names = C.default_classes(n)
    pal = C.default_palette(n)
    assert C.dataset_for_num_classes(n) == name
    assert len(names) == n and len(pal) == n
    assert names[0] == first and names[-1] == last
    assert pal[0] == pal_first and pal[-1] == pal_last
    assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in pal)
    assert len(set(names)) == n  # class names are unique


def test_mmseg_quirks_and_spot_values():
    # kept exactly as mmseg defines them
    assert C.ADE20K_CLASSES[7] == "bed "
    assert C.ADE20K_CLASSES[12] == "person" and C.ADE20K_PALETTE[12] == (150, 5, 61)
    assert C.ADE20K_CLASSES[44] == "chest of drawers" and C.ADE20K_PALETTE[48] == (140, 140, 140)
    assert C.CITYSCAPES_CLASSES[6:8] == ("traffic light", "traffic sign")
    assert C.CITYSCAPES_PALETTE[6] == (250, 170, 30)
    assert C.COCO_STUFF_PALETTE[0] == C.COCO_STUFF_PALETTE[1] == (0, 192, 64)
    assert C.COCO_STUFF_PALETTE[26] == (0, 0, 0)
    assert C.COCO_STUFF_CLASSES[80] == "banner" and C.COCO_STUFF_CLASSES[91] == "ceiling-tile"


def test_unknown_counts():
    assert C.default_classes(8) is None
    assert C.default_palette(8) is None
    assert C.dataset_for_num_classes(8) == "custom"


def test_generic_palette():
    a = C.generic_palette(300)
    assert a == C.generic_palette(300)
    assert len(a) == 300 and len(set(a)) == 300
    assert a[:10] == C.generic_palette(10)  # prefix-stable
    assert C.generic_palette(10, seed=3) != C.generic_palette(10)
    assert C.generic_palette(0) == []
    assert C.palette_for(19) == C.default_palette(19)
    assert C.palette_for(7) == C.generic_palette(7)
    with pytest.raises(ValueError):
        C.generic_palette(-1)
