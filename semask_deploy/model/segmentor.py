"""``SeMaskSegmentor``: backbone + Semantic-FPN head + the official whole-image resize."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ATTENTION_BACKENDS, SeMaskConfig
from ..errors import ConfigError, MissingDependencyError
from . import fast
from .fast import WeightCachesCleared
from ._inputs import check_image_batch
from .fpn_head import SemanticFPNHead
from .semask import SeMaskSwin, SemanticLayer
from .swin import PatchMerging, SwinBlock


class SeMaskSegmentor(WeightCachesCleared):
    """SeMask-FPN. State-dict keys are the official ``backbone.*`` / ``decode_head.*`` names.

    In eval mode ``model(x)`` maps a normalised float image batch (N, 3, H, W) to logits (N, K, H, W) at the
    input resolution (the whole ⌈H/4⌉×⌈W/4⌉ grid resized bilinearly, align_corners=False) and never computes
    the training-only semantic branch. In train mode it returns ``(seg_logits, semantic_logits)`` at stride 4,
    (N, K, ⌈H/4⌉, ⌈W/4⌉) and (N, Kb, ⌈H/4⌉, ⌈W/4⌉), for the loss.

    Args:
        config: the architecture.
        attention_backend: ``"eager"`` (reference math), ``"sdpa"`` or ``"triton"``; the environment variable
            ``SEMASK_ATTN`` overrides it.
    """

    def __init__(self, config: SeMaskConfig, attention_backend: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.backbone = SeMaskSwin(config)
        self.decode_head = SemanticFPNHead(config.stage_channels, config.num_classes, config.head_channels)
        self.class_names: tuple[str, ...] | None = None
        self.palette: list[tuple[int, int, int]] | None = None
        self.attention_backend = ""
        self.set_attention_backend(os.environ.get("SEMASK_ATTN") or attention_backend)

    def set_attention_backend(self, name: str) -> "SeMaskSegmentor":
        """Select ``eager`` | ``sdpa`` | ``triton`` for every window and semantic attention."""
        if name not in ATTENTION_BACKENDS:
            env = os.environ.get("SEMASK_ATTN")
            where = " (the environment variable SEMASK_ATTN)" if env and name == env else ""
            raise ConfigError(f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {name!r}"
                              f"{where}")
        if name == "triton":
            _check_triton_installed()
        for m in self.modules():
            if isinstance(m, (SwinBlock, SemanticLayer, PatchMerging, SeMaskSwin)):
                m.backend = name
        self.decode_head.set_fast_path(name != "eager")
        self.attention_backend = name
        self.clear_caches()
        return self

    def forward_lowres(self, x: Tensor) -> Tensor:
        """Logits at stride 4: (N, 3, H, W) → (N, K, ⌈H/4⌉, ⌈W/4⌉)."""
        self._check_input(x)
        feats, _ = self.backbone(x)
        return self.decode_head(feats)

    def forward_train(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(seg logits (N, K, H₀, W₀), semantic logits (N, Kb, H₀, W₀)) at stride 4."""
        self._check_input(x)
        feats, sems = self.backbone(x)
        return self.decode_head(feats), self.decode_head.semantic_logits(sems)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if self.training:
            return self.forward_train(x)
        logits = self.forward_lowres(x)
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Labels (N, H, W) int64: argmax of the logits at the input resolution.

        On CUDA with the triton backend the resize and argmax are one fused kernel; on the CPU the fast
        backends resize and argmax a few rows at a time (:func:`fast.resize_argmax`). Neither materialises
        the N×K×H×W logits.
        """
        logits = self.forward_lowres(x)
        size = (int(x.shape[2]), int(x.shape[3]))
        if x.is_cuda and self.attention_backend == "triton":
            from ..kernels.upsample_argmax import upsample_argmax

            return upsample_argmax(logits, size)
        if not x.is_cuda and self.attention_backend != "eager" and logits.dtype == torch.float32:
            return fast.resize_argmax(logits, size)
        # one image at a time bounds the K×H×W buffer; slicing (not l[None]) keeps channels-last strides
        return torch.cat(
            [
                F.interpolate(logits[i : i + 1], size=size, mode="bilinear", align_corners=False).argmax(1)
                for i in range(logits.shape[0])
            ]
        )

    def _check_input(self, x: Tensor) -> None:
        check_image_batch(x, next(self.parameters()).dtype, self.attention_backend)


def _check_triton_installed() -> None:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "attention_backend='triton' needs triton: pip install 'semask-deploy[gpu]'"
        ) from exc
