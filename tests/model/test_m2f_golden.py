"""SeMask Mask2Former / MaskFormer / FaPN / MSFaPN vs the official code's golden fixtures (tests/data/m2f).

Each model is built by ``load_model`` from a detectron2-format ``.pth`` written from the fixture's ``sd/``
arrays; every stored intermediate is compared at |Δ| ≤ 1e-4 + 1e-5·|ref|, the attention masks exactly, for
the eager and the sdpa backends.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from semask_deploy.api import load_model
from semask_deploy.model.mask_former import MaskFormerSegmentor, postprocess, semantic_inference

DATA = Path(__file__).resolve().parents[1] / "data" / "m2f"
ARCHS = [
    "mask2former_ade20k", "mask2former_cityscapes", "maskformer_ade20k",
    "mask2former_fapn_ade20k", "mask2former_msfapn_ade20k",
]


def _close(name: str, got: torch.Tensor, ref: np.ndarray) -> float:
    got = got.detach().float()
    ref_t = torch.from_numpy(np.asarray(ref)).float()
    assert got.shape == ref_t.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref_t.shape)}"
    err = (got - ref_t).abs()
    bad = err > 1e-4 + 1e-5 * ref_t.abs()
    assert not bad.any(), f"{name}: max |Δ| {err.max().item():.3g} beyond 1e-4 + 1e-5·|ref|"
    return err.max().item()


@pytest.fixture(scope="module", params=ARCHS)
def golden(request, tmp_path_factory):
    z = np.load(DATA / f"golden_{request.param}_small.npz")
    sd = {k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("sd/")}
    path = tmp_path_factory.mktemp("m2f") / f"{request.param}.pth"
    torch.save({"model": sd, "optimizer": {}, "scheduler": {}, "iteration": 1}, path)
    model = load_model(path, attention_backend="eager")
    return request.param, z, model


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_golden(golden, backend):
    name, z, model = golden
    assert isinstance(model, MaskFormerSegmentor)
    model.set_attention_backend(backend)
    head = model.sem_seg_head
    for suf in ("", "_odd"):
        x = torch.from_numpy(z["input" + suf])
        head.pixel_decoder.trace = {} if hasattr(head.pixel_decoder, "trace") else None
        head.predictor.trace = {} if hasattr(head.predictor, "trace") else None
        with torch.no_grad():
            padded = model.pad(x)
            _close("input_padded" + suf, padded, z["input_padded" + suf])
            feats, sems = model.backbone(padded)
            for i in range(4):
                _close(f"res{i + 2}{suf}", feats[i], z[f"res{i + 2}{suf}"])
                _close(f"sem_res{i + 2}{suf}", sems[i], z[f"sem_res{i + 2}{suf}"])
            mask_features, multi = head.pixel_decoder(feats)
            _close("mask_features" + suf, mask_features, z["mask_features" + suf])
            if "maskformer" in name:
                _, logits_all, masks_all = head.predictor.forward_all(feats[3], mask_features)
            else:
                for i, ms in enumerate(multi):
                    _close(f"pixdec_ms{i}{suf}", ms, z[f"pixdec_ms{i}{suf}"])
                head.predictor(multi, mask_features)
                trace = head.predictor.trace
                for k, v in (head.pixel_decoder.trace or {}).items():
                    _close(k + suf, v, z[k + suf])
                for i in range(6):
                    got = trace[f"dec_attn_mask{i}"].to(torch.uint8).numpy()
                    assert (got == z[f"dec_attn_mask{i}{suf}"]).all(), f"dec_attn_mask{i}{suf} differs"
                logits_all, masks_all = torch.stack(trace["dec_pred_logits"]), torch.stack(trace["dec_pred_masks"])
            _close("dec_pred_logits" + suf, logits_all, z["dec_pred_logits" + suf])
            _close("dec_pred_masks" + suf, masks_all, z["dec_pred_masks" + suf])
            sem = semantic_inference(logits_all[-1], masks_all[-1], tuple(padded.shape[2:]))
            out_hw = tuple(int(v) for v in z["out_hw" + suf])
            _close("sem_seg" + suf, postprocess(sem[0], tuple(x.shape[2:]), out_hw), z["sem_seg" + suf])
            scores = model(x)
            if suf == "":
                _close("model(x)", scores[0], z["sem_seg"])
            labels = model.predict(x)
            assert torch.equal(labels, scores.argmax(1))
    head.pixel_decoder.trace = head.predictor.trace = None


def test_cityscapes_batch_and_padded_scores():
    """Both images in one call (padded to a common size), and the padded-size scores of the odd image."""
    z = np.load(DATA / "golden_mask2former_cityscapes_small.npz")
    sd = {k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("sd/")}
    from semask_deploy.checkpoint_maskformer import infer_maskformer_config

    cfg = infer_maskformer_config(sd, {}, "golden")
    model = MaskFormerSegmentor(cfg, attention_backend="sdpa").eval()
    model.load_state_dict(sd, strict=True)
    a, b = torch.from_numpy(z["input"]), torch.from_numpy(z["input_odd"])
    with torch.no_grad():
        logits, masks = model.forward_heads(b)
        _close("semseg_padded_odd", semantic_inference(logits, masks, model.pad_size(b))[0], z["semseg_padded_odd"])
        hp, wp = 96, 128
        batch = torch.zeros(2, 3, hp, wp)
        batch[0, :, : a.shape[2], : a.shape[3]] = a[0]
        batch[1, :, : b.shape[2], : b.shape[3]] = b[0]
        logits, masks = model.forward_heads(batch)
        sem = semantic_inference(logits, masks, (hp, wp))
        for i, (x, suf) in enumerate(((a, ""), (b, "_odd"))):
            out = postprocess(sem[i], tuple(x.shape[2:]), tuple(int(v) for v in z["out_hw" + suf]))
            _close("batch2_sem_seg" + suf, out, z["batch2_sem_seg" + suf])


@pytest.mark.slow
def test_triton_backend_matches_golden():
    """The ``triton`` backend (Swin + semantic + deformable-attention kernels; the interpreter on the CPU)."""
    import os

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    pytest.importorskip("triton")
    z = np.load(DATA / "golden_mask2former_ade20k_small.npz")
    sd = {k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("sd/")}
    from semask_deploy.checkpoint_maskformer import infer_maskformer_config

    model = MaskFormerSegmentor(infer_maskformer_config(sd, {}, "golden"), attention_backend="triton").eval()
    model.load_state_dict(sd, strict=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    x = torch.from_numpy(z["input_odd"]).to(device)
    with torch.no_grad():
        scores = model(x).cpu()
    out_hw = tuple(int(v) for v in z["out_hw_odd"])
    _close("sem_seg_odd (triton)", postprocess(scores[0], tuple(x.shape[2:]), out_hw), z["sem_seg_odd"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_a_model_cast_to_another_float_type_runs(dtype, tmp_path):
    """`.to(torch.bfloat16)` / `.double()` of a whole Mask2Former: the pixel decoder's official `.float()` and the
    float32 reference points of the eager deformable attention made it fail ("Input type (float) and bias type
    (c10::BFloat16) should be the same"); now both backends run in the model's dtype."""
    z = np.load(DATA / "golden_mask2former_msfapn_ade20k_small.npz")
    sd = {k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("sd/")}
    torch.save({"model": sd}, tmp_path / "m.pth")
    x = torch.from_numpy(z["input_odd"])
    for backend in ("eager", "sdpa"):
        model = load_model(tmp_path / "m.pth", attention_backend=backend)
        with torch.inference_mode():
            ref = model(x)
            out = model.to(dtype)(x.to(dtype))
        assert out.dtype == dtype and out.shape == ref.shape and torch.isfinite(out).all()
        assert (out.float().argmax(1) == ref.argmax(1)).float().mean() > 0.5, backend  # the same model


def test_deformable_sampling_keeps_float32_locations_for_a_bf16_value():
    """A bf16 model's sampling grid (float32 reference points + offsets) is not rounded to bf16: a 256-wide level
    would sample up to a quarter pixel off. The result equals sampling the bf16 values in float32."""
    from semask_deploy.model.msdeform_attn import ms_deform_attn_core

    g = torch.Generator().manual_seed(0)
    shapes = [(64, 256), (32, 128)]
    n, heads, d, lq, points = 1, 2, 8, 5, 4
    value = torch.randn(n, sum(h * w for h, w in shapes), heads, d, generator=g).to(torch.bfloat16)
    locations = torch.rand(n, lq, heads, len(shapes), points, 2, generator=g)
    weights = torch.softmax(torch.randn(n, lq, heads, len(shapes) * points, generator=g), -1).view(
        n, lq, heads, len(shapes), points)
    out = ms_deform_attn_core(value, shapes, locations, weights)
    assert out.dtype == torch.bfloat16
    want = ms_deform_attn_core(value.float(), shapes, locations, weights).to(torch.bfloat16)
    assert torch.equal(out, want)


@pytest.mark.parametrize("arch,drop", [
    ("mask2former_ade20k", "sem_seg_head.predictor.query_feat.weight"),
    ("mask2former_ade20k", "sem_seg_head.pixel_decoder.transformer.level_embed"),
    ("mask2former_fapn_ade20k", "sem_seg_head.pixel_decoder.align_1.offset.weight"),
    ("mask2former_msfapn_ade20k", "sem_seg_head.pixel_decoder.align_1.offset.weight"),
])
def test_a_missing_key_that_told_the_architecture_is_named(tmp_path, arch, drop):
    """The architecture was read from single keys: without one of them the error named a MaskFormer key the file
    never had, an "unsupported combination", or six "unexpected" keys of another architecture."""
    from semask_deploy.errors import CheckpointError

    z = np.load(DATA / f"golden_{arch}_small.npz")
    sd = {k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("sd/") and k[3:] != drop}
    torch.save({"model": sd}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="(missing key\\(s\\): |key ')" + drop.replace(".", r"\.")):
        load_model(tmp_path / "m.pth")
