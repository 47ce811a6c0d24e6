"""Offline check that an ONNX graph only uses what the TensorRT ONNX parser supports.

Without a GPU TensorRT cannot build an engine, so this module answers the question "would the parser
accept this graph?" from data: ``trt_ops.json`` beside this file is the operator support matrix of
onnx-tensorrt's ``docs/operators.md`` (op → supported, data types, restrictions), transcribed for the
TensorRT version it names. The check walks every node, including the bodies of ``If``/``Loop``/``Scan``
and model-local functions (which the parser inlines), and reports:

* ops of the standard domain (``""``/``ai.onnx``) that the list marks unsupported or does not list;
* ops of any other domain (``com.microsoft``, ``ai.onnx.ml``, ...) that are not model-local functions —
  TensorRT would need a plugin for them;
* ops used with a data type the list does not give for them (types from ``onnx.shape_inference``);
* Q/DQ nodes that break TensorRT's explicit-quantization constraints;
* a handful of documented attribute restrictions (Resize modes, pooling dilations, LayerNormalization's
  extra outputs, TopK ``sorted``, ScatterND ``reduction``, ...).

Data-type rules applied (stated here because the published list is terse):

1. Only the op's *data* tensors are checked, i.e. the inputs/outputs bound to its main ONNX type
   parameter (``T``, else ``T1``; ``Cast``/``CastLike`` check both sides, ``ConstantOfShape`` and the
   ``*Like`` generators their output, control flow its ``V`` values). Index, shape, axes and similar
   auxiliary inputs (``Tind``, ``tensor(int64)``) are not checked: the parser consumes them as shape
   tensors.
2. INT64 is accepted wherever the list gives INT32 (TensorRT 10 runs INT64 natively or casts it down).
3. DOUBLE is accepted, with a warning, wherever the list gives FP32 (the parser casts DOUBLE to FLOAT,
   clamping to ±FLT_MAX).
4. Types TensorRT has no equivalent for (INT16, UINT16/32/64, STRING, complex, FLOAT8E5M2, ...) are
   unsupported everywhere. UINT8 is only valid where the list gives it (``Cast``), i.e. a uint8 network
   input must be cast before anything else touches it.
5. Quantized types (INT8, INT4, FP8, FP4) are valid where the list gives them, plus as a ``Constant``
   or ``Identity`` whose only consumers are ``DequantizeLinear`` nodes (quantized weights).
6. Q/DQ: the quantized type must be INT8, INT4, FP8 or FP4 (signed; UINT8 is rejected — use symmetric
   S8S8 quantization); without a zero point the parser quantizes to INT8 (ONNX shape inference says
   UINT8 there, which is not TensorRT's reading). The zero point must be a constant of zeros, the scale a
   positive constant that is a scalar (per-tensor) or a 1-D vector along ``axis`` (per-channel — for
   weights only: a per-channel scale on an activation is rejected). Block quantization (``block_size``)
   is accepted for INT4, FP4 and FP8, rejected for INT8. A scale computed at run time is a warning.
8. Ops the parser builds through a TensorRT plugin (``DeformConv`` → ``ModulatedDeformConv2d``) are
   supported when the builder and runtime register ``libnvinfer_plugin`` (ours do); they are noted
   as a warning so that apps running the engine know to load it too.
7. A tensor whose type shape inference cannot determine is skipped (and counted in a warning).
"""

from __future__ import annotations

import functools
import json
import os
from collections import ChainMap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from semask_deploy.errors import ExportError, require

TRT_OPS_PATH = Path(__file__).with_name("trt_ops.json")

_STANDARD_DOMAINS = ("", "ai.onnx")
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_QUANTIZED_TOKENS = ("INT8", "INT4", "FP8", "FP4")
# Main type parameter(s) per op where "T, else T1" is not the right choice.
_TYPE_PARAM_OVERRIDES: dict[str, tuple[str, ...]] = {
    "Cast": ("T1", "T2"),
    "CastLike": ("T1", "T2"),
    "ConstantOfShape": ("T2",),
    "EyeLike": ("T2",),
    "RandomNormalLike": ("T2",),
    "RandomUniformLike": ("T2",),
    "If": ("V",),
    "Loop": ("V",),
    "Scan": ("V",),
    "Identity": ("V", "T"),  # (T before opset 14)
}
# Reduce ops whose ``axes`` (an input from opset 18; ReduceSum from 13) the parser needs as a constant
_REDUCE_OPS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
               "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
