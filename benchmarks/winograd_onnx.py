"""Our ONNX with the head's 3×3 convs as Winograd F(4×4, 3×3) (``export.winograd``) vs as exported vs naive.

SeMask-T ADE20K (random weights: latency does not depend on them), one 512×512 image, fp32. Rows: the naive
export of the reference model (``cpu_deploy._naive_export``: static, logits out), our default graph (dynamic,
``output_size`` fed the input size) and the same graph after :func:`semask_deploy.export.winograd.winograd_convs`,
on ONNX Runtime (our channels-last labels head) and OpenVINO f32 (the NCHW head it runs). All sessions live in
one process and are timed interleaved, rotating the order; ratios are p50 / p50 of this run.

    python -m semask_deploy.benchmarks.winograd_onnx --out benchmarks/results/cpu-avx2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _exports(work: Path, log: Callable[[str], None]) -> dict[str, Path]:
    import onnx
    import torch

    from semask_deploy.api import build_model
    from semask_deploy.config import VARIANTS
    from semask_deploy.export.onnx import export_onnx
    from semask_deploy.export.winograd import winograd_convs

    from .cpu_deploy import _naive_export

    paths = {k: work / f"{k}.onnx" for k in ("naive", "ours", "ours_nchw", "ours_winograd", "ours_nchw_winograd")}
    if not all(paths[k].is_file() for k in ("naive", "ours", "ours_nchw")):
        torch.manual_seed(0)
        eager = build_model(VARIANTS["semask_swin_t_ade20k"], attention_backend="eager").eval()
        for p in eager.parameters():
            p.data.normal_(0, 0.02)
        fast = build_model(VARIANTS["semask_swin_t_ade20k"], attention_backend="sdpa").eval()
        fast.load_state_dict(eager.state_dict())
        t0 = time.perf_counter()
        _naive_export(eager, (512, 512), paths["naive"])
        export_onnx(fast, paths["ours"], output_size=True)
        export_onnx(fast, paths["ours_nchw"], labels_head="nchw", output_size=True)
        log(f"exports in {time.perf_counter() - t0:.0f} s")
    for src in ("ours", "ours_nchw"):
        proto = onnx.load(str(paths[src]))
        log(f"{src}: {winograd_convs(proto)} convs rewritten")
        onnx.save(proto, str(paths[src + "_winograd"]))
    return paths


def run(work: Path, threads: list[int], runs: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    from semask_deploy.runtime.openvino_backend import _compile, _model_source, shared_core

    from .cpu_deploy import _feed, _ort
    from .harness import time_interleaved

    paths = _exports(work, log)
    x = np.random.default_rng(0).standard_normal((1, 3, 512, 512), dtype=np.float32)
    rows: list[dict[str, Any]] = []
    for nt in threads:
        fns: dict[str, Callable[[], Any]] = {}
        labels: dict[str, np.ndarray] = {}
        for name in ("naive", "ours", "ours_winograd"):
            sess = _ort(paths[name], nt)
            feed = _feed(x, [i.name for i in sess.get_inputs()])
            fns[f"ORT {name}"] = (lambda s, f: (lambda: s.run(None, f)))(sess, feed)
            if name != "naive":
                labels[f"ORT {name}"] = sess.run(None, feed)[0]
        core = shared_core()
        for name in ("naive", "ours_nchw", "ours_nchw_winograd"):
            model = core.read_model(_model_source(paths[name]))
            req = _compile(core, model, "f32", nt, name).create_infer_request()
            feed = _feed(x, [p.get_any_name() for p in model.inputs])
            fns[f"OpenVINO f32 {name}"] = (lambda r, f: (lambda: r.infer(f)))(req, feed)
            if name != "naive":
                labels[f"OpenVINO f32 {name}"] = next(iter(req.infer(feed).values())).copy()
        names = list(fns)
        stats = time_interleaved(fns, runs=runs, warmup=1)
        p50 = {n: stats[n].p50 for n in names}
        for name in names:
            runtime = "ORT" if name.startswith("ORT") else "OpenVINO f32"
            base = f"{runtime} {'ours' if runtime == 'ORT' else 'ours_nchw'}"
            row = {"threads": nt, "row": name, "p50_ms": p50[name], "min_ms": stats[name].min,
                   "vs_naive": p50[f"{runtime} naive"] / p50[name], "vs_ours": p50[base] / p50[name]}
            if name in labels and name != base:
                row["labels_equal_ours"] = float((labels[name] == labels[base]).mean())
            rows.append(row)
        log(f"{nt} thread(s): " + ", ".join(f"{n} {p50[n]:.0f} ms" for n in names))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for winograd_onnx.{json,md}")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--work", type=Path, default=None, help="folder for the exports (reused when present)")
    args = p.parse_args()
    import onnxruntime
    import openvino
    import torch

    from semask_deploy.fileio import write_json_atomic, write_text_atomic
    from semask_deploy.runtime.cpu_info import cpu_summary, isa_text

    work = args.work or Path(tempfile.mkdtemp(prefix="semask_winograd_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = run(work, [int(t) for t in args.threads.split(",")], args.runs, lambda m: print(m, flush=True))
    cpu = cpu_summary()
    versions = (f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
                f"openvino {openvino.get_version().split('-')[0]}")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "winograd_onnx.json", {"cpu": cpu, "versions": versions, "rows": rows})
    lines = ["# Winograd F(4×4, 3×3) for the head's 3×3 convs in our ONNX — SeMask-T, 512×512, fp32", "",
             f"CPU: {cpu['model']}, {cpu['logical_cpus']} logical CPUs; ISA: {isa_text()}. {versions}. "
             f"{args.runs} interleaved runs after one warm-up, one process.", "",
             "| threads | graph | p50 ms | min ms | vs naive | vs ours as exported | labels = ours |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        eq = f"{100 * r['labels_equal_ours']:.2f} %" if "labels_equal_ours" in r else ""
        lines.append(f"| {r['threads']} | {r['row']} | {r['p50_ms']:.0f} | {r['min_ms']:.0f} | {r['vs_naive']:.2f}× "
                     f"| {r['vs_ours']:.2f}× | {eq} |")
    lines += ["", "naive = the reference model exported with `torch.onnx.export(..., dynamo=True)`, static 512×512, "
              "logits out (no argmax); ours = `semask-export`'s dynamic graph, labels out, `output_size` fed."]
    write_text_atomic(args.out / "winograd_onnx.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
