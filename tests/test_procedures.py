"""The scripted procedures end to end on a coarse phantom (fast), with their outputs."""

import json

import pytest

from openfluoro import procedures
from openfluoro.fluoro.record import read_run
from openfluoro.geometry.carm import Detector
from openfluoro.scene.patient import patient_from_phantom
from openfluoro.scene.phantom import PhantomParams, make_phantom


@pytest.fixture(scope="module")
def patient():
    return patient_from_phantom(make_phantom(PhantomParams(voxel_mm=1.5, seed=3)))


def test_lumbar_puncture_reaches_csf_and_writes_everything(patient, tmp_path):
    r = procedures.lumbar_puncture(patient, tmp_path / "lp", "L3-L4", 7.5, detector=Detector.square(256, 300.0))
    o = r.outcome
    assert o["csf_return"] and not o["needle_blocked"]
    assert o["tip_tissue"] in ("csf", "thecal_sac", "cauda_equina")
    assert o["tip_to_target_mm"] < 10.0
    run = read_run(r.run_folder)
    assert len(run) == o["frames"] > 10
    views = {round(m["pose"]["primary_deg"]) for m in run.metadata}
    assert views == {180, 90}                       # AP localisation and lateral confirmation
    dose = json.loads(r.dose_summary.read_text())
    assert dose["totals"]["ka_r_mgy"] == pytest.approx(o["dose"]["ka_r_mgy"])
    assert r.cine.exists() and r.cine.stat().st_size > 1000
    assert (tmp_path / "lp" / "cine.gif").exists()


def test_decompression_opens_each_interspace_as_planned(patient, tmp_path):
    r = procedures.decompression(patient, tmp_path / "dc", distraction_mm=2.5, detector=Detector.square(256, 300.0))
    changes = r.outcome["change_mm"]
    assert set(changes) >= {"L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"}
    for d, mm in changes.items():
        assert mm == pytest.approx(2.5, abs=1e-6), d
    # force from the stated model: 25 % of 70 kg body weight + 2.5 mm x 150 N/mm
    assert r.outcome["traction_force_n"] == pytest.approx(0.25 * 70 * 9.81 + 2.5 * 150)


def test_bad_requests_are_refused_before_anything_is_written(patient, tmp_path):
    with pytest.raises(ValueError, match="level"):
        procedures.lumbar_puncture(patient, tmp_path / "x", "L9-L10")
    with pytest.raises(ValueError, match="distraction"):
        procedures.decompression(patient, tmp_path / "y", distraction_mm=12)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
