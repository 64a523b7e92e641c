"""DICOM RF/XA export: attributes against the frames that made them, validation with
dciodvfy and dcmdump, de-identification, atomic writes, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from openfluoro.geometry.carm import Geometry
from openfluoro.io.dicom_common import (
    ExportError,
    SYNTHETIC_IDENTITY,
    displayed_pixel_to_lps,
    load_run,
    patient_orientation,
    split_events,
)
from openfluoro.io.dicom_rf import RF_SOP_CLASS, XA_SOP_CLASS, export_images

ROWS = COLS = 64   # the synthetic recordings of conftest.py


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_events_are_runs_and_spots(procedure):
    run = load_run(procedure).run
    events = split_events(run)
    assert [(e.kind, e.run_index, len(e.indices)) for e in events] == [("fluoro", 0, 12), ("fluoro", 1, 10), ("spot", 2, 1)]


@pytest.mark.parametrize("sop", ["RF", "XA"])
def test_multiframe_attributes_match_the_frames(procedure, tmp_path, sop, make_run):
    frames = make_run(tmp_path / "again", moving=False)   # same content as the fixture's recording
    written = export_images(procedure, tmp_path / "out", sop=sop)
    assert [w.path.name for w in written] == ["run000_fluoro000.dcm", "run001_fluoro001.dcm", "run002_spot002.dcm"]
    ds = pydicom.dcmread(written[1].path)
    run1 = [f for f in frames if f.run_index == 1]
    assert ds.SOPClassUID == (RF_SOP_CLASS if sop == "RF" else XA_SOP_CLASS)
    assert ds.Modality == sop
    assert int(ds.NumberOfFrames) == 10
    np.testing.assert_array_equal(ds.pixel_array, np.stack([f.image for f in run1]))
    # cine: 15 pulses/s -> 66.67 ms per frame, frame increment pointer on FrameTime
    assert float(ds.FrameTime) == pytest.approx(1000 / 15, rel=1e-9)
    assert ds.FrameIncrementPointer == pydicom.tag.Tag("FrameTime")
    assert int(ds.CineRate) == 15 and int(ds.RecommendedDisplayFrameRate) == 15
    # technique: means over the run (kV ramps 82.0 .. 83.8)
    assert float(ds.KVP) == pytest.approx(np.mean([f.exposure.kvp for f in run1]))
    assert int(ds.XRayTubeCurrent) == 4 and float(ds.XRayTubeCurrentInuA) == pytest.approx(4000)
    assert int(ds.ExposureTime) == 60                        # 10 pulses x 6 ms (PS3.3 C.8.7.2.1.1)
    assert int(ds.ExposureInuAs) == 240                      # 10 x 4 mA x 6 ms
    assert float(ds.AveragePulseWidth) == pytest.approx(6.0)
    assert ds.RadiationSetting == "SC" and ds.RadiationMode == "PULSED"
    assert ds.PixelIntensityRelationship == "DISP"
    # geometry
    assert float(ds.DistanceSourceToDetector) == 1000 and float(ds.DistanceSourceToPatient) == 700
    assert float(ds.EstimatedRadiographicMagnificationFactor) == pytest.approx(1000 / 700)
    assert [float(x) for x in ds.ImagerPixelSpacing] == pytest.approx([300 / 128 * 2] * 2)
    assert float(ds.PositionerPrimaryAngle) == 30 and float(ds.PositionerSecondaryAngle) == 10
    # dose: KAP of the run in dGy cm2
    assert float(ds.ImageAndFluoroscopyAreaDoseProduct) == pytest.approx(10 * sum(f.dose.kap_gy_cm2 for f in run1))
    # collimator 200 x 180 mm on a 300 mm, 64-px panel (4.6875 mm pixels): 42.7 x 38.4 px, centred
    assert (int(ds.CollimatorLeftVerticalEdge), int(ds.CollimatorRightVerticalEdge)) == (10, 53)
    assert (int(ds.CollimatorUpperHorizontalEdge), int(ds.CollimatorLowerHorizontalEdge)) == (12, 51)
    # identity from the recording's header
    assert str(ds.PatientName) == "DOE^JANE" and ds.PatientID == "12345" and ds.PatientBirthDate == "19700101"
    assert ds.StudyDate == "20240305" and ds.StudyTime.startswith("1015")
    spot = pydicom.dcmread(written[2].path)
    assert "NumberOfFrames" not in spot and spot.RadiationSetting == "GR"
    assert spot.StudyInstanceUID == ds.StudyInstanceUID and spot.SeriesInstanceUID != ds.SeriesInstanceUID


def test_patient_orientation_and_pixel_geometry(procedure):
    run = load_run(procedure).run
    meta = run.metadata[12]                      # LAO 30, CRA 10
    m = displayed_pixel_to_lps(meta, run.header)
    from openfluoro.fluoro.frame import geometry_from_metadata

    g: Geometry = geometry_from_metadata(meta)
    pos = g.pixel_positions_lps_mm()             # independent: geometry.carm's own pixel grid
    for r, c in ((0, 0), (5, 40), (63, 63)):
        np.testing.assert_allclose((m @ [c, r, 0, 1])[:3], pos[r, c], atol=1e-9)
    # PA (0/0): columns run to the patient's left, rows to the feet
    assert patient_orientation(*displayed_pixel_to_lps(run.metadata[0], run.header)[:3, :2].T) == ["L", "F"]


def test_display_flips_are_undone(procedure):
    run = load_run(procedure).run
    meta = dict(run.metadata[0])
    plain = displayed_pixel_to_lps(meta)
    meta["display"] = {"flip_horizontal": True}
    flipped = displayed_pixel_to_lps(meta)
    np.testing.assert_allclose(flipped @ [0, 7, 0, 1], plain @ [COLS - 1, 7, 0, 1], atol=1e-9)
    meta["display"] = {"rotate_deg": 90}
    rot = displayed_pixel_to_lps(meta)
    # clockwise: displayed (row r', col c') shows detector (R-1-c', r')
    np.testing.assert_allclose(rot @ [3, 5, 0, 1], plain @ [5, ROWS - 1 - 3, 0, 1], atol=1e-9)


def test_default_identity_is_synthetic(tmp_path, make_run):
    make_run(tmp_path / "run")
    ds = pydicom.dcmread(export_images(tmp_path / "run", tmp_path / "out")[0].path)
    assert str(ds.PatientName) == SYNTHETIC_IDENTITY["PatientName"] == "SYNTHETIC^PATIENT"
    assert ds.PatientID == "OPENFLUORO-SIM" and ds.PatientIdentityRemoved == "NO"


def test_deidentified_objects(procedure, tmp_path):
    plain = pydicom.dcmread(export_images(procedure, tmp_path / "plain")[0].path)
    written = export_images(procedure, tmp_path / "deid", deidentify=True)
    for w in written:
        ds = pydicom.dcmread(w.path)
        assert ds.PatientIdentityRemoved == "YES"
        assert "Basic" in ds.DeidentificationMethod[0]
        assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113107"]
        text = w.path.read_bytes()
        for secret in (b"DOE", b"JANE", b"12345", b"19700101", b"20240305", b"OFSIM01"):
            assert secret not in text, secret
        assert ds.StudyDate == "20000101" and ds.PatientBirthDate == ""
        assert ds.StudyInstanceUID != plain.StudyInstanceUID and ds.SOPInstanceUID != plain.SOPInstanceUID
    # times of day and intervals are kept
    assert pydicom.dcmread(written[0].path).StudyTime == plain.StudyTime


def test_uids_are_stable_across_exports(procedure, tmp_path):
    a = pydicom.dcmread(export_images(procedure, tmp_path / "a")[0].path)
    b = pydicom.dcmread(export_images(procedure, tmp_path / "b")[0].path)
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.StudyInstanceUID == b.StudyInstanceUID


@pytest.mark.parametrize("sop", ["RF", "XA"])
@pytest.mark.parametrize("variant", ["plain", "deidentified", "moving-uint16"])
def test_dciodvfy_finds_no_errors(tmp_path, sop, variant, make_run, dicom_check):
    folder = tmp_path / "run"
    make_run(folder, identity={"PatientName": "DOE^JANE", "PatientID": "12345"},
                   moving=variant == "moving-uint16", dtype="uint16" if variant == "moving-uint16" else "uint8")
    written = export_images(folder, tmp_path / "out", sop=sop, deidentify=variant == "deidentified")
    for w in written:
        errors, warnings = dicom_check(w.path)
        assert errors == [], f"{w.path.name}: {errors}"
        if sop == "XA" and variant != "moving-uint16":
            assert warnings == [], f"{w.path.name}: {warnings}"
        if sop == "RF":
            # the C-arm angles are not part of the RF IOD (table/column equipment): expected
            assert all("Positioner" in w_ or "Standard Extended" in w_ for w_ in warnings), warnings


def test_writes_are_atomic_and_leave_the_recording_alone(procedure, tmp_path):
    before = _digest(procedure)
    out = tmp_path / "out"
    export_images(procedure, out)
    export_images(procedure, out)                       # overwriting is a rename too
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    assert _digest(procedure) == before


def test_truncated_recording_exports_complete_frames_with_a_warning(procedure, tmp_path):
    with open(procedure / "frames.raw", "ab") as fh:
        fh.write(b"\x07" * 100)                          # half a frame in flight
    with open(procedure / "frames.jsonl", "a") as fh:
        fh.write('{"index": 23, "tru')                   # torn metadata line
    loaded = load_run(procedure)
    assert len(loaded.run) == 23 and loaded.warnings and "truncated recording" in loaded.warnings[0]
    written = export_images(loaded, tmp_path / "out")
    assert sum(w.n_frames for w in written) == 23


def test_bad_inputs_are_named(procedure, tmp_path, make_run):
    with pytest.raises(ExportError, match="no such run folder"):
        load_run(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "run.json").write_text(json.dumps({"rows": 4, "cols": 4, "dtype": "uint8"}))
    with pytest.raises(ExportError, match="no complete frame"):
        load_run(empty)
    with pytest.raises(ExportError, match="recording's own folder"):
        export_images(procedure, procedure)
    with pytest.raises(ExportError, match="'RF' or 'XA'"):
        export_images(procedure, tmp_path / "o", sop="CT")
    bad = tmp_path / "bad"
    make_run(bad, identity={"StudyDate": "05/03/2024"})
    with pytest.raises(ExportError, match="StudyDate"):
        export_images(bad, tmp_path / "o2")


def test_uneven_frame_times_use_a_frame_time_vector(tmp_path, synth, dicom_check):
    from openfluoro.fluoro.record import LoopRecorder

    times = [0.0, 0.133, 0.270, 0.400, 0.560]                 # a session that dropped behind
    with LoopRecorder(tmp_path / "run", ROWS, COLS) as rec:
        for i, t in enumerate(times):
            rec.append(synth(i, t))
    for sop in ("RF", "XA"):
        w = export_images(tmp_path / "run", tmp_path / sop, sop=sop)
        ds = pydicom.dcmread(w[0].path)
        assert "FrameTime" not in ds and ds.FrameIncrementPointer == pydicom.tag.Tag("FrameTimeVector")
        assert [float(x) for x in ds.FrameTimeVector] == pytest.approx([0, 133, 137, 130, 160])
        errors, _ = dicom_check(w[0].path)
        assert errors == []
