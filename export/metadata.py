"""The metadata sidecar ``<name>.json`` written next to every exported artifact (ONNX file or engine).

It tells a runtime everything it needs besides the weights — I/O names, dtypes and shapes (dynamic
dimensions by name), optimisation profiles, the preprocessing (RGB, 0–255, mean/std, whether it is in
the graph), the test-time resize rule, classes and palette, precision — and records where the artifact
came from (checkpoint path + SHA-256, model config, library versions, GPU/TensorRT for engines) and how
it was checked (parity vs PyTorch, the offline TensorRT parser check).

The sidecar of ``model.onnx`` is ``model.json`` and that of ``model_trt.engine`` is ``model_trt.json``
(``Path.with_suffix(".json")``, as :class:`~semask_deploy.runtime.trt_runner.TensorRTRunner` expects);
so an ONNX file and an engine never share a stem. Schema, format version 2 (version 1 — no
``output_size_input``/``postprocess`` — is still read)::

    {"format": "semask-deploy-artifact", "format_version": 1, "artifact": "x.onnx", "kind": "onnx"|"tensorrt",
     "precision": "fp32"|"fp16"|"int8", "inputs": [...], "outputs": [...], "has_logits": bool,
     "output_size_input": bool, "postprocess": {...},
     "preprocess_in_graph": bool, "input_layout": "NCHW"|"NHWC", "dynamic": {"N": bool, "H": bool, "W": bool},
     "profiles": [{"image": {"min": [...], "opt": [...], "max": [...]}}],
     "normalization": {...}, "resize": {...}, "num_classes": K, "classes": [...], "palette": [[r, g, b], ...],
     "test_scale": [long, short], "crop_size": [h, w], "model": {...}, "source": {...}, "opset": 18,
     "versions": {...}, "tensorrt_version": str|null, "gpu_compute_capability": str|null,
     "tensorrt_check": {...}, "precision_details": {...}, "verification": {...}, "export": {...}}
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from semask_deploy.config import IMAGENET_MEAN, IMAGENET_STD
from semask_deploy.errors import RuntimeBackendError
from semask_deploy.fileio import write_json_atomic

FORMAT = "semask-deploy-artifact"
FORMAT_VERSION = 2  # 2: graphs may take output_size (older runtimes would not feed it: they refuse version 2)
REQUIRED = ("format_version", "inputs", "outputs", "num_classes", "classes", "palette", "test_scale", "crop_size",
            "precision")


def sidecar_path(artifact: str | Path) -> Path:
    """``model.onnx`` → ``model.json`` (also ``x_trt.engine`` → ``x_trt.json``)."""
    return Path(artifact).with_suffix(".json")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that shaped an artifact (None when not installed)."""
    import importlib

    out: dict[str, str | None] = {}
    for name in ("semask_deploy", "torch", "onnx", "onnxruntime", "onnxscript", "numpy"):
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except Exception:  # noqa: BLE001 - missing optional package
            out[name] = None
    from semask_deploy.export.tensorrt import tensorrt_version

    out["tensorrt"] = tensorrt_version()
    return out


def normalization(preprocess_in_graph: bool) -> dict[str, Any]:
    """How pixels become the model input (the ``normalization`` block)."""
    return {
        "color": "RGB",
        "value_range": [0, 255],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "formula": "(rgb - mean) / std, per channel",
        "in_graph": bool(preprocess_in_graph),
        "input": "uint8 (N, H, W, 3) RGB 0-255" if preprocess_in_graph else "float32 (N, 3, H, W), already normalised",
    }


def resize_rule(test_scale: tuple[int, int], crop_size: tuple[int, int]) -> dict[str, Any]:
    """The official test-time resize around the graph (the ``resize`` block)."""
    return {
        "test_scale": list(test_scale),
        "keep_ratio": True,
        "rule": "scale factor = min(max(test_scale)/max(h, w), min(test_scale)/min(h, w)); size = int(x*f + 0.5); "
                "bilinear (cv2.INTER_LINEAR), no padding",
        "logits": "the graph resizes the whole stride-4 logits grid to its input size (bilinear, "
                  "align_corners=False); graphs with the output_size input resize those logits again to "
                  "output_size = the original image size (bilinear, half_pixel = align_corners=False) and take "
                  "the argmax there (the official pipeline, exactly); a logits output is at the input size",
        "slide_crop_size": list(crop_size),
    }


