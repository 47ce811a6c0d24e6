"""``semask-infer``: segment an image or a folder with a checkpoint, an ONNX file or a TensorRT engine."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, ImageError, RuntimeBackendError
from ..fileio import check_output_folder
from ._common import OneLineParser, hw_type, is_allocation_failure, main_wrapper, out_path, progress

EPILOG = """examples:
  semask-infer --demo --out out/                 (the bundled sample scenes)
  semask-infer --demo --image street.jpg --out out/
  semask-infer --model semask_swin_tiny_ade20k.pth --image images/ --out out/
  semask-infer --model model.onnx --image photos/*.jpg extra.png --out out/
  semask-infer --model model.onnx --image images/ --out out/ --mode slide --crop 512x512 --stride 341x341
  semask-infer --model model.engine --image street.jpg --out out/ --device cuda

For each image NAME.ext it writes NAME_labels.png (class index per pixel; 16-bit when there are more
than 256 classes) and NAME_overlay.png (the palette blended over the image), at the image's own size
(EXIF orientation applied). Any image OpenCV reads is segmented: gray, RGBA, 16-bit (scaled to 8 bits), one
pixel, 1xN strips. Checkpoints, ONNX files and engines give the same labels (exported graphs resize their
logits to the original size themselves); slide mode needs an export made --with-logits.
"""


@dataclass
class InferResult:
    """What ``run_infer`` wrote and what failed."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    runtime: dict = field(default_factory=dict)  # the backend's describe(): what ran


def _scale(text: str) -> tuple[int, int] | str:
    """argparse type of ``--scale``: ``LONGxSHORT`` or ``none``."""
    if text.lower() == "none":
        return "none"
    return hw_type("--scale", "LONGxSHORT", "2048x512")(text)


def _check_output_names(images: list[Path], out: Path, overlay: bool) -> None:
    """Refuse, before anything runs, a run whose outputs would overwrite each other or an input image
    (``a.png`` and ``a.jpg`` both give ``a_labels.png``; ``--out`` the image folder holding ``a_labels.png``)."""
    inputs = {p.resolve() for p in images}
    owner: dict[Path, Path] = {}
    for path in images:
        for kind in ("labels", "overlay") if overlay else ("labels",):
            target = out / f"{path.stem}_{kind}.png"
            key = target.resolve()
            if key in owner:
                first, second = (owner[key], path) if owner[key].name == path.name else (owner[key].name, path.name)
                raise ConfigError(f"{first} and {second} would both be written to {target}; rename one "
                                  "of them or segment them into different --out folders")
            if key in inputs:
                raise ConfigError(f"the output {target} would overwrite the input image {target.name}; use another "
                                  "--out folder")
            if target.is_dir():  # found before the model runs, not when the write fails half way through the images
                raise ConfigError(f"the output {target} exists as a folder; remove or rename it, or use another "
                                  "--out folder")
            owner[key] = path


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="semask-infer",
        description="Segment images with a SeMask model (PyTorch checkpoint, ONNX or TensorRT engine), using the "
        "official test pipeline: keep-ratio resize to the model's test scale, whole-image or sliding-window "
        "inference, labels mapped back to the original size.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help=".pth/.safetensors checkpoint, .onnx file, OpenVINO .xml, TensorRT .engine or "
                     "AOTInductor .pt2")
    src.add_argument("--demo", action="store_true", help="use the built-in demo model (synthetic scenes)")
    p.add_argument("--image", type=Path, nargs="+", action="extend", default=None, metavar="PATH",
                   help="image files and/or folders of images (a shell glob works; --image may be repeated) "
                   "(with --demo, default: the bundled sample scenes)")
    p.add_argument("--out", type=out_path, default=Path("semask-infer-out"), help="output folder (default: %(default)s)")
    p.add_argument("--mode", choices=("whole", "slide"), default="whole", help="inference mode (default: whole)")
    p.add_argument("--scale", type=_scale, default=None,
                   help="keep-ratio test resize LONGxSHORT, e.g. 2048x512 (one number N means NxN: the image fits an "
                   "NxN square), or 'none' to keep the image size "
                   "(default: the model's test scale: ADE20K/COCO 2048x512, 640-crop models 2560x640, "
                   "Cityscapes 2048x1024)")
    p.add_argument("--crop", type=hw_type("--crop"), default=None, help="slide window HxW (default: training crop)")
    p.add_argument("--stride", type=hw_type("--stride"), default=None, help="slide step HxW (default: 2/3 of crop)")
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
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours (default: 0.5)")
    p.add_argument("--no-overlay", action="store_true", help="write only the label maps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _list_inputs(image: Path | Sequence[Path]) -> list[Path]:
    """The images of one or several ``--image`` paths (files or folders), each file once, in the given order."""
    from ..data.io import list_images

    paths = [image] if isinstance(image, (str, Path)) else list(image)
    images: list[Path] = []
    seen: set[Path] = set()
    for path in paths:
        for found in list_images(path):
            key = found.resolve()
            if key not in seen:
                seen.add(key)
                images.append(found)
    return images


def run_infer(
    model: Path | None,
    image: Path | Sequence[Path] | None,
    out: Path,
    *,
    demo: bool = False,
    mode: str = "whole",
    scale: tuple[int, int] | str | None = None,
    crop: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    device: str = "cpu",
    attention: str | None = None,
    backend: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    alpha: float = 0.5,
    overlay: bool = True,
    quiet: bool = False,
) -> InferResult:
    """Segment ``image`` (files and/or folders) and write label maps and overlays into ``out``."""
    from ..data.io import overlay as blend, read_image_rgb, write_png
    from ..runtime import Segmenter

    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"--alpha must be between 0 and 1, got {alpha}")
    if demo:
        from ..assets import demo_checkpoint, sample_images

        model = demo_checkpoint()
        images = _list_inputs(image) if image is not None else sample_images()
    elif image is None:
        raise ConfigError("--image is required (an image file or a folder of images)")
    else:
        images = _list_inputs(image)
    check_output_folder(out)
    _check_output_names(images, out, overlay)
    seg = Segmenter(model, device=device, mode=mode, scale=scale, crop=crop, stride=stride, attention_backend=attention,
                    backend=None if backend == "auto" else backend, precision=precision, threads=threads)
    result = InferResult(runtime=seg.backend.describe())
    for path in progress(images, total=len(images), desc="segmenting", disable=quiet or len(images) < 2):
        try:
            rgb = read_image_rgb(path)
        except ImageError as exc:
            result.failed.append((path, str(exc)))
            continue
        try:  # an image the runtime fails on (too large for memory, …) fails alone, as an unreadable one does
            labels = seg.predict(rgb)
        except (RuntimeBackendError, MemoryError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and not is_allocation_failure(exc):
                raise  # a bug, not this image
            reason = str(exc) if isinstance(exc, RuntimeBackendError) else "out of memory for this image"
            result.failed.append((path, f"{path.name}: {reason}"))
            continue
        lab_img = labels.astype(np.uint8) if seg.num_classes <= 256 else labels.astype(np.uint16)
        try:  # a file that cannot be written (read-only, immutable) fails that image alone, as an unreadable one does
            result.written.append(write_png(out / f"{path.stem}_labels.png", lab_img, rgb=False))
            if overlay:
                result.written.append(write_png(out / f"{path.stem}_overlay.png",
                                                blend(rgb, labels, seg.palette, alpha)))
        except ImageError as exc:
            result.failed.append((path, str(exc)))
    return result


def _run(args: argparse.Namespace) -> int:
    result = run_infer(
        args.model, args.image, args.out, demo=args.demo, mode=args.mode, scale=args.scale, crop=args.crop,
        stride=args.stride, device=args.device, attention=args.attention, backend=args.backend, precision=args.precision,
        threads=args.threads, alpha=args.alpha, overlay=not args.no_overlay, quiet=args.quiet,
    )
    n_ok = len({p.name.rsplit("_", 1)[0] for p in result.written})
    if not args.quiet and result.written:  # (nothing written: only the errors below, the empty folder is removed)
        print(f"wrote {len(result.written)} file(s) for {n_ok} image(s) to {args.out}", file=sys.stderr)
        if result.runtime.get("backend") == "openvino":  # OpenVINO may pick another precision: say what ran
            from semask_deploy.runtime.openvino_backend import ran_text

            print(f"OpenVINO ran {ran_text(result.runtime['ran'])}", file=sys.stderr)
    if result.failed:
        skipped = " (skipped)" if result.written else ""  # the other images were segmented and written
        for path, msg in result.failed:
            print(f"error: {msg}{skipped}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_wrapper(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
