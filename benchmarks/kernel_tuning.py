"""Launch-configuration sweep for the Triton kernels: the measurements behind each kernel's defaults.

Usage (needs a CUDA GPU; exits with status 2 and a message otherwise)::

    python -m semask_deploy.benchmarks.kernel_tuning --out benchmarks/results/gpu/
    python benchmarks/kernel_tuning.py --only upsample,semantic --out /tmp/tune

For every case (real SeMask shapes) each launch configuration is timed with ``triton.testing.do_bench``
(median, L2 flushed) next to the eager PyTorch reference, and checked against a reference computed in
fp64 (labels for upsample+argmax: mismatches against ``F.interpolate`` in fp32 + argmax). A configuration
that fails to compile or run (e.g. out of shared memory) is recorded with its error. Groups:

- ``upsample``: the kernel (one class at a time per thread) over pixel block, unroll and warps.
- ``semantic``: global semantic attention (stages 2-3 of T and L at 640x640 and 2048x1024) over tile
  sizes, warps, stages, and the class dimension in one power-of-two block or split (150 = 128 + 32);
  windowed semantic attention with and without the split; fp32 with IEEE and 3xTF32 dots.
- ``window``: fp32 window attention with IEEE and 3xTF32 dots.
- ``profile``: SeMask-L 640x640 fp32, the triton and sdpa backends, CUDA time per kernel (top 15).

Writes ``kernel_tuning.json`` and ``kernel_tuning.md`` in ``--out`` after every case.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable

GROUPS = ("upsample", "semantic", "window", "profile")

# (BLOCK_P, UNROLL, num_warps). The committed results also hold rows of the earlier "blocked" kernel
# (BLOCK_K classes per step, reduced across threads; removed after this sweep, see git history).
UPSAMPLE_CONFIGS = [
    *[(bp, u, 4) for bp in (128, 256, 512, 1024) for u in (1, 2, 4)],
    (256, 2, 2),
    (512, 2, 8),
    (1024, 2, 8),
    (1024, 4, 8),
]
UPSAMPLE_CASES = [  # (K, h, w, H, W)
    (150, 128, 128, 512, 512),
    (150, 160, 160, 640, 640),
    (150, 256, 512, 1024, 2048),
    (19, 256, 512, 1024, 2048),
]

# (BLOCK_M, BLOCK_N, BLOCK_C, num_warps, num_stages, split classes)
SEMANTIC_CONFIGS = [
    (64, 64, 128, 8, 2, False),  # the original default for half inputs
    (64, 64, 128, 4, 2, True),
    (128, 64, 128, 8, 2, True),
    (128, 32, 128, 8, 2, True),
    (128, 64, 256, 8, 2, True),
    (128, 32, 256, 8, 2, True),
    (128, 64, 128, 8, 3, True),
    (128, 64, 128, 8, 2, False),
]
SEMANTIC_WINDOW_CONFIGS = [
    (64, 64, 128, 8, 2, False), (64, 64, 128, 4, 2, True), (128, 64, 128, 8, 2, True),
    (64, 64, 256, 4, 2, True), (32, 32, 64, 4, 1, False), (32, 32, 64, 4, 1, True),
]
SEMANTIC_FP32_CONFIGS = [(32, 32, 64, 4, 2, False), (32, 32, 64, 4, 2, True), (32, 32, 64, 4, 1, True), (64, 64, 128, 4, 2, True)]
# Not swept: a split class block with BLOCK_M 64 and 8 warps ((64, 64, 128 or 256, 8, 2, True)) faulted with
# an illegal address on Triton 3.6 / H200 (benchmarks/results/gpu/kernel_tuning_faults.log).
SEMANTIC_GLOBAL_CASES = [  # (name, N, K, C)
    ("T s2 2048x1024", 8192, 150, 384),
    ("T s3 2048x1024", 2048, 150, 768),
    ("L s2 2048x1024", 8192, 150, 768),
    ("L s3 2048x1024", 2048, 150, 1536),
    ("L s2 640x640", 1600, 150, 768),
    ("L s3 640x640", 400, 150, 1536),
]
SEMANTIC_WINDOW_CASES = [  # (name, H, W, window, K, C)
    ("T s0 2048x1024", 256, 512, 7, 150, 96),
    ("L s0 2048x1024", 256, 512, 12, 150, 192),
    ("L s0 640x640", 160, 160, 12, 150, 192),
    ("L s1 640x640", 80, 80, 12, 150, 384),
]
WINDOW_FP32_CASES = [  # (name, H, W, C, heads, window, shift)
    ("T s0 512x512", 128, 128, 96, 3, 7, 3),
    ("L s0 640x640", 160, 160, 192, 6, 12, 6),
    ("L s2 640x640", 40, 40, 768, 24, 12, 6),
]


def semantic_config_name(bm: int, bn: int, bc: int, warps: int, stages: int, bk: int, bk2: int, prec: str) -> str:
    return f"M{bm} N{bn} C{bc} warps={warps} stages={stages} classes={bk}+{bk2} dot={prec}"


def semantic_row_names() -> list[str]:
    """Every row name :func:`semantic_cases` produces (150 classes), in order: the unit of isolation."""
    from semask_deploy.kernels.semantic_attention import class_blocks  # noqa: PLC0415

    names = ["eager"]
    for configs, precisions in ((SEMANTIC_CONFIGS, ["ieee"]), (SEMANTIC_WINDOW_CONFIGS, ["ieee"]),
                                (SEMANTIC_FP32_CONFIGS, ["ieee", "tf32x3"])):
        for prec in precisions:
            for bm, bn, bc, warps, stages, split in configs:
                name = semantic_config_name(bm, bn, bc, warps, stages, *class_blocks(150, split), prec)
                if name not in names:
                    names.append(name)
    return names


def _bench(do_bench: Callable[..., float], fn: Callable[[], Any], warmup: int, rep: int) -> float:
    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def _row(name: str, fn: Callable[[], Any], err_of: Callable[[Any], float], timer: Callable[[Callable[[], Any]], float]) -> dict[str, Any]:
    """Time one configuration; a failure (compile, resources, launch) becomes an ``error`` entry."""
    import torch  # noqa: PLC0415

    row: dict[str, Any] = {"config": name}
    try:
        out = fn()
        torch.cuda.synchronize()
        row["err"] = err_of(out)
        del out
        row["ms"] = timer(fn)
    except Exception as e:  # noqa: BLE001 - recorded (out of shared memory, unsupported precision, ...)
        row["error"] = f"{type(e).__name__}: {e}"[:300]
        torch.cuda.empty_cache()
    return row


def upsample_cases(torch: Any, timer: Callable[..., float]) -> Any:
    from semask_deploy.kernels import upsample_argmax as ua  # noqa: PLC0415

    g = torch.Generator(device="cuda").manual_seed(0)
    for dtype in (torch.float16, torch.float32):
        for k, h, w, ho, wo in UPSAMPLE_CASES:
            if dtype == torch.float32 and k != 150:
                continue
            logits = torch.randn(1, k, h, w, device="cuda", generator=g).to(dtype)
            ref = ua.upsample_argmax_ref(logits, (ho, wo))

            def mismatches(out: Any, ref: Any = ref) -> float:
                return float((out != ref).sum().item())

            rows = [_row("eager (interpolate fp32 + argmax)", lambda: ua.upsample_argmax_ref(logits, (ho, wo)), mismatches, timer)]
            for bp, unroll, warps in UPSAMPLE_CONFIGS:
                name = f"loop BLOCK_P={bp} UNROLL={unroll} warps={warps}"
                rows.append(_row(name, lambda bp=bp, u=unroll, wp=warps: ua._launch(logits, (ho, wo), block_p=bp, unroll=u, num_warps=wp), mismatches, timer))
            yield {"kernel": "upsample_argmax", "case": f"K{k} {h}x{w} -> {ho}x{wo}", "dtype": str(dtype).split(".")[-1],
                   "err": "label mismatches", "rows": rows}


def semantic_cases(torch: Any, timer: Callable[..., float], keep: Callable[[str], bool] = lambda name: True) -> Any:
    """Global and windowed semantic attention; only the rows whose config name ``keep`` accepts are run."""
    from semask_deploy.kernels import semantic_attention as sa  # noqa: PLC0415

    g = torch.Generator(device="cuda").manual_seed(0)
    for dtype in (torch.float16, torch.float32):
        for name, n, k, c in SEMANTIC_GLOBAL_CASES:
            if dtype == torch.float32 and not name.endswith("640x640"):
                continue
            q = (0.35 * torch.randn(1, n, k, device="cuda", generator=g)).to(dtype)
            kk = (0.35 * torch.randn(1, n, k, device="cuda", generator=g)).to(dtype)
            v = torch.randn(1, n, c, device="cuda", generator=g).to(dtype)
            ref = sa.semantic_attention_global_ref(q.double(), kk.double(), v.double())

            def err(out: Any, ref: Any = ref) -> float:
                return float((out.double() - ref).abs().max().item())

            rows = [_row("eager (fp32 scores, materialised)", lambda: sa.semantic_attention_global_ref(q, kk, v), err, timer)] if keep("eager") else []
            configs = SEMANTIC_CONFIGS if dtype != torch.float32 else SEMANTIC_FP32_CONFIGS
            precisions = ["ieee"] if dtype != torch.float32 else ["ieee", "tf32x3"]
            for prec in precisions:
                for bm, bn, bc, warps, stages, split in configs:
                    bk, bk2 = sa.class_blocks(k, split)
                    cfg = semantic_config_name(bm, bn, bc, warps, stages, bk, bk2, prec)
                    if not keep(cfg):
                        continue
                    rows.append(_row(cfg, lambda bm=bm, bn=bn, bk=bk, bc=bc, bk2=bk2, w=warps, s=stages, p=prec: sa._launch(
                        q, kk, v, 0, None, None, blocks=(bm, bn, bk, bc), block_k2=bk2, num_warps=w, num_stages=s,
                        dot_precision=p), err, timer))
            yield {"kernel": "semantic_global", "case": f"{name} N{n} K{k} C{c}", "dtype": str(dtype).split(".")[-1],
                   "err": "max abs vs fp64", "rows": rows}
        for name, h, w, win, k, c in SEMANTIC_WINDOW_CASES:
            if dtype == torch.float32 and not name.endswith("640x640"):
                continue
            q = (0.35 * torch.randn(1, h, w, k, device="cuda", generator=g)).to(dtype)
            kk = (0.35 * torch.randn(1, h, w, k, device="cuda", generator=g)).to(dtype)
            v = torch.randn(1, h, w, c, device="cuda", generator=g).to(dtype)
            kb = 0.35 * torch.randn(k, device="cuda", generator=g)
            vb = torch.randn(c, device="cuda", generator=g)
            ref = sa.semantic_attention_window_ref(q.double(), kk.double(), v.double(), win, kb.double(), vb.double())

            def err(out: Any, ref: Any = ref) -> float:
                return float((out.double() - ref).abs().max().item())

            rows = [_row("eager (pad, partition, fp32 scores)", lambda: sa.semantic_attention_window_ref(q, kk, v, win, kb, vb), err, timer)] if keep("eager") else []
            precisions = ["ieee"] if dtype != torch.float32 else ["ieee", "tf32x3"]
            for prec in precisions:
                for bm, bn, bc, warps, stages, split in SEMANTIC_WINDOW_CONFIGS if dtype != torch.float32 else SEMANTIC_FP32_CONFIGS:
                    bk, bk2 = sa.class_blocks(k, split)
                    cfg = semantic_config_name(bm, bn, bc, warps, stages, bk, bk2, prec)
                    if not keep(cfg):
                        continue
                    rows.append(_row(cfg, lambda bm=bm, bn=bn, bk=bk, bc=bc, bk2=bk2, w=warps, s=stages, p=prec: sa._launch(
                        q, kk, v, win, kb, vb, blocks=(bm, bn, bk, bc), block_k2=bk2, num_warps=w, num_stages=s,
                        dot_precision=p), err, timer))
            yield {"kernel": "semantic_window", "case": f"{name} {h}x{w} w{win} K{k} C{c}", "dtype": str(dtype).split(".")[-1],
                   "err": "max abs vs fp64", "rows": rows}


def window_cases(torch: Any, timer: Callable[..., float]) -> Any:
    from semask_deploy.kernels import window_attention as wa  # noqa: PLC0415

    g = torch.Generator(device="cuda").manual_seed(0)
    for name, h, w, c, heads, win, shift in WINDOW_FP32_CASES:
        qkv = torch.randn(1, h, w, 3 * c, device="cuda", generator=g)
        qb = 0.5 * torch.randn(3 * c, device="cuda", generator=g)
        tb = 0.5 * torch.randn((2 * win - 1) ** 2, heads, device="cuda", generator=g)
        args = (qkv, qb, tb, heads, win, shift, (c // heads) ** -0.5)
        ref = wa.window_attention_ref(qkv.double(), qb.double(), tb.double(), *args[3:])

        def err(out: Any, ref: Any = ref) -> float:
            return float((out.double() - ref).abs().max().item())

        rows = [_row("eager (window_attention_ref, fp32)", lambda: wa.window_attention_ref(*args), err, timer)]
        for prec in ("ieee", "tf32x3"):
            for bm, bn, warps, stages in [(64, 64, 4, 2), (32, 32, 4, 2), (64, 32, 4, 1), (128, 64, 8, 2)]:
                rows.append(_row(f"M{bm} N{bn} warps={warps} stages={stages} dot={prec}", lambda bm=bm, bn=bn, w=warps, s=stages, p=prec: wa._launch(
                    *args, block_m=bm, block_n=bn, num_warps=w, num_stages=s, dot_precision=p), err, timer))
        yield {"kernel": "window_attention", "case": f"{name} {h}x{w} C{c} h{heads} w{win} shift{shift}", "dtype": "float32",
               "err": "max abs vs fp64", "rows": rows}


def profile_e2e(torch: Any) -> Any:
    """CUDA time per kernel of one SeMask-L 640x640 fp32 ``predict`` (triton and sdpa backends)."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    from semask_deploy.benchmarks.gpu_e2e import case_by_name  # noqa: PLC0415

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = case_by_name("semask_l_640").build(False).cuda()
    x = torch.randn(1, 3, 640, 640, device="cuda")
    for backend in ("triton", "sdpa"):
        model.set_attention_backend(backend)
        with torch.inference_mode():
            for _ in range(3):
                model.predict(x)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    model.predict(x)
                torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if e.device_time_total > 0]
        events.sort(key=lambda e: -e.device_time_total)
        total = sum(e.device_time_total for e in events) / 3e3
        rows = [{"config": e.key[:120], "ms": e.device_time_total / 3e3, "calls": e.count // 3} for e in events[:15]]
        yield {"kernel": "profile", "case": f"SeMask-L 640x640 fp32 predict, {backend} backend (sum of kernels {total:.2f} ms)",
               "dtype": "float32", "err": "-", "rows": rows}


def _isolated_semantic(args: argparse.Namespace, meta: dict[str, Any]) -> Any:
    """Each semantic configuration in its own process: a launch that faults (an illegal address poisons the
    CUDA context) costs that configuration's rows only, and is reported with the end of its stderr."""
    import subprocess  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    crashed = meta.setdefault("crashed_configs", {})
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(semantic_row_names()):
            out = Path(tmp) / str(i)
            cmd = [sys.executable, "-m", "semask_deploy.benchmarks.kernel_tuning", "--out", str(out), "--row", name,
                   "--warmup-ms", str(args.warmup_ms), "--rep-ms", str(args.rep_ms)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                ok = proc.returncode == 0 and (out / "kernel_tuning.json").exists()
                tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            except subprocess.TimeoutExpired:
                ok, tail = False, "timed out after 120 s"
            print(f"semantic config {i}: {name}: {'ok' if ok else 'FAILED: ' + tail}", file=sys.stderr, flush=True)
            if not ok:
                crashed[name] = tail[:300]
                continue
            for case in json.loads((out / "kernel_tuning.json").read_text())["cases"]:
                key = (case["kernel"], case["case"], case["dtype"])
                merged.setdefault(key, {**case, "rows": []})["rows"].extend(case["rows"])
    yield from merged.values()


def render_markdown(meta: dict[str, Any], cases: list[dict[str, Any]]) -> str:
    lines = ["# Triton kernel launch-configuration sweep", "",
             ", ".join(f"{k}: {v}" for k, v in meta.items() if k != "crashed_configs"), ""]
    for name, why in meta.get("crashed_configs", {}).items():
        lines.append(f"- configuration `{name}` crashed its process: {why}")
    lines += ["",
             "Median ms of `triton.testing.do_bench`; speed-up = the eager reference's ms / this row's ms; "
             "err as named per case (labels: mismatches against interpolate + argmax).", ""]
    for case in cases:
        lines += [f"## {case['kernel']} — {case['case']} ({case['dtype']})", "",
                  f"| config | ms | speed-up vs eager | {case['err']} |", "|---|---:|---:|---:|"]
        base = case["rows"][0].get("ms") if case["kernel"] != "profile" else None
        for r in case["rows"]:
            if "error" in r:
                lines.append(f"| {r['config']} | failed: {r['error'][:80].replace('|', '/')} | | |")
                continue
            ms = r["ms"]
            sp = f"{base / ms:.2f}×" if base and ms else ""
            err = r.get("err", r.get("calls", ""))
            err = f"{err:.2e}" if isinstance(err, float) and case["err"].startswith("max") else err
            lines.append(f"| {r['config']} | {ms:.4f} | {sp} | {err} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m semask_deploy.benchmarks.kernel_tuning", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated subset of {', '.join(GROUPS)}")
    ap.add_argument("--warmup-ms", type=int, default=10)
    ap.add_argument("--rep-ms", type=int, default=30)
    ap.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one semantic configuration (a child process)
    args = ap.parse_args(argv)
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        print(f"error: unknown group(s) {', '.join(bad)}; choose from {', '.join(GROUPS)}", file=sys.stderr)
        return 2
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("error: TRITON_INTERPRET is set; unset it to time compiled kernels on a GPU", file=sys.stderr)
        return 2
    import torch  # noqa: PLC0415

    if not torch.cuda.is_available():
        print("error: no CUDA GPU found; the sweep runs only on a GPU", file=sys.stderr)
        return 2
    import triton  # noqa: PLC0415
    from triton.testing import do_bench  # noqa: PLC0415

    from semask_deploy.fileio import write_text_atomic  # noqa: PLC0415

    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "warmup_ms": args.warmup_ms, "rep_ms": args.rep_ms}

    def timer(fn: Callable[[], Any]) -> float:
        return _bench(do_bench, fn, args.warmup_ms, args.rep_ms)

    cases: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        write_text_atomic(args.out / "kernel_tuning.json", json.dumps({"meta": meta, "cases": cases}, indent=1))
        write_text_atomic(args.out / "kernel_tuning.md", render_markdown(meta, cases))

    if args.row is not None:  # a child of the isolated semantic sweep: the rows of one configuration
        cases.extend(c for c in semantic_cases(torch, timer, keep=lambda name: name == args.row) if c["rows"])
        save()
        return 0
    makers = {"upsample": lambda: upsample_cases(torch, timer), "semantic": lambda: _isolated_semantic(args, meta),
              "window": lambda: window_cases(torch, timer), "profile": lambda: profile_e2e(torch)}
    for group in groups:
        for case in makers[group]():
            cases.append(case)
            print(f"{case['kernel']} {case['case']} {case['dtype']}: {len(case['rows'])} rows", file=sys.stderr, flush=True)
            save()
    print(f"wrote {args.out / 'kernel_tuning.json'} and {args.out / 'kernel_tuning.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
