"""Fidelity against the official implementation's outputs (fp32: DESIGN.md's ~1e-5 relative, as a relative L2 error
≤ 1e-5 of every tensor, and elementwise ≤ 1e-4 absolute + 1e-5 relative)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semask_deploy import load_model

ATOL, RTOL = 1e-4, 1e-5
MAX_REL_L2 = 1e-5  # measured: ≤ 1e-6 on AVX-512 (eager and sdpa, 1 and 2 threads)


def _close(got: torch.Tensor, want: np.ndarray, name: str) -> None:
    g = got.detach().numpy().astype(np.float64)
    np.testing.assert_allclose(g, want, atol=ATOL, rtol=RTOL, err_msg=name)
    rel_l2 = np.linalg.norm(g - want) / max(np.linalg.norm(want), 1e-30)
    assert rel_l2 <= MAX_REL_L2, f"{name}: relative L2 error {rel_l2:.2e} > {MAX_REL_L2:.0e}"


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("suffix", ["", "_odd"])
def test_every_output_matches_official(golden, backend, suffix, tmp_path):
    path = golden.write_mmseg_checkpoint(tmp_path / "model.pth")
    model = load_model(path, attention_backend=backend)
    x = torch.from_numpy(golden["input" + suffix])
    with torch.inference_mode():
        feats, sems = model.backbone(x)
        for i in range(4):
            _close(feats[i], golden[f"feat{i}{suffix}"], f"feat{i}")
            _close(sems[i], golden[f"sem{i}{suffix}"], f"sem{i}")
        _close(model.decode_head(feats), golden["seg_logits_lowres" + suffix], "seg_logits_lowres")
        _close(model(x), golden["seg_logits" + suffix], "seg_logits")
        labels = model.predict(x)
    want = golden["seg_logits" + suffix].argmax(1)
    assert labels.dtype == torch.int64 and labels.shape == want.shape
    assert (labels.numpy() == want).mean() == 1.0


def test_training_mode_returns_semantic_logits(golden, tmp_path):
    model = load_model(golden.write_mmseg_checkpoint(tmp_path / "m.pth"), attention_backend="eager")
    model.train()
    model.decode_head.dropout.p = 0.0  # dropout is the only train/eval difference in the head math
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    x = torch.from_numpy(golden["input_odd"])
    seg, sem = model(x)
    _close(seg, golden["seg_logits_lowres_odd"], "seg_logits_lowres")
    _close(sem, golden["cls_logits_odd"], "cls_logits")


def test_batch_of_two_matches_single_images(golden_tiny, tmp_path):
    model = load_model(golden_tiny.write_mmseg_checkpoint(tmp_path / "m.pth"))
    x = torch.from_numpy(golden_tiny["input"])
    x2 = torch.cat([x, torch.flip(x, dims=[3])])
    with torch.inference_mode():
        batch = model(x2)
        single = model(x2[1:])
    _close(batch[:1], golden_tiny["seg_logits"], "batch[0]")
    torch.testing.assert_close(batch[1:], single, atol=ATOL, rtol=RTOL)


def test_inference_never_computes_the_semantic_branch(golden_tiny, tmp_path, monkeypatch):
    model = load_model(golden_tiny.write_mmseg_checkpoint(tmp_path / "m.pth"))

    def boom(*a, **k):
        raise AssertionError("training-only semantic branch was computed at inference")

    monkeypatch.setattr(model.decode_head, "semantic_logits", boom)
    with torch.inference_mode():
        model(torch.from_numpy(golden_tiny["input_odd"]))
        model.predict(torch.from_numpy(golden_tiny["input_odd"]))


def test_sdpa_cache_follows_new_weights(golden_tiny, tmp_path):
    """The fast path caches bias tables and packed weights; loading new weights must invalidate them."""
    model = load_model(golden_tiny.write_mmseg_checkpoint(tmp_path / "m.pth"))
    x = torch.from_numpy(golden_tiny["input"])
    with torch.inference_mode():
        before = model(x)
    sd = {k: (v * 0.9 if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    ref = load_model(golden_tiny.write_mmseg_checkpoint(tmp_path / "m2.pth"), attention_backend="eager")
    ref.load_state_dict(sd)
    with torch.inference_mode():
        after, want = model(x), ref(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, want, atol=ATOL, rtol=RTOL)


def test_env_override_and_bad_backend(tiny_ckpt, monkeypatch):
    from semask_deploy.errors import ConfigError

    monkeypatch.setenv("SEMASK_ATTN", "eager")
    assert load_model(tiny_ckpt).attention_backend == "eager"
    monkeypatch.delenv("SEMASK_ATTN")
    assert load_model(tiny_ckpt).attention_backend == "sdpa"
    with pytest.raises(ConfigError, match="attention backend must be one of"):
        load_model(tiny_ckpt, attention_backend="flash")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_without_gpu_is_a_clear_error(tiny_ckpt):
    from semask_deploy.errors import ConfigError

    with pytest.raises(ConfigError, match="no CUDA GPU"):
        load_model(tiny_ckpt, device="cuda")
