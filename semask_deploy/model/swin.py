"""Swin Transformer parts of SeMask: patch embedding, shifted-window attention, block, patch merging.

Semantics follow the official Swin segmentation backbone exactly (DESIGN §2):

* the map is normalised first, then zero-padded right/bottom to a multiple of the window, so padded
  tokens are zeros *after* the norm (their q, k, v equal the qkv bias) and take part as keys, unmasked;
* odd blocks roll the PADDED map by −⌊w/2⌋ and add −100 between tokens of different regions, the regions
  being computed on the padded size; a map smaller than the window is still padded and shifted;
* relative position bias from a ((2w−1)², heads) table, q scaled by head_dim^-0.5.

Three attention backends share the parameters: ``eager`` (the reference math, written like the official
code), ``sdpa`` (``F.scaled_dot_product_attention`` with the bias and mask folded into one additive
tensor that is cached per padded size) and ``triton`` (a fused kernel that reads the unpadded map).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fast
from ._tracing import is_tracing


def relative_position_index(window: int) -> Tensor:
    """Index into the ((2w−1)², heads) bias table for every pair of tokens in a window.

    Returns:
        int64 tensor (w², w²).
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    flat = coords.flatten(1)  # 2, w²
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()  # w², w², 2
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1)


def padded_size(size: int, multiple: int) -> int:
    """``size`` rounded up to a multiple of ``multiple`` (works on symbolic sizes too)."""
    return (size + multiple - 1) // multiple * multiple


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, Hp, Wp, C) → (B·nW, w·w, C), windows in row-major order."""
    b, hp, wp, c = x.shape
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: Tensor, window: int, hp: int, wp: int) -> Tensor:
    """(B·nW, w·w, C) → (B, Hp, Wp, C); inverse of :func:`window_partition`."""
    c = windows.shape[-1]
    x = windows.view(-1, hp // window, wp // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, c)


def shift_region_mask(hp: int, wp: int, window: int, shift: int, device: torch.device) -> Tensor:
    """The official −100 mask of a shifted block, computed on the padded grid.

    Region ids use slices [0, Hp−w), [Hp−w, Hp−shift), [Hp−shift, Hp) on H and W; expressed with
    comparisons instead of slice assignment so it traces with symbolic (dynamic) sizes.

    Returns:
        float32 (nW, w², w²) with 0 inside a region and −100 across regions.
    """
    ih = torch.arange(hp, device=device)
    iw = torch.arange(wp, device=device)
    rh = (ih >= hp - window).long() + (ih >= hp - shift).long()
    rw = (iw >= wp - window).long() + (iw >= wp - shift).long()
    ids = (rh[:, None] * 3 + rw[None, :]).view(1, hp, wp, 1).float()
    win = window_partition(ids, window).squeeze(-1)  # nW, w²
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, torch.full_like(diff, -100.0), torch.zeros_like(diff))


def window_gather_index(h: int, w: int, window: int, shift: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Pad + cyclic shift + window partition (and their inverse) as two index vectors.

    ``gather[p]`` is the token (row-major in the unpadded H×W map) that lands at position ``p`` of the
    windowed layout (windows row-major, tokens row-major inside), or ``H·W`` for a padded position (a zero row
    appended to the tokens). ``inverse[t]`` is the windowed position of token ``t`` after the reverse shift.
    One ``index_select`` each way replaces pad → roll → partition and reverse → roll → crop (six copies).

    Returns:
        int64 (nW·w²,) and (H·W,).
    """
    hp, wp = padded_size(h, window), padded_size(w, window)
    r = torch.arange(hp, device=device)
    c = torch.arange(wp, device=device)
    # windowed layout position (wr, wc, i, j) ↔ padded-grid coordinate (wr·w + i, wc·w + j)
    rows = r.view(hp // window, 1, window, 1).expand(-1, wp // window, -1, window)
    cols = c.view(1, wp // window, 1, window).expand(hp // window, -1, window, -1)
    src_r, src_c = (rows + shift) % hp, (cols + shift) % wp  # roll by −shift: new[i] = old[i + shift]
    inside = (src_r < h) & (src_c < w)
    gather = torch.where(inside, src_r * w + src_c, torch.full_like(src_r, h * w)).reshape(-1)
    pos = torch.arange(gather.numel(), device=device)
    inverse = torch.empty(h * w, dtype=torch.long, device=device)
    inverse[gather[inside.reshape(-1)]] = pos[inside.reshape(-1)]
    return gather, inverse


def head_major_index(
    gather: Tensor, inverse: Tensor, tokens: int, batch: int, heads: int, n: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Row indices that move qkv rows between token order and the windowed, head-major layout.

    With qkv (B, T, 3·heads·d) viewed as rows of d floats, row ``((b·T + t)·3 + s)·heads + h`` holds part
    ``s`` (q, k or v) of head ``h`` of token ``t``.

    Args:
        gather, inverse: from :func:`window_gather_index` (``gather`` holds T for a padded slot).
        tokens: T = H·W.
        batch, heads, n: batch size, heads, tokens per window.

    Returns:
        rows: (3·B·nW·heads·n,) source row of every slot of the (3, B, nW·heads, n, d) layout (padded slots
            point at a real row and are overwritten);
        pad_slots: (P,) the padded slots; pad_src: (P,) their row s·heads + h in the (3·heads, d) qkv bias;
        back: (B·T·heads,) the slot of the attention output (B, nW·heads, n, d) for each (b, t, h) row.
    """
    device = gather.device
    nw = gather.numel() // n
    part = torch.arange(3, device=device).view(3, 1, 1, 1, 1)
    img = torch.arange(batch, device=device).view(1, batch, 1, 1, 1)
    head = torch.arange(heads, device=device).view(1, 1, 1, heads, 1)
    tok = gather.view(1, 1, nw, 1, n)
    padded = (tok == tokens).expand(3, batch, nw, heads, n).reshape(-1)
    rows = (((img * tokens + tok.clamp(max=tokens - 1)) * 3 + part) * heads + head).reshape(-1)
    pad_slots = padded.nonzero().squeeze(1)
    pad_src = (part * heads + head).expand(3, batch, nw, heads, n).reshape(-1)[pad_slots]
    win, pos = (inverse // n).view(1, tokens, 1), (inverse % n).view(1, tokens, 1)
    img, head = img.view(batch, 1, 1), head.view(1, 1, heads)
    back = (((img * nw + win) * heads + head) * n + pos).reshape(-1)
    return rows, pad_slots, pad_src, back


def pad_with_vector(x: Tensor, hp: int, wp: int, value: Tensor | None) -> Tensor:
    """Pad (B, H, W, D) right/bottom to (B, Hp, Wp, D) with the vector ``value`` (D,) (zeros when None).

    A zero-padded token passed through a Linear equals its bias, so padding a projection's output with the
    bias equals projecting the zero-padded input, without the GEMM over the padding. Concatenation of the
    broadcast vector (not ``pad(x − v) + v``): no extra pass over the map.
    """
    if value is None:
        return F.pad(x, (0, 0, 0, wp - x.shape[2], 0, hp - x.shape[1]))
    b, h, w, d = x.shape
    value = value.to(x.dtype)
    x = torch.cat([x, value.expand(b, h, wp - w, d)], dim=2)
    return torch.cat([x, value.expand(b, hp - h, wp, d)], dim=1)


class PatchEmbed(nn.Module):
    """Pad W then H to a multiple of the patch, Conv patch×patch stride patch, LayerNorm.

    Keys: ``proj.weight/bias``, ``norm.weight/bias``.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        """(B, 3, H, W) → tokens (B, Hp·Wp, C) and the token grid size (⌈H/p⌉, ⌈W/p⌉)."""
        p = self.patch_size
        h, w = x.shape[2], x.shape[3]
        # padded_size(·) − size rather than (p − w % p) % p: the same value, but a far simpler symbolic
        # expression when traced with dynamic H, W (torch.export's guard solving was minutes slower).
        x = F.pad(x, (0, padded_size(w, p) - w, 0, padded_size(h, p) - h))
        x = self.proj(x)
        gh, gw = x.shape[2], x.shape[3]
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x, gh, gw


class Mlp(nn.Module):
    """Linear → GELU (exact erf) → Linear. Keys ``fc1``, ``fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head attention inside w×w windows with a relative position bias.

    Keys: ``relative_position_bias_table`` ((2w−1)², heads), ``relative_position_index`` (w², w²),
    ``qkv.weight/bias`` (3C, C), ``proj.weight/bias``.
    """

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.dim = dim
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_bias(self) -> Tensor:
        """The gathered bias, (heads, w², w²)."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1).contiguous()

    def forward_eager(self, windows: Tensor, mask: Tensor | None) -> Tensor:
        """The reference math. windows (B·nW, w², C), mask (nW, w², w²) or None → (B·nW, w², C)."""
        bw, n, c = windows.shape
        qkv = self.qkv(windows).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1) + self.relative_bias().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            # the region mask is built in float32; a half-precision model keeps its own dtype
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask.to(attn.dtype).unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(out)

    def forward_sdpa(self, windows: Tensor, bias: Tensor) -> Tensor:
        """Fused path. windows (B·nW, w², C), bias (nW·heads, w², w²) = relative bias (+ mask)."""
        return fast.linear(self.proj, self.attend(fast.linear(self.qkv, windows), bias))

    def attend(self, qkv: Tensor, bias: Tensor) -> Tensor:
        """softmax(q·kᵀ·scale + bias)·v per window and head, heads merged; before ``proj``.

        Args:
            qkv: (B·nW, w², 3C), the ``qkv`` projection of the windowed tokens.
            bias: (nW·heads, w², w²).

        Returns:
            (B·nW, w², C).
        """
        bw, n, c3 = qkv.shape
        c = c3 // 3
        nwh = bias.shape[0]
        if is_tracing():
            return self._attend_traced(qkv, bias)
        qkv = qkv.view(-1, nwh // self.num_heads, n, 3, self.num_heads, c // self.num_heads)
        qkv = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, -1, nwh, n, c // self.num_heads)
        q, k, v = qkv[0], qkv[1], qkv[2]  # B, nW·heads, n, d (contiguous slices of one buffer)
        out = fast.window_attention_core(q, k, v, bias, self.scale)
        out = out.view(-1, nwh // self.num_heads, self.num_heads, n, c // self.num_heads)
        return out.permute(0, 1, 3, 2, 4).reshape(bw, n, c)

    def _attend_traced(self, qkv: Tensor, bias: Tensor) -> Tensor:
        """:meth:`attend` as plain MatMul/Add/Softmax for export, with the fewest copies ONNX runtimes make.

        q, k and v are split from the (…, 3, heads, d) layout and each transposed once (k straight to
        (…, d, n)), the scale is applied to the q·kᵀ product (ONNX Runtime folds it into the MatMul) and the
        bias is broadcast over the batch. SDPA's exported form instead permutes the whole qkv block, copies it
        again to split it, transposes k and scales q and k separately.
        """
        bw, n, c3 = qkv.shape
        heads = self.num_heads
        d = c3 // (3 * heads)
        nw = bias.shape[0] // heads
        q, k, v = qkv.view(bw, n, 3, heads, d).unbind(2)
        scores = (q.transpose(1, 2) @ k.permute(0, 2, 3, 1)) * self.scale  # B·nW, heads, n, n
        scores = scores.view(-1, nw, heads, n, n) + bias.view(1, nw, heads, n, n)
        attn = scores.view(bw, heads, n, n).softmax(dim=-1)
        return (attn @ v.transpose(1, 2)).transpose(1, 2).reshape(bw, n, heads * d)


# Traced graphs compute the qkv projection on the real tokens and pad its output with the qkv bias (what a
# zero-padded token projects to) when the channel count makes the saved GEMM work (4·C² multiply-adds per
# padded token, qkv and proj) outweigh the two extra copies of the 3C-wide map (6·C floats per token). For
# SeMask-T at 512×512 (windows 8 / 20 / 20 / 72 % padding at 96 / 192 / 384 / 768 channels) that is a clear
# win from 384 channels, a loss at 96; OpenVINO's FullyConnected time fell from 611 to 580 ms (1 thread).
QKV_BEFORE_PAD_MIN_CHANNELS = 256


def drop_path(x: Tensor, rate: float) -> Tensor:
    """Stochastic depth (training only): each sample's residual branch is dropped with probability ``rate``
    and the kept ones scaled by 1/(1 − rate), as in the official Swin (timm ``DropPath``).

    Args:
        x: (B, …) the residual branch's output.
        rate: drop probability in [0, 1).
    """
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class SwinBlock(nn.Module):
    """Pre-norm Swin block: x + WindowAttention(LN1(x)); x + MLP(LN2(x)).

    Keys: ``norm1``, ``attn.*``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``.
    """

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.backend = "eager"
        self.drop_path = 0.0  # stochastic depth rate while training (set by the trainer; no parameters)
        self._bias_cache: dict[tuple, Tensor] = {}
        self._index_cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def _sdpa_bias(self, hp: int, wp: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Relative bias + shift mask as one (nW·heads, w², w²) tensor, cached per padded size.

        The cache is used only outside autograd and tracing, and is keyed on the bias table's version
        so loading new weights invalidates it.
        """
        table = self.attn.relative_position_bias_table
        cacheable = not (torch.is_grad_enabled() and table.requires_grad) and not is_tracing()
        cacheable = cacheable and not table.is_inference()  # inference tensors have no version counter
        # The key is built only when caching: data_ptr() fails on the fake tensors of torch.export.
        key = (hp, wp, device, dtype, table._version, table.data_ptr()) if cacheable else None
        cached = self._bias_cache.get(key) if cacheable else None  # one lookup: safe when threads share the model
        if cached is not None:
            return cached
        w, heads = self.window, self.attn.num_heads
        nw = (hp // w) * (wp // w)
        bias = self.attn.relative_bias().to(dtype).unsqueeze(0)  # 1, heads, n, n
        if self.shift:
            bias = bias + shift_region_mask(hp, wp, w, self.shift, device).to(dtype).unsqueeze(1)
        else:
            bias = bias.expand(nw, -1, -1, -1)
        bias = bias.reshape(nw * heads, w * w, w * w)
        if cacheable:
            self._bias_cache.clear()  # keep one size: inference usually repeats it
            self._bias_cache[key] = bias
        return bias

    def _attention(self, xn: Tensor) -> Tensor:
        """Attention over the normalised map xn (B, H, W, C) → (B, H, W, C) after ``proj``."""
        b, h, w_, c = xn.shape
        win, shift = self.window, self.shift
        if self.backend == "triton":
            from ..kernels.window_attention import window_attention

            attn = self.attn
            qkv = fast.linear(attn.qkv, xn)
            out = window_attention(
                qkv, attn.qkv.bias, attn.relative_position_bias_table, attn.num_heads, win, shift, attn.scale
            )
            return fast.linear(attn.proj, out)
        hp, wp = padded_size(h, win), padded_size(w_, win)
        if self.backend == "sdpa" and not is_tracing():
            return self._attention_gathered(xn, hp, wp)
        qkv_first = self.backend != "eager" and c >= QKV_BEFORE_PAD_MIN_CHANNELS
        if qkv_first:  # traced: qkv on the real tokens only; a zero-padded token's q, k, v are the qkv bias
            x = pad_with_vector(fast.linear(self.attn.qkv, xn), hp, wp, self.attn.qkv.bias)
        else:
            x = F.pad(xn, (0, 0, 0, wp - w_, 0, hp - h))
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        if not qkv_first and self.backend != "eager":  # after the roll: it then moves C, not 3C, channels
            x = fast.linear(self.attn.qkv, x)
        windows = window_partition(x, win)
        if self.backend == "eager":
            mask = shift_region_mask(hp, wp, win, shift, xn.device) if shift else None
            out = self.attn.forward_eager(windows, mask)
        else:
            out = self.attn.attend(windows, self._sdpa_bias(hp, wp, xn.device, xn.dtype))
        x = window_reverse(out, win, hp, wp)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = x[:, :h, :w_, :]
        return x if self.backend == "eager" else fast.linear(self.attn.proj, x)

    def _attention_gathered(self, xn: Tensor, hp: int, wp: int) -> Tensor:
        """The sdpa path: pad/shift/partition/head split done by one row gather and undone by another.

        ``qkv`` and ``proj`` run on the H·W real tokens only. The qkv output, seen as rows of head_dim floats
        (token, q|k|v, head), is gathered straight into the (3, B, nW·heads, w², d) layout the attention
        GEMMs read, and the attention output straight back to token order (no roll, pad, permute or
        concatenation copies). A zero-padded token's q, k, v are the qkv bias, so padded slots are filled
        from it — at 512×512 the stage-3 windows are 42 % padding.
        """
        b, h, w_, c = xn.shape
        attn = self.attn
        heads, n = attn.num_heads, self.window * self.window
        d = c // heads
        key = (b, h, w_, xn.device)
        index = self._index_cache.get(key)
        if index is None:
            self._index_cache.clear()
            gather, inverse = window_gather_index(h, w_, self.window, self.shift, xn.device)
            index = self._index_cache[key] = head_major_index(gather, inverse, h * w_, b, heads, n)
        rows, pad_slots, pad_src, back = index
        qkv = fast.linear(attn.qkv, xn.reshape(b, h * w_, c))
        windows = qkv.view(-1, d).index_select(0, rows)
        if pad_slots.numel():
            bias = attn.qkv.bias if attn.qkv.bias is not None else qkv.new_zeros(3 * c)
            windows.index_copy_(0, pad_slots, bias.to(qkv.dtype).view(3 * heads, d).index_select(0, pad_src))
        q, k, v = windows.view(3, b, -1, n, d)
        out = fast.window_attention_core(q, k, v, self._sdpa_bias(hp, wp, xn.device, xn.dtype), attn.scale)
        out = out.reshape(-1, d).index_select(0, back).view(b, h * w_, c)
        return fast.linear(attn.proj, out).view(b, h, w_, c)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        """x (B, H·W, C) → (B, H·W, C)."""
        b, n, c = x.shape
        attn = self._attention(self.norm1(x).view(b, h, w, c)).reshape(b, n, c)
        if self.training and self.drop_path > 0:
            x = x + drop_path(attn, self.drop_path)
            return x + drop_path(self.mlp(self.norm2(x)), self.drop_path)
        if self.backend == "eager":
            x = x + attn
            return x + self.mlp(self.norm2(x))
        # Fast path: GELU in place on fc1's output; residuals summed into the fresh branch outputs.
        reuse = fast.may_reuse(x, attn)
        x = attn.add_(x) if reuse else x + attn
        y = fast.linear(self.mlp.fc2, fast.linear(self.mlp.fc1, self.norm2(x), gelu=True))
        return y.add_(x) if reuse else x + y


class PatchMerging(nn.Module):
    """Pad H, W to even; concat the 2×2 neighbours on channels; LN(4C); Linear 4C→2C (no bias).

    Keys: ``reduction.weight``, ``norm.weight/bias``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)
        self.backend = "eager"

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        """x (B, H·W, C) → (B, ⌈H/2⌉·⌈W/2⌉, 2C)."""
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        if is_tracing():
            # Export: the same 2×2 gather as a reshape (channel order x00, x10, x01, x11). Strided slices
            # of a symbolic size give ⌈·/2⌉ vs ⌊·/2⌋ sizes that torch.export cannot prove equal.
            h2, w2 = (h + 1) // 2, (w + 1) // 2
            x = F.pad(x, (0, 0, 0, 2 * w2 - w, 0, 2 * h2 - h))
            x = x.view(b, h2, 2, w2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h2 * w2, 4 * c)
            return self.reduction(self.norm(x))
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        x = self.norm(x.view(b, -1, 4 * c))
        return self.reduction(x) if self.backend == "eager" else fast.linear(self.reduction, x)

