"""Normalised sine position encoding of DETR / Mask2Former (``PositionEmbeddingSine(normalize=True)``).

For a map of H×W (no padding mask: the official models never pass one):

    y = (row + 1) / (H + 1e-6) · 2π,   x = (col + 1) / (W + 1e-6) · 2π
    dim_t[i] = T^(2⌊i/2⌋ / F)          (F = num_feats, T = 10000)
    pos_y[c] = sin(y / dim_t[c]) for even c, cos(y / dim_t[c]) for odd c  (interleaved: stack + flatten)
    output = cat(pos_y, pos_x) on channels → (N, 2F, H, W)   — y first.

The operations follow the official code one by one so float32 results are bit-identical.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sine_position_encoding(
    h: int, w: int, num_feats: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32,
    temperature: float = 10000.0, batch: int = 1,
) -> Tensor:
    """The encoding of an H×W map.

    Args:
        h, w: map size.
        num_feats: F, features per axis (the output has 2F channels).
        device, dtype: of the result (computed in float32).
        temperature: T.
        batch: N (the encoding is the same for every image).

    Returns:
        (N, 2F, H, W).
    """
    scale = 2 * math.pi
    eps = 1e-6
    ones = torch.ones(1, h, w, device=device, dtype=torch.float32)
    y_embed = ones.cumsum(1)
    x_embed = ones.cumsum(2)
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos = torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
    return pos.to(dtype).expand(batch, -1, -1, -1)
