"""The eager semantic attention keeps its unscaled q·kᵀ and softmax in fp32 in a half-precision model (DESIGN §2)."""

from __future__ import annotations

import pytest
import torch

from semask_deploy.model.semask import SemanticLayer


@pytest.mark.parametrize("mode", ["global", "window"])
def test_eager_fp16_large_scores_stay_finite(mode):
    torch.manual_seed(0)
    layer = SemanticLayer(dim=32, num_classes=150, mode=mode, window=7).eval()
    with torch.no_grad():
        sa = layer.class_injection[0]
        sa.gamma.fill_(1.0)
        sa.mlp_cls_q.weight.normal_(0, 8.0)
        sa.mlp_cls_k.weight.normal_(0, 8.0)  # |q·kᵀ| ~ 1e5 > 65504, the fp16 maximum
        x = torch.randn(1, 6 * 7, 32)
        xn = layer.norm1(x)
        assert (sa.mlp_cls_q(xn) @ sa.mlp_cls_k(xn).transpose(1, 2)).abs().max() > 65504
        want, _ = layer(x, 6, 7)
        layer.half()
        got, _ = layer(x.half(), 6, 7)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want, atol=0.05 * want.abs().max().item(), rtol=0)
