"""Configuration of the SeMask mask-classification models (Mask2Former, MaskFormer, FaPN, MSFaPN).

One frozen dataclass, :class:`MaskFormerConfig`, holds the backbone (SeMask-Swin, with an explicit per-stage
semantic mode and the semantic window), the pixel decoder, the transformer decoder, the class count and the
detectron2 test-time resize. :func:`official_sem_modes` / :func:`official_sem_window` apply the rules of
the three official code trees (reference/m2f/README.md, "Backbone"), which differ from SeMask-FPN's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import SEMANTIC_MODES, SeMaskConfig
from .errors import ConfigError

ARCHS = ("mask2former", "maskformer")
PIXEL_DECODERS = ("msdeform", "msdeform_fapn", "base", "fapn")

# detectron2 ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST) of the official configs.
TEST_RESIZE = {"ade20k": (640, 2560), "cityscapes": (1024, 2048)}


@dataclass(frozen=True)
class MaskFormerConfig:
    """Hyper-parameters of a SeMask-Swin + mask-classification model.

    Attributes:
        arch: ``"mask2former"`` (masked-attention decoder) or ``"maskformer"`` (DETR decoder on res5).
        pixel_decoder: ``"msdeform"`` (Mask2Former), ``"msdeform_fapn"`` (MSFaPN), ``"base"`` (MaskFormer
            FPN) or ``"fapn"`` (FaPN).
        embed_dim, depths, num_heads, window_size, mlp_ratio, patch_size: the Swin backbone.
        sem_window_size: window of the windowed semantic attention (Cityscapes: 7 while Swin uses 12).
        sem_modes: per stage ``"window"`` or ``"global"`` semantic attention.
        num_classes: K (the backbone's semantic layers use the same K).
        conv_dim: pixel-decoder width; mask_dim: channels of ``mask_features``.
        enc_layers, enc_heads, enc_points, enc_ffn: deformable encoder (MSDeformAttn decoders only).
        hidden_dim, dec_layers, dec_heads, dec_ffn, num_queries: transformer decoder (``dec_layers`` = layers
            actually built: Mask2Former ``DEC_LAYERS − 1``).
        dataset: ``ade20k``, ``cityscapes`` or ``custom`` (class names, palette, test resize).
        min_size_test, max_size_test: ResizeShortestEdge of the test pipeline.
        size_divisibility: the input is zero-padded (after normalising) to a multiple of this.
        name: a label for reports.
    """

    arch: str
    pixel_decoder: str
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    sem_window_size: int
    sem_modes: tuple[str, ...]
    num_classes: int
    conv_dim: int = 256
    mask_dim: int = 256
    enc_layers: int = 6
    enc_heads: int = 8
    enc_points: int = 4
    enc_ffn: int = 1024
    hidden_dim: int = 256
    dec_layers: int = 9
    dec_heads: int = 8
    dec_ffn: int = 2048
    num_queries: int = 100
    mlp_ratio: float = 4.0
    patch_size: int = 4
    dataset: str = "custom"
    min_size_test: int = 640
    max_size_test: int = 2560
    size_divisibility: int = 32
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.pixel_decoder not in PIXEL_DECODERS:
            raise ConfigError(f"pixel_decoder must be one of {PIXEL_DECODERS}, got {self.pixel_decoder!r}")
        if len(self.depths) != 4 or len(self.num_heads) != 4 or len(self.sem_modes) != 4:
            raise ConfigError("depths, num_heads and sem_modes must all have 4 entries")
        if any(m not in SEMANTIC_MODES for m in self.sem_modes):
            raise ConfigError(f"semantic modes must be in {SEMANTIC_MODES}, got {self.sem_modes}")
        if self.hidden_dim % self.dec_heads or self.conv_dim % self.enc_heads:
            raise ConfigError("decoder / encoder widths must be divisible by their head counts")
        if self.conv_dim % 32 or self.conv_dim % 2:
            raise ConfigError(f"conv_dim {self.conv_dim} must be a multiple of 32 (GroupNorm(32))")
        if self.num_classes < 1 or self.num_queries < 1 or self.dec_layers < 1:
            raise ConfigError("num_classes, num_queries and dec_layers must be positive")

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Channels of res2..res5."""
        return tuple(self.embed_dim * 2**i for i in range(4))

    @property
    def test_scale(self) -> tuple[int, int]:
        """(long, short) bound, for displays and slide defaults; the exact rule is :attr:`resize_rule`."""
        return (self.max_size_test, self.min_size_test)

    @property
    def crop_size(self) -> tuple[int, int]:
        """Default sliding-window crop."""
        return (self.min_size_test, self.min_size_test)

    @property
    def resize_rule(self) -> dict[str, Any]:
        """The test-time resize, as the runtime and export sidecars read it (detectron2
        ``ResizeShortestEdge``: scale = min_size/min(h, w), capped so the long side ≤ max_size, new size
        ``int(x + 0.5)``, PIL bilinear on uint8)."""
        return {
            "kind": "shortest_edge",
            "min_size": self.min_size_test,
            "max_size": self.max_size_test,
            "interpolation": "pil_bilinear",
            "size_divisibility": self.size_divisibility,
        }

    def backbone_config(self) -> SeMaskConfig:
        """The SeMask-Swin part as a :class:`SeMaskConfig` (the backbone modules are shared with SeMask-FPN)."""
        return SeMaskConfig(
            embed_dim=self.embed_dim, depths=self.depths, num_heads=self.num_heads, window_size=self.window_size,
            sem_window_size=self.sem_window_size, num_classes=self.num_classes, sem_num_classes=self.num_classes,
            sem_modes=self.sem_modes, mlp_ratio=self.mlp_ratio, patch_size=self.patch_size, name=self.name,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MaskFormerConfig":
        """Inverse of :meth:`to_dict` (lists accepted for tuples)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown mask-former config fields: {sorted(unknown)}")
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        except TypeError as exc:
            raise ConfigError(f"invalid mask-former config: {exc}") from exc


def official_sem_modes(arch: str, pixel_decoder: str, num_classes: int) -> tuple[str, ...]:
    """Windowed/global semantic attention per stage, as each official code tree decides it.

    SeMask-FAPN (FaPN and MSFaPN): stages 0–1 windowed, 2–3 global. SeMask-MaskFormer: 0–2 windowed, 3
    global. SeMask-Mask2Former: 0–2 windowed + 3 global when K == 150, else all windowed.
    """
    if pixel_decoder in ("fapn", "msdeform_fapn"):
        return ("window", "window", "global", "global")
    if arch == "maskformer" or num_classes == 150:
        return ("window", "window", "window", "global")
    return ("window",) * 4


def official_sem_window(window_size: int, num_classes: int) -> int:
    """The semantic window: the ADE20K configs set ``SEM_WINDOW_SIZE`` = the Swin window; the others keep
    the code default 7."""
    return window_size if num_classes == 150 else 7


def dataset_for_classes(num_classes: int) -> str:
    """``ade20k`` for 150 classes, ``cityscapes`` for 19, else ``custom`` (ADE20K's test resize)."""
    return {150: "ade20k", 19: "cityscapes"}.get(num_classes, "custom")
