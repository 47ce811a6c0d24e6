"""Top-level entry points: build a model from a config, or load one from a checkpoint file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from .checkpoint import CheckpointData, infer_config, load_state_dict_strict, read_checkpoint
from .checkpoint_maskformer import infer_maskformer_config, is_maskformer_state_dict
from .config import SeMaskConfig
from .errors import ConfigError
from .maskformer_config import MaskFormerConfig
from .model import MaskFormerSegmentor, SeMaskSegmentor


def build_model(
    config: SeMaskConfig | MaskFormerConfig, *, attention_backend: str = "sdpa"
) -> SeMaskSegmentor | MaskFormerSegmentor:
    """A freshly initialised model (SeMask-FPN, or the mask-classification family for a
    :class:`MaskFormerConfig`) with the standard class names and palette for its class count
    (``SEMASK_ATTN``, when set, overrides ``attention_backend``, as in the model classes)."""
    if isinstance(config, MaskFormerConfig):
        model = MaskFormerSegmentor(config, attention_backend=attention_backend)
    else:
        model = SeMaskSegmentor(config, attention_backend=attention_backend)
    set_class_info(model, {})
    return model


def load_model(
    path: str | Path,
    *,
    attention_backend: str | None = None,
    device: str | torch.device = "cpu",
) -> SeMaskSegmentor | MaskFormerSegmentor:
    """Load a SeMask checkpoint: SeMask-FPN (official mmseg ``.pth``) or a mask-classification model
    (official detectron2 Mask2Former / MaskFormer / FaPN / MSFaPN ``{"model": ...}``), a plain state dict
    or ``.safetensors``.

    The architecture and variant are inferred from keys and tensor shapes; weights load strictly. A
    mask-classification checkpoint gives a :class:`~semask_deploy.model.mask_former.MaskFormerSegmentor`. Returns the model in eval mode
    with ``class_names`` and ``palette`` from the checkpoint's ``meta`` (else the standard ones for
    150 / 19 / 171 classes).

    Args:
        path: the checkpoint file.
        attention_backend: ``eager`` | ``sdpa`` | ``triton``; default: the environment variable
            ``SEMASK_ATTN`` if set, else ``sdpa``. Given, and different from a set ``SEMASK_ATTN``, it is an
            error (the variable would override it).
        device: ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        CheckpointError: unreadable, unsafe, not a SeMask model, or keys that do not match.
        ConfigError: an unknown attention backend or device, a CUDA device without a GPU, or an
            ``attention_backend`` that conflicts with ``SEMASK_ATTN``.
    """
    env = os.environ.get("SEMASK_ATTN")
    if attention_backend is not None and env and env != attention_backend:
        raise ConfigError(f"attention_backend={attention_backend!r} conflicts with the environment variable "
                          f"SEMASK_ATTN={env!r}, which would override it; unset SEMASK_ATTN or leave "
                          "attention_backend out")
    data = read_checkpoint(path)
    return model_from_checkpoint(data, attention_backend=attention_backend or "sdpa", device=device)


def model_from_checkpoint(
    data: CheckpointData, *, attention_backend: str = "sdpa", device: str | torch.device = "cpu"
) -> SeMaskSegmentor | MaskFormerSegmentor:
    """Like :func:`load_model`, from an already read :class:`CheckpointData` (``SEMASK_ATTN``, when set,
    overrides ``attention_backend`` here, as in the model classes)."""
    where = str(data.path or "checkpoint")
    if is_maskformer_state_dict(data.state_dict):  # detectron2 Mask2Former / MaskFormer / FaPN / MSFaPN
        mf_config = infer_maskformer_config(data.state_dict, data.meta, where)
        model = MaskFormerSegmentor(mf_config, attention_backend=attention_backend)
        load_state_dict_strict(model, data.state_dict, where=where, arch=mf_config.name)
    else:
        config = infer_config(data)
        model = SeMaskSegmentor(config, attention_backend=attention_backend)
        load_state_dict_strict(model, data.state_dict, where=where)
    set_class_info(model, data.meta)
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"invalid device {device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} was requested but no CUDA GPU is available; use the CPU "
                          "(device 'cpu', --device cpu)")
    return model.to(device).eval()


def set_class_info(model: SeMaskSegmentor, meta: Mapping[str, Any]) -> None:
    """Class names and palette from mmseg ``meta`` (0.x ``CLASSES``/``PALETTE`` or 1.x ``dataset_meta``),
    falling back to the standard data sets by class count, then to generic names and colours."""
    from .classes import default_classes, default_palette, generic_palette

    k = model.config.num_classes
    ds_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), Mapping) else {}
    names = meta.get("CLASSES") or ds_meta.get("classes")
    palette = meta.get("PALETTE") or ds_meta.get("palette")
    for what, given in (("class names", names), ("palette", palette)):
        if given and (isinstance(given, str) or len(given) != k):
            import warnings

            from .errors import SemaskWarning

            got = "a string" if isinstance(given, str) else f"{len(given)} entries"
            warnings.warn(f"the checkpoint's {what} ({got}) do not match its {k} classes: ignored, the standard "
                          f"{what} for {k} classes are used instead", SemaskWarning, stacklevel=3)
    if not names or isinstance(names, str) or len(names) != k:
        names = default_classes(k) or tuple(f"class_{i}" for i in range(k))
    if not palette or isinstance(palette, str) or len(palette) != k:
        palette = default_palette(k) or generic_palette(k)
    model.class_names = tuple(str(n) for n in names)
    model.palette = [tuple(int(v) for v in c) for c in palette]
