"""semask-deploy: SeMask semantic segmentation from checkpoint to fast, verified deployment.

``import semask_deploy`` needs only torch/numpy: ONNX Runtime, TensorRT and Triton load lazily. The names below
are imported on first use (PEP 562), so the command-line tools start, answer ``--help`` and take Ctrl-C before
torch is loaded.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_LAZY = {
    "build_model": (".api", "build_model"),
    "load_model": (".api", "load_model"),
    "VARIANTS": (".config", "VARIANTS"),
    "SeMaskConfig": (".config", "SeMaskConfig"),
    "SemaskError": (".errors", "SemaskError"),
    "MaskFormerConfig": (".maskformer_config", "MaskFormerConfig"),
    "MaskFormerSegmentor": (".model", "MaskFormerSegmentor"),
    "SeMaskSegmentor": (".model", "SeMaskSegmentor"),
    "Segmenter": (".runtime", "Segmenter"),  # the runtime pulls in optional backends lazily
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    import importlib
    import importlib.util

    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module, __name__), attr)
        globals()[name] = value  # the next access is a plain attribute
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)  # a submodule (semask_deploy.api, .config, …)
    raise AttributeError(f"module 'semask_deploy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
