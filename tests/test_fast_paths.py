"""The CPU fast paths of the ``sdpa`` backend against plain PyTorch: Winograd convolution, fused resize+argmax,
oneDNN linears, and the whole model against the ``eager`` reference at sizes where every fast path runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semask_deploy.config import VARIANTS, SeMaskConfig
from semask_deploy.model import SeMaskSegmentor
from semask_deploy.model import fast, winograd


@pytest.mark.parametrize(
    "n,cin,cout,h,w",
    [(1, 192, 256, 64, 64), (2, 8, 16, 13, 7), (1, 4, 4, 1, 1), (1, 16, 8, 5, 9), (2, 32, 24, 33, 30)],
)
@pytest.mark.parametrize("relu", [False, True])
def test_winograd_matches_conv2d(n, cin, cout, h, w, relu):
    torch.manual_seed(0)
    x = torch.randn(n, cin, h, w)
    weight = torch.randn(cout, cin, 3, 3) / (3 * cin**0.5)
    bias = torch.randn(cout)
    want = F.conv2d(x, weight, bias, padding=1)
    if relu:
        want = want.relu()
    got = winograd.conv3x3(x.contiguous(memory_format=torch.channels_last), winograd.transform_weight(weight), bias, relu)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    # F(4×4, 3×3) in fp32: error relative to the largest output stays around 4e-6
    torch.testing.assert_close(got, want, atol=2e-5 * want.abs().max().item(), rtol=0)


def test_winograd_is_used_only_where_it_pays():
    big = torch.nn.Conv2d(256, 256, 3, padding=1)
    assert fast._winograd_pays(big, torch.empty(1, 256, 64, 64))
    assert not fast._winograd_pays(big, torch.empty(1, 256, 16, 16))
    assert not fast._winograd_pays(torch.nn.Conv2d(96, 256, 3, padding=1), torch.empty(1, 96, 128, 128))
    assert not fast._winograd_pays(torch.nn.Conv2d(256, 256, 3, padding=1, stride=2), torch.empty(1, 256, 64, 64))


@pytest.mark.parametrize(
    "n,k,h,w,size",
    [
        (1, 150, 32, 32, (128, 128)),  # ×4, the usual case
        (2, 19, 25, 43, (100, 171)),  # non-integer ratio, batch 2
        (1, 7, 5, 3, (17, 9)),
        (1, 3, 1, 1, (4, 4)),
        (1, 5, 40, 40, (23, 31)),  # downscale
    ],
)
def test_resize_argmax_matches_interpolate_then_argmax(n, k, h, w, size):
    torch.manual_seed(1)
    logits = torch.randn(n, k, h, w) * 4
    want = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)
    for chunk in (1, 3, 8):
        got = fast.resize_argmax(logits, size, rows_per_chunk=chunk)
        assert got.dtype == torch.int64 and got.shape == want.shape
        assert torch.equal(got, want)


def test_linear_paths_match_f_linear():
    torch.manual_seed(2)
    layers = [torch.nn.Linear(24, o) for o in (10, 10, 24)]
    x = torch.randn(2, 37, 24)
    with torch.inference_mode():
        for layer in layers:
            torch.testing.assert_close(fast.linear(layer, x), F.linear(x, layer.weight, layer.bias))
            torch.testing.assert_close(fast.linear(layer, x, gelu=True), F.gelu(layer(x)))
        fused = fast.fused_linear(layers, x)
        for got, layer in zip(fused, layers):
            torch.testing.assert_close(got, layer(x))
        layers[2].weight.mul_(2)  # new weights invalidate the cached concatenation
        torch.testing.assert_close(fast.fused_linear(layers, x)[2], layers[2](x))
    # with autograd the plain layers run, so gradients reach the parameters
    out = fast.fused_linear(layers, x)
    sum(o.sum() for o in out).backward()
    assert all(layer.weight.grad is not None for layer in layers)


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(3)
    eager = SeMaskSegmentor(VARIANTS["semask_swin_t_ade20k"], attention_backend="eager").eval()
    for p in eager.parameters():
        p.data.normal_(0, 0.02)
    for m in eager.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    fast_model = SeMaskSegmentor(VARIANTS["semask_swin_t_ade20k"], attention_backend="sdpa").eval()
    fast_model.load_state_dict(eager.state_dict())
    return eager, fast_model


def test_sdpa_matches_eager_where_every_fast_path_runs(tiny_pair):
    """SeMask-T at 263×258: padded windows in every stage, odd head sizes, Winograd on the 33×33 maps."""
    eager, fast_model = tiny_pair
    x = torch.randn(1, 3, 263, 258)
    with torch.inference_mode():
        want, got = eager(x), fast_model(x)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
        labels = fast_model.predict(x)
    assert torch.equal(labels, want.argmax(1))


def _tiny_config() -> SeMaskConfig:
    base = VARIANTS["semask_swin_t_ade20k"]
    return SeMaskConfig(
        embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=3, sem_window_size=3,
        num_classes=5, sem_num_classes=5, sem_modes=("window", "window", "global", "global"),
        head_channels=16, mlp_ratio=base.mlp_ratio, patch_size=base.patch_size,
    )


def test_training_gradients_match_eager():
    """Padded windows take their q/k/v from the biases on the fast path: their gradients must still flow."""
    torch.manual_seed(4)
    cfg = _tiny_config()
    models = [SeMaskSegmentor(cfg, attention_backend=b).train() for b in ("eager", "sdpa")]
    models[1].load_state_dict(models[0].state_dict())
    for m in models:
        m.decode_head.dropout.p = 0.0
        for p in m.parameters():
            if p.dim() == 1 and p.numel() > 1:
                p.data.normal_(0, 0.1)  # non-zero biases so the padded tokens matter
        for layer in m.backbone.layers:
            layer.semantic_layer.class_injection[0].gamma.data.fill_(0.5)
    models[1].load_state_dict(models[0].state_dict())
    x = torch.randn(2, 3, 37, 29)
    grads = []
    for m in models:
        seg, sem = m(x)
        (seg.square().mean() + sem.square().mean()).backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], atol=1e-5, rtol=1e-4, msg=k)


def test_fused_linear_without_biases_runs_the_layers():
    layers = [torch.nn.Linear(8, 3, bias=False), torch.nn.Linear(8, 5)]
    x = torch.randn(4, 8)
    with torch.inference_mode():
        for got, layer in zip(fast.fused_linear(layers, x), layers):
            torch.testing.assert_close(got, layer(x))


def test_eager_runs_in_bfloat16():
    """A bf16 eager model: the float32 shift mask must follow the attention's dtype (attn @ v failed)."""
    import semask_deploy as sd
    from semask_deploy.config import SeMaskConfig

    cfg = SeMaskConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7, sem_window_size=7,
                       num_classes=5, sem_num_classes=5, sem_modes=("window", "window", "global", "global"),
                       head_channels=16)
    torch.manual_seed(0)
    model = sd.build_model(cfg, attention_backend="eager").eval()
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        ref = model(x)
        out = model.to(torch.bfloat16)(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.parametrize("how", ["built_inside", "converted_inside"])
def test_fast_paths_with_inference_mode_parameters(how):
    """Parameters created or converted inside torch.inference_mode are inference tensors (no version counter):
    the fast paths' caches must not crash on them and must give the eager result."""
    cfg = SeMaskConfig(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=7, sem_window_size=7,
                       num_classes=19, sem_num_classes=19, sem_modes=("window", "window", "global", "global"),
                       head_channels=32)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 45, 61)
    if how == "built_inside":
        with torch.inference_mode():
            model = SeMaskSegmentor(cfg, attention_backend="sdpa").eval()
    else:
        model = SeMaskSegmentor(cfg, attention_backend="sdpa").eval()
        with torch.inference_mode():
            model = model.double().float()
    with torch.inference_mode():
        got = model(x)
        got_again = model(x)  # second call: the caches are consulted
        model.set_attention_backend("eager")
        want = model(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_again, got)


