"""Analytic per-layer FLOPs of SeMask-FPN, cross-checked with ``torch.utils.flop_counter``.

Convention (the one ``FlopCounterMode`` uses): a convolution, a Linear or a matrix product costs
2 × multiply-accumulates; bias additions are not counted. Bilinear interpolation (the FPN head's ×2
upsampling, its resizes to the stride-4 grid and the final resize to the input size) is counted apart,
at 7 FLOPs per output value (4 weighted taps + 3 adds), because ``FlopCounterMode`` does not count it.
LayerNorm, softmax, GELU, residual adds and the shift/bias/mask adds are not counted (a few % at most).

The counts follow the tensors the model really computes (DESIGN §2):

* window attention attends over the map zero-padded to a multiple of the window, so ``q·kᵀ`` and ``A·v``
  use padded windows; ``qkv`` and ``proj`` run on the padded token count ``Hp·Wp`` in ``eager`` and in
  ``export`` (the traced graph of ONNX/TensorRT/``torch.compile``) but on the ``H·W`` real tokens in
  ``sdpa`` and ``triton`` (padded q/k/v are the qkv bias); the MLP uses ``H·W``;
* windowed semantic attention projects q/k/v on the padded windows in ``eager`` and on the real tokens
  in every other mode (padded keys/values are the biases), and attends over padded windows;
  global semantic attention is ``N×N`` over all ``N = H·W`` tokens of the stage;
* the FPN head's maps come from the ⌈·/2⌉ grids, so the ×2 upsampling can overshoot the stride-4 size
  and then costs one more resize; ``sdpa``/``triton`` sum the levels whose maps match before their last
  ×2 upsample and upsample (and resize) each such group once.

Example::

    rep = analytic_flops(cfg, 512, 512)
    print(rep.total / 1e9, "GFLOPs")
    print(format_table(rep.rows))
    check = cross_check(model, 512, 512)   # {"analytic": …, "counter": …, "ratio": …}
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from semask_deploy.config import SeMaskConfig

INTERP_FLOPS_PER_VALUE = 7
ATTENTIONS = ("eager", "sdpa", "triton", "export")


@dataclass(frozen=True)
class LayerFlops:
    """One counted operation.

    Attributes:
        name: a readable id, e.g. ``backbone.layers.0.blocks.1.attn.q@k``.
        module: the module ``FlopCounterMode`` attributes it to (the one whose ``forward`` runs it).
        op: ``conv`` | ``linear`` | ``matmul`` | ``interp``.
        flops: FLOPs for the whole batch.
        shape: what was multiplied, for the table (e.g. ``"4096x96 · 96x288"``).
        counted: whether ``FlopCounterMode`` counts this op (everything but ``interp``).
    """

    name: str
    module: str
    op: str
    flops: int
    shape: str
    counted: bool = True


@dataclass
class FlopReport:
    """All rows for one input size and batch.

    Attributes:
        rows: per-operation counts, in execution order.
        batch, height, width: the input.
        attention: the attention backend the counts assume.
    """

    rows: list[LayerFlops]
    batch: int
    height: int
    width: int
    attention: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def gemm(self) -> int:
        """FLOPs of convs, linears and matmuls (what ``FlopCounterMode`` counts)."""
        return sum(r.flops for r in self.rows if r.counted)

    @property
    def interp(self) -> int:
        """FLOPs of bilinear interpolation."""
        return sum(r.flops for r in self.rows if not r.counted)

    @property
    def total(self) -> int:
        return self.gemm + self.interp

    def by_group(self) -> dict[str, int]:
        """FLOPs per coarse part: patch_embed, stage{i}.blocks, stage{i}.semantic, stage{i}.merge, head, resize."""
        out: dict[str, int] = defaultdict(int)
        for r in self.rows:
            out[_group(r.name)] += r.flops
        return dict(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch, "height": self.height, "width": self.width, "attention": self.attention,
            "gemm": self.gemm, "interp": self.interp, "total": self.total, "groups": self.by_group(),
            "rows": [asdict(r) for r in self.rows], **self.meta,
        }


def _group(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "backbone" and parts[1] == "layers":
        sub = {"blocks": "blocks", "semantic_layer": "semantic", "downsample": "merge"}[parts[3]]
        return f"stage{parts[2]}.{sub}"
    if parts[0] == "backbone":
        return parts[1]
    if parts[0] == "decode_head":
        return "head"
    return parts[0]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _pad_to(n: int, m: int) -> int:
    return _ceil_div(n, m) * m


def analytic_flops(
    config: SeMaskConfig, height: int, width: int, batch: int = 1, attention: str = "eager"
) -> FlopReport:
    """Per-layer FLOPs of one eval-mode forward ``model(x)`` (logits at the input size).

    Args:
        config: the architecture.
        height, width: input size in pixels (any size; padding is modelled).
        batch: batch size N (every count is linear in N).
        attention: ``eager`` | ``sdpa`` | ``triton`` | ``export`` — which tokens are projected and how the
            head upsamples (see module doc); ``export`` is what traced graphs (ONNX, TensorRT,
            ``torch.compile``) compute.

    Returns:
        A :class:`FlopReport`.
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    if min(height, width, batch) < 1:
        raise ValueError(f"need a positive size and batch, got {batch}x{height}x{width}")
    b, cfg = batch, config
    rows: list[LayerFlops] = []

    def add(name: str, module: str, op: str, flops: int, shape: str, counted: bool = True) -> None:
        rows.append(LayerFlops(name, module, op, int(flops), shape, counted))

    def linear(name: str, tokens: int, cin: int, cout: int) -> None:
        add(name, name, "linear", 2 * b * tokens * cin * cout, f"{b * tokens}x{cin} · {cin}x{cout}")

    def conv(name: str, h: int, w: int, cin: int, cout: int, k: int) -> None:
        add(name, name, "conv", 2 * b * h * w * cout * cin * k * k, f"{cin}→{cout} {k}x{k} @ {h}x{w}")

    def interp(name: str, module: str, channels: int, h: int, w: int) -> None:
        add(name, module, "interp", INTERP_FLOPS_PER_VALUE * b * channels * h * w,
            f"{channels}ch → {h}x{w}", counted=False)

    p = cfg.patch_size
    h, w = _ceil_div(height, p), _ceil_div(width, p)
    conv("backbone.patch_embed.proj", h, w, 3, cfg.embed_dim, p)
    sizes = []
    kb = cfg.sem_num_classes
    for i, depth in enumerate(cfg.depths):
        c = cfg.stage_channels[i]
        sizes.append((h, w))
        n = h * w
        hidden = int(c * cfg.mlp_ratio)
        win = cfg.window_size
        hp, wp = _pad_to(h, win), _pad_to(w, win)
        n_pad, n_win = hp * wp, (hp // win) * (wp // win)
        stage = f"backbone.layers.{i}"
        for j in range(depth):
            blk = f"{stage}.blocks.{j}"
            proj_tokens = n if attention in ("sdpa", "triton") else n_pad
            linear(f"{blk}.attn.qkv", proj_tokens, c, 3 * c)
            mm = 2 * b * n_win * win**2 * win**2 * c  # Σ over heads of n²·d
            add(f"{blk}.attn.q@k", blk, "matmul", mm, f"{b * n_win}x{win * win}² · {c} (padded windows)")
            add(f"{blk}.attn.A@v", blk, "matmul", mm, f"{b * n_win}x{win * win}² · {c} (padded windows)")
            linear(f"{blk}.attn.proj", proj_tokens, c, c)
            linear(f"{blk}.mlp.fc1", n, c, hidden)
            linear(f"{blk}.mlp.fc2", n, hidden, c)
        sem = f"{stage}.semantic_layer"
        sa = f"{sem}.class_injection.0"
        if cfg.sem_modes[i] == "global":
            linear(f"{sa}.mlp_cls_q", n, c, kb)
            linear(f"{sa}.mlp_cls_k", n, c, kb)
            linear(f"{sa}.mlp_v", n, c, c)
            add(f"{sem}.q@k", sem, "matmul", 2 * b * n * n * kb, f"{b}x{n}x{kb} · {kb}x{n} (global)")
            add(f"{sem}.A@v", sem, "matmul", 2 * b * n * n * c, f"{b}x{n}x{n} · {n}x{c} (global)")
        else:
            sw = cfg.sem_window_size
            shp, swp = _pad_to(h, sw), _pad_to(w, sw)
            s_pad, s_win = shp * swp, (shp // sw) * (swp // sw)
            proj_tokens = s_pad if attention == "eager" else n
            linear(f"{sa}.mlp_cls_q", proj_tokens, c, kb)
            linear(f"{sa}.mlp_cls_k", proj_tokens, c, kb)
            linear(f"{sa}.mlp_v", proj_tokens, c, c)
            add(f"{sem}.q@k", sem, "matmul", 2 * b * s_win * sw**4 * kb, f"{b * s_win}x{sw * sw}² · {kb} (windows)")
            add(f"{sem}.A@v", sem, "matmul", 2 * b * s_win * sw**4 * c, f"{b * s_win}x{sw * sw}² · {c} (windows)")
        linear(f"{sa}.mlp_res", n, c, c)
        if i < len(cfg.depths) - 1:
            h2, w2 = _ceil_div(h, 2), _ceil_div(w, 2)
            linear(f"{stage}.downsample.reduction", h2 * w2, 4 * c, 2 * c)
            h, w = h2, w2

    # Semantic-FPN head (training-only semantic branch not computed at inference)
    from semask_deploy.model.fpn_head import head_lengths

    ch = cfg.head_channels
    h0, w0 = sizes[0]
    grouped = attention in ("sdpa", "triton")
    last_upsample: dict[tuple[int, int], str] = {}  # pre-upsample size → first level's upsample name
    for i, length in enumerate(head_lengths((4, 8, 16, 32))):
        hi, wi = sizes[i]
        cin = cfg.stage_channels[i]
        idx = 0
        for k in range(length):
            conv(f"decode_head.scale_heads.{i}.{idx}.conv", hi, wi, cin if k == 0 else ch, ch, 3)
            idx += 1
            if i == 0:
                continue
            name = f"decode_head.scale_heads.{i}.{idx}.upsample"
            idx += 1
            if grouped and k == length - 1:
                if (hi, wi) not in last_upsample:
                    last_upsample[(hi, wi)] = name
                    interp(name, "decode_head", ch, 2 * hi, 2 * wi)
                    if (2 * hi, 2 * wi) != (h0, w0):
                        interp(f"decode_head.resize.{i}", "decode_head", ch, h0, w0)
                continue
            hi, wi = 2 * hi, 2 * wi
            interp(name, f"decode_head.scale_heads.{i}", ch, hi, wi)
        if not grouped and (hi, wi) != (h0, w0):
            interp(f"decode_head.resize.{i}", "decode_head", ch, h0, w0)
    conv("decode_head.conv_seg", h0, w0, ch, cfg.num_classes, 1)
    if (h0, w0) != (height, width):
        interp("resize.logits", "SeMaskSegmentor", cfg.num_classes, height, width)
    return FlopReport(rows, batch, height, width, attention)


def params_count(model: Any) -> int:
    """Number of parameters of a torch module (buffers excluded)."""
    return int(sum(p.numel() for p in model.parameters()))


# ------------------------------------------------------------------------------- FlopCounterMode


def counter_flops(model: Any, height: int, width: int, batch: int = 1, attention: str = "eager") -> dict[str, Any]:
    """Count FLOPs of ``model(x)`` with ``torch.utils.flop_counter.FlopCounterMode``.

    The model is deep-copied to the CPU in fp32 and switched to ``attention``; SDPA runs under the MATH
    backend (the CPU fused SDPA kernels count 0 otherwise), and non-eager backends run with autograd on
    so the frozen-weight fast paths (pre-packed MKL/oneDNN calls the counter cannot see) stand aside.

    Args:
        model: a :class:`~semask_deploy.model.SeMaskSegmentor`.
        height, width, batch: the input (zeros).
        attention: ``eager`` (default, the reference math) or ``sdpa``.

    Returns:
        ``{"total": int, "modules": {module name without the root class: inclusive FLOPs}}``.
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    if attention not in ("eager", "sdpa"):
        raise ValueError("FlopCounterMode cross-check supports attention='eager' or 'sdpa'")
    m = copy.deepcopy(model).float().cpu().eval()
    m.set_attention_backend(attention)
    x = torch.zeros(batch, 3, height, width)
    counter = FlopCounterMode(display=False, depth=None)
    grad = attention != "eager"
    with sdpa_kernel([SDPBackend.MATH]), torch.set_grad_enabled(grad), counter:
        m(x)
    root = type(m).__name__ + "."
    modules = {
        k[len(root):]: int(sum(v.values())) for k, v in counter.get_flop_counts().items() if k.startswith(root)
    }
    return {"total": int(counter.get_total_flops()), "modules": modules}


def cross_check(model: Any, height: int, width: int, batch: int = 1, attention: str = "eager") -> dict[str, Any]:
    """Analytic FLOPs next to ``FlopCounterMode``'s, in total and per module.

    Returns:
        ``{"analytic_gemm", "analytic_interp", "analytic_total", "counter", "ratio" (counter / analytic
        gemm), "modules": {name: {"analytic", "counter", "ratio"}}}`` — modules are every Linear/Conv leaf,
        each Swin block, semantic layer, stage, the backbone and the head.
    """
    rep = analytic_flops(model.config, height, width, batch, attention)
    cnt = counter_flops(model, height, width, batch, attention)
    analytic_mod = inclusive_by_module(rep.rows)
    modules = {}
    for name, c in cnt["modules"].items():
        a = analytic_mod.get(name, 0)
        modules[name] = {"analytic": a, "counter": c, "ratio": (c / a) if a else (1.0 if c == 0 else math.inf)}
    return {
        "analytic_gemm": rep.gemm, "analytic_interp": rep.interp, "analytic_total": rep.total,
        "counter": cnt["total"], "ratio": cnt["total"] / rep.gemm if rep.gemm else math.nan,
        "attention": attention, "modules": modules,
    }


def inclusive_by_module(rows: Iterable[LayerFlops]) -> dict[str, int]:
    """Counted (gemm) FLOPs per module name, each module including its children."""
    out: dict[str, int] = defaultdict(int)
    for r in rows:
        if not r.counted:
            continue
        parts = r.module.split(".")
        for k in range(1, len(parts) + 1):
            out[".".join(parts[:k])] += r.flops
    return dict(out)


# ------------------------------------------------------------------------------------ formatting


def human(flops: float, unit: str = "FLOPs") -> str:
    """``1.23e9`` → ``"1.23 G"`` + unit."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(flops) >= scale:
            return f"{flops / scale:.3g} {prefix}{unit}"
    return f"{flops:.3g} {unit}"


def format_table(report: FlopReport, grouped: bool = False) -> str:
    """A Markdown table of the rows (or of the groups), with each row's share of the total."""
    total = report.total or 1
    lines = [f"FLOPs for {report.batch}x3x{report.height}x{report.width} (attention={report.attention}); "
             f"gemm {human(report.gemm)}, interp {human(report.interp)}, total {human(report.total)}", ""]
    if grouped:
        lines += ["| part | GFLOPs | share |", "|---|---:|---:|"]
        for name, f in report.by_group().items():
            lines.append(f"| {name} | {f / 1e9:.4f} | {100 * f / total:.1f}% |")
    else:
        lines += ["| layer | op | shape | GFLOPs | share |", "|---|---|---|---:|---:|"]
        for r in report.rows:
            lines.append(f"| {r.name} | {r.op} | {r.shape} | {r.flops / 1e9:.4f} | {100 * r.flops / total:.1f}% |")
    return "\n".join(lines)
