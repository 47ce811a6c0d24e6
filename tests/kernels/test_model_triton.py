"""The whole model on the ``triton`` attention backend matches the official golden outputs (fp32).

On a CPU-only machine this runs the kernels in the Triton interpreter (TRITON_INTERPRET=1, set by the
test conftest before triton is imported)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semask_deploy import load_model

pytest.importorskip("triton")


@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["_odd"])  # odd sizes: padding, shifts and odd merges everywhere
def test_triton_backend_matches_golden(golden, suffix, tmp_path):
    model = load_model(golden.write_mmseg_checkpoint(tmp_path / "m.pth"), attention_backend="triton")
    x = torch.from_numpy(golden["input" + suffix])
    with torch.inference_mode():
        feats, sems = model.backbone(x)
        for i in range(4):
            np.testing.assert_allclose(feats[i].numpy(), golden[f"feat{i}{suffix}"], atol=1e-4, rtol=1e-5)
            np.testing.assert_allclose(sems[i].numpy(), golden[f"sem{i}{suffix}"], atol=1e-4, rtol=1e-5)
        logits = model(x)
    np.testing.assert_allclose(logits.numpy(), golden["seg_logits" + suffix], atol=1e-4, rtol=1e-5)


def test_triton_backend_needs_cuda_or_interpreter(tiny_ckpt, monkeypatch):
    from semask_deploy.errors import ConfigError

    model = load_model(tiny_ckpt, attention_backend="triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        model(torch.zeros(1, 3, 32, 32))
    monkeypatch.setenv("TRITON_INTERPRET", "false")
    monkeypatch.setenv("SEMASK_ATTN", "triton")  # the error names where the choice came from
    with pytest.raises(ConfigError, match=r"triton' \(chosen by the environment variable SEMASK_ATTN\) needs"):
        model(torch.zeros(1, 3, 32, 32))
    from semask_deploy.model._inputs import check_image_batch

    monkeypatch.setenv("TRITON_INTERPRET", "true")  # Triton's own spellings of "on" are accepted
    check_image_batch(torch.zeros(1, 3, 32, 32), torch.float32, "triton")
