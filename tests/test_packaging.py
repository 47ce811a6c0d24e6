"""A fresh install (regular and editable) imports all four packages under one namespace, without
pulling in onnxruntime / tensorrt / triton at ``import semask_deploy``."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import sys, semask_deploy, semask_deploy.kernels, semask_deploy.export, semask_deploy.benchmarks
heavy = [m for m in ("onnxruntime", "tensorrt", "triton") if m in sys.modules]
assert not heavy, heavy
for name in ("kernels", "export", "benchmarks"):
    assert name not in sys.modules, f"top-level module {name!r} leaked"
import semask_deploy.kernels.window_attention, semask_deploy.export.trt_check
print(semask_deploy.__file__)
"""


def _fresh_venv(tmp: Path) -> Path:
    """A new venv that sees this environment's dependencies (torch etc.) but not this project."""
    venv = tmp / "venv"
    # no pip/setuptools of its own: pip comes from this environment through the .pth below
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if "site-packages" in p]
    Path(purelib, "_deps.pth").write_text("\n".join(deps) + "\n")
    return py


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True])
def test_fresh_install_imports_all_four(tmp_path, editable):
    py = _fresh_venv(tmp_path)
    src = tmp_path / "src"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(src)], check=True) if (ROOT / ".git").exists() else None
    if not src.exists():
        pytest.skip("not a git checkout")
    # copy uncommitted working-tree state of the package folders, so the test checks what is here now
    subprocess.run(["bash", "-c", f"cd {ROOT} && tar cf - --exclude=__pycache__ --exclude='*.egg-info' "
                    f"pyproject.toml README.md semask_deploy kernels export benchmarks | tar xf - -C {src}"], check=True)
    cmd = [str(py), "-m", "pip", "install", "-q", "--no-deps"]  # build isolation: setuptools from pyproject
    cmd += ["-e", str(src)] if editable else [str(src)]
    env = {**os.environ, "PIP_CONSTRAINT": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = subprocess.run([str(py), "-c", CHECK], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    location = Path(out.stdout.strip())
    if editable:
        assert location.is_relative_to(src)
    else:
        assert "site-packages" in str(location)
    for script in ("semask-infer", "semask-export", "semask-bench", "semask-eval", "semask-train", "semask-serve"):
        assert (py.parent / script).exists(), script


def test_import_does_not_load_heavy_backends():
    proc = subprocess.run([sys.executable, "-c", "import sys, semask_deploy; "
                           "print([m for m in ('onnxruntime','tensorrt','triton','onnx') if m in sys.modules])"],
                          capture_output=True, text=True, cwd=ROOT.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_import_is_lazy_but_every_name_and_submodule_is_there():
    """``import semask_deploy`` loads no torch (the CLIs answer --help and take Ctrl-C before it loads); the
    public names and the submodules (``semask_deploy.api`` …) still resolve on first use."""
    code = ("import sys, semask_deploy as s; assert 'torch' not in sys.modules; "
            "from semask_deploy import load_model, Segmenter, SeMaskConfig, VARIANTS; "
            "assert s.api.load_model is load_model and s.config.SeMaskConfig is SeMaskConfig; "
            "assert sorted(s.__all__) == s.__all__ and all(hasattr(s, n) for n in s.__all__); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
