"""benchmarks/kernels.py on a CPU-only machine: case list, FLOP counts, reports, and the no-GPU exit."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels.py"


def _load():
    spec = importlib.util.spec_from_file_location("semask_bench_kernels_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


def test_cases_shapes_and_flops():
    bk = _load()
    assert bk.stage_size(1024, 2048, 0) == (256, 512) and bk.stage_size(1024, 2048, 3) == (32, 64)
    assert bk.stage_size(640, 640, 3) == (20, 20) and bk.stage_size(37, 53, 1) == (5, 7)
    cases = bk.build_cases(["window", "semantic", "upsample"], ["T", "L"], ["2048x1024"], ["fp16"])
    glob = {(c.params["variant"], c.params["stage"]): c for c in cases if c.kernel == "semantic_global"}
    assert glob[("T", 2)].params["N"] == 8192 and glob[("T", 3)].params["N"] == 2048
    assert glob[("L", 2)].params["C"] == 768 and glob[("L", 3)].params["C"] == 1536
    assert glob[("T", 2)].flops == 2.0 * 8192 * 8192 * (150 + 384)
    win = [c for c in cases if c.kernel == "window_attention" and c.params["variant"] == "L" and c.params["stage"] == 0]
    assert {c.params["shift"] for c in win} == {0, 6}
    # L stage 0: 256 x 512 map -> 22 x 43 windows of 144 tokens, C = 192 (6 heads x 32)
    assert win[0].flops == 4.0 * 22 * 43 * 144 * 144 * 192
    assert win[0].bytes == 256 * 512 * 4 * 192 * 2
    assert any(c.kernel == "upsample_argmax" and c.params["H"] == 1024 for c in cases)
    assert bk.device_peaks("NVIDIA H100 80GB HBM3")[2] == 3350.0 and bk.device_peaks("NVIDIA H100 PCIe")[0] == 756.0
    assert bk.device_peaks("NVIDIA H200")[2] == 4800.0 and bk.device_peaks("Some GPU") is None


def test_msda_cases():
    bk = _load()
    assert bk.msda_levels(640, 640) == [(20, 20), (40, 40), (80, 80)]
    assert bk.msda_levels(1024, 2048) == [(32, 64), (64, 128), (128, 256)] and bk.msda_levels(53, 75) == [(2, 3), (4, 6), (8, 12)]
    cases = bk.build_cases(["msda"], ["T", "L"], ["640x640", "2048x1024"], ["fp16", "fp32"])
    assert len(cases) == 4 and {c.kernel for c in cases} == {"ms_deform_attn"}  # one per res x dtype, not per variant
    c = next(c for c in cases if c.params["res"] == "640x640" and c.dtype == "fp16")
    assert c.params["Lq"] == 8400 and (c.params["M"], c.params["P"], c.params["D"]) == (8, 4, 32)
    assert c.flops == 8.0 * 8400 * 8 * 3 * 4 * 32 and c.bytes == (2 * 8400 * 256 + 3 * 8400 * 96) * 2
    assert next(c for c in cases if c.params["res"] == "2048x1024").params["Lq"] == 43008
    assert not [c for c in bk.build_cases(["window"], ["T"], ["640x640"], ["fp16"]) if c.kernel == "ms_deform_attn"]


def test_reports(tmp_path):
    bk = _load()
    cases = bk.build_cases(["semantic"], ["T"], ["512x512"], ["fp16"])
    cases[0].results = {"triton": {"ms": 0.5, "tflops": 1.0, "gbps": 2.0, "max_err": 1e-3, "frac_peak_flops": 0.01},
                        "sdpa": {"error": "RuntimeError: no kernel"}}
    cases[1].results = {"triton": {"ms": 0.5, "tflops": 1.0, "gbps": 2.0, "max_err": 1e-3},
                        "eager": {"ms": 2.0, "tflops": 0.25, "gbps": 0.5, "max_err": 2e-3}}
    bk.write_reports(tmp_path, {"device": "TestGPU"}, cases)
    data = json.loads((tmp_path / "kernels.json").read_text())
    assert data["meta"]["device"] == "TestGPU" and len(data["cases"]) == len(cases)
    md = (tmp_path / "kernels.md").read_text()
    assert "# Kernel benchmarks — TestGPU" in md and "4.00×" in md and "error: RuntimeError" in md
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_exits_2_without_gpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          env={**env, "TRITON_INTERPRET": "1"}, timeout=120)
    assert proc.returncode == 2 and "TRITON_INTERPRET" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "kernel,params",
    [
        ("window_attention", dict(H=9, W=10, C=64, heads=2, window=7, shift=3)),
        ("window_attention", dict(H=13, W=9, C=64, heads=2, window=12, shift=0)),
        ("semantic_global", dict(N=40, K=19, C=24)),
        ("semantic_window", dict(H=9, W=10, K=19, C=24, window=7)),
        ("upsample_argmax", dict(K=5, h=4, w=6, H=13, W=21)),
        ("ms_deform_attn", dict(levels=[(3, 5), (2, 2), (1, 1)], Lq=7, M=2, P=3, D=5)),
    ],
)
def test_providers_agree_on_cpu(kernel, params, device):
    """Every provider (triton under the interpreter, eager, SDPA baseline) computes the same thing."""
    pytest.importorskip("triton")
    bk = _load()
    case = bk.Case(kernel, "tiny", "fp32", params, flops=1.0, bytes=1.0)
    provs, err_of, _ = bk._providers(torch, case, device=device)
    assert "triton" in provs and "eager" in provs
    for name, fn in provs.items():
        assert err_of(fn()) <= (0 if kernel == "upsample_argmax" else 2e-5), name
