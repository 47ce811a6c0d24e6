"""``semask-train``: train or fine-tune SeMask-FPN (single process, or DDP under torchrun)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ._common import OneLineParser, hw_type, main_wrapper, out_path

EPILOG = """examples:
  semask-train --variant demo --data synthetic --gamma-init 0.1 --threads 1 --out runs/demo   (the built-in demo)
  semask-train --variant tiny --data ade20k --data-root data/ADEChallengeData2016 \\
      --init swin_tiny_patch4_window7_224.pth --out runs/tiny_ade
  semask-train --variant large --data ade20k --data-root data/ADE --ohem --out runs/large
  semask-train --variant tiny --data ade20k --data-root data/ADE --out runs/tiny_ade --resume
  torchrun --standalone --nproc-per-node=2 -m semask_deploy.train --variant demo --data synthetic --out runs/ddp

--init takes an official SeMask-FPN checkpoint (loaded strictly; --variant may then be omitted; trained on other
classes than the data's, its classifier and semantic class projections start fresh) or a Swin ImageNet
classification checkpoint (backbone only; semantic layers and head start fresh). Without it the
model starts from scratch. Writes OUT/latest.pth (weights + optimizer/schedule/iteration/RNG state, for
--resume), OUT/final.pth (weights only) in the official mmseg layout, and OUT/log.jsonl.
"""


def build_parser(prog: str = "semask-train") -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=prog,
        description="Train SeMask-FPN with the official recipe: CE + 0.4 x semantic CE (OHEM where the official "
        "config has it), stochastic depth, AdamW, "
        "poly schedule with linear warm-up, mmseg augmentation; periodic whole-image evaluation on a held-out "
        "split. Run it under torchrun (python -m semask_deploy.train) for multi-process DDP.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--variant", default=None,
                   help="tiny | small | base | large (official configs with the data's classes), demo (the built-in "
                   "small model) or a model config .json (default: from --init when it is a SeMask checkpoint, else demo "
                   "with --data synthetic)")
    p.add_argument("--data", default="synthetic", choices=("synthetic", "ade20k", "cityscapes", "coco-stuff", "folder"),
                   help="training data (default: synthetic)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="data-set root folder (all but synthetic). --data folder: either ROOT/train/ and ROOT/val/, "
                   "or ROOT alone (its last 10 %% of samples, sorted by name, are held out); each with images/, "
                   "labels/ (PNG, same file stems; class index per pixel, 255 = ignore) and classes.txt (one name "
                   "per line)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of synthetic data (>= 8; default 10)")
    p.add_argument("--init", type=Path, default=None, help="SeMask or Swin ImageNet checkpoint to start from")
    p.add_argument("--iters", type=int, default=None, help="training iterations (default: 80000; demo 1600)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="crops per process and iteration (default: the official config's per-GPU batch: ADE20K 8, "
                   "Large 4; Cityscapes 4, Large 2; COCO-Stuff T/S 4, B/L 2; demo 4)")
    p.add_argument("--crop", type=hw_type("--crop"), default=None,
                   help="training crop HxW (default: the variant's; demo 256x256); synthetic scenes are this size")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: the official config's: 1e-4, Cityscapes 1e-3; a non-official "
                   "architecture 6e-5; demo 1e-3)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="AdamW weight decay (default: the official config's: 1e-4, Cityscapes 0.05; else 0.01)")
    p.add_argument("--warmup", type=int, default=None, help="linear warm-up iterations (default: min(1500, iters/10))")
    p.add_argument("--eval-every", type=int, default=None,
                   help="evaluate every N iterations (default: iters/10, at least 100 or iters if fewer)")
    p.add_argument("--save-every", type=int, default=None, help="write latest.pth every N iterations (default: "
                   "--eval-every)")
    p.add_argument("--eval-size", type=int, default=None,
                   help="held-out samples to evaluate (default: synthetic 50, data sets the whole split)")
    p.add_argument("--out", type=out_path, default=Path("semask-train-out"), help="output folder (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest.pth, with the "
                   "interrupted run's options (data, seed, iterations, …) unless given again")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed (weights, data order, augmentation, synthetic scenes)")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes per process (default: 0)")
    p.add_argument("--ohem", action=argparse.BooleanOptionalAction, default=None,
                   help="online hard example mining for the segmentation loss, as the official OHEMPixelSampler "
                   "(the 100000 x batch highest-loss pixels of the whole batch) (default: as the official "
                   "config: on for COCO-Stuff, "
                   "and for ADE20K with large)")
    p.add_argument("--drop-path", type=float, default=None, metavar="RATE",
                   help="stochastic depth of the Swin blocks, linear from 0 to RATE (default: the official 0.3 for "
                   "tiny..large and SeMask --init checkpoints; 0 for demo and config .json files)")
    p.add_argument("--log-every", type=int, default=20, help="log the mean loss every N iterations (default: 20)")
    p.add_argument("--gamma-init", type=float, default=0.0,
                   help="initial semantic-attention gamma of fresh semantic layers (official: 0; e.g. 0.1 when "
                   "training from scratch)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device (default: auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (default: PyTorch's; on a CPU shared with other jobs 1 is often "
                   "much faster, as OpenMP threads spin while waiting for each other)")
    p.add_argument("--attention", choices=("eager", "sdpa"), default="sdpa", help="attention backend (default: sdpa)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages (log.jsonl is still written)")
    return p


def given_options(argv: Sequence[str]) -> frozenset[str]:
    """The options that ``argv`` sets explicitly (their ``dest`` names), even to their default values.

    A second parse in which no option has a default: only what the command line sets ends up in it.
    """
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return frozenset(vars(probe.parse_args(list(argv))))


def options_from_args(args: argparse.Namespace, given: frozenset[str] = frozenset()):
    """The :class:`~semask_deploy.train.TrainOptions` of parsed arguments (``given``: see :func:`given_options`)."""
    from ..train import TrainOptions

    return TrainOptions(
        variant=args.variant, data=args.data, data_root=args.data_root, num_classes=args.num_classes,
        init=args.init, iters=args.iters, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
        weight_decay=args.weight_decay, warmup=args.warmup, eval_every=args.eval_every, save_every=args.save_every,
        eval_size=args.eval_size, out=args.out, resume=args.resume, seed=args.seed, workers=args.workers,
        ohem=args.ohem, drop_path=args.drop_path, log_every=args.log_every, gamma_init=args.gamma_init, device=args.device,
        threads=args.threads, attention=args.attention, quiet=args.quiet, given=given,
    )


def _run(args: argparse.Namespace, given: frozenset[str]) -> int:
    from ..train import run_train

    result = run_train(options_from_args(args, given))
    if not args.quiet and result.final is not None:
        miou = (result.metrics or {}).get("mIoU")
        score = f", held-out mIoU {100 * miou:.2f}" if miou is not None else ""
        print(f"done: {result.end_iter} iterations in {result.wall_seconds:.0f} s{score}; weights in {result.final}",
              file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    # (main_wrapper parses first, so a bad command line is reported before the second parse)
    return main_wrapper(lambda args: _run(args, given_options(raw)), build_parser(), raw)


if __name__ == "__main__":
    sys.exit(main())
