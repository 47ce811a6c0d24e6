"""Report writers (files exist, parse, are atomic) and the parity numbers behind them."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from semask_deploy.benchmarks import report
from semask_deploy.benchmarks.parity import SyntheticEvalSet, compare, delta_miou, evaluate, logit_errors
from semask_deploy.errors import ConfigError


def _cell(backend, precision, size, batch, p50, **kw):
    times = [p50 * f for f in (0.9, 1.0, 1.0, 1.1, 1.3)]
    c = {
        "backend": backend, "precision": precision, "size": size, "height": int(size.split("x")[0]),
        "width": int(size.split("x")[1]), "batch": batch, "status": "ok", "reason": "", "params": 5_000_000,
        "flops_analytic": 4e8 * batch, "flops_analytic_gemm": 3.9e8 * batch, "flops_counter": 3.9e8 * batch,
        "flops_counter_ratio": 1.0, "latency_ms_p50": p50, "latency_ms_p90": p50 * 1.2, "latency_ms_p99": p50 * 1.3,
        "latency_ms_mean": p50 * 1.06, "latency_ms_std": 1.0, "latency_ms_min": p50 * 0.9, "latency_ms_max": p50 * 1.3,
        "runs": 5, "warmup": 1, "timer": "perf_counter", "first_call_ms": p50 * 3, "images_per_s": 1000 * batch / p50,
        "host_peak_mb": 12.5, "host_mem_method": "vmhwm", "device_peak_mb": None, "device_used_delta_mb": None,
        "achieved_tflops": 4e8 * batch / p50 / 1e9, "peak_tflops": 0.1, "peak_fraction": 0.2, "build_s": None,
        "export_s": None, "quant_s": None, "max_abs": 1e-6, "mean_abs": 1e-7, "rel_l2": 3e-7, "finite": True,
        "pixel_agreement": 1.0, "miou_vs_ref": 1.0, "flags": "", "build": {"note": "x"}, "times_ms": times,
        "speedup_vs_eager_fp32": None,
    }
    c.update(kw)
    return c


@pytest.fixture()
def data():
    cells = [
        _cell("torch-eager", "fp32", "64x64", 1, 20.0, speedup_vs_eager_fp32=1.0),
        _cell("torch-sdpa", "fp32", "64x64", 1, 10.0, speedup_vs_eager_fp32=2.0),
        _cell("onnxruntime", "int8", "64x64", 1, 8.0, build_s=3.5, export_s=2.0, quant_s=1.5, max_abs=0.3,
              rel_l2=0.02, pixel_agreement=0.98, miou_vs_ref=0.9, speedup_vs_eager_fp32=2.5),
        {"backend": "onnxruntime", "precision": "fp16", "size": "64x64", "height": 64, "width": 64, "batch": 1,
         "status": "failed", "reason": "RuntimeError: boom"},
    ]
    return {
        "meta": {"date": "2026-11-24T12:00:00", "command": "semask-bench --sizes 64x64", "model": "tiny",
                 "checkpoint": "tiny.pth", "params": 5_000_000, "num_classes": 8, "device": "cpu",
                 "runs": 5, "warmup": 1, "baseline": "torch-eager fp32", "reference": "torch fp32 eager",
                 "inputs": "synthetic", "machine": {"cpu": "test cpu", "cpu_count": 2, "torch": "2.x",
                                                    "torch_threads": 2, "loadavg": [1.0, 1.0, 1.0]},
                 "device_peak_tflops": {"fp32": 0.1, "size": 1024.0, "threads": 2.0}, "notes": ["few runs"],
                 "wall_s": 12.0, "nan_value": math.nan},
        "flops": {"64x64": {"per_image": {a: {"gemm": 3.9e8, "interp": 1e7, "total": 4e8}
                                          for a in ("eager", "sdpa", "triton")},
                            "counter_eager": 3.9e8, "counter_ratio": 1.0, "groups": {"head": 1},
                            "rows_sdpa": [{"name": "backbone.patch_embed.proj", "op": "conv", "shape": "3→32",
                                           "flops": 1e6, "module": "x", "counted": True}],
                            "table_sdpa": "| part | GFLOPs | share |"}},
        "cells": cells,
        "skipped": [{"backend": "tensorrt", "precision": "fp32", "status": "skipped", "reason": "needs a GPU"}],
        "dataset": [{"backend": "reference", "precision": "fp32", "images": 4, "mIoU": 0.5, "aAcc": 0.8},
                    {"backend": "torch-sdpa", "precision": "fp32", "status": "ok", "images": 4, "mIoU": 0.5,
                     "aAcc": 0.8, "delta_mIoU": 0.0, "miou_vs_ref": 1.0, "pixel_agreement": 1.0}],
    }


def test_write_report_files_exist_and_parse(tmp_path, data):
    paths = report.write_report(data, tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(report.FILES)
    md = paths["report.md"].read_text()
    assert "| backend | prec | size | batch | p50 ms" in md
    assert "| onnxruntime | int8 | 64x64 | 1 | 8.0 |" in md and "2.50×" in md
    assert "tensorrt fp32: needs a GPU" in md and "onnxruntime fp16 64x64 b1: RuntimeError: boom" in md
    assert "ΔmIoU" in md and "load average" in md
    js = json.loads(paths["results.json"].read_text())  # strict JSON: NaN became null
    assert js["meta"]["nan_value"] is None
    assert js["cells"][0]["times_ms"] == data["cells"][0]["times_ms"]
    rows = list(csv.DictReader(paths["results.csv"].open()))
    assert len(rows) == 5 and rows[-1]["status"] == "skipped" and "times_ms" not in rows[0]
    assert float(rows[2]["latency_ms_p50"]) == 8.0 and rows[3]["reason"] == "RuntimeError: boom"
    assert paths["plot.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "backbone.patch_embed.proj" in paths["flops.md"].read_text()


@pytest.mark.parametrize("failure", [RuntimeError("a bug in the plot"), OSError(28, "No space left on device")])
def test_a_failed_write_leaves_the_earlier_report_whole(tmp_path, data, monkeypatch, failure):
    """The last file failing (a full disk) left report.md/flops.md of the new run beside the old run's
    results.json/csv/plot: now all five are renamed into place together, or none."""
    import errno

    out = tmp_path / "r"
    report.write_report(data, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def partial_plot(d, path):
        def writer(tmp):
            tmp.write_bytes(b"partial")
            raise failure

        report.write_with(path, writer)

    monkeypatch.setattr(report, "plot", partial_plot)
    newer = dict(data, meta=dict(data["meta"], date="2030-01-01"))
    if isinstance(failure, OSError):
        failure.errno = errno.ENOSPC
        with pytest.raises(report.ReportWriteError, match="No space left on device") as err:
            report.write_report(newer, out)
        assert "| backend | prec | size |" in err.value.markdown  # the caller can still show the numbers
    else:
        with pytest.raises(RuntimeError, match="a bug"):
            report.write_report(newer, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing new, nothing hidden left


def test_bench_cli_prints_the_report_when_it_cannot_write_it(tmp_path, monkeypatch, capsys):
    import errno

    from semask_deploy.cli import bench

    def full_disk(*a, **k):
        raise report.ReportWriteError(f"the report could not be written to {tmp_path}: cannot write: "
                                      f"{errno.errorcode[errno.ENOSPC]}", "| backend | prec | the table |")

    monkeypatch.setattr(bench, "run_bench_cli", full_disk)
    monkeypatch.setattr(bench, "config_from_args", lambda args, argv: None)
    assert bench.main(["--out", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert "| backend | prec | the table |" in captured.out
    assert captured.err.strip().splitlines()[-1].startswith("error: the report could not be written")


def test_plot_survives_empty_results(tmp_path, data):
    data = dict(data, cells=[], dataset=[])
    paths = report.write_report(data, tmp_path)
    assert paths["plot.png"].stat().st_size > 0


def test_logit_errors_and_compare():
    ref = np.zeros((1, 3, 2, 2), np.float32)
    ref[0, 0] = 1.0
    test = ref.copy()
    test[0, 1, 0, 0] = 2.0  # flips pixel (0, 0) to class 1
    err = logit_errors(ref, test)
    assert err["max_abs"] == 2.0 and err["mean_abs"] == pytest.approx(2.0 / 12)
    assert err["rel_l2"] == pytest.approx(2.0 / 2.0) and err["finite"]
    par = compare(ref.argmax(1), test.argmax(1), 3, ref, test)
    assert par["pixel_agreement"] == 0.75
    # against reference labels (all 0): class 0 IoU 3/4, class 1 IoU 0/1 → mIoU 0.375
    assert par["miou_vs_ref"] == pytest.approx(0.375)
    labels_only = compare(ref.argmax(1), test.argmax(1), 3)
    assert labels_only["max_abs"] is None and labels_only["pixel_agreement"] == 0.75
    with pytest.raises(ValueError):
        logit_errors(ref, test[:, :2])


def test_evaluate_and_delta():
    ds = SyntheticEvalSet(8, count=2, size=(32, 40))
    cm, preds = evaluate(lambda img: np.zeros(img.shape[:2], np.int64), ds, 8, keep_predictions=True)
    labels = [lab for _, lab, _ in ds]
    sky = sum(int((lab == 0).sum()) for lab in labels)
    assert cm.aacc() == pytest.approx(sky / (2 * 32 * 40)) and len(preds) == 2
    assert delta_miou(0.5, 0.25) == 0.25 and delta_miou(None, 0.1) is None and delta_miou(math.nan, 0.1) is None
    with pytest.raises(ConfigError):
        SyntheticEvalSet(4)


def test_percent_of_peak_above_100_is_explained(data):
    """int8 measured against the fp32 matmul peak (or a probe slowed by load) showed 151 % with no word."""
    assert "% peak above 100" not in report.render_markdown(data)
    data["cells"][2]["peak_fraction"] = 1.51
    assert "- note: % peak above 100 (onnxruntime int8): int8 and fp16" in report.render_markdown(data)
