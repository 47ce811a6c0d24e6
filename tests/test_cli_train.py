"""``semask-train`` and ``python -m semask_deploy.train`` (incl. a 2-process DDP run under torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from semask_deploy.api import load_model
from semask_deploy.assets import demo_checkpoint
from semask_deploy.cli.train import main

from test_train import tiny_config  # tests/ is on sys.path (pytest rootdir import)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is as fast, and far faster on a CPU shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def tiny_json(tmp_path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_config().to_dict()))
    return path


def small_args(tiny_json: Path, out: Path, *extra: str) -> list[str]:
    return ["--variant", str(tiny_json), "--data", "synthetic", "--crop", "64x64", "--iters", "2",
            "--batch-size", "2", "--eval-size", "2", "--log-every", "1", "--out", str(out), "--quiet", *extra]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_cli_trains_and_writes_loadable_weights(tmp_path, tiny_json):
    assert main(small_args(tiny_json, tmp_path / "out", "--ohem")) == 0
    model = load_model(tmp_path / "out" / "final.pth")
    assert model.config.num_classes == 8 and len(model.class_names) == 8
    lines = (tmp_path / "out" / "log.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["event"] == "done"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variant", "tiny", "--data", "folder", "--data-root", "/nonexistent/data"], "not found"),
        (["--variant", "tiny", "--data", "ade20k"], "--data-root"),
        (["--variant", "huge", "--data", "synthetic"], "--variant"),
        (["--variant", "missing.json", "--data", "synthetic"], "not found"),
        (["--variant", "demo", "--data", "synthetic", "--num-classes", "3"], "--num-classes"),
        (["--data", "folder", "--data-root", "/nonexistent/data"], "--variant is required"),
        (["--variant", "demo", "--init", "/nonexistent.pth"], "not found"),
        (["--variant", "demo", "--iters", "0"], "--iters"),
        (["--crop", "32x32", "--batch-size", "1"], "BatchNorm a single value per channel"),
        (["--crop", "10x10", "--batch-size", "1"], "BatchNorm a single value per channel"),
        # checked before anything is written (--workers used to fail after log.jsonl was started), and values
        # that used to end in a traceback (--seed, NaN weight decay) or in a checkpoint of inf weights (--lr inf)
        (["--workers", "-1"], "--workers must be >= 0"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**64)], "--seed"),
        (["--lr", "inf"], "--lr must be a positive finite"),
        (["--threads", "100000"], "--threads=100000 is more than the"),
        (["--data", "synthetic", "--data-root", "."], "drop --data-root"),
        (["--lr", "1e39"], "--lr must be a positive finite"),  # overflows float32 inside the optimizer
        (["--weight-decay", "nan"], "--weight-decay"),
        (["--gamma-init", "nan"], "--gamma-init"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
    assert main([*args, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "out").exists()  # a refused run leaves nothing, not even its folder


def test_cli_out_under_a_file_is_refused_up_front(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["--out", str(blocker / "run"), "--quiet"]) == 2
    assert "is a file, not a folder" in one_error_line(capsys)


def test_non_finite_weights_are_not_saved(tmp_path, capsys, tiny_json, monkeypatch):
    """The loss is checked before each update; an update that makes the weights inf must not be saved."""
    from semask_deploy import train as train_mod

    real = train_mod.build_optimizer

    def blowing_up(model, lr, weight_decay):
        opt = real(model, lr, weight_decay)
        step = opt.step

        def step_then_inf(*a, **k):
            out = step(*a, **k)
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
            return out

        opt.step = step_then_inf
        return opt

    monkeypatch.setattr(train_mod, "build_optimizer", blowing_up)
    assert main(small_args(tiny_json, tmp_path / "out", "--iters", "1")) == 2
    assert "non-finite" in one_error_line(capsys)
    assert not (tmp_path / "out" / "final.pth").exists() and not (tmp_path / "out" / "latest.pth").exists()


def test_cli_bad_config_json(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["--variant", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "cannot read model config" in one_error_line(capsys)
    bad.write_text(json.dumps({"embed_dim": 16}))
    assert main(["--variant", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    one_error_line(capsys)


def test_cli_resume_without_checkpoint(tmp_path, capsys, tiny_json):
    assert main(small_args(tiny_json, tmp_path / "empty", "--resume")) == 2
    assert "--resume" in one_error_line(capsys)


def test_cli_num_classes_mismatch_with_config(tmp_path, capsys, tiny_json):
    assert main(small_args(tiny_json, tmp_path / "o", "--num-classes", "9")) == 2
    assert "classes" in one_error_line(capsys)


def test_cli_resume_extends_a_finished_run(tmp_path, tiny_json):
    out = tmp_path / "out"
    assert main(small_args(tiny_json, out)) == 0
    assert main(small_args(tiny_json, out, "--resume", "--iters", "3")) == 0  # one more iteration
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records].count("resume") == 1 and records[-1]["iter"] == 3


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path, tiny_json):
    out = tmp_path / "ddp"
    cmd = [*_torchrun(), "--standalone", "--nproc-per-node=2", "-m", "semask_deploy.train",
           *small_args(tiny_json, out, "--iters", "3", "--save-every", "2")]
    cmd.remove("--quiet")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    # rank 0 alone saves: latest at iteration 2 and 3, final once
    assert text.count(f"saved {out / 'final.pth'}") == 1, text[-3000:]
    assert text.count(f"saved {out / 'latest.pth'}") == 2, text[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["final.pth", "latest.pth", "log.jsonl"]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records[0]["event"] == "start" and records[0]["world_size"] == 2
    assert [r["event"] for r in records].count("start") == 1 and records[-1]["event"] == "done"
    model = load_model(out / "final.pth")  # strict; SyncBatchNorm keys are the BatchNorm ones
    assert model.config.num_classes == 8
    latest = torch.load(out / "latest.pth", weights_only=True)
    assert latest["world_size"] == 2 and len(latest["rng"]) == 2


def test_semask_infer_demo_on_a_sample(tmp_path):
    from semask_deploy.assets import DEMO_CHECKPOINT, sample_images
    from semask_deploy.cli.infer import main as infer_main

    if not DEMO_CHECKPOINT.is_file() or not sample_images():
        pytest.skip("demo checkpoint not built yet")
    image = sample_images()[0]
    assert infer_main(["--demo", "--image", str(image), "--out", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / f"{image.stem}_labels.png").is_file() and (tmp_path / f"{image.stem}_overlay.png").is_file()


def _semask_train() -> list[str]:
    exe = Path(sys.executable).with_name("semask-train")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "semask_deploy.train"]


@pytest.mark.slow
def test_synthetic_defaults_to_the_demo_architecture_as_written(tmp_path):
    """``semask-train --data synthetic --iters 20`` exactly as the README writes it (no --variant)."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*_semask_train(), "--data", "synthetic", "--iters", "20", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = load_model(out / "final.pth")
    assert model.config.name == "semask_demo_synthetic"
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records[-1]["event"] == "done" and records[-1]["iter"] == 20


