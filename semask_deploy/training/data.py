"""Training and held-out data for ``semask-train``: sources, deterministic sharded batches, evaluation.

Every training batch is a pure function of ``(seed, iteration, rank)``: the sample indices come from a
per-epoch permutation sharded like ``DistributedSampler`` (synthetic scenes: a fresh scene per sample),
and each sample's augmentation uses its own generator seeded by its global position. So ``--resume``
needs only the iteration to continue exactly, and any ``--workers`` count gives the same batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from ..data.datasets import FolderDataset, SegDataset, open_dataset
from ..data.synthetic import SyntheticScenes
from ..data.transforms import TrainAugment
from ..errors import ConfigError, DatasetError
from ..metrics import ConfusionMatrix
from .dist import DistInfo, all_reduce_sum

DATA_KINDS = ("synthetic", "ade20k", "cityscapes", "coco-stuff", "folder")
SYNTHETIC_VAL_SEED_OFFSET = 1_000_003  # held-out scenes: seed + offset (never a training seed)
SYNTHETIC_TRAIN_LENGTH = 2**40  # synthetic training samples are never reused


class PairSource(Protocol):
    def __len__(self) -> int: ...
    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


class SyntheticSource:
    """Synthetic scenes as a source of ``(image, label)`` pairs."""

    def __init__(self, scenes: SyntheticScenes) -> None:
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.scenes.render(index)


class DatasetSource:
    """A :class:`SegDataset` (or a subset of its indices) as a source of pairs."""

    def __init__(self, ds: SegDataset, indices: Sequence[int] | None = None) -> None:
        self.ds = ds
        self.indices = list(range(len(ds))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        img, lab, _ = self.ds[self.indices[index]]
        return img, lab


@dataclass
class TrainData:
    """The training source, the held-out source and the class metadata."""

    kind: str
    train: PairSource
    val: PairSource
    classes: tuple[str, ...]
    palette: list[tuple[int, int, int]]
    synthetic: bool
    description: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def open_train_data(
    kind: str, root: str | Path | None, *, num_classes: int | None, size: tuple[int, int], seed: int,
    eval_size: int | None,
) -> TrainData:
    """Open the training and held-out splits.

    Args:
        kind: one of :data:`DATA_KINDS`.
        root: data-set root (not for synthetic).
        num_classes: synthetic classes (>= 8).
        size: synthetic scene size ``(H, W)``.
        seed: synthetic training seed; the held-out scenes use ``seed + SYNTHETIC_VAL_SEED_OFFSET``.
        eval_size: held-out samples to use (None: synthetic 50, data sets the whole split).

    Splits: ADE20K training/validation, Cityscapes train/val, COCO-Stuff train2014/test2014 (or
    train2017/val2017), folder ``root/train`` + ``root/val`` when both exist, else the last 10 % of
    ``root`` (at least one sample) is held out.

    Raises:
        ConfigError / DatasetError: unknown kind, missing root, bad layout.
    """
    if kind not in DATA_KINDS:
        raise ConfigError(f"--data must be one of {', '.join(DATA_KINDS)}, got {kind!r}")
    if eval_size is not None and eval_size <= 0:
        raise ConfigError(f"--eval-size must be positive, got {eval_size}")
    if kind == "synthetic":
        n = 8 if num_classes is None else num_classes
        if not 8 <= n <= 255:
            raise ConfigError(f"--num-classes must be between 8 and 255 for synthetic data, got {n}")
        train = SyntheticScenes(n, size, seed=seed, length=SYNTHETIC_TRAIN_LENGTH)
        val = SyntheticScenes(n, size, seed=seed + SYNTHETIC_VAL_SEED_OFFSET, length=eval_size or 50)
        desc = (f"synthetic scenes {size[0]}x{size[1]}, {n} classes, train seed {seed}, "
                f"held-out seed {seed + SYNTHETIC_VAL_SEED_OFFSET} ({len(val)} scenes)")
        return TrainData(kind, SyntheticSource(train), SyntheticSource(val), train.classes, train.palette, True, desc)
    if num_classes is not None:
        raise ConfigError("--num-classes applies to --data synthetic only (data sets define their classes)")
    if root is None:
        raise ConfigError(f"--data {kind} needs --data-root DIR")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data set directory not found: {root}")
    if kind == "folder":
        if (root / "train").is_dir() != (root / "val").is_dir() and not (root / "images").is_dir():
            have, lack = ("train", "val") if (root / "train").is_dir() else ("val", "train")
            raise DatasetError(f"{root} has {have}/ but no {lack}/: a folder data set for training is either "
                               f"{root}/train/ + {root}/val/ (each with images/, labels/, classes.txt), or one "
                               f"folder with images/, labels/, classes.txt whose last 10 % are held out")
        if (root / "train").is_dir() and (root / "val").is_dir():
            tr_ds, va_ds = FolderDataset(root / "train"), FolderDataset(root / "val")
            if tr_ds.classes != va_ds.classes:
                raise DatasetError(f"{root}/train and {root}/val list different classes in classes.txt")
            train, val = DatasetSource(tr_ds), DatasetSource(va_ds)
        else:
            ds = FolderDataset(root)
            if len(ds) < 2:
                raise DatasetError(f"{root} has {len(ds)} sample(s); training needs at least 2 (one held out)")
            n_val = max(1, len(ds) // 10)
            train = DatasetSource(ds, range(len(ds) - n_val))
            val = DatasetSource(ds, range(len(ds) - n_val, len(ds)))
            tr_ds = ds
    else:
        tr_split, va_split = {
            "ade20k": ("training", "validation"),
            "cityscapes": ("train", "val"),
            "coco-stuff": ("train2014", "test2014"),
        }[kind]
        if kind == "coco-stuff" and (root / "images" / "train2017").is_dir():
            tr_split, va_split = "train2017", "val2017"
        tr_ds = open_dataset(kind, root, tr_split)
        train, val = DatasetSource(tr_ds), DatasetSource(open_dataset(kind, root, va_split))
    if len(train) == 0:
        raise DatasetError(f"no training samples under {root}")
    if eval_size is not None and isinstance(val, DatasetSource):
        val.indices = val.indices[:eval_size]
    desc = f"{kind} at {root}: {len(train)} training / {len(val)} held-out samples, {tr_ds.num_classes} classes"
    return TrainData(kind, train, val, tr_ds.classes, list(tr_ds.palette), False, desc)


class ShardedIndices:
    """Sample indices of one rank, as ``DistributedSampler`` with a fresh shuffle per epoch.

    Position ``p`` of rank ``r`` is sample ``perm_e[r + world·(p mod m)]`` with ``e = p // m``,
    ``m = ⌈n / world⌉`` and ``perm_e`` the epoch's permutation padded by wrapping around.
    """

    def __init__(self, n: int, rank: int, world: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.rank, self.world, self.seed, self.shuffle = n, rank, world, seed, shuffle
        self.per_rank = math.ceil(n / world)
        self._epoch = -1
        self._perm: np.ndarray | None = None

    def __call__(self, position: int) -> int:
        epoch, offset = divmod(position, self.per_rank)
        if epoch != self._epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
            total = self.per_rank * self.world
            self._perm = np.resize(perm, total)  # wraps around like DistributedSampler's padding
            self._epoch = epoch
        return int(self._perm[self.rank + self.world * offset])


class TrainBatches(torch.utils.data.Dataset):
    """Item ``j`` = the batch of iteration ``start + j`` for this rank: (float32 (B, 3, h, w), int64 (B, h, w))."""

    def __init__(
        self, source: PairSource, augment: TrainAugment, batch_size: int, info: DistInfo, seed: int,
        start: int, iters: int, synthetic: bool,
    ) -> None:
        self.source, self.augment, self.batch_size = source, augment, batch_size
        self.rank, self.world, self.seed = info.rank, info.world_size, seed
        self.start, self.iters, self.synthetic = start, iters, synthetic
        self.indices = None if synthetic else ShardedIndices(len(source), info.rank, info.world_size, seed)

    def __len__(self) -> int:
        return max(self.iters - self.start, 0)

    def sample_index(self, it: int, slot: int) -> int:
        """Index into the source of slot ``slot`` of iteration ``it`` on this rank."""
        if self.synthetic:
            return (it * self.world + self.rank) * self.batch_size + slot
        return self.indices(it * self.batch_size + slot)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        it = self.start + j
        imgs, labels = [], []
        for slot in range(self.batch_size):
            img, lab = self.source.pair(self.sample_index(it, slot))
            position = (it * self.world + self.rank) * self.batch_size + slot
            rng = np.random.default_rng([self.seed, 1, position])
            x, y = self.augment(img, lab, rng)
            imgs.append(torch.from_numpy(x))
            labels.append(torch.from_numpy(y.astype(np.int64)))
        return torch.stack(imgs), torch.stack(labels)


def batch_loader(batches: TrainBatches, workers: int) -> torch.utils.data.DataLoader:
    """Iterate :class:`TrainBatches` in order, optionally with worker processes prefetching."""
    if workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {workers}")
    return torch.utils.data.DataLoader(
        batches, batch_size=None, shuffle=False, num_workers=workers,
        persistent_workers=False, prefetch_factor=2 if workers > 0 else None,
        generator=torch.Generator().manual_seed(batches.seed),  # leaves the global RNG (dropout) alone
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, val: PairSource, num_classes: int, info: DistInfo,
    test_scale: Sequence[int] | None, batch_size: int = 8,
) -> ConfusionMatrix:
    """Whole-image evaluation on the held-out split (each rank a shard; counts summed over ranks).

    Each image is rescaled (keep ratio) to ``test_scale``, normalised, segmented whole; the logits are
    resized bilinearly to the label size and arg-maxed, as the official test pipeline does.

    Returns:
        The summed :class:`ConfusionMatrix` (identical on every rank).
    """
    import torch.nn.functional as F

    from ..runtime.pipeline import prepare

    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes)
    pending: list[tuple[np.ndarray, np.ndarray]] = []

    def flush() -> None:
        x = torch.from_numpy(np.concatenate([p[0] for p in pending])).to(info.device)
        logits = model(x)
        size = pending[0][1].shape
        if tuple(logits.shape[2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        pred = logits.argmax(1).cpu().numpy()
        for k, (_, lab) in enumerate(pending):
            cm.update(pred[k], lab)
        pending.clear()

    for i in range(info.rank, len(val), info.world_size):
        img, lab = val.pair(i)
        x = prepare(img, test_scale)
        if pending and (pending[0][0].shape != x.shape or pending[0][1].shape != lab.shape
                        or len(pending) >= batch_size):
            flush()
        pending.append((x, lab))
    if pending:
        flush()
    if info.distributed:
        counts = torch.from_numpy(np.stack([cm.matrix.ravel()]).astype(np.int64))
        all_reduce_sum(info, counts)
        cm.matrix[...] = counts.numpy().reshape(cm.matrix.shape)
    model.train(was_training)
    return cm
