"""Fixtures shared by the test modules."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    return Path(os.environ.get("MSRGAN_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$MSRGAN_DATA``): skipped when absent, a failure under CI=true."""
    path = _shared_data()
    if not (path / "bbbc039" / "images").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the real data folder {path} is missing")
        pytest.skip(f"real data folder {path} is absent (set MSRGAN_DATA)")
    return path
