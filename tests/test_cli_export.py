"""``semask-export``: end to end (in-process ``main`` and a real subprocess) and every bad-input case.

Each bad input prints exactly one ``error: …`` line, exits 2, shows no traceback and leaves no file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from semask_deploy.cli.export import main  # noqa: E402
from semask_deploy.data.io import write_png  # noqa: E402
from semask_deploy.data.synthetic import SyntheticScenes  # noqa: E402

SMALL = Path(__file__).parent / "data" / "semask_small_synthetic8.pth"
EXE = Path(sys.executable).parent / "semask-export"


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def calib_dir(tmp_path):
    d = tmp_path / "calib"
    scenes = SyntheticScenes(8, size=(80, 100), seed=21, length=4)
    for i in range(4):
        write_png(d / f"img_{i}.png", scenes[i][0])
    return d


@pytest.mark.slow  # a full export + int8 calibration + verification
def test_main_int8_end_to_end(tmp_path, calib_dir, monkeypatch, capsys):
    monkeypatch.setenv("SEMASK_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    argv = ["--ckpt", str(SMALL), "--precision", "int8", "--calib-images", str(calib_dir), "--calib-count", "4",
            "--static", "64x96", "--with-logits", "--out", str(out), "--name", "small_q"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "[1/5]" in err and "verifying" in err and "wrote" in err
    assert sorted(p.name for p in _files(out)) == ["small_q.json", "small_q.onnx"]
    meta = json.loads((out / "small_q.json").read_text())
    assert meta["precision"] == "int8" and meta["verification"]["ok"]
    assert meta["precision_details"]["calibration_samples"] == 4
    assert meta["precision_details"]["calibration_source"] == "calib-images"
    assert meta["tensorrt_check"]["ok"]
    assert meta["verification"]["inputs"].startswith("--calib-images")
    # an existing artifact is not overwritten without --force (checked before any work)
    before = (out / "small_q.onnx").read_bytes()
    assert main(argv + ["--quiet"]) == 2
    msg = _one_error(capsys)
    assert "already exist" in msg and "--force" in msg
    assert (out / "small_q.onnx").read_bytes() == before


@pytest.mark.slow
@pytest.mark.skipif(_has_tensorrt(), reason="checks the behaviour without TensorRT")
def test_subprocess_fmt_all_without_tensorrt_keeps_the_onnx(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([str(EXE), "--ckpt", str(SMALL), "--fmt", "all", "--precision", "fp16",
                           "--static", "64x64", "--out", str(out)], check=False, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "TensorRT" in last and "pip install" in last
    assert "semask_small_synthetic8_fp16.onnx" in last  # says the ONNX was written
    names = sorted(p.name for p in _files(out))
    assert names == ["semask_small_synthetic8_fp16.json", "semask_small_synthetic8_fp16.onnx"]
    meta = json.loads((out / "semask_small_synthetic8_fp16.json").read_text())
    assert meta["precision"] == "fp16" and meta["verification"]["ok"] and meta["tensorrt_check"]["ok"]
    assert meta["export"]["winograd"] is False  # Winograd 3×3 convs are for the fp32 ONNX Runtime graph only


def _bad(args: list[str], tmp_path: Path, capsys) -> str:
    out = tmp_path / "out"
    assert main(args + ["--out", str(out)]) == 2
    msg = _one_error(capsys)
    assert _files(out) == []
    return msg


def test_missing_checkpoint(tmp_path, capsys):
    assert "not found" in _bad(["--ckpt", str(tmp_path / "nope.pth")], tmp_path, capsys)


def test_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 definitely not a checkpoint" * 10)
    msg = _bad(["--ckpt", str(bad)], tmp_path, capsys)
    assert "bad.pth" in msg


@pytest.mark.parametrize("flags, text", [
    (["--static", "abc"], "--static must look like HxW"),
    (["--static", "0x64"], "--static must be two positive integers"),
    (["--opt-shape", "512x"], "--opt-shape must look like HxW"),
    (["--static", "16x16"], "at least 32 pixels"),
    (["--min-shape", "512x512", "--opt-shape", "256x256"], "min <= opt <= max"),
    (["--opt-shape", "512x512", "--max-shape", "256x1024"], "min <= opt <= max"),
    (["--static", "64x64", "--opt-shape", "64x64"], "cannot be combined"),
    (["--batch", "2", "--max-batch", "4"], "exclude each other"),
    (["--batch", "0"], "at least 1"),
    (["--opset", "12"], "--opset must be between 18 and 21"),
    (["--fmt", "openvino", "--precision", "fp16"], "--fmt openvino takes --precision fp32 or int8"),
    (["--calib-count", "0", "--precision", "int8"], "--calib-count"),
    (["--calib-count", "5"], "--calib-count only apply to --precision int8 (this export is fp32)"),
    (["--precision", "fp16", "--int8-calibration", "entropy", "--int8-activations", "u8"],
     "--int8-calibration, --int8-activations only apply to --precision int8"),
    (["--fmt", "trt", "--precision", "int8", "--int8-activations", "u8"], "symmetric"),
    (["--timing-cache", "x.cache"], "--timing-cache is only used"),
    (["--timing-cache", "x.cache", "--fmt", "openvino"], "--timing-cache is only used"),  # was silently ignored
    (["--name", "../escape"], "--name must be a plain file name"),
    (["--fmt", "trt", "--workspace-gb", "0"], "--workspace-gb must be a positive"),
    (["--triton-gpu"], "--triton-gpu applies only to --fmt triton"),
    (["--fmt", "triton-trt", "--triton-python-runtime"], "--triton-python-runtime runs the ONNX"),
])
def test_bad_options(tmp_path, capsys, flags, text):
    msg = _bad(["--ckpt", str(SMALL)] + flags, tmp_path, capsys)
    assert text in msg, msg


def test_usage_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--ckpt", str(SMALL), "--precision", "int4", "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    assert "invalid choice: 'int4'" in _one_error(capsys)  # argparse's own errors too: no usage dump
    with pytest.raises(SystemExit) as info:  # `--out "$UNSET"` wrote into the current folder
        main(["--ckpt", str(SMALL), "--out", ""])
    assert info.value.code == 2
    assert "--out is empty" in _one_error(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_failed_export_leaves_no_folder(tmp_path, capsys):
    """The folder an export made is removed again when the export fails (here: AOTInductor for CUDA, no GPU)."""
    out = tmp_path / "new" / "out"
    assert main(["--ckpt", str(SMALL), "--fmt", "aoti", "--device", "cuda", "--out", str(out), "--quiet"]) == 2
    assert "CUDA" in _one_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["onnx", "aoti", "triton"])
def test_out_under_a_file_is_one_line_error(tmp_path, capsys, fmt):
    """--out below a regular file used to end in a NotADirectoryError traceback from mkdir."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["--ckpt", str(SMALL), "--fmt", fmt, "--static", "64x64", "--out", str(blocker / "out")]) == 2
    msg = _one_error(capsys)
    assert "is a file, not a folder" in msg and "file" in msg
    assert blocker.read_text() == "x"


