"""Image I/O, mmseg-exact pre-processing and augmentation, data-set readers and synthetic scenes."""

from __future__ import annotations

from .datasets import (
    ADE20K,
    Cityscapes,
    COCOStuff,
    FolderDataset,
    SegDataset,
    detect_kind,
    open_dataset,
)
from .io import colorize, list_images, overlay, read_image_rgb, read_label, write_png
from .synthetic import SYNTHETIC_CLASSES, SyntheticScenes, write_synthetic_dataset
from .transforms import (
    TrainAugment,
    normalize,
    preprocess,
    rescale_image,
    rescale_size,
    resize_image,
    slide_windows,
    to_tensor_batch,
)

__all__ = [
    "ADE20K", "COCOStuff", "Cityscapes", "FolderDataset", "SegDataset", "detect_kind", "open_dataset",
    "colorize", "list_images", "overlay", "read_image_rgb", "read_label", "write_png",
    "SYNTHETIC_CLASSES", "SyntheticScenes", "write_synthetic_dataset",
    "TrainAugment", "normalize", "preprocess", "rescale_image", "rescale_size", "resize_image",
    "slide_windows", "to_tensor_batch",
]
