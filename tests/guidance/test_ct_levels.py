"""The example CT's interspaces read from the CT (tests/data/totalsegmentator_example_levels.json)
agree with its labels, and the levels file reader names the file on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from openfluoro.guidance.evaluate import read_levels_file

LEVELS = Path(__file__).parents[1] / "data" / "totalsegmentator_example_levels.json"


def test_levels_file_brackets_the_labelled_l1_body(shared_data):
    from openfluoro.scene.patient import load_patient

    d = shared_data / "totalsegmentator_example"
    p = load_patient(d / "example_ct.nii.gz", d / "example_seg.nii.gz", 82)
    A = p.volume.affine_lps
    l1 = next(i for i, n in p.label_names.items() if n == "L1")
    kk, jj, ii = np.nonzero(p.labels == l1)
    P = np.stack([ii, jj, kk], 1) @ A[:3, :3].T + A[:3, 3]
    body = P[P[:, 1] < P[:, 1].min() + 30.0]
    discs = read_levels_file(LEVELS)
    # T12-L1 just above the body, L1-L2 just below (one 3 mm slice of tolerance)
    assert abs(discs["T12-L1"]["centre"][2] - body[:, 2].max()) <= 3.0
    assert abs(discs["L1-L2"]["centre"][2] - body[:, 2].min()) <= 3.0
    # lumbar interspaces about one vertebra apart (25-45 mm), descending
    z = [discs[n]["centre"][2] for n in ("T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5")]
    assert all(25.0 <= a - b <= 45.0 for a, b in zip(z[:-1], z[1:]))
    # each centre lies in a disc: bright endplates within 9 mm above and below it (a point
    # inside a vertebral body has none that close on one side)
    for n in ("L2-L3", "L3-L4", "L4-L5"):
        c = np.asarray(discs[n]["centre"])
        here = p.tissue_at(c)[1]
        above = max(p.tissue_at(c + [0, 0, dz])[1] for dz in np.arange(1.5, 9.1, 1.5))
        below = max(p.tissue_at(c - [0, 0, dz])[1] for dz in np.arange(1.5, 9.1, 1.5))
        assert above > here + 30.0 and below > here + 30.0, (n, here, above, below)


def test_levels_file_centres_lie_midway_between_the_labelled_bodies(shared_data):
    """Front to back, T12-L1 and L1-L2 lie midway between the centres of the bodies above and
    below, as TotalSegmentator labelled them (a body: its label's voxels in front of the
    spinal cord, label 79), within one and a half 3 mm voxels."""
    from openfluoro.scene.patient import load_patient

    d = shared_data / "totalsegmentator_example"
    p = load_patient(d / "example_ct.nii.gz", d / "example_seg.nii.gz", 82)
    A = p.volume.affine_lps

    def points(label: int) -> np.ndarray:
        kk, jj, ii = np.nonzero(p.labels == label)
        return np.stack([ii, jj, kk], 1) @ A[:3, :3].T + A[:3, 3]

    cord = points(79)

    def body_y(name: str) -> float:
        v = points(next(i for i, n in p.label_names.items() if n == name))
        keep = np.zeros(len(v), bool)
        for z in np.unique(v[:, 2]):
            c = cord[np.abs(cord[:, 2] - z) < 0.1]
            if len(c):
                keep |= (np.abs(v[:, 2] - z) < 0.1) & (v[:, 1] < c[:, 1].min() - 3.0)
        return float(v[keep, 1].mean())

    discs = read_levels_file(LEVELS)
    y = {n: body_y(n) for n in ("T12", "L1", "L2")}
    assert abs(discs["T12-L1"]["centre"][1] - 0.5 * (y["T12"] + y["L1"])) <= 4.5
    assert abs(discs["L1-L2"]["centre"][1] - 0.5 * (y["L1"] + y["L2"])) <= 4.5


def test_levels_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "levels.json"
    bad.write_text(json.dumps({"discs": {"L3-L4": {"centre": [1, 2]}}}))
    with pytest.raises(ValueError, match="levels.json"):
        read_levels_file(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="levels.json: not a levels file"):
        read_levels_file(bad)
    with pytest.raises(ValueError, match="no such levels file"):
        read_levels_file(tmp_path / "missing.json")
    assert "L5-S1" not in read_levels_file(LEVELS)        # flagged uncertain: not scored
