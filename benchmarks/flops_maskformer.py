"""FLOPs of the mask-classification models (Mask2Former, MaskFormer, FaPN, MSFaPN), by ``FlopCounterMode``.

The analytic per-layer model of :mod:`semask_deploy.benchmarks.flops` covers SeMask-FPN. For the
mask-classification family the count is taken from ``torch.utils.flop_counter.FlopCounterMode`` over the
model's ``eager`` forward (the reference math) with two formulas added for the ops it does not count,
in the same convention as the FPN analytic model (a GEMM/conv/matmul costs 2 × MACs; interpolation
7 FLOPs per output value):

* ``grid_sampler_2d`` — the deformable sampling of MSDeformAttn (every level, head and point) and of
  DCNv2 (FaPN): bilinear, 7 FLOPs per sampled output value;
* ``upsample_bilinear2d`` — mask upsampling to the padded size, attention-mask resizes, the pixel
  decoder's bilinear top-down path: 7 FLOPs per output value.

SDPA runs under the MATH backend (the fused CPU kernels count 0). Elementwise work (softmax, LayerNorm,
GroupNorm, sigmoid, the attention-weighted sum of MSDeformAttn's samples) is not counted, as for FPN.
Groups: ``backbone``, ``pixel_decoder``, ``transformer_decoder`` and ``postprocess`` (semantic inference).
"""

from __future__ import annotations

import copy
from typing import Any

INTERP_FLOPS_PER_VALUE = 7


def _per_output_value(*_args: Any, out_shape: Any = None, **_kwargs: Any) -> int:
    n = 1
    for s in out_shape:
        n *= int(s)
    return INTERP_FLOPS_PER_VALUE * n


def maskformer_flops(model: Any, height: int, width: int, batch: int = 1) -> dict[str, Any]:
    """Count the FLOPs of ``model(x)`` for an (N, 3, H, W) input.

    Args:
        model: a :class:`~semask_deploy.model.mask_former.MaskFormerSegmentor`.
        height, width, batch: the input (zeros; the count does not depend on values).

    Returns:
        ``{"total", "gemm", "interp", "groups": {group: FLOPs}, "modules": {module: inclusive FLOPs}}``.
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    interp_ops = {aten.grid_sampler_2d: _per_output_value, aten.upsample_bilinear2d: _per_output_value}
    # no parameter requires grad: a view of one (MaskFormer's query_pos) would otherwise reach the counter's module
    # tracker as a tensor that requires grad without a grad_fn, which it asserts against
    m = copy.deepcopy(model).float().cpu().eval().requires_grad_(False)
    m.set_attention_backend("eager")
    x = torch.zeros(batch, 3, height, width)
    counter = FlopCounterMode(display=False, depth=None, custom_mapping=interp_ops)
    with sdpa_kernel([SDPBackend.MATH]), torch.no_grad(), counter:
        m(x)
    root = type(m).__name__
    counts = counter.get_flop_counts()
    modules = {k[len(root) + 1:]: int(sum(v.values())) for k, v in counts.items() if k.startswith(root + ".")}
    total = int(counter.get_total_flops())
    interp = int(sum(v for op, v in counts.get("Global", {}).items() if op in interp_ops))
    groups = {
        "backbone": modules.get("backbone", 0),
        "pixel_decoder": modules.get("sem_seg_head.pixel_decoder", 0),
        "transformer_decoder": modules.get("sem_seg_head.predictor", 0),
    }
    groups["postprocess"] = total - sum(groups.values())
    return {"total": total, "gemm": total - interp, "interp": interp, "groups": groups, "modules": modules}
