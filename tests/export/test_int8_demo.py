"""int8 on the trained demo model with default options, and the verification gate's failure message."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from semask_deploy.errors import ExportError  # noqa: E402
from semask_deploy.export import verify  # noqa: E402
from semask_deploy.export.pipeline import ExportOptions, run_export  # noqa: E402

from ._shared import SMALL_CKPT  # noqa: E402


@pytest.mark.slow
def test_demo_int8_with_default_options_passes_its_gate(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMASK_CACHE_DIR", str(tmp_path / "cache"))
    res = run_export(ExportOptions(demo=True, precision="int8", out=tmp_path / "out", quiet=True))
    meta = json.loads(res.onnx_sidecar.read_text())
    v = meta["verification"]
    assert v["ok"] and v["tolerance"]["min_label_agreement"] >= 0.98 and v["tolerance"]["min_miou_agreement"] >= 0.95
    assert all(c["label_agreement"] >= 0.98 and c["miou_agreement"] >= 0.95 for c in v["cases"])
    d = meta["precision_details"]
    assert d["calibration"].startswith("percentile") and d["calibration_source"] == "synthetic scenes"
    assert "per-channel" in d["weights"] and d["activations"] == "int8 symmetric"
    roles = {layer["role"] for layer in d["float_layers"]}
    assert {"classifier", "semantic scores"} <= roles
    assert meta["tensorrt_check"]["ok"]
    # the node counts are the written int8 graph's (they were the fp32 graph's)
    ex = meta["export"]
    assert ex["op_counts"].get("QuantizeLinear", 0) > 0 and ex["onnx_nodes"] > ex["fp32_onnx_nodes"]


@pytest.mark.slow  # a full int8 export with calibration and verification (~25 CPU-seconds)
def test_failed_gate_writes_nothing_and_says_what_to_try(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMASK_CACHE_DIR", str(tmp_path / "cache"))
    impossible = verify.Tolerance(max_rel_l2=None, min_label_agreement=1.01, min_miou_agreement=None)
    monkeypatch.setitem(verify.TOLERANCES, "int8", impossible)
    out = tmp_path / "out"
    with pytest.raises(ExportError) as exc:
        run_export(ExportOptions(ckpt=SMALL_CKPT, precision="int8", static=(64, 64), calib_count=2, out=out,
                                 quiet=True))
    msg = str(exc.value)
    assert "verification failed" in msg and "nothing was written" in msg
    for hint in ("--calib-images", "--int8-calibration", "--precision fp16", "--no-verify"):
        assert hint in msg, hint
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_failure_advice_counts_the_calibration_images_used(tmp_path):
    """A folder of 3 images with --calib-count 32: the advice says 3 were used, not 'now 32'."""
    from semask_deploy.export.pipeline import _what_to_try

    few = _what_to_try(ExportOptions(ckpt=SMALL_CKPT, precision="int8", calib_images=tmp_path, calib_count=32), 3)
    assert "holds only 3" in few and "now 32" not in few
    enough = _what_to_try(ExportOptions(ckpt=SMALL_CKPT, precision="int8", calib_images=tmp_path, calib_count=4), 4)
    assert "--calib-count, now 4" in enough
