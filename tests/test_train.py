"""Training library: loss, OHEM, optimiser groups, schedule, initialisation, data sharding, runs, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semask_deploy.api import build_model, load_model
from semask_deploy.checkpoint import read_checkpoint, save_checkpoint
from semask_deploy.config import SeMaskConfig
from semask_deploy.errors import CheckpointError, ConfigError
import semask_deploy.train as train_mod
from semask_deploy.train import TrainOptions, run_train
from semask_deploy.training import (
    OhemSampler, PolySchedule, build_optimizer, default_warmup, init_from_checkpoint, official_init,
    param_groups, semask_loss,
)
from semask_deploy.training.data import ShardedIndices
from semask_deploy.training.dist import CpuSyncBatchNorm, convert_sync_batchnorm
from semask_deploy.training.init import resize_relative_table
from semask_deploy.training.setup import demo_config


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is as fast, and far faster on a CPU shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(num_classes: int = 8, window: int = 7, **kw) -> SeMaskConfig:
    """A very small SeMask for fast tests."""
    base = dict(
        embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=window, sem_window_size=window,
        num_classes=num_classes, sem_num_classes=num_classes, sem_modes=("window", "window", "global", "global"),
        head_channels=16, crop_size=(64, 64), test_scale=(64, 64), name="tiny_test",
    )
    base.update(kw)
    return SeMaskConfig(**base)


@pytest.fixture()
def tiny_json(tmp_path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_config().to_dict()))
    return path


def small_run(tmp_path: Path, config_json: Path, name: str = "run", **kw) -> TrainOptions:
    opts = dict(variant=str(config_json), data="synthetic", crop=(64, 64), iters=4, batch_size=2, eval_size=2,
                log_every=1, out=tmp_path / name, quiet=True, lr=1e-3)
    opts.update(kw)
    return TrainOptions(**opts)


# ------------------------------------------------------------------------------------------- loss


def test_loss_is_ce_plus_0_4_semantic_at_label_size():
    torch.manual_seed(0)
    seg, sem = torch.randn(2, 5, 4, 4), torch.randn(2, 5, 4, 4)
    label = torch.randint(0, 5, (2, 16, 16))
    label[0, :3] = 255
    loss, parts = semask_loss(seg, sem, label)
    up = lambda t: F.interpolate(t, size=(16, 16), mode="bilinear", align_corners=False)  # noqa: E731
    # mmseg 0.x: mean over every pixel, ignored ones count as 0
    ce = lambda t: F.cross_entropy(up(t), label, ignore_index=255, reduction="none").mean()  # noqa: E731
    assert torch.allclose(loss, ce(seg) + 0.4 * ce(sem), atol=1e-6)
    assert parts["loss_seg"] == pytest.approx(float(ce(seg)), abs=1e-6)
    assert 0.0 <= parts["acc"] <= 100.0


def test_ohem_threshold_and_min_kept():
    logits = torch.zeros(1, 2, 4, 4)
    logits[0, 0] = torch.linspace(-3, 3, 16).view(4, 4)  # p(class 0) grows along the map
    label = torch.zeros(1, 4, 4, dtype=torch.long)
    label[0, 0, 0] = 255
    w = OhemSampler(thresh=0.7, min_kept=2).sample(logits, label)
    p0 = torch.softmax(logits, 1)[0, 0]
    keep = (p0 < 0.7) & (label[0] != 255)
    assert torch.equal(w[0].bool(), keep)
    # min_kept above the number of low-confidence pixels raises the threshold
    w_all = OhemSampler(thresh=0.7, min_kept=100).sample(logits, label)
    assert int(w_all.sum()) == 14 and w_all[0, 0, 0] == 0  # all valid but the most confident one
    w_loss = OhemSampler(thresh=None, min_kept=3).sample(logits, label)
    assert int(w_loss.sum()) == 3


# ---------------------------------------------------------------------------------- optim / schedule


def test_no_decay_groups():
    model = build_model(tiny_config())
    decay, free = param_groups(model, 0.01)
    assert free["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01
    free_names = set(free["names"])
    for name, _ in model.named_parameters():
        # the official custom_keys: names containing norm / relative_position_bias_table (mmcv substring match)
        no_decay = "norm" in name or name.endswith("relative_position_bias_table")
        assert (name in free_names) == no_decay, name
    assert any(n.endswith(".qkv.bias") for n in decay["names"])  # Linear biases decay, as officially
    assert any(n.endswith(".gamma") for n in decay["names"]) and any(".bn." in n for n in decay["names"])
    assert any(n.endswith("semantic_layer.norm1.weight") or ".norm1." in n for n in free_names)
    opt = build_optimizer(model, 6e-5)
    assert opt.defaults["betas"] == (0.9, 0.999)


def test_poly_schedule_with_warmup():
    s = PolySchedule(1e-3, max_iters=1000, warmup=100)
    assert s.lr(0) == pytest.approx(1e-3 * 1e-6)
    poly = lambda i: 1e-3 * (1 - i / 1000)  # noqa: E731
    assert s.lr(50) == pytest.approx(poly(50) * (1 - 0.5 * (1 - 1e-6)))
    assert s.lr(100) == pytest.approx(poly(100)) and s.lr(1000) == 0.0
    assert default_warmup(80_000) == 1500 and default_warmup(300) == 30


# ------------------------------------------------------------------------------------------ learning


def test_overfits_a_fixed_batch():
    from semask_deploy.data import SyntheticScenes, to_tensor_batch

    torch.manual_seed(0)
    model = build_model(tiny_config())
    official_init(model, gamma_init=0.1)
    model.train()
    scenes = SyntheticScenes(8, (64, 64), seed=3)
    x = to_tensor_batch([scenes[i][0] for i in range(2)])
    y = torch.from_numpy(np.stack([scenes[i][1] for i in range(2)])).long()
    opt = build_optimizer(model, 2e-3)
    losses = []
    for _ in range(20):
        seg, sem = model(x)
        loss, _ = semask_loss(seg, sem, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses


# ---------------------------------------------------------------------------------------- init


def fake_swin_state(config: SeMaskConfig) -> dict[str, torch.Tensor]:
    """An official Swin classification state dict with our backbone's Swin shapes (no semantic layers)."""
    torch.manual_seed(1)
    ours = build_model(config).state_dict()
    sd = {}
    for k, v in ours.items():
        if not k.startswith("backbone.") or ".semantic_layer." in k or k.startswith("backbone.norm"):
            continue
        sd[k[len("backbone."):]] = torch.randn_like(v) if v.is_floating_point() else v.clone()
    c = config.stage_channels[-1]
    sd["norm.weight"], sd["norm.bias"] = torch.ones(c), torch.zeros(c)
    sd["head.weight"], sd["head.bias"] = torch.randn(1000, c), torch.zeros(1000)
    w = config.window_size
    sd["layers.0.blocks.1.attn_mask"] = torch.zeros(4, w * w, w * w)
    return sd


