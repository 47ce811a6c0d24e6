"""Expensive artifacts shared by the export test modules (memoised for the whole test session).

``small_export(tmp_path_factory)`` exports the small trained test model ``tests/data/semask_small_synthetic8.pth``
(SeMask-FPN, embed 16, depths 2-2-2-2, heads 1-2-4-8, window 7, 8 classes, trained on synthetic scenes:
mIoU 0.94 on held-out scenes, so its labels are meaningful for fp16/int8 agreement) ONCE: fp32, dynamic
N/H/W, with logits, through the full pipeline (verification, TensorRT check, sidecar).
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
SMALL_CKPT = DATA / "semask_small_synthetic8.pth"
_CACHE: dict[str, object] = {}


def small_export(tmp_path_factory):
    """``ExportResult`` of the shared dynamic fp32 + logits export of the small trained model."""
    if "small" not in _CACHE:
        from semask_deploy.export.pipeline import ExportOptions, run_export

        out = tmp_path_factory.mktemp("small_export")
        _CACHE["small"] = run_export(ExportOptions(ckpt=SMALL_CKPT, out=out, with_logits=True, quiet=True))
    return _CACHE["small"]


def small_model():
    """The small trained model in fp32 (sdpa backend)."""
    from semask_deploy import load_model

    return load_model(SMALL_CKPT).float().eval()
