"""``semask-bench``: the matrix on a tiny model, skipped/failed backends, the ORT plug, CLI errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from semask_deploy import SeMaskConfig, build_model
from semask_deploy.benchmarks import runners, suite
from semask_deploy.benchmarks.suite import BenchConfig, run_bench
from semask_deploy.checkpoint import save_checkpoint
from semask_deploy.cli.bench import build_parser, config_from_args, main

TINY = SeMaskConfig(
    embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7, sem_window_size=7, num_classes=8,
    sem_num_classes=8, sem_modes=("window", "window", "global", "global"), test_scale=(128, 64), crop_size=(64, 64),
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_model(TINY), tmp_path_factory.mktemp("bench") / "tiny.pth")


def _cfg(ckpt: Path, out: Path, **kw) -> BenchConfig:
    base = dict(checkpoint=ckpt, out=out, backends=("torch-eager", "torch-sdpa"), precisions=("fp32",),
                sizes=((64, 64),), batches=(1,), runs=3, warmup=1, quiet=True, peak_matmul_size=256, threads=1)
    base.update(kw)
    return BenchConfig(**base)



@pytest.mark.slow  # exports the fp32 ONNX (ONNX Runtime and OpenVINO rows)
def test_the_backend_list_users_run(ckpt, tmp_path, capsys):
    """`semask-bench --ckpt ... --backends torch-sdpa,torch-triton,onnxruntime,openvino,tensorrt` (the product
    brief's command) on a CPU-only machine: the CPU rows run, the GPU rows are skipped with their reason."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    out = tmp_path / "rep"
    assert main(["--ckpt", str(ckpt), "--backends", "torch-sdpa,torch-triton,onnxruntime,openvino,tensorrt",
                 "--precisions", "fp32", "--sizes", "64x64", "--runs", "3", "--warmup", "1", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    ran = {c["backend"] for c in data["cells"] if c["status"] == "ok"}
    assert ran == {"torch-sdpa", "onnxruntime", "openvino"}
    skipped = {s["backend"] for s in data["skipped"]}
    assert {"torch-triton", "tensorrt"} <= skipped

def test_bench_cli_end_to_end(ckpt, tmp_path, capsys):
    out = tmp_path / "rep"
    code = main(["--ckpt", str(ckpt), "--backends", "torch-eager,torch-sdpa,torch-triton,tensorrt",
                 "--precisions", "fp32,int8", "--sizes", "64x64,40x56", "--batch", "1,2", "--runs", "3",
                 "--warmup", "2", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| torch-sdpa | fp32 | 40x56 | 2 |" in printed
    assert sorted(p.name for p in out.iterdir()) == ["flops.md", "plot.png", "report.md", "results.csv", "results.json"]
    data = json.loads((out / "results.json").read_text())
    ok = [c for c in data["cells"] if c["status"] == "ok"]
    assert len(ok) == 8 and not [c for c in data["cells"] if c["status"] != "ok"]
    for c in ok:
        assert len(c["times_ms"]) == 3 and c["runs"] == 3
        assert c["latency_ms_p50"] <= c["latency_ms_p90"] <= c["latency_ms_p99"]
        assert c["images_per_s"] == pytest.approx(1000 * c["batch"] / c["latency_ms_mean"])
        assert c["flops_counter_ratio"] == pytest.approx(1.0)
        assert c["params"] == data["meta"]["params"] > 0
        assert c["pixel_agreement"] > 0.999 and c["max_abs"] < 1e-3 and c["host_peak_mb"] is not None
        assert c["achieved_tflops"] > 0 and 0 < c["peak_fraction"]
        if c["backend"] == "torch-eager":
            assert c["speedup_vs_eager_fp32"] == 1.0
    eager_b1 = next(c for c in ok if c["backend"] == "torch-eager" and c["batch"] == 1)
    assert eager_b1["max_abs"] == 0.0 and eager_b1["miou_vs_ref"] == 1.0  # the reference itself
    reasons = {(s["backend"], s["precision"]): s["reason"] for s in data["skipped"]}
    assert "CUDA" in reasons[("torch-triton", "fp32")] and "GPU" in reasons[("tensorrt", "int8")]
    assert "Q/DQ" in reasons[("torch-sdpa", "int8")]
    assert data["meta"]["device_peak_tflops"]["fp32"] > 0 and data["meta"]["machine"]["loadavg"]
    assert set(data["flops"]) == {"64x64", "40x56"}


def test_duplicate_sizes_and_batches_are_timed_once(ckpt, tmp_path):
    """64x64 twice once gave four rows of one cell, and the baseline was whichever came last."""
    args = build_parser().parse_args(["--ckpt", str(ckpt), "--sizes", "64x64,64x64,32x48", "--batch", "1,1,2",
                                      "--out", str(tmp_path / "o")])
    cfg = config_from_args(args, [])
    assert cfg.sizes == ((64, 64), (32, 48)) and cfg.batches == (1, 2)


def test_an_earlier_report_is_not_replaced_without_force(ckpt, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text("{}")  # an earlier run's report
    argv = ["--ckpt", str(ckpt), "--out", str(out), "--backends", "torch-eager", "--precisions", "fp32"]
    assert _code(argv) == 2
    assert "holds the report of an earlier run (results.json)" in capsys.readouterr().err
    assert (out / "results.json").read_text() == "{}"
    assert config_from_args(build_parser().parse_args([*argv, "--force"]), []).out == out


def test_default_arguments(ckpt, monkeypatch):
    import semask_deploy.assets as assets

    monkeypatch.setattr(assets, "demo_checkpoint", lambda: ckpt)
    cfg = config_from_args(build_parser().parse_args([]), [])
    assert cfg.checkpoint == ckpt and cfg.device == "cpu"
    assert cfg.backends == runners.BACKENDS and cfg.precisions == ("fp32", "fp16", "int8")
    assert cfg.sizes == ((256, 256), (512, 512)) and cfg.batches == (1, 4)
    assert cfg.runs == 20 and cfg.warmup == 3 and cfg.out.name.startswith("semask-bench-") and cfg.threads == 1
    assert config_from_args(build_parser().parse_args(["--threads", "0"]), []).threads is None
    assert not cfg.explicit_backends and not cfg.explicit_precisions
    # what the default CPU run skips, and why
    assert runners.availability("torch-compile", "fp32", "cpu") == runners.COMPILE_CPU_SKIP
    assert runners.availability("torch-compile", "fp32", "cpu", explicit_backend=True) is None
    assert "fp16" in runners.availability("torch-sdpa", "fp16", "cpu")
    assert runners.availability("torch-sdpa", "fp16", "cpu", explicit_precision=True) is None


def test_failing_backend_does_not_stop_the_run(ckpt, tmp_path, monkeypatch):
    real = suite.make_runner

    class Flaky(runners.TorchRunner):
        calls = 0

        def run(self, prepared):
            Flaky.calls += 1
            if Flaky.calls == 4:
                raise RuntimeError("device lost")
            return super().run(prepared)

    def fake(backend, precision, device, **kw):
        if backend == "onnxruntime":
            raise RuntimeError("boom")
        if backend == "torch-compile":
            return Flaky(kw["model"], "torch-eager", precision, device)
        return real(backend, precision, device, **kw)

    monkeypatch.setattr(suite, "make_runner", fake)
    monkeypatch.setattr(suite, "availability", lambda *a, **k: None)
    res = run_bench(_cfg(ckpt, tmp_path, backends=("torch-sdpa", "onnxruntime", "torch-compile"), batches=(1, 2)))
    status = {(c["backend"], c["batch"]): (c["status"], c["reason"]) for c in res.cells}
    assert status[("onnxruntime", 1)] == ("failed", "build: RuntimeError: boom")
    assert status[("torch-sdpa", 1)][0] == status[("torch-sdpa", 2)][0] == "ok"
    assert sorted(s for (b, _), (s, _) in status.items() if b == "torch-eager") == ["failed", "ok"]
    assert any("device lost" in r for (b, _), (s, r) in status.items() if b == "torch-eager")
    assert "onnxruntime fp32" in res.meta["tracebacks"]


def test_ctrl_c_inside_a_backend_stops_the_run(ckpt, tmp_path, monkeypatch, raise_interrupted_export):
    """Ctrl-C that torch.export turned into an AssertionError (wrapped in an ExportError) must stop the run,
    not become a "failed" row of a report that ends with exit 0."""
    real = suite.make_runner

    def interrupted(backend, precision, device, **kw):
        if backend == "torch-eager":  # the parity reference
            return real(backend, precision, device, **kw)
        raise_interrupted_export()

    monkeypatch.setattr(suite, "make_runner", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_bench(_cfg(ckpt, tmp_path / "o", backends=("torch-sdpa",)))
    assert not (tmp_path / "o").exists()


def test_ctrl_c_with_keep_artifacts_leaves_no_empty_folders(ckpt, tmp_path, monkeypatch):
    """--keep-artifacts builds into OUT/artifacts/; Ctrl-C before anything was kept there left OUT/ and
    OUT/artifacts/ behind, empty."""
    from semask_deploy.cli.bench import run_bench_cli

    real = suite.make_runner

    def interrupted(backend, precision, device, **kw):
        if backend == "torch-eager":
            return real(backend, precision, device, **kw)
        kw["workdir"].mkdir(parents=True, exist_ok=True)  # as the ONNX export does before it writes
        raise KeyboardInterrupt

    monkeypatch.setattr(suite, "make_runner", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_bench_cli(_cfg(ckpt, tmp_path / "o", backends=("onnxruntime",), keep_artifacts=True))
    assert not (tmp_path / "o").exists()


def test_out_under_a_file_is_refused_before_measuring(ckpt, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["--ckpt", str(ckpt), "--out", str(blocker / "report"), "--backends", "torch-sdpa",
                 "--precisions", "fp32", "--sizes", "64x64", "--batch", "1", "--runs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file, not a folder" in err[0], err


def _fake_exporter(checkpoint, precision, out_dir, *, calib_images, device="cpu", **kw):
    """Stand-in for semask_deploy.export: a TorchScript export with labels + logits and a dynamic batch, traced
    at the calibration images' size (the benchmark passes images of its first size)."""
    import warnings

    from semask_deploy import load_model

    model = load_model(checkpoint)

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            logits = self.m(x)
            return logits.argmax(1).to(torch.int32), logits

    t0 = time.perf_counter()
    path = Path(out_dir) / f"model_{precision}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = calib_images.shape[1:3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrap(model).eval(), (torch.zeros(1, 3, h, w),), str(path), input_names=["image"],
                          output_names=["labels", "logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"image": {0: "n"}, "labels": {0: "n"}, "logits": {0: "n"}})
    return runners.ExportedOnnx(path, export_s=time.perf_counter() - t0, quant_s=0.0, info={"fake": True})


@pytest.fixture()
def fake_export(monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(runners, "exporter_missing", lambda: None)
    monkeypatch.setattr(runners, "export_onnx", _fake_exporter)


def test_onnxruntime_plugs_in_through_export_onnx(ckpt, tmp_path, fake_export):
    res = run_bench(_cfg(ckpt, tmp_path, backends=("torch-eager", "onnxruntime"), batches=(1, 2)))
    ort = [c for c in res.cells if c["backend"] == "onnxruntime"]
    assert [c["status"] for c in ort] == ["ok", "ok"], ort
    for c in ort:
        assert c["max_abs"] < 1e-3 and c["rel_l2"] < 1e-5 and c["pixel_agreement"] > 0.999
        assert c["export_s"] > 0 and c["build_s"] >= c["export_s"] and c["build"]["fake"]
        assert c["speedup_vs_eager_fp32"] > 0 and c["build"]["providers"] == ["CPUExecutionProvider"]


def test_openvino_plugs_in_through_export_onnx(ckpt, tmp_path, fake_export):
    pytest.importorskip("openvino")
    res = run_bench(_cfg(ckpt, tmp_path, backends=("torch-eager", "openvino"), batches=(1,)))
    ov = [c for c in res.cells if c["backend"] == "openvino"]
    assert [c["status"] for c in ov] == ["ok"], [{k: v for k, v in c.items() if k in ("status", "error", "reason", "note")} for c in ov]
    assert ov[0]["rel_l2"] < 1e-4 and ov[0]["pixel_agreement"] > 0.999
    assert ov[0]["build"]["openvino_ran"]["hint"] == "f32"  # explicit precision, read back
    assert "CPU" in runners.availability("openvino", "fp32", "cuda")
    assert "fp16" in runners.availability("openvino", "fp16", "cpu")
    assert ov[0]["flags"].startswith("OpenVINO ran hint f32")  # the report says what ran


def test_openvino_bf16_is_the_hint_on_the_fp32_graph(ckpt, tmp_path, fake_export):
    pytest.importorskip("openvino")
    from semask_deploy.runtime.cpu_info import native_bf16

    if not native_bf16():
        pytest.skip("this CPU has no native bf16 (avx512_bf16 or AMX)")
    res = run_bench(_cfg(ckpt, tmp_path, backends=("torch-eager", "openvino"), precisions=("fp32", "bf16"),
                         batches=(1,), explicit_precisions=True))
    ov = {c["precision"]: c for c in res.cells if c["backend"] == "openvino"}
    assert {p: c["status"] for p, c in ov.items()} == {"fp32": "ok", "bf16": "ok"}, res.cells
    assert ov["bf16"]["build"]["onnx"] == ov["fp32"]["build"]["onnx"]  # one fp32 graph, two hints
    assert ov["bf16"]["build"]["openvino_ran"]["hint"] == "bf16"
    assert ov["bf16"]["build"]["openvino_ran"]["layers"].get("bf16", 0) > 0
    assert ov["bf16"]["flags"].startswith("OpenVINO ran hint bf16")
    assert ov["bf16"]["pixel_agreement"] > 0.9 and ov["bf16"]["rel_l2"] < 0.1  # rounded, not broken


@pytest.mark.slow
def test_dataset_accuracy_per_backend(ckpt, tmp_path, fake_export):
    """--dataset synthetic: mIoU/aAcc per backend through the official pipeline, ΔmIoU vs torch fp32."""
    res = run_bench(_cfg(ckpt, tmp_path, backends=("torch-eager", "onnxruntime"), sizes=((256, 256),), runs=2,
                         dataset="synthetic", limit=2))
    ds = {(d["backend"], d["precision"]): d for d in res.dataset}
    assert set(ds) == {("reference", "fp32"), ("torch-eager", "fp32"), ("onnxruntime", "fp32")}
    assert ds[("torch-eager", "fp32")]["delta_mIoU"] == 0.0 and ds[("onnxruntime", "fp32")]["images"] == 2
    assert abs(ds[("onnxruntime", "fp32")]["delta_mIoU"]) < 0.01
    assert ds[("onnxruntime", "fp32")]["pixel_agreement"] > 0.999
    assert 0 <= ds[("reference", "fp32")]["mIoU"] <= 1 and ds[("reference", "fp32")]["aAcc"] > 0


@pytest.mark.slow
def test_real_exporter_fp32_fp16_int8(ckpt, tmp_path):
    """The real semask_deploy.export path: one fp32 export shared by fp16 and int8 (s8 activations, as semask-export writes by default)."""
    if runners.exporter_missing():
        pytest.skip(runners.exporter_missing())
    res = run_bench(_cfg(ckpt, tmp_path, backends=("onnxruntime",), precisions=("fp32", "fp16", "int8"), runs=2,
                         keep_artifacts=True))
    cells = {c["precision"]: c for c in res.cells}
    assert {p: c["status"] for p, c in cells.items()} == {"fp32": "ok", "fp16": "ok", "int8": "ok"}, res.cells
    assert cells["fp32"]["max_abs"] < 1e-3 and cells["fp32"]["pixel_agreement"] > 0.999
    assert cells["fp16"]["rel_l2"] < 1e-2 and cells["fp16"]["quant_s"] > 0
    assert cells["int8"]["build"]["int8"] == "int8 symmetric" and cells["int8"]["quant_s"] > 0
    # fp16 and int8 start from the shared fp32 export; ONNX Runtime fp32 on the CPU runs what semask-export writes for
    # it: that export with its 3×3 convs as Winograd (the pass's time counts as export time)
    assert cells["fp32"]["export_s"] >= cells["fp16"]["export_s"] == cells["int8"]["export_s"] > 0
    assert sorted(p.name for p in (tmp_path / "artifacts").glob("*.onnx")) == [
        "model_fp16.onnx", "model_fp32.onnx", "model_fp32_winograd.onnx", "model_int8_s8.onnx"]
    import onnx

    winograd = onnx.load(str(tmp_path / "artifacts" / "model_fp32_winograd.onnx"))
    assert cells["fp32"]["build"]["winograd_convs"] == sum(n.op_type == "DepthToSpace" for n in winograd.graph.node)


def _code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse usage errors
        return int(exc.code)


@pytest.mark.parametrize("extra,needle", [
    (["--sizes", "abc"], "HxW"),
    (["--sizes", "16x16"], "at least 32x32"),
    (["--backends", "torch-foo"], "unknown backend"),
    (["--precisions", "fp8"], "unknown precision"),
    (["--runs", "x"], "--runs must be an integer"),
    (["--batch", "0"], "positive"),
    (["--threads", "-1"], "--threads"),
    (["--dataset", "folder"], "--data-root"),
    (["--dataset", "imagenet"], "unknown --dataset"),
    (["--limit", "3"], "need --dataset"),
    (["--device", "tpu"], "cpu or cuda"),
    (["--bogus"], "unrecognized arguments"),
    (["--threads", "100000"], "--threads=100000 is more than the"),  # as semask-infer/-eval say it
    (["--demo"], "not allowed with"),
    (["--backends", "tensorrt", "--precisions", "fp32"], "nothing to benchmark here: tensorrt fp32"),  # (no GPU)
])
def test_cli_errors_one_line_exit_2(ckpt, tmp_path, capsys, extra, needle):
    argv = ["--ckpt", str(ckpt), "--out", str(tmp_path / "o"), *extra]
    assert _code(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "o").exists()


def test_cli_missing_checkpoint_and_no_gpu(tmp_path, capsys):
    assert _code(["--ckpt", str(tmp_path / "none.pth")]) == 2
    assert capsys.readouterr().err.strip() == f"error: checkpoint not found: {tmp_path / 'none.pth'}"
    if not torch.cuda.is_available():
        assert _code(["--ckpt", str(tmp_path / "none.pth"), "--device", "cuda"]) == 2


def test_help_and_subprocess_error():
    exe = shutil.which("semask-bench") or str(Path(sys.executable).parent / "semask-bench")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "256x256,512x512" in proc.stdout and "torch-compile" in proc.stdout
    assert "onnxruntime,openvino,tensorrt" in " ".join(proc.stdout.split())  # every backend in --backends' help
    proc = subprocess.run([exe, "--sizes", "nope"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_make_inputs_deterministic():
    a_rgb, a = suite.make_inputs((48, 40), 3, 8)
    b_rgb, b = suite.make_inputs((48, 40), 3, 8)
    assert a.shape == (3, 3, 48, 40) and a.dtype == np.float32 and (a == b).all() and a_rgb.shape == (3, 48, 40, 3)


def test_machine_info_names_the_isa():
    """Benchmark results carry the CPU's ISA flags (machines here differ: AVX2 only, or AVX-512 + VNNI + bf16)."""
    from semask_deploy.benchmarks.harness import machine_info
    from semask_deploy.benchmarks.report import render_markdown
    from semask_deploy.runtime.cpu_info import ISA_FLAGS, isa_text

    info = machine_info("cpu")
    assert set(info["isa"]) == set(ISA_FLAGS) and info["isa_text"] == isa_text()
    text = render_markdown({"meta": {"machine": info}, "cells": []})
    assert f"({isa_text()})" in text.split("- machine:", 1)[1].splitlines()[0]


def test_without_matplotlib_the_plot_is_an_error_before_measuring(tmp_path, capsys, monkeypatch):
    """A base install (no matplotlib) measured for minutes, then crashed with ModuleNotFoundError and wrote no
    report."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    from semask_deploy.cli.bench import main as bench_main

    assert bench_main(["--out", str(tmp_path / "b"), "--sizes", "64x64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'semask-deploy[bench]', or pass --no-plot" in err[0]
    assert not (tmp_path / "b").exists()
