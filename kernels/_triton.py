"""Lazy access to Triton for the kernel modules.

The kernel modules define ``@triton.jit`` functions at import time. To keep them importable on machines
without Triton (so their pure-PyTorch ``*_ref`` functions stay usable), :func:`load_triton` returns small
stand-ins when Triton is missing; launching a kernel then raises a :class:`RuntimeError` that says what to
install. Importing this module never imports Triton.

Interpreter mode: Triton decides at *decoration* time whether a ``@triton.jit`` function is compiled for a
GPU or run by its CPU interpreter, from the environment variable ``TRITON_INTERPRET`` (``1``). It must
therefore be set before the kernel modules are imported. :func:`is_interpreted` tells which kind a kernel
object is.
"""

from __future__ import annotations

import importlib.util
import os
from types import SimpleNamespace
from typing import Any

import torch

_INSTALL_HINT = (
    "Triton is not installed; install it with `pip install 'semask-deploy[gpu]'` (or `pip install triton`), "
    "or use the 'eager' or 'sdpa' attention backend."
)


def triton_available() -> bool:
    """Return whether the ``triton`` package can be imported, without importing it."""
    return importlib.util.find_spec("triton") is not None


def interpret_env() -> bool:
    """Return whether ``TRITON_INTERPRET`` is set to a true value in the environment right now."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


class _MissingKernel:
    """Stand-in for a ``@triton.jit`` function when Triton is not installed."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "kernel")

    def __getitem__(self, grid: Any) -> Any:
        raise RuntimeError(f"cannot launch Triton kernel {self.__name__}: {_INSTALL_HINT}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"cannot call Triton function {self.__name__}: {_INSTALL_HINT}")


def _missing_jit(fn: Any = None, **_kwargs: Any) -> Any:
    if fn is None:
        return _missing_jit
    return _MissingKernel(fn)


class _Constexpr:
    """Stand-in for ``tl.constexpr`` (only used in annotations when Triton is missing)."""


def load_triton() -> tuple[Any, Any, bool]:
    """Import Triton, or return stand-ins when it is not installed.

    Returns:
        ``(triton, tl, available)``: the ``triton`` and ``triton.language`` modules and ``True``, or
        stand-ins whose ``jit`` decorator produces kernels that raise on launch, and ``False``.
    """
    if not triton_available():
        triton_stub = SimpleNamespace(jit=_missing_jit, cdiv=lambda a, b: -(-a // b))
        tl_stub = SimpleNamespace(constexpr=_Constexpr)
        return triton_stub, tl_stub, False
    import triton  # noqa: PLC0415  (lazy on purpose)
    import triton.language as tl  # noqa: PLC0415

    return triton, tl, True


def is_interpreted(kernel: Any) -> bool:
    """Return whether ``kernel`` (a ``@triton.jit`` object) runs in Triton's CPU interpreter."""
    if isinstance(kernel, _MissingKernel):
        return False
    try:
        from triton.runtime.interpreter import InterpretedFunction  # noqa: PLC0415
    except ImportError:  # pragma: no cover - very old or very new triton
        return interpret_env()
    return isinstance(kernel, InterpretedFunction)


def check_launchable(kernel: Any, name: str, *tensors: torch.Tensor) -> None:
    """Raise a clear error unless ``kernel`` can run on these tensors.

    A kernel can run when Triton is installed and either every tensor is on a CUDA device (compiled mode)
    or the kernel was created in interpreter mode (``TRITON_INTERPRET=1`` set before the kernel module
    was imported).

    Args:
        kernel: the ``@triton.jit`` object that will be launched.
        name: the public function's name, for the message.
        *tensors: the input tensors.

    Raises:
        RuntimeError: Triton missing, inputs on the CPU without the interpreter, or mixed devices.
    """
    if isinstance(kernel, _MissingKernel):
        raise RuntimeError(f"{name}: {_INSTALL_HINT}")
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise RuntimeError(f"{name}: all inputs must be on one device, got {sorted(map(str, devices))}")
    if is_interpreted(kernel):
        return
    device = next(iter(devices))
    if device.type != "cuda":
        hint = (
            " TRITON_INTERPRET is set now but was not when the kernel module was imported; set it before"
            " importing triton or semask_deploy.kernels.*."
            if interpret_env()
            else " Move the inputs to a CUDA GPU, set TRITON_INTERPRET=1 before importing triton (slow CPU"
            " interpreter, for tests), or use the 'eager'/'sdpa' attention backend."
        )
        raise RuntimeError(f"{name}: the Triton kernel needs CUDA tensors, got tensors on '{device}'.{hint}")


def fp32_dot_precision(device: torch.device) -> str:
    """Triton ``input_precision`` for fp32 dots: ``"tf32x3"`` on sm_80+ GPUs, else ``"ieee"``.

    3xTF32 splits each fp32 operand into a TF32 high part and a TF32 remainder and sums three tensor-core
    products, which keeps fp32-level error (measured on an H200: max abs error vs fp64 1.0-1.4e-6 against
    1.0-1.4e-6 with IEEE FMA dots) at 1.7-8x the speed (``benchmarks/results/gpu/kernel_tuning.md``). It is
    *not* TF32: plain TF32 keeps a 10-bit mantissa and would put ~1e-3 relative error into fp32 results.
    The interpreter, pre-Ampere GPUs (no TF32) and ROCm builds (whose Triton backend has no 3xTF32) get IEEE
    dots.
    """
    if device.type != "cuda" or torch.version.hip is not None:
        return "ieee"
    return "tf32x3" if torch.cuda.get_device_capability(device) >= (8, 0) else "ieee"


def next_pow2(n: int) -> int:
    """Smallest power of two ``>= n`` (``n >= 1``)."""
    return 1 << max(0, (int(n) - 1).bit_length())
