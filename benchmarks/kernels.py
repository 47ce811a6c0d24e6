"""Benchmark the Triton kernels against eager PyTorch (the ``*_ref``) and SDPA on real SeMask shapes.

Usage (needs a CUDA GPU; exits with status 2 and a message otherwise)::

    python -m semask_deploy.benchmarks.kernels --out benchmarks/results/<gpu>/
    python benchmarks/kernels.py --only window --dtypes fp16 --quick --out /tmp/bench

Cases:
    - window attention: Swin-T (window 7) and Swin-L (window 12) stages 0-3 at 512x512, 640x640 and
      2048x1024 inputs (stage map = input / 4, 8, 16, 32, rounded up), head dim 32, shift 0 and w // 2;
      providers ``triton``, ``eager`` (window_attention_ref), ``sdpa`` (pad/roll/partition copies +
      F.scaled_dot_product_attention with an additive bias+mask, which is precomputed outside the timing).
    - semantic attention, global: stages 2-3 of T (C 384/768) and L (C 768/1536) with K = 150 classes
      (N = 8192 and 2048 tokens at 2048x1024); ``triton``, ``eager``, ``sdpa`` (scale = 1.0, one head).
    - semantic attention, windowed: stages 0-1 of T (window 7) and L (window 12), K = 150.
    - upsample + argmax: 150 (and 19) class logits at the stride-4 size -> input size; ``triton`` vs
      ``eager`` (F.interpolate in fp32 + argmax).
    - multi-scale deformable attention (``msda``): Mask2Former's pixel-decoder encoder on one image, levels
      = the input padded to a multiple of 32 at strides 32, 16, 8 (640x640: 20², 40², 80², 8400 queries;
      2048x1024: 32x64, 64x128, 128x256, 43008 queries), 8 heads, 4 points, head dim 32; ``triton`` vs
      ``eager`` (the official per-level grid_sample formulation) and ``gather`` (ms_deform_attn_fast_cpu:
      one embedding_bag over a zero-padded table). 8 FLOPs per (sample, channel); bytes = value + locations
      + weights read once, output written once.

Every time is the median of ``triton.testing.do_bench`` (L2 flushed between runs). Reported: median ms,
TFLOP/s (nominal matmul FLOPs, padded tokens included; 10 FLOPs per class-pixel for upsample+argmax),
GB/s (compulsory HBM traffic: inputs read once, outputs written once), their fraction of the device's
datasheet peak (dense fp16/bf16 tensor-core peak for half inputs, non-tensor fp32 peak for fp32 inputs,
since the fp32 kernels use IEEE dots), speed-up of triton over each baseline, and triton's max error vs
the fp32 reference. Results: ``kernels.json`` and ``kernels.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

# Datasheet dense peaks: (fp16/bf16 tensor TFLOP/s, fp32 non-tensor TFLOP/s, HBM GB/s). Matched in order.
_PEAKS: list[tuple[str, tuple[float, float, float]]] = [
    ("H200", (989.4, 66.9, 4800.0)),
    ("H100 NVL", (835.0, 60.0, 3900.0)),
    ("H100 PCIe", (756.0, 51.2, 2000.0)),
    ("H100", (989.4, 66.9, 3350.0)),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100-SXM4-80GB", (312.0, 19.5, 2039.0)),
    ("A100 80GB PCIe", (312.0, 19.5, 1935.0)),
    ("A100", (312.0, 19.5, 1555.0)),
    ("L40S", (362.1, 91.6, 864.0)),
    ("L4", (121.0, 30.3, 300.0)),
    ("A10", (125.0, 31.2, 600.0)),
    ("RTX 4090", (165.2, 82.6, 1008.0)),
]

VARIANTS = {  # name: (embed, heads per stage, window)
    "T": (96, (3, 6, 12, 24), 7),
    "L": (192, (6, 12, 24, 48), 12),
}
RESOLUTIONS = {"512x512": (512, 512), "640x640": (640, 640), "2048x1024": (1024, 2048)}  # name: (H, W)


@dataclass
class Case:
    """One benchmark case: a kernel, its shapes and its nominal work."""

    kernel: str
    name: str
    dtype: str
    params: dict[str, Any]
    flops: float
    bytes: float
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _elt(dtype: str) -> int:
    return {"fp32": 4, "fp16": 2, "bf16": 2}[dtype]


def stage_size(h: int, w: int, stage: int) -> tuple[int, int]:
    """Stage-i map size of an H x W input (patch embed /4, then ceil-halving per merge)."""
    hs, ws = _ceil_div(h, 4), _ceil_div(w, 4)
    for _ in range(stage):
        hs, ws = _ceil_div(hs, 2), _ceil_div(ws, 2)
    return hs, ws


def msda_levels(h: int, w: int) -> list[tuple[int, int]]:
    """Mask2Former deformable-encoder level sizes (strides 32, 16, 8) of an H x W input padded to 32."""
    hp, wp = _ceil_div(h, 32) * 32, _ceil_div(w, 32) * 32
    return [(hp // s, wp // s) for s in (32, 16, 8)]


def build_cases(kernels: list[str], variants: list[str], resolutions: list[str], dtypes: list[str], num_cls: int = 150) -> list[Case]:
    """Enumerate the benchmark cases with their FLOP and byte counts (pure; no GPU needed)."""
    cases: list[Case] = []
    for dt in dtypes:
        e = _elt(dt)
        if "msda" in kernels:
            m, pts, d = 8, 4, 32
            for res in resolutions:
                levels = msda_levels(*RESOLUTIONS[res])
                lq = sum(h * w for h, w in levels)
                ns = lq * m * len(levels) * pts
                p = dict(res=res, levels=levels, Lq=lq, M=m, P=pts, D=d)
                cases.append(Case("ms_deform_attn", f"{res} levels {'/'.join(f'{h}x{w}' for h, w in levels)} Lq{lq} M{m} P{pts} D{d}", dt, p,
                                  flops=8.0 * ns * d, bytes=float((2 * lq * m * d + 3 * ns) * e)))
        for var in variants:
            embed, heads, window = VARIANTS[var]
            for res in resolutions:
                h, w = RESOLUTIONS[res]
                for stage in range(4):
                    hs, ws = stage_size(h, w, stage)
                    c = embed * 2**stage
                    n_win = _ceil_div(hs, window) * _ceil_div(ws, window)
                    n = window * window
                    if "window" in kernels:
                        for shift in (0, window // 2):
                            p = dict(variant=var, res=res, stage=stage, H=hs, W=ws, C=c, heads=heads[stage], window=window, shift=shift)
                            cases.append(Case("window_attention", f"{var} s{stage} {res} {hs}x{ws} C{c} h{heads[stage]} w{window} shift{shift}", dt, p,
                                              flops=4.0 * n_win * n * n * c, bytes=float(hs * ws * 4 * c * e)))
                    if "semantic" in kernels and stage >= 2:
                        nt = hs * ws
                        p = dict(variant=var, res=res, stage=stage, N=nt, K=num_cls, C=c)
                        cases.append(Case("semantic_global", f"{var} s{stage} {res} N{nt} K{num_cls} C{c}", dt, p,
                                          flops=2.0 * nt * nt * (num_cls + c), bytes=float(nt * (2 * num_cls + 2 * c) * e)))
                    if "semantic" in kernels and stage < 2:
                        p = dict(variant=var, res=res, stage=stage, H=hs, W=ws, K=num_cls, C=c, window=window)
                        cases.append(Case("semantic_window", f"{var} s{stage} {res} {hs}x{ws} K{num_cls} C{c} w{window}", dt, p,
                                          flops=2.0 * n_win * n * n * (num_cls + c), bytes=float(hs * ws * (2 * num_cls + 2 * c) * e)))
        if "upsample" in kernels:
            for k, hi, wi, ho, wo in ((150, 128, 128, 512, 512), (150, 160, 160, 640, 640), (150, 128, 256, 512, 1024),
                                      (150, 128, 171, 512, 683), (150, 256, 512, 1024, 2048), (19, 256, 512, 1024, 2048)):
                p = dict(K=k, h=hi, w=wi, H=ho, W=wo)
                cases.append(Case("upsample_argmax", f"K{k} {hi}x{wi} -> {ho}x{wo}", dt, p,
                                  flops=10.0 * k * ho * wo, bytes=float(k * hi * wi * e + ho * wo * 8)))
    return cases


def device_peaks(name: str) -> tuple[float, float, float] | None:
    """Datasheet (half TFLOP/s, fp32 TFLOP/s, GB/s) for a CUDA device name, or None when unknown."""
    for key, peaks in _PEAKS:
        if key.lower() in name.lower():
            return peaks
    return None


# ---------------------------------------------------------------------------------------------------------
# providers (GPU)
# ---------------------------------------------------------------------------------------------------------


def _window_sdpa_setup(torch: Any, qkv: Any, qkv_bias: Any, table: Any, heads: int, window: int, shift: int, scale: float) -> Callable[[], Any]:
    """SDPA window attention with explicit pad/roll/partition copies; bias+mask built once, outside timing."""
    import torch.nn.functional as F  # noqa: PLC0415

    from semask_deploy.kernels.window_attention import relative_position_index, shift_region_mask  # noqa: PLC0415

    b, h, w, c3 = qkv.shape
    c, hd, n = c3 // 3, c3 // 3 // heads, window * window
    hp, wp = _ceil_div(h, window) * window, _ceil_div(w, window) * window
    n_win = (hp // window) * (wp // window)
    bias = table.float()[relative_position_index(window, qkv.device).view(-1)].view(n, n, heads).permute(2, 0, 1)
    mask = bias.unsqueeze(0).expand(n_win, heads, n, n)
    if shift > 0:
        mask = mask + shift_region_mask(hp, wp, window, shift, qkv.device).unsqueeze(1)
    mask = mask.to(qkv.dtype).repeat(b, 1, 1, 1).contiguous()  # (B * nW, heads, N, N)

    def run() -> Any:
        x = qkv_bias.to(qkv.dtype).expand(b, hp, wp, c3).clone()
        x[:, :h, :w] = qkv
        if shift:
            x = torch.roll(x, (-shift, -shift), (1, 2))
        x = x.view(b, hp // window, window, wp // window, window, c3).permute(0, 1, 3, 2, 4, 5).reshape(-1, n, 3, heads, hd)
        q, k, v = x.permute(2, 0, 3, 1, 4).contiguous().unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        y = y.transpose(1, 2).reshape(b, hp // window, wp // window, window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if shift:
            y = torch.roll(y, (shift, shift), (1, 2))
        return y[:, :h, :w]

    return run


def _providers(torch: Any, case: Case, device: str = "cuda") -> tuple[dict[str, Callable[[], Any]], Callable[[Any], float], Any]:
    """Build the callables for one case, an error metric vs the fp32 reference, and the tensors to free."""
    import torch.nn.functional as F  # noqa: PLC0415

    from semask_deploy.kernels import ms_deform_attn as msda  # noqa: PLC0415
    from semask_deploy.kernels import semantic_attention as sa  # noqa: PLC0415
    from semask_deploy.kernels import upsample_argmax as ua  # noqa: PLC0415
    from semask_deploy.kernels import window_attention as wa  # noqa: PLC0415

    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[case.dtype]
    p = case.params
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape: int, std: float = 1.0) -> Any:
        return (std * torch.randn(*shape, device=device, generator=g)).to(dt)

    if case.kernel == "window_attention":
        heads, window, shift = p["heads"], p["window"], p["shift"]
        scale = (p["C"] // heads) ** -0.5
        qkv = rnd(1, p["H"], p["W"], 3 * p["C"])
        qb = 0.5 * torch.randn(3 * p["C"], device=device, generator=g)
        tb = 0.5 * torch.randn((2 * window - 1) ** 2, heads, device=device, generator=g)
        args = (qkv, qb, tb, heads, window, shift, scale)
        provs = {"triton": lambda: wa.window_attention(*args), "eager": lambda: wa.window_attention_ref(*args),
                 "sdpa": _window_sdpa_setup(torch, *args)}
        ref = wa.window_attention_ref(qkv.float(), qb, tb, heads, window, shift, scale)
        return provs, lambda out: (out.float() - ref).abs().max().item(), (qkv, ref)
    if case.kernel == "semantic_global":
        q, k, v = rnd(1, p["N"], p["K"], std=0.35), rnd(1, p["N"], p["K"], std=0.35), rnd(1, p["N"], p["C"])
        provs = {
            "triton": lambda: sa.semantic_attention_global(q, k, v),
            "eager": lambda: sa.semantic_attention_global_ref(q, k, v),
            "sdpa": lambda: F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=1.0)[:, 0],
        }
        ref = sa.semantic_attention_global_ref(q.float(), k.float(), v.float())
        return provs, lambda out: (out.float() - ref).abs().max().item(), (q, k, v, ref)
    if case.kernel == "semantic_window":
        q, k, v = (rnd(1, p["H"], p["W"], p["K"], std=0.35), rnd(1, p["H"], p["W"], p["K"], std=0.35), rnd(1, p["H"], p["W"], p["C"]))
        kb, vb = 0.35 * torch.randn(p["K"], device=device, generator=g), torch.randn(p["C"], device=device, generator=g)
        provs = {
            "triton": lambda: sa.semantic_attention_window(q, k, v, p["window"], kb, vb),
            "eager": lambda: sa.semantic_attention_window_ref(q, k, v, p["window"], kb, vb),
        }
        ref = sa.semantic_attention_window_ref(q.float(), k.float(), v.float(), p["window"], kb, vb)
        return provs, lambda out: (out.float() - ref).abs().max().item(), (q, k, v, ref)
    if case.kernel == "ms_deform_attn":
        levels, lq, m, pts, d = p["levels"], p["Lq"], p["M"], p["P"], p["D"]
        nl, s = len(levels), sum(h * w for h, w in levels)
        shapes = torch.tensor(levels, dtype=torch.int64, device=device)
        starts = torch.tensor([0] + [h * w for h, w in levels][:-1], dtype=torch.int64, device=device).cumsum(0)
        loc = torch.rand(1, lq, m, nl, pts, 2, device=device, generator=g) * 1.2 - 0.1  # ~8% of points outside
        aw = torch.randn(1, lq, m, nl * pts, device=device, generator=g).softmax(-1).view(1, lq, m, nl, pts)
        value, loc, aw = rnd(1, s, m, d), loc.to(dt), aw.to(dt)
        args = (value, shapes, starts, loc, aw)
        provs = {"triton": lambda: msda.ms_deform_attn(*args), "eager": lambda: msda.ms_deform_attn_ref(*args),
                 "gather": lambda: msda.ms_deform_attn_fast_cpu(*args)}
        ref = msda.ms_deform_attn_ref(value.float(), shapes, starts, loc.float(), aw.float())  # same rounded inputs
        return provs, lambda out: (out.float() - ref).abs().max().item(), (args, ref)
    logits = rnd(1, p["K"], p["h"], p["w"])
    size = (p["H"], p["W"])
    provs = {"triton": lambda: ua.upsample_argmax(logits, size), "eager": lambda: ua.upsample_argmax_ref(logits, size)}
    ref = ua.upsample_argmax_ref(logits, size)
    return provs, lambda out: float((out != ref).sum().item()), (logits, ref)


def run_kernel_benchmarks(
    out_dir: Path,
    kernels: list[str],
    variants: list[str],
    resolutions: list[str],
    dtypes: list[str],
    warmup_ms: int = 25,
    rep_ms: int = 100,
    peaks: tuple[float | None, float | None, float | None] | None = None,
    log: Callable[[str], None] = print,
) -> list[Case]:
    """Run every case on the current CUDA device and write ``kernels.json`` / ``kernels.md`` to ``out_dir``.

    Args:
        out_dir: output folder (created).
        kernels: subset of {"window", "semantic", "upsample", "msda"}.
        variants: subset of VARIANTS ("T", "L").
        resolutions: subset of RESOLUTIONS.
        dtypes: subset of {"fp16", "bf16", "fp32"}.
        warmup_ms: do_bench warm-up time per measurement.
        rep_ms: do_bench repetition time per measurement.
        peaks: (half TFLOP/s, fp32 TFLOP/s, GB/s) overriding the datasheet table (None entries: unknown).
        log: progress printer.

    Returns:
        The cases with their results.
    """
    import torch  # noqa: PLC0415
    import triton  # noqa: PLC0415
    from triton.testing import do_bench  # noqa: PLC0415

    dev_name = torch.cuda.get_device_name()
    peaks = peaks or device_peaks(dev_name)
    cases = build_cases(kernels, variants, resolutions, dtypes)
    for i, case in enumerate(cases):
        log(f"[{i + 1}/{len(cases)}] {case.kernel} {case.dtype} {case.name}")
        try:
            provs, err_of, keep = _providers(torch, case)
        except torch.cuda.OutOfMemoryError as e:
            case.results["setup"] = {"error": f"out of memory: {e}"[:300]}
            torch.cuda.empty_cache()
            continue
        for prov, fn in provs.items():
            res: dict[str, Any] = {}
            try:
                out = fn()
                res["max_err" if case.kernel != "upsample_argmax" else "label_mismatches"] = err_of(out)
                del out
                ms = do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
                res["ms"] = ms
                res["tflops"] = case.flops / ms / 1e9
                res["gbps"] = case.bytes / ms / 1e6
                peak_tf = (peaks[1] if case.dtype == "fp32" else peaks[0]) if peaks else None
                if peak_tf:
                    res["frac_peak_flops"] = res["tflops"] / peak_tf
                if peaks and peaks[2]:
                    res["frac_peak_bw"] = res["gbps"] / peaks[2]
            except Exception as e:  # noqa: BLE001  (recorded, e.g. OOM of an eager baseline or an SDPA limit)
                res["error"] = f"{type(e).__name__}: {e}"[:300]
                torch.cuda.empty_cache()
            case.results[prov] = res
        del provs, keep
        torch.cuda.empty_cache()
    meta = {
        "device": dev_name,
        "capability": list(torch.cuda.get_device_capability()),
        "peaks_half_tflops_fp32_tflops_gbps": peaks,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "warmup_ms": warmup_ms,
        "rep_ms": rep_ms,
    }
    write_reports(out_dir, meta, cases)
    return cases


# ---------------------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _fmt(x: Any, spec: str) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def render_markdown(meta: dict[str, Any], cases: list[Case]) -> str:
    """Markdown report: one table per kernel, one row per case and provider."""
    lines = [f"# Kernel benchmarks — {meta.get('device', '?')}", ""]
    lines.append(", ".join(f"{k}: {v}" for k, v in meta.items() if k != "device"))
    lines.append("")
    lines.append("Median of triton.testing.do_bench. TFLOP/s and GB/s use nominal work and compulsory traffic; "
                 "%peak is against the datasheet peak (fp16/bf16 tensor cores; fp32 CUDA cores for fp32). "
                 "speed-up = provider ms / triton ms. err = max |output − fp32 ref| (labels differing for upsample).")
    for kernel in dict.fromkeys(c.kernel for c in cases):
        lines += ["", f"## {kernel}", "", "| case | dtype | provider | ms | TFLOP/s | %peak FLOP | GB/s | %peak BW | speed-up of triton | err |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for c in (c for c in cases if c.kernel == kernel):
            t_ms = c.results.get("triton", {}).get("ms")
            for prov, r in c.results.items():
                if "error" in r:
                    lines.append(f"| {c.name} | {c.dtype} | {prov} | error: {r['error'][:80]} | | | | | | |")
                    continue
                speed = _fmt(r["ms"] / t_ms, ".2f") + "×" if t_ms and prov != "triton" else ""
                err = r.get("max_err", r.get("label_mismatches"))
                lines.append(
                    f"| {c.name} | {c.dtype} | {prov} | {_fmt(r.get('ms'), '.4f')} | {_fmt(r.get('tflops'), '.2f')} | "
                    f"{_fmt(100 * r['frac_peak_flops'], '.1f') + '%' if 'frac_peak_flops' in r else '—'} | {_fmt(r.get('gbps'), '.1f')} | "
                    f"{_fmt(100 * r['frac_peak_bw'], '.1f') + '%' if 'frac_peak_bw' in r else '—'} | {speed} | {_fmt(err, '.2e')} |"
                )
    return "\n".join(lines) + "\n"


def write_reports(out_dir: Path, meta: dict[str, Any], cases: list[Case]) -> None:
    """Write ``kernels.json`` and ``kernels.md`` atomically."""
    _atomic_write(out_dir / "kernels.json", json.dumps({"meta": meta, "cases": [asdict(c) for c in cases]}, indent=1))
    _atomic_write(out_dir / "kernels.md", render_markdown(meta, cases))


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------


def _csv(choices: list[str]) -> Callable[[str], list[str]]:
    def parse(s: str) -> list[str]:
        items = [x.strip() for x in s.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}, got {s!r}")
        return items

    return parse


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (2 when no usable CUDA GPU)."""
    ap = argparse.ArgumentParser(prog="python -m semask_deploy.benchmarks.kernels", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder, e.g. benchmarks/results/h100/")
    ap.add_argument("--only", type=_csv(["window", "semantic", "upsample", "msda"]), default=["window", "semantic", "upsample", "msda"])
    ap.add_argument("--variants", type=_csv(list(VARIANTS)), default=list(VARIANTS))
    ap.add_argument("--resolutions", type=_csv(list(RESOLUTIONS)), default=list(RESOLUTIONS))
    ap.add_argument("--dtypes", type=_csv(["fp16", "bf16", "fp32"]), default=["fp16", "bf16"])
    ap.add_argument("--quick", action="store_true", help="2048x1024 only, fp16 only, shorter timing")
    ap.add_argument("--warmup-ms", type=int, default=25)
    ap.add_argument("--rep-ms", type=int, default=100)
    ap.add_argument("--peak-tflops", type=float, help="override the fp16/bf16 dense peak (TFLOP/s)")
    ap.add_argument("--peak-fp32-tflops", type=float, help="override the fp32 (non-tensor) peak (TFLOP/s)")
    ap.add_argument("--peak-gbps", type=float, help="override the memory bandwidth peak (GB/s)")
    args = ap.parse_args(argv)

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("error: TRITON_INTERPRET is set; unset it to benchmark compiled kernels on a GPU", file=sys.stderr)
        return 2
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        print("error: PyTorch is not installed", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: no CUDA GPU found; the kernel benchmarks run only on a GPU (the CPU interpreter is for tests)", file=sys.stderr)
        return 2
    try:
        import triton  # noqa: F401, PLC0415
    except ImportError:
        print("error: Triton is not installed; install it with `pip install 'semask-deploy[gpu]'`", file=sys.stderr)
        return 2
    if args.quick:
        args.resolutions, args.dtypes, args.warmup_ms, args.rep_ms = ["2048x1024"], ["fp16"], 10, 30
    peaks = None
    if args.peak_tflops or args.peak_fp32_tflops or args.peak_gbps:
        base = device_peaks(torch.cuda.get_device_name()) or (None, None, None)
        peaks = (args.peak_tflops or base[0], args.peak_fp32_tflops or base[1], args.peak_gbps or base[2])
    run_kernel_benchmarks(args.out, args.only, args.variants, args.resolutions, args.dtypes, args.warmup_ms, args.rep_ms, peaks,
                          log=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"wrote {args.out / 'kernels.json'} and {args.out / 'kernels.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