_TOPK_MAX_K = 3840
# Ops the ONNX parser implements with a plugin from libnvinfer_plugin (registered by init_libnvinfer_plugins).
_PLUGIN_OPS = {"DeformConv": "ModulatedDeformConv2d"}
_RESIZE_COORD_MODES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}


@functools.lru_cache(maxsize=4)
def _load_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_trt_ops(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Load the TensorRT ONNX-parser support table (``trt_ops.json``).

    Args:
        path: another table of the same schema; default: the one shipped beside this module.

    Returns:
        The parsed JSON: ``{"source", "tensorrt_version", "opset_min", "opset_max", "ops": {op: {...}}}``.
    """
    return _load_json(str(path or TRT_OPS_PATH))


@dataclass
class TrtCheckReport:
    """Result of :func:`check_onnx_for_tensorrt`.

    Attributes:
        unsupported: ``(op, reason, node_names)`` per distinct problem; empty when the graph is ok.
        warnings: things TensorRT accepts with a change (DOUBLE → FLOAT) or that could not be verified.
        op_counts: number of nodes per op (``domain::op`` for non-standard domains), subgraphs included.
        opset: the model's default-domain opset, if declared.
        tensorrt_version: TensorRT version of the support table used.
        source: where the support table comes from.
        num_nodes: nodes walked, subgraphs and inlined functions included.
    """

    unsupported: list[tuple[str, str, list[str]]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    op_counts: dict[str, int] = field(default_factory=dict)
    opset: int | None = None
    tensorrt_version: str = ""
    source: str = ""
    num_nodes: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing unsupported was found (warnings do not count)."""
        return not self.unsupported

    def format(self, max_names: int = 5) -> str:
        """Human-readable summary, one line per problem.

        Args:
            max_names: node names shown per problem before "... and N more".
        """
        head = (
            f"TensorRT ONNX-parser check (support list of TensorRT {self.tensorrt_version}, opset "
            f"{self.opset}): {self.num_nodes} nodes, {len(self.op_counts)} op types — "
            + ("OK" if self.ok else f"{len(self.unsupported)} problem(s)")
        )
        lines = [head]
        for op, reason, names in self.unsupported:
            shown = ", ".join(names[:max_names]) + (f" ... and {len(names) - max_names} more" if len(names) > max_names else "")
            lines.append(f"  UNSUPPORTED {op}: {reason}" + (f" [{len(names)} node(s): {shown}]" if names else ""))
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "ok": self.ok,
            "tensorrt_version": self.tensorrt_version,
            "source": self.source,
            "opset": self.opset,
            "num_nodes": self.num_nodes,
            "unsupported": [{"op": op, "reason": reason, "nodes": list(names)} for op, reason, names in self.unsupported],
            "warnings": list(self.warnings),
            "op_counts": dict(sorted(self.op_counts.items())),
        }


class _Collector:
    """Accumulates problems grouped by (op, reason)."""

    def __init__(self) -> None:
        self.problems: dict[tuple[str, str], list[str]] = {}
        self.warnings: dict[str, None] = {}  # ordered set
        self.untyped = 0

    def bad(self, op: str, reason: str, node: str | None) -> None:
        names = self.problems.setdefault((op, reason), [])
        if node and node not in names:
            names.append(node)

    def warn(self, text: str) -> None:
        self.warnings[text] = None


def _onnx_token(elem_type: int) -> str:
    """TensorRT-list token (``FP32``, ``INT64``, ...) for an ONNX element type, else the ONNX name."""
    onnx = require("onnx", "dev")
    name = onnx.TensorProto.DataType.Name(elem_type)
    return {
        "FLOAT": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16", "DOUBLE": "DOUBLE", "FLOAT8E4M3FN": "FP8",
        "FLOAT4E2M1": "FP4", "INT32": "INT32", "INT64": "INT64", "INT8": "INT8", "INT4": "INT4",
        "UINT8": "UINT8", "BOOL": "BOOL",
    }.get(name, name)


