"""Reduced precision in the ONNX itself: a mixed fp16 graph pass and int8 Q/DQ from calibration.

**fp16** (:func:`convert_fp16`): a pass over the fp32 graph. Every node that computes on float tensors runs
in float16 except the numerically sensitive ones, which stay float32 (DESIGN §2, "Numerics"):

* ``LayerNormalization`` and ``Softmax`` (the known causes of Swin fp16 accuracy loss), and
  ``GroupNormalization``/``InstanceNormalization`` where a graph has them (mask-classification heads);
* the sampling grids of ``GridSample`` (deformable attention, DCNv2): the offset projection and every op
  from it to the grid (:func:`_sampling_island`) — an fp16 location is off by up to 1/4 pixel at 2048;
* the semantic attention's scores: the unscaled q·kᵀ over the classes can be large, so the q/k
  projections, everything between them and the q·kᵀ MatMul (windowing, padding with the bias), the
  MatMul itself and everything up to its Softmax stay fp32 (:func:`attention_roles`).

Explicit ``Cast`` nodes sit on every fp16↔fp32 boundary (one per tensor, shared by its consumers); weights
of fp16 nodes are stored as float16; the graph's inputs and outputs keep their types (float32 image,
int32 labels, float32 logits). Type parameters are unified with the ONNX op schemas, so auxiliary
inputs (Resize scales, shapes, axes) are never touched. ONNX Runtime's CPU EP runs the result (it adds
its own casts around ops that lack fp16 kernels); TensorRT builds it strongly typed.

**int8** (:func:`quantize_int8`): ONNX Runtime ``quantize_static`` in QDQ format on the fp32 graph (no
``quant_pre_process``: it fails on dynamic H/W graphs, DESIGN §7), activation ranges from a histogram
percentile (default; or KL entropy, or MinMax: :data:`CALIBRATIONS`), weights symmetric int8 per output channel, activations int8 symmetric (``s8``, the default: TensorRT needs a zero point of 0) or
uint8 asymmetric (``u8``: ONNX Runtime's preferred kind on x86; TensorRT rejects it). Only Conv and MatMul
are quantized: their inputs always, the Conv outputs too (ONNX Runtime then runs the FPN-head convs as int8
QLinearConv instead of fp32 convs on dequantized weights), the MatMul outputs not (that would send the
attention scores, the residual stream and the LayerNorm inputs through int8; measured also slower here).
Kept in float: LayerNorm, Softmax, the semantic-score islands (as for fp16), the classifier conv producing
the logits and the final Resize/ArgMax. Biases stay float (``QuantizeBias=False``: TensorRT takes no int32
Q/DQ). Calibration ranges are cached per hash of (model, calibration tensors, settings) in
:func:`cache_dir`, so a rerun skips calibration. The Conv/MatMul nodes left in float are listed by
:func:`float_layers` (with their PyTorch module and role) in the result, hence in the sidecar.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semask_deploy.errors import ConfigError, ExportError, require

FLOAT, FLOAT16 = 1, 10
ALWAYS_FP32 = ("LayerNormalization", "Softmax", "GroupNormalization", "InstanceNormalization")
_TYPE_AGNOSTIC = ("Shape", "Size")  # read only the shape: never cast their input
_CHAIN_OPS = ("Add", "Sub", "Mul", "Div", "Cast", "Where", "Reshape")
INT8_ACTIVATIONS = ("s8", "u8")
# activation range estimators (ONNX Runtime calibrators): name -> (CalibrationMethod member, extra options)
CALIBRATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "minmax": ("MinMax", {}),
    "percentile": ("Percentile", {"CalibPercentile": 99.999}),
    "entropy": ("Entropy", {}),
}
DEFAULT_CALIBRATION = "percentile"


# ----------------------------------------------------------------------------------------------------
# graph analysis
# ----------------------------------------------------------------------------------------------------
class _Graph:
    """Producers, consumers, constants and element types of a model's main graph."""

    def __init__(self, model: Any) -> None:
        onnx = require("onnx", "dev")
        self.model = model
        g = model.graph
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consumers: dict[str, list[Any]] = {}
        for n in g.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.initializers = {t.name: t for t in g.initializer}
        self.constants = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=False)
        except Exception:  # noqa: BLE001 - fall back to what the exporter recorded
            inferred = model
        self.types: dict[str, int] = {}
        for vi in list(inferred.graph.input) + list(inferred.graph.output) + list(inferred.graph.value_info):
            if vi.type.HasField("tensor_type"):
                self.types[vi.name] = vi.type.tensor_type.elem_type
        for t in g.initializer:
            self.types[t.name] = t.data_type
        for name, node in self.constants.items():
            for a in node.attribute:
                if a.name == "value":
                    self.types[name] = a.t.data_type

    def is_const(self, name: str) -> bool:
        return name in self.initializers or name in self.constants

    def const_array(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.constants.get(name)
        if node is not None:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None


def _scopes(node: Any) -> str:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            return p.value
    return ""


@dataclass
class AttentionRoles:
    """Sensitive nodes of an exported SeMask graph (node names)."""

    layernorm: list[str] = field(default_factory=list)
    softmax: list[str] = field(default_factory=list)
    window_scores: list[str] = field(default_factory=list)    # q·kᵀ MatMul of window attention
    semantic_scores: list[str] = field(default_factory=list)  # q·kᵀ MatMul of semantic attention
    semantic_islands: list[str] = field(default_factory=list)  # q/k projections → … → scores → Softmax
    final: list[str] = field(default_factory=list)            # Resize/ArgMax feeding the outputs
    classifier: list[str] = field(default_factory=list)       # the 1×1 conv_seg producing the logits
    norms: list[str] = field(default_factory=list)            # GroupNorm/InstanceNorm (mask-classification heads)
    sampling: list[str] = field(default_factory=list)         # GridSample grids: offsets → locations (MSDA, DCNv2)

    def keep_fp32(self) -> set[str]:
        return (set(self.layernorm) | set(self.softmax) | set(self.semantic_islands) | set(self.norms)
                | set(self.sampling))

    def summary(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.__dict__.items()}


def attention_roles(model: Any) -> AttentionRoles:
    """Find LayerNorms, Softmaxes, the attention score MatMuls and the semantic-score islands.

    For every Softmax the chain Add/Mul/Div/… back to its score MatMul is followed. A chain belongs to
    the semantic attention when the exporter's name scopes say ``semantic_layer`` or, failing metadata,
    when it has no bias Add (window attention always adds the relative-position bias). The semantic
    island extends from the score MatMul backwards along float tensors to the LayerNorm in front of
    the q/k projections.
    """
    g = _Graph(model)
    roles = AttentionRoles()
    for node in model.graph.node:
        if node.op_type == "LayerNormalization":
            roles.layernorm.append(node.name)
        elif node.op_type in ("GroupNormalization", "InstanceNormalization"):
            roles.norms.append(node.name)
        elif node.op_type == "GridSample" and len(node.input) > 1:
            roles.sampling.extend(n for n in _sampling_island(g, node.input[1]) if n not in roles.sampling)
        elif node.op_type == "Softmax":
            roles.softmax.append(node.name)
            chain, score = _score_chain(g, node)
            if score is None:
                continue
            semantic = "semantic_layer" in _scopes(score) or "semantic_layer" in _scopes(node)
            if not semantic and not _scopes(score):
                semantic = not any(n.op_type == "Add" for n in chain)
            if semantic:
                roles.semantic_scores.append(score.name)
                island = [score.name] + [n.name for n in chain] + _upstream_floats(g, score)
                roles.semantic_islands.extend(n for n in island if n not in roles.semantic_islands)
            else:
                roles.window_scores.append(score.name)
    outputs = {o.name for o in model.graph.output}
    for name in outputs:
        node = g.producer.get(name)
        seen = 0
        while node is not None and seen < 4:  # Cast ← ArgMax ← Resize at the end of the graph
            if node.op_type in ("Resize", "ArgMax") and node.name not in roles.final:
                roles.final.append(node.name)
            if node.op_type == "Resize":
                cls = g.producer.get(node.input[0])
                # through the channels-last labels head's Transpose and, in graphs with the output_size input,
                # the first resize (logits → input size) before the one to output_size
                while cls is not None and cls.op_type in ("Transpose", "Resize"):
                    if cls.op_type == "Resize" and cls.name not in roles.final:
                        roles.final.append(cls.name)
                    cls = g.producer.get(cls.input[0])
                if cls is not None and cls.op_type == "Conv" and cls.name not in roles.classifier:
                    roles.classifier.append(cls.name)
                break
            node = g.producer.get(node.input[0]) if node.input else None
            seen += 1
    return roles


def _score_chain(g: _Graph, softmax: Any) -> tuple[list[Any], Any | None]:
    chain: list[Any] = []
    tensor = softmax.input[0]
    for _ in range(8):
        node = g.producer.get(tensor)
        if node is None:
            return chain, None
        if node.op_type == "MatMul":
            return chain, node
        if node.op_type not in _CHAIN_OPS:
            return chain, None
        chain.append(node)
        data = [i for i in node.input if i and not g.is_const(i) and g.types.get(i) == FLOAT]
        if not data:
            return chain, None
        tensor = data[0] if node.op_type != "Where" else node.input[1]
    return chain, None


_PROJECTIONS = ("MatMul", "Gemm", "Conv")


def _sampling_island(g: _Graph, grid: str, limit: int = 64) -> list[str]:
    """The nodes computing a GridSample's sampling grid, kept fp32: everything between the offset
    projection (MatMul/Conv, included) and the grid — offsets, the division by the level sizes, the
    reference points, ``2·loc − 1``, the layout ops. A projection's own input is not followed (it
    arrives as fp16 and is cast once), nor are LayerNorm/Softmax/normalisation outputs."""
    found: list[str] = []
    stack, seen = [grid], set()
    while stack and len(found) < limit:
        tensor = stack.pop()
        if tensor in seen or g.is_const(tensor) or g.types.get(tensor) != FLOAT:
            continue
        seen.add(tensor)
        node = g.producer.get(tensor)
        if node is None or node.op_type in ALWAYS_FP32:
            continue
        found.append(node.name)
        if node.op_type not in _PROJECTIONS:
            stack.extend(i for i in node.input if i)
    return found


def _upstream_floats(g: _Graph, start: Any, limit: int = 48) -> list[str]:
    """Nodes feeding ``start`` through float tensors, up to (not including) LayerNorms and graph inputs."""
    found: list[str] = []
    stack = [i for i in start.input if i]
    seen: set[str] = set()
    while stack and len(found) < limit:
        tensor = stack.pop()
        if tensor in seen or g.is_const(tensor) or g.types.get(tensor) != FLOAT:
            continue
        seen.add(tensor)
        node = g.producer.get(tensor)
        if node is None or node.op_type in ("LayerNormalization", "Softmax"):
            continue
        found.append(node.name)
        stack.extend(i for i in node.input if i)
    return found


# ----------------------------------------------------------------------------------------------------
# fp16
# ----------------------------------------------------------------------------------------------------
def _formals(schema: Any, count: int, outputs: bool) -> list[str]:
    params = schema.outputs if outputs else schema.inputs
    out = []
    for i in range(count):
        p = params[min(i, len(params) - 1)] if params else None
        out.append(p.type_str if p is not None else "")
    return out


def convert_fp16(model: Any, keep_fp32: Iterable[str] | None = None) -> Any:
    """Mixed-precision copy of an fp32 ONNX model (see the module docstring).

    Args:
        model: fp32 ``onnx.ModelProto`` (Winograd convs of an ONNX Runtime graph become plain convs again).
        keep_fp32: node names that must stay fp32; default: :func:`attention_roles`' ``keep_fp32()``.

    Returns:
        A new ``ModelProto`` with float16 compute, fp32 islands and explicit casts; I/O types unchanged.
    """
    onnx = require("onnx", "dev")
    from onnx import helper, numpy_helper

    from semask_deploy.export.winograd import plain_convs

    model = onnx.ModelProto.FromString(model.SerializeToString())
    plain_convs(model)  # an ONNX Runtime fp32 graph's Winograd convs: their transforms lose too much in fp16
    keep = set(keep_fp32) if keep_fp32 is not None else attention_roles(model).keep_fp32()
    g = _Graph(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    types = dict(g.types)  # current element type of every tensor, updated as nodes are converted
    new_nodes: list[Any] = []
    new_inits: list[Any] = []
    casts: dict[tuple[str, int], str] = {}
    half_consts: dict[str, str] = {}

    def fp16_const(name: str) -> str:
        if name not in half_consts:
            arr = g.const_array(name).astype(np.float16)
            new = f"{name}__fp16"
            new_inits.append(numpy_helper.from_array(arr, new))
            half_consts[name] = new
            types[new] = FLOAT16
        return half_consts[name]

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            new = f"{name}__to_{'fp16' if to == FLOAT16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [new], to=to, name=f"{new}__cast"))
            casts[key] = new
            types[new] = to
        return casts[key]

    for node in model.graph.node:
        if node.op_type == "Constant" or node.op_type in _TYPE_AGNOSTIC or node.domain not in ("", "ai.onnx"):
            new_nodes.append(node)
            continue
        to_half = node.name not in keep
        if node.op_type == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            if to_half and to.i == FLOAT:
                to.i = FLOAT16
                types[node.output[0]] = FLOAT16
            new_nodes.append(node)
            continue
        if node.op_type == "ConstantOfShape":
            value = next((a for a in node.attribute if a.name == "value"), None)
            if to_half and value is not None and value.t.data_type == FLOAT:
                value.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(value.t).astype(np.float16)))
                types[node.output[0]] = FLOAT16
            new_nodes.append(node)
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
        except Exception:  # noqa: BLE001 - unknown op: leave it alone, in fp32
            schema, to_half = None, False
        if schema is None:
            for i, name in enumerate(node.input):
                if name and types.get(name) == FLOAT16:
                    node.input[i] = cast(name, FLOAT)
            new_nodes.append(node)
            continue
        in_formals = _formals(schema, len(node.input), outputs=False)
        out_formals = _formals(schema, len(node.output), outputs=True)
        float_params = {
            f for f, name in list(zip(in_formals, node.input)) + list(zip(out_formals, node.output))
            if name and not f.startswith("tensor(") and g.types.get(name) == FLOAT
        }
        if not float_params:
            new_nodes.append(node)
            continue
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        if any("tensor(float16)" not in allowed.get(f, {"tensor(float16)"}) for f in float_params):
            to_half = False  # no float16 form in the schema (e.g. Range over float sizes): stays fp32
        want = FLOAT16 if to_half else FLOAT
        for i, (formal, name) in enumerate(zip(in_formals, node.input)):
            if not name or formal not in float_params:
                continue
            current = types.get(name)
            if current not in (FLOAT, FLOAT16) or current == want:
                continue
            if want == FLOAT16 and g.is_const(name):
                node.input[i] = fp16_const(name)
            else:
                node.input[i] = cast(name, want)
        for formal, name in zip(out_formals, node.output):
            if name and formal in float_params:
                types[name] = want
        new_nodes.append(node)

    # graph outputs keep their declared types
    renames: dict[str, str] = {}
    for out in model.graph.output:
        if types.get(out.name) == FLOAT16 and out.type.tensor_type.elem_type == FLOAT:
            inner = f"{out.name}__fp16"
            renames[out.name] = inner
    if renames:
        for node in new_nodes:
            for i, name in enumerate(node.output):
                if name in renames:
                    node.output[i] = renames[name]
            for i, name in enumerate(node.input):
                if name in renames:
                    node.input[i] = renames[name]
        for out_name, inner in renames.items():
            new_nodes.append(helper.make_node("Cast", [inner], [out_name], to=FLOAT, name=f"{out_name}__cast_out"))

    used = {i for n in new_nodes for i in n.input}
    inits = [t for t in model.graph.initializer if t.name in used] + [t for t in new_inits if t.name in used]
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    del model.graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=False)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"the fp16 graph does not type-check: {str(exc).splitlines()[0][:300]}") from exc
    return model


