"""Inference-only fast paths used by the ``sdpa`` and ``triton`` backends (never by ``eager``).

* :func:`conv_bn_relu` — the head's Conv → BN → ReLU with BN folded into the conv (running statistics),
  channels-last, and on the CPU oneDNN's fused conv+ReLU with a pre-packed weight, or Winograd F(4×4, 3×3)
  (:mod:`.winograd`) where that measured faster.
* :func:`linear` — every Linear of the backbone through oneDNN's GEMM (``mkldnn::_linear_pointwise``) with
  the MLP's GELU applied in place; on the CPU it measured 1.05–1.3× faster than ``F.linear``'s MKL path
  per layer and needs no packed copy of the weight.
* :func:`fused_linear` — several Linears of one input (the semantic q, k, v) as one GEMM.
* :func:`conv1x1` — the classifier as a GEMM over channels-last pixels (PyTorch's CPU 1×1 conv on
  channels-last input takes a slow path); its channels-last output also makes the final resize faster.
* :func:`window_attention_core` — softmax(q·kᵀ·scale + bias) · v with the cached bias(+mask) added by the
  GEMM itself (``baddbmm``) on the CPU, where PyTorch's SDPA runs an unfused kernel for 49/144-token
  windows that measured slower; ``F.scaled_dot_product_attention`` on CUDA.
* :func:`resize_argmax` — ``predict``'s bilinear resize + argmax a few output rows at a time, never
  materialising the N×K×H×W logits (at 512×512×150, 1 thread: 1.7× faster than resize-then-argmax on
  channels-last logits, 4× faster than on NCHW logits).

Each cache is keyed on the parameters' storage and version, so loading new weights (``load_state_dict``, an
optimizer step, any in-place write under ``no_grad``) invalidates it; nothing is cached while autograd records
or while the model is traced for export. Writes through ``.data`` bypass the version counter: the segmentors
clear these caches in ``eval()``/``train()`` and ``set_attention_backend``, and :func:`clear_weight_caches`
clears them at any time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import winograd
from ._tracing import is_tracing


def _inference_cpu_fp32(x: Tensor, *params: Tensor) -> bool:
    """True when a frozen-weight CPU fast path is allowed for this call."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or is_tracing() or torch.is_autocast_enabled("cpu"):
        return False
    return not (torch.is_grad_enabled() and any(p.requires_grad for p in params))


def _version_key(*tensors: Tensor | None) -> tuple:
    # Inference tensors (parameters created or converted inside torch.inference_mode) have no version
    # counter: give them a key that never matches, so nothing stale is reused (recomputed per call).
    return tuple(
        None if t is None else object() if t.is_inference() else (t.data_ptr(), t._version) for t in tensors
    )


class TransientCache(dict):
    """A weight-derived cache kept in a module's ``__dict__``: copies and pickles of the module get it empty.

    Some entries are oneDNN-packed weights (opaque tensors without storage), which ``copy.deepcopy``,
    ``pickle`` and ``torch.save(model)`` cannot handle; every entry is rebuilt on the next call anyway.
    """

    def __reduce__(self) -> tuple:
        return (TransientCache, ())

    def __deepcopy__(self, memo: dict) -> "TransientCache":
        return TransientCache()

    def __copy__(self) -> "TransientCache":
        return TransientCache()


def clear_weight_caches(module: nn.Module) -> None:
    """Drop every weight-derived cache of the fast paths under ``module`` (fused and folded weights, attention
    biases): needed only after writing parameters through ``.data``, which does not bump their versions."""
    for m in module.modules():
        for name in ("_semask_fused", "_semask_folded"):
            m.__dict__.pop(name, None)
        bias_cache = m.__dict__.get("_bias_cache")
        if isinstance(bias_cache, dict):
            bias_cache.clear()


