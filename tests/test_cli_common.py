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
