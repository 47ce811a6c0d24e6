"""One-shot GPU check: everything worth measuring on a borrowed GPU, inside a fixed wall-time budget.

Usage::

    python -m semask_deploy.benchmarks.gpu_check --out gpu_check/            # on a CUDA GPU (≤ 8 min)
    python -m semask_deploy.benchmarks.gpu_check --out /tmp/gc --dry-run     # on the CPU: tiny, interpreter

Steps, in order of value (:func:`plan`), each in its own subprocess with its own timeout:

1. ``env`` — GPU name and capability, torch / triton / CUDA versions.
2. ``e2e_<case>`` for every :data:`~semask_deploy.benchmarks.gpu_e2e.MODEL_CASES` entry (SeMask-T 512²,
   SeMask-L 640², SeMask-L 2048×1024, random weights of the official configs): attention backends eager /
   sdpa / triton × fp32 / fp16 / bf16 — latency p50/p99 (CUDA events), peak memory, parity vs fp32 eager.
   The `gpu` tests (pytest) and the kernel benchmarks (``benchmarks/kernels.py --quick``) come between.
3. ``compile_<case>`` — ``torch.compile`` of the sdpa model in fp16 (compile time in ``first_call_ms``).
4. ``kernel_tuning`` — the launch-configuration sweep (``benchmarks/kernel_tuning.py``) that the kernels'
   defaults come from; it needs more than the default budget leaves (``--only kernel_tuning``).

A step that fails, times out or hangs is killed (its whole process group) and recorded; the next one runs.
The budget (``--budget-s``, default 450 s) bounds the total: a step's timeout is cut to what is left, and a
step that would get less than ``min_s`` is skipped. After every step ``gpu_check.json`` and
``gpu_check.md`` in ``--out`` are rewritten (temp + rename); the e2e workers also rewrite their own JSON
after every cell, so a step cut short keeps the cells it finished.

``--dry-run`` runs the same orchestration on the CPU: Triton's interpreter, a shrunken model, tiny inputs,
fp32/fp16, the first model case only, no ``torch.compile``; the kernel step is still run and records the
benchmark's refusal without a GPU. Exit status: 0 when every step ran ok, 1 when some step failed or timed
out, 2 for a usage error (no GPU without ``--dry-run``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUDGET_S = 450.0


@dataclass
class Step:
    """One time-boxed subprocess. ``result`` is read from ``json_path`` (if the step writes one)."""

    name: str
    argv: list[str]
    timeout_s: float
    min_s: float = 20.0
    json_path: Path | None = None
    env: dict[str, str | None] = field(default_factory=dict)  # overrides; None removes the variable
    expected_rc: int = 0  # the exit status that counts as ok (dry run: the kernel benchmark's refusal, 2)
    status: str = "pending"  # ok | failed | timeout | skipped
    seconds: float | None = None
    returncode: int | None = None
    note: str = ""
    result: Any = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["json_path"] = str(self.json_path) if self.json_path else None
        d.pop("env")
        return d


def _py(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def plan(out: Path, dry_run: bool) -> list[Step]:
    """The steps, most valuable first, with their timeouts (seconds)."""
    from semask_deploy.benchmarks.gpu_e2e import MODEL_CASES

    steps_dir = out / "steps"
    dry = ["--dry-run"] if dry_run else []
    steps = [Step("env", _py("semask_deploy.benchmarks.gpu_check", "--env-json", str(steps_dir / "env.json")),
                  60, 5, steps_dir / "env.json")]

    def e2e(case: str, timeout: float, compile_: bool = False, extra: tuple[str, ...] = ()) -> Step:
        name = ("compile_" if compile_ else "e2e_") + case
        path = steps_dir / f"{name}.json"
        argv = _py("semask_deploy.benchmarks.gpu_e2e", "--case", case, "--json", str(path), *dry, *extra)
        return Step(name, argv + (["--compile"] if compile_ else []), timeout, 30, path)

    tests = [str(REPO / "tests" / "kernels" / "test_upsample_argmax.py")] if dry_run else [str(REPO / "tests")]
    xml = steps_dir / "gpu_tests.xml"
    gpu_tests = Step("gpu_tests", _py("pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", f"--junitxml={xml}", *tests),
                     120, 30, xml)
    kernels = Step("kernels", _py("semask_deploy.benchmarks.kernels", "--quick", "--out", str(out / "kernels")),
                   75, 30, out / "kernels" / "kernels.json")
    if dry_run:
        kernels.expected_rc = 2  # the benchmark refuses the CPU interpreter with status 2 and one error line
        steps += [e2e(MODEL_CASES[0].name, 240, extra=("--dtypes", "fp32,fp16")), gpu_tests, kernels]
        for step in steps:
            step.env["TRITON_INTERPRET"] = "1"
        return steps
    first, *rest = MODEL_CASES
    steps += [e2e(first.name, 75), gpu_tests]
    steps += [e2e(rest[0].name, 80)] if rest else []
    steps += [kernels]
    steps += [e2e(c.name, 100) for c in rest[1:]]
    # compiling takes ~55-70 s per dtype on an H200 (measured): fp16, the deployment dtype, fits the step;
    # three dtypes were cut short at fp16 anyway
    steps += [e2e(c.name, 90, compile_=True, extra=("--dtypes", "fp16")) for c in MODEL_CASES[:2]]
    # last: the launch-configuration sweep behind the kernels' defaults (3-4 min on an H200; a larger
    # --budget-s, or --only kernel_tuning, gives it its time)
    steps.append(Step("kernel_tuning", _py("semask_deploy.benchmarks.kernel_tuning", "--out", str(out / "kernel_tuning")),
                      300, 120, out / "kernel_tuning" / "kernel_tuning.json"))
    for step in steps:
        step.env["TRITON_INTERPRET"] = None  # compiled kernels on the GPU, never the interpreter
    return steps


def _read_result(step: Step) -> Any:
    path = step.json_path
    if path is None or not path.is_file():
        return None
    if path.suffix == ".xml":
        return _junit_summary(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {"unreadable": str(exc)}


def _junit_summary(path: Path) -> dict[str, Any]:
    """Counts and failing test ids from a pytest ``--junitxml`` file."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        return {"unreadable": str(exc)}
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures = []
    for case in root.iter("testcase"):
        tid = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            node = case.find("failure") if case.find("failure") is not None else case.find("error")
            failures.append({"test": tid, "message": (node.get("message") or "")[:300]})
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "failures": failures}


