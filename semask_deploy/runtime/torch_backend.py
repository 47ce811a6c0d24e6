"""PyTorch backend for :class:`~semask_deploy.runtime.Segmenter`: a ``.pth`` / ``.safetensors`` checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import load_model
from ..model import SeMaskSegmentor


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
        device: str = "cpu", attention_backend: str = "sdpa", precision: str = "fp32",
    ) -> None:
        self.model = model if model is not None else load_model(path, attention_backend=attention_backend, device=device)
        self.device = next(self.model.parameters()).device
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        # CPU bf16 = autocast (fp32 weights, bf16 GEMMs/convs, fp32 softmax/LayerNorm), native bf16 CPUs only
        self.autocast = self.device.type == "cpu" and self.dtype == torch.bfloat16
        if self.autocast:
            from .cpu_info import require_native_bf16

            require_native_bf16("torch bf16 autocast")
            self.dtype = torch.float32
        elif self.dtype != torch.float32:
            self.model = self.model.to(self.dtype)
        cfg = self.model.config
        self.num_classes = cfg.num_classes
        self.class_names = self.model.class_names
        self.palette = self.model.palette
        self.test_scale = cfg.test_scale
        self.crop_size = cfg.crop_size

    @torch.inference_mode()
    def logits(self, x: np.ndarray) -> torch.Tensor:
        """Normalised float32 (N, 3, H, W) → float32 logits (N, K, H, W) on the CPU."""
        t = torch.from_numpy(x).to(self.device, self.dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            return self.model(t).float().cpu()

    @torch.inference_mode()
    def labels(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 (N, 3, H, W) → int32 labels (N, H, W)."""
        t = torch.from_numpy(x).to(self.device, self.dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            return self.model.predict(t).cpu().numpy().astype(np.int32)

    def describe(self) -> dict[str, Any]:
        return {"backend": "torch", "device": str(self.device), "attention": self.model.attention_backend,
                "autocast": "bf16" if self.autocast else None}
