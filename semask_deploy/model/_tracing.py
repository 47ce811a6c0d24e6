"""Whether the model is being traced (torch.jit / torch.export / torch.compile)."""

from __future__ import annotations

import torch


def is_tracing() -> bool:
    """True while the model is traced for export or compilation: no caches, no shape-dependent shortcuts."""
    if torch.jit.is_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is None:
        return False
    exporting = getattr(compiler, "is_exporting", lambda: False)
    return bool(compiler.is_compiling() or exporting())
