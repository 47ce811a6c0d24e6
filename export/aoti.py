"""PyTorch → AOTInductor package (``.pt2``): the model compiled ahead of time for LibTorch and Python.

The package holds the same graph as the ONNX export (:func:`semask_deploy.export.onnx._wrapper`)::

    image    float32 (N, 3, H, W), normalised RGB
      → labels  int32   (N, H, W)                 always
      → logits  float32 (N, K, H, W)              with ``with_logits``

traced with ``torch.export`` (dynamic N, H, W unless fixed) in the ``sdpa`` attention backend and compiled
by ``torch._inductor.aoti_compile_and_package``: on the CPU into C++ kernels built with the system C++
compiler, on a GPU (``device="cuda"``) into CUDA/Triton kernels. It loads in Python with
``torch._inductor.aoti_load_package`` and in C++ with ``torch::inductor::AOTIModelPackageLoader``
(``examples/cpp/semask_aoti.cpp``).

Compile time on a 2-core CPU (AMD EPYC, AVX2) for the demo model: ~2 min for a fixed size (``static_hw`` and
``static_batch``), ~35 min with dynamic sizes, where Inductor's C++ code generation spends most of its time in
sympy, simplifying the symbolic index expressions while it picks vectorisation tilings (py-spy: ~78 %). A
full-size SeMask takes longer. Progress is reported per phase.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from semask_deploy.errors import ConfigError, ExportError, require

#: the package suffix (``Segmenter`` picks the AOTInductor backend from it)
SUFFIX = ".pt2"


@dataclass
class AotiExportInfo:
    """What :func:`export_aoti` produced (for the metadata sidecar)."""

    path: Path
    device: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    dynamic: dict[str, bool]
    trace_shape: list[int]
    seconds_export: float
    seconds_compile: float
    inductor_configs: dict[str, Any] = field(default_factory=dict)


def inductor_configs() -> dict[str, Any]:
    """Inductor options used for the package (recorded in the sidecar).

    Autotuning is off (the default; it would benchmark kernels at compile time). On the CPU the C++
    compile is one g++ process per package, so its time is what it is; see the README for numbers.
    """
    return {"max_autotune": False}


def export_aoti(
    model: Any,
    path: str | Path,
    *,
    with_logits: bool = False,
    static_hw: tuple[int, int] | None = None,
    static_batch: int | None = None,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
    metadata: dict[str, str] | None = None,
) -> AotiExportInfo:
    """Export a :class:`~semask_deploy.model.SeMaskSegmentor` to an AOTInductor package.

    Args:
        model: the segmentor (fp32; traced in the ``sdpa`` backend, restored afterwards).
        path: destination ``.pt2`` (written as is: callers write to a temporary path and rename).
        with_logits: also output ``logits`` float32 (N, K, H, W).
        static_hw: fixed (H, W); default: dynamic H and W in [32, 4096].
        static_batch: fixed batch size; default: dynamic N.
        device: ``"cpu"`` (C++ kernels) or ``"cuda"`` (CUDA/Triton kernels; needs a GPU).
        progress: called with one line per phase.
        metadata: strings stored in the package (``AOTIModelPackageLoader::get_metadata()``).

    Returns:
        :class:`AotiExportInfo`.

    Raises:
        ConfigError: a bad device or size.
        ExportError: tracing or compilation failed (with the first error line).
    """
    torch = require("torch", "dev")
    from semask_deploy.export.onnx import INPUT_FLOAT, _first_line, _quiet_exporter, _wrapper, trace_size

    say = progress or (lambda _t: None)
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda needs a CUDA GPU and a CUDA build of torch; use --device cpu here")
    if next(model.parameters()).dtype != torch.float32:
        raise ExportError("export needs the fp32 model")
    if static_batch is not None and static_batch < 1:
        raise ConfigError(f"batch must be positive, got {static_batch}")
    path = Path(path)
    cfg = model.config
    if static_hw is not None:
        h, w = (int(v) for v in static_hw)
    else:
        h, w = trace_size(cfg.window_size, cfg.sem_window_size, cfg.patch_size)
    n = static_batch if static_batch is not None else 2
    example = torch.randn(n, 3, h, w, device=device)
    dims: dict[int, Any] = {}
    if static_batch is None:
        dims[0] = torch.export.Dim.DYNAMIC
    if static_hw is None:
        dims[2] = dims[3] = torch.export.Dim.DYNAMIC
    wrapper = _wrapper(model, with_logits, preprocess=False).to(device)
    previous, was_training = model.attention_backend, model.training
    model.set_attention_backend("sdpa").eval()
    t0 = time.perf_counter()
    try:
        say(f"torch.export at {n}x3x{h}x{w} ({'dynamic' if dims else 'static'} shapes)")
        with _quiet_exporter(), torch.no_grad():
            try:
                ep = torch.export.export(wrapper, (example,), dynamic_shapes={"image": dims} if dims else None,
                                         strict=False)
            except Exception as exc:  # noqa: BLE001 - torch.export raises many types
                raise ExportError(f"torch.export could not trace the model: {_first_line(exc)}") from exc
        t_export = time.perf_counter() - t0
        say(f"traced in {t_export:.0f} s; compiling with AOTInductor for {device} (the C++/Triton compile takes "
            "minutes)")
        if dims and device == "cpu":
            say("dynamic sizes make the CPU compile slow (~35 min for the demo model on 2 cores; --static HxW "
                "--batch N: ~2 min)")
        t1 = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        configs = inductor_configs()
        if metadata:
            configs["aot_inductor.metadata"] = dict(metadata)
        with _quiet_exporter(), _heartbeat(say, t1):
            try:
                out = torch._inductor.aoti_compile_and_package(ep, package_path=str(path),
                                                               inductor_configs=configs)
            except Exception as exc:  # noqa: BLE001
                raise ExportError(f"AOTInductor compilation failed: {_first_line(exc)}") from exc
        t_compile = time.perf_counter() - t1
    finally:
        model.set_attention_backend(previous)
        model.train(was_training)
    if Path(out) != path or not path.is_file():
        raise ExportError(f"AOTInductor did not write {path} (got {out})")
    dyn = {"N": static_batch is None, "H": static_hw is None, "W": static_hw is None}
    nd = "N" if dyn["N"] else n
    hd, wd = ("H", "W") if dyn["H"] else (h, w)
    inputs = [{"name": INPUT_FLOAT, "dtype": "float32", "shape": [nd, 3, hd, wd]}]
    outputs = [{"name": "labels", "dtype": "int32", "shape": [nd, hd, wd]}]
    if with_logits:
        outputs.append({"name": "logits", "dtype": "float32", "shape": [nd, int(cfg.num_classes), hd, wd]})
    return AotiExportInfo(path=path, device=device, inputs=inputs, outputs=outputs, dynamic=dyn,
                          trace_shape=list(example.shape), seconds_export=round(t_export, 1),
                          seconds_compile=round(t_compile, 1), inductor_configs=configs)


@contextlib.contextmanager
def _heartbeat(say: Callable[[str], None], t0: float, every: float = 30.0):
    """Print "still compiling (N s)" every ``every`` seconds from a daemon thread while the body runs."""
    import threading

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            say(f"still compiling ({time.perf_counter() - t0:.0f} s)")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1.0)


def load_package(path: str | Path, device: str | None = None) -> Any:
    """Load a ``.pt2`` package for Python (``torch._inductor.aoti_load_package``).

    Returns:
        A callable: float32 (N, 3, H, W) tensor → labels (and logits) as the package was exported.

    Raises:
        ExportError: the package cannot be loaded (another torch version, a GPU package on a CPU, …).
    """
    import zipfile

    torch = require("torch", "dev")
    if not zipfile.is_zipfile(path):  # torch would say "outdated pt2 file" about any non-archive
        raise ExportError(f"{path} is not an AOTInductor package (not a zip archive: corrupt, truncated or another "
                          "kind of file); re-export it with semask-export --fmt aoti")
    try:
        if device is None:
            return torch._inductor.aoti_load_package(str(path))
        return torch._inductor.aoti_load_package(str(path), device_index=_device_index(device))
    except Exception as exc:  # noqa: BLE001
        from semask_deploy.export.onnx import _first_line

        raise ExportError(f"cannot load the AOTInductor package {path}: {_first_line(exc)} (it must be loaded by "
                          "the torch version and device kind it was compiled for)") from exc


def _device_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else -1


def verify_aoti(path: str | Path, model: Any, images: list[Any], *, device: str = "cpu") -> dict[str, Any]:
    """Run the package and the fp32 PyTorch model on the same normalised inputs; compare labels (and logits).

    Args:
        path: the ``.pt2``.
        model: the fp32 segmentor.
        images: uint8 RGB (H, W, 3) images (one per checked size).

    Returns:
        ``{"ok": bool, "cases": [{"hw", "label_agreement", "max_abs_logit_err"?}], "tolerance": ...}``;
        ok when every case has ≥ 99.9 % equal labels (fp32: measured 100 %).
    """
    torch = require("torch", "dev")
    from semask_deploy.data.transforms import normalize

    runner = load_package(path, device if device != "cpu" else None)
    cases = []
    ok = True
    previous = model.attention_backend
    model.set_attention_backend("sdpa")
    try:
        for img in images:
            x = torch.from_numpy(normalize(img)[None]).to(device)
            with torch.no_grad():
                got = runner(x)
                ref_logits = model(x)
            got_labels, got_logits = (got[0], got[1]) if isinstance(got, (tuple, list)) and len(got) == 2 else (
                got[0] if isinstance(got, (tuple, list)) else got, None)
            ref_labels = ref_logits.argmax(1).to(torch.int32)
            agree = float((got_labels.cpu() == ref_labels.cpu()).float().mean())
            case: dict[str, Any] = {"hw": list(img.shape[:2]), "label_agreement": agree}
            if got_logits is not None:
                case["max_abs_logit_err"] = float((got_logits - ref_logits).abs().max())
            ok = ok and agree >= 0.999
            cases.append(case)
    finally:
        model.set_attention_backend(previous)
    return {"ok": ok, "cases": cases, "tolerance": {"min_label_agreement": 0.999}}


def package_metadata(model: Any, with_logits: bool, static_hw: tuple[int, int] | None = None,
                     static_batch: int | None = None) -> dict[str, str]:
    """String metadata stored inside the package (``AOTIModelPackageLoader::get_metadata()`` in C++), so an
    app needs no sidecar for the pre/post-processing: test scale, normalisation, classes, outputs, and the fixed
    input size / batch of a static package ("" when dynamic), which the package itself does not check."""
    from semask_deploy.config import IMAGENET_MEAN, IMAGENET_STD

    cfg = model.config
    return {
        "semask.static_hw": ",".join(str(int(v)) for v in static_hw) if static_hw else "",
        "semask.static_batch": str(int(static_batch)) if static_batch else "",
        "semask.test_scale": ",".join(str(int(v)) for v in cfg.test_scale),
        # keep_ratio (mmcv, OpenCV bilinear: what the C++ apps do) or shortest_edge (detectron2, PIL bilinear:
        # the mask-classification models, which the apps refuse rather than resize another way)
        "semask.resize_kind": str(getattr(cfg, "resize_rule", {}).get("kind", "keep_ratio")),
        "semask.mean": ",".join(repr(float(v)) for v in IMAGENET_MEAN),
        "semask.std": ",".join(repr(float(v)) for v in IMAGENET_STD),
        "semask.num_classes": str(int(cfg.num_classes)),
        "semask.outputs": "labels,logits" if with_logits else "labels",
    }


def run_aoti_export(o: Any) -> Any:
    """``semask-export --fmt aoti``: checkpoint → ``<out>/<name>_aoti.pt2`` + ``<name>_aoti.json``, verified.

    Steps: load → torch.export + AOTInductor compile (minutes) → load the package and compare its labels with
    PyTorch fp32 at two other sizes → write. Everything is staged in a temporary folder inside ``--out`` and
    renamed into place after verification.

    Args:
        o: :class:`~semask_deploy.export.pipeline.ExportOptions` with ``fmt == "aoti"``.

    Returns:
        :class:`~semask_deploy.export.pipeline.ExportResult` with ``aoti_path`` / ``aoti_sidecar``.
    """
    import os
    import shutil

    from semask_deploy.export import metadata as md
    from semask_deploy.export.pipeline import ExportResult, _load_model, _Steps, _verify_images, resolve_shapes
    from semask_deploy.export.verify import verify_sizes

    import torch

    t_start = time.perf_counter()
    if str(o.device).startswith("cuda") and not torch.cuda.is_available():  # before minutes of loading/tracing
        raise ConfigError("--device cuda needs a CUDA GPU and a CUDA build of torch; use --device cpu here")
    steps = _Steps(4, o.quiet)
    model, source, stem = _load_model(o)
    cfg = model.config
    shapes = resolve_shapes(o, cfg.crop_size)
    base = o.name or f"{stem}_{o.precision}"
    out = Path(o.out)
    pkg = out / f"{base}_aoti{SUFFIX}"
    existing = [p for p in (pkg, md.sidecar_path(pkg)) if p.exists()]
    if existing and not o.force:
        raise ConfigError(f"{', '.join(str(p) for p in existing)} already exist(s); use --force to overwrite or "
                          "--name/--out to write elsewhere")
    result = ExportResult()
    from semask_deploy.fileio import make_work_folder

    work = make_work_folder(out, base)
    try:
        t = steps.start(f"compiling {cfg.name} with AOTInductor for {o.device} "
                        f"({'static ' + 'x'.join(map(str, shapes.static_hw)) if shapes.static_hw else 'dynamic H, W'}"
                        f"{', + logits' if o.with_logits else ''}; this takes minutes)")
        staged = work / pkg.name
        info = export_aoti(model, staged, with_logits=o.with_logits, static_hw=shapes.static_hw,
                           static_batch=shapes.static_batch, device=o.device, progress=steps.info,
                           metadata=package_metadata(model, o.with_logits, shapes.static_hw, shapes.static_batch))
        steps.info(f"done: export {info.seconds_export:.0f} s, compile {info.seconds_compile:.0f} s "
                   f"({time.perf_counter() - t:.0f} s)")
        verification = None
        steps.start("verifying the package against PyTorch fp32" if o.verify else "verification skipped (--no-verify)")
        if o.verify:
            sizes = verify_sizes(shapes.opt_hw, shapes.min_hw, shapes.max_hw, static=shapes.static_hw is not None)
            images, desc = _verify_images(o, sizes, cfg.num_classes, [])
            verification = verify_aoti(staged, model, images, device=o.device)
            verification["inputs"] = desc
            for case in verification["cases"]:
                err = case.get("max_abs_logit_err")
                steps.info(f"{case['hw'][0]}x{case['hw'][1]}: labels {case['label_agreement'] * 100:.3f} % equal"
                           + (f", max |Δlogit| {err:.2e}" if err is not None else ""))
            if not verification["ok"]:
                raise ExportError("verification failed: the AOTInductor package's labels differ from PyTorch's on more "
                                  "than 0.1 % of the pixels; nothing was written (--no-verify keeps it anyway)")
        steps.start(f"writing {pkg}")
        meta = md.build_metadata(
            artifact=pkg, kind="aoti", precision="fp32", model=model, inputs=info.inputs, outputs=info.outputs,
            dynamic=info.dynamic, profiles=[], preprocess=False, opset=None, source=source,
            extra={"verification": verification,
                   "aoti": {"device": info.device, "inductor_configs": info.inductor_configs,
                            "package_metadata": package_metadata(model, o.with_logits, shapes.static_hw,
                                                                 shapes.static_batch),
                            "loader": "torch._inductor.aoti_load_package / torch::inductor::AOTIModelPackageLoader; "
                                      "needs the torch version it was compiled with"},
                   "export": {"seconds": None, "seconds_trace": info.seconds_export,
                              "seconds_compile": info.seconds_compile, "trace_shape": info.trace_shape,
                              "attention_backend_traced": "sdpa"}},
        )
        meta["export"]["seconds"] = round(time.perf_counter() - t_start, 1)
        staged_meta = md.write_sidecar(staged, meta)
        os.replace(staged, pkg)
        os.replace(staged_meta, md.sidecar_path(pkg))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.aoti_path, result.aoti_sidecar, result.metadata = pkg, md.sidecar_path(pkg), meta
    result.verification = verification
    result.seconds = round(time.perf_counter() - t_start, 1)
    return result
