"""``semask-export --fmt triton|triton-trt``: a Triton Inference Server model repository.

Runs the ordinary export (verified ONNX, or ONNX + TensorRT engine) with logits into a temporary
folder inside ``--out``, then lays out ``<out>/<name>/`` (+ ``_pre``, ``_post``, ``_ensemble``) with
:func:`semask_deploy.serving.triton_repo.write_repository`. The batch dimension is dynamic up to
``--max-batch`` (default 4), which becomes every model's ``max_batch_size``.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

from semask_deploy.errors import ConfigError


def run_export_triton(o, gpu: bool = False, python_runtime: bool = False) -> list[Path]:
    """Export for Triton; ``o`` is an :class:`~semask_deploy.export.pipeline.ExportOptions` with
    ``fmt`` ``"triton"`` (ONNX Runtime) or ``"triton-trt"`` (TensorRT); ``python_runtime``: the ONNX runs in
    ONNX Runtime inside the Python backend (servers without the onnxruntime backend). Returns the files written."""
    from semask_deploy.export.pipeline import output_folder

    with output_folder(Path(o.out)):
        return _run_export_triton(o, gpu, python_runtime)


def _run_export_triton(o, gpu: bool, python_runtime: bool) -> list[Path]:
    from semask_deploy.errors import SemaskError
    from semask_deploy.export.metadata import read_sidecar
    from semask_deploy.export.pipeline import check_options, default_stem, run_export
    from semask_deploy.fileio import make_work_folder
    from semask_deploy.serving.triton_repo import model_folders, spec_from_metadata, write_repository

    if o.batch is not None:
        raise ConfigError("a Triton model batches dynamically: use --max-batch N instead of --batch")
    if o.preprocess:
        raise ConfigError("--fmt triton normalises in the repository's pre-processing model: drop --preprocess")
    engine = o.fmt == "triton-trt"
    # the inner export's checks, and the output folder's, before any work
    check_options(dataclasses.replace(o, fmt="trt" if engine else "onnx"))
    if engine:  # the repository needs the engine: stop now, not after the ONNX export
        from semask_deploy.export.tensorrt import require_tensorrt

        require_tensorrt()
    max_batch = o.max_batch or 4
    out = Path(o.out)
    # an existing model folder is refused now, not after minutes of export (write_repository checks again)
    name = o.name or f"{default_stem(o)}_{o.precision}"
    existing = [out / n for n in model_folders(name) if (out / n).exists()]
    if existing and not o.force:
        raise ConfigError(f"{', '.join(str(p) for p in existing)} already exist(s); use --force to overwrite or "
                          "--name/--out to write elsewhere")
    work = make_work_folder(out, "triton")
    try:
        # the repository's post-processing model resizes the logits to the image size: no output_size input;
        # ONNX Runtime on a GPU runs cuDNN's convolutions, not Winograd written out in ONNX ops
        inner = dataclasses.replace(o, fmt="trt" if engine else "onnx", with_logits=True, output_size=False,
                                    max_batch=max_batch, winograd=o.winograd and not gpu,
                                    out=work, force=True)
        try:
            res = run_export(inner)
        except SemaskError as exc:
            if not engine or "no TensorRT engine was built" not in str(exc):
                raise
            # the inner export's ONNX lives in this temporary folder, which goes: say so, not where it was
            why = " ".join(str(exc.__cause__ or exc).split())  # the engine builder's own reason
            raise type(exc)(f"no TensorRT engine was built: {why}; nothing was written (the repository needs the engine). Build it on a machine "
                            "with an NVIDIA GPU and TensorRT, or write an ONNX Runtime repository here with "
                            "--fmt triton") from exc
        artifact = res.engine_path if engine else res.onnx_path
        meta = read_sidecar(artifact)
        name = o.name or artifact.stem.removesuffix("_trt")
        spec = spec_from_metadata(meta, name, max_batch=max_batch, gpu=gpu or engine,
                                  python_runtime=python_runtime and not engine)
        written = write_repository(out, spec, artifact, sidecar=artifact.with_suffix(".json"), force=o.force)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not o.quiet:
        print(f"Triton model repository in {out}: {name} ({spec.kind}), {name}_pre, {name}_post, {name}_ensemble "
              f"(send uint8 images to {name}_ensemble)", file=sys.stderr)
    return written
