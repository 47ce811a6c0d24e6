"""``semask-export``: checkpoint → verified ONNX (fp32 / fp16 / int8) and TensorRT engine, with sidecars."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from semask_deploy.export.onnx import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

from ._common import OneLineParser, main_wrapper, out_path, parse_hw

EPILOG = """examples:
  semask-export --ckpt semask_swin_tiny_ade20k.pth --fmt onnx --out exported/
  semask-export --ckpt semask_swin_large_ade20k.pth --fmt onnx --precision fp16 --with-logits
  semask-export --ckpt semask_swin_tiny_ade20k.pth --precision int8 --calib-images calib/ --calib-count 64
  semask-export --ckpt semask_swin_tiny_ade20k.pth --fmt trt --precision fp16 --opt-shape 512x683 --max-batch 4
  semask-export --ckpt model.pth --static 512x512 --batch 1 --preprocess     # fixed size, uint8 NHWC input
  semask-export --demo --fmt openvino --precision int8                       # + OpenVINO IR (CPU)
  semask-export --check-trt exported/semask_swin_tiny_ade20k_fp32.onnx
  semask-export --demo --fmt triton --out repo/       # Triton model repository (see README "Serving")
  semask-export --demo --fmt aoti --with-logits          # AOTInductor package for LibTorch/C++ (minutes)

Writes <out>/<name>.onnx (+ <name>_trt.engine with --fmt trt|all), each with a <stem>.json metadata sidecar
(I/O, shapes, normalisation, resize rule, classes, palette, precision, checkpoint SHA-256, versions,
verification). <name> defaults to <checkpoint stem>_<precision>.

The ONNX has inputs 'image' float32 (N,3,H,W) normalised RGB — or with --preprocess 'image_uint8' uint8
(N,H,W,3) RGB 0-255 — and 'output_size' int64 [2] = (Ho, Wo), and outputs 'labels' int32 (N,Ho,Wo): the logits
resized bilinearly to output_size and argmax there (feed the ORIGINAL image size for the official labels, or
(H, W) for labels at the input size; --no-output-size drops that input: labels (N,H,W)) (+ 'logits' float32
(N,K,H,W) at the input size with --with-logits),
N, H, W dynamic unless --static / --batch fix them. After export it is run with ONNX Runtime at two other
sizes and compared with PyTorch fp32; tolerances: fp32 logit rel. L2 <= 1e-4 and >= 99.9 % equal labels;
fp16 logit rel. L2 <= 2e-2, >= 99 % equal labels and >= 97 % mIoU agreement; int8 >= 98 % and >= 95 %. A
failed check writes nothing and says what to try (--calib-images, more images, another --int8-calibration or
precision).

int8: calibrated on --calib-images (first --calib-count images, resized to the opt/static size) or on
built-in synthetic scenes, with percentile activation ranges (--int8-calibration); weights per channel;
convs, MatMuls and the Linear layers are int8; the classifier conv, the semantic class scores and every
softmax/LayerNorm stay float (the sidecar's
precision_details.float_layers lists them); calibration ranges are cached in $SEMASK_CACHE_DIR (default
~/.cache/semask-deploy). --int8-activations s8 (default) gives symmetric int8 Q/DQ that TensorRT accepts;
u8 is faster with ONNX Runtime on x86 CPUs but not accepted by TensorRT. int8 gains most on CPUs with int8
dot products (AVX-512 VNNI, AVX-VNNI, AMX) and on GPUs; the export says when its own CPU has none.

--fmt aoti writes <out>/<name>_aoti.pt2 (+ <name>_aoti.json): an AOTInductor package
(torch._inductor.aoti_compile_and_package) of the fp32 model, same input and outputs, for
torch._inductor.aoti_load_package, Segmenter("x.pt2") and the C++ app examples/cpp/semask_aoti.cpp. On the CPU
it holds C++ kernels; with --device cuda (on a GPU) CUDA/Triton kernels. Compiling takes minutes: on 2 CPU
cores ~2 min for the demo model at one --static size, ~35 min with dynamic sizes; longer for full-size models.
It loads only with the torch version that compiled it.

