"""``semask-serve``: a :class:`~semask_deploy.runtime.Segmenter` behind Triton Inference Server (PyTriton).

PyTriton (``pip install "semask-deploy[serve]"``) starts the ``tritonserver`` binary it bundles and
binds one Python callable as a Triton model, so the server speaks Triton's protocol:

    HTTP/REST  :8000  /v2/health/live, /v2/health/ready, /v2/models/<name>/infer (KServe v2)
    gRPC       :8001  the same API (tritonclient.grpc)
    metrics    :8002  /metrics (Prometheus: request counts, queue and compute time, batch sizes)

Model ``<name>`` (default ``semask``):

    input  image   uint8 (N, H, W, 3) RGB 0-255  (N ≤ max batch; one image = N 1)
    output labels  int32 (N, H, W) at the image's own size  (= Segmenter.predict, image by image)

Triton's dynamic batcher merges concurrent requests whose images have the same shape (waiting at most
``queue_delay_us``) up to ``max_batch`` images; in each execution the images are bucketed by network
input size (:mod:`semask_deploy.serving.batching`). PyTriton cannot declare ``allow_ragged_batch``, so
requests of different image sizes are never merged by Triton; with ``instances`` > 1 such executions run
concurrently and a :class:`~semask_deploy.serving.batching.Bucketer` merges the images whose network
input sizes are equal into one forward pass. Shutdown on SIGINT/SIGTERM: the server stops
accepting work, answers the requests already in flight (up to ``exit_timeout_s``), then exits.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, require
from ..runtime.segmenter import BACKEND_SUFFIXES
from .batching import DEFAULT_MAX_PIXELS, Limits, check_images, predict_batch

LOG = logging.getLogger("semask_deploy.serving")
#: --backend names and the files each runs: those of Segmenter (torch, onnxruntime, openvino, tensorrt, aoti)
BACKENDS = BACKEND_SUFFIXES


@dataclass
class ServeOptions:
    """Everything ``semask-serve`` accepts (see ``semask-serve --help``)."""

    model: Path | None = None
    demo: bool = False
    name: str = "semask"
    backend: str = "auto"
    device: str = "cpu"
    attention: str | None = None  # PyTorch checkpoints only (None: sdpa)
    mode: str = "whole"
    scale: Any = None
    host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 4
    queue_delay_us: int = 2000
    instances: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS
    exit_timeout_s: int = 30
    verbose: int = 0


def model_path(o: ServeOptions) -> Path:
    """The artifact to serve (the demo checkpoint with ``demo``), checked against ``backend``."""
    if o.demo == (o.model is not None):
        raise ConfigError("give exactly one of --model PATH and --demo")
    if o.demo:
        from ..assets import demo_checkpoint

        path = demo_checkpoint()
    else:
        path = Path(o.model)
        if path.is_dir():
            raise ConfigError(f"--model {path} is a folder, not a model file (.pth, .safetensors, .onnx, .xml, "
                              ".engine, .pt2)")
        if not path.is_file():
            raise ConfigError(f"--model {path} does not exist")
    if o.backend != "auto":
        if o.backend not in BACKENDS:
            raise ConfigError(f"--backend must be auto, {', '.join(BACKENDS)}; got {o.backend!r}")
        if path.suffix.lower() not in BACKENDS[o.backend]:
            raise ConfigError(f"--backend {o.backend} runs {'/'.join(BACKENDS[o.backend])} files, not {path.name}; "
                              "export the model to that format first (semask-export)")
    return path


def check_port_free(host: str, port: int, flag: str) -> None:
    """Fail at once when tritonserver could not listen on ``host:port``: otherwise it dies in the background
    and PyTriton waits up to two minutes for it, then raises a timeout (or reaches another server on that
    port and reports that one's error).

    Raises:
        ConfigError: the port is taken, or the host is not an address of this machine.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"--host {host} is not an address this machine can listen on ({exc})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tritonserver does: TIME_WAIT is no obstacle
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"{flag} {port} on {host} is already in use (another server?): stop it or choose "
                                  f"another port") from None
            raise ConfigError(f"cannot listen on {host}:{port} ({flag}): {exc.strerror or exc}") from None


def build_segmenter(o: ServeOptions):
    """The :class:`Segmenter` that the server runs."""
    from ..runtime import Segmenter

    for flag, value in (("--max-batch", o.max_batch), ("--instances", o.instances), ("--max-pixels", o.max_pixels)):
        if int(value) < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if o.queue_delay_us < 0:
        raise ConfigError(f"--queue-delay-us must be >= 0, got {o.queue_delay_us}")
    if o.exit_timeout_s < 0:
        raise ConfigError(f"--exit-timeout must be >= 0 seconds, got {o.exit_timeout_s}")
    ports = {"--http-port": o.http_port, "--grpc-port": o.grpc_port, "--metrics-port": o.metrics_port}
    for flag, port in ports.items():
        if not 1 <= int(port) <= 65535:
            raise ConfigError(f"{flag} must be a TCP port between 1 and 65535, got {port}")
    if len(set(ports.values())) < len(ports):
        raise ConfigError("--http-port, --grpc-port and --metrics-port must be three different ports, got "
                          + ", ".join(str(p) for p in ports.values()))
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", o.name or ""):
        raise ConfigError(f"--name must be a plain model name (letters, digits, _ . -), got {o.name!r}")
    for flag, port in ports.items():
        check_port_free(o.host, int(port), flag)
    return Segmenter(model_path(o), device=o.device, mode=o.mode, scale=o.scale, attention_backend=o.attention,
                     backend=None if o.backend == "auto" else o.backend)


