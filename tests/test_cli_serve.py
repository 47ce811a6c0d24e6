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
    assert "is a folder, not a model file" in _err(["--model", str(tmp_path)], capsys)
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(b"x")
    assert "--backend onnxruntime runs .onnx" in _err(["--model", str(ckpt), "--backend", "onnxruntime"], capsys)
    assert "--max-batch must be at least 1" in _err(["--demo", "--max-batch", "0"], capsys)
    assert "--scale" in _err(["--demo", "--scale", "big"], capsys)


@pytest.mark.parametrize("flags, text", [
    (["--http-port", "99999"], "--http-port must be a TCP port between 1 and 65535"),
    (["--metrics-port", "0"], "--metrics-port must be a TCP port"),
    (["--grpc-port", "8000"], "three different ports"),  # the default --http-port
    (["--exit-timeout", "-1"], "--exit-timeout must be >= 0"),
    (["--name", "../escape"], "--name must be a plain model name"),
])
def test_server_options_are_checked_before_the_server_starts(capsys, flags, text):
    """Found before PyTriton is needed, instead of a failure inside tritonserver (or not at all)."""
    assert text in _err(["--demo", *flags], capsys)


def test_a_port_in_use_or_a_foreign_host_fails_at_once():
    """tritonserver died in the background and PyTriton waited ~2 min (or reached the other server on the port)."""
    import socket

    from semask_deploy.errors import ConfigError
    from semask_deploy.serving.server import check_port_free

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--grpc-port {port} on 127.0.0.1 is already in use"):
            check_port_free("127.0.0.1", port, "--grpc-port")
    check_port_free("127.0.0.1", port, "--grpc-port")  # free again
    with pytest.raises(ConfigError, match="--host 999.1.1.1 is not an address"):
        check_port_free("999.1.1.1", port, "--http-port")


@pytest.mark.skipif(importlib.util.find_spec("pytriton") is not None, reason="PyTriton is installed here")
def test_without_pytriton_the_error_names_the_serve_extra(capsys):
    import socket

    ports = []
    for _ in range(3):  # ports that are free (the options' checks bind them, as tritonserver would)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(str(s.getsockname()[1]))
    flags = ["--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]]
    assert "semask-deploy[serve]" in _err(["--demo", "--host", "127.0.0.1", *flags], capsys)


def test_export_fmt_triton_option_errors(tmp_path, capsys):
    from semask_deploy.cli.export import main as export_main

    for extra, what in ((["--batch", "2"], "--max-batch"), (["--preprocess"], "--preprocess")):
        assert export_main(["--demo", "--fmt", "triton", "--out", str(tmp_path), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and what in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_the_backend_option_reaches_the_segmenter(tmp_path):
    """--backend was only checked against the file suffix and never passed on: --backend openvino on an .onnx
    served it with ONNX Runtime, and openvino/aoti were not even choices (the README names .xml models)."""
    pytest.importorskip("openvino")
    from semask_deploy.cli.serve import build_parser
    from semask_deploy.export.pipeline import ExportOptions, run_export
    from semask_deploy.serving.server import ServeOptions, build_segmenter

    assert build_parser().parse_args(["--model", "m.xml", "--backend", "openvino"]).backend == "openvino"
    res = run_export(ExportOptions(demo=True, out=tmp_path, static=(64, 64), quiet=True, verify=False))
    o = ServeOptions(model=res.onnx_path, backend="openvino", http_port=18100, grpc_port=18101, metrics_port=18102,
                     host="127.0.0.1")
    assert build_segmenter(o).backend.kind == "openvino"
    assert build_segmenter(ServeOptions(model=res.onnx_path, http_port=18100, grpc_port=18101, metrics_port=18102,
                                        host="127.0.0.1")).backend.kind == "onnxruntime"
