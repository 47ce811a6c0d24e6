"""``semask-serve`` (the real CLI in a subprocess, PyTriton's tritonserver) under load and faults.

Bounded: one server for the load/fault tests (demo model, --scale none so tiny images stay cheap), one
for the client example + graceful shutdown; every wait has a timeout; 127.0.0.1 and free ports only.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from semask_deploy.assets import demo_checkpoint, sample_images
from semask_deploy.data.synthetic import SyntheticScenes

from .conftest import REPO_ROOT, ServeProcess, free_ports

pytestmark = pytest.mark.serve

SIZES = [(24, 32), (32, 32), (40, 56), (48, 40)]
CLIENTS, REQUESTS = 8, 40


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    srv = ServeProcess(["--demo", "--scale", "none", "--max-batch", "4", "--queue-delay-us", "5000",
                        "--max-pixels", str(1024 * 1024)], log)
    yield srv
    assert srv.close() == 0, srv.log()[-3000:]


@pytest.fixture(scope="module")
def reference():
    from semask_deploy.runtime import Segmenter

    return Segmenter(demo_checkpoint(), scale="none")


def _images(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = SIZES[rng.integers(len(SIZES))]
    n = int(rng.integers(1, 5))
    scenes = SyntheticScenes(num_classes=10, size=(h, w), seed=seed, length=n)
    return np.stack([scenes[i][0] for i in range(n)])


def _infer(protocol: str, port: int, batch: np.ndarray, timeout_s: float = 120.0) -> np.ndarray:
    if protocol == "grpc":
        import tritonclient.grpc as tc

        client = tc.InferenceServerClient(f"127.0.0.1:{port}")
        inp = tc.InferInput("image", list(batch.shape), "UINT8")
        inp.set_data_from_numpy(batch)
        return client.infer("semask", [inp], client_timeout=timeout_s).as_numpy("labels")
    import tritonclient.http as tc

    client = tc.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=timeout_s, connection_timeout=timeout_s)
    inp = tc.InferInput("image", list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch)
    return client.infer("semask", [inp]).as_numpy("labels")


def _metric(server, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf'^{name}{{model="semask",version="1"}} (\S+)$', text, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


def test_health_and_metrics(server):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/semask/ready"):
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http}{path}", timeout=10) as r:
            assert r.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http}/v2/models/semask/config", timeout=10) as r:
        cfg = json.loads(r.read())
    assert cfg["max_batch_size"] == 4 and "dynamic_batching" in cfg
    assert [(i["name"], i["data_type"], i["dims"]) for i in cfg["input"]] == [("image", "TYPE_UINT8", [-1, -1, 3])]
    _metric(server, "nv_inference_request_success")


@pytest.mark.slow
def test_load_8_clients_x_40_requests_equal_offline(server, reference):
    """8 concurrent clients (HTTP and gRPC) × 40 requests of mixed sizes and batch 1-4: nothing lost, all exact."""
    before_req = _metric(server, "nv_inference_request_success")
    before_exec = _metric(server, "nv_inference_exec_count")

    def client(c: int) -> list[tuple[int, np.ndarray]]:
        protocol, port = ("grpc", server.grpc) if c % 2 else ("http", server.http)
        return [(c * 1000 + r, _infer(protocol, port, _images(c * 1000 + r))) for r in range(REQUESTS)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [r for f in [pool.submit(client, c) for c in range(CLIENTS)] for r in f.result(timeout=600)]
    elapsed = time.perf_counter() - t0
    assert len(results) == CLIENTS * REQUESTS
    n_images = 0
    for seed, labels in results:
        images = _images(seed)
        assert labels.shape == images.shape[:3] and labels.dtype == np.int32
        for got, img in zip(labels, images):
            np.testing.assert_array_equal(got, reference.predict(img))
            n_images += 1
    requests = _metric(server, "nv_inference_request_success") - before_req
    executions = _metric(server, "nv_inference_exec_count") - before_exec
    assert requests == CLIENTS * REQUESTS
    assert executions < requests, "the dynamic batcher never merged two requests"
    print(f"{n_images} images in {requests:.0f} requests, {executions:.0f} executions, {elapsed:.1f} s")


def _raw_http(port: int, payload: bytes, header_len: int, content_length: int | None = None,
              close_early: bool = False, timeout_s: float = 60.0) -> bytes:
    """One raw HTTP/1.1 inference request (binary tensor extension); returns the response bytes."""
    length = len(payload) if content_length is None else content_length
    head = (f"POST /v2/models/semask/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            f"Inference-Header-Content-Length: {header_len}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(head.encode() + payload)
        if close_early:
            return b""
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def _binary_request(shape: tuple[int, ...], data: bytes, declared: int | None = None) -> tuple[bytes, int]:
    header = json.dumps({"inputs": [{"name": "image", "shape": list(shape), "datatype": "UINT8",
                                     "parameters": {"binary_data_size": declared or len(data)}}],
                         "outputs": [{"name": "labels", "parameters": {"binary_data": True}}]}).encode()
    return header + data, len(header)


def test_malformed_requests_get_errors_and_server_keeps_serving(server, reference):
    import tritonclient.grpc as tg
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    hc = th.InferenceServerClient(f"127.0.0.1:{server.http}", network_timeout=120)
    gc = tg.InferenceServerClient(f"127.0.0.1:{server.grpc}")

    def bad(mod, client, array, dtype, message):
        inp = mod.InferInput("image", list(array.shape), dtype)
        inp.set_data_from_numpy(array)
        with pytest.raises(InferenceServerException, match=message):
            client.infer("semask", [inp])

    for mod, client in ((th, hc), (tg, gc)):
        bad(mod, client, np.zeros((1, 16, 16, 3), np.float32), "FP32", "(?i)data-?type.*expects")
        bad(mod, client, np.zeros((1, 16, 16), np.uint8), "UINT8", "(?i)shape|dims|rank")
        bad(mod, client, np.zeros((1, 16, 16, 4), np.uint8), "UINT8", "(?i)shape|dims")
        bad(mod, client, np.zeros((1, 0, 0, 3), np.uint8), "UINT8", "(?i)empty|zeros in shape")
        bad(mod, client, np.zeros((5, 16, 16, 3), np.uint8), "UINT8", "(?i)batch")  # > max batch 4
    big = np.zeros((1, 10_000, 10_000, 3), np.uint8)  # 300 MB: refused (HTTP body limit or --max-pixels)
    bad(tg, gc, big, "UINT8", "(?i)limit|larger|exceed|size")
    try:
        bad(th, hc, big, "UINT8", "(?i)limit|larger|exceed|size")
    except (ConnectionError, OSError):  # the server may close the connection on an oversized body
        pass
    del big
    # a body shorter than its header says, and a tensor with fewer bytes than its shape needs
    payload, hlen = _binary_request((1, 16, 16, 3), bytes(16 * 16 * 3))
    reply = _raw_http(server.http, payload[: len(payload) // 2], hlen, content_length=len(payload))
    assert not reply.startswith(b"HTTP/1.1 200"), reply[:200]
    payload, hlen = _binary_request((1, 16, 16, 3), bytes(100), declared=100)
    reply = _raw_http(server.http, payload, hlen)
    assert reply.startswith(b"HTTP/1.1 4"), reply[:300]
    # still serving, both protocols, correct answers
    img = _images(7)
    for protocol, port in (("http", server.http), ("grpc", server.grpc)):
        got = _infer(protocol, port, img)
        for g, im in zip(got, img):
            np.testing.assert_array_equal(g, reference.predict(im))


def test_client_disconnecting_mid_request_does_not_disturb_others(server, reference):
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    stop = threading.Event()
    errors: list[BaseException] = []

    def good_client() -> int:
        done = 0
        while not stop.is_set():
            img = _images(100 + done)
            try:
                got = _infer("http", server.http, img)
                for g, im in zip(got, img):
                    np.testing.assert_array_equal(g, reference.predict(im))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return done
            done += 1
        return done

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(good_client) for _ in range(2)]
        batch = np.ascontiguousarray(np.stack([SyntheticScenes(num_classes=10, size=(400, 400), seed=s,
                                                               length=1)[0][0] for s in range(4)]))
        for _ in range(3):
            payload, hlen = _binary_request(batch.shape, batch.tobytes())
            _raw_http(server.http, payload, hlen, close_early=True)  # full request, then hang up
            payload, hlen = _binary_request(batch.shape, batch.tobytes())
            _raw_http(server.http, payload[: len(payload) // 3], hlen, content_length=len(payload),
                      close_early=True)  # hang up in the middle of the body
            client = tg.InferenceServerClient(f"127.0.0.1:{server.grpc}")
            inp = tg.InferInput("image", list(batch.shape), "UINT8")
            inp.set_data_from_numpy(batch)
            with pytest.raises(InferenceServerException):
                client.infer("semask", [inp], client_timeout=0.05)  # gRPC deadline: the client gives up
        time.sleep(1.0)
        stop.set()
        done = [f.result(timeout=300) for f in futures]
    assert not errors, errors[0]
    assert min(done) >= 1
    assert server.proc.poll() is None


@pytest.mark.slow
def test_client_example_matches_semask_infer_and_sigterm_drains(tmp_path):
    """examples/client.py against `semask-serve --demo` = semask-infer --demo; SIGTERM answers in-flight work."""
    import cv2

    from semask_deploy.cli.infer import run_infer

    srv = ServeProcess(["--demo"], tmp_path / "server.log")
    try:
        scene = sample_images()[0]
        out = tmp_path / "labels.png"
        for protocol, port in (("http", srv.http), ("grpc", srv.grpc)):
            res = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "client.py"), "--image", str(scene),
                                  "--out", str(out), "--url", f"127.0.0.1:{port}", "--protocol", protocol],
                                 capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, res.stderr
            run_infer(None, scene, tmp_path / "infer", demo=True, overlay=False, quiet=True)
            want = cv2.imread(str(tmp_path / "infer" / f"{scene.stem}_labels.png"), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(cv2.imread(str(out), cv2.IMREAD_UNCHANGED), want)
        # a request in flight when SIGTERM arrives is still answered; then the server exits 0
        batch = np.ascontiguousarray(np.stack([SyntheticScenes(num_classes=10, size=(480, 640), seed=s,
                                                               length=1)[0][0] for s in range(4)]))
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(labels=_infer("grpc", srv.grpc, batch)))
        worker.start()
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        worker.join(120)
        assert "labels" in result and result["labels"].shape == (4, 480, 640)
        assert srv.proc.wait(90) == 0
        assert "stopped" in srv.log()
    finally:
        srv.close()



def test_ctrl_c_during_start_up_stops_at_once(tmp_path):
    """A terminal's Ctrl-C (SIGINT to the whole process group) after tritonserver started but before the model
    was loaded hung for PyTriton's two-minute readiness wait, then ended in a traceback with exit 1."""
    http, grpc, metrics = free_ports(3)
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "semask_deploy.cli.serve", "--demo", "--host", "127.0.0.1",
                                 "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:  # tritonserver answers: the server is up
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/live", timeout=1):
                        break
                except OSError:
                    time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGINT)
            t0 = time.monotonic()
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log.read_text(errors="replace")
    assert code == 0 and time.monotonic() - t0 < 60, text[-2000:]
    assert "Traceback" not in text and "stopped" in text, text[-2000:]
