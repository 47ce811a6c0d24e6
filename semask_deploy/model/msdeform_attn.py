"""Multi-scale deformable attention (Deformable DETR's ``MSDeformAttn``), the reference math in PyTorch.

For every query q, head m, level l and point p:

    loc = ref_q + offset[q, m, l, p] / (W_l, H_l)          normalised xy in [0, 1]
    w   = softmax over (l, p) of attention_weights[q, m]    per head
    out[q, m] = Σ_{l,p} w · bilinear(value_l[m], loc·(W_l, H_l) − 0.5)   zeros outside the map

i.e. ``grid_sample(align_corners=False, padding_mode="zeros")`` at ``2·loc − 1``. The value is
``value_proj(input)`` (no position), the query carries the position; ``output_proj`` at the end.

:func:`ms_deform_attn_core` is the sampling + weighted sum with the official shapes (the ``eager`` backend and
anything traced for export: one GridSample per level). ``sdpa`` on the CPU uses the kernels module's
``ms_deform_attn_fast_cpu`` (the same sum as one weighted gather, ~6× faster) and on CUDA the reference;
``triton`` calls the fused kernel ``semask_deploy.kernels.ms_deform_attn.ms_deform_attn``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._tracing import is_tracing


def ms_deform_attn_core(
    value: Tensor, spatial_shapes: Tensor | list[tuple[int, int]], sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Bilinear sampling of every level and point, weighted sum (the official ``ms_deform_attn_core_pytorch``).

    Args:
        value: (N, S, M, D), levels concatenated row-major, S = Σ H_l·W_l.
        spatial_shapes: (L, 2) rows (H_l, W_l) (a tensor or a list of pairs).
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y).
        attention_weights: (N, Lq, M, L, P), softmaxed over (L, P).

    Returns:
        (N, Lq, M·D).
    """
    n, _, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    shapes = [(h, w) for h, w in spatial_shapes] if isinstance(spatial_shapes, list) else spatial_shapes.tolist()
    value_list = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    # one dtype for grid_sample: the wider of the two, so a bf16 model (float32 reference points) samples at exact
    # locations and the result comes back in the model's dtype (both are no-ops in float32)
    work = torch.promote_types(value.dtype, grids.dtype)
    sampled = []
    for lid, (h, w) in enumerate(shapes):
        value_l = value_list[lid].flatten(2).transpose(1, 2).reshape(n * m, d, h, w).to(work)
        grid_l = grids[:, :, :, lid].transpose(1, 2).flatten(0, 1).to(work)  # N·M, Lq, P, 2
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * p)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2).contiguous().to(value.dtype)


def encoder_reference_points(spatial_shapes: list[tuple[int, int]], device: torch.device) -> Tensor:
    """Each query's own pixel centre ((j + 0.5)/W, (i + 0.5)/H), levels concatenated → (1, S, 2) (x, y).

    Written as the official ``get_reference_points`` with valid ratios 1 (no padding mask).
    """
    refs = []
    for h, w in spatial_shapes:
        # = linspace(0.5, h - 0.5, h) bit for bit (step exactly 1), also for symbolic sizes (export)
        ref_y, ref_x = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=device) + 0.5,
            torch.arange(w, dtype=torch.float32, device=device) + 0.5,
            indexing="ij",
        )
        refs.append(torch.stack((ref_x.reshape(-1)[None] / w, ref_y.reshape(-1)[None] / h), -1))
    return torch.cat(refs, 1)


class MSDeformAttn(nn.Module):
    """Deformable attention over L levels with M heads and P points per level.

    Keys: ``sampling_offsets`` (C → M·L·P·2), ``attention_weights`` (C → M·L·P), ``value_proj``,
    ``output_proj`` (C → C).
    """

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.backend = "eager"

    def forward(
        self, query: Tensor, reference_points: Tensor, value_in: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """query (N, Lq, C), reference_points (N or 1, Lq, 2) normalised xy, value_in (N, S, C) → (N, Lq, C)."""
        n, lq, _ = query.shape
        m, num_levels, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value_in).view(n, value_in.shape[1], m, self.d_model // m)
        offsets = self.sampling_offsets(query).view(n, lq, m, num_levels, p, 2)
        weights = self.attention_weights(query).view(n, lq, m, num_levels * p)
        weights = F.softmax(weights, -1).view(n, lq, m, num_levels, p)
        if is_tracing():  # sizes may be symbolic: (W_l, H_l) from scalar tensors (exact small integers)
            normalizer = torch.stack([torch.stack([torch.scalar_tensor(w), torch.scalar_tensor(h)])
                                      for h, w in spatial_shapes]).to(device=query.device, dtype=offsets.dtype)
        else:
            shapes = torch.tensor(spatial_shapes, dtype=torch.long, device=query.device)
            normalizer = torch.stack([shapes[..., 1], shapes[..., 0]], -1)
        locations = reference_points[:, :, None, None, None, :] + offsets / normalizer[None, None, None, :, None, :]
        fast = self.backend == "triton" or (self.backend == "sdpa" and value.device.type == "cpu")
        if fast and not is_tracing():
            from ..kernels import ms_deform_attn as msda

            starts = torch.tensor([0] + [h * w for h, w in spatial_shapes[:-1]], device=query.device).cumsum(0)
            if self.backend == "triton":
                out = msda.ms_deform_attn(value, shapes, starts, locations, weights)
            else:  # the same sum as one weighted gather (embedding_bag): ~6x faster than grid_sample on a CPU
                out = msda.ms_deform_attn_fast_cpu(value, shapes, starts, locations, weights)
        else:  # eager (the official pure-PyTorch path) and export (GridSample)
            out = ms_deform_attn_core(value, spatial_shapes, locations, weights)
        return self.output_proj(out)