def run_step(step: Step, out: Path, remaining_s: float) -> None:
    """Run one step in its own process group; kill the group at its timeout."""
    timeout = min(step.timeout_s, remaining_s)
    if timeout < step.min_s:
        step.status, step.note = "skipped", f"budget: {remaining_s:.0f} s left, the step needs ≥ {step.min_s:.0f} s"
        return
    log_path = out / "steps" / f"{step.name}.log"
    env = dict(os.environ)
    for key, value in step.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(step.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                                start_new_session=True)
        try:
            step.returncode = proc.wait(timeout=timeout)
            step.status = "ok" if step.returncode == step.expected_rc else "failed"
            if step.returncode == step.expected_rc != 0:
                step.note = f"exited {step.returncode} as expected: {_tail(log_path, 1)}"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            step.status, step.note = "timeout", f"killed after {timeout:.0f} s"
    step.seconds = round(time.perf_counter() - t0, 2)
    step.result = _read_result(step)
    if step.status == "failed":
        step.note = _tail(log_path)


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-600:]


def run_check(out: Path, *, dry_run: bool = False, budget_s: float = DEFAULT_BUDGET_S,
              steps: list[Step] | None = None, only: list[str] | None = None) -> dict[str, Any]:
    """Run the steps within ``budget_s`` and write ``gpu_check.json`` / ``gpu_check.md`` after each.

    Args:
        out: output folder (created).
        dry_run: CPU mode (see the module docstring).
        budget_s: wall-time budget for all steps together.
        steps: the steps to run (default: :func:`plan`); tests pass their own.
        only: names of the steps to keep (``env`` is always kept).

    Returns:
        The report dict written to ``gpu_check.json``.
    """
    out = Path(out)
    (out / "steps").mkdir(parents=True, exist_ok=True)
    steps = steps if steps is not None else plan(out, dry_run)
    if only:
        steps = [s for s in steps if s.name in only or s.name == "env"]
    report: dict[str, Any] = {"dry_run": dry_run, "budget_s": budget_s, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                              "steps": [s.to_dict() for s in steps]}
    t0 = time.perf_counter()
    for i, step in enumerate(steps):
        print(f"[{i + 1}/{len(steps)}] {step.name} (≤ {min(step.timeout_s, budget_s - (time.perf_counter() - t0)):.0f} s)",
              file=sys.stderr, flush=True)
        run_step(step, out, budget_s - (time.perf_counter() - t0))
        print(f"    {step.status} in {step.seconds or 0:.1f} s {step.note[:200]}", file=sys.stderr, flush=True)
        report["steps"][i] = step.to_dict()
        if step.name == "env" and isinstance(step.result, dict):
            report["env"] = step.result
        report["elapsed_s"] = round(time.perf_counter() - t0, 1)
        _write(out, report)
    return report


