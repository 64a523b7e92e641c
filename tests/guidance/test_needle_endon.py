"""Needle seen (nearly) end-on, and the tracker's cheap steady state (synthetic frames)."""

import numpy as np

from openfluoro.geometry.carm import CArmPose, Detector, Geometry, standard_view
from openfluoro.guidance.needle import END_ON_MM, NeedleTracker, detect_needle


def _ap_geometry():
    return Geometry(standard_view("AP", CArmPose()), Detector.square(512, 300.0))


def _px_per_mm(g):
    return g.pose.sid_mm / g.pose.sod_mm / g.detector.image_pitch_mm


def _frame(seed, tail, tip, depth=120.0, halo=30.0):
    """Smooth background with noise and a short dark bar (2.4 px wide) with a bright rim."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:512, 0:512].astype(float)
    img = 130.0 + 25.0 * np.sin(xx / 80.0) + 15.0 * np.cos(yy / 60.0)
    a, b = np.asarray(tail, float), np.asarray(tip, float)
    d = b - a
    L = max(np.hypot(*d), 1e-6)
    u = d / L
    t = (xx - a[0]) * u[0] + (yy - a[1]) * u[1]
    s = np.abs(-(xx - a[0]) * u[1] + (yy - a[1]) * u[0])
    tt = np.clip(t, 0.0, L)
    r = np.hypot(s, t - tt)                     # distance to the segment (round ends)
    core = np.clip(1.7 - r, 0.0, 1.0)
    rim = np.clip(1.0 - np.abs(r - 2.6), 0.0, 1.0)
    img = img - depth * core + halo * rim + rng.normal(0.0, 4.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_short_end_on_spot_reports_its_centre():
    g = _ap_geometry()
    L = 0.5 * END_ON_MM * _px_per_mm(g)         # well below the end-on length
    tail = np.array([300.0, 260.0])
    tip = tail + L * np.array([0.6, -0.8])
    det = detect_needle(_frame(1, tail, tip), g)
    assert det.found and det.tip_cue.startswith("end-on")
    assert det.tip_cue.endswith("centre") and det.tip_side_confidence == 0.0
    centre = 0.5 * (tail + tip)
    assert np.hypot(*(np.asarray(det.tip_px) - centre)) < 1.5


def test_longer_spot_ends_are_measured():
    g = _ap_geometry()
    L = 1.6 * END_ON_MM * _px_per_mm(g)
    tail = np.array([300.0, 260.0])
    tip = tail + L * np.array([0.0, -1.0])
    det = detect_needle(_frame(2, tail, tip), g)
    assert det.found
    ends = sorted([np.asarray(det.tip_px), np.asarray(det.tail_px)], key=lambda p: p[1])
    # both ends within ~1.5 px of the bar's ends (whichever is called the tip)
    assert np.hypot(*(ends[0] - tip)) < 2.0 and np.hypot(*(ends[1] - tail)) < 2.0


def test_tracker_follows_an_end_on_spot_in_a_window():
    g = _ap_geometry()
    tr = NeedleTracker()
    tail = np.array([250.0, 280.0])
    for k in range(6):
        shift = np.array([0.0, -0.4 * k])
        det = tr.update(_frame(10 + k, tail + shift, tail + shift + np.array([2.0, -3.0])), g)
        assert det.found and det.tip_cue.startswith("end-on")
        if k > 0:
            assert det.tracked
        assert np.hypot(*(np.asarray(det.tip_px) - (tail + shift + np.array([1.0, -1.5])))) < 2.0