def test_swin_imagenet_init_maps_keys_and_reports(tmp_path):
    cfg = tiny_config(depths=(2, 2, 2, 2))
    sd = fake_swin_state(cfg)
    path = tmp_path / "swin.pth"
    torch.save({"model": sd}, path)
    model = build_model(cfg)
    report = init_from_checkpoint(model, path)
    assert report.kind == "swin"
    msd = model.state_dict()
    for k, v in sd.items():
        if k.startswith(("patch_embed.", "layers.")) and not k.endswith("attn_mask"):
            assert torch.equal(msd[f"backbone.{k}"], v), k
    skipped = {k for k, _ in report.skipped}
    assert {"head.weight", "head.bias", "norm.weight", "norm.bias", "layers.0.blocks.1.attn_mask"} <= skipped
    assert any(".semantic_layer." in k for k in report.fresh)
    assert any(k.startswith("decode_head.") for k in report.fresh)
    assert "skipped" in report.summary() and "start fresh" in report.summary()


def test_swin_init_resizes_tables_of_another_window(tmp_path):
    sd = fake_swin_state(tiny_config(window=7))
    model = build_model(tiny_config(window=5))
    torch.save({"model": sd}, tmp_path / "swin7.pth")
    report = init_from_checkpoint(model, tmp_path / "swin7.pth")
    assert report.resized and all(k.endswith("relative_position_bias_table") for k in report.resized)
    table = sd["layers.0.blocks.0.attn.relative_position_bias_table"]
    got = model.state_dict()["backbone.layers.0.blocks.0.attn.relative_position_bias_table"]
    assert got.shape == (81, 1) and torch.allclose(got, resize_relative_table(table, 81))


def test_swin_init_refuses_another_architecture(tmp_path):
    sd = fake_swin_state(tiny_config(depths=(1, 1, 2, 1)))
    torch.save(sd, tmp_path / "deeper.pth")
    with pytest.raises(CheckpointError, match="unexpected"):
        init_from_checkpoint(build_model(tiny_config()), tmp_path / "deeper.pth")
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="neither"):
        init_from_checkpoint(build_model(tiny_config()), tmp_path / "other.pth")


