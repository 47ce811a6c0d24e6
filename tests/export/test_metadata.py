"""The ``<name>.json`` sidecar: content written by an export, and how the runtime reads it."""

from __future__ import annotations

import hashlib
import json
import stat

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from semask_deploy.export import metadata as md  # noqa: E402

from semask_deploy.errors import RuntimeBackendError  # noqa: E402

from ._shared import SMALL_CKPT, small_export, small_model  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return small_export(tmp_path_factory)


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_sidecar_content(exported):
    meta = json.loads(exported.onnx_sidecar.read_text())
    assert exported.onnx_sidecar == exported.onnx_path.with_suffix(".json")
    assert meta == exported.metadata
    assert meta["format"] == md.FORMAT and meta["format_version"] == md.FORMAT_VERSION
    assert meta["artifact"] == exported.onnx_path.name and meta["kind"] == "onnx" and meta["precision"] == "fp32"
    assert meta["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["N", 3, "H", "W"]},
                              {"name": "output_size", "dtype": "int64", "shape": [2]}]
    assert meta["input_name"] == "image" and meta["output_size_input"]
    assert set(meta["postprocess"]) == {"labels", "output_size", "logits"}
    assert meta["outputs"] == [{"name": "labels", "dtype": "int32", "shape": ["N", "Ho", "Wo"]},
                               {"name": "logits", "dtype": "float32", "shape": ["N", 8, "H", "W"]}]
    assert meta["has_logits"] and not meta["preprocess_in_graph"] and meta["input_layout"] == "NCHW"
    assert meta["dynamic"] == {"N": True, "H": True, "W": True}
    # profile: opt = the model's training crop (96x96); min is capped by opt; max the default 1024x2048
    assert meta["profiles"] == [{"image": {"min": [1, 3, 96, 96], "opt": [1, 3, 96, 96], "max": [1, 3, 1024, 2048]},
                                 "output_size": {"min": [1, 1], "opt": [96, 96], "max": [2048, 2048]}}]
    norm = meta["normalization"]
    assert norm["color"] == "RGB" and norm["value_range"] == [0, 255] and norm["in_graph"] is False
    assert norm["mean"] == [123.675, 116.28, 103.53] and norm["std"] == [58.395, 57.12, 57.375]
    assert meta["resize"]["keep_ratio"] and meta["resize"]["test_scale"] == [128, 96]
    assert "align_corners=False" in meta["resize"]["logits"]
    model = small_model()
    assert meta["num_classes"] == 8 and meta["classes"] == list(model.class_names)
    assert meta["palette"] == [list(c) for c in model.palette] and len(meta["palette"]) == 8
    assert meta["test_scale"] == [128, 96] and meta["crop_size"] == [96, 96]
    assert meta["model"]["config"] == json.loads(json.dumps(model.config.to_dict()))
    assert meta["source"]["sha256"] == hashlib.sha256(SMALL_CKPT.read_bytes()).hexdigest()
    assert meta["source"]["checkpoint"] == str(SMALL_CKPT.resolve())
    assert meta["opset"] >= 17
    for lib in ("semask_deploy", "torch", "onnx", "onnxruntime"):
        assert meta["versions"][lib]
    assert "tensorrt" in meta["versions"]  # None without TensorRT
    assert meta["tensorrt_version"] is None and meta["gpu_compute_capability"] is None  # not an engine
    assert meta["tensorrt_check"]["ok"] and meta["tensorrt_check"]["unsupported"] == []
    ver = meta["verification"]
    assert ver["ok"] and ver["precision"] == "fp32" and ver["tolerance"]["max_logit_rel_l2"] == 1e-4
    assert all(c["rel_l2"] is None or c["rel_l2"] <= 1e-4 for c in ver["cases"])
    assert all(c["label_agreement"] >= 0.999 for c in ver["cases"])
    assert meta["export"]["onnx_nodes"] > 100 and meta["export"]["seconds"] > 0 and meta["exported_at"]


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_sidecar_is_readable_by_others(exported):
    mode = stat.S_IMODE(exported.onnx_sidecar.stat().st_mode)
    assert mode & stat.S_IRUSR and mode & stat.S_IRGRP


@pytest.mark.slow  # needs a full ONNX export (~2 CPU-minutes for the small model)
def test_read_sidecar_round_trip_and_errors(tmp_path, exported):
    art = tmp_path / "m.onnx"
    art.write_bytes(b"x")
    with pytest.raises(RuntimeBackendError, match="re-export it with semask-export"):
        md.read_sidecar(art)
    md.write_sidecar(art, exported.metadata)
    assert md.read_sidecar(art)["num_classes"] == 8
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(RuntimeBackendError, match="cannot read"):
        md.read_sidecar(art)
    (tmp_path / "m.json").write_text(json.dumps({**exported.metadata, "format_version": 1}))  # older: still read
    assert md.read_sidecar(art)["format_version"] == 1
    (tmp_path / "m.json").write_text(json.dumps({**exported.metadata, "format_version": 99}))
    with pytest.raises(RuntimeBackendError, match="format version"):
        md.read_sidecar(art)
    (tmp_path / "m.json").write_text("{}")  # some other tool's JSON beside the model
    with pytest.raises(RuntimeBackendError, match="not a semask-deploy metadata sidecar"):
        md.read_sidecar(art)
    partial = {k: v for k, v in exported.metadata.items() if k != "palette"}
    (tmp_path / "m.json").write_text(json.dumps(partial))
    with pytest.raises(RuntimeBackendError, match="palette"):
        md.read_sidecar(art)


def test_sidecar_names():
    assert md.sidecar_path("out/model_fp16.onnx").name == "model_fp16.json"
    assert md.sidecar_path("out/model_fp16_trt.engine").name == "model_fp16_trt.json"
