"""Segmenter and semask-infer on a small random official-layout Mask2Former checkpoint, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semask_deploy.api import load_model
from semask_deploy.checkpoint import save_checkpoint
from semask_deploy.data.transforms import resize_shortest_edge, shortest_edge_size

DATA = Path(__file__).resolve().parents[1] / "data" / "m2f"


def test_shortest_edge_size_rule():
    # detectron2 ResizeShortestEdge(640, 2560) / (1024, 2048)
    assert shortest_edge_size(480, 640, 640, 2560) == (640, 853)
    assert shortest_edge_size(512, 683, 640, 2560) == (640, 854)
    assert shortest_edge_size(1024, 2048, 1024, 2048) == (1024, 2048)
    assert shortest_edge_size(100, 1000, 640, 2560) == (256, 2560)  # long side capped
    assert shortest_edge_size(1, 8000, 640, 2560) == (1, 2560)  # a strip stays 1 high (detectron2 would give 0)
    img = np.zeros((48, 64, 3), np.uint8)
    assert resize_shortest_edge(img, 96, 384).shape == (96, 128, 3)


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    """The golden Mask2Former (official layout, detectron2 file) and a copy with a small test resize."""
    z = np.load(DATA / "golden_mask2former_ade20k_small.npz")
    sd = {k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("sd/")}
    d = tmp_path_factory.mktemp("m2f_rt")
    torch.save({"model": sd, "iteration": 0}, d / "official.pth")
    model = load_model(d / "official.pth")
    assert model.config.resize_rule["min_size"] == 640 and model.config.resize_rule["max_size"] == 2560
    import dataclasses

    model.config = dataclasses.replace(model.config, min_size_test=96, max_size_test=384)
    save_checkpoint(model, d / "small.pth")
    return d / "small.pth"


def test_segmenter_matches_pipeline(small_ckpt):
    from semask_deploy.runtime import Segmenter

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(45, 70, 3), dtype=np.uint8)
    seg = Segmenter(small_ckpt)
    labels = seg.predict(img)
    assert labels.shape == (45, 70) and labels.dtype == np.int64
    assert seg.predict(np.zeros((1, 2000, 3), np.uint8)).shape == (1, 2000)  # short side rounds below 1
    # the same pipeline by hand: ResizeShortestEdge(96, 384) → (x − mean)/std → scores → resize → argmax
    model = load_model(small_ckpt)
    r = resize_shortest_edge(img, 96, 384)
    assert r.shape[:2] == (96, 149)
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    x = ((torch.from_numpy(r).permute(2, 0, 1).float() - mean) / std)[None]
    with torch.no_grad():
        scores = F.interpolate(model(x), size=(45, 70), mode="bilinear", align_corners=False)
    assert np.array_equal(labels, scores.argmax(1)[0].numpy())


def test_semask_infer_cli(small_ckpt, tmp_path):
    import cv2

    from semask_deploy.cli.infer import main

    rng = np.random.default_rng(1)
    cv2.imwrite(str(tmp_path / "x.png"), rng.integers(0, 256, size=(40, 52, 3), dtype=np.uint8))
    rc = main(["--model", str(small_ckpt), "--image", str(tmp_path / "x.png"), "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 0
    lab = cv2.imread(str(tmp_path / "out" / "x_labels.png"), cv2.IMREAD_UNCHANGED)
    assert lab.shape == (40, 52) and lab.max() < 150
    assert (tmp_path / "out" / "x_overlay.png").exists()


def test_cli_error_on_fpn_confusion(tmp_path, capsys):
    from semask_deploy.cli.infer import main

    torch.save({"model": {"sem_seg_head.predictor.query_feat.weight": torch.zeros(2, 4)}}, tmp_path / "bad.pth")
    cv2 = pytest.importorskip("cv2")
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((8, 8, 3), np.uint8))
    rc = main(["--model", str(tmp_path / "bad.pth"), "--image", str(tmp_path / "x.png"), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err


@pytest.mark.parametrize("bad,needle", [
    (np.zeros((1, 3, 32, 32), np.float32), "torch.from_numpy"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "normalise it first"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.float64), "x.to(torch.float32)"),
    (torch.zeros(0, 3, 32, 32), "empty batch"),
    (torch.zeros(1, 3, 0, 0), "empty batch"),
    (torch.zeros(1, 4, 32, 32), "(N, 3, H, W)"),
    (torch.full((1, 3, 40, 40), float("nan")), "NaN or infinite"),  # was an index error in MSDeformAttn
    (torch.zeros(1, 3, 32, 32).index_fill_(3, torch.tensor([5]), float("inf")), "NaN or infinite"),
])
def test_bad_inputs_to_the_models_say_what_to_pass(small_ckpt, bad, needle):
    """Both families (SeMask-FPN and Mask2Former), forward and predict: a ConfigError, not a deep torch error."""
    from semask_deploy.assets import demo_checkpoint
    from semask_deploy.errors import ConfigError

    for model in (load_model(demo_checkpoint()), load_model(small_ckpt)):
        for call in (model, model.predict):
            with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
                with torch.no_grad():
                    call(bad)


def test_model_call_with_autograd_on_matches_no_grad(small_ckpt):
    """The README's ``scores = model(x)`` (no torch.no_grad) on the default sdpa backend: the CPU
    deformable-attention fast path must not crash under autograd (it did: out= ops), and gives the no-grad scores."""
    model = load_model(small_ckpt)
    x = torch.randn(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    scores = model(x)  # autograd on, parameters require grad
    assert scores.requires_grad
    torch.testing.assert_close(scores.detach(), ref, atol=1e-4, rtol=1e-5)  # SDPA picks other kernels under autograd
    scores[:, :, 3:9, 5:11].sum().backward()
    grad = model.sem_seg_head.pixel_decoder.transformer.encoder.layers[0].self_attn.sampling_offsets.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
