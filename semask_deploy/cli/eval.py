"""``semask-eval``: mIoU / aAcc / per-class IoU of a checkpoint, ONNX file or engine on a data set."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from ._common import OneLineParser, hw_type, main_wrapper, out_path, progress

EPILOG = """data-set layouts (mmseg conventions; labels in train-id space, 255 = ignore):
  ade20k       ROOT/images/validation/*.jpg + ROOT/annotations/validation/*.png (0 = other → ignored,
               k → k-1: reduce_zero_label); test resize 2048x512 (2560x640 for 640-crop models)
  cityscapes   ROOT/leftImg8bit/val/<city>/*_leftImg8bit.png + ROOT/gtFine/val/<city>/*_gtFine_labelTrainIds.png;
               test resize 2048x1024
  coco-stuff   ROOT/images/test2014/*.jpg + ROOT/annotations/test2014/*_labelTrainIds.png (10k; 164k:
               --split val2017); test resize 2048x512
  folder       ROOT/images/*, ROOT/labels/<stem>.png (0..K-1, 255 = ignore), ROOT/classes.txt; no resize
  synthetic    deterministic synthetic scenes generated in memory (256x256, --limit of them, default 16);
               no --data-root; no resize

examples:
  semask-eval --model semask_swin_tiny_ade20k.pth --dataset ade20k --data-root data/ADEChallengeData2016
  semask-eval --model model.onnx --dataset cityscapes --data-root data/cityscapes --mode slide --out city.json
  semask-eval --demo --dataset synthetic --limit 32
"""


def build_parser() -> argparse.ArgumentParser:
    from ..benchmarks.parity import DATASET_CHOICES

    p = OneLineParser(
        prog="semask-eval",
        description="Evaluate a SeMask model (PyTorch checkpoint, ONNX file or TensorRT engine) on a labelled data "
        "set with the official test pipeline; prints mIoU, aAcc and per-class IoU and writes them as JSON.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help=".pth/.safetensors checkpoint, .onnx file, OpenVINO .xml, "
                     "TensorRT .engine or AOTInductor .pt2")
    src.add_argument("--demo", action="store_true", help="the built-in demo model (synthetic scenes)")
    p.add_argument("--dataset", required=True, choices=DATASET_CHOICES, help="data-set layout (see below)")
    p.add_argument("--data-root", type=Path, default=None, help="data-set root folder")
    p.add_argument("--split", default=None, help="split (default: validation / val / test2014)")
    p.add_argument("--mode", choices=("whole", "slide"), default="whole", help="inference mode (default: whole)")
    p.add_argument("--scale", default=None,
                   help="keep-ratio test resize LONGxSHORT (one number N means NxN) or 'none' (default: the "
                   "model's test scale for ade20k/cityscapes/coco-stuff, none for folder/synthetic)")
    p.add_argument("--crop", type=hw_type("--crop"), default=None, help="slide window HxW (default: training crop)")
    p.add_argument("--stride", type=hw_type("--stride"), default=None, help="slide step HxW (default: 2/3 crop)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device (default: cpu)")
    p.add_argument("--attention", choices=("eager", "sdpa", "triton"), default=None,
                   help="PyTorch checkpoints: attention backend (default: sdpa); an error with exported models")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "openvino"), default="auto",
                   help="auto: by file suffix (.onnx → ONNX Runtime, .xml → OpenVINO); onnxruntime: an .onnx with "
                   "ONNX Runtime; openvino: an .onnx with OpenVINO (pip install 'semask-deploy[openvino]') "
                   "(default: auto)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="PyTorch checkpoints: bf16 = autocast, LayerNorm/semantic attention fp32; OpenVINO: the float "
                   "precision, set explicitly; bf16 needs a CPU with native bf16 (avx512_bf16 or AMX) (default: fp32)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads of the runtime (ONNX Runtime, OpenVINO, PyTorch); 0 = all cores "
                   "(default: the runtime's own choice, all cores)")
    p.add_argument("--out", type=out_path, default=None, help="write the results to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-class table")
    return p


def _scale(text: str | None) -> Any:
    if text is None:
        return None  # run_eval's default: none for folder/synthetic data (unless a static export), else the model's
    if text.lower() == "none":
        return "none"
    try:
        return hw_type("--scale", "LONGxSHORT", "2048x512")(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(str(exc)) from None


def run_eval(
    model: Path | None,
    dataset: str,
    data_root: Path | None = None,
    *,
    demo: bool = False,
    split: str | None = None,
    mode: str = "whole",
    scale: Any = None,
    crop: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    limit: int | None = None,
    device: str = "cpu",
    attention: str | None = None,
    backend: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    out: Path | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``dataset``; returns (and with ``out`` writes atomically) the results.

    Args:
        model: checkpoint / ONNX / engine path (or ``demo=True``).
        dataset: ``ade20k`` | ``cityscapes`` | ``coco-stuff`` | ``folder`` | ``synthetic``.
        data_root: the data set's root (not for ``synthetic``).
        scale: ``(long, short)``, ``"none"``, or None for the default of the data set (module doc).
        Other arguments: as in :class:`~semask_deploy.runtime.Segmenter`.

    Returns:
        ``{"model", "dataset", "data_root", "split", "mode", "scale", "images", "mIoU", "aAcc", "mAcc",
        "per_class": [{"class", "iou", "acc"}], "seconds"}`` (fractions in [0, 1]; NaN → null).

    Raises:
        SemaskError: bad arguments, unreadable model or data set, class-count mismatch.
    """
    from ..benchmarks.parity import evaluate, open_eval_dataset
    from ..fileio import check_output_file, write_json_atomic
    from ..runtime import Segmenter

    if limit is not None and limit <= 0:
        raise ConfigError(f"--limit must be a positive number of images, got {limit}")
    if dataset != "synthetic" and data_root is None:
        raise ConfigError(f"--dataset {dataset} needs --data-root DIR")
    if dataset == "synthetic" and (data_root is not None or split is not None):
        raise ConfigError("--dataset synthetic makes its own scenes in memory: drop --data-root/--split (or pick "
                          "the --dataset those files belong to)")
    if out is not None:  # before evaluating (which may take hours), not after
        if Path(out).suffix.lower() != ".json" and not Path(out).is_dir():
            # the results are JSON: a typo such as --out img.png must not replace an image with them
            raise ConfigError(f"--out is the results file: give a .json file name, got {out}")
        check_output_file(out)
    if demo:
        from ..assets import demo_checkpoint

        model = demo_checkpoint()
    if model is None:
        raise ConfigError("give --model PATH or --demo")
    # folder / synthetic data default to no test resize — except for a static export, which takes one size only
    keep_size = scale is None and dataset in ("folder", "synthetic")
    seg = Segmenter(model, device=device, mode=mode, scale=scale, crop=crop, stride=stride, attention_backend=attention,
                    backend=None if backend == "auto" else backend, precision=precision, threads=threads)
    if keep_size and seg.input_hw is None:
        seg.scale, seg.resize_rule = None, None
    ds = open_eval_dataset(dataset, data_root, seg.num_classes, split=split, limit=limit)
    if len(ds) == 0:
        raise ConfigError(f"the {dataset} data set at {data_root} has no images")
    t0 = time.perf_counter()
    bar = (lambda it: progress(it, total=len(ds), desc="evaluating", disable=quiet))
    cm, _ = evaluate(seg.predict, ds, seg.num_classes, progress=bar)
    res = cm.to_dict(list(ds.classes))
    static = seg.input_hw is not None and mode == "whole"
    result = {
        "model": str(model), "demo": demo, "dataset": dataset,
        "data_root": None if data_root is None else str(data_root),
        "split": getattr(ds, "split", split), "mode": mode,
        # a static export resizes every image to its one input size (no keep-ratio scale applies)
        "scale": None if seg.scale is None or static else list(seg.scale),
        "static_input": list(seg.input_hw) if static else None,
        "images": len(ds), "mIoU": res["mIoU"], "aAcc": res["aAcc"], "mAcc": res["mAcc"], "pixels": res["pixels"],
        "per_class": res["per_class"], "seconds": time.perf_counter() - t0,
        "runtime": seg.backend.describe(),  # what ran: backend, precision (OpenVINO: read back from the compile)
    }
    if out is not None:
        try:
            write_json_atomic(out, result)
        except OSError as exc:
            raise ConfigError(f"cannot write --out {out}: {exc.strerror or exc}") from None
    return result


def format_result(result: dict[str, Any], per_class: bool = True) -> str:
    """The summary (and the per-class IoU table) as text; values in % like mmseg prints them."""

    def pct(v: float | None) -> str:
        return "   –  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.2f}"

    lines = []
    if per_class:
        width = max([5] + [len(c["class"]) for c in result["per_class"]])
        lines += [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}", f"{'-' * width}  ------  ------"]
        lines += [f"{c['class']:<{width}}  {pct(c['iou'])}  {pct(c['acc'])}" for c in result["per_class"]]
        lines.append("")
    if result.get("static_input"):
        scale = "static {}x{} input".format(*result["static_input"])
    else:
        scale = "scale " + ("none" if result["scale"] is None else "x".join(map(str, result["scale"])))
    lines.append(f"{result['dataset']} ({result['images']} images, mode {result['mode']}, {scale}): "
                 f"mIoU {pct(result['mIoU']).strip()}  aAcc {pct(result['aAcc']).strip()}  "
                 f"mAcc {pct(result['mAcc']).strip()}")
    runtime = result.get("runtime") or {}
    if runtime.get("backend") == "openvino":
        from semask_deploy.runtime.openvino_backend import ran_text

        lines.append(f"OpenVINO ran {ran_text(runtime['ran'])}")
    elif runtime.get("precision") not in (None, "fp32"):
        lines.append(f"precision {runtime['precision']}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    result = run_eval(
        args.model, args.dataset, args.data_root, demo=args.demo, split=args.split, mode=args.mode,
        scale=_scale(args.scale), crop=args.crop, stride=args.stride, limit=args.limit,
        device=args.device, attention=args.attention, backend=args.backend, precision=args.precision,
        threads=args.threads, out=args.out, quiet=args.quiet,
    )
    print(format_result(result, per_class=not args.quiet))
    if args.out is not None and not args.quiet:
        print(f"results written to {args.out}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_wrapper(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
