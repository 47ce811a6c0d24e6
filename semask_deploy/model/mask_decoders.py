"""Mask2Former's transformer decoder (``MultiScaleMaskedTransformerDecoder``), inference only.

    level l of the pixel decoder's outputs (res5, res4, res3): src_l = proj_l(x_l) + level_embed[l]
        (into the content: keys and values), pos_l = sine encoding (C/2 per axis)
    output = query_feat, query_pos = query_embed
    heads(output) → class logits, masks, attention mask for level 0
    for i in 0..L−1 (level i % 3):
        blocked rows (every key masked) are reset to attend everywhere
        output = LN(output + CrossAttn(q = output + query_pos, k = src + pos, v = src, mask))
        output = LN(output + SelfAttn(q = k = output + query_pos, v = output))
        output = LN(output + W2·relu(W1·output))
        heads(output) → logits, masks, attention mask for the NEXT level
    heads(o): d = decoder_norm(o); class = class_embed(d) (K+1); masks = MLP3(d) · mask_features (stride 4);
        mask for level l: bilinear(masks → H_l×W_l, align_corners=False), blocked where sigmoid < 0.5.

Backends: ``eager`` runs ``nn.MultiheadAttention`` as the official code; ``sdpa`` (and ``triton``) project
with the same packed weights and call ``F.scaled_dot_product_attention`` with a boolean mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .position_encoding import sine_position_encoding


class MLP(nn.Module):
    """Linear layers with ReLU between them. Keys ``layers.{i}``."""

    def __init__(self, dim: int, hidden: int, out: int, num_layers: int) -> None:
        super().__init__()
        dims = [dim] + [hidden] * (num_layers - 1)
        outs = [hidden] * (num_layers - 1) + [out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, outs))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


def attention(mha: nn.MultiheadAttention, q: Tensor, k: Tensor, v: Tensor, blocked: Tensor | None, backend: str) -> Tensor:
    """``mha(q, k, v, attn_mask=blocked)[0]`` in the sequence-first layout.

    Args:
        mha: the packed ``nn.MultiheadAttention`` (its weights are used by every backend).
        q: (Lq, N, C); k, v: (Lk, N, C).
        blocked: None or bool (N, Lq, Lk), True = may not attend (the same for every head).
        backend: ``eager`` (the module itself) or ``sdpa``/``triton`` (``F.scaled_dot_product_attention``).

    Returns:
        (Lq, N, C).
    """
    heads = mha.num_heads
    if backend == "eager":
        mask = None if blocked is None else blocked.repeat_interleave(heads, dim=0)
        return mha(q, k, v, attn_mask=mask, need_weights=False)[0]
    c = q.shape[-1]
    w, b = mha.in_proj_weight, mha.in_proj_bias
    qp = F.linear(q, w[:c], b[:c])
    kp = F.linear(k, w[c : 2 * c], b[c : 2 * c])
    vp = F.linear(v, w[2 * c :], b[2 * c :])

    def split(t: Tensor) -> Tensor:  # (L, N, C) → (N, heads, L, d)
        return t.reshape(t.shape[0], t.shape[1], heads, c // heads).permute(1, 2, 0, 3)

    mask = None if blocked is None else (~blocked).unsqueeze(1)
    out = F.scaled_dot_product_attention(split(qp), split(kp), split(vp), attn_mask=mask)
    out = out.permute(2, 0, 1, 3).reshape(q.shape[0], q.shape[1], c)
    return F.linear(out, mha.out_proj.weight, mha.out_proj.bias)


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention. Keys ``self_attn.*``, ``norm``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, query_pos: Tensor, backend: str) -> Tensor:
        q = x + query_pos
        return self.norm(x + attention(self.self_attn, q, q, x, None, backend))


class CrossAttentionLayer(nn.Module):
    """Post-norm masked cross-attention. Keys ``multihead_attn.*``, ``norm``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, memory: Tensor, blocked: Tensor, pos: Tensor, query_pos: Tensor, backend: str) -> Tensor:
        out = attention(self.multihead_attn, x + query_pos, memory + pos, memory, blocked, backend)
        return self.norm(x + out)


