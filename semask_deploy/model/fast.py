"""Inference-only fast paths used by the ``sdpa`` and ``triton`` backends (never by ``eager``).

* :func:`conv_bn_relu` — the head's Conv → BN → ReLU with BN folded into the conv (running statistics),
  channels-last, and on the CPU oneDNN's fused conv+ReLU with a pre-packed weight.
* :func:`conv1x1` — the classifier as a GEMM over channels-last pixels (PyTorch's CPU 1×1 conv on
  channels-last input takes a slow path); its channels-last output also makes the final resize faster.
* :func:`window_attention_core` — softmax(q·kᵀ·scale + bias) · v with the cached bias(+mask) added by the
  GEMM itself (``baddbmm``) on the CPU, where PyTorch's SDPA runs an unfused kernel for 49/144-token
  windows that measured slower; ``F.scaled_dot_product_attention`` on CUDA.

Each cache is keyed on the parameters' storage and version, so loading new weights invalidates it; nothing
is cached while autograd records or while the model is traced for export.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._tracing import is_tracing


def _inference_cpu_fp32(x: Tensor, *params: Tensor) -> bool:
    """True when a frozen-weight CPU fast path is allowed for this call."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or is_tracing():
        return False
    return not (torch.is_grad_enabled() and any(p.requires_grad for p in params))


def _version_key(*tensors: Tensor | None) -> tuple:
    return tuple((t.data_ptr(), t._version) if t is not None else None for t in tensors)


def _folded_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Conv weight and bias with the eval-mode BatchNorm folded in."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return weight.detach(), bias.detach()


_MKLDNN_CONV = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def conv_bn_relu(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """ReLU(BN(conv(x))) in eval mode with BN folded into the conv; x (N, Cin, H, W), any memory format."""
    if bn.training or is_tracing() or (torch.is_grad_enabled() and conv.weight.requires_grad):
        return F.relu(bn(conv(x)))
    cache = conv.__dict__.setdefault("_semask_folded", {})
    key = (x.device, x.dtype, *_version_key(conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var))
    entry = cache.get(key)
    use_mkldnn = _MKLDNN_CONV and _inference_cpu_fp32(x, conv.weight)
    if entry is None:
        cache.clear()
        weight, bias = _folded_conv_bn(conv, bn)
        weight = weight.to(x.dtype).contiguous(memory_format=torch.channels_last)
        entry = cache[key] = {"weight": weight, "bias": bias.to(x.dtype), "packed": {}}
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

    Plain batched GEMMs on the CPU (PyTorch's CPU SDPA is slower for 49/144-token windows);
    ``F.scaled_dot_product_attention(scale=1)`` on CUDA and when traced.
    """
    if is_tracing():
        return unscaled_sdpa(q, k, v)
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
    return F.linear(x.permute(0, 2, 3, 1), weight, conv.bias).permute(0, 3, 1, 2)
