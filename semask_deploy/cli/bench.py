"""``semask-bench``: latency, throughput, memory, FLOPs and parity of every backend, in one report."""

from __future__ import annotations

import argparse
import importlib.util
import datetime as _dt
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import ConfigError, check_cpu_threads
from ._common import OneLineParser, csv_list, main_wrapper, out_path, parse_hw

if TYPE_CHECKING:
    from ..benchmarks.suite import BenchConfig

EPILOG = """defaults (no arguments): the built-in demo model on this machine's CPU, every backend, precisions
fp32,fp16,int8, sizes 256x256,512x512, batch 1,4, 3 warm-up + 20 timed runs per cell, 1 CPU thread; a
few minutes on a 2-core CPU. Report in ./semask-bench-<date>-<time>/: report.md (also printed), results.json (every raw
timing), results.csv, plot.png, flops.md.

What runs where:
  torch-eager / torch-sdpa     PyTorch, the reference attention math / the fused inference path
  torch-triton                 our Triton kernels: CUDA only (skipped on the CPU)
  torch-compile                torch.compile (inductor) of the sdpa model. On the CPU it is skipped unless
                               named in --backends: inductor needs minutes per input shape there
                               (236 s for 256x256 on the 2-core reference machine)
  onnxruntime                  the exported ONNX (fp32, fp16 mixed precision, int8 Q/DQ); CUDA EP on --device cuda
  openvino                     the same ONNX on OpenVINO's CPU plugin (fp32, int8 Q/DQ; bf16: its bf16
                               hint on the fp32 ONNX); the report says which precision ran
  tensorrt                     an engine built from the same ONNX: NVIDIA GPU + TensorRT only
  fp16 on the CPU torch path is skipped unless --precisions names fp16 (then it runs, flagged);
  int8 exists only for onnxruntime/openvino/tensorrt; bf16 (torch autocast, OpenVINO) runs when
  --precisions names it, on CPUs with native bf16. Skipped combinations are listed with the reason;
  when nothing asked for can run here, it is an error (exit 2).

examples:
  semask-bench
  semask-bench --ckpt semask_swin_tiny_ade20k.pth --backends torch-sdpa,onnxruntime --sizes 512x512 --batch 1
  semask-bench --device cuda --backends torch-sdpa,torch-triton,tensorrt --precisions fp32,fp16 --batch 1,8
  semask-bench --backends torch-sdpa,openvino --precisions fp32,bf16,int8 --sizes 512x512 --batch 1
  semask-bench --dataset ade20k --data-root ADEChallengeData2016 --limit 100 --ckpt model.pth
  semask-bench --dataset synthetic --limit 16
"""


def _sizes(text: str) -> list[tuple[int, int]]:
    return [parse_hw(t, "--sizes") for t in csv_list(text)]


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{what} must be an integer, got {text!r}") from None


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in csv_list(text)]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="semask-bench",
        description="Benchmark SeMask-FPN across backends × precisions × sizes × batch sizes: params, FLOPs "
        "(analytic and FlopCounterMode), latency p50/p90/p99/mean, images/s, peak memory, achieved TFLOP/s vs the "
        "measured device peak, export/build time, and parity with the torch fp32 reference (logit errors, pixel "
        "agreement, mIoU); with --dataset also mIoU/aAcc vs ground truth and ΔmIoU vs torch fp32.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--ckpt", type=Path, help=".pth/.safetensors SeMask-FPN or mask-classification (detectron2) checkpoint")
    src.add_argument("--demo", action="store_true", help="the built-in demo model (the default)")
    from ..benchmarks.runners import BACKENDS

    p.add_argument("--backends", default=None, help=f"comma list from {','.join(BACKENDS)} (default: all)")
    p.add_argument("--precisions", default=None, help="comma list from fp32,fp16,int8,bf16 (default: all but bf16, which is torch "
                   "autocast or OpenVINO's bf16 hint on CPUs with native bf16 and runs when named)")
    p.add_argument("--sizes", default=None, help="comma list of HxW input sizes (default: 256x256,512x512)")
    p.add_argument("--batch", default=None, help="comma list of batch sizes (default: 1,4)")
    p.add_argument("--runs", default="20", help="timed runs per cell (default: 20; fewer makes p99 meaningless)")
    p.add_argument("--warmup", default="3", help="warm-up calls per cell, the first timed apart (default: 3)")
    p.add_argument("--dataset", default=None, help="ade20k|cityscapes|coco-stuff|folder|synthetic: also measure "
                   "accuracy vs ground truth, and use its images as benchmark inputs")
    p.add_argument("--data-root", type=Path, default=None, help="data-set root (not needed for synthetic)")
    p.add_argument("--split", default=None, help="data-set split (default: the evaluation split)")
    p.add_argument("--limit", default=None, help="use only the first N data-set images")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", default=None, help="CPU threads for torch, ONNX Runtime and OpenVINO; 0 = all cores (default: "
                   "1 with --device cpu, like torch.utils.benchmark — multi-threaded CPU timings on a shared machine "
                   "swing by 10-100x; untouched with --device cuda)")
    p.add_argument("--out", type=out_path, default=None, help="report folder (default: ./semask-bench-<date>-<time>/)")
    p.add_argument("--keep-artifacts", action="store_true", help="keep exported ONNX/engines in OUT/artifacts/")
    p.add_argument("--force", action="store_true",
                   help="replace the report of an earlier run in --out (without it, such a folder is refused)")
    p.add_argument("--no-plot", action="store_true", help="skip plot.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no printed table")
    return p


