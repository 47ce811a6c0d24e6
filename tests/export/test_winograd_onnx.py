"""The ONNX Winograd pass (export.winograd): the same outputs as the convolutions it replaces, any size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from semask_deploy.export.winograd import winograd_convs  # noqa: E402


class ConvBnRelu(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        with torch.no_grad():
            self.bn.running_mean.normal_()
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.normal_()
            self.bn.bias.normal_()

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def _dynamic_onnx(module: nn.Module, cin: int) -> "onnx.ModelProto":
    x = torch.randn(2, cin, 13, 18)
    dyn = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    ep = torch.export.export(module.eval(), (x,), dynamic_shapes=(dyn,))
    return torch.onnx.export(ep, (x,), dynamo=True, opset_version=20, input_names=["x"], verbose=False).model_proto


def test_rewritten_convs_match_the_module_at_every_size():
    torch.manual_seed(0)
    module = nn.Sequential(ConvBnRelu(200, 48), ConvBnRelu(48, 40), ConvBnRelu(40, 32)).eval()
    proto = _dynamic_onnx(module, 200)  # the exporter folds each BatchNormalization into its conv
    assert winograd_convs(proto, min_in_channels=48) == 2  # 200→48 and 48→40; 40→32 has too few inputs
    onnx.checker.check_model(proto)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 3 and ops.count("DepthToSpace") == 2  # two 6×6 input transforms + the 40→32 conv
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in [(2, 200, 13, 18), (1, 200, 16, 16), (1, 200, 1, 1), (3, 200, 7, 30), (1, 200, 2, 33)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            want = module(x).numpy()
        got = sess.run(None, {"x": x.numpy()})[0]
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max(), shape


def test_other_convolutions_are_left_alone():
    torch.manual_seed(0)
    module = nn.Sequential(ConvBnRelu(64, 32, stride=2), nn.Conv2d(32, 16, 1), nn.Conv2d(16, 8, 3, padding=2))
    proto = _dynamic_onnx(module, 64)
    before = proto.SerializeToString()
    assert winograd_convs(proto, min_in_channels=1) == 0
    assert proto.SerializeToString() == before


def test_plain_convs_restores_the_convolutions():
    """What OpenVINO is given: the Winograd subgraphs folded back into Conv 3×3 with the original weights."""
    from semask_deploy.export.winograd import plain_convs

    torch.manual_seed(0)
    module = nn.Sequential(ConvBnRelu(96, 64), ConvBnRelu(64, 40)).eval()
    proto = _dynamic_onnx(module, 96)
    direct = onnx.ModelProto()
    direct.CopyFrom(proto)
    assert winograd_convs(proto, min_in_channels=64) == 2
    assert plain_convs(proto) == 2
    onnx.checker.check_model(proto)
    assert [n.op_type for n in proto.graph.node] == [n.op_type for n in direct.graph.node]
    restored = {t.name: t for t in proto.graph.initializer}
    assert all(not name.startswith("winograd") or name.endswith(("/weight", "/conv_bias")) for name in restored)
    x = torch.randn(2, 96, 21, 14).numpy()
    want = ort.InferenceSession(direct.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert plain_convs(proto) == 0  # nothing left to restore
