"""The console's detector-based overlay: it draws what the guidance finds in the pixels, agrees
with the simulator's ground truth, and reads nothing of the ground truth but the operator's
and the machine's own knowledge (CSF at the hub, the traction set point)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from openfluoro.console.detected import DetectedOverlay
from openfluoro.console.overlay import OverlayContext
from openfluoro.geometry.carm import Detector
from openfluoro.guidance.cases import case_patient, make_cases
from openfluoro.guidance.interspace import px_per_mm_at_isocentre


@pytest.fixture(scope="module")
def patient():
    # a development phantom (never an evaluation patient) at the evaluation's 1.5 mm voxels
    return case_patient(make_cases(3, 5, dev=True)[1].phantom)


def _operator_view(gt: dict) -> dict:
    """What the console knows without the simulator: CSF seen at the hub, the traction setting."""
    out: dict = {}
    if gt.get("needle") is not None:
        out["needle"] = {"csf_return": gt["needle"].get("csf_return", False)}
    if gt.get("traction") is not None:
        out["traction"] = {"target_per_disc_mm": gt["traction"]["target_per_disc_mm"]}
    return out


def _frames(patient):
    from openfluoro.fluoro.session import Session

    s = Session.for_patient(patient, detector=Detector.square(512, 300.0), seed=4)
    lm = patient.landmarks
    iso = np.asarray(s.pose.isocentre_lps_mm, float)
    s.move_table(tuple(iso - np.asarray(lm["discs"]["L3-L4"]["centre"], float)))
    s.set_pulse_rate(7.5)
    ctx = OverlayContext(spine=s.spine, patient=patient)
    out = []
    s.set_view("lateral")
    out += [(f, ctx) for f in s.run(0.6)]                 # baseline, no traction
    s.set_traction(distraction_mm=2.0, ramp_mm_per_s=4.0)
    out += [(f, ctx) for f in s.run(1.2)]                 # ramp and hold
    s.set_traction(force_n=0.0, ramp_mm_per_s=100.0)
    s.run(0.2)
    s.pedal_up()
    plan = lm["needle"]["L3-L4"]
    s.set_view("PA")
    s.insert_needle(plan["entry"], plan["target"], depth_mm=10.0)
    ctx = replace(ctx, needle_target_lps_mm=tuple(plan["target"]), needle_level="L3-L4")
    full = float(np.linalg.norm(np.subtract(plan["target"], plan["entry"])))
    for _ in range(3):
        s.advance_needle((0.8 * full - 10.0) / 3)
        out += [(f, ctx) for f in s.run(0.4)]
    s.pedal_up()
    return out


@pytest.fixture(scope="module")
def drawn(patient):
    frames = _frames(patient)
    src = DetectedOverlay(live=False)
    return [(f, src(f.image, f.geometry, f.ground_truth, ctx)) for f, ctx in frames], frames


def test_reads_only_what_the_operator_knows(drawn):
    results, frames = drawn
    src = DetectedOverlay(live=False)
    for (f, ctx), (_, prims) in zip(frames, results):
        assert src(f.image, f.geometry, _operator_view(f.ground_truth), ctx) == prims


def test_needle_tip_and_target_agree_with_truth(drawn, patient):
    results, _ = drawn
    ap = [(f, p) for f, p in results if "needle" in f.ground_truth]
    errs = []
    for f, prims in ap:
        tips = [p for p in prims if p["kind"] == "marker" and str(p.get("label", "")).startswith("tip")]
        assert len(tips) == 1, "needle not drawn"
        errs.append(np.hypot(*np.subtract(tips[0]["at"], f.ground_truth["needle"]["tip_px"]))
                    / px_per_mm_at_isocentre(f.geometry))
    assert np.median(errs) < 1.0
    f, prims = ap[-1]
    # the target drawn is the true L3-L4 interspace (within the evaluation's 8 mm)
    target = next(p for p in prims if p["kind"] == "marker" and p.get("label") == "target L3-L4")
    truth = f.geometry.project(np.asarray(patient.landmarks["discs"]["L3-L4"]["centre"], float))[0]
    assert np.hypot(*np.subtract(target["at"], truth)) / px_per_mm_at_isocentre(f.geometry) < 8.0
    # the needle was seen in this AP only: the distance is across the view, and says so
    assert any(p["kind"] == "text" and p["text"].endswith("mm to target in this view") for p in prims)


def test_traction_progress_measured(drawn):
    results, _ = drawn
    lateral = [(f, p) for f, p in results if "needle" not in f.ground_truth]
    base = [p for f, p in lateral if f.ground_truth.get("traction", {}).get("target_per_disc_mm", 0.0) == 0.0]
    assert base and all(any(q["kind"] == "caliper" for q in p) for p in base)
    assert not any(q["kind"] == "progress" for p in base for q in p)
    last_f, last = lateral[-1]
    bar = next(q for q in last if q["kind"] == "progress")
    truth = last_f.ground_truth["traction"]["per_disc_mm"] / last_f.ground_truth["traction"]["target_per_disc_mm"]
    assert truth == pytest.approx(1.0)
    assert bar["value"] == pytest.approx(truth, abs=0.35)
    assert bar["text"].startswith("reached")


def test_traction_with_a_needle_in(patient):
    """Traction started on a lateral with the needle in (the console's usual order): the
    baseline is measured on the laterals before it, and the needle's tip stays on the needle
    (not on an endplate's cortical line) while the vertebrae move."""
    from openfluoro.fluoro.session import Session

    s = Session.for_patient(patient, detector=Detector.square(512, 300.0), seed=5)
    lm = patient.landmarks
    iso = np.asarray(s.pose.isocentre_lps_mm, float)
    s.move_table(tuple(iso - np.asarray(lm["discs"]["L3-L4"]["centre"], float)))
    s.set_pulse_rate(7.5)
    plan = lm["needle"]["L3-L4"]
    s.set_view("lateral")
    s.insert_needle(plan["entry"], plan["target"],
                    depth_mm=0.7 * float(np.linalg.norm(np.subtract(plan["target"], plan["entry"]))))
    ctx = OverlayContext(spine=s.spine, patient=patient, needle_target_lps_mm=tuple(plan["target"]),
                         needle_level="L3-L4")
    frames = s.run(0.6)
    s.set_traction(distraction_mm=2.0, ramp_mm_per_s=4.0)
    frames += s.run(1.2)
    s.pedal_up()
    src = DetectedOverlay(live=False)
    drawn = [src(f.image, f.geometry, _operator_view(f.ground_truth), ctx) for f in frames]
    assert any(q["kind"] == "progress" for q in drawn[-1])
    k = 1.0 / px_per_mm_at_isocentre(frames[-1].geometry)
    for f, prims in zip(frames, drawn):
        tip = next(q for q in prims if q["kind"] == "marker" and q.get("shape") == "circle")
        assert np.hypot(*(np.asarray(tip["at"]) - f.ground_truth["needle"]["tip_px"])) * k < 2.0
