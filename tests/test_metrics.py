"""Confusion matrix and mIoU with mmseg semantics, on hand-computed examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from semask_deploy.metrics import ConfusionMatrix, label_agreement, miou_between

PRED = np.array([[0, 0, 1], [1, 2, 2]])
LABEL = np.array([[0, 1, 1], [1, 2, 255]])


def test_hand_computed():
    cm = ConfusionMatrix(3).update(PRED, LABEL)
    # intersect (1, 2, 1); pred areas (2, 2, 1) -- the ignored pixel's prediction is not counted;
    # label areas (1, 3, 1); unions (2, 3, 1)
    np.testing.assert_array_equal(cm.area_intersect, [1, 2, 1])
    np.testing.assert_array_equal(cm.area_pred, [2, 2, 1])
    np.testing.assert_array_equal(cm.area_label, [1, 3, 1])
    np.testing.assert_allclose(cm.per_class_iou(), [0.5, 2 / 3, 1.0])
    assert cm.miou() == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert cm.aacc() == pytest.approx(4 / 5)
    np.testing.assert_allclose(cm.per_class_acc(), [1.0, 2 / 3, 1.0])
    assert cm.total_pixels == 5


def test_absent_class_is_nan_and_excluded():
    cm = ConfusionMatrix(5).update(PRED, LABEL)
    iou = cm.per_class_iou()
    assert math.isnan(iou[3]) and math.isnan(iou[4])
    assert cm.miou() == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    # a class only predicted (never labelled) counts with IoU 0
    cm2 = ConfusionMatrix(5).update(np.array([4, 0]), np.array([0, 0]))
    np.testing.assert_allclose(cm2.per_class_iou()[[0, 4]], [0.5, 0.0])
    assert cm2.miou() == pytest.approx(0.25)


def test_merge_torch_and_batches():
    rng = np.random.default_rng(0)
    p = rng.integers(0, 6, (4, 17, 23))
    t = rng.integers(0, 6, (4, 17, 23))
    t[t == 5] = 255
    whole = ConfusionMatrix(6).update(p, t)
    a = ConfusionMatrix(6).update(torch.from_numpy(p[:2]), torch.from_numpy(t[:2]))
    b = ConfusionMatrix(6)
    for i in (2, 3):
        b.update(p[i], t[i])
    a.merge(b)
    np.testing.assert_array_equal(a.matrix, whole.matrix)
    assert a.miou() == pytest.approx(whole.miou())
    with pytest.raises(ValueError):
        a.merge(ConfusionMatrix(7))
    with pytest.raises(ValueError):
        a.update(p[0], t[1][:3])
    with pytest.raises(ValueError):
        a.update(p[0].astype(np.float32), t[0])


def _mmseg_areas(pred, label, k, ignore=255):
    """mmseg's intersect_and_union, written with numpy histograms."""
    mask = label != ignore
    pred, label = pred[mask], label[mask]
    inter = pred[pred == label]
    hist = lambda x: np.histogram(x, bins=k, range=(0, k - 1))[0] if x.size else np.zeros(k, int)  # noqa: E731
    # np.histogram's last bin is closed like torch.histc; values outside [0, K-1] are dropped
    return hist(inter), hist(pred), hist(label)


def test_matches_mmseg_with_out_of_range_values():
    rng = np.random.default_rng(1)
    pred = rng.integers(0, 9, 500)  # 7, 8 are out of range for k=7
    label = rng.integers(0, 9, 500)
    label[::7] = 255
    cm = ConfusionMatrix(7).update(pred, label)
    inter, ap, al = _mmseg_areas(pred, label, 7)
    np.testing.assert_array_equal(cm.area_intersect, inter)
    np.testing.assert_array_equal(cm.area_pred, ap)
    np.testing.assert_array_equal(cm.area_label, al)


def test_to_dict_and_helpers():
    cm = ConfusionMatrix(4).update(PRED, LABEL)
    d = cm.to_dict(["a", "b", "c", "d"])
    json.dumps(d, allow_nan=False)
    assert d["per_class"][3] == {"class": "d", "iou": None, "acc": None}
    assert d["mIoU"] == pytest.approx(cm.miou())
    empty = ConfusionMatrix(3)
    assert math.isnan(empty.miou()) and math.isnan(empty.aacc())
    assert label_agreement(PRED, LABEL) == pytest.approx(4 / 6)
    assert label_agreement(PRED, LABEL, ignore_index=255) == pytest.approx(4 / 5)
    assert miou_between(PRED, PRED, 3) == 1.0
    assert miou_between(PRED, LABEL, 3) == pytest.approx(cm.miou())
