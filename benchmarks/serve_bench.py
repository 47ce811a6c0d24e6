"""Serving benchmark: ``semask-serve`` (Triton via PyTriton) per batching setting vs ``Segmenter`` in-process.

    python -m semask_deploy.benchmarks.serve_bench --out benchmarks/results/cpu/   # needs the 'serve' extra

For each setting (max batch, dynamic-batcher delay) it starts the real ``semask-serve`` CLI on free
127.0.0.1 ports, sends ``clients`` concurrent clients × ``requests`` one-image gRPC requests of a few
image sizes, and reports throughput (images/s) and end-to-end latency p50/p90/p99, plus how many
executions Triton ran (from its Prometheus metrics: fewer executions than requests = requests were
batched). The baseline calls ``Segmenter.predict`` in a loop in this process on the same images. Every
served answer is checked against the baseline's labels. Writes ``serve_bench.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

SETTINGS = [(1, 0), (4, 2000), (8, 10000)]  # (max batch, queue delay µs)


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _pcts(lat: Sequence[float]) -> dict[str, float]:
    a = np.asarray(lat) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99))}


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        m = re.search(rf'^{name}{{model="semask",version="1"}} (\S+)$', r.read().decode(), re.M)
    return float(m.group(1)) if m else float("nan")


def _serve(args: list[str], log: Path) -> tuple[subprocess.Popen, list[int]]:
    http, grpc, metrics = _ports(3)
    cmd = [sys.executable, "-m", "semask_deploy.cli.serve", "--host", "127.0.0.1", "--http-port", str(http),
           "--grpc-port", str(grpc), "--metrics-port", str(metrics), *args]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"semask-serve exited: {log.read_text()[-2000:]}")
        if "ready: HTTP" in log.read_text(errors="replace"):
            return proc, [http, grpc, metrics]
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("semask-serve did not start in 300 s")


def run(images: list[np.ndarray], clients: int, requests: int, model_args: list[str],
        settings: Sequence[tuple[int, int]] = SETTINGS) -> dict[str, Any]:
    """Measure the baseline and each setting; see the module docstring."""
    import tritonclient.grpc as tg

    from semask_deploy.runtime import Segmenter

    seg = Segmenter(**_segmenter_kwargs(model_args))
    seg.predict(images[0])  # warm-up
    jobs = [images[i % len(images)] for i in range(clients * requests)]
    ref, lat = [], []
    t0 = time.perf_counter()
    for img in jobs:
        t = time.perf_counter()
        ref.append(seg.predict(img))
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    rows = [{"setting": "Segmenter.predict in-process (sequential)", "max_batch": None, "queue_delay_us": None,
             "images": len(jobs), "seconds": total, "images_per_s": len(jobs) / total, **_pcts(lat),
             "executions": None}]
    for max_batch, delay in settings:
        with tempfile.TemporaryDirectory() as tmp:
            proc, (http, grpc, metrics) = _serve(model_args + ["--max-batch", str(max_batch), "--queue-delay-us",
                                                               str(delay)], Path(tmp) / "serve.log")
            try:
                client = tg.InferenceServerClient(f"127.0.0.1:{grpc}")

                def one(k: int) -> tuple[int, float, np.ndarray]:
                    img = jobs[k][None]
                    inp = tg.InferInput("image", list(img.shape), "UINT8")
                    inp.set_data_from_numpy(img)
                    t = time.perf_counter()
                    out = client.infer("semask", [inp], client_timeout=600).as_numpy("labels")[0]
                    return k, time.perf_counter() - t, out

                one(0)  # warm-up
                before = _metric(metrics, "nv_inference_exec_count")
                before_req = _metric(metrics, "nv_inference_request_success")
                t0 = time.perf_counter()
                with ThreadPoolExecutor(clients) as pool:
                    results = list(pool.map(lambda c: [one(c * requests + r) for r in range(requests)],
                                            range(clients)))
                total = time.perf_counter() - t0
                flat = [r for rs in results for r in rs]
                mismatched = sum(int(not np.array_equal(out, ref[k])) for k, _, out in flat)
                rows.append({"setting": f"semask-serve, max batch {max_batch}, delay {delay} µs, {clients} clients",
                             "max_batch": max_batch, "queue_delay_us": delay, "images": len(flat), "seconds": total,
                             "images_per_s": len(flat) / total, **_pcts([lt for _, lt, _ in flat]),
                             "executions": _metric(metrics, "nv_inference_exec_count") - before,
                             "requests": _metric(metrics, "nv_inference_request_success") - before_req,
                             "mismatched_vs_in_process": mismatched})
            finally:
                proc.terminate()
                proc.wait(120)
    return {"rows": rows, "clients": clients, "requests_per_client": requests,
            "image_sizes": sorted({tuple(int(v) for v in im.shape[:2]) for im in images}), "model": model_args,
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "python": platform.python_version(),
                        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}}


def _segmenter_kwargs(model_args: list[str]) -> dict[str, Any]:
    from semask_deploy.assets import demo_checkpoint

    kw: dict[str, Any] = {"path": demo_checkpoint() if "--demo" in model_args else model_args[model_args.index("--model") + 1]}
    if "--scale" in model_args:
        from semask_deploy.serving.server import parse_scale

        kw["scale"] = parse_scale(model_args[model_args.index("--scale") + 1])
    return kw


def to_markdown(res: dict[str, Any], note: str) -> str:
    lines = [f"# semask-serve benchmark ({' '.join(res['model'])})", "",
             f"{res['clients']} concurrent gRPC clients × {res['requests_per_client']} one-image requests, image sizes "
             f"{', '.join(f'{h}x{w}' for h, w in res['image_sizes'])}; latency = end to end per request. "
             f"Machine: {res['machine']}. {note}", "",
             "| setting | images/s | p50 ms | p90 ms | p99 ms | requests | executions | ≠ in-process |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        req = "" if r.get("requests") is None else "%.0f" % r["requests"]
        ex = "" if r["executions"] is None else "%.0f" % r["executions"]
        lines.append(f"| {r['setting']} | {r['images_per_s']:.2f} | {r['p50_ms']:.0f} | {r['p90_ms']:.0f} | "
                     f"{r['p99_ms']:.0f} | {req} | {ex} | {r.get('mismatched_vs_in_process', '')} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu"))
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=12, help="requests per client")
    p.add_argument("--note", default="", help="free text for the report (e.g. machine load)")
    args = p.parse_args(argv)
    from semask_deploy.assets import sample_images
    from semask_deploy.data.io import read_image_rgb

    images = [read_image_rgb(f) for f in sample_images()]  # 240x320 scenes → 192x256 network input
    res = run(images, args.clients, args.requests, ["--demo"])
    from semask_deploy.fileio import write_text_atomic

    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "serve_bench.json", json.dumps(res, indent=2))
    md = to_markdown(res, args.note)
    write_text_atomic(args.out / "serve_bench.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