def make_infer_fn(seg, max_batch: int, limits: Limits, bucketer=None) -> Callable[[list], list[dict[str, np.ndarray]]]:
    """The PyTriton callable: a list of requests (each ``{"image": (n, H, W, 3) uint8}``) → their labels.

    A request that fails :func:`check_images` raises, and PyTriton answers the requests of that execution
    with the error; Triton only batches requests of one shape and dtype together, so the others of the
    execution are copies of the same mistake.
    """
    def infer(requests: list) -> list[dict[str, np.ndarray]]:
        batches = [check_images(req["image"], limits) for req in requests]
        images = [img for b in batches for img in b]
        if bucketer is not None:  # merges equal network sizes across concurrent instances
            labels = bucketer.predict(images)
        else:  # instances share seg (thread-safe inference)
            labels = predict_batch(seg, images, max_batch=max_batch)
        out, k = [], 0
        for b in batches:
            out.append({"labels": np.stack(labels[k:k + len(b)]).astype(np.int32)})
            k += len(b)
        return out

    return infer


def _triton_config(o: ServeOptions):
    from pytriton.triton import TritonConfig

    return TritonConfig(http_address=o.host, http_port=o.http_port, grpc_address=o.host, grpc_port=o.grpc_port,
                        metrics_address=o.host, metrics_port=o.metrics_port, allow_metrics=True,
                        exit_timeout_secs=o.exit_timeout_s, log_verbose=o.verbose, strict_readiness=True)


def start(o: ServeOptions, seg=None, started: list | None = None):
    """Start the server in this process and return the running ``pytriton.triton.Triton`` (call ``.stop()``).
    ``started`` (a list) receives it before it runs, so a caller interrupted at any point can still stop it.

    Raises:
        MissingDependencyError: PyTriton is not installed (``pip install "semask-deploy[serve]"``).
    """
    require("pytriton", "serve")
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton

    seg = seg if seg is not None else build_segmenter(o)
    bucketer = None
    if o.instances > 1 and seg.mode == "whole" and seg.backend.has_logits and seg.input_batch is None:
        from .batching import Bucketer

        bucketer = Bucketer(seg, max_batch=o.max_batch, window_s=o.queue_delay_us / 1e6)
    # one callable per instance (PyTriton keys its proxies by callable)
    infers = [make_infer_fn(seg, o.max_batch, Limits(max_pixels=o.max_pixels), bucketer) for _ in range(o.instances)]
    triton = Triton(config=_triton_config(o))
    triton.bind(
        model_name=o.name,
        infer_func=infers,
        inputs=[Tensor(name="image", dtype=np.uint8, shape=(-1, -1, 3))],
        outputs=[Tensor(name="labels", dtype=np.int32, shape=(-1, -1))],
        config=ModelConfig(max_batch_size=o.max_batch,
                           batcher=DynamicBatcher(max_queue_delay_microseconds=o.queue_delay_us)),
        strict=True,
    )
    if started is not None:
        started.append(triton)
    try:
        triton.run()
    except BaseException:  # e.g. Ctrl-C while PyTriton waits for tritonserver: leave no server process behind
        with contextlib.suppress(Exception):
            triton.stop()
        raise
    return triton


class _StoppedDuringStartup(BaseException):
    """SIGINT/SIGTERM before the server was ready (a BaseException: no library's ``except Exception`` keeps it)."""


def serve(o: ServeOptions, on_ready: Callable[[], None] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; in-flight requests are answered before the server exits. Returns 0."""
    stop = threading.Event()
    serving = threading.Event()

    def handler(signum, _frame):  # noqa: ANN001
        first = not stop.is_set()
        stop.set()
        if not serving.is_set():
            # during start-up: abort it now (a terminal's Ctrl-C also stops tritonserver itself, and PyTriton
            # would wait two minutes for it to become ready); a repeated signal must not break the clean-up
            if first:
                raise _StoppedDuringStartup(signum)
            return
        LOG.info("signal %s: finishing in-flight requests, then stopping", signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    started: list = []
    try:
        seg = build_segmenter(o)
        triton = start(o, seg, started)
        serving.set()
    except BaseException:
        if started:  # (start() stops it itself when interrupted inside; this covers the moment after it returned)
            with contextlib.suppress(Exception):
                started[0].stop()
        for s, h in previous.items():
            signal.signal(s, h)
        if stop.is_set():  # stopped on purpose while starting (PyTriton may have turned it into its own error)
            print("semask-serve: stopped during start-up", file=sys.stderr, flush=True)
            return 0
        raise
    try:
        print(f"semask-serve: model '{o.name}' ({seg.path.name}, {seg.backend.kind}, {o.device}) "
              f"ready: HTTP {o.host}:{o.http_port}, gRPC {o.host}:{o.grpc_port}, metrics "
              f"http://{o.host}:{o.metrics_port}/metrics; max batch {o.max_batch}", file=sys.stderr, flush=True)
        if on_ready is not None:
            on_ready()
        while not stop.wait(0.5):
            if not triton.is_alive():
                print("error: the Triton server stopped unexpectedly", file=sys.stderr)
                return 2
    finally:
        triton.stop()  # SIGINT to tritonserver: it drains in-flight requests (exit_timeout_s) and exits
        for s, h in previous.items():
            signal.signal(s, h)
    print("semask-serve: stopped", file=sys.stderr, flush=True)
    return 0


def parse_scale(text: str | None) -> Sequence[int] | str | None:
    """``--scale LONGxSHORT`` or ``none``."""
    if text is None:
        return None
    if text.lower() == "none":
        return "none"
    from ..cli._common import parse_hw

    return parse_hw(text, "--scale")
