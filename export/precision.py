"""Reduced precision in the ONNX itself: the mixed fp16 graph pass, and the graph analysis it shares with int8.

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

**int8** Q/DQ graphs from calibration live in :mod:`semask_deploy.export.int8`; they keep the same sensitive
nodes (:func:`attention_roles`) in float.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semask_deploy.errors import ExportError, require

FLOAT, FLOAT16 = 1, 10
ALWAYS_FP32 = ("LayerNormalization", "Softmax", "GroupNormalization", "InstanceNormalization")
_TYPE_AGNOSTIC = ("Shape", "Size")  # read only the shape: never cast their input
_CHAIN_OPS = ("Add", "Sub", "Mul", "Div", "Cast", "Where", "Reshape")


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
            arr = _to_float16(g.const_array(name), name)
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


#: constants at least this large are "minus infinity" sentinels (e.g. -finfo(float32).max filling masked
#: attention logits): in fp16 they become ±inf on purpose
SENTINEL = 1e30


def _to_float16(arr: np.ndarray, name: str) -> np.ndarray:
    """``arr`` as float16. Sentinels (|x| ≥ :data:`SENTINEL`) become ±inf silently (numpy warned of an
    overflow); other values beyond fp16's range (65504) also become ±inf, and that is said."""
    with np.errstate(over="ignore"):
        half = arr.astype(np.float16)
    a = np.abs(arr.astype(np.float64))
    lost = np.isfinite(a) & (a > float(np.finfo(np.float16).max)) & (a < SENTINEL)
    if lost.any():
        import warnings

        from semask_deploy.errors import SemaskWarning

        warnings.warn(f"fp16 export: the constant {name} holds values up to {a[lost].max():.3g}, beyond fp16's range "
                      "(65504); they become infinite in the fp16 graph", SemaskWarning, stacklevel=2)
    return half
