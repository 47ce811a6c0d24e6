"""SeMask semantic attention (single head, unscaled softmax over tokens), global and windowed, in Triton.

Algorithm (official SeMask semantics, inference):
    q = x_n·Wq + bq, k = x_n·Wk + bk (C -> K classes), v = x_n·Wv + bv (C -> C) are computed outside;
    this module computes ``softmax(q·kᵀ) · v`` — **no** 1/sqrt scaling, no bias, no mask, one head.

    - Global (stages 2-3 of the "large" T/S/L models): attention over all N tokens of the stage map.
      Flash-style: one program per (batch, block of BLOCK_M queries, block of BLOCK_C output channels)
      visits the keys in BLOCK_N blocks with an online softmax (running max and sum in fp32), so memory is
      O(N) and the N x N score matrix never exists. Large C is tiled over the grid (each C block recomputes
      its q·kᵀ, which is cheap next to P·V when C >= K).
    - Windowed: attention inside ``window x window`` windows (no shift, no mask). The official code
      zero-pads the normalised map (right/bottom) to a multiple of the window *before* the Linear layers,
      so padded tokens have k = k_bias and v = v_bias and take part as keys; only real tokens get outputs.
      The kernel folds padding and window partition into its addressing (same kernel as the global case).

Shapes:
    global:   q, k (B, N, K), v (B, N, C) -> (B, N, C)
    windowed: q, k (B, H, W, K), v (B, H, W, C), k_bias (K,), v_bias (C,) -> (B, H, W, C)
    K (classes) need not be a power of two (19, 150, 171: the class block is padded with masking).

Dtypes:
    float32 / float16 / bfloat16 inputs; output in v's dtype. q·kᵀ over ~150 classes is unscaled and can
    be large, so scores and softmax are always fp32 (fp32 inputs: 3xTF32 dots on sm_80+, fp32-level error,
    IEEE dots elsewhere; never plain TF32); the
    probabilities are rounded to v's dtype for the P·V dot in reduced precision; fp32 accumulator.

Limits:
    Global N up to 65535 x BLOCK_M tokens (grid axis 2 holds N / BLOCK_M; >= 1M); the class dimension is
    held in one or two power-of-two blocks (K <= 1024 is sensible; 150 -> 128 + 32, 171 -> 128 + 64).
    Inference only: the custom ops have no autograd formula (backward raises).

GPUs tested: H200 (sm_90, Triton 3.6; ``benchmarks/results/gpu/``), the CPU interpreter
(``TRITON_INTERPRET=1``), and compiled ahead of time for sm_80 and sm_90. Launch defaults and what
they were measured against: :func:`launch_config`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._triton import check_launchable, fp32_dot_precision, is_interpreted, load_triton, next_pow2

triton, tl, _HAS_TRITON = load_triton()

__all__ = [
    "semantic_attention_global",
    "semantic_attention_global_ref",
    "semantic_attention_window",
    "semantic_attention_window_ref",
]


# ---------------------------------------------------------------------------------------------------------
# References (plain PyTorch)
# ---------------------------------------------------------------------------------------------------------


def semantic_attention_global_ref(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(q·kᵀ) · v`` over all tokens, unscaled; fp32 (fp64 for fp64 inputs) scores and softmax.

    Args:
        q: (B, N, K) class queries.
        k: (B, N, K) class keys.
        v: (B, N, C) values.

    Returns:
        (B, N, C) in v's dtype. Materialises the (B, N, N) scores (reference only).
    """
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
    attn = torch.softmax(q.to(acc) @ k.to(acc).transpose(-2, -1), dim=-1)
    return attn.to(v.dtype) @ v


