"""MaskFormer's transformer predictor against the official golden fixture (and the full-size key list)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from semask_deploy.model.fapn import BasePixelDecoder
from semask_deploy.model.maskformer_decoder import MaskFormerPredictor

M2F = Path(__file__).resolve().parents[1] / "data" / "m2f"
PREFIX = "sem_seg_head.predictor."
ATOL, RTOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def golden():
    with np.load(M2F / "golden_maskformer_ade20k_small.npz") as z:
        return {k: z[k] for k in z.files}


def _state(g, prefix):
    return {k[3 + len(prefix) :]: torch.from_numpy(v) for k, v in g.items() if k.startswith("sd/" + prefix)}


def _build(g) -> MaskFormerPredictor:
    sd = _state(g, PREFIX)
    layers = len({k.split(".")[3] for k in sd if k.startswith("transformer.decoder.layers.")})
    q, c = sd["query_embed.weight"].shape
    pred = MaskFormerPredictor(
        in_channels=g["res5"].shape[1],
        num_classes=sd["class_embed.weight"].shape[0] - 1,
        hidden_dim=c,
        num_queries=q,
        nheads=8,
        dim_feedforward=sd["transformer.decoder.layers.0.linear1.weight"].shape[0],
        dec_layers=layers,
        mask_dim=sd["mask_embed.layers.2.weight"].shape[0],
    ).eval()
    pred.load_state_dict(sd, strict=True)
    return pred


def _close(got, want, name, errors):
    got = got.detach().numpy()
    assert got.shape == want.shape, (name, got.shape, want.shape)
    errors[name] = float(np.abs(got - want).max())
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL, err_msg=name)


@pytest.mark.parametrize("suffix", ["", "_odd"])
def test_predictor_matches_official(golden, suffix):
    g = golden
    pred = _build(g)
    res5 = torch.from_numpy(g["res5" + suffix])
    mf = torch.from_numpy(g["mask_features" + suffix])
    errors: dict[str, float] = {}
    with torch.inference_mode():
        hs, logits, masks = pred.forward_all(res5, mf)
        last_logits, last_masks = pred(res5, mf)
    _close(hs, g["dec_hs" + suffix], "dec_hs", errors)
    _close(logits, g["dec_pred_logits" + suffix], "dec_pred_logits", errors)
    _close(masks, g["dec_pred_masks" + suffix], "dec_pred_masks", errors)
    _close(last_logits, g["pred_logits" + suffix], "pred_logits", errors)
    _close(last_masks, g["pred_masks" + suffix], "pred_masks", errors)
    print(suffix, errors)


@pytest.mark.parametrize("suffix", ["", "_odd"])
def test_pixel_decoder_then_predictor(golden, suffix):
    """Chained from the backbone outputs: BasePixelDecoder → MaskFormerPredictor → final predictions."""
    g = golden
    feats = [torch.from_numpy(g[f"res{i}{suffix}"]) for i in (2, 3, 4, 5)]
    pix = BasePixelDecoder([f.shape[1] for f in feats], conv_dim=64, mask_dim=64).eval()
    pix.load_state_dict(_state(g, "sem_seg_head.pixel_decoder."), strict=True)
    pred = _build(g)
    errors: dict[str, float] = {}
    with torch.inference_mode():
        mf, _ = pix(feats)
        logits, masks = pred(feats[3], mf)
    _close(logits, g["pred_logits" + suffix], "pred_logits", errors)
    _close(masks, g["pred_masks" + suffix], "pred_masks", errors)


def test_official_full_size_key_set():
    official = json.loads((M2F / "keys" / "maskformer_ade20k.json").read_text())
    want = {k[len(PREFIX) :]: tuple(s) for k, s, _ in official["keys"] if k.startswith(PREFIX)}
    pred = MaskFormerPredictor(1536, 150, hidden_dim=256, num_queries=100, nheads=8, dim_feedforward=2048, dec_layers=6, mask_dim=256)
    assert {k: tuple(v.shape) for k, v in pred.state_dict().items()} == want
    # identity input projection when res5 already has hidden_dim channels (no keys), unless enforced
    assert "input_proj.weight" not in MaskFormerPredictor(64, 3, hidden_dim=64, nheads=8).state_dict()
    assert "input_proj.weight" in MaskFormerPredictor(64, 3, hidden_dim=64, nheads=8, enforce_input_proj=True).state_dict()


def test_attention_equals_nn_multihead_attention():
    from semask_deploy.model.maskformer_decoder import _Attention

    torch.manual_seed(0)
    ours = _Attention(32, 4)
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    ref.load_state_dict(ours.state_dict(), strict=True)
    q, k, v = torch.randn(2, 5, 32), torch.randn(2, 7, 32), torch.randn(2, 7, 32)
    torch.testing.assert_close(ours(q, k, v), ref(q, k, v, need_weights=False)[0], atol=1e-6, rtol=1e-5)
