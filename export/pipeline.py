"""One ``semask-export`` run: checkpoint → fp32 ONNX → precision → verification → (TensorRT engine).

Steps (each announced on stderr unless ``quiet``)::

    export   torch.export + ONNX conversion + clean-up          (export.onnx)
    precision fp16 graph pass / int8 calibration + QDQ           (export.precision)
    verify   ONNX Runtime vs PyTorch fp32 at two other sizes     (export.verify)
    check    offline TensorRT parser check, recorded             (export.trt_check)
    write    <out>/<name>.onnx + <name>.json (renamed into place)
    engine   <out>/<name>_trt.engine + <name>_trt.json           (export.tensorrt; --fmt trt|all)
    openvino <out>/<name>_ov.xml + .bin + <name>_ov.json         (export.openvino; --fmt openvino)

Everything is produced in a temporary folder inside ``--out`` and renamed into place only after it
passed verification, so a failure leaves nothing under a final name. Existing artifacts are not
overwritten without ``force``. Without TensorRT or a GPU the engine step fails with a clear message
*after* the ONNX and its sidecar were written (they stay).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from semask_deploy.errors import (
    ConfigError,
    ExportError,
    MissingDependencyError,
    SemaskError,
    require,
)
from semask_deploy.export.options import (  # the options, their checks, shapes, result: also imported from here
    ExportOptions,
    ExportResult,
    Shapes,
    check_options,
    default_stem,
    hw_text,
    resolve_shapes,
)
from semask_deploy.fileio import make_work_folder


def _warn_stale_derivatives(onnx_path: Path, engine_path: Path, base: str, build: bool, to_ov: bool) -> None:
    """A TensorRT engine or OpenVINO IR made from the ONNX that ``--force`` just replaced, and not rebuilt by this
    export, no longer matches it: say so (they are the user's files: not deleted)."""
    import warnings

    from semask_deploy.errors import SemaskWarning
    from semask_deploy.export.openvino import ir_paths

    stale = [] if build else [p for p in (engine_path,) if p.exists()]
    if not to_ov:
        stale += [p for p in ir_paths(onnx_path.parent, base)[:1] if p.exists()]
    if stale:
        warnings.warn(f"{', '.join(p.name for p in stale)} in {onnx_path.parent} came from the previous "
                      f"{onnx_path.name} and no longer match(es) it: rebuild with --fmt trt / openvino --force, or "
                      "delete", SemaskWarning, stacklevel=2)


class _Steps:
    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet, self.n, self.t0 = total, quiet, 0, time.perf_counter()

    def start(self, text: str) -> float:
        self.n += 1
        if not self.quiet:
            print(f"[{self.n}/{self.total}] {text} …", file=sys.stderr, flush=True)
        return time.perf_counter()

    def info(self, text: str) -> None:
        if not self.quiet:
            print(f"      {text}", file=sys.stderr, flush=True)


def _load_model(o: ExportOptions) -> tuple[Any, dict[str, Any], str]:
    from semask_deploy.export.metadata import sha256_file

    from semask_deploy.api import model_from_checkpoint
    from semask_deploy.checkpoint import read_checkpoint

    if o.model is not None:
        return o.model, {"checkpoint": None, "sha256": None, "note": "in-memory model"}, default_stem(o)
    stem = default_stem(o)
    if o.demo:
        from semask_deploy.assets import demo_checkpoint

        path = demo_checkpoint()
    else:
        path = Path(o.ckpt)
    data = read_checkpoint(path)
    model = model_from_checkpoint(data, attention_backend="sdpa")
    model.float().eval()
    source = {"checkpoint": str(Path(path).resolve()), "sha256": sha256_file(path), "demo": bool(o.demo)}
    return model, source, stem


def _calibration_images(o: ExportOptions, hw: tuple[int, int], count: int, num_classes: int,
                        steps: _Steps) -> tuple[list[np.ndarray], str]:
    """uint8 RGB images at ``hw``: the first ``count`` of --calib-images, else synthetic scenes."""
    from semask_deploy.data.io import list_images, read_image_rgb
    from semask_deploy.data.transforms import resize_image

    if o.calib_images is not None:
        if not Path(o.calib_images).is_dir():
            raise ConfigError(f"--calib-images must be a folder of images, got {o.calib_images}")
        files = list_images(o.calib_images)[:count]
        images = [resize_image(read_image_rgb(f), hw) for f in files]
        return images, f"{len(images)} image(s) from {o.calib_images} resized to {hw_text(hw)}"
    from semask_deploy.data.synthetic import SyntheticScenes

    scenes = SyntheticScenes(num_classes=min(max(8, num_classes), 255), size=hw, seed=1234, length=count)
    return [scenes[i][0] for i in range(count)], f"{count} built-in synthetic scene(s) at {hw_text(hw)}"


def _model_inputs(images: list[np.ndarray], batch: int, preprocess: bool) -> list[np.ndarray]:
    from semask_deploy.data.transforms import normalize

    out = []
    for img in images:
        group = np.stack([img if i % 2 == 0 else img[:, ::-1] for i in range(batch)])
        out.append(np.ascontiguousarray(group) if preprocess else np.stack([normalize(np.ascontiguousarray(g))
                                                                             for g in group]))
    return out


def run_export(o: ExportOptions) -> ExportResult:
    """Run one export; see the module docstring.

    Raises:
        SemaskError subclasses with a message saying what to do (the CLI prints it and exits 2).
    """
    with output_folder(Path(o.out)):
        return _run_export(o)


def output_folder(out: Path) -> contextlib.AbstractContextManager[None]:
    """On failure (an error, Ctrl-C, SIGTERM), remove ``out`` again if this export created it and left it empty:
    a failed export leaves nothing behind, not even an empty folder (temporary files are cleaned by their own
    ``finally`` blocks; a folder that holds e.g. the ONNX of an engine that failed is kept)."""
    from semask_deploy.fileio import folders_removed_on_failure

    return folders_removed_on_failure(out)


def _run_export(o: ExportOptions) -> ExportResult:
    from semask_deploy.export import metadata as md
    from semask_deploy.export.onnx import export_onnx
    from semask_deploy.export.verify import verify_onnx, verify_sizes

    check_options(o)
    if o.fmt == "aoti":
        from semask_deploy.export.aoti import run_aoti_export

        return run_aoti_export(o)
    t_start = time.perf_counter()
    result = ExportResult()
    build = o.fmt in ("trt", "all")
    to_ov = o.fmt == "openvino"
    if build and not o.quiet:
        _warn_without_tensorrt()
    if to_ov:
        if o.precision == "fp16":  # its CPU plugin would run such an IR in f32 (or bf16 by hint): say so up front
            raise ConfigError("--fmt openvino takes --precision fp32 or int8: OpenVINO's CPU plugin computes in f32, "
                              "bf16 or int8, and bf16 is chosen when the model runs (semask-infer --backend openvino "
                              "--precision bf16), not stored in the IR")
        require("openvino", "openvino")  # before any work
    steps = _Steps(5 + int(build) + int(to_ov), o.quiet)
    # model and names first: an existing artifact or a bad checkpoint fails before any work
    model, source, stem = _load_model(o)
    cfg = model.config
    shapes = resolve_shapes(o, cfg.crop_size)
    base = o.name or f"{stem}_{o.precision}"
    out = Path(o.out)
    onnx_path = out / f"{base}.onnx"
    engine_path = out / f"{base}_trt.engine"
    targets = [onnx_path, md.sidecar_path(onnx_path)] + ([engine_path, md.sidecar_path(engine_path)] if build else [])
    if to_ov:
        from semask_deploy.export.openvino import ir_paths

        ov_xml, ov_bin = ir_paths(out, base)
        targets += [ov_xml, ov_bin, md.sidecar_path(ov_xml)]
    folders = [p for p in targets if p.is_dir()]  # --force cannot replace a folder: say so before any work
    if folders:
        raise ConfigError(f"{', '.join(str(p) for p in folders)} exist(s) as a folder; remove or rename it, or use "
                          "--name/--out to write elsewhere")
    existing = [p for p in targets if p.exists()]
    if existing and not o.force:
        raise ConfigError(f"{', '.join(str(p) for p in existing)} already exist(s); use --force to overwrite or "
                          "--name/--out to write elsewhere")
    calib: list[np.ndarray] = []
    calib_desc = ""
    if o.precision == "int8" or (o.verify and o.calib_images is not None):  # calib images also verify
        calib, calib_desc = _calibration_images(o, shapes.opt_hw, o.calib_count, cfg.num_classes, steps)
        if o.precision == "int8" and o.calib_images is None and not o.quiet:
            print(f"warning: no --calib-images given: calibrating int8 on {len(calib)} built-in synthetic scenes; "
                  "pass images like those you will segment for better int8 accuracy", file=sys.stderr)
    work = make_work_folder(out, base)
    try:
        dyn = "static " + hw_text(shapes.static_hw) if shapes.static_hw else "dynamic H, W"
        batch_txt = f"batch {shapes.static_batch}" if shapes.static_batch else "dynamic batch"
        t = steps.start(f"exporting {cfg.name} to ONNX (opset {o.opset}, {dyn}, {batch_txt}"
                        f"{', uint8 NHWC input' if o.preprocess else ''}{', + logits' if o.with_logits else ''})")
        fp32_path = work / "fp32.onnx"
        # labels head (export.labels_head): channels-last for ONNX Runtime; the traced NCHW form for TensorRT
        # (its resize handles it natively) and OpenVINO (converted to its max-reduce form when read)
        labels_head = "nchw" if build or to_ov else "nhwc"
        # Winograd 3×3 convs (export.winograd) only in the fp32 ONNX Runtime graph: TensorRT and OpenVINO choose
        # their own conv algorithms, and Q/DQ or fp16 graphs keep plain convs
        winograd = o.winograd and labels_head == "nhwc" and o.precision == "fp32"
        info = export_onnx(model, fp32_path, with_logits=o.with_logits, preprocess=o.preprocess,
                           static_hw=shapes.static_hw, static_batch=shapes.static_batch, opset=o.opset,
                           labels_head=labels_head, output_size=o.output_size, winograd=winograd)
        steps.info(f"{info.num_nodes} nodes after {info.simplifier} ({time.perf_counter() - t:.0f} s)")

        t = steps.start(f"precision {o.precision}")
        model_path, details = _apply_precision(o, fp32_path, work, calib, shapes, calib_desc)
        if details.get("float_layers") is not None:
            roles: dict[str, int] = {}
            for layer in details["float_layers"]:
                roles[layer["role"]] = roles.get(layer["role"], 0) + 1
            steps.info(f"{details['calibration']} calibration; Conv/MatMul/Gemm kept float: "
                       + (", ".join(f"{n} {r}" for r, n in sorted(roles.items())) or "none"))
        if o.precision == "int8" and o.fmt != "trt":  # a CPU artifact
            _note_int8_speed(steps)
        steps.info(f"done ({time.perf_counter() - t:.0f} s)")

        verification = None
        t = steps.start("verifying against PyTorch fp32 with ONNX Runtime" if o.verify
                        else "verification skipped (--no-verify)")
        if o.verify:
            sizes = verify_sizes(shapes.opt_hw, shapes.min_hw, shapes.max_hw, static=shapes.static_hw is not None)
            images, desc = _verify_images(o, sizes, cfg.num_classes, calib)
            res = verify_onnx(model_path, model, images, o.precision, preprocess=o.preprocess,
                              batch=shapes.static_batch or 1, inputs_desc=desc)
            verification = res.to_dict()
            for line in res.format().splitlines():
                steps.info(line.strip())
            if not res.ok:
                cases = "; ".join(line.strip() for line in res.format().splitlines())
                raise ExportError(f"verification failed: the {o.precision} ONNX is outside its tolerance vs PyTorch "
                                  f"({_tolerance_text(res)}): {cases}; nothing was written. "
                                  f"{_what_to_try(o, len(calib))}")
        result.verification = verification

        t = steps.start("offline TensorRT parser check")
        from semask_deploy.export.trt_check import check_onnx_for_tensorrt

        report = check_onnx_for_tensorrt(model_path)
        result.trt_check = report.to_dict()
        steps.info("ok" if report.ok else report.format().replace("\n", "\n      "))

        steps.start(f"writing {onnx_path}")
        num_nodes, op_counts = (info.num_nodes, info.op_counts) if model_path == fp32_path else _node_counts(model_path)
        input_name = info.inputs[0]["name"]
        profile = shapes.profile(input_name, o.preprocess)
        size_range = shapes.output_size_range() if o.output_size else None
        meta = md.build_metadata(
            artifact=onnx_path, kind="onnx", precision=o.precision, model=model,
            inputs=info.inputs, outputs=info.outputs, dynamic=info.dynamic,
            profiles=[{input_name: {k: profile[k] for k in ("min", "opt", "max")},
                       **({"output_size": {k: size_range[k] for k in ("min", "opt", "max")}} if size_range else {})}],
            preprocess=o.preprocess, opset=info.opset, source=source,
            extra={"tensorrt_check": result.trt_check, "precision_details": details, "verification": verification,
                   "export": {"seconds": None, "trace_shape": info.trace_shape, "onnx_nodes": num_nodes,
                              "fp32_onnx_nodes": info.num_nodes, "labels_head": labels_head, "winograd": winograd,
                              "op_counts": op_counts, "simplifier": info.simplifier,
                              "attention_backend_traced": "sdpa", "notes": info.notes}},
        )
        meta["export"]["seconds"] = round(time.perf_counter() - t_start, 1)
        staged_meta = md.write_sidecar(work / onnx_path.name, meta)  # fully written before anything is renamed
        staged = [(model_path, onnx_path), (staged_meta, md.sidecar_path(onnx_path))]
        if to_ov:
            # the IR is made from the staged ONNX in the work folder too: with --force, the previous ONNX and IR
            # stay in place until the whole new set exists (a failed or interrupted IR step keeps them)
            steps.start(f"converting to OpenVINO IR {ov_xml.name}")
            check = _model_inputs(_verify_images(o, [shapes.opt_hw], cfg.num_classes, calib)[0],
                                  shapes.static_batch or 1, o.preprocess)[0]
            ir_xml, ir_meta = _write_ir(o, model_path, work / ov_xml.name, meta, check, onnx_name=onnx_path.name)
            staged += [(ir_xml.with_suffix(".bin"), ov_bin), (ir_xml, ov_xml), (ir_meta, md.sidecar_path(ov_xml))]
            steps.info(f"ok ({meta.get('precision')} IR)")
        if build and o.force:  # an engine of the previous ONNX must not survive next to the new one
            for stale in (engine_path, md.sidecar_path(engine_path)):
                stale.unlink(missing_ok=True)
        replaced = onnx_path.exists()
        for src, dst in staged:
            os.replace(src, dst)
        if replaced:
            _warn_stale_derivatives(onnx_path, engine_path, base, build, to_ov)
        result.onnx_path, result.onnx_sidecar, result.metadata = onnx_path, md.sidecar_path(onnx_path), meta
        if to_ov:
            result.engine_path, result.engine_sidecar = ov_xml, md.sidecar_path(ov_xml)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if build:
        steps.start(f"building the TensorRT engine {engine_path.name}")
        result.engine_path, result.engine_sidecar = _build_engine(o, onnx_path, engine_path, meta,
                                                                  [profile] + ([size_range] if size_range else []))
    result.seconds = round(time.perf_counter() - t_start, 1)
    return result


def _trtexec_hint(onnx_path: Path) -> str:
    """trtexec as the other way to build, unless the graph has opset-20 GridSample modes, which TensorRT's parser
    reads as nearest when another builder passes them as they are (export.tensorrt renames them)."""
    import onnx

    nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
    if any(n.op_type == "GridSample" for n in nodes):
        return "; not trtexec: its parser would read this graph's GridSample 'linear' mode as nearest"
    return f", or trtexec --onnx={onnx_path.name}"


def _warn_without_tensorrt() -> None:
    """Say at the start, not after minutes of export, that this machine cannot build the engine."""
    from semask_deploy.export.tensorrt import require_tensorrt

    try:
        require_tensorrt()
    except MissingDependencyError as exc:
        why = str(exc).split(". ")[0]  # "TensorRT is not installed or cannot be loaded (…)"
        print(f"warning: {why} — the ONNX will be exported, verified and checked offline for TensorRT, but the "
              "engine cannot be built here (the command then exits with status 2)", file=sys.stderr)


def _node_counts(path: Path) -> tuple[int, dict[str, int]]:
    """Nodes and op counts of the ONNX written (a reduced-precision graph has Casts or Q/DQ pairs added)."""
    import onnx

    from semask_deploy.export.onnx import op_counts

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    return len(nodes), op_counts(nodes)


def _what_to_try(o: ExportOptions, calibrated_on: int) -> str:
    """The failure message's advice: what to change for a precision that passes (``calibrated_on``: how many
    calibration images were used; fewer than ``--calib-count`` when the folder holds fewer)."""
    if o.precision == "int8":
        if o.calib_images is None:
            first = "calibrate on images like those you will segment: --calib-images DIR"
        elif calibrated_on < o.calib_count:
            first = (f"calibrate on more images like those you will segment ({o.calib_images} holds only "
                     f"{calibrated_on}; --calib-count {o.calib_count} uses up to that many)")
        else:
            first = f"calibrate on more images (--calib-count, now {o.calib_count}) like those you will segment"
        other = [c for c in ("percentile", "entropy", "minmax") if c != o.int8_calibration]
        return (f"Try: {first}; another --int8-calibration ({' or '.join(other)}); or another precision "
                "(--precision fp16, or fp32). --no-verify keeps such an export anyway.")
    if o.precision == "fp16":
        return "Try --precision fp32 (or int8 with --calib-images). --no-verify keeps such an export anyway."
    return "The fp32 export should match exactly: please report this. --no-verify keeps such an export anyway."


def _tolerance_text(res: Any) -> str:
    t = res.tolerance
    parts = [f"labels ≥ {t.min_label_agreement * 100:g} % equal"]
    if t.max_rel_l2 is not None:
        parts.insert(0, f"logit rel. L2 ≤ {t.max_rel_l2:g}")
    if t.min_miou_agreement is not None:
        parts.append(f"mIoU agreement ≥ {t.min_miou_agreement * 100:g} %")
    return ", ".join(parts)


def _verify_images(o: ExportOptions, sizes: list[tuple[int, int]], num_classes: int,
                   calib: list[np.ndarray]) -> tuple[list[np.ndarray], str]:
    from semask_deploy.data.transforms import resize_image

    if o.calib_images is not None and calib:
        return ([resize_image(calib[i % len(calib)], hw) for i, hw in enumerate(sizes)],
                f"--calib-images resized to {', '.join(hw_text(s) for s in sizes)}")
    from semask_deploy.data.synthetic import SyntheticScenes

    imgs = [SyntheticScenes(num_classes=min(max(8, num_classes), 255), size=hw, seed=99, length=1)[0][0]
            for hw in sizes]
    return imgs, f"synthetic scenes at {', '.join(hw_text(s) for s in sizes)}"


def _note_int8_speed(steps: _Steps) -> None:
    """Say so when this machine's CPU lacks int8 dot products: int8 gains little or nothing on it."""
    from semask_deploy.runtime.cpu_info import cpu_description, int8_dot_product

    if not int8_dot_product():
        steps.info(f"note: this CPU, {cpu_description()}, has no int8 dot-product instructions: int8 "
                   "gains little on it (measured on such a CPU: ONNX Runtime 1.2-1.3x fp32, OpenVINO none); "
                   "int8 pays off on CPUs with AVX-512 VNNI, AVX-VNNI or AMX, and on GPUs")


def _apply_precision(o: ExportOptions, fp32_path: Path, work: Path, calib: list[np.ndarray],
                     shapes: Shapes, calib_desc: str) -> tuple[Path, dict[str, Any]]:
    from semask_deploy.errors import require

    if o.precision == "fp32":
        return fp32_path, {"kind": "fp32"}
    onnx = require("onnx", "dev")
    from semask_deploy.export.int8 import quantize_int8
    from semask_deploy.export.precision import attention_roles, convert_fp16, precision_summary

    out = work / f"{o.precision}.onnx"
    if o.precision == "fp16":
        model = onnx.load(str(fp32_path))
        roles = attention_roles(model)
        half = convert_fp16(model, roles.keep_fp32())
        onnx.save_model(half, str(out))
        kept = ["LayerNormalization", "Softmax", "semantic-attention scores (q/k projections → q·kᵀ → Softmax)",
                "GroupNormalization", "GridSample sampling grids (offset projections → locations)"]
        return out, {"kind": "mixed fp16", "kept_fp32": kept,
                     "roles": roles.summary(), **precision_summary(half)}
    inputs = _model_inputs(calib, shapes.static_batch or 1, o.preprocess)
    info = quantize_int8(fp32_path, out, inputs, activations=o.int8_activations, progress=not o.quiet,
                         calibration=o.int8_calibration)
    info["calibration_source"] = "calib-images" if o.calib_images is not None else "synthetic scenes"
    info["calibration_images"] = calib_desc
    return out, {"kind": "int8 QDQ", **info}


def _write_ir(o: ExportOptions, onnx_path: Path, xml_path: Path, onnx_meta: dict[str, Any], check: np.ndarray,
              onnx_name: str) -> tuple[Path, Path]:
    """The OpenVINO IR of ``onnx_path`` at ``xml_path`` (+ ``.bin``) and its sidecar, checked once against ONNX
    Runtime on ``check`` — a real image (calibration or synthetic scene) as the graph takes it: random noise
    is far outside an int8 graph's calibrated ranges and measured the runtimes' disagreement there, not the
    model's. ``onnx_name``: the ONNX's final name, for the sidecar."""
    from semask_deploy.export import metadata as md
    from semask_deploy.export.openvino import convert_to_ir
    from semask_deploy.export.verify import TOLERANCES

    info = convert_to_ir(onnx_path, xml_path, check_input=check,
                         min_label_agreement=TOLERANCES[o.precision].min_label_agreement)
    meta = dict(onnx_meta)
    meta.update({"artifact": xml_path.name, "kind": "openvino", "onnx": onnx_name,
                 "weights": xml_path.with_suffix(".bin").name, "openvino": info})
    meta["versions"] = {**md.library_versions(), "openvino": info["openvino_version"]}
    return xml_path, md.write_sidecar(xml_path, meta)


def _build_engine(o: ExportOptions, onnx_path: Path, engine_path: Path, onnx_meta: dict[str, Any],
                  profiles: list[dict[str, Any]]) -> tuple[Path, Path]:
    from semask_deploy.export import metadata as md
    from semask_deploy.export.tensorrt import build_engine

    try:
        info = build_engine(onnx_path, engine_path, precision=o.precision, profiles=profiles,
                            timing_cache=o.timing_cache, workspace_gb=o.workspace_gb, progress=not o.quiet)
    except (MissingDependencyError, ExportError) as exc:
        why = " ".join(str(exc).split())  # one line
        raise type(exc)(f"no TensorRT engine was built: {why} — the ONNX and its sidecar were written and are usable: "
                        f"{onnx_path}, {md.sidecar_path(onnx_path)}; build the engine on a machine with an NVIDIA GPU "
                        f"and TensorRT (semask-export --fmt trt there{_trtexec_hint(onnx_path)})") from exc
    meta = dict(onnx_meta)
    meta.update({
        "artifact": engine_path.name, "kind": "tensorrt", "onnx": onnx_path.name,
        "tensorrt_version": info.get("tensorrt_version"), "gpu_compute_capability": info.get("gpu_compute_capability"),
        "profiles": info.get("profiles"), "engine_build": info,
    })
    meta["versions"] = md.library_versions()
    return engine_path, md.write_sidecar(engine_path, meta)


__all__ = [
    "ExportOptions",
    "ExportResult",
    "SemaskError",
    "Shapes",
    "check_options",
    "resolve_shapes",
    "run_export",
]
