"""Fixtures for the benchmark tests: a tiny SeMask model saved as a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semask_deploy import SeMaskConfig, build_model
from semask_deploy.checkpoint import save_checkpoint

TINY = SeMaskConfig(
    embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7, sem_window_size=7, num_classes=8,
    sem_num_classes=8, sem_modes=("window", "window", "global", "global"), test_scale=(128, 64), crop_size=(64, 64),
)


@pytest.fixture(scope="session")
def tiny_model():
    torch.manual_seed(0)
    return build_model(TINY, attention_backend="eager").eval()


@pytest.fixture(scope="session")
def tiny_bench_ckpt(tmp_path_factory, tiny_model) -> Path:
    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("bench") / "tiny.pth")
