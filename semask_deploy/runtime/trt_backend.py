"""TensorRT backend for :class:`~semask_deploy.runtime.Segmenter`: a serialized engine + its sidecar.

The sidecar (``x_trt.json`` beside ``x_trt.engine``, written by ``semask-export --fmt trt``) names the
TensorRT version and GPU compute capability the engine was built with; an engine is refused here when
either differs from the running ones (engines are not portable). Inference goes through
:class:`~semask_deploy.runtime.trt_runner.TensorRTRunner`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, RuntimeBackendError
from .artifact import (OUTPUT_SIZE, ImageInput, apply_sidecar, check_graph_matches_sidecar, check_preprocess_flag, graph_input,
                       output_size_feed)


class TensorRTBackend:
    """Runs a SeMask TensorRT engine on numpy batches.

    Args:
        path: the ``.engine`` file (its ``.json`` sidecar must be beside it).
        device: CUDA device index.

    Attributes:
        has_logits, num_classes, class_names, palette, test_scale, crop_size, precision: from the sidecar.
        accepts_uint8: the engine takes uint8 (N, H, W, 3) RGB (exported with ``--preprocess``).
        input_hw: (H, W) of a static-size engine, else None.
        input_batch: the batch size of a fixed-batch engine, else None.
    """

    kind = "tensorrt"

    def __init__(self, path: str | Path, *, device: int = 0) -> None:
        from semask_deploy.export.metadata import read_sidecar
        from semask_deploy.export.tensorrt import (
            gpu_compute_capability,
            tensorrt_version,
        )

        from .trt_runner import TensorRTRunner

        self.path = Path(path)
        if not self.path.is_file():
            raise RuntimeBackendError(f"engine file not found: {self.path}")
        self.meta: dict[str, Any] = read_sidecar(self.path)
        m = self.meta
        built_trt, built_cc = m.get("tensorrt_version"), m.get("gpu_compute_capability")
        if m.get("kind") not in (None, "tensorrt") or not built_trt:
            raise RuntimeBackendError(f"the sidecar of {self.path.name} does not describe a TensorRT engine (no "
                                      "tensorrt_version); re-export it with semask-export --fmt trt")
        here_trt = tensorrt_version()
        if here_trt is not None and str(built_trt) != here_trt:
            raise RuntimeBackendError(f"{self.path.name} was built with TensorRT {built_trt} but TensorRT {here_trt} "
                                      "is installed; rebuild it here with semask-export --fmt trt")
        here_cc = gpu_compute_capability(device)
        if built_cc and here_cc is not None and str(built_cc) != here_cc:
            raise RuntimeBackendError(f"{self.path.name} was built for a GPU of compute capability {built_cc}, this "
                                      f"GPU is {here_cc}; rebuild it on this GPU with semask-export --fmt trt")
        self.runner = TensorRTRunner(self.path, device=device)
        self.input_name = next(n for n in self.runner.input_names if n != OUTPUT_SIZE)
        self.has_output_size = OUTPUT_SIZE in self.runner.input_names
        self.output_names = list(self.runner.output_names)
        self.has_logits = "logits" in self.output_names
        self.accepts_uint8 = self.runner.dtypes[self.input_name] == np.uint8
        engine_shape = tuple(int(d) for d in self.runner.engine.get_tensor_shape(self.input_name))
        check_graph_matches_sidecar(
            m, list(self.runner.input_names), self.output_names, None, self.path.name,
            ImageInput(self.input_name, np.dtype(self.runner.dtypes[self.input_name]).name,
                       tuple(d if d >= 0 else None for d in engine_shape)))  # TensorRT: -1 = dynamic
        check_preprocess_flag(m, self.accepts_uint8, self.path.name)
        apply_sidecar(self, m)

    def logits(self, x: np.ndarray) -> torch.Tensor:
        """Normalised float32 (N, 3, H, W) → float32 logits (N, K, H, W) on the CPU."""
        if not self.has_logits:
            raise ConfigError(f"{self.path.name} outputs labels only: re-export with --with-logits")
        out = self.runner.run(self._feed(graph_input(x, self.accepts_uint8)))
        return torch.from_numpy(np.asarray(out["logits"], dtype=np.float32))

    def _feed(self, x: np.ndarray, size: Any = None) -> dict[str, np.ndarray]:
        if size is not None and not self.has_output_size:
            raise ConfigError(f"{self.path.name} has no output_size input (exported with --no-output-size): its "
                              "labels are at the input size; re-export without --no-output-size")
        feed = {self.input_name: x}
        if self.has_output_size:
            feed[OUTPUT_SIZE] = output_size_feed(x, size, self.accepts_uint8)
        return feed

    def labels(self, x: np.ndarray, size: Any = None) -> np.ndarray:
        """Normalised float32 (N, 3, H, W) → int32 labels (N, H, W), or (N, Ho, Wo) at ``size`` = (Ho, Wo)
        (engines with the ``output_size`` input: logits resized there, then argmax — exact)."""
        out = self.runner.run(self._feed(graph_input(x, self.accepts_uint8), size))
        return np.asarray(out["labels"]).astype(np.int32, copy=False)

    def labels_uint8(self, images: np.ndarray, size: Any = None) -> np.ndarray:
        """uint8 RGB (N, H, W, 3) → int32 labels (N, H, W) (engines exported with --preprocess)."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ConfigError(f"expected uint8 RGB images (N, H, W, 3), got {images.dtype} {images.shape}")
        if not self.accepts_uint8:
            from ..data.transforms import normalize

            return self.labels(np.stack([normalize(im) for im in images]), size)
        out = self.runner.run(self._feed(np.ascontiguousarray(images), size))
        return np.asarray(out["labels"]).astype(np.int32, copy=False)

    def describe(self) -> dict[str, Any]:
        return {"backend": "tensorrt", "tensorrt": self.meta.get("tensorrt_version"),
                "gpu_compute_capability": self.meta.get("gpu_compute_capability"), "precision": self.precision}

    def close(self) -> None:
        self.runner.close()
