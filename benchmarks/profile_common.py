"""What the runtime profiles (:mod:`.ort_profile`, :mod:`.ov_profile`) share with :mod:`.cpu_deploy`: the
command line, the work folder, the two graphs (the naive export and ours, same random weights) and the report
files."""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: issue 11's goal for our fp32 graph against the naive export
GOAL = 1.2


def profile_parser(doc: str, report: str) -> argparse.ArgumentParser:
    """The options both runtime profiles take; ``report`` names the files written to ``--out``."""
    from semask_deploy.config import VARIANTS

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help=f"folder for {report}.md/.json")
    p.add_argument("--work", type=Path, default=None, help="exports (cpu_deploy's --work folder is reused)")
    p.add_argument("--variant", default="semask_swin_t_ade20k", choices=sorted(VARIANTS),
                   help="model (random weights, seed 0) (default: %(default)s)")
    p.add_argument("--size", default="512x512", help="input HxW (default: %(default)s)")
    p.add_argument("--threads", default="1,2", help="comma list of thread counts (default: %(default)s)")
    p.add_argument("--runs", type=int, default=6, help="profiled calls per graph, interleaved (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="unprofiled calls first (default: %(default)s)")
    return p


def hw_arg(text: str) -> tuple[int, int]:
    """argparse type: ``"512x512"`` → (512, 512), or argparse's own error."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected HxW with positive integers, e.g. 512x512, got {text!r}")
    return int(parts[0]), int(parts[1])


def hw_list_arg(text: str) -> list[tuple[int, int]]:
    """argparse type: a comma list of HxW sizes."""
    return [hw_arg(t) for t in text.split(",") if t]


def int_list_arg(text: str) -> list[int]:
    """argparse type: a comma list of positive integers."""
    try:
        values = [int(t) for t in text.split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


class WorkDir:
    """``--work`` if given (kept), else a temporary folder removed by :meth:`cleanup`."""

    def __init__(self, given: Path | None, prefix: str) -> None:
        self._tmp = None if given else tempfile.TemporaryDirectory(prefix=prefix)
        self.path = Path(given) if given else Path(self._tmp.name)
        self.path.mkdir(parents=True, exist_ok=True)

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


@dataclass
class ProfiledGraphs:
    """The naive export (static at ``hw``) and our exports of the same random weights, and 4 scenes at ``hw``."""

    hw: tuple[int, int]
    naive: Path
    ours: dict[str, Path]
    scenes: list[Any]


def profiled_graphs(variant: str, size: str, work: Path) -> ProfiledGraphs:
    """Export (or reuse, from ``work``) the graphs :mod:`.cpu_deploy` times, with its random weights."""
    from semask_deploy.benchmarks.cpu_deploy import _naive_export, _our_exports, random_weight_models
    from semask_deploy.data.synthetic import SyntheticScenes
    from semask_deploy.data.transforms import normalize

    hw = tuple(int(v) for v in size.lower().split("x"))
    eager, fast = random_weight_models(variant)
    naive = work / f"naive_{variant}_{hw[0]}x{hw[1]}.onnx"  # the names cpu_deploy uses: never another model's
    if not naive.is_file():
        _naive_export(eager, hw, naive)
    k = eager.config.num_classes
    scenes = [normalize(SyntheticScenes(num_classes=k, size=hw, seed=i, length=1)[0][0])[None] for i in range(4)]
    return ProfiledGraphs(hw, naive, _our_exports(fast, work / variant, print, scenes), scenes)


def summary_table(sn: dict[str, float], so: dict[str, float], matrix_label: str, *extra_rows: str) -> list[str]:
    """The naive-vs-ours table of one thread count (``sn``/``so``: wall, matrix and other ms of each)."""
    return ["| | naive export | our graph |", "|---|---:|---:|",
            f"| call (wall, median) | {sn['wall_ms']:.0f} ms | {so['wall_ms']:.0f} ms "
            f"({sn['wall_ms'] / so['wall_ms']:.2f}× the naive) |",
            f"| matrix products ({matrix_label}) | {sn['matrix_ms']:.0f} ms | {so['matrix_ms']:.0f} ms |",
            f"| everything else | {sn['other_ms']:.0f} ms | {so['other_ms']:.0f} ms |", *extra_rows, ""]


def goal_sentence(sn: dict[str, float], so: dict[str, float]) -> str:
    """How small our other work would have to be for :data:`GOAL` × the naive export, our matrix products kept."""
    need_other = sn["wall_ms"] / GOAL - so["matrix_ms"]
    return (f"For {GOAL}× the naive export ({sn['wall_ms'] / GOAL:.0f} ms) with our matrix products as they are, "
            f"everything else would have to take {need_other:.0f} ms instead of {so['other_ms']:.0f} ms "
            + (f"(the naive graph's own: {sn['other_ms']:.0f} ms)." if need_other > 0 else
               "— impossible: the matrix products alone take longer."))


def largest(naive_ms: dict[str, float], ours_ms: dict[str, float], least: float = 0.5) -> list[tuple[str, float, float]]:
    """(key, naive ms, ours ms) of every key that takes ≥ ``least`` ms in either graph, the largest first."""
    keys = sorted(set(naive_ms) | set(ours_ms), key=lambda k: -(ours_ms.get(k, 0) + naive_ms.get(k, 0)))
    rows = [(k, naive_ms.get(k, 0.0), ours_ms.get(k, 0.0)) for k in keys]
    return [row for row in rows if max(row[1], row[2]) >= least]


def result_header(args: Any, g: ProfiledGraphs, runtime: str, version: str) -> dict[str, Any]:
    """The first fields of a profile's JSON: what was profiled, where, how often."""
    from semask_deploy.runtime.cpu_info import cpu_model, isa_text

    return {"variant": args.variant, "size": list(g.hw), "cpu": cpu_model(), "isa": isa_text(), runtime: version,
            "runs": args.runs, "warmup": args.warmup, "threads": [int(t) for t in args.threads.split(",")],
            "profiles": {}}


def write_report(out: Path, stem: str, result: dict[str, Any], markdown: str) -> None:
    """``out/stem.json`` and ``out/stem.md`` (atomically), and the Markdown printed."""
    from semask_deploy.fileio import write_json_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / f"{stem}.json", result)
    write_text_atomic(out / f"{stem}.md", markdown)
    print(markdown)
