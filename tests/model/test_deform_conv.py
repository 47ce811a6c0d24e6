"""DCNv2 (plain PyTorch) against a direct loop over pixels, taps and groups, and against conv2d."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semask_deploy.model.deform_conv import ModulatedDeformConv, modulated_deform_conv2d


def _bilinear_dcn(img: np.ndarray, y: float, x: float) -> float:
    """The official DCNv2 CPU/CUDA im2col sampler: zero unless -1 < y < H and -1 < x < W, corners checked."""
    h, w = img.shape
    if not (y > -1 and x > -1 and y < h and x < w):
        return 0.0
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    ly, lx = y - y0, x - x0
    val = 0.0
    for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            if 0 <= yy < h and 0 <= xx < w:
                val += wy * wx * img[yy, xx]
    return val


def _loop_reference(x, offset, mask, weight, bias, stride, pad, dil, groups):
    x, offset, mask, weight, bias = (t.double().numpy() for t in (x, offset, mask, weight, bias))
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    cg = c // groups
    out = np.zeros((n, o, ho, wo))
    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                cols = np.zeros((c, kh, kw))
                for g in range(groups):
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            dy = offset[b, 2 * (g * kh * kw + k), oy, ox]
                            dx = offset[b, 2 * (g * kh * kw + k) + 1, oy, ox]
                            m = mask[b, g * kh * kw + k, oy, ox]
                            py = oy * stride - pad + i * dil + dy
                            px = ox * stride - pad + j * dil + dx
                            for ci in range(g * cg, (g + 1) * cg):
                                cols[ci, i, j] = m * _bilinear_dcn(x[b, ci], py, px)
                out[b, :, oy, ox] = np.tensordot(weight, cols, axes=([1, 2, 3], [0, 1, 2])) + bias
    return out


@pytest.mark.parametrize(
    "shape,groups,stride,pad,dil,kernel",
    [((2, 8, 5, 7), 2, 1, 1, 1, 3), ((1, 6, 6, 4), 3, 1, 1, 1, 3), ((1, 4, 7, 6), 1, 2, 2, 2, 3), ((1, 4, 1, 3), 2, 1, 1, 1, 3)],
)
def test_matches_loop_reference(shape, groups, stride, pad, dil, kernel):
    g = torch.Generator().manual_seed(sum(shape) + groups)
    n, c, h, w = shape
    ho = (h + 2 * pad - dil * (kernel - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (kernel - 1) - 1) // stride + 1
    k = kernel * kernel
    x = torch.randn(n, c, h, w, generator=g)
    # offsets up to ±4 px: many samples land at or beyond the borders; a few exactly on integers and on -1/H
    offset = (torch.rand(n, 2 * groups * k, ho, wo, generator=g) * 8 - 4)
    offset[:, ::7] = offset[:, ::7].round()
    offset[0, 0, 0, 0] = -1.0 + pad  # lands exactly on y = -1 for output row 0, tap row 0 (→ zero)
    mask = torch.rand(n, groups * k, ho, wo, generator=g)
    weight = torch.randn(3, c, kernel, kernel, generator=g)
    bias = torch.randn(3, generator=g)
    got = modulated_deform_conv2d(x, offset, mask, weight, bias, stride, pad, dil, groups)
    want = _loop_reference(x, offset, mask, weight, bias, stride, pad, dil, groups)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.double().numpy(), want, atol=2e-5, rtol=1e-5)


def test_zero_offsets_equal_conv2d_exactly():
    """Zero offsets, mask logits 0 (sigmoid = 0.5): DCN = conv2d with weight/2. Integer data on power-of-two
    sizes keeps every coordinate and every partial sum exact, so the results must be bit-identical."""
    g = torch.Generator().manual_seed(0)
    dcn = ModulatedDeformConv(16, 5, deformable_groups=8)
    with torch.no_grad():
        dcn.weight.copy_(torch.randint(-4, 5, dcn.weight.shape, generator=g).float())
        dcn.bias.copy_(torch.randint(-4, 5, (5,), generator=g).float())
    x = torch.randint(-8, 9, (2, 16, 8, 16), generator=g).float()
    guide = torch.randn(2, 16, 8, 16, generator=g)  # conv_offset_mask is zero-initialised
    got = dcn(x, guide)
    want = F.conv2d(x, dcn.weight * 0.5, dcn.bias, padding=1)
    assert torch.equal(got, want)
    # and on sizes that are not powers of two, to float rounding
    x = torch.randn(1, 16, 7, 11, generator=g)
    torch.testing.assert_close(dcn(x, x), F.conv2d(x, dcn.weight * 0.5, dcn.bias, padding=1), atol=1e-5, rtol=1e-5)


def test_module_layout_and_half_input():
    dcn = ModulatedDeformConv(16, 16, deformable_groups=8)
    assert sorted(dcn.state_dict()) == ["bias", "conv_offset_mask.bias", "conv_offset_mask.weight", "weight"]
    assert dcn.conv_offset_mask.weight.shape == (3 * 8 * 9, 16, 3, 3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        dcn.conv_offset_mask.weight.normal_(0, 0.3, generator=g)
    x = torch.randn(1, 16, 6, 5, generator=g)
    off, mask = dcn.offsets_and_mask(x)
    raw = dcn.conv_offset_mask(x)
    assert torch.equal(off[:, :72], raw[:, :72]) and torch.equal(off[:, 72:], raw[:, 72:144])
    assert torch.equal(mask, torch.sigmoid(raw[:, 144:]))
    want = _loop_reference(x, off.detach(), mask.detach(), dcn.weight.detach(), dcn.bias.detach(), 1, 1, 1, 8)
    np.testing.assert_allclose(dcn(x, x).detach().double().numpy(), want, atol=2e-5, rtol=1e-5)
    y = modulated_deform_conv2d(x.half(), off, mask, dcn.weight, dcn.bias, 1, 1, 1, 8)
    assert y.dtype == torch.float16
