"""Build a TensorRT engine from an exported ONNX file (TensorRT 10.x and 11.x Python API).

Precision lives in the ONNX (DESIGN §4): an fp16 export is a mixed-precision graph (LayerNorm, softmax and
the semantic-attention scores stay fp32), an int8 export carries explicit Q/DQ nodes. How the builder is
set up follows from the installed TensorRT and from what the ONNX carries (:func:`choose_build_mode`):

===========  ============================  =====================================================
TensorRT     ONNX                          network / builder flags
===========  ============================  =====================================================
>= 11        any                           strongly typed (the only mode; weak-typing flags such as
                                           ``BuilderFlag.FP16``/``INT8`` were removed in 11.0),
                                           no precision flags; fp16/int8 need an fp16/Q/DQ ONNX
10.x         fp16 casts and/or Q/DQ        strongly typed (``NetworkDefinitionCreationFlag.
                                           STRONGLY_TYPED``), no flags: TensorRT keeps exactly the
                                           types of the graph, so the fp32 LayerNorm/softmax islands
                                           survive; Q/DQ explicit quantization works strongly typed
10.x         plain fp32, precision fp16    weakly typed + ``BuilderFlag.FP16`` (TensorRT picks
                                           per-layer precision; prefer the fp16 ONNX for accuracy)
10.x         plain fp32, precision fp32    weakly typed, no flags (TensorRT's defaults, TF32 on)
< 10         —                             refused
===========  ============================  =====================================================

int8 always needs a Q/DQ ONNX: implicit INT8 calibration is not supported (and is gone in 11).

``import tensorrt`` happens only inside the functions; without it (or without a CUDA GPU) the calls
raise :class:`~semask_deploy.errors.MissingDependencyError` / :class:`~semask_deploy.errors.ExportError`
with what to do, never a bare traceback.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from semask_deploy.errors import ExportError, require
from semask_deploy.fileio import atomic_path, write_bytes_atomic
from semask_deploy.trt_common import gpu_compute_capability, import_tensorrt, load_plugins, tensorrt_version

__all__ = ["PRECISIONS", "build_engine", "choose_build_mode", "gpu_compute_capability", "inspect_onnx_precision",
           "tensorrt_version", "validate_profiles"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
_NO_TRT_HINT = ("Without a GPU you can still check the ONNX offline: semask-export --check-trt model.onnx "
                "(semask_deploy.export.trt_check.check_onnx_for_tensorrt() in Python).")


# ----------------------------------------------------------------------------------------------------
# environment probes (shared with the runner: semask_deploy/trt_common.py)
# ----------------------------------------------------------------------------------------------------
def _import_tensorrt() -> Any:
    """Import tensorrt lazily, turning every import failure into a :class:`MissingDependencyError`."""
    return import_tensorrt(_NO_TRT_HINT)


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`MissingDependencyError` saying how to get it: for callers that
    should stop (or warn) before minutes of work that end in an engine build."""
    return _import_tensorrt()


# ----------------------------------------------------------------------------------------------------
# pure decisions (tested on the CPU)
# ----------------------------------------------------------------------------------------------------
def _onnx_precision(has_qdq: bool, has_fp16: bool) -> str:
    return "int8" if has_qdq else "fp16" if has_fp16 else "fp32"


