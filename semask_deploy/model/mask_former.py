"""``MaskFormerSegmentor``: SeMask-Swin → pixel decoder → transformer decoder → semantic inference.

Exactly the official ``SeMaskMaskFormer`` in eval mode, for one image size per batch:

    x (normalised) ─ zero-pad bottom/right to a multiple of 32 ─ backbone (res2..res5)
    ─ pixel decoder (mask_features, multi-scale) ─ decoder (pred_logits N×Q×(K+1), pred_masks N×Q×Hp/4×Wp/4)
    ─ masks bilinear (align_corners=False) to the padded size
    ─ sem_seg[c] = Σ_q softmax(logits_q)[c] · sigmoid(mask_q)   (softmax over K+1, no-object dropped)
    ─ crop to the unpadded size (then, in :func:`postprocess`, bilinear resize to (height, width)).

``model(x)`` returns the cropped scores (N, K, H, W) (= the official ``sem_seg`` when height, width = H, W);
``predict`` returns their argmax without building the K×H×W map.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ATTENTION_BACKENDS
from ..errors import ConfigError
from ..maskformer_config import MaskFormerConfig
from ._inputs import check_image_batch
from .fast import WeightCachesCleared
from .mask_decoders import MultiScaleMaskedTransformerDecoder
from .pixel_decoders import MSDeformAttnPixelDecoder
from .semask import SeMaskSwin
from .swin import padded_size


class _Criterion(nn.Module):
    """Holds the training-only ``empty_weight`` buffer so official state dicts load strictly."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        weight = torch.ones(num_classes + 1)
        weight[-1] = 0.1
        self.register_buffer("empty_weight", weight)


class _SemSegHead(nn.Module):
    """``sem_seg_head``: ``pixel_decoder`` + ``predictor``."""

    def __init__(self, cfg: MaskFormerConfig) -> None:
        super().__init__()
        chans = cfg.stage_channels
        if cfg.pixel_decoder in ("msdeform", "msdeform_fapn"):
            self.pixel_decoder = MSDeformAttnPixelDecoder(
                chans, cfg.conv_dim, cfg.mask_dim, cfg.enc_layers, cfg.enc_heads, cfg.enc_points, cfg.enc_ffn,
                fapn=cfg.pixel_decoder == "msdeform_fapn",
            )
        elif cfg.pixel_decoder == "base":
            from .fapn import BasePixelDecoder

            self.pixel_decoder = BasePixelDecoder(chans, cfg.conv_dim, cfg.mask_dim)
        else:
            from .fapn import PixelFANDecoder

            self.pixel_decoder = PixelFANDecoder(chans, cfg.conv_dim, cfg.mask_dim)
        if cfg.arch == "mask2former":
            self.predictor = MultiScaleMaskedTransformerDecoder(
                cfg.conv_dim, cfg.num_classes, cfg.hidden_dim, cfg.num_queries, cfg.dec_heads, cfg.dec_ffn,
                cfg.dec_layers, cfg.mask_dim,
            )
        else:
            from .maskformer_decoder import MaskFormerPredictor

            self.predictor = MaskFormerPredictor(
                chans[3], cfg.num_classes, cfg.hidden_dim, cfg.num_queries, cfg.dec_heads, cfg.dec_ffn,
                cfg.dec_layers, cfg.mask_dim,
            )


