"""CPU speed of the default inference path vs the ``eager`` reference path (issue: foundation, item 6).

SeMask-T (ADE20K, 150 classes) at 512×512, fp32, 2 threads, random weights (speed does not depend on them).
Both paths are timed in ONE process, interleaved run by run, so machine load hits both alike; the ratio
of medians is reported for ``model.predict(x)`` (labels at the input size), ``model(x)`` (logits
at input resolution) and ``model.forward_lowres(x)`` (the network alone: logits at stride 4).

``model(x)`` returns a fresh N×K×H×W float tensor (157 MB at 512×512×150): allocating and first-touching it
costs the same in both paths (~85–120 ms here), which caps that row's ratio. A torch-profiler breakdown of
one ``model(x)`` per path (:mod:`.op_profile`) shows where the time goes and the best ratio the default
path could reach at the same multiply-adds.

    python -m semask_deploy.benchmarks.cpu_speed --out benchmarks/results/cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from semask_deploy.runtime.cpu_info import cpu_description

from . import op_profile


CALLS = {"predict": "predict", "forward": "__call__", "lowres": "forward_lowres"}


def _time(fn, x) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def run(size: int = 512, runs: int = 10, warmup: int = 2, threads: int = 2, variant: str = "semask_swin_t_ade20k",
        profile: bool = True):
    """Time eager vs sdpa (and profile one ``model(x)`` of each); returns a JSON-ready dict."""
    from semask_deploy.config import VARIANTS
    from semask_deploy.model import SeMaskSegmentor

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    models = {}
    ref = SeMaskSegmentor(VARIANTS[variant], attention_backend="eager").eval()
    for p in ref.parameters():
        p.data.normal_(0, 0.02)
    models["eager"] = ref
    fast = SeMaskSegmentor(VARIANTS[variant], attention_backend="sdpa").eval()
    fast.load_state_dict(ref.state_dict())
    models["sdpa"] = fast
    x = torch.randn(1, 3, size, size)
    results: dict = {}
    with torch.inference_mode():
        err = (models["eager"](x) - models["sdpa"](x)).abs().max().item()
        agree = (models["eager"].predict(x) == models["sdpa"].predict(x)).float().mean().item()
        for what in CALLS:
            fns = {k: getattr(m, CALLS[what]) for k, m in models.items()}
            for fn in fns.values():
                for _ in range(warmup):
                    fn(x)
            times: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(runs):
                for k, fn in fns.items():
                    times[k].append(_time(fn, x))
            results[what] = {
                k: {"median_ms": statistics.median(v) * 1e3, "min_ms": min(v) * 1e3, "runs_ms": [t * 1e3 for t in v]}
                for k, v in times.items()
            }
            results[what]["speedup_median"] = results[what]["eager"]["median_ms"] / results[what]["sdpa"]["median_ms"]
            results[what]["speedup_min"] = results[what]["eager"]["min_ms"] / results[what]["sdpa"]["min_ms"]
        profiles = {k: op_profile.profile_call(lambda m=m: m(x), repeats=2) for k, m in models.items()} if profile else None
    return {
        "variant": variant, "input": [1, 3, size, size], "dtype": "float32", "threads": threads, "runs": runs,
        "warmup": warmup, "max_abs_logit_diff_sdpa_vs_eager": err, "label_agreement": agree,
        "torch": torch.__version__, "cpu": cpu_description(),
        "load_average": os.getloadavg(), "results": results, "profile_forward": profiles,
    }


def to_markdown(r: dict) -> str:
    lines = [
        f"# CPU speed: default path (`sdpa`) vs `eager` reference — {r['variant']}, "
        f"{r['input'][2]}×{r['input'][3]} fp32, {r['threads']} threads",
        "",
        "| call | eager median (ms) | sdpa median (ms) | speed-up (median) | speed-up (best run) |",
        "|---|---|---|---|---|",
    ]
    for what in CALLS:
        x = r["results"][what]
        lines.append(f"| `model.{CALLS[what]}(x)` | {x['eager']['median_ms']:.0f} | "
                     f"{x['sdpa']['median_ms']:.0f} | {x['speedup_median']:.2f}× | {x['speedup_min']:.2f}× |")
    lines += ["", f"{r['runs']} interleaved runs after {r['warmup']} warm-up; max |Δlogit| sdpa vs eager "
              f"{r['max_abs_logit_diff_sdpa_vs_eager']:.1e}, label agreement {r['label_agreement'] * 100:.3f} %; "
              f"load average during the run {tuple(round(v, 2) for v in r['load_average'])}; torch {r['torch']}; "
              f"CPU {r['cpu']}."]
    if r.get("profile_forward"):
        lines += ["", "## Where `model(x)` spends its time (torch profiler, one call per path, self time)", ""]
        lines += op_profile.to_markdown(r["profile_forward"]["eager"], r["profile_forward"]["sdpa"],
                                        names=("eager", "default (sdpa)"))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu"))
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    from semask_deploy.fileio import write_json_atomic, write_text_atomic

    r = run(args.size, args.runs, threads=args.threads)
    write_json_atomic(args.out / "cpu_speed.json", r)
    write_text_atomic(args.out / "cpu_speed.md", to_markdown(r))
    print(to_markdown(r))


if __name__ == "__main__":
    main()
