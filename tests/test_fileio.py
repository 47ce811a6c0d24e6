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


def test_an_output_folder_that_is_a_dangling_link_is_refused_by_name(tmp_path):
    """semask-train crashed with FileExistsError, semask-infer said 'File exists' without naming the link."""
    from semask_deploy.errors import ConfigError
    from semask_deploy.fileio import check_output_folder

    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError, match=r"--out .*out is a symbolic link to .*gone, which does not exist"):
        check_output_folder(link)
    (tmp_path / "gone").mkdir()
    check_output_folder(link)


def test_temporaries_of_killed_runs_are_removed_and_others_kept(tmp_path):
    """A SIGKILLed or OOM-killed run leaves its hidden work folder / .latest.….tmp.pth behind (gigabytes for a
    large export); the next run in the same folder removes those of dead processes of this machine only."""
    import subprocess
    import sys

    from semask_deploy.fileio import atomic_path, check_output_folder, make_work_folder, temp_prefix

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ours = temp_prefix("latest")
    host, pid = ours.split(".")[2].split("-")[1:]
    stale_file = tmp_path / f".latest.semask-{host}-{dead.pid}.abc123.tmp.pth"
    stale_file.write_bytes(b"partial")
    stale_dir = tmp_path / f".model_fp32.semask-{host}-{dead.pid}.x1y2.tmp"
    (stale_dir / "sub").mkdir(parents=True)
    other_host = tmp_path / f".latest.semask-ffffff-{dead.pid}.abc123.tmp.pth"
    other_host.write_bytes(b"another machine's")
    alive = make_work_folder(tmp_path, "model_fp32")  # this process: running
    foreign = tmp_path / ".something.tmp"
    foreign.write_bytes(b"not ours")
    check_output_folder(tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([other_host.name, alive.name, foreign.name])
    with atomic_path(tmp_path / "x.pth") as tmp:  # our own temporary names follow the pattern
        assert tmp.name.startswith(f".x.semask-{host}-{pid}.") and ".tmp" in tmp.name
        tmp.write_bytes(b"x")
