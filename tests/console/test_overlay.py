"""Guidance overlay primitives from ground truth, checked against the geometry by hand."""

from __future__ import annotations

import numpy as np
import pytest

from openfluoro.console.overlay import OverlayContext, burn_overlay, ground_truth_overlay
from openfluoro.fluoro.session import Session
from openfluoro.geometry.carm import Detector

from .conftest import NEEDLE_PLAN


@pytest.fixture(scope="module")
def session(console_patient):
    return Session.for_patient(console_patient, detector=Detector.square(128, 240.0), seed=2)


def test_needle_target_levels_and_calipers(session):
    s = session
    s.set_view("PA")
    s.insert_needle(NEEDLE_PLAN["entry"], NEEDLE_PLAN["target"], depth_mm=5.0)
    frame = s.run(0.3)[-1]
    s.pedal_up()
    ctx = OverlayContext(spine=s.spine, needle_target_lps_mm=tuple(NEEDLE_PLAN["target"]))
    prims = ground_truth_overlay(frame.geometry, frame.ground_truth, ctx)
    kinds = [p["kind"] for p in prims]
    tip = next(p for p in prims if p["kind"] == "marker" and p["label"] == "tip")
    np.testing.assert_allclose(tip["at"], frame.ground_truth["needle"]["tip_px"], atol=0.06)
    target = next(p for p in prims if p["kind"] == "marker" and p["label"] == "target")
    np.testing.assert_allclose(target["at"], frame.geometry.project(NEEDLE_PLAN["target"])[0], atol=0.06)
    dist = next(p["text"] for p in prims if p["kind"] == "text" and "to target" in p["text"])
    expected = np.linalg.norm(np.subtract(frame.ground_truth["needle"]["tip_lps_mm"], NEEDLE_PLAN["target"]))
    assert dist == f"{expected:.1f} mm to target"
    assert {p["text"] for p in prims if p["kind"] == "text" and p["text"] in ("L3", "L4", "L5", "sacrum")} == \
        {"L3", "L4", "L5", "sacrum"}
    calipers = [p for p in prims if p["kind"] == "caliper"]
    assert sorted(c["text"].split()[0] for c in calipers) == ["L3-L4", "L4-L5", "L5-S1"]
    # a disc near the isocentre seen PA: length on the detector = height x SID/SOD / pixel pitch
    mag = frame.geometry.pose.sid_mm / frame.geometry.pose.sod_mm
    for c in calipers:
        h = float(c["text"].split()[1])
        assert 6.5 <= h <= 8.5      # the synthetic discs: 8 one-mm voxels (centre-to-centre extent 7 mm)
        length_px = np.hypot(*np.subtract(c["b"], c["a"]))
        assert length_px == pytest.approx(h * mag / frame.geometry.detector.image_pitch_mm, rel=0.03)
    assert "banner" not in kinds


def test_csf_banner_and_decompression_progress(session):
    s = session
    s.advance_needle(30.0)
    assert s.csf_return
    s.set_traction(distraction_mm=1.0, ramp_mm_per_s=2.0)
    frame = s.run(0.4)[-1]
    s.pedal_up()
    prims = ground_truth_overlay(frame.geometry, frame.ground_truth, OverlayContext(spine=s.spine))
    banner = next(p for p in prims if p["kind"] == "banner")
    assert banner["text"].startswith("CSF RETURN") and banner["level"] == "ok"
    prog = next(p for p in prims if p["kind"] == "progress")
    assert prog["value"] == pytest.approx(frame.ground_truth["traction"]["per_disc_mm"] / 1.0)
    s.traction_off()

    img = frame.image
    burned = burn_overlay(img, prims)
    assert burned.shape == img.shape + (3,) and burned.dtype == np.uint8
    assert np.any(burned[..., 0] != img)
    grey = burn_overlay(img, prims, rgb=False)
    assert grey.shape == img.shape and np.any(grey != img)