class WeightCachesCleared(nn.Module):
    """Base of the segmentors: ``train()``/``eval()`` also drop the fast paths' weight-derived caches."""

    def clear_caches(self) -> "WeightCachesCleared":
        """Drop the fast paths' weight-derived caches (folded BN, fused q/k/v, attention biases). They follow
        ``load_state_dict`` and in-place updates by themselves; only writes through ``.data`` (which do not bump
        a tensor's version) need this — or ``eval()``/``train()``/``set_attention_backend``, which call it."""
        clear_weight_caches(self)
        return self

    def train(self, mode: bool = True) -> "WeightCachesCleared":
        """``nn.Module.train``; also clears the fast paths' caches (see :meth:`clear_caches`)."""
        super().train(mode)
        self.clear_caches()
        return self


def _folded_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Conv weight and bias with the eval-mode BatchNorm folded in."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return weight.detach(), bias.detach()


_MKLDNN_CONV = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
_MKLDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(layer: nn.Linear, x: Tensor, gelu: bool = False) -> Tensor:
    """``layer(x)``, followed by the exact (erf) GELU when ``gelu``; x (..., in) → (..., out).

    CPU fp32 inference runs oneDNN's GEMM on the module's own weight and PyTorch's GELU in place on its
    output (oneDNN's fused erf-GELU post-op measured 1.2–1.5× slower than the two steps on AVX2);
    anything else (CUDA, autograd, tracing) runs ``F.linear`` + ``F.gelu``.
    """
    if _MKLDNN_LINEAR and _inference_cpu_fp32(x, layer.weight):
        y = torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "none", [], "")
        return torch.ops.aten.gelu_(y) if gelu else y
    if is_tracing() and x.dim() > 2:
        # exported as Reshape → Gemm → Reshape: ONNX Runtime fuses a 2-D MatMul + Add only (dynamic shapes)
        y = layer(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], layer.out_features)
    else:
        y = layer(x)  # as a module call, so hooks (FlopCounterMode, profilers) see the layer
    return F.gelu(y) if gelu else y


def fused_linear(layers: list[nn.Linear], x: Tensor) -> list[Tensor]:
    """``[layer(x) for layer in layers]`` as ONE GEMM over the concatenated weights (read x once).

    The concatenated weight is cached on the first layer, keyed on every parameter's storage and version;
    outside CPU fp32 inference the layers run one by one. The outputs are column slices of one buffer.
    """
    first = layers[0]
    if not (_MKLDNN_LINEAR and _inference_cpu_fp32(x, *(l.weight for l in layers))) or any(
        l.bias is None for l in layers
    ):
        return [l(x) for l in layers]
    key = _version_key(*(t for l in layers for t in (l.weight, l.bias)))
    cache = first.__dict__.setdefault("_semask_fused", TransientCache())
    if cache.get("key") != key:
        cache.update(key=key, weight=torch.cat([l.weight.detach() for l in layers]),
                     bias=torch.cat([l.bias.detach() for l in layers]))
    out = torch.ops.mkldnn._linear_pointwise(x, cache["weight"], cache["bias"], "none", [], "")
    return list(out.split([l.out_features for l in layers], dim=-1))


