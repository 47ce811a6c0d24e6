"""semantic_attention_{global,window} (Triton) vs their references and the official windowed path."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from semask_deploy.kernels import semantic_attention as sa_mod  # noqa: E402
from semask_deploy.kernels._triton import is_interpreted  # noqa: E402
from semask_deploy.kernels.semantic_attention import (  # noqa: E402
    semantic_attention_global,
    semantic_attention_global_ref,
    semantic_attention_window,
    semantic_attention_window_ref,
)

if not torch.cuda.is_available() and not is_interpreted(sa_mod._sem_attn_fwd_kernel):
    pytest.fail(
        "semask_deploy.kernels.semantic_attention was imported before TRITON_INTERPRET=1 was set; "
        "set it in the environment (or in the root conftest) before anything imports the kernels",
        pytrace=False,
    )

# Scores are unscaled sums over K classes (|s| up to ~30 here), so fp32 errors are ~1e-6 relative to them.
TOL = {torch.float32: (2e-5, 1e-5), torch.float16: (3e-3, 3e-3), torch.bfloat16: (2e-2, 2e-2)}


def _qkv(shape_qk, shape_v, dtype, device, seed, qk_std=0.35):
    g = torch.Generator().manual_seed(seed)
    q = qk_std * torch.randn(*shape_qk, generator=g)
    k = qk_std * torch.randn(*shape_qk, generator=g)
    v = torch.randn(*shape_v, generator=g)
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)


def _close(out, ref, dtype):
    atol, rtol = TOL[dtype]
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


# ---------------------------------------------------------------------------------------------------------
# global
# ---------------------------------------------------------------------------------------------------------

_GLOBAL = list(itertools.product((37, 130), (19, 150), (32, 96), (torch.float32, torch.float16)))


@pytest.mark.parametrize("case", range(len(_GLOBAL)))
def test_global_matches_ref(case, device):
    n, k_cls, c, dtype = _GLOBAL[case]
    b = 1 + case % 2
    q, k, v = _qkv((b, n, k_cls), (b, n, c), dtype, device, seed=case)
    out = semantic_attention_global(q, k, v)
    _close(out, semantic_attention_global_ref(q.float(), k.float(), v.float()), dtype)


def test_global_many_key_blocks_wide_c_and_gpu_blocks(device):
    """Several key blocks, C tiled over the grid (non-power-of-two C), strided inputs, GPU-like blocks."""
    q, k, v = _qkv((1, 200, 150), (1, 200, 200), torch.float32, device, seed=1)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, N, K) view with stride(1) == 1
    assert not qt.is_contiguous()
    ref = semantic_attention_global_ref(q, k, v)
    _close(semantic_attention_global(qt, k, v), ref, torch.float32)
    _close(sa_mod._launch(q, k, v, 0, None, None, blocks=(32, 64, 256, 128)), ref, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_global_large_unscaled_scores(dtype, device):
    """|q·kᵀ| in the hundreds: fp32 scores and online softmax must neither overflow nor lose accuracy."""
    q, k, v = _qkv((1, 200, 150), (1, 200, 32), dtype, device, seed=2, qk_std=2.0)
    ref = semantic_attention_global_ref(q.float(), k.float(), v.float())
    assert (q.float() @ k.float().transpose(1, 2)).abs().max() > 100
    out = semantic_attention_global(q, k, v)
    assert torch.isfinite(out).all()
    # the softmax is nearly one-hot here; a tiny score error can move weight between near-equal keys
    atol = 1e-4 if dtype == torch.float32 else 5e-3
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=1e-3)


# ---------------------------------------------------------------------------------------------------------
# windowed
# ---------------------------------------------------------------------------------------------------------

_WINDOW = list(itertools.product((7, 12), ((5, 3), (10, 14), (13, 9)), (torch.float32, torch.float16)))


@pytest.mark.parametrize("case", range(len(_WINDOW)))
def test_window_matches_ref(case, device):
    window, (h, w), dtype = _WINDOW[case]
    b, k_cls, c = ((1, 150, 96), (2, 19, 32), (1, 19, 96), (1, 150, 32))[case % 4]
    q, k, v = _qkv((b, h, w, k_cls), (b, h, w, c), dtype, device, seed=case)
    g = torch.Generator().manual_seed(100 + case)
    k_bias = (0.35 * torch.randn(k_cls, generator=g)).to(device)
    v_bias = torch.randn(c, generator=g).to(device)
    out = semantic_attention_window(q, k, v, window, k_bias, v_bias)
    assert out.shape == (b, h, w, c)
    _close(out, semantic_attention_window_ref(q.float(), k.float(), v.float(), window, k_bias, v_bias), dtype)


@pytest.mark.parametrize("b,h,w,window", [(1, 5, 3, 7), (2, 10, 14, 7), (1, 13, 9, 12), (1, 14, 19, 12)])
def test_window_matches_official_path(b, h, w, window, device):
    """Official SemanticAttention in windows: zero-pad x_n first, then the Linear layers, then attend."""
    g = torch.Generator().manual_seed(h * w)
    c, k_cls = 32, 19
    x_n = torch.randn(b, h, w, c, generator=g, dtype=torch.float64)
    wq, wk = (0.5 * torch.randn(k_cls, c, generator=g, dtype=torch.float64) / c**0.5 for _ in range(2))
    wv = torch.randn(c, c, generator=g, dtype=torch.float64) / c**0.5
    bq, bk, bv = (torch.randn(n, generator=g, dtype=torch.float64) for n in (k_cls, k_cls, c))

    pad_b, pad_r = (window - h % window) % window, (window - w % window) % window
    xp = F.pad(x_n, (0, 0, 0, pad_r, 0, pad_b))
    hp, wp = xp.shape[1:3]
    xw = xp.view(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)
    attn = (F.linear(xw, wq, bq) @ F.linear(xw, wk, bk).transpose(-2, -1)).softmax(dim=-1)
    y = (attn @ F.linear(xw, wv, bv)).view(b, hp // window, wp // window, window, window, c)
    official = y.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)[:, :h, :w]

    q, k, v = F.linear(x_n, wq, bq), F.linear(x_n, wk, bk), F.linear(x_n, wv, bv)  # unpadded map
    ref = semantic_attention_window_ref(q, k, v, window, bk, bv)
    torch.testing.assert_close(ref, official, atol=1e-12, rtol=1e-12)
    out = semantic_attention_window(*(t.float().to(device) for t in (q, k, v)), window, bk.float().to(device), bv.float().to(device))
    torch.testing.assert_close(out.cpu().double(), official, atol=2e-5, rtol=1e-5)
    # padded keys matter (masking them, or padding after the Linear, would differ)
    if pad_b or pad_r:
        zero_pad = semantic_attention_window_ref(q, k, v, window, torch.zeros_like(bk), torch.zeros_like(bv))
        assert (zero_pad - official).abs().max() > 1e-3


def test_window_gpu_like_blocks(device):
    q, k, v = _qkv((1, 13, 9, 150), (1, 13, 9, 200), torch.float32, device, seed=4)
    kb, vb = torch.randn(150).to(device), torch.randn(200).to(device)
    ref = semantic_attention_window_ref(q, k, v, 12, kb, vb)
    _close(sa_mod._launch(q, k, v, 12, kb, vb, blocks=(32, 32, 256, 64)), ref, torch.float32)


# ---------------------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------------------


def test_validation_errors(device):
    q, k, v = _qkv((1, 9, 19), (1, 9, 8), torch.float32, device, seed=0)
    with pytest.raises(ValueError):
        semantic_attention_global(q, k[:, :5], v)
    with pytest.raises(ValueError, match="dtype"):
        semantic_attention_global(q, k.half(), v)
    q4, k4, v4 = _qkv((1, 3, 3, 19), (1, 3, 3, 8), torch.float32, device, seed=0)
    with pytest.raises(ValueError, match="k_bias"):
        semantic_attention_window(q4, k4, v4, 7, torch.zeros(18, device=device), torch.zeros(8, device=device))


def test_custom_ops_opcheck_and_compile(device):
    q, k, v = _qkv((1, 21, 19), (1, 21, 16), torch.float32, device, seed=3)
    ref = semantic_attention_global_ref(q, k, v)
    _close(torch.ops.semask.semantic_attention_global(q, k, v), ref, torch.float32)
    torch.library.opcheck(torch.ops.semask.semantic_attention_global.default, (q, k, v))
    compiled = torch.compile(semantic_attention_global, fullgraph=True, backend="aot_eager")
    _close(compiled(q, k, v), ref, torch.float32)

    q4, k4, v4 = q.view(1, 3, 7, 19), k.view(1, 3, 7, 19), v.view(1, 3, 7, 16)
    kb, vb = torch.randn(19).to(device), torch.randn(16).to(device)
    ref4 = semantic_attention_window_ref(q4, k4, v4, 7, kb, vb)
    _close(torch.ops.semask.semantic_attention_window(q4, k4, v4, 7, kb, vb), ref4, torch.float32)
    torch.library.opcheck(torch.ops.semask.semantic_attention_window.default, (q4, k4, v4, 7, kb, vb))
    compiled4 = torch.compile(semantic_attention_window, fullgraph=True, backend="aot_eager")
    _close(compiled4(q4, k4, v4, 7, kb, vb), ref4, torch.float32)


@pytest.mark.slow  # ptxas for several targets: minutes on a small CPU
def test_compiles_for_nvidia_targets(aot_compile):
    """Compile the GPU configurations the launcher picks, for sm_80/sm_90 (no GPU needed)."""
    tdt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    jobs = []
    for dt, window, k_cls, c, n, archs in (
        ("fp16", 0, 150, 768, 8192, [80, 90]),  # a large map: 128 x 64 tokens, 256 channels, 8 warps
        ("bf16", 0, 171, 1536, 2048, [80]),  # the same with 128 + 64 classes
        ("bf16", 0, 19, 96, 2048, [90]),
        ("fp32", 0, 150, 384, 2048, [90]),
        ("fp32", 7, 150, 96, 49, [80]),
        ("bf16", 12, 150, 192, 144, [90]),
    ):
        cfg = sa_mod.launch_config(n, k_cls, c, tdt[dt], window, interpreted=False)
        bm, bn, bk, bk2, bc = cfg.block_m, cfg.block_n, cfg.block_k, cfg.block_k2, cfg.block_c
        jobs.append(
            dict(
                name=f"{dt}-w{window}-K{k_cls}-C{c}",
                module="semask_deploy.kernels.semantic_attention",
                kernel="_sem_attn_fwd_kernel",
                ptr=dict(Q=dt, K=dt, V=dt, OUT=dt, K_BIAS="fp32", V_BIAS="fp32"),
                consts=dict(WINDOW=window, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, BLOCK_C=bc, BLOCK_K2=bk2,
                            DOT_PREC="tf32x3" if dt == "fp32" else "ieee"),
                archs=archs,
                options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
            )
        )
    results = aot_compile(jobs)
    assert len(results) == 7
    for r in results:
        assert r["ok"], r
        assert r["shared"] <= 160 * 1024, r  # fits an A100 (163 KB per block)


# ---------------------------------------------------------------------------------------------------------
# GPU only: bf16 and real sizes, compiled
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("n,k_cls,c", [(37, 19, 32), (130, 150, 96), (2048, 150, 768), (8192, 150, 384), (2048, 171, 1536)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_global(n, k_cls, c, dtype):
    q, k, v = _qkv((1, n, k_cls), (1, n, c), dtype, "cuda", seed=n)
    _close(semantic_attention_global(q, k, v), semantic_attention_global_ref(q.float(), k.float(), v.float()), dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("h,w,window,k_cls,c", [(13, 9, 7, 150, 96), (128, 256, 7, 150, 96), (160, 160, 12, 19, 192), (64, 128, 12, 150, 384)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_window(h, w, window, k_cls, c, dtype):
    q, k, v = _qkv((1, h, w, k_cls), (1, h, w, c), dtype, "cuda", seed=h)
    kb, vb = torch.randn(k_cls, device="cuda"), torch.randn(c, device="cuda")
    ref = semantic_attention_window_ref(q.float(), k.float(), v.float(), window, kb, vb)
    _close(semantic_attention_window(q, k, v, window, kb, vb), ref, dtype)


def test_window_strided_biases(device):
    """k_bias / v_bias may be strided views: the kernel must not assume unit stride."""
    q, k, v = _qkv((1, 9, 11, 150), (1, 9, 11, 20), torch.float32, device, seed=12)
    kb, vb = torch.randn(150).to(device), torch.randn(20).to(device)
    kb_s = torch.stack([kb, torch.zeros_like(kb)], 1).reshape(-1)[::2]
    vb_s = torch.stack([vb, torch.zeros_like(vb)], 1).reshape(-1)[::2]
    assert not kb_s.is_contiguous() and not vb_s.is_contiguous()
    out = semantic_attention_window(q, k, v, 7, kb_s, vb_s)
    _close(out, semantic_attention_window_ref(q, k, v, 7, kb, vb), torch.float32)


def test_launcher_never_picks_the_pairing_that_faulted():
    """64 query tokens with 8 warps and a split class block faulted on an H200 (kernel_tuning_faults.log): a
    short global map with many channels (N·C ≥ 3M, N ≤ 64) once got exactly that configuration."""
    for n in (17, 33, 64, 100, 127, 128, 4096):
        for c in (96, 768, 49152, 200_000):
            cfg = sa_mod.launch_config(n, 150, c, torch.float16, 0, interpreted=False)
            assert not (cfg.block_m < 128 and cfg.num_warps == 8 and cfg.block_k2), (n, c, cfg)
