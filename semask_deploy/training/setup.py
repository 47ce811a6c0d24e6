"""Choosing the model configuration of a training run: official variants, the demo model, JSON configs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..config import ARCH_NAMES, SeMaskConfig, official_config, official_semantic_modes
from ..errors import ConfigError

VARIANT_CHOICES = ("tiny", "small", "base", "large", "demo")
OFFICIAL_DATASETS = ("ade20k", "cityscapes", "coco-stuff")

# The built-in demo model (semask_deploy/assets/semask_demo_synthetic.pth).
DEMO_NUM_CLASSES = 10
DEMO_CROP = (256, 256)
DEMO_LR = 1e-3
DEMO_ITERS = 1600
DEMO_BATCH = 4
OFFICIAL_LR = 6e-5  # models that are not an official SeMask architecture (a custom .json)
OFFICIAL_ITERS = 80_000
OFFICIAL_DROP_PATH = 0.3  # drop_path_rate of every official SeMask-Swin config (stochastic depth)
ADE_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # the ADE20K / COCO-Stuff configs' Resize ratio_range LIST


@dataclass(frozen=True)
class Recipe:
    """What an official SeMask-FPN config sets besides the model (SeMask-FPN/configs/semask_swin/*).

    ``batch`` is the config's ``samples_per_gpu`` (the default crops per process); ``ratio_range`` a tuple of
    two is mmseg's (min, max) range, a longer one its list of ratios to choose from.
    """

    lr: float
    weight_decay: float
    warmup_ratio: float
    batch: int
    ratio_range: tuple[float, ...]
    cat_max_ratio: float


GENERIC_RECIPE = Recipe(OFFICIAL_LR, 0.01, 1e-6, 8, (0.5, 2.0), 0.75)  # not an official architecture
DEMO_RECIPE = Recipe(DEMO_LR, 0.01, 1e-6, DEMO_BATCH, (0.5, 2.0), 0.75)


def official_recipe(arch: str | None, data_kind: str) -> Recipe:
    """The official config's optimiser, schedule, batch and augmentation for ``arch`` (tiny..large, or None for
    an architecture no official config has) on ``data_kind`` (other data: the ADE20K config's)."""
    if arch is None:
        return GENERIC_RECIPE
    ds = data_kind if data_kind in OFFICIAL_DATASETS else "ade20k"
    if ds == "cityscapes":
        return Recipe(1e-3, 0.05, 1e-6 if arch == "base" else 1e-5, 2 if arch == "large" else 4, (0.5, 2.0), 0.75)
    if ds == "coco-stuff":
        return Recipe(1e-4, 1e-4, 1e-6, 4 if arch in ("tiny", "small") else 2, ADE_RATIOS, 1.0)
    return Recipe(1e-4, 1e-4, 1e-6, 4 if arch == "large" else 8, ADE_RATIOS, 0.75 if arch == "tiny" else 1.0)


def recipe_arch(cfg: SeMaskConfig) -> str | None:
    """tiny / small / base / large when ``cfg`` has that official backbone, else None."""
    for name, key in ARCH_NAMES.items():
        ref = official_config(key, "ade20k")
        if (cfg.embed_dim, tuple(cfg.depths), tuple(cfg.num_heads), cfg.window_size) == (
                ref.embed_dim, tuple(ref.depths), tuple(ref.num_heads), ref.window_size):
            return name
    return None


def demo_config(num_classes: int = DEMO_NUM_CLASSES, size: tuple[int, int] = DEMO_CROP) -> SeMaskConfig:
    """The small SeMask of the built-in demo: embed 32, depths (2, 2, 2, 2), heads (2, 4, 8, 16), window 7,
    semantic modes stated explicitly (windowed, windowed, global, global), a 64-channel FPN head.

    Args:
        num_classes: classes of the head and of the semantic layers.
        size: training crop ``(H, W)``; also the (long, short) test scale.
    """
    return SeMaskConfig(
        embed_dim=32,
        depths=(2, 2, 2, 2),
        num_heads=(2, 4, 8, 16),
        window_size=7,
        sem_window_size=7,
        num_classes=num_classes,
        sem_num_classes=num_classes,
        sem_modes=("window", "window", "global", "global"),
        mlp_ratio=4.0,
        head_channels=64,
        dataset="custom",
        test_scale=(max(size), min(size)),
        crop_size=tuple(size),
        name="semask_demo_synthetic",
    )


def load_variant(variant: str) -> SeMaskConfig | None:
    """The config of a ``--variant`` that does not depend on the data (a JSON file), else None.

    Raises:
        ConfigError: unknown variant name or unreadable JSON.
    """
    if variant in VARIANT_CHOICES:
        return None
    if variant.endswith(".json") or Path(variant).is_file():
        if not Path(variant).is_file():
            raise ConfigError(f"--variant {variant}: config file not found")
        return SeMaskConfig.from_json(variant)
    raise ConfigError(
        f"--variant must be one of {', '.join(VARIANT_CHOICES)} or a config .json file, got {variant!r}"
    )


def default_crop(variant: str, base: SeMaskConfig | None, data_kind: str) -> tuple[int, int]:
    """The training crop when ``--crop`` is not given: the config's, else the official one per data set."""
    if base is not None:
        return tuple(base.crop_size)
    if variant == "demo":
        return DEMO_CROP
    ds = data_kind if data_kind in OFFICIAL_DATASETS else "ade20k"
    return tuple(official_config(ARCH_NAMES[variant], ds).crop_size)


def resolve_config(
    variant: str, base: SeMaskConfig | None, data_kind: str, classes: int, crop: tuple[int, int], synthetic: bool
) -> SeMaskConfig:
    """The model config of a run.

    ``tiny``..``large`` on ADE20K / Cityscapes / COCO-Stuff are the official configs (COCO-Stuff keeps its
    150-class backbone); on other data the official architecture with the data's classes and the official
    semantic-mode rule. ``demo`` is :func:`demo_config`. A JSON config is used as written and must have the
    data's class count. For synthetic data the test scale is the scene size (= the crop).

    Raises:
        ConfigError: class counts that do not match the data.
    """
    if variant == "demo":
        cfg = demo_config(classes, crop)
    elif base is not None:
        cfg = base
    else:
        arch = ARCH_NAMES[variant]
        if data_kind in OFFICIAL_DATASETS:
            cfg = official_config(arch, data_kind)
        else:
            ref = official_config(arch, "ade20k")
            cfg = replace(
                ref, num_classes=classes, sem_num_classes=classes,
                sem_modes=official_semantic_modes(ref.embed_dim, classes), dataset="custom",
                name=f"semask_swin_{arch}_{data_kind}",
            )
    if cfg.num_classes != classes:
        raise ConfigError(
            f"the model config has {cfg.num_classes} classes but the {data_kind} data has {classes}; "
            "use a config with the data's class count"
        )
    cfg = replace(cfg, crop_size=tuple(crop))
    if synthetic:
        cfg = replace(cfg, test_scale=(max(crop), min(crop)))
    return cfg