@pytest.mark.parametrize("how", ["eval", "clear_caches", "set_attention_backend"])
def test_weights_written_through_data_are_seen_after_eval_or_clear_caches(how):
    """Writes through .data (an EMA update, hand edits) do not bump versions, so the version-keyed caches (folded
    BN, fused q/k/v, attention biases) kept the old weights: eval(), clear_caches() and set_attention_backend drop
    them."""
    cfg = SeMaskConfig(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=7, sem_window_size=7,
                       num_classes=19, sem_num_classes=19, sem_modes=("window", "window", "global", "global"),
                       head_channels=32)
    torch.manual_seed(0)
    model = SeMaskSegmentor(cfg, attention_backend="sdpa").eval()
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        model(x)  # fills the caches
        for p in model.parameters():
            p.data.mul_(1.1)
        for b in model.buffers():
            if b.is_floating_point():
                b.data.mul_(1.1)
        {"eval": model.eval, "clear_caches": model.clear_caches,
         "set_attention_backend": lambda: model.set_attention_backend("sdpa")}[how]()
        got = model(x)
        want = model.set_attention_backend("eager")(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_a_model_that_ran_can_be_deep_copied_pickled_and_saved(tmp_path):
    """The conv cache held oneDNN-packed weights (opaque tensors): deepcopy, pickle and torch.save(model)
    failed after the first forward. The caches now travel empty and are rebuilt."""
    import copy
    import pickle

    from semask_deploy import load_model
    from semask_deploy.assets import demo_checkpoint

    model = load_model(demo_checkpoint())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
    assert any("_semask_folded" in m.__dict__ for m in model.modules())  # the fast path did run
    twins = [copy.deepcopy(model), pickle.loads(pickle.dumps(model))]
    torch.save(model, tmp_path / "m.pt")
    twins.append(torch.load(tmp_path / "m.pt", weights_only=False))
    for twin in twins:
        assert all(not m.__dict__.get("_semask_folded") for m in twin.modules())
        with torch.no_grad():
            torch.testing.assert_close(twin(x), want, rtol=0, atol=0)
