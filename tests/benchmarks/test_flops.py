"""Analytic FLOPs against ``FlopCounterMode`` and against hand-written formulas."""

from __future__ import annotations

import math

import pytest

from semask_deploy.benchmarks.flops import (
    INTERP_FLOPS_PER_VALUE, analytic_flops, counter_flops, cross_check, format_table, inclusive_by_module,
)

from .conftest import TINY


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("batch,h,w", [(1, 64, 64), (2, 67, 93), (1, 33, 50)])
def test_analytic_matches_flop_counter_per_module(tiny_model, attention, batch, h, w):
    """Every conv/linear/matmul FLOP agrees with FlopCounterMode, in total and per module."""
    check = cross_check(tiny_model, h, w, batch, attention)
    assert check["counter"] > 0
    assert check["ratio"] == pytest.approx(1.0, abs=1e-9)
    # every Linear/Conv leaf, block, semantic layer, stage, head (the sdpa path calls the blocks' Linears
    # directly, not through their WindowAttention/Mlp parents)
    assert len(check["modules"]) > (90 if attention == "eager" else 80)
    for name, m in check["modules"].items():
        assert m["ratio"] == pytest.approx(1.0, abs=1e-9), (name, m)
    # the parts FlopCounterMode cannot see are reported apart, not hidden in the ratio
    assert check["analytic_interp"] > 0
    assert check["analytic_total"] == check["analytic_gemm"] + check["analytic_interp"]


def test_counter_sees_sdpa_only_under_math(tiny_model):
    """The sdpa model's global semantic attention is counted (MATH backend), so sdpa ≈ analytic too."""
    cnt = counter_flops(tiny_model, 64, 64, 1, "sdpa")
    rep = analytic_flops(TINY, 64, 64, 1, "sdpa")
    sem3 = inclusive_by_module(rep.rows)["backbone.layers.3.semantic_layer"]
    assert cnt["modules"]["backbone.layers.3.semantic_layer"] == sem3


def test_hand_computed_rows():
    """A few rows written out by hand: padding, global attention, head convs, final resize."""
    b, h, w = 2, 64, 80
    rep = analytic_flops(TINY, h, w, batch=b, attention="eager")
    rows = {r.name: r for r in rep.rows}
    # patch embed: 16x20 tokens, conv 3→32 4x4
    assert rows["backbone.patch_embed.proj"].flops == 2 * b * 16 * 20 * 32 * 3 * 16
    # stage 0 window attention: 16x20 padded to 21x21 (window 7) → 9 windows of 49 tokens
    assert rows["backbone.layers.0.blocks.0.attn.qkv"].flops == 2 * b * 21 * 21 * 32 * 96
    assert rows["backbone.layers.0.blocks.1.attn.q@k"].flops == 2 * b * 9 * 49 * 49 * 32
    assert rows["backbone.layers.0.blocks.0.attn.proj"].flops == 2 * b * 21 * 21 * 32 * 32
    assert rows["backbone.layers.0.blocks.0.mlp.fc1"].flops == 2 * b * 16 * 20 * 32 * 128  # MLP: real tokens
    # stage 0 semantic attention (windowed, eager): projections on the padded windows
    assert rows["backbone.layers.0.semantic_layer.class_injection.0.mlp_cls_q"].flops == 2 * b * 441 * 32 * 8
    assert rows["backbone.layers.0.semantic_layer.A@v"].flops == 2 * b * 9 * 49 * 49 * 32
    assert rows["backbone.layers.0.semantic_layer.class_injection.0.mlp_res"].flops == 2 * b * 320 * 32 * 32
    # stage 2 (4x5 tokens, C=128) global semantic attention: N² over all tokens
    n = 4 * 5
    assert rows["backbone.layers.2.semantic_layer.q@k"].flops == 2 * b * n * n * 8
    assert rows["backbone.layers.2.semantic_layer.A@v"].flops == 2 * b * n * n * 128
    # patch merging 16x20 → 8x10, 4C → 2C
    assert rows["backbone.layers.0.downsample.reduction"].flops == 2 * b * 80 * 128 * 64
    # head: stride-32 map 2x3 → conv, ×2, conv, ×2, conv, ×2 → 16x24 ≠ 16x20 → one more resize
    assert rows["decode_head.scale_heads.3.0.conv"].flops == 2 * b * 2 * 3 * 256 * 256 * 9
    assert rows["decode_head.scale_heads.3.5.upsample"].flops == INTERP_FLOPS_PER_VALUE * b * 256 * 16 * 24
    assert "decode_head.resize.3" in rows and "decode_head.resize.1" not in rows
    assert rows["decode_head.conv_seg"].flops == 2 * b * 16 * 20 * 256 * 8
    assert rows["resize.logits"].flops == INTERP_FLOPS_PER_VALUE * b * 8 * h * w
    assert not rows["resize.logits"].counted