def precision_summary(model: Any) -> dict[str, Any]:
    """Counts of fp16/fp32 compute nodes and casts (for the sidecar)."""
    g = _Graph(model)
    counts = {"fp16_nodes": 0, "fp32_nodes": 0, "casts": 0, "qdq_nodes": 0}
    for node in model.graph.node:
        if node.op_type == "Cast":
            counts["casts"] += 1
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            counts["qdq_nodes"] += 1
        elif node.output and node.op_type not in ("Constant", "Shape"):
            t = g.types.get(node.output[0])
            if t == FLOAT16:
                counts["fp16_nodes"] += 1
            elif t == FLOAT:
                counts["fp32_nodes"] += 1
    return counts


# ----------------------------------------------------------------------------------------------------
# int8
# ----------------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where calibration ranges are cached: ``$SEMASK_CACHE_DIR`` or ``~/.cache/semask-deploy``."""
    root = os.environ.get("SEMASK_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "semask-deploy")
    return Path(root) / "calibration"


def calibration_key(model_bytes: bytes, inputs: Sequence[np.ndarray], settings: dict[str, Any]) -> str:
    """SHA-256 of the fp32 model, the calibration tensors and the settings (hex, 24 chars)."""
    h = hashlib.sha256()
    h.update(hashlib.sha256(model_bytes).digest())
    for x in inputs:
        h.update(str((x.dtype.str, x.shape)).encode())
        h.update(np.ascontiguousarray(x).tobytes())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:24]


