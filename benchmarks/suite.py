"""The ``semask-bench`` matrix: backend × precision × size × batch, measured in one process.

For every size the inputs are a fixed batch of normalised images — deterministic synthetic scenes, or the
first data-set images resized to the size — and the torch fp32 reference (the ``eager`` attention math)
gives their logits and labels once. Every backend × precision is built first (export / quantise /
compile / engine build, timed). Then for each size × batch: per backend the first call (timed apart) and
the warm-up under a memory monitor; then the timed runs of ALL backends interleaved run by run in a
rotating order, so the load of a shared machine hits every backend alike and the ratios stay meaningful;
then parity against the reference on the same batch. With a data set each backend is also evaluated
through the official test pipeline (mIoU, aAcc, ΔmIoU vs torch fp32).

A backend that cannot run here is a ``skipped`` row with the reason; an exception inside one backend or
one cell is a ``failed`` row with its message, and the run goes on. Speed-ups are p50 ratios against
torch-eager fp32 at the same size and batch, measured in this run.
"""

from __future__ import annotations

import datetime as _dt
import math
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semask_deploy.benchmarks import flops as flops_mod
from semask_deploy.benchmarks.harness import (
    MIN_RECOMMENDED_RUNS, MemoryMonitor, machine_info, measure_device_peak, time_interleaved,
)
from semask_deploy.benchmarks.parity import compare, delta_miou, evaluate, open_eval_dataset
from semask_deploy.benchmarks.runners import (
    BACKENDS, DEFAULT_PRECISIONS, PRECISIONS, Skip, availability, make_runner,
)
from semask_deploy.errors import ConfigError, raise_if_interrupted

DEFAULT_SIZES = ((256, 256), (512, 512))
DEFAULT_BATCHES = (1, 4)
DEFAULT_RUNS = 20
DEFAULT_WARMUP = 3
BASELINE = ("torch-eager", "fp32")


