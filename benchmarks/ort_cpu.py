"""ONNX Runtime (CPU) vs PyTorch latency of SeMask-T at 512×512 — the export issue's CPU goals.

SeMask-T (ADE20K, 150 classes; random weights — latency does not depend on them), one 512×512 image,
2 threads everywhere. Every backend is timed on the same call, normalised image → int32 labels (N, H, W)
(``model.predict`` for PyTorch; the exported graph, which resizes the logits and takes the argmax
itself, for ONNX Runtime). After warm-up the backends are timed interleaved, run by run, in ONE
process, so machine load hits all alike; ratios are p50(torch eager) / p50(backend) of this run.

Backends: ``torch eager`` (the reference math), ``torch sdpa`` (the default PyTorch path), and ONNX
Runtime on the exported graphs: fp32 (dynamic N/H/W, the default export), the same with the labels
computed as traced (NCHW resize + argmax), fp32 exported ``--static 512x512``, mixed fp16, int8 Q/DQ with
symmetric int8 activations (``s8``, the default: TensorRT-compatible), with uint8 activations (``u8``,
``--int8-activations u8``) and with the MatMul outputs quantized too (``+outq``, ORT's default), and the
fp32 graph at ONNX Runtime's basic optimisation level.

    python -m semask_deploy.benchmarks.ort_cpu --out benchmarks/results/cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

GOALS = {"onnxruntime fp32": 1.8, "onnxruntime int8": 3.0}


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _session(path: Path, threads: int, level: str = "all") -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def build_artifacts(work: Path, size: int, variant: str, log: Callable[[str], None],
                    reuse: bool = False) -> tuple[Any, dict[str, Any]]:
    """The torch model and every exported ONNX: {name: {"path", "seconds", "info"}}.

    With ``reuse`` the ONNX files of an earlier run in ``work`` (same seed, so the same weights) are reused.
    """
    import onnx
    import torch
    from semask_deploy.export.onnx import clean_graph, export_onnx, nhwc_labels_head
    from semask_deploy.export.int8 import quantize_int8
    from semask_deploy.export.precision import convert_fp16

    from semask_deploy.api import build_model
    from semask_deploy.config import VARIANTS
    from semask_deploy.data.synthetic import SyntheticScenes
    from semask_deploy.data.transforms import normalize

    torch.manual_seed(0)
    model = build_model(VARIANTS[variant], attention_backend="eager").eval()
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    arts: dict[str, Any] = {}
    saved = work / "artifacts.json"
    if reuse and saved.is_file():
        arts = json.loads(saved.read_text())
        for art in arts.values():
            art["path"] = Path(art["path"])
        if all(a["path"].is_file() for a in arts.values()):
            log(f"reusing the ONNX files in {work}")
            return model, arts
        arts = {}
    t0 = time.perf_counter()
    info = export_onnx(model, work / "fp32_nchw.onnx", labels_head="nchw")
    seconds = time.perf_counter() - t0
    arts["onnxruntime fp32 (NCHW labels head)"] = {
        "path": work / "fp32_nchw.onnx", "seconds": seconds,
        "info": {"nodes": info.num_nodes, "dynamic": info.dynamic, "opset": info.opset, "labels_head": "nchw"}}
    log(f"exported fp32 (dynamic) in {seconds:.0f} s, {info.num_nodes} nodes")
    proto = onnx.load(str(work / "fp32_nchw.onnx"))
    nhwc_labels_head(proto)  # what export_onnx(labels_head="nhwc"), the default, does
    proto, _ = clean_graph(proto)
    onnx.save(proto, str(work / "fp32.onnx"))
    arts["onnxruntime fp32"] = {"path": work / "fp32.onnx", "seconds": seconds,
                                "info": {"nodes": len(proto.graph.node), "dynamic": info.dynamic, "opset": info.opset,
                                         "labels_head": "nhwc"}}
    t0 = time.perf_counter()
    info_s = export_onnx(model, work / "fp32_static.onnx", static_hw=(size, size), static_batch=1)
    arts["onnxruntime fp32 static"] = {"path": work / "fp32_static.onnx", "seconds": time.perf_counter() - t0,
                                       "info": {"nodes": info_s.num_nodes, "dynamic": info_s.dynamic}}
    log(f"exported fp32 (static {size}x{size}) in {arts['onnxruntime fp32 static']['seconds']:.0f} s")
    t0 = time.perf_counter()
    onnx.save(convert_fp16(onnx.load(str(work / "fp32.onnx"))), str(work / "fp16.onnx"))
    arts["onnxruntime fp16"] = {"path": work / "fp16.onnx", "seconds": time.perf_counter() - t0, "info": {}}
    scenes = SyntheticScenes(num_classes=150, size=(size, size), seed=0, length=8)
    calib = [normalize(scenes[i][0])[None] for i in range(8)]
    for act, outq in (("s8", False), ("u8", False), ("s8", True)):
        name = f"onnxruntime int8 {act}" + (" +outq" if outq else "")
        path = work / f"int8_{act}{'_outq' if outq else ''}.onnx"
        t0 = time.perf_counter()
        q = quantize_int8(work / "fp32.onnx", path, calib, activations=act, quantize_outputs=outq,
                          use_cache=False, progress=False)
        arts[name] = {"path": path, "seconds": time.perf_counter() - t0,
                      "info": {k: q[k] for k in ("activations", "weights", "qdq_nodes", "calibration_samples")}}
        log(f"quantized {name} in {arts[name]['seconds']:.0f} s")
    saved.write_text(json.dumps({k: {**v, "path": str(v["path"])} for k, v in arts.items()}))
    return model, arts


def run(size: int = 512, runs: int = 12, warmup: int = 3, threads: int = 2, variant: str = "semask_swin_t_ade20k",
        work: Path | None = None, log: Callable[[str], None] = print, reuse: bool = False) -> dict[str, Any]:
    """Export, then time every backend; returns a JSON-ready dict."""
    import torch

    from semask_deploy.data.synthetic import SyntheticScenes
    from semask_deploy.data.transforms import normalize

    torch.set_num_threads(threads)
    load_start = os.getloadavg()
    tmp = None
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="semask-ort-bench-")
        work = Path(tmp.name)
    model, arts = build_artifacts(work, size, variant, log, reuse=reuse)
    eager = model
    sdpa = type(model)(model.config, attention_backend="sdpa").eval()
    sdpa.load_state_dict(model.state_dict())
    x = normalize(SyntheticScenes(num_classes=150, size=(size, size), seed=3, length=1)[0][0])[None]
    xt = torch.from_numpy(x)
    fns: dict[str, Callable[[], np.ndarray]] = {}

    def torch_fn(m: Any) -> Callable[[], np.ndarray]:
        def call() -> np.ndarray:
            with torch.inference_mode():
                return m.predict(xt).numpy()
        return call

    fns["torch eager fp32"] = torch_fn(eager)
    fns["torch sdpa fp32"] = torch_fn(sdpa)
    def ort_fn(sess: Any) -> Callable[[], np.ndarray]:
        return lambda: sess.run(["labels"], {"image": x})[0]

    for name, art in arts.items():
        fns[name] = ort_fn(_session(art["path"], threads))
    for level in ("basic",):  # tuning note: graph optimisation level, fp32 dynamic graph
        sess = _session(arts["onnxruntime fp32"]["path"], threads, level)
        fns[f"onnxruntime fp32 (opt level {level})"] = ort_fn(sess)
    ref = fns["torch eager fp32"]()
    first: dict[str, float] = {}
    agree: dict[str, float] = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        out = fn()
        first[name] = time.perf_counter() - t0
        agree[name] = float((out.astype(np.int64) == ref).mean())
        for _ in range(warmup - 1):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(runs):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate so no backend always runs first
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["torch eager fp32"])
    results = {}
    for name in names:
        p50 = statistics.median(times[name])
        results[name] = {
            "p50_ms": p50 * 1e3, "p90_ms": _percentile(times[name], 90) * 1e3, "min_ms": min(times[name]) * 1e3,
            "first_call_ms": first[name] * 1e3, "speedup_vs_eager": base / p50, "label_agreement_vs_eager": agree[name],
            "runs_ms": [t * 1e3 for t in times[name]],
            "artifact": {k: v for k, v in arts.get(name, {}).items() if k != "path"},
        }
    if tmp is not None:
        tmp.cleanup()
    import onnxruntime

    return {
        "variant": variant, "input": [1, 3, size, size], "weights": "random N(0, 0.02) (latency only)",
        "timed_call": "normalised image → int32 labels (N, H, W); torch: model.predict; ORT: the exported graph",
        "threads": threads, "runs": runs, "warmup": warmup,
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "goals": GOALS, "results": results,
    }


def to_markdown(r: dict[str, Any]) -> str:
    res = r["results"]
    load0 = tuple(round(v, 2) for v in r["load_average_start"])
    load1 = tuple(round(v, 2) for v in r["load_average_end"])
    title = (f"# ONNX Runtime CPU vs PyTorch — {r['variant']}, {r['input'][2]}×{r['input'][3]}, batch 1, "
             f"{r['threads']} threads")
    setup = (f"Timed call: {r['timed_call']}. {r['runs']} interleaved runs after {r['warmup']} warm-up calls, one "
             f"process; ratios vs torch eager p50 of the same run. torch {r['torch']}, onnxruntime {r['onnxruntime']}, "
             f"{r['cpu_count']} CPUs ({r['cpu']}); load average at start {load0}, at end {load1} (other work shares "
             "these cores).")
    lines = [title, "", setup, "", "| backend | p50 ms | p90 ms | best ms | vs torch eager (p50) | labels = eager |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, v in res.items():
        lines.append(f"| {name} | {v['p50_ms']:.0f} | {v['p90_ms']:.0f} | {v['min_ms']:.0f} | "
                     f"{v['speedup_vs_eager']:.2f}× | {v['label_agreement_vs_eager'] * 100:.2f} % |")
    fp32 = res["onnxruntime fp32"]["speedup_vs_eager"]
    int8 = max(v["speedup_vs_eager"] for k, v in res.items() if k.startswith("onnxruntime int8"))
    int8_default = res["onnxruntime int8 s8"]["speedup_vs_eager"]
    g32, g8 = GOALS["onnxruntime fp32"], GOALS["onnxruntime int8"]
    goals = (f"Goals (export issue): ORT fp32 ≥ {g32}× → measured {fp32:.2f}× ({'met' if fp32 >= g32 else 'NOT met'}); "
             f"ORT int8 ≥ {g8}× → default int8 (s8) {int8_default:.2f}×, best int8 variant {int8:.2f}× "
             f"({'met' if int8 >= g8 else 'NOT met'}).")
    notes = [
        ("- `int8 s8` is the default export (`--precision int8`): symmetric int8 activations (TensorRT needs them), "
         "weights int8 per channel; Conv/MatMul inputs and Conv outputs quantized (so ONNX Runtime runs the FPN-head "
         "convs as QLinearConv), MatMul outputs left float (quantizing them, `+outq`, would send attention scores, "
         "the residual stream and LayerNorm inputs through int8); LayerNorm, Softmax, the semantic-attention score "
         "islands and the classifier conv stay float. `u8` = `--int8-activations u8` (uint8 asymmetric "
         "activations, ONNX Runtime's preferred x86 kind; TensorRT rejects it)."),
        ("- `NCHW labels head` = the graph as traced: argmax over the channel axis of the full-resolution NCHW "
         "logits. The default export computes the labels from a channels-last resize and an argmax over the "
         "contiguous class axis (identical labels, ~100 ms less per image here)."),
        ("- `fp16` is the mixed-precision graph (LayerNorm, Softmax and the semantic-attention scores in fp32): this "
         "CPU has no fp16 arithmetic and ONNX Runtime runs fp32 kernels between casts; the fp16 graph is for GPUs."),
        "- `fp32 static` is the same model exported with `--static 512x512` (shape arithmetic folded away).",
        ("- `opt level basic`: the default fp32 graph at ONNX Runtime's basic graph optimisation level (the "
         "exporter's sessions use `ORT_ENABLE_ALL`)."),
        ("- Random weights make labels near-ties everywhere, so the label agreement column only shows that every "
         "backend ran the same model; accuracy is verified on trained/golden models by the export tests."),
    ]
    lines += ["", goals, "", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu"))
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--runs", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=None, help="keep the exported ONNX files here")
    p.add_argument("--reuse", action="store_true", help="reuse the ONNX files of an earlier run in --work")
    args = p.parse_args()
    from semask_deploy.fileio import write_json_atomic, write_text_atomic

    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    r = run(args.size, args.runs, args.warmup, args.threads, work=args.work, reuse=args.reuse,
            log=lambda s: print(s, flush=True))
    write_json_atomic(args.out / "ort_cpu.json", r)
    write_text_atomic(args.out / "ort_cpu.md", to_markdown(r))
    print(to_markdown(r))


if __name__ == "__main__":
    main()
