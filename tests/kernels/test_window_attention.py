"""window_attention (Triton) vs window_attention_ref vs an independent transcription of the official path.

Also holds the package-level checks shared by all kernels: import without Triton, the error without a GPU
or interpreter.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from semask_deploy.kernels import window_attention as wa_mod  # noqa: E402
from semask_deploy.kernels._triton import is_interpreted  # noqa: E402
from semask_deploy.kernels.window_attention import window_attention, window_attention_ref  # noqa: E402

if not torch.cuda.is_available() and not is_interpreted(wa_mod._window_attn_fwd_kernel):
    pytest.fail(
        "semask_deploy.kernels.window_attention was imported before TRITON_INTERPRET=1 was set; "
        "set it in the environment (or in the root conftest) before anything imports the kernels",
        pytrace=False,
    )

TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.5e-2, 1.5e-2)}


def _inputs(b, h, w, heads, hd, window, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = heads * hd
    qkv = torch.randn(b, h, w, 3 * c, generator=g)
    qkv_bias = 0.5 * torch.randn(3 * c, generator=g)
    table = 0.5 * torch.randn((2 * window - 1) ** 2, heads, generator=g)
    return qkv.to(device, dtype), qkv_bias.to(device), table.to(device)


def _check(qkv, qkv_bias, table, heads, window, shift):
    hd = qkv.shape[-1] // 3 // heads
    out = window_attention(qkv, qkv_bias, table, heads, window, shift, hd**-0.5)
    assert out.shape == (*qkv.shape[:3], qkv.shape[-1] // 3) and out.dtype == qkv.dtype
    ref = window_attention_ref(qkv.float(), qkv_bias.float(), table.float(), heads, window, shift, hd**-0.5)
    atol, rtol = TOL[qkv.dtype]
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=rtol)
    return out, ref


# (batch, heads, head_dim) rotate over the grid so every value appears without a full product.
_BHD = [(1, 1, 32), (2, 3, 32), (1, 4, 16), (2, 2, 32), (1, 2, 16), (1, 3, 32)]
_GRID = [
    (window, shift_on, hw, dtype)
    for window, shift_on, hw, dtype in itertools.product(
        (7, 12), (False, True), ((5, 3), (10, 14), (13, 9)), (torch.float32, torch.float16)
    )
]


@pytest.mark.parametrize("case", range(len(_GRID)))
def test_matches_ref(case, device):
    window, shift_on, (h, w), dtype = _GRID[case]
    b, heads, hd = _BHD[case % len(_BHD)]
    shift = window // 2 if shift_on else 0
    _check(*_inputs(b, h, w, heads, hd, window, dtype, device, seed=case), heads, window, shift)


@pytest.mark.parametrize("hd", [24, 64])
def test_other_head_dims(hd, device):
    _check(*_inputs(1, 9, 10, 2, hd, 7, torch.float32, device), 2, 7, 3)


def test_exact_multiple_and_multi_window(device):
    # 14 x 21 with window 7: no padding, 6 windows, shifted -> all 9 regions present
    _check(*_inputs(2, 14, 21, 3, 32, 7, torch.float32, device, seed=5), 3, 7, 3)


def test_strided_input_and_block_sizes(device):
    qkv, qkv_bias, table = _inputs(1, 13, 9, 2, 32, 12, torch.float32, device, seed=3)
    wide = torch.randn(1, 13, 9, qkv.shape[-1] + 10, device=device)
    wide[..., 5 : 5 + qkv.shape[-1]] = qkv
    strided = wide[..., 5 : 5 + qkv.shape[-1]]  # non-contiguous view
    assert not strided.is_contiguous()
    out, ref = _check(strided, qkv_bias, table, 2, 12, 6)
    # GPU-like block sizes (several query and key blocks) give the same result
    out_small = wa_mod._launch(strided, qkv_bias, table, 2, 12, 6, 32**-0.5, block_m=32, block_n=64)
    torch.testing.assert_close(out_small, ref, atol=1e-5, rtol=1e-5)


def test_shift_and_padding_matter(device):
    """Guard against a reference that ignores the mask or masks padded keys: outputs must differ."""
    qkv, qkv_bias, table = _inputs(1, 10, 14, 2, 16, 7, torch.float32, device, seed=7)
    a = window_attention(qkv, qkv_bias, table, 2, 7, 3, 0.25)
    b = window_attention(qkv, qkv_bias, table, 2, 7, 0, 0.25)
    # (with this geometry and shift the padded rows form their own shift region, so padding only shows
    # without the shift)
    c = window_attention(qkv, torch.zeros_like(qkv_bias), table, 2, 7, 0, 0.25)
    assert (a - b).abs().max() > 1e-2 and (b - c).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------------------
# the reference against a transcription of the official Swin code path
# ---------------------------------------------------------------------------------------------------------


def _official_window_partition(x, ws):
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def _official_window_reverse(windows, ws, h, w):
    b = int(windows.shape[0] / (h * w / ws / ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def _official_path(x_norm, w_qkv, b_qkv, table, heads, ws, shift):
    """SwinTransformerBlock.forward's attention part, as in the official code (pad -> Linear -> ...)."""
    b, h, w, c = x_norm.shape
    n, hd = ws * ws, c // heads
    scale = hd**-0.5
    coords = torch.stack(torch.meshgrid([torch.arange(ws), torch.arange(ws)], indexing="ij"))
    coords_flatten = torch.flatten(coords, 1)
    rel = coords_flatten[:, :, None] - coords_flatten[:, None, :]
    rel = rel.permute(1, 2, 0).contiguous()
    rel[:, :, 0] += ws - 1
    rel[:, :, 1] += ws - 1
    rel[:, :, 0] *= 2 * ws - 1
    rpi = rel.sum(-1)

    pad_r, pad_b = (ws - w % ws) % ws, (ws - h % ws) % ws
    x = F.pad(x_norm, (0, 0, 0, pad_r, 0, pad_b))
    _, hp, wp, _ = x.shape
    if shift > 0:
        img_mask = torch.zeros((1, hp, wp, 1), dtype=x.dtype)
        cnt = 0
        for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                img_mask[:, hs, wsl, :] = cnt
                cnt += 1
        mask_windows = _official_window_partition(img_mask, ws).view(-1, n)
        attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    else:
        attn_mask = None
    xw = _official_window_partition(x, ws).view(-1, n, c)
    bw = xw.shape[0]
    qkv = F.linear(xw, w_qkv, b_qkv).reshape(bw, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = attn + table[rpi.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
    if attn_mask is not None:
        nw = attn_mask.shape[0]
        attn = attn.view(bw // nw, nw, heads, n, n) + attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, n, n)
    attn = attn.softmax(dim=-1)
    y = (attn @ v).transpose(1, 2).reshape(bw, n, c)
    y = _official_window_reverse(y.view(-1, ws, ws, c), ws, hp, wp)
    if shift > 0:
        y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
    return y[:, :h, :w, :].contiguous()


@pytest.mark.parametrize(
    "b,h,w,heads,ws,shift",
    [(1, 5, 3, 2, 7, 3), (2, 10, 14, 3, 7, 3), (1, 13, 9, 2, 12, 6), (1, 13, 9, 4, 12, 0),
     pytest.param(1, 24, 32, 2, 12, 6, marks=pytest.mark.slow)],  # 9 windows of 144 tokens: slow in the interpreter
)
def test_ref_matches_official_path(b, h, w, heads, ws, shift, device):
    g = torch.Generator().manual_seed(h * w + shift)
    c = heads * 16
    x_norm = torch.randn(b, h, w, c, generator=g, dtype=torch.float64)
    w_qkv = torch.randn(3 * c, c, generator=g, dtype=torch.float64) / c**0.5
    b_qkv = torch.randn(3 * c, generator=g, dtype=torch.float64)  # large: padded tokens clearly matter
    table = torch.randn((2 * ws - 1) ** 2, heads, generator=g, dtype=torch.float64)
    official = _official_path(x_norm, w_qkv, b_qkv, table, heads, ws, shift)
    qkv = F.linear(x_norm, w_qkv, b_qkv)  # on the UNPADDED map, as the model calls the kernel
    ref = window_attention_ref(qkv, b_qkv, table, heads, ws, shift, 16**-0.5)
    torch.testing.assert_close(ref, official, atol=1e-12, rtol=1e-12)
    out = window_attention(qkv.float().to(device), b_qkv.float().to(device), table.float().to(device), heads, ws, shift, 0.25)
    torch.testing.assert_close(out.cpu().double(), official, atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# API: validation, custom op, torch.compile tracing, no-GPU errors, import without triton
# ---------------------------------------------------------------------------------------------------------


def test_validation_errors(device):
    qkv, qkv_bias, table = _inputs(1, 5, 3, 2, 16, 7, torch.float32, device)
    with pytest.raises(ValueError, match="divisible"):
        window_attention(qkv, qkv_bias, table, 3, 7, 3, 0.25)
    with pytest.raises(ValueError, match="shift"):
        window_attention(qkv, qkv_bias, table, 2, 7, 7, 0.25)
    with pytest.raises(ValueError, match="bias_table"):
        window_attention(qkv, qkv_bias, table, 2, 12, 6, 0.25)
    with pytest.raises(ValueError, match="qkv_bias"):
        window_attention(qkv, qkv_bias[:-1], table, 2, 7, 3, 0.25)


def test_custom_op_opcheck_and_compile(device):
    qkv, qkv_bias, table = _inputs(1, 5, 6, 2, 16, 7, torch.float32, device, seed=11)
    ref = window_attention_ref(qkv, qkv_bias, table, 2, 7, 3, 0.25)
    out = torch.ops.semask.window_attention(qkv, qkv_bias, table, 2, 7, 3, 0.25)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.library.opcheck(torch.ops.semask.window_attention.default, (qkv, qkv_bias, table, 2, 7, 3, 0.25))
    compiled = torch.compile(window_attention, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(qkv, qkv_bias, table, 2, 7, 3, 0.25), ref, atol=1e-5, rtol=1e-5)


def _run_py(code: str, env_update: dict[str, str | None]) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for k, v in env_update.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120)


def test_import_without_triton_and_clear_errors():
    """`import semask_deploy.kernels` never imports triton; without triton, refs work and kernels raise."""
    code = """
        import sys, importlib.util
        import semask_deploy.kernels as K
        assert "triton" not in sys.modules, "package import pulled in triton"
        _fs = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a, **k: None if name.split(".")[0] == "triton" else _fs(name, *a, **k)
        sys.modules["triton"] = None
        assert not K.triton_available()
        import torch
        from semask_deploy.kernels.window_attention import window_attention, window_attention_ref
        from semask_deploy.kernels.semantic_attention import semantic_attention_global, semantic_attention_global_ref
        from semask_deploy.kernels.upsample_argmax import upsample_argmax, upsample_argmax_ref
        x = torch.randn(1, 5, 3, 96)
        assert window_attention_ref(x, torch.zeros(96), torch.zeros(169, 2), 2, 7, 3, 0.25).shape == (1, 5, 3, 32)
        q = torch.randn(1, 9, 19)
        assert semantic_attention_global_ref(q, q, torch.randn(1, 9, 8)).shape == (1, 9, 8)
        assert upsample_argmax_ref(torch.randn(1, 3, 4, 4), (7, 9)).shape == (1, 7, 9)
        for fn, args in ((window_attention, (x, torch.zeros(96), torch.zeros(169, 2), 2, 7, 3, 0.25)),
                         (semantic_attention_global, (q, q, torch.randn(1, 9, 8))),
                         (upsample_argmax, (torch.randn(1, 3, 4, 4), (7, 9)))):
            try:
                fn(*args)
            except RuntimeError as e:
                assert "pip install" in str(e), str(e)
            else:
                raise AssertionError("no error without triton")
        print("OK")
        """
    proc = _run_py(code, {"TRITON_INTERPRET": None})
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_cpu_without_interpreter_raises():
    code = """
        import torch
        from semask_deploy.kernels.window_attention import window_attention
        from semask_deploy.kernels.semantic_attention import semantic_attention_window
        from semask_deploy.kernels.upsample_argmax import upsample_argmax
        x = torch.randn(1, 5, 3, 96)
        q = torch.randn(1, 5, 3, 19)
        calls = ((window_attention, (x, torch.zeros(96), torch.zeros(169, 2), 2, 7, 3, 0.25)),
                 (semantic_attention_window, (q, q, torch.randn(1, 5, 3, 8), 7, torch.zeros(19), torch.zeros(8))),
                 (upsample_argmax, (torch.randn(1, 3, 4, 4), (7, 9))))
        for fn, args in calls:
            try:
                fn(*args)
            except RuntimeError as e:
                assert "CUDA" in str(e) and "TRITON_INTERPRET" in str(e), str(e)
            else:
                raise AssertionError(f"{fn.__name__} ran on the CPU without the interpreter")
        print("OK")
        """
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only error path")
    proc = _run_py(code, {"TRITON_INTERPRET": None})
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.slow  # ptxas for several targets: minutes on a small CPU
def test_compiles_for_nvidia_targets(aot_compile):
    """The interpreter accepts code a GPU compiler rejects: compile for sm_80/sm_90 (no GPU needed)."""
    jobs = []
    for dt, window, shift, hd, archs in (
        ("fp16", 7, 3, 32, [80, 90]),
        ("bf16", 12, 6, 32, [90]),
        ("fp32", 12, 0, 16, [80, 90]),
        ("fp16", 7, 0, 24, [90]),
    ):
        n = window * window
        fp32_big = dt == "fp32" and n > 64  # the launcher's fp32 choice for windows over 64 tokens
        jobs.append(
            dict(
                name=f"{dt}-w{window}-s{shift}-hd{hd}",
                module="semask_deploy.kernels.window_attention",
                kernel="_window_attn_fwd_kernel",
                ptr=dict(QKV=dt, OUT=dt, QKV_BIAS="fp32", TABLE="fp32"),
                float_args=["scale"],
                consts=dict(WINDOW=window, SHIFT=shift, N_TOK=n, HEAD_DIM=hd, BLOCK_M=64, BLOCK_N=32 if fp32_big else 64,
                            BLOCK_D=max(16, 1 << (hd - 1).bit_length()), DOT_PREC="tf32x3" if dt == "fp32" else "ieee"),
                archs=archs,
                options=dict(num_warps=4, num_stages=1 if fp32_big else 2),
            )
        )
    results = aot_compile(jobs)
    assert len(results) == 6
    for r in results:
        assert r["ok"], r
        assert r["shared"] <= 96 * 1024, r


# ---------------------------------------------------------------------------------------------------------
# GPU only: bf16 and real sizes, compiled
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("window,shift", [(7, 0), (7, 3), (12, 0), (12, 6)])
@pytest.mark.parametrize("hw", [(5, 3), (13, 9), (10, 14)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_grid(window, shift, hw, dtype):
    _check(*_inputs(2, hw[0], hw[1], 3, 32, window, dtype, "cuda"), 3, window, shift)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("b,h,w,heads,window", [(2, 128, 128, 3, 7), (1, 256, 512, 3, 7), (1, 160, 160, 6, 12), (1, 64, 128, 24, 12)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_real_sizes(b, h, w, heads, window, dtype):
    for shift in (0, window // 2):
        _check(*_inputs(b, h, w, heads, 32, window, dtype, "cuda"), heads, window, shift)


def test_strided_qkv_bias(device):
    """qkv_bias may be a strided view (e.g. a slice of a larger parameter): the kernel must not assume unit stride."""
    qkv, qkv_bias, table = _inputs(1, 9, 11, 2, 16, 7, torch.float32, device, seed=11)
    wide = torch.zeros(2 * qkv_bias.numel(), device=device)
    wide[::2] = qkv_bias
    strided = wide[::2]
    assert not strided.is_contiguous()
    out = window_attention(qkv, strided, table, 2, 7, 3, 0.25)
    torch.testing.assert_close(out, window_attention_ref(qkv, qkv_bias, table, 2, 7, 3, 0.25), atol=1e-5, rtol=1e-5)