@dataclass
class BenchConfig:
    """Everything one ``semask-bench`` run needs (the CLI fills it; tests build it directly)."""

    checkpoint: Path
    out: Path
    backends: tuple[str, ...] = BACKENDS
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES
    batches: tuple[int, ...] = DEFAULT_BATCHES
    runs: int = DEFAULT_RUNS
    warmup: int = DEFAULT_WARMUP
    device: str = "cpu"
    dataset: str | None = None
    data_root: Path | None = None
    split: str | None = None
    limit: int | None = None
    explicit_backends: bool = False
    explicit_precisions: bool = False
    keep_artifacts: bool = False
    threads: int | None = None
    peak_matmul_size: int | None = None
    quiet: bool = False
    command: str = ""
    checkpoint_label: str = ""

    def validate(self) -> None:
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad:
            raise ConfigError(f"unknown backend(s) {', '.join(bad)}; choose from {', '.join(BACKENDS)}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise ConfigError(f"unknown precision(s) {', '.join(bad)}; choose from {', '.join(PRECISIONS)}")
        if not self.backends or not self.precisions or not self.sizes or not self.batches:
            raise ConfigError("--backends, --precisions, --sizes and --batch must each name at least one value")
        if any(b < 1 for b in self.batches):
            raise ConfigError(f"--batch values must be positive, got {list(self.batches)}")
        if self.runs < 1 or self.warmup < 0:
            raise ConfigError(f"--runs must be >= 1 and --warmup >= 0, got {self.runs} and {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"--device must be cpu or cuda, got {self.device!r}")
        if any(min(s) < 32 for s in self.sizes):
            raise ConfigError(f"--sizes must be at least 32x32, got {['%dx%d' % s for s in self.sizes]}")
        run, skipped = _plan(self)
        if not run:  # a report of skipped rows only would look like a success
            raise ConfigError("nothing to benchmark here: " + "; ".join(
                f"{s['backend']} {s['precision']}: {s['reason']}" for s in skipped))


@dataclass
class BenchResult:
    """The records of one run (see :mod:`~semask_deploy.benchmarks.report` for the files)."""

    meta: dict[str, Any]
    cells: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    dataset: list[dict[str, Any]] = field(default_factory=list)
    flops: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "flops": self.flops, "cells": self.cells, "skipped": self.skipped,
                "dataset": self.dataset}


def size_label(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def make_inputs(hw: tuple[int, int], count: int, num_classes: int, dataset: Any | None = None,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images at ``hw``: (uint8 RGB (count, H, W, 3), normalised float32 (count, 3, H, W)).

    Synthetic scenes (seed ``seed``) or, with a data set, its first images resized bilinearly (cycled if
    the data set is smaller than ``count``).
    """
    from semask_deploy.data import SyntheticScenes, normalize, resize_image

    imgs = []
    if dataset is not None and len(dataset):
        it = iter(dataset)
        while len(imgs) < count:
            try:
                img = next(it)[0]
            except StopIteration:
                it = iter(dataset)
                continue
            imgs.append(resize_image(img, hw, "bilinear"))
    else:
        scenes = SyntheticScenes(num_classes=min(max(8, num_classes), 255), size=hw, seed=seed, length=count)
        imgs = [scenes[i][0] for i in range(count)]
    rgb = np.stack(imgs)
    return rgb, np.stack([normalize(im) for im in imgs]).astype(np.float32)


def _plan(cfg: BenchConfig) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    run, skipped = [], []
    for b in cfg.backends:
        for p in cfg.precisions:
            why = availability(b, p, cfg.device, explicit_backend=cfg.explicit_backends,
                               explicit_precision=cfg.explicit_precisions)
            if why:
                skipped.append({"backend": b, "precision": p, "status": "skipped", "reason": why})
            else:
                run.append((b, p))
    return run, skipped


def _message(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:400] if text else type(exc).__name__


def run_bench(cfg: BenchConfig) -> BenchResult:
    """Run the matrix and return the records (the caller writes the report).

    Raises:
        SemaskError: bad configuration, unreadable checkpoint or data set (nothing measured yet).
    """
    import torch

    cfg.validate()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_bench(cfg)
    finally:
        torch.set_num_threads(threads)


def _run_bench(cfg: BenchConfig) -> BenchResult:
    from tqdm import tqdm

    from semask_deploy.api import load_model

    t_start = time.perf_counter()
    model = load_model(cfg.checkpoint, attention_backend="eager", device=cfg.device)
    k = model.config.num_classes
    dataset = None
    if cfg.dataset:
        dataset = open_eval_dataset(cfg.dataset, cfg.data_root, k, split=cfg.split, limit=cfg.limit)
    plan, skipped = _plan(cfg)
    meta = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "command": cfg.command,
        "checkpoint": cfg.checkpoint_label or str(cfg.checkpoint), "model": model.config.name,
        "config": model.config.to_dict(), "params": flops_mod.params_count(model), "num_classes": k,
        "device": cfg.device, "sizes": [size_label(s) for s in cfg.sizes], "batches": list(cfg.batches),
        "runs": cfg.runs, "warmup": cfg.warmup, "baseline": "%s %s" % BASELINE,
        "reference": "torch fp32, eager attention (the reference math)",
        "inputs": f"{cfg.dataset} images resized to each size" if dataset is not None else
        "deterministic synthetic scenes (seed 0) at each size",
        "machine": machine_info(cfg.device), "notes": [],
        "threads": cfg.threads or "default (all cores)",
    }
    if cfg.runs < MIN_RECOMMENDED_RUNS:
        meta["notes"].append(f"only {cfg.runs} timed runs per cell (< {MIN_RECOMMENDED_RUNS}): p99 is not meaningful")
    meta["device_peak_tflops"] = measure_device_peak(cfg.device, size=cfg.peak_matmul_size)
    result = BenchResult(meta=meta, skipped=skipped)

    # inputs, reference outputs and FLOPs per size
    max_b = max(cfg.batches)
    inputs, refs = {}, {}
    ref_runner = make_runner("torch-eager", "fp32", cfg.device, model=model, checkpoint=cfg.checkpoint,
                             workdir=Path("."), calib_images=np.zeros((0, 1, 1, 3), np.uint8), shapes=[])
    for hw in cfg.sizes:
        _, x = make_inputs(hw, max_b, k, dataset)
        inputs[hw] = x
        try:
            labs, logs = zip(*(ref_runner.outputs(x[i:i + 1]) for i in range(max_b)))
            refs[hw] = (np.concatenate(labs), np.concatenate(logs))
        except Exception as exc:  # noqa: BLE001 - no parity at this size, timings still run
            raise_if_interrupted(exc)  # Ctrl-C / SIGTERM that a library turned into another error
            refs[hw] = None
            meta["notes"].append(
                f"the torch fp32 reference failed at {size_label(hw)} ({_message(exc)}): no parity there")
            _free_cuda(cfg.device)
        if hasattr(model.config, "arch"):  # mask classification: FlopCounterMode + interpolation formulas
            result.flops[size_label(hw)] = _maskformer_flops(model, hw)
            continue
        rep = {a: flops_mod.analytic_flops(model.config, *hw, 1, a) for a in flops_mod.ATTENTIONS}
        check = flops_mod.cross_check(model, *hw, 1, "eager")
        result.flops[size_label(hw)] = {
            "per_image": {a: {"gemm": r.gemm, "interp": r.interp, "total": r.total} for a, r in rep.items()},
            "counter_eager": check["counter"], "counter_ratio": check["ratio"],
            "groups": rep["sdpa"].by_group(), "rows_sdpa": [r.__dict__ for r in rep["sdpa"].rows],
            "table_sdpa": flops_mod.format_table(rep["sdpa"], grouped=True),
        }

    # data-set reference (torch fp32) and the shapes it needs
    ds_scale, ref_eval = None, None
    shapes = sorted({(b, *hw) for hw in cfg.sizes for b in cfg.batches})
    if dataset is not None:
        ds_scale = model.config.test_scale if cfg.dataset in ("ade20k", "cityscapes", "coco-stuff") else None
        ref_eval = _evaluate_runner(ref_runner, dataset, k, ds_scale, keep=True)
        shapes = sorted(set(shapes) | set(ref_eval.pop("shapes")))
        result.dataset.append({"backend": "reference", "precision": "fp32", **ref_eval["summary"]})
    ref_runner.close()

    peak = meta["device_peak_tflops"]
    bar = tqdm(total=len(plan) * (1 + len(cfg.sizes) * len(cfg.batches)), desc="semask-bench", unit="step",
               disable=cfg.quiet, file=sys.stderr, dynamic_ncols=True)
    rgb_calib, _ = make_inputs(cfg.sizes[0], 8, k, dataset, seed=1)
    tmp = None if cfg.keep_artifacts else tempfile.TemporaryDirectory(prefix="semask-bench-")
    workdir = cfg.out / "artifacts" if cfg.keep_artifacts else Path(tmp.name)
    runners: dict[str, Any] = {}
    try:
        for backend, precision in plan:  # build everything first: exports, quantisation, compilation
            bar.set_description(f"build {backend} {precision}")
            try:
                runners[f"{backend} {precision}"] = make_runner(
                    backend, precision, cfg.device, model=model, checkpoint=cfg.checkpoint, workdir=workdir,
                    calib_images=rgb_calib, shapes=shapes, threads=cfg.threads)
            except Skip as exc:
                result.skipped.append({"backend": backend, "precision": precision, "status": "skipped",
                                       "reason": str(exc)})
                bar.update(len(cfg.sizes) * len(cfg.batches))
            except Exception as exc:  # noqa: BLE001 - one backend's failure must not end the run
                raise_if_interrupted(exc)  # Ctrl-C / SIGTERM that a library turned into another error
                for hw in cfg.sizes:
                    for b in cfg.batches:
                        result.cells.append(_failed(backend, precision, hw, b, f"build: {_message(exc)}"))
                meta.setdefault("tracebacks", {})[f"{backend} {precision}"] = traceback.format_exc()
                bar.update(len(cfg.sizes) * len(cfg.batches))
            bar.update(1)
        for hw in cfg.sizes:
            for b in cfg.batches:
                bar.set_description(f"{size_label(hw)} b{b}")
                result.cells += _measure_group(runners, cfg, hw, b, inputs[hw][:b], refs[hw], k, result.flops, peak,
                                               meta["params"])
                bar.update(len(runners))
        if dataset is not None:
            for name, runner in runners.items():
                bar.set_description(f"{cfg.dataset}: {name}")
                result.dataset.append(_dataset_row(runner, dataset, k, ds_scale, ref_eval))
    finally:
        try:
            bar.close()
            for runner in runners.values():
                runner.close()
            _free_cuda(cfg.device)
        finally:  # even when closing a runner fails or a late Ctrl-C lands here: no export left in /tmp
            if tmp is not None:
                tmp.cleanup()
    order = {bp: i for i, bp in enumerate(plan)}
    result.cells.sort(key=lambda c: (order.get((c["backend"], c["precision"]), 0), c["height"], c["width"], c["batch"]))
    _speedups(result.cells)
    meta["wall_s"] = time.perf_counter() - t_start
    try:
        import os

        meta["machine"]["loadavg_end"] = list(os.getloadavg())
    except OSError:
        pass
    return result


def _maskformer_flops(model: Any, hw: tuple[int, int]) -> dict[str, Any]:
    """The FLOPs record of a mask-classification model (the same count for every backend: the fast paths
    compute the same products and samples)."""
    from semask_deploy.benchmarks.flops_maskformer import maskformer_flops

    f = maskformer_flops(model, *hw)
    per = {"gemm": f["gemm"], "interp": f["interp"], "total": f["total"]}
    table = "\n".join(["| group | GFLOPs |", "|---|---|"] +
                      [f"| {g} | {v / 1e9:.2f} |" for g, v in f["groups"].items()] + [f"| total | {f['total'] / 1e9:.2f} |"])
    return {"per_image": dict.fromkeys(flops_mod.ATTENTIONS, per), "counter_eager": f["gemm"], "counter_ratio": 1.0,
            "groups": f["groups"], "rows_sdpa": [], "table_sdpa": table,
            "method": "FlopCounterMode (eager, MATH SDPA) + 7 FLOPs per grid_sample/bilinear output value"}


def _free_cuda(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def _failed(backend: str, precision: str, hw: tuple[int, int], batch: int, message: str) -> dict[str, Any]:
    return {"backend": backend, "precision": precision, "size": size_label(hw), "height": hw[0], "width": hw[1],
            "batch": batch, "status": "failed", "reason": message}


def _measure_group(runners: dict[str, Any], cfg: BenchConfig, hw: tuple[int, int], batch: int, x: np.ndarray,
                   ref: tuple[np.ndarray, np.ndarray] | None, k: int, flops: dict[str, Any],
                   peak: dict[str, float], params: int) -> list[dict[str, Any]]:
    """One size × batch for every runner: memory pass (first call + warm-up, under a
    :class:`MemoryMonitor`), then the timed runs of all runners interleaved, then parity."""
    failed: dict[str, str] = {}
    prepared, first_ms, mem = {}, {}, {}
    for name, runner in runners.items():
        try:
            prepared[name] = runner.prepare(x)
            with MemoryMonitor(cfg.device) as mon:
                t0 = time.perf_counter()
                runner.run(prepared[name])
                _sync(cfg.device)
                first_ms[name] = (time.perf_counter() - t0) * 1e3
                for _ in range(max(0, cfg.warmup - 1)):
                    runner.run(prepared[name])
                _sync(cfg.device)
            mem[name] = mon
        except Exception as exc:  # noqa: BLE001
            raise_if_interrupted(exc)  # Ctrl-C / SIGTERM that a library turned into another error
            failed[name] = _message(exc)
            prepared.pop(name, None)
            _free_cuda(cfg.device)
    live = [n for n in runners if n not in failed]
    stats = time_interleaved(
        {n: (lambda n=n: runners[n].run(prepared[n])) for n in live}, runs=cfg.runs, batch=batch,
        cuda_events={n: runners[n].cuda_events for n in live},
        on_error=lambda n, e: failed.__setitem__(n, _message(e)),
    )
    prepared.clear()
    cells = []
    for name, runner in runners.items():
        if name not in failed:
            try:
                cells.append(_cell(runner, cfg, hw, batch, x, ref, k, flops, peak, stats[name], first_ms[name],
                                   mem[name], params))
                continue
            except Exception as exc:  # noqa: BLE001
                raise_if_interrupted(exc)  # Ctrl-C / SIGTERM that a library turned into another error
                failed[name] = f"parity: {_message(exc)}"
        cells.append(_failed(runner.backend, runner.precision, hw, batch, failed[name]))
    return cells


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _cell(runner: Any, cfg: BenchConfig, hw: tuple[int, int], batch: int, x: np.ndarray,
          ref: tuple[np.ndarray, np.ndarray] | None, k: int, flops: dict[str, Any], peak: dict[str, float],
          stats: Any, first_ms: float, mem: MemoryMonitor, params: int) -> dict[str, Any]:
    """The record of one cell: timings, memory, FLOPs, achieved rate and parity on the same batch."""
    if ref is None:
        par = dict.fromkeys(("max_abs", "mean_abs", "rel_l2", "finite", "pixel_agreement", "miou_vs_ref"))
    else:
        labels, logits = runner.outputs(x)
        par = compare(ref[0][:batch], labels, k, ref[1][:batch], logits)
    per_image = flops[size_label(hw)]["per_image"]
    f_backend = per_image[runner.attention]["total"] * batch
    achieved = f_backend / (stats.p50 / 1e3) / 1e12 if stats.p50 > 0 else math.nan
    peak_key = "fp16" if runner.precision in ("fp16", "int8") and "fp16" in peak else "fp32"
    m = mem.to_dict()
    return {
        "backend": runner.backend, "precision": runner.precision, "size": size_label(hw), "height": hw[0],
        "width": hw[1], "batch": batch, "status": "ok", "reason": "", "params": params,
        "flops_analytic": f_backend, "flops_analytic_gemm": per_image[runner.attention]["gemm"] * batch,
        "flops_counter": flops[size_label(hw)]["counter_eager"] * batch,
        "flops_counter_ratio": flops[size_label(hw)]["counter_ratio"],
        "latency_ms_p50": stats.p50, "latency_ms_p90": stats.p90, "latency_ms_p99": stats.p99,
        "latency_ms_mean": stats.mean, "latency_ms_std": stats.std, "latency_ms_min": stats.min,
        "latency_ms_max": stats.max, "runs": stats.runs, "warmup": cfg.warmup, "timer": stats.timer,
        "first_call_ms": first_ms, "images_per_s": stats.images_per_s,
        "host_peak_mb": m["host_peak_delta_mb"], "host_mem_method": m["host_method"],
        "device_peak_mb": m["device_peak_mb"], "device_used_delta_mb": m["device_used_delta_mb"],
        "achieved_tflops": achieved, "peak_tflops": peak.get(peak_key),
        "peak_fraction": achieved / peak[peak_key] if peak.get(peak_key) else None,
        "build_s": runner.build_s, "export_s": runner.build.get("export_s"), "quant_s": runner.build.get("quant_s"),
        **par, "flags": "; ".join(runner.flags), "build": runner.build, "times_ms": stats.times_ms,
    }


def _evaluate_runner(runner: Any, dataset: Any, k: int, scale: Any, keep: bool = False) -> dict[str, Any]:
    """Official test pipeline (whole image) with ``runner``; returns summary, per-class IoU, shapes."""
    import torch

    from semask_deploy.runtime.pipeline import labels_from_logits, labels_to_size, prepare

    shapes: set[tuple[int, int, int]] = set()

    def predict(img: np.ndarray) -> np.ndarray:
        x = prepare(img, scale)
        shapes.add((1, int(x.shape[2]), int(x.shape[3])))
        size = (int(img.shape[0]), int(img.shape[1]))
        if tuple(x.shape[2:]) == size or not runner.has_logits:
            return labels_to_size(runner.labels(x)[0], size)
        _, logits = runner.outputs(x)
        return labels_from_logits(torch.from_numpy(logits), size)

    cm, preds = evaluate(predict, dataset, k, keep_predictions=keep)
    classes = list(getattr(dataset, "classes", ()))
    d = cm.to_dict(classes if len(classes) == k else None)
    return {"summary": {"mIoU": d["mIoU"], "aAcc": d["aAcc"], "mAcc": d["mAcc"], "images": len(dataset),
                        "per_class_iou": [c["iou"] for c in d["per_class"]]},
            "preds": preds, "shapes": sorted(shapes)}


def _dataset_row(runner: Any, dataset: Any, k: int, scale: Any, ref_eval: dict[str, Any]) -> dict[str, Any]:
    from semask_deploy.metrics import ConfusionMatrix

    row: dict[str, Any] = {"backend": runner.backend, "precision": runner.precision}
    try:
        ev = _evaluate_runner(runner, dataset, k, scale, keep=True)
    except Exception as exc:  # noqa: BLE001
        raise_if_interrupted(exc)  # Ctrl-C / SIGTERM that a library turned into another error
        row.update({"status": "failed", "reason": _message(exc)})
        return row
    row.update({"status": "ok", **ev["summary"]})
    row["delta_mIoU"] = delta_miou(ev["summary"]["mIoU"], ref_eval["summary"]["mIoU"])
    agree = ConfusionMatrix(k, ignore_index=-1)
    for p, r in zip(ev["preds"], ref_eval["preds"]):
        agree.update(p, r)
    row["miou_vs_ref"] = agree.miou()
    row["pixel_agreement"] = agree.aacc()
    return row


def _speedups(cells: list[dict[str, Any]]) -> None:
    base = {(c["size"], c["batch"]): c["latency_ms_p50"] for c in cells
            if (c["backend"], c["precision"]) == BASELINE and c["status"] == "ok"}
    for c in cells:
        ref = base.get((c["size"], c["batch"]))
        c["speedup_vs_eager_fp32"] = ref / c["latency_ms_p50"] if ref and c.get("status") == "ok" else None
