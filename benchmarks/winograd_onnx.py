"""The 3×3 convs as Winograd F(4×4, 3×3) in our ONNX (``export.winograd``): per convolution and whole graphs.

**Per convolution** (ONNX Runtime, the only runtime ``semask-export`` applies the pass for): one
``Conv 3×3 + ReLU`` graph against the same conv after :func:`~semask_deploy.export.winograd.winograd_convs`,
for the head-conv shapes of SeMask-T/B/L at 512×512 (input channels 96–1536, maps 128² to 16²) and one small map.

**Whole graphs**: SeMask-T ADE20K (random weights: latency does not depend on them), one 512×512 image, fp32:
the naive export of the reference model (``cpu_deploy._naive_export``: static, logits out); ``ours`` = the fp32
ONNX Runtime graph ``semask-export`` writes (dynamic, Winograd convs, ``output_size`` fed the input size) and
``ours_plain`` = the same graph with plain convs; on OpenVINO f32, ``ours_nchw`` (the graph ``--fmt openvino``
converts, plain convs) and that graph with Winograd convs. All sessions of a table live in one process and
are timed interleaved, rotating the order; ratios are p50 / p50 of this run.

    python -m semask_deploy.benchmarks.winograd_onnx --out benchmarks/results/cpu-avx2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

#: (input channels, map size) of the Semantic-FPN head's 3×3 convs at 512×512 (T: 96–768, B: 128–1024,
#: L: 192–1536; every head conv has 256 outputs), and a map that is too small to pay
CONV_SHAPES = [(96, 128), (128, 128), (192, 128), (192, 64), (256, 64), (384, 32), (256, 32), (512, 32),
               (768, 16), (1024, 16), (1536, 16), (256, 16), (256, 8)]


def _conv_graph(w: np.ndarray, b: np.ndarray) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "conv3x3", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                               ["N", w.shape[1], "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def per_conv(threads: list[int], runs: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Direct vs Winograd for every shape of :data:`CONV_SHAPES`, timed interleaved."""
    from semask_deploy.export.verify import make_session
    from semask_deploy.export.winograd import winograd_convs

    from .harness import time_interleaved

    rng = np.random.default_rng(0)
    rows = []
    for cin, size in CONV_SHAPES:
        w = (rng.standard_normal((256, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32)
        b = rng.standard_normal(256).astype(np.float32)
        direct, rewritten = _conv_graph(w, b), _conv_graph(w, b)
        assert winograd_convs(rewritten, min_in_channels=1) == 1
        x = rng.standard_normal((1, cin, size, size), dtype=np.float32)
        for nt in threads:
            sd, sw = make_session(direct.SerializeToString(), nt), make_session(rewritten.SerializeToString(), nt)
            want, got = sd.run(None, {"x": x})[0], sw.run(None, {"x": x})[0]
            stats = time_interleaved({"direct": lambda: sd.run(None, {"x": x}),
                                      "winograd": lambda: sw.run(None, {"x": x})}, runs=runs, warmup=1)
            row = {"cin": cin, "size": size, "threads": nt, "direct_ms": stats["direct"].p50,
                   "winograd_ms": stats["winograd"].p50, "speedup": stats["direct"].p50 / stats["winograd"].p50,
                   "max_err_rel": float(np.abs(got - want).max() / np.abs(want).max())}
            rows.append(row)
            log(f"conv {cin}→256 at {size}², {nt} thread(s): {row['direct_ms']:.2f} → {row['winograd_ms']:.2f} ms "
                f"({row['speedup']:.2f}×), error {row['max_err_rel']:.1e}")
    return rows


def _exports(work: Path, log: Callable[[str], None]) -> dict[str, Path]:
    """The graphs; ``ours`` is ``ours_plain`` after the Winograd pass, which is what ``export_onnx(...,
    winograd=True)`` does (the pass runs last, after the clean-up)."""
    import onnx
    import torch

    from semask_deploy.api import build_model
    from semask_deploy.config import VARIANTS
    from semask_deploy.export.onnx import export_onnx
    from semask_deploy.export.winograd import winograd_convs

    from .cpu_deploy import _naive_export

    paths = {k: work / f"{k}.onnx" for k in ("naive", "ours_plain", "ours_nchw", "ours", "ours_nchw_winograd")}
    if not all(paths[k].is_file() for k in ("naive", "ours_plain", "ours_nchw")):
        torch.manual_seed(0)
        eager = build_model(VARIANTS["semask_swin_t_ade20k"], attention_backend="eager").eval()
        for p in eager.parameters():
            p.data.normal_(0, 0.02)
        fast = build_model(VARIANTS["semask_swin_t_ade20k"], attention_backend="sdpa").eval()
        fast.load_state_dict(eager.state_dict())
        t0 = time.perf_counter()
        _naive_export(eager, (512, 512), paths["naive"])
        export_onnx(fast, paths["ours_plain"], output_size=True)
        export_onnx(fast, paths["ours_nchw"], labels_head="nchw", output_size=True)
        log(f"exports in {time.perf_counter() - t0:.0f} s")
    for src, dst in (("ours_plain", "ours"), ("ours_nchw", "ours_nchw_winograd")):
        proto = onnx.load(str(paths[src]))
        log(f"{dst}: {winograd_convs(proto)} convs as Winograd")
        onnx.save(proto, str(paths[dst]))
    return paths


def whole_graphs(work: Path, threads: list[int], runs: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    from semask_deploy.runtime.openvino_backend import _compile, _model_source, shared_core

    from .cpu_deploy import _feed, _ort
    from .harness import time_interleaved

    paths = _exports(work, log)
    x = np.random.default_rng(0).standard_normal((1, 3, 512, 512), dtype=np.float32)
    rows: list[dict[str, Any]] = []
    for nt in threads:
        fns: dict[str, Callable[[], Any]] = {}
        labels: dict[str, np.ndarray] = {}
        for name in ("naive", "ours", "ours_plain"):
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
            plain = f"{runtime} {'ours_plain' if runtime == 'ORT' else 'ours_nchw'}"
            row = {"threads": nt, "row": name, "p50_ms": p50[name], "min_ms": stats[name].min,
                   "vs_naive": p50[f"{runtime} naive"] / p50[name], "vs_plain": p50[plain] / p50[name]}
            if name in labels and name != plain:
                row["labels_equal_plain"] = float((labels[name] == labels[plain]).mean())
            rows.append(row)
        log(f"{nt} thread(s): " + ", ".join(f"{n} {p50[n]:.0f} ms" for n in names))
    return rows


def _markdown(cpu: dict[str, Any], isa: str, versions: str, runs: int, convs: list[dict[str, Any]],
              graphs: list[dict[str, Any]]) -> str:
    from .report import _md_table

    lines = ["# Winograd F(4×4, 3×3) 3×3 convs in our ONNX — per convolution and SeMask-T 512×512, fp32", "",
             f"CPU: {cpu['model']}, {cpu['logical_cpus']} logical CPUs; ISA: {isa}. {versions}. "
             f"{runs} interleaved runs after one warm-up, one process; p50 times.", "",
             "## One conv 3×3 (→ 256) + ReLU, ONNX Runtime", ""]
    lines += _md_table(["input channels", "map", "threads", "direct ms", "Winograd ms", "speed-up", "max error / max"],
                       ([str(r["cin"]), f"{r['size']}²", str(r["threads"]), f"{r['direct_ms']:.2f}",
                         f"{r['winograd_ms']:.2f}", f"{r['speedup']:.2f}×", f"{r['max_err_rel']:.1e}"] for r in convs),
                       align="rrrrrrr")
    lines += ["", "## Whole graphs", ""]
    lines += _md_table(["threads", "graph", "p50 ms", "min ms", "vs naive", "vs plain convs", "labels = plain"],
                       ([str(r["threads"]), r["row"], f"{r['p50_ms']:.0f}", f"{r['min_ms']:.0f}", f"{r['vs_naive']:.2f}×",
                         f"{r['vs_plain']:.2f}×",
                         f"{100 * r['labels_equal_plain']:.2f} %" if "labels_equal_plain" in r else ""]
                        for r in graphs), align="rlrrrrr")
    lines += ["", "naive = the reference model exported with `torch.onnx.export(..., dynamo=True)`, static 512×512, "
              "logits out (no argmax); ours = the fp32 graph `semask-export` writes for ONNX Runtime (dynamic, "
              "Winograd convs, labels out, `output_size` fed); ours_plain = the same with plain convs; ours_nchw = "
              "the graph `--fmt openvino` converts (plain convs)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for winograd_onnx.{json,md}")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--runs", type=int, default=9, help="timed runs per graph and thread count (default 9)")
    p.add_argument("--work", type=Path, default=None, help="folder for the exports (reused when present)")
    args = p.parse_args()
    import onnxruntime
    import openvino
    import torch

    from semask_deploy.fileio import write_json_atomic, write_text_atomic
    from semask_deploy.runtime.cpu_info import cpu_summary, isa_text

    work = args.work or Path(tempfile.mkdtemp(prefix="semask_winograd_"))
    work.mkdir(parents=True, exist_ok=True)
    threads = [int(t) for t in args.threads.split(",")]
    log = lambda m: print(m, flush=True)  # noqa: E731
    convs = per_conv(threads, args.runs, log)
    graphs = whole_graphs(work, threads, args.runs, log)
    cpu = cpu_summary()
    versions = (f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
                f"openvino {openvino.get_version().split('-')[0]}")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "winograd_onnx.json",
                      {"cpu": cpu, "versions": versions, "runs": args.runs, "convs": convs, "graphs": graphs})
    text = _markdown(cpu, isa_text(), versions, args.runs, convs, graphs)
    write_text_atomic(args.out / "winograd_onnx.md", text)
    print(text)


if __name__ == "__main__":
    main()
