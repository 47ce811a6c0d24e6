"""SeMask-FPN in PyTorch: Swin parts, semantic attention, Semantic-FPN head, segmentor."""

from .segmentor import SeMaskSegmentor

__all__ = ["SeMaskSegmentor"]