def choose_build_mode(trt_major: int, precision: str, onnx_has_qdq: bool, onnx_has_fp16: bool) -> tuple[bool, list[str]]:
    """Decide between a strongly typed network and builder precision flags (see the module table).

    Args:
        trt_major: major version of the installed TensorRT.
        precision: requested engine precision, one of ``"fp32"``, ``"fp16"``, ``"int8"``.
        onnx_has_qdq: the ONNX has QuantizeLinear/DequantizeLinear nodes (an int8 export).
        onnx_has_fp16: the ONNX has float16/bfloat16 tensors or casts (an fp16 export).

    Returns:
        ``(strongly_typed, flags)`` where ``flags`` are ``tensorrt.BuilderFlag`` member names to set.

    Raises:
        ExportError: unknown precision, TensorRT < 10, or a precision the ONNX cannot give.
    """
    precision = str(precision).lower()
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if trt_major < 10:
        raise ExportError(f"TensorRT {trt_major}.x is not supported; install TensorRT >= 10 (pip install 'semask-deploy[trt]')")
    carried = _onnx_precision(onnx_has_qdq, onnx_has_fp16)
    if precision == "int8" and not onnx_has_qdq:
        raise ExportError(
            "precision int8 needs an ONNX with explicit Q/DQ nodes (export it with --precision int8 and calibration "
            "images); implicit INT8 calibration in TensorRT is not supported"
        )
    if precision != "int8" and onnx_has_qdq:
        raise ExportError(f"the ONNX is quantized (Q/DQ nodes) but precision {precision} was requested; use precision int8")
    if precision == "fp32" and onnx_has_fp16:
        raise ExportError("the ONNX carries fp16 tensors but precision fp32 was requested; build from the fp32 ONNX or use fp16")
    if trt_major >= 11:
        if precision == "fp16" and carried != "fp16":
            raise ExportError(
                f"TensorRT {trt_major} builds strongly typed networks only (the FP16 builder flag was removed): "
                "build from an fp16 ONNX (semask-export --precision fp16), not from the fp32 one"
            )
        return True, []
    if onnx_has_qdq or onnx_has_fp16:
        return True, []
    return False, (["FP16"] if precision == "fp16" else [])


