"""Parity of an exported ONNX (run with ONNX Runtime on the CPU) against the PyTorch fp32 model.

After every export the ONNX runs at sizes other than the one it was traced/optimised for (odd sizes,
when the graph is dynamic) on realistic images — the calibration images when given, else synthetic
scenes — and is compared with the fp32 PyTorch model on the same normalised input:

* logits (the ``logits`` output, or for labels-only graphs the tensor the ArgMax reads, exposed for the
  check): max / mean absolute error and relative L2 error ``‖onnx − torch‖₂ / ‖torch‖₂``;
* labels: pixel agreement, and the mIoU of the ONNX labels measured against the PyTorch labels
  ("mIoU agreement", over the classes present in either).

Tolerances per precision (:data:`TOLERANCES`). Measured on the small trained test model and the built-in
demo model: fp32 rel. L2 ~5e-7 and 100 % equal labels; fp16 rel. L2 ~1e-4–5e-4, ≥ 99.98 % equal labels;
int8 rel. L2 ~1e-2, ≥ 99.9 % equal labels and ≥ 99.7 % mIoU agreement. The gates leave room for real
150-class models, whose labels have many near-ties:

=========  =======================  ================  ================
precision  logit rel. L2 error       label agreement   mIoU agreement
=========  =======================  ================  ================
fp32       ≤ 1e-4                    ≥ 99.9 %          —
fp16       ≤ 2e-2                    ≥ 99.0 %          ≥ 97 %
int8       — (reported)              ≥ 98.0 %          ≥ 95 %
=========  =======================  ================  ================

The reduced-precision gates are mainly on labels because that is what deployments consume (fp16 also bounds the
logit error, which catches overflow to inf/NaN that labels alone may hide); the logit errors are recorded in the
sidecar.

Score ties: where PyTorch's best two class scores are equal to within ``TIE_RTOL`` of the largest score
magnitude, the label is decided by rounding alone (PyTorch's own eager and sdpa paths differ there). A
model whose scores saturate — a Mask2Former with large weights, whose sigmoids reach exactly 1 — can have
such ties on a large share of the pixels. A different label at a tie is counted as equal (the PyTorch label
is taken to be the exported one there), and the report gives both numbers: "labels 96.512 % equal
(100.000 % counting score ties)". The gates use the latter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semask_deploy.errors import ExportError, require


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria against the torch fp32 reference (None: not checked)."""

    max_rel_l2: float | None
    min_label_agreement: float
    min_miou_agreement: float | None


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_rel_l2=1e-4, min_label_agreement=0.999, min_miou_agreement=None),
    "fp16": Tolerance(max_rel_l2=2e-2, min_label_agreement=0.99, min_miou_agreement=0.97),
    "int8": Tolerance(max_rel_l2=None, min_label_agreement=0.98, min_miou_agreement=0.95),
}


#: PyTorch scores within this fraction of their largest magnitude of the best score count as a tie
TIE_RTOL = 1e-5


def resolve_ties(labels: np.ndarray, ref_scores: np.ndarray) -> np.ndarray:
    """PyTorch's labels, with the exported ``labels`` taken where their class ties with PyTorch's best.

    Args:
        labels: int (N, H, W), the exported graph's labels.
        ref_scores: float (N, K, H, W), PyTorch's scores at the same size.

    Returns:
        int64 (N, H, W): the PyTorch argmax, or ``labels`` where the score of ``labels`` is within
        :data:`TIE_RTOL` · max |score| of the best score.
    """
    best = ref_scores.max(axis=1)
    picked = np.take_along_axis(ref_scores, labels.astype(np.int64)[:, None], axis=1)[:, 0]
    tol = TIE_RTOL * float(np.abs(ref_scores).max(initial=0.0))
    return np.where(best - picked <= tol, labels, ref_scores.argmax(axis=1)).astype(np.int64)


@dataclass
class VerifyCase:
    """Comparison at one input shape."""

    shape: list[int]
    max_abs: float | None
    mean_abs: float | None
    rel_l2: float | None
    label_agreement: float
    miou_agreement: float
    ok: bool
    seconds_onnx: float
    seconds_torch: float
    output_size: list[int] | None = None  # labels taken at this (Ho, Wo) through the output_size input
    labels_equal: float | None = None  # plain equality; label_agreement counts score ties as equal (module doc)