def may_reuse(*tensors: Tensor) -> bool:
    """True when results may be accumulated in place: no autograd graph and no tracing."""
    return not is_tracing() and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def conv_bn_relu(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """ReLU(BN(conv(x))) in eval mode with BN folded into the conv; x (N, Cin, H, W), any memory format."""
    if bn.training or is_tracing() or (torch.is_grad_enabled() and conv.weight.requires_grad):
        return F.relu(bn(conv(x)))
    cache = conv.__dict__.setdefault("_semask_folded", TransientCache())
    key = (x.device, x.dtype, *_version_key(conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var))
    entry = cache.get(key)
    use_mkldnn = _MKLDNN_CONV and _inference_cpu_fp32(x, conv.weight)
    if entry is None:
        cache.clear()
        weight, bias = _folded_conv_bn(conv, bn)
        weight = weight.to(x.dtype).contiguous(memory_format=torch.channels_last)
        entry = cache[key] = {"weight": weight, "bias": bias.to(x.dtype), "packed": {}}
    if use_mkldnn and _winograd_pays(conv, x):
        if "winograd" not in entry:
            entry["winograd"] = winograd.transform_weight(entry["weight"])
        return winograd.conv3x3(x, entry["winograd"], entry["bias"], relu=True)
    x = x.contiguous(memory_format=torch.channels_last)
    if use_mkldnn:
        shape = tuple(x.shape)
        packed = entry["packed"].get(shape)
        if packed is None:
            entry["packed"].clear()
            packed = entry["packed"][shape] = torch.ops.mkldnn._reorder_convolution_weight(
                entry["weight"], list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, list(shape)
            )
        return torch.ops.mkldnn._convolution_pointwise(
            x, packed, entry["bias"], list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
            "relu", [], "",
        )
    return F.relu(F.conv2d(x, entry["weight"], entry["bias"], conv.stride, conv.padding, conv.dilation, conv.groups))


def _winograd_pays(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether Winograd F(4×4, 3×3) beats oneDNN's direct convolution for this conv and input.

    Measured (AMD EPYC, 1 and 2 threads): faster from 192 input channels on maps of at least 32×32; with 96
    input channels or on small maps its transforms cost more than they save.
    """
    shape_ok = conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
    shape_ok = shape_ok and conv.dilation == (1, 1) and conv.groups == 1
    return shape_ok and conv.in_channels >= 192 and x.shape[2] * x.shape[3] >= 1024


def window_attention_core(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float) -> Tensor:
    """softmax(q·kᵀ·scale + bias) · v.

    Args:
        q, k, v: (B, nW·heads, n, d).
        bias: (nW·heads, n, n), relative position bias plus shift mask.
        scale: head_dim^-0.5.

    Returns:
        (B, nW·heads, n, d).
    """
    if q.is_cuda or is_tracing() or q.dtype != torch.float32:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    b, g, n, d = q.shape
    scores = torch.baddbmm(
        bias.repeat(b, 1, 1) if b > 1 else bias,
        q.reshape(b * g, n, d),
        k.reshape(b * g, n, d).transpose(1, 2),
        alpha=scale,
    )
    attn = torch.softmax(scores, dim=-1)
    return torch.bmm(attn, v.reshape(b * g, n, d)).view(b, g, n, d)


def unscaled_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q·kᵀ) · v for many small windows: q, k (G, n, K), v (G, n, C) → (G, n, C).

    Plain batched GEMMs on the CPU (PyTorch's CPU SDPA is slower for 49/144-token windows) and when traced;
    ``F.scaled_dot_product_attention(scale=1)`` on CUDA.
    """
    if is_tracing():  # exported as Transpose/MatMul/Softmax/MatMul (ONNX Runtime fuses the transpose)
        return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
    if q.is_cuda or q.dtype != torch.float32:
        return F.scaled_dot_product_attention(q, k, v, scale=1.0)
    return torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1), v)


def unscaled_sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, scale=1)`` for 3-D (G, n, K/C) inputs.

    When traced for export the inputs get a unit head axis: the ONNX exporter translates only 4-D SDPA
    ("only 4D query, key, and value are supported"); contiguous, as DESIGN §7 notes for the dynamo exporter.
    """
    if is_tracing() and q.dim() == 3:
        q4, k4, v4 = (t.unsqueeze(1).contiguous() for t in (q, k, v))
        return F.scaled_dot_product_attention(q4, k4, v4, scale=1.0).squeeze(1)
    return F.scaled_dot_product_attention(q, k, v, scale=1.0)



def conv1x1(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 1×1 convolution as a Linear over the pixels of a channels-last map; output channels-last.

    Args:
        conv: a 1×1, stride-1, ungrouped convolution.
        x: (N, C, H, W) in channels-last memory format.

    Returns:
        (N, K, H, W), channels-last.
    """
    if is_tracing() or not x.is_contiguous(memory_format=torch.channels_last):
        return conv(x)
    weight = conv.weight.view(conv.out_channels, conv.in_channels)
    if _MKLDNN_LINEAR and _inference_cpu_fp32(x, weight):
        out = torch.ops.mkldnn._linear_pointwise(x.permute(0, 2, 3, 1), weight, conv.bias, "none", [], "")
    else:
        out = F.linear(x.permute(0, 2, 3, 1), weight, conv.bias)
    return out.permute(0, 3, 1, 2)


