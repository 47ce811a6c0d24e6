"""The labels head of an exported graph: how the stride-4 logits become labels, per runtime.

The traced graph ends ``ArgMax(Resize(logits, (N, K, H, W)), axis=1)``. The runtimes differ in which form
of that full-resolution resize + argmax they run fast (150 classes at 512×512, 1 thread, measured on an
AMD EPYC with AVX-512):

============================  ==============  ==========
form                          ONNX Runtime    OpenVINO
============================  ==============  ==========
NCHW resize, ArgMax           282 ms          211 ms (ArgMax runs as TopK over the strided class axis)
channels-last resize, ArgMax  48 ms           655 ms (channels-last Interpolate is a slow path)
NCHW resize, max-reduce form  594 ms          50 ms
============================  ==============  ==========

so ONNX files get the channels-last head (:func:`nhwc_labels_head`), OpenVINO gets the max-reduce form
(:func:`openvino_labels_head`) and TensorRT the traced form. :func:`add_output_size_input` adds the official
second resize (to the original image size) to any of them. All forms give the same labels.
"""

from __future__ import annotations

from typing import Any

OUTPUT_SIZE = "output_size"


def nhwc_labels_head(proto: Any) -> bool:
    """Rewrite ``ArgMax(Resize(logits_nchw), axis=1)`` into ``ArgMax(Resize(Transpose(logits, NHWC)), axis=3)``.

    The same bilinear weights over H and W (ONNX Runtime computes the identical values), but the
    full-resolution tensor is channels-last, so the argmax scans contiguous memory and the resize runs
    ORT's NHWC kernel: 34 ms instead of 133 ms for 150 classes at 512×512 on 2 cores. A ``logits``
    output keeps its NCHW resize. Returns whether the pattern was found (in place).
    """
    import numpy as np
    from onnx import helper, numpy_helper

    g = proto.graph
    producer = {o: n for n in g.node for o in n.output}
    argmax = next((n for n in g.node if n.op_type == "ArgMax"), None)
    if argmax is None:
        return False
    axis = next((a.i for a in argmax.attribute if a.name == "axis"), 0)
    resize = producer.get(argmax.input[0])
    if axis != 1 or resize is None or resize.op_type != "Resize" or len(resize.input) < 4 or not resize.input[3]:
        return False
    if any(resize.input[i] for i in (1, 2) if i < len(resize.input)):
        return False  # roi/scales given: not the exporter's sizes form
    x, sizes = resize.input[0], resize.input[3]
    perm = [0, 2, 3, 1]
    inits = {t.name: t for t in g.initializer}
    new_nodes = [helper.make_node("Transpose", [x], ["labels_head_nhwc"], perm=perm, name="labels_head_transpose")]
    if sizes in inits:
        arr = numpy_helper.to_array(inits[sizes])
        g.initializer.append(numpy_helper.from_array(arr[perm].copy(), "labels_head_sizes"))
    else:
        g.initializer.append(numpy_helper.from_array(np.array(perm, dtype=np.int64), "labels_head_perm"))
        new_nodes.append(helper.make_node("Gather", [sizes, "labels_head_perm"], ["labels_head_sizes"], axis=0,
                                          name="labels_head_sizes_gather"))
    attrs = {a.name: helper.get_attribute_value(a) for a in resize.attribute}
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    new_nodes.append(helper.make_node("Resize", ["labels_head_nhwc", "", "", "labels_head_sizes"],
                                      ["labels_head_resized"], name="labels_head_resize", **attrs))
    for a in argmax.attribute:
        if a.name == "axis":
            a.i = 3
    argmax.input[0] = "labels_head_resized"
    index = list(g.node).index(argmax)
    for k, node in enumerate(new_nodes):
        g.node.insert(index + k, node)
    if not any(resize.output[0] in n.input for n in g.node) and resize.output[0] not in {o.name for o in g.output}:
        g.node.remove(resize)  # labels-only graph: the NCHW full-resolution resize is gone
    return True


def _labels_argmax(g: Any) -> Any | None:
    """The ArgMax that makes the ``labels`` output (through at most a few Casts), or None."""
    producer = {o: n for n in g.node for o in n.output}
    node = producer.get("labels")
    for _ in range(4):
        if node is None or node.op_type == "ArgMax":
            return node
        node = producer.get(node.input[0])
    return None


