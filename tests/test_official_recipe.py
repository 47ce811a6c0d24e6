"""semask-train's defaults for the official variants = the official SeMask-FPN configs
(SeMask-FPN/configs/semask_swin/*: optimizer, lr_config, samples_per_gpu, Resize ratio_range,
RandomCrop cat_max_ratio)."""

import json

import numpy as np
import pytest
from PIL import Image

import semask_deploy.train as tr
from semask_deploy.train import TrainOptions, run_train

ADE = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
# variant, data: lr, weight decay, warmup_ratio, samples_per_gpu, ratio_range, cat_max_ratio
OFFICIAL = {
    ("tiny", "ade20k"): (1e-4, 1e-4, 1e-6, 8, ADE, 0.75),
    ("small", "ade20k"): (1e-4, 1e-4, 1e-6, 8, ADE, 1.0),
    ("tiny", "cityscapes"): (1e-3, 0.05, 1e-5, 4, (0.5, 2.0), 0.75),
    ("tiny", "coco-stuff"): (1e-4, 1e-4, 1e-6, 4, ADE, 1.0),
}


def _fake(root, kind):
    def put(path, arr):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
    img, lab = np.full((40, 60, 3), 128, np.uint8), np.full((40, 60), 3, np.uint8)
    if kind == "ade20k":
        for s in ("training", "validation"):
            put(root / f"images/{s}/a.jpg", img)
            put(root / f"annotations/{s}/a.png", lab)
    elif kind == "cityscapes":
        for s in ("train", "val"):
            put(root / f"leftImg8bit/{s}/c/x_leftImg8bit.png", img)
            put(root / f"gtFine/{s}/c/x_gtFine_labelTrainIds.png", lab)
    else:
        for s in ("train2014", "test2014"):
            put(root / f"images/{s}/a.jpg", img)
            put(root / f"annotations/{s}/a_labelTrainIds.png", lab)


@pytest.mark.parametrize("variant,data", sorted(OFFICIAL))
def test_defaults_are_the_official_config(tmp_path, monkeypatch, variant, data):
    seen = {}

    class Spy(tr.TrainAugment):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            seen["aug"] = self

    real_sched = tr.PolySchedule
    monkeypatch.setattr(tr, "TrainAugment", Spy)
    monkeypatch.setattr(tr, "PolySchedule", lambda *a, **k: seen.setdefault("sched", real_sched(*a, **k)))
    _fake(tmp_path / "data", data)
    out = tmp_path / "out"
    run_train(TrainOptions(variant=variant, data=data, data_root=tmp_path / "data", out=out, quiet=True, threads=1),
              stop_after=0)
    rec = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    lr, wd, ratio, batch, ratios, cat = OFFICIAL[variant, data]
    assert rec["lr"] == lr and rec["options"]["weight_decay"] == wd and rec["batch_per_process"] == batch
    assert seen["sched"].warmup_ratio == ratio and seen["sched"].warmup == 1500
    assert tuple(seen["aug"].ratio_range) == ratios and seen["aug"].cat_max_ratio == cat
