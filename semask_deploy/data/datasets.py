"""Readers for the evaluation/training data sets, in mmseg's on-disk layouts.

Every reader yields ``(image uint8 (H, W, 3) RGB, label uint8 (H, W), name)`` with labels already in
training-id space: ``0..K-1`` and 255 = ignore (``reduce_zero_label`` applied where mmseg applies it).

Layouts:
    ADE20K       root/images/{training,validation}/*.jpg, root/annotations/<split>/<stem>.png
                 (0 = "other" → 255, k → k-1; mmseg ``reduce_zero_label=True``)
    Cityscapes   root/leftImg8bit/<split>/<city>/*_leftImg8bit.png,
                 root/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png
                 (``*_gtFine_labelIds.png`` is accepted and mapped to train ids if no TrainIds file)
    COCO-Stuff   10k: root/images/{train2014,test2014}/*.jpg, root/annotations/<split>/<stem>_labelTrainIds.png
                 as written by mmseg's converter (0 = unlabeled, 1..171 → reduce_zero_label, as in the
                 SeMask/mmseg coco_stuff10k config); 164k: root/images/{train2017,val2017}/*.jpg with
                 labels 0..170 / 255 (no reduction).
    folder       root/images/*.{png,jpg,...}, root/labels/<stem>.png (0..K-1, 255 = ignore),
                 root/classes.txt (one class name per line).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..classes import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    COCO_STUFF_CLASSES,
    palette_for,
)
from ..errors import ConfigError, DatasetError, ImageError
from .io import IMAGE_EXTENSIONS, read_image_rgb, read_label

IGNORE_INDEX = 255

# Cityscapes label id -> train id (cityscapesScripts' labels.py); everything else -> 255.
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 → 255, k → k-1, 255 stays 255.

    Args:
        label: ``uint8`` ``(H, W)``.

    Returns:
        A new ``uint8`` ``(H, W)`` array.
    """
    out = label.astype(np.uint8, copy=True)
    out -= 1  # 0 wraps to 255, 255 becomes 254
    out[out == 254] = 255
    return out


def _cityscapes_lut() -> np.ndarray:
    lut = np.full(256, 255, dtype=np.uint8)
    for k, v in CITYSCAPES_ID_TO_TRAINID.items():
        lut[k] = v
    return lut


