"""``semask-serve``: serve a SeMask model with Triton Inference Server (PyTriton), over HTTP and gRPC."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ._common import OneLineParser, main_wrapper

EPILOG = """examples:
  semask-serve --demo                                   (the built-in demo model)
  semask-serve --model exported/semask_swin_tiny_ade20k_fp32.onnx --max-batch 8
  semask-serve --model model.engine --backend tensorrt --device cuda --http-port 9000 --grpc-port 9001
  python examples/client.py --image street.jpg --out street_labels.png

Model '<name>' (default semask): input 'image' uint8 (N,H,W,3) RGB; output 'labels' int32 (N,H,W) at the
image's own size, the same as semask-infer / Segmenter.predict. Ready to answer: GET /v2/models/<name>/ready
(GET /v2/health/ready turns 200 a moment before the model is loaded); metrics: GET :8002/metrics (Prometheus).
SIGINT/SIGTERM: in-flight requests are answered, then the server exits (a signal during start-up stops it).
Needs the 'serve' extra (PyTriton, numpy<2) in an interpreter whose libpython the Triton Python backend can
load: see README "Serving".
"""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="semask-serve", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Serve a SeMask model (checkpoint, ONNX, OpenVINO IR, TensorRT engine or AOTInductor package) with Triton "
                                "Inference Server through PyTriton: HTTP, gRPC, dynamic batching, health, metrics.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help=".pth/.safetensors checkpoint, .onnx, OpenVINO .xml, .engine or "
                     "AOTInductor .pt2 file")
    src.add_argument("--demo", action="store_true", help="serve the built-in demo model")
    p.add_argument("--name", default="semask", help="Triton model name (default: %(default)s)")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "openvino", "tensorrt", "aoti"), default="auto",
                   help="runtime; auto = from the file suffix (.xml: OpenVINO, .pt2: AOTInductor); openvino also runs "
                   "an .onnx (pip install openvino in the serve venv) (default: auto)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="(default: cpu)")
    p.add_argument("--attention", choices=("eager", "sdpa", "triton"), default=None,
                   help="PyTorch checkpoints: attention backend (default: sdpa); an error with exported models")
    p.add_argument("--mode", choices=("whole", "slide"), default="whole", help="inference mode (default: whole)")
    p.add_argument("--scale", default=None, help="keep-ratio test resize LONGxSHORT or 'none' (default: the model's)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    p.add_argument("--http-port", type=int, default=8000, help="(default: 8000)")
    p.add_argument("--grpc-port", type=int, default=8001, help="(default: 8001)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus /metrics (default: 8002)")
    p.add_argument("--max-batch", type=int, default=4, help="largest batch of images per execution (default: 4)")
    p.add_argument("--queue-delay-us", type=int, default=2000,
                   help="dynamic batcher: longest wait for more requests of the same size (default: 2000)")
    p.add_argument("--instances", type=int, default=1,
                   help="model instances; > 1 runs executions of different image sizes concurrently and merges "
                   "images of equal network input size into one forward (bucketing); PyTriton 0.7's 1 s instance "
                   "handshake can time out on an overloaded machine (default: 1)")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096,
                   help="largest H*W accepted per image; larger requests get an error (default: 4096*4096)")
    p.add_argument("--exit-timeout", type=int, default=30,
                   help="seconds Triton waits for in-flight requests on shutdown; a forward pass already running "
                   "is not cut short, so a very large image can hold the stop longer (default: 30)")
    p.add_argument("--verbose", type=int, default=0, help="Triton log verbosity (default: 0)")
    return p


def _run(args: argparse.Namespace) -> int:
    from ..serving.server import ServeOptions, parse_scale, serve

    opts = ServeOptions(model=args.model, demo=args.demo, name=args.name, backend=args.backend, device=args.device,
                        attention=args.attention, mode=args.mode, scale=parse_scale(args.scale), host=args.host,
                        http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                        max_batch=args.max_batch, queue_delay_us=args.queue_delay_us, instances=args.instances,
                        max_pixels=args.max_pixels, exit_timeout_s=args.exit_timeout, verbose=args.verbose)
    return serve(opts)


def main(argv: Sequence[str] | None = None) -> int:
    return main_wrapper(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
