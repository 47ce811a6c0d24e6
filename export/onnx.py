"""PyTorch → ONNX: one graph with dynamic batch, height and width (or a static size).

The exported graph maps

    image        float32 (N, 3, H, W), normalised RGB            (or, with ``preprocess``,
    image_uint8  uint8   (N, H, W, 3), RGB 0–255, normalised inside the graph)
      → labels   int32   (N, H, W)                                 always
      → logits   float32 (N, K, H, W)                              with ``with_logits``

and is the model's eval forward: backbone + Semantic-FPN head, the whole stride-4 logits grid resized
bilinearly (align_corners=False) to the input size, argmax. The training-only semantic branch is not in
the graph. The model is traced in its ``sdpa`` backend (window attention = MatMul/Add/Softmax/MatMul at
opset 18–21; the semantic attention = MatMul/Softmax/MatMul) with ``torch.export`` (non-strict) and
``torch.onnx.export(dynamo=True)``, then cleaned up (onnxscript's optimizer: constant folding, dead code,
no-op removal) and checked with ``onnx.checker``. For labels the graph by default resizes channels-last and
takes the argmax over the contiguous class axis (:func:`nhwc_labels_head`), which ONNX Runtime runs ~4×
faster than the traced NCHW form.

Dynamic shapes: the example input used for tracing is chosen so that no size is special at any stage
(batch 2, odd token grids that are not multiples of the window and hold several windows), so no branch of
the model is specialised to it; shape guards that ``torch.export`` records for that example are not
needed by the ONNX ops (Pad/Slice/Reshape take computed sizes), and parity at other sizes — including
sizes with a single window per stage and sizes that need no padding — is verified after every export.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semask_deploy.config import IMAGENET_MEAN, IMAGENET_STD
from semask_deploy.errors import ConfigError, ExportError, raise_if_interrupted, require
from semask_deploy.export.labels_head import (  # noqa: F401 - public names of this module
    OUTPUT_SIZE, add_output_size_input, nhwc_labels_head, openvino_labels_head, reduce_argmax_head,
    undo_nhwc_labels_head,
)

DEFAULT_OPSET = 20
# 20: GELU is one Gelu op (ONNX Runtime, OpenVINO and TensorRT run it fused; at 18 it is five elementwise ops
# that ONNX Runtime does not fuse in the exporter's form); --opset 18–21 stay available. 17 would need onnx's
# version converter, which has no Pad 18→17 adapter; 22+ would turn SDPA into one Attention op (23) that the
# precision passes do not handle.
MIN_OPSET, MAX_OPSET = 18, 21
INPUT_FLOAT, INPUT_UINT8 = "image", "image_uint8"
DIM_NAMES = ("N", "H", "W")

log = logging.getLogger(__name__)


@dataclass
class OnnxExportInfo:
    """What :func:`export_onnx` produced (for the metadata sidecar)."""

    path: Path
    opset: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    dynamic: dict[str, bool]
    trace_shape: list[int]
    num_nodes: int
    op_counts: dict[str, int]
    seconds: float
    simplifier: str
    notes: list[str] = field(default_factory=list)


def trace_size(window: int, sem_window: int, patch: int = 4) -> tuple[int, int]:
    """An (H, W) for tracing at which no stage has a special size.

    Every stage's token grid is odd, larger than the windows and not a multiple of either, and H ≠ W,
    so ``torch.export`` cannot specialise a branch (one window, no padding, square maps) to the example.
    """
    w_max = max(window, sem_window)
    found: list[int] = []
    for h0 in range(2 * w_max + 1, 64 * w_max):
        sizes = [h0]
        for _ in range(3):
            sizes.append((sizes[-1] + 1) // 2)
        if all(s % 2 == 1 and s % window and s % sem_window and s > w_max for s in sizes):
            found.append(h0)
            if len(found) == 2:
                break
    if len(found) < 2:  # pragma: no cover - always found for real windows
        raise ExportError(f"no generic tracing size for window {window}/{sem_window}")
    return found[0] * patch - 1, found[1] * patch - 3


def mask_former_trace_size(window: int, sem_window: int, divisibility: int = 32) -> tuple[int, int]:
    """An (H, W) for tracing a mask-classification model (input padded to a multiple of ``divisibility``).

    Neither side is a multiple of ``divisibility`` (so the padding is traced), the padded stride-32 grid is
    odd, larger than the windows and not a multiple of them (so every stage pads its windows and holds
    several), and H ≠ W.
    """
    w_max = max(window, sem_window)
    found = [k for k in range(w_max + 1, 64 * w_max)
             if k % 2 == 1 and all((k * 2**i) % window and (k * 2**i) % sem_window for i in range(4))][:2]
    if len(found) < 2:  # pragma: no cover - always found for real windows
        raise ExportError(f"no generic tracing size for window {window}/{sem_window}")
    return found[0] * divisibility - 5, found[1] * divisibility - 7


def _wrapper(model: Any, with_logits: bool, preprocess: bool) -> Any:
    import numpy as np
    import torch
    import torch.nn.functional as F

    class _Export(torch.nn.Module):
        """image (normalised NCHW float, or uint8 NHWC) → labels (int32) [, logits (float32)]."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.with_logits = with_logits
            self.preprocess = preprocess
            # normalize(): (x − mean) · float32(1/std), exactly as semask_deploy.data.normalize
            inv = [float(np.float32(1.0 / s)) for s in IMAGENET_STD]
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("inv_std", torch.tensor(inv, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, image: torch.Tensor):
            x = image
            if self.preprocess:
                # Cast first: TensorRT requires a uint8 network input to go through a Cast to float before any
                # other layer (a Transpose of uint8 is rejected)
                x = (x.to(torch.float32).permute(0, 3, 1, 2) - self.mean) * self.inv_std
            if hasattr(self.model, "forward_lowres"):  # SeMask-FPN: stride-4 logits, resized here
                low = self.model.forward_lowres(x)
                logits = F.interpolate(low, size=x.shape[2:], mode="bilinear", align_corners=False)
            else:  # mask classification: the semantic scores (N, K, H, W) at the input size
                logits = self.model(x)
            labels = logits.argmax(1).to(torch.int32)
            if self.with_logits:
                return labels, logits
            return labels

    return _Export().eval()


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's own progress prints and warnings; keep them for error messages."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "torch.fx",
                                               "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def op_counts(nodes: Any) -> dict[str, int]:
    """How many nodes of each op type (sorted by name), as the sidecar records them."""
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ")):
            return line[:300]
    return type(exc).__name__


def export_onnx(
    model: Any,
    path: str | Path,
    *,
    with_logits: bool = False,
    preprocess: bool = False,
    static_hw: tuple[int, int] | None = None,
    static_batch: int | None = None,
    opset: int = DEFAULT_OPSET,
    simplify: bool = True,
    labels_head: str = "nhwc",
    output_size: bool = False,
    winograd: bool = False,
) -> OnnxExportInfo:
    """Export a :class:`~semask_deploy.model.SeMaskSegmentor` to ONNX (fp32).

    Args:
        model: the segmentor (fp32, any attention backend: it is traced in ``sdpa`` and restored).
        path: destination ``.onnx`` (written as is: callers write to a temporary path and rename).
        with_logits: also output ``logits`` float32 (N, K, H, W).
        preprocess: the input is ``image_uint8`` uint8 (N, H, W, 3) RGB; normalisation is in the graph.
        static_hw: fixed (H, W); default: dynamic H and W.
        static_batch: fixed batch size; default: dynamic N.
        opset: ONNX opset, 18–21.
        simplify: run the graph clean-up (constant folding etc.).
        labels_head: ``"nhwc"`` (default): the labels come from a channels-last resize + argmax over the
            contiguous class axis (:func:`nhwc_labels_head`: same labels, ~4× faster in ONNX Runtime on a
            CPU); ``"nchw"``: argmax over the NCHW logits, as traced (what TensorRT builds are given).
        output_size: add the graph input ``output_size`` int64 [2] (Ho, Wo): ``labels`` are then taken at that
            size after a second bilinear resize of the logits (the official pipeline's resize back to the
            original image; :func:`add_output_size_input`).
        winograd: rewrite the 3×3 convolutions as Winograd F(4×4, 3×3) in plain ONNX ops
            (:func:`~semask_deploy.export.winograd.winograd_convs`): the same outputs to ~1e-5, 1.3–2.0× faster
            per convolution in ONNX Runtime on a CPU. For the fp32 ONNX Runtime graph only (TensorRT and
            OpenVINO pick their own convolution algorithms; Winograd's transforms do not suit int8 or fp16).

    Returns:
        :class:`OnnxExportInfo`.

    Raises:
        ConfigError: bad opset or sizes.
        ExportError: tracing or conversion failed (with the exporter's first error line).
    """
    torch = require("torch", "dev")
    onnx = require("onnx", "dev")
    require("onnxscript", "dev")
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ConfigError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")
    if static_batch is not None and static_batch < 1:
        raise ConfigError(f"batch must be positive, got {static_batch}")
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        raise ExportError(f"export needs the fp32 model, got {dtype}; precision is applied to the ONNX afterwards")
    path = Path(path)
    cfg = model.config
    started = time.perf_counter()
    if static_hw is not None:
        h, w = (int(v) for v in static_hw)
    elif hasattr(cfg, "size_divisibility"):  # Mask2Former / MaskFormer / FaPN: padded to a multiple of 32
        h, w = mask_former_trace_size(cfg.window_size, cfg.sem_window_size, cfg.size_divisibility)
    else:
        h, w = trace_size(cfg.window_size, cfg.sem_window_size, cfg.patch_size)
    n = static_batch if static_batch is not None else 2
    input_name = INPUT_UINT8 if preprocess else INPUT_FLOAT
    if preprocess:
        example = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8)
        axes = {"N": 0, "H": 1, "W": 2}
    else:
        example = torch.randn(n, 3, h, w)
        axes = {"N": 0, "H": 2, "W": 3}
    dyn_flags = {"N": static_batch is None, "H": static_hw is None, "W": static_hw is None}
    dims = {axes[k]: torch.export.Dim.DYNAMIC for k, d in dyn_flags.items() if d}
    wrapper = _wrapper(model, with_logits, preprocess)
    output_names = ["labels", "logits"] if with_logits else ["labels"]
    previous = model.attention_backend
    was_training = model.training
    model.set_attention_backend("sdpa").eval()
    try:
        with _quiet_exporter():
            try:
                with torch.no_grad():
                    ep = torch.export.export(wrapper, (example,), dynamic_shapes={"image": dims} if dims else None,
                                             strict=False)
            except Exception as exc:  # noqa: BLE001 - torch.export raises many types
                raise_if_interrupted(exc)  # Ctrl-C inside torch.export can surface as an AssertionError
                raise ExportError(f"torch.export could not trace the model: {_first_line(exc)}") from exc
            try:
                program = torch.onnx.export(ep, (example,), dynamo=True, input_names=[input_name],
                                            output_names=output_names, opset_version=int(opset), optimize=simplify,
                                            verbose=False)
            except Exception as exc:  # noqa: BLE001
                raise_if_interrupted(exc)
                raise ExportError(f"ONNX conversion failed: {_first_line(exc)}") from exc
        proto = program.model_proto
    finally:
        model.set_attention_backend(previous)
        model.train(was_training)
    notes: list[str] = []
    got_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got_opset != int(opset):
        proto = _convert_opset(proto, int(opset), notes)
    _name_dims(proto, axes, dyn_flags, input_name)
    if preprocess:
        _shapes_after_cast(proto, input_name)
    if labels_head not in ("nhwc", "nchw"):
        raise ConfigError(f"labels_head must be 'nhwc' or 'nchw', got {labels_head!r}")
    if labels_head == "nhwc" and nhwc_labels_head(proto):
        notes.append("labels: channels-last resize + argmax over the class axis (nhwc_labels_head)")
    if output_size:
        if not add_output_size_input(proto):
            raise ExportError("could not add the output_size input: no ArgMax feeding 'labels' in the exported graph")
        notes.append("labels: logits resized again to the output_size input (Ho, Wo), argmax there "
                     "(add_output_size_input)")
    simplifier = "none"
    if simplify:
        proto, simplifier = clean_graph(proto)
    if winograd:  # after the clean-up: BatchNormalization is folded into the conv weights by then
        from semask_deploy.export.winograd import winograd_convs

        rewritten = winograd_convs(proto)
        if rewritten:
            notes.append(f"{rewritten} 3×3 convolutions as Winograd F(4×4, 3×3) (export.winograd)")
    _name_dims(proto, axes, dyn_flags, input_name, labels_at_input_size=not output_size)
    try:
        onnx.checker.check_model(proto, full_check=False)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"the exported ONNX graph is invalid (onnx.checker): {_first_line(exc)}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    return OnnxExportInfo(
        path=path, opset=int(opset), inputs=io_spec(proto.graph.input), outputs=io_spec(proto.graph.output),
        dynamic=dyn_flags, trace_shape=list(example.shape), num_nodes=len(proto.graph.node),
        op_counts=op_counts(proto.graph.node), seconds=round(time.perf_counter() - started, 2),
        simplifier=simplifier, notes=notes,
    )


