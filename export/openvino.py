"""ONNX → OpenVINO IR (``semask-export --fmt openvino``): ``<name>_ov.xml`` + ``<name>_ov.bin`` + ``<name>_ov.json``.

The IR is the verified ONNX, with the labels head OpenVINO runs fast (max-reduce argmax, NCHW resize:
the same labels), read by OpenVINO and saved with its weights in the ONNX's precision
(``compress_to_fp16=False``: OpenVINO's default would silently store fp32 weights as fp16). Int8 Q/DQ exports keep their FakeQuantize nodes, which OpenVINO's CPU plugin runs as int8.
After saving, the IR is compiled at an explicit f32 hint and run once against the ONNX in ONNX
Runtime on the same input; the result and what OpenVINO reports it ran are recorded in the sidecar.
Files are written in a temporary folder and renamed into place (the ``.bin`` before the ``.xml``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from semask_deploy.errors import ExportError, require
from semask_deploy.fileio import free_space_text, temp_prefix


def ir_paths(out: Path, base: str) -> tuple[Path, Path]:
    """(``<out>/<base>_ov.xml``, ``<out>/<base>_ov.bin``)."""
    return out / f"{base}_ov.xml", out / f"{base}_ov.bin"


def convert_to_ir(onnx_path: Path, xml_path: Path, check_input: np.ndarray | None = None,
                  min_label_agreement: float = 0.999) -> dict[str, Any]:
    """Convert ``onnx_path`` to an IR at ``xml_path`` (and its ``.bin``); optionally check it once.

    Args:
        onnx_path: the exported (verified) ONNX.
        xml_path: destination ``.xml``; the ``.bin`` goes beside it.
        check_input: a graph input (e.g. float32 (1, 3, H, W)) to compare the IR (OpenVINO, f32 hint) with
            the ONNX (ONNX Runtime) on.
        min_label_agreement: the check's gate (int8 IRs run other int8 kernels than ONNX Runtime: use the
            int8 verification tolerance for them).

    Returns:
        ``{"openvino_version", "ran", "check": {...}}`` for the sidecar.

    Raises:
        ExportError: conversion failed or the IR disagrees with the ONNX.
    """
    ov = require("openvino", "openvino")
    from semask_deploy.runtime.openvino_backend import _model_source, compile_model, error_text, shared_core

    xml_path = Path(xml_path)
    work = Path(tempfile.mkdtemp(prefix=temp_prefix(xml_path.stem), suffix=".tmp", dir=xml_path.parent))
    try:
        try:
            # the ONNX with OpenVINO's fast labels head (max-reduce argmax, NCHW resize): the same labels
            model = shared_core().read_model(_model_source(Path(onnx_path)))
            ov.save_model(model, str(work / xml_path.name), compress_to_fp16=False)
        except Exception as exc:  # noqa: BLE001
            text = error_text(exc)
            if "iostream error" in text or "Can't open" in text:  # how OpenVINO reports a failed write of the IR
                text += f" (writing the IR in {xml_path.parent} failed: {free_space_text(xml_path.parent)} there)"
            raise ExportError(f"OpenVINO could not convert {Path(onnx_path).name}: {text}") from exc
        tmp_xml = work / xml_path.name
        info: dict[str, Any] = {"openvino_version": ov.get_version().split("-")[0]}
        compiled, ran = compile_model(tmp_xml, precision="fp32")
        info["ran"] = ran
        if check_input is not None:
            info["check"] = _check(compiled, onnx_path, check_input, min_label_agreement)
        os.replace(tmp_xml.with_suffix(".bin"), xml_path.with_suffix(".bin"))
        os.replace(tmp_xml, xml_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return info


def _check(compiled: Any, onnx_path: Path, x: np.ndarray, min_agree: float) -> dict[str, Any]:
    from semask_deploy.export.verify import make_session

    session = make_session(onnx_path)
    from semask_deploy.runtime.artifact import OUTPUT_SIZE, output_size_feed
    from semask_deploy.runtime.openvino_backend import _output_name

    names = [o.name for o in session.get_outputs()]
    image = next(i.name for i in session.get_inputs() if i.name != OUTPUT_SIZE)
    feed = {image: x}
    if any(i.name == OUTPUT_SIZE for i in session.get_inputs()):  # labels at the input size
        feed[OUTPUT_SIZE] = output_size_feed(x, None, nhwc=x.dtype == np.uint8)
    ref = dict(zip(names, session.run(None, feed)))
    got = {_output_name(k): np.asarray(v) for k, v in compiled.create_infer_request().infer(feed).items()}
    agree = float((got["labels"] == ref["labels"]).mean())
    check: dict[str, Any] = {"input_shape": list(x.shape), "reference": "the same ONNX in ONNX Runtime (CPU)",
                             "label_agreement": agree}
    if "logits" in ref and "logits" in got:
        d = got["logits"].astype(np.float64) - ref["logits"].astype(np.float64)
        check["rel_l2"] = float(np.linalg.norm(d) / max(np.linalg.norm(ref["logits"].astype(np.float64)), 1e-30))
    if agree < min_agree:
        raise ExportError(f"the OpenVINO IR disagrees with the ONNX it came from ({agree * 100:.2f} % equal labels, "
                          f"< {min_agree * 100:g} %); report this with your OpenVINO version, or use --fmt onnx")
    return check
