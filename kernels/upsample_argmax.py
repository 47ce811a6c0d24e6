"""Bilinear resize (align_corners=False) fused with argmax over classes: logits -> labels, in Triton.

Algorithm:
    For every output pixel (y, x) of the H x W target, the source coordinates follow ``F.interpolate``'s
    bilinear rule exactly, in fp32: ``scale = float32(in) / float32(out)``,
    ``src = max(scale * (dst + 0.5) - 0.5, 0)``, ``i0 = min(floor(src), in - 1)``, ``i1 = i0 + (i0 < in - 1)``,
    ``l1 = clamp(src - i0, 0, 1)``, ``l0 = 1 - l1``; the value of class c is
    ``l0y * (l0x * x[i0y, i0x] + l1x * x[i0y, i1x]) + l1y * (l0x * x[i1y, i0x] + l1x * x[i1y, i1x])``
    (the evaluation order of PyTorch's CUDA kernel; the CPU ``F.interpolate`` vectorises differently, so its
    values can differ in the last bit and a near-tie can go the other way). Each pixel keeps a running (max, argmax) over the classes, so the
    N x K x H x W upsampled logits are never materialised. Ties go to the lowest class index, like
    ``torch.argmax``.

Shapes:
    logits (N, K, h, w) -> labels (N, H, W) int64.

Dtypes:
    float32 / float16 / bfloat16 logits; interpolation always in fp32 (half inputs are upcast exactly, so
    the reference is ``F.interpolate(logits.float(), ...).argmax(1)``).

Limits:
    Not differentiable (labels). NaN logits are ignored by the running max (torch.argmax would return the
    NaN's index). On a GPU the kernel is compiled with floating-point contraction off, to keep PyTorch's
    (unfused) rounding of the source coordinates; exact label equality with the CPU reference was checked
    in the interpreter only (random logits, and the official golden outputs: 0 of 24,368 labels differ).

GPUs tested: H200 (sm_90, Triton 3.6; ``benchmarks/results/gpu/``), the CPU interpreter
(``TRITON_INTERPRET=1``), and compiled ahead of time for sm_80 and sm_90.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._triton import check_launchable, is_interpreted, load_triton, next_pow2

triton, tl, _HAS_TRITON = load_triton()

__all__ = ["upsample_argmax", "upsample_argmax_ref"]


# ---------------------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------------------


def upsample_argmax_ref(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """``F.interpolate(logits, size, mode="bilinear", align_corners=False).argmax(1)``, computed in fp32.

    Args:
        logits: (N, K, h, w) float logits.
        size: output (H, W).

    Returns:
        (N, H, W) int64 labels.
    """
    up = F.interpolate(logits.float(), size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)
    return up.argmax(1)


# ---------------------------------------------------------------------------------------------------------
# Triton kernel
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _source_index(dst, scale, in_size):
    """F.interpolate's bilinear source index and weights (align_corners=False) for integer ``dst``."""
    src = scale * (dst.to(tl.float32) + 0.5) - 0.5
    src = tl.maximum(src, 0.0)
    i0 = tl.minimum(src.to(tl.int32), in_size - 1)  # src >= 0, so truncation is floor
    l1 = tl.minimum(tl.maximum(src - i0.to(tl.float32), 0.0), 1.0)
    i1 = i0 + (i0 < in_size - 1).to(tl.int32)
    return i0, i1, 1.0 - l1, l1


@triton.jit
def _upsample_argmax_kernel(
    X, OUT,
    num_cls, h_in, w_in, h_out, w_out, scale_h, scale_w,
    stride_xn, stride_xk, stride_xh, stride_xw,
    stride_on, stride_oh, stride_ow,
    BLOCK_P: tl.constexpr, UNROLL: tl.constexpr,
):  # fmt: skip
    """One pixel per lane and one class at a time: each pixel's running (max, argmax) stays in its thread,
    so nothing is reduced across threads (``UNROLL`` classes per loop trip keep independent loads in flight).
    On an H200 this launch is 3.3-4.0x eager, where reducing 16-class blocks across threads was 0.5-0.6x
    (``benchmarks/results/gpu/kernel_tuning.md``)."""
    pid_p = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < h_out * w_out
    oy = p // w_out
    ox = p % w_out
    y0, y1, ly0, ly1 = _source_index(oy, scale_h, h_in)
    x0, x1, lx0, lx1 = _source_index(ox, scale_w, w_in)
    off00 = y0 * stride_xh + x0 * stride_xw
    off01 = y0 * stride_xh + x1 * stride_xw
    off10 = y1 * stride_xh + x0 * stride_xw
    off11 = y1 * stride_xh + x1 * stride_xw
    base = X + n * stride_xn

    best = tl.full([BLOCK_P], float("-inf"), dtype=tl.float32)
    best_idx = tl.zeros([BLOCK_P], dtype=tl.int32)
    for k0 in range(0, num_cls, UNROLL):
        for u in tl.static_range(UNROLL):
            kk = k0 + u
            mask = p_ok & (tl.zeros([BLOCK_P], dtype=tl.int32) + kk < num_cls)
            row = base + kk.to(tl.int64) * stride_xk
            v00 = tl.load(row + off00, mask=mask, other=0.0).to(tl.float32)
            v01 = tl.load(row + off01, mask=mask, other=0.0).to(tl.float32)
            v10 = tl.load(row + off10, mask=mask, other=0.0).to(tl.float32)
            v11 = tl.load(row + off11, mask=mask, other=0.0).to(tl.float32)
            val = ly0 * (lx0 * v00 + lx1 * v01) + ly1 * (lx0 * v10 + lx1 * v11)
            better = (val > best) & mask  # strict: the lowest class index wins ties
            best_idx = tl.where(better, kk, best_idx)
            best = tl.where(better, val, best)

    o_ptr = OUT + n * stride_on + oy * stride_oh + ox * stride_ow
    tl.store(o_ptr, best_idx.to(tl.int64), mask=p_ok)


