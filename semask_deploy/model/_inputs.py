"""The one input check of every segmentor's ``forward``/``predict``: a clear error instead of a deep torch one."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..errors import ConfigError
from ._tracing import is_tracing


def check_image_batch(x: object, weight_dtype: torch.dtype, attention_backend: str) -> None:
    """Refuse what the network cannot take, saying what to pass instead.

    Args:
        x: should be a floating-point tensor (N, 3, H, W), N, H, W ≥ 1, normalised, of the weights' dtype.
        weight_dtype: the model's parameter dtype (a float64 or uint8 input fails deep inside the first conv).
        attention_backend: the model's backend (``triton`` needs CUDA or the interpreter).

    Raises:
        ConfigError: anything else.
    """
    if not isinstance(x, Tensor):
        hint = " (convert it with torch.from_numpy)" if type(x).__module__ == "numpy" else ""
        raise ConfigError(f"expected a torch.Tensor image batch (N, 3, H, W), got {type(x).__name__}{hint}; for "
                          "uint8 (H, W, 3) images use semask_deploy.Segmenter(...).predict(image)")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ConfigError(f"expected a float image batch of shape (N, 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ConfigError(f"expected a normalised floating-point image batch, got {x.dtype}: normalise it first "
                          "((x - mean) / std, semask_deploy.data.normalize), or give uint8 images to "
                          "Segmenter.predict")
    if x.dtype != weight_dtype and not torch.is_autocast_enabled(x.device.type):
        raise ConfigError(f"the input is {x.dtype} but the model's weights are {weight_dtype}: pass "
                          f"x.to({weight_dtype}) (or convert the model)")
    if not is_tracing() and min(x.shape[0], x.shape[2], x.shape[3]) < 1:
        raise ConfigError(f"expected N, H, W >= 1, got an empty batch of shape {tuple(x.shape)}")
    if not is_tracing() and not bool(torch.isfinite(x).all()):  # NaN scores, or an index error deep in MSDeformAttn
        raise ConfigError("the image batch holds NaN or infinite values: check how it was made (normalised pixels "
                          "are finite)")
    if attention_backend == "triton" and not x.is_cuda:
        from ..kernels._triton import interpret_env  # (no triton import: only the environment is read)

        if not interpret_env():
            chosen = " (chosen by the environment variable SEMASK_ATTN)" if os.environ.get("SEMASK_ATTN") else ""
            raise ConfigError(
                f"attention_backend='triton'{chosen} needs a CUDA device (or TRITON_INTERPRET=1 for the slow CPU "
                "interpreter); use 'sdpa' on the CPU"
            )
