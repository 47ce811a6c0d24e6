"""What ``--fmt triton`` / ``triton-trt`` asks of the ONNX export (no export is run: the call is intercepted)."""

from __future__ import annotations

import pytest

from semask_deploy.errors import MissingDependencyError
from semask_deploy.export import pipeline, tensorrt
from semask_deploy.export.pipeline import ExportOptions
from semask_deploy.export.triton import run_export_triton


class _Intercepted(Exception):
    pass


@pytest.mark.parametrize("fmt, gpu, want_fmt, want_winograd", [
    ("triton", False, "onnx", True),   # ONNX Runtime on the CPU: the Winograd graph
    ("triton", True, "onnx", False),   # ONNX Runtime on a GPU: cuDNN's convolutions, plain convs
    ("triton-trt", True, "trt", False),  # (the pipeline never gives a TensorRT graph Winograd anyway)
])
def test_triton_export_options(monkeypatch, tmp_path, fmt, gpu, want_fmt, want_winograd):
    seen = []

    def fake_run_export(o):
        seen.append(o)
        raise _Intercepted

    monkeypatch.setattr(pipeline, "run_export", fake_run_export)
    monkeypatch.setattr(tensorrt, "require_tensorrt", lambda: None)  # as on a machine with TensorRT
    with pytest.raises(_Intercepted):
        run_export_triton(ExportOptions(demo=True, fmt=fmt, out=tmp_path / "repo", quiet=True), gpu=gpu)
    (inner,) = seen
    assert inner.fmt == want_fmt and inner.winograd is want_winograd
    assert inner.with_logits and not inner.output_size and inner.max_batch == 4
    assert not (tmp_path / "repo").exists()  # the work folder is gone again, and the folder it made


def test_triton_trt_without_tensorrt_stops_before_exporting(monkeypatch, tmp_path):
    """The repository needs the engine: no TensorRT means an error at once, not after the ONNX export."""
    def no_tensorrt():
        raise MissingDependencyError("TensorRT is not installed or cannot be loaded (No module named 'tensorrt')")

    monkeypatch.setattr(tensorrt, "require_tensorrt", no_tensorrt)
    monkeypatch.setattr(pipeline, "run_export", lambda o: pytest.fail("exported although no engine can be built"))
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed"):
        run_export_triton(ExportOptions(demo=True, fmt="triton-trt", out=tmp_path / "repo", quiet=True))
    assert not (tmp_path / "repo").exists()


def test_triton_trt_engine_failure_names_no_temporary_files(monkeypatch, tmp_path):
    """TensorRT present but no engine (e.g. no GPU): the message gives the reason, not the deleted ONNX's path."""
    from semask_deploy.errors import ExportError

    def engine_fails(o):
        try:
            raise ExportError("TensorRT 10 could not create a builder — no usable NVIDIA GPU/driver")
        except ExportError as exc:
            raise ExportError(f"no TensorRT engine was built: {exc} — the ONNX and its sidecar were written and are "
                              f"usable: {o.out}/model.onnx") from exc

    monkeypatch.setattr(tensorrt, "require_tensorrt", lambda: None)
    monkeypatch.setattr(pipeline, "run_export", engine_fails)
    with pytest.raises(ExportError) as info:
        run_export_triton(ExportOptions(demo=True, fmt="triton-trt", out=tmp_path / "repo", quiet=True))
    msg = str(info.value)
    assert msg.startswith("no TensorRT engine was built: TensorRT 10 could not create a builder")
    assert "nothing was written" in msg and ".tmp" not in msg and "sidecar were written" not in msg
    assert not (tmp_path / "repo").exists()


def test_an_existing_repository_is_refused_before_exporting(monkeypatch, tmp_path):
    """Found before the export (minutes for a full-size model), not when the repository is written after it."""
    from semask_deploy.errors import ConfigError

    repo = tmp_path / "repo"
    (repo / "semask_demo_fp32_post").mkdir(parents=True)
    monkeypatch.setattr(pipeline, "run_export", lambda o: pytest.fail("exported although the repository exists"))
    with pytest.raises(ConfigError, match="semask_demo_fp32_post already exist.*--force"):
        run_export_triton(ExportOptions(demo=True, fmt="triton", out=repo, quiet=True))
    with pytest.raises(ConfigError, match="custom_post already exist"):
        (repo / "custom_post").mkdir()
        run_export_triton(ExportOptions(demo=True, fmt="triton", out=repo, name="custom", quiet=True))
    assert sorted(p.name for p in repo.iterdir()) == ["custom_post", "semask_demo_fp32_post"]  # no work folder left


def test_out_that_is_or_lies_under_a_file(monkeypatch, tmp_path):
    from semask_deploy.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setattr(pipeline, "run_export", lambda o: pytest.fail("exported into an impossible folder"))
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        run_export_triton(ExportOptions(demo=True, fmt="triton", out=blocker, quiet=True))
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        run_export_triton(ExportOptions(demo=True, fmt="triton", out=blocker / "repo", quiet=True))


def test_a_repository_is_replaced_whole_or_not_at_all(monkeypatch, tmp_path):
    """--force replaces the four model folders by renames at the end: a failure (or Ctrl-C) while the new ones
    are written leaves the old repository as it was, and nothing of the staging folder behind."""
    from semask_deploy.serving import triton_repo
    from semask_deploy.serving.triton_repo import RepoSpec, write_repository

    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"first")
    repo = tmp_path / "repo"
    spec = RepoSpec("net", "onnx", 19)
    written = write_repository(repo, spec, artifact)
    assert sorted(p.name for p in repo.iterdir()) == ["net", "net_ensemble", "net_post", "net_pre"]
    assert all(p.is_file() and repo in p.parents for p in written)
    assert (repo / "net" / "1" / "model.onnx").read_bytes() == b"first"
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}

    artifact.write_bytes(b"second")
    monkeypatch.setattr(triton_repo, "ensemble_config", lambda s: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # the last file of the new repository is never written
        write_repository(repo, spec, artifact, force=True)
    after = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in repo.iterdir()) == ["net", "net_ensemble", "net_post", "net_pre"]

    monkeypatch.undo()
    write_repository(repo, spec, artifact, force=True)
    assert (repo / "net" / "1" / "model.onnx").read_bytes() == b"second"
    assert sorted(p.name for p in repo.iterdir()) == ["net", "net_ensemble", "net_post", "net_pre"]
