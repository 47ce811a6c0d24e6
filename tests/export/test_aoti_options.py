"""``--fmt aoti`` option checks and package metadata (fast; the compile itself is in tests/examples/test_cpp_aoti.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from semask_deploy.cli.export import main as export_main
from semask_deploy.errors import ConfigError, RuntimeBackendError
from semask_deploy.export.pipeline import ExportOptions, check_options


@pytest.mark.parametrize("kwargs", [dict(precision="fp16"), dict(precision="int8"), dict(preprocess=True)])
def test_aoti_refuses_what_it_does_not_export(kwargs):
    with pytest.raises(ConfigError, match="--fmt aoti"):
        check_options(ExportOptions(demo=True, fmt="aoti", **kwargs))


def test_device_only_for_aoti():
    with pytest.raises(ConfigError, match="--device is for --fmt aoti"):
        check_options(ExportOptions(demo=True, fmt="onnx", device="cuda"))
    check_options(ExportOptions(demo=True, fmt="aoti", device="cuda"))  # checked when compiling


def test_cli_error_is_one_line(capsys, tmp_path):
    assert export_main(["--demo", "--fmt", "aoti", "--precision", "fp16", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--fmt aoti" in err[0]


def test_cuda_export_needs_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from semask_deploy.export.aoti import export_aoti


    with pytest.raises(ConfigError, match="CUDA GPU"):
        export_aoti(torch.nn.Linear(1, 1), tmp_path / "x.pt2", device="cuda")


def test_package_metadata_strings():
    from semask_deploy.api import model_from_checkpoint
    from semask_deploy.assets import demo_checkpoint
    from semask_deploy.checkpoint import read_checkpoint
    from semask_deploy.export.aoti import package_metadata

    model = model_from_checkpoint(read_checkpoint(demo_checkpoint()))
    meta = package_metadata(model, with_logits=True)
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["semask.test_scale"] == ",".join(map(str, model.config.test_scale))
    assert meta["semask.outputs"] == "labels,logits"
    assert meta["semask.num_classes"] == str(model.config.num_classes)
    assert meta["semask.resize_kind"] == "keep_ratio"  # what the C++ app reproduces


def test_package_metadata_names_the_shortest_edge_resize_of_mask_classification_models():
    """Mask2Former & co resize with detectron2's shortest-edge rule and PIL's filter: the package says so, and the
    C++ app refuses it instead of resizing with the FPN rule and OpenCV (a wrong input before)."""
    import numpy as np
    import torch

    from semask_deploy.api import load_model
    from semask_deploy.export.aoti import package_metadata

    z = np.load(Path(__file__).resolve().parents[1] / "data" / "m2f" / "golden_mask2former_ade20k_small.npz")
    sd = {k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("sd/")}
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        torch.save({"model": sd, "iteration": 0}, Path(d) / "m2f.pth")
        model = load_model(Path(d) / "m2f.pth")
    assert package_metadata(model, with_logits=False)["semask.resize_kind"] == "shortest_edge"


def test_segmenter_pt2_without_file(tmp_path):
    from semask_deploy.runtime import Segmenter

    with pytest.raises(RuntimeBackendError, match="not found"):
        Segmenter(tmp_path / "missing_aoti.pt2")


def test_a_file_that_is_not_a_package_says_so(tmp_path):
    """torch would call any non-archive an "outdated pt2 file" and we would blame the torch version."""
    import json

    from semask_deploy.runtime import Segmenter

    bad = tmp_path / "m_aoti.pt2"
    bad.write_bytes(b"not a zip archive" * 10)
    (tmp_path / "m_aoti.json").write_text(json.dumps({
        "format": "semask-deploy", "format_version": 2, "kind": "aoti", "precision": "fp32", "num_classes": 2,
        "classes": ["a", "b"], "palette": [[0, 0, 0], [1, 1, 1]], "test_scale": [64, 64], "crop_size": [64, 64],
        "inputs": [{"name": "image", "shape": ["N", 3, "H", "W"], "dtype": "float32"}],
        "outputs": [{"name": "labels", "shape": ["N", "H", "W"], "dtype": "int32"}],
        "dynamic": {"N": True, "H": True, "W": True}, "aoti": {"device": "cpu"}}))
    with pytest.raises(RuntimeBackendError, match="not an AOTInductor package"):
        Segmenter(bad)
