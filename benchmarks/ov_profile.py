"""Where OpenVINO spends the time of our fp32 graph and of the naive export: its per-layer counters.

    python -m semask_deploy.benchmarks.ov_profile --out benchmarks/results/cpu --work /tmp/cd

The OpenVINO half of :mod:`.ort_profile`. Issue 11 asks for our fp32 graph at ≥ 1.2× the naive export
(``torch.onnx.export(eager, dynamo=True)``, static size) on OpenVINO as well. For each thread count this
compiles both graphs on the CPU plugin with an explicit f32 hint and ``PERF_COUNT`` on — ours the way the
OpenVINO backend runs it from a size's second image on (:func:`~semask_deploy.runtime.openvino_backend.specialize`:
static shapes, output size = input size, identity resizes bypassed), the naive one as exported — runs them
interleaved call by call, and takes the median per (layer type, kernel) over the calls of the executed
layers' real time. The time splits into

* **matrix products**: FullyConnected, Convolution, GroupConvolution, MatMul (and their int8 forms);
* **everything else** (reorders, transposes, resizes, normalisation, the labels head, …): the call's wall
  time − the matrix products, so it also holds the plugin's own overhead.

The report ends with the arithmetic of the goal, as :mod:`.ort_profile` does. Same graphs as
:mod:`.cpu_deploy` (its ``--work`` folder is reused).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from semask_deploy.benchmarks.profile_common import (
    WorkDir, goal_sentence, largest, profile_parser, profiled_graphs, result_header, summary_table, write_report,
)

#: OpenVINO CPU layer types that are matrix products
MATRIX_LAYERS = ("FullyConnected", "Convolution", "GroupConvolution", "MatMul", "Deconvolution")


def profiled_request(path: Path, threads: int, static_for: np.ndarray | None) -> tuple[Any, list[str]]:
    """(infer request with per-layer counters on, input names) of an ``.onnx``/``.xml`` compiled as the OpenVINO
    backend compiles it at f32; with ``static_for``, specialised to that input as the backend does from a size's
    second image on."""
    from semask_deploy.runtime.openvino_backend import _compile, inference_hint, read_model, specialize

    core, model = read_model(path)
    names = [p.get_any_name() for p in model.inputs]
    if static_for is not None:
        model = specialize(model, names[0], static_for.shape, static_for.shape[2:])
        names = names[:1]
    compiled = _compile(core, model, inference_hint("fp32"), threads, Path(path).name, {"PERF_COUNT": True})
    return compiled.create_infer_request(), names


def layer_times(request: Any) -> Counter:
    """Milliseconds per (layer type, kernel) of the request's last call, executed layers only."""
    per: Counter = Counter()
    for info in request.get_profiling_info():
        if info.status == info.Status.EXECUTED:
            per[(info.node_type, info.exec_type)] += info.real_time.total_seconds() * 1e3
    return per


def median_profile(walls: list[float], calls: list[Counter]) -> dict[str, Any]:
    """The calls' median wall time and the median per (layer type, kernel), as ``"type|kernel"`` keys."""
    keys = set().union(*calls)
    return {"wall_ms": statistics.median(walls),
            "layer_ms": {f"{t}|{k}": statistics.median(c.get((t, k), 0.0) for c in calls) for t, k in keys}}


def summarize(p: dict[str, Any]) -> dict[str, float]:
    """Matrix-product and other milliseconds of one profile."""
    matrix = sum(ms for key, ms in p["layer_ms"].items() if key.split("|")[0] in MATRIX_LAYERS)
    return {"wall_ms": p["wall_ms"], "matrix_ms": matrix, "other_ms": p["wall_ms"] - matrix}


def to_markdown(r: dict[str, Any]) -> str:
    lines = [f"# Where OpenVINO spends the time — {r['variant']} at {r['size'][0]}×{r['size'][1]}, f32", "",
             f"CPU: {r['cpu']}, ISA: {r['isa']}; openvino {r['openvino']}. The CPU plugin's per-layer counters "
             f"(`PERF_COUNT`), median over {r['runs']} calls per graph after {r['warmup']} warm-up, the graphs' "
             "calls interleaved one by one; ours with static shapes (what the OpenVINO backend runs from a size's "
             "second image on). 'other' = wall time of the call − matrix products.", ""]
    for t in r["threads"]:
        ours, naive = r["profiles"][str(t)]["ours"], r["profiles"][str(t)]["naive"]
        so, sn = summarize(ours), summarize(naive)
        lines += [f"## {t} thread{'s' if t > 1 else ''}", "", *summary_table(sn, so, ", ".join(MATRIX_LAYERS[:4])),
                  goal_sentence(sn, so), "",
                  "| layer type | kernel | naive ms | ours ms |", "|---|---|---:|---:|"]
        for key, a, b in largest(naive["layer_ms"], ours["layer_ms"]):
            layer, kernel = key.split("|", 1)
            lines.append(f"| {layer}{' (matrix)' if layer in MATRIX_LAYERS else ''} | {kernel} | {a:.1f} | {b:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    args = profile_parser(__doc__, "ov_profile").parse_args()
    import openvino

    work = WorkDir(args.work, "semask-ov-profile-")
    g = profiled_graphs(args.variant, args.size, work.path)  # the same random weights as cpu_deploy
    x = np.ascontiguousarray(g.scenes[3], dtype=np.float32)
    r = result_header(args, g, "openvino", openvino.get_version().split("-")[0])
    for t in r["threads"]:
        t0 = time.perf_counter()  # ours as the graph --fmt openvino converts, static as the backend runs it
        requests = {"naive": profiled_request(g.naive, t, None), "ours": profiled_request(g.ours["ours_nchw"], t, x)}
        walls: dict[str, list[float]] = {n: [] for n in requests}
        calls: dict[str, list[Counter]] = {n: [] for n in requests}
        for i in range(args.warmup + args.runs):  # interleaved, call by call: load hits both alike
            for n, (req, names) in requests.items():
                t1 = time.perf_counter()
                req.infer({names[0]: x})
                if i >= args.warmup:
                    walls[n].append((time.perf_counter() - t1) * 1e3)
                    calls[n].append(layer_times(req))
        r["profiles"][str(t)] = {n: median_profile(walls[n], calls[n]) for n in requests}
        print(f"{t} thread(s): " + ", ".join(f"{n} {p['wall_ms']:.0f} ms" for n, p in r["profiles"][str(t)].items())
              + f" (profiled in {time.perf_counter() - t0:.0f} s)", flush=True)
    write_report(args.out, "ov_profile", r, to_markdown(r))
    work.cleanup()


if __name__ == "__main__":
    main()
