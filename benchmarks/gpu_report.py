"""Markdown rendering of a ``gpu_check`` report (``gpu_check.json`` → ``gpu_check.md``)."""

from __future__ import annotations

from typing import Any


def _f(value: Any, spec: str) -> str:
    if value is None:
        return "—"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _env_lines(report: dict[str, Any]) -> list[str]:
    env = report.get("env") or {}
    where = env.get("gpu") or ("CPU dry run" if report.get("dry_run") else "unknown device")
    lines = [f"# GPU check — {where}", ""]
    facts = [f"started {report.get('started', '?')}", f"elapsed {_f(report.get('elapsed_s'), '.0f')} s of a "
             f"{_f(report.get('budget_s'), '.0f')} s budget"]
    for key in ("capability", "gpu_memory_gb", "torch", "triton", "cuda", "python", "cpu"):
        if env.get(key) is not None:
            facts.append(f"{key} {env[key]}")
    if report.get("dry_run"):
        facts.append("**dry run** (CPU, Triton interpreter, shrunken model: timings and parity are not GPU numbers)")
    return lines + [", ".join(facts), ""]


def _steps_table(steps: list[dict[str, Any]]) -> list[str]:
    lines = ["## Steps", "", "| step | status | seconds | note |", "|---|---|---:|---|"]
    for s in steps:
        lines.append(f"| {s['name']} | {s['status']} | {_f(s.get('seconds'), '.1f')} | {_cell(s.get('note', ''))[:300]} |")
    return lines + [""]


def _e2e_section(step: dict[str, Any]) -> list[str]:
    res = step.get("result")
    if not isinstance(res, dict) or "rows" not in res:
        return []
    n, _, h, w = res.get("input", [1, 3, "?", "?"])
    title = f"## {res.get('title', res.get('case'))} — {w}×{h} (W×H), batch {n}, {res.get('device')}"
    lines = [title + (", torch.compile" if res.get("compile") else ""), ""]
    if step.get("status") == "timeout":
        lines += [f"*Cut short after {_f(step.get('seconds'), '.0f')} s: the cells below are those that finished.*", ""]
    if res.get("error"):
        lines += [f"error: {_cell(res['error'])}", ""]
    tf32 = {True: " TF32 on (torch's default for cuDNN convolutions).", False: " TF32 off: fp32 is fp32."}.get(res.get("tf32"), "")
    lines += ["Random weights (official config); parity against the fp32 `eager` model of the same weights on one "
              "random input: logits at the input size, labels = argmax." + tf32, "",
              "| backend | dtype | p50 ms | p99 ms | first call ms | peak MB (rise) | max abs | rel L2 | label agreement |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['backend']} | {r['dtype']} | error: {_cell(r['error'])[:160]} | | | | | | |")
            continue
        agree = r.get("label_agreement")
        lines.append(
            f"| {r['backend']} | {r['dtype']} | {_f(r.get('p50_ms'), '.2f')} | {_f(r.get('p99_ms'), '.2f')} | "
            f"{_f(r.get('first_call_ms'), '.0f')} | {_f(r.get('peak_mb'), '.0f')} ({_f(r.get('peak_delta_mb'), '.0f')}) | "
            f"{_f(r.get('max_abs'), '.2e')} | "
            f"{_f(r.get('rel_l2'), '.2e')} | {_f(None if agree is None else 100 * agree, '.3f')}{'%' if agree is not None else ''} |"
        )
    return lines + [""]


def _tests_section(step: dict[str, Any]) -> list[str]:
    res = step.get("result")
    if not isinstance(res, dict) or "passed" not in res:
        return []
    lines = ["## `gpu` tests (pytest -m gpu)", "",
             f"passed {res['passed']}, failed {res['failed']}, skipped {res['skipped']}", ""]
    for f in res.get("failures", []):
        lines.append(f"- FAILED `{f['test']}`: {_cell(f['message'])[:200]}")
    return lines + ([""] if res.get("failures") else [])


def _kernels_section(step: dict[str, Any]) -> list[str]:
    res = step.get("result")
    if not isinstance(res, dict) or "cases" not in res:
        return []
    meta = res.get("meta", {})
    lines = ["## Kernel benchmarks (quick grid; full tables in `kernels/kernels.md`)", ""]
    if meta.get("partial"):
        lines += [f"*Partial: {meta['partial']} finished.*", ""]
    lines += ["| kernel | case | dtype | triton ms | eager ms | sdpa ms | triton max err |", "|---|---|---|---:|---:|---:|---:|"]
    for c in res["cases"]:
        r = c.get("results", {})

        def ms(p: str) -> str:
            v = r.get(p, {})
            return "error" if "error" in v else _f(v.get("ms"), ".4f")

        t = r.get("triton", {})
        lines.append(f"| {c['kernel']} | {c['name']} | {c['dtype']} | {ms('triton')} | {ms('eager')} | {ms('sdpa')} | "
                     f"{_f(t.get('max_err', t.get('label_mismatches')), '.2e')} |")
    return lines + [""]


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report: environment, step table, then one section per step that produced results."""
    steps = report.get("steps", [])
    lines = _env_lines(report) + _steps_table(steps)
    for s in steps:
        if s["name"].startswith(("e2e_", "compile_")):
            lines += _e2e_section(s)
        elif s["name"] == "gpu_tests":
            lines += _tests_section(s)
        elif s["name"] == "kernels":
            lines += _kernels_section(s)
        elif s["name"] == "kernel_tuning" and s.get("result"):
            result = s["result"]
            lines += ["## Kernel launch-configuration sweep", "",
                      f"{len(result.get('cases', []))} cases, every configuration timed and checked: "
                      "`kernel_tuning/kernel_tuning.md`."]
            lines += [f"- crashed: `{name}` ({why})" for name, why in result.get("meta", {}).get("crashed_configs", {}).items()]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
