"""``semask-export --fmt triton``: configs parsed with Triton's own protobuf schema; the Python-backend models
(and, with --triton-python-runtime, the whole ensemble) served for real by PyTriton's bundled tritonserver.

PyTriton's tritonserver has only the Python backend, so the onnxruntime_onnx / tensorrt_plan networks are
checked against the schema here but not loaded.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from semask_deploy.serving.triton_repo import (
    RepoSpec,
    ensemble_config,
    network_config,
    post_config,
    pre_config,
    spec_from_metadata,
)

from .conftest import free_ports

pytestmark = pytest.mark.serve


def parse(text: str):
    """Triton's ModelConfig message (tritonclient ships the generated module of model_config.proto)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_schema_rejects_what_triton_rejects():
    from google.protobuf import text_format

    good = network_config(RepoSpec("m", "onnx", 10))
    parse(good)
    for bad in (good.replace("max_batch_size", "max_batch"), good.replace("KIND_CPU", "KIND_CPUS"),
                good.replace("TYPE_FP32", "FP32"), good.replace("dims: [ 3, -1, -1 ]", "dims: [ 3, x, -1 ]")):
        with pytest.raises(text_format.ParseError):
            parse(bad)


@pytest.mark.parametrize("kind,gpu,platform,backend,kind_enum", [
    ("onnx", False, "onnxruntime_onnx", "onnxruntime", "KIND_CPU"),
    ("onnx", True, "onnxruntime_onnx", "onnxruntime", "KIND_GPU"),
    ("tensorrt", False, "tensorrt_plan", "tensorrt", "KIND_GPU"),
    ("onnx-python", False, "", "python", "KIND_CPU"),
])
def test_network_config(kind, gpu, platform, backend, kind_enum):
    from tritonclient.grpc import model_config_pb2 as pb

    cfg = parse(network_config(RepoSpec("net", kind, 150, max_batch=8, gpu=gpu, instances=2)))
    assert (cfg.platform, cfg.backend, cfg.max_batch_size) == (platform, backend, 8)
    assert cfg.HasField("dynamic_batching")
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("image", pb.TYPE_FP32, [3, -1, -1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [
        ("labels", pb.TYPE_INT32, [-1, -1]), ("logits", pb.TYPE_FP32, [150, -1, -1])]
    assert [(g.count, pb.ModelInstanceGroup.Kind.Name(g.kind)) for g in cfg.instance_group] == [(2, kind_enum)]


def test_static_pre_post_and_ensemble_configs():
    spec = RepoSpec("net", "onnx", 19, max_batch=2, static_hw=(512, 1024), with_labels=False)
    net = parse(network_config(spec))
    assert list(net.input[0].dims) == [3, 512, 1024] and [o.name for o in net.output] == ["logits"]
    pre = parse(pre_config(RepoSpec("net", "onnx", 19, test_scale=(2048, 512))))
    assert pre.backend == "python" and pre.parameters["test_scale"].string_value == "2048,512"
    assert pre.parameters["exact_size"].string_value == "none"
    post = parse(post_config(spec))
    assert [i.name for i in post.input] == ["logits", "size"] and list(post.input[0].dims) == [19, -1, -1]
    ens = parse(ensemble_config(spec))
    assert ens.platform == "ensemble" and ens.max_batch_size == 2
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["net_pre", "net", "net_post"]
    # every tensor an ensemble step reads is the ensemble's input or an earlier step's output
    produced = {"image"}
    for s in steps:
        assert set(s.input_map.values()) <= produced
        produced |= set(s.output_map.values())
    assert "labels" in produced


def test_spec_from_metadata_refuses_what_the_ensemble_cannot_use():
    from semask_deploy.errors import ConfigError

    meta = {"has_logits": True, "preprocess_in_graph": False, "dynamic": {"N": True, "H": True, "W": True},
            "num_classes": 10, "test_scale": [256, 256], "kind": "onnx",
            "inputs": [{"name": "image", "shape": ["N", 3, "H", "W"]}],
            "outputs": [{"name": "labels"}, {"name": "logits"}]}
    assert spec_from_metadata(meta, "x", max_batch=4).test_scale == (256, 256)
    for key, value, what in (("has_logits", False, "logits"), ("preprocess_in_graph", True, "preprocess"),
                             ("dynamic", {"N": False, "H": True, "W": True}, "--batch")):
        with pytest.raises(ConfigError, match=what):
            spec_from_metadata({**meta, key: value}, "x", max_batch=4)


@pytest.mark.slow
def test_export_triton_repository_served_by_bundled_tritonserver(tmp_path):
    """The real CLI export, every config through the schema, the full ensemble served and equal to Segmenter."""
    import tritonclient.grpc as tg
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    from semask_deploy.assets import demo_checkpoint, sample_images
    from semask_deploy.cli.export import main as export_main
    from semask_deploy.data.io import read_image_rgb
    from semask_deploy.runtime import Segmenter
    from semask_deploy.serving.tritonserver import BundledTritonServer, bundled_backends

    repo = tmp_path / "repo"
    assert export_main(["--demo", "--fmt", "triton", "--triton-python-runtime", "--no-verify", "--quiet",
                        "--out", str(repo), "--name", "demo"]) == 0
    names = sorted(p.name for p in repo.iterdir())
    assert names == ["demo", "demo_ensemble", "demo_post", "demo_pre"]
    for name in names:
        assert parse((repo / name / "config.pbtxt").read_text()).name == name
    assert (repo / "demo" / "1" / "model.onnx").is_file() and (repo / "demo" / "1" / "model.py").is_file()
    pre_cfg = repo / "demo_pre" / "config.pbtxt"  # the documented way to change the pixel limit
    assert parse(pre_cfg.read_text()).parameters["max_pixels"].string_value == str(4096 * 4096)
    pre_cfg.write_text(pre_cfg.read_text().replace(f'"{4096 * 4096}"', '"1000000"'))
    meta = json.loads((repo / "demo" / "1" / "semask_metadata.json").read_text())
    assert meta["has_logits"] and meta["num_classes"] == 10
    assert bundled_backends() == ["python"]  # PyTriton 0.7 ships no onnxruntime/tensorrt backend

    http, grpc, metrics = free_ports(3)
    server = BundledTritonServer(repo, names, (http, grpc, metrics), log=tmp_path / "tritonserver.log")
    try:
        server.wait_ready(240)
        ref = Segmenter(demo_checkpoint())
        hc = th.InferenceServerClient(f"127.0.0.1:{http}")
        gc = tg.InferenceServerClient(f"127.0.0.1:{grpc}")
        images = [read_image_rgb(p) for p in sample_images()[:2]]
        images.append(np.ascontiguousarray(images[0][:97, :131]))  # odd size, other aspect ratio
        for i, img in enumerate(images):
            batch = np.stack([img, img[:, ::-1]]) if i == 0 else img[None]  # a batch of 2 of one size
            mod, client = (th, hc) if i % 2 == 0 else (tg, gc)
            inp = mod.InferInput("image", list(batch.shape), "UINT8")
            inp.set_data_from_numpy(np.ascontiguousarray(batch))
            labels = client.infer("demo_ensemble", [inp]).as_numpy("labels")
            assert labels.shape == batch.shape[:3] and labels.dtype == np.int32
            for got, im in zip(labels, batch):
                np.testing.assert_array_equal(got, ref.predict(np.ascontiguousarray(im)))
        bad = th.InferInput("image", [1, 0, 5, 3], "UINT8")
        bad.set_data_from_numpy(np.zeros((1, 0, 5, 3), np.uint8))
        with pytest.raises(InferenceServerException):
            hc.infer("demo_ensemble", [bad])
        big = th.InferInput("image", [1, 1001, 1000, 3], "UINT8")
        big.set_data_from_numpy(np.zeros((1, 1001, 1000, 3), np.uint8))
        with pytest.raises(InferenceServerException, match="limit of 1000000 pixels"):
            hc.infer("demo_ensemble", [big])
        assert hc.is_server_ready()
    finally:
        log = server.log_text()
        server.close()
    assert "successfully loaded 'demo_ensemble'" in log


def test_mask_classification_repository_resizes_by_the_shortest_edge():
    """A detectron2 model's sidecar (resize kind shortest_edge) gives the pre-processing its own rule."""
    meta = {"has_logits": True, "preprocess_in_graph": False, "dynamic": {"N": True, "H": True, "W": True},
            "num_classes": 150, "test_scale": [2560, 640], "kind": "onnx",
            "resize": {"kind": "shortest_edge", "min_size": 640, "max_size": 2560, "test_scale": [2560, 640]},
            "inputs": [{"name": "image", "shape": ["N", 3, "H", "W"]}], "outputs": [{"name": "logits"}]}
    spec = spec_from_metadata(meta, "m2f", max_batch=2)
    assert spec.shortest_edge == (640, 2560) and spec.test_scale is None
    pre = parse(pre_config(spec))
    assert pre.parameters["shortest_edge"].string_value == "640,2560"
    assert pre.parameters["test_scale"].string_value == "none"
    assert parse(pre_config(RepoSpec("n", "onnx", 19, test_scale=(2048, 512)))).parameters[
        "shortest_edge"].string_value == "none"
