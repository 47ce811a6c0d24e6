"""upsample_argmax (Triton) vs F.interpolate(bilinear, align_corners=False).argmax(1): exact labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from semask_deploy.kernels import upsample_argmax as ua_mod  # noqa: E402
from semask_deploy.kernels._triton import is_interpreted  # noqa: E402
from semask_deploy.kernels.upsample_argmax import upsample_argmax, upsample_argmax_ref  # noqa: E402

if not torch.cuda.is_available() and not is_interpreted(ua_mod._upsample_argmax_kernel):
    pytest.fail(
        "semask_deploy.kernels.upsample_argmax was imported before TRITON_INTERPRET=1 was set; "
        "set it in the environment (or in the root conftest) before anything imports the kernels",
        pytrace=False,
    )

# (N, K, h, w, H, W): odd sizes, non-integer up- and down-scales, the SeMask final resize of odd inputs
# (stride-4 grid ceil(H/4) x ceil(W/4) -> H x W), identity, a 1-pixel source.
_CASES = [
    (1, 3, 5, 7, 17, 29),
    (2, 19, 10, 14, 37, 53),
    (1, 150, 13, 9, 53, 37),
    (1, 150, 16, 24, 64, 96),
    (1, 19, 14, 19, 53, 75),
    (1, 19, 32, 32, 15, 9),
    (1, 3, 11, 13, 11, 13),
    (1, 5, 1, 1, 4, 6),
    (1, 150, 33, 47, 131, 187),
]


@pytest.mark.parametrize("case", _CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_exact_labels(case, dtype, device):
    n, k, h, w, ho, wo = case
    g = torch.Generator().manual_seed(sum(case))
    logits = torch.randn(n, k, h, w, generator=g).to(device, dtype)
    out = upsample_argmax(logits, (ho, wo))
    assert out.shape == (n, ho, wo) and out.dtype == torch.int64
    ref = F.interpolate(logits.float(), size=(ho, wo), mode="bilinear", align_corners=False).argmax(1)
    mismatches = (out != ref).sum().item()
    assert mismatches == 0, f"{mismatches} of {ref.numel()} labels differ"


def test_ref_is_interpolate_argmax():
    logits = torch.randn(1, 19, 10, 14)
    expect = F.interpolate(logits, size=(37, 53), mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(upsample_argmax_ref(logits, (37, 53)), expect)


def test_coordinates_follow_interpolate():
    """Labels that reveal the sampling positions: class c is the one-hot indicator of source column c.

    Bilinear weights of a one-hot row pick the nearer source column, so the labels flip where F.interpolate's
    source coordinate crosses a half-integer; any other coordinate rule (align_corners, scale = out/in,
    no clamping at 0, a cropped/extended grid) moves those flips. Exact half-way points are real ties
    (weights 0.5/0.5) and are excluded from the comparison.
    """
    h, w, ho, wo = 3, 13, 5, 53
    logits = torch.eye(w).view(w, 1, w).expand(w, h, w).unsqueeze(0).contiguous()  # (1, K=w, h, w)
    up = F.interpolate(logits, size=(ho, wo), mode="bilinear", align_corners=False)
    top2 = up.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4
    out = upsample_argmax(logits, (ho, wo)).cpu()
    assert clear.float().mean() > 0.5
    assert torch.equal(out[clear], up.argmax(1)[clear])
    wrong = F.interpolate(logits, size=(ho, wo), mode="bilinear", align_corners=True).argmax(1)
    assert not torch.equal(wrong[clear], out[clear])  # the check can tell the two conventions apart


@pytest.mark.parametrize("unroll", [1, 2, 4])
def test_ties_resolve_to_first_index(unroll, device):
    """Exact ties (identical class maps) go to the lowest class, inside and across unrolled loop trips."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 40, 6, 7, generator=g)
    logits[:, 3] = logits.max(1).values + 1.0  # class 3 wins everywhere ...
    logits[:, 37] = logits[:, 3]  # ... tied with class 37 (another loop trip)
    logits[:, 2] = logits[:, 3]  # ... and with class 2 (the same trip as 3 for unroll 2 and 4)
    logits = logits.to(device)
    out = ua_mod._launch(logits, (13, 11), block_p=32, unroll=unroll)
    assert (out == 2).all()
    assert torch.equal(upsample_argmax(logits, (13, 11)), torch.full((1, 13, 11), 2, device=device))
    assert (upsample_argmax(torch.zeros(2, 7, 3, 3, device=device), (5, 4)) == 0).all()  # all equal -> 0


