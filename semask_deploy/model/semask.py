"""SeMask semantic attention and the SeMask-Swin backbone.

The semantic layer of a stage (official ``SWSeMaskBlock`` = windowed, ``SeMaskBlock`` = global):

    x_n = LN(x)
    q = x_n·Wq + bq,  k = x_n·Wk + bk      (C → K classes)
    v = x_n·Wv + bv                          (C → C)
    A = softmax(q·kᵀ)                        no scaling, no bias, no mask
    x' = γ · ((A·v)·Wr + br) + x_n           the residual is the NORMALISED input

Windowed attention uses ``sem_window``×``sem_window`` windows of the zero-padded normalised map (no shift,
no mask: padded tokens, whose k and v equal the biases, take part as keys). Global attention runs over all
tokens of the stage. The stage's semantic map is q.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import SeMaskConfig
from . import fast
from ._tracing import is_tracing
from .swin import (
    PatchEmbed, PatchMerging, SwinBlock, pad_with_vector, padded_size, window_gather_index, window_partition,
    window_reverse,
)


def _unscaled_attention_fp32(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q·kᵀ)·v with the unscaled scores and the softmax in fp32 (fp64 stays fp64), as DESIGN §2 asks of
    every reduced-precision path: in fp16, q·kᵀ over ~150 classes can exceed 65504 (inf, then NaN).
    A no-op cast for fp32 inputs."""
    acc = torch.promote_types(q.dtype, torch.float32)
    return (q.to(acc) @ k.to(acc).transpose(-2, -1)).softmax(dim=-1).to(v.dtype) @ v


