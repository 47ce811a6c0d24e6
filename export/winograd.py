"""ONNX graph pass: the head's 3×3 convolutions as Winograd F(4×4, 3×3) in standard ops (CPU runtimes).

The Semantic-FPN head spends most of its multiply-adds in 3×3, stride-1 convolutions with 256 outputs
(:mod:`semask_deploy.model.winograd` does the same in PyTorch). This pass replaces each such ``Conv`` (the
exporter's optimizer has folded the BatchNormalization into it) by a subgraph of plain ONNX ops that stays
dynamic in N, H and W:

    Pad (1 top/left; to a multiple of 4, +1, bottom/right)
    → Conv 6×6, stride 4, one group per channel, 36 outputs each = (Bᵀ⊗Bᵀ) d for every 6×6 tile
    → Reshape/Transpose (N, 36, Cin, T) → MatMul U (36, Cout, Cin) = the 36 per-position channel GEMMs
    → MatMul (Aᵀ⊗Aᵀ) (16×36) → Reshape (N, 16·Cout, tiles_h, tiles_w) → DepthToSpace 4 (DCR)
    → Slice to (H, W) → Add bias

U = G g Gᵀ is computed in float64 from the weight. The GEMM work drops 4× (36 products per
4×4 output tile instead of 144); the transforms cost ~81 multiply-adds per input pixel and channel. Accuracy
in fp32: ~6e-6 of the largest output (direct convolution ~5e-7).

Applied by ``semask-export`` to the fp32 ONNX Runtime graph (``export_onnx(..., winograd=True)``), to every
eligible conv. ``benchmarks/winograd_onnx.py`` on a 2-core AVX2 AMD EPYC: each head conv alone is 1.3–2.0× faster
in ONNX Runtime (96–1536 input channels, maps 128² to 16²; only an 8×8 map is slower, 1 vs 2 ms), but the whole
SeMask-T graph at 512×512 gains far less — 1.08× (1 thread) and 0.99× (2 threads) in the committed run, 1.01–1.05×
in others — because the transforms (DepthToSpace, Pad, Slice, and the ×2 upsamples that lose ONNX Runtime's
blocked-layout kernel) are memory-bound and do not scale with threads. TensorRT and OpenVINO graphs keep plain
convs (they choose their own algorithms; OpenVINO f32 measured 1.00–1.06×), and so do fp16 and int8 graphs;
the OpenVINO backend turns a Winograd graph back into plain convs (:func:`plain_convs`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from semask_deploy.model.winograd import _AT, _BT, _G

#: convolutions with fewer input channels are left alone: their input transform would cost more than the GEMM
#: saves. In ONNX Runtime every head conv of our models (96 to 1536 input channels) measured 1.3–2.0× faster
#: (``benchmarks/winograd_onnx.py``, per-convolution table); the PyTorch path has its own rule
#: (``semask_deploy.model.fast._winograd_pays``)
MIN_IN_CHANNELS = 64


def _attribute(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _eligible(node: Any, weights: dict[str, np.ndarray], min_in_channels: int) -> bool:
    if node.op_type != "Conv" or len(node.input) < 2 or any(name not in weights for name in node.input[1:] if name):
        return False
    w = weights[node.input[1]]
    return (w.ndim == 4 and w.shape[2:] == (3, 3) and w.shape[1] >= min_in_channels
            and list(_attribute(node, "strides", [1, 1])) == [1, 1]
            and list(_attribute(node, "pads", [0, 0, 0, 0])) == [1, 1, 1, 1]
            and list(_attribute(node, "dilations", [1, 1])) == [1, 1]
            and _attribute(node, "group", 1) == 1
            and _attribute(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))


def _subgraph(prefix: str, x: str, out: str, w: np.ndarray, b: np.ndarray) -> tuple[list[Any], list[Any]]:
    """The nodes and initializers computing ``out`` = conv3x3(x, w) + b by Winograd F(4×4, 3×3)."""
    from onnx import helper, numpy_helper

    cout, cin = w.shape[:2]
    bt, g, at = (m.numpy() for m in (_BT, _G, _AT))
    inits: list[Any] = []
    nodes: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, prefix + name))
        return prefix + name

    def op(kind: str, inputs: list[str], name: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(kind, inputs, [prefix + name], name=prefix + name, **attrs))
        return prefix + name

    u = np.einsum("ik,ockl,jl->ijoc", g, w, g).reshape(36, cout, cin).astype(np.float32)
    tile_in = np.tile(np.kron(bt, bt).reshape(36, 1, 6, 6), (cin, 1, 1, 1)).astype(np.float32)
    zeros, ones = const("zeros", np.zeros(2, np.int64)), const("ones", np.ones(2, np.int64))
    hw = op("Shape", [x], "hw", start=2, end=4)
    # bottom/right padding: 1 + (−H mod 4), so that (H + pads − 2) is a multiple of 4
    tail = op("Add", [op("Mod", [op("Neg", [hw], "neg"), const("four", np.full(2, 4, np.int64))], "rem"), ones], "tail")
    padded = op("Pad", [x, op("Concat", [zeros, ones, zeros, tail], "pads", axis=0)], "padded")
    v = op("Conv", [padded, const("tile_in", tile_in)], "v", group=cin, strides=[4, 4], kernel_shape=[6, 6])
    v = op("Transpose", [op("Reshape", [v, const("vshape", np.array([0, cin, 36, -1], np.int64))], "vr")], "vt",
           perm=[0, 2, 1, 3])
    m = op("MatMul", [const("u", u), v], "m")  # (N, 36, Cout, T)
    m = op("Reshape", [m, const("mshape", np.array([0, 36, -1], np.int64))], "mr")
    y = op("MatMul", [const("tile_out", np.kron(at, at).astype(np.float32)), m], "y")  # (N, 16, Cout·T)
    tiles = op("Shape", [prefix + "v"], "tiles", start=2, end=4)
    yshape = op("Concat", [const("yhead", np.array([0, 16 * cout], np.int64)), tiles], "yshape", axis=0)
    y = op("DepthToSpace", [op("Reshape", [y, yshape], "yr")], "d2s", blocksize=4, mode="DCR")
    y = op("Slice", [y, zeros, hw, const("axes", np.array([2, 3], np.int64))], "crop")
    nodes.append(helper.make_node("Add", [y, const("bias", b.reshape(1, cout, 1, 1).astype(np.float32))], [out],
                                  name=prefix + "bias_add"))
    return nodes, inits


def winograd_convs(proto: Any, min_in_channels: int = MIN_IN_CHANNELS) -> int:
    """Rewrite every eligible 3×3 convolution of ``proto`` in place; returns how many were rewritten.

    Eligible: ``Conv`` with a constant 3×3 weight (and bias), stride 1, padding 1, no dilation, one group and at least
    ``min_in_channels`` input channels.
    """
    from onnx import numpy_helper

    g = proto.graph
    weights = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    replaced: dict[int, list[Any]] = {}
    new_inits: list[Any] = []
    for i, node in enumerate(g.node):
        if not _eligible(node, weights, min_in_channels):
            continue
        w = weights[node.input[1]].astype(np.float64)
        b = weights[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0])
        sub, inits = _subgraph(f"winograd{len(replaced)}/", node.input[0], node.output[0], w, b)
        replaced[i] = sub
        new_inits += inits
    if not replaced:
        return 0
    order: list[Any] = []
    for i, n in enumerate(g.node):
        order += replaced.get(i, [n])
    del g.node[:]
    g.node.extend(order)
    used = {name for n in g.node for name in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept + new_inits)
    return len(replaced)


def plain_convs(proto: Any) -> int:
    """The inverse of :func:`winograd_convs`: every Winograd subgraph back to one ``Conv`` 3×3 (in place).

    For runtimes that choose their own convolution algorithms and may run in reduced precision (OpenVINO
    reads our ONNX Runtime graph this way: Winograd's transforms amplify bf16 rounding). The weight comes back
    from U = G g Gᵀ as g = G⁺ U G⁺ᵀ (G has full column rank, so this is exact up to fp32 rounding of U).
    Subgraphs are found by the node names :func:`winograd_convs` gives them; one that was altered since is
    left alone. Returns how many were restored.
    """
    import re

    from onnx import helper, numpy_helper

    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    groups: dict[str, list[int]] = {}
    consumers: dict[str, list[str]] = {}
    for i, node in enumerate(g.node):
        match = re.match(r"(winograd\d+/)", node.name)
        if match:
            groups.setdefault(match.group(1), []).append(i)
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    graph_outputs = {o.name for o in g.output}
    pinv = np.linalg.pinv(_G.numpy().astype(np.float64))  # (3, 6)
    replaced: dict[int, Any] = {}  # first node index of a subgraph → its Conv
    dropped: set[int] = set()
    for prefix, indices in groups.items():
        sub = [g.node[i] for i in indices]
        by_name = {n.name[len(prefix):]: n for n in sub}
        pad, add = by_name.get("padded"), by_name.get("bias_add")
        u_init, b_init = inits.get(prefix + "u"), inits.get(prefix + "bias")
        if pad is None or add is None or u_init is None or b_init is None:
            continue
        inner = {o for n in sub for o in n.output} - {add.output[0]}
        if inner & graph_outputs or any(not c.startswith(prefix) for v in inner for c in consumers.get(v, [])):
            continue  # an intermediate value is used outside the subgraph: not ours to fold
        u = numpy_helper.to_array(u_init).astype(np.float64)  # (36, Cout, Cin)
        cout, cin = u.shape[1:]
        w = np.einsum("ki,ijoc,lj->ockl", pinv, u.reshape(6, 6, cout, cin), pinv).astype(np.float32)
        b = numpy_helper.to_array(b_init).reshape(cout).astype(np.float32)
        g.initializer.extend([numpy_helper.from_array(w, prefix + "weight"),
                              numpy_helper.from_array(b, prefix + "conv_bias")])
        # at the subgraph's first node: its input x is computed by then, its consumers come after
        replaced[min(indices)] = helper.make_node("Conv", [pad.input[0], prefix + "weight", prefix + "conv_bias"],
                                                  [add.output[0]], name=prefix + "conv", kernel_shape=[3, 3],
                                                  pads=[1, 1, 1, 1])
        dropped.update(indices)
    restored = len(replaced)
    if restored:
        order = [replaced[i] if i in replaced else n for i, n in enumerate(g.node) if i in replaced or i not in dropped]
        del g.node[:]
        g.node.extend(order)
        used = {name for n in g.node for name in n.input}
        kept = [t for t in g.initializer if t.name in used]
        del g.initializer[:]
        g.initializer.extend(kept)
    return restored
