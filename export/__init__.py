"""Export SeMask models: ONNX (fp32 / mixed fp16 / int8 Q/DQ), TensorRT engines, metadata sidecars, checks.

Importing this package is cheap: torch, onnx, onnxruntime and tensorrt load only inside the functions.

    from semask_deploy.export.pipeline import ExportOptions, run_export
    result = run_export(ExportOptions(ckpt="semask_swin_tiny_ade20k.pth", fmt="onnx", precision="fp16"))

Modules: ``onnx`` (torch → ONNX), ``precision`` (fp16 graph pass, int8 calibration + QDQ), ``metadata``
(the ``<name>.json`` sidecar), ``verify`` (ONNX Runtime parity vs PyTorch), ``pipeline`` (a whole
``semask-export`` run), ``tensorrt`` (engine builds), ``trt_check`` (offline TensorRT parser check),
``winograd`` (3×3 convs as Winograd F(4×4, 3×3) in plain ONNX ops, in the fp32 ONNX Runtime graph).
"""

from __future__ import annotations

__all__ = ["ExportOptions", "ExportResult", "run_export"]


def __getattr__(name: str):
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'semask_deploy.export' has no attribute {name!r}")
