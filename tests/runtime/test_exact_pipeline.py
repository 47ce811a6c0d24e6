"""Exported artifacts give the PyTorch labels: the official pipeline end to end, in the graph.

Acceptance of issue 13 (1): on the bundled sample scenes, the demo model's fp32 ONNX through ``Segmenter``
equals the ``.pth`` ``Segmenter`` labels on >= 99.99 % of pixels — whole mode (the graph resizes its logits to
the original image size given as ``output_size`` and takes the argmax there) and slide mode (logits), for a
dynamic export and a ``--static`` one (here with ``--preprocess``: uint8 input, Cast first). Both graphs pass
the offline TensorRT check (``semask-export --check-trt``).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from semask_deploy.assets import demo_checkpoint, sample_images  # noqa: E402
from semask_deploy.cli.export import main as export_main  # noqa: E402
from semask_deploy.data.io import read_image_rgb  # noqa: E402
from semask_deploy.data.transforms import rescale_size  # noqa: E402
from semask_deploy.export.pipeline import ExportOptions, run_export  # noqa: E402
from semask_deploy.runtime import Segmenter  # noqa: E402

MIN_AGREEMENT = 0.9999


@pytest.fixture(scope="module")
def scenes():
    return [read_image_rgb(p) for p in sample_images()]


@pytest.fixture(scope="module")
def torch_labels(scenes):
    out = {}
    for mode in ("whole", "slide"):
        seg = Segmenter(demo_checkpoint(), mode=mode)
        out[mode] = [seg.predict(im) for im in scenes]
    return out


@pytest.fixture(scope="module")
def dynamic_export(tmp_path_factory):
    return run_export(ExportOptions(demo=True, out=tmp_path_factory.mktemp("dyn"), with_logits=True, quiet=True))


@pytest.fixture(scope="module")
def static_export(tmp_path_factory, scenes):
    # the size the keep-ratio test resize gives the (equal-sized) sample scenes, so whole mode sees the same input
    sizes = {rescale_size(*im.shape[:2], Segmenter(demo_checkpoint()).scale) for im in scenes}
    assert len(sizes) == 1
    return run_export(ExportOptions(demo=True, out=tmp_path_factory.mktemp("static"), static=sizes.pop(),
                                    preprocess=True, quiet=True))


def _agreement(seg: Segmenter, scenes, reference) -> list[float]:
    out = []
    for im, ref in zip(scenes, reference):
        labels = seg.predict(im)
        assert labels.shape == im.shape[:2]
        out.append(float((labels == ref).mean()))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_dynamic_onnx_gives_the_torch_labels(dynamic_export, scenes, torch_labels, mode):
    seg = Segmenter(dynamic_export.onnx_path, mode=mode)
    assert seg.backend.has_output_size and seg.backend.has_logits
    agree = _agreement(seg, scenes, torch_labels[mode])
    print(f"dynamic fp32 ONNX, {mode}: {[f'{a * 100:.4f} %' for a in agree]}")
    assert min(agree) >= MIN_AGREEMENT, agree


@pytest.mark.slow
def test_large_outputs_take_the_labels_from_the_logits_on_the_host(dynamic_export, scenes, torch_labels,
                                                                   monkeypatch):
    """The graph's labels head holds K x H x W floats at the image's own size (14 GB for 150 classes at
    4000x6000): above LARGE_LABELS_HEAD_BYTES an export with logits is resized on the host row by row instead."""
    from semask_deploy.runtime import segmenter

    seg = Segmenter(dynamic_export.onnx_path)
    monkeypatch.setattr(segmenter, "LARGE_LABELS_HEAD_BYTES", 0)
    monkeypatch.setattr(seg.backend, "labels", lambda *a, **k: pytest.fail("the graph's labels head ran"))
    agree = _agreement(seg, scenes, torch_labels["whole"])
    assert min(agree) >= MIN_AGREEMENT, agree


@pytest.mark.slow
def test_a_labels_head_that_cannot_fit_in_memory_is_refused_before_it_runs(static_export, scenes, monkeypatch):
    from semask_deploy.errors import RuntimeBackendError
    from semask_deploy.runtime import segmenter

    seg = Segmenter(static_export.onnx_path)
    assert not seg.backend.has_logits
    monkeypatch.setattr(segmenter, "LARGE_LABELS_HEAD_BYTES", 0)
    monkeypatch.setattr(segmenter, "_available_memory", lambda: 1000)
    monkeypatch.setattr(seg.backend, "labels", lambda *a, **k: pytest.fail("the graph ran"))
    with pytest.raises(RuntimeBackendError, match=r"needs .* GB, more than the 0.0 GB available. Re-export with "
                                                   r"--with-logits"):
        seg.predict(scenes[0])


@pytest.mark.slow
def test_static_preprocess_onnx_gives_the_torch_labels(static_export, scenes, torch_labels):
    seg = Segmenter(static_export.onnx_path)
    assert seg.backend.has_output_size and not seg.backend.has_logits and seg.backend.accepts_uint8
    agree = _agreement(seg, scenes, torch_labels["whole"])
    print(f"static {seg.input_hw} --preprocess fp32 ONNX, whole: {[f'{a * 100:.4f} %' for a in agree]}")
    assert min(agree) >= MIN_AGREEMENT, agree


@pytest.mark.slow
def test_the_old_labels_only_path_was_not_exact(static_export, scenes, torch_labels):
    """What the output_size input fixes: labels at the input size, resized nearest-neighbour, are not exact."""
    from semask_deploy.runtime.pipeline import labels_to_size, prepare

    seg = Segmenter(static_export.onnx_path)
    worse = []
    for im, ref in zip(scenes, torch_labels["whole"]):
        x = prepare(im, None, exact_size=seg.input_hw)
        small = seg.backend.labels(x)[0]  # output_size defaults to the input size
        assert small.shape == tuple(seg.input_hw)
        worse.append(float((labels_to_size(small, im.shape[:2]) == ref).mean()))
    assert min(worse) < MIN_AGREEMENT, worse


@pytest.mark.slow
def test_new_graphs_pass_the_offline_tensorrt_check(dynamic_export, static_export, capsys):
    for res in (dynamic_export, static_export):
        assert export_main(["--check-trt", str(res.onnx_path)]) == 0
        assert "OK" in capsys.readouterr().out
        names = [i["name"] for i in res.metadata["inputs"]]
        assert names[1:] == ["output_size"] and res.metadata["output_size_input"]
        assert res.metadata["outputs"][0]["shape"][1:] == ["Ho", "Wo"]