def add_output_size_input(proto: Any) -> bool:
    """Give the graph the official second resize: a graph input ``output_size`` int64 [2] = (Ho, Wo).

    ``labels`` becomes ``ArgMax(Resize(logits_at_input_size, (Ho, Wo)))``: the logits the graph already
    resized to its input size (H, W) are resized again, bilinearly (``half_pixel`` = torch's
    ``align_corners=False``, no antialiasing), to the size the caller asks for — the original image's
    size in mmseg's test pipeline (keep-ratio resize → model → logits to (H, W) → logits to the original
    size → argmax) — and the argmax is taken there. Works on either labels head (channels-last or NCHW)
    and keeps its layout, so the full-size tensor is scanned over its contiguous class axis where the
    head is channels-last. ``output_size`` = (H, W) gives exactly the labels at the input size (the second
    resize is then the identity). A ``logits`` output is unchanged (N, K, H, W). Returns whether the
    pattern was found (in place).
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    g = proto.graph
    node = _labels_argmax(g)
    if node is None or any(i.name == OUTPUT_SIZE for i in g.input):
        return False
    argmax = node
    axis = next((a.i for a in argmax.attribute if a.name == "axis"), 0)
    if axis not in (1, 3):
        return False
    x = argmax.input[0]
    consts = {"output_size_n": [0], "output_size_one": [1], "output_size_two": [2], "output_size_four": [4]}
    for name, value in consts.items():
        g.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.int64), name))
    nodes = [helper.make_node("Shape", [x], ["output_size_xshape"], name="output_size_shape")]
    if axis == 3:  # channels-last: sizes = (N, Ho, Wo, K)
        nodes += [
            helper.make_node("Slice", ["output_size_xshape", "output_size_n", "output_size_one"], ["output_size_batch"],
                             name="output_size_batch"),
            helper.make_node("Slice", ["output_size_xshape", "output_size_two", "output_size_four"],
                             ["output_size_hwk"], name="output_size_hwk"),
            helper.make_node("Slice", ["output_size_hwk", "output_size_one", "output_size_two"], ["output_size_k"],
                             name="output_size_k"),
            helper.make_node("Concat", ["output_size_batch", OUTPUT_SIZE, "output_size_k"], ["output_size_sizes"],
                             axis=0, name="output_size_concat"),
        ]
    else:  # NCHW: sizes = (N, K, Ho, Wo)
        nodes += [
            helper.make_node("Slice", ["output_size_xshape", "output_size_n", "output_size_two"], ["output_size_nk"],
                             name="output_size_nk"),
            helper.make_node("Concat", ["output_size_nk", OUTPUT_SIZE], ["output_size_sizes"], axis=0,
                             name="output_size_concat"),
        ]
    nodes.append(helper.make_node("Resize", [x, "", "", "output_size_sizes"], ["output_size_resized"],
                                  name="output_size_resize", mode="linear",
                                  coordinate_transformation_mode="half_pixel"))
    argmax.input[0] = "output_size_resized"
    index = list(g.node).index(argmax)
    for k, n in enumerate(nodes):
        g.node.insert(index + k, n)
    g.input.append(helper.make_tensor_value_info(OUTPUT_SIZE, TensorProto.INT64, [2]))
    out = next(o for o in g.output if o.name == "labels")
    dims = out.type.tensor_type.shape.dim
    if len(dims) == 3:
        dims[1].ClearField("dim_value")
        dims[1].dim_param = "Ho"
        dims[2].ClearField("dim_value")
        dims[2].dim_param = "Wo"
    return True


def undo_nhwc_labels_head(proto: Any) -> bool:
    """The inverse of :func:`nhwc_labels_head`: ``ArgMax(Resize(logits_nchw), axis=1)`` again (in place).

    For OpenVINO, whose CPU plugin runs the channels-last full-resolution Interpolate on a slow path (706 ms
    vs 61 ms for 150 classes at 512×512): the same labels, NCHW resize. Returns whether the head was found.
    """
    import numpy as np
    from onnx import numpy_helper

    g = proto.graph
    nodes = {n.name: n for n in g.node}
    resize, transpose = nodes.get("labels_head_resize"), nodes.get("labels_head_transpose")
    if resize is None or transpose is None:
        return False
    second = nodes.get("output_size_resize")  # the official second resize, channels-last as well
    if second is not None and second.input[0] != resize.output[0]:
        second = None
    last = second if second is not None else resize
    argmax = next((n for n in g.node if n.op_type == "ArgMax" and n.input[0] == last.output[0]), None)
    if argmax is None:
        return False
    inits = {t.name: t for t in g.initializer}
    sizes = resize.input[3]
    gather = nodes.get("labels_head_sizes_gather")
    if gather is not None and gather.output[0] == sizes:
        original = gather.input[0]
    elif sizes in inits:
        arr = numpy_helper.to_array(inits[sizes])
        original = "labels_head_sizes_nchw"
        g.initializer.append(numpy_helper.from_array(arr[[0, 3, 1, 2]].astype(np.int64), original))
    else:
        return False
    resize.input[0] = transpose.input[0]
    resize.input[3] = original
    for a in argmax.attribute:
        if a.name == "axis":
            a.i = 1
    g.node.remove(transpose)
    if second is not None:  # its sizes (N, Ho, Wo, K) become (N, K, Ho, Wo)
        from onnx import helper

        # (the graph clean-up may have renamed the constants of add_output_size_input: make fresh ones)
        g.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), "output_size_nchw_start"),
                              numpy_helper.from_array(np.array([2], np.int64), "output_size_nchw_end")])
        concat = next(n for n in g.node if n.output[0] == second.input[3])
        index = list(g.node).index(concat)
        g.node.insert(index, helper.make_node("Shape", [resize.output[0]], ["output_size_nchw_shape"],
                                              name="output_size_nchw_shape"))
        g.node.insert(index + 1, helper.make_node("Slice", ["output_size_nchw_shape", "output_size_nchw_start",
                                                            "output_size_nchw_end"], ["output_size_nk"],
                                                  name="output_size_nk"))
        old_inputs = list(concat.input)
        concat.ClearField("input")
        concat.input.extend(["output_size_nk", OUTPUT_SIZE])
        _remove_dead(g, old_inputs)
    if gather is not None and not any(sizes in n.input for n in g.node):
        g.node.remove(gather)
    for name in (sizes, "labels_head_perm"):
        if name in inits and not any(name in n.input for n in g.node):
            g.initializer.remove(inits[name])
    return True


def _remove_dead(g: Any, values: list[str]) -> None:
    """Remove the nodes that produced ``values`` (and, recursively, their inputs' producers) once unused."""
    outputs = {o.name for o in g.output}
    pending = list(values)
    while pending:
        value = pending.pop()
        node = next((n for n in g.node if value in n.output), None)
        if node is None or any(o in outputs or any(o in m.input for m in g.node) for o in node.output):
            continue
        g.node.remove(node)
        pending.extend(node.input)


def reduce_argmax_head(proto: Any) -> bool:
    """Replace the ArgMax that makes ``labels`` by its max-reduce form (in place), for OpenVINO.

    ``ArgMax(X, axis=a)`` = the smallest class index whose score equals ``ReduceMax(X, a)``:
    ``ReduceMin(Where(X == max, iota, K − 1), a)`` (int32 over the map) — the same labels (ties resolve to the first
    index, as ArgMax does; a map without any maximum, i.e. NaN scores, gives K − 1, still a valid class).
    OpenVINO runs ArgMax over the strided class axis of an NCHW map as a slow TopK (183 of ~1170 ms for
    SeMask-T at 512×512, 1 thread); these are three streaming passes (~50 ms). Returns whether the
    ArgMax was found.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    g = proto.graph
    node = _labels_argmax(g)
    if node is None:
        return False
    argmax = node
    attrs = {a.name: helper.get_attribute_value(a) for a in argmax.attribute}
    if attrs.get("keepdims", 1) != 0 or attrs.get("select_last_index", 0) != 0:
        return False
    x, out, axis = argmax.input[0], argmax.output[0], int(attrs.get("axis", 0))
    rank = 4
    shape = [1] * rank
    shape[axis] = -1
    p = "labels_reduce_"
    # ReduceMax/ReduceMin take their axes as an input from opset 18, as an attribute before
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 18)
    axes_in, axes_attr = ([p + "axes"], {}) if opset >= 18 else ([], {"axes": [axis]})
    consts = {p + "axis_start": np.array([axis], np.int64), p + "axis_end": np.array([axis + 1], np.int64),
              p + "iota_shape": np.array(shape, np.int64), p + "zero": np.array(0, np.int32),
              p + "one": np.array(1, np.int32)}
    if axes_in:
        consts[p + "axes"] = np.array([axis], np.int64)
    for name, value in consts.items():
        g.initializer.append(numpy_helper.from_array(value, name))
    nodes = [
        helper.make_node("ReduceMax", [x, *axes_in], [p + "max"], keepdims=1, name=p + "max", **axes_attr),
        helper.make_node("Equal", [x, p + "max"], [p + "is_max"], name=p + "is_max"),
        helper.make_node("Shape", [x], [p + "shape"], name=p + "shape"),
        helper.make_node("Slice", [p + "shape", p + "axis_start", p + "axis_end"], [p + "k64"], name=p + "k64"),
        helper.make_node("Cast", [p + "k64"], [p + "k1"], to=TensorProto.INT32, name=p + "k1"),
        helper.make_node("Squeeze", [p + "k1"], [p + "k"], name=p + "k"),
        helper.make_node("Range", [p + "zero", p + "k", p + "one"], [p + "range"], name=p + "range"),
        helper.make_node("Reshape", [p + "range", p + "iota_shape"], [p + "iota"], name=p + "iota"),
        helper.make_node("Sub", [p + "k", p + "one"], [p + "last"], name=p + "last"),
        helper.make_node("Where", [p + "is_max", p + "iota", p + "last"], [p + "candidates"], name=p + "candidates"),
        helper.make_node("ReduceMin", [p + "candidates", *axes_in], [p + "min"], keepdims=0, name=p + "min",
                         **axes_attr),
        # int64 as ArgMax gives (on the (N, H, W) labels only: cheap); the exported Cast to int32 follows
        helper.make_node("Cast", [p + "min"], [out], to=TensorProto.INT64, name=p + "int64"),
    ]
    index = list(g.node).index(argmax)
    g.node.remove(argmax)
    for k, n in enumerate(nodes):
        g.node.insert(index + k, n)
    return True


def openvino_labels_head(proto: Any) -> bool:
    """The head OpenVINO runs fast: NCHW resize(s) (:func:`undo_nhwc_labels_head`) and the max-reduce argmax
    (:func:`reduce_argmax_head`). In place; returns whether anything changed."""
    undone = undo_nhwc_labels_head(proto)
    return reduce_argmax_head(proto) or undone
