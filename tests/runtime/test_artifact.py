"""The sidecar facts every artifact backend shares (runtime/artifact.py)."""

from __future__ import annotations

from types import SimpleNamespace

from semask_deploy.export.metadata import resize_rule
from semask_deploy.runtime.artifact import apply_sidecar


def _meta(resize: dict) -> dict:
    return {"num_classes": 2, "classes": ["a", "b"], "palette": [[0, 0, 0], [255, 0, 0]], "test_scale": [2560, 640],
            "crop_size": [640, 640], "precision": "fp16", "resize": resize,
            "inputs": [{"name": "image", "shape": ["N", 3, "H", "W"]}]}


def test_mask_classification_exports_keep_detectron2_resize():
    """An exported Mask2Former must be resized as its checkpoint is (ResizeShortestEdge), not as SeMask-FPN."""
    rule = {"kind": "shortest_edge", "min_size": 640, "max_size": 2560, "interpolation": "pil_bilinear",
            "size_divisibility": 32, "test_scale": [2560, 640]}
    backend = SimpleNamespace()
    apply_sidecar(backend, _meta(rule))
    assert backend.resize_rule["kind"] == "shortest_edge" and backend.resize_rule["min_size"] == 640
    assert backend.num_classes == 2 and backend.class_names == ("a", "b") and backend.palette[1] == (255, 0, 0)
    assert backend.precision == "fp16" and backend.input_hw is None and backend.input_batch is None


def test_fpn_exports_use_the_keep_ratio_scale():
    backend = SimpleNamespace()
    apply_sidecar(backend, _meta(resize_rule((2048, 512), (512, 512))))
    assert backend.resize_rule is None and backend.test_scale == (2560, 640)