class MaskFormerSegmentor(WeightCachesCleared):
    """SeMask with a mask-classification head. State-dict keys = the official detectron2 ones.

    Args:
        config: the architecture.
        attention_backend: ``eager`` | ``sdpa`` | ``triton`` (env ``SEMASK_ATTN`` overrides).
    """

    def __init__(self, config: MaskFormerConfig, attention_backend: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.backbone = SeMaskSwin(config.backbone_config())
        self.sem_seg_head = _SemSegHead(config)
        self.criterion = _Criterion(config.num_classes)
        self.class_names: tuple[str, ...] | None = None
        self.palette: list[tuple[int, int, int]] | None = None
        self.attention_backend = ""
        self.set_attention_backend(os.environ.get("SEMASK_ATTN") or attention_backend)

    def set_attention_backend(self, name: str) -> "MaskFormerSegmentor":
        """Select ``eager`` | ``sdpa`` | ``triton`` for the backbone, the deformable attention and the decoder."""
        if name not in ATTENTION_BACKENDS:
            raise ConfigError(f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {name!r}")
        if name == "triton":
            from .segmentor import _check_triton_installed

            _check_triton_installed()
        for m in self.modules():  # Swin parts, MSDeformAttn, decoders: every submodule with a backend switch
            if m is not self and hasattr(m, "backend"):
                m.backend = name
        self.attention_backend = name
        self.clear_caches()
        return self

    # ------------------------------------------------------------------------------------------ forward

    def pad(self, x: Tensor) -> Tensor:
        """Zero-pad (N, 3, H, W) bottom/right to a multiple of ``size_divisibility``."""
        d = self.config.size_divisibility
        h, w = x.shape[2], x.shape[3]
        return F.pad(x, (0, padded_size(w, d) - w, 0, padded_size(h, d) - h))

    def forward_heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised (N, 3, H, W) → (pred_logits (N, Q, K+1), pred_masks (N, Q, Hp/4, Wp/4)) on the padded image."""
        self._check_input(x)
        feats, _ = self.backbone(self.pad(x))
        head = self.sem_seg_head
        mask_features, multi_scale = head.pixel_decoder(feats)
        if self.config.arch == "mask2former":
            return head.predictor(multi_scale, mask_features)
        return head.predictor(feats[3], mask_features)

    def forward(self, x: Tensor) -> Tensor:
        """Normalised (N, 3, H, W) → semantic scores (N, K, H, W) (the official ``sem_seg`` at this size)."""
        logits, masks = self.forward_heads(x)
        return semantic_inference(logits, masks, self.pad_size(x))[:, :, : x.shape[2], : x.shape[3]]

    def pad_size(self, x: Tensor) -> tuple[int, int]:
        d = self.config.size_divisibility
        return padded_size(x.shape[2], d), padded_size(x.shape[3], d)  # symbolic while exporting

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Labels (N, H, W) int64 = ``model(x).argmax(1)``, computed a few rows at a time (no K×H×W map)."""
        logits, masks = self.forward_heads(x)
        if self.attention_backend == "eager":
            return semantic_inference(logits, masks, self.pad_size(x))[:, :, : x.shape[2], : x.shape[3]].argmax(1)
        return semantic_argmax(logits, masks, self.pad_size(x), (int(x.shape[2]), int(x.shape[3])))

    def _check_input(self, x: Tensor) -> None:
        check_image_batch(x, next(self.parameters()).dtype, self.attention_backend)


def semantic_inference(pred_logits: Tensor, pred_masks: Tensor, padded_hw: tuple[int, int]) -> Tensor:
    """Official semantic inference at the padded size.

    Args:
        pred_logits: (N, Q, K+1).
        pred_masks: (N, Q, h, w) mask logits at stride 4 of the padded image.
        padded_hw: (Hp, Wp).

    Returns:
        (N, K, Hp, Wp): Σ_q softmax(logits_q)[:K] · sigmoid(bilinear(mask_q)).
    """
    masks = F.interpolate(pred_masks, size=padded_hw, mode="bilinear", align_corners=False)
    cls = F.softmax(pred_logits, dim=-1)[..., :-1]
    return torch.einsum("nqc,nqhw->nchw", cls, masks.sigmoid())


def postprocess(sem_seg: Tensor, image_hw: tuple[int, int], out_hw: tuple[int, int]) -> Tensor:
    """detectron2 ``sem_seg_postprocess``: crop (…, K, Hp, Wp) to ``image_hw``, then bilinear
    (align_corners=False) to ``out_hw``. Accepts (K, H, W) or (N, K, H, W)."""
    squeeze = sem_seg.dim() == 3
    r = sem_seg[None] if squeeze else sem_seg
    r = r[:, :, : image_hw[0], : image_hw[1]]
    if tuple(r.shape[2:]) != tuple(out_hw):
        r = F.interpolate(r, size=tuple(int(v) for v in out_hw), mode="bilinear", align_corners=False)
    return r[0] if squeeze else r


def semantic_argmax(
    pred_logits: Tensor, pred_masks: Tensor, padded_hw: tuple[int, int], image_hw: tuple[int, int], rows: int = 16
) -> Tensor:
    """``semantic_inference(...)[:, :, :H, :W].argmax(1)`` without the K×H×W tensor.

    The padded size is exactly 4× the mask grid, so bilinear upsampling of a band of mask rows (with one row
    of context on each side) gives bit-identical rows to the full upsample; each band is upsampled, passed
    through the sigmoid, multiplied (Q×K GEMM) with the class probabilities and reduced by argmax.

    Args:
        pred_logits: (N, Q, K+1); pred_masks: (N, Q, h, w) with (4h, 4w) = padded_hw.
        padded_hw: (Hp, Wp); image_hw: (H, W) ≤ padded_hw.
        rows: output rows per band (rounded to a multiple of 4).

    Returns:
        (N, H, W) int64.
    """
    n, q, h, w = pred_masks.shape
    hp, wp = padded_hw
    if (hp, wp) != (4 * h, 4 * w):  # not the padded layout: plain path
        return semantic_inference(pred_logits, pred_masks, padded_hw)[:, :, : image_hw[0], : image_hw[1]].argmax(1)
    cls = F.softmax(pred_logits, dim=-1)[..., :-1]  # N, Q, K
    out_h, out_w = image_hw
    labels = torch.empty(n, out_h, out_w, dtype=torch.long, device=pred_masks.device)
    step = max(4, rows // 4 * 4)
    for start in range(0, out_h, step):
        stop = min(start + step, out_h)
        r0 = start // 4  # first source row whose outputs start at `start`
        r1 = (stop + 3) // 4  # one past the last source row
        lo, hi = max(r0 - 1, 0), min(r1 + 1, h)
        band = F.interpolate(pred_masks[:, :, lo:hi], size=(4 * (hi - lo), wp), mode="bilinear", align_corners=False)
        band = band[:, :, start - 4 * lo : stop - 4 * lo, :out_w].sigmoid()  # N, Q, r, W
        scores = torch.einsum("nqc,nqp->npc", cls, band.flatten(2))  # N, r·W, K
        labels[:, start:stop] = scores.argmax(-1).view(n, stop - start, out_w)
    return labels