exit status: 0 ok; 2 on any error (message on stderr), including a failed verification or an engine that
cannot be built here (the ONNX is still written then).
"""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="semask-export",
        description="Export a SeMask checkpoint to a verified ONNX (fp32, mixed fp16 or int8 Q/DQ) and optionally a "
        "TensorRT engine, each with a JSON metadata sidecar; or check an ONNX offline for TensorRT.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", type=Path, help="checkpoint: official mmseg .pth, state dict or .safetensors")
    src.add_argument("--demo", action="store_true", help="export the built-in demo model")
    src.add_argument("--check-trt", type=Path, metavar="MODEL.onnx",
                     help="only check an ONNX file offline for the TensorRT ONNX parser (ops and dtypes)")
    p.add_argument("--fmt", choices=("onnx", "trt", "all", "triton", "triton-trt", "aoti", "openvino"), default="onnx",
                   help="onnx: ONNX only; trt/all: ONNX and a TensorRT engine (needs TensorRT + GPU); triton / "
                   "triton-trt: a Triton Inference Server model repository in --out with the ONNX / the engine "
                   "(+ Python-backend pre/post-processing and an ensemble); aoti: an AOTInductor package .pt2 "
                   "(compiles for minutes); openvino: ONNX and an OpenVINO IR <name>_ov.xml/.bin (pip install "
                   "'semask-deploy[openvino]') (default: onnx)")
    p.add_argument("--triton-gpu", action="store_true",
                   help="--fmt triton: run the ONNX model's instances on the GPU (KIND_GPU; TensorRT always is)")
    p.add_argument("--triton-python-runtime", action="store_true",
                   help="--fmt triton: run the ONNX with ONNX Runtime inside Triton's Python backend (for servers "
                   "without the onnxruntime backend, e.g. PyTriton's bundled tritonserver)")
    p.add_argument("--device", default="cpu", help="--fmt aoti: cpu or cuda, the kernels compiled (default: cpu)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32", help="(default: fp32)")
    p.add_argument("--calib-images", type=Path, metavar="DIR",
                   help="int8 calibration images (also used to verify); default: built-in synthetic scenes")
    p.add_argument("--calib-count", type=int, default=32, metavar="N", help="calibration images used (default: 32)")
    p.add_argument("--int8-activations", choices=("s8", "u8"), default="s8",
                   help="int8 activation type: s8 symmetric (TensorRT-compatible) or u8 (faster in ONNX Runtime CPU)")
    p.add_argument("--int8-calibration", choices=("percentile", "entropy", "minmax"), default="percentile",
                   help="int8 activation ranges: percentile (99.999th of |x|; u8: 0.0005 %% per tail; default), "
                   "entropy (KL-optimal clip over a 2048-bin histogram) or minmax")
    shp = p.add_argument_group("shapes (default: dynamic N, H, W; TensorRT profile min 256x256, opt = the model's "
                               "training crop, max 1024x2048)")
    shp.add_argument("--static", metavar="HxW", help="fix the input size")
    shp.add_argument("--min-shape", metavar="HxW", help="smallest input (profile)")
    shp.add_argument("--opt-shape", metavar="HxW",
                     help="typical input: engine tuning, int8 calibration size")
    shp.add_argument("--max-shape", metavar="HxW", help="largest input (profile)")
    shp.add_argument("--batch", type=int, metavar="N", help="fix the batch size")
    shp.add_argument("--max-batch", type=int, metavar="N", help="largest batch of the engine profile (default: 1)")
    p.add_argument("--with-logits", action="store_true", help="also output logits float32 (N,K,H,W)")
    p.add_argument("--no-output-size", dest="output_size", action="store_false",
                   help="no 'output_size' input: labels only at the input size (the graph cannot then give the "
                   "official labels at the original image size)")
    p.add_argument("--no-winograd", dest="winograd", action="store_false",
                   help="keep the 3x3 head convolutions plain in the fp32 ONNX Runtime graph (default: Winograd "
                   "F(4x4,3x3) in plain ONNX ops, outputs within ~1e-5; measured 1.1-2.6x per conv, 1.08-1.12x "
                   "for the whole graph on 1-2 cores (AVX-512); use this for ONNX Runtime on a GPU; TensorRT/OpenVINO/fp16/int8 "
                   "graphs never use it)")
    p.add_argument("--preprocess", action="store_true",
                   help="input uint8 (N,H,W,3) RGB 'image_uint8', normalised inside the graph")
    p.add_argument("--timing-cache", type=Path, metavar="FILE", help="TensorRT timing cache (read and updated)")
    p.add_argument("--workspace-gb", type=float, default=4.0, help="TensorRT builder workspace (default: 4)")
    p.add_argument("--out", type=out_path, default=Path("exported"), help="output folder (default: %(default)s)")
    p.add_argument("--name", help="artifact name without suffix (default: <checkpoint stem>_<precision>)")
    p.add_argument("--force", action="store_true", help="overwrite existing artifacts")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, {MIN_OPSET}-{MAX_OPSET} (default: {DEFAULT_OPSET})")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def run_check_trt(path: Path, quiet: bool = False) -> int:
    """``--check-trt``: print the report; 0 when TensorRT's parser supports everything, else error (exit 2)."""
    from semask_deploy.export.trt_check import check_onnx_for_tensorrt

    from ..errors import ExportError

    if not path.is_file():
        raise ExportError(f"ONNX file not found: {path}")
    report = check_onnx_for_tensorrt(path)
    if report.ok:
        if not quiet:
            print(report.format())
        return 0
    problems = "; ".join(f"{op}: {reason} ({len(names)} node(s))" for op, reason, names in report.unsupported)
    raise ExportError(f"{path.name} uses what TensorRT's ONNX parser does not support ({len(report.unsupported)} "
                      f"problem(s)): {problems}")


