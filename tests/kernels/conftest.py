"""Shared set-up for the Triton kernel tests.

Without a CUDA GPU the kernels run in Triton's CPU interpreter, which must be switched on *before* the
kernel modules are imported (Triton decides per ``@triton.jit`` function at decoration time), so this file
sets ``TRITON_INTERPRET=1`` first thing. With a GPU the same test grids run compiled on ``cuda``
(set ``SEMASK_TEST_INTERPRET=1`` to force the interpreter anyway).

``aot_compile`` compiles kernels ahead of time for NVIDIA targets in a subprocess (no interpreter, no GPU
needed: Triton ships ptxas), which catches code that only the interpreter accepts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

if os.environ.get("SEMASK_TEST_INTERPRET") == "1" or not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

DEVICE = "cuda" if os.environ.get("TRITON_INTERPRET") != "1" else "cpu"

_AOT_SCRIPT = r"""
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
results = []
for job in json.load(sys.stdin):
    kernel = getattr(importlib.import_module(job["module"]), job["kernel"])
    consts = job["consts"]
    sig = {}
    for name in kernel.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in job["ptr"]:
            sig[name] = "*" + job["ptr"][name]
        elif name in job.get("float_args", []):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    for arch in job["archs"]:
        try:
            c = triton.compile(ASTSource(kernel, sig, consts), target=GPUTarget("cuda", arch, 32),
                               options=job.get("options", {}))
            results.append({"name": job["name"], "arch": arch, "ok": True, "shared": c.metadata.shared,
                            "cubin_bytes": len(c.asm["cubin"])})
        except Exception as e:  # reported to the test
            results.append({"name": job["name"], "arch": arch, "ok": False, "error": repr(e)[:2000]})
print("AOT_RESULTS=" + json.dumps(results))
"""


def run_aot_compile(jobs: list[dict]) -> list[dict]:
    """Compile kernels for NVIDIA targets in a fresh process (interpreter off).

    Args:
        jobs: dicts with ``name``, ``module``, ``kernel``, ``ptr`` ({arg: triton dtype}), ``float_args``,
            ``consts`` ({constexpr: value}), ``archs`` (e.g. [80, 90]), ``options`` (num_warps, ...).

    Returns:
        One dict per (job, arch): ``ok``, ``shared`` (bytes of shared memory) or ``error``.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", _AOT_SCRIPT], input=json.dumps(jobs), capture_output=True, text=True, env=env,
        timeout=300,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("AOT_RESULTS="):
            return json.loads(line[len("AOT_RESULTS="):])
    raise AssertionError(f"AOT compile subprocess failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")


def _has_ptxas() -> bool:
    try:
        import triton.backends.nvidia as nv  # noqa: PLC0415
    except Exception:
        return False
    return os.path.exists(os.path.join(os.path.dirname(nv.__file__), "bin", "ptxas"))


@pytest.fixture
def aot_compile():
    """``run_aot_compile``; skips when Triton or its bundled ptxas is missing."""
    pytest.importorskip("triton")
    if not _has_ptxas():
        pytest.skip("triton's bundled NVIDIA ptxas is not available")
    return run_aot_compile


@pytest.fixture
def device() -> str:
    """'cuda' when the kernels run compiled, 'cpu' under the interpreter."""
    return DEVICE
