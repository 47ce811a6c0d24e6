"""OpenVINO backend for :class:`~semask_deploy.runtime.Segmenter`: an exported ``.onnx`` or OpenVINO IR ``.xml``.

OpenVINO (``pip install 'semask-deploy[openvino]'``) reads our ONNX directly, or the IR that
``semask-export --fmt openvino`` writes (``model.xml`` + ``model.bin`` + the ``model.json`` sidecar).

Precision is always explicit. OpenVINO's CPU plugin silently runs float layers in bf16 on CPUs with
``avx512_bf16``/AMX unless told otherwise, so every compile sets ``INFERENCE_PRECISION_HINT``:

* ``fp32`` (default) → hint ``f32``;
* ``bf16`` → hint ``bf16``, only where the CPU has native bf16 (:func:`~.cpu_info.native_bf16`); elsewhere a
  :class:`~semask_deploy.errors.ConfigError` (never a silent emulation);
* an int8 artifact (our Q/DQ ONNX, ``semask-export --precision int8``) runs its quantized layers in int8 and
  the rest at the hint (``fp32`` unless asked).

What actually ran is read back from the compiled model: the hint it reports and the count of executed
layers per runtime precision (:attr:`OpenVinoBackend.ran`), recorded by benchmarks and ``describe()``.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError, RuntimeBackendError, SemaskError, require
from .artifact import (OUTPUT_SIZE, ImageInput, apply_sidecar, check_graph_matches_sidecar, check_preprocess_flag, graph_input,
                       output_size_feed)
from .cpu_info import require_native_bf16
from .signal_stack import keep_signal_stack

#: user-facing precision → OpenVINO inference precision hint
HINTS = {"fp32": "f32", "f32": "f32", "bf16": "bf16"}
OV_SUFFIXES = (".xml",)
#: ``static_shapes`` of :class:`OpenVinoBackend`
SHAPE_MODES = ("auto", "static", "dynamic")
#: static specialisations kept per backend (each compiled model holds its own copy of the weights: ~0.9 GB
#: for SeMask-L in fp32)
STATIC_CACHE = 2
#: distinct (input, output) sizes whose occurrences ``auto`` keeps counting (the most frequent are kept)
SEEN_LIMIT = 256


class _Requests:
    """The infer requests of one compiled model. OpenVINO's requests are not thread-safe: a call takes an idle
    one (or a new one) and gives it back, so threads that share a backend never share a request."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def take(self) -> Iterator[Any]:
        with self._lock:
            request = self._idle.pop() if self._idle else None
        if request is None:
            request = self.compiled.create_infer_request()
        try:
            yield request
        finally:
            with self._lock:
                self._idle.append(request)