def _run(args: argparse.Namespace) -> int:
    if args.check_trt is not None:
        return run_check_trt(args.check_trt, args.quiet)
    from semask_deploy.export.pipeline import ExportOptions, run_export

    from ..errors import ConfigError

    triton_flags = [f for f, v in (("--triton-gpu", args.triton_gpu),
                                   ("--triton-python-runtime", args.triton_python_runtime)) if v]
    if triton_flags and not args.fmt.startswith("triton"):
        raise ConfigError(f"{' and '.join(triton_flags)} {'apply' if len(triton_flags) > 1 else 'applies'} only to "
                          "--fmt triton (a Triton model repository)")
    if args.triton_python_runtime and args.fmt == "triton-trt":
        raise ConfigError("--triton-python-runtime runs the ONNX with ONNX Runtime: use it with --fmt triton, "
                          "not triton-trt (a TensorRT engine)")
    # sizes are parsed here (not by argparse) so a bad one is one "error: …" line, exit 2
    shape = {k: parse_hw(getattr(args, k), "--" + k.replace("_", "-")) if getattr(args, k) is not None else None
             for k in ("static", "min_shape", "opt_shape", "max_shape")}
    opts = ExportOptions(
        ckpt=args.ckpt, demo=args.demo, fmt=args.fmt, precision=args.precision, calib_images=args.calib_images,
        calib_count=args.calib_count, static=shape["static"], min_shape=shape["min_shape"],
        opt_shape=shape["opt_shape"], max_shape=shape["max_shape"], batch=args.batch, max_batch=args.max_batch,
        with_logits=args.with_logits, output_size=args.output_size, winograd=args.winograd,
        preprocess=args.preprocess, timing_cache=args.timing_cache, out=args.out, name=args.name, force=args.force,
        verify=not args.no_verify, opset=args.opset, int8_activations=args.int8_activations,
        int8_calibration=args.int8_calibration,
        workspace_gb=args.workspace_gb, quiet=args.quiet, device=args.device,
    )
    if args.fmt.startswith("triton"):
        from semask_deploy.export.triton import run_export_triton

        run_export_triton(opts, gpu=args.triton_gpu, python_runtime=args.triton_python_runtime)
        return 0
    result = run_export(opts)
    if not args.quiet:
        ir_weights = (result.engine_path.with_suffix(".bin")
                      if result.engine_path is not None and result.engine_path.suffix == ".xml" else None)
        written = [p for p in (result.onnx_path, result.onnx_sidecar, result.engine_path, ir_weights,
                               result.engine_sidecar, result.aoti_path, result.aoti_sidecar) if p]
        print(f"wrote {', '.join(str(p) for p in written)} in {result.seconds:.0f} s", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_wrapper(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
