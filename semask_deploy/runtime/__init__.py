"""Inference runtime: one :class:`Segmenter` over PyTorch, ONNX Runtime and TensorRT."""

from .segmenter import Segmenter

__all__ = ["Segmenter"]