def _shapes_after_cast(proto: Any, input_name: str) -> None:
    """Read the uint8 input's shape from its Cast to float instead (in place; same shape).

    TensorRT takes a uint8 network input only into a Cast (and its ONNX parser has no uint8 Shape); the
    exporter may read the batch size straight off the input.
    """
    cast = next((n for n in proto.graph.node if n.op_type == "Cast" and n.input[0] == input_name), None)
    if cast is None:
        return
    proto.graph.node.remove(cast)
    proto.graph.node.insert(0, cast)  # its only input is the graph input: first in topological order
    for node in proto.graph.node:
        if node.op_type == "Shape" and node.input[0] == input_name:
            node.input[0] = cast.output[0]


def _convert_opset(proto: Any, opset: int, notes: list[str]) -> Any:
    require("onnx", "dev")
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(proto, opset)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"could not convert the graph to opset {opset} ({_first_line(exc)}); use --opset {DEFAULT_OPSET}") from exc
    notes.append(f"converted from the exporter's opset to {opset} with onnx.version_converter")
    return converted


def _name_dims(proto: Any, axes: dict[str, int], dynamic: dict[str, bool], input_name: str,
               labels_at_input_size: bool = True) -> None:
    """Give the dynamic dimensions the names N, H, W everywhere (the exporter calls them s0, s1…)."""
    inp = next(i for i in proto.graph.input if i.name == input_name)
    dims = inp.type.tensor_type.shape.dim
    rename: dict[str, str] = {}
    for name, axis in axes.items():
        if dynamic[name] and dims[axis].dim_param:
            rename[dims[axis].dim_param] = name
    pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in rename) + r")\b") if rename else None
    for vi in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        if pattern is None or not vi.type.HasField("tensor_type"):
            continue
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = pattern.sub(lambda m: rename[m.group(1)], d.dim_param)
    # outputs: labels (N, H, W) and logits (N, K, H, W) — name them plainly even if inferred differently
    for out in proto.graph.output:
        od = out.type.tensor_type.shape.dim
        if out.name == "labels" and not labels_at_input_size:
            want = ["N", "Ho", "Wo"]  # the output_size input's values
        else:
            want = ["N", "H", "W"] if out.name == "labels" else ["N", None, "H", "W"]
        if len(od) == len(want):
            for d, name in zip(od, want):
                if name and dynamic.get(name, True):
                    d.ClearField("dim_value")
                    d.dim_param = name


