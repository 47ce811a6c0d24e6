"""Reading and writing SeMask checkpoints — safely and strictly.

Accepted files:

* official mmseg checkpoints ``{"meta": {...}, "state_dict": {...}, "optimizer": ...}`` (``.pth``),
* plain state dicts (optionally with a DDP ``module.`` prefix),
* ``.safetensors`` files (with our JSON metadata, or none).

Pickle files are read with ``torch.load(weights_only=True)`` and only the few extra types that real
checkpoints carry (numpy scalars in ``meta``); anything that would execute code is refused. The variant is
inferred from tensor shapes, and weights are loaded strictly: a file with missing, unexpected or
mis-shaped keys is refused with a report naming them.
"""

from __future__ import annotations

import json
import math
import re
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .config import _ARCH, SeMaskConfig, official_semantic_modes
from .errors import CheckpointError, SemaskWarning
from .fileio import atomic_path, free_space_text, is_torch_write_failure

_SAFETENSORS_MAGIC_MAX_HEADER = 100 * 1024 * 1024


@dataclass
class CheckpointData:
    """What a checkpoint file holds: tensors plus whatever metadata came with them."""

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


# --------------------------------------------------------------------------------------------- reading


def _safe_globals() -> list:
    """Non-tensor types that official mmcv/mmseg checkpoints may pickle inside ``meta``."""
    import numpy as np

    allowed: list = [np.dtype, np.ndarray]
    try:
        allowed.append(np._core.multiarray.scalar)  # numpy ≥ 2
        allowed.append(np._core.multiarray._reconstruct)
    except AttributeError:  # pragma: no cover - numpy 1.x
        allowed.append(np.core.multiarray.scalar)
        allowed.append(np.core.multiarray._reconstruct)
    allowed.extend(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool"))
    return allowed


def read_checkpoint(path: str | Path) -> CheckpointData:
    """Read a checkpoint file without executing any code from it.

    Raises:
        CheckpointError: missing, unreadable, truncated, unsafe or not a checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); download or copy it again")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        return _read_safetensors(path)
    return _read_pickle(path)


def _looks_like_safetensors(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < _SAFETENSORS_MAGIC_MAX_HEADER and head[8:9] == b"{"


def _read_safetensors(path: Path) -> CheckpointData:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta_raw = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); it may be truncated") from exc
    meta: dict[str, Any] = {}
    for k, v in meta_raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return CheckpointData(sd, meta, path)


# what a detectron2 ``.pkl`` checkpoint (``{"model": {key: numpy array}, "__author__": …}``) needs to unpickle
_NUMPY_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5 arrays
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol 2 writes bytes (the arrays' data) as codecs.encode(text, "latin1")
}


def _load_numpy_pickle(path: Path) -> Any:
    """Read a plain pickle that builds only numpy arrays, dicts and plain values, refusing every other global.

    detectron2 writes its ``.pkl`` checkpoints with :mod:`pickle` (numpy weights), which ``torch.load``'s
    weights-only reader cannot read; this reads them without running code from the file.
    """
    import pickle

    import numpy as np

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in _NUMPY_PICKLE_GLOBALS:
                raise pickle.UnpicklingError(f"Unsupported global: {module}.{name}")
            if name == "OrderedDict":
                return OrderedDict
            if module == "_codecs":
                import codecs

                return codecs.encode
            if name in ("ndarray", "dtype"):
                return getattr(np, name)
            core = getattr(np, "_core", None) or np.core
            return getattr(core.numeric if name == "_frombuffer" else core.multiarray, name)

    with path.open("rb") as f:
        return Restricted(f, encoding="latin1").load()


def _read_pickle(path: Path) -> CheckpointData:
    is_zip = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()), warnings.catch_warnings():
            # (a plain pickle of protocol > 2, e.g. a detectron2 .pkl, makes torch warn before it fails)
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types; every one means "cannot use this file"
        if not is_zip and _starts_as_pickle(path):  # a plain pickle: a detectron2 .pkl of numpy arrays?
            try:
                plain = _load_numpy_pickle(path)
            except Exception as plain_exc:  # noqa: BLE001 - report it as torch's failure below
                plain = None
                if "Unsupported global" in str(plain_exc):
                    exc = plain_exc
            # (a legacy torch.save file is a plain pickle too, but its first object is a magic number: not ours)
            if isinstance(plain, Mapping):
                return _unwrap(plain, path)
        msg = str(exc)
        unsafe = re.search(r"(?:Unsupported global:|unsupported GLOBAL|Unsupported operand) ?([\w.]+)", msg)
        if ("Weights only load failed" in msg or "Unsupported global" in msg) and (unsafe or "GLOBAL" in msg) and (
                is_zip or _starts_as_pickle(path)):
            what = unsafe.group(1) if unsafe else "an unsupported global"
            raise CheckpointError(
                f"refusing to load {path}: it needs to run pickled code ({what}) to load, "
                "which SeMask checkpoints never do. If you trust it, re-save its weights as a plain state dict "
                "or .safetensors"
            ) from None
        kind = _ARTIFACT_SUFFIXES.get(path.suffix.lower())
        if path.suffix.lower() == ".bin" and path.with_suffix(".xml").is_file():
            raise CheckpointError(f"{path} holds the weights of the OpenVINO IR {path.with_suffix('.xml').name}; "
                                  f"pass {path.with_suffix('.xml')} (semask-infer --model, Segmenter)") from None
        if kind:
            raise CheckpointError(f"{path} is {kind}, not a PyTorch checkpoint; run it with "
                                  "semask_deploy.Segmenter(path) (or semask-infer --model)") from None
        if is_zip or "zip" in msg.lower() or "central directory" in msg.lower():
            raise CheckpointError(
                f"{path} is truncated or corrupt (cannot read the PyTorch archive); download or copy it again"
            ) from None
        detail = (msg.splitlines() or [""])[0][:160]
        # not a bare pickle opcode like "101", nor torch's advice to retry with weights_only=False
        detail = f" ({detail})" if re.search(r"[A-Za-z]{3}", detail) and "Weights only" not in detail else ""
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (.pth) or .safetensors file{detail}") from None
    return _unwrap(obj, path)


_ARTIFACT_SUFFIXES = {".onnx": "an ONNX file", ".xml": "an OpenVINO IR", ".engine": "a TensorRT engine",
                      ".plan": "a TensorRT engine", ".trt": "a TensorRT engine", ".pt2": "an AOTInductor package"}


def _starts_as_pickle(path: Path) -> bool:
    """Whether the file begins with a pickle PROTO opcode (what ``torch.save``'s legacy format and ``pickle``
    protocols 2+ write); anything else (an image, an ONNX graph, random bytes) is not a pickle at all, so an
    "unsupported operand" from the unpickler means "not a checkpoint", not "unsafe code"."""
    with path.open("rb") as f:
        return f.read(1) == b"\x80"


def _unwrap(obj: Any, path: Path | None) -> CheckpointData:
    """Find the state dict inside an mmseg checkpoint / plain dict and normalise its keys."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or an mmseg checkpoint")
    meta: dict[str, Any] = {}
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        sd = obj["state_dict"]
        meta = dict(obj.get("meta") or {})
    elif "model" in obj and isinstance(obj["model"], Mapping):
        sd = obj["model"]
        meta = dict(obj.get("meta") or {})
    else:
        sd = obj
    import numpy as np

    # detectron2 .pkl checkpoints (and some conversions) hold numpy arrays: the same weights
    converted = {k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v for k, v in sd.items()}
    tensors = {k: v for k, v in converted.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} contains no tensors: it is not a model checkpoint")
    if len(tensors) != len(sd):
        bad = sorted(k for k, v in converted.items() if not isinstance(v, torch.Tensor))[:5]
        raise CheckpointError(f"{path}: state dict entries are not tensors: {bad}")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return CheckpointData(dict(tensors), meta, path)


