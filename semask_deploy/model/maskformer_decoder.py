"""MaskFormer's transformer predictor (official ``TransformerPredictor``, DETR decoder, ``ENC_LAYERS 0``).

- ``src = input_proj(res5)`` (1×1 conv with bias; identity when res5 already has ``hidden_dim`` channels and the
  projection is not enforced), ``pos`` = sine encoding of res5 (normalised, scale 2π, temperature 10000, y
  first); no encoder, so memory = src.
- Queries: ``tgt`` starts at zeros, ``query_pos = query_embed.weight``.
- ``dec_layers`` post-norm DETR layers: self-attention (q = k = tgt + query_pos, v = tgt) → norm1 →
  cross-attention (q = tgt + query_pos, k = memory + pos, v = memory, no mask) → norm2 → FFN (ReLU) → norm3.
  Every layer's output goes through the shared final LayerNorm (``transformer.decoder.norm``) → ``hs``.
- Heads: ``class_embed`` (K+1 logits, last = no-object), ``mask_embed`` (3-layer ReLU MLP) dotted with
  ``mask_features`` per pixel.

Keys (relative to ``sem_seg_head.predictor.``): ``transformer.decoder.layers.{i}.{self_attn,multihead_attn}.
{in_proj_weight,in_proj_bias,out_proj.weight,out_proj.bias}``, ``….linear{1,2}.*``, ``….norm{1,2,3}.*``,
``transformer.decoder.norm.*``, ``query_embed.weight``, ``input_proj.{weight,bias}``, ``class_embed.*``,
``mask_embed.layers.{0,1,2}.*``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _sine_position(x: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """DETR ``PositionEmbeddingSine(num_feats, normalize=True)`` of an N×C×H×W map without padding mask.

    Returns N×(2·num_feats)×H×W (float32): channels [pos_y | pos_x], each alternating sin/cos per frequency.
    """
    n, _, h, w = x.shape
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, dtype=torch.float32, device=x.device)
    xx = torch.arange(1, w + 1, dtype=torch.float32, device=x.device)
    y = y / (y[-1:] + eps) * scale
    xx = xx / (xx[-1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=x.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    py = y[:, None] / dim_t  # H×F
    px = xx[:, None] / dim_t  # W×F
    py = torch.stack((py[:, 0::2].sin(), py[:, 1::2].cos()), dim=2).flatten(1)
    px = torch.stack((px[:, 0::2].sin(), px[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat((py[:, None, :].expand(h, w, num_feats), px[None, :, :].expand(h, w, num_feats)), dim=2)
    return pos.permute(2, 0, 1).unsqueeze(0).expand(n, 2 * num_feats, h, w)


class _Attention(nn.Module):
    """``nn.MultiheadAttention`` math and state-dict layout (packed ``in_proj``, ``out_proj``), batch first,
    through ``F.scaled_dot_product_attention`` (no mask, no dropout)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q N×Lq×C, k and v N×Lk×C → N×Lq×C."""
        n, lq, c = q.shape
        lk = k.shape[1]
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        h, d = self.heads, c // self.heads
        q = F.linear(q, wq, bq).view(n, lq, h, d).transpose(1, 2)
        k = F.linear(k, wk, bk).view(n, lk, h, d).transpose(1, 2)
        v = F.linear(v, wv, bv).view(n, lk, h, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
        return self.out_proj(out.transpose(1, 2).reshape(n, lq, c))


class _DecoderLayer(nn.Module):
    """DETR post-norm decoder layer: self-attention → cross-attention → FFN (ReLU)."""

    def __init__(self, dim: int, heads: int, dim_feedforward: int) -> None:
        super().__init__()
        self.self_attn = _Attention(dim, heads)
        self.multihead_attn = _Attention(dim, heads)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        """tgt N×Q×C, memory and pos N×HW×C, query_pos 1×Q×C → N×Q×C."""
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(q, q, tgt))
        tgt = self.norm2(tgt + self.multihead_attn(tgt + query_pos, memory + pos, memory))
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class _Decoder(nn.Module):
    def __init__(self, dim: int, heads: int, dim_feedforward: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_DecoderLayer(dim, heads, dim_feedforward) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)


class _Transformer(nn.Module):
    """Holds the decoder under the official ``transformer.decoder.`` key prefix (no encoder: ENC_LAYERS 0)."""

    def __init__(self, dim: int, heads: int, dim_feedforward: int, num_layers: int) -> None:
        super().__init__()
        self.decoder = _Decoder(dim, heads, dim_feedforward, num_layers)


class _MLP(nn.Module):
    """``layers.{0,1,2}`` Linear with ReLU between (not after the last)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 3) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, outs))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskFormerPredictor(nn.Module):
    """MaskFormer transformer predictor: queries decoded against backbone res5, mask logits on ``mask_features``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 6,
        mask_dim: int = 256,
        enforce_input_proj: bool = False,
    ) -> None:
        """
        Args:
            in_channels: channels of backbone res5 (Swin-L: 1536).
            num_classes: K (the class head has K+1 outputs).
            hidden_dim, num_queries, nheads, dim_feedforward, dec_layers: MASK_FORMER.* of the config.
            mask_dim: SEM_SEG_HEAD.MASK_DIM (channels of ``mask_features``).
            enforce_input_proj: MASK_FORMER.ENFORCE_INPUT_PROJ (a conv even when in_channels == hidden_dim).
        """
        super().__init__()
        if hidden_dim % nheads or hidden_dim % 2:
            raise ValueError(f"hidden_dim {hidden_dim} must be even and divisible by nheads {nheads}")
        self.hidden_dim = hidden_dim
        self.transformer = _Transformer(hidden_dim, nheads, dim_feedforward, dec_layers)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        if in_channels != hidden_dim or enforce_input_proj:
            self.input_proj: nn.Module = nn.Conv2d(in_channels, hidden_dim, 1)
        else:
            self.input_proj = nn.Identity()
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = _MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def decode(self, res5: Tensor) -> Tensor:
        """res5 N×Cin×h×w → hs L×N×Q×C (every layer's output after the shared final LayerNorm)."""
        n = res5.shape[0]
        pos = _sine_position(res5, self.hidden_dim // 2).to(res5.dtype).flatten(2).transpose(1, 2)  # N×hw×C
        memory = self.input_proj(res5).flatten(2).transpose(1, 2)  # N×hw×C
        query_pos = self.query_embed.weight.unsqueeze(0)  # 1×Q×C
        tgt = torch.zeros(n, query_pos.shape[1], self.hidden_dim, dtype=memory.dtype, device=memory.device)
        dec = self.transformer.decoder
        hs = []
        for layer in dec.layers:
            tgt = layer(tgt, memory, pos, query_pos)
            hs.append(dec.norm(tgt))
        return torch.stack(hs)

    def heads(self, hs: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """hs …×N×Q×C, mask_features N×D×H×W → (logits …×N×Q×(K+1), masks …×N×Q×H×W)."""
        masks = torch.einsum("...nqc,nchw->...nqhw", self.mask_embed(hs), mask_features)
        return self.class_embed(hs), masks

    def forward(self, res5: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """res5 N×Cin×h×w, mask_features N×mask_dim×H×W → (pred_logits N×Q×(K+1), pred_masks N×Q×H×W)."""
        return self.heads(self.decode(res5)[-1], mask_features)

    def forward_all(self, res5: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Every layer: (hs L×N×Q×C, logits L×N×Q×(K+1), masks L×N×Q×H×W)."""
        hs = self.decode(res5)
        logits, masks = self.heads(hs, mask_features)
        return hs, logits, masks
