"""CPU micro-benchmark of the MSDeformAttn core: the official grid_sample formulation vs ``ms_deform_attn_fast_cpu``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/msda_cpu.py                 # 640x640 (levels 20², 40², 80²), 1 thread
    python benchmarks/msda_cpu.py --res 1024x2048 --threads 4 --out /tmp/msda_cpu.json

Shapes are those of Mask2Former's deformable pixel-decoder encoder on one image: queries = every pixel of the
three levels (strides 32, 16, 8), 8 heads, 4 points, head dim 32. Locations are the pixel centres plus
random offsets of a few pixels (some land outside the levels); weights are a softmax over levels × points.
The two formulations are timed interleaved (run by run, rotating order) so the load of a shared machine hits
both alike; reported: p50 and min in ms, the speed-up (ref p50 / fast p50) and the max |fast − ref|.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

RESOLUTIONS = {"640x640": (640, 640), "1024x2048": (1024, 2048)}  # name: (H, W) of the padded input


def mask2former_levels(h: int, w: int) -> list[tuple[int, int]]:
    """Level sizes (res5, res4, res3: strides 32, 16, 8) of an H x W input padded to a multiple of 32."""
    hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
    return [(hp // s, wp // s) for s in (32, 16, 8)]


def make_inputs(levels: list[tuple[int, int]], heads: int = 8, points: int = 4, dim: int = 32, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) for one image."""
    g = torch.Generator().manual_seed(seed)
    nl = len(levels)
    sizes = [h * w for h, w in levels]
    s = sum(sizes)
    shapes = torch.tensor(levels, dtype=torch.int64)
    starts = torch.tensor([0] + sizes[:-1], dtype=torch.int64).cumsum(0)
    refs = []  # each query's own pixel centre, normalised (the encoder's reference points)
    for h, w in levels:
        yy, xx = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
        refs.append(torch.stack([xx.flatten(), yy.flatten()], -1))
    ref = torch.cat(refs)  # (S, 2)
    wh = shapes.flip(1).float()  # (L, 2) as (W, H)
    offsets = 3.0 * torch.randn(1, s, heads, nl, points, 2, generator=g)
    loc = ref.view(1, s, 1, 1, 1, 2) + offsets / wh.view(1, 1, 1, nl, 1, 2)
    aw = torch.randn(1, s, heads, nl * points, generator=g).softmax(-1).view(1, s, heads, nl, points)
    value = torch.randn(1, s, heads, dim, generator=g)
    return value, shapes, starts, loc, aw


def run_msda_cpu_bench(levels: list[tuple[int, int]], *, runs: int = 7, warmup: int = 1, threads: int = 1) -> dict[str, Any]:
    """Time both formulations on the CPU; returns a JSON-able dict (times in ms)."""
    from semask_deploy.benchmarks.harness import time_interleaved  # noqa: PLC0415
    from semask_deploy.kernels.ms_deform_attn import ms_deform_attn_fast_cpu, ms_deform_attn_ref  # noqa: PLC0415

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        args = make_inputs(levels)
        err = (ms_deform_attn_fast_cpu(*args) - ms_deform_attn_ref(*args)).abs().max().item()
        stats = time_interleaved(
            {"official_grid_sample": lambda: ms_deform_attn_ref(*args), "fast_cpu": lambda: ms_deform_attn_fast_cpu(*args)},
            runs=runs, warmup=warmup,
        )  # fmt: skip
    finally:
        torch.set_num_threads(prev)
    res = {name: {"p50_ms": st.p50, "min_ms": st.min, "times_ms": st.times_ms} for name, st in stats.items()}
    return {
        "levels": levels,
        "queries": sum(h * w for h, w in levels),
        "heads": 8, "points": 4, "head_dim": 32, "threads": threads, "torch": torch.__version__,
        "results": res,
        "speedup_p50": res["official_grid_sample"]["p50_ms"] / res["fast_cpu"]["p50_ms"],
        "speedup_min": res["official_grid_sample"]["min_ms"] / res["fast_cpu"]["min_ms"],
        "max_abs_diff": err,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--res", choices=list(RESOLUTIONS), default="640x640")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", type=Path, help="write the result as JSON here")
    args = ap.parse_args(argv)
    levels = mask2former_levels(*RESOLUTIONS[args.res])
    r = run_msda_cpu_bench(levels, runs=args.runs, threads=args.threads)
    ref, fast = r["results"]["official_grid_sample"], r["results"]["fast_cpu"]
    print(f"{args.res} levels {levels}, {r['queries']} queries, 8 heads x 4 points, D 32, {args.threads} thread(s)")
    print(f"official grid_sample: p50 {ref['p50_ms']:.1f} ms (min {ref['min_ms']:.1f})")
    print(f"fast_cpu:             p50 {fast['p50_ms']:.1f} ms (min {fast['min_ms']:.1f})")
    print(f"speed-up p50 {r['speedup_p50']:.2f}x (min {r['speedup_min']:.2f}x), max |diff| {r['max_abs_diff']:.2e}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=args.out.parent, prefix=args.out.name + ".", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=1)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
