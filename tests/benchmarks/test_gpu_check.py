"""The one-shot GPU check (benchmarks/gpu_check.py): step plan, time boxes, reports, and a CPU dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from semask_deploy.benchmarks import gpu_check
from semask_deploy.benchmarks.gpu_check import Step, plan, run_check
from semask_deploy.benchmarks.gpu_e2e import MODEL_CASES
from semask_deploy.benchmarks.gpu_report import render_markdown


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_plan_orders_steps_and_covers_every_case(tmp_path):
    steps = plan(tmp_path, dry_run=False)
    names = [s.name for s in steps]
    assert names[:3] == ["env", "e2e_semask_t_512", "gpu_tests"]
    assert {f"e2e_{c.name}" for c in MODEL_CASES} <= set(names)
    assert "kernels" in names and names.index("kernels") < names.index("e2e_semask_l_2048x1024")
    assert [n for n in names if n.startswith("compile_")] == ["compile_semask_t_512", "compile_semask_l_640"]
    assert names[-1] == "kernel_tuning"  # the longest and least often needed step comes last
    assert all(s.env.get("TRITON_INTERPRET", "unset") is None for s in steps)  # compiled kernels on the GPU
    assert {c.size for c in MODEL_CASES} == {(512, 512), (640, 640), (1024, 2048)}
    dry = plan(tmp_path, dry_run=True)
    assert [s.name for s in dry] == ["env", "e2e_semask_t_512", "gpu_tests", "kernels"]
    assert all(s.env["TRITON_INTERPRET"] == "1" and "--compile" not in s.argv for s in dry)


def test_steps_are_time_boxed_and_failures_do_not_stop_the_run(tmp_path):
    out = tmp_path / "gc"
    result_file = out / "steps" / "good.json"
    steps = [
        # a hang, with a child process in its group: both must be gone after the timeout
        Step("hang", _py("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; "
                         "time.sleep(60)']); time.sleep(60)"), timeout_s=2, min_s=1),
        Step("crash", _py("import sys; print('something broke'); sys.exit(3)"), timeout_s=30, min_s=1),
        Step("good", _py(f"import json; open({str(result_file)!r}, 'w').write(json.dumps({{'value': 7}}))"),
             timeout_s=30, min_s=1, json_path=result_file),
        Step("late", _py("pass"), timeout_s=30, min_s=1000),  # never fits the budget
    ]
    t0 = time.perf_counter()
    report = run_check(out, steps=steps, budget_s=120)
    assert time.perf_counter() - t0 < 60
    by_name = {s["name"]: s for s in report["steps"]}
    assert by_name["hang"]["status"] == "timeout" and by_name["hang"]["seconds"] < 15
    assert by_name["crash"]["status"] == "failed" and by_name["crash"]["returncode"] == 3
    assert "something broke" in by_name["crash"]["note"]
    assert by_name["good"]["status"] == "ok" and by_name["good"]["result"] == {"value": 7}
    assert by_name["late"]["status"] == "skipped" and "budget" in by_name["late"]["note"]
    on_disk = json.loads((out / "gpu_check.json").read_text())
    assert [s["status"] for s in on_disk["steps"]] == ["timeout", "failed", "ok", "skipped"]
    md = (out / "gpu_check.md").read_text()
    assert "| hang | timeout |" in md and "| crash | failed |" in md
    assert (out / "steps" / "crash.log").read_text().strip() == "something broke"


def test_markdown_of_partial_results():
    rows = [{"backend": "triton", "dtype": "bf16", "p50_ms": 12.5, "p99_ms": 13.0, "first_call_ms": 900.0,
             "peak_mb": 2048.0, "peak_delta_mb": 512.0, "max_abs": 0.03, "rel_l2": 0.004, "label_agreement": 0.9991},
            {"backend": "eager", "dtype": "fp16", "error": "OutOfMemoryError: CUDA out of memory"}]
    report = {
        "env": {"gpu": "NVIDIA H200", "torch": "2.13.0", "triton": "3.7.1", "capability": "9.0"},
        "budget_s": 450, "elapsed_s": 400, "started": "now",
        "steps": [
            {"name": "e2e_semask_l_640", "status": "timeout", "seconds": 80, "note": "killed after 80 s",
             "result": {"case": "semask_l_640", "title": "SeMask-L ADE20K 640×640", "input": [1, 3, 640, 640],
                        "device": "cuda", "compile": False, "rows": rows}},
            {"name": "gpu_tests", "status": "failed", "seconds": 50, "note": "",
             "result": {"passed": 5, "failed": 1, "skipped": 2, "failures": [{"test": "t::x", "message": "boom"}]}},
            {"name": "kernels", "status": "timeout", "seconds": 75, "note": "",
             "result": {"meta": {"partial": "3/10 cases"}, "cases": [
                 {"kernel": "window_attention", "name": "L s0", "dtype": "fp16",
                  "results": {"triton": {"ms": 0.1, "max_err": 1e-3}, "eager": {"ms": 0.5}, "sdpa": {"error": "x"}}}]}},
            {"name": "kernel_tuning", "status": "ok", "seconds": 200, "note": "",
             "result": {"meta": {"crashed_configs": {"M64 N64 warps=8": "illegal memory access"}},
                        "cases": [{"kernel": "upsample_argmax"}, {"kernel": "semantic_global"}]}},
        ],
    }
    md = render_markdown(report)
    assert md.startswith("# GPU check — NVIDIA H200")
    assert "Cut short after 80 s" in md
    assert "| triton | bf16 | 12.50 | 13.00 | 900 | 2048 (512) | 3.00e-02 | 4.00e-03 | 99.910% |" in md
    assert "error: OutOfMemoryError" in md
    assert "passed 5, failed 1, skipped 2" in md and "FAILED `t::x`: boom" in md
    assert "Partial: 3/10 cases" in md and "| window_attention | L s0 | fp16 | 0.1000 | 0.5000 | error |" in md
    assert "2 cases, every configuration timed and checked" in md
    assert "- crashed: `M64 N64 warps=8` (illegal memory access)" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_refuses_without_gpu(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path / "gc")]) == 2
    assert "--dry-run" in capsys.readouterr().err
    assert not (tmp_path / "gc").exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU form of the check")
def test_dry_run_end_to_end(tmp_path):
    out = tmp_path / "gc"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "semask_deploy.benchmarks.gpu_check", "--out", str(out), "--dry-run"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert [s["status"] for s in report["steps"]] == ["ok"] * 4, proc.stderr[-3000:]
    assert report["env"]["torch"] == torch.__version__ and report["env"]["gpu"] is None
    rows = {(r["backend"], r["dtype"]): r for r in steps["e2e_semask_t_512"]["result"]["rows"]}
    assert set(rows) == {(b, d) for b in ("eager", "sdpa", "triton") for d in ("fp32", "fp16")}
    for backend in ("eager", "sdpa", "triton"):  # fp32: every backend matches the reference
        r = rows[(backend, "fp32")]
        assert r["max_abs"] < 1e-4 and r["label_agreement"] > 0.999 and r["p50_ms"] > 0 and r["runs"] == 1
    for backend in ("sdpa", "triton"):  # fp16: close, not exact
        r = rows[(backend, "fp16")]
        assert 0 < r["rel_l2"] < 2e-2 and r["label_agreement"] > 0.95
    assert steps["gpu_tests"]["result"]["failed"] == 0 and steps["gpu_tests"]["result"]["skipped"] > 0
    assert steps["kernels"]["returncode"] == 2 and "TRITON_INTERPRET" in steps["kernels"]["note"]
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# GPU check — CPU dry run") and "| triton | fp32 |" in md and "`gpu` tests" in md


def test_list_needs_no_out_folder(capsys):
    from semask_deploy.benchmarks import gpu_check

    assert gpu_check.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and lines[0].split()[0] == "env" and "OUT/steps/env.json" in lines[0]
    assert gpu_check.main([]) == 2  # a real run still needs --out


def test_unknown_only_step_is_an_error(tmp_path, capsys):
    """--only nosuchstep ran just the env step and exited 0."""
    from semask_deploy.benchmarks import gpu_check

    assert gpu_check.main(["--dry-run", "--only", "nosuchstep", "--out", str(tmp_path / "gc")]) == 2
    assert "unknown step(s) nosuchstep" in capsys.readouterr().err
    assert not (tmp_path / "gc").exists()