class FFNLayer(nn.Module):
    """Post-norm FFN with ReLU. Keys ``linear1``, ``linear2``, ``norm``."""

    def __init__(self, dim: int, ffn: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """The Mask2Former decoder; keys as the official ``sem_seg_head.predictor.*``.

    Args:
        in_channels: channels of the pixel decoder's multi-scale features (identity projection when equal
            to ``hidden_dim``, as in every official config).
        num_classes: K (``class_embed`` has K+1 outputs).
        hidden_dim, num_queries, heads, ffn, layers: decoder sizes (``layers`` = ``DEC_LAYERS − 1``).
        mask_dim: channels of ``mask_features``.
    """

    def __init__(
        self, in_channels: int, num_classes: int, hidden_dim: int, num_queries: int, heads: int, ffn: int,
        layers: int, mask_dim: int, num_levels: int = 3,
    ) -> None:
        super().__init__()
        self.num_heads, self.num_layers, self.num_levels = heads, layers, num_levels
        self.hidden_dim = hidden_dim
        self.transformer_self_attention_layers = nn.ModuleList(SelfAttentionLayer(hidden_dim, heads) for _ in range(layers))
        self.transformer_cross_attention_layers = nn.ModuleList(CrossAttentionLayer(hidden_dim, heads) for _ in range(layers))
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(hidden_dim, ffn) for _ in range(layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_levels, hidden_dim)
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, hidden_dim, 1) if in_channels != hidden_dim else nn.Identity()
            for _ in range(num_levels)
        )
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.backend = "eager"
        self.trace: dict[str, Tensor] | None = None  # set to {} to record intermediates (tests)

    def forward(self, feats: list[Tensor], mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """feats: [res5-, res4-, res3-level] (N, C, Hₗ, Wₗ); mask_features (N, mask_dim, H₄, W₄) →
        (pred_logits (N, Q, K+1), pred_masks (N, Q, H₄, W₄)) of the last layer."""
        n = mask_features.shape[0]
        srcs, poss, sizes = [], [], []
        for i in range(self.num_levels):
            x = feats[i]
            h, w = x.shape[2], x.shape[3]  # symbolic while exporting
            sizes.append((h, w))
            pos = sine_position_encoding(h, w, self.hidden_dim // 2, x.device, x.dtype, batch=n)
            poss.append(pos.flatten(2).permute(2, 0, 1))
            src = self.input_proj[i](x).flatten(2) + self.level_embed.weight[i][None, :, None]
            srcs.append(src.permute(2, 0, 1))
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, n, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, n, 1)
        logits, masks, blocked = self._heads(output, mask_features, sizes[0])
        trace = self.trace
        if trace is not None:
            trace.update(dec_pred_logits=[logits], dec_pred_masks=[masks])
        for i in range(self.num_layers):
            level = i % self.num_levels
            blocked = blocked & ~blocked.all(-1, keepdim=True)  # a fully blocked row attends everywhere
            if trace is not None:
                trace[f"dec_attn_mask{i}"] = blocked
            output = self.transformer_cross_attention_layers[i](
                output, srcs[level], blocked, poss[level], query_pos, self.backend
            )
            output = self.transformer_self_attention_layers[i](output, query_pos, self.backend)
            output = self.transformer_ffn_layers[i](output)
            logits, masks, blocked = self._heads(output, mask_features, sizes[(i + 1) % self.num_levels])
            if trace is not None:
                trace["dec_pred_logits"].append(logits)
                trace["dec_pred_masks"].append(masks)
        return logits, masks

    def _heads(self, output: Tensor, mask_features: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """(Q, N, C) → logits (N, Q, K+1), masks (N, Q, H₄, W₄), blocked (N, Q, h·w) for the level of ``size``."""
        d = self.decoder_norm(output).transpose(0, 1)
        logits = self.class_embed(d)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(d), mask_features)
        small = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        blocked = small.sigmoid().flatten(2) < 0.5
        return logits, masks, blocked.detach()
