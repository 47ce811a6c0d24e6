"""Where a CPU forward pass spends its time: torch profiler self time, grouped into a few kinds of work.

Used by :mod:`.cpu_speed` to show the limit of the default path: both paths do the same matrix products
(Linear layers, attention, convolutions), so if those take ``G`` ms in the default path and the eager
reference takes ``T`` ms in all, no rewrite of the remaining work can make the default path more than
``T / G`` times faster without fewer or cheaper multiply-adds (Winograd, lower precision).

Self time is the time an operator spends outside the operators it calls, so the groups add up to the
profiled wall time of the call (with intra-op threads, one operator's self time is its wall time).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

GEMM = "matrix products (Linear, conv, attention)"
#: group → substrings of profiler event names (the first group that matches wins; order matters)
GROUPS: dict[str, tuple[str, ...]] = {
    "resize": ("upsample", "interpolate", "grid_sampler"),  # before "linear": upsample_bilinear2d
    GEMM: (
        "addmm", "aten::mm", "bmm", "matmul", "linear", "conv", "scaled_dot_product", "_flash_attention",
        "mkldnn",
    ),
    "softmax": ("softmax",),
    "normalisation": ("layer_norm", "batch_norm", "group_norm"),
    "activation": ("gelu", "relu"),
    "argmax": ("argmax", "max"),
    "copies and layout (pad, roll, permute, cat, gather)": (
        "copy_", "clone", "contiguous", "cat", "pad", "roll", "index", "gather", "permute", "transpose",
        "as_strided", "view", "reshape", "narrow", "slice", "select", "unbind", "stack", "split", "expand",
    ),
    "allocation and fill": ("empty", "zeros", "fill_", "zero_", "full", "ones", "arange", "resize_"),
    "element-wise (add, mul, …)": ("add", "mul", "div", "sub", "masked_fill", "where", "neg", "exp", "sqrt"),
}
OTHER = "other"


def group_of(name: str) -> str:
    """The :data:`GROUPS` entry an operator belongs to (``"other"`` when none matches)."""
    for group, keys in GROUPS.items():
        if any(k in name for k in keys):
            return group
    return OTHER


def profile_call(fn: Callable[[], Any], repeats: int = 1) -> dict[str, Any]:
    """Profile ``fn()`` ``repeats`` times (after the caller's warm-up); milliseconds per call.

    Returns:
        ``{"total_ms", "groups": {group: ms}, "top": [(op, ms), …]}`` — ``top`` lists the ten operators
        with the most self time.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            fn()
    groups: dict[str, float] = {}
    per_op: dict[str, float] = {}
    for ev in prof.key_averages():
        ms = ev.self_cpu_time_total / 1e3 / repeats
        if ms <= 0:
            continue
        per_op[ev.key] = per_op.get(ev.key, 0.0) + ms
        g = group_of(ev.key)
        groups[g] = groups.get(g, 0.0) + ms
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:10]
    return {"total_ms": sum(groups.values()), "groups": groups, "top": [[k, v] for k, v in top]}


def limit_text(eager: dict[str, Any], fast: dict[str, Any]) -> str:
    """One sentence: the best speed-up the fast path could reach if all its non-GEMM work were free."""
    g_fast = fast["groups"].get(GEMM, 0.0)
    if g_fast <= 0:
        return "No matrix-product time was recorded."
    bound = eager["total_ms"] / g_fast
    return (f"The default path spends {g_fast:.0f} ms of {fast['total_ms']:.0f} ms in matrix products "
            f"({g_fast / fast['total_ms'] * 100:.0f} %); the eager reference takes {eager['total_ms']:.0f} ms in all. "
            f"Even with everything else free, it could be at most {bound:.2f}× faster than eager "
            "without fewer multiply-adds than it does now (or cheaper ones: bf16, int8).")


def to_markdown(eager: dict[str, Any], fast: dict[str, Any], names: tuple[str, str] = ("eager", "default")) -> list[str]:
    """A Markdown table of the groups for the two paths, the largest operators, and :func:`limit_text`."""
    order = [*GROUPS, OTHER]
    lines = [f"| kind of work | {names[0]} ms | share | {names[1]} ms | share |", "|---|---:|---:|---:|---:|"]
    for g in order:
        a, b = eager["groups"].get(g, 0.0), fast["groups"].get(g, 0.0)
        if a == 0 and b == 0:
            continue
        lines.append(f"| {g} | {a:.0f} | {a / eager['total_ms'] * 100:.0f} % | {b:.0f} | "
                     f"{b / fast['total_ms'] * 100:.0f} % |")
    lines.append(f"| **total** | **{eager['total_ms']:.0f}** | | **{fast['total_ms']:.0f}** | |")
    lines += ["", f"Largest operators of the {names[1]} path (self time, ms): "
              + ", ".join(f"`{k}` {v:.0f}" for k, v in fast["top"]), "", limit_text(eager, fast)]
    return lines
