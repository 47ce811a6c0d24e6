"""AdamW with the official no-decay groups, and the poly schedule with linear warm-up (mmcv semantics)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

# the official paramwise_cfg custom_keys (decay_mult 0): mmcv gives no weight decay to every parameter whose name
# CONTAINS one of them
NO_DECAY_KEYS = ("absolute_pos_embed", "relative_position_bias_table", "norm")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed parameters, and those that get no weight decay — as the official configs' mmcv
    ``paramwise_cfg=dict(custom_keys={'absolute_pos_embed', 'relative_position_bias_table', 'norm': decay_mult
    0})``, which matches substrings of the official parameter names (ours are the same).

    No decay: every backbone LayerNorm (``norm1``, ``norm2``, ``patch_embed.norm``, ``downsample.norm``, the
    semantic layers' ``norm1``, the outputs' ``norm0..3``) and the relative position bias tables. Everything
    else decays: Linear/Conv weights and biases, the semantic attention ``gamma``s and the decode head's
    BatchNorm (``bn``), whose names contain none of the keys.

    Returns:
        ``[{"params", "weight_decay", "names"}, ...]`` (``names`` is informational; pop it before
        passing the groups to an optimizer if it complains).
    """
    decay_p, decay_n, free_p, free_n = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if any(key in name for key in NO_DECAY_KEYS):
            free_p.append(p)
            free_n.append(name)
        else:
            decay_p.append(p)
            decay_n.append(name)
    return [
        {"params": decay_p, "weight_decay": weight_decay, "names": decay_n},
        {"params": free_p, "weight_decay": 0.0, "names": free_n},
    ]


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`."""
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, weight_decay)]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)


@dataclass
class PolySchedule:
    """mmcv ``PolyLrUpdaterHook`` with linear warm-up, by iteration.

    ``regular(i) = (base − min_lr)·(1 − i/max_iters)^power + min_lr``; during warm-up (``i < warmup``)
    ``lr(i) = regular(i) · (1 − (1 − i/warmup)·(1 − warmup_ratio))``. ``i`` is the 0-based index of the
    iteration about to run (step 0 trains at ``base·warmup_ratio``).

    Attributes:
        base_lr, max_iters, power, min_lr, warmup, warmup_ratio.
    """

    base_lr: float
    max_iters: int
    power: float = 1.0
    min_lr: float = 0.0
    warmup: int = 1500
    warmup_ratio: float = 1e-6

    def lr(self, i: int) -> float:
        """Learning rate of iteration ``i``."""
        frac = min(max(i, 0), self.max_iters) / max(self.max_iters, 1)
        regular = (self.base_lr - self.min_lr) * (1.0 - frac) ** self.power + self.min_lr
        if i < self.warmup:
            k = (1.0 - i / self.warmup) * (1.0 - self.warmup_ratio)
            return regular * (1.0 - k)
        return regular

    def apply(self, optimizer: torch.optim.Optimizer, i: int) -> float:
        """Set every group's lr for iteration ``i``; returns it."""
        lr = self.lr(i)
        for g in optimizer.param_groups:
            g["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def default_warmup(iters: int) -> int:
    """Official 1500 warm-up iterations, scaled down for short runs: ``min(1500, iters // 10)``."""
    return min(1500, iters // 10)
