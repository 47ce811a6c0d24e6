"""Keep the calling thread's alternate signal stack across OpenVINO calls that load its CPU plugin.

OpenVINO's CPU plugin installs an alternate signal stack of its own on the thread that creates it (sized for
AMX state) and, when the plugin is destroyed, puts back the stack that was current before — but only if its
own is still current, and it unmaps its own either way. With two plugins (two ``ov.Core`` objects) destroyed
in the order they were made, the second one "restores" the first one's stack, which is already unmapped.
The next signal whose handler runs on the alternate stack — every handler Python installs does (``SA_ONSTACK``):
SIGINT, or the SIGCHLD handler of a PyTorch ``DataLoader`` with workers — then kills the process with
SIGSEGV, without a traceback. (Seen as a test worker that died after the OpenVINO tests when a later test
trained with ``--workers 1``; reproduced with two cores, openvino 2026.4.)

:func:`keep_signal_stack` saves the thread's stack before and restores it after: the plugin's own stack is
then never current, so its destructor leaves the thread alone. Python's ``faulthandler`` sizes its stack
with the same ``AT_MINSIGSTKSZ`` rule, so the restored stack is as safe on AMX CPUs. Linux only; elsewhere a
no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator

SS_DISABLE = 2  # <bits/sigstack.h>, the same on every Linux architecture


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:  # pragma: no cover - a Linux without a loadable libc
        return None


_LIBC = _libc()


def current() -> tuple[int, int, int] | None:
    """The calling thread's alternate signal stack as (address, flags, size); None where unknown."""
    if _LIBC is None:
        return None
    old = _StackT()
    if _LIBC.sigaltstack(None, ctypes.byref(old)) != 0:
        return None
    return int(old.ss_sp or 0), int(old.ss_flags), int(old.ss_size)


def _restore(saved: tuple[int, int, int]) -> None:
    address, flags, size = saved
    stack = _StackT(address or None, SS_DISABLE if flags & SS_DISABLE else 0, size)
    _LIBC.sigaltstack(ctypes.byref(stack), None)  # type: ignore[union-attr]


@contextlib.contextmanager
def keep_signal_stack() -> Iterator[None]:
    """Run the block, then give the calling thread back the alternate signal stack it had before."""
    saved = current()
    try:
        yield
    finally:
        if saved is not None and current() != saved:
            _restore(saved)
