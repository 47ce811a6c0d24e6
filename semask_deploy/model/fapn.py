"""FPN-style pixel decoders of SeMask-MaskFormer (``BasePixelDecoder``) and SeMask-FaPN (``PixelFANDecoder``),
and FaPN's feature alignment module (``FeatureAlign``, also used by the MSFaPN decoder).

Both decoders take the backbone maps [res2, res3, res4, res5] (strides 4…32):

- res5: ``layer_4`` = 3×3 conv (no bias) + GN + ReLU;
- res4, res3, res2 (``i`` = 3, 2, 1): ``lateral = adapter_i(res)`` (1×1 conv, no bias, + GN), ``y = lateral +
  nearest(previous)`` (PyTorch legacy ``nearest`` to the lateral's size; an exact ×2 repeat on padded inputs),
  then ``y = layer_i(y)`` (MaskFormer) or ``y = layer_i(align_i(lateral, y))`` (FaPN); ``layer_i`` = 3×3 conv
  (no bias) + GN + ReLU;
- ``mask_features`` = 3×3 conv (bias) of the res2-level output; the multi-scale features a Mask2Former decoder
  reads are the res5, res4, res3 level outputs (MaskFormer's own decoder reads backbone res5 instead).

FaPN's ``FeatureAlign(lateral, y)``: ``off = offset(cat[lateral, 2·y])`` (1×1 conv, no bias, + GN),
``a = ReLU(DCNv2(y; offsets and mask from off))``, returns ``a + lateral``. The GN of ``offset`` is the SAME
module as the following ``layer_i`` GN (official tying): the state dict holds both keys, one tensor.

Keys (relative to ``sem_seg_head.pixel_decoder.``): ``adapter_{1,2,3}.weight``, ``adapter_i.norm.{weight,bias}``,
``layer_{1..4}.weight``, ``layer_i.norm.*``, ``mask_features.{weight,bias}``; FaPN adds ``align_i.offset.weight``,
``align_i.offset.norm.*`` (tied to ``layer_i.norm.*``) and ``align_i.dcpack_L2.{weight,bias}``,
``align_i.dcpack_L2.conv_offset_mask.{weight,bias}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .deform_conv import ModulatedDeformConv


class ConvNorm(nn.Conv2d):
    """detectron2's ``Conv2d``: convolution → optional norm → optional ReLU. Keys ``weight``, ``bias``,
    ``norm.weight``, ``norm.bias`` (as present)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = False,
        norm: nn.Module | None = None,
        relu: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.norm = norm
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        """N×Cin×H×W → N×Cout×H×W."""
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


def group_norm(channels: int, num_groups: int = 32) -> nn.GroupNorm:
    """detectron2 ``get_norm("GN", C)``: GroupNorm(32, C), eps 1e-5, affine."""
    return nn.GroupNorm(num_groups, channels)


