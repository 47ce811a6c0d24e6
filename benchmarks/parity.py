"""Parity of a backend against the torch fp32 reference, and accuracy on a labelled data set.

On the same inputs (a batch of normalised images) the reference gives logits ``R`` (N, K, H, W) and
labels ``r``; a backend gives labels ``t`` and, when it exports them, logits ``T``:

* ``max_abs`` = max |T − R|, ``mean_abs`` = mean |T − R|, ``rel_l2`` = ‖T − R‖₂ / ‖R‖₂ (logits only);
* ``pixel_agreement`` = fraction of pixels with t == r;
* ``miou_vs_ref`` = mIoU of t measured against r as if r were the ground truth.

With a data set, :func:`evaluate` runs the official test pipeline per image and accumulates a confusion
matrix against the ground truth (mIoU, aAcc, per-class IoU); :func:`delta_miou` is backend − reference.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from semask_deploy.errors import ConfigError, DatasetError
from semask_deploy.metrics import ConfusionMatrix, label_agreement, miou_between

SYNTHETIC_DEFAULT_SIZE = (256, 256)
SYNTHETIC_DEFAULT_COUNT = 16


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def logit_errors(ref: Any, test: Any) -> dict[str, float]:
    """Max/mean absolute error and relative L2 of ``test`` logits against ``ref`` (same shape).

    Both are compared in float64. ``rel_l2`` is ``inf`` if the reference is all zeros and the test is not.
    """
    r, t = _np(ref).astype(np.float64), _np(test).astype(np.float64)
    if r.shape != t.shape:
        raise ValueError(f"logit shapes differ: reference {r.shape} vs backend {t.shape}")
    d = t - r
    nr = float(np.linalg.norm(r.ravel()))
    nd = float(np.linalg.norm(d.ravel()))
    return {
        "max_abs": float(np.abs(d).max()) if d.size else 0.0,
        "mean_abs": float(np.abs(d).mean()) if d.size else 0.0,
        "rel_l2": nd / nr if nr > 0 else (0.0 if nd == 0 else math.inf),
        "finite": bool(np.isfinite(t).all()),
    }


def compare(
    ref_labels: Any, test_labels: Any, num_classes: int, ref_logits: Any | None = None, test_logits: Any | None = None
) -> dict[str, Any]:
    """Every parity number of one backend on one batch.

    Args:
        ref_labels: reference labels, int (N, H, W).
        test_labels: backend labels, same shape.
        num_classes: K, for the mIoU against the reference labels.
        ref_logits, test_logits: (N, K, H, W) float; the logit errors are ``None`` when either is missing.

    Returns:
        ``{"max_abs", "mean_abs", "rel_l2", "pixel_agreement", "miou_vs_ref", "finite"}``.
    """
    r, t = _np(ref_labels), _np(test_labels)
    out: dict[str, Any] = {"max_abs": None, "mean_abs": None, "rel_l2": None, "finite": None}
    if ref_logits is not None and test_logits is not None:
        out.update(logit_errors(ref_logits, test_logits))
    out["pixel_agreement"] = label_agreement(t, r)
    out["miou_vs_ref"] = miou_between(t.astype(np.int64), r.astype(np.int64), num_classes, ignore_index=-1)
    return out


# ------------------------------------------------------------------------------------- data sets


class SyntheticEvalSet:
    """Deterministic synthetic scenes as an evaluation set: yields ``(image, label, name)``.

    Args:
        num_classes: classes of the model (≥ 8; the scenes use classes 0..K-1).
        count: number of images.
        size: (H, W).
        seed: scene seed (sample i depends only on (seed, i)).
    """

    def __init__(self, num_classes: int, count: int = SYNTHETIC_DEFAULT_COUNT,
                 size: tuple[int, int] = SYNTHETIC_DEFAULT_SIZE, seed: int = 0) -> None:
        from semask_deploy.data import SyntheticScenes

        if num_classes < 8:
            raise ConfigError(f"synthetic scenes need a model with at least 8 classes, this one has {num_classes}")
        if num_classes > 255:
            raise ConfigError(f"synthetic scenes support at most 255 classes, the model has {num_classes}")
        self.scenes = SyntheticScenes(num_classes=num_classes, size=size, seed=seed, length=count)
        self.classes = self.scenes.classes
        self.num_classes = num_classes
        self.ignore_index = 255
        self.name = "synthetic"
        self.root = None

    def __len__(self) -> int:
        return len(self.scenes)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
        for i in range(len(self)):
            img, lab = self.scenes[i]
            yield img, lab, f"synthetic_{i:05d}"


DATASET_CHOICES = ("ade20k", "cityscapes", "coco-stuff", "folder", "synthetic")


def open_eval_dataset(
    kind: str, root: str | Path | None, num_classes: int, split: str | None = None, limit: int | None = None
) -> Any:
    """A data set for evaluation, checked against the model's class count.

    Args:
        kind: one of :data:`DATASET_CHOICES`.
        root: data-set root (ignored for ``synthetic``, which is generated in memory).
        num_classes: the model's K; a data set with another class count is refused.
        split: split name (default: the evaluation split).
        limit: first ``limit`` images (``synthetic``: the number of scenes, default 16).

    Raises:
        ConfigError / DatasetError: bad kind, missing root, layout problems or a class-count mismatch.
    """
    if kind not in DATASET_CHOICES:
        raise ConfigError(f"unknown --dataset {kind!r}; choose one of {', '.join(DATASET_CHOICES)}")
    if limit is not None and limit <= 0:
        raise ConfigError(f"--limit must be a positive number of images, got {limit}")
    if kind == "synthetic":
        return SyntheticEvalSet(num_classes, count=limit or SYNTHETIC_DEFAULT_COUNT)
    if root is None:
        raise ConfigError(f"--dataset {kind} needs --data-root DIR")
    from semask_deploy.data import open_dataset

    ds = open_dataset(kind, root, split=split, limit=limit)
    if ds.num_classes != num_classes:
        raise DatasetError(
            f"the model predicts {num_classes} classes but the {kind} data set at {root} has {ds.num_classes}; "
            f"use a checkpoint trained for this data set (or the matching --dataset)"
        )
    return ds


def evaluate(
    predict: Callable[[np.ndarray], np.ndarray],
    dataset: Any,
    num_classes: int,
    *,
    progress: Callable[[Any], Any] | None = None,
    keep_predictions: bool = False,
) -> tuple[ConfusionMatrix, list[np.ndarray]]:
    """Accumulate the confusion matrix of ``predict`` over ``dataset``.

    Args:
        predict: uint8 (H, W, 3) RGB → int labels (H, W) at the image's size (e.g. ``Segmenter.predict``).
        dataset: iterable of ``(image, label, name)``; labels uint8 with 255 = ignore.
        num_classes: K.
        progress: optional wrapper of the iterator (a progress bar).
        keep_predictions: also return every prediction (for ΔmIoU / agreement between backends).

    Returns:
        (the :class:`ConfusionMatrix`, the predictions if kept, else an empty list).
    """
    cm = ConfusionMatrix(num_classes, ignore_index=255)
    preds: list[np.ndarray] = []
    items = progress(dataset) if progress is not None else dataset
    for img, lab, name in items:
        pred = np.asarray(predict(img))
        if pred.shape != lab.shape:
            raise DatasetError(f"{name}: prediction {pred.shape} does not match the label map {lab.shape}")
        cm.update(pred, lab)
        if keep_predictions:
            preds.append(pred.astype(np.int32))
    return cm, preds


def delta_miou(test: float | None, ref: float | None) -> float | None:
    """``test − ref`` (None when either is missing or NaN)."""
    if test is None or ref is None or not (math.isfinite(test) and math.isfinite(ref)):
        return None
    return test - ref
