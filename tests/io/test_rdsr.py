"""The X-Ray Radiation Dose SR: totals and per-event values against the frames, dciodvfy,
and pyskindose (a third-party RDSR reader) computing a skin dose from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from openfluoro.io.dicom_common import ExportContext, load_run
from openfluoro.io.dicom_rf import export_images
from openfluoro.io.rdsr import RDSR_SOP_CLASS, export_rdsr, read_totals


def _walk(items, out, depth=0):
    for it in items:
        name = it.ConceptNameCodeSequence[0].CodeMeaning
        out.append((depth, name, it))
        if "ContentSequence" in it:
            _walk(it.ContentSequence, out, depth + 1)
    return out


def _events(ds):
    return [it for it in ds.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue == "113706"]


def _num(event, meaning):
    vals = [float(c.MeasuredValueSequence[0].NumericValue) for c in event.ContentSequence
            if c.ValueType == "NUM" and c.ConceptNameCodeSequence[0].CodeMeaning == meaning]
    assert len(vals) == 1, meaning
    return vals[0]


def _code(event, meaning):
    return [c.ConceptCodeSequence[0].CodeMeaning for c in event.ContentSequence
            if c.ValueType == "CODE" and c.ConceptNameCodeSequence[0].CodeMeaning == meaning][0]


def test_totals_and_events_match_the_frames(tmp_path, make_run):
    frames = make_run(tmp_path / "run", identity={"PatientName": "DOE^JANE"})
    path = export_rdsr(tmp_path / "run", tmp_path / "out")
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == RDSR_SOP_CLASS and ds.Modality == "SR"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "10001"
    fluoro = [f for f in frames if f.exposure.acquisition == "fluoro"]
    spots = [f for f in frames if f.exposure.acquisition == "spot"]
    t = read_totals(path)
    assert t["Dose (RP) Total"] == pytest.approx(sum(f.dose.reference_air_kerma_mgy for f in frames) / 1000)
    assert t["Dose Area Product Total"] == pytest.approx(sum(f.dose.kap_gy_cm2 for f in frames) * 1e-4)
    assert t["Fluoro Dose (RP) Total"] == pytest.approx(sum(f.dose.reference_air_kerma_mgy for f in fluoro) / 1000)
    assert t["Fluoro Dose Area Product Total"] == pytest.approx(sum(f.dose.kap_gy_cm2 for f in fluoro) * 1e-4)
    assert t["Acquisition Dose (RP) Total"] == pytest.approx(spots[0].dose.reference_air_kerma_mgy / 1000)
    # fluoro time: 12 frames at 7.5/s + 10 frames at 15/s = 1.6 s + 0.667 s (pedal time, as the ledger)
    assert t["Total Fluoro Time"] == pytest.approx(12 / 7.5 + 10 / 15)
    assert t["Total Acquisition Time"] == pytest.approx(0.008)
    assert t["Total Number of Radiographic Frames"] == 1

    events = _events(ds)
    assert len(events) == 3
    e0, e1, e2 = events
    assert _code(e0, "Irradiation Event Type") == "Fluoroscopy"
    assert _code(e2, "Irradiation Event Type") == "Stationary Acquisition"
    assert _code(e0, "Reference Point Definition") == "15cm from Isocenter toward Source"
    assert _code(e0, "Fluoro Mode") == "Pulsed"
    assert _num(e0, "Pulse Rate") == 7.5 and _num(e0, "Number of Pulses") == 12
    assert _num(e1, "KVP") == pytest.approx(np.mean([f.exposure.kvp for f in frames if f.run_index == 1]))
    assert _num(e1, "X-Ray Tube Current") == 4.0 and _num(e1, "Pulse Width") == 6.0
    assert _num(e1, "Exposure Time") == 60.0 and _num(e1, "Exposure") == 240.0      # ms, uA.s
    assert _num(e1, "Irradiation Duration") == pytest.approx(10 / 15)
    assert _num(e1, "Positioner Primary Angle") == 30 and _num(e1, "Positioner Secondary Angle") == 10
    assert _num(e1, "Distance Source to Detector") == 1000 and _num(e1, "Distance Source to Isocenter") == 700
    assert _num(e1, "Distance Source to Reference Point") == 550
    assert _num(e1, "Table Longitudinal Position") == -15          # isocentre moved 15 mm toward the head
    assert _num(e1, "Collimated Field Area") == pytest.approx(0.2 * 0.18)
    assert _num(e1, "Dose (RP)") == pytest.approx(sum(f.dose.reference_air_kerma_mgy for f in frames
                                                      if f.run_index == 1) / 1000)
    filters = [it for it in e0.ContentSequence if it.ConceptNameCodeSequence[0].CodeMeaning == "X-Ray Filters"]
    assert len(filters) == 1 and _code(filters[0], "X-Ray Filter Material") == "Copper"
    assert _num(filters[0], "X-Ray Filter Thickness Minimum") == 0.1
    uids = {c.UID for e in events for c in e.ContentSequence if c.ValueType == "UIDREF"}
    assert len(uids) == 3


def test_rdsr_references_the_exported_images(procedure, tmp_path):
    ctx = ExportContext.for_run(load_run(procedure).run)
    images = export_images(procedure, tmp_path / "out", context=ctx, sop="XA")
    ds = pydicom.dcmread(export_rdsr(procedure, tmp_path / "out", context=ctx, images=images))
    refs = [it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for e in _events(ds) for it in e.ContentSequence
            if it.ValueType == "IMAGE"]
    assert refs == [im.sop_instance_uid for im in images]
    ev = ds.CurrentRequestedProcedureEvidenceSequence[0]
    assert ev.StudyInstanceUID == ds.StudyInstanceUID == pydicom.dcmread(images[0].path).StudyInstanceUID
    assert sum(len(s.ReferencedSOPSequence) for s in ev.ReferencedSeriesSequence) == 3


@pytest.mark.parametrize("deidentify", [False, True])
def test_dciodvfy_finds_no_errors(procedure, tmp_path, deidentify, dicom_check):
    ctx = ExportContext.for_run(load_run(procedure).run, deidentify=deidentify)
    images = export_images(procedure, tmp_path / "out", context=ctx, sop="XA")
    path = export_rdsr(procedure, tmp_path / "out", context=ctx, images=images)
    errors, warnings = dicom_check(path)
    assert errors == [] and warnings == [], errors + warnings
    if deidentify:
        text = path.read_bytes()
        assert b"DOE" not in text and b"12345" not in text and b"20240305" not in text


# ---------------------------------------------------------------------------- pyskindose

def _pyskindose_settings(tmp_path: Path):
    pyskindose = pytest.importorskip("pyskindose", reason="pyskindose not installed (pip install pyskindose)")
    from pyskindose.settings import PyskindoseSettings

    base = json.loads((Path(pyskindose.__file__).parent / "settings_example.json").read_text())
    base.update(mode="calculate_dose", silence_pydicom_warnings=True, estimate_k_tab=True, k_tab_val=0.8,
                inherent_filtration=3.0,        # the recording's total Al filtration
                corrections_db_path=str(tmp_path / "corrections.db"))
    base["plot"]["notebook_mode"] = False
    # pyskindose needs a normalisation entry for the device (manufacturer + model name)
    norm = {"normalization_settings": [{
        "manufacturer": "OpenFluoro", "models": ["OpenFluoro Virtual C-arm"],
        "translation_offset": {"x": 0.0, "y": 0.0, "z": 0.0},
        "translation_direction": {"x": "+", "y": "+", "z": "+"},
        "rotation_direction": {"Ap1": "+", "Ap2": "+", "Ap3": "+", "At1": "+", "At2": "+", "At3": "+"},
        "field_size_mode": "CFA", "detector_side_length": 30}]}
    return PyskindoseSettings(base, normalization_settings=norm, output_format="dict")


@pytest.mark.parametrize("legacy_codes", [True, False])
def test_pyskindose_computes_skin_dose_from_our_rdsr(tmp_path, make_run, legacy_codes):
    settings = _pyskindose_settings(tmp_path)
    from pyskindose.analyze_data import analyze_data
    from pyskindose.helpers.read_and_normalize_rdsr_data import read_and_normalise_rdsr_data

    frames = make_run(tmp_path / "run")
    path = export_rdsr(tmp_path / "run", tmp_path / "out", legacy_codes=legacy_codes)
    data = read_and_normalise_rdsr_data(str(path), settings)
    # pyskindose's own reading of the report agrees with the frames
    runs = [[f for f in frames if f.run_index == k] for k in range(3)]
    assert list(data.acquisition_type) == ["Fluoroscopy", "Fluoroscopy", "Stationary Acquisition"]
    assert list(data.K_IRP) == pytest.approx([sum(f.dose.reference_air_kerma_mgy for f in r) for r in runs])
    assert list(data.kVp) == pytest.approx([np.mean([f.exposure.kvp for f in r]) for r in runs])
    assert list(data.Ap1) == [0, 30, 0] and list(data.Ap2) == [0, 10, 0]
    assert list(data.DSD) == [100.0] * 3 and list(data.DSI) == [70.0] * 3          # cm
    assert list(data.FS_lat) == pytest.approx([np.sqrt(0.036) * 100] * 3, abs=1e-3)
    assert list(data.filter_thickness_Cu) == ([0.1] * 3 if legacy_codes else [0.0] * 3)
    out = analyze_data(normalized_data=data, settings=settings)
    psd = float(out["psd"])
    total_k = sum(f.dose.reference_air_kerma_mgy for f in frames)
    assert float(out["air_kerma"]) == pytest.approx(total_k)
    # a skin dose, bounded by the total Ka,r times pyskindose's largest corrections (the table
    # correction, <= 1, applies only where the beam crosses the table)
    k_max = max(np.max(np.asarray(v, dtype=float)) for v in out["corrections"]["backscatter"]) \
        * max(out["corrections"]["medium"]) \
        * max(np.max(np.asarray(v, dtype=float)) for v in out["corrections"]["inverse_square_law"])
    assert 0 < psd <= total_k * k_max + 1e-9
    print(f"pyskindose (legacy_codes={legacy_codes}): PSD {psd:.4f} mGy from total Ka,r {total_k:.4f} mGy")