def semantic_attention_window_ref(
    q: Tensor, k: Tensor, v: Tensor, window: int, k_bias: Tensor, v_bias: Tensor
) -> Tensor:
    """Windowed ``softmax(q·kᵀ) · v`` (no shift, no mask); padded tokens are keys with k_bias / v_bias.

    Args:
        q: (B, H, W, K) class queries of the unpadded map.
        k: (B, H, W, K) class keys.
        v: (B, H, W, C) values.
        window: window size w; the map is padded right/bottom to multiples of w.
        k_bias: (K,) key Linear bias (= k of a zero-padded token).
        v_bias: (C,) value Linear bias (= v of a zero-padded token).

    Returns:
        (B, H, W, C) in v's dtype.
    """
    b, h, w, nk = q.shape
    c = v.shape[-1]
    hp, wp = -(-h // window) * window, -(-w // window) * window
    n = window * window

    def pad_partition(x: Tensor, fill: Tensor | None) -> Tensor:
        ch = x.shape[-1]
        xp = x.new_zeros(b, hp, wp, ch) if fill is None else fill.to(x.dtype).expand(b, hp, wp, ch).clone()
        xp[:, :h, :w] = x
        return xp.view(b, hp // window, window, wp // window, window, ch).permute(0, 1, 3, 2, 4, 5).reshape(-1, n, ch)

    y = semantic_attention_global_ref(pad_partition(q, None), pad_partition(k, k_bias), pad_partition(v, v_bias))
    y = y.view(b, hp // window, wp // window, window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
    return y[:, :h, :w].contiguous()


# ---------------------------------------------------------------------------------------------------------
# Triton kernel (global when WINDOW == 0, windowed otherwise)
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _sem_tokens(t, win_h, win_w, H, W, n_keys, WINDOW: tl.constexpr):
    """Row/column of tokens ``t`` and whether they are real (inside the map) and keys (inside the window)."""
    if WINDOW > 0:
        oh = win_h * WINDOW + t // WINDOW
        ow = win_w * WINDOW + t % WINDOW
        is_key = t < WINDOW * WINDOW
        real = is_key & (oh < H) & (ow < W)
    else:
        oh = t.to(tl.int64)  # global: row × stride reaches N·C, past int32 for N·C ≥ 2³¹ (within the N limit)
        ow = oh * 0
        is_key = t < n_keys
        real = is_key
    return oh, ow, real, is_key


@triton.jit
def _sem_attn_fwd_kernel(
    Q, K, V, K_BIAS, V_BIAS, OUT,
    H, W, n_win_w, n_win, n_keys,
    stride_qb, stride_qh, stride_qw, stride_qk,
    stride_kb, stride_kh, stride_kw, stride_kk,
    stride_vb, stride_vh, stride_vw, stride_vc,
    stride_ob, stride_oh, stride_ow, stride_oc,
    NUM_CLS, C,
    WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_K2: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    pid_g = tl.program_id(0)  # b * n_win + window (global: b)
    pid_c = tl.program_id(1)
    pid_m = tl.program_id(2)
    b = (pid_g // n_win).to(tl.int64)
    win = pid_g % n_win
    win_h = win // n_win_w
    win_w = win % n_win_w

    kc = tl.arange(0, BLOCK_K)
    kc_ok = kc < NUM_CLS
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cc_ok = cc < C

    tm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    oh_m, ow_m, real_m, _ = _sem_tokens(tm, win_h, win_w, H, W, n_keys, WINDOW)
    q_ptr = Q + b * stride_qb + (oh_m * stride_qh + ow_m * stride_qw)[:, None] + kc[None, :] * stride_qk
    q = tl.load(q_ptr, mask=real_m[:, None] & kc_ok[None, :], other=0.0)
    if WINDOW > 0:
        k_pad = tl.load(K_BIAS + kc, mask=kc_ok, other=0.0).to(K.dtype.element_ty)
        v_pad = tl.load(V_BIAS + cc, mask=cc_ok, other=0.0).to(V.dtype.element_ty)
    if BLOCK_K2 > 0:  # classes BLOCK_K.. in a second, smaller block (150 = 128 + 32 instead of 256)
        kc2 = BLOCK_K + tl.arange(0, BLOCK_K2)
        kc2_ok = kc2 < NUM_CLS
        q2_ptr = Q + b * stride_qb + (oh_m * stride_qh + ow_m * stride_qw)[:, None] + kc2[None, :] * stride_qk
        q2 = tl.load(q2_ptr, mask=real_m[:, None] & kc2_ok[None, :], other=0.0)
        if WINDOW > 0:
            k2_pad = tl.load(K_BIAS + kc2, mask=kc2_ok, other=0.0).to(K.dtype.element_ty)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for start_n in range(0, n_keys, BLOCK_N):
        tn = start_n + tl.arange(0, BLOCK_N)
        oh_n, ow_n, real_n, key_n = _sem_tokens(tn, win_h, win_w, H, W, n_keys, WINDOW)
        k_ptr = K + b * stride_kb + (oh_n * stride_kh + ow_n * stride_kw)[:, None] + kc[None, :] * stride_kk
        k = tl.load(k_ptr, mask=real_n[:, None] & kc_ok[None, :], other=0.0)
        v_ptr = V + b * stride_vb + (oh_n * stride_vh + ow_n * stride_vw)[:, None] + cc[None, :] * stride_vc
        v = tl.load(v_ptr, mask=real_n[:, None] & cc_ok[None, :], other=0.0)
        if WINDOW > 0:  # padded tokens: k = k_bias, v = v_bias
            k = tl.where(real_n[:, None], k, k_pad[None, :])
            v = tl.where(real_n[:, None], v, v_pad[None, :])

        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)  # unscaled fp32 scores
        if BLOCK_K2 > 0:
            k2_ptr = K + b * stride_kb + (oh_n * stride_kh + ow_n * stride_kw)[:, None] + kc2[None, :] * stride_kk
            k2 = tl.load(k2_ptr, mask=real_n[:, None] & kc2_ok[None, :], other=0.0)
            if WINDOW > 0:
                k2 = tl.where(real_n[:, None], k2, k2_pad[None, :])
            s = tl.dot(q2, tl.trans(k2), acc=s, input_precision=DOT_PREC)
        s = tl.where(key_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new

    out = acc / l_i[:, None]
    o_ptr = OUT + b * stride_ob + (oh_m * stride_oh + ow_m * stride_ow)[:, None] + cc[None, :] * stride_oc
    tl.store(o_ptr, out.to(OUT.dtype.element_ty), mask=real_m[:, None] & cc_ok[None, :])


# ---------------------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------------------


def class_blocks(num_cls: int, split: bool = True) -> tuple[int, int]:
    """(BLOCK_K, BLOCK_K2): the class dimension as one power-of-two block, or split into two when that pads
    less (150 -> 128 + 32 instead of 256; 171 -> 128 + 64); BLOCK_K2 = 0 means one block."""
    whole = max(16, next_pow2(num_cls))
    if not split or num_cls <= 16:
        return whole, 0
    first = whole // 2 if whole > num_cls else whole  # the largest power of two below num_cls
    second = max(16, next_pow2(num_cls - first)) if num_cls > first else 0
    return (first, second) if second and first + second < whole else (whole, 0)


class LaunchConfig(NamedTuple):
    """One launch of :func:`_sem_attn_fwd_kernel`: tiles, the class split, warps and pipeline stages."""

    block_m: int
    block_n: int
    block_k: int
    block_k2: int
    block_c: int
    num_warps: int
    num_stages: int


def launch_config(n_tok: int, num_cls: int, c: int, dtype: torch.dtype, window: int, interpreted: bool) -> LaunchConfig:
    """The launcher's defaults, from the H200 sweep (``benchmarks/results/gpu/kernel_tuning.md``).

    - Classes split 128 + 32 for 150 (:func:`class_blocks`): 1.4-2.1x faster than one 256 block.
    - Half precision: 64 x 64 tokens, 128 channels, 4 warps; large global maps (tokens x channels >= 3M:
      stage 2 of 2048x1024 inputs, stage 3 of Swin-L) take 128 x 64 tokens, 256 channels, 8 warps,
      1.5-1.8x faster there (fewer channel blocks recompute q·kᵀ). A split class block with 64 query
      tokens and 8 warps faulted on Triton 3.6 (illegal address), so that pairing is never chosen.
    - fp32: 32 x 32 tokens, 64 channels (64 x 64 x 128 needs 221-279 KB of shared memory with the
      split, over an A100's 163 KB); one pipeline stage for windows.
    - Interpreter: one class block and fewer, bigger programs (its cost is per operation, not per element).
    """
    if interpreted:
        tok = max(16, next_pow2(n_tok))
        block_c = max(16, min(256, next_pow2(c)))
        return LaunchConfig(min(64, tok), min(128, tok), max(16, next_pow2(num_cls)), 0, block_c, 4, 2)
    block_k, block_k2 = class_blocks(num_cls)
    tok = max(16, next_pow2(n_tok))
    if dtype == torch.float32 or block_k + block_k2 > 256:
        bm = bn = min(32, tok)
        return LaunchConfig(bm, bn, block_k, block_k2, max(16, min(64, next_pow2(c))), 4, 1 if window else 2)
    if window == 0 and n_tok * c >= 3_000_000 and n_tok >= 128:  # (64 query tokens with 8 warps faulted)
        return LaunchConfig(min(128, tok), min(64, tok), block_k, block_k2, max(16, min(256, next_pow2(c))), 8, 2)
    bm = bn = min(64, tok)
    return LaunchConfig(bm, bn, block_k, block_k2, max(16, min(128, next_pow2(c))), 4, 2)


def _launch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    k_bias: Tensor | None,
    v_bias: Tensor | None,
    *,
    blocks: tuple[int, int, int, int] | None = None,
    block_k2: int | None = None,
    dot_precision: str | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> Tensor:
    """Launch :func:`_sem_attn_fwd_kernel`; ``window == 0`` means global (q, k, v as (B, N, ·)).

    ``blocks`` = (BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_C) overrides :func:`launch_config`; ``block_k2`` the
    second class block (0: none; with ``blocks`` given, default 0); ``dot_precision``
    Triton's ``input_precision`` for fp32 inputs (default: :func:`fp32_dot_precision`).
    """
    num_cls, c = q.shape[-1], v.shape[-1]
    out = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    if out.numel() == 0:
        return out
    if window > 0:
        k_bias, v_bias = k_bias.contiguous(), v_bias.contiguous()  # the kernel reads them with unit stride
        b, h, w = q.shape[:3]
        n_win_h, n_win_w = -(-h // window), -(-w // window)
        n_keys = window * window
        strides = [*q.stride(), *k.stride(), *v.stride(), *out.stride()]
    else:
        b, h = q.shape[:2]
        w, n_win_h, n_win_w, n_keys = 1, 1, 1, h
        strides = []
        for x in (q, k, v, out):  # view (B, N, ·) as (B, N, 1, ·)
            strides += [x.stride(0), x.stride(1), 0, x.stride(2)]
        k_bias = v_bias = q  # unused (never read when WINDOW == 0)
    cfg = launch_config(n_keys, num_cls, c, v.dtype, window, is_interpreted(_sem_attn_fwd_kernel))
    if blocks is not None:
        bm, bn, bk, bc = blocks
        block_k2 = block_k2 or 0
    else:
        bm, bn, bk, bc = cfg.block_m, cfg.block_n, cfg.block_k, cfg.block_c
        block_k2 = cfg.block_k2 if block_k2 is None else block_k2
    grid = (b * n_win_h * n_win_w, triton.cdiv(c, bc), triton.cdiv(n_keys, bm))
    if grid[2] > 65535:
        raise ValueError(f"too many tokens for one launch: N = {n_keys} > {65535 * bm}")
    _sem_attn_fwd_kernel[grid](
        q, k, v, k_bias, v_bias, out,
        h, w, n_win_w, n_win_h * n_win_w, n_keys,
        *strides,
        num_cls, c,
        WINDOW=window, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, BLOCK_C=bc, BLOCK_K2=block_k2,
        DOT_PREC=dot_precision or (fp32_dot_precision(v.device) if v.dtype == torch.float32 else "ieee"),
        num_warps=num_warps or cfg.num_warps,
        num_stages=num_stages or cfg.num_stages,
    )  # fmt: skip
    return out


def _check_dtype(*tensors: Tensor) -> None:
    for t in tensors:
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"inputs must be float32, float16 or bfloat16, got {t.dtype}")
    if len({t.dtype for t in tensors}) != 1:
        raise ValueError(f"q, k, v must share one dtype, got {[str(t.dtype) for t in tensors]}")


# ---------------------------------------------------------------------------------------------------------
# Public functions (torch custom ops, so torch.compile can trace them)
# ---------------------------------------------------------------------------------------------------------


@torch.library.custom_op("semask::semantic_attention_global", mutates_args=())
def _global_op(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    check_launchable(_sem_attn_fwd_kernel, "semantic_attention_global", q, k, v)
    return _launch(q, k, v, 0, None, None)


@_global_op.register_fake
def _global_fake(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return v.new_empty(v.shape)


@torch.library.custom_op("semask::semantic_attention_window", mutates_args=())
def _window_op(q: Tensor, k: Tensor, v: Tensor, window: int, k_bias: Tensor, v_bias: Tensor) -> Tensor:
    check_launchable(_sem_attn_fwd_kernel, "semantic_attention_window", q, k, v, k_bias, v_bias)
    return _launch(q, k, v, window, k_bias, v_bias)


@_window_op.register_fake
def _window_fake(q: Tensor, k: Tensor, v: Tensor, window: int, k_bias: Tensor, v_bias: Tensor) -> Tensor:
    return v.new_empty(v.shape)


def semantic_attention_global(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Global semantic attention ``softmax(q·kᵀ) · v`` (unscaled) with an O(N)-memory Triton kernel.

    Same result as :func:`semantic_attention_global_ref`. Registered as
    ``torch.ops.semask.semantic_attention_global``.

    Args:
        q: (B, N, K) class queries (float32/float16/bfloat16, any strides).
        k: (B, N, K) class keys, same dtype.
        v: (B, N, C) values, same dtype.

    Returns:
        (B, N, C) in v's dtype.

    Raises:
        ValueError: inconsistent shapes or dtypes.
        RuntimeError: Triton missing, or CPU tensors without the interpreter.
    """
    if q.dim() != 3 or k.shape != q.shape or v.dim() != 3 or v.shape[:2] != q.shape[:2]:
        raise ValueError(
            f"need q, k (B, N, K) and v (B, N, C), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    _check_dtype(q, k, v)
    check_launchable(_sem_attn_fwd_kernel, "semantic_attention_global", q, k, v)
    return torch.ops.semask.semantic_attention_global(q, k, v)


def semantic_attention_window(q: Tensor, k: Tensor, v: Tensor, window: int, k_bias: Tensor, v_bias: Tensor) -> Tensor:
    """Windowed semantic attention (no shift, no mask; padded tokens are keys with k_bias / v_bias).

    Same result as :func:`semantic_attention_window_ref`; padding and window partition are folded into the
    kernel's addressing. Registered as ``torch.ops.semask.semantic_attention_window``.

    Args:
        q: (B, H, W, K) class queries of the unpadded map (float32/float16/bfloat16, any strides).
        k: (B, H, W, K) class keys, same dtype.
        v: (B, H, W, C) values, same dtype.
        window: window size w (7 or 12 in SeMask).
        k_bias: (K,) bias of the key Linear.
        v_bias: (C,) bias of the value Linear.

    Returns:
        (B, H, W, C) in v's dtype.

    Raises:
        ValueError: inconsistent shapes or dtypes.
        RuntimeError: Triton missing, or CPU tensors without the interpreter.
    """
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"need q, k (B, H, W, K) and v (B, H, W, C), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if tuple(k_bias.shape) != (q.shape[-1],) or tuple(v_bias.shape) != (v.shape[-1],):
        raise ValueError(
            f"need k_bias ({q.shape[-1]},) and v_bias ({v.shape[-1]},), "
            f"got {tuple(k_bias.shape)}, {tuple(v_bias.shape)}"
        )
    _check_dtype(q, k, v)
    check_launchable(_sem_attn_fwd_kernel, "semantic_attention_window", q, k, v, k_bias, v_bias)
    return torch.ops.semask.semantic_attention_window(q, k, v, int(window), k_bias, v_bias)