# ------------------------------------------------------------------------------------- config inference


def infer_config(data: CheckpointData) -> SeMaskConfig:
    """The architecture of a SeMask-FPN checkpoint, read from tensor shapes (and our own metadata).

    Raises:
        CheckpointError: the tensors are not those of a SeMask-FPN model.
    """
    saved = data.meta.get("semask_config")
    if isinstance(saved, str):
        saved = json.loads(saved)
    if isinstance(saved, dict):
        return SeMaskConfig.from_dict(saved)
    sd = data.state_dict
    where = data.path or "checkpoint"
    if any(k.startswith("sem_seg_head.") for k in sd):
        raise CheckpointError(
            f"{where} is a detectron2 mask-classification checkpoint (Mask2Former/MaskFormer/FaPN), not "
            "SeMask-FPN: load it with semask_deploy.load_model"
        )
    if not any(".semantic_layer." in k for k in sd):
        hint = "a Swin/other backbone without semantic layers" if any("blocks" in k for k in sd) else "another model"
        raise CheckpointError(
            f"{where} is not a SeMask-FPN checkpoint (no backbone.layers.*.semantic_layer.* keys; looks like "
            f"{hint}). semask-deploy loads SeMask-Swin + Semantic-FPN checkpoints"
        )
    need = ["backbone.patch_embed.proj.weight", "decode_head.conv_seg.weight"]
    for k in need:
        if k not in sd:
            raise CheckpointError(f"{where} is not a SeMask-FPN checkpoint: key {k!r} is missing")
    try:
        proj = sd["backbone.patch_embed.proj.weight"]
        embed, patch = int(proj.shape[0]), int(proj.shape[2])
        depths, heads = [], []
        for i in range(4):
            blocks = {int(m.group(1)) for k in sd if (m := re.match(rf"backbone\.layers\.{i}\.blocks\.(\d+)\.", k))}
            if not blocks:
                raise CheckpointError(f"{where}: stage {i} has no Swin blocks; not a 4-stage SeMask-Swin")
            depths.append(max(blocks) + 1)
            heads.append(int(sd[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1]))
        table = sd["backbone.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
        window = (math.isqrt(int(table)) + 1) // 2
        if (2 * window - 1) ** 2 != table:
            raise CheckpointError(f"{where}: relative position table of {table} rows is not ((2w−1)², heads)")
        sem_classes = int(sd["backbone.layers.0.semantic_layer.class_injection.0.mlp_cls_q.weight"].shape[0])
        conv_seg = sd["decode_head.conv_seg.weight"]
        num_classes, head_channels = int(conv_seg.shape[0]), int(conv_seg.shape[1])
        hidden = int(sd["backbone.layers.0.blocks.0.mlp.fc1.weight"].shape[0])
    except KeyError as exc:
        raise CheckpointError(f"{where} is not a SeMask-FPN checkpoint: key {exc.args[0]!r} is missing") from None
    sem_window = _sem_window_from_meta(data.meta) or window
    dataset = {150: "ade20k", 19: "cityscapes", 171: "coco-stuff"}.get(num_classes, "custom")
    if dataset == "cityscapes":
        test_scale, crop = (2048, 1024), (768, 768)
    elif embed == 192 and dataset != "custom":
        test_scale, crop = (2560, 640), (640, 640)
    else:
        test_scale, crop = (2048, 512), (512, 512)
    arch = {96: "t" if depths[2] == 6 else "s", 128: "b", 192: "l"}.get(embed, "custom")
    sem_modes = official_semantic_modes(embed, sem_classes)
    if (embed, tuple(depths), tuple(heads), window) not in _OFFICIAL_BACKBONES or hidden != 4 * embed or patch != 4:
        warnings.warn(
            f"{where} has no saved model config and its backbone (embed {embed}, depths {tuple(depths)}, window "
            f"{window}) is none of the official SeMask-T/S/B/L: assumed the official semantic attention "
            f"{'/'.join(sem_modes)} per stage and semantic window {sem_window}, which change the results if the model "
            "was built otherwise; save models with semask_deploy.checkpoint.save_checkpoint (as semask-train does), which keeps "
            "the config", SemaskWarning, stacklevel=2)
    return SeMaskConfig(
        embed_dim=embed,
        depths=tuple(depths),
        num_heads=tuple(heads),
        window_size=window,
        sem_window_size=sem_window,
        num_classes=num_classes,
        sem_num_classes=sem_classes,
        sem_modes=sem_modes,
        mlp_ratio=hidden / embed,
        head_channels=head_channels,
        patch_size=patch,
        dataset=dataset,
        test_scale=test_scale,
        crop_size=crop,
        name=f"semask_swin_{arch}_{dataset.replace('-', '')}",
    )


#: (embed, depths, heads, window) of SeMask-T/S/B/L: checkpoints of these need no saved config
_OFFICIAL_BACKBONES = {(embed, depths, heads, window) for embed, depths, heads, window in _ARCH.values()}


def _sem_window_from_meta(meta: Mapping[str, Any]) -> int | None:
    """``sem_window_size`` from an mmseg checkpoint's config text (not visible in tensor shapes)."""
    text = meta.get("config")
    if isinstance(text, str):
        m = re.search(r"sem_window_size\s*=\s*(\d+)", text)
        if m:
            return int(m.group(1))
    return None


# ------------------------------------------------------------------------------------------ strict load


def key_report(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], limit: int = 8) -> str:
    """A readable list of missing / unexpected / mis-shaped keys; empty when they match exactly."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong = [
        f"{k}: expected {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}, "
        f"got {tuple(got[k].shape)} {str(got[k].dtype).replace('torch.', '')}"
        for k, v in expected.items()
        if k in got and (tuple(v.shape) != tuple(got[k].shape) or _dtype_kind(v) != _dtype_kind(got[k]))
    ]
    parts = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape/dtype", wrong)):
        if items:
            shown = "; ".join(items[:limit]) + (f"; … {len(items) - limit} more" if len(items) > limit else "")
            parts.append(f"{len(items)} {title} key(s): {shown}")
    return " | ".join(parts)


def _dtype_kind(t: torch.Tensor) -> str:
    return "float" if t.is_floating_point() else str(t.dtype)


def load_state_dict_strict(
    model: torch.nn.Module, sd: Mapping[str, torch.Tensor], where: str = "checkpoint", arch: str = "SeMask-FPN"
) -> None:
    """Load ``sd`` into ``model`` with exactly matching keys, shapes and dtype kinds.

    Float tensors are cast to the model's dtype (fp16 checkpoints load into an fp32 model).

    Raises:
        CheckpointError: with the key report.
    """
    expected = model.state_dict()
    report = key_report(expected, sd)
    if report:
        raise CheckpointError(f"{where} does not match the {arch} architecture inferred from it: {report}")
    _check_tied(expected, sd, where)
    _check_relative_position_index(sd, where)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in sd.items()}, strict=True)


def _check_relative_position_index(sd: Mapping[str, torch.Tensor], where: str) -> None:
    """Swin's ``relative_position_index`` buffers are a fixed function of the window size (every official
    checkpoint holds exactly that). The eager and sdpa paths read the stored buffer while the Triton kernels
    compute the index, so a checkpoint with other values would give different answers per backend: refused."""
    from .model.swin import relative_position_index

    standard: dict[int, torch.Tensor] = {}  # window -> its index (one per window size, not one per block)
    for k, v in sd.items():
        if not k.endswith("relative_position_index") or v.ndim != 2 or v.shape[0] != v.shape[1]:
            continue
        window = round(v.shape[0] ** 0.5)
        if window * window == v.shape[0] and window not in standard:
            standard[window] = relative_position_index(window)
        if window * window != v.shape[0] or not torch.equal(v.to(torch.int64).cpu(), standard[window]):
            raise CheckpointError(
                f"{where}: {k} is not Swin's relative position index for a {window}x{window} window (every official "
                "checkpoint holds that fixed table; this one was altered): restore it from the original checkpoint")


def _check_tied(expected: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], where: str) -> None:
    """Keys that name one shared tensor in the model (FaPN's tied GroupNorm) must hold equal values."""
    first: dict[tuple, str] = {}
    for k, v in expected.items():
        if v.device.type == "meta" or v.numel() == 0:
            continue
        ident = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        if ident in first and not torch.equal(sd[first[ident]], sd[k]):
            raise CheckpointError(
                f"{where}: {k!r} and {first[ident]!r} are one shared tensor in this architecture but hold "
                "different values in the checkpoint"
            )
        first.setdefault(ident, k)


# ------------------------------------------------------------------------------------------- writing


def save_checkpoint(
    model: torch.nn.Module,
    path: str | Path,
    *,
    meta: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` atomically in the official mmseg layout (``.pth``) or as ``.safetensors``.

    ``meta`` gets ``CLASSES``, ``PALETTE`` and ``semask_config`` from the model when it has them.
    ``extra`` adds top-level entries to a ``.pth`` (e.g. ``optimizer``); ignored for safetensors.
    """
    path = Path(path)
    full_meta: dict[str, Any] = {}
    cfg = getattr(model, "config", None)
    if isinstance(cfg, SeMaskConfig):
        full_meta["semask_config"] = cfg.to_dict()
    elif hasattr(cfg, "pixel_decoder"):  # MaskFormerConfig
        full_meta["semask_maskformer_config"] = cfg.to_dict()
    if getattr(model, "class_names", None):
        full_meta["CLASSES"] = tuple(model.class_names)
    if getattr(model, "palette", None):
        full_meta["PALETTE"] = [list(map(int, c)) for c in model.palette]
    full_meta.update(meta or {})
    sd = OrderedDict((k, v.detach().cpu().contiguous()) for k, v in model.state_dict().items())
    try:
        _write_checkpoint(path, sd, full_meta, extra)
    except RuntimeError as exc:
        if not is_torch_write_failure(exc):
            raise
        raise CheckpointError(f"cannot write {path}: the write failed ({free_space_text(path.parent)} there; a "
                              "full disk?); nothing was left half-written") from exc
    return path


def _write_checkpoint(path: Path, sd: dict[str, torch.Tensor], full_meta: dict[str, Any],
                      extra: Mapping[str, Any] | None) -> None:
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            seen: set[int] = set()
            for k, v in sd.items():  # safetensors refuses shared tensors (FaPN's tied GroupNorm): copy them
                if v.numel() and v.untyped_storage().data_ptr() in seen:
                    sd[k] = v.clone()
                seen.add(v.untyped_storage().data_ptr())
            save_file(sd, str(tmp), metadata={k: json.dumps(v) for k, v in full_meta.items()})
        else:
            torch.save({"meta": full_meta, "state_dict": sd, **dict(extra or {})}, str(tmp))
