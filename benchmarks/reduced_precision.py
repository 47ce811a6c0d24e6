"""Do int8 and bf16 keep the answers? Agreement with fp32 on the trained demo model, and int8 speed.

The built-in demo model (trained on synthetic scenes), held-out synthetic scenes (the demo run's held-out
seed) at 512×512. Reference: PyTorch fp32 labels (``model(x).argmax(1)``, as the export gate computes
them). For each candidate:

* int8 (ONNX Q/DQ, ONNX Runtime ``quantize_static``, symmetric s8 activations, per-channel weights),
  calibrated exactly as ``semask-export --demo --precision int8`` does by default (32 built-in synthetic
  scenes at the training crop) with each activation calibration (minmax / percentile / entropy);
* bf16: ``torch.autocast`` with LayerNorm and the semantic attention in fp32 (only where the CPU has
  native bf16);

it reports the pixel agreement and the mIoU agreement (labels vs the fp32 labels, confusion summed over
all scenes) and the worst scene, against the thresholds bf16 ≥ 99 % / ≥ 98 %, int8 ≥ 98 % / ≥ 95 %.
Latency: ONNX Runtime int8 vs fp32 (and torch bf16 vs fp32), 1 thread, alternated run by run in one process.

    python -m semask_deploy.benchmarks.reduced_precision --out benchmarks/results/cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

THRESHOLDS = {"int8": (0.98, 0.95), "bf16": (0.99, 0.98)}


def _demo_model() -> Any:
    from semask_deploy.api import model_from_checkpoint
    from semask_deploy.assets import demo_checkpoint
    from semask_deploy.checkpoint import read_checkpoint

    model = model_from_checkpoint(read_checkpoint(demo_checkpoint()), attention_backend="sdpa")
    return model.float().eval()


def _score(labels: list[np.ndarray], refs: list[np.ndarray], k: int) -> dict[str, Any]:
    from semask_deploy.metrics import ConfusionMatrix, label_agreement, miou_between

    cm = ConfusionMatrix(k)
    for a, b in zip(labels, refs):
        cm.update(a, b)
    per = [label_agreement(a, b) for a, b in zip(labels, refs)]
    per_miou = [miou_between(a, b, k) for a, b in zip(labels, refs)]
    total = sum(int(np.asarray(a).size) for a in labels)
    equal = sum(int((np.asarray(a) == np.asarray(b)).sum()) for a, b in zip(labels, refs))
    return {"label_agreement": equal / total, "miou_agreement": cm.miou(),
            "worst_scene_label_agreement": min(per), "worst_scene_miou_agreement": min(per_miou)}


def _verdict(row: dict[str, Any], kind: str) -> bool:
    lab, miou = THRESHOLDS[kind]
    return row["label_agreement"] >= lab and row["miou_agreement"] >= miou


def _feed(session: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """The image, and ``output_size`` = its own (H, W) for exports that have that input (semask-export's default)."""
    from semask_deploy.runtime.artifact import OUTPUT_SIZE, output_size_feed

    feed = {"image": x}
    if any(i.name == OUTPUT_SIZE for i in session.get_inputs()):
        feed[OUTPUT_SIZE] = output_size_feed(x, None, nhwc=False)
    return feed


def run(out: Path, scenes: int = 16, size: int = 512, calib_count: int = 32, runs: int = 8,
        fp32_onnx: Path | None = None, variants: tuple[str, ...] = ("minmax", "percentile", "entropy")) -> dict:
    import onnx
    import torch

    from semask_deploy.data.synthetic import SyntheticScenes
    from semask_deploy.data.transforms import normalize
    from semask_deploy.export.onnx import export_onnx
    from semask_deploy.export.int8 import quantize_int8
    from semask_deploy.export.verify import make_session
    from semask_deploy.runtime.cpu_info import cpu_model, cpu_summary, native_bf16
    from semask_deploy.runtime.torch_backend import bf16_autocast
    from semask_deploy.training.data import SYNTHETIC_VAL_SEED_OFFSET

    torch.set_num_threads(1)
    model = _demo_model()
    cfg = model.config
    k = cfg.num_classes
    held = SyntheticScenes(k, (size, size), seed=0 + SYNTHETIC_VAL_SEED_OFFSET, length=scenes)
    xs = [normalize(held[i][0])[None] for i in range(scenes)]
    with torch.inference_mode():
        refs = [model(torch.from_numpy(x)).argmax(1).numpy() for x in xs]
    calib_scenes = SyntheticScenes(k, tuple(cfg.crop_size), seed=1234, length=calib_count)  # = the export default
    calib = [normalize(calib_scenes[i][0])[None] for i in range(calib_count)]
    work = Path(tempfile.mkdtemp(prefix="semask_rp_"))
    os.environ.setdefault("SEMASK_CACHE_DIR", str(work / "cache"))
    fp32_onnx = fp32_onnx or work / "fp32.onnx"
    if not fp32_onnx.is_file():
        export_onnx(model, fp32_onnx)
    result: dict[str, Any] = {
        "what": "labels agreement / mIoU agreement of reduced precision vs PyTorch fp32 on the built-in demo model",
        "model": cfg.name, "classes": k,
        "scenes": {"count": scenes, "size": [size, size], "seed": SYNTHETIC_VAL_SEED_OFFSET,
                   "note": "held-out synthetic scenes (the demo run's held-out seed)"},
        "calibration": {"images": calib_count, "size": list(cfg.crop_size), "seed": 1234,
                        "note": "what semask-export --demo --precision int8 uses without --calib-images"},
        "thresholds": {p: {"labels": t[0], "miou": t[1]} for p, t in THRESHOLDS.items()},
        "cpu": cpu_model(), "isa": cpu_summary()["isa"], "platform": platform.platform(),
        "threads": 1, "int8": [], "bf16": None, "latency": {},
    }
    sessions = {"fp32": make_session(fp32_onnx, threads=1)}
    fp32_labels = [sessions["fp32"].run(["labels"], _feed(sessions["fp32"], x))[0] for x in xs]
    result["fp32_onnx"] = _score(fp32_labels, refs, k)
    for v in variants:
        path = work / f"int8_{v}.onnx"
        t0 = time.perf_counter()
        info = quantize_int8(fp32_onnx, path, calib, calibration=v, progress=False)
        secs = time.perf_counter() - t0
        sess = make_session(path, threads=1)
        labels = [sess.run(["labels"], _feed(sess, x))[0] for x in xs]
        row = {"calibration": info["calibration"], "quantize_seconds": round(secs, 1), **_score(labels, refs, k),
               "float_layers": len(info.get("float_layers", [])), "qdq_nodes": info["qdq_nodes"]}
        row["passes"] = _verdict(row, "int8")
        result["int8"].append(row)
        sessions[f"int8 {v}"] = sess
        print(json.dumps(row), flush=True)
    if native_bf16():
        with torch.inference_mode(), bf16_autocast(model):
            labels = [model(torch.from_numpy(x)).float().argmax(1).numpy() for x in xs]
        row = _score(labels, refs, k)
        row["passes"] = _verdict(row, "bf16")
        result["bf16"] = row
        print(json.dumps(row), flush=True)
    else:
        result["bf16"] = {"skipped": "no native bf16 on this CPU"}
    # latency: one 512x512 image, 1 thread, alternated
    x = xs[0]
    timed: dict[str, Any] = {name: (lambda s=s: s.run(["labels"], _feed(s, x))) for name, s in sessions.items()}
    xt = torch.from_numpy(x)

    def torch_fp32() -> Any:
        with torch.inference_mode():
            return model.predict(xt)

    def torch_bf16() -> Any:
        with torch.inference_mode(), bf16_autocast(model):
            return model.predict(xt)

    timed["torch fp32"] = torch_fp32
    if native_bf16():
        timed["torch bf16"] = torch_bf16
    times: dict[str, list[float]] = {n: [] for n in timed}
    for fn in timed.values():
        fn()  # warm-up
    for _ in range(runs):
        for name, fn in timed.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {n: statistics.median(v) * 1e3 for n, v in times.items()}
    result["latency"] = {
        "runs": runs, "size": [size, size], "p50_ms": {n: round(v, 1) for n, v in med.items()},
        "speedup_vs_ort_fp32": {n: round(med["fp32"] / v, 2) for n, v in med.items() if n.startswith("int8")},
        "torch_bf16_vs_fp32": round(med["torch fp32"] / med["torch bf16"], 2) if "torch bf16" in med else None,
        "note": "ONNX Runtime CPU EP and PyTorch, 1 thread, alternated run by run in one process on a shared machine",
    }
    out.mkdir(parents=True, exist_ok=True)
    from semask_deploy.fileio import write_json_atomic, write_text_atomic

    write_json_atomic(out / "reduced_precision.json", result)
    write_text_atomic(out / "reduced_precision.md", format_md(result))
    return result


def format_md(r: dict[str, Any]) -> str:
    lines = [
        "# Reduced precision on the demo model: do the answers stay?", "",
        f"{r['model']} ({r['classes']} classes), {r['scenes']['count']} held-out synthetic scenes at "
        f"{r['scenes']['size'][0]}×{r['scenes']['size'][1]}, vs PyTorch fp32 labels. CPU: {r['cpu']} "
        f"({', '.join(f for f, on in r['isa'].items() if on)}). int8 calibration: {r['calibration']['images']} "
        f"synthetic scenes at {r['calibration']['size'][0]}×{r['calibration']['size'][1]} (the export default).", "",
        "Thresholds: int8 ≥ 98 % equal labels and ≥ 95 % mIoU agreement; bf16 ≥ 99 % / ≥ 98 %.", "",
        "| precision | calibration | labels equal | mIoU agreement | worst scene (labels / mIoU) | passes |",
        "|---|---|---|---|---|---|",
    ]

    def row(name: str, cal: str, d: dict[str, Any]) -> str:
        return (f"| {name} | {cal} | {d['label_agreement'] * 100:.2f} % | {d['miou_agreement'] * 100:.2f} % | "
                f"{d['worst_scene_label_agreement'] * 100:.2f} % / {d['worst_scene_miou_agreement'] * 100:.2f} % | "
                f"{'yes' if d.get('passes', True) else 'NO'} |")

    lines.append(row("fp32 ONNX", "—", r["fp32_onnx"]))
    for d in r["int8"]:
        lines.append(row("int8 Q/DQ (s8)", d["calibration"], d))
    if r["bf16"] and "skipped" not in r["bf16"]:
        lines.append(row("bf16 torch autocast", "—", r["bf16"]))
    else:
        lines.append(f"| bf16 | — | skipped: {r['bf16']['skipped']} | | | |")
    lat = r["latency"]
    lines += ["", f"Latency, {lat['size'][0]}×{lat['size'][1]}, 1 thread, p50 of {lat['runs']} alternated runs "
              "(shared machine):", "", "| runtime | p50 ms |", "|---|---|"]
    lines += [f"| {n} | {v} |" for n, v in lat["p50_ms"].items()]
    lines += ["", "int8 vs ONNX Runtime fp32: " + ", ".join(f"{n} {v}×" for n, v in lat["speedup_vs_ort_fp32"].items())]
    if lat.get("torch_bf16_vs_fp32"):
        lines.append(f"torch bf16 autocast vs torch fp32: {lat['torch_bf16_vs_fp32']}×")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu"))
    p.add_argument("--scenes", type=int, default=16)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--calib-count", type=int, default=32)
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--fp32-onnx", type=Path, default=None, help="reuse an fp32 export of the demo model")
    p.add_argument("--variants", default="minmax,percentile,entropy")
    a = p.parse_args()
    run(a.out, a.scenes, a.size, a.calib_count, a.runs, a.fp32_onnx, tuple(a.variants.split(",")))


if __name__ == "__main__":
    main()