def _dtype_verdict(token: str, allowed: list[str]) -> tuple[bool, str | None]:
    """Whether an op listed with ``allowed`` types accepts ``token``; second item: a warning, if any."""
    if token in allowed:
        return True, None
    if token == "INT64" and "INT32" in allowed:
        return True, None
    if token == "DOUBLE" and "FP32" in allowed:
        return True, "DOUBLE tensors are cast to FLOAT by the TensorRT parser (values clamped to ±FLT_MAX)"
    return False, None


def _node_label(node: Any, index: int, prefix: str) -> str:
    return prefix + (node.name or f"<{node.op_type}#{index}>")


class _Walker:
    def __init__(self, model: Any, table: Mapping[str, Any], base_dir: str | None, col: _Collector) -> None:
        self.onnx = require("onnx", "dev")
        self.table = table
        self.ops = table["ops"]
        self.base_dir = base_dir
        self.col = col
        self.counts: dict[str, int] = {}
        self.num_nodes = 0
        self.opset = next((o.version for o in model.opset_import if o.domain in _STANDARD_DOMAINS), None)
        self.functions = {(f.domain, f.name) for f in model.functions}
        self.producers: dict[str, Any] = {}  # tensor name -> node that makes it (all graphs walked so far)
        self.ranks: dict[str, int] = {}  # tensor name -> rank, where shape inference knows it

    # ---- type and constant lookup -------------------------------------------------------------
    def _scope_of(self, graph: Any, parent: Mapping[str, Any] | None) -> tuple[ChainMap, ChainMap]:
        types: dict[str, int] = {}
        consts: dict[str, Any] = {}
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types[vi.name] = vi.type.tensor_type.elem_type
                if vi.type.tensor_type.HasField("shape"):
                    self.ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
        for init in graph.initializer:
            types[init.name] = init.data_type
            consts[init.name] = init
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in _STANDARD_DOMAINS and node.output:
                for attr in node.attribute:
                    if attr.name == "value":
                        consts[node.output[0]] = attr.t
                        types.setdefault(node.output[0], attr.t.data_type)
        if parent is None:
            return ChainMap(types), ChainMap(consts)
        ptypes, pconsts = parent
        return ptypes.new_child(types), pconsts.new_child(consts)

    def _const_array(self, consts: Mapping[str, Any], name: str) -> Any | None:
        tensor = consts.get(name)
        if tensor is None:
            return None
        from onnx import numpy_helper

        try:
            return numpy_helper.to_array(tensor, base_dir=self.base_dir or "")
        except Exception:  # noqa: BLE001 - unreadable external data: treat as unknown
            return None

    # ---- walking ---------------------------------------------------------------------------------
    def walk_graph(self, graph: Any, scope: tuple[ChainMap, ChainMap] | None = None, prefix: str = "") -> None:
        types, consts = self._scope_of(graph, scope)
        consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        graph_outputs = {o.name for o in graph.output}
        for node in graph.node:
            for name in node.output:
                self.producers[name] = node
        for index, node in enumerate(graph.node):
            label = _node_label(node, index, prefix)
            self.num_nodes += 1
            self.check_node(node, label, types, consts, consumers, graph_outputs)
            for attr in node.attribute:
                if attr.type == self.onnx.AttributeProto.GRAPH:
                    self.walk_graph(attr.g, (types, consts), prefix=f"{label}/{attr.name}/")
                elif attr.type == self.onnx.AttributeProto.GRAPHS:
                    for k, g in enumerate(attr.graphs):
                        self.walk_graph(g, (types, consts), prefix=f"{label}/{attr.name}[{k}]/")

    def walk_function_bodies(self, model: Any) -> None:
        """Fallback when functions could not be inlined: check bodies by op only (no types)."""
        for func in model.functions:
            for index, node in enumerate(func.node):
                label = _node_label(node, index, f"{func.domain}::{func.name}/")
                self.num_nodes += 1
                self.check_node(node, label, ChainMap(), ChainMap(), {}, set(), count=True)

    def check_node(self, node, label, types, consts, consumers, graph_outputs, count: bool = True) -> None:
        op, domain = node.op_type, node.domain
        key = op if domain in _STANDARD_DOMAINS else f"{domain}::{op}"
        if count:
            self.counts[key] = self.counts.get(key, 0) + 1
        if domain not in _STANDARD_DOMAINS:
            if (domain, op) in self.functions:
                return  # a model-local function call: its body is checked separately
            self.col.bad(key, f"op of custom domain '{domain}' is not a standard ONNX op; TensorRT would need a plugin", label)
            return
        entry = self.ops.get(op)
        if entry is None:
            self.col.bad(op, f"not in the TensorRT {self.table.get('tensorrt_version')} ONNX parser's operator list", label)
            return
        if not entry.get("supported", False):
            note = entry.get("notes") or ""
            self.col.bad(op, "marked unsupported by the TensorRT ONNX parser" + (f" ({note})" if note else ""), label)
            return
        if op != "DequantizeLinear":  # its quantized input is checked (with a better message) below
            self._check_dtypes(node, entry, label, types, consumers)
        if op in _QDQ_OPS:
            self._check_qdq(node, label, types, consts)
        if op in _PLUGIN_OPS:
            self.col.warn(f"{op} is built through TensorRT's {_PLUGIN_OPS[op]} plugin: whatever loads the engine "
                          "must register libnvinfer_plugin (Python: trt.init_libnvinfer_plugins(logger, ''); C++: "
                          "initLibNvInferPlugins(&logger, \"\") and link nvinfer_plugin)")
        self._check_attributes(node, label, consts, consumers, graph_outputs)

    # ---- data types ------------------------------------------------------------------------------
    def _data_tensors(self, node: Any) -> list[str]:
        """Names of the inputs/outputs bound to the op's main type parameter(s) (rule 1)."""
        try:
            schema = self.onnx.defs.get_schema(node.op_type, self.opset or 1, "")
        except Exception:  # noqa: BLE001 - op not in this onnx's defs (e.g. experimental): first in/out
            return [n for n in list(node.input[:1]) + list(node.output[:1]) if n]
        params = {p.type_param_str for p in schema.type_constraints}
        wanted = _TYPE_PARAM_OVERRIDES.get(node.op_type) or (("T",) if "T" in params else ("T1",))
        names: list[str] = []
        for formals, actuals in ((schema.inputs, node.input), (schema.outputs, node.output)):
            for i, name in enumerate(actuals):
                if not name:
                    continue
                formal = formals[min(i, len(formals) - 1)] if formals else None
                if formal is not None and formal.type_str in wanted:
                    names.append(name)
        return names

    def _check_dtypes(self, node, entry, label, types, consumers) -> None:
        allowed = entry.get("dtypes", [])
        for name in self._data_tensors(node):
            elem = types.get(name)
            if not elem:
                self.col.untyped += 1
                continue
            token = _onnx_token(elem)
            ok, warning = _dtype_verdict(token, allowed)
            if not ok and token in _QUANTIZED_TOKENS and node.op_type in ("Constant", "Identity"):
                users = consumers.get(name, [])
                ok = bool(users) and all(u.op_type == "DequantizeLinear" for u in users)  # rule 5
            if warning:
                self.col.warn(f"{node.op_type}: {warning}")
            if not ok:
                self.col.bad(node.op_type, f"{token} tensors are not supported (supported: {', '.join(allowed) or 'none'})", label)

    # ---- Q/DQ ------------------------------------------------------------------------------------
    def _is_weight(self, name: str, consts: Mapping[str, Any], depth: int = 0) -> bool:
        """Whether tensor ``name`` is a build-time constant (a weight), possibly through Q/Identity/Cast/Reshape."""
        if name in consts:
            return True
        node = self.producers.get(name)
        if node is None or depth > 8:
            return False
        if node.op_type == "Constant":
            return True
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Identity", "Cast", "Reshape", "Transpose",
                            "Unsqueeze", "Squeeze", "Flatten"):
            return bool(node.input) and self._is_weight(node.input[0], consts, depth + 1)
        return False

    @staticmethod
    def _parser_int8_default(q_node: Any) -> bool:
        """A QuantizeLinear with neither a zero point nor ``output_dtype``: TensorRT quantizes it to INT8."""
        has_zero_point = len(q_node.input) > 2 and bool(q_node.input[2])
        has_dtype = any(a.name == "output_dtype" and a.i for a in q_node.attribute)
        return not has_zero_point and not has_dtype

    def _check_qdq(self, node, label, types, consts) -> None:
        op = node.op_type
        quant_name = node.output[0] if op == "QuantizeLinear" else node.input[0]
        elem = types.get(quant_name)
        if len(node.input) > 2 and node.input[2]:
            elem = elem or types.get(node.input[2])
        else:
            q_node = node if op == "QuantizeLinear" else self.producers.get(node.input[0])
            if q_node is not None and q_node.op_type == "QuantizeLinear" and self._parser_int8_default(q_node):
                elem = self.onnx.TensorProto.INT8  # ONNX shape inference says UINT8 here; the parser makes INT8
        if elem:
            token = _onnx_token(elem)
            if token == "UINT8":
                self.col.bad(op, "UINT8 quantization is not supported: TensorRT needs signed INT8 with an int8 zero "
                             "point of 0 (quantize symmetric S8S8)", label)
            elif token not in _QUANTIZED_TOKENS:
                hint = " — keep biases in float (ORT quantize_static: extra_options={'QuantizeBias': False})" if token == "INT32" else ""
                self.col.bad(op, f"quantized type {token} is not supported ({', '.join(_QUANTIZED_TOKENS)}){hint}", label)
        attrs = {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}
        # zero point
        if len(node.input) > 2 and node.input[2]:
            zp = self._const_array(consts, node.input[2])
            if zp is None:
                self.col.bad(op, "zero point is not a constant; TensorRT needs a zero point of 0", label)
            elif zp.size and (zp.astype("float64") != 0).any():
                self.col.bad(op, "non-zero zero point: TensorRT supports symmetric quantization only", label)
        # scale
        scale = self._const_array(consts, node.input[1]) if len(node.input) > 1 else None
        if scale is None:
            self.col.warn(f"{op}: scale is not a constant; TensorRT expects build-time constant scales")
            return
        if (scale.astype("float64") <= 0).any():
            self.col.bad(op, "scale must be positive", label)
        if attrs.get("block_size", 0):
            if elem is None or _onnx_token(elem) not in ("INT4", "FP4", "FP8"):
                self.col.bad(op, "block quantization is only supported for INT4, FP4 and FP8; use per-tensor or "
                             "per-channel INT8", label)
        elif scale.ndim > 1:
            self.col.bad(op, f"scale of rank {scale.ndim}: only per-tensor (scalar) or per-channel (1-D) scales are supported", label)
        elif scale.size > 1 and not self._is_weight(node.input[0], consts):
            self.col.bad(op, "per-channel quantization of an activation: TensorRT supports per-channel scales for "
                         "weights only; quantize activations per-tensor (a scalar scale)", label)

    # ---- documented attribute restrictions -------------------------------------------------------
    def _check_attributes(self, node, label, consts, consumers, graph_outputs) -> None:
        op = node.op_type
        attrs = {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

        def s(name: str, default: str) -> str:
            value = attrs.get(name, default)
            return value.decode() if isinstance(value, bytes) else str(value)

        def used(output_index: int) -> bool:
            if len(node.output) <= output_index or not node.output[output_index]:
                return False
            name = node.output[output_index]
            return name in graph_outputs or bool(consumers.get(name))

        if op == "Resize":
            mode, coord = s("mode", "nearest"), s("coordinate_transformation_mode", "half_pixel")
            if mode not in ("nearest", "linear"):
                self.col.bad(op, f"mode '{mode}' is not supported (nearest, linear)", label)
            if coord not in _RESIZE_COORD_MODES:
                self.col.bad(op, f"coordinate_transformation_mode '{coord}' is not supported", label)
            if mode == "nearest" and s("nearest_mode", "round_prefer_floor") not in _RESIZE_NEAREST_MODES:
                self.col.bad(op, f"nearest_mode '{s('nearest_mode', '')}' is not supported", label)
            if int(attrs.get("antialias", 0)):
                self.col.bad(op, "antialiasing is not supported", label)
            if s("keep_aspect_ratio_policy", "stretch") != "stretch":
                self.col.bad(op, "keep_aspect_ratio_policy other than 'stretch' is not supported", label)
            axes = [int(a) for a in attrs.get("axes", [])]
            rank = self.ranks.get(node.input[0])
            if len(node.input) > 2 and node.input[2] and axes and (
                    axes != list(range(len(axes))) or (rank is not None and len(axes) != rank)):
                self.col.bad(op, f"axes {axes} with a scales input: axes must be 0, 1, …, rank − 1", label)
        elif op == "GridSample":  # IGridSampleLayer: linear/nearest/cubic, fill(zeros)/clamp(border)/reflect
            if self.ranks.get(node.input[0], 4) != 4:
                self.col.bad(op, f"input of rank {self.ranks[node.input[0]]}: only 4-D (N, C, H, W) is supported", label)
            mode = s("mode", "bilinear")  # absent: TensorRT's default is bilinear (= GridSample-20's "linear")
            if mode not in ("bilinear", "linear", "nearest", "bicubic", "cubic"):
                self.col.bad(op, f"mode '{mode}' is not supported", label)
            elif mode in ("linear", "cubic"):
                self.col.warn(f"GridSample mode '{mode}' (the opset-20 name): TensorRT's parser (10.x, 11.x) knows only "
                              "'bilinear'/'bicubic' and silently samples with NEAREST for it (NVIDIA/TensorRT#4646); "
                              "semask-export's engine build renames it, other builders (trtexec) need the ONNX at "
                              "opset <= 19 or the mode renamed")
            if s("padding_mode", "zeros") not in ("zeros", "border", "reflection"):
                self.col.bad(op, f"padding_mode '{s('padding_mode', '')}' is not supported", label)
        elif op == "LayerNormalization" and (used(1) or used(2)):
            self.col.bad(op, "only the first output Y is supported (Mean/InvStdDev are used)", label)
        elif op in ("MaxPool", "AveragePool", "LpPool"):
            if any(int(d) != 1 for d in attrs.get("dilations", [])):
                self.col.bad(op, "dilations must be empty or all ones", label)
            kernel = attrs.get("kernel_shape", [])
            if op != "LpPool" and kernel and len(kernel) not in (2, 3):
                self.col.bad(op, "only 2D or 3D pooling is supported", label)
            if op == "MaxPool" and used(1):
                self.col.bad(op, "the Indices output is not supported", label)
        elif op == "TopK":
            if int(attrs.get("sorted", 1)) != 1:
                self.col.bad(op, "sorted must be 1", label)
            k = self._const_array(consts, node.input[1]) if len(node.input) > 1 else None
            if k is not None and k.size == 1 and int(k.reshape(-1)[0]) >= _TOPK_MAX_K:
                self.col.bad(op, f"K = {int(k.reshape(-1)[0])}: K must be less than {_TOPK_MAX_K}", label)
        elif op in _REDUCE_OPS or op == "CumSum":
            index = 1
            if len(node.input) > index and node.input[index] and self._const_array(consts, node.input[index]) is None:
                what = "axis" if op == "CumSum" else "axes"
                self.col.bad(op, f"`{what}` is computed in the graph: the parser needs it as a constant (an "
                             "initializer)", label)
        elif op == "ScatterND" and s("reduction", "none") != "none":
            self.col.bad(op, "reduction other than 'none' is not supported", label)
        elif op == "Constant" and any(k in attrs for k in ("sparse_value", "value_string", "value_strings")):
            self.col.bad(op, "sparse_value/value_string(s) attributes are not supported", label)
        elif op == "LSTM" and (int(attrs.get("input_forget", 0)) or int(attrs.get("layout", 0))):
            self.col.bad(op, "input_forget and layout must be 0", label)
        elif op == "Dropout" and len(node.input) > 2 and node.input[2]:
            flag = self._const_array(consts, node.input[2])
            if flag is None or bool(flag.any()):
                self.col.bad(op, "training_mode must be a constant False", label)


def _load_model(onnx_path_or_model: Any) -> tuple[Any, str | None]:
    onnx = require("onnx", "dev")
    if isinstance(onnx_path_or_model, onnx.ModelProto):
        return onnx_path_or_model, None
    path = Path(onnx_path_or_model)
    if not path.is_file():
        raise ExportError(f"ONNX file not found: {path}")
    try:  # always the binary format: onnx would pick a text parser from a .json/.txt suffix
        model = onnx.load(str(path), format="protobuf", load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any protobuf/IO error
        why = " ".join(str(exc).split())[:200]  # one line
        raise ExportError(f"cannot read ONNX file {path}: {why} (is it an .onnx model?)") from exc
    if not model.ir_version or not model.HasField("graph"):  # an empty file parses as an empty ModelProto
        raise ExportError(f"{path} is not an ONNX model (no IR version or no graph; {path.stat().st_size} bytes)")
    missing = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"
                      and not (path.parent / e.value).is_file()})
    if missing:
        raise ExportError(f"{path} keeps weights in external data files that are not beside it: "
                          f"{', '.join(missing[:3])}; copy them next to the model (TensorRT's parser needs them)")
    return model, str(path.parent)