def _linear_taps(src_size: int, dst_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Source indices and weights of a bilinear (align_corners=False) resize along one axis.

    PyTorch's rule in fp32: ``scale = src/dst``, ``s = max(scale·(d + 0.5) − 0.5, 0)``, ``i0 = min(⌊s⌋, src−1)``,
    ``i1 = i0 + (i0 < src−1)``, ``l1 = s − i0``, ``l0 = 1 − l1``.

    Returns:
        i0, i1 (dst,) int64 and l0, l1 (dst,) float32.
    """
    scale = torch.tensor(src_size, dtype=torch.float32) / torch.tensor(dst_size, dtype=torch.float32)
    s = ((torch.arange(dst_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = s.long().clamp_(max=src_size - 1)
    i1 = i0 + (i0 < src_size - 1).long()
    l1 = (s - i0).clamp_(0, 1)
    return i0.to(device), i1.to(device), (1 - l1).to(device), l1.to(device)


def resize_argmax(logits: Tensor, size: tuple[int, int], rows_per_chunk: int = 8) -> Tensor:
    """``F.interpolate(logits, size, mode="bilinear", align_corners=False).argmax(1)`` without the K×H×W buffer.

    The resize is separable: each chunk of output rows resizes the few input rows it needs along W
    (``F.interpolate`` with H unchanged, an exact copy in H), blends them along H with one small GEMM
    (two non-zero weights per output row) and takes the argmax over the classes while the chunk is still
    in cache. Labels equal the unfused reference except where two classes tie to within float rounding.

    Args:
        logits: (N, K, h, w) float32.
        size: output (H, W).
        rows_per_chunk: output rows per chunk (the working buffer is rows·W·K floats per image).

    Returns:
        (N, H, W) int64 labels.
    """
    n, k, h, w = logits.shape
    out_h, out_w = int(size[0]), int(size[1])
    y0s, y1s, ly0, ly1 = _linear_taps(h, out_h, logits.device)
    labels = torch.empty(n, out_h, out_w, dtype=torch.long, device=logits.device)
    x = logits.contiguous(memory_format=torch.channels_last)
    for start in range(0, out_h, rows_per_chunk):
        stop = min(start + rows_per_chunk, out_h)
        first, last = int(y0s[start]), int(y1s[stop - 1])
        rows = x[:, :, first : last + 1]
        # (N, K, r, W) channels-last = (N, r, W, K) in memory: the classes of a pixel are contiguous
        rows = F.interpolate(rows, size=(rows.shape[2], out_w), mode="bilinear", align_corners=False)
        blend = torch.zeros(stop - start, last + 1 - first, dtype=x.dtype, device=x.device)
        span = torch.arange(stop - start, device=x.device)
        blend.index_put_((span, y0s[start:stop] - first), ly0[start:stop].to(x.dtype), accumulate=True)
        blend.index_put_((span, y1s[start:stop] - first), ly1[start:stop].to(x.dtype), accumulate=True)
        chunk = torch.matmul(blend, rows.permute(0, 2, 3, 1).reshape(n, last + 1 - first, out_w * k))
        torch.argmax(chunk.view(n, stop - start, out_w, k), dim=-1, out=labels[:, start:stop])
    return labels
