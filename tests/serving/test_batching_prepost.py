"""Bucketed batch inference and the ensemble's numpy pre/post-processing vs the runtime (no server)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semask_deploy.assets import demo_checkpoint
from semask_deploy.data.synthetic import SyntheticScenes
from semask_deploy.runtime import Segmenter
from semask_deploy.runtime.pipeline import prepare
from semask_deploy.serving import Limits, RequestError, check_images, predict_batch
from semask_deploy.serving.prepost import network_size, postprocess, preprocess


@pytest.mark.parametrize("hw,out", [((10, 13), (37, 53)), ((64, 64), (240, 320)), ((50, 40), (25, 20)),
                                    ((7, 9), (7, 9))])
def test_postprocess_equals_torch_bilinear_argmax(hw, out):
    logits = np.random.default_rng(0).standard_normal((2, 10, *hw)).astype(np.float32)
    resized = F.interpolate(torch.from_numpy(logits), size=out, mode="bilinear", align_corners=False).numpy()
    ref = resized.argmax(1)
    got = postprocess(logits, out)
    assert got.dtype == np.int32 and got.shape == (2, *out)
    # float rounding may flip a pixel only where two classes tie to ~1e-6
    diff = got != ref
    assert diff.mean() <= 1e-4
    picked = np.take_along_axis(resized, got[:, None].astype(np.int64), 1)[:, 0]
    assert np.all(np.abs(resized.max(1) - picked)[diff] < 1e-5)


@pytest.mark.parametrize("hw,scale", [((37, 53), (256, 256)), ((240, 320), (2048, 512)), ((31, 17), None),
                                      ((1, 5000), (2048, 512)), ((3, 3000), (256, 256))])  # strips stay ≥ 1 high
def test_preprocess_equals_runtime_prepare(hw, scale):
    img = np.random.default_rng(1).integers(0, 256, (*hw, 3), dtype=np.uint8)
    got = preprocess(np.stack([img, img]), scale)
    ref = prepare(img, scale)
    assert got.shape == (2, *ref.shape[1:])
    np.testing.assert_array_equal(got[1:], ref)
    assert network_size(*hw, scale) == tuple(ref.shape[2:])


def test_preprocess_exact_size_and_bad_input():
    img = np.zeros((1, 20, 30, 3), np.uint8)
    assert preprocess(img, (256, 256), exact=(64, 48)).shape == (1, 3, 64, 48)
    with pytest.raises(ValueError):
        preprocess(np.zeros((1, 0, 5, 3), np.uint8), None)
    assert preprocess(img, None, max_pixels=20 * 30).shape == (1, 3, 20, 30)
    with pytest.raises(ValueError, match="limit of 599 pixels"):
        preprocess(img, None, max_pixels=599)


def test_check_images_refuses_bad_requests():
    ok = check_images(np.zeros((8, 9, 3), np.uint8))
    assert ok.shape == (1, 8, 9, 3)
    for bad, what in [(np.zeros((1, 8, 9, 3), np.float32), "uint8"), (np.zeros((8, 9), np.uint8), "shape"),
                      (np.zeros((1, 8, 9, 4), np.uint8), "shape"), (np.zeros((1, 0, 0, 3), np.uint8), "empty"),
                      (np.zeros((0, 8, 9, 3), np.uint8), "empty"), (np.zeros((1, 101, 100, 3), np.uint8), "limit")]:
        with pytest.raises(RequestError, match=what):
            check_images(bad, Limits(max_pixels=100 * 100))


def test_predict_batch_buckets_mixed_sizes_and_equals_predict():
    seg = Segmenter(demo_checkpoint(), scale=(64, 64))
    sizes = [(24, 32), (48, 64), (32, 24), (30, 40), (24, 32)]  # 1st, 2nd, 4th, 5th share the 48x64 network size
    images = [SyntheticScenes(num_classes=10, size=hw, seed=i, length=1)[0][0] for i, hw in enumerate(sizes)]
    assert len({network_size(*hw, (64, 64)) for hw in sizes}) == 2
    calls = []
    logits = seg.backend.logits
    seg.backend.logits = lambda x: calls.append(x.shape) or logits(x)  # count forward passes
    got = predict_batch(seg, images, max_batch=3)
    seg.backend.logits = logits
    assert sorted(c[0] for c in calls) == [1, 1, 3]  # bucket of 4 in chunks of 3 + 1, and the 32x24 bucket
    for img, lab in zip(images, got):
        assert lab.dtype == np.int32 and lab.shape == img.shape[:2]
        np.testing.assert_array_equal(lab, seg.predict(img))


def test_bucketer_merges_concurrent_callers_of_equal_network_size():
    import threading

    from semask_deploy.serving.batching import Bucketer

    seg = Segmenter(demo_checkpoint(), scale=(64, 64))
    sizes = [(24, 32), (48, 64), (30, 40), (32, 24)]  # the first three → 48x64 network input, the last → 64x48
    images = [SyntheticScenes(num_classes=10, size=hw, seed=i, length=1)[0][0] for i, hw in enumerate(sizes)]
    bucketer = Bucketer(seg, max_batch=8, window_s=0.5)
    results: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: results.update({i: bucketer.predict([images[i]])[0]}))
               for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert bucketer.forwards == 2  # one forward per network size, not one per caller
    for i, img in enumerate(images):
        np.testing.assert_array_equal(results[i], seg.predict(img))


def test_network_size_is_the_shortest_edge_rule_at_every_size():
    """Every H, W up to 1500 (the cap matters at aspect ratios > 4, where a reordered float product rounded
    29×1024 to 73×2560 instead of detectron2's 72×2560)."""
    from semask_deploy.data.transforms import shortest_edge_size

    for rule in ((640, 2560), (1024, 2048)):
        bad = [(h, w) for h in range(1, 1500, 7) for w in range(1, 1500)
               if network_size(h, w, None, shortest_edge=rule) != shortest_edge_size(h, w, *rule)]
        assert not bad, bad[:5]
    assert network_size(29, 1024, None, shortest_edge=(640, 2560)) == (72, 2560)


@pytest.mark.parametrize("hw", [(45, 70), (70, 45), (100, 1000), (96, 96), (300, 200), (1, 800), (800, 1)])
def test_preprocess_shortest_edge_equals_runtime_rule(hw):
    """The Triton pre-processing of the mask-classification models = the runtime's ResizeShortestEdge."""
    from semask_deploy.data.transforms import shortest_edge_size
    from semask_deploy.runtime.pipeline import prepare_with_rule

    img = np.random.default_rng(2).integers(0, 256, (*hw, 3), dtype=np.uint8)
    assert network_size(*hw, None, shortest_edge=(96, 384)) == shortest_edge_size(*hw, 96, 384)
    got = preprocess(img[None], None, shortest_edge=(96, 384))
    ref = prepare_with_rule(img, {"kind": "shortest_edge", "min_size": 96, "max_size": 384})
    np.testing.assert_array_equal(got, ref)


def test_predict_batch_of_a_mask_classification_model_uses_its_resize_rule(tmp_path):
    """Served Mask2Former labels equal Segmenter.predict: the batcher resizes by the model's shortest-edge rule
    (it used the keep-ratio test scale, so served labels differed)."""
    import dataclasses
    from pathlib import Path

    from semask_deploy.api import load_model
    from semask_deploy.checkpoint import save_checkpoint

    z = np.load(Path(__file__).resolve().parents[1] / "data" / "m2f" / "golden_mask2former_ade20k_small.npz")
    torch.save({"model": {k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("sd/")}}, tmp_path / "o.pth")
    model = load_model(tmp_path / "o.pth")
    model.config = dataclasses.replace(model.config, min_size_test=64, max_size_test=128)
    save_checkpoint(model, tmp_path / "small.pth")
    seg = Segmenter(tmp_path / "small.pth")
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for hw in [(30, 50), (60, 100), (41, 29)]]
    assert seg.prepare(images[0]).shape[2:] == (64, 107)  # short side 64, not the keep-ratio test scale
    for img, lab in zip(images, predict_batch(seg, images, max_batch=2)):
        np.testing.assert_array_equal(lab, seg.predict(img))