class FeatureAlign(nn.Module):
    """FaPN feature alignment without the feature-selection module (official ``FeatureAlign``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: nn.Module | None = None,
        deformable_groups: int = 8,
        num_groups: int = 32,
    ) -> None:
        """
        Args:
            in_channels: channels of the lateral (unused by the official module beyond = out_channels).
            out_channels: C of lateral, y and the output.
            norm: the GroupNorm to use after the ``offset`` conv; pass the following output conv's norm to tie
                them as the official decoders do (default: a new GroupNorm(num_groups, C)).
            deformable_groups: DCNv2 deformable groups (8).
        """
        super().__init__()
        if in_channels != out_channels:
            raise ValueError("FeatureAlign expects lateral and upsampled maps with the same channels")
        norm = group_norm(out_channels, num_groups) if norm is None else norm
        self.offset = ConvNorm(2 * out_channels, out_channels, 1, bias=False, norm=norm)
        self.dcpack_L2 = ModulatedDeformConv(out_channels, out_channels, 3, padding=1, deformable_groups=deformable_groups)

    def forward(self, lateral: Tensor, y: Tensor) -> Tensor:
        """lateral N×C×H×W, y N×C×h×w (bilinearly resized to H×W when different) → N×C×H×W."""
        if lateral.shape[-2:] != y.shape[-2:]:
            y = F.interpolate(y, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        off = self.offset(torch.cat((lateral, y * 2), dim=1))
        return F.relu(self.dcpack_L2(y, off)) + lateral


class _FPNPixelDecoder(nn.Module):
    """Shared top-down structure of BasePixelDecoder / PixelFANDecoder."""

    align: bool = False

    def __init__(
        self,
        in_channels: Sequence[int],
        conv_dim: int,
        mask_dim: int,
        num_groups: int = 32,
        deformable_groups: int = 8,
    ) -> None:
        """
        Args:
            in_channels: channels of [res2, res3, res4, res5] (any number ≥ 1 of levels, finest first).
            conv_dim: SEM_SEG_HEAD.CONVS_DIM.  mask_dim: SEM_SEG_HEAD.MASK_DIM.
            num_groups: GroupNorm groups (detectron2 "GN": 32).
            deformable_groups: DCNv2 groups of the FaPN alignment (8).
        """
        super().__init__()
        n = len(in_channels)
        self.num_levels = n
        for idx, cin in enumerate(in_channels):
            if idx == n - 1:
                self.add_module(
                    f"layer_{idx + 1}", ConvNorm(cin, conv_dim, 3, norm=group_norm(conv_dim, num_groups), relu=True)
                )
                continue
            self.add_module(f"adapter_{idx + 1}", ConvNorm(cin, conv_dim, 1, norm=group_norm(conv_dim, num_groups)))
            out_norm = group_norm(conv_dim, num_groups)
            if self.align:
                self.add_module(
                    f"align_{idx + 1}",
                    FeatureAlign(conv_dim, conv_dim, norm=out_norm, deformable_groups=deformable_groups),
                )
            self.add_module(f"layer_{idx + 1}", ConvNorm(conv_dim, conv_dim, 3, norm=out_norm, relu=True))
        self.mask_features = ConvNorm(conv_dim, mask_dim, 3, bias=True)

    def forward_levels(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """[res2, …, res5] → every level's output, coarsest first: [res5-level, res4-level, res3-level, res2-level]."""
        n = self.num_levels
        y = getattr(self, f"layer_{n}")(feats[n - 1])
        outs = [y]
        for idx in range(n - 2, -1, -1):
            lateral = getattr(self, f"adapter_{idx + 1}")(feats[idx])
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            if self.align:
                y = getattr(self, f"align_{idx + 1}")(lateral, y)
            y = getattr(self, f"layer_{idx + 1}")(y)
            outs.append(y)
        return outs

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """[res2, res3, res4, res5] → (mask_features N×mask_dim×H/4×W/4, [res5-, res4-, res3-level] maps N×conv_dim×…)."""
        outs = self.forward_levels(feats)
        return self.mask_features(outs[-1]), outs[:3]


class BasePixelDecoder(_FPNPixelDecoder):
    """SeMask-MaskFormer's pixel decoder (official ``BasePixelDecoder``): a plain FPN with GN."""

    align = False

    def __init__(self, in_channels: Sequence[int], conv_dim: int, mask_dim: int, num_groups: int = 32) -> None:
        super().__init__(in_channels, conv_dim, mask_dim, num_groups)


class PixelFANDecoder(_FPNPixelDecoder):
    """SeMask-FaPN's pixel decoder (official ``PixelFANDecoder``): the FPN with a FeatureAlign per lateral level."""

    align = True

    def __init__(
        self,
        in_channels: Sequence[int],
        conv_dim: int,
        mask_dim: int,
        num_groups: int = 32,
        deformable_groups: int = 8,
    ) -> None:
        super().__init__(in_channels, conv_dim, mask_dim, num_groups, deformable_groups)
