"""Modulated deformable convolution (DCNv2) in plain PyTorch, as FaPN's ``DCN`` (SeMask-FAPN/DCNv2).

The official op (``dcn_v2``, CUDA/C++ only) samples, for output pixel (h, w), deformable group g and kernel tap
k = i·kw + j, the input at the integer pixel coordinates

    y = h·stride − pad + i·dilation + Δy[g, k],   x = w·stride − pad + j·dilation + Δx[g, k]

bilinearly with zeros outside, multiplies by the modulation mask m[g, k] and applies the convolution weight.
Offsets are laid out per group and tap as channel ``2·(g·K + k)`` (Δy) and ``2·(g·K + k) + 1`` (Δx); the mask
as channel ``g·K + k``. Channels of group g are the consecutive block ``[g·C/G, (g+1)·C/G)``.

Here all groups and taps are sampled by ONE ``grid_sample`` (zeros padding, normalised coordinates for
align_corners=False shifted by half a pixel, so integer pixel positions map exactly) and the convolution is
one matmul over the C·K sampled columns. It traces and exports (ONNX GridSample, dynamic H/W). Sampling always
runs in float32 (as the official FaPN calls the op on ``.float()`` inputs).

Keys of :class:`ModulatedDeformConv` (official ``DCN`` with ``extra_offset_mask=True``): ``weight``, ``bias``,
``conv_offset_mask.weight``, ``conv_offset_mask.bias``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def modulated_deform_conv2d(
    x: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
    deformable_groups: int = 1,
) -> Tensor:
    """DCNv2 forward (convolution groups = 1).

    Args:
        x: N×C×H×W input.
        offset: N×(2·G·K)×Ho×Wo, channel 2(gK+k) = Δy, 2(gK+k)+1 = Δx (pixels), K = kh·kw.
        mask: N×(G·K)×Ho×Wo modulation (already through the sigmoid), channel gK+k.
        weight: O×C×kh×kw.  bias: O or None.
        stride, padding, dilation: as in ``conv2d``.
        deformable_groups: G; C must be divisible by G.

    Returns:
        N×O×Ho×Wo in the dtype of ``x`` (computed in float32 when ``x`` is of lower precision).
    """
    out_dtype = x.dtype
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    x = x.to(compute)
    offset = offset.to(compute)
    mask = mask.to(compute)
    n, c, h, w = x.shape
    o, cw, kh, kw = weight.shape
    g = deformable_groups
    k = kh * kw
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    ho, wo = offset.shape[-2], offset.shape[-1]

    # Base sampling positions (integer pixel coordinates) of every tap at every output pixel: K×Ho×Wo.
    ys = torch.arange(ho, dtype=compute, device=x.device) * sh - ph
    xs = torch.arange(wo, dtype=compute, device=x.device) * sw - pw
    ty = (torch.arange(kh, dtype=compute, device=x.device) * dh).repeat_interleave(kw)
    tx = (torch.arange(kw, dtype=compute, device=x.device) * dw).repeat(kh)
    base_y = ty.view(k, 1, 1) + ys.view(1, ho, 1)  # K×Ho×1
    base_x = tx.view(k, 1, 1) + xs.view(1, 1, wo)  # K×1×Wo

    off = offset.reshape(n, g, k, 2, ho, wo)
    py = base_y + off[:, :, :, 0]  # N×G×K×Ho×Wo
    px = base_x + off[:, :, :, 1]
    # Pixel coordinate p ↦ normalised (2p + 1)/size − 1 (align_corners=False): grid_sample maps it back to p.
    gy = (2.0 * py + 1.0) / h - 1.0
    gx = (2.0 * px + 1.0) / w - 1.0
    grid = torch.stack((gx, gy), dim=-1).reshape(n * g, k * ho, wo, 2)

    sampled = F.grid_sample(
        x.reshape(n * g, c // g, h, w), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (N·G)×(C/G)×(K·Ho)×Wo
    sampled = sampled.reshape(n, g, c // g, k, ho, wo) * mask.reshape(n, g, 1, k, ho, wo)
    cols = sampled.reshape(n, c * k, ho * wo)  # channel (g·C/G + c)·K + k, as weight.reshape(O, C·K)
    out = torch.matmul(weight.to(compute).reshape(o, cw * k), cols)
    if bias is not None:
        out = out + bias.to(compute).view(1, o, 1)
    return out.reshape(n, o, ho, wo).to(out_dtype)


class ModulatedDeformConv(nn.Module):
    """DCNv2 with its offset/mask predictor (official ``DCN(..., extra_offset_mask=True)``).

    ``conv_offset_mask`` (kernel, stride, padding as the main conv, with bias) maps the guide features to
    3·G·K channels; ``o1, o2, m = chunk(3)``; offsets = ``cat(o1, o2)``, mask = ``sigmoid(m)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        deformable_groups: int = 8,
        offset_in_channels: int | None = None,
    ) -> None:
        """
        Args:
            in_channels: C of the sampled input (divisible by ``deformable_groups``).
            out_channels: O.
            kernel_size, stride, padding, dilation: of the deformable conv and of ``conv_offset_mask``.
            deformable_groups: G (FaPN: 8).
            offset_in_channels: channels of the guide fed to ``conv_offset_mask`` (default ``in_channels``).
        """
        super().__init__()
        if in_channels % deformable_groups:
            raise ValueError(f"in_channels {in_channels} not divisible by deformable_groups {deformable_groups}")
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.deformable_groups = deformable_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.conv_offset_mask = nn.Conv2d(
            in_channels if offset_in_channels is None else offset_in_channels,
            3 * deformable_groups * kernel_size * kernel_size,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=True,
        )
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def offsets_and_mask(self, guide: Tensor) -> tuple[Tensor, Tensor]:
        """Guide N×Cg×H×W → (offsets N×2GK×Ho×Wo, mask N×GK×Ho×Wo after the sigmoid)."""
        out = self.conv_offset_mask(guide)
        o1, o2, m = torch.chunk(out, 3, dim=1)
        return torch.cat((o1, o2), dim=1), torch.sigmoid(m)

    def forward(self, x: Tensor, guide: Tensor) -> Tensor:
        """x N×C×H×W sampled, guide N×Cg×H×W → N×O×Ho×Wo."""
        offset, mask = self.offsets_and_mask(guide)
        return modulated_deform_conv2d(
            x, offset, mask, self.weight, self.bias, self.stride, self.padding, self.dilation, self.deformable_groups
        )
