"""The backends ``semask-bench`` measures, behind one small interface.

Every runner maps a normalised float32 batch (N, 3, H, W) to labels (N, H, W) — the timed call — and,
for parity, to logits (N, K, H, W) when the backend exports them:

    runner.prepare(x)   → the batch where the backend wants it (device tensor / numpy); not timed
    runner.run(p)       → labels (timed; may return before the GPU is done: ``cuda_events`` says so)
    runner.outputs(x)   → (labels int32 (N, H, W), logits float32 (N, K, H, W) or None), for parity

Backends: ``torch-eager`` / ``torch-sdpa`` / ``torch-triton`` (the attention backends of the PyTorch model),
``torch-compile`` (``torch.compile`` of the sdpa model, inductor), ``onnxruntime``, ``openvino`` (CPU, explicit
precision hint: f32, or bf16 on CPUs with native bf16; int8 = the Q/DQ export) and ``tensorrt`` (exported
artifacts). Exported backends get their ONNX from :func:`export_onnx` — the one place that calls
``semask_deploy.export``. :func:`availability` says why a backend × precision cannot run here.
"""

from __future__ import annotations

import copy
import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from semask_deploy.errors import MissingDependencyError, SemaskError

BACKENDS = ("torch-eager", "torch-sdpa", "torch-triton", "torch-compile", "onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
DEFAULT_PRECISIONS = ("fp32", "fp16", "int8")  # bf16 (torch autocast) runs when named
TORCH_ATTENTION = {"torch-eager": "eager", "torch-sdpa": "sdpa", "torch-triton": "triton", "torch-compile": "sdpa"}
COMPILE_CPU_SKIP = (
    "torch.compile (inductor) takes minutes per input shape on a small CPU (236 s for the first 256x256 "
    "shape on the 2-core reference machine); skipped in the default CPU run — ask for it with "
    "--backends torch-compile"
)


class Skip(Exception):
    """This backend × precision cannot run here; the message is the reason shown in the report."""


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def availability(backend: str, precision: str, device: str, *, explicit_backend: bool = False,
                 explicit_precision: bool = False) -> str | None:
    """Why ``backend`` × ``precision`` cannot (or by default should not) run on ``device``; None if it can.

    Args:
        backend, precision: the cell.
        device: ``cpu`` or ``cuda``.
        explicit_backend: the user named this backend (runs torch-compile on the CPU).
        explicit_precision: the user named this precision (runs fp16 on the CPU torch path, flagged).
    """
    import torch

    cuda = device == "cuda"
    if precision == "bf16":
        if not backend.startswith("torch-") and backend != "openvino":
            return "bf16 runs on the torch-* backends (autocast) and on openvino (bf16 inference hint)"
        if not explicit_precision:
            return "bf16 runs when --precisions names it"
        if not cuda:
            from semask_deploy.runtime.cpu_info import native_bf16

            if not native_bf16():
                return "this CPU has no native bf16 (avx512_bf16 or AMX): it would be emulated"
    if backend.startswith("torch-"):
        if precision == "int8":
            return "int8 is an exported ONNX Q/DQ precision; measured on onnxruntime/openvino/tensorrt"
        if backend == "torch-triton":
            if not cuda:
                return "needs a CUDA GPU (the Triton CPU interpreter is for correctness tests only)"
            if not _has_module("triton"):
                return "triton is not installed: pip install 'semask-deploy[gpu]'"
        if backend == "torch-compile" and not cuda and not explicit_backend:
            return COMPILE_CPU_SKIP
        if precision == "fp16" and not cuda and not explicit_precision:
            return ("fp16 on the CPU torch path is emulated (no fp16 GEMM units here) and not a deployment "
                    "target; pass --precisions fp16 to run it anyway (flagged)")
        return None
    if backend == "onnxruntime":
        if not _has_module("onnxruntime"):
            return "onnxruntime is not installed: pip install 'semask-deploy[dev]' (or [gpu])"
        if cuda:
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return "onnxruntime has no CUDAExecutionProvider here: pip install 'semask-deploy[gpu]'"
        return exporter_missing()
    if backend == "openvino":
        if cuda:
            return "OpenVINO runs on the CPU (--device cpu)"
        if not _has_module("openvino"):
            return "openvino is not installed: pip install 'semask-deploy[openvino]'"
        if precision == "fp16":
            return "fp16 ONNX on the CPU: no fp16 arithmetic here (OpenVINO bf16: benchmarks/cpu_deploy.py)"
        return exporter_missing()
    if backend == "tensorrt":
        if not cuda or not torch.cuda.is_available():
            return "TensorRT needs an NVIDIA GPU (--device cuda)"
        if not _has_module("tensorrt"):
            return "tensorrt is not installed: pip install 'semask-deploy[trt]'"
        return exporter_missing()
    return f"unknown backend {backend!r}"


# ------------------------------------------------------------------------------------------ export


@dataclass
class ExportedOnnx:
    """An exported ONNX file and what it cost.

    Attributes:
        path: the ``.onnx`` file.
        export_s: ONNX export (+ checks) seconds.
        quant_s: fp16 conversion / int8 calibration + quantisation seconds (0 for fp32).
        has_logits: the graph has a ``logits`` output.
        info: anything else the exporter reports (sidecar content).
    """

    path: Path
    export_s: float
    quant_s: float = 0.0
    has_logits: bool = True
    info: dict[str, Any] = field(default_factory=dict)


def exporter_missing() -> str | None:
    """Why the ONNX exporter cannot be used (None when it can)."""
    for mod, extra in (("onnx", "dev"), ("onnxscript", "dev"), ("onnxruntime", "dev")):
        if not _has_module(mod):
            return f"{mod} is not installed: pip install 'semask-deploy[{extra}]'"
    for mod in ("semask_deploy.export.onnx", "semask_deploy.export.precision"):
        if not _has_module(mod):
            return f"the ONNX exporter ({mod}) is not part of this installation"
    return None


_EXPORTS: dict[tuple[str, ...], ExportedOnnx] = {}


def export_onnx(checkpoint: Path, precision: str, out_dir: Path, *, calib_images: np.ndarray,
                device: str = "cpu", int8_activations: str = "s8", winograd: bool = False) -> ExportedOnnx:
    """Export ``checkpoint`` to an ONNX file of ``precision`` with ``labels`` and ``logits`` outputs.

    THE plug point between the benchmark and ``semask_deploy.export``: everything the benchmark needs from
    the exporter goes through this function. It uses the exporter's public functions:
    ``export.onnx.export_onnx`` (fp32, dynamic N/H/W, timed as ``export_s``), then
    ``export.precision.convert_fp16`` or ``export.int8.quantize_int8`` (timed as ``quant_s``; int8
    calibration on ``calib_images``, without the calibration cache so the time is real). The fp32 export
    is done once per (checkpoint, folder) and shared by every precision and backend of a run.

    Args:
        checkpoint: the ``.pth``/``.safetensors`` file.
        precision: ``fp32`` | ``fp16`` | ``int8``.
        out_dir: where to write ``model_<precision>[_<act>].onnx``.
        calib_images: uint8 (M, H, W, 3) RGB calibration images (int8 only).
        device: unused (export runs on the CPU); kept for exporters that trace on the GPU.
        int8_activations: ``s8`` (semask-export's default; TensorRT needs it) or ``u8`` (``--int8-activations u8``;
            measured no faster in ONNX Runtime on x86: README, ``ort_cpu``).
        winograd: (fp32 only) the graph ``semask-export`` writes for ONNX Runtime: the shared fp32 export
            with its 3×3 convs as Winograd (``export.winograd``), written as ``model_fp32_winograd.onnx``.

    Raises:
        Skip: the exporter is not installed. SemaskError: the export failed.
    """
    why = exporter_missing()
    if why:
        raise Skip(why)
    from semask_deploy.api import load_model
    from semask_deploy.data import normalize
    from semask_deploy.export import int8 as int8_mod
    from semask_deploy.export import onnx as onnx_export
    from semask_deploy.export import precision as precision_mod
    from semask_deploy.fileio import atomic_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_key = (str(Path(checkpoint).resolve()), str(out_dir.resolve()), "fp32")
    fp32 = _EXPORTS.get(base_key)
    if fp32 is None or not fp32.path.is_file():
        model = load_model(checkpoint, attention_backend="sdpa")
        path = out_dir / "model_fp32.onnx"
        t0 = time.perf_counter()
        with atomic_path(path) as tmp:
            info = onnx_export.export_onnx(model, tmp, with_logits=True)
        fp32 = ExportedOnnx(path, time.perf_counter() - t0, 0.0, True,
                            {"opset": info.opset, "onnx_nodes": info.num_nodes, "simplifier": info.simplifier})
        _EXPORTS[base_key] = fp32
    if precision == "fp32" and not winograd:
        return fp32
    import onnx

    if precision == "fp32":
        from semask_deploy.export.winograd import winograd_convs

        key = base_key[:2] + ("fp32_winograd",)
        if key not in _EXPORTS or not _EXPORTS[key].path.is_file():
            path = out_dir / "model_fp32_winograd.onnx"
            t0 = time.perf_counter()
            proto = onnx.load(str(fp32.path))
            convs = winograd_convs(proto)
            with atomic_path(path) as tmp:
                onnx.save(proto, str(tmp))
            _EXPORTS[key] = ExportedOnnx(path, fp32.export_s + time.perf_counter() - t0, 0.0, True,
                                         {**fp32.info, "winograd_convs": convs})
        return _EXPORTS[key]

    suffix = precision if precision == "fp16" else f"int8_{int8_activations}"
    key = base_key[:2] + (suffix,)
    if key in _EXPORTS and _EXPORTS[key].path.is_file():
        return _EXPORTS[key]
    path = out_dir / f"model_{suffix}.onnx"
    t0 = time.perf_counter()
    if precision == "fp16":
        with atomic_path(path) as tmp:
            onnx.save(precision_mod.convert_fp16(onnx.load(str(fp32.path))), str(tmp))
        extra: dict[str, Any] = {"fp16": "mixed (LayerNorm, Softmax, semantic scores fp32)"}
    elif precision == "int8":
        calib = [normalize(img)[None] for img in calib_images]
        with atomic_path(path) as tmp:
            q = int8_mod.quantize_int8(fp32.path, tmp, calib, activations=int8_activations,
                                            use_cache=False, progress=False)
        extra = {"int8": q.get("activations"), "weights": q.get("weights"), "qdq_nodes": q.get("qdq_nodes"),
                 "calibration_samples": q.get("calibration_samples")}
    else:
        raise Skip(f"unknown precision {precision!r}")
    out = ExportedOnnx(path, fp32.export_s, time.perf_counter() - t0, True, {**fp32.info, **extra})
    _EXPORTS[key] = out
    return out


# ------------------------------------------------------------------------------------------ runners


class Runner:
    """Base class. Attributes: ``backend``, ``precision``, ``device``, ``has_logits``, ``cuda_events``,
    ``attention`` (what the analytic FLOPs assume), ``build_s`` (export/build/compile seconds or None),
    ``build``: dict of build details, ``flags``: notes for the report."""

    backend = ""
    has_logits = True
    cuda_events = False
    attention = "export"  # traced graphs (ONNX Runtime, TensorRT) compute what benchmarks.flops calls export

    def __init__(self, precision: str, device: str) -> None:
        self.precision = precision
        self.device = device
        self.build_s: float | None = None
        self.build: dict[str, Any] = {}
        self.flags: list[str] = []

    def prepare(self, x: np.ndarray) -> Any:
        """The batch where the backend wants it (not timed)."""
        return x

    def run(self, prepared: Any) -> Any:
        """The timed call: labels of a prepared batch."""
        raise NotImplementedError

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(labels int32 (N, H, W), logits float32 (N, K, H, W) or None) of a normalised batch."""
        raise NotImplementedError

    def labels(self, x: np.ndarray) -> np.ndarray:
        return self.outputs(x)[0]

    def close(self) -> None:
        pass


class TorchRunner(Runner):
    """A :class:`SeMaskSegmentor` with one attention backend (or ``torch.compile``d), fp32 or fp16.

    The timed call is ``model.predict`` (logits at stride 4 → bilinear resize → argmax; on CUDA with
    triton the fused upsample+argmax kernel). ``torch-compile`` compiles ``forward_lowres`` (one graph per
    input shape) and resizes + takes the argmax eagerly, like ``predict`` does.
    """

    def __init__(self, model: Any, backend: str, precision: str, device: str) -> None:
        import torch

        super().__init__(precision, device)
        self.backend = backend
        self.cuda_events = device == "cuda"
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.float32}[precision]
        m = copy.deepcopy(model).to(device=device, dtype=self.dtype).eval()
        m.set_attention_backend(TORCH_ATTENTION[backend])
        # the FLOPs model: torch.compile traces the sdpa model, computing what an exported graph does
        self.attention = "export" if backend == "torch-compile" else TORCH_ATTENTION[backend]
        self.model = m
        # mask classification (Mask2Former, ...): the network output is already at the input size
        self._lowres = getattr(m, "forward_lowres", None) or m
        if precision == "bf16":
            self.flags.append("bf16 = torch.autocast; LayerNorm and semantic attention fp32")
        if precision == "fp16" and device == "cpu":
            self.flags.append("fp16 on the CPU torch path (emulated, not a deployment target)")
        if backend == "torch-compile":
            t0 = time.perf_counter()
            self._lowres = torch.compile(self._lowres)
            self.build_s = time.perf_counter() - t0  # plus the first call of each shape (first_call_ms)
            self.build["note"] = "inductor compiles on the first call of each shape: see first_call_ms"
            self.flags.append("compile time is in first_call_ms")

    def prepare(self, x: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype)

    def _autocast(self) -> Any:
        import contextlib

        if self.precision != "bf16":
            return contextlib.nullcontext()
        from semask_deploy.runtime.torch_backend import bf16_autocast

        return bf16_autocast(self.model)

    def run(self, prepared: Any) -> Any:
        import torch
        import torch.nn.functional as F

        with torch.inference_mode(), self._autocast():
            if self.backend != "torch-compile":
                return self.model.predict(prepared)
            logits = self._lowres(prepared)
            size = tuple(prepared.shape[2:])
            if tuple(logits.shape[2:]) == size:
                return logits.argmax(1)
            return torch.cat([F.interpolate(l[None], size=size, mode="bilinear", align_corners=False).argmax(1)
                              for l in logits])

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch
        import torch.nn.functional as F

        with torch.inference_mode(), self._autocast():
            t = self.prepare(x)
            logits = self._lowres(t)
            if tuple(logits.shape[2:]) != tuple(t.shape[2:]):
                logits = F.interpolate(logits, size=tuple(t.shape[2:]), mode="bilinear", align_corners=False)
            logits = logits.float().cpu().numpy()
        return logits.argmax(1).astype(np.int32), logits

    def close(self) -> None:
        self.model = self._lowres = None  # type: ignore[assignment]


class OnnxRuntimeRunner(Runner):
    """An exported ONNX file in ONNX Runtime (CPU EP, or CUDA EP with ``device='cuda'``)."""

    backend = "onnxruntime"

    def __init__(self, exported: ExportedOnnx, precision: str, device: str, threads: int | None = None) -> None:
        super().__init__(precision, device)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingDependencyError(f"onnxruntime is not installed ({exc}): pip install 'semask-deploy[dev]'")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        t0 = time.perf_counter()
        self.session = ort.InferenceSession(str(exported.path), opts, providers=providers)
        load_s = time.perf_counter() - t0
        if device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise Skip("onnxruntime could not load its CUDA provider here (it would silently run on the CPU)")
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.labels_name = "labels" if "labels" in outputs else None
        self.logits_name = "logits" if "logits" in outputs else None
        if self.labels_name is None and self.logits_name is None:
            raise SemaskError(f"{exported.path.name} has neither a 'labels' nor a 'logits' output ({outputs})")
        self.has_logits = self.logits_name is not None
        self.build_s = exported.export_s + exported.quant_s
        self.build = {"export_s": exported.export_s, "quant_s": exported.quant_s, "session_load_s": load_s,
                      "onnx": str(exported.path), "onnx_mb": _size_mb(exported.path),
                      "providers": self.session.get_providers(), **exported.info}

    def prepare(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float32)

    def run(self, prepared: np.ndarray) -> np.ndarray:
        if self.labels_name is not None:
            return self.session.run([self.labels_name], {self.input_name: prepared})[0]
        return self.session.run([self.logits_name], {self.input_name: prepared})[0].argmax(1)

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        names = [n for n in (self.labels_name, self.logits_name) if n is not None]
        res = dict(zip(names, self.session.run(names, {self.input_name: self.prepare(x)})))
        logits = res[self.logits_name].astype(np.float32) if self.logits_name else None
        labels = res[self.labels_name] if self.labels_name else logits.argmax(1)
        return np.asarray(labels).astype(np.int32), logits

    def close(self) -> None:
        self.session = None


class OpenVinoRunner(Runner):
    """An exported ONNX (fp32, or int8 Q/DQ) compiled by OpenVINO on the CPU at an explicit precision hint:
    bf16 for ``precision="bf16"`` (the fp32 ONNX), f32 otherwise (int8: its float layers)."""

    backend = "openvino"

    def __init__(self, exported: ExportedOnnx, precision: str, device: str, threads: int | None = None) -> None:
        super().__init__(precision, device)
        from semask_deploy.runtime.openvino_backend import _output_name, compile_model, ran_text

        t0 = time.perf_counter()
        hint = "bf16" if precision == "bf16" else "fp32"
        self.compiled, ran = compile_model(exported.path, precision=hint, threads=threads)
        load_s = time.perf_counter() - t0
        self.request = self.compiled.create_infer_request()
        self._name = _output_name
        names = [_output_name(o) for o in self.compiled.outputs]
        self.has_logits = "logits" in names
        self.build_s = exported.export_s + exported.quant_s
        self.build = {"export_s": exported.export_s, "quant_s": exported.quant_s, "compile_s": load_s,
                      "onnx": str(exported.path), "openvino_ran": ran, **exported.info}
        self.flags.append(f"OpenVINO ran {ran_text(ran)}")  # what ran, not what was asked (bf16 is silent)

    def prepare(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float32)

    def run(self, prepared: np.ndarray) -> Any:
        return self.request.infer({0: prepared})

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        res = {self._name(k): np.asarray(v) for k, v in self.run(self.prepare(x)).items()}
        logits = res["logits"].astype(np.float32) if "logits" in res else None
        labels = res["labels"] if "labels" in res else logits.argmax(1)
        return np.asarray(labels).astype(np.int32), logits

    def close(self) -> None:
        self.request = self.compiled = None


class TensorRTRunner(Runner):
    """A TensorRT engine built from an exported ONNX (profile covering every benchmarked shape)."""

    backend = "tensorrt"

    def __init__(self, exported: ExportedOnnx, precision: str, device: str, engine_path: Path,
                 shapes: Sequence[tuple[int, int, int]]) -> None:
        super().__init__(precision, device)
        from semask_deploy.export.tensorrt import build_engine
        from semask_deploy.runtime.trt_runner import TensorRTRunner as _Engine

        ns = [s[0] for s in shapes]
        hs = [s[1] for s in shapes]
        ws = [s[2] for s in shapes]
        opt = max(shapes, key=lambda s: s[0] * s[1] * s[2])
        profile = {"name": "image", "min": (min(ns), 3, min(hs), min(ws)), "opt": (opt[0], 3, opt[1], opt[2]),
                   "max": (max(ns), 3, max(hs), max(ws))}
        t0 = time.perf_counter()
        info = build_engine(exported.path, engine_path, precision=precision, profiles=[profile], progress=False)
        build_s = time.perf_counter() - t0
        self.engine = _Engine(engine_path)
        self.has_logits = exported.has_logits
        if self.has_logits:
            self.flags.append("timed call also copies the logits output (kept for parity) to the host")
        self.build_s = exported.export_s + exported.quant_s + build_s
        self.build = {"export_s": exported.export_s, "quant_s": exported.quant_s, "engine_build_s": build_s,
                      "engine_mb": _size_mb(engine_path), **{k: v for k, v in info.items() if _jsonable(v)}}

    def run(self, prepared: np.ndarray) -> Any:
        return self.engine.run({"image": np.ascontiguousarray(prepared, dtype=np.float32)})

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = self.run(x)
        logits = np.asarray(out["logits"], dtype=np.float32) if "logits" in out else None
        labels = np.asarray(out["labels"]) if "labels" in out else logits.argmax(1)
        return labels.astype(np.int32), logits

    def close(self) -> None:
        self.engine.close()


def _size_mb(path: Path) -> float | None:
    try:
        total = path.stat().st_size
        data = path.with_name(path.name + ".data")
        if data.is_file():
            total += data.stat().st_size
        return total / 2**20
    except OSError:
        return None


def _jsonable(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list, dict, tuple))


def make_runner(
    backend: str, precision: str, device: str, *, model: Any, checkpoint: Path, workdir: Path,
    calib_images: np.ndarray, shapes: Sequence[tuple[int, int, int]], threads: int | None = None,
) -> Runner:
    """Build the runner for one backend × precision (exporting / compiling / building as needed).

    Args:
        backend, precision, device: the cell.
        model: the loaded fp32 model (copied, never modified).
        checkpoint: its file (for exporters).
        workdir: where exported artifacts go.
        calib_images: uint8 (M, H, W, 3) RGB images for int8 calibration.
        shapes: every (N, H, W) the runner will see (TensorRT profiles).
        threads: CPU threads for ONNX Runtime (torch's are set process-wide by the caller).

    Raises:
        Skip: cannot run here. SemaskError / other: a real failure (recorded as failed).
    """
    if backend in TORCH_ATTENTION:
        return TorchRunner(model, backend, precision, device)
    if backend == "openvino":
        # bf16 is OpenVINO's compile-time hint on the fp32 graph, not a graph of its own
        exported = export_onnx(checkpoint, "fp32" if precision == "bf16" else precision, workdir,
                               calib_images=calib_images, device=device, int8_activations="s8")
        return OpenVinoRunner(exported, precision, device, threads=threads)
    if backend in ("onnxruntime", "tensorrt"):
        # the graph semask-export writes by default: s8 activations; Winograd convs for ONNX Runtime on the CPU
        exported = export_onnx(checkpoint, precision, workdir, calib_images=calib_images, device=device,
                               int8_activations="s8", winograd=backend == "onnxruntime" and device == "cpu")
        if backend == "onnxruntime":
            return OnnxRuntimeRunner(exported, precision, device, threads=threads)
        return TensorRTRunner(exported, precision, device, workdir / f"model_{precision}.engine", shapes)
    raise Skip(f"unknown backend {backend!r}")