def config_from_args(args: argparse.Namespace, argv: Sequence[str] | None = None) -> BenchConfig:
    """Validate the arguments and build a :class:`~semask_deploy.benchmarks.suite.BenchConfig`."""
    from ..benchmarks.suite import DEFAULT_BATCHES, DEFAULT_SIZES, BenchConfig
    from ..benchmarks.runners import BACKENDS, DEFAULT_PRECISIONS

    if args.ckpt is not None:
        if not args.ckpt.is_file():
            raise ConfigError(f"checkpoint not found: {args.ckpt}")
        ckpt, label = args.ckpt, str(args.ckpt)
    else:
        from ..assets import demo_checkpoint

        ckpt, label = demo_checkpoint(), "the built-in demo model"
    backends = tuple(csv_list(args.backends)) if args.backends is not None else BACKENDS
    precisions = tuple(csv_list(args.precisions)) if args.precisions is not None else DEFAULT_PRECISIONS
    # a size or batch given twice would time the same cells twice (and pick either as the baseline)
    sizes = tuple(dict.fromkeys(_sizes(args.sizes))) if args.sizes is not None else DEFAULT_SIZES
    batches = tuple(dict.fromkeys(_ints(args.batch, "--batch"))) if args.batch is not None else DEFAULT_BATCHES
    runs, warmup = _int(args.runs, "--runs"), _int(args.warmup, "--warmup")
    limit = None
    if args.limit is not None:
        limit = _int(args.limit, "--limit")
        if limit <= 0:
            raise ConfigError(f"--limit must be positive, got {limit}")
    if args.dataset is None and (args.data_root is not None or args.limit is not None or args.split is not None):
        raise ConfigError("--data-root/--split/--limit need --dataset")
    if args.dataset is not None:
        from ..benchmarks.parity import DATASET_CHOICES

        if args.dataset not in DATASET_CHOICES:
            raise ConfigError(f"unknown --dataset {args.dataset!r}; choose one of {', '.join(DATASET_CHOICES)}")
        if args.dataset != "synthetic" and args.data_root is None:
            raise ConfigError(f"--dataset {args.dataset} needs --data-root DIR")
    if args.device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was requested but no CUDA GPU is available; use --device cpu")
    threads = _int(args.threads, "--threads") if args.threads is not None else (1 if args.device == "cpu" else None)
    if threads is not None and threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {threads}")
    if threads is not None:
        check_cpu_threads(threads, "--threads")
    if threads == 0:
        threads = None  # all cores: torch's and ONNX Runtime's defaults
    if not getattr(args, "no_plot", False) and importlib.util.find_spec("matplotlib") is None:
        # found now, not after minutes of measuring
        raise ConfigError("plot.png needs matplotlib, which is not installed: pip install 'semask-deploy[bench]', "
                          "or pass --no-plot")
    out = args.out or Path(f"semask-bench-{_dt.datetime.now():%Y%m%d-%H%M%S}")
    from ..fileio import check_output_folder

    check_output_folder(out)  # now, not when the report is written after minutes of measuring
    from ..benchmarks.report import FILES

    earlier = [name for name in FILES if (Path(out) / name).exists()]
    if earlier and not getattr(args, "force", False):
        raise ConfigError(f"--out {out} holds the report of an earlier run ({', '.join(earlier)}): choose another "
                          "--out, or --force to replace it")
    cmd = "semask-bench" + ("" if not argv else " " + " ".join(shlex.quote(a) for a in argv))
    cfg = BenchConfig(
        checkpoint=ckpt, out=out, backends=backends, precisions=precisions, sizes=sizes, batches=batches,
        runs=runs, warmup=warmup, device=args.device, dataset=args.dataset, data_root=args.data_root,
        split=args.split, limit=limit, explicit_backends=args.backends is not None,
        explicit_precisions=args.precisions is not None, keep_artifacts=args.keep_artifacts, threads=threads,
        quiet=args.quiet, command=cmd, checkpoint_label=label,
    )
    cfg.validate()
    return cfg


def run_bench_cli(cfg: BenchConfig, *, plot: bool = True) -> dict[str, Path]:
    """Run the matrix for ``cfg`` and write the report; returns the written files."""
    from ..benchmarks.report import write_report
    from ..benchmarks.suite import run_bench
    from ..fileio import folders_removed_on_failure

    # --keep-artifacts makes OUT/artifacts/ during the run: an interrupted or failed run removes it (and OUT)
    # again if it created them and they are empty
    with folders_removed_on_failure(cfg.out, Path(cfg.out) / "artifacts"):
        result = run_bench(cfg)
        return write_report(result.to_dict(), cfg.out, with_plot=plot)


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    from ..benchmarks.report import ReportWriteError

    cfg = config_from_args(args, argv)
    try:
        paths = run_bench_cli(cfg, plot=not args.no_plot)
    except ReportWriteError as exc:  # the measurements are done: show them rather than lose them
        print(exc.markdown)
        raise
    if not args.quiet:
        print(paths["report.md"].read_text(encoding="utf-8"))
        print(f"report written to {cfg.out}/ ({', '.join(p.name for p in paths.values())})", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return main_wrapper(lambda a: _run(a, argv), build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
