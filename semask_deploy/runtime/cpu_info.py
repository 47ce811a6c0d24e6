"""The CPU we run on: model name and the ISA features that decide which precisions are native.

Read from ``/proc/cpuinfo`` (Linux) — never assumed: machines here differ (AVX2-only, AVX-512 with VNNI
and bf16, AMX). :func:`native_bf16` is the gate for bf16 inference (OpenVINO bf16, torch bf16 autocast):
without ``avx512_bf16`` or AMX the runtimes would emulate bf16 in fp32 — slower and still rounded — so we
refuse instead of running it silently.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ConfigError

#: features reported with every CPU benchmark result: name shown → /proc/cpuinfo flag
ISA_FLAGS = {
    "AVX2": "avx2",
    "AVX-512": "avx512f",
    "AVX-512 VNNI": "avx512_vnni",
    "AVX-VNNI": "avx_vnni",
    "AVX-512 BF16": "avx512_bf16",
    "AMX-BF16": "amx_bf16",
    "AMX-INT8": "amx_int8",
}


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The ``flags`` of the first processor in ``/proc/cpuinfo`` (empty where it does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_summary() -> dict[str, Any]:
    """``{"model", "logical_cpus", "isa": {name: bool}}`` for reports."""
    import os

    flags = cpu_flags()
    return {"model": cpu_model(), "logical_cpus": os.cpu_count(),
            "isa": {name: flag in flags for name, flag in ISA_FLAGS.items()}}


def isa_text() -> str:
    """``"AVX2, AVX-512, AVX-512 VNNI, AVX-512 BF16"``: the features present (or ``"none of …"``)."""
    present = [name for name, ok in cpu_summary()["isa"].items() if ok]
    return ", ".join(present) if present else "none of " + "/".join(ISA_FLAGS)


def cpu_description() -> str:
    """``"AMD EPYC (AVX2)"``: the model and its ISA features in one string, for reports."""
    return f"{cpu_model()} ({isa_text()})"


def native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (``avx512_bf16`` or AMX-BF16)."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def int8_dot_product() -> bool:
    """Whether the CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX-INT8).

    Without them, x86 int8 GEMMs multiply through saturating int16 pairs (``vpmaddubsw``) or widen to int16.
    Measured on an AVX2-only EPYC (SeMask-T, 512×512 and 499×667): ONNX Runtime int8 1.21–1.34× its fp32,
    OpenVINO int8 no faster than f32.
    """
    flags = cpu_flags()
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


def require_native_bf16(what: str) -> None:
    """Raise :class:`ConfigError` unless the CPU has native bf16.

    Args:
        what: the thing that asked for bf16, for the message (e.g. ``"OpenVINO bf16"``).
    """
    if not native_bf16():
        raise ConfigError(
            f"{what} needs a CPU with native bf16 (avx512_bf16 or AMX); this CPU, {cpu_description()}, has "
            "neither, and emulated bf16 would be slower than fp32 and still lose precision: use fp32 or int8"
        )
