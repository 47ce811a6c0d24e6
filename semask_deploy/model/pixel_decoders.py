"""Mask2Former pixel decoders: ``MSDeformAttnPixelDecoder`` and MSFaPN's ``MSDeformAttnPixelFANDecoder``.

    res5, res4, res3 ─ 1×1 conv + GN(32) ─┐ + sine position (+ level embedding on the position)
                                          └→ E deformable encoder layers (post-norm) over all 3 levels
    encoder outputs (res5, res4, res3 order) = multi-scale features for the transformer decoder
    res2 ─ 1×1 lateral conv + GN ─ + bilinear up(res3 output) ─ 3×3 conv + GN + ReLU ─ 1×1 → mask_features
    (MSFaPN: y = output_conv(FeatureAlign(lateral, lateral + up(res3 output))))

Keys are the official ones under ``sem_seg_head.pixel_decoder.``: ``input_proj.{l}.{0,1}``,
``transformer.level_embed``, ``transformer.encoder.layers.{i}.*``, ``adapter_1``, ``layer_1``, ``align_1``,
``mask_features``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fapn import ConvNorm
from .msdeform_attn import MSDeformAttn, encoder_reference_points
from .position_encoding import sine_position_encoding


class DeformableEncoderLayer(nn.Module):
    """``src = LN1(src + MSDA(src + pos, src))``; ``src = LN2(src + W2·relu(W1·src))``.

    Keys: ``self_attn.*``, ``norm1``, ``linear1``, ``linear2``, ``norm2``.
    """

    def __init__(self, d_model: int, ffn: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn)
        self.linear2 = nn.Linear(ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: Tensor, pos: Tensor, ref: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        """src, pos (N, S, C), ref (1, S, 2) → (N, S, C)."""
        src = self.norm1(src + self.self_attn(src + pos, ref, src, shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class _Encoder(nn.Module):
    def __init__(self, layers: int, *args: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(*args) for _ in range(layers))


class DeformableTransformer(nn.Module):
    """The encoder-only deformable transformer. Keys: ``level_embed`` (L, C), ``encoder.layers.{i}``."""

    def __init__(self, d_model: int, layers: int, ffn: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.zeros(n_levels, d_model))
        self.encoder = _Encoder(layers, d_model, ffn, n_levels, n_heads, n_points)


class MSDeformAttnPixelDecoder(nn.Module):
    """Mask2Former's pixel decoder (``fapn=False``) or MSFaPN's (``fapn=True``, FaPN alignment on res2).

    Args:
        in_channels: channels of res2..res5.
        conv_dim, mask_dim: decoder width and mask-feature channels.
        enc_layers, enc_heads, enc_points, enc_ffn: the deformable encoder.
        fapn: MSFaPN (``align_1`` FeatureAlign; its offset GroupNorm is ``layer_1.norm``).
    """

    def __init__(
        self, in_channels: tuple[int, ...], conv_dim: int, mask_dim: int, enc_layers: int, enc_heads: int,
        enc_points: int, enc_ffn: int, fapn: bool = False,
    ) -> None:
        super().__init__()
        self.conv_dim = conv_dim
        levels = 3
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, conv_dim, 1), nn.GroupNorm(32, conv_dim)) for c in in_channels[1:][::-1]
        )
        self.transformer = DeformableTransformer(conv_dim, enc_layers, enc_ffn, levels, enc_heads, enc_points)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        self.adapter_1 = ConvNorm(in_channels[0], conv_dim, 1, bias=False, norm=nn.GroupNorm(32, conv_dim))
        self.layer_1 = ConvNorm(conv_dim, conv_dim, 3, bias=False, norm=nn.GroupNorm(32, conv_dim), relu=True)
        self.fapn = fapn
        if fapn:
            from .fapn import FeatureAlign

            self.align_1 = FeatureAlign(conv_dim, conv_dim, norm=self.layer_1.norm)
        self.trace: dict[str, Tensor] | None = None  # set to {} to record intermediates (tests)

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """feats = [res2, res3, res4, res5] (N, Cᵢ, Hᵢ, Wᵢ) →
        (mask_features (N, mask_dim, H₂, W₂), [res5-, res4-, res3-level outputs] (N, conv_dim, Hᵢ, Wᵢ))."""
        srcs, poss, shapes = [], [], []
        # officially ``.float()``: under autocast the encoder runs in fp32; the weights' dtype is that float32,
        # and a model cast as a whole (``.to(torch.bfloat16)``) keeps working
        dtype = self.adapter_1.weight.dtype
        for i, x in enumerate(feats[1:][::-1]):
            src = self.input_proj[i](x.to(dtype))
            h, w = src.shape[2], src.shape[3]  # symbolic while exporting
            pos = sine_position_encoding(h, w, self.conv_dim // 2, src.device, src.dtype, batch=src.shape[0])
            if self.trace is not None:
                self.trace[f"pixdec_src{i}"], self.trace[f"pixdec_pos{i}"] = src, pos
            srcs.append(src.flatten(2).transpose(1, 2))
            poss.append(pos.flatten(2).transpose(1, 2) + self.transformer.level_embed[i].view(1, 1, -1))
            shapes.append((h, w))
        src, pos = torch.cat(srcs, 1), torch.cat(poss, 1)
        ref = encoder_reference_points(shapes, src.device)
        for j, layer in enumerate(self.transformer.encoder.layers):
            src = layer(src, pos, ref, shapes)
            if self.trace is not None:
                self.trace[f"pixdec_enc_layer{j}"] = src
        n = src.shape[0]
        outs = [
            y.transpose(1, 2).reshape(n, -1, h, w)
            for y, (h, w) in zip(src.split([h * w for h, w in shapes], dim=1), shapes)
        ]
        lateral = self.adapter_1(feats[0].to(dtype))
        y = lateral + F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        if self.fapn:
            y = self.align_1(lateral, y)
        y = self.layer_1(y)
        return self.mask_features(y), outs
