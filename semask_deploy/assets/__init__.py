"""Files shipped inside the package: the built-in demo model and sample images."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

ASSETS = Path(__file__).parent
DEMO_CHECKPOINT = ASSETS / "semask_demo_synthetic.pth"


def demo_checkpoint() -> Path:
    """Path of the built-in demo checkpoint (a small SeMask trained on synthetic scenes)."""
    if not DEMO_CHECKPOINT.is_file():
        raise CheckpointError(
            f"the built-in demo model is missing from this installation ({DEMO_CHECKPOINT}); reinstall semask-deploy"
        )
    return DEMO_CHECKPOINT


def sample_images() -> list[Path]:
    """The generated sample images shipped with the package (for quick starts)."""
    return sorted(ASSETS.glob("sample_*.png"))
