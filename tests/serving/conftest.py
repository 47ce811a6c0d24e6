"""Serving tests: ``serve``-marked tests need the 'serve' extra (PyTriton, tritonclient) — README "Serving".

In the main (dev) environment they are skipped with that reason; ``.ci/run`` runs them in the serve venv.
Servers listen on 127.0.0.1 only, on free ports picked at run time.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _serve_deps_missing() -> str | None:
    missing = [m for m in ("pytriton", "tritonclient.http", "tritonclient.grpc") if _find(m) is None]
    return ", ".join(missing) or None


def _find(module: str):
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return None


def pytest_collection_modifyitems(config, items):
    missing = _serve_deps_missing()
    if missing is None:
        return
    for item in items:
        if item.get_closest_marker("serve") is not None:
            item.add_marker(pytest.mark.skip(
                reason=f"needs the 'serve' extra ({missing} not importable): run in the serve venv, README 'Serving'"))


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_ready(http_port: int, proc: subprocess.Popen, timeout_s: float = 180.0, model: str | None = None) -> None:
    url = f"http://127.0.0.1:{http_port}/v2/health/ready" if model is None else \
        f"http://127.0.0.1:{http_port}/v2/models/{model}/ready"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"server not ready after {timeout_s} s")


class ServeProcess:
    """``semask-serve`` (the real CLI, as a subprocess) on 127.0.0.1 with free ports."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.http, self.grpc, self.metrics = free_ports(3)
        cmd = [sys.executable, "-m", "semask_deploy.cli.serve", "--host", "127.0.0.1", "--http-port", str(self.http),
               "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics), *args]
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        try:  # PyTriton starts tritonserver first and loads the model afterwards
            wait_ready(self.http, self.proc, model="semask")
            deadline = time.monotonic() + 60
            while "ready: HTTP" not in self.log() and time.monotonic() < deadline:
                time.sleep(0.2)
        except AssertionError as exc:
            self.close()
            raise AssertionError(f"{exc}; log:\n{self.log()[-3000:]}") from None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