class SegDataset:
    """A list of ``(image, label)`` file pairs with class metadata.

    Args:
        samples: ``(image_path, label_path)`` pairs, in order.
        classes: class names (``num_classes = len(classes)``).
        palette: RGB display colour per class (default: the standard/generic palette).
        reduce_zero_label: apply :func:`reduce_zero_label` to every label map.
        label_lut: optional 256-entry lookup applied to raw label values (before the range check).
        name: short data-set name for reports.
        root: data-set root, for messages.

    Attributes:
        samples, classes, palette, num_classes, ignore_index (255), reduce_zero_label, name, root.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, Path]],
        classes: Sequence[str],
        palette: Sequence[tuple[int, int, int]] | None = None,
        reduce_zero_label: bool = False,
        label_lut: np.ndarray | None = None,
        name: str = "custom",
        root: str | os.PathLike | None = None,
    ) -> None:
        self.samples = [(Path(a), Path(b)) for a, b in samples]
        self.classes = tuple(classes)
        self.num_classes = len(self.classes)
        self.palette = list(palette) if palette is not None else palette_for(self.num_classes)
        self.reduce_zero_label = reduce_zero_label
        self.label_lut = label_lut
        self.ignore_index = IGNORE_INDEX
        self.name = name
        self.root = Path(root) if root is not None else None

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, samples={len(self)}, classes={self.num_classes})"

    def sample_name(self, index: int) -> str:
        """Name of sample ``index`` (the image file name without its extension)."""
        return self.samples[index][0].stem

    def load_label(self, index: int) -> np.ndarray:
        """Label map of sample ``index`` in train-id space: ``uint8 (H, W)``, 0..K-1 or 255.

        Raises:
            DatasetError: unreadable label, or values outside ``0..K-1`` that are not 255.
        """
        path = self.samples[index][1]
        try:
            raw = read_label(path)
        except ImageError as exc:
            raise DatasetError(str(exc)) from exc
        if raw.dtype != np.uint8:
            if raw.size and int(raw.max()) > 255:
                raise DatasetError(f"label map {path} has values > 255; labels must be 8-bit class indices")
            raw = raw.astype(np.uint8)
        lab = raw
        if self.label_lut is not None:
            lab = self.label_lut[lab]
        if self.reduce_zero_label:
            lab = reduce_zero_label(lab)
        bad = (lab >= self.num_classes) & (lab != IGNORE_INDEX)
        if bad.any():
            vals = np.unique(raw[bad])[:8].tolist()  # as stored in the file, before the LUT / reduce_zero_label
            mapped = " (after reduce_zero_label: 0 = ignore, k → k-1)" if self.reduce_zero_label else ""
            raise DatasetError(
                f"label map {path} has values {vals} outside 0..{self.num_classes - 1}{mapped} (255 = ignore); "
                f"check the data-set type (--dataset / semask-train --data) or convert the labels to train ids"
            )
        return lab

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Sample ``index``: ``(image uint8 (H, W, 3) RGB, label uint8 (H, W), name)``."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        img_path = self.samples[index][0]
        try:
            img = read_image_rgb(img_path)
        except ImageError as exc:
            raise DatasetError(str(exc)) from exc
        lab = self.load_label(index)
        if img.shape[:2] != lab.shape:
            raise DatasetError(
                f"image {img_path} is {img.shape[1]}x{img.shape[0]} but its label map "
                f"{self.samples[index][1]} is {lab.shape[1]}x{lab.shape[0]}; they must have the same size"
            )
        return img, lab, self.sample_name(index)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
        for i in range(len(self)):
            yield self[i]

    def limit(self, n: int | None) -> SegDataset:
        """Keep only the first ``n`` samples (in place); ``None`` keeps all. Returns ``self``."""
        if n is not None:
            if n <= 0:
                raise ConfigError(f"limit must be a positive number of images, got {n}")
            self.samples = self.samples[:n]
        return self


# ----------------------------------------------------------------------------------------------------


def _require_dir(path: Path, what: str, hint: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} directory not found: {path} ({hint})")
    return path


def _files(directory: Path, suffix: str, recursive: bool = True) -> list[Path]:
    pattern = f"**/*{suffix}" if recursive else f"*{suffix}"
    return sorted(
        (p for p in directory.glob(pattern) if p.is_file() and not p.name.startswith(".")),
        key=lambda p: p.relative_to(directory).as_posix(),
    )


def _pair(
    images: list[Path],
    img_dir: Path,
    ann_dir: Path,
    img_suffix: str,
    label_suffixes: Sequence[str],
    kind: str,
) -> list[tuple[Path, Path]]:
    if not images:
        raise DatasetError(f"no *{img_suffix} images in {img_dir} (is this a {kind} data set root?)")
    pairs, missing = [], []
    for img in images:
        rel = img.relative_to(img_dir).as_posix()
        stem = rel[: -len(img_suffix)]
        for suf in label_suffixes:
            cand = ann_dir / (stem + suf)
            if cand.is_file():
                pairs.append((img, cand))
                break
        else:
            missing.append(ann_dir / (stem + label_suffixes[0]))
    if missing:
        shown = ", ".join(str(m) for m in missing[:3])
        raise DatasetError(
            f"{len(missing)} of {len(images)} {kind} images have no label map (expected e.g. {shown}); "
            f"check that {ann_dir} matches {img_dir}"
        )
    return pairs


class ADE20K(SegDataset):
    """ADE20K (ADEChallengeData2016 layout), 150 classes, ``reduce_zero_label``.

    Args:
        root: directory holding ``images/`` and ``annotations/``.
        split: ``"validation"`` (alias ``"val"``) or ``"training"`` (alias ``"train"``).

    Raises:
        DatasetError: missing directories or unpaired images.
    """

    def __init__(self, root: str | os.PathLike, split: str = "validation") -> None:
        root = Path(root)
        split = {"val": "validation", "train": "training"}.get(split, split)
        hint = "expected ADEChallengeData2016/images/<split>/*.jpg and annotations/<split>/*.png"
        img_dir = _require_dir(root / "images" / split, "ADE20K image", hint)
        ann_dir = _require_dir(root / "annotations" / split, "ADE20K annotation", hint)
        pairs = _pair(_files(img_dir, ".jpg"), img_dir, ann_dir, ".jpg", (".png",), "ADE20K")
        super().__init__(pairs, ADE20K_CLASSES, reduce_zero_label=True, name="ade20k", root=root)
        self.split = split


class Cityscapes(SegDataset):
    """Cityscapes fine annotations, 19 train-id classes.

    Uses ``*_gtFine_labelTrainIds.png``; when a sample only has ``*_gtFine_labelIds.png`` the ids are
    mapped to train ids on the fly (the mapping of cityscapesScripts).

    Args:
        root: directory holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``"val"``, ``"train"`` or ``"test"`` (test labels are all ignore).

    Raises:
        DatasetError: missing directories, unpaired images, or mixed label kinds.
    """

    def __init__(self, root: str | os.PathLike, split: str = "val") -> None:
        root = Path(root)
        hint = (
            "expected leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
            "gtFine/<split>/<city>/*_gtFine_labelTrainIds.png"
        )
        img_dir = _require_dir(root / "leftImg8bit" / split, "Cityscapes image", hint)
        ann_dir = _require_dir(root / "gtFine" / split, "Cityscapes annotation", hint)
        suffix = "_leftImg8bit.png"
        pairs = _pair(
            _files(img_dir, suffix), img_dir, ann_dir, suffix,
            ("_gtFine_labelTrainIds.png", "_gtFine_labelIds.png"), "Cityscapes",
        )
        train_ids = [lbl.name.endswith("_labelTrainIds.png") for _, lbl in pairs]
        if any(train_ids) and not all(train_ids):
            raise DatasetError(
                f"{ann_dir} mixes *_labelTrainIds.png and *_labelIds.png files; generate train ids for all "
                f"(cityscapesscripts' createTrainIdLabelImgs or mmseg's tools/convert_datasets/cityscapes.py)"
            )
        lut = None if all(train_ids) else _cityscapes_lut()
        super().__init__(pairs, CITYSCAPES_CLASSES, label_lut=lut, name="cityscapes", root=root)
        self.split = split


class COCOStuff(SegDataset):
    """COCO-Stuff in mmseg's converted layout, 171 classes.

    Args:
        root: directory holding ``images/`` and ``annotations/``.
        split: ``"test"``/``"test2014"`` or ``"train"``/``"train2014"`` (10k), or ``"val2017"`` /
            ``"train2017"`` (164k).
        reduce_zero_label: override; by default True for the 10k splits (labels 0 = unlabeled,
            1..171, as mmseg's converter writes them and the SeMask config reads them) and False for
            the 164k splits (labels 0..170, 255 = ignore).

    Raises:
        DatasetError: missing directories or unpaired images.
    """

    def __init__(
        self, root: str | os.PathLike, split: str = "test", reduce_zero_label: bool | None = None
    ) -> None:
        root = Path(root)
        split = {"test": "test2014", "train": "train2014", "val": "test2014"}.get(split, split)
        if reduce_zero_label is None:
            reduce_zero_label = split.endswith("2014")
        hint = "expected images/<split>/*.jpg and annotations/<split>/*_labelTrainIds.png (mmseg's converter)"
        img_dir = _require_dir(root / "images" / split, "COCO-Stuff image", hint)
        ann_dir = _require_dir(root / "annotations" / split, "COCO-Stuff annotation", hint)
        images = _files(img_dir, ".jpg")
        raw = [ann_dir / (img.relative_to(img_dir).as_posix()[: -len(".jpg")] + ".png") for img in images[:50]]
        if raw and not any(r.with_name(r.stem + "_labelTrainIds.png").is_file() for r in raw) and any(
                r.is_file() for r in raw):
            # as the official loader: only train ids are read; the raw stuffthingmaps hold COCO ids (0..181 with
            # gaps), which as train ids would score shifted classes without a word
            raise DatasetError(f"{ann_dir} holds raw COCO-Stuff annotations (<stem>.png, COCO ids) but no "
                               "<stem>_labelTrainIds.png: convert them to train ids first with mmseg's "
                               "tools/convert_datasets/coco_stuff164k.py (or coco_stuff10k.py)")
        pairs = _pair(images, img_dir, ann_dir, ".jpg", ("_labelTrainIds.png",), "COCO-Stuff")
        super().__init__(
            pairs, COCO_STUFF_CLASSES, reduce_zero_label=reduce_zero_label, name="coco-stuff", root=root
        )
        self.split = split


class FolderDataset(SegDataset):
    """A plain folder: ``images/``, ``labels/`` (same stems, ``.png``) and ``classes.txt``.

    Labels are used as stored (0..K-1, 255 = ignore).

    Args:
        root: the data-set directory (e.g. one written by ``write_synthetic_dataset``).

    Raises:
        DatasetError: missing ``images/``, ``labels/`` or ``classes.txt``, an empty class list,
            or images without a label map.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        root = Path(root)
        hint = "a folder data set needs images/, labels/ (same file stems, .png) and classes.txt"
        img_dir = _require_dir(root / "images", "image", hint)
        lab_dir = _require_dir(root / "labels", "label", hint)
        cls_file = root / "classes.txt"
        if not cls_file.is_file():
            raise DatasetError(f"{cls_file} not found ({hint}; one class name per line)")
        classes = [ln.strip() for ln in cls_file.read_text(encoding="utf-8").splitlines()]
        while classes and not classes[-1]:
            classes.pop()
        if not classes:
            raise DatasetError(f"{cls_file} lists no classes (one class name per line)")
        if len(classes) > 255:
            raise DatasetError(
                f"{cls_file} lists {len(classes)} classes; at most 255 fit 8-bit labels with 255 = ignore"
            )
        exts = set(IMAGE_EXTENSIONS)
        images = sorted(
            p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")
        )
        if not images:
            raise DatasetError(f"no images in {img_dir} ({hint})")
        stems = [p.stem for p in images]
        if len(set(stems)) != len(stems):
            dup = sorted({s for s in stems if stems.count(s) > 1})[:3]
            raise DatasetError(
                f"{img_dir} has several images with the same stem ({', '.join(dup)}); keep one per name"
            )
        pairs, missing = [], []
        for p in images:
            lbl = lab_dir / f"{p.stem}.png"
            (pairs if lbl.is_file() else missing).append((p, lbl))
        if missing:
            shown = ", ".join(str(m[1]) for m in missing[:3])
            raise DatasetError(
                f"{len(missing)} of {len(images)} images have no label map (expected e.g. {shown})"
            )
        super().__init__(pairs, classes, name=root.name or "folder", root=root)


_KINDS = {
    "ade20k": ADE20K, "ade": ADE20K,
    "cityscapes": Cityscapes,
    "coco-stuff": COCOStuff, "coco_stuff": COCOStuff, "cocostuff": COCOStuff, "coco-stuff10k": COCOStuff,
    "coco-stuff164k": COCOStuff,
    "folder": FolderDataset, "custom": FolderDataset,
}
DATASET_KINDS: tuple[str, ...] = ("ade20k", "cityscapes", "coco-stuff", "folder")


def detect_kind(root: str | os.PathLike) -> str:
    """Guess the layout of a data-set root.

    Returns:
        One of :data:`DATASET_KINDS`.

    Raises:
        DatasetError: no known layout matches.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data set directory not found: {root}")
    if (root / "leftImg8bit").is_dir():
        return "cityscapes"
    if (root / "classes.txt").is_file() and (root / "labels").is_dir():
        return "folder"
    if (root / "images" / "validation").is_dir() or (root / "images" / "training").is_dir():
        return "ade20k"
    if any((root / "images" / s).is_dir() for s in ("test2014", "train2014", "val2017", "train2017")):
        return "coco-stuff"
    raise DatasetError(
        f"cannot tell the layout of {root}; pass the data-set kind ({', '.join(DATASET_KINDS)}) explicitly"
    )


def open_dataset(
    kind: str, root: str | os.PathLike, split: str | None = None, limit: int | None = None
) -> SegDataset:
    """Open a data set by kind.

    Args:
        kind: ``"ade20k"``, ``"cityscapes"``, ``"coco-stuff"``, ``"folder"`` or ``"auto"``.
        root: its root directory.
        split: split name (default: the evaluation split — ADE20K ``validation``, Cityscapes
            ``val``, COCO-Stuff ``test2014``; ignored for ``folder``).
        limit: keep only the first ``limit`` samples.

    Returns:
        A :class:`SegDataset`.

    Raises:
        ConfigError: unknown kind or bad limit. DatasetError: layout problems.
    """
    key = kind.lower().strip()
    if key == "auto":
        key = detect_kind(root)
    if key not in _KINDS:
        raise ConfigError(f"unknown data set kind {kind!r}; choose one of {', '.join(DATASET_KINDS)} or auto")
    factory = _KINDS[key]
    if not Path(root).is_dir():
        raise DatasetError(f"data set directory not found: {root}")
    if factory is FolderDataset:
        if split is not None:  # a folder data set has no splits: the whole folder would be used without a word
            raise ConfigError(f"a folder data set has no splits (got split {split!r}); point the data root at the "
                              f"split's own folder instead, e.g. {Path(root) / split}")
        ds = FolderDataset(root)
    elif split is None:
        ds = factory(root)
    else:
        ds = factory(root, split)
    return ds.limit(limit)
