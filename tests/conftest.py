"""Shared fixtures: the real CT volumes in ../shared/data (skipped with a message where absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test, naming the folder, when it is absent."""
    if not (SHARED_DATA / "totalsegmentator_example").is_dir():
        pytest.skip(f"real CT data not found: expected the folder {SHARED_DATA} (see shared/data/README.md)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def example_ct_path(shared_data: Path) -> Path:
    return shared_data / "totalsegmentator_example" / "example_ct.nii.gz"
