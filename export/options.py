"""What ``semask-export`` accepts and produces: the options, their checks (before any work), the resolved
shapes (what the ONNX fixes, and the TensorRT profile) and the result of a run. The run itself is
:mod:`semask_deploy.export.pipeline`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semask_deploy.errors import ConfigError
from semask_deploy.export.onnx import DEFAULT_OPSET

FORMATS = ("onnx", "trt", "all", "openvino", "aoti")
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_MIN_HW = (256, 256)
DEFAULT_MAX_HW = (1024, 2048)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class ExportOptions:
    """Everything ``semask-export`` accepts (see ``semask-export --help``)."""

    ckpt: Path | None = None
    demo: bool = False
    fmt: str = "onnx"
    precision: str = "fp32"
    calib_images: Path | None = None
    calib_count: int = 32
    static: tuple[int, int] | None = None
    min_shape: tuple[int, int] | None = None
    opt_shape: tuple[int, int] | None = None
    max_shape: tuple[int, int] | None = None
    batch: int | None = None
    max_batch: int | None = None
    with_logits: bool = False
    output_size: bool = True  # graph input output_size (Ho, Wo): labels at the original size (official, exact)
    winograd: bool = True  # the fp32 ONNX Runtime graph's 3×3 convs as Winograd (export.winograd)
    preprocess: bool = False
    timing_cache: Path | None = None
    out: Path = Path("exported")
    name: str | None = None
    force: bool = False
    verify: bool = True
    opset: int = DEFAULT_OPSET
    int8_activations: str = "s8"
    int8_calibration: str = "percentile"
    workspace_gb: float = 4.0
    quiet: bool = False
    device: str = "cpu"  # --fmt aoti: cpu (C++ kernels) or cuda (CUDA/Triton kernels)
    model: Any = None  # an in-memory SeMaskSegmentor instead of a checkpoint (library use)

    def __post_init__(self) -> None:  # library callers may pass str paths and list sizes
        for name in ("ckpt", "calib_images", "timing_cache", "out"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        for name in ("static", "min_shape", "opt_shape", "max_shape"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(int(v) for v in value))


@dataclass
class ExportResult:
    """What a run wrote, and what it measured."""

    onnx_path: Path | None = None
    onnx_sidecar: Path | None = None
    engine_path: Path | None = None
    engine_sidecar: Path | None = None
    aoti_path: Path | None = None  # --fmt aoti: the .pt2 package and its sidecar
    aoti_sidecar: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] | None = None
    trt_check: dict[str, Any] | None = None
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)


@dataclass
class Shapes:
    """Resolved shapes: what the ONNX fixes, and the TensorRT profile."""

    static_hw: tuple[int, int] | None
    static_batch: int | None
    min_hw: tuple[int, int]
    opt_hw: tuple[int, int]
    max_hw: tuple[int, int]
    batch_range: tuple[int, int, int]

    def profile(self, input_name: str, preprocess: bool) -> dict[str, Any]:
        def shape(b: int, hw: tuple[int, int]) -> list[int]:
            return [b, hw[0], hw[1], 3] if preprocess else [b, 3, hw[0], hw[1]]

        lo, opt, hi = self.batch_range
        return {"name": input_name, "min": shape(lo, self.min_hw), "opt": shape(opt, self.opt_hw),
                "max": shape(hi, self.max_hw)}

    def output_size_range(self) -> dict[str, Any]:
        """VALUE range of the ``output_size`` input (a TensorRT shape tensor): 1x1 up to a square of side
        max(2048, the largest input side) — original images are any orientation and usually larger than a
        static input size."""
        side = max(2048, *self.max_hw)
        return {"name": "output_size", "values": True, "min": [1, 1], "opt": list(self.opt_hw), "max": [side, side]}


def resolve_shapes(o: ExportOptions, crop_size: tuple[int, int]) -> Shapes:
    """Check the shape flags and fill in defaults (opt = the model's training crop).

    Raises:
        ConfigError: conflicting flags or min > opt > max.
    """
    dynamic_flags = [f for f, v in (("--min-shape", o.min_shape), ("--opt-shape", o.opt_shape),
                                    ("--max-shape", o.max_shape)) if v is not None]
    if o.static is not None and dynamic_flags:
        raise ConfigError(f"--static fixes the size; it cannot be combined with {', '.join(dynamic_flags)}")
    if o.batch is not None and o.max_batch is not None:
        raise ConfigError("--batch (a fixed batch) and --max-batch (a dynamic batch up to N) exclude each other")
    for flag, value in (("--batch", o.batch), ("--max-batch", o.max_batch)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    for flag, hw in (("--static", o.static), ("--min-shape", o.min_shape), ("--opt-shape", o.opt_shape),
                     ("--max-shape", o.max_shape)):
        if hw is not None and (len(hw) != 2 or min(hw) < 32):
            raise ConfigError(f"{flag} must be HxW with both sides at least 32 pixels, got {hw}")
    if o.batch is not None:
        batch_range = (o.batch,) * 3
    else:
        batch_range = (1, 1, o.max_batch or 1)
    if o.static is not None:
        hw = tuple(o.static)
        return Shapes(hw, o.batch, hw, hw, hw, batch_range)  # type: ignore[arg-type]
    opt = tuple(o.opt_shape or crop_size)
    lo = tuple(o.min_shape or tuple(min(a, b) for a, b in zip(DEFAULT_MIN_HW, opt)))
    hi = tuple(o.max_shape or tuple(max(a, b) for a, b in zip(DEFAULT_MAX_HW, opt)))
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise ConfigError(f"shapes must satisfy min <= opt <= max in both H and W; got min {hw_text(lo)}, "
                          f"opt {hw_text(opt)}, max {hw_text(hi)}")
    return Shapes(None, o.batch, lo, opt, hi, batch_range)  # type: ignore[arg-type]


def hw_text(hw: Any) -> str:
    return f"{hw[0]}x{hw[1]}"


def check_options(o: ExportOptions) -> None:
    """Validate everything that does not need the model (fail before any work)."""
    if o.fmt not in FORMATS:
        raise ConfigError(f"--fmt must be one of {', '.join(FORMATS)}, got {o.fmt!r}")
    if o.precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {o.precision!r}")
    if (o.ckpt is None) == (not o.demo) and o.model is None:
        raise ConfigError("give exactly one of --ckpt PATH and --demo")
    from semask_deploy.export.onnx import MAX_OPSET, MIN_OPSET

    if not MIN_OPSET <= int(o.opset) <= MAX_OPSET:
        why = ("onnx cannot lower the exporter's Pad ops below 18" if int(o.opset) < MIN_OPSET else
               "the fp16/int8 passes and the TensorRT check are written for opsets up to 21; at 23 attention becomes "
               "one Attention op")
        raise ConfigError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET}, got {o.opset} ({why})")
    if o.calib_count < 1:
        raise ConfigError(f"--calib-count must be at least 1, got {o.calib_count}")
    from semask_deploy.export.int8 import CALIBRATIONS

    if o.int8_calibration not in CALIBRATIONS:
        raise ConfigError(f"--int8-calibration must be one of {', '.join(CALIBRATIONS)}, got {o.int8_calibration!r}")
    if o.int8_activations not in ("s8", "u8"):
        raise ConfigError(f"--int8-activations must be s8 or u8, got {o.int8_activations!r}")
    defaults = ExportOptions()
    int8_only = [flag for flag, name in (("--calib-count", "calib_count"), ("--int8-calibration", "int8_calibration"),
                                         ("--int8-activations", "int8_activations"))
                 if getattr(o, name) != getattr(defaults, name)]
    if o.precision != "int8" and int8_only:  # otherwise minutes of export, then an fp32/fp16 model without a word
        raise ConfigError(f"{', '.join(int8_only)} only apply to --precision int8 (this export is {o.precision}): add "
                          "--precision int8 or drop them")
    if o.precision == "int8" and o.int8_activations == "u8" and o.fmt in ("trt", "all", "triton-trt"):
        raise ConfigError("TensorRT needs symmetric int8 activations: use --int8-activations s8 with --fmt trt/all")
    if o.name is not None and not _NAME_RE.match(o.name):
        raise ConfigError(f"--name must be a plain file name (letters, digits, . _ + -), got {o.name!r}")
    if o.timing_cache is not None and o.fmt not in ("trt", "all", "triton-trt"):
        raise ConfigError("--timing-cache is only used when building a TensorRT engine (--fmt trt, all or triton-trt)")
    if o.fmt == "aoti" and (o.precision != "fp32" or o.preprocess or o.timing_cache is not None):
        raise ConfigError("--fmt aoti exports the fp32 model with a float32 normalised input: drop --precision "
                          "fp16/int8, --preprocess and --timing-cache")
    if o.device != "cpu" and o.fmt != "aoti":
        raise ConfigError("--device is for --fmt aoti (ONNX and engines are device-independent or built by TensorRT)")
    if o.workspace_gb is not None and not 0 < float(o.workspace_gb) < float("inf"):
        raise ConfigError(f"--workspace-gb must be a positive number of GiB, got {o.workspace_gb}")
    from semask_deploy.fileio import check_output_folder

    check_output_folder(o.out)


def default_stem(o: ExportOptions) -> str:
    """The first part of the default artifact name (``<stem>_<precision>``), known without loading the model."""
    if o.model is not None:
        return o.model.config.name
    return "semask_demo" if o.demo else Path(o.ckpt).stem
