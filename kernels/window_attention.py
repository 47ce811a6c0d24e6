"""Fused (shifted-)window multi-head attention of a Swin block, read straight from the B,H,W,3C map.

Algorithm (official Swin / SeMask semantics, inference):
    The block's ``qkv`` Linear is applied to the normalised, *unpadded* map, giving ``qkv`` (B, H, W, 3C)
    with channels ``[q heads | k heads | v heads]``. The official code pads the normalised map with zeros
    to (Hp, Wp), multiples of ``window``, *before* that Linear, so a padded token's q, k and v all equal
    ``qkv_bias``; padded tokens take part as keys (not masked). With ``shift > 0`` the padded map is rolled
    by ``-shift`` on H and W. It is split into ``window x window`` windows of N = window² tokens; per window
    and head, ``softmax(q·kᵀ·scale + B_rel [+ M]) · v`` where ``B_rel`` comes from the relative position bias
    table and ``M`` is -100 for token pairs from different shift regions (regions computed on the padded
    Hp x Wp grid). The result is un-partitioned, rolled back by ``+shift`` and cropped to H x W.

    The kernel folds padding, roll and window partition into its addressing: the token at rolled
    coordinate ``(ph, pw)`` lives at ``((ph + shift) % Hp, (pw + shift) % Wp)`` of the padded map; it is read
    from ``qkv`` when inside H x W, else it is ``qkv_bias``. Its output is written to that same position
    (rolling back is the inverse map), only when it is inside H x W. Bias gather, mask and an online
    (flash-style) softmax stay in registers, with fp32 scores, statistics and accumulator.

Shapes:
    qkv (B, H, W, 3C), qkv_bias (3C,), bias_table ((2w-1)², heads) -> out (B, H, W, C), C = heads * head_dim.

Dtypes:
    qkv float32 / float16 / bfloat16 (output has the same dtype); qkv_bias and bias_table any float dtype
    (read as fp32). fp32 inputs keep fp32 accuracy: 3xTF32 dots on sm_80+ GPUs (fp32-level error on the
    tensor cores; see ``_triton.fp32_dot_precision``), IEEE FMA dots elsewhere, never plain TF32. In
    reduced precision, the probabilities are rounded to the input dtype for the P·V dot (as
    flash-attention does).

Grid and limits:
    One program per (window, head, block of BLOCK_M query tokens); keys are visited in BLOCK_N blocks.
    N = 49 (window 7) is padded to 64, N = 144 (window 12) to 3 x 64 blocks. Any window >= 1, any number
    of heads, any head dim (power-of-two head dims >= 16 need no padding; others pad the dim block with
    masking). ``shift`` must be 0 or in [1, window). Maps smaller than the window are padded to one window.
    Inference only: the custom op has no autograd formula (backward raises).

GPUs tested: H200 (sm_90, Triton 3.6; ``benchmarks/results/gpu/``), the CPU interpreter
(``TRITON_INTERPRET=1``), and compiled ahead of time for sm_80 and sm_90.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._triton import check_launchable, fp32_dot_precision, load_triton, next_pow2

triton, tl, _HAS_TRITON = load_triton()

__all__ = ["window_attention", "window_attention_ref", "relative_position_index", "shift_region_mask"]


# ---------------------------------------------------------------------------------------------------------
# Reference (plain PyTorch, the official code path on the qkv map)
# ---------------------------------------------------------------------------------------------------------


def relative_position_index(window: int, device: torch.device | str | None = None) -> Tensor:
    """The official Swin ``relative_position_index`` buffer.

    Args:
        window: window size w.
        device: where to create it.

    Returns:
        int64 (w², w²): index into the ((2w-1)², heads) bias table for every (query, key) pair.
    """
    coords = torch.stack(
        torch.meshgrid(torch.arange(window, device=device), torch.arange(window, device=device), indexing="ij")
    ).flatten(1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()  # (N, N, 2)
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1)


def shift_region_mask(hp: int, wp: int, window: int, shift: int, device: torch.device | str | None = None) -> Tensor:
    """The official shifted-window attention mask, computed on the padded grid.

    Args:
        hp: padded height (multiple of ``window``).
        wp: padded width (multiple of ``window``).
        window: window size w.
        shift: shift size (> 0).
        device: where to create it.

    Returns:
        float32 (nW, w², w²): 0 for pairs in the same region, -100 otherwise; windows in row-major order.
    """
    img = torch.zeros(hp, wp, device=device)
    cnt = 0
    for h0, h1 in ((0, hp - window), (hp - window, hp - shift), (hp - shift, hp)):
        for w0, w1 in ((0, wp - window), (wp - window, wp - shift), (wp - shift, wp)):
            img[h0:h1, w0:w1] = cnt
            cnt += 1
    win = img.view(hp // window, window, wp // window, window).permute(0, 2, 1, 3).reshape(-1, window * window)
    diff = win[:, None, :] - win[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def window_attention_ref(
    qkv: Tensor, qkv_bias: Tensor, bias_table: Tensor, num_heads: int, window: int, shift: int, scale: float
) -> Tensor:
    """Window attention of a Swin block in plain PyTorch (pad, roll, partition, attend, reverse, crop).

    Matmuls run in the input dtype; scores, bias, mask and softmax in fp32 (fp64 for fp64 inputs), which is
    identical to the official code for fp32 and fp64 inputs.

    Args:
        qkv: (B, H, W, 3C) output of the qkv Linear on the normalised, unpadded map.
        qkv_bias: (3C,) the qkv Linear's bias (the q, k, v of zero-padded tokens).
        bias_table: ((2w-1)², num_heads) relative position bias table.
        num_heads: number of heads; C must be divisible by it.
        window: window size w.
        shift: 0, or the cyclic shift (window // 2 in Swin) of odd blocks.
        scale: query scale, head_dim ** -0.5.

    Returns:
        (B, H, W, C) attention output (heads concatenated), input to the block's ``proj`` Linear.
    """
    b, h, w, c3 = qkv.shape
    c = c3 // 3
    hd = c // num_heads
    hp, wp = -(-h // window) * window, -(-w // window) * window
    n = window * window
    x = qkv_bias.to(qkv.dtype).expand(b, hp, wp, c3).clone()
    x[:, :h, :w] = qkv
    if shift > 0:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    x = x.view(b, hp // window, window, wp // window, window, c3).permute(0, 1, 3, 2, 4, 5).reshape(-1, n, c3)
    q, k, v = x.reshape(-1, n, 3, num_heads, hd).permute(2, 0, 3, 1, 4)  # each (B_, heads, N, hd)
    acc = torch.promote_types(qkv.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
    attn = ((q * scale) @ k.transpose(-2, -1)).to(acc)
    idx = relative_position_index(window, qkv.device)
    attn = attn + bias_table.to(acc)[idx.view(-1)].view(n, n, num_heads).permute(2, 0, 1).unsqueeze(0)
    if shift > 0:
        mask = shift_region_mask(hp, wp, window, shift, qkv.device).to(acc)
        nw = mask.shape[0]
        attn = (attn.view(-1, nw, num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, num_heads, n, n)
    attn = attn.softmax(dim=-1).to(v.dtype)
    y = (attn @ v).transpose(1, 2).reshape(-1, n, c)
    y = y.view(b, hp // window, wp // window, window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
    if shift > 0:
        y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
    return y[:, :h, :w].contiguous()


# ---------------------------------------------------------------------------------------------------------
# Triton kernel
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _window_tokens(t, win_h, win_w, H, W, Hp, Wp, WINDOW: tl.constexpr, SHIFT: tl.constexpr):
    """For token indices ``t`` of window (win_h, win_w): in-window coords, rolled coords, source coords."""
    th = t // WINDOW
    tw = t % WINDOW
    ph = win_h * WINDOW + th  # coordinates on the rolled, padded grid
    pw = win_w * WINDOW + tw
    if SHIFT > 0:
        oh = (ph + SHIFT) % Hp  # coordinates on the padded (un-rolled) map
        ow = (pw + SHIFT) % Wp
    else:
        oh = ph
        ow = pw
    inside = (t < WINDOW * WINDOW) & (oh < H) & (ow < W)
    return th, tw, ph, pw, oh, ow, inside


@triton.jit
def _shift_region(p, Lp, WINDOW: tl.constexpr, SHIFT: tl.constexpr):
    """Region id (0, 1, 2) along one axis: slices [0, Lp-w), [Lp-w, Lp-shift), [Lp-shift, Lp)."""
    return (p >= Lp - WINDOW).to(tl.int32) + (p >= Lp - SHIFT).to(tl.int32)


@triton.jit
def _window_attn_fwd_kernel(
    QKV, QKV_BIAS, TABLE, OUT,
    H, W, Hp, Wp, n_win_w, n_win,
    stride_qb, stride_qh, stride_qw, stride_qc,
    stride_t0, stride_t1,
    stride_ob, stride_oh, stride_ow, stride_oc,
    C, scale,
    WINDOW: tl.constexpr, SHIFT: tl.constexpr, N_TOK: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    pid_win = tl.program_id(0)  # b * n_win + window index
    head = tl.program_id(1)
    pid_m = tl.program_id(2)
    b = pid_win // n_win
    win = pid_win % n_win
    win_h = win // n_win_w
    win_w = win % n_win_w

    qkv_base = QKV + b.to(tl.int64) * stride_qb
    out_base = OUT + b.to(tl.int64) * stride_ob
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q_ch = head * HEAD_DIM + d  # channel of q; k at +C, v at +2C

    # ---- queries of this block
    tm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    th_m, tw_m, ph_m, pw_m, oh_m, ow_m, in_m = _window_tokens(tm, win_h, win_w, H, W, Hp, Wp, WINDOW, SHIFT)
    row_m = oh_m * stride_qh + ow_m * stride_qw
    q = tl.load(qkv_base + row_m[:, None] + q_ch[None, :] * stride_qc, mask=in_m[:, None] & d_ok[None, :], other=0.0)
    q_pad = tl.load(QKV_BIAS + q_ch, mask=d_ok, other=0.0).to(q.dtype)
    q = tl.where(in_m[:, None], q, q_pad[None, :])
    k_pad = tl.load(QKV_BIAS + C + q_ch, mask=d_ok, other=0.0).to(q.dtype)
    v_pad = tl.load(QKV_BIAS + 2 * C + q_ch, mask=d_ok, other=0.0).to(q.dtype)
    if SHIFT > 0:
        reg_m = 3 * _shift_region(ph_m, Hp, WINDOW, SHIFT) + _shift_region(pw_m, Wp, WINDOW, SHIFT)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, N_TOK, BLOCK_N):
        tn = start_n + tl.arange(0, BLOCK_N)
        th_n, tw_n, ph_n, pw_n, oh_n, ow_n, in_n = _window_tokens(tn, win_h, win_w, H, W, Hp, Wp, WINDOW, SHIFT)
        row_n = oh_n * stride_qh + ow_n * stride_qw
        kv_mask = in_n[:, None] & d_ok[None, :]
        k = tl.load(qkv_base + row_n[:, None] + (C + q_ch)[None, :] * stride_qc, mask=kv_mask, other=0.0)
        k = tl.where(in_n[:, None], k, k_pad[None, :])
        v = tl.load(qkv_base + row_n[:, None] + (2 * C + q_ch)[None, :] * stride_qc, mask=kv_mask, other=0.0)
        v = tl.where(in_n[:, None], v, v_pad[None, :])

        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * scale  # fp32 (BLOCK_M, BLOCK_N)
        # relative position bias, gathered from the table
        rel = (th_m[:, None] - th_n[None, :] + (WINDOW - 1)) * (2 * WINDOW - 1) + (
            tw_m[:, None] - tw_n[None, :] + (WINDOW - 1)
        )
        pair_ok = (tm < N_TOK)[:, None] & (tn < N_TOK)[None, :]
        s += tl.load(TABLE + rel * stride_t0 + head * stride_t1, mask=pair_ok, other=0.0).to(tl.float32)
        if SHIFT > 0:
            reg_n = 3 * _shift_region(ph_n, Hp, WINDOW, SHIFT) + _shift_region(pw_n, Wp, WINDOW, SHIFT)
            s = tl.where(reg_m[:, None] != reg_n[None, :], s + (-100.0), s)
        s = tl.where((tn < N_TOK)[None, :], s, float("-inf"))

        # online softmax (fp32)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new

    out = acc / l_i[:, None]
    o_ptr = out_base + (oh_m * stride_oh + ow_m * stride_ow)[:, None] + q_ch[None, :] * stride_oc
    tl.store(o_ptr, out.to(OUT.dtype.element_ty), mask=in_m[:, None] & d_ok[None, :])


# ---------------------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------------------


def _launch(
    qkv: Tensor,
    qkv_bias: Tensor,
    bias_table: Tensor,
    num_heads: int,
    window: int,
    shift: int,
    scale: float,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    dot_precision: str | None = None,
) -> Tensor:
    """Allocate the output and launch :func:`_window_attn_fwd_kernel` (no argument validation);
    ``dot_precision`` is Triton's ``input_precision`` for fp32 inputs (default: :func:`fp32_dot_precision`)."""
    b, h, w, c3 = qkv.shape
    c = c3 // 3
    hd = c // num_heads
    hp, wp = -(-h // window) * window, -(-w // window) * window
    n_win_h, n_win_w = hp // window, wp // window
    n_tok = window * window
    out = torch.empty((b, h, w, c), device=qkv.device, dtype=qkv.dtype)
    if out.numel() == 0:
        return out
    qkv_bias = qkv_bias.contiguous()  # the kernel reads it with unit stride
    tok_block = next_pow2(n_tok)
    fp32 = qkv.dtype == torch.float32
    block_m = block_m or min(64, max(16, tok_block))
    # fp32 with windows of more than 64 tokens (Swin-B/L, window 12): 32-key blocks in one stage were
    # 1.35-1.9x faster than 64 in two on an H200 (kernel_tuning.md); window 7 keeps one 64-token block
    block_n = block_n or min(32 if fp32 and n_tok > 64 else 64, max(16, tok_block))
    num_stages = num_stages or (1 if fp32 and n_tok > 64 else 2)
    if dot_precision is None:
        dot_precision = fp32_dot_precision(qkv.device) if fp32 else "ieee"
    block_d = max(16, next_pow2(hd))
    grid = (b * n_win_h * n_win_w, num_heads, triton.cdiv(n_tok, block_m))
    _window_attn_fwd_kernel[grid](
        qkv, qkv_bias, bias_table, out,
        h, w, hp, wp, n_win_w, n_win_h * n_win_w,
        *qkv.stride(),
        *bias_table.stride(),
        *out.stride(),
        c, float(scale),
        WINDOW=window, SHIFT=shift, N_TOK=n_tok, HEAD_DIM=hd,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, DOT_PREC=dot_precision,
        num_warps=num_warps or 4, num_stages=num_stages,
    )  # fmt: skip
    return out


def _validate(
    qkv: Tensor, qkv_bias: Tensor, bias_table: Tensor, num_heads: int, window: int, shift: int
) -> None:
    if qkv.dim() != 4 or qkv.shape[-1] % 3 != 0:
        raise ValueError(f"qkv must be (B, H, W, 3C), got shape {tuple(qkv.shape)}")
    c = qkv.shape[-1] // 3
    if num_heads < 1 or c % num_heads != 0:
        raise ValueError(f"C = {c} is not divisible by num_heads = {num_heads}")
    if window < 1 or not 0 <= shift < window:
        raise ValueError(f"need window >= 1 and 0 <= shift < window, got window={window}, shift={shift}")
    if tuple(qkv_bias.shape) != (3 * c,):
        raise ValueError(f"qkv_bias must be ({3 * c},), got {tuple(qkv_bias.shape)}")
    if tuple(bias_table.shape) != ((2 * window - 1) ** 2, num_heads):
        raise ValueError(
            f"bias_table must be ({(2 * window - 1) ** 2}, {num_heads}), got {tuple(bias_table.shape)}"
        )
    if qkv.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"qkv must be float32, float16 or bfloat16, got {qkv.dtype}")


# ---------------------------------------------------------------------------------------------------------
# Public function (a torch custom op, so torch.compile can trace it)
# ---------------------------------------------------------------------------------------------------------


@torch.library.custom_op("semask::window_attention", mutates_args=())
def _window_attention_op(
    qkv: Tensor, qkv_bias: Tensor, bias_table: Tensor, num_heads: int, window: int, shift: int, scale: float
) -> Tensor:
    check_launchable(_window_attn_fwd_kernel, "window_attention", qkv, qkv_bias, bias_table)
    return _launch(qkv, qkv_bias, bias_table, num_heads, window, shift, scale)


@_window_attention_op.register_fake
def _window_attention_fake(
    qkv: Tensor, qkv_bias: Tensor, bias_table: Tensor, num_heads: int, window: int, shift: int, scale: float
) -> Tensor:
    b, h, w, c3 = qkv.shape
    return qkv.new_empty((b, h, w, c3 // 3))


def window_attention(
    qkv: Tensor, qkv_bias: Tensor, bias_table: Tensor, num_heads: int, window: int, shift: int, scale: float
) -> Tensor:
    """Fused (shifted-)window attention of a Swin block (Triton); same result as :func:`window_attention_ref`.

    Runs the Triton kernel when the inputs are CUDA tensors, or on the CPU when ``TRITON_INTERPRET=1`` was
    set before the module was imported. Registered as ``torch.ops.semask.window_attention``.

    Args:
        qkv: (B, H, W, 3C) float32/float16/bfloat16 output of the qkv Linear on the normalised, unpadded
            map; channels ``[q heads | k heads | v heads]``. Any strides.
        qkv_bias: (3C,) the qkv Linear's bias (q, k, v of the zero-padded tokens).
        bias_table: ((2w-1)², num_heads) relative position bias table.
        num_heads: number of heads.
        window: window size w (7 or 12 in SeMask).
        shift: 0, or the cyclic shift in [1, w) (w // 2 for odd blocks).
        scale: query scale, normally head_dim ** -0.5.

    Returns:
        (B, H, W, C) tensor of ``qkv``'s dtype: attention output with heads concatenated head-major.

    Raises:
        ValueError: inconsistent shapes or arguments.
        RuntimeError: Triton missing, or CPU tensors without the interpreter.
    """
    _validate(qkv, qkv_bias, bias_table, num_heads, window, shift)
    check_launchable(_window_attn_fwd_kernel, "window_attention", qkv, qkv_bias, bias_table)
    return torch.ops.semask.window_attention(qkv, qkv_bias, bias_table, num_heads, window, shift, float(scale))
