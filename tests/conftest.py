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


# -- a small synthetic labelled spine (independent of the phantom), for session tests ----------
SYNTH_VERTEBRAE = {"sacrum": 1, "L5": 2, "L4": 3, "L3": 4}
SYNTH_DISCS = {"L5-S1": 11, "L4-L5": 12, "L3-L4": 13}
SYNTH_CSF = 20


@pytest.fixture(scope="session")
def synthetic_spine():
    """A water cylinder (r = 60 mm) with four box vertebrae (700 HU), three discs (90 HU)
    and a CSF-filled canal behind them; 1 mm voxels, labels named like the phantom's."""
    import numpy as np

    from openfluoro.scene.patient import Patient
    from openfluoro.scene.volume import Volume

    ni, nj, nk = 140, 140, 150
    x = (np.arange(ni) - (ni - 1) / 2)[None, None, :]
    y = (np.arange(nj) - (nj - 1) / 2)[None, :, None]
    z = (np.arange(nk) - (nk - 1) / 2)[:, None, None]
    hu = np.full((nk, nj, ni), -1000.0, dtype=np.float32)
    labels = np.zeros((nk, nj, ni), dtype=np.int16)
    body = (x**2 + y**2 <= 60.0**2) & (np.abs(z) < 74)
    hu[np.broadcast_to(body, hu.shape)] = 20.0
    in_xy = (np.abs(x) <= 18) & (np.abs(y) <= 14)
    z0 = -66.0
    order = ["sacrum", "L5", "L4", "L3"]
    for n, name in enumerate(order):
        zb = z0 + n * 32.0                       # vertebra: 24 mm tall, disc: 8 mm
        vert = in_xy & (z >= zb) & (z < zb + 24)
        hu[vert] = 700.0
        labels[vert] = SYNTH_VERTEBRAE[name]
        if n + 1 < len(order):
            disc = in_xy & (z >= zb + 24) & (z < zb + 32)
            hu[disc] = 90.0
            labels[disc] = SYNTH_DISCS[f"{order[n + 1]}-{'S1' if name == 'sacrum' else name}"]
    canal = (x**2 + (y - 28) ** 2 <= 7.0**2) & (np.abs(z) < 70)
    canal = np.broadcast_to(canal, hu.shape)
    hu[canal] = 8.0
    labels[canal] = SYNTH_CSF
    affine = np.eye(4)
    affine[:3, 3] = [-(ni - 1) / 2, -(nj - 1) / 2, -(nk - 1) / 2]
    names = {v: k for k, v in {**SYNTH_VERTEBRAE, **SYNTH_DISCS}.items()}
    names = {k: (v if v in SYNTH_VERTEBRAE else f"disc_{v}") for k, v in names.items()}
    names[SYNTH_CSF] = "csf"
    landmarks = {"isocentre_lps_mm": (0.0, 0.0, 0.0), "vertebra_ids": dict(SYNTH_VERTEBRAE),
                 "disc_ids": dict(SYNTH_DISCS)}
    return Patient(Volume(hu, affine, source="synthetic spine"), labels, names, landmarks, "synthetic spine")
