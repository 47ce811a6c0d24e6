"""A model repository for a stock Triton Inference Server (``semask-export --fmt triton``).

Layout written under ``<out>/`` (``<name>`` = the export name)::

    <name>/config.pbtxt          the network: platform onnxruntime_onnx (1/model.onnx), tensorrt_plan
                                   (1/model.plan), or the Python backend running ONNX Runtime (1/model.py)
    <name>/1/model.onnx|plan       input 'image' float32 (3, H, W) normalised, outputs
                                   'labels' int32 (H, W) and 'logits' float32 (K, H, W), batch dim implicit
    <name>_pre/config.pbtxt      Python backend: 'image' uint8 (H, W, 3) RGB → 'input' float32 (3, h, w)
    <name>_pre/1/model.py          (keep-ratio test resize + normalisation) and 'size' int32 (2,)
    <name>_pre/1/semask_prepost.py
    <name>_post/...              Python backend: 'logits' + 'size' → 'labels' int32 (H, W) at the image size
    <name>_ensemble/config.pbtxt the three in a row: 'image' uint8 (H, W, 3) → 'labels' int32 (H, W)
    <name>_ensemble/1/           (an ensemble has no files, but Triton wants the version folder)

Every model batches (``max_batch_size``, dynamic batching); the network's instances are KIND_GPU for
TensorRT or ``gpu=True`` (ONNX Runtime CUDA), KIND_CPU otherwise; the Python models run on the CPU.
The Python models need numpy and opencv-python-headless in the server's Python environment.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ConfigError
from ..fileio import make_work_folder
from .batching import DEFAULT_MAX_PIXELS

PLATFORMS = {"onnx": ("onnxruntime_onnx", "onnxruntime", "model.onnx"),
             "tensorrt": ("tensorrt_plan", "tensorrt", "model.plan"),
             # the ONNX run by ONNX Runtime inside the Python backend: for servers without the onnxruntime
             # backend (PyTriton's bundled tritonserver has only the Python backend)
             "onnx-python": (None, "python", "model.onnx")}


@dataclass
class RepoSpec:
    """What the configs say.

    Attributes:
        name: base model name.
        kind: ``"onnx"`` or ``"tensorrt"``.
        num_classes: K.
        max_batch: ``max_batch_size`` of every model.
        static_hw: a static export's (H, W), else None (dims -1).
        test_scale: keep-ratio test resize (long, short) of the pre-processing.
        shortest_edge: instead, detectron2's ResizeShortestEdge (min_size, max_size) of the mask-classification
            models (Mask2Former, MaskFormer, FaPN/MSFaPN).
        gpu: run the network's instances on the GPU (always for TensorRT).
        instances: instances of the network.
        queue_delay_us: dynamic batcher delay.
        with_labels: the network also outputs labels (exported with its own argmax).
        max_pixels: the pre-processing refuses a larger image (H·W), as ``semask-serve --max-pixels`` does:
            the post-processing holds K·h·W floats of it (edit the ``max_pixels`` parameter of the
            ``_pre`` model's config.pbtxt to change it).
    """

    name: str
    kind: str
    num_classes: int
    max_batch: int = 4
    static_hw: tuple[int, int] | None = None
    test_scale: tuple[int, int] | None = None
    shortest_edge: tuple[int, int] | None = None
    gpu: bool = False
    instances: int = 1
    queue_delay_us: int = 2000
    with_labels: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS


def _dims(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def _io(kind: str, name: str, dtype: str, dims: Sequence[int]) -> str:
    return f"{kind} {{\n  name: \"{name}\"\n  data_type: {dtype}\n  dims: {_dims(dims)}\n}}\n"


def _batching(spec: RepoSpec) -> str:
    return (f"max_batch_size: {spec.max_batch}\n"
            f"dynamic_batching {{\n  max_queue_delay_microseconds: {spec.queue_delay_us}\n}}\n")


def network_config(spec: RepoSpec) -> str:
    """``config.pbtxt`` of the network (ONNX Runtime or TensorRT)."""
    if spec.kind not in PLATFORMS:
        raise ConfigError(f"kind must be one of {', '.join(PLATFORMS)}, got {spec.kind!r}")
    platform, backend, filename = PLATFORMS[spec.kind]
    h, w = spec.static_hw or (-1, -1)
    gpu = spec.gpu or spec.kind == "tensorrt"
    text = f"name: \"{spec.name}\"\n" + (f"platform: \"{platform}\"\n" if platform else "")
    text += f"backend: \"{backend}\"\n" + (f"default_model_filename: \"{filename}\"\n" if platform else "")
    text += _batching(spec)
    text += _io("input", "image", "TYPE_FP32", (3, h, w))
    if spec.with_labels:
        text += _io("output", "labels", "TYPE_INT32", (h, w))
    text += _io("output", "logits", "TYPE_FP32", (spec.num_classes, h, w))
    text += (f"instance_group [\n  {{\n    count: {spec.instances}\n    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n"
             "  }\n]\n")
    return text


def _params(values: Mapping[str, str]) -> str:
    return "".join(f"parameters {{\n  key: \"{k}\"\n  value {{ string_value: \"{v}\" }}\n}}\n" for k, v in values.items())


def pre_config(spec: RepoSpec) -> str:
    """Python-backend pre-processing: uint8 image → normalised network input + the image size."""
    scale = ",".join(str(v) for v in spec.test_scale) if spec.test_scale else "none"
    exact = ",".join(str(v) for v in spec.static_hw) if spec.static_hw else "none"
    edge = ",".join(str(v) for v in spec.shortest_edge) if spec.shortest_edge else "none"
    return (f"name: \"{spec.name}_pre\"\nbackend: \"python\"\n" + _batching(spec)
            + _io("input", "image", "TYPE_UINT8", (-1, -1, 3))
            + _io("output", "input", "TYPE_FP32", (3, -1, -1)) + _io("output", "size", "TYPE_INT32", (2,))
            + "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n"
            + _params({"test_scale": scale, "exact_size": exact, "shortest_edge": edge,
                       "max_pixels": str(int(spec.max_pixels))}))


def post_config(spec: RepoSpec) -> str:
    """Python-backend post-processing: logits + image size → labels at the image size."""
    return (f"name: \"{spec.name}_post\"\nbackend: \"python\"\n" + _batching(spec)
            + _io("input", "logits", "TYPE_FP32", (spec.num_classes, -1, -1))
            + _io("input", "size", "TYPE_INT32", (2,))
            + _io("output", "labels", "TYPE_INT32", (-1, -1))
            + "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n")


def _step(model: str, inputs: Mapping[str, str], outputs: Mapping[str, str]) -> str:
    maps = "".join(f"      input_map {{\n        key: \"{k}\"\n        value: \"{v}\"\n      }}\n" for k, v in inputs.items())
    maps += "".join(f"      output_map {{\n        key: \"{k}\"\n        value: \"{v}\"\n      }}\n"
                    for k, v in outputs.items())
    return f"    {{\n      model_name: \"{model}\"\n      model_version: -1\n{maps}    }}"


def ensemble_config(spec: RepoSpec) -> str:
    """The ensemble a client calls with raw images: pre → network → post."""
    steps = ",\n".join([
        _step(f"{spec.name}_pre", {"image": "image"}, {"input": "net_input", "size": "image_size"}),
        _step(spec.name, {"image": "net_input"}, {"logits": "net_logits"}),
        _step(f"{spec.name}_post", {"logits": "net_logits", "size": "image_size"}, {"labels": "labels"}),
    ])
    return (f"name: \"{spec.name}_ensemble\"\nplatform: \"ensemble\"\nmax_batch_size: {spec.max_batch}\n"
            + _io("input", "image", "TYPE_UINT8", (-1, -1, 3)) + _io("output", "labels", "TYPE_INT32", (-1, -1))
            + f"ensemble_scheduling {{\n  step [\n{steps}\n  ]\n}}\n")


PRE_MODEL_PY = '''"""Triton Python backend: SeMask pre-processing (written by semask-export --fmt triton)."""
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from semask_prepost import preprocess


def _pair(text):
    return None if text == "none" else tuple(int(v) for v in text.split(","))


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.scale = _pair(params["test_scale"]["string_value"])
        self.exact = _pair(params["exact_size"]["string_value"])
        self.shortest_edge = _pair(params.get("shortest_edge", {}).get("string_value", "none"))
        self.max_pixels = int(params.get("max_pixels", {}).get("string_value", "0")) or None

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
                x = preprocess(images, self.scale, self.exact, self.shortest_edge, self.max_pixels)
                size = np.tile(np.array(images.shape[1:3], dtype=np.int32), (images.shape[0], 1))
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("input", x), pb_utils.Tensor("size", size)]))
            except Exception as exc:  # one bad request fails alone
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
'''

POST_MODEL_PY = '''"""Triton Python backend: SeMask post-processing (written by semask-export --fmt triton)."""
import numpy as np
import triton_python_backend_utils as pb_utils

from semask_prepost import postprocess


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                logits = pb_utils.get_input_tensor_by_name(request, "logits").as_numpy()
                size = pb_utils.get_input_tensor_by_name(request, "size").as_numpy()
                if size.ndim != 2 or size.shape[1] != 2 or len(np.unique(size, axis=0)) != 1:
                    raise ValueError(f"size must be (N, 2) and equal for the batch, got {size.tolist()}")
                labels = postprocess(logits, (int(size[0, 0]), int(size[0, 1])))
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("labels", labels)]))
            except Exception as exc:  # one bad request fails alone
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
'''


ORT_MODEL_PY = '''"""Triton Python backend: the SeMask ONNX run by ONNX Runtime (written by semask-export --fmt triton).

For servers without Triton's onnxruntime backend; needs onnxruntime (or onnxruntime-gpu) in the Python env.
"""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        gpu = args["model_instance_kind"] == "GPU"
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(path, providers=providers)
        if gpu and "CUDAExecutionProvider" not in self.session.get_providers():  # never a silent CPU fallback
            raise RuntimeError("this KIND_GPU instance cannot start ONNX Runtime's CUDA provider (onnxruntime-gpu "
                               "and its CUDA libraries are needed); it would silently run on the CPU")
        self.outputs = [o["name"] for o in json.loads(args["model_config"])["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                x = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
                values = self.session.run(self.outputs, {"image": np.ascontiguousarray(x, dtype=np.float32)})
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(n, v) for n, v in zip(self.outputs, values)]))
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
'''


def model_folders(name: str) -> list[str]:
    """The repository's four model folders for the network ``name``: network, pre, post, ensemble."""
    return [name, f"{name}_pre", f"{name}_post", f"{name}_ensemble"]


def write_repository(out: str | Path, spec: RepoSpec, artifact: str | Path, sidecar: str | Path | None = None,
                     force: bool = False) -> list[Path]:
    """Write the repository; ``artifact`` (an .onnx or engine file) is copied to ``<name>/1/``.

    The four model folders are written in a hidden staging folder inside ``out`` and renamed into place at
    the end, so a failure or Ctrl-C while writing leaves ``out`` as it was (with ``force``: the old models).

    Returns:
        The files written.

    Raises:
        ConfigError: a model folder exists already (without ``force``).
    """
    out = Path(out)
    names = model_folders(spec.name)
    existing = [out / n for n in names if (out / n).exists()]
    if existing and not force:
        raise ConfigError(f"{', '.join(str(p) for p in existing)} already exist(s); use --force to overwrite")
    stage = make_work_folder(out, spec.name)
    try:
        written = [out / p.relative_to(stage) for p in _write_models(stage, spec, artifact, sidecar)]
        for name in names:  # the swap: renames only
            if (out / name).exists():
                os.replace(out / name, stage / f"{name}.old")
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return written


def _write_models(root: Path, spec: RepoSpec, artifact: str | Path, sidecar: str | Path | None) -> list[Path]:
    """The four model folders of ``spec`` under ``root``; returns the files written."""
    written: list[Path] = []

    def text(path: Path, content: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)

    filename = PLATFORMS[spec.kind][2]
    target = root / spec.name / "1" / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(artifact, target)
    written.append(target)
    if sidecar is not None:  # the metadata travels with the model (classes, palette, provenance)
        from ..export.metadata import TRITON_SIDECAR

        dst = root / spec.name / "1" / TRITON_SIDECAR
        meta = json.loads(Path(sidecar).read_text(encoding="utf-8"))
        meta["artifact"] = filename  # (Segmenter reads this sidecar for model.onnx / model.plan here)
        dst.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        written.append(dst)
    text(root / spec.name / "config.pbtxt", network_config(spec))
    if spec.kind == "onnx-python":
        text(root / spec.name / "1" / "model.py", ORT_MODEL_PY)
    prepost_src = Path(__file__).with_name("prepost.py").read_text(encoding="utf-8")
    for suffix, cfg, code in (("_pre", pre_config(spec), PRE_MODEL_PY), ("_post", post_config(spec), POST_MODEL_PY)):
        text(root / f"{spec.name}{suffix}" / "config.pbtxt", cfg)
        text(root / f"{spec.name}{suffix}" / "1" / "model.py", code)
        text(root / f"{spec.name}{suffix}" / "1" / "semask_prepost.py", prepost_src)
    text(root / f"{spec.name}_ensemble" / "config.pbtxt", ensemble_config(spec))
    (root / f"{spec.name}_ensemble" / "1").mkdir(parents=True, exist_ok=True)
    return written


def spec_from_metadata(meta: Mapping[str, Any], name: str, *, max_batch: int, gpu: bool = False,
                       instances: int = 1, python_runtime: bool = False) -> RepoSpec:
    """A :class:`RepoSpec` from an export's sidecar (``export/metadata.py``)."""
    if not meta.get("has_logits"):
        raise ConfigError("the Triton ensemble needs logits: export with --with-logits")
    if meta.get("preprocess_in_graph"):
        raise ConfigError("the Triton repository normalises in its pre-processing model: export without --preprocess")
    dyn = meta.get("dynamic", {})
    if not dyn.get("N", True):
        raise ConfigError("a Triton model batches: export without --batch (use --max-batch N)")
    static = None
    if not (dyn.get("H", True) and dyn.get("W", True)):
        shape = meta["inputs"][0]["shape"]
        static = (int(shape[2]), int(shape[3]))
    kind = "tensorrt" if meta.get("kind") == "tensorrt" else ("onnx-python" if python_runtime else "onnx")
    rule = meta.get("resize")
    edge = None
    if not static and isinstance(rule, dict) and rule.get("kind") == "shortest_edge":
        edge = (int(rule["min_size"]), int(rule["max_size"]))  # detectron2 models: not the keep-ratio test_scale
    return RepoSpec(name=name, kind=kind, num_classes=int(meta["num_classes"]), max_batch=max_batch,
                    static_hw=static, test_scale=None if static or edge else tuple(meta["test_scale"]),
                    shortest_edge=edge, gpu=gpu,
                    instances=instances, with_labels=any(o["name"] == "labels" for o in meta["outputs"]))
