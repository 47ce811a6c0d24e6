"""int8 Q/DQ ONNX graphs from calibration (:func:`quantize_int8`), and what stayed float (:func:`float_layers`).

ONNX Runtime ``quantize_static`` in QDQ format on the fp32 graph (no ``quant_pre_process``: it fails on dynamic
H/W graphs, DESIGN §7). Activation ranges from a histogram percentile (default; or KL entropy, or MinMax:
:data:`CALIBRATIONS`); weights symmetric int8 per output channel; activations int8 symmetric (``s8``, the
default: TensorRT needs a zero point of 0) or uint8 asymmetric (``u8``: ONNX Runtime's preferred kind on x86;
TensorRT rejects it).

Conv and MatMul are quantized, Swin's Linear layers among them: they export as Gemm on 2-D token matrices
(most of the backbone's FLOPs) and are quantized as the ``MatMul`` + bias they equal (:func:`gemms_as_matmuls`;
ONNX Runtime runs a Q/DQ MatMul in int8, a Q/DQ Gemm only fake-quantized). Their
inputs always; the Conv outputs too (ONNX Runtime then runs the FPN-head convs as int8 QLinearConv instead of
fp32 convs on dequantized weights); the MatMul outputs not (that would send the attention scores, the residual
stream and the LayerNorm inputs through int8; measured also slower here).
Kept in float (:func:`semask_deploy.export.precision.attention_roles`): LayerNorm, Softmax, the semantic-score
islands (as for fp16), the classifier conv producing the logits and the final Resize/ArgMax. Biases stay float
(``QuantizeBias=False``: TensorRT takes no int32 Q/DQ).

Calibration ranges are cached per hash of (model, calibration tensors, settings) in :func:`cache_dir`, so a
rerun skips calibration. The Conv/MatMul/Gemm nodes left in float are listed by :func:`float_layers` (with their
PyTorch module and role) in the result, hence in the sidecar.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semask_deploy.errors import ConfigError, ExportError, SemaskWarning, require
from semask_deploy.fileio import write_failure_text
from semask_deploy.export.precision import AttentionRoles, attention_roles

QUANTIZED_OPS = ("Conv", "MatMul")
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")  # what float_layers reports when it stayed float
INT8_ACTIVATIONS = ("s8", "u8")
# activation range estimators (ONNX Runtime calibrators): name -> (CalibrationMethod member, extra options)
CALIBRATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "minmax": ("MinMax", {}),
    "percentile": ("Percentile", {"CalibPercentile": 99.999}),
    "entropy": ("Entropy", {}),
}
DEFAULT_CALIBRATION = "percentile"
# KL-entropy histogram: ``quantize_static`` passes no bin counts to ONNX Runtime's EntropyCalibrater, whose
# defaults (128 bins, 128 quantized bins) leave a single candidate, the full range: entropy would equal minmax.
# 2048 bins searched for the 128-level window of least KL divergence, as TensorRT's entropy calibration does.
ENTROPY_BINS = {"num_bins": 2048, "num_quantized_bins": 128}


def _readable_cache(path: Path) -> bool:
    """Whether a cached calibration file parses as JSON; a damaged one (a full disk, an edit) is recomputed and
    replaced instead of failing every later export with a JSON error."""
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def cache_dir() -> Path:
    """Where calibration ranges are cached: ``$SEMASK_CACHE_DIR`` or ``~/.cache/semask-deploy``."""
    root = os.environ.get("SEMASK_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "semask-deploy")
    return Path(root) / "calibration"


def calibration_key(model_bytes: bytes, inputs: Sequence[np.ndarray], settings: dict[str, Any]) -> str:
    """SHA-256 of the fp32 model, the calibration tensors and the settings (hex, 24 chars)."""
    h = hashlib.sha256()
    h.update(hashlib.sha256(model_bytes).digest())
    for x in inputs:
        h.update(str((x.dtype.str, x.shape)).encode())
        h.update(np.ascontiguousarray(x).tobytes())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:24]


class _Reader:
    """ONNX Runtime CalibrationDataReader over a list of input arrays, with a progress bar."""

    def __init__(self, input_name: str, inputs: Sequence[np.ndarray], progress: bool,
                 output_size: bool = False) -> None:
        self.input_name = input_name
        self.output_size = output_size  # the graph also takes output_size (Ho, Wo): fed the input's own size
        self.inputs = list(inputs)
        self.index = 0
        self.bar = None
        if progress:
            import sys

            from tqdm import tqdm

            self.bar = tqdm(total=len(self.inputs), desc="int8 calibration", unit="img", file=sys.stderr,
                            dynamic_ncols=True)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.inputs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            return None
        x = self.inputs[self.index]
        self.index += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.output_size:
            hw = x.shape[1:3] if x.dtype == np.uint8 else x.shape[2:4]
            return {self.input_name: x, "output_size": np.asarray(hw, dtype=np.int64)}
        return {self.input_name: x}

    def __len__(self) -> int:
        return len(self.inputs)

    def rewind(self) -> None:
        self.index = 0


def gemms_as_matmuls(proto: Any) -> int:
    """Rewrite each ``Gemm(A, W, b)`` with a constant 2-D weight as ``Sum(MatMul(A, Wᵀ), b)`` (in place).

    ONNX Runtime computes a Q/DQ ``MatMul`` with a float output in int8 (``MatMulIntegerToFloat``) but a Q/DQ
    ``Gemm`` only fake-quantized, in float on dequantized operands (slower than fp32, and less exact). Swin's
    Linear layers export as Gemm, so they are quantized as MatMuls. The bias is added by ``Sum``, not ``Add``:
    ONNX Runtime's ``MatMulAddFusion`` runs before its Q/DQ fusions and would fold a MatMul + Add straight
    back into a Gemm (measured: 52 of SeMask-T's 73 int8 MatMuls lost that way). The MatMul keeps the Gemm's
    name and metadata (node exclusions and :func:`float_layers` still match); the Sum is ``{name}/bias``. Only
    ``alpha = beta = 1``, ``transA = 0`` Gemms are rewritten. Returns how many.
    """
    from onnx import helper, numpy_helper

    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    transposed: dict[str, str] = {}
    nodes = []
    count = 0
    for node in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = inits.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        if (w is None or len(w.dims) != 2 or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0
                or attrs.get("transA", 0)):
            nodes.append(node)
            continue
        weight = w.name
        if attrs.get("transB", 0):
            if weight not in transposed:
                transposed[weight] = f"{weight}_kn"
                g.initializer.append(numpy_helper.from_array(
                    np.ascontiguousarray(numpy_helper.to_array(w).T), transposed[weight]))
            weight = transposed[weight]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        product = f"{node.output[0]}_matmul" if bias else node.output[0]
        matmul = helper.make_node("MatMul", [node.input[0], weight], [product], name=node.name)
        matmul.metadata_props.extend(node.metadata_props)
        nodes.append(matmul)
        if bias:
            add = helper.make_node("Sum", [product, bias], [node.output[0]], name=f"{node.name}/bias")
            add.metadata_props.extend(node.metadata_props)
            nodes.append(add)
        count += 1
    if count:
        g.ClearField("node")
        g.node.extend(nodes)
        used = {i for n in g.node for i in n.input}
        for t in [t for t in g.initializer if t.name in transposed and t.name not in used]:
            g.initializer.remove(t)  # a weight only the rewritten Gemms read: its transposed copy replaces it
    return count


@contextlib.contextmanager
def _tolerant_abs_histograms() -> Iterator[None]:
    """Let ONNX Runtime's percentile calibration take nearly constant tensors.

    Its first histogram of ``|x|`` spans ``[min |x|, max |x|]`` of the first batch in the tensor's own float32;
    for a tensor whose values are all (nearly) equal — e.g. a softmax that is almost uniform over 256 keys,
    every value 1/256 ± 3e-7 — NumPy cannot make 2048 distinct float32 bin edges and raises "Too many bins
    for data range", failing the whole export. Such a tensor gets its first histogram over ``[0, max |x|]``
    (computed in float64) instead; every other tensor keeps ONNX Runtime's own binning.
    """
    from onnxruntime.quantization.calibrate import HistogramCollector

    original = HistogramCollector.collect_absolute_value

    def collect_absolute_value(self: Any, name_to_arr: dict[str, Any]) -> None:
        for tensor, arr in name_to_arr.items():
            try:
                original(self, {tensor: arr})
            except ValueError as exc:
                if "bins" not in str(exc) or tensor in self.histogram_dict:
                    raise
                data = np.asarray(arr).ravel()
                amax = float(np.nanmax(np.abs(data)))
                hist, edges = np.histogram(np.abs(data).astype(np.float64), bins=self.num_bins, range=(0.0, amax))
                self.histogram_dict[tensor] = (hist, edges.astype(data.dtype), np.nanmin(data), np.nanmax(data))

    HistogramCollector.collect_absolute_value = collect_absolute_value
    try:
        yield
    finally:
        HistogramCollector.collect_absolute_value = original


@contextlib.contextmanager
def _entropy_histograms() -> Iterator[None]:
    """Make ``quantize_static`` build its entropy calibrator with :data:`ENTROPY_BINS`."""
    import importlib

    from onnxruntime.quantization.calibrate import CalibrationMethod

    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")  # the module: the package's
    # ``quantize`` attribute is the function of that name

    original = ort_quantize.create_calibrator

    def create_calibrator(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("calibrate_method") == CalibrationMethod.Entropy:
            kwargs["extra_options"] = {**ENTROPY_BINS, **(kwargs.get("extra_options") or {})}
        return original(*args, **kwargs)

    ort_quantize.create_calibrator = create_calibrator
    try:
        yield
    finally:
        ort_quantize.create_calibrator = original


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    inputs: Sequence[np.ndarray],
    *,
    activations: str = "s8",
    per_channel: bool = True,
    exclude: Iterable[str] | None = None,
    use_cache: bool = True,
    progress: bool = True,
    quantize_outputs: bool = False,
    calibration: str = DEFAULT_CALIBRATION,
    extra_exclude: Iterable[str] = (),
) -> dict[str, Any]:
    """Static int8 QDQ quantization of an fp32 ONNX file with ONNX Runtime.

    Args:
        fp32_path: the fp32 ONNX (dynamic or static; an ONNX Runtime graph's Winograd convs are quantized as the
            plain convs they stand for, :func:`semask_deploy.export.winograd.plain_convs`).
        out_path: where to write the QDQ model (callers pass a temporary path and rename).
        inputs: calibration batches, each ``{input}`` array of the model's input dtype/layout.
        activations: ``"s8"`` (int8 symmetric, TensorRT-compatible) or ``"u8"`` (uint8 asymmetric, fastest
            in ONNX Runtime on x86 CPUs; TensorRT rejects uint8 Q/DQ).
        per_channel: per-output-channel weight scales.
        exclude: node names to keep in float; default: :func:`attention_roles` sensitive nodes.
        use_cache: reuse/store the calibration ranges in :func:`cache_dir` (ONNX Runtime >= 1.27; older
            versions calibrate every time).
        progress: show a calibration progress bar.
        quantize_outputs: also Q/DQ the MatMul outputs (ORT's default; a little faster, less accurate).
        calibration: activation ranges from ``"minmax"`` (the extremes seen), ``"percentile"`` (the
            99.999th percentile of |x| with s8 activations, the 0.0005 % tail of each side with u8; default:
            clips rare outliers) or ``"entropy"`` (KL-optimal clipping over a 2048-bin histogram).
        extra_exclude: node names kept in float on top of ``exclude`` (or of the default set).

    Returns:
        Settings and statistics for the sidecar (``activations``, ``weights``, ``calibration`` …).
    """
    onnx = require("onnx", "dev")
    require("onnxruntime", "dev")
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if activations not in INT8_ACTIVATIONS:
        raise ConfigError(f"int8 activations must be one of {', '.join(INT8_ACTIVATIONS)}, got {activations!r}")
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"int8 calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}")
    if not inputs:
        raise ExportError("int8 calibration needs at least one input")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    model_bytes = fp32_path.read_bytes()
    model = onnx.load_from_string(model_bytes)
    from semask_deploy.export.winograd import plain_convs

    plain_copy = None
    # an ONNX Runtime fp32 graph: quantize plain convs, not Winograd's transforms; Linear layers as MatMuls
    if plain_convs(model) + gemms_as_matmuls(model):
        model_bytes = model.SerializeToString()
        plain_copy = out_path.with_name(f".{out_path.stem}.{os.getpid()}.plain.onnx")
    roles = attention_roles(model)
    excluded = sorted((set(exclude) if exclude is not None
                       else roles.keep_fp32() | set(roles.final) | set(roles.classifier)) | set(extra_exclude))
    input_name = model.graph.input[0].name
    op_types = list(QUANTIZED_OPS)
    symmetric = activations == "s8"
    extra = {
        "ActivationSymmetric": symmetric,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        # MatMul outputs stay float: quantizing them would put the attention scores, the residual stream and
        # LayerNorm inputs through int8. Conv outputs (FPN head) are quantized: only then does ONNX Runtime
        # run the convs in int8 (QLinearConv; 4.5x faster than the fp32 conv it otherwise keeps).
        "OpTypesToExcludeOutputQuantization": ["MatMul"] if not quantize_outputs else [],
        "CalibTensorRangeSymmetric": symmetric,
        **CALIBRATIONS[calibration][1],
    }
    method_name = CALIBRATIONS[calibration][0]
    settings = {"activations": activations, "per_channel": per_channel, "op_types": op_types,
                "method": method_name, "extra": extra, "exclude": excluded}
    if calibration == "entropy":  # ranges cached before the entropy histogram had bins to search are not reused
        settings["histogram"] = ENTROPY_BINS
    key = calibration_key(model_bytes, inputs, {k: v for k, v in settings.items() if k != "activations"} |
                          {"symmetric": symmetric})
    # quantize_static takes a calibration cache from ONNX Runtime 1.27 on (which needs Python >= 3.11)
    import inspect

    cache_supported = "calibration_cache_path" in inspect.signature(quantize_static).parameters
    cache_file = cache_dir() / f"{key}.json" if use_cache and cache_supported else None
    cache_hit = bool(cache_file is not None and cache_file.is_file() and _readable_cache(cache_file))
    tmp_cache = None
    if cache_file is not None and not cache_hit:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the int8 calibration cache folder {cache_file.parent} "
                              f"({exc.strerror or exc}); set SEMASK_CACHE_DIR to a writable folder") from None
        tmp_cache = cache_file.with_name(f".{cache_file.stem}.{os.getpid()}.tmp.json")
    has_size = any(i.name == "output_size" for i in model.graph.input)
    reader = None if cache_hit else _Reader(input_name, inputs, progress, output_size=has_size)

    def quantize(cache_path: Path | None, calibration_reader: Any) -> None:
        # ORT prints its progress
        with _tolerant_abs_histograms(), _entropy_histograms(), contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(plain_copy or fp32_path), str(out_path), calibration_reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=per_channel,
                # 7-bit weights: x86 CPUs without VNNI multiply u8×s8 pairs into a saturating int16
                # (vpmaddubsw); full-range weights overflow it (SeMask demo on AVX2: labels 99.6 % equal, rel L2
                # 5e-2; with 7 bits 99.9 %, 6e-3). The artifact must be safe on every CPU it may be deployed to.
                reduce_range=True,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=getattr(CalibrationMethod, method_name),
                extra_options=extra,
                **({"calibration_cache_path": str(cache_path)} if cache_path is not None else {}),
            )

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs "consider pre-processing" warnings on the root logger
    try:
        if plain_copy is not None:
            plain_copy.write_bytes(model_bytes)
        try:
            quantize(cache_file if cache_hit else tmp_cache, reader)
        except Exception as exc:  # noqa: BLE001 - a cache that cannot be written must not fail the export
            failed_write = write_failure_text(exc)
            if tmp_cache is None or failed_write is None:
                raise
            warnings.warn(f"the int8 calibration cache cannot be written in {cache_file.parent} ({failed_write}): "
                          "calibrating again without it (set SEMASK_CACHE_DIR to a writable folder to reuse "
                          "ranges between exports)", SemaskWarning, stacklevel=2)
            tmp_cache.unlink(missing_ok=True)
            if reader.bar is not None:
                reader.bar.close()
            reader = _Reader(input_name, inputs, progress, output_size=has_size)
            quantize(None, reader)
            tmp_cache = None
        if tmp_cache is not None and tmp_cache.is_file():
            os.replace(tmp_cache, cache_file)
    except (ConfigError, ExportError):
        raise
    except Exception as exc:  # noqa: BLE001 - ORT raises many types
        reason = write_failure_text(exc) or (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise ExportError(f"int8 quantization failed: {reason}") from exc
    finally:
        root.setLevel(level)
        if tmp_cache is not None and tmp_cache.exists():
            tmp_cache.unlink()
        if plain_copy is not None:
            plain_copy.unlink(missing_ok=True)
        if reader is not None and reader.bar is not None:
            reader.bar.close()
    quantized = onnx.load(str(out_path), load_external_data=False)
    qdq = sum(1 for n in quantized.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    return {
        "method": f"onnxruntime.quantization.quantize_static (QDQ, {method_name})",
        "calibration": calibration + (f" {CALIBRATIONS[calibration][1]['CalibPercentile']}"
                                      if calibration == "percentile" else ""),
        "activations": "int8 symmetric" if symmetric else "uint8 asymmetric",
        "weights": "int8 symmetric " + ("per-channel" if per_channel else "per-tensor") + ", 7-bit range",
        "op_types_quantized": op_types,
        "excluded_nodes": len(excluded),
        "qdq_nodes": qdq,
        "calibration_samples": len(inputs),
        "calibration_cache": str(cache_file) if cache_file is not None else None,
        "calibration_cache_hit": cache_hit,
        "roles": roles.summary(),
        "float_layers": float_layers(quantized, roles),
    }


def _module_name(node: Any) -> str:
    """The PyTorch module a node came from (the exporter's innermost module scope), else the node name."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = json.loads(p.value)
            except ValueError:
                scopes = p.value.strip("[]").replace("'", "").split(", ")
            scopes = [str(x) for x in scopes if x]
            if len(scopes) >= 2:  # [..., module path, aten op name]
                path = scopes[-2]
                return path[len("model."):] if path.startswith("model.") else path
    return node.name


def float_layers(quantized: Any, roles: AttentionRoles | None = None) -> list[dict[str, str]]:
    """Conv/MatMul/Gemm nodes of a Q/DQ model that still compute in float (their second operand — the weight,
    or k for an attention q·kᵀ — is not dequantized int8).

    Returns:
        One ``{"node", "op", "module", "role", "input_fake_quantized"}`` per such node;
        ``input_fake_quantized`` says that its activation input arrives through a Q/DQ pair (a tensor it
        shares with a quantized consumer), so it computes in float on int8-rounded values; ``role`` is ``classifier``,
        ``semantic scores`` (q/k projections, q·kᵀ, softmax·v of the semantic attention),
        ``window scores`` or ``other``.
    """
    producer = {o: n for n in quantized.graph.node for o in n.output}
    island = set(roles.semantic_islands) if roles else set()
    out = []
    for n in quantized.graph.node:
        if n.op_type not in COMPUTE_OPS:
            continue
        def dq(name: str) -> bool:
            return producer.get(name) is not None and producer[name].op_type == "DequantizeLinear"

        if len(n.input) > 1 and dq(n.input[1]):
            continue
        role = "other"
        if roles is not None:
            if n.name in roles.classifier:
                role = "classifier"
            elif n.name in island or n.name in roles.semantic_scores:
                role = "semantic scores"
            elif n.name in roles.window_scores:
                role = "window scores"
        out.append({"node": n.name, "op": n.op_type, "module": _module_name(n), "role": role,
                    "input_fake_quantized": dq(n.input[0])})
    return out
