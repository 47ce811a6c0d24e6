"""SeMask-FPN model configurations as frozen dataclasses, and the official variants.

``VARIANTS["semask_swin_l_ade20k"]`` etc. Each stage's semantic-attention mode is stated explicitly
(``"window"`` or ``"global"``); :func:`official_semantic_modes` applies the official rule used when a
configuration is read from an official checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

SEMANTIC_MODES = ("window", "global")
ATTENTION_BACKENDS = ("eager", "sdpa", "triton")

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

# Test-time resize (keep ratio, no padding): long edge ≤ scale[0], short edge ≤ scale[1].
TEST_SCALES = {
    "ade20k": (2048, 512),
    "coco-stuff": (2048, 512),
    "cityscapes": (2048, 1024),
}


@dataclass(frozen=True)
class SeMaskConfig:
    """Hyper-parameters of a SeMask-Swin backbone with a Semantic-FPN head.

    Attributes:
        embed_dim: channels of stage 0 (doubles per stage).
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        window_size: Swin window (tokens per side).
        sem_window_size: window of windowed semantic attention.
        num_classes: classes of the segmentation head (``K``).
        sem_num_classes: classes of the backbone's semantic layers (``Kb``; 150 for COCO-Stuff10k).
        sem_modes: per stage, ``"window"`` or ``"global"`` semantic attention.
        mlp_ratio: hidden width of the Swin MLP relative to the stage width.
        head_channels: channels of the FPN head.
        patch_size: patch-embedding stride.
        dataset: class names / palette / test scale family (``ade20k``, ``cityscapes``, ``coco-stuff``,
            or ``custom``).
        test_scale: keep-ratio test resize ``(long, short)``.
        crop_size: training crop ``(H, W)`` (also the sliding-window crop).
        name: a label for reports.
    """

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    sem_window_size: int
    num_classes: int
    sem_num_classes: int
    sem_modes: tuple[str, ...]
    mlp_ratio: float = 4.0
    head_channels: int = 256
    patch_size: int = 4
    dataset: str = "custom"
    test_scale: tuple[int, int] = (2048, 512)
    crop_size: tuple[int, int] = (512, 512)
    name: str = "custom"

    def __post_init__(self) -> None:
        n = len(self.depths)
        if n != 4:
            raise ConfigError(f"SeMask-FPN needs 4 stages, got depths={list(self.depths)}")
        if len(self.num_heads) != n or len(self.sem_modes) != n:
            raise ConfigError("depths, num_heads and sem_modes must all have 4 entries")
        for i, (c, h) in enumerate(zip(self.stage_channels, self.num_heads)):
            if h <= 0 or c % h:
                raise ConfigError(f"stage {i}: {c} channels are not divisible by {h} heads")
        for m in self.sem_modes:
            if m not in SEMANTIC_MODES:
                raise ConfigError(f"semantic mode must be one of {SEMANTIC_MODES}, got {m!r}")
        if min(self.depths) < 1 or self.window_size < 1 or self.sem_window_size < 1:
            raise ConfigError("depths and window sizes must be positive")
        if self.num_classes < 1 or self.sem_num_classes < 1:
            raise ConfigError("class counts must be positive")

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Channels of each stage's output: ``embed_dim * 2**i``."""
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SeMaskConfig":
        """Build from :meth:`to_dict` output (lists accepted for tuples)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown config fields: {sorted(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        try:
            return cls(**kw)
        except TypeError as exc:
            raise ConfigError(f"invalid model config: {exc}") from exc

    @classmethod
    def from_json(cls, path: str | Path) -> "SeMaskConfig":
        """Read a config JSON file (the output of :meth:`to_dict`)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read model config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"model config {path} must be a JSON object")
        return cls.from_dict(data)


def official_semantic_modes(embed_dim: int, sem_num_classes: int) -> tuple[str, ...]:
    """The official rule: embed ∈ {96, 192} and > 19 classes → stages 0–1 windowed, 2–3 global."""
    if embed_dim in (96, 192) and sem_num_classes > 19:
        return ("window", "window", "global", "global")
    return ("window",) * 4


_ARCH = {
    # name: embed, depths, heads, window
    "t": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
    "s": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7),
    "b": (128, (2, 2, 18, 2), (4, 8, 16, 32), 12),
    "l": (192, (2, 2, 18, 2), (6, 12, 24, 48), 12),
}
ARCH_NAMES = {"tiny": "t", "small": "s", "base": "b", "large": "l"}
_DATASETS = {
    # dataset: head classes, backbone classes
    "ade20k": (150, 150),
    "cityscapes": (19, 19),
    "coco-stuff": (171, 150),  # official COCO-Stuff10k configs keep the backbone at 150
}


def official_config(arch: str, dataset: str) -> SeMaskConfig:
    """The official SeMask-FPN config for ``arch`` ∈ t/s/b/l and ``dataset``."""
    embed, depths, heads, window = _ARCH[arch]
    k, kb = _DATASETS[dataset]
    if dataset == "cityscapes":
        test_scale, crop = (2048, 1024), (768, 768)
    elif arch == "l":
        test_scale, crop = (2560, 640), (640, 640)
    else:
        test_scale, crop = (2048, 512), (512, 512)
    return SeMaskConfig(
        embed_dim=embed,
        depths=depths,
        num_heads=heads,
        window_size=window,
        sem_window_size=window,
        num_classes=k,
        sem_num_classes=kb,
        sem_modes=official_semantic_modes(embed, kb),
        dataset=dataset,
        test_scale=test_scale,
        crop_size=crop,
        name=f"semask_swin_{arch}_{dataset.replace('-', '')}",
    )


VARIANTS: dict[str, SeMaskConfig] = {
    f"semask_swin_{a}_{d.replace('-', '')}": official_config(a, d) for a in _ARCH for d in _DATASETS
}
