"""MaskFormer / FaPN pixel decoders and FaPN's FeatureAlign against the official golden fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semask_deploy.model.fapn import BasePixelDecoder, ConvNorm, FeatureAlign, PixelFANDecoder, group_norm

M2F = Path(__file__).resolve().parents[1] / "data" / "m2f"
PREFIX = "sem_seg_head.pixel_decoder."
ATOL, RTOL = 1e-4, 1e-5


def _golden(name: str) -> dict[str, np.ndarray]:
    with np.load(M2F / f"golden_{name}_small.npz") as z:
        return {k: z[k] for k in z.files}


def _state(g: dict[str, np.ndarray], prefix: str) -> dict[str, torch.Tensor]:
    return {k[3 + len(prefix) :]: torch.from_numpy(v) for k, v in g.items() if k.startswith("sd/" + prefix)}


def _close(got: torch.Tensor, want: np.ndarray, name: str, errors: dict[str, float]) -> None:
    got = got.detach().numpy()
    assert got.shape == want.shape, name
    errors[name] = float(np.abs(got - want).max())
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL, err_msg=name)


def _feats(g, suffix):
    return [torch.from_numpy(g[f"res{i}{suffix}"]) for i in (2, 3, 4, 5)]


def _official_key_set(name: str) -> set[str]:
    keys = json.loads((M2F / "keys" / f"{name}.json").read_text())["keys"]
    return {k[len(PREFIX) :] for k, _, _ in keys if k.startswith(PREFIX)}


@pytest.fixture(scope="module")
def maskformer():
    return _golden("maskformer_ade20k")


@pytest.fixture(scope="module")
def fapn():
    return _golden("mask2former_fapn_ade20k")


@pytest.mark.parametrize("suffix", ["", "_odd"])
def test_base_pixel_decoder_matches_official(maskformer, suffix):
    g = maskformer
    feats = _feats(g, suffix)
    dec = BasePixelDecoder([f.shape[1] for f in feats], conv_dim=64, mask_dim=64).eval()
    dec.load_state_dict(_state(g, PREFIX), strict=True)
    errors: dict[str, float] = {}
    with torch.inference_mode():
        levels = dec.forward_levels(feats)
        mask_features, multi_scale = dec(feats)
    for lvl, name in zip(levels, ("res5", "res4", "res3", "res2")):
        _close(lvl, g[f"pixdec_fpn_{name}{suffix}"], f"pixdec_fpn_{name}", errors)
    _close(mask_features, g["mask_features" + suffix], "mask_features", errors)
    assert len(multi_scale) == 3 and all(torch.equal(a, b) for a, b in zip(multi_scale, levels[:3]))
    print(suffix, errors)


@pytest.mark.parametrize("suffix", ["", "_odd"])
def test_pixel_fan_decoder_matches_official(fapn, suffix):
    g = fapn
    feats = _feats(g, suffix)
    dec = PixelFANDecoder([f.shape[1] for f in feats], conv_dim=64, mask_dim=64).eval()
    dec.load_state_dict(_state(g, PREFIX), strict=True)
    errors: dict[str, float] = {}
    with torch.inference_mode():
        mask_features, multi_scale = dec(feats)
    for i, ms in enumerate(multi_scale):
        _close(ms, g[f"pixdec_ms{i}{suffix}"], f"pixdec_ms{i}", errors)
    _close(mask_features, g["mask_features" + suffix], "mask_features", errors)
    print(suffix, errors)


def test_official_key_sets_and_tying():
    base = BasePixelDecoder([192, 384, 768, 1536], conv_dim=256, mask_dim=256)
    fan = PixelFANDecoder([192, 384, 768, 1536], conv_dim=256, mask_dim=256)
    official = {n: json.loads((M2F / "keys" / f"{n}.json").read_text()) for n in ("maskformer_ade20k", "mask2former_fapn_ade20k")}
    for dec, name in ((base, "maskformer_ade20k"), (fan, "mask2former_fapn_ade20k")):
        want = {k[len(PREFIX) :]: tuple(s) for k, s, _ in official[name]["keys"] if k.startswith(PREFIX)}
        assert {k: tuple(v.shape) for k, v in dec.state_dict().items()} == want
    sd = fan.state_dict()
    for key, alias in official["mask2former_fapn_ade20k"]["tied_keys"]:
        assert sd[key[len(PREFIX) :]].data_ptr() == sd[alias[len(PREFIX) :]].data_ptr()
    assert fan.align_1.offset.norm is fan.layer_1.norm
    # with the tied GN, a checkpoint whose two copies differ cannot load into two different values
    params = {id(p) for p in fan.parameters()}
    assert len(params) == len(sd) - len(official["mask2former_fapn_ade20k"]["tied_keys"])


@pytest.fixture(scope="module")
def msfapn():
    return _golden("mask2former_msfapn_ade20k")


@pytest.mark.parametrize("suffix", ["", "_odd"])
def test_msfapn_extra_level_with_feature_align(msfapn, suffix):
    """MSFaPN's res2 level: lateral = adapter_1(res2), y = lateral + bilinear(res3-level encoder output),
    y = layer_1(align_1(lateral, y)), mask_features = 1×1 conv (bias). Checks FeatureAlign in isolation."""
    g = msfapn
    res2 = torch.from_numpy(g["res2" + suffix])
    ms2 = torch.from_numpy(g["pixdec_ms2" + suffix])
    sd = _state(g, PREFIX)
    c = ms2.shape[1]
    adapter = ConvNorm(res2.shape[1], c, 1, norm=group_norm(c))
    out_norm = group_norm(c)
    align = FeatureAlign(c, c, norm=out_norm)
    layer = ConvNorm(c, c, 3, norm=out_norm, relu=True)
    head = torch.nn.Conv2d(c, c, 1)
    for mod, name in ((adapter, "adapter_1"), (align, "align_1"), (layer, "layer_1"), (head, "mask_features")):
        mod.load_state_dict({k[len(name) + 1 :]: v for k, v in sd.items() if k.startswith(name + ".")}, strict=True)
    errors: dict[str, float] = {}
    with torch.inference_mode():
        lateral = adapter(res2)
        y = lateral + F.interpolate(ms2, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        mf = head(layer(align(lateral, y)))
    _close(mf, g["mask_features" + suffix], "mask_features", errors)
    print(suffix, errors)