def test_swin_init_reads_segmentation_and_moby_layouts(tmp_path):
    """An mmseg Swin segmentation checkpoint (backbone.* with its norm0..3 output norms, decode_head.* and
    auxiliary_head.*) and a MoBY one (encoder.* beside encoder_k.*) give their backbone, as the official
    loader takes MoBY's online branch."""
    cfg = tiny_config(depths=(2, 2, 2, 2))
    swin = fake_swin_state(cfg)
    ours = build_model(cfg).state_dict()
    seg = {f"backbone.{k}": v for k, v in swin.items() if not k.startswith(("head.", "norm."))}
    for i in range(4):
        seg[f"backbone.norm{i}.weight"] = torch.rand_like(ours[f"backbone.norm{i}.weight"])
        seg[f"backbone.norm{i}.bias"] = torch.rand_like(ours[f"backbone.norm{i}.bias"])
    seg["decode_head.conv_seg.weight"] = torch.zeros(150, 512, 1, 1)
    seg["auxiliary_head.conv_seg.weight"] = torch.zeros(150, 256, 1, 1)
    torch.save({"meta": {}, "state_dict": seg}, tmp_path / "upernet.pth")
    model = build_model(cfg)
    report = init_from_checkpoint(model, tmp_path / "upernet.pth")
    msd = model.state_dict()
    for k, v in seg.items():
        if k.startswith("backbone.") and not k.endswith("attn_mask"):
            assert torch.equal(msd[k], v), k
    assert {"decode_head.conv_seg.weight", "auxiliary_head.conv_seg.weight"} <= {k for k, _ in report.skipped}
    assert "backbone.norm0.weight" in report.loaded

    moby = {f"encoder.{k}": v for k, v in swin.items()}
    moby.update({f"encoder_k.{k}": torch.zeros_like(v) for k, v in swin.items()})
    moby["projector.linear1.weight"] = torch.zeros(4, 4)
    torch.save({"model": moby}, tmp_path / "moby.pth")
    model = build_model(cfg)
    report = init_from_checkpoint(model, tmp_path / "moby.pth")
    assert report.kind == "swin"
    assert torch.equal(model.state_dict()["backbone.patch_embed.proj.weight"], swin["patch_embed.proj.weight"])
    assert "encoder_k.patch_embed.proj.weight" in {k for k, _ in report.skipped}


def test_swin_init_names_foreign_keys_without_blaming_the_variant(tmp_path):
    sd = fake_swin_state(tiny_config(depths=(2, 2, 2, 2)))
    sd["my_extra_adapter.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="1 unexpected: my_extra_adapter.weight.*not part of a Swin") as err:
        init_from_checkpoint(build_model(tiny_config(depths=(2, 2, 2, 2))), tmp_path / "extra.pth")
    assert "--variant" not in str(err.value)


def test_semask_init_is_strict(tmp_path):
    src = build_model(tiny_config())
    path = save_checkpoint(src, tmp_path / "semask.pth")
    model = build_model(tiny_config())
    report = init_from_checkpoint(model, path)
    assert report.kind == "semask"
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    with pytest.raises(CheckpointError, match="does not match"):  # other shapes: every mis-shaped key named
        init_from_checkpoint(build_model(tiny_config(head_channels=24)), path)


def test_semask_init_on_other_classes_starts_the_class_sized_tensors_fresh(tmp_path):
    """Fine-tuning a checkpoint on other classes (e.g. ADE20K → your own): everything loads but the classifier
    and the semantic class projections, which keep the scratch init (mmseg's load_from does the same)."""
    src = build_model(tiny_config())
    path = save_checkpoint(src, tmp_path / "semask.pth")
    model = build_model(tiny_config(num_classes=9))
    fresh_before = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from_checkpoint(model, path)
    assert report.fresh and all(k.startswith("decode_head.conv_seg.") or ".mlp_cls_" in k for k in report.fresh)
    assert {k for k in report.fresh if k.startswith("decode_head.")} == {"decode_head.conv_seg.weight",
                                                                         "decode_head.conv_seg.bias"}
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh_before[k] if k in report.fresh else src.state_dict()[k]), k
    assert "start fresh (decode head, semantic layers)" in report.summary()


def test_gamma_init_option():
    model = build_model(tiny_config())
    official_init(model, gamma_init=0.1)
    gammas = [p for n, p in model.named_parameters() if n.endswith("class_injection.0.gamma")]
    assert len(gammas) == 4 and all(float(g.detach()) == pytest.approx(0.1) for g in gammas)
    official_init(model)
    assert all(float(g.detach()) == 0.0 for g in gammas)


