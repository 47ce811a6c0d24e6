"""Report writers for ``semask-bench``: Markdown (``report.md``), JSON with every raw timing
(``results.json``), CSV (``results.csv``), a PNG plot of latency and mIoU per backend (``plot.png``) and
the per-layer FLOPs tables (``flops.md``). The five are written in a hidden folder and renamed into place together
(:func:`write_report`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from semask_deploy.errors import SemaskError
from semask_deploy.fileio import write_text_atomic, write_with

CSV_SKIP = ("times_ms", "build")
FILES = ("report.md", "results.json", "results.csv", "plot.png", "flops.md")


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf"
        if v != 0 and (abs(v) < 10 ** -(digits - 1) or abs(v) >= 1e6):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}".rstrip("0").rstrip(".") or "0"
    return str(v)


def _pct(v: Any, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.{digits}f}"


def _md_table(header: list[str], rows: Iterable[list[str]], align: str | None = None) -> list[str]:
    align = align or "l" * len(header)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def cell_rows(cells: list[Mapping[str, Any]]) -> list[list[str]]:
    """Rows of the main table for the cells that ran."""
    rows = []
    for c in cells:
        if c.get("status") != "ok":
            continue
        par_logits = c.get("max_abs") is not None
        rows.append([
            c["backend"], c["precision"], c["size"], str(c["batch"]),
            f"{c['latency_ms_p50']:.1f}", f"{c['latency_ms_p90']:.1f}", f"{c['latency_ms_p99']:.1f}",
            f"{c['latency_ms_mean']:.1f}", f"{c['images_per_s']:.2f}",
            f"{c['speedup_vs_eager_fp32']:.2f}×" if c.get("speedup_vs_eager_fp32") else "–",
            f"{c['flops_analytic'] / 1e9:.2f}", f"{c['achieved_tflops'] * 1e3:.1f}", _pct(c.get("peak_fraction"), 1),
            _fmt(c.get("host_peak_mb"), 4) if c.get("device_peak_mb") is None
            else f"{_fmt(c.get('host_peak_mb'), 4)} / {_fmt(c.get('device_peak_mb'), 4)}",
            _build_txt(c),
            _fmt(c.get("max_abs")) if par_logits else "–", _fmt(c.get("rel_l2")) if par_logits else "–",
            _pct(c.get("pixel_agreement")), _pct(c.get("miou_vs_ref")),
            c.get("flags") or "",
        ])
    return rows


def _build_txt(c: Mapping[str, Any]) -> str:
    """``export+quant`` seconds for exported backends, the compile/build time otherwise."""
    if c.get("export_s") is not None:
        q = c.get("quant_s") or 0.0
        return f"{c['export_s']:.1f}" + (f"+{q:.1f}" if q else "")
    return _fmt(c.get("build_s"))


MAIN_HEADER = ["backend", "prec", "size", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "img/s",
               "vs eager fp32", "GFLOP/call", "GFLOP/s", "% peak", "peak MB host[/dev]", "export+quant s",
               "max abs", "rel L2", "agree %", "mIoU vs ref %", "notes"]


def _busy(mach: Mapping[str, Any]) -> str:
    loads = [v for k in ("loadavg", "loadavg_end") for v in mach.get(k, [])[:1]]
    cpus = mach.get("cpu_count") or 1
    if loads and max(loads) >= 0.5 * cpus:
        return " — the machine was busy with other work: absolute timings are noisy, same-run ratios less so"
    return ""


def render_markdown(data: Mapping[str, Any]) -> str:
    """The whole report as Markdown (``data`` is :meth:`BenchResult.to_dict` output)."""
    meta, cells = data["meta"], data["cells"]
    mach = meta.get("machine", {})
    peak = meta.get("device_peak_tflops", {})
    load0 = ", ".join(f"{v:.2f}" for v in mach.get("loadavg", []))
    load1 = ", ".join(f"{v:.2f}" for v in mach.get("loadavg_end", []))
    peak_txt = ", ".join(f"{k} {v * 1e3:.0f} GFLOP/s" for k, v in peak.items() if k in ("fp32", "fp16"))
    lines = [
        "# semask-bench report", "",
        f"- date: {meta.get('date')}; wall time {_fmt(meta.get('wall_s'))} s; "
        f"command: `{meta.get('command') or 'semask-bench'}`",
        f"- machine: {mach.get('cpu', '?')}{' (' + mach['isa_text'] + ')' if mach.get('isa_text') else ''}, "
        f"{mach.get('cpu_count')} CPUs, torch {mach.get('torch')}; threads "
        f"(torch, ONNX Runtime and OpenVINO): {meta.get('threads', mach.get('torch_threads'))}"
        f"{', GPU ' + mach['gpu'] if mach.get('gpu') else ''}; "
        f"load average (1/5/15 min) at start {load0 or '?'}, at end {load1 or '?'}{_busy(mach)}",
        f"- measured device peak (square matmul, n={int(peak.get('size', 0))}): {peak_txt}",
        f"- model: {meta.get('model')} from {meta.get('checkpoint')}: {meta.get('params', 0) / 1e6:.2f} M params, "
        f"{meta.get('num_classes')} classes; device {meta.get('device')}",
        f"- inputs: {meta.get('inputs')}; timed call = normalised batch → labels (N, H, W); "
        f"{meta.get('warmup')} warm-up + {meta.get('runs')} timed runs per cell (first call timed apart)",
        f"- parity reference: {meta.get('reference')}, same inputs; speed-up = p50 of {meta.get('baseline')} "
        "/ p50, same size and batch, this run",
        "- FLOPs: analytic, 2×MAC of convs/linears/matmuls with the padded token counts the backend computes, "
        "plus bilinear resizes at 7 FLOPs per value; GFLOP/s = analytic FLOPs / p50; % peak = of the measured "
        "matmul peak above; img/s = batch / mean latency (throughput over all timed runs, slow runs included)",
        "- timed runs of all backends are interleaved run by run (rotating order) so machine load hits all alike; "
        "memory = growth of the process's peak RSS (and device memory) over the cell's first call + warm-up: what "
        "the cell added on top of everything measured before it in this process (so it depends on the order of "
        "the cells; device memory is a true per-cell peak); export+quant s = ONNX export "
        "(shared by every precision) + fp16 conversion or int8 calibration/quantisation",
    ]
    lines += [f"- note: {n}" for n in meta.get("notes", [])]
    over = sorted({f"{c['backend']} {c['precision']}" for c in data.get("cells", [])
                   if (c.get("peak_fraction") or 0) > 1.0})
    if over:
        lines.append(f"- note: % peak above 100 ({', '.join(over)}): int8 and fp16 are measured against the fp32 "
                     "matmul peak (their own units are faster), and on a busy machine the one-off peak probe itself "
                     "can run slow; read those percentages as relative, not as an efficiency")
    flops = data.get("flops", {})
    if flops:
        lines += ["", "## FLOPs per image", ""]
        rows = []
        for size, f in flops.items():
            pi = f["per_image"]
            export = pi.get("export", pi["sdpa"])  # results written before the export mode existed
            rows.append([size, f"{pi['eager']['gemm'] / 1e9:.3f}", f"{pi['sdpa']['gemm'] / 1e9:.3f}",
                         f"{export['gemm'] / 1e9:.3f}", f"{pi['sdpa']['interp'] / 1e9:.3f}",
                         f"{pi['sdpa']['total'] / 1e9:.3f}", f"{f['counter_eager'] / 1e9:.3f}",
                         f"{f['counter_ratio']:.4f}"])
        lines += _md_table(["size", "analytic GEMM eager (G)", "analytic GEMM sdpa (G)", "analytic GEMM ONNX (G)",
                            "interp sdpa (G)", "total sdpa (G)", "FlopCounterMode eager (G)",
                            "counter / analytic eager"], rows, "lrrrrrrr")
        lines += ["", "Per-layer tables: `flops.md`."]
    lines += ["", "## Latency, throughput, memory, parity", ""]
    lines += _md_table(MAIN_HEADER, cell_rows(cells), "llll" + "r" * 15 + "l")
    ds = data.get("dataset") or []
    if ds:
        lines += ["", "## Data set accuracy (official test pipeline, whole image)", ""]
        rows = [[d["backend"], d["precision"], str(d.get("images", "–")), _pct(d.get("mIoU")), _pct(d.get("aAcc")),
                 _pct(d.get("delta_mIoU")), _pct(d.get("miou_vs_ref")), _pct(d.get("pixel_agreement")),
                 d.get("reason", "") if d.get("status") == "failed" else ""] for d in ds]
        lines += _md_table(["backend", "prec", "images", "mIoU %", "aAcc %", "ΔmIoU vs fp32 (pts)",
                            "mIoU vs ref %", "agree %", "error"], rows, "llrrrrrrl")
    if data.get("skipped"):
        lines += ["", "## Skipped", ""]
        lines += [f"- {s['backend']} {s['precision']}: {s['reason']}" for s in data["skipped"]]
    failed = [c for c in cells if c.get("status") == "failed"]
    if failed:
        lines += ["", "## Failed", ""]
        lines += [f"- {c['backend']} {c['precision']} {c['size']} b{c['batch']}: {c['reason']}" for c in failed]
    return "\n".join(lines) + "\n"


def render_flops(data: Mapping[str, Any]) -> str:
    """Per-size grouped FLOPs and the per-layer table of the largest size."""
    flops = data.get("flops", {})
    lines = ["# FLOPs per layer (batch 1, attention as exported: sdpa)", ""]
    for size, f in flops.items():
        lines += [f"## {size}", "", f["table_sdpa"], ""]
    if flops:
        size, f = list(flops.items())[-1]
        lines += [f"## Every layer at {size}", ""]
        total = f["per_image"]["sdpa"]["total"] or 1
        rows = [[r["name"], r["op"], r["shape"], f"{r['flops'] / 1e6:.3f}", f"{100 * r['flops'] / total:.2f}%"]
                for r in f["rows_sdpa"]]
        lines += _md_table(["layer", "op", "shape", "MFLOPs", "share"], rows, "lllrr")
    return "\n".join(lines) + "\n"


def to_csv(data: Mapping[str, Any]) -> str:
    """Cells and skipped rows as CSV (raw timings and build details live in the JSON)."""
    rows = [dict(r) for r in data["cells"]] + [dict(r) for r in data.get("skipped", [])]
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols and k not in CSV_SKIP:
                cols.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    return buf.getvalue()


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _clean(o: Any) -> Any:
    """NaN/inf → None so the JSON is strict."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def plot(data: Mapping[str, Any], path: Path) -> None:
    """Latency (p50, one bar per backend × precision, grouped by size × batch) and mIoU per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in data["cells"] if c.get("status") == "ok"]
    series = list(dict.fromkeys(f"{c['backend']} {c['precision']}" for c in cells))
    groups = list(dict.fromkeys(f"{c['size']} b{c['batch']}" for c in cells))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / max(1, len(series))
    palette = plt.get_cmap("tab20" if len(series) > 10 else "tab10").colors  # one distinct colour per series
    for i, s in enumerate(series):
        vals = []
        for g in groups:
            m = [c["latency_ms_p50"] for c in cells if f"{c['backend']} {c['precision']}" == s
                 and f"{c['size']} b{c['batch']}" == g]
            vals.append(m[0] if m else 0.0)
        ax1.bar([j + i * width for j in range(len(groups))], vals, width, label=s, color=palette[i % len(palette)])
    ax1.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(groups))], groups)
    ax1.set_ylabel("p50 latency per batch (ms)")
    ax1.set_title("Latency")
    if cells:
        ax1.set_yscale("log")
        ax1.legend(fontsize=7)
    ds = [d for d in data.get("dataset") or [] if d.get("status", "ok") == "ok" and d.get("mIoU") is not None]
    if ds:
        names = [f"{d['backend']} {d['precision']}" for d in ds]
        vals = [100 * d["mIoU"] for d in ds]
        ax2.set_title("mIoU vs ground truth")
    else:
        names = series
        vals = []
        for s in names:
            m = [c["miou_vs_ref"] for c in cells
                 if f"{c['backend']} {c['precision']}" == s and c.get("miou_vs_ref") is not None]
            vals.append(100 * sum(m) / len(m) if m else 0.0)
        ax2.set_title("mIoU vs torch fp32 labels (mean over cells)")
    bars = ax2.barh(names, vals, color="tab:green")
    ax2.bar_label(bars, labels=[f"{v:.2f}" for v in vals], padding=-40, color="white", fontsize=8)
    ax2.set_xlabel("mIoU (%)")
    ax2.set_xlim(min([90.0] + [v - 1 for v in vals]) if vals else 0, 100.5)
    ax2.invert_yaxis()
    fig.suptitle(f"semask-bench: {data['meta'].get('model')} on {data['meta'].get('device')}")
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)


class ReportWriteError(SemaskError):
    """The report could not be written (a full disk, a read-only folder). ``markdown`` holds the report's
    text, so a caller can still show the measurements."""

    def __init__(self, message: str, markdown: str) -> None:
        super().__init__(message)
        self.markdown = markdown


def write_report(data: Mapping[str, Any], out_dir: str | Path, *, with_plot: bool = True) -> dict[str, Path]:
    """Write every report file into ``out_dir``; returns {name: path}.

    The files are written in a hidden folder inside ``out_dir`` and renamed into place only when all of them
    are written, so a failure (a full disk) leaves an earlier run's report whole, never half old, half new.

    Raises:
        ReportWriteError: a file could not be written (nothing in ``out_dir`` changed).
    """
    from semask_deploy.fileio import make_output_folder, make_work_folder, write_failure_text

    out = make_output_folder(out_dir)
    markdown = render_markdown(data)
    names = [n for n in FILES if with_plot or n != "plot.png"]
    stage = None
    try:
        stage = make_work_folder(out, "report")
        write_text_atomic(stage / "report.md", markdown)
        write_text_atomic(stage / "flops.md", render_flops(data))
        write_text_atomic(stage / "results.json",
                          json.dumps(_clean(data), indent=1, default=_json_default, allow_nan=False) + "\n")
        write_text_atomic(stage / "results.csv", to_csv(data))
        if with_plot:
            plot(data, stage / "plot.png")
        for name in names:
            os.replace(stage / name, out / name)
    except (OSError, SemaskError) as exc:
        reason = write_failure_text(exc) or str(exc)
        raise ReportWriteError(f"the report could not be written to {out}: {reason}", markdown) from exc
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
    if not with_plot:
        (out / "plot.png").unlink(missing_ok=True)  # an earlier run's plot (--force) would not match this run
    return {name: out / name for name in names}
