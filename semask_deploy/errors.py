"""Errors a user can cause. CLIs print ``error: <message>`` and exit with status 2."""

from __future__ import annotations


class SemaskError(Exception):
    """Base class for every error caused by user input; the message says what to do."""


class CheckpointError(SemaskError):
    """A checkpoint file is missing, unreadable, unsafe or of another architecture."""


class ConfigError(SemaskError):
    """A model configuration or a command-line option is invalid."""


class ImageError(SemaskError):
    """An image cannot be read or written."""


class DatasetError(SemaskError):
    """A data set directory does not have the expected layout."""


class ExportError(SemaskError):
    """An export, its verification or an engine build failed."""


class RuntimeBackendError(SemaskError):
    """An inference backend is unavailable or does not match the artifact."""


class SemaskWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLIs print it as one ``warning:`` line)."""


class MissingDependencyError(SemaskError):
    """An optional dependency is not installed; the message names the extra."""


def require(module: str, extra: str):
    """Import an optional dependency lazily.

    Args:
        module: module name, e.g. ``"onnxruntime"``.
        extra: the pip extra that provides it, e.g. ``"dev"`` or ``"trt"``.

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: if it is not installed.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on environment
        raise MissingDependencyError(
            f"{module} is not installed ({exc}); install it with: pip install 'semask-deploy[{extra}]'"
        ) from exc


def check_cpu_threads(threads: int, what: str = "threads", zero_means_all: bool = True) -> None:
    """Refuse a CPU thread count above this machine's CPUs (a pool of thousands of threads exhausts memory, and
    more threads than CPUs never helps); every CLI and the runtime say it the same way.

    Raises:
        ConfigError: ``threads`` > the CPU count.
    """
    import os

    cpus = os.cpu_count() or 1
    if threads > cpus:
        raise ConfigError(f"{what}={int(threads)} is more than the {cpus} CPUs of this machine; use 1..{cpus}"
                          + (" (or 0 = all cores)" if zero_means_all else ""))


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt: ``except Exception`` does not swallow it).

    The CLIs turn SIGTERM into this exception while they work, so clean-up runs as for Ctrl-C."""


def interruption(exc: BaseException | None) -> BaseException | None:
    """The Ctrl-C (:class:`KeyboardInterrupt`) or SIGTERM (:class:`Terminated`) behind ``exc``, if any.

    Libraries can replace an interruption by an ordinary exception: torch.export, interrupted while it pops a
    dispatch mode, raises ``AssertionError("Trying to pop empty mode stack")`` with the KeyboardInterrupt as its
    context, and we wrap that in an :class:`ExportError`. Walks ``__cause__`` / ``__context__``.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (KeyboardInterrupt, Terminated)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def raise_if_interrupted(exc: BaseException) -> None:
    """Re-raise the interruption behind ``exc`` (see :func:`interruption`): for ``except Exception`` blocks that
    record a failure and go on, so that Ctrl-C / SIGTERM still stop the program."""
    found = interruption(exc)
    if found is not None:
        raise found
