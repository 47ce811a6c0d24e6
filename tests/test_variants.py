"""Every official variant × {150, 19, 171} classes: our modules carry exactly the official keys, and a
checkpoint synthesised from the official key list is recognised (variant inferred) and loads strictly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from semask_deploy import load_model
from semask_deploy.checkpoint import CheckpointData, infer_config, key_report
from semask_deploy.config import VARIANTS
from semask_deploy.model import SeMaskSegmentor

KEYS = Path(__file__).parent / "data" / "keys"
ARCH = {"tiny": "t", "small": "s", "base": "b", "large": "l"}
DATASET = {150: "ade20k", 19: "cityscapes", 171: "cocostuff"}
CASES = [(v, k) for v in ARCH for k in (150, 19, 171)]
DTYPES = {"float32": torch.float32, "int64": torch.int64}


def _official(variant: str, classes: int) -> dict:
    return json.loads((KEYS / f"semfpn_{variant}_{classes}.json").read_text())


def _meta_state_dict(spec: dict) -> dict[str, torch.Tensor]:
    return {name: torch.empty(shape, dtype=DTYPES[dt], device="meta") for name, shape, dt in spec["keys"]}


@pytest.mark.parametrize("variant,classes", CASES)
def test_modules_have_exactly_the_official_keys(variant, classes):
    spec = _official(variant, classes)
    cfg = VARIANTS[f"semask_swin_{ARCH[variant]}_{DATASET[classes]}"]
    with torch.device("meta"):
        model = SeMaskSegmentor(cfg, attention_backend="eager")
    ours = model.state_dict()
    assert list(ours) == [k for k, _, _ in spec["keys"]], "key order differs from the official state_dict"
    assert key_report(ours, _meta_state_dict(spec)) == ""
    params = sum(p.numel() for p in model.parameters())
    assert params == spec["num_parameters"]
    derived = spec["config"]["derived"]["semantic_block_per_stage"]
    assert [("window" if d == "SWSeMaskBlock" else "global") for d in derived] == list(cfg.sem_modes)


@pytest.mark.parametrize("variant,classes", CASES)
def test_variant_is_inferred_from_tensor_shapes(variant, classes):
    spec = _official(variant, classes)
    cfg = infer_config(CheckpointData(_meta_state_dict(spec)))
    bb = spec["config"]["backbone"]
    assert cfg.embed_dim == bb["embed_dim"]
    assert list(cfg.depths) == bb["depths"]
    assert list(cfg.num_heads) == bb["num_heads"]
    assert cfg.window_size == bb["window_size"] and cfg.sem_window_size == bb["sem_window_size"]
    assert cfg.sem_num_classes == bb["num_cls"]
    assert cfg.num_classes == spec["config"]["decode_head"]["num_classes"] == classes
    assert cfg.mlp_ratio == bb["mlp_ratio"]
    assert cfg == VARIANTS[f"semask_swin_{ARCH[variant]}_{DATASET[classes]}"]


@pytest.mark.parametrize("classes", [150, 19, 171])
def test_synthesised_tiny_checkpoints_load_strictly(classes, tmp_path):
    spec = _official("tiny", classes)
    gen = torch.Generator().manual_seed(classes)
    sd = {}
    for name, shape, dt in spec["keys"]:
        if dt == "int64":
            sd[name] = torch.zeros(shape, dtype=torch.int64)
        else:
            sd[name] = torch.randn(shape, generator=gen) * 0.02
    # the relative position index is a deterministic buffer: use the official definition
    from semask_deploy.model.swin import relative_position_index

    for name in sd:
        if name.endswith("relative_position_index"):
            sd[name] = relative_position_index(7)
        if name.endswith("running_var"):
            sd[name] = sd[name].abs() + 1
    path = tmp_path / f"tiny{classes}.pth"
    torch.save({"meta": {}, "state_dict": sd}, path)
    model = load_model(path)
    assert model.config.num_classes == classes
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 45, 61))
    assert out.shape == (1, classes, 45, 61)
    assert len(model.class_names) == classes and len(model.palette) == classes


def test_coco_stuff_alt_backbone_171_is_also_accepted():
    spec = _official("tiny", 171)
    sd = _meta_state_dict(spec)
    for name, shape in spec["alt_if_backbone_num_cls_171"]:
        sd[name] = torch.empty(shape, device="meta")
    cfg = infer_config(CheckpointData(sd))
    assert cfg.sem_num_classes == 171 and cfg.num_classes == 171
    assert cfg.sem_modes == ("window", "window", "global", "global")