def test_backends_project_different_token_counts():
    eager = analytic_flops(TINY, 64, 80, attention="eager")
    sdpa = analytic_flops(TINY, 64, 80, attention="sdpa")
    triton = analytic_flops(TINY, 64, 80, attention="triton")
    export = analytic_flops(TINY, 64, 80, attention="export")
    name = "backbone.layers.0.semantic_layer.class_injection.0.mlp_v"
    get = lambda rep: next(r.flops for r in rep.rows if r.name == name)  # noqa: E731
    assert get(eager) == 2 * 441 * 32 * 32 and get(sdpa) == get(export) == 2 * 320 * 32 * 32
    qkv = lambda rep: next(r.flops for r in rep.rows if r.name.endswith("0.blocks.0.attn.qkv"))  # noqa: E731
    assert qkv(export) == qkv(eager) == 2 * 441 * 32 * 96 and qkv(sdpa) == qkv(triton) == 2 * 320 * 32 * 96
    assert triton.gemm == sdpa.gemm < export.gemm < eager.gemm


def test_fast_head_upsamples_each_group_once():
    """Levels 1–3 whose maps match before their last ×2 upsample share one upsample in sdpa."""
    ups = lambda rep, n: [r for r in rep.rows if r.op == "interp" and "scale_heads" in r.name  # noqa: E731
                          and r.flops == INTERP_FLOPS_PER_VALUE * 256 * n]
    # 64×64: every level is 8×8 before its last upsample → one 16×16 upsample instead of three
    eager, sdpa = analytic_flops(TINY, 64, 64, attention="eager"), analytic_flops(TINY, 64, 64, attention="sdpa")
    assert len(ups(eager, 16 * 16)) == 3 and len(ups(sdpa, 16 * 16)) == 1
    assert eager.interp - sdpa.interp == 2 * INTERP_FLOPS_PER_VALUE * 256 * 16 * 16
    # 64×80: levels 1, 2 are 8×10 but level 3 is 8×12 (⌈·/2⌉ grids) → two groups, level 3 still resized
    sdpa = analytic_flops(TINY, 64, 80, attention="sdpa")
    assert len(ups(sdpa, 16 * 20)) == 1 and len(ups(sdpa, 16 * 24)) == 1
    assert [r.name for r in sdpa.rows if r.name.startswith("decode_head.resize")] == ["decode_head.resize.3"]


def test_linear_in_batch_and_groups_sum_to_total():
    one = analytic_flops(TINY, 96, 128, batch=1, attention="sdpa")
    three = analytic_flops(TINY, 96, 128, batch=3, attention="sdpa")
    assert three.total == 3 * one.total
    groups = one.by_group()
    assert sum(groups.values()) == one.total
    assert {"patch_embed", "stage0.blocks", "stage2.semantic", "stage1.merge", "head", "resize"} <= set(groups)
    table = format_table(one)
    assert "backbone.layers.3.semantic_layer.q@k" in table and table.count("\n") > len(one.rows)
    assert "| head |" in format_table(one, grouped=True)


def test_bad_arguments():
    with pytest.raises(ValueError):
        analytic_flops(TINY, 0, 64)
    with pytest.raises(ValueError):
        analytic_flops(TINY, 64, 64, attention="flash")
    assert math.isfinite(analytic_flops(TINY, 5, 7).total)
