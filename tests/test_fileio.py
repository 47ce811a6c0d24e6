"""Atomic writes: the final name appears only when the write succeeded, with normal permissions."""

from __future__ import annotations

import os
import stat

import pytest

from semask_deploy.fileio import atomic_path, write_json_atomic


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_success_renames_with_umask_permissions(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~mask


def test_folders_a_failed_run_created_are_removed_when_empty(tmp_path):
    from semask_deploy.fileio import folders_removed_on_failure

    out, inner, kept = tmp_path / "out", tmp_path / "out" / "artifacts", tmp_path / "had"
    kept.mkdir()
    with pytest.raises(KeyboardInterrupt):
        with folders_removed_on_failure(out, inner, kept):
            inner.mkdir(parents=True)
            raise KeyboardInterrupt
    assert not out.exists() and kept.is_dir()  # created ones gone (deepest first), an existing one stays
    with pytest.raises(RuntimeError):
        with folders_removed_on_failure(out, inner):
            inner.mkdir(parents=True)
            (inner / "model.onnx").write_bytes(b"x")
            raise RuntimeError("late failure")
    assert (inner / "model.onnx").is_file()  # a folder with a file in it is kept
    with folders_removed_on_failure(tmp_path / "ok"):
        (tmp_path / "ok").mkdir()
    assert (tmp_path / "ok").is_dir()  # success: nothing removed
