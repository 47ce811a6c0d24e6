"""The CPU speed benchmark runs end to end on a small input and reports every call."""

from __future__ import annotations

from semask_deploy.benchmarks import cpu_speed


def test_cpu_speed_small_run_reports_every_call():
    r = cpu_speed.run(size=64, runs=1, warmup=0, threads=1)
    assert set(r["results"]) == set(cpu_speed.CALLS)
    for res in r["results"].values():
        assert res["eager"]["median_ms"] > 0 and res["sdpa"]["median_ms"] > 0
    assert r["label_agreement"] == 1.0 and r["max_abs_logit_diff_sdpa_vs_eager"] < 1e-4
    md = cpu_speed.to_markdown(r)
    for call in cpu_speed.CALLS.values():
        assert f"`model.{call}(x)`" in md
    assert r["cpu"] in md
