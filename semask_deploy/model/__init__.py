"""SeMask in PyTorch: Swin parts, semantic attention, Semantic-FPN head and segmentor; the mask-classification
family (Mask2Former, MaskFormer, FaPN, MSFaPN) in ``mask_former`` and its parts."""

from .mask_former import MaskFormerSegmentor
from .segmentor import SeMaskSegmentor

__all__ = ["MaskFormerSegmentor", "SeMaskSegmentor"]