def _prepare(model: Any, col: _Collector) -> tuple[Any, bool]:
    """Inline local functions (as the parser does) and run shape inference; never raises."""
    onnx = require("onnx", "dev")
    inlined = False
    if len(model.functions):
        try:
            from onnx import inliner

            model = inliner.inline_local_functions(model)
            inlined = True
        except Exception as exc:  # noqa: BLE001
            col.warn(f"could not inline model-local functions ({exc}); their bodies are checked without types")
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=False)
    except Exception as exc:  # noqa: BLE001
        col.warn(f"shape inference failed ({exc}); data types are only known for inputs, initializers and outputs")
    return model, inlined


def check_onnx_for_tensorrt(
    onnx_path_or_model: str | os.PathLike | Any, *, ops_table: Mapping[str, Any] | None = None
) -> TrtCheckReport:
    """Check that every op of an ONNX model is one the TensorRT ONNX parser supports, with its dtypes.

    Args:
        onnx_path_or_model: path of an ``.onnx`` file (external data is read only where a Q/DQ zero
            point or scale lives there) or an ``onnx.ModelProto``.
        ops_table: a support table of ``trt_ops.json``'s schema; default: the shipped one.

    Returns:
        A :class:`TrtCheckReport`; ``report.ok`` is False when TensorRT would reject something.

    Raises:
        ExportError: the file is missing or is not an ONNX model.
        MissingDependencyError: ``onnx`` is not installed.
    """
    table = ops_table if ops_table is not None else load_trt_ops()
    model, base_dir = _load_model(onnx_path_or_model)
    col = _Collector()
    model, inlined = _prepare(model, col)
    walker = _Walker(model, table, base_dir, col)
    opset = walker.opset
    lo, hi = table.get("opset_min"), table.get("opset_max")
    if opset is not None and lo is not None and hi is not None and not lo <= opset <= hi:
        col.bad("opset", f"default-domain opset {opset} is outside TensorRT {table.get('tensorrt_version')}'s range {lo}–{hi}", None)
    walker.walk_graph(model.graph)
    if len(model.functions) and not inlined:
        walker.walk_function_bodies(model)
    if col.untyped:
        col.warn(f"{col.untyped} data tensor(s) have no inferred type and were not dtype-checked")
    return TrtCheckReport(
        unsupported=[(op, reason, names) for (op, reason), names in col.problems.items()],
        warnings=list(col.warnings),
        op_counts=walker.counts,
        opset=opset,
        tensorrt_version=str(table.get("tensorrt_version", "")),
        source=str(table.get("source", "")),
        num_nodes=walker.num_nodes,
    )

