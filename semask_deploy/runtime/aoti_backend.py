"""AOTInductor backend for :class:`~semask_deploy.runtime.Segmenter`: a ``.pt2`` package + its sidecar.

``semask-export --fmt aoti`` writes ``<name>_aoti.pt2`` (``torch._inductor.aoti_compile_and_package``) and
``<name>_aoti.json``. The package maps a normalised float32 (N, 3, H, W) batch to labels int32 (N, H, W)
and, when exported with ``--with-logits``, logits float32 (N, K, H, W). It loads only with the torch
version that compiled it, on the device kind it was compiled for (``aoti.device`` in the sidecar).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, RuntimeBackendError
from .artifact import apply_sidecar


class AotiBackend:
    """Runs an exported AOTInductor package on numpy batches.

    Args:
        path: the ``.pt2`` (its ``.json`` sidecar must be beside it).
        device: ``"cpu"`` or ``"cuda[:i]"``; must match the kind the package was compiled for.

    Attributes:
        has_logits, num_classes, class_names, palette, test_scale, crop_size, precision: from the sidecar.
        input_hw, input_batch: the fixed size / batch of a static export, else None.
    """

    kind = "aoti"

    def __init__(self, path: str | Path, *, device: str = "cpu") -> None:
        from semask_deploy.export.aoti import load_package
        from semask_deploy.export.metadata import read_sidecar

        self.path = Path(path)
        if not self.path.is_file():
            raise RuntimeBackendError(f"AOTInductor package not found: {self.path}")
        self.meta: dict[str, Any] = read_sidecar(self.path)
        m = self.meta
        compiled_for = (m.get("aoti") or {}).get("device", "cpu")
        if compiled_for.split(":")[0] != device.split(":")[0]:
            raise RuntimeBackendError(f"{self.path.name} was compiled for {compiled_for}, not {device}: use "
                                      f"device={compiled_for.split(':')[0]!r} or re-export with --device {device}")
        built = (m.get("versions") or {}).get("torch")
        if built and built != torch.__version__:
            raise RuntimeBackendError(f"{self.path.name} was compiled by torch {built}; this is torch "
                                      f"{torch.__version__}: re-export it (semask-export --fmt aoti) with this torch")
        self.device = torch.device(device)
        try:
            self.runner = load_package(self.path, device if device != "cpu" else None)
        except Exception as exc:  # noqa: BLE001 - ExportError from load_package
            raise RuntimeBackendError(str(exc)) from exc
        names = [o["name"] for o in m["outputs"]]
        self.has_logits = "logits" in names
        self._logits_index = names.index("logits") if self.has_logits else None
        apply_sidecar(self, m)

    def _run(self, x: np.ndarray) -> list[torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"expected a normalised float32 batch (N, 3, H, W), got {x.shape}")
        # a static package does not check its input (AOTInductor's own checks are off by default): another size
        # would be read out of bounds or in part, another batch silently cut
        if self.input_hw is not None and tuple(x.shape[2:]) != tuple(self.input_hw):
            raise ConfigError(f"{self.path.name} was exported for {self.input_hw[0]}x{self.input_hw[1]} inputs "
                              f"(--static), got {x.shape[2]}x{x.shape[3]}: resize to it or re-export without --static")
        if self.input_batch is not None and x.shape[0] != self.input_batch:
            raise ConfigError(f"{self.path.name} was exported for batches of {self.input_batch} (--batch), got "
                              f"{x.shape[0]}: re-export without --batch for any batch size")
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        try:
            with torch.inference_mode():
                out = self.runner(t)
        except Exception as exc:  # noqa: BLE001 - the AOTI runtime raises RuntimeError
            raise RuntimeBackendError(f"the AOTInductor package failed on an input of shape {tuple(x.shape)}: "
                                      f"{str(exc).splitlines()[0][:300]}") from exc
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def logits(self, x: np.ndarray) -> torch.Tensor:
        """Normalised float32 (N, 3, H, W) → float32 logits (N, K, H, W) on the CPU."""
        if not self.has_logits:
            raise ConfigError(f"{self.path.name} outputs labels only: re-export with --with-logits")
        return self._run(x)[self._logits_index].float().cpu()

    def labels(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 (N, 3, H, W) → int32 labels (N, H, W)."""
        return self._run(x)[0].cpu().numpy().astype(np.int32, copy=False)

    def describe(self) -> dict[str, Any]:
        return {"backend": "aoti", "device": str(self.device), "precision": self.precision,
                "outputs": [o["name"] for o in self.meta["outputs"]]}
