"""Architecture of a detectron2 SeMask mask-classification checkpoint, read from its keys and shapes.

    sem_seg_head.predictor.query_feat.*           → Mask2Former decoder (else MaskFormer's DETR decoder)
    sem_seg_head.pixel_decoder.transformer.*      → MSDeformAttn pixel decoder (+ align_1.* → MSFaPN)
    sem_seg_head.pixel_decoder.align_1.* alone    → FaPN;  neither → MaskFormer's BasePixelDecoder

Every size comes from a shape: Swin embed/depths/heads/window as for SeMask-FPN; K from ``class_embed``;
queries/hidden from the query embeddings; layer counts from the key indices; FFN widths from ``linear1``;
conv/mask dims from ``mask_features``. Not visible in the weights, hence taken from the official code:
4 sampling points per level (heads = rows / (levels·4)), 8 decoder heads (every official config), the
semantic window (ADE20K = Swin window, otherwise the code default 7), the per-code-tree semantic stages and
the test resize (K = 150 → ADE20K 640/2560, 19 → Cityscapes 1024/2048). A config saved by us in the
checkpoint's metadata (``semask_maskformer_config``) wins.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

import torch

from .errors import CheckpointError
from .maskformer_config import (
    TEST_RESIZE, MaskFormerConfig, dataset_for_classes, official_sem_modes, official_sem_window,
)

PD = "sem_seg_head.pixel_decoder."
PR = "sem_seg_head.predictor."
META_KEY = "semask_maskformer_config"


def is_maskformer_state_dict(sd: Mapping[str, Any]) -> bool:
    """True for a detectron2 SeMask mask-classification state dict (``sem_seg_head.*`` keys)."""
    return any(k.startswith("sem_seg_head.") for k in sd)


def _count(sd: Mapping[str, Any], prefix: str) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def infer_maskformer_config(sd: Mapping[str, torch.Tensor], meta: Mapping[str, Any], where: str) -> MaskFormerConfig:
    """The :class:`MaskFormerConfig` of a detectron2 checkpoint's state dict.

    Raises:
        CheckpointError: the keys are not those of a SeMask mask-classification model.
    """
    saved = meta.get(META_KEY)
    if isinstance(saved, str):
        saved = json.loads(saved)
    if isinstance(saved, dict):
        return MaskFormerConfig.from_dict(saved)
    if not any(".semantic_layer." in k for k in sd):
        raise CheckpointError(
            f"{where} has a detectron2 mask-classification head but no SeMask backbone "
            "(no backbone.layers.*.semantic_layer.* keys); semask-deploy loads SeMask-Swin models only"
        )
    try:
        proj = sd["backbone.patch_embed.proj.weight"]
        embed, patch = int(proj.shape[0]), int(proj.shape[2])
        depths, heads = [], []
        for i in range(4):
            d = _count(sd, f"backbone.layers.{i}.blocks.")
            if not d:
                raise CheckpointError(f"{where}: stage {i} has no Swin blocks; not a 4-stage SeMask-Swin")
            depths.append(d)
            heads.append(int(sd[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1]))
        table = int(sd["backbone.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0])
        window = (math.isqrt(table) + 1) // 2
        if (2 * window - 1) ** 2 != table:
            raise CheckpointError(f"{where}: relative position table of {table} rows is not ((2w−1)², heads)")
        hidden_mlp = int(sd["backbone.layers.0.blocks.0.mlp.fc1.weight"].shape[0])
        class_w = sd[PR + "class_embed.weight"]
        num_classes, hidden = int(class_w.shape[0]) - 1, int(class_w.shape[1])
        mf = sd[PD + "mask_features.weight"]
        mask_dim, conv_dim = int(mf.shape[0]), int(mf.shape[1])
        num_queries = int(sd[PR + "query_embed.weight"].shape[0])
        # each part is told by a family of keys, not one key: a checkpoint missing that one key is then still
        # recognised, and the strict load names exactly what is missing
        if _has_prefix(sd, PR + "query_feat.", PR + "transformer_cross_attention_layers."):
            arch = "mask2former"
            dec_layers = _count(sd, PR + "transformer_cross_attention_layers.")
            dec_ffn = int(sd[PR + "transformer_ffn_layers.0.linear1.weight"].shape[0])
        else:
            arch = "maskformer"
            dec_layers = _count(sd, PR + "transformer.decoder.layers.")
            dec_ffn = int(sd[PR + "transformer.decoder.layers.0.linear1.weight"].shape[0])
        enc_layers, enc_heads, enc_ffn = 0, 8, 1024
        fapn = _has_prefix(sd, PD + "align_1.")
        if _has_prefix(sd, PD + "transformer."):
            pixel_decoder = "msdeform_fapn" if fapn else "msdeform"
            enc_layers = _count(sd, PD + "transformer.encoder.layers.")
            levels = int(sd[PD + "transformer.level_embed"].shape[0])
            rows = int(sd[PD + "transformer.encoder.layers.0.self_attn.attention_weights.weight"].shape[0])
            enc_heads = rows // (levels * 4)
            enc_ffn = int(sd[PD + "transformer.encoder.layers.0.linear1.weight"].shape[0])
        else:
            pixel_decoder = "fapn" if fapn else "base"
    except KeyError as exc:
        raise CheckpointError(
            f"{where} is not a SeMask Mask2Former/MaskFormer/FaPN checkpoint: key {exc.args[0]!r} is missing"
        ) from None
    if arch == "maskformer" and pixel_decoder != "base" or arch == "mask2former" and pixel_decoder == "base":
        found = "with" if pixel_decoder != "base" else "without"
        raise CheckpointError(
            f"{where}: unsupported combination: a {arch} decoder ({PR}*) {found} a multi-scale or FaPN pixel decoder "
            f"({PD}transformer.*, {PD}align_1.*); the official pairs are MaskFormer with the plain pixel decoder and "
            "Mask2Former with MSDeformAttn and/or FaPN")
    dataset = dataset_for_classes(num_classes)
    min_size, max_size = TEST_RESIZE.get(dataset, TEST_RESIZE["ade20k"])
    kind = {"msdeform": "", "msdeform_fapn": "_msfapn", "fapn": "_fapn", "base": ""}[pixel_decoder]
    try:
        return MaskFormerConfig(
            arch=arch, pixel_decoder=pixel_decoder, embed_dim=embed, depths=tuple(depths), num_heads=tuple(heads),
            window_size=window, sem_window_size=official_sem_window(window, num_classes),
            sem_modes=official_sem_modes(arch, pixel_decoder, num_classes), num_classes=num_classes,
            conv_dim=conv_dim, mask_dim=mask_dim, enc_layers=enc_layers, enc_heads=enc_heads, enc_ffn=enc_ffn,
            # one MASK_FORMER.NHEADS sets both the MSDeformAttn encoder's and the decoder's heads (the decoder's
            # own weights do not show it); without that encoder the official 8
            hidden_dim=hidden, dec_layers=dec_layers, dec_heads=enc_heads if enc_layers else 8, dec_ffn=dec_ffn,
            num_queries=num_queries,
            mlp_ratio=hidden_mlp / embed, patch_size=patch, dataset=dataset, min_size_test=min_size,
            max_size_test=max_size, name=f"semask_{arch}{kind}_{dataset}",
        )
    except Exception as exc:  # ConfigError from impossible shapes
        raise CheckpointError(f"{where}: the tensor shapes do not describe a valid model: {exc}") from None


def _has_prefix(sd: dict[str, Any], *prefixes: str) -> bool:
    """Whether any key of ``sd`` starts with one of ``prefixes``."""
    return any(k.startswith(prefixes) for k in sd)
