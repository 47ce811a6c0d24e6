"""Initialising a model for training: from scratch, from an official SeMask checkpoint, or from a Swin
ImageNet classification checkpoint.

* **scratch** — the official initialisation: every Linear ``trunc_normal(std=0.02)`` with zero bias,
  LayerNorm weight 1 / bias 0 (Swin's ``_init_weights``, applied to the whole backbone including the
  semantic layers), relative position tables ``trunc_normal(0.02)``; head ConvModules Kaiming-normal
  (fan_out, ReLU) with BN 1/0 (mmcv ``ConvModule``), ``conv_seg`` ``normal(0, 0.01)``; the semantic
  attention ``gamma`` 0 (the official value; ``gamma_init`` changes it, for training from scratch).
* **semask** — an official mmseg SeMask-FPN checkpoint (or one of ours): loaded strictly, as
  :func:`~semask_deploy.api.load_model` does; ``gamma`` comes from the file. Trained on other classes than
  the data's (fine-tuning e.g. an ADE20K model on your own classes): every tensor is loaded except the
  class-sized ones — the classifier ``decode_head.conv_seg`` and the semantic layers' class projections
  ``mlp_cls_q``/``mlp_cls_k`` — which keep the scratch initialisation and are reported (as mmseg's
  ``load_from`` leaves mis-sized tensors); anything else that does not fit is still an error.
* **swin** — the official Swin classification layout (``patch_embed.*``, ``layers.{i}.blocks.*``,
  ``layers.{i}.downsample.*``, ``norm.*``, ``head.*``, optionally under ``"model"``) mapped to
  ``backbone.*``. The classifier ``head.*`` and the final ``norm.*`` are dropped, ``attn_mask`` buffers
  and ``relative_position_index`` are recomputed, relative position tables of another window size are
  resized bicubically (as mmseg's Swin loader does); the semantic layers, the per-stage output norms and
  the decode head keep the scratch initialisation. Any other missing, extra or mis-shaped backbone key
  is an error. Also read: the backbone of an mmseg Swin segmentation checkpoint (``backbone.*`` beside
  ``decode_head.*``/``auxiliary_head.*``, which are skipped; its per-stage output norms ``norm0..3`` are
  loaded too) and a MoBY self-supervised checkpoint (``encoder.*``, as the official loader strips it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import CheckpointData, load_state_dict_strict, read_checkpoint
from ..errors import CheckpointError
from ..model import SeMaskSegmentor


@dataclass
class InitReport:
    """What an initialisation loaded, resized, skipped and left fresh."""

    kind: str  # "scratch" | "semask" | "swin"
    source: str | None = None
    loaded: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key in the file, reason)
    fresh: list[str] = field(default_factory=list)  # our keys that kept the scratch init

    def summary(self) -> str:
        """One paragraph for the log."""
        if self.kind == "scratch":
            return "initialised from scratch (official init)"
        text = f"initialised from {self.kind} checkpoint {self.source}: {len(self.loaded)} tensors loaded"
        if self.resized:
            text += f", {len(self.resized)} relative position tables resized (bicubic)"
        if self.skipped:
            reasons: dict[str, int] = {}
            for _, r in self.skipped:
                reasons[r] = reasons.get(r, 0) + 1
            text += "; skipped " + ", ".join(f"{n} {r}" for r, n in reasons.items())
        if self.fresh:
            groups = sorted({_group(k) for k in self.fresh})
            text += f"; {len(self.fresh)} tensors start fresh ({', '.join(groups)})"
        return text

    def to_dict(self) -> dict:
        return {
            "kind": self.kind, "source": self.source, "loaded": len(self.loaded), "resized": self.resized,
            "skipped": [list(s) for s in self.skipped], "fresh": self.fresh,
        }


def _group(key: str) -> str:
    if key.startswith("decode_head."):
        return "decode head"
    if ".semantic_layer." in key:
        return "semantic layers"
    if re.match(r"backbone\.norm\d", key):
        return "stage output norms"
    return key


# ------------------------------------------------------------------------------------------ scratch


def official_init(model: SeMaskSegmentor, gamma_init: float = 0.0) -> None:
    """Re-initialise every parameter as the official code does (see the module docstring)."""
    for m in model.backbone.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for name, p in model.backbone.named_parameters():
        if name.endswith("relative_position_bias_table"):
            nn.init.trunc_normal_(p, std=0.02)
    set_gamma(model, gamma_init)
    head = model.decode_head
    for m in head.scale_heads.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.normal_(head.conv_seg.weight, 0.0, 0.01)
    nn.init.zeros_(head.conv_seg.bias)


@torch.no_grad()
def set_gamma(model: nn.Module, value: float) -> int:
    """Set every semantic attention ``gamma`` (``*.class_injection.0.gamma``); returns how many."""
    n = 0
    for name, p in model.named_parameters():
        if name.endswith("class_injection.0.gamma"):
            p.fill_(value)
            n += 1
    return n


# ------------------------------------------------------------------------------------ checkpoints


def checkpoint_kind(data: CheckpointData) -> str:
    """``"semask"`` (SeMask-FPN), ``"swin"`` (Swin classification / backbone-only) or ``"other"``."""
    keys = data.state_dict.keys()
    if any(".semantic_layer." in k for k in keys) and any(k.startswith("backbone.") for k in keys):
        return "semask"
    if any(re.match(r"(backbone\.|encoder\.)?layers\.\d+\.blocks\.\d+\.", k) for k in keys):
        return "swin"
    return "other"


def init_from_checkpoint(
    model: SeMaskSegmentor, path: str | Path, gamma_init: float = 0.0, data: CheckpointData | None = None
) -> InitReport:
    """Initialise ``model`` from ``path`` (SeMask or Swin checkpoint); see the module docstring.

    Args:
        model: the segmentor to fill.
        path: the checkpoint file.
        gamma_init: ``gamma`` of the fresh semantic layers (Swin init only; SeMask files carry theirs).
        data: the already read file, if the caller has it.

    Raises:
        CheckpointError: unreadable file, another architecture, or keys that do not fit.
    """
    data = data if data is not None else read_checkpoint(path)
    kind = checkpoint_kind(data)
    if kind == "semask":
        fresh = _class_sized_mismatches(model, data.state_dict)
        sd = {**data.state_dict, **{k: v for k, v in model.state_dict().items() if k in fresh}}
        load_state_dict_strict(model, sd, where=str(path))  # (still names every other key that does not fit)
        return InitReport("semask", str(path), loaded=sorted(k for k in data.state_dict if k not in fresh),
                          fresh=fresh)
    if kind == "swin":
        official_init(model, gamma_init)
        return load_swin_imagenet(model, data.state_dict, str(path))
    raise CheckpointError(
        f"--init {path} is neither a SeMask-FPN checkpoint (backbone.* with semantic layers) nor a Swin "
        "classification checkpoint (patch_embed.*, layers.N.blocks.*); pass one of those, or omit --init"
    )


#: the tensors whose first axis is a class count: the classifier (K) and the semantic class projections (Kb)
CLASS_SIZED = re.compile(r"(^decode_head\.conv_seg|\.semantic_layer\..*\.mlp_cls_[qk])\.(weight|bias)$")


def _class_sized_mismatches(model: SeMaskSegmentor, sd: dict[str, torch.Tensor]) -> list[str]:
    """The class-sized tensors of ``sd`` whose class count is not ``model``'s (other axes equal): those start
    fresh when a checkpoint of other classes is fine-tuned. Any other mismatch is left to the strict load."""
    expected = model.state_dict()
    return sorted(
        k for k, v in sd.items()
        if CLASS_SIZED.search(k) and k in expected and v.ndim == expected[k].ndim and v.ndim >= 1
        and tuple(v.shape[1:]) == tuple(expected[k].shape[1:]) and v.shape[0] != expected[k].shape[0])


def resize_relative_table(table: torch.Tensor, rows: int) -> torch.Tensor:
    """Bicubic resize of a ((2w−1)², heads) relative position table to ``rows`` = (2w'−1)² rows."""
    l1, heads = table.shape
    s1, s2 = math.isqrt(l1), math.isqrt(rows)
    grid = table.float().permute(1, 0).reshape(1, heads, s1, s1)
    out = F.interpolate(grid, size=(s2, s2), mode="bicubic", align_corners=False)
    return out.reshape(heads, rows).permute(1, 0).contiguous().to(table.dtype)


#: a Swin segmentation backbone's per-stage output norms (mmseg layout), which our backbone has too
OUTPUT_NORM = re.compile(r"norm[0-3]\.(weight|bias)")

#: the other parts of the files whose Swin backbone :func:`load_swin_imagenet` reads
_SEGMENTATION_HEADS = ("decode_head.", "auxiliary_head.")


def _strip_swin_prefix(sd: dict[str, torch.Tensor], report: InitReport) -> tuple[dict[str, torch.Tensor], bool]:
    """The backbone tensors of ``sd`` under the Swin classification names, and whether they come from a
    segmentation checkpoint (whose ``norm0..3`` output norms are then ours too). The heads of a segmentation
    checkpoint and MoBY's other branches go to ``report.skipped``."""
    if sd and all(k.startswith(("backbone.",) + _SEGMENTATION_HEADS) for k in sd):
        for k in sd:
            if k.startswith(_SEGMENTATION_HEADS):
                report.skipped.append((k, "segmentation head keys (a new head is trained)"))
        return {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}, True
    if sd and min(sd).startswith("encoder."):  # MoBY: the online branch, as the official loader takes it
        for k in sd:
            if not k.startswith("encoder."):
                report.skipped.append((k, "not the encoder (online) branch of a MoBY checkpoint"))
        return {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}, False
    return sd, False


def load_swin_imagenet(model: SeMaskSegmentor, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> InitReport:
    """Copy a Swin classification state dict into ``model.backbone`` (see the module docstring).

    Args:
        model: the segmentor (already initialised from scratch).
        sd: the Swin state dict (keys ``patch_embed.*``, ``layers.*``, ``norm.*``, ``head.*``), or an mmseg
            segmentation checkpoint's (``backbone.*``, with ``norm0..3``; ``decode_head.*`` and
            ``auxiliary_head.*`` are skipped), or MoBY's (``encoder.*``; other branches are skipped).
        source: name for the report.

    Returns:
        The :class:`InitReport`.

    Raises:
        CheckpointError: missing Swin tensors, unexpected ones, or shapes that do not fit.
    """
    report = InitReport("swin", source)
    ours = model.state_dict()
    sd, out_norms = _strip_swin_prefix(sd, report)
    new: dict[str, torch.Tensor] = {}
    unexpected, wrong = [], []
    for key, value in sd.items():
        if key.startswith("head.") or key.startswith("norm."):
            report.skipped.append((key, "classifier head / final norm"))
            continue
        if key.endswith("attn_mask"):
            report.skipped.append((key, "attention masks (recomputed)"))
            continue
        if key == "absolute_pos_embed":
            report.skipped.append((key, "absolute position embedding (SeMask uses none)"))
            continue
        target = f"backbone.{key}"
        loadable = key.startswith(("patch_embed.", "layers.")) or (out_norms and OUTPUT_NORM.fullmatch(key))
        if target not in ours or not loadable:
            unexpected.append(key)
            continue
        want = ours[target]
        if key.endswith("relative_position_index"):
            if tuple(value.shape) != tuple(want.shape):
                report.skipped.append((key, "relative position indices of another window (recomputed)"))
            continue
        if key.endswith("relative_position_bias_table") and value.shape != want.shape:
            if value.shape[1] != want.shape[1]:
                wrong.append(f"{key}: {tuple(value.shape)} vs ours {tuple(want.shape)} (different heads)")
                continue
            value = resize_relative_table(value, want.shape[0])
            report.resized.append(target)
        elif tuple(value.shape) != tuple(want.shape):
            wrong.append(f"{key}: {tuple(value.shape)} vs ours {tuple(want.shape)}")
            continue
        new[target] = value.to(want.dtype)
    swin_part = [
        k for k in ours
        if k.startswith(("backbone.patch_embed.", "backbone.layers."))
        and ".semantic_layer." not in k and not k.endswith("relative_position_index")
    ]
    missing = [k[len("backbone."):] for k in swin_part if k not in new]
    if missing or unexpected or wrong:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                parts.append(f"{len(items)} {title}: " + "; ".join(items[:6]) + (" …" if len(items) > 6 else ""))
        # a wrong variant shows as wrong shapes or missing blocks; keys that are no Swin tensor at all are not
        # cured by another --variant
        hint = ("pick the --variant that matches the checkpoint (embed dim, depths, heads)" if missing or wrong
                else "these keys are not part of a Swin backbone: remove them from the file, or omit --init")
        raise CheckpointError(f"{source} does not fit this variant's Swin backbone ({' | '.join(parts)}); {hint}")
    with torch.no_grad():
        for k, v in new.items():
            ours[k].copy_(v)
    report.loaded = sorted(new)
    report.fresh = sorted(k for k in ours if k not in new and not k.endswith(("relative_position_index",
                                                                               "num_batches_tracked")))
    return report