@dataclass
class VerifyResult:
    """All cases, the tolerance used and the verdict."""

    precision: str
    tolerance: Tolerance
    cases: list[VerifyCase] = field(default_factory=list)
    inputs: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.cases) and all(c.ok for c in self.cases)

    def format(self) -> str:
        lines = []
        for c in self.cases:
            logit = (f"max|Δlogit| {c.max_abs:.2e}, mean {c.mean_abs:.2e}, rel L2 {c.rel_l2:.2e}; "
                     if c.rel_l2 is not None else "")
            to = f" → labels at {c.output_size[0]}x{c.output_size[1]}" if c.output_size else ""
            equal = (f"labels {c.labels_equal * 100:.3f} % equal ({c.label_agreement * 100:.3f} % counting score "
                     f"ties)" if c.labels_equal is not None and c.labels_equal != c.label_agreement
                     else f"labels {c.label_agreement * 100:.3f} % equal")
            lines.append(f"  {'x'.join(map(str, c.shape))}{to}: {logit}{equal}, "
                         f"mIoU agreement {c.miou_agreement * 100:.2f} % — {'ok' if c.ok else 'FAIL'}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        t = self.tolerance
        return {
            "ok": self.ok,
            "precision": self.precision,
            "reference": "PyTorch fp32 (sdpa backend) on the same normalised input",
            "runtime": "onnxruntime CPUExecutionProvider",
            "inputs": self.inputs,
            "tolerance": {"max_logit_rel_l2": t.max_rel_l2, "min_label_agreement": t.min_label_agreement,
                          "min_miou_agreement": t.min_miou_agreement},
            "cases": [c.__dict__ for c in self.cases],
        }


def verify_sizes(opt_hw: tuple[int, int], min_hw: tuple[int, int], max_hw: tuple[int, int],
                 static: bool) -> list[tuple[int, int]]:
    """Two sizes other than the opt shape inside [min, max], odd where possible; the static size if static.

    Candidates: ~3/4 and ~5/8 of the opt size, then ~5/4 and opt + 7 (for ranges that start at opt).
    """
    if static:
        return [tuple(opt_hw)]

    def odd(v: float) -> int:
        v = int(v)
        return v if v % 2 else v + 1

    sizes: list[tuple[int, int]] = []
    for frac, add in ((0.75, 0), (0.625, 2), (1.25, 0), (1.0, 7), (1.0, -7)):
        cand = tuple(max(lo, min(hi, odd(o * frac + add))) for o, lo, hi in zip(opt_hw, min_hw, max_hw))
        if cand != tuple(opt_hw) and cand not in sizes:
            sizes.append(cand)  # type: ignore[arg-type]
        if len(sizes) == 2:
            break
    return sizes or [tuple(opt_hw)]


def _session_with_logits(path: str | Path) -> tuple[Any, str | None]:
    """A session that also returns the logits tensor in front of the ArgMax (labels-only graphs).

    Returns ``(session, name of the logits tensor or None)``; the name ends in ``@nhwc`` when the tensor is
    channels-last (the labels head of :func:`~semask_deploy.export.onnx.nhwc_labels_head`).
    """
    onnx = require("onnx", "dev")
    model = onnx.load(str(path))
    names = [o.name for o in model.graph.output]
    if "logits" in names:
        return make_session(path), "logits"
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get("labels")
    for _ in range(4):
        if node is None or node.op_type == "ArgMax":
            break
        node = producer.get(node.input[0])
    if node is None or node.op_type != "ArgMax" or model.ByteSize() > 1_900_000_000:
        return make_session(path), None
    tensor = node.input[0]
    inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    elem = next((v.type.tensor_type.elem_type for v in inferred.graph.value_info if v.name == tensor), 0)
    if not elem:
        return make_session(path), None
    model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, elem, None))
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return make_session(model.SerializeToString()), tensor + ("@nhwc" if axis in (3, -1) else "")


