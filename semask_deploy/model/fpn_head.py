"""The Semantic-FPN decode head of SeMask (official ``BranchFPNHead``).

For each stride s ∈ (4, 8, 16, 32): max(1, log2(s/4)) × [ConvModule 3×3 → 256 (+ bilinear ×2 for s > 4)];
the four maps are summed, each resized bilinearly to the stride-4 size (×2 steps overshoot odd sizes);
Conv 1×1 → K (``conv_seg``). The semantic branch (training only) upsamples the backbone's semantic maps the
same way, without parameters, and sums them.

Keys: ``scale_heads.{i}.{2k}.conv.weight``, ``scale_heads.{i}.{2k}.bn.*``, ``conv_seg.weight/bias``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fast
from ._tracing import is_tracing


class ConvModule(nn.Module):
    """Conv 3×3 (no bias) → BatchNorm → ReLU. Keys ``conv.weight``, ``bn.*``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        if getattr(self, "fast_path", False):
            return fast.conv_bn_relu(self.conv, self.bn, x)
        return self.act(self.bn(self.conv(x)))


class Upsample2x(nn.Module):
    """Bilinear ×2, align_corners=False (``nn.Upsample(scale_factor=2)``; no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def head_lengths(strides: tuple[int, ...]) -> list[int]:
    """Number of ConvModules per scale head: max(1, log2(sᵢ / s₀))."""
    return [max(1, int(math.log2(s) - math.log2(strides[0]))) for s in strides]


class SemanticFPNHead(nn.Module):
    """Semantic-FPN head: four scale heads summed at stride 4, then a 1×1 classifier."""

    def __init__(
        self,
        in_channels: tuple[int, ...],
        num_classes: int,
        channels: int = 256,
        strides: tuple[int, ...] = (4, 8, 16, 32),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.strides = strides
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)  # registered first, as in the official head
        self.dropout = nn.Dropout2d(dropout)
        self.scale_heads = nn.ModuleList()
        for cin, length in zip(in_channels, head_lengths(strides)):
            layers: list[nn.Module] = []
            for k in range(length):
                layers.append(ConvModule(cin if k == 0 else channels, channels))
                if len(self.scale_heads) > 0:
                    layers.append(Upsample2x())
            self.scale_heads.append(nn.Sequential(*layers))
        self.fast_path = False

    def set_fast_path(self, enabled: bool) -> None:
        """Inference fast path: BN folded into the convs, channels-last, fused conv+ReLU on the CPU."""
        self.fast_path = enabled
        for m in self.modules():
            if isinstance(m, ConvModule):
                m.fast_path = enabled

    def forward(self, feats: list[Tensor]) -> Tensor:
        """feats [(B, Cᵢ, Hᵢ, Wᵢ)] → logits (B, K, H₀, W₀) at stride 4."""
        if self.fast_path and not self.training and not is_tracing():  # grouping needs concrete shapes
            return self._forward_fast(feats)
        out = self.scale_heads[0](feats[0])
        size = out.shape[2:]
        for i in range(1, len(feats)):
            out = out + resize_to(self.scale_heads[i](feats[i]), size)
        return self.conv_seg(self.dropout(out))

    def _forward_fast(self, feats: list[Tensor]) -> Tensor:
        """Inference: channels-last, and one final ×2 upsample per group of heads instead of one per head.

        Every scale head after the first ends with a bilinear ×2 (then a resize to the stride-4 size, a no-op
        unless H or W is odd). Both are linear, so heads whose maps have the same size before that last
        upsample are summed first and upsampled once — for 512×512 input, one upsample of a 64×64 map
        instead of three, and one add at 128×128 instead of three. Exact up to float rounding.
        """
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
        out = self.scale_heads[0](feats[0])
        reuse = fast.may_reuse(out)
        groups: dict[tuple[int, ...], Tensor] = {}
        for i in range(1, len(feats)):
            *layers, last_upsample = self.scale_heads[i]
            y = feats[i]
            for layer in layers:
                y = layer(y)
            key = tuple(y.shape)
            if key not in groups:
                groups[key] = y
            else:
                groups[key] = groups[key].add_(y) if reuse else groups[key] + y
        for y in groups.values():
            up = resize_to(last_upsample(y), out.shape[2:])
            out = out.add_(up) if reuse else out + up
        return fast.conv1x1(self.conv_seg, out)

    @staticmethod
    def semantic_logits(sems: list[Tensor]) -> Tensor:
        """The training-only branch: sum of the semantic maps upsampled to stride 4 (B, Kb, H₀, W₀)."""
        out = sems[0]
        size = out.shape[2:]
        for i in range(1, len(sems)):
            x = sems[i]
            for _ in range(i):
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            out = out + resize_to(x, size)
        return out


def resize_to(x: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    """Bilinear resize (align_corners=False) to ``size``; a no-op when the size already matches."""
    if not is_tracing() and tuple(x.shape[2:]) == tuple(size):
        return x  # skip the identity copy in eager mode; traced graphs keep it (no shape guard)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
