"""TensorRT and CUDA probes shared by the engine builder (``export/tensorrt.py``) and the runner
(``runtime/trt_runner.py``): one lazy ``import tensorrt``, its version, cuda-python's runtime module, the
GPU's compute capability, and loading TensorRT's standard plugin library.

Nothing here imports tensorrt, torch or cuda-python at module level, so ``import semask_deploy`` works on
a machine without them.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from semask_deploy.errors import MissingDependencyError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "TensorRT is not installed or cannot be loaded ({why}). Install it with: pip install 'semask-deploy[trt]' "
    "on a machine with an NVIDIA GPU and driver (TensorRT cannot build or run engines without one)."
)


def import_tensorrt(extra_hint: str = "") -> Any:
    """Import ``tensorrt`` lazily.

    Args:
        extra_hint: a sentence appended to the error message (what the caller can do without TensorRT).

    Returns:
        The ``tensorrt`` module.

    Raises:
        MissingDependencyError: not installed, or its shared libraries (libnvinfer) cannot be loaded.
    """
    try:
        return importlib.import_module("tensorrt")
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError for a missing libnvinfer
        message = INSTALL_HINT.format(why=exc) + (f" {extra_hint}" if extra_hint else "")
        raise MissingDependencyError(message) from exc


def tensorrt_version() -> str | None:
    """Version string of the importable ``tensorrt`` module (e.g. ``"10.15.1.29"``), else None."""
    try:
        return str(importlib.import_module("tensorrt").__version__)
    except Exception:  # noqa: BLE001 - not installed, or its libraries are missing
        return None


def cudart() -> Any | None:
    """cuda-python's runtime module (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6), else None."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except Exception:  # noqa: BLE001
            continue
    return None


def gpu_compute_capability(device: int = 0) -> str | None:
    """Compute capability of CUDA device ``device`` as ``"major.minor"`` (e.g. ``"9.0"``), else None.

    Uses cuda-python when importable, else ``torch.cuda``; returns None without a GPU or driver.
    """
    rt = cudart()
    if rt is not None:
        try:
            ok = rt.cudaError_t.cudaSuccess
            err, count = rt.cudaGetDeviceCount()
            if err == ok and count and device < count:
                attr = rt.cudaDeviceAttr
                e1, major = rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device)
                e2, minor = rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device)
                if e1 == ok and e2 == ok:
                    return f"{int(major)}.{int(minor)}"
        except Exception:  # noqa: BLE001 - fall through to torch
            pass
    try:
        import torch

        if torch.cuda.is_available() and device < torch.cuda.device_count():
            major, minor = torch.cuda.get_device_capability(device)
            return f"{major}.{minor}"
    except Exception:  # noqa: BLE001
        pass
    return None


def load_plugins(trt: Any, logger: Any) -> bool:
    """Register TensorRT's standard plugins (``libnvinfer_plugin``) in the default namespace.

    The ONNX parser builds some ops through these plugins — ``DeformConv`` (the FaPN pixel decoders)
    becomes the ``ModulatedDeformConv2d`` plugin — and an engine that contains such a layer only
    deserialises once they are registered. Call it before parsing and before deserialising.

    Args:
        trt: the ``tensorrt`` module.
        logger: the ``tensorrt.ILogger`` the builder/runtime uses.

    Returns:
        True when the plugins are registered; False (with a logged warning) when the plugin library
        could not be loaded — engines without plugin layers still work.
    """
    init = getattr(trt, "init_libnvinfer_plugins", None)
    if init is None:
        log.warning("this tensorrt module has no init_libnvinfer_plugins(); plugin layers (DeformConv) will not load")
        return False
    try:
        ok = bool(init(logger, ""))
    except Exception as exc:  # noqa: BLE001 - e.g. libnvinfer_plugin.so missing
        log.warning("could not load TensorRT's plugin library libnvinfer_plugin (%s); plugin layers "
                    "(DeformConv) will not load", exc)
        return False
    if not ok:
        log.warning("init_libnvinfer_plugins() failed; plugin layers (DeformConv) will not load")
    return ok