def make_session(path: str | Path | bytes, threads: int | None = None) -> Any:
    """A CPU ONNX Runtime session with full graph optimisation (from a path or serialized bytes)."""
    ort = require("onnxruntime", "dev")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 4  # FATAL only: a failure is reported once, as our error line
    try:
        return ort.InferenceSession(path if isinstance(path, bytes) else str(path), opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        what = "the model" if isinstance(path, bytes) else Path(path).name
        raise ExportError(f"ONNX Runtime cannot load {what}: {str(exc).splitlines()[0][:300]}") from exc


def verify_onnx(
    onnx_path: str | Path,
    model: Any,
    images: Sequence[np.ndarray],
    precision: str,
    *,
    preprocess: bool = False,
    batch: int = 1,
    inputs_desc: str = "",
    tolerance: Tolerance | None = None,
) -> VerifyResult:
    """Run ``onnx_path`` in ONNX Runtime and ``model`` in PyTorch fp32 on ``images``; compare.

    Args:
        onnx_path: the exported ONNX.
        model: the fp32 :class:`SeMaskSegmentor` (eval mode).
        images: uint8 (H, W, 3) RGB images, one case per image (batched ``batch`` times by repetition
            with a horizontal flip, when ``batch`` > 1).
        precision: selects the tolerance.
        preprocess: the graph takes ``image_uint8`` (N, H, W, 3).
        batch: batch size to run (static-batch graphs need theirs).
        inputs_desc: where the images came from (for the report).
        tolerance: override :data:`TOLERANCES`.

    Returns:
        :class:`VerifyResult` (``ok`` tells whether every case passed).
    """
    torch = require("torch", "dev")
    from semask_deploy.data.transforms import normalize
    from semask_deploy.metrics import label_agreement, miou_between

    tol = tolerance or TOLERANCES[precision]
    session, logits_name = _session_with_logits(onnx_path)
    out_names = [o.name for o in session.get_outputs()]
    input_names = [i.name for i in session.get_inputs()]
    input_name = next(n for n in input_names if n != "output_size")
    result = VerifyResult(precision=precision, tolerance=tol, inputs=inputs_desc)
    k = model.config.num_classes
    for img in images:
        rgb = np.stack([img if i % 2 == 0 else img[:, ::-1] for i in range(batch)])
        x = np.stack([normalize(np.ascontiguousarray(im)) for im in rgb])
        feed = np.ascontiguousarray(rgb) if preprocess else x
        t0 = time.perf_counter()
        try:
            feeds = {input_name: feed}
            if "output_size" in input_names:  # labels at the input size: the second resize is the identity
                feeds["output_size"] = np.asarray(x.shape[2:], dtype=np.int64)
            outs = dict(zip(out_names, session.run(None, feeds)))
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"ONNX Runtime failed on a {'x'.join(map(str, feed.shape))} input: "
                              f"{str(exc).splitlines()[0][:300]}") from exc
        t1 = time.perf_counter()
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).float()
        t2 = time.perf_counter()
        ref_labels = ref.argmax(1).numpy()
        labels = outs["labels"]
        max_abs = mean_abs = rel = None
        name, _, layout = (logits_name or "").partition("@")
        if name and name in outs:
            got = outs[name] if layout != "nhwc" else outs[name].transpose(0, 3, 1, 2)  # channels-last labels head
            diff = got.astype(np.float64) - ref.numpy().astype(np.float64)
            max_abs, mean_abs = float(np.abs(diff).max()), float(np.abs(diff).mean())
            rel = float(np.linalg.norm(diff) / max(np.linalg.norm(ref.numpy().astype(np.float64)), 1e-30))
        equal = label_agreement(labels, ref_labels)
        ref_labels = resolve_ties(labels, ref.numpy())
        agree = label_agreement(labels, ref_labels)
        miou = miou_between(labels, ref_labels, k)
        ok = agree >= tol.min_label_agreement
        if tol.min_miou_agreement is not None:
            ok = ok and (miou >= tol.min_miou_agreement or math.isnan(miou))
        if tol.max_rel_l2 is not None and rel is not None:
            ok = ok and rel <= tol.max_rel_l2
        result.cases.append(VerifyCase(list(feed.shape), max_abs, mean_abs, rel, agree, miou, ok,
                                       round(t1 - t0, 3), round(t2 - t1, 3), labels_equal=equal))
        if "output_size" in input_names:  # the official second resize, to another size (up in H, down in W)
            size = (x.shape[2] * 4 // 3 + 1, max(1, x.shape[3] * 3 // 4 + 1))
            t0 = time.perf_counter()
            got = session.run(["labels"], {input_name: feed, "output_size": np.asarray(size, np.int64)})[0]
            t1 = time.perf_counter()
            scores = torch.nn.functional.interpolate(ref, size=size, mode="bilinear", align_corners=False).numpy()
            equal = label_agreement(got, scores.argmax(1))
            want = resolve_ties(got, scores)
            agree = label_agreement(got, want)
            miou = miou_between(got, want, k)
            ok = agree >= tol.min_label_agreement and (tol.min_miou_agreement is None or math.isnan(miou)
                                                        or miou >= tol.min_miou_agreement)
            result.cases.append(VerifyCase(list(feed.shape), None, None, None, agree, miou, ok,
                                           round(t1 - t0, 3), 0.0, list(size), labels_equal=equal))
    return result
