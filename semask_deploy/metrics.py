"""Segmentation metrics with mmseg's semantics: confusion matrix, mIoU, aAcc, per-class IoU.

Pixels whose label is ``ignore_index`` are dropped before counting, in the prediction too, and the
label/prediction areas are histograms over ``[0, K)`` (mmseg's ``intersect_and_union``; so a label
value outside ``[0, K)`` that is not ignored still adds its prediction to ``area_pred``). One exception: the
official code's ``np.histogram(bins=np.arange(K + 1))`` closes its last bin, so a label or prediction equal
to K itself counts as class K−1 there and is skipped here; the CLIs refuse labels ≥ K and predictions are
argmaxes (< K), so only direct callers with such values see a difference. Per class
``IoU = intersect / union`` with ``union = area_pred + area_label - intersect``; a class with
``union == 0`` (absent from both labels and predictions of all counted images) is NaN and left out of
the mean (``np.nanmean``). All values are fractions in ``[0, 1]`` (mmseg prints them ×100).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


class ConfusionMatrix:
    """Accumulates a ``K×K`` confusion matrix (rows = label, columns = prediction).

    Args:
        num_classes: number of classes ``K``.
        ignore_index: label value excluded from every count.

    Attributes:
        matrix: ``int64 (K, K)`` counts.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        # mmseg counts areas with histograms over [0, K): a labelled pixel predicted outside [0, K)
        # adds to area_label only, and a non-ignored label outside [0, K) adds its prediction to
        # area_pred only. Kept beside the matrix so the areas match mmseg exactly.
        self._label_unmatched = np.zeros(self.num_classes, dtype=np.int64)
        self._pred_unmatched = np.zeros(self.num_classes, dtype=np.int64)

    def reset(self) -> None:
        """Zero all counts."""
        self.matrix[...] = 0
        self._label_unmatched[...] = 0
        self._pred_unmatched[...] = 0

    def update(self, pred: Any, label: Any) -> ConfusionMatrix:
        """Add one prediction/label pair (or a batch of them).

        Args:
            pred: integer predictions, any shape (numpy array or torch tensor, any device).
            label: integer labels of the same shape; ``ignore_index`` pixels are skipped (labels
                outside ``[0, K)`` count only towards ``area_pred``, as in mmseg).

        Returns:
            ``self``.
        """
        p = _to_numpy(pred)
        t = _to_numpy(label)
        if p.shape != t.shape:
            raise ValueError(f"prediction shape {p.shape} != label shape {t.shape}")
        if not (np.issubdtype(p.dtype, np.integer) or p.dtype == np.bool_):
            raise ValueError(f"predictions must be integer class ids, got {p.dtype} (take the argmax first)")
        k = self.num_classes
        p = p.ravel().astype(np.int64, copy=False)
        t = t.ravel().astype(np.int64, copy=False)
        if self.ignore_index is not None:
            keep = t != self.ignore_index
            if not keep.all():
                p, t = p[keep], t[keep]
        t_in = (t >= 0) & (t < k)
        if not t_in.all():
            q = p[~t_in]
            self._pred_unmatched += np.bincount(q[(q >= 0) & (q < k)], minlength=k)
            p, t = p[t_in], t[t_in]
        in_range = (p >= 0) & (p < k)
        if not in_range.all():
            self._label_unmatched += np.bincount(t[~in_range], minlength=k)
            p, t = p[in_range], t[in_range]
        self.matrix += np.bincount(t * k + p, minlength=k * k).reshape(k, k)
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (e.g. from another process). Returns ``self``."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class counts into {self.num_classes}-class ones")
        self.matrix += other.matrix
        self._label_unmatched += other._label_unmatched
        self._pred_unmatched += other._pred_unmatched
        return self

    # -- areas --------------------------------------------------------------------------------------

    @property
    def area_intersect(self) -> np.ndarray:
        """``(K,)`` pixels predicted correctly per class."""
        return np.diag(self.matrix).copy()

    @property
    def area_label(self) -> np.ndarray:
        """``(K,)`` labelled pixels per class."""
        return self.matrix.sum(1) + self._label_unmatched

    @property
    def area_pred(self) -> np.ndarray:
        """``(K,)`` predicted pixels per class (on non-ignored pixels)."""
        return self.matrix.sum(0) + self._pred_unmatched

    @property
    def area_union(self) -> np.ndarray:
        """``(K,)`` ``area_pred + area_label - area_intersect``."""
        return self.area_pred + self.area_label - self.area_intersect

    @property
    def total_pixels(self) -> int:
        """Number of counted (non-ignored) pixels."""
        return int(self.area_label.sum())

    # -- metrics ------------------------------------------------------------------------------------

    def per_class_iou(self) -> np.ndarray:
        """``float64 (K,)`` IoU per class; NaN where the union is empty."""
        union = self.area_union
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, self.area_intersect / np.maximum(union, 1), np.nan)

    def per_class_acc(self) -> np.ndarray:
        """``float64 (K,)`` accuracy (recall) per class; NaN where the class has no labelled pixel."""
        lab = self.area_label
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(lab > 0, self.area_intersect / np.maximum(lab, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over classes with a non-empty union (NaN if there is none)."""
        iou = self.per_class_iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan

    def macc(self) -> float:
        """Mean per-class accuracy over classes present in the labels."""
        acc = self.per_class_acc()
        return float(np.nanmean(acc)) if np.isfinite(acc).any() else math.nan

    def aacc(self) -> float:
        """Overall pixel accuracy ``sum(intersect) / sum(label)`` (NaN if nothing was counted)."""
        total = self.total_pixels
        return float(self.area_intersect.sum() / total) if total else math.nan

    def to_dict(self, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready summary (NaN → ``None``).

        Args:
            classes: optional class names for the per-class entries.

        Returns:
            ``{"mIoU", "mAcc", "aAcc", "num_classes", "pixels", "per_class": [{"class", "iou", "acc"}]}``.
        """
        def clean(v: float) -> float | None:
            return None if v is None or not math.isfinite(v) else float(v)

        if classes is not None and len(classes) != self.num_classes:
            raise ValueError(f"{len(classes)} class names for {self.num_classes} classes")
        names = list(classes) if classes is not None else [str(i) for i in range(self.num_classes)]
        iou, acc = self.per_class_iou(), self.per_class_acc()
        return {
            "mIoU": clean(self.miou()),
            "mAcc": clean(self.macc()),
            "aAcc": clean(self.aacc()),
            "num_classes": self.num_classes,
            "pixels": self.total_pixels,
            "per_class": [
                {"class": n, "iou": clean(float(i)), "acc": clean(float(a))}
                for n, i, a in zip(names, iou, acc, strict=True)
            ],
        }


def label_agreement(a: Any, b: Any, ignore_index: int | None = None) -> float:
    """Fraction of pixels where two label maps agree.

    Args:
        a: integer labels (numpy or torch), any shape.
        b: integer labels, same shape.
        ignore_index: if given, pixels where ``b`` equals it are not counted.

    Returns:
        Agreement in ``[0, 1]`` (NaN if no pixel is counted).
    """
    x, y = _to_numpy(a), _to_numpy(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    eq = x == y
    if ignore_index is not None:
        keep = y != ignore_index
        n = int(keep.sum())
        return float((eq & keep).sum() / n) if n else math.nan
    return float(eq.mean()) if eq.size else math.nan


def miou_between(pred: Any, ref_labels: Any, num_classes: int, ignore_index: int = 255) -> float:
    """mIoU of ``pred`` measured against ``ref_labels`` (e.g. a backend vs the torch fp32 reference).

    Args:
        pred: integer predictions, any shape.
        ref_labels: reference labels, same shape.
        num_classes: ``K``.
        ignore_index: skipped reference value.

    Returns:
        mIoU in ``[0, 1]``.
    """
    return ConfusionMatrix(num_classes, ignore_index).update(pred, ref_labels).miou()
