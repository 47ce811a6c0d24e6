"""``semask-serve`` option errors: one ``error:`` line, exit 2, before any server starts (no PyTriton needed)."""

from __future__ import annotations

import importlib.util

import pytest

from semask_deploy.cli.serve import main


def _err(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    assert "does not exist" in _err(["--model", str(tmp_path / "missing.onnx")], capsys)
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(b"x")
    assert "--backend onnxruntime runs .onnx" in _err(["--model", str(ckpt), "--backend", "onnxruntime"], capsys)
    assert "--max-batch must be at least 1" in _err(["--demo", "--max-batch", "0"], capsys)
    assert "--scale" in _err(["--demo", "--scale", "big"], capsys)


@pytest.mark.skipif(importlib.util.find_spec("pytriton") is not None, reason="PyTriton is installed here")
def test_without_pytriton_the_error_names_the_serve_extra(capsys):
    assert "semask-deploy[serve]" in _err(["--demo", "--http-port", "1"], capsys)


def test_export_fmt_triton_option_errors(tmp_path, capsys):
    from semask_deploy.cli.export import main as export_main

    for extra, what in ((["--batch", "2"], "--max-batch"), (["--preprocess"], "--preprocess")):
        assert export_main(["--demo", "--fmt", "triton", "--out", str(tmp_path), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and what in err
    assert not any(tmp_path.iterdir())  # nothing written
