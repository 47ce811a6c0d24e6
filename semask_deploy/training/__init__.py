"""Building blocks of :mod:`semask_deploy.train`: loss, optimiser and schedule, initialisation, data,
distributed helpers, and the run configuration (official variants and the demo model)."""

from __future__ import annotations

from .init import InitReport, init_from_checkpoint, load_swin_imagenet, official_init, set_gamma
from .losses import OhemSampler, semask_loss
from .optim import PolySchedule, build_optimizer, default_warmup, param_groups
from .setup import demo_config, resolve_config

__all__ = [
    "InitReport", "init_from_checkpoint", "load_swin_imagenet", "official_init", "set_gamma",
    "OhemSampler", "semask_loss", "PolySchedule", "build_optimizer", "default_warmup", "param_groups",
    "demo_config", "resolve_config",
]
