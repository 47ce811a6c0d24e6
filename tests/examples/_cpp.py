"""Helpers for the C++ example tests: PPM/PGM I/O and compiling with the system C++ compiler."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CPP = Path(__file__).resolve().parents[2] / "examples" / "cpp"


def cxx() -> str:
    """The C++ compiler (``$CXX``, g++ or c++); skips the test when there is none."""
    import os

    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return str(shutil.which(name))
    pytest.skip("no C++ compiler (g++) on this machine")


def write_ppm(path: Path, rgb: np.ndarray) -> Path:
    """uint8 (H, W, 3) RGB → binary PPM (P6)."""
    h, w = rgb.shape[:2]
    path.write_bytes(b"P6\n%d %d\n255\n" % (w, h) + np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())
    return path


def _read_pnm(path: Path, magic: bytes, channels: int) -> np.ndarray:
    data = path.read_bytes()
    parts = data.split(maxsplit=4)
    assert parts[0] == magic, parts[0]
    w, h, maxval = int(parts[1]), int(parts[2]), int(parts[3])
    assert maxval == 255
    pixels = data[len(data) - w * h * channels:]
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.frombuffer(pixels, np.uint8).reshape(shape)


def read_ppm(path: Path) -> np.ndarray:
    return _read_pnm(path, b"P6", 3)


def read_pgm(path: Path) -> np.ndarray:
    return _read_pnm(path, b"P5", 1)


def run(cmd: list[str], timeout: float = 600) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr
