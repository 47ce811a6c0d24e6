"""PyTorch backend for :class:`~semask_deploy.runtime.Segmenter`: a ``.pth`` / ``.safetensors`` checkpoint.

Precisions: ``fp32``; ``bf16`` = ``torch.autocast`` (matmuls and convs in bf16) with every LayerNorm and the
semantic attention (q/k projections, the unscaled q·kᵀ and its softmax) kept fp32 (DESIGN §2, "Numerics"),
offered on CPUs with native bf16 only (avx512_bf16 or AMX; :mod:`.cpu_info`) and on CUDA GPUs with bf16;
``fp16`` casts the whole model (GPU use).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import load_model
from ..errors import ConfigError
from ..model import SeMaskSegmentor

TORCH_PRECISIONS = ("fp32", "bf16", "fp16")


def check_bf16(device: torch.device | str) -> None:
    """Raise :class:`ConfigError` unless ``device`` computes bf16 natively (no silent emulation)."""
    from .cpu_info import cpu_model, native_bf16

    if torch.device(device).type == "cuda":
        if not torch.cuda.is_bf16_supported(including_emulation=False):
            raise ConfigError("this GPU has no native bf16: use precision fp32 or fp16")
        return
    if not native_bf16():
        raise ConfigError(f"this CPU ({cpu_model()}) has no native bf16 (neither avx512_bf16 nor AMX in "
                          "/proc/cpuinfo); PyTorch would emulate it, slower than fp32: use precision fp32, or "
                          "an int8 ONNX (semask-export --precision int8)")


def _layernorm_fp32(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    if torch.is_autocast_enabled(args[0].device.type) and args[0].dtype != torch.float32:
        return (args[0].float(),) + args[1:]
    return None


def bf16_autocast(model: SeMaskSegmentor) -> contextlib.AbstractContextManager:
    """``torch.autocast`` bf16 for ``model`` with LayerNorm inputs cast to fp32 (hooks installed once).

    The semantic attention keeps itself in fp32 under autocast (``SemanticLayer``). Use as
    ``with bf16_autocast(model): logits = model(x)``; outputs may be bf16.
    """
    if not getattr(model, "_semask_ln_fp32_hooks", False):
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.register_forward_pre_hook(_layernorm_fp32)
        model._semask_ln_fp32_hooks = True
    device = next(model.parameters()).device.type
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


class TorchBackend:
    """Runs a :class:`SeMaskSegmentor` on numpy batches.

    Attributes:
        model: the loaded model (eval mode).
        has_logits: always True.
    """

    kind = "torch"
    has_logits = True

    def __init__(
        self, path: str | Path | None = None, *, model: SeMaskSegmentor | None = None,
        device: str = "cpu", attention_backend: str | None = None, precision: str = "fp32",
    ) -> None:
        self.model = model if model is not None else load_model(path, attention_backend=attention_backend, device=device)
        self.device = next(self.model.parameters()).device
        if precision not in TORCH_PRECISIONS:
            raise ConfigError(f"torch precision must be one of {', '.join(TORCH_PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32  # bf16: autocast, fp32 weights
        if precision == "bf16":
            check_bf16(self.device)
        if self.dtype != torch.float32:
            self.model = self.model.to(self.dtype)
        cfg = self.model.config
        self.num_classes = cfg.num_classes
        self.class_names = self.model.class_names
        self.palette = self.model.palette
        self.test_scale = cfg.test_scale
        self.crop_size = cfg.crop_size
        self.resize_rule = getattr(cfg, "resize_rule", None)  # detectron2 models: ResizeShortestEdge

    def _context(self) -> contextlib.AbstractContextManager:
        return bf16_autocast(self.model) if self.precision == "bf16" else contextlib.nullcontext()

    @torch.inference_mode()
    def logits(self, x: np.ndarray) -> torch.Tensor:
        """Normalised float32 (N, 3, H, W) → float32 logits (N, K, H, W) on the CPU."""
        t = torch.from_numpy(x).to(self.device, self.dtype)
        with self._context():
            return self.model(t).float().cpu()

    @torch.inference_mode()
    def labels(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 (N, 3, H, W) → int32 labels (N, H, W)."""
        t = torch.from_numpy(x).to(self.device, self.dtype)
        with self._context():
            return self.model.predict(t).cpu().numpy().astype(np.int32)

    def describe(self) -> dict[str, Any]:
        return {"backend": "torch", "device": str(self.device), "attention": self.model.attention_backend,
                "precision": self.precision + (" (autocast; LayerNorm, semantic attention fp32)"
                                               if self.precision == "bf16" else "")}
