"""Where ONNX Runtime spends the time of our fp32 graph and of the naive export: per op type, and the GEMMs' speed.

    python -m semask_deploy.benchmarks.ort_profile --out benchmarks/results/cpu-avx2 --work /tmp/cd

Issue 11 asks for our fp32 ONNX at ≥ 1.2× the naive export (``torch.onnx.export(eager, dynamo=True)``) on ONNX
Runtime. Both graphs do nearly the same multiply-adds, so the question is where the rest of the time goes.
For each graph and thread count this runs ONNX Runtime's own profiler over a few 512×512 calls (after
warm-up), takes the median per op type over the calls, and splits the time into

* **matrix products**: Gemm, MatMul, FusedMatMul, FusedGemm, Conv, FusedConv (and NCHWc convs), with the
  achieved GFLOP/s of the Gemm/MatMul family (multiply-adds from the profiler's input/output shapes) next to
  a large square ``torch.mm`` timed in the same run (a reference for the CPU's fp32 speed at that thread
  count, not a hard peak: ONNX Runtime's own GEMMs can beat it);
* **everything else** (layout, resize, normalisation, activation, argmax, …).

The report ends with the arithmetic of the goal: with our matrix products as they are, how small our "other"
time would have to be for 1.2×. Same graphs as :mod:`.cpu_deploy` (its ``--work`` folder is reused).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from semask_deploy.benchmarks.profile_common import (
    WorkDir, goal_sentence, largest, profile_parser, profiled_graphs, result_header, summary_table, write_report,
)

#: ONNX Runtime kernels that are matrix products (after its fusions and the NCHWc layout transform)
MATRIX_OPS = ("Gemm", "MatMul", "FusedMatMul", "FusedGemm", "Conv", "FusedConv", "MatMulIntegerToFloat",
              "QLinearConv", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul")
#: of those, the ones whose multiply-adds follow from activation shapes alone: out elements × A's last dim
GEMM_OPS = ("Gemm", "MatMul", "FusedMatMul", "FusedGemm")


def profiled_session(path: Path, threads: int, prefix: Path) -> Any:
    """A CPU session as :func:`semask_deploy.export.verify.make_session` makes it, with ONNX Runtime's profiler on."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.enable_profiling = True
    opts.profile_file_prefix = str(prefix)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def read_profile(sess: Any, warmup: int) -> dict[str, Any]:
    """From a profiled session's calls after the first ``warmup``: the median per op type (ms), the calls'
    median wall time and the Gemm/MatMul multiply-adds per call."""
    events = json.loads(Path(sess.end_profiling()).read_text())
    calls = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[warmup:]
    per_call = [Counter() for _ in calls]
    gemm_macs = [0.0 for _ in calls]
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        i = next((k for k, (a, b) in enumerate(calls) if a <= e["ts"] <= b), None)
        if i is None:
            continue
        op = e["args"]["op_name"]
        per_call[i][op] += e["dur"] / 1e3
        if op in GEMM_OPS:
            gemm_macs[i] += _gemm_macs(e["args"])
    ops = set().union(*per_call)
    return {"wall_ms": statistics.median((b - a) / 1e3 for a, b in calls),
            "op_ms": {op: statistics.median(c[op] for c in per_call) for op in ops},
            "gemm_macs": statistics.median(gemm_macs)}


def _gemm_macs(args: dict[str, Any]) -> float:
    """Multiply-adds of a Gemm/MatMul from the profiler's shapes: output elements × the inner dimension (the
    first input's last dimension; weights, being initializers, are not listed)."""
    ins = [next(iter(d.values())) for d in args.get("input_type_shape", [])]
    outs = [next(iter(d.values())) for d in args.get("output_type_shape", [])]
    if not ins or not outs:
        return 0.0
    return float(np.prod(outs[0])) * float(ins[0][-1])


def _peak_gflops(threads: int) -> float:
    import torch

    from semask_deploy.benchmarks.harness import measure_device_peak

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return measure_device_peak("cpu", repeats=5)["fp32"] * 1e3
    finally:
        torch.set_num_threads(before)


