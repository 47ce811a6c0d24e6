"""Run the ``tritonserver`` binary that PyTriton bundles on a model repository (tests, local trials).

PyTriton's wheel ships Triton Inference Server with the Python backend only (no ONNX Runtime or
TensorRT backend); its Python-backend stub is per Python version and links ``libpython3.X.so``, so the
interpreter running this must be one whose shared libpython the loader finds (README "Serving").
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Sequence

from ..errors import RuntimeBackendError, require


def bundled_server() -> tuple[Path, Path, Path]:
    """(tritonserver binary, the Python backend folder, the folder of its shared libraries)."""
    require("pytriton", "serve")
    from pytriton.utils.distribution import get_libs_path, get_root_module_path, get_stub_path

    root = get_root_module_path() / "tritonserver"
    stub = Path(get_stub_path(f"{sys.version_info[0]}.{sys.version_info[1]}"))
    return root / "bin" / "tritonserver", stub, Path(get_libs_path())


def bundled_backends() -> list[str]:
    """Backends the bundled server has (``['python']`` for PyTriton 0.7)."""
    require("pytriton", "serve")
    from pytriton.utils.distribution import get_root_module_path

    return sorted(p.name for p in (get_root_module_path() / "tritonserver" / "backends").iterdir() if p.is_dir())


class BundledTritonServer:
    """``tritonserver`` on a repository, explicit model control, on 127.0.0.1-reachable ports.

    Args:
        repo: model repository.
        models: models to load at start-up.
        ports: (http, grpc, metrics).
        pythonpath: extra ``PYTHONPATH`` for the Python backend's models.
    """

    def __init__(self, repo: str | Path, models: Sequence[str], ports: tuple[int, int, int],
                 pythonpath: Sequence[str] = (), log: str | Path | None = None) -> None:
        binary, stub, libs = bundled_server()
        self.http_port, self.grpc_port, self.metrics_port = ports
        self._tmp = tempfile.TemporaryDirectory(prefix="semask-tritonserver-")
        backends = Path(self._tmp.name) / "backends"
        py = backends / "python"
        py.mkdir(parents=True)
        for f in (binary.parent.parent / "backends" / "python").iterdir():
            if f.is_file():
                (py / f.name).symlink_to(f)
        (py / "triton_python_backend_stub").symlink_to(stub)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (env.get("LD_LIBRARY_PATH"), str(libs)) if p)
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
        paths = list(pythonpath) + [sysconfig.get_paths()["purelib"]]
        env["PYTHONPATH"] = ":".join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        cmd = [str(binary), f"--model-repository={Path(repo).resolve()}", "--model-control-mode=explicit",
               f"--backend-directory={backends}", f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
               f"--metrics-port={self.metrics_port}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
               "--exit-timeout-secs=10", "--strict-readiness=true"] + [f"--load-model={m}" for m in models]
        self.log_path = Path(log) if log else Path(self._tmp.name) / "tritonserver.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until ``/v2/health/ready`` answers 200; raise with the server's log otherwise."""
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeBackendError(f"tritonserver did not become ready; log:\n{self.log_text()[-4000:]}")

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGINT (Triton drains in-flight requests), then kill after ``timeout_s``."""
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()
