"""Shared fixtures: golden data from the official implementation, tiny checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

# Under pytest-xdist (`-n 2`, README "Run the tests") each worker is a process of its own: one intra-op thread
# per worker, so that two workers do not oversubscribe a 2-core machine (test subprocesses inherit it).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER") and os.environ["OMP_NUM_THREADS"].isdigit():
    torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))

# Triton kernels run on the CPU interpreter when there is no GPU; the variable must be set before triton is
# imported anywhere in the session.
try:
    import torch as _torch

    if not _torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass

DATA = Path(__file__).parent / "data"
GOLDEN = {
    "tiny150": DATA / "golden_semfpn_tiny150_small.npz",
    "w12c19": DATA / "golden_semfpn_w12c19_small.npz",
}


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests without CUDA and ``trt`` tests without TensorRT."""
    has_cuda = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401

        has_trt = True
    except ImportError:
        has_trt = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "trt" in item.keywords and not (has_trt and has_cuda):
            item.add_marker(pytest.mark.skip(reason="needs TensorRT and a CUDA GPU"))


class Golden:
    """One golden NPZ: inputs, outputs and the official state dict."""

    def __init__(self, path: Path) -> None:
        self.npz = np.load(path)
        self.config = json.loads(str(self.npz["config"]))

    def __getitem__(self, key: str) -> np.ndarray:
        return self.npz[key]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k[3:]: torch.from_numpy(self.npz[k].copy()) for k in self.npz.files if k.startswith("sd/")}

    def write_mmseg_checkpoint(self, path: Path, meta: dict | None = None) -> Path:
        """The official mmseg layout: {"meta": ..., "state_dict": ..., "optimizer": ...}."""
        torch.save({"meta": meta or {"mmseg_version": "0.11.0", "config": "# config text"},
                    "state_dict": self.state_dict(),
                    "optimizer": {"state": {}, "param_groups": [{"lr": 6e-5, "params": [0, 1]}]}}, path)
        return path


@pytest.fixture(scope="session", params=list(GOLDEN))
def golden(request) -> Golden:
    return Golden(GOLDEN[request.param])


@pytest.fixture(scope="session")
def golden_tiny() -> Golden:
    return Golden(GOLDEN["tiny150"])


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, golden_tiny) -> Path:
    """An official-layout SeMask-T ADE20K checkpoint (golden weights)."""
    return golden_tiny.write_mmseg_checkpoint(tmp_path_factory.mktemp("ckpt") / "semask_tiny_ade20k.pth")


@pytest.fixture
def raise_interrupted_export():
    """A callable that fails as torch.export does when Ctrl-C hits it while it pops a dispatch mode: an
    AssertionError("Trying to pop empty mode stack") with the KeyboardInterrupt as context, wrapped by our
    exporter in an ExportError."""
    from semask_deploy.errors import ExportError

    def raise_it(*args, **kwargs):
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise AssertionError("Trying to pop empty mode stack")  # noqa: B904 - as torch does
        except AssertionError as exc:
            raise ExportError(f"torch.export could not trace the model: {exc}") from exc

    return raise_it