def clean_graph(proto: Any) -> tuple[Any, str]:
    """Constant folding, dead-code elimination and no-op removal (onnxscript's optimizer).

    onnxslim was tried on top: 1386 → 1310 nodes for SeMask-T but no measurable ONNX Runtime speed-up, so the
    graph is left as onnxscript makes it (deterministic, and the exporter's node metadata is kept).
    """
    from onnxscript import optimizer

    try:
        with _quiet_exporter():  # its "Skipping constant folding for op Split with multiple outputs" warnings
            return optimizer.optimize(proto), "onnxscript.optimizer"
    except Exception as exc:  # noqa: BLE001 - the exporter already optimised once; keep its graph
        raise_if_interrupted(exc)  # Ctrl-C / SIGTERM that the optimizer turned into another error
        log.warning("onnxscript optimizer failed (%s); keeping the exporter's graph", _first_line(exc))
        return proto, "exporter"


def io_spec(values: Any) -> list[dict[str, Any]]:
    """``[{"name", "dtype", "shape"}]`` of graph inputs/outputs; dynamic dims are their names."""
    from onnx import helper

    out = []
    for v in values:
        tt = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in tt.shape.dim]
        out.append({"name": v.name, "dtype": helper.tensor_dtype_to_np_dtype(tt.elem_type).name, "shape": shape})
    return out
