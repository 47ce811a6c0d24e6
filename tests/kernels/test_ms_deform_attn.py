"""ms_deform_attn (Triton) vs the official grid_sample formulation vs an independent naive loop."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

from semask_deploy.kernels import ms_deform_attn as msda_mod  # noqa: E402
from semask_deploy.kernels._triton import is_interpreted  # noqa: E402
from semask_deploy.kernels.ms_deform_attn import (  # noqa: E402
    ms_deform_attn,
    ms_deform_attn_fast_cpu,
    ms_deform_attn_ref,
)

if not torch.cuda.is_available() and not is_interpreted(msda_mod._msda_fwd_kernel):
    pytest.fail(
        "semask_deploy.kernels.ms_deform_attn was imported before TRITON_INTERPRET=1 was set; "
        "set it in the environment (or in the root conftest) before anything imports the kernels",
        pytrace=False,
    )

# (levels [(H, W)], N, Lq, M, D, P): odd level sizes, L = 1..4, P = 1..4, M = 1..8, D not a power of two
_CASES = [
    ([(3, 5)], 2, 7, 1, 5, 1),
    ([(3, 5), (7, 2)], 2, 9, 3, 12, 3),
    ([(3, 5), (7, 2), (1, 1)], 2, 6, 8, 3, 4),
    ([(3, 5), (7, 2), (1, 1), (4, 6)], 2, 11, 2, 33, 2),
    ([(1, 1), (2, 3), (5, 4), (3, 5)], 2, 5, 4, 20, 4),
]


def _special_coords(size: int) -> torch.Tensor:
    """Normalised coordinates on and around the borders of a level of ``size`` pixels."""
    s = float(size)
    return torch.tensor(
        [0.0, 1.0, 0.5, -0.5 / s, 0.5 / s, 1 - 0.5 / s, 1 + 0.5 / s, -1 / s, 1 + 1 / s, -1.5 / s, 1 + 1.5 / s,
         1 / s, 2 / s if size > 1 else 0.25, -0.2, 1.3, -3.0, 4.0]
    )  # fmt: skip


def _inputs(levels, n, lq, m, d, p, seed, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    nl = len(levels)
    s = sum(h * w for h, w in levels)
    shapes = torch.tensor(levels, dtype=torch.int64)
    starts = torch.tensor([0] + [h * w for h, w in levels][:-1], dtype=torch.int64).cumsum(0)
    value = torch.randn(n, s, m, d, generator=g)
    loc = torch.rand(n, lq, m, nl, p, 2, generator=g) * 1.6 - 0.3
    for lvl, (h, w) in enumerate(levels):
        for axis, size in ((0, w), (1, h)):
            sp = _special_coords(size)
            pick = sp[torch.randint(len(sp), (n, lq, m, p), generator=g)]
            use = torch.rand(n, lq, m, p, generator=g) < 0.6
            loc[:, :, :, lvl, :, axis] = torch.where(use, pick, loc[:, :, :, lvl, :, axis])
    aw = torch.rand(n, lq, m, nl, p, generator=g)
    aw = aw / aw.sum((-2, -1), keepdim=True)
    return (value.to(device, dtype), shapes.to(device), starts.to(device), loc.to(device, dtype), aw.to(device, dtype))


def _naive(value, shapes, starts, loc, aw):
    """Independent loop implementation (CUDA-kernel style: pixel = loc·size − 0.5, corners outside = 0), fp64."""
    n, _, m, d = value.shape
    _, lq, _, nl, p, _ = loc.shape
    v = value.double()
    out = torch.zeros(n, lq, m, d, dtype=torch.float64)
    for b in range(n):
        for q in range(lq):
            for h in range(m):
                for lvl in range(nl):
                    hl, wl = int(shapes[lvl, 0]), int(shapes[lvl, 1])
                    st = int(starts[lvl])
                    for pt in range(p):
                        x = float(loc[b, q, h, lvl, pt, 0]) * wl - 0.5
                        y = float(loc[b, q, h, lvl, pt, 1]) * hl - 0.5
                        xl, yl = math.floor(x), math.floor(y)
                        for yy in (yl, yl + 1):
                            for xx in (xl, xl + 1):
                                if 0 <= yy < hl and 0 <= xx < wl:
                                    wt = (1 - abs(x - xx)) * (1 - abs(y - yy)) * float(aw[b, q, h, lvl, pt])
                                    out[b, q, h] += wt * v[b, st + yy * wl + xx, h]
    return out.view(n, lq, m * d)


@pytest.mark.parametrize("case", _CASES, ids=lambda c: f"L{len(c[0])}-M{c[3]}-D{c[4]}-P{c[5]}")
def test_kernel_matches_ref(case, device):
    levels, n, lq, m, d, p = case
    args = _inputs(levels, n, lq, m, d, p, seed=len(levels) * 10 + p, device=device)
    out = ms_deform_attn(*args)
    ref = ms_deform_attn_ref(*args)
    assert out.shape == (n, lq, m * d) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("case", _CASES[1:4], ids=lambda c: f"L{len(c[0])}-P{c[5]}")
def test_ref_matches_naive_loop(case):
    levels, n, lq, m, d, p = case
    args = _inputs(levels, n, min(lq, 4), m, d, p, seed=7)
    args64 = (args[0].double(), args[1], args[2], args[3].double(), args[4].double())
    ref = ms_deform_attn_ref(*args64)
    naive = _naive(*args64)
    torch.testing.assert_close(ref, naive, atol=1e-12, rtol=1e-12)
    # the test can tell sampling conventions apart: align_corners=True-style coordinates differ
    shifted = list(args64)
    shifted[3] = args64[3] + 0.5 / args64[1].flip(1).double().view(-1, 2)[None, None, None, :, None]
    assert (ms_deform_attn_ref(*shifted) - naive).abs().max() > 1e-3


@pytest.mark.parametrize("case", _CASES, ids=lambda c: f"L{len(c[0])}-M{c[3]}-D{c[4]}-P{c[5]}")
def test_fast_cpu_matches_ref(case):
    levels, n, lq, m, d, p = case
    args = _inputs(levels, n, lq, m, d, p, seed=3)
    torch.testing.assert_close(ms_deform_attn_fast_cpu(*args), ms_deform_attn_ref(*args), atol=2e-6, rtol=1e-5)
    args64 = (args[0].double(), args[1], args[2], args[3].double(), args[4].double())
    torch.testing.assert_close(ms_deform_attn_fast_cpu(*args64), ms_deform_attn_ref(*args64), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_half_inputs(dtype, atol, device):
    levels, n, lq, m, d, p = _CASES[3]
    value, shapes, starts, loc, aw = _inputs(levels, n, lq, m, d, p, seed=5, device=device)
    value_h, aw_h = value.to(dtype), aw.to(dtype)
    out = ms_deform_attn(value_h, shapes, starts, loc.to(dtype), aw_h)
    assert out.dtype == dtype
    ref = ms_deform_attn_ref(value_h.float(), shapes, starts, loc.to(dtype).float(), aw_h.float())
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=atol)
    # fp32 locations with half values and weights (mixed dtypes)
    out2 = ms_deform_attn(value_h, shapes, starts, loc, aw_h)
    ref2 = ms_deform_attn_ref(value_h.float(), shapes, starts, loc, aw_h.float())
    torch.testing.assert_close(out2.float(), ref2, atol=atol, rtol=atol)


def test_strided_inputs_and_small_blocks(device):
    """Non-contiguous inputs, several query blocks and several sample blocks per program."""
    levels, n, lq, m, d, p = [(3, 5), (7, 2), (1, 1)], 2, 6, 2, 5, 3
    value, shapes, starts, loc, aw = _inputs(levels, n, lq, m, d, p, seed=9, device=device)
    ref = ms_deform_attn_ref(value, shapes, starts, loc, aw)
    value_s = torch.zeros(n, value.shape[1], m, d + 3, device=device)[..., 1 : d + 1]
    value_s.copy_(value)
    loc_s = loc.transpose(0, 1).contiguous().transpose(0, 1)
    aw_s = aw.permute(4, 0, 1, 2, 3).contiguous().permute(1, 2, 3, 4, 0)
    assert not value_s.is_contiguous() and not loc_s.is_contiguous() and not aw_s.is_contiguous()
    torch.testing.assert_close(ms_deform_attn(value_s, shapes, starts, loc_s, aw_s), ref, atol=2e-6, rtol=1e-5)
    out = msda_mod._launch(value_s, shapes, starts, loc_s, aw_s, blocks=(4, 4, 8))
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)


def test_validation_errors(device):
    value, shapes, starts, loc, aw = _inputs([(3, 5), (7, 2)], 1, 3, 2, 4, 2, seed=1, device=device)
    with pytest.raises(ValueError, match="value"):
        ms_deform_attn(value[0], shapes, starts, loc, aw)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn(value, shapes, starts, loc, aw[..., :1])
    with pytest.raises(ValueError, match="sampling_locations"):
        ms_deform_attn(value, shapes, starts, loc[..., :1], aw)
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn(value, shapes[:1], starts, loc, aw)
    with pytest.raises(ValueError, match="integer"):
        ms_deform_attn(value, shapes.float(), starts, loc, aw)
    with pytest.raises(ValueError, match="float32"):
        ms_deform_attn(value.double(), shapes, starts, loc, aw)


def test_custom_op_opcheck_compile_and_no_backward(device):
    args = _inputs([(3, 5), (1, 1)], 1, 4, 2, 3, 2, seed=2, device=device)
    ref = ms_deform_attn_ref(*args)
    torch.testing.assert_close(torch.ops.semask.ms_deform_attn(*args), ref, atol=2e-6, rtol=1e-5)
    torch.library.opcheck(torch.ops.semask.ms_deform_attn.default, args)
    compiled = torch.compile(ms_deform_attn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), ref, atol=2e-6, rtol=1e-5)
    value = args[0].clone().requires_grad_(True)
    out = ms_deform_attn(value, *args[1:])
    with pytest.raises(RuntimeError, match="(?i)autograd"):
        out.sum().backward()


def test_cpu_without_interpreter_raises():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only error path")
    code = """
        import torch
        from semask_deploy.kernels.ms_deform_attn import ms_deform_attn, ms_deform_attn_ref
        v = torch.randn(1, 15, 2, 4); ss = torch.tensor([[3, 5]]); st = torch.tensor([0])
        loc = torch.rand(1, 3, 2, 1, 2, 2); aw = torch.rand(1, 3, 2, 1, 2)
        assert ms_deform_attn_ref(v, ss, st, loc, aw).shape == (1, 3, 8)
        try:
            ms_deform_attn(v, ss, st, loc, aw)
        except RuntimeError as e:
            assert "CUDA" in str(e) and "TRITON_INTERPRET" in str(e), str(e)
        else:
            raise AssertionError("ran on the CPU without the interpreter")
        print("OK")
        """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_compiles_for_nvidia_targets(aot_compile):
    """The interpreter accepts code a GPU compiler rejects: compile for sm_80/sm_90 (no GPU needed)."""
    jobs = []
    for dt, loc_dt, bq, bs, bd, archs in (
        ("fp32", "fp32", 32, 4, 32, [90]),
        ("fp16", "fp16", 32, 4, 32, [80]),
        ("bf16", "fp32", 16, 4, 64, [90]),
    ):
        jobs.append(
            dict(
                name=f"{dt}-q{bq}-s{bs}-d{bd}",
                module="semask_deploy.kernels.ms_deform_attn",
                kernel="_msda_fwd_kernel",
                ptr=dict(V=dt, SHAPES="i64", START="i64", LOC=loc_dt, AW=loc_dt, OUT=dt),
                consts=dict(BLOCK_Q=bq, BLOCK_S=bs, BLOCK_D=bd),
                archs=archs,
                options=dict(num_warps=4),
            )
        )
    results = aot_compile(jobs)
    assert len(results) == 3 and all(r["ok"] for r in results), results


_M2F_LEVELS = {"640x640": [(20, 20), (40, 40), (80, 80)], "1024x2048": [(32, 64), (64, 128), (128, 256)]}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("res", list(_M2F_LEVELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_mask2former_sizes(res, dtype):
    levels = _M2F_LEVELS[res]
    lq = sum(h * w for h, w in levels)
    value, shapes, starts, loc, aw = _inputs(levels, 1, lq, 8, 32, 4, seed=0, device="cuda")
    value, loc, aw = value.to(dtype), loc.to(dtype), aw.to(dtype)
    ref = ms_deform_attn_ref(value.float(), shapes, starts, loc.float(), aw.float())  # same rounded inputs
    out = ms_deform_attn(value, shapes, starts, loc, aw)
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    assert (out.float() - ref).abs().max().item() <= tol
