"""What this CPU can run natively: ISA flags from ``/proc/cpuinfo`` (Linux), bf16 support.

bf16 is offered only where the CPU computes it natively (``avx512_bf16`` or AMX ``amx_bf16``); elsewhere
PyTorch and OpenVINO would emulate it, slower than fp32, so callers raise an error instead.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The ISA flags of the first CPU in ``/proc/cpuinfo`` (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_native_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (``avx512_bf16`` or ``amx_bf16``)."""
    return any(f in cpu_flags() for f in BF16_FLAGS)


def isa_summary() -> dict[str, bool]:
    """The flags that matter for CPU inference speed: AVX2, AVX-512, VNNI, bf16, AMX."""
    f = cpu_flags()
    return {"avx2": "avx2" in f, "avx512f": "avx512f" in f, "avx512_vnni": "avx512_vnni" in f,
            "avx_vnni": "avx_vnni" in f, "avx512_bf16": "avx512_bf16" in f, "amx_bf16": "amx_bf16" in f,
            "amx_int8": "amx_int8" in f}