def error_text(exc: BaseException, limit: int = 300) -> str:
    """OpenVINO's exception text without its source-location lines ("Exception from src/…:84:"), which come
    first and would otherwise be all a one-line message shows."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    useful = [ln for ln in lines if ln and not re.match(r"^(Exception from |Check ').*:\d+:?$", ln)]
    return " ".join(useful or [ln for ln in lines if ln] or [type(exc).__name__])[:limit]


def _openvino() -> Any:
    return require("openvino", "openvino")


_CORE: Any = None
_CORE_LOCK = threading.Lock()


def shared_core() -> Any:
    """The process's one ``ov.Core``, its CPU plugin loaded under :func:`.signal_stack.keep_signal_stack`.

    One core means one CPU plugin for all our models, and the plugin is never destroyed before the process
    ends, so it cannot leave a dangling alternate signal stack behind (:mod:`.signal_stack`).
    """
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            core = _openvino().Core()
            try:
                with keep_signal_stack():
                    core.get_property("CPU", "FULL_DEVICE_NAME")  # loads the CPU plugin now
            except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with a long text
                raise RuntimeBackendError(f"OpenVINO cannot load its CPU plugin: {error_text(exc)}") from exc
            _CORE = core
        return _CORE


def inference_hint(precision: str | None) -> str:
    """``"fp32"``/``"f32"``/None → ``"f32"``; ``"bf16"`` → ``"bf16"`` (after the native-bf16 check).

    Raises:
        ConfigError: unknown precision, or bf16 on a CPU without native bf16.
    """
    p = (precision or "fp32").lower()
    if p not in HINTS:
        raise ConfigError(f"OpenVINO precision must be fp32 or bf16 (int8 is an exported Q/DQ ONNX: semask-export "
                          f"--precision int8), got {precision!r}")
    if HINTS[p] == "bf16":
        require_native_bf16("OpenVINO bf16")
    return HINTS[p]


def compile_model(path: str | Path, *, precision: str | None = "fp32", threads: int | None = None) -> tuple[Any, dict]:
    """Read and compile an ``.onnx``/``.xml`` on the CPU with an explicit precision hint.

    Args:
        path: the model file.
        precision: ``fp32`` or ``bf16`` for the float layers.
        threads: ``INFERENCE_NUM_THREADS`` (default: OpenVINO's choice).

    Returns:
        (compiled model, ``ran``: ``{"hint": str, "layers": {runtime precision: count}}``).
    """
    core, model = read_model(path)
    compiled = _compile(core, model, inference_hint(precision), threads, Path(path).name)
    return compiled, ran_precision(compiled)


def read_model(path: str | Path) -> tuple[Any, Any]:
    """(``ov.Core``, ``ov.Model``) of an ``.onnx`` (with OpenVINO's labels head) or ``.xml``."""
    core = shared_core()
    try:
        return core, core.read_model(_model_source(Path(path)))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with a long text
        raise RuntimeBackendError(f"OpenVINO cannot read {Path(path).name}: {error_text(exc)}") from exc


def _compile(core: Any, model: Any, hint: str, threads: int | None, name: str,
             extra: dict[str, Any] | None = None) -> Any:
    """Compile on the CPU with the explicit precision ``hint``; ``extra``: more properties (e.g. ``PERF_COUNT``)."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", **(extra or {})}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        with keep_signal_stack():
            return core.compile_model(model, "CPU", config)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeBackendError(f"OpenVINO cannot compile {name}: {error_text(exc)}") from exc


def specialize(model: Any, input_name: str, shape: Sequence[int], output_size: Sequence[int] | None) -> Any:
    """A copy of the dynamic model with every shape fixed: the input's ``shape`` and, for graphs with the
    ``output_size`` input, that input replaced by the constant ``output_size``.

    OpenVINO's CPU plugin runs a fully static SeMask-T graph ~25 % faster than the dynamic one at 512×512
    (layouts chosen ahead, no shape inference per run); resizes that became identities are bypassed
    (:func:`_drop_identity_resizes`).
    """
    ov = _openvino()
    m = model.clone()
    for param in list(m.get_parameters()):
        if param.output(0).get_any_name() == OUTPUT_SIZE and output_size is not None:
            const = ov.op.Constant(np.array(output_size, dtype=np.int64))
            param.output(0).replace(const.output(0))
            m.remove_parameter(param)
    m.reshape({input_name: ov.PartialShape([int(v) for v in shape])})
    if _drop_identity_resizes(m):
        m.validate_nodes_and_infer_types()
    return m


_IDENTITY_AT_SCALE_ONE = ("half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners")


def _drop_identity_resizes(model: Any) -> int:
    """Bypass every linear Interpolate of a static model whose output shape equals its input shape.

    At scale 1 each of these coordinate modes maps an output pixel onto the same input pixel with weight 1,
    so such a resize returns its input exactly; OpenVINO still runs it (``output_size`` = the input's size
    made the labels head's second resize, 150 × 512 × 512 floats, such a copy: ~40 ms at 1 thread). Returns
    how many were bypassed.
    """
    dropped = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Interpolate":
            continue
        a = op.get_attributes()
        src, dst = op.get_input_partial_shape(0), op.get_output_partial_shape(0)
        if (a.get("mode") in ("linear", "linear_onnx") and a.get("coordinate_transformation_mode") in
                _IDENTITY_AT_SCALE_ONE and not a.get("antialias") and not any(a.get("pads_begin", []))
                and not any(a.get("pads_end", [])) and src.is_static and src == dst):
            op.output(0).replace(op.input_value(0))
            dropped += 1
    return dropped


def _model_source(path: Path) -> Any:
    """The path, or for an ONNX the same graph as OpenVINO should run it, as serialized bytes.

    OpenVINO's channels-last full-size Interpolate (the ONNX Runtime head) is ~10× slower than the NCHW one,
    and its ArgMax over the class axis of an NCHW map ~4× slower than the max-reduce form
    (:func:`semask_deploy.export.labels_head.openvino_labels_head`; the same labels). The ONNX Runtime graph's
    Winograd convolutions become plain convs again (:func:`semask_deploy.export.winograd.plain_convs`):
    OpenVINO picks its own algorithms, and Winograd's transforms would amplify bf16 rounding.
    """
    if path.suffix.lower() != ".onnx":
        return str(path)
    import onnx

    from semask_deploy.export.labels_head import openvino_labels_head
    from semask_deploy.export.winograd import plain_convs

    proto = onnx.load(str(path))
    if proto.ByteSize() > 1_900_000_000:
        return str(path)
    head = openvino_labels_head(proto)
    if not (plain_convs(proto) or head):
        return str(path)
    return proto.SerializeToString()


def ran_precision(compiled: Any) -> dict[str, Any]:
    """What the compiled model really runs: its precision hint and executed layers per runtime precision."""
    got = compiled.get_property("INFERENCE_PRECISION_HINT")
    hint = str(got.get_type_name() if hasattr(got, "get_type_name") else got)
    layers: Counter[str] = Counter()
    try:
        for op in compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if _any_str(info, "layerType") in ("Parameter", "Result", "Constant", "Input", "Output"):
                continue
            prec = _any_str(info, "runtimePrecision")
            if prec:
                layers[prec.lower()] += 1
    except Exception:  # noqa: BLE001 - the runtime model is diagnostics only
        pass
    return {"hint": hint.lower(), "layers": dict(sorted(layers.items()))}


def _any_str(info: Any, key: str) -> str:
    """A runtime-model rt_info entry as text (OpenVINO wraps values in ``OVAny``)."""
    if key not in info:
        return ""
    value = info[key]
    return str(value.astype(str)) if hasattr(value, "astype") else str(value)


def _output_name(port: Any, wanted: tuple[str, ...] = ("labels", "logits")) -> str:
    """``labels``/``logits`` if the port carries one of those names (ports may have several), else any name."""
    names = port.get_names()
    return next((n for n in wanted if n in names), port.get_any_name())


def ran_text(ran: dict[str, Any]) -> str:
    """``"hint f32; layers: f32 412, i8 96"``."""
    layers = ", ".join(f"{k} {v}" for k, v in ran.get("layers", {}).items())
    return f"hint {ran.get('hint')}" + (f"; layers: {layers}" if layers else "")


class OpenVinoBackend:
    """Runs an exported SeMask model (``.onnx`` or IR ``.xml`` + sidecar) with OpenVINO on the CPU.

    Args:
        path: the ``.onnx`` or ``.xml`` (its ``.json`` sidecar must be beside it).
        precision: ``fp32`` (default) or ``bf16`` for the float layers (see the module docstring).
        threads: CPU threads (default: OpenVINO's choice).
        static_shapes: ``auto`` (default): an input size (and output size) seen a second time gets a model
            compiled for exactly that size (:func:`specialize`; ~25 % faster, a one-off compile of a few
            seconds), kept for the last :data:`STATIC_CACHE` sizes; each time one is dropped for a newer one,
            a size must come twice as often before it is compiled (so more sizes in turn than the cache holds
            settle on the dynamic model instead of compiling on every call); ``static``: at the first
            occurrence; ``dynamic``: the dynamic model only. The labels are the same in all modes.

    One backend may be called from several threads at once (each call gets its own infer request).

    Attributes:
        has_logits, num_classes, class_names, palette, test_scale, crop_size: from the sidecar.
        precision: the artifact's precision (fp32, fp16, int8) from the sidecar.
        ran: what OpenVINO reports it runs: ``{"hint": "f32"|"bf16", "layers": {precision: count}}``.
        input_hw, input_batch: fixed input size/batch of a static export, else None.
    """

    kind = "openvino"

    def __init__(self, path: str | Path, *, device: str = "cpu", precision: str | None = "fp32",
                 threads: int | None = None, static_shapes: str = "auto") -> None:
        from semask_deploy.export.metadata import read_sidecar

        if device != "cpu":
            raise ConfigError(f"the OpenVINO backend runs on the CPU; got device={device!r}")
        self.path = Path(path)
        if not self.path.is_file():
            raise RuntimeBackendError(f"model file not found: {self.path}")
        if static_shapes not in SHAPE_MODES:
            raise ConfigError(f"static_shapes must be one of {', '.join(SHAPE_MODES)}, got {static_shapes!r}")
        self.meta: dict[str, Any] = read_sidecar(self.path)
        self._hint, self._threads, self.static_shapes = inference_hint(precision), threads, static_shapes
        self._core, self._model = read_model(self.path)
        self.compiled = _compile(self._core, self._model, self._hint, threads, self.path.name)
        self.ran = ran_precision(self.compiled)
        self._dynamic = _Requests(self.compiled)
        self._static: OrderedDict[tuple, _Requests] = OrderedDict()  # (shape, output size) → its compiled model
        self._seen: Counter[tuple] = Counter()
        self._compiling: set[tuple] = set()
        self._evicted = 0
        self._lock = threading.Lock()  # guards the five above
        m = self.meta
        self.output_names = [_output_name(o) for o in self.compiled.outputs]
        self.has_logits = "logits" in self.output_names
        names = [i.get_any_name() for i in self.compiled.inputs]
        self.has_output_size = OUTPUT_SIZE in names
        first = next(i for i in self.compiled.inputs if i.get_any_name() != OUTPUT_SIZE)
        self.input_name = first.get_any_name()
        self.accepts_uint8 = _element_dtype(first) == "uint8"
        logits = next((o for o in self.compiled.outputs if _output_name(o) == "logits"), None)
        k = None
        if logits is not None and logits.get_partial_shape().rank.is_static and len(logits.get_partial_shape()) == 4:
            dim = logits.get_partial_shape()[1]
            k = dim.get_length() if dim.is_static else None
        check_graph_matches_sidecar(m, names, self.output_names, k, self.path.name, _image_input(first))
        check_preprocess_flag(m, self.accepts_uint8, self.path.name)
        apply_sidecar(self, m)

    def _run(self, x: np.ndarray, size: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        feed = {self.input_name: x}
        if size is not None and not self.has_output_size:
            raise ConfigError(f"{self.path.name} has no output_size input (exported with --no-output-size): its "
                              "labels are at the input size; re-export without --no-output-size")
        if self.has_output_size:
            feed[OUTPUT_SIZE] = output_size_feed(x, size, self.accepts_uint8)
        try:
            requests = self._requests_for(x.shape, feed.get(OUTPUT_SIZE))
            if requests is not self._dynamic:  # a specialisation: the output size is a constant in it
                feed.pop(OUTPUT_SIZE, None)
            with requests.take() as request:
                res = request.infer(feed)  # outputs are copies (share_outputs=False): safe once it is given back
        except SemaskError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise RuntimeBackendError(f"OpenVINO failed on an input of shape {tuple(x.shape)} {x.dtype}: "
                                      f"{error_text(exc)}") from exc
        return {_output_name(k): v for k, v in res.items()}

    def _requests_for(self, shape: Sequence[int], output_size: np.ndarray | None) -> _Requests:
        """The requests for this input: the dynamic model's, or a static specialisation's (:func:`specialize`;
        ``static_shapes``: ``auto`` compiles one when a size comes a second time — later, after evictions, see
        the class docstring —, ``static`` at once, ``dynamic`` never; the latest :data:`STATIC_CACHE` are kept).
        While one thread compiles a size, the others run that size on the dynamic model."""
        if self.static_shapes == "dynamic":
            return self._dynamic
        key = (tuple(int(v) for v in shape), None if output_size is None else tuple(int(v) for v in output_size))
        with self._lock:
            if key in self._static:
                self._static.move_to_end(key)
                return self._static[key]
            if key in self._compiling:
                return self._dynamic
            self._seen[key] += 1
            if len(self._seen) > SEEN_LIMIT:
                self._seen = Counter(dict(self._seen.most_common(SEEN_LIMIT // 2)))
            if self.static_shapes == "auto" and self._seen.get(key, 0) < 2 << min(self._evicted, 16):
                return self._dynamic
            self._compiling.add(key)
        try:
            model = specialize(self._model, self.input_name, key[0], key[1])
            requests = _Requests(_compile(self._core, model, self._hint, self._threads, self.path.name))
        finally:
            with self._lock:
                self._compiling.discard(key)
        with self._lock:
            self._static[key] = requests
            while len(self._static) > STATIC_CACHE:
                self._static.popitem(last=False)
                self._evicted += 1
        return requests

    def logits(self, x: np.ndarray) -> torch.Tensor:
        """Normalised float32 (N, 3, H, W) → float32 logits (N, K, H, W)."""
        if not self.has_logits:
            raise ConfigError(f"{self.path.name} outputs labels only: re-export with --with-logits")
        out = self._run(graph_input(x, self.accepts_uint8))["logits"]
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))

    def labels(self, x: np.ndarray, size: Sequence[int] | None = None) -> np.ndarray:
        """Normalised float32 (N, 3, H, W) → int32 labels (N, H, W), or (N, Ho, Wo) at ``size`` = (Ho, Wo)
        (graphs with the ``output_size`` input only: logits resized there, then argmax — exact)."""
        out = self._run(graph_input(x, self.accepts_uint8), size)["labels"]
        return np.array(out, dtype=np.int32, copy=True)

    def describe(self) -> dict[str, Any]:
        return {"backend": "openvino", "precision": self.precision, "ran": self.ran, "input": self.input_name,
                "outputs": self.output_names, "output_size_input": self.has_output_size,
                "static_shapes": self.static_shapes}


def _element_dtype(port: Any) -> str:
    """numpy name of an OpenVINO port's element type (e.g. ``"float32"``, ``"uint8"``)."""
    try:
        return np.dtype(port.get_element_type().to_dtype()).name
    except (AttributeError, TypeError, RuntimeError):
        return str(port.get_element_type())


def _image_input(port: Any) -> ImageInput:
    """OpenVINO's description of the image input: fixed dims as ints, dynamic ones None."""
    ps = port.get_partial_shape()
    shape = (tuple(d.get_length() if d.is_static else None for d in ps) if ps.rank.is_static else None)
    return ImageInput(port.get_any_name(), _element_dtype(port), shape)