# ----------------------------------------------------------------------------------------- data / dist


def test_sharded_indices_split_each_epoch_between_ranks():
    ranks = [ShardedIndices(10, r, 2, seed=0) for r in range(2)]
    epoch0 = [ranks[r](p) for r in range(2) for p in range(5)]
    assert sorted(epoch0) == list(range(10))
    epoch1 = [ranks[0](p) for p in range(5, 10)]
    assert epoch1 != [ranks[0](p) for p in range(5)]  # reshuffled


def test_cpu_sync_batchnorm_keeps_keys_and_matches_bn_alone():
    model = build_model(tiny_config())
    keys = list(model.state_dict())
    converted = convert_sync_batchnorm(model, torch.device("cpu"))
    assert list(converted.state_dict()) == keys
    assert any(isinstance(m, CpuSyncBatchNorm) for m in converted.modules())
    bn, sbn = torch.nn.BatchNorm2d(3), CpuSyncBatchNorm(3)
    x = torch.randn(2, 3, 5, 5)
    assert torch.allclose(bn(x), sbn(x), atol=1e-6)


# ------------------------------------------------------------------------------------------- runs


def test_run_writes_official_checkpoints(tmp_path, tiny_json):
    result = run_train(small_run(tmp_path, tiny_json, eval_every=2))
    assert result.end_iter == 4 and result.metrics is not None and 0 <= result.metrics["mIoU"] <= 1
    raw = torch.load(result.final, weights_only=True)
    assert set(raw) == {"meta", "state_dict"}
    assert all(k.startswith(("backbone.", "decode_head.")) for k in raw["state_dict"])
    assert len(raw["meta"]["CLASSES"]) == 8 and len(raw["meta"]["PALETTE"]) == 8
    assert tuple(raw["meta"]["semask_config"]["sem_modes"]) == ("window", "window", "global", "global")
    model = load_model(result.final)  # strict
    assert model.config == result.config
    latest = torch.load(result.latest, weights_only=True)
    assert {"optimizer", "scheduler", "iteration", "rng"} <= set(latest) and latest["iteration"] == 4
    load_model(result.latest)
    events = [json.loads(line)["event"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events.count("eval") == 2 and events[-1] == "done"


def test_resume_continues_exactly(tmp_path, tiny_json):
    full = run_train(small_run(tmp_path, tiny_json, "full", save_every=2))
    part = run_train(small_run(tmp_path, tiny_json, "part", save_every=2), stop_after=2)
    assert part.end_iter == 2 and part.final is None
    resumed = run_train(small_run(tmp_path, tiny_json, "part", save_every=2, resume=True))
    assert resumed.start_iter == 2 and resumed.end_iter == 4
    for it in (2, 3):
        assert resumed.losses[it] == pytest.approx(full.losses[it], rel=1e-6, abs=1e-7), it
    a, b = load_model(full.final).state_dict(), load_model(resumed.final).state_dict()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def ctrl_c_in_loss_call(monkeypatch, n: int):
    """Make the n-th loss computation of the next run raise KeyboardInterrupt; returns the real loss function."""
    real, calls = train_mod.semask_loss, {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "semask_loss", interrupted)
    return real


def test_a_resume_from_a_save_between_log_records_logs_what_an_uninterrupted_run_logs(tmp_path, tiny_json,
                                                                                       monkeypatch):
    """Ctrl-C in iteration 5, saved at 3, --log-every 2: the resumed run's record at 4 averaged iteration 4 alone
    (the window restarted empty); latest.pth now carries the losses since the last record."""
    kw = dict(iters=6, log_every=2, save_every=3, eval_every=100)
    run_train(small_run(tmp_path, tiny_json, "full", **kw))
    real = ctrl_c_in_loss_call(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        run_train(small_run(tmp_path, tiny_json, "part", **kw))
    monkeypatch.setattr(train_mod, "semask_loss", real)
    run_train(small_run(tmp_path, tiny_json, "part", resume=True, **kw))

    def train_records(name):
        lines = (tmp_path / name / "log.jsonl").read_text().splitlines()
        return [(r["iter"], r["loss"]) for r in map(json.loads, lines) if r["event"] == "train"]

    full, part = train_records("full"), train_records("part")
    assert [i for i, _ in part] == [i for i, _ in full] == [2, 4, 6]
    for (_, a), (_, b) in zip(full, part):
        assert b == pytest.approx(a, rel=1e-6)


def test_a_fresh_run_drops_the_records_of_a_run_that_stopped_before_its_first_save(tmp_path, tiny_json):
    run_train(small_run(tmp_path, tiny_json, "r", save_every=100, eval_every=100), stop_after=2)
    (tmp_path / "r" / "latest.pth").unlink()  # as if stopped before the first save
    run_train(small_run(tmp_path, tiny_json, "r", save_every=100, eval_every=100))
    records = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["event"] == "train"] == [1, 2, 3, 4]


def test_a_checkpoint_write_that_fails_is_one_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    """torch.save on a full disk raises RuntimeError('[enforce fail at inline_container.cc] unexpected pos …'),
    which reached the user as a traceback."""
    from semask_deploy.checkpoint import save_checkpoint

    model = build_model(tiny_config())
    path = save_checkpoint(model, tmp_path / "latest.pth")
    before = path.read_bytes()

    def full_disk(*a, **kw):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1234 vs 1200")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"cannot write .*latest.pth: the write failed \(.* MB free there"):
        save_checkpoint(model, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["latest.pth"]


def test_resume_takes_the_interrupted_runs_options(tmp_path, tiny_json, monkeypatch):
    """`semask-train --resume --out RUN` alone: data, data root, seed, drop path and the config file come from
    latest.pth (the file's relative path no longer matters), so the run equals an uninterrupted one."""
    from semask_deploy.data import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "ds", n=6, size=(64, 80), seed=2, num_classes=8)
    monkeypatch.chdir(tmp_path)
    kw = dict(data="folder", data_root=Path("ds"), seed=5, drop_path=0.2, save_every=2, eval_size=None)
    full = run_train(small_run(tmp_path, Path("tiny.json"), "full", **kw))
    run_train(small_run(tmp_path, Path("tiny.json"), "part", **kw), stop_after=2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    resumed = run_train(TrainOptions(out=tmp_path / "part", resume=True, quiet=True))
    assert resumed.start_iter == 2 and resumed.end_iter == 4
    for it in (2, 3):
        assert resumed.losses[it] == pytest.approx(full.losses[it], rel=1e-6, abs=1e-7), it
    record = json.loads((tmp_path / "part" / "log.jsonl").read_text().splitlines()[0])  # the first start
    resume = [json.loads(line) for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "resume"][0]
    assert record["drop_path"] == 0.2 and resume["drop_path"] == 0.2
    assert resume["restored_options"]["data_root"] == str(root.resolve()) and resume["restored_options"]["seed"] == 5
    assert str(root.resolve()) in resume["data"]
    # already at the end; a --data-root given again (the data moved) is not judged against the default --data
    again = run_train(TrainOptions(out=tmp_path / "part", resume=True, data_root=root, quiet=True))
    assert again.start_iter == again.end_iter == 4


def test_resume_with_a_new_lr_warmup_and_weight_decay_uses_them(tmp_path, tiny_json):
    """They were reported as used (banner, saved options) while the loaded scheduler and optimizer states kept
    the interrupted run's values."""
    run_train(small_run(tmp_path, tiny_json, "r", save_every=2, warmup=2), stop_after=2)
    given = frozenset({"lr", "warmup", "weight_decay"})
    resumed = run_train(small_run(tmp_path, tiny_json, "r", save_every=2, resume=True, lr=1e-5, warmup=0,
                                  weight_decay=0.5, given=given))
    assert resumed.end_iter == 4
    lrs = {r["iter"]: r["lr"] for r in map(json.loads, (tmp_path / "r" / "log.jsonl").read_text().splitlines())
           if r["event"] == "train"}
    assert lrs[3] == pytest.approx(1e-5 * (1 - 2 / 4)) and lrs[4] == pytest.approx(1e-5 * (1 - 3 / 4))
    state = torch.load(tmp_path / "r" / "latest.pth", weights_only=True)
    assert state["scheduler"]["base_lr"] == 1e-5 and state["scheduler"]["warmup"] == 0
    assert [g["weight_decay"] for g in state["optimizer"]["param_groups"]] == [0.5, 0.0]


def test_an_interrupted_run_logs_it_and_the_resume_keeps_one_record_per_iteration(tmp_path, tiny_json, monkeypatch,
                                                                                    capsys):
    """Ctrl-C at iteration 4 with latest.pth at 2: the log says so (and where to continue, with the --threads that are
    not taken over); the resumed run trains 3 and 4 again, and their records from the interrupted run are dropped (a
    loss curve showed them twice)."""
    real = ctrl_c_in_loss_call(monkeypatch, 4)
    threads = torch.get_num_threads()
    with pytest.raises(KeyboardInterrupt):
        run_train(small_run(tmp_path, tiny_json, "r", save_every=2, eval_every=100, quiet=False, threads=threads))
    assert f"continue with semask-train --resume --out {tmp_path / 'r'} --threads {threads}" in capsys.readouterr().err
    records = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert records[-1]["event"] == "interrupted" and records[-1]["iter"] == 3 and records[-1]["saved_iter"] == 2
    monkeypatch.setattr(train_mod, "semask_loss", real)
    run_train(small_run(tmp_path, tiny_json, "r", save_every=2, eval_every=100, resume=True))
    records = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    trained = [r["iter"] for r in records if r["event"] == "train"]
    assert trained == [1, 2, 3, 4]
    assert [r for r in records if r["event"] == "resume"][0]["dropped_log_records"] == 1


def test_an_error_keeps_the_iterations_since_the_last_save(tmp_path, tiny_json, monkeypatch):
    """A corrupt training image drawn for iteration 4 of a run that saves every 100: latest.pth holds the 3
    finished iterations exactly as a run stopped there would (weights, BatchNorm statistics, random state; before,
    nothing was saved), and the resume ends where an uninterrupted run does."""
    import semask_deploy.train as train_mod
    from semask_deploy.errors import ImageError

    real_loader = train_mod.tdata.batch_loader

    def corrupt_fourth_batch(batches, workers):
        def batches_then_error():
            for n, batch in enumerate(real_loader(batches, workers)):
                if n == 3:
                    raise ImageError("cannot decode image s030.png: the file is corrupt")
                yield batch
        return batches_then_error()

    kw = dict(iters=6, save_every=100, eval_every=100)
    clean = run_train(small_run(tmp_path, tiny_json, "clean", **kw), stop_after=3)
    monkeypatch.setattr(train_mod.tdata, "batch_loader", corrupt_fourth_batch)
    with pytest.raises(ImageError):
        run_train(small_run(tmp_path, tiny_json, "r", **kw))
    monkeypatch.setattr(train_mod.tdata, "batch_loader", real_loader)
    saved = torch.load(tmp_path / "r" / "latest.pth", weights_only=False)
    want = torch.load(clean.latest, weights_only=False)
    assert saved["iteration"] == want["iteration"] == 3 and not (tmp_path / "r" / "final.pth").exists()
    for key, value in want["state_dict"].items():  # weights and buffers (num_batches_tracked, running stats)
        assert torch.equal(saved["state_dict"][key], value), key
    assert torch.equal(saved["rng"][0]["torch"], want["rng"][0]["torch"])  # dropout / drop path state
    records = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert records[-1]["event"] == "error" and records[-1]["saved_iter"] == 3
    resumed = run_train(small_run(tmp_path, tiny_json, "r", resume=True, **kw))
    uninterrupted = run_train(small_run(tmp_path, tiny_json, "whole", **kw))
    assert resumed.start_iter == 3 and resumed.end_iter == 6
    a = torch.load(resumed.final, weights_only=True)["state_dict"]
    b = torch.load(uninterrupted.final, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_an_error_inside_an_iteration_keeps_the_last_save(tmp_path, tiny_json, monkeypatch):
    """A non-finite loss (or any error after the forward) at iteration 4: the forward already moved the BatchNorm
    statistics and the random state, so latest.pth stays at the last regular save (2), not a half-done 3;
    a Ctrl-C saves nothing either."""
    import semask_deploy.train as train_mod
    from semask_deploy.errors import SemaskError

    real, calls = train_mod.semask_loss, {"n": 0}

    def failing_fourth(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise SemaskError("the loss became nan at iteration 3; lower --lr or check the labels")
        return real(*a, **kw)

    monkeypatch.setattr(train_mod, "semask_loss", failing_fourth)
    with pytest.raises(SemaskError):
        run_train(small_run(tmp_path, tiny_json, "r", iters=6, save_every=2, eval_every=100))
    assert torch.load(tmp_path / "r" / "latest.pth", weights_only=False)["iteration"] == 2

    def ctrl_c_at_the_second(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    calls["n"] = 0
    monkeypatch.setattr(train_mod, "semask_loss", ctrl_c_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        run_train(small_run(tmp_path, tiny_json, "c", iters=6, save_every=100, eval_every=100))
    assert not (tmp_path / "c" / "latest.pth").exists()


def test_resume_of_a_finished_run_without_final_pth_writes_it(tmp_path, tiny_json):
    """Stopped between latest.pth and final.pth (or final.pth deleted): --resume wrote nothing, for ever."""
    done = run_train(small_run(tmp_path, tiny_json, "f"))
    weights = torch.load(done.final, weights_only=True)["state_dict"]
    done.final.unlink()
    again = run_train(small_run(tmp_path, tiny_json, "f", resume=True))
    assert again.start_iter == again.end_iter == 4 and again.final == tmp_path / "f" / "final.pth"
    restored = torch.load(again.final, weights_only=True)["state_dict"]
    assert all(torch.equal(weights[k], restored[k]) for k in weights)


@pytest.mark.parametrize("content", [b"", b"just some text\n", "tensor", "no-meta"])
def test_an_unusable_latest_pth_is_one_clear_error(tmp_path, content):
    from semask_deploy.errors import CheckpointError

    out = tmp_path / "run"
    out.mkdir()
    if content == "tensor":
        torch.save(torch.zeros(3), out / "latest.pth")
    elif content == "no-meta":
        torch.save({"state_dict": {}, "optimizer": {}, "iteration": 1}, out / "latest.pth")
    else:
        (out / "latest.pth").write_bytes(content)
    with pytest.raises(CheckpointError, match="latest.pth") as info:
        run_train(TrainOptions(out=out, resume=True, quiet=True))
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_semantic_loss_ignores_classes_the_semantic_branch_lacks():
    """The official COCO-Stuff configs: 150 semantic classes, 171 head classes and labels up to 170."""
    torch.manual_seed(0)
    seg, sem = torch.randn(1, 6, 4, 4), torch.randn(1, 4, 4, 4)
    label = torch.randint(0, 6, (1, 8, 8))
    label[0, 0, 0] = 255
    loss, parts = semask_loss(seg, sem, label)
    up = lambda t: F.interpolate(t, size=(8, 8), mode="bilinear", align_corners=False)  # noqa: E731
    sem_label = torch.where(label >= 4, torch.full_like(label, 255), label)
    ce_sem = F.cross_entropy(up(sem), sem_label, ignore_index=255, reduction="none").mean()
    assert parts["loss_sem"] == pytest.approx(float(ce_sem), abs=1e-6)


def test_drop_path_is_linear_over_blocks_and_only_while_training():
    from semask_deploy.train import official_ohem, set_drop_path

    model = build_model(tiny_config(depths=(2, 1, 2, 1)), attention_backend="sdpa")
    rates = set_drop_path(model, 0.3)
    assert rates == pytest.approx([0.0, 0.06, 0.12, 0.18, 0.24, 0.3])
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # inference: no stochastic depth
        model.train()
        torch.manual_seed(1)
        a = model.backbone(x)[0][-1]
        torch.manual_seed(2)
        b = model.backbone(x)[0][-1]
    assert not torch.allclose(a, b)
    assert official_ohem("large", "ade20k") and official_ohem("tiny", "coco-stuff")
    assert not official_ohem("tiny", "ade20k") and not official_ohem("base", "cityscapes")
    assert not official_ohem("demo", "coco-stuff")
    assert official_ohem("checkpoint", "ade20k", 192) and not official_ohem("checkpoint", "ade20k", 128)


def test_refuses_to_overwrite_a_run_without_resume(tmp_path, tiny_json):
    run_train(small_run(tmp_path, tiny_json, iters=1))
    with pytest.raises(ConfigError, match="--resume"):
        run_train(small_run(tmp_path, tiny_json, iters=1))


def test_demo_config_states_semantic_modes():
    cfg = demo_config()
    assert cfg.sem_modes == ("window", "window", "global", "global")
    assert cfg.num_classes >= 8 and cfg.depths == (2, 2, 2, 2)


# ------------------------------------------------------------------------------------ shipped demo


def test_shipped_demo_checkpoint():
    from semask_deploy.assets import DEMO_CHECKPOINT, sample_images

    if not DEMO_CHECKPOINT.is_file():
        pytest.skip("demo checkpoint not built yet")
    assert DEMO_CHECKPOINT.stat().st_size <= 10 * 1024 * 1024
    model = load_model(DEMO_CHECKPOINT)  # strict
    assert model.config.sem_modes == ("window", "window", "global", "global")
    sidecar = json.loads(DEMO_CHECKPOINT.with_suffix(".json").read_text())
    assert sidecar["heldout"]["mIoU"] >= 0.70
    assert "semask-train" in sidecar["command"] and SeMaskConfig.from_dict(sidecar["config"]) == model.config
    assert 2 <= len(sample_images()) <= 3
    meta = read_checkpoint(DEMO_CHECKPOINT).meta
    assert len(meta["CLASSES"]) == model.config.num_classes and not math.isnan(sidecar["heldout"]["mIoU"])


def test_init_from_official_mmseg_checkpoint(tiny_ckpt):
    from semask_deploy.checkpoint import infer_config
    from semask_deploy.model import SeMaskSegmentor

    data = read_checkpoint(tiny_ckpt)  # official layout: meta + state_dict + optimizer
    model = SeMaskSegmentor(infer_config(data))
    report = init_from_checkpoint(model, tiny_ckpt)
    assert report.kind == "semask" and len(report.loaded) == len(data.state_dict)
    gamma = model.state_dict()["backbone.layers.3.semantic_layer.class_injection.0.gamma"]
    assert torch.equal(gamma, data.state_dict["backbone.layers.3.semantic_layer.class_injection.0.gamma"])


def test_run_from_swin_init_logs_the_report(tmp_path, tiny_json):
    cfg = tiny_config()
    torch.save({"model": fake_swin_state(cfg)}, tmp_path / "swin.pth")
    run_train(small_run(tmp_path, tiny_json, iters=1, init=tmp_path / "swin.pth", gamma_init=0.1))
    start = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert start["init"]["kind"] == "swin" and start["init"]["fresh"]
    assert ["head.weight", "classifier head / final norm"] in start["init"]["skipped"]


def test_run_on_a_folder_dataset_holds_out_the_last_tenth(tmp_path, tiny_json):
    from semask_deploy.data import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "ds", n=10, size=(48, 80), seed=5, num_classes=8)
    result = run_train(small_run(tmp_path, tiny_json, data="folder", data_root=root, iters=2, eval_size=None,
                                 workers=1))
    assert result.metrics is not None and result.metrics["pixels"] == 48 * 80  # one held-out image
    start = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert "9 training / 1 held-out" in start["data"]
    assert load_model(result.final).class_names == tuple((root / "classes.txt").read_text().split("\n")[:8])


def test_folder_data_with_train_but_no_val_says_the_layout(tmp_path):
    from semask_deploy.data import write_synthetic_dataset
    from semask_deploy.errors import DatasetError
    from semask_deploy.training.data import open_train_data

    write_synthetic_dataset(tmp_path / "ds" / "train", n=3, size=(32, 32), seed=1, num_classes=8)
    with pytest.raises(DatasetError, match="has train/ but no val/.*last 10 % are held out"):
        open_train_data("folder", tmp_path / "ds", num_classes=None, size=(32, 32), seed=0, eval_size=None)


def test_a_resume_runs_the_evaluation_an_interruption_cut_short(tmp_path, tiny_json, monkeypatch):
    """Each save comes before its evaluation: a run stopped during the final evaluation had final.pth and a
    latest.pth at the end, and its resume ended "done" without any held-out score."""
    import semask_deploy.train as train_mod

    real = train_mod.tdata.evaluate

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod.tdata, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_train(small_run(tmp_path, tiny_json, "e", eval_every=4))
    assert (tmp_path / "e" / "final.pth").is_file()
    monkeypatch.setattr(train_mod.tdata, "evaluate", real)
    resumed = run_train(small_run(tmp_path, tiny_json, "e", eval_every=4, resume=True))
    assert resumed.start_iter == resumed.end_iter == 4 and resumed.metrics is not None
    records = [json.loads(line) for line in (tmp_path / "e" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["event"] == "eval"] == [4] and records[-1]["mIoU"] is not None


def test_semask_attn_and_an_explicit_attention_conflict(tmp_path, tiny_json, monkeypatch):
    """SEMASK_ATTN overrides the model's attention backend: an explicit --attention that differs is an error (it
    was trained on the variable's backend without a word); without --attention the log records what ran."""
    monkeypatch.setenv("SEMASK_ATTN", "sdpa")
    with pytest.raises(ConfigError, match="conflicts with the environment variable SEMASK_ATTN"):
        run_train(small_run(tmp_path, tiny_json, "x", attention="eager"))
    monkeypatch.setenv("SEMASK_ATTN", "eager")
    run_train(small_run(tmp_path, tiny_json, "y", iters=1))
    start = json.loads((tmp_path / "y" / "log.jsonl").read_text().splitlines()[0])
    assert '"attention": "eager"' in json.dumps(start)
