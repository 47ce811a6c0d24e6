"""CPU speed of SeMask-L Mask2Former (ADE20K, full-size architecture): default path vs the official CPU path.

The baseline is the official code's CPU path = our ``eager`` backend: the pure-PyTorch ``grid_sample``
multi-scale deformable attention (``ms_deform_attn_core_pytorch``), eager window/semantic/decoder
attention, and semantic inference over the full K×H×W score map followed by argmax. The default path is
``sdpa``: SDPA attention, the fused-gather CPU deformable attention (``ms_deform_attn_fast_cpu``) and the
row-chunked ``predict`` (no K×H×W map). Random weights (N(0, 0.02); speed does not depend on them), fp32,
one 640×640 image (ADE20K's test short side). Both paths live in ONE process and are timed alternately,
run by run, so machine load hits both alike. A per-stage profile (backbone, pixel decoder, transformer
decoder, postprocess) is taken from one extra run of each path.

    python -m semask_deploy.benchmarks.cpu_speed_m2f --out benchmarks/results/cpu --threads 1 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from semask_deploy.runtime.cpu_info import cpu_description


def semask_l_mask2former_ade20k():
    """The official ADE20K SeMask-L Mask2Former architecture (222.6 M parameters)."""
    from semask_deploy.maskformer_config import MaskFormerConfig, official_sem_modes

    return MaskFormerConfig(
        arch="mask2former", pixel_decoder="msdeform", embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48),
        window_size=12, sem_window_size=12, sem_modes=official_sem_modes("mask2former", "msdeform", 150),
        num_classes=150, dataset="ade20k", name="semask_l_mask2former_ade20k",
    )


def _profile(model, x) -> dict[str, float]:
    """Seconds per stage of one ``predict``-style pass."""
    from semask_deploy.model.mask_former import semantic_argmax, semantic_inference

    t = {}
    t0 = time.perf_counter()
    feats, _ = model.backbone(model.pad(x))
    t["backbone"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mask_features, multi = model.sem_seg_head.pixel_decoder(feats)
    t["pixel_decoder"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits, masks = model.sem_seg_head.predictor(multi, mask_features)
    t["transformer_decoder"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hw = (x.shape[2], x.shape[3])
    if model.attention_backend == "eager":
        semantic_inference(logits, masks, model.pad_size(x))[:, :, : hw[0], : hw[1]].argmax(1)
    else:
        semantic_argmax(logits, masks, model.pad_size(x), hw)
    t["postprocess_labels"] = time.perf_counter() - t0
    return {k: v * 1e3 for k, v in t.items()}


def run(size: int = 640, runs: int = 2, warmup: int = 1, threads: int = 1) -> dict:
    """Time eager vs sdpa for ``model(x)`` and ``model.predict(x)``; returns a JSON-ready dict."""
    from semask_deploy.model.mask_former import MaskFormerSegmentor

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = semask_l_mask2former_ade20k()
    ref = MaskFormerSegmentor(cfg, attention_backend="eager").eval()
    for p in ref.parameters():
        p.data.normal_(0, 0.02)
    fast = MaskFormerSegmentor(cfg, attention_backend="sdpa").eval()
    fast.load_state_dict(ref.state_dict())
    models = {"eager": ref, "sdpa": fast}
    x = torch.randn(1, 3, size, size)
    results: dict = {}
    with torch.inference_mode():
        outs = {k: m(x) for k, m in models.items()}  # also the warm-up of model(x)
        err = (outs["eager"] - outs["sdpa"]).abs().max().item()
        labels = {k: m.predict(x) for k, m in models.items()}
        agree = (labels["eager"] == labels["sdpa"]).float().mean().item()
        del outs
        for what, attr in (("forward", "__call__"), ("predict", "predict")):
            fns = {k: getattr(m, attr) for k, m in models.items()}
            for _ in range(warmup - 1):
                for fn in fns.values():
                    fn(x)
            times: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(runs):
                for k, fn in fns.items():
                    t0 = time.perf_counter()
                    fn(x)
                    times[k].append(time.perf_counter() - t0)
            results[what] = {
                k: {"median_ms": statistics.median(v) * 1e3, "min_ms": min(v) * 1e3, "runs_ms": [t * 1e3 for t in v]}
                for k, v in times.items()
            }
            results[what]["speedup_median"] = results[what]["eager"]["median_ms"] / results[what]["sdpa"]["median_ms"]
            results[what]["speedup_min"] = results[what]["eager"]["min_ms"] / results[what]["sdpa"]["min_ms"]
        profile = {k: _profile(m, x) for k, m in models.items()}
    return {
        "model": cfg.name, "params": sum(p.numel() for p in ref.parameters()), "input": [1, 3, size, size],
        "dtype": "float32", "threads": threads, "runs": runs, "warmup": warmup,
        "max_abs_score_diff_sdpa_vs_eager": err, "label_agreement": agree, "torch": torch.__version__,
        "cpu": cpu_description(), "load_average": os.getloadavg(), "results": results, "profile_ms": profile,
    }


def to_markdown(rs: list[dict]) -> str:
    r0 = rs[0]
    lines = [
        f"# CPU speed: SeMask-L Mask2Former ADE20K ({r0['params'] / 1e6:.1f} M params), "
        f"{r0['input'][2]}×{r0['input'][3]} fp32 — default `sdpa` path vs the official CPU path (`eager`)",
        "",
        "| threads | call | eager median (ms) | sdpa median (ms) | speed-up (median) | speed-up (best run) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rs:
        for what, call in (("forward", "model(x)"), ("predict", "model.predict(x)")):
            x = r["results"][what]
            lines.append(f"| {r['threads']} | `{call}` | {x['eager']['median_ms']:.0f} | {x['sdpa']['median_ms']:.0f} "
                         f"| {x['speedup_median']:.2f}× | {x['speedup_min']:.2f}× |")
    lines += ["", "Profile of one labels pass (ms):", "",
              "| threads | path | backbone | pixel decoder | transformer decoder | postprocess (labels) |",
              "|---|---|---|---|---|---|"]
    for r in rs:
        for k, p in r["profile_ms"].items():
            lines.append(f"| {r['threads']} | {k} | {p['backbone']:.0f} | {p['pixel_decoder']:.0f} | "
                         f"{p['transformer_decoder']:.0f} | {p['postprocess_labels']:.0f} |")
    lines.append("")
    for r in rs:
        lines.append(f"- {r['threads']} thread(s): {r['runs']} alternated runs per call after warm-up; max |Δscore| "
                     f"sdpa vs eager {r['max_abs_score_diff_sdpa_vs_eager']:.1e}, label agreement "
                     f"{r['label_agreement'] * 100:.3f} %; load average {tuple(round(v, 2) for v in r['load_average'])}")
    lines.append(f"- torch {r0['torch']}; CPU {r0['cpu']}; the machine (2 cores) was shared with other jobs "
                 "during the run, so absolute times are noisy — the ratio is what the alternation protects.")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu"))
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    from semask_deploy.fileio import write_json_atomic, write_text_atomic

    rs = []
    for t in args.threads:
        rs.append(run(args.size, args.runs, threads=t))
        write_json_atomic(args.out / "cpu_speed_m2f.json", rs)
        write_text_atomic(args.out / "cpu_speed_m2f.md", to_markdown(rs))
    print(to_markdown(rs))


if __name__ == "__main__":
    main()