def summarize(p: dict[str, Any]) -> dict[str, float]:
    """Matrix-product and other milliseconds of one profile, and the Gemm/MatMul GFLOP/s."""
    matrix = sum(ms for op, ms in p["op_ms"].items() if op in MATRIX_OPS)
    gemm = sum(ms for op, ms in p["op_ms"].items() if op in GEMM_OPS)
    return {"wall_ms": p["wall_ms"], "matrix_ms": matrix, "other_ms": p["wall_ms"] - matrix,
            "gemm_ms": gemm, "gemm_gflops": 2 * p["gemm_macs"] / gemm / 1e6 if gemm else float("nan")}


def to_markdown(r: dict[str, Any]) -> str:
    from semask_deploy.runtime.cpu_info import isa_text

    lines = [f"# Where ONNX Runtime spends the time — {r['variant']} at {r['size'][0]}×{r['size'][1]}", "",
             f"CPU: {r['cpu']}, ISA: {r.get('isa') or isa_text()}; onnxruntime {r['onnxruntime']}. ONNX Runtime's "
             f"profiler, median over {r['runs']} calls per graph after {r['warmup']} warm-up, the graphs' calls "
             "interleaved one by one; 'other' = wall time of "
             "the call − matrix products (so it includes the executor's own overhead).", ""]
    for t in r["threads"]:
        ours, naive = r["profiles"][str(t)]["ours"], r["profiles"][str(t)]["naive"]
        so, sn = summarize(ours), summarize(naive)
        peak = r["peak_gflops"][str(t)]
        speed = (f"| Gemm/MatMul speed | {sn['gemm_gflops']:.0f} GFLOP/s ({sn['gemm_gflops'] / peak * 100:.0f} % of "
                 f"torch.mm) | {so['gemm_gflops']:.0f} GFLOP/s ({so['gemm_gflops'] / peak * 100:.0f} % of torch.mm) |")
        lines += [f"## {t} thread{'s' if t > 1 else ''}", "",
                  *summary_table(sn, so, "Gemm, MatMul, Conv, fused forms", speed),
                  f"Reference: a 2048² fp32 `torch.mm` at {t} thread(s), {peak:.0f} GFLOP/s. " + goal_sentence(sn, so),
                  "",
                  "| op type | naive ms | ours ms |", "|---|---:|---:|"]
        for op, a, b in largest(naive["op_ms"], ours["op_ms"]):
            lines.append(f"| {op}{' (matrix)' if op in MATRIX_OPS else ''} | {a:.1f} | {b:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    args = profile_parser(__doc__, "ort_profile").parse_args()
    import onnxruntime

    from semask_deploy.benchmarks.cpu_deploy import _feed

    work = WorkDir(args.work, "semask-ort-profile-")
    g = profiled_graphs(args.variant, args.size, work.path)  # the same random weights as cpu_deploy
    x = g.scenes[3]
    r = {**result_header(args, g, "onnxruntime", onnxruntime.__version__), "peak_gflops": {}}
    graphs = {"naive": g.naive, "ours": g.ours["ours"]}
    with tempfile.TemporaryDirectory(prefix="semask-ort-prof-") as traces:
        for t in r["threads"]:
            r["peak_gflops"][str(t)] = _peak_gflops(t)
            t0 = time.perf_counter()
            sessions = {n: profiled_session(p, t, Path(traces) / f"{n}_{t}") for n, p in graphs.items()}
            feeds = {n: _feed(x, [i.name for i in s.get_inputs()]) for n, s in sessions.items()}
            for _ in range(args.warmup + args.runs):  # interleaved, call by call: load hits both alike
                for n, s in sessions.items():
                    s.run(None, feeds[n])
            r["profiles"][str(t)] = {n: read_profile(s, args.warmup) for n, s in sessions.items()}
            print(f"{t} thread(s): " + ", ".join(f"{n} {p['wall_ms']:.0f} ms" for n, p in r["profiles"][str(t)].items())
                  + f" (profiled in {time.perf_counter() - t0:.0f} s)", flush=True)
    write_report(args.out, "ort_profile", r, to_markdown(r))
    work.cleanup()


if __name__ == "__main__":
    main()
