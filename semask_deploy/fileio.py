"""Atomic file writes: every file we produce is written to a temp name and renamed.

A crash or an error half-way never leaves a truncated artifact under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import ConfigError


@functools.lru_cache(maxsize=1)
def _host_hash() -> str:
    """A short hash of the host name (once per process: every temporary file name carries it)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _owner_tag() -> str:
    """``semask-<host>-<pid>``: which process owns a temporary file or folder (the host hash, so that a folder
    shared between machines is not swept by the wrong one)."""
    return f"semask-{_host_hash()}-{os.getpid()}"


#: our temporary names: ``.<name>.semask-<host>-<pid>.<random>.tmp[<suffix>]``
_TEMP_NAME = re.compile(r"^\..*\.semask-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)\.[^.]*\.tmp")


def temp_prefix(stem: str) -> str:
    """The prefix of a temporary file or folder for ``stem`` (see :func:`remove_stale_temporaries`)."""
    return f".{stem}.{_owner_tag()}."


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders that processes of this machine which no longer run left in
    ``folder`` (a run killed with SIGKILL or by the out-of-memory killer cannot clean up; an export's work
    folder can hold gigabytes). Those of running processes, of other machines and anything not named by
    :func:`temp_prefix` are kept. Returns what was removed."""
    host = _host_hash()
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if m is None or m["host"] != host or _process_alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file keeps the final suffix (``x.tmp123.png``) so libraries that pick a format by
    extension (OpenCV, ONNX) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.stem), suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and atomically rename the result onto ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)


def check_output_folder(path: str | os.PathLike, flag: str = "--out") -> None:
    """Fail early (before any work) unless ``path`` is a folder we can write in, or one we can create. An
    existing folder is also cleared of the temporaries killed runs left (:func:`remove_stale_temporaries`).

    Raises:
        ConfigError: ``path`` is a file, lies under a file, or its nearest existing folder is not writable.
    """
    path = Path(path)
    _refuse_dangling_link(path, flag)
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{flag} {path} exists and is not a folder")
        remove_stale_temporaries(path)  # what killed runs of ours left there
        base = path
    else:
        base = _nearest_existing(path)
        if not base.is_dir():
            raise ConfigError(f"{flag} {path} cannot be created: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path} cannot be written: no write permission in {base}")
    try:  # a real write: os.access says yes to root on a read-only mount or /proc
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path} cannot be written: the folder {base} is not writable "
                          f"({exc.strerror or exc})") from None


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> None:
    """Fail early unless ``path`` can be written as a file: not a folder, and the nearest existing folder
    above it takes a real write (``os.access`` says yes to root on a read-only mount or /proc).

    Raises:
        ConfigError: it cannot.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a .json file name")
    _refuse_dangling_link(path.parent, flag)
    parent = _nearest_existing(path)
    if not parent.is_dir():
        raise ConfigError(f"cannot write {flag} {path}: {parent} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write {flag} {path}: the folder {parent} is not writable "
                          f"({exc.strerror or exc})") from None


def _refuse_dangling_link(path: Path, flag: str) -> None:
    """A symbolic link whose target does not exist cannot be written through or created: say so."""
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{flag} {path} is a symbolic link to {os.readlink(path)}, which does not exist; create "
                          "the target folder or give another path")


def _nearest_existing(path: Path) -> Path:
    """The first of ``path``'s parents that exists (the folder a write below it would start from)."""
    return next((p for p in path.absolute().parents if p.exists()), Path("/"))


def make_output_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``mkdir -p path``, with an OS refusal (read-only file system, a file in the way, …) as a ConfigError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the {flag} folder {path}: {exc.strerror or exc}") from None
    return path


def make_work_folder(out: str | os.PathLike, stem: str, flag: str = "--out") -> Path:
    """Create ``out`` (see :func:`make_output_folder`) and a fresh hidden temporary folder for ``stem`` inside it
    (named by :func:`temp_prefix`)."""
    out = make_output_folder(out, flag)
    try:
        return Path(tempfile.mkdtemp(prefix=temp_prefix(stem), suffix=".tmp", dir=out))
    except OSError as exc:
        raise ConfigError(f"cannot write in the {flag} folder {out}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def folders_removed_on_failure(*folders: str | os.PathLike) -> Iterator[None]:
    """On failure (an error, Ctrl-C, SIGTERM), remove each of ``folders`` that did not exist before and is
    empty after (the deepest first): a failed run leaves nothing behind, not even an empty folder. Folders
    with files in them are kept (temporary files are cleaned by their own ``finally`` blocks)."""
    paths = [Path(f) for f in folders]
    created = [p for p in paths if not p.exists()]
    try:
        yield
    except BaseException:
        for p in sorted(created, key=lambda q: len(q.absolute().parts), reverse=True):
            with contextlib.suppress(OSError):  # not empty, or already gone
                p.rmdir()
        raise


#: errors of the place written to, not of the program: a full disk or quota, a read-only or failing device,
#: no permission, a file too large for the file system
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}

#: how PyTorch's checkpoint writer reports a failed write (a RuntimeError, no errno)
_TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed", "inline_container.cc", "unexpected pos", "file write failed")


def write_failure_text(exc: BaseException) -> str | None:
    """A one-line message when ``exc`` (or an exception it came from) is a failed write to the file system — a
    full disk, a read-only mount, no permission — else None. What a CLI prints instead of a traceback."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in WRITE_ERRNOS:
            where = f" {cause.filename}" if cause.filename else ""
            hint = ("free some space or write elsewhere" if cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
                    else "write elsewhere")
            return f"cannot write{where}: {cause.strerror or cause} ({hint})"
        cause = cause.__cause__ or cause.__context__
    return None


def is_torch_write_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is ``torch.save`` failing to write (it raises a RuntimeError without an errno)."""
    return isinstance(exc, RuntimeError) and any(t in str(exc) for t in _TORCH_WRITE_FAILURES)


def free_space_text(folder: str | os.PathLike) -> str:
    """``"12.3 MB free"`` in ``folder`` (``"free space unknown"`` when that cannot be read)."""
    try:
        return f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free"
    except OSError:
        return "free space unknown"
