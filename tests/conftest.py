"""Shared fixtures: where the real datasets are, and seeded randomness."""

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path | None:
    """The folder holding real datasets: $PATCHVQ_DATA, else ../shared/data beside the repo."""
    env = os.environ.get("PATCHVQ_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(_REPO.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture
def mtsd_root() -> Path:
    root = data_root()
    if root is None or not (root / "mtsd").is_dir():
        pytest.skip("MTSD not found: set PATCHVQ_DATA to a folder holding mtsd/ (or place ../shared/data)")
    return root / "mtsd"