def test_out_the_os_refuses_is_one_line_error(tmp_path, capsys, monkeypatch):
    """mkdir refused by the OS (read-only or special file system, permissions): an error line, not a traceback."""
    from pathlib import Path as _Path

    real = _Path.mkdir

    def refuse(self, *a, **k):
        if self.name == "refused":
            raise PermissionError(1, "Operation not permitted", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(_Path, "mkdir", refuse)
    assert main(["--ckpt", str(SMALL), "--static", "64x64", "--out", str(tmp_path / "refused")]) == 2
    assert "cannot create the --out folder" in _one_error(capsys)


def test_unreadable_calibration_folder(tmp_path, capsys):
    msg = _bad(["--ckpt", str(SMALL), "--precision", "int8", "--calib-images", str(tmp_path / "missing")],
               tmp_path, capsys)
    assert "--calib-images" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = _bad(["--ckpt", str(SMALL), "--precision", "int8", "--calib-images", str(empty)], tmp_path, capsys)
    assert "no images" in msg
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "x.png").write_bytes(b"not a png")
    msg = _bad(["--ckpt", str(SMALL), "--precision", "int8", "--calib-images", str(corrupt)], tmp_path, capsys)
    assert "cannot decode" in msg


def test_demo_without_builtin_model_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from semask_deploy import assets

    monkeypatch.setattr(assets, "DEMO_CHECKPOINT", tmp_path / "missing_demo.pth")
    msg = _bad(["--demo"], tmp_path, capsys)
    assert "demo model is missing" in msg


