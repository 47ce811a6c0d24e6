"""cpu_deploy's report: issue 11's goals judged from one result (no timing here: a made-up result)."""

from __future__ import annotations

from semask_deploy.benchmarks.cpu_deploy import GOALS, goals, to_markdown


def _row(backend, size, threads, eager, naive_ort, naive_ov):
    return {"size": list(size), "threads": threads, "backend": backend, "p50_ms": 100.0, "min_ms": 90.0,
            "vs_torch_eager": eager, "vs_naive_ort": naive_ort, "vs_naive_openvino": naive_ov, "openvino_ran": None}


def _result(int8_ok=True, int8_ratio=3.2):
    speed = []
    for size in ((512, 512), (499, 667)):
        for threads in (1, 2):
            speed += [_row("ours ONNX (ORT)", size, threads, 1.5, 1.25 if threads == 1 else 1.1, 1.0),
                      _row("ours OpenVINO f32, static shapes", size, threads, 1.6, 1.3, 1.3),
                      _row("ours OpenVINO int8, static shapes", size, threads, int8_ratio, 2.0, 2.0)]
    agreement = [{"backend": "OpenVINO int8", "precision": "int8", "label_agreement": 0.99, "miou_agreement": 0.97,
                  "thresholds": (0.98, 0.95), "ok": int8_ok}]
    return {"variant": "semask_swin_t_ade20k", "runs": 3, "warmup": 1, "speed": speed, "agreement": agreement,
            "cpu": {"model": "Test CPU", "logical_cpus": 2, "isa": {"AVX2": True, "AVX-512": False}},
            "versions": {"torch": "t", "onnxruntime": "o", "openvino": "v"}, "load_average_start": (0, 0, 0),
            "load_average_end": (0, 0, 0), "agreement_scenes": 1, "agreement_size": [64, 64]}


def test_goals_are_met_only_at_every_size_and_thread_count():
    got = {g["goal"]: g for g in goals(_result())}
    assert [g[0] for g in GOALS] == list(got)
    ort = got[GOALS[0][0]]
    assert ort["met"] is False and ort["worst"][1] == 1.1 and len(ort["ratios"]) == 4
    assert got[GOALS[1][0]]["met"] is True
    assert got[GOALS[2][0]]["met"] is None  # no bf16 row: not run on this CPU
    assert got[GOALS[3][0]]["met"] is True and got[GOALS[3][0]]["agreement_ok"] is True


def test_a_goal_needs_its_agreement_and_its_ratio():
    assert goals(_result(int8_ok=False))[3]["met"] is False  # fast enough, but the labels disagree
    assert goals(_result(int8_ratio=2.9))[3]["met"] is False


def test_markdown_ends_with_the_goals():
    text = to_markdown(_result())
    section = text.split("## Issue 11 goals on this CPU", 1)[1]
    assert "| our fp32 ONNX ≥ 1.2× the naive export, ONNX Runtime | ours ONNX (ORT) |" in section
    assert "| 1.10× | NO |" in section
    assert "not run on this CPU" in section
    assert "| 3.20× | yes, agreement met |" in section


def test_goals_are_not_judged_on_another_model_or_size():
    """A demo-model or 64×64 run printed 'met / NO' verdicts for goals stated for SeMask-T at 512×512."""
    r = _result()
    r["variant"] = "demo"
    assert "Not judged here" in to_markdown(r) and "| NO |" not in to_markdown(r)
    r = _result()
    for row in r["speed"]:
        row["size"], row["p50_ms"] = [64, 64], 7.25
    text = to_markdown(r)
    assert "Not judged here" in text and "| 7.2 |" in text  # small p50s keep a decimal
