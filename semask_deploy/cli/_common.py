"""Shared CLI plumbing: error handling (``error: …`` + exit 2), size parsing, progress bars."""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from ..errors import ConfigError, SemaskError, SemaskWarning, Terminated, interruption
from ..fileio import write_failure_text


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors print one line, ``error: …``, and exit 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parse_hw(text: str, what: str = "size", form: str = "HxW", example: str = "512x512") -> tuple[int, int]:
    """``"512x1024"`` → (512, 1024); ``"512"`` → (512, 512). ``form``/``example`` name the pair in errors."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{what} must look like {form} (e.g. {example}), got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise ConfigError(f"{what} must be two positive integers {form}, got {text!r}")
    return values[0], values[1]


def hw_type(what: str, form: str = "HxW", example: str = "512x512") -> Callable[[str], tuple[int, int]]:
    """An argparse ``type=`` that turns ConfigError into a usage error."""

    def convert(text: str) -> tuple[int, int]:
        try:
            return parse_hw(text, what, form, example)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def out_path(text: str) -> Path:
    """An argparse ``type=`` for ``--out``: an empty value (an unset shell variable, ``--out "$DIR"``) would
    otherwise mean the current folder, silently."""
    if not text.strip():
        raise argparse.ArgumentTypeError("--out is empty (an unset variable?): give a path, or leave --out out "
                                         "for the default")
    return Path(text)


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main_wrapper(run: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
                 argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, call ``run``; user errors print ``error: …`` and exit 2, Ctrl-C exits 130, SIGTERM 143.

    SIGTERM (``kill``, ``timeout``, a job scheduler) is turned into an exception while ``run`` works, so its
    clean-up (temporary files and folders) runs as it does for Ctrl-C, instead of the process dying mid-write.
    """
    args = parser.parse_args(argv)
    installed, previous = _raise_on_sigterm()
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warning(shown)
    try:
        code = run(args)
    except KeyboardInterrupt:
        return _interrupted(130)
    except Terminated:
        return _interrupted(143)
    except MemoryError:
        return _out_of_memory()
    except Exception as exc:
        # a library may turn Ctrl-C / SIGTERM into another exception (torch.export: "Trying to pop empty mode
        # stack", which our exporter wraps in an ExportError): still an interruption, not a failure to report
        found = interruption(exc)
        if found is not None:
            return _interrupted(130 if isinstance(found, KeyboardInterrupt) else 143)
        if isinstance(exc, SemaskError):
            print(f"error: {worker_error_text(str(exc))}", file=sys.stderr)
            return 2
        if is_allocation_failure(exc):
            return _out_of_memory()
        failed_write = write_failure_text(exc)
        if failed_write is not None:  # a full disk, a read-only mount: the place, not the program
            print(f"error: {failed_write}", file=sys.stderr)
            return 2
        raise
    finally:
        warnings.showwarning = shown
        if installed:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return int(code or 0)


def worker_error_text(text: str) -> str:
    """Our own message of an error raised in a DataLoader worker process.

    PyTorch re-raises it in the main process as the same exception type, but with the text ``Caught X in
    DataLoader worker process 0. Original Traceback (most recent call last): …`` — the worker's whole
    traceback; its last line is ``module.X: <our message>``.
    """
    if "\nOriginal Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    return last.split(": ", 1)[1] if ": " in last else last


def _one_line_warning(fallback: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` that prints our own warnings as one ``warning: …`` line (others as Python does)."""

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if issubclass(category, SemaskWarning):
            print(f"warning: {message}", file=file or sys.stderr)
        else:
            fallback(message, category, filename, lineno, file, line)

    return show


def _interrupted(code: int) -> int:
    print("error: interrupted" if code == 130 else "error: terminated (SIGTERM)", file=sys.stderr)
    return code


def _out_of_memory() -> int:
    print("error: out of memory; use smaller inputs (a smaller size or batch) or a machine with more memory",
          file=sys.stderr)
    return 2


def is_allocation_failure(exc: BaseException) -> bool:
    """torch reports a failed CPU allocation as a RuntimeError (CUDA: torch.OutOfMemoryError, a RuntimeError);
    OpenCV as ``cv2.error`` "Insufficient memory" (e.g. resizing an image to an enormous ``--scale``)."""
    text = str(exc)
    if type(exc).__module__.split(".")[0] == "cv2" and "Insufficient memory" in text:
        return True
    if not isinstance(exc, RuntimeError):
        return False
    return type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in text or "out of memory" in text


def _raise_on_sigterm() -> tuple[bool, Any]:
    """Make SIGTERM raise :class:`Terminated`; returns (installed, the previous handler)."""
    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    try:
        return True, signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding application): leave its signals alone
        return False, None


def progress(iterable, *, total: int | None = None, desc: str = "", disable: bool = False):
    """A tqdm progress bar on stderr (disabled when not wanted)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=disable, unit="img", dynamic_ncols=True, file=sys.stderr)