@pytest.mark.slow
def test_torchrun_command_as_written(tmp_path):
    """``torchrun --standalone --nproc-per-node=2 -m semask_deploy.train --data synthetic --iters 4 --batch-size 2
    --out DIR`` exactly as written (two gloo processes, the demo architecture by default)."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*_torchrun(), "--standalone", "--nproc-per-node=2", "-m", "semask_deploy.train", "--data", "synthetic",
           "--iters", "4", "--batch-size", "2", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert load_model(out / "final.pth").config.name == "semask_demo_synthetic"
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records[-1]["event"] == "done" and records[-1]["iter"] == 4


def test_resume_keeps_an_option_given_again_at_its_default_value():
    """`--resume --seed 0` after a run with seed 5 trains with seed 0: an explicit value wins even when it
    equals the default; what is not given comes from the saved run."""
    from semask_deploy.cli.train import build_parser, given_options, options_from_args
    from semask_deploy.train import _with_saved_options

    argv = ["--resume", "--out", "runs/x", "--seed", "0", "--no-ohem"]
    given = given_options(argv)
    assert {"resume", "out", "seed", "ohem"} == given
    opts = options_from_args(build_parser().parse_args(argv), given)
    saved = {"seed": 5, "ohem": True, "lr": 1e-3, "iters": 40}
    resumed, restored = _with_saved_options(opts, saved)
    assert resumed.seed == 0 and resumed.ohem is False
    assert resumed.lr == 1e-3 and resumed.iters == 40 and set(restored) == {"lr", "iters"}
    # without the CLI's record (library use), a default value still means "not given"
    plain, _ = _with_saved_options(options_from_args(build_parser().parse_args(argv)), saved)
    assert plain.seed == 5
    assert "given" not in opts.to_json()


def test_fine_tune_the_demo_checkpoint_on_other_classes(tmp_path, capsys):
    """`--init` of a SeMask checkpoint trained on 10 classes, data of 12: it trains (the class-sized layers
    start fresh, and the log says which), and the result is a 12-class model of the checkpoint's architecture."""
    out = tmp_path / "ft"
    assert main(["--init", str(demo_checkpoint()), "--num-classes", "12", "--iters", "1", "--batch-size", "2",
                 "--crop", "64x64", "--eval-size", "1", "--threads", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "tensors start fresh (decode head, semantic layers)" in err
    model = load_model(out / "final.pth")
    assert model.config.num_classes == 12 and model.config.sem_num_classes == 12
    assert model.config.embed_dim == load_model(demo_checkpoint()).config.embed_dim