# ---------------------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------------------


def _scale(in_size: int, out_size: int) -> float:
    """``float32(in) / float32(out)`` rounded once in fp32, as PyTorch computes it (returned exactly)."""
    return float(np.float32(in_size) / np.float32(out_size))


def _launch(
    logits: Tensor,
    size: tuple[int, int],
    *,
    block_p: int | None = None,
    unroll: int | None = None,
    num_warps: int | None = None,
) -> Tensor:
    """Allocate the labels and launch :func:`_upsample_argmax_kernel` (no argument validation).

    Defaults on a GPU: 512 pixels per program, 2 classes per loop trip, 4 warps (the fastest or within 3 %
    of it on every case of the H200 sweep); the interpreter gets fewer, bigger programs.
    """
    n, k, h, w = logits.shape
    ho, wo = int(size[0]), int(size[1])
    out = torch.empty((n, ho, wo), device=logits.device, dtype=torch.int64)
    if out.numel() == 0:
        return out
    if is_interpreted(_upsample_argmax_kernel):
        block_p = block_p or max(16, min(1 << 16, next_pow2(ho * wo)))
    block_p = block_p or 512
    grid = (triton.cdiv(ho * wo, block_p), n)
    _upsample_argmax_kernel[grid](
        logits, out,
        k, h, w, ho, wo, _scale(h, ho), _scale(w, wo),
        *logits.stride(),
        *out.stride(),
        BLOCK_P=block_p, UNROLL=unroll or 2,
        num_warps=num_warps or 4, enable_fp_fusion=False,
    )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------------------
# Public function (a torch custom op, so torch.compile can trace it)
# ---------------------------------------------------------------------------------------------------------


@torch.library.custom_op("semask::upsample_argmax", mutates_args=())
def _upsample_argmax_op(logits: Tensor, size: list[int]) -> Tensor:
    check_launchable(_upsample_argmax_kernel, "upsample_argmax", logits)
    return _launch(logits, (size[0], size[1]))


@_upsample_argmax_op.register_fake
def _upsample_argmax_fake(logits: Tensor, size: list[int]) -> Tensor:
    return logits.new_empty((logits.shape[0], size[0], size[1]), dtype=torch.int64)


def upsample_argmax(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (align_corners=False) to ``size`` fused with argmax over classes (Triton).

    The labels of :func:`upsample_argmax_ref` (``F.interpolate(...).argmax(1)`` in fp32) up to rounding at
    near-ties, without materialising the resized logits. Registered as ``torch.ops.semask.upsample_argmax``.

    Args:
        logits: (N, K, h, w) float32/float16/bfloat16 logits, any strides.
        size: output (H, W).

    Returns:
        (N, H, W) int64 labels.

    Raises:
        ValueError: bad shapes or dtype.
        RuntimeError: Triton missing, or CPU tensors without the interpreter.
    """
    if logits.dim() != 4 or logits.shape[1] < 1:
        raise ValueError(f"logits must be (N, K, h, w) with K >= 1, got {tuple(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"logits must be float32, float16 or bfloat16, got {logits.dtype}")
    fractional = (float, np.floating)  # int(7.5) would silently give 7 rows; F.interpolate refuses it
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or any(isinstance(s, fractional) or (isinstance(s, Tensor) and s.is_floating_point()) for s in size)
            or min(int(size[0]), int(size[1])) < 1):
        raise ValueError(f"size must be a pair of integers (H, W) with H, W >= 1, got {size!r}")
    if logits.shape[2] < 1 or logits.shape[3] < 1:
        raise ValueError(f"logits must have a non-empty spatial size, got {tuple(logits.shape)}")
    check_launchable(_upsample_argmax_kernel, "upsample_argmax", logits)
    return torch.ops.semask.upsample_argmax(logits, [int(size[0]), int(size[1])])
