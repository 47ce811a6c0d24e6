"""Building the shipped demo assets from a finished ``semask-train --variant demo --data synthetic`` run.

    python -m semask_deploy.training.demo RUN_DIR --command "<the exact semask-train command>"

1. ``RUN_DIR/final.pth`` → ``semask_deploy/assets/semask_demo_synthetic.pth``: weights only, official mmseg
   layout, fp16 except the BatchNorms (fp32); :func:`~semask_deploy.api.load_model` casts it back to fp32.
2. Held-out evaluation OF THAT FILE with the runtime's whole-image pipeline (what ``semask-infer --demo``
   runs) on the run's held-out synthetic scenes (seed ``train seed + 1000003``, the training size).
3. Sample images ``sample_scene_{1,2,3}.png`` (320×240 synthetic scenes from a seed used neither for
   training nor for the held-out scenes).
4. The sidecar ``semask_demo_synthetic.json``: command, iterations, wall time, held-out mIoU and per-class
   IoU, config, checkpoint size and SHA-256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..api import load_model
from ..checkpoint import save_checkpoint
from ..data.io import write_png
from ..data.synthetic import SyntheticScenes
from ..errors import ConfigError
from ..fileio import write_json_atomic
from ..metrics import ConfusionMatrix
from .data import SYNTHETIC_VAL_SEED_OFFSET

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SAMPLE_SEED = 20261124  # neither a training seed nor seed + SYNTHETIC_VAL_SEED_OFFSET of the demo run
SAMPLE_SIZE = (240, 320)  # H, W


def export_checkpoint(src: Path, dest: Path) -> Path:
    """Weights of ``src`` in fp16 (BatchNorm kept fp32) at ``dest``, official layout, strictly loadable."""
    model = load_model(src)
    model.half()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.float()
    return save_checkpoint(model, dest, meta={"precision": "fp16 weights, fp32 BatchNorm"})


def evaluate_checkpoint(path: Path, scenes: SyntheticScenes) -> dict[str, Any]:
    """Whole-image evaluation of a checkpoint through :class:`~semask_deploy.runtime.Segmenter`."""
    from ..runtime import Segmenter

    seg = Segmenter(path, mode="whole")
    cm = ConfusionMatrix(seg.num_classes)
    for i in range(len(scenes)):
        img, lab = scenes[i]
        cm.update(seg.predict(img), lab)
    return cm.to_dict(seg.class_names)


def write_samples(dest: Path, num_classes: int, n: int = 3) -> list[Path]:
    """``n`` 320×240 synthetic scenes (seed :data:`SAMPLE_SEED`) as ``sample_scene_{i}.png``."""
    scenes = SyntheticScenes(num_classes, SAMPLE_SIZE, seed=SAMPLE_SEED, length=n)
    return [write_png(dest / f"sample_scene_{i + 1}.png", scenes[i][0]) for i in range(n)]


def build(
    run: Path, command: str, assets: Path = ASSETS, eval_scenes: int | None = None, machine: str | None = None
) -> dict[str, Any]:
    """Build every demo asset from the run in ``run`` (see the module docstring); returns the sidecar."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["event"] == "start")
    done = [r for r in records if r["event"] == "done"]
    if not done or not (run / "final.pth").is_file():
        raise ConfigError(f"{run} holds no finished run (no final.pth / 'done' record)")
    if any(r["event"] == "resume" for r in records):
        print("note: the run was resumed; the wall time is the sum over its parts", file=sys.stderr)
    opts, cfg = start["options"], start["config"]
    seed = int(opts["seed"])
    size = tuple(cfg["crop_size"])
    n_eval = eval_scenes or opts.get("eval_size") or 50
    dest = assets / "semask_demo_synthetic.pth"
    export_checkpoint(run / "final.pth", dest)
    held_out = SyntheticScenes(cfg["num_classes"], size, seed=seed + SYNTHETIC_VAL_SEED_OFFSET, length=n_eval)
    metrics = evaluate_checkpoint(dest, held_out)
    samples = write_samples(assets, cfg["num_classes"])
    evals = [r for r in records if r["event"] == "eval"]
    trains = [r for r in records if r["event"] == "train"]
    sidecar = {
        "name": "semask_demo_synthetic",
        "description": "A small SeMask-FPN (Swin embed 32, depths 2-2-2-2) trained from scratch on procedurally "
        "generated synthetic scenes, for quick starts and smoke tests. It knows only the synthetic classes.",
        "command": command,
        "export": f"python -m semask_deploy.training.demo {run} --command '<the command above>'",
        "iterations": done[-1]["iter"],
        "batch_size": start["batch_per_process"] * start["world_size"],
        "crop": list(size),
        "lr": start["lr"],
        "warmup": start["warmup"],
        "train_seconds": round(sum(r["train_seconds"] for r in done), 1),
        "wall_seconds": round(sum(r["wall_seconds"] for r in done), 1),
        "machine": machine or f"{os.cpu_count()}-core {platform.machine()} CPU, torch {torch.__version__}, "
        f"{opts.get('threads') or torch.get_num_threads()} thread(s)",
        "heldout": {
            "scenes": n_eval, "size": list(size), "seed": seed + SYNTHETIC_VAL_SEED_OFFSET,
            "inference": "whole image at the training size through semask_deploy.runtime.Segmenter, this file",
            "mIoU": metrics["mIoU"], "mAcc": metrics["mAcc"], "aAcc": metrics["aAcc"],
            "per_class_iou": {c["class"]: c["iou"] for c in metrics["per_class"]},
        },
        "training_curve": [{"iter": r["iter"], "mIoU": r["mIoU"]} for r in evals],
        "final_train_loss": trains[-1]["loss"] if trains else None,
        "config": cfg,
        "classes": list(held_out.classes),
        "palette": [list(c) for c in held_out.palette],
        "checkpoint": {
            "file": dest.name, "bytes": dest.stat().st_size,
            "sha256": hashlib.sha256(dest.read_bytes()).hexdigest(),
            "precision": "fp16 weights, fp32 BatchNorm (load_model casts to fp32)",
        },
        "samples": {"files": [p.name for p in samples], "seed": SAMPLE_SEED, "size_hw": list(SAMPLE_SIZE)},
    }
    write_json_atomic(dest.with_suffix(".json"), sidecar)
    return sidecar


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m semask_deploy.training.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="the semask-train --out folder of the demo run")
    p.add_argument("--command", required=True, help="the exact semask-train command of that run")
    p.add_argument("--assets", type=Path, default=ASSETS, help="where to write (default: the package's assets)")
    p.add_argument("--eval-scenes", type=int, default=None, help="held-out scenes (default: the run's --eval-size)")
    p.add_argument("--machine", default=None, help="how to describe the training machine in the sidecar")
    args = p.parse_args(argv)
    side = build(args.run, args.command, args.assets, args.eval_scenes, args.machine)
    per = ", ".join(f"{k} {100 * v:.1f}" for k, v in side["heldout"]["per_class_iou"].items() if v is not None)
    print(f"held-out mIoU {100 * side['heldout']['mIoU']:.2f} ({per}); "
          f"{side['checkpoint']['bytes'] / 1e6:.2f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
