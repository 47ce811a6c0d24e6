"""Mask-classification export: one dynamic ONNX per checkpoint, ORT vs torch at 3 sizes, TensorRT op check.

Small random official-layout checkpoints from the golden fixtures' ``sd/`` arrays (detectron2 ``{"model": sd}``).
The deformable sampling (MSDeformAttn, DCNv2 of FaPN) is exported as GridSample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).resolve().parents[1] / "data" / "m2f"
SIZES = [(64, 64), (53, 75), (70, 41)]  # a multiple of 32 and two that are not (padding traced)


def _checkpoint(tmp_path: Path, arch: str) -> Path:
    z = np.load(DATA / f"golden_{arch}_small.npz")
    sd = {k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("sd/")}
    path = tmp_path / f"{arch}.pth"
    torch.save({"model": sd}, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mask2former_ade20k", "mask2former_fapn_ade20k"])
def test_export_dynamic_matches_torch(arch, tmp_path):
    import onnxruntime as ort

    from semask_deploy import load_model
    from semask_deploy.export.onnx import export_onnx
    model = load_model(_checkpoint(tmp_path, arch)).eval()
    info = export_onnx(model, tmp_path / "m.onnx", with_logits=True, simplify=False)
    assert info.dynamic == {"N": True, "H": True, "W": True}
    assert info.op_counts.get("GridSample", 0) > 0  # the deformable sampling
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    for h, w in SIZES:
        x = torch.randn(1, 3, h, w, generator=g)
        with torch.no_grad():
            ref = model(x)
        labels, logits = sess.run(None, {"image": x.numpy()})
        assert logits.shape == (1, 150, h, w) and labels.shape == (1, h, w) and labels.dtype == np.int32
        err = np.abs(logits - ref.numpy()).max()
        assert err < 1e-4 * max(1.0, float(ref.abs().max())), (h, w, err)
        assert np.array_equal(labels, ref.argmax(1).numpy().astype(np.int32)), (h, w)
    # (the TensorRT op check runs on the cleaned graph of semask-export: this unsimplified one still holds
    # SplitToSequence/SequenceAt, which onnxscript's optimizer removes)


@pytest.mark.parametrize(("padding", "ok"), [("zeros", True), ("border", True), ("weird", False)])
def test_trt_check_gridsample_attributes(padding, ok):
    """GridSample (the deformable sampling) is a native parser op; unsupported attributes are reported."""
    from onnx import TensorProto, helper

    from semask_deploy.export.trt_check import check_onnx_for_tensorrt

    node = helper.make_node("GridSample", ["x", "grid"], ["y"], mode="bilinear", padding_mode=padding,
                            align_corners=0, name="gs")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 7]),
         helper.make_tensor_value_info("grid", TensorProto.FLOAT, [1, 9, 4, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 9, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    report = check_onnx_for_tensorrt(model)
    assert report.ok is ok
    if not ok:
        assert "padding_mode 'weird'" in report.format()
