"""semask-deploy: SeMask semantic segmentation from checkpoint to fast, verified deployment.

``import semask_deploy`` needs only torch/numpy: ONNX Runtime, TensorRT and Triton load lazily.
"""

from __future__ import annotations

from .api import build_model, load_model
from .config import VARIANTS, SeMaskConfig
from .errors import SemaskError
from .maskformer_config import MaskFormerConfig
from .model import MaskFormerSegmentor, SeMaskSegmentor

__version__ = "0.1.0"

__all__ = ["MaskFormerConfig", "MaskFormerSegmentor", "SeMaskConfig", "SeMaskSegmentor", "SemaskError", "Segmenter", "VARIANTS", "build_model", "load_model"]


def __getattr__(name: str):
    if name == "Segmenter":  # the runtime pulls in optional backends lazily
        from .runtime import Segmenter

        return Segmenter
    raise AttributeError(f"module 'semask_deploy' has no attribute {name!r}")