class _Reader:
    """ONNX Runtime CalibrationDataReader over a list of input arrays, with a progress bar."""

    def __init__(self, input_name: str, inputs: Sequence[np.ndarray], progress: bool,
                 output_size: bool = False) -> None:
        self.input_name = input_name
        self.output_size = output_size  # the graph also takes output_size (Ho, Wo): fed the input's own size
        self.inputs = list(inputs)
        self.index = 0
        self.bar = None
        if progress:
            import sys

            from tqdm import tqdm

            self.bar = tqdm(total=len(self.inputs), desc="int8 calibration", unit="img", file=sys.stderr,
                            dynamic_ncols=True)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.inputs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            return None
        x = self.inputs[self.index]
        self.index += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.output_size:
            hw = x.shape[1:3] if x.dtype == np.uint8 else x.shape[2:4]
            return {self.input_name: x, "output_size": np.asarray(hw, dtype=np.int64)}
        return {self.input_name: x}

    def __len__(self) -> int:
        return len(self.inputs)

    def rewind(self) -> None:
        self.index = 0


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    inputs: Sequence[np.ndarray],
    *,
    activations: str = "s8",
    per_channel: bool = True,
    exclude: Iterable[str] | None = None,
    use_cache: bool = True,
    progress: bool = True,
    quantize_outputs: bool = False,
    calibration: str = DEFAULT_CALIBRATION,
    extra_exclude: Iterable[str] = (),
) -> dict[str, Any]:
    """Static int8 QDQ quantization of an fp32 ONNX file with ONNX Runtime.

    Args:
        fp32_path: the fp32 ONNX (dynamic or static; an ONNX Runtime graph's Winograd convs are quantized as the
            plain convs they stand for, :func:`semask_deploy.export.winograd.plain_convs`).
        out_path: where to write the QDQ model (callers pass a temporary path and rename).
        inputs: calibration batches, each ``{input}`` array of the model's input dtype/layout.
        activations: ``"s8"`` (int8 symmetric, TensorRT-compatible) or ``"u8"`` (uint8 asymmetric, fastest
            in ONNX Runtime on x86 CPUs; TensorRT rejects uint8 Q/DQ).
        per_channel: per-output-channel weight scales.
        exclude: node names to keep in float; default: :func:`attention_roles` sensitive nodes.
        use_cache: reuse/store the calibration ranges in :func:`cache_dir`.
        progress: show a calibration progress bar.
        quantize_outputs: also Q/DQ the MatMul outputs (ORT's default; a little faster, less accurate).
        calibration: activation ranges from ``"minmax"`` (the extremes seen), ``"percentile"`` (the
            99.999th percentile of |x|, default: clips rare outliers) or ``"entropy"`` (KL-optimal clipping).
        extra_exclude: node names kept in float on top of ``exclude`` (or of the default set).

    Returns:
        Settings and statistics for the sidecar (``activations``, ``weights``, ``calibration`` …).
    """
    onnx = require("onnx", "dev")
    require("onnxruntime", "dev")
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if activations not in INT8_ACTIVATIONS:
        raise ConfigError(f"int8 activations must be one of {', '.join(INT8_ACTIVATIONS)}, got {activations!r}")
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"int8 calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}")
    if not inputs:
        raise ExportError("int8 calibration needs at least one input")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    model_bytes = fp32_path.read_bytes()
    model = onnx.load_from_string(model_bytes)
    from semask_deploy.export.winograd import plain_convs

    plain_copy = None
    if plain_convs(model):  # an ONNX Runtime fp32 graph: quantize plain convs, not Winograd's transforms
        model_bytes = model.SerializeToString()
        plain_copy = out_path.with_name(f".{out_path.stem}.{os.getpid()}.plain.onnx")
    roles = attention_roles(model)
    excluded = sorted((set(exclude) if exclude is not None
                       else roles.keep_fp32() | set(roles.final) | set(roles.classifier)) | set(extra_exclude))
    input_name = model.graph.input[0].name
    op_types = ["Conv", "MatMul"]
    symmetric = activations == "s8"
    extra = {
        "ActivationSymmetric": symmetric,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        # MatMul outputs stay float: quantizing them would put the attention scores, the residual stream and
        # LayerNorm inputs through int8. Conv outputs (FPN head) are quantized: only then does ONNX Runtime
        # run the convs in int8 (QLinearConv; 4.5x faster than the fp32 conv it otherwise keeps).
        "OpTypesToExcludeOutputQuantization": ["MatMul"] if not quantize_outputs else [],
        "CalibTensorRangeSymmetric": symmetric,
        **CALIBRATIONS[calibration][1],
    }
    method_name = CALIBRATIONS[calibration][0]
    settings = {"activations": activations, "per_channel": per_channel, "op_types": op_types,
                "method": method_name, "extra": extra, "exclude": excluded}
    key = calibration_key(model_bytes, inputs, {k: v for k, v in settings.items() if k != "activations"} |
                          {"symmetric": symmetric})
    cache_file = cache_dir() / f"{key}.json" if use_cache else None
    cache_hit = bool(cache_file is not None and cache_file.is_file())
    tmp_cache = None
    if cache_file is not None and not cache_hit:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp_cache = cache_file.with_name(f".{cache_file.stem}.{os.getpid()}.tmp.json")
    has_size = any(i.name == "output_size" for i in model.graph.input)
    reader = None if cache_hit else _Reader(input_name, inputs, progress, output_size=has_size)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs "consider pre-processing" warnings on the root logger
    try:
        if plain_copy is not None:
            plain_copy.write_bytes(model_bytes)
        quantize_static(
            str(plain_copy or fp32_path), str(out_path), reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            per_channel=per_channel,
            # 7-bit weights: x86 CPUs without VNNI multiply u8×s8 pairs into a saturating int16
            # (vpmaddubsw); full-range weights overflow it (SeMask demo on AVX2: labels 99.6 % equal, rel L2
            # 5e-2; with 7 bits 99.9 %, 6e-3). The artifact must be safe on every CPU it may be deployed to.
            reduce_range=True,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=getattr(CalibrationMethod, method_name),
            extra_options=extra,
            calibration_cache_path=str(cache_file if cache_hit else tmp_cache) if cache_file is not None else None,
        )
        if tmp_cache is not None and tmp_cache.is_file():
            os.replace(tmp_cache, cache_file)
    except (ConfigError, ExportError):
        raise
    except Exception as exc:  # noqa: BLE001 - ORT raises many types
        raise ExportError(f"int8 quantization failed: {str(exc).splitlines()[0][:300]}") from exc
    finally:
        root.setLevel(level)
        if tmp_cache is not None and tmp_cache.exists():
            tmp_cache.unlink()
        if plain_copy is not None:
            plain_copy.unlink(missing_ok=True)
        if reader is not None and reader.bar is not None:
            reader.bar.close()
    quantized = onnx.load(str(out_path), load_external_data=False)
    qdq = sum(1 for n in quantized.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    return {
        "method": f"onnxruntime.quantization.quantize_static (QDQ, {method_name})",
        "calibration": calibration + (f" {CALIBRATIONS[calibration][1]['CalibPercentile']}"
                                      if calibration == "percentile" else ""),
        "activations": "int8 symmetric" if symmetric else "uint8 asymmetric",
        "weights": "int8 symmetric " + ("per-channel" if per_channel else "per-tensor") + ", 7-bit range",
        "op_types_quantized": op_types,
        "excluded_nodes": len(excluded),
        "qdq_nodes": qdq,
        "calibration_samples": len(inputs),
        "calibration_cache": str(cache_file) if cache_file is not None else None,
        "calibration_cache_hit": cache_hit,
        "roles": roles.summary(),
        "float_layers": float_layers(quantized, roles),
    }


def _module_name(node: Any) -> str:
    """The PyTorch module a node came from (the exporter's innermost module scope), else the node name."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = json.loads(p.value)
            except ValueError:
                scopes = p.value.strip("[]").replace("'", "").split(", ")
            scopes = [str(x) for x in scopes if x]
            if len(scopes) >= 2:  # [..., module path, aten op name]
                path = scopes[-2]
                return path[len("model."):] if path.startswith("model.") else path
    return node.name


def float_layers(quantized: Any, roles: AttentionRoles | None = None) -> list[dict[str, str]]:
    """Conv/MatMul nodes of a Q/DQ model that still compute in float (their second operand — the weight,
    or k for an attention q·kᵀ — is not dequantized int8).

    Returns:
        One ``{"node", "op", "module", "role", "input_fake_quantized"}`` per such node;
        ``input_fake_quantized`` says that its activation input arrives through a Q/DQ pair (a tensor it
        shares with a quantized consumer), so it computes in float on int8-rounded values; ``role`` is ``classifier``,
        ``semantic scores`` (q/k projections, q·kᵀ, softmax·v of the semantic attention),
        ``window scores`` or ``other``.
    """
    producer = {o: n for n in quantized.graph.node for o in n.output}
    island = set(roles.semantic_islands) if roles else set()
    out = []
    for n in quantized.graph.node:
        if n.op_type not in ("Conv", "MatMul"):
            continue
        def dq(name: str) -> bool:
            return producer.get(name) is not None and producer[name].op_type == "DequantizeLinear"

        if len(n.input) > 1 and dq(n.input[1]):
            continue
        role = "other"
        if roles is not None:
            if n.name in roles.classifier:
                role = "classifier"
            elif n.name in island or n.name in roles.semantic_scores:
                role = "semantic scores"
            elif n.name in roles.window_scores:
                role = "window scores"
        out.append({"node": n.name, "op": n.op_type, "module": _module_name(n), "role": role,
                    "input_fake_quantized": dq(n.input[0])})
    return out