def test_strided_logits_and_gpu_like_blocks(device):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 40, 13, 17, generator=g).to(device)
    cl = logits.to(memory_format=torch.channels_last)
    ref = upsample_argmax_ref(logits, (37, 45))
    assert torch.equal(upsample_argmax(cl, (37, 45)), ref)
    assert torch.equal(ua_mod._launch(logits, (37, 45), block_p=512, unroll=2), ref)
    assert torch.equal(ua_mod._launch(logits, (37, 45), block_p=64, unroll=3), ref)  # 40 classes: a partial last trip


def test_validation_errors(device):
    with pytest.raises(ValueError):
        upsample_argmax(torch.randn(3, 4, 4, device=device), (8, 8))
    with pytest.raises(ValueError):
        upsample_argmax(torch.randn(1, 3, 4, 4, device=device).to(torch.int32), (8, 8))
    with pytest.raises(ValueError):
        upsample_argmax(torch.randn(1, 3, 4, 4, device=device), (0, 8))
    for size in ((7.5, 7), 7, (7,)):  # a fractional size would silently be truncated; F.interpolate refuses it
        with pytest.raises(ValueError, match="pair of integers"):
            upsample_argmax(torch.randn(1, 3, 4, 4, device=device), size)


def test_custom_op_opcheck_and_compile(device):
    logits = torch.randn(1, 5, 4, 6, device=device)
    ref = upsample_argmax_ref(logits, (9, 13))
    assert torch.equal(torch.ops.semask.upsample_argmax(logits, [9, 13]), ref)
    torch.library.opcheck(torch.ops.semask.upsample_argmax.default, (logits, [9, 13]))
    compiled = torch.compile(upsample_argmax, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(logits, (9, 13)), ref)


@pytest.mark.slow  # ptxas for several targets: minutes on a small CPU
def test_compiles_for_nvidia_targets(aot_compile):
    jobs = [
        dict(
            name=f"{dt}",
            module="semask_deploy.kernels.upsample_argmax",
            kernel="_upsample_argmax_kernel",
            ptr=dict(X=dt, OUT="i64"),
            float_args=["scale_h", "scale_w"],
            consts=dict(BLOCK_P=512, UNROLL=2),  # the launcher's GPU defaults
            archs=archs,
            options=dict(num_warps=4, enable_fp_fusion=False),
        )
        for dt, archs in (("fp32", [80, 90]), ("fp16", [90]), ("bf16", [90]))
    ]
    results = aot_compile(jobs)
    assert len(results) == 4 and all(r["ok"] for r in results), results


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", [(1, 150, 128, 256, 512, 1024), (2, 19, 256, 512, 1024, 2048), (1, 150, 135, 160, 540, 640)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_real_sizes(shape, dtype):
    n, k, h, w, ho, wo = shape
    logits = torch.randn(n, k, h, w, device="cuda").to(dtype)
    out = upsample_argmax(logits, (ho, wo))
    ref_cuda = F.interpolate(logits.float(), size=(ho, wo), mode="bilinear", align_corners=False).argmax(1)
    # CUDA's F.interpolate may fuse multiply-adds differently: allow only differences at near-ties
    diff = out != ref_cuda
    if diff.any():
        up = F.interpolate(logits.float(), size=(ho, wo), mode="bilinear", align_corners=False)
        a = up.gather(1, out.unsqueeze(1)).squeeze(1)[diff]
        b = up.gather(1, ref_cuda.unsqueeze(1)).squeeze(1)[diff]
        assert (a - b).abs().max() <= 1e-5 * up.abs().max(), f"{diff.sum().item()} labels differ beyond rounding"
