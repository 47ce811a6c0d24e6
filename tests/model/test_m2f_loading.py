"""Official key lists (full-size configs) build and load strictly; loading errors are one clear CheckpointError."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from semask_deploy.api import load_model
from semask_deploy.checkpoint import key_report
from semask_deploy.checkpoint_maskformer import infer_maskformer_config
from semask_deploy.errors import CheckpointError
from semask_deploy.model.mask_former import MaskFormerSegmentor

DATA = Path(__file__).resolve().parents[1] / "data" / "m2f"
KEYS = sorted(p.stem for p in (DATA / "keys").glob("*.json"))
DTYPES = {"torch.float32": torch.float32, "torch.int64": torch.int64, "float32": torch.float32, "int64": torch.int64}


@pytest.mark.parametrize("name", KEYS)
def test_official_key_list_loads_strictly(name):
    spec = json.loads((DATA / "keys" / f"{name}.json").read_text())
    sd = {k: torch.empty(shape, dtype=DTYPES[dt], device="meta") for k, shape, dt in spec["keys"]}
    cfg = infer_maskformer_config(sd, {}, name)
    derived = spec["config"]["derived"]
    modes = ["window" if b == "SWSeMaskBlock" else "global" for b in derived["backbone"]["semantic_block_per_stage"]]
    assert list(cfg.sem_modes) == modes
    assert cfg.sem_window_size == derived["backbone"]["semantic_window_size_per_stage"][0]
    assert cfg.min_size_test == spec["config"]["INPUT.MIN_SIZE_TEST"]
    assert cfg.max_size_test == spec["config"]["INPUT.MAX_SIZE_TEST"]
    with torch.device("meta"):
        model = MaskFormerSegmentor(cfg, attention_backend="eager")
    assert key_report(model.state_dict(), sd) == ""
    model.load_state_dict(sd, strict=True, assign=True)
    assert sum(p.numel() for p in model.parameters()) == spec["num_parameters"]
    assert len(model.state_dict()) == spec["num_keys"]


@pytest.fixture(scope="module")
def m2f_sd():
    z = np.load(DATA / "golden_mask2former_ade20k_small.npz")
    return {k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("sd/")}


def test_formats_load(m2f_sd, tmp_path):
    """detectron2 ``{"model": ...}``, bare, ``module.``-prefixed and .safetensors all load the same weights."""
    from safetensors.torch import save_file

    torch.save(m2f_sd, tmp_path / "bare.pth")
    torch.save({f"module.{k}": v for k, v in m2f_sd.items()}, tmp_path / "ddp.pth")
    save_file({k: v.contiguous() for k, v in m2f_sd.items()}, str(tmp_path / "m.safetensors"))
    x = torch.randn(1, 3, 40, 50)
    outs = []
    for f in ("bare.pth", "ddp.pth", "m.safetensors"):
        model = load_model(tmp_path / f)
        assert isinstance(model, MaskFormerSegmentor) and len(model.class_names) == 150
        with torch.no_grad():
            outs.append(model(x))
    assert outs[0].shape == (1, 150, 40, 50)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_missing_and_misshaped_keys(m2f_sd, tmp_path):
    sd = dict(m2f_sd)
    sd.pop("sem_seg_head.predictor.decoder_norm.weight")
    torch.save({"model": sd}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="missing.*decoder_norm.weight"):
        load_model(tmp_path / "missing.pth")
    sd = dict(m2f_sd)
    sd["criterion.empty_weight"] = torch.ones(10)
    torch.save({"model": sd}, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match="wrong shape.*empty_weight"):
        load_model(tmp_path / "shape.pth")
    sd = dict(m2f_sd)
    sd["sem_seg_head.predictor.extra.weight"] = torch.ones(1)
    torch.save({"model": sd}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unexpected.*extra.weight"):
        load_model(tmp_path / "extra.pth")


def test_wrong_files(m2f_sd, tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "junk.pth")
    head_only = {k: v for k, v in m2f_sd.items() if not k.startswith("backbone.")}
    torch.save({"model": head_only}, tmp_path / "head.pth")
    with pytest.raises(CheckpointError, match="no SeMask backbone"):
        load_model(tmp_path / "head.pth")
    # an FPN head glued to a mask-classification checkpoint: neither architecture, named keys
    mixed = dict(m2f_sd, **{"decode_head.conv_seg.weight": torch.zeros(150, 256, 1, 1)})
    torch.save({"model": mixed}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="unexpected.*decode_head.conv_seg"):
        load_model(tmp_path / "mixed.pth")
    from semask_deploy.checkpoint import CheckpointData, infer_config

    with pytest.raises(CheckpointError, match="mask-classification"):
        infer_config(CheckpointData(m2f_sd))


def test_tied_keys_must_agree(tmp_path):
    z = np.load(DATA / "golden_mask2former_fapn_ade20k_small.npz")
    sd = {k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("sd/")}
    a, b = "sem_seg_head.pixel_decoder.layer_1.norm.weight", "sem_seg_head.pixel_decoder.align_1.offset.norm.weight"
    assert torch.equal(sd[a], sd[b])
    torch.save({"model": sd}, tmp_path / "ok.pth")
    model = load_model(tmp_path / "ok.pth")
    assert model.sem_seg_head.pixel_decoder.layer_1.norm is model.sem_seg_head.pixel_decoder.align_1.offset.norm
    sd[b] = sd[b] + 1
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="shared tensor"):
        load_model(tmp_path / "bad.pth")


@pytest.mark.parametrize("arch,pixdec", [("mask2former", "msdeform"), ("mask2former", "msdeform_fapn")])
def test_build_save_load_roundtrip(arch, pixdec, tmp_path):
    """A custom config: build_model, batch of 2, predict == argmax, save (.pth / .safetensors) and reload."""
    import semask_deploy as sdp
    from semask_deploy.checkpoint import save_checkpoint

    cfg = sdp.MaskFormerConfig(
        arch=arch, pixel_decoder=pixdec, embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=4,
        sem_window_size=4, sem_modes=("window",) * 3 + ("global",), num_classes=5, conv_dim=32, mask_dim=32,
        enc_layers=1, hidden_dim=32, dec_layers=3, dec_ffn=64, num_queries=4,
    )
    model = sdp.build_model(cfg).eval()
    x = torch.randn(2, 3, 37, 45)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, 5, 37, 45)
        assert torch.equal(model.predict(x), y.argmax(1))
    for f in ("m.pth", "m.safetensors"):
        save_checkpoint(model, tmp_path / f)
        back = load_model(tmp_path / f)
        assert back.config == cfg
        with torch.no_grad():
            assert torch.equal(back(x), y)


def test_a_detectron2_file_of_another_head_count_loads_its_heads(tmp_path):
    """MASK_FORMER.NHEADS sets the MSDeformAttn encoder's and the decoder's heads: a bare detectron2 file (no
    semask metadata) of NHEADS=4 must not come back with the decoder at the default 8."""
    import semask_deploy as sdp

    cfg = sdp.MaskFormerConfig(
        arch="mask2former", pixel_decoder="msdeform", embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
        window_size=7, sem_window_size=7, sem_modes=("window",) * 4, num_classes=19, conv_dim=32, mask_dim=32,
        enc_layers=1, enc_heads=4, hidden_dim=32, dec_layers=3, dec_heads=4, dec_ffn=64, num_queries=5,
    )
    model = sdp.build_model(cfg, attention_backend="eager").eval()
    torch.save({"model": model.state_dict()}, tmp_path / "heads4.pth")
    back = load_model(tmp_path / "heads4.pth", attention_backend="eager")
    assert (back.config.enc_heads, back.config.dec_heads) == (4, 4)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
