"""The channels-last labels head and its inverse (for OpenVINO) give the traced graph's labels."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _head_graph(static: bool, opset: int = 18) -> "onnx.ModelProto":
    """logits_low (N, K, h, w) → Resize to (N, K, H, W) given by the image's shape → ArgMax axis 1 → labels."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    inits = []
    if static:
        inits.append(numpy_helper.from_array(np.array([1, 5, 37, 53], np.int64), "sizes"))
    else:
        nodes += [
            helper.make_node("Shape", ["low"], ["low_shape"], start=0, end=2),
            helper.make_node("Shape", ["image"], ["img_hw"], start=2, end=4),
            helper.make_node("Concat", ["low_shape", "img_hw"], ["sizes"], axis=0),
        ]
    nodes += [
        helper.make_node("Resize", ["low", "", "", "sizes"], ["full"], mode="linear",
                         coordinate_transformation_mode="half_pixel"),
        helper.make_node("ArgMax", ["full"], ["labels"], axis=1, keepdims=0),
    ]
    inputs = [helper.make_tensor_value_info("low", TensorProto.FLOAT, ["N", 5, "h", "w"]),
              helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    out = [helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", "H", "W"])]
    graph = helper.make_graph(nodes, "head", inputs, out, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _labels(model, low, image):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["labels"], {"low": low, "image": image})[0]


@pytest.mark.parametrize("static", [False, True])
def test_nhwc_head_and_its_inverse_keep_the_labels(static):
    from semask_deploy.export.onnx import nhwc_labels_head, undo_nhwc_labels_head

    rng = np.random.default_rng(0)
    low = rng.standard_normal((1, 5, 10, 14)).astype(np.float32)
    image = np.zeros((1, 3, 37, 53), np.float32)
    traced = _head_graph(static)
    want = _labels(traced, low, image)
    nhwc = _head_graph(static)
    assert nhwc_labels_head(nhwc)
    assert any(n.op_type == "Transpose" for n in nhwc.graph.node)
    np.testing.assert_array_equal(_labels(nhwc, low, image), want)
    assert undo_nhwc_labels_head(nhwc)
    onnx.checker.check_model(nhwc)
    assert not any(n.op_type in ("Transpose", "Gather") for n in nhwc.graph.node)
    argmax = next(n for n in nhwc.graph.node if n.op_type == "ArgMax")
    assert next(a.i for a in argmax.attribute if a.name == "axis") == 1
    np.testing.assert_array_equal(_labels(nhwc, low, image), want)
    assert not undo_nhwc_labels_head(traced)  # no channels-last head: left alone


def _run(model, feed, runtime):
    if runtime == "ort":
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(["labels"], feed)[0]
    pytest.importorskip("openvino")
    from semask_deploy.runtime.openvino_backend import _compile, shared_core

    core = shared_core()
    compiled = _compile(core, core.read_model(model.SerializeToString()), "f32", None, "labels head")
    return next(iter(compiled.create_infer_request().infer(feed).values()))


@pytest.mark.parametrize("opset", [17, 18])  # the reductions' axes: an attribute before opset 18, an input from it
def test_reduce_argmax_head_keeps_first_index_ties_and_labels(opset):
    """Integer-valued scores make many ties: the max-reduce form must pick the first index, as ArgMax does."""
    from semask_deploy.export.labels_head import reduce_argmax_head

    rng = np.random.default_rng(1)
    low = rng.integers(0, 3, (2, 5, 10, 14)).astype(np.float32)
    image = np.zeros((2, 3, 10, 14), np.float32)  # same size: the resize is exact, the ties survive it
    feed = {"low": low, "image": image}
    traced = _head_graph(static=False, opset=opset)
    want = _run(traced, feed, "ort")
    assert (low.max(1, keepdims=True) == low).sum(1).max() > 1  # there are ties
    reduced = _head_graph(static=False, opset=opset)
    assert reduce_argmax_head(reduced)
    onnx.checker.check_model(reduced)
    assert not any(n.op_type == "ArgMax" for n in reduced.graph.node)
    for runtime in ("ort", "openvino"):
        got = _run(reduced, feed, runtime)
        assert got.shape == want.shape
        np.testing.assert_array_equal(got.astype(np.int64), want)


@pytest.mark.parametrize("nhwc", [True, False])
def test_openvino_head_with_output_size_gives_the_traced_labels(nhwc):
    """Channels-last (or NCHW) head + the second resize to output_size → NCHW resizes + max-reduce argmax."""
    from semask_deploy.export.labels_head import (
        add_output_size_input, nhwc_labels_head, openvino_labels_head,
    )
    from semask_deploy.export.onnx import clean_graph

    rng = np.random.default_rng(2)
    low = rng.standard_normal((1, 5, 10, 14)).astype(np.float32)
    image = np.zeros((1, 3, 37, 53), np.float32)
    graphs = []
    for _ in range(2):
        g = _head_graph(static=False)
        if nhwc:
            assert nhwc_labels_head(g)
        assert add_output_size_input(g)
        graphs.append(clean_graph(g)[0])  # as exported: the clean-up renames shared constants
    exported, for_openvino = graphs
    assert openvino_labels_head(for_openvino)
    onnx.checker.check_model(for_openvino)
    ops = [n.op_type for n in for_openvino.graph.node]
    assert "ArgMax" not in ops and "Transpose" not in ops and ops.count("Resize") == 2
    for size in ((37, 53), (20, 71)):
        feed = {"low": low, "image": image, "output_size": np.array(size, np.int64)}
        want = _run(exported, feed, "ort")
        assert want.shape == (1, *size)
        for runtime in ("ort", "openvino"):
            np.testing.assert_array_equal(_run(for_openvino, feed, runtime).astype(np.int64), want)
