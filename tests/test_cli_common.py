"""Shared CLI plumbing: SIGTERM becomes a clean exit (clean-up runs), argparse errors are one line."""

from __future__ import annotations

import argparse
import os
import signal
import threading

import pytest

from semask_deploy.cli._common import OneLineParser, main_wrapper

needs_main_thread = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                       reason="signal handlers can only be set from the main thread")


@needs_main_thread
def test_sigterm_runs_the_clean_up_and_exits_143(capsys):
    cleaned = []
    before = signal.getsignal(signal.SIGTERM)

    def run(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # as `timeout` or `kill` would
            signal.pause() if hasattr(signal, "pause") else None
        finally:
            cleaned.append(True)  # e.g. a temporary folder removed

    assert main_wrapper(run, argparse.ArgumentParser(), []) == 143
    assert cleaned == [True]
    assert capsys.readouterr().err.strip() == "error: terminated (SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back


def test_usage_errors_are_one_line(capsys):
    p = OneLineParser(prog="semask-x")
    p.add_argument("--mode", choices=("a", "b"))
    with pytest.raises(SystemExit) as info:
        p.parse_args(["--mode", "c"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: argument --mode: invalid choice") and "semask-x --help" in err[0]


def test_ctrl_c_that_a_library_turned_into_another_error_is_still_an_interruption(capsys, raise_interrupted_export):
    """torch.export, interrupted while it pops a dispatch mode, raises AssertionError("Trying to pop empty mode
    stack") with the KeyboardInterrupt as context, and the exporter wraps that in an ExportError: the CLI must
    say "interrupted" and exit 130, not report an export failure (exit 2)."""
    assert main_wrapper(raise_interrupted_export, argparse.ArgumentParser(), []) == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"


def test_raise_if_interrupted_finds_the_interruption():
    from semask_deploy.errors import Terminated, raise_if_interrupted

    plain = RuntimeError("boom")
    raise_if_interrupted(plain)  # nothing behind it: returns
    for cause in (KeyboardInterrupt(), Terminated()):
        wrapped = RuntimeError("wrapped")
        wrapped.__context__ = cause
        with pytest.raises(type(cause)):
            raise_if_interrupted(wrapped)


def test_a_failed_cpu_allocation_is_one_line(capsys):
    def run(args):  # what torch raises for e.g. --static 99999999x99999999
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 239999995200000024 bytes. Error code 12")

    assert main_wrapper(run, argparse.ArgumentParser(), []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: out of memory")


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EROFS", "EACCES"])
def test_a_failed_write_is_one_line(capsys, errno_name):
    """A full disk or a read-only folder met while writing (onnx.save, shutil.copyfile, a log line) was a
    traceback with exit 1; it is the place, not the program: one error line, exit 2."""
    import errno

    def run(args):
        try:
            raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)), "/out/model.onnx")
        except OSError as exc:
            raise RuntimeError("while saving") from exc  # libraries often wrap it

    assert main_wrapper(run, argparse.ArgumentParser(), []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write /out/model.onnx: ")
    assert ("free some space" in err[0]) == (errno_name == "ENOSPC")


def test_other_bugs_still_show_their_traceback():
    def run(args):
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        main_wrapper(run, argparse.ArgumentParser(), [])


def test_our_warnings_are_one_line(capsys):
    import warnings

    from semask_deploy.errors import SemaskWarning

    def run(args):
        warnings.warn("assumed something", SemaskWarning, stacklevel=2)

    assert main_wrapper(run, argparse.ArgumentParser(), []) == 0
    assert capsys.readouterr().err.strip() == "warning: assumed something"


class _BadLabels:
    """A data set whose samples fail as a bad label map does (picklable: it runs in a worker process)."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        from semask_deploy.errors import DatasetError

        raise DatasetError("label map x.png has class 7, the data has 4 classes")


def test_an_error_in_a_data_loader_worker_is_one_line(capsys):
    """PyTorch re-raises a worker's error with the worker's whole traceback in its text: print our message."""
    from torch.utils.data import DataLoader

    def run(_args):
        list(DataLoader(_BadLabels(), num_workers=1))

    assert main_wrapper(run, OneLineParser(prog="x"), []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: label map x.png has class 7, the data has 4 classes"]


def test_ctrl_c_while_torch_loads_is_a_clean_interruption(tmp_path):
    """The tools load torch inside the Ctrl-C handling (``import semask_deploy`` is lazy): an early Ctrl-C is
    ``error: interrupted`` (130), not a traceback from inside ``import torch``."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    exe = Path(sys.executable).parent / "semask-eval"
    proc = subprocess.Popen([str(exe), "--demo", "--dataset", "synthetic", "--out", str(tmp_path / "r.json")],
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(1.0)  # loading torch and the model: several seconds on this machine
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "error: interrupted"