class SemanticAttention(nn.Module):
    """Single-head, unscaled class attention. Keys: ``gamma``, ``mlp_cls_q/k``, ``mlp_v``, ``mlp_res``."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))  # official init: the branch starts switched off
        self.mlp_cls_q = nn.Linear(dim, num_classes)
        self.mlp_cls_k = nn.Linear(dim, num_classes)
        self.mlp_v = nn.Linear(dim, dim)
        self.mlp_res = nn.Linear(dim, dim)


class SemanticLayer(nn.Module):
    """LayerNorm + one :class:`SemanticAttention`. Keys: ``norm1``, ``class_injection.0.*``."""

    def __init__(self, dim: int, num_classes: int, mode: str, window: int) -> None:
        super().__init__()
        self.mode = mode
        self.window = window
        self.norm1 = nn.LayerNorm(dim)
        self.class_injection = nn.ModuleList([SemanticAttention(dim, num_classes)])
        self.backend = "eager"
        self._index_cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def forward(self, x: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
        """x (B, H·W, C) → (x' (B, H·W, C), semantic map q (B, H·W, K))."""
        xn = self.norm1(x)
        sa = self.class_injection[0]
        if torch.is_autocast_enabled(xn.device.type):  # reduced precision: the class scores stay fp32
            with torch.autocast(xn.device.type, enabled=False):
                out, q = (self._eager if self.backend == "eager" else self._fused)(xn.float(), h, w)
            return sa.gamma * sa.mlp_res(out) + xn, q
        if self.backend == "eager":
            out, q = self._eager(xn, h, w)
            return sa.gamma * sa.mlp_res(out) + xn, q
        out, q = self._fused(xn, h, w)
        return torch.addcmul(xn, sa.gamma, fast.linear(sa.mlp_res, out)), q

    def _eager(self, xn: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
        """Reference math, written like the official code (pad → partition → attend → reverse → crop)."""
        sa = self.class_injection[0]
        b, n, c = xn.shape
        if self.mode == "global":
            q, k, v = sa.mlp_cls_q(xn), sa.mlp_cls_k(xn), sa.mlp_v(xn)
            return _unscaled_attention_fp32(q, k, v), q
        win = self.window
        hp, wp = padded_size(h, win), padded_size(w, win)
        x = F.pad(xn.view(b, h, w, c), (0, 0, 0, wp - w, 0, hp - h))
        windows = window_partition(x, win)
        q, k, v = sa.mlp_cls_q(windows), sa.mlp_cls_k(windows), sa.mlp_v(windows)
        out = _unscaled_attention_fp32(q, k, v)
        out = window_reverse(out, win, hp, wp)[:, :h, :w].reshape(b, n, c)
        q = window_reverse(q, win, hp, wp)[:, :h, :w].reshape(b, n, -1)
        return out, q

    def _fused(self, xn: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
        """Projections on the unpadded tokens; padded keys/values carry the biases; fused attention."""
        sa = self.class_injection[0]
        b, n, c = xn.shape
        q, k, v = fast.fused_linear([sa.mlp_cls_q, sa.mlp_cls_k, sa.mlp_v], xn)
        if self.backend == "triton":
            from ..kernels.semantic_attention import semantic_attention_global, semantic_attention_window

            if self.mode == "global":
                return semantic_attention_global(q, k, v), q
            kk = q.shape[-1]
            out = semantic_attention_window(
                q.view(b, h, w, kk), k.view(b, h, w, kk), v.view(b, h, w, c),
                self.window, sa.mlp_cls_k.bias, sa.mlp_v.bias,
            )
            return out.reshape(b, n, c), q
        if self.mode == "global":  # O(N) memory: N reaches ~32k tokens at 2048×1024
            return fast.unscaled_sdpa(q, k, v), q  # 4-D when traced: the ONNX exporter needs it
        win = self.window
        if not is_tracing():  # one gather per tensor instead of pad → partition (and back)
            key = (h, w, xn.device)
            entry = self._index_cache.get(key)  # one lookup: another thread may clear the cache in between
            if entry is None:
                gather, inverse = window_gather_index(h, w, win, 0, xn.device)
                padded = (gather == h * w).nonzero().squeeze(1)
                entry = (gather.clamp(max=h * w - 1), padded, inverse)
                self._index_cache.clear()
                self._index_cache[key] = entry
            gather, padded, inverse = entry

            def windows(t: Tensor, pad_row: Tensor | None) -> Tensor:
                out = t.index_select(1, gather)
                if padded.numel():  # padded slots: a zero token, projected = the layer's bias (or 0 for q)
                    row = t.new_zeros(t.shape[-1]) if pad_row is None else pad_row.to(t.dtype)
                    out.index_copy_(1, padded, row.expand(b, padded.numel(), -1))
                return out.view(-1, win * win, t.shape[-1])

            out = fast.unscaled_attention(windows(q, None), windows(k, sa.mlp_cls_k.bias), windows(v, sa.mlp_v.bias))
            return out.view(b, -1, c).index_select(1, inverse), q
        hp, wp = padded_size(h, win), padded_size(w, win)
        q_w = window_partition(pad_with_vector(q.view(b, h, w, -1), hp, wp, None), win)
        k_w = window_partition(pad_with_vector(k.view(b, h, w, -1), hp, wp, sa.mlp_cls_k.bias), win)
        v_w = window_partition(pad_with_vector(v.view(b, h, w, c), hp, wp, sa.mlp_v.bias), win)
        out = fast.unscaled_attention(q_w, k_w, v_w)
        out = window_reverse(out, win, hp, wp)[:, :h, :w].reshape(b, n, c)
        return out, q


class SeMaskStage(nn.Module):
    """Swin blocks → semantic layer → (patch merging). Keys: ``blocks.*``, ``semantic_layer.*``,
    ``downsample.*``."""

    def __init__(self, cfg: SeMaskConfig, index: int) -> None:
        super().__init__()
        dim = cfg.stage_channels[index]
        win = cfg.window_size
        self.blocks = nn.ModuleList(
            SwinBlock(dim, cfg.num_heads[index], win, 0 if j % 2 == 0 else win // 2, cfg.mlp_ratio)
            for j in range(cfg.depths[index])
        )
        self.semantic_layer = SemanticLayer(dim, cfg.sem_num_classes, cfg.sem_modes[index], cfg.sem_window_size)
        self.downsample = PatchMerging(dim) if index < len(cfg.depths) - 1 else None

    def forward(self, x: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """x (B, H·W, C) → (stage output x', semantic map (B, H·W, K), merged tokens or None)."""
        for blk in self.blocks:
            x = blk(x, h, w)
        x, sem = self.semantic_layer(x, h, w)
        down = self.downsample(x, h, w) if self.downsample is not None else None
        return x, sem, down


class SeMaskSwin(nn.Module):
    """The SeMask-Swin backbone: patch embedding, four stages, an output LayerNorm per stage.

    Keys match the official ``backbone.*`` names: ``patch_embed``, ``layers.{i}``, ``norm{i}``.
    """

    def __init__(self, cfg: SeMaskConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, 3, cfg.embed_dim)
        self.layers = nn.ModuleList(SeMaskStage(cfg, i) for i in range(len(cfg.depths)))
        for i, c in enumerate(cfg.stage_channels):
            self.add_module(f"norm{i}", nn.LayerNorm(c))
        self.backend = "eager"

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """x (B, 3, H, W) → features [(B, Cᵢ, Hᵢ, Wᵢ)] and semantic maps [(B, Kb, Hᵢ, Wᵢ)], i = 0..3.

        H₀ = ⌈H/4⌉, Hᵢ₊₁ = ⌈Hᵢ/2⌉ (same for W).
        """
        tokens, h, w = self.patch_embed(x)
        feats, sems = [], []
        for i, stage in enumerate(self.layers):
            out, sem, tokens = stage(tokens, h, w)
            b, _, c = out.shape
            out = getattr(self, f"norm{i}")(out)
            feat = out.view(b, h, w, c).permute(0, 3, 1, 2)
            # the fast paths keep the channels-last view: the head's convolutions want that layout anyway
            feats.append(feat.contiguous() if self.backend == "eager" or is_tracing() else feat)
            sems.append(sem.view(b, h, w, -1).permute(0, 3, 1, 2))
            h, w = (h + 1) // 2, (w + 1) // 2
        return feats, sems