def postprocess(inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the graph's outputs are and what the caller feeds (the ``postprocess`` block)."""
    sized = any(i["name"] == "output_size" for i in inputs)
    out = {
        "labels": ("int32 (N, Ho, Wo): argmax of the logits resized bilinearly to output_size — feed the ORIGINAL "
                   "image's (height, width) for the official labels, or the input's (H, W) for labels at the input "
                   "size" if sized else "int32 (N, H, W) at the input size"),
    }
    if sized:
        out["output_size"] = "int64 [2] = (Ho, Wo), both >= 1; a shape tensor in TensorRT (host memory)"
    if any(o["name"] == "logits" for o in outputs):
        out["logits"] = "float32 (N, K, H, W) at the input size (for sliding windows or custom post-processing)"
    return out


def build_metadata(
    *,
    artifact: str | Path,
    kind: str,
    precision: str,
    model: Any,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    dynamic: Mapping[str, bool],
    profiles: list[dict[str, Any]],
    preprocess: bool,
    opset: int | None,
    source: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the sidecar dict for one artifact.

    Args:
        artifact: the ONNX or engine path (only its name is stored).
        kind: ``"onnx"`` or ``"tensorrt"``.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        model: the :class:`SeMaskSegmentor` it came from (config, classes, palette).
        inputs, outputs: ``[{"name", "dtype", "shape"}]``.
        dynamic: which of N, H, W are dynamic.
        profiles: optimisation profiles (TensorRT style; for ONNX the intended ones).
        preprocess: normalisation is in the graph (uint8 NHWC input).
        opset: ONNX opset.
        source: ``{"checkpoint": path, "sha256": hex, ...}``.
        extra: more top-level keys (verification, tensorrt_check, precision_details, export, …).
    """
    cfg = model.config
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "artifact": Path(artifact).name,
        "kind": kind,
        "precision": precision,
        "inputs": inputs,
        "outputs": outputs,
        "input_name": inputs[0]["name"] if inputs else None,
        "has_logits": any(o["name"] == "logits" for o in outputs),
        "output_size_input": any(i["name"] == "output_size" for i in inputs),
        "postprocess": postprocess(inputs, outputs),
        "preprocess_in_graph": bool(preprocess),
        "input_layout": "NHWC" if preprocess else "NCHW",
        "dynamic": dict(dynamic),
        "profiles": profiles,
        "normalization": normalization(preprocess),
        "resize": (dict(cfg.resize_rule, test_scale=list(cfg.test_scale)) if hasattr(cfg, "arch")
                   else resize_rule(cfg.test_scale, cfg.crop_size)),  # mask classification: detectron2's rule
        "num_classes": int(cfg.num_classes),
        "classes": list(model.class_names or [f"class_{i}" for i in range(cfg.num_classes)]),
        "palette": [list(map(int, c)) for c in (model.palette or [])],
        "test_scale": list(cfg.test_scale),
        "crop_size": list(cfg.crop_size),
        "model": {"name": cfg.name, "arch": getattr(cfg, "arch", "semantic_fpn"),
                  "pixel_decoder": getattr(cfg, "pixel_decoder", None), "config": cfg.to_dict()},
        "source": dict(source),
        "opset": opset,
        "versions": library_versions(),
        "tensorrt_version": None,
        "gpu_compute_capability": None,
        "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update(extra or {})
    return json.loads(json.dumps(meta))  # plain JSON types (tuples → lists), as read back from the file


def write_sidecar(artifact: str | Path, meta: Mapping[str, Any]) -> Path:
    """Write ``meta`` atomically as the sidecar of ``artifact``; returns its path."""
    import os

    path = sidecar_path(artifact)
    write_json_atomic(path, dict(meta))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # temp files are created 0600; a sidecar is as readable as its model
    return path


#: the sidecar's name inside a Triton model version folder (``<model>/1/``), next to ``model.onnx``/``model.plan``
TRITON_SIDECAR = "semask_metadata.json"


def read_sidecar(artifact: str | Path) -> dict[str, Any]:
    """Read and check the sidecar of an artifact, for the runtime.

    Raises:
        RuntimeBackendError: missing, unreadable, of a newer format, or lacking required keys — with
            "re-export with semask-export".
    """
    artifact = Path(artifact)
    path = sidecar_path(artifact)
    if not path.is_file() and (artifact.parent / TRITON_SIDECAR).is_file():
        path = artifact.parent / TRITON_SIDECAR  # a model in a Triton repository (semask-export --fmt triton)
    hint = "re-export it with semask-export, which writes the sidecar next to the model"
    if not path.is_file():
        raise RuntimeBackendError(f"{artifact.name} has no metadata sidecar {path.name} (classes, preprocessing, "
                                  f"shapes); {hint}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RuntimeBackendError(f"cannot read the metadata sidecar {path}: {exc}; {hint}") from None
    if not isinstance(meta, dict):
        raise RuntimeBackendError(f"the metadata sidecar {path} is not a JSON object; {hint}")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RuntimeBackendError(f"{path} is not a semask-deploy metadata sidecar (it has no valid "
                                  f"'format_version'); {hint}")
    if version > FORMAT_VERSION:
        raise RuntimeBackendError(f"the metadata sidecar {path} has format version {version!r}; this semask-deploy "
                                  f"reads version {FORMAT_VERSION}: upgrade semask-deploy or {hint}")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise RuntimeBackendError(f"the metadata sidecar {path} lacks {', '.join(missing)}; {hint}")
    problem = _invalid_field(meta)
    if problem:
        raise RuntimeBackendError(f"the metadata sidecar {path} is invalid: {problem}; {hint}")
    return meta


def _invalid_field(meta: dict[str, Any]) -> str | None:
    """What is wrong with the values a runtime relies on (an edited or foreign sidecar), or None."""
    def positive_ints(v: Any, n: int) -> bool:
        return (isinstance(v, list) and len(v) == n
                and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v))

    k = meta["num_classes"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        return f"num_classes must be a positive integer, got {k!r}"
    classes, palette = meta["classes"], meta["palette"]
    if not isinstance(classes, list) or len(classes) != k or not all(isinstance(c, str) for c in classes):
        got = len(classes) if isinstance(classes, list) else repr(classes)
        return f"classes must list {k} names (num_classes), got {got}"
    if not isinstance(palette, list) or len(palette) != k or not all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in palette):
        return f"palette must hold {k} colours [r, g, b] of 0-255 integers"
    for key in ("test_scale", "crop_size"):
        if not positive_ints(meta[key], 2):
            return f"{key} must be two positive integers, got {meta[key]!r}"
    for key in ("inputs", "outputs"):
        io = meta[key]
        if not isinstance(io, list) or not io or not all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                                         for t in io):
            return f"{key} must list the graph's {key} by name"
    return None
