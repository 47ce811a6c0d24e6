"""Fixtures for the benchmark tests: a tiny SeMask model saved as a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semask_deploy import SeMaskConfig, build_model
from semask_deploy.checkpoint import save_checkpoint

TINY = SeMaskConfig(
    embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7, sem_window_size=7, num_classes=8,
    sem_num_classes=8, sem_modes=("window", "window", "global", "global"), test_scale=(128, 64), crop_size=(64, 64),
)


@pytest.fixture(scope="session")
def tiny_model():
    torch.manual_seed(0)
    return build_model(TINY, attention_backend="eager").eval()


@pytest.fixture(scope="session")
def tiny_bench_ckpt(tmp_path_factory, tiny_model) -> Path:
    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("bench") / "tiny.pth")


@pytest.fixture
def tiny_matmul_onnx(tmp_path) -> Path:
    """A [128, 64] × [64, 32] MatMul (constant weights) + Relu ONNX: the smallest graph with one matrix product."""
    import numpy as np

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), helper.make_node("Relu", ["y"], ["z"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [128, 64])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [128, 32])], [w])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path
