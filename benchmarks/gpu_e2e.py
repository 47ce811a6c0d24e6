"""End-to-end model measurements for the one-shot GPU check (``gpu_check.py`` runs this in a subprocess).

One process measures one model case at one input size over attention backends × dtypes (or, with
``--compile``, ``torch.compile`` of the sdpa model over dtypes): per cell the latency of one batch-1
``predict`` (p50/p90/p99 over ``runs`` calls, CUDA events; :func:`benchmarks.harness.time_fn`), the peak
memory of the first call + warm-up (:class:`benchmarks.harness.MemoryMonitor`: torch's peak allocation and
its rise over what was allocated before the call; host RSS rise in a dry run), and parity against the
fp32 ``eager`` model of the same weights: max abs and relative L2 error of the logits at the input size, and
pixel agreement of the labels. After every cell the results so far are written to ``--json`` (temp + rename),
so a timeout in a later cell keeps the earlier ones.

Model cases are data (:data:`MODEL_CASES`): a name, how to build the model with random weights, the input
size and how many timed runs. Another architecture (e.g. Mask2Former once it exists) is one more
:class:`ModelCase` whose ``build`` returns a module with the same contract — ``model(x)`` → (N, K, H, W)
scores at the input size, ``predict(x)`` → (N, H, W) labels, optionally ``set_attention_backend(name)`` and
``forward_lowres`` (what ``torch.compile`` compiles when present).

Usage (normally through ``gpu_check``)::

    python -m semask_deploy.benchmarks.gpu_e2e --case semask_t_512 --json out.json [--compile] [--dry-run]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

DTYPES = ("fp32", "fp16", "bf16")
ATTENTION = ("eager", "sdpa", "triton")


def _semask(variant: str, dry_run: bool) -> Any:
    """SeMask-FPN of an official config with random weights; a shrunken copy (2 blocks/stage, C=32) for dry runs."""
    import torch

    from semask_deploy.config import VARIANTS
    from semask_deploy.model.segmentor import SeMaskSegmentor

    cfg = VARIANTS[variant]
    if dry_run:
        cfg = dataclasses.replace(cfg, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), head_channels=32)
    torch.manual_seed(0)
    return SeMaskSegmentor(cfg, attention_backend="eager").eval()


@dataclass(frozen=True)
class ModelCase:
    """One end-to-end measurement target.

    Attributes:
        name: key used on the command line and in the report.
        title: what the report calls it.
        build: ``build(dry_run) -> nn.Module`` with random weights (on the CPU, eval mode).
        size: (H, W) of the input on the GPU.
        dry_size: (H, W) for ``--dry-run`` on the CPU.
        runs: timed calls per cell on the GPU (``--dry-run`` uses 1).
        backends: attention backends the model supports (``set_attention_backend``).
    """

    name: str
    title: str
    build: Callable[[bool], Any]
    size: tuple[int, int]
    dry_size: tuple[int, int]
    runs: int = 20
    backends: tuple[str, ...] = ATTENTION


# The extension point: one entry per model and input size, in the order of value.
MODEL_CASES: list[ModelCase] = [
    ModelCase("semask_t_512", "SeMask-T ADE20K 512×512", lambda d: _semask("semask_swin_t_ade20k", d), (512, 512), (32, 40)),
    ModelCase("semask_l_640", "SeMask-L ADE20K 640×640", lambda d: _semask("semask_swin_l_ade20k", d), (640, 640), (52, 40)),
    ModelCase("semask_l_2048x1024", "SeMask-L Cityscapes 2048×1024", lambda d: _semask("semask_swin_l_cityscapes", d),
              (1024, 2048), (36, 60), runs=10),
]


def case_by_name(name: str) -> ModelCase:
    for case in MODEL_CASES:
        if case.name == name:
            return case
    raise SystemExit(f"error: unknown case {name!r}; known: {', '.join(c.name for c in MODEL_CASES)}")


def _errors(torch: Any, ref_logits: Any, ref_labels: Any, logits: Any, labels: Any) -> dict[str, Any]:
    """Parity of one cell against the fp32 eager reference, computed on the device in fp32/fp64."""
    r, t = ref_logits.double(), logits.double()
    diff = t - r
    norm = float(torch.linalg.vector_norm(r))
    return {
        "max_abs": float(diff.abs().max()),
        "rel_l2": float(torch.linalg.vector_norm(diff)) / norm if norm > 0 else None,
        "label_agreement": float((labels.to(ref_labels.dtype) == ref_labels).double().mean()),
        "finite": bool(torch.isfinite(logits).all()),
    }


def _cell(torch: Any, model: Any, x: Any, mode: str, device: str, runs: int, warmup: int,
          ref: tuple[Any, Any] | None) -> tuple[dict[str, Any], tuple[Any, Any]]:
    """Measure one configured model; returns (row, (logits, labels)) — logits at the input size, fp32."""
    import torch.nn.functional as F

    from semask_deploy.benchmarks.harness import MemoryMonitor, time_fn

    size = (int(x.shape[2]), int(x.shape[3]))
    if mode == "compile":
        lowres = getattr(model, "forward_lowres", None)
        compiled = torch.compile(lowres if lowres is not None else model)

        def labels_fn() -> Any:
            out = compiled(x)
            if lowres is not None:
                out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
            return out.argmax(1)

        def logits_fn() -> Any:
            out = compiled(x)
            return F.interpolate(out, size=size, mode="bilinear", align_corners=False) if lowres is not None else out
    else:
        labels_fn = lambda: model.predict(x)  # noqa: E731
        logits_fn = lambda: model(x)  # noqa: E731
    row: dict[str, Any] = {}
    with torch.inference_mode():
        t0 = time.perf_counter()
        with MemoryMonitor(device) as mem:
            labels = labels_fn()
            if device == "cuda":
                torch.cuda.synchronize()
            row["first_call_ms"] = (time.perf_counter() - t0) * 1e3
            for _ in range(warmup):
                labels_fn()
        stats = time_fn(labels_fn, runs=runs, warmup=0, cuda_events=device == "cuda")
        logits = logits_fn().float()
    row.update(p50_ms=stats.p50, p90_ms=stats.p90, p99_ms=stats.p99, runs=stats.runs, timer=stats.timer)
    memory = mem.to_dict()
    # on the GPU: torch's peak (weights + the kept fp32 reference included) and the rise during the call
    row["peak_mb"] = memory["device_peak_mb"] if device == "cuda" else None
    row["peak_delta_mb"] = memory["device_peak_delta_mb" if device == "cuda" else "host_peak_delta_mb"]
    if ref is not None:
        row.update(_errors(torch, ref[0], ref[1], logits, labels))
    return row, (logits, labels)


def run_case(case: ModelCase, json_path: Path, *, compile_: bool, dry_run: bool, dtypes: tuple[str, ...] = DTYPES,
             backends: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Measure ``case``; writes ``json_path`` after every cell and returns the same dict."""
    import torch

    from semask_deploy.fileio import write_json_atomic

    device = "cpu" if dry_run else "cuda"
    # fp32 means fp32: torch lets cuDNN run fp32 convolutions in TF32 by default (10-bit mantissa), which
    # puts ~2e-4 rel. L2 between two fp32 models whose convolutions pick different algorithms
    # (measured on an H200); parity of the fp32 cells would then measure TF32, not our code
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    h, w = case.dry_size if dry_run else case.size
    runs, warmup = (1, 0) if dry_run else (case.runs, 3)
    backends = tuple(b for b in (backends or case.backends) if b in case.backends)
    modes = ["compile"] if compile_ else list(backends)
    result: dict[str, Any] = {"case": case.name, "title": case.title, "input": [1, 3, h, w], "device": device,
                              "compile": compile_, "dry_run": dry_run, "tf32": False, "rows": [],
                              "started": time.time()}

    def save() -> None:
        write_json_atomic(json_path, result)

    save()
    base = case.build(dry_run)  # fp32 on the CPU; every dtype gets its own copy of these weights
    g = torch.Generator().manual_seed(1)
    x32 = torch.randn(1, 3, h, w, generator=g).to(device)
    ref_model = copy.deepcopy(base).to(device)  # the reference: fp32 eager, same weights
    if hasattr(ref_model, "set_attention_backend"):
        ref_model.set_attention_backend("eager")
    try:
        _, ref = _cell(torch, ref_model, x32, "eager", device, 1, 0, None)
    except Exception as exc:  # noqa: BLE001 - without a reference there is nothing to compare against
        result["error"] = f"fp32 eager reference failed: {type(exc).__name__}: {exc}"[:500]
        save()
        raise
    del ref_model
    for dtype_name in dtypes:
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
        model = copy.deepcopy(base).to(device=device, dtype=dtype)
        x = x32.to(dtype)
        for mode in modes:
            attention = "sdpa" if mode == "compile" else mode
            row: dict[str, Any] = {"backend": "torch.compile(sdpa)" if mode == "compile" else mode, "dtype": dtype_name}
            try:
                if hasattr(model, "set_attention_backend"):
                    model.set_attention_backend(attention)
                if mode == "compile":
                    torch._dynamo.reset()
                measured, _ = _cell(torch, model, x, mode, device, runs, warmup, ref)
                row.update(measured)
            except Exception as exc:  # noqa: BLE001 - one failing cell (OOM, a kernel limit) must not end the case
                row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                print(traceback.format_exc(), file=sys.stderr, flush=True)
                if device == "cuda":
                    torch.cuda.empty_cache()
            result["rows"].append(row)
            save()
            print(f"{case.name} {row['backend']} {dtype_name}: " + (row.get("error") or f"p50 {row['p50_ms']:.2f} ms"),
                  file=sys.stderr, flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    result["finished"] = time.time()
    save()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m semask_deploy.benchmarks.gpu_e2e", description=__doc__.split("\n")[0])
    ap.add_argument("--case", required=True, help="one of " + ", ".join(c.name for c in MODEL_CASES))
    ap.add_argument("--json", type=Path, required=True, help="results file (rewritten after every cell)")
    ap.add_argument("--compile", action="store_true", help="torch.compile of the sdpa model instead of the backends")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--backends", default=",".join(ATTENTION))
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model and input, Triton interpreter")
    args = ap.parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    case = case_by_name(args.case)
    dtypes = tuple(d for d in args.dtypes.split(",") if d)
    backends = tuple(b for b in args.backends.split(",") if b)
    run_case(case, args.json, compile_=args.compile, dry_run=args.dry_run, dtypes=dtypes, backends=backends)
    return 0


if __name__ == "__main__":
    sys.exit(main())