def inspect_onnx_precision(onnx_path_or_model: str | os.PathLike | Any) -> tuple[bool, bool]:
    """Find out what precision an ONNX carries.

    Args:
        onnx_path_or_model: ``.onnx`` path (weights are not loaded) or ``onnx.ModelProto``.

    Returns:
        ``(has_qdq, has_fp16)``: Q/DQ nodes anywhere; float16/bfloat16 tensors, casts or constants anywhere
        (subgraphs and model-local functions included).
    """
    onnx = require("onnx", "dev")
    if isinstance(onnx_path_or_model, onnx.ModelProto):
        model = onnx_path_or_model
    else:
        try:
            model = onnx.load(str(onnx_path_or_model), load_external_data=False)
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"cannot read ONNX file {onnx_path_or_model}: {exc}") from exc
    half = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    has_qdq = has_fp16 = False

    def visit_nodes(nodes: Sequence[Any]) -> None:
        nonlocal has_qdq, has_fp16
        for node in nodes:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.domain in ("", "ai.onnx"):
                has_qdq = True
            for attr in node.attribute:
                if attr.name in ("to", "output_dtype") and attr.type == onnx.AttributeProto.INT and attr.i in half:
                    has_fp16 = True
                elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in half:
                    has_fp16 = True
                elif attr.type == onnx.AttributeProto.GRAPH:
                    visit_graph(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        visit_graph(g)

    def visit_graph(graph: Any) -> None:
        nonlocal has_fp16
        values = list(graph.input) + list(graph.output) + list(graph.value_info)
        if any(v.type.tensor_type.elem_type in half for v in values) or any(t.data_type in half for t in graph.initializer):
            has_fp16 = True
        visit_nodes(graph.node)

    visit_graph(model.graph)
    for func in model.functions:
        visit_nodes(func.node)
    return has_qdq, has_fp16


# GridSample-20 renamed the modes "bilinear"/"bicubic" to "linear"/"cubic". TensorRT's ONNX parser (10.x up to at
# least 11.1) only knows the old names and silently falls back to NEAREST for the new ones (onnx-tensorrt
# onnxOpImporters.cpp, GridSample importer; NVIDIA/TensorRT#4646, onnx/onnx-tensorrt#1060), so an opset-20 graph
# (semask-export's default) samples its deformable offsets with nearest in the engine. The parser does not check
# the name against the opset: handing it the old spelling gives the bilinear/bicubic IGridSampleLayer.
_GRIDSAMPLE_TRT_MODES = {"linear": "bilinear", "cubic": "bicubic"}


def rename_gridsample_modes_for_tensorrt(model: Any) -> int:
    """Rewrite GridSample ``mode`` "linear"/"cubic" (opset >= 20) to "bilinear"/"bicubic" in place, for TensorRT's
    parser only (the result is not a valid opset-20 ONNX for other runtimes). Returns the number of nodes changed."""
    changed = 0

    def visit(nodes: Sequence[Any]) -> None:
        nonlocal changed
        for node in nodes:
            for attr in node.attribute:
                if node.op_type == "GridSample" and node.domain in ("", "ai.onnx") and attr.name == "mode":
                    new = _GRIDSAMPLE_TRT_MODES.get(attr.s.decode())
                    if new is not None:
                        attr.s = new.encode()
                        changed += 1
                for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    visit(g.node)

    visit(model.graph.node)
    for func in model.functions:
        visit(func.node)
    return changed


def validate_profiles(
    profiles: Sequence[Mapping[str, Any]] | None, input_shapes: Mapping[str, Sequence[int]]
) -> list[dict[str, dict[str, tuple[int, ...]]]]:
    """Check optimisation-profile specs against the network inputs and group them by profile.

    Args:
        profiles: ``[{"name": "image", "min": (N,3,H,W), "opt": ..., "max": ..., "profile": 0}, ...]``;
            ``"profile"`` (default 0) selects the optimisation profile a range belongs to, so several inputs
            can share one profile and several profiles can be built.
        input_shapes: network input name → shape, ``-1`` for dynamic dimensions.

    Returns:
        One ``{input_name: {"min", "opt", "max"}}`` dict per optimisation profile (empty list: static network).

    Raises:
        ExportError: unknown input, wrong rank, fixed dimension changed, not min <= opt <= max, or a dynamic
            input without a range in some profile.
    """
    dynamic = [name for name, shape in input_shapes.items() if any(int(d) < 0 for d in shape)]
    groups: dict[int, dict[str, dict[str, tuple[int, ...]]]] = {}
    for spec in profiles or []:
        name = spec.get("name")
        if name not in input_shapes:
            raise ExportError(f"profile for unknown input {name!r}; the network inputs are {', '.join(input_shapes)}")
        shape = [int(d) for d in input_shapes[name]]
        try:
            ranges = {k: tuple(int(d) for d in spec[k]) for k in ("min", "opt", "max")}
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportError(f"profile for {name!r} needs 'min', 'opt' and 'max' shapes of integers ({exc})") from exc
        for key, dims in ranges.items():
            if len(dims) != len(shape):
                raise ExportError(f"profile {key} shape {dims} for {name!r} has rank {len(dims)}, the input has rank {len(shape)}")
            for axis, (want, got) in enumerate(zip(shape, dims)):
                if want >= 0 and got != want:
                    raise ExportError(f"profile {key} shape {dims} for {name!r} changes fixed dimension {axis} ({want})")
                if got < 0:
                    raise ExportError(f"profile {key} shape {dims} for {name!r} has a negative dimension")
        if not all(a <= b <= c for a, b, c in zip(ranges["min"], ranges["opt"], ranges["max"])):
            raise ExportError(f"profile for {name!r} must satisfy min <= opt <= max per dimension, got {ranges}")
        group = groups.setdefault(int(spec.get("profile", 0)), {})
        if name in group:
            raise ExportError(f"input {name!r} has two ranges in profile {int(spec.get('profile', 0))}")
        group[name] = ranges
    if dynamic and not groups:
        shapes = ", ".join(f"{n} {list(input_shapes[n])}" for n in dynamic)
        raise ExportError(f"the ONNX has dynamic input(s) {shapes}: pass profiles=[{{'name', 'min', 'opt', 'max'}}] for them")
    ordered = [groups[k] for k in sorted(groups)]
    for index, group in enumerate(ordered):
        missing = [n for n in dynamic if n not in group]
        if missing:
            raise ExportError(f"optimisation profile {index} has no range for dynamic input(s) {', '.join(missing)}")
    return ordered


# ----------------------------------------------------------------------------------------------------
# TensorRT callbacks (classes are created lazily because their base classes live in tensorrt)
# ----------------------------------------------------------------------------------------------------
def _make_logger(trt: Any, verbose: bool) -> Any:
    class _Logger(trt.ILogger):
        """Forwards TensorRT messages to :mod:`logging` and keeps warnings and errors for error messages."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)  # 0 internal error, 1 error, 2 warning, 3 info, 4 verbose
            if level <= 1:
                self.messages.append(msg)
                log.error("TensorRT: %s", msg)
            elif level == 2:
                self.messages.append(msg)
                log.warning("TensorRT: %s", msg)
            elif verbose:
                log.info("TensorRT: %s", msg)

    return _Logger()


def _make_progress_monitor(trt: Any) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a core dependency
        tqdm = None

    class _Progress(trt.IProgressMonitor):
        """Shows the builder's phases as nested tqdm bars (log lines without tqdm); thread-safe."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._phases: dict[str, tuple[int, Any]] = {}
            self.cancelled = False

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            try:
                with self._lock:
                    depth = self._phases[parent_phase][0] + 1 if parent_phase in self._phases else 0
                    bar = None
                    if tqdm is not None:
                        bar = tqdm(total=num_steps, desc=("  " * depth) + phase_name, position=depth,
                                   leave=depth == 0, dynamic_ncols=True)
                    elif depth == 0:
                        log.info("TensorRT build: %s (%d steps)", phase_name, num_steps)
                    self._phases[phase_name] = (depth, bar)
            except KeyboardInterrupt:
                self.cancelled = True
            except Exception:  # noqa: BLE001 - never let an exception cross into TensorRT
                pass

        def step_complete(self, phase_name: str, step: int) -> bool:
            try:
                with self._lock:
                    bar = self._phases.get(phase_name, (0, None))[1]
                    if bar is not None:
                        bar.n = step + 1
                        bar.refresh()
            except KeyboardInterrupt:
                self.cancelled = True
            except Exception:  # noqa: BLE001
                pass
            return not self.cancelled

        def phase_finish(self, phase_name: str) -> None:
            try:
                with self._lock:
                    _, bar = self._phases.pop(phase_name, (0, None))
                    if bar is not None:
                        bar.close()
            except KeyboardInterrupt:
                self.cancelled = True
            except Exception:  # noqa: BLE001
                pass

        def close(self) -> None:
            with self._lock:
                for _, bar in self._phases.values():
                    if bar is not None:
                        bar.close()
                self._phases.clear()

    return _Progress()


def _parser_error_text(error: Any) -> str:
    parts = []
    for attr, fmt in (("node", "node {}"), ("node_operator", "op {}"), ("node_name", "'{}'")):
        try:
            value = getattr(error, attr)()
            if value not in (None, "", -1):
                parts.append(fmt.format(value))
        except Exception:  # noqa: BLE001 - older TensorRT lacks some accessors
            continue
    try:
        desc = error.desc()
    except Exception:  # noqa: BLE001
        desc = str(error)
    return (" ".join(parts) + ": " if parts else "") + str(desc)


def _dtype_name(trt: Any, dtype: Any) -> str:
    try:
        import numpy as np

        return np.dtype(trt.nptype(dtype)).name
    except Exception:  # noqa: BLE001 - bf16/fp8/int4 have no numpy type
        return str(dtype).split(".")[-1].lower()


def _io_info(trt: Any, network: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def describe(t: Any) -> dict[str, Any]:
        return {"name": t.name, "dtype": _dtype_name(trt, t.dtype), "shape": [int(d) for d in t.shape]}

    return ([describe(network.get_input(i)) for i in range(network.num_inputs)],
            [describe(network.get_output(i)) for i in range(network.num_outputs)])


# ----------------------------------------------------------------------------------------------------
# the build
# ----------------------------------------------------------------------------------------------------
def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    precision: str = "fp32",
    profiles: Sequence[Mapping[str, Any]] | None = None,
    timing_cache: str | os.PathLike | None = None,
    workspace_gb: float = 4.0,
    progress: bool = True,
    verbose: bool = False,
) -> dict[str, Any]:
    """Parse an ONNX file with TensorRT's ONNX parser and write a serialized engine.

    Args:
        onnx_path: the exported ``.onnx`` (external weights beside it are found by the parser).
        engine_path: where to write the engine (temp file + rename).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``; must agree with what the ONNX carries (module doc).
        profiles: shape ranges for dynamic inputs, e.g. ``[{"name": "image", "min": (1, 3, 256, 256),
            "opt": (1, 3, 512, 1024), "max": (4, 3, 1024, 2048)}]``; see :func:`validate_profiles`.
        timing_cache: file to load the timing cache from (if it exists) and to save it back to (atomically).
        workspace_gb: builder workspace memory-pool limit in GiB.
        progress: show build progress (tqdm bars through an ``IProgressMonitor``).
        verbose: forward TensorRT's info messages to :mod:`logging`.

    Returns:
        Build info for the sidecar: ``engine_path``, ``onnx_path``, ``tensorrt_version``,
        ``gpu_compute_capability``, ``precision``, ``strongly_typed``, ``builder_flags``, ``profiles``,
        ``inputs``/``outputs`` (name, dtype, shape), ``timing_cache`` (+ ``timing_cache_loaded``: an existing
        cache was accepted, ``timing_cache_saved``), ``plugins_loaded`` (libnvinfer_plugin registered),
        ``workspace_gb``, ``build_seconds``, ``engine_bytes``.

    Raises:
        MissingDependencyError: tensorrt (or onnx) is not installed.
        ExportError: no usable GPU, the parser rejects the ONNX (its errors are listed), bad profiles, a
            precision the ONNX cannot give, or the build fails.
    """
    precision = str(precision).lower()
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if workspace_gb <= 0:
        raise ExportError(f"workspace_gb must be positive, got {workspace_gb}")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise ExportError(f"ONNX file not found: {onnx_path}")
    if engine_path.resolve() == onnx_path.resolve():
        raise ExportError("engine_path must differ from onnx_path")

    trt = _import_tensorrt()
    version = str(getattr(trt, "__version__", "0"))
    trt_major = int(version.split(".")[0] or 0)
    logger = _make_logger(trt, verbose)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # noqa: BLE001 - CUDA initialisation failure surfaces as various errors
        builder, why = None, str(exc)
    else:
        why = "; ".join(logger.messages[-3:])
    if builder is None:
        raise ExportError(
            f"TensorRT {version} could not create a builder — no usable NVIDIA GPU/driver ({why or 'CUDA init failed'}). "
            "Engines can only be built on a machine with an NVIDIA GPU."
        )

    has_qdq, has_fp16 = inspect_onnx_precision(onnx_path)
    strongly_typed, flags = choose_build_mode(trt_major, precision, has_qdq, has_fp16)
    network_flags = 0
    if strongly_typed and trt_major < 11:  # on 11 the flag is deprecated and ignored: every network is strongly typed
        network_flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    plugins_loaded = load_plugins(trt, logger)  # DeformConv is parsed into the ModulatedDeformConv2d plugin
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, logger)
    onnx_mod = require("onnx", "dev")
    proto = onnx_mod.load(str(onnx_path), load_external_data=False)
    renamed = rename_gridsample_modes_for_tensorrt(proto)
    if renamed:  # parse the renamed graph; path= lets the parser find external weights beside the file
        log.info("GridSample: %d node(s) passed to TensorRT as bilinear/bicubic (its parser reads opset-20 "
                 "'linear'/'cubic' as nearest)", renamed)
        parsed = parser.parse(proto.SerializeToString(), str(onnx_path))
    else:
        parsed = parser.parse_from_file(str(onnx_path))
    del proto
    if not parsed:
        errors = [_parser_error_text(parser.get_error(i)) for i in range(parser.num_errors)] or logger.messages[-5:]
        raise ExportError(
            f"TensorRT {version}'s ONNX parser rejected {onnx_path}:\n  - " + "\n  - ".join(errors)
            + "\n(semask-export --check-trt gives an offline report of unsupported ops and dtypes)"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))

    net_inputs = [network.get_input(i) for i in range(network.num_inputs)]
    # shape-tensor inputs (the output_size input of semask-export's graphs) get VALUE ranges, not shapes
    shape_inputs = [t.name for t in net_inputs if getattr(t, "is_shape_tensor", False)]
    value_ranges = {str(spec["name"]): spec for spec in profiles or [] if spec.get("values")}
    missing_values = [n for n in shape_inputs if n not in value_ranges]
    if missing_values:
        raise ExportError(f"the network has shape-tensor input(s) {', '.join(missing_values)}: pass profiles=[{{'name', "
                          "'min', 'opt', 'max', 'values': True}] with their value ranges")
    input_shapes = {t.name: tuple(t.shape) for t in net_inputs if t.name not in value_ranges}
    groups = validate_profiles([p for p in profiles or [] if not p.get("values")], input_shapes)
    if value_ranges and not groups:
        groups = [{}]
    for index, group in enumerate(groups):
        profile = builder.create_optimization_profile()
        for name, r in group.items():
            try:  # the Python API raises RuntimeError where the C++ API returns false
                accepted = profile.set_shape(name, r["min"], r["opt"], r["max"])
            except RuntimeError as exc:
                raise ExportError(f"TensorRT rejected the shape range {r} of input {name!r} in optimisation profile "
                                  f"{index}: {exc}") from exc
            if accepted is False:
                raise ExportError(f"TensorRT rejected the shape range {r} of input {name!r} in optimisation profile {index}")
        for name, r in value_ranges.items():
            try:
                accepted = profile.set_shape_input(name, list(r["min"]), list(r["opt"]), list(r["max"]))
            except RuntimeError as exc:
                raise ExportError(f"TensorRT rejected the value range {r} of shape input {name!r} in optimisation "
                                  f"profile {index}: {exc}") from exc
            if accepted is False:
                raise ExportError(f"TensorRT rejected the value range {r} of shape input {name!r} in optimisation "
                                  f"profile {index}")
        if config.add_optimization_profile(profile) < 0:
            raise ExportError(f"TensorRT rejected optimisation profile {index}: {group}")

    cache_path = Path(timing_cache) if timing_cache is not None else None
    cache_loaded = False
    if cache_path is not None:
        data = cache_path.read_bytes() if cache_path.is_file() else b""
        try:
            cache = config.create_timing_cache(data)
        except Exception:  # noqa: BLE001 - corrupt or foreign cache file
            cache = None
        if cache is None and data:
            log.warning("timing cache %s is unreadable; starting an empty one", cache_path)
            cache = config.create_timing_cache(b"")
        # False when the cache was made on another device/TensorRT (ignore_mismatch=False refuses it)
        if config.set_timing_cache(cache, ignore_mismatch=False):
            cache_loaded = bool(data)
        else:
            log.warning("timing cache %s was made for another GPU or TensorRT version; starting an empty one "
                        "(it is overwritten after the build)", cache_path)
            if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
                raise ExportError(f"TensorRT refused even an empty timing cache; build without timing_cache={cache_path}")

    monitor = None
    if progress and hasattr(trt, "IProgressMonitor"):
        monitor = _make_progress_monitor(trt)
        config.progress_monitor = monitor

    log.info("building %s engine from %s (TensorRT %s, %s, flags=%s)", precision, onnx_path, version,
             "strongly typed" if strongly_typed else "weakly typed", flags or "none")
    started = time.perf_counter()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if monitor is not None:
            monitor.close()
    seconds = time.perf_counter() - started
    if serialized is None:
        if monitor is not None and monitor.cancelled:
            raise ExportError("engine build cancelled")
        raise ExportError("TensorRT failed to build the engine:\n  - " + "\n  - ".join(logger.messages[-10:] or ["(no message)"]))

    with atomic_path(engine_path) as tmp:  # the engine first: a failure saving the cache must not lose it
        with open(tmp, "wb") as f:
            f.write(memoryview(serialized))
    cache_saved = False
    if cache_path is not None:
        try:
            write_bytes_atomic(cache_path, memoryview(config.get_timing_cache().serialize()).tobytes())
            cache_saved = True
        except Exception as exc:  # noqa: BLE001 - the engine is written; the cache is only an optimisation
            log.warning("engine written, but the timing cache could not be saved to %s: %s", cache_path, exc)
    inputs, outputs = _io_info(trt, network)
    info = {
        "engine_path": str(engine_path),
        "onnx_path": str(onnx_path),
        "tensorrt_version": version,
        "gpu_compute_capability": gpu_compute_capability(),
        "precision": precision,
        "strongly_typed": strongly_typed,
        "builder_flags": list(flags),
        "profiles": [{n: {k: list(v) for k, v in r.items()} for n, r in g.items()} for g in groups],
        "inputs": inputs,
        "outputs": outputs,
        "timing_cache": str(cache_path) if cache_path is not None else None,
        "timing_cache_loaded": cache_loaded,
        "timing_cache_saved": cache_saved,
        "plugins_loaded": plugins_loaded,
        "gridsample_modes_renamed": renamed,
        "workspace_gb": float(workspace_gb),
        "build_seconds": round(seconds, 3),
        "engine_bytes": engine_path.stat().st_size,
    }
    log.info("wrote %s (%.1f MB) in %.1f s", engine_path, info["engine_bytes"] / 1e6, seconds)
    return info