def test_check_trt(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    def model(op: str, **attrs):
        node = helper.make_node(op, ["x"], ["y"], **attrs)
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])

    ok = tmp_path / "ok.onnx"
    onnx.save(model("Relu"), str(ok))
    assert main(["--check-trt", str(ok)]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.onnx"
    onnx.save(model("Bernoulli"), str(bad))
    assert main(["--check-trt", str(bad)]) == 2
    msg = _one_error(capsys)
    assert "Bernoulli" in msg
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert main(["--check-trt", str(text)]) == 2
    assert "notes.txt" in _one_error(capsys)
    assert main(["--check-trt", str(tmp_path / "missing.onnx")]) == 2
    assert "not found" in _one_error(capsys)
    empty = tmp_path / "empty.onnx"  # parses as an empty ModelProto: not "0 nodes — OK"
    empty.write_bytes(b"")
    assert main(["--check-trt", str(empty)]) == 2
    assert "not an ONNX model" in _one_error(capsys)


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--ckpt", "--fmt", "--precision", "--calib-images", "--static", "--min-shape", "--max-batch",
                 "--with-logits", "--no-winograd", "--preprocess", "--timing-cache", "--force", "--no-verify", "--opset", "--check-trt"):
        assert flag in out
    assert np.all([s in out for s in ("fp16", "int8")])


@pytest.mark.slow  # two exports
def test_force_warns_about_an_engine_of_the_replaced_onnx(tmp_path, capsys):
    """--fmt onnx --force replaces the ONNX; an engine built from the old one stays (the user's file) but is named."""
    out = tmp_path / "out"
    argv = ["--ckpt", str(SMALL), "--static", "64x64", "--no-verify", "--out", str(out), "--name", "m", "--quiet"]
    assert main(argv) == 0
    assert "warning" not in capsys.readouterr().err
    (out / "m_trt.engine").write_bytes(b"an engine of the first ONNX")
    assert main(argv + ["--force"]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "m_trt.engine" in warning[0] and "no longer match" in warning[0], warning
    assert (out / "m_trt.engine").read_bytes() == b"an engine of the first ONNX"


@pytest.mark.slow  # one export
@pytest.mark.parametrize("failure", [KeyboardInterrupt, "agreement"])
def test_openvino_step_failing_takes_back_its_onnx(tmp_path, capsys, monkeypatch, failure):
    """Ctrl-C (or a failed IR check) while the ONNX becomes an IR: the ONNX written just before goes too, so the
    same command can be run again instead of being refused for an existing file."""
    pytest.importorskip("openvino")
    from semask_deploy.errors import ExportError
    from semask_deploy.export import pipeline

    def fail(*args, **kwargs):
        raise KeyboardInterrupt if failure is KeyboardInterrupt else ExportError("the OpenVINO IR disagrees")

    monkeypatch.setattr(pipeline, "_write_ir", fail)
    out = tmp_path / "out"
    argv = ["--ckpt", str(SMALL), "--fmt", "openvino", "--static", "64x64", "--no-verify", "--out", str(out),
            "--name", "m", "--quiet"]
    assert main(argv) == (130 if failure is KeyboardInterrupt else 2)
    assert _files(out) == []
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow  # two exports
def test_openvino_force_reexport_failing_keeps_the_previous_artifacts(tmp_path, capsys, monkeypatch):
    """`--fmt openvino --force` interrupted in the IR step: the new ONNX had already replaced the old one and was
    then deleted, leaving an IR whose sidecar named a missing ONNX. Now the previous five files stay as they were."""
    pytest.importorskip("openvino")
    from semask_deploy.export import pipeline

    out = tmp_path / "out"
    argv = ["--ckpt", str(SMALL), "--fmt", "openvino", "--static", "64x64", "--no-verify", "--out", str(out),
            "--name", "m", "--quiet"]
    assert main(argv) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["m.json", "m.onnx", "m_ov.bin", "m_ov.json", "m_ov.xml"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_write_ir", interrupted)
    assert main(argv[:5] + ["96x96"] + argv[6:] + ["--force"]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing replaced, no temporary left


def test_artifact_name_that_is_a_folder_is_refused_before_the_export(tmp_path, capsys):
    """out/<name>.onnx a folder: with --force the export once ran for minutes, then failed in os.replace with a
    traceback."""
    out = tmp_path / "out"
    (out / "x.onnx").mkdir(parents=True)
    for force in ([], ["--force"]):
        assert main(["--demo", "--out", str(out), "--name", "x", "--quiet"] + force) == 2
        msg = _one_error(capsys)
        assert "x.onnx exist(s) as a folder" in msg and "Traceback" not in msg
    assert sorted(p.name for p in out.iterdir()) == ["x.onnx"]