def _write(out: Path, report: dict[str, Any]) -> None:
    from semask_deploy.benchmarks.gpu_report import render_markdown
    from semask_deploy.fileio import write_json_atomic, write_text_atomic

    write_json_atomic(out / "gpu_check.json", report)
    write_text_atomic(out / "gpu_check.md", render_markdown(report))


def env_info() -> dict[str, Any]:
    """GPU and library versions of this machine (CPU when there is no GPU)."""
    import platform

    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as exc:  # noqa: BLE001
        info["triton"] = f"unavailable ({exc})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), capability="{}.{}".format(*torch.cuda.get_device_capability(0)),
                    gpu_memory_gb=round(props.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count())
    else:
        info["gpu"] = None
        info["cpu"] = platform.processor() or platform.machine()
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m semask_deploy.benchmarks.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="output folder (gpu_check.md, gpu_check.json, steps/, kernels/)")
    ap.add_argument("--dry-run", action="store_true", help="run the same steps on the CPU: tiny shapes, Triton interpreter")
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                    help="total wall-time budget in seconds (default: %(default)s)")
    ap.add_argument("--only", help="comma-separated step names to run (env always runs)")
    ap.add_argument("--list", action="store_true", help="print the planned steps and exit")
    ap.add_argument("--env-json", type=Path, help=argparse.SUPPRESS)  # the env step's worker
    args = ap.parse_args(argv)
    if args.env_json:
        from semask_deploy.fileio import write_json_atomic

        write_json_atomic(args.env_json, env_info())
        return 0
    if args.list:  # the plan only: no folder needed (paths shown under --out, or "OUT")
        for s in plan(args.out or Path("OUT"), args.dry_run):
            print(f"{s.name:28s} timeout {s.timeout_s:5.0f} s  {' '.join(s.argv[2:])}")
        return 0
    if args.out is None:
        print("error: --out DIR is required", file=sys.stderr)
        return 2
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("error: no CUDA GPU found; the GPU check needs one (use --dry-run to check the script on the CPU)",
                  file=sys.stderr)
            return 2
    only = [s for s in args.only.split(",") if s] if args.only else None
    if not (REPO / "tests").is_dir() and (only is None or "gpu_tests" in only):
        print(f"error: the gpu_tests step runs the repository's tests, which a non-editable install lacks ({REPO} "
              "has no tests/): run it from a clone after pip install -e . (or leave the step out with --only)",
              file=sys.stderr)
        return 2
    if only is not None:
        known = [s.name for s in plan(args.out, args.dry_run)]
        unknown = [s for s in only if s not in known]
        if unknown:  # it ran only the env step and reported success
            print(f"error: unknown step(s) {', '.join(unknown)}; choose from {', '.join(known)} (--list)",
                  file=sys.stderr)
            return 2
    report = run_check(args.out, dry_run=args.dry_run, budget_s=args.budget_s, only=only)
    print(f"wrote {args.out / 'gpu_check.md'} and {args.out / 'gpu_check.json'}")
    return 0 if all(s["status"] in ("ok", "skipped") for s in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
