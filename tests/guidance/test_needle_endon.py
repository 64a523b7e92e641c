"""Needle seen (nearly) end-on, and the tracker's cheap steady state (synthetic frames)."""

import numpy as np
import pytest

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


def _two_bars(seed, tail, tip, gap_px, far_px, far_depth):
    """A needle bar tail -> tip and, in line beyond its tip after a gap, a fainter bar (a
    spinous process edge lined up with a needle seen nearly along the beam)."""
    img = _frame(seed, tail, tip).astype(float)
    u = (tip - tail) / np.hypot(*(tip - tail))
    a = tip + gap_px * u
    beyond = _frame(seed + 1000, a, a + far_px * u, depth=far_depth, halo=0.0).astype(float)
    plain = _frame(seed + 1000, a, a, depth=0.0, halo=0.0).astype(float)
    return np.clip(img + (beyond - plain), 0, 255).astype(np.uint8)


def _tip_errors_when_a_bar_appears_beyond_the_tip(g, hold_max_frames, far_depth=80.0):
    tr = NeedleTracker(hold_max_frames=hold_max_frames)
    tail, tip = np.array([256.0, 200.0]), np.array([256.0, 236.0])
    for k in range(4):                                      # the needle alone: tracked
        det = tr.update(_frame(20 + k, tail, tip), g)
        assert det.found
    errs = []
    for k in range(4):                                      # something in line beyond the tip
        det = tr.update(_two_bars(30 + k, tail, tip, gap_px=6.0, far_px=30.0, far_depth=far_depth), g)
        errs.append(float(np.hypot(*(np.asarray(det.tip_px) - tip))) if det.found else np.inf)
    return errs


def test_tip_held_when_the_line_grows_beyond_it_with_its_tail_still():
    """A rigid needle advanced along itself moves its hub too: in an AP view a segment that
    suddenly reaches 30 px further at the tip while its tail stays put is the needle joined
    to something beyond it, and the last tip is held. (The bar beyond has two thirds of the
    needle's contrast: a bar under half of it is cut off at the gap, ``CONTRAST_STEP_MIN``.)"""
    g = _ap_geometry()
    held = _tip_errors_when_a_bar_appears_beyond_the_tip(g, hold_max_frames=30)
    assert max(held) < 3.0
    unheld = _tip_errors_when_a_bar_appears_beyond_the_tip(g, hold_max_frames=0)
    assert max(unheld) > 15.0                               # the case the hold is for


def test_lateral_needle_growing_from_the_skin_is_followed():
    """In a lateral the shaft outside the skin does not show: as the needle is advanced the
    part seen grows at the tip from a tail fixed at the skin, and the tip must follow."""
    from openfluoro.guidance.needle import image_direction

    g = Geometry(standard_view("lateral_left", CArmPose()), Detector.square(512, 300.0))
    tail = np.array([256.0, 256.0])
    ant = image_direction(g, tail, (0.0, -1.0, 0.0))
    u = ant / np.hypot(*ant)
    tr = NeedleTracker()
    for k in range(4):
        assert tr.update(_frame(40 + k, tail, tail + 40.0 * u), g).found
    for k in range(3):
        tip = tail + 75.0 * u
        det = tr.update(_frame(50 + k, tail, tip), g)
        assert det.found and np.hypot(*(np.asarray(det.tip_px) - tip)) < 5.0       # not held 35 px back


def test_segment_ends_at_an_empty_gap_before_a_bar_in_line():
    """Whole-frame detection: beyond a 6 px gap as flat as the background, a bar in line as
    dark as the needle (a cortical edge) is not the needle; the tip is the needle's own end
    (bridged, it was taken for the tip: 38 px off)."""
    g = _ap_geometry()
    tail, tip = np.array([256.0, 200.0]), np.array([256.0, 236.0])
    for seed in (60, 61, 62):
        det = detect_needle(_two_bars(seed, tail, tip, gap_px=6.0, far_px=30.0, far_depth=120.0), g)
        assert det.found and np.hypot(*(np.asarray(det.tip_px) - tip)) < 3.0



def _needle_then_weaker_band(seed, tail, tip, gap_px, band_px, band_depth, bridge_depth):
    """A needle bar tail -> tip; in line beyond it a faint bridge (``gap_px`` long) and then a
    band under half the needle's contrast (a laminar or spinous edge past the tip)."""
    img = _frame(seed, tail, tip).astype(float)
    u = (tip - tail) / np.hypot(*(tip - tail))
    plain = _frame(seed + 1000, tip, tip, depth=0.0, halo=0.0).astype(float)
    a = tip + gap_px * u
    for start, end, depth in ((tip + 2.5 * u, a, bridge_depth), (a, a + band_px * u, band_depth)):
        img += _frame(seed + 1000, start, end, depth=depth, halo=0.0).astype(float) - plain
    return np.clip(img, 0, 255).astype(np.uint8)


def test_segment_ends_where_the_line_beyond_a_gap_shows_under_half_the_needles_contrast(monkeypatch):
    """Beyond a gap that is not quite empty, a line in line with the needle at a third of its
    contrast (not clipped black) is something else: the tip is the needle's own end. Taken
    across the gap (``CONTRAST_STEP_MIN`` = 0), the tip lands at the band's far end."""
    from openfluoro.guidance import needle as N

    g = _ap_geometry()
    tail, tip = np.array([256.0, 190.0]), np.array([256.0, 236.0])
    frames = [_needle_then_weaker_band(seed, tail, tip, gap_px=8.0, band_px=24.0, band_depth=40.0, bridge_depth=22.0)
              for seed in (70, 71, 72)]
    for img in frames:
        det = detect_needle(img, g)
        assert det.found and np.hypot(*(np.asarray(det.tip_px) - tip)) < 3.0
    monkeypatch.setattr(N, "CONTRAST_STEP_MIN", 0.0)
    monkeypatch.setattr(N, "BLACK_RUN_MIN", 2.0)        # nor cut where a black needle could not be
    far = [detect_needle(img, g) for img in frames]
    assert max(float(np.hypot(*(np.asarray(d.tip_px) - tip))) for d in far if d.found) > 15.0


def _black_needle(seed, tail, tip, beyond_px=0.0, beyond_depth=0.0):
    """A needle denser than the display's black (its core clipped to 0) on a smooth background,
    and ``beyond_px`` of a fainter bar (``beyond_depth``) going on in line past the tip with
    no gap (a spinous edge)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:512, 0:512].astype(float)
    img = 140.0 + 15.0 * np.sin(xx / 80.0) + 10.0 * np.cos(yy / 60.0)
    a, b = np.asarray(tail, float), np.asarray(tip, float)
    u = (b - a) / np.hypot(*(b - a))
    for (p, q), depth in (((a, b), 250.0), ((b, b + beyond_px * u), beyond_depth)):
        L = max(np.hypot(*(q - p)), 1e-6)
        t = np.clip((xx - p[0]) * u[0] + (yy - p[1]) * u[1], 0.0, L)
        r = np.hypot(xx - (p[0] + t * u[0]), yy - (p[1] + t * u[1]))
        img = img - depth * np.clip(1.7 - r, 0.0, 1.0)
    return np.clip(img + rng.normal(0.0, 2.0, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("gap_centre", [0.0, 16.0])
def test_a_gap_over_dark_bone_is_empty_only_where_a_black_needle_could_not_be(gap_centre):
    """A needle black along its run crosses 20 px of bone whose grey (30) is below the needle's
    contrast (140): with a black centre there it shows 30, all the room the display leaves
    it, and the gap is bridged (judged against the needle's full contrast it was cut). A
    centre of 16 there (still over a third of the room) is brighter than a needle at least
    as dark as that could leave it: the gap is empty."""
    from openfluoro.guidance import needle as N

    n, g0, g1 = 300, 120, 160
    gap = np.zeros(n, bool)
    gap[g0:g1] = True
    flank = np.where(gap, 30.0, 140.0)
    centre = np.where(gap, gap_centre, 0.0)
    above = flank - centre
    on, off = ~gap, gap.copy()
    clip = N._Clipping(centre <= 4.0, centre, flank.copy(), flank, np.ones(n, bool), flank.copy())
    pieces = N._split_at_empty_gaps(above, on, off, np.zeros(n, bool), 0, n - 1, clip)
    assert pieces == ([(0, n - 1)] if gap_centre == 0.0 else [(0, g0 - 1), (g1, n - 1)])
    assert N._split_at_empty_gaps(above, on, off, np.zeros(n, bool), 0, n - 1) == [(0, g0 - 1), (g1, n - 1)]


def test_a_black_needles_line_going_on_above_black_ends_at_the_tip(monkeypatch):
    """In line past the tip of a needle clipped to black, a bar brighter than black over the
    same background cannot be the needle, which would be black there too: the tip is where
    the black ends. Without the cut the tip is the bar's far end, 20 px off."""
    from openfluoro.guidance import needle as N

    g = _ap_geometry()
    tail, tip = np.array([256.0, 370.0]), np.array([252.0, 250.0])
    frames = [_black_needle(seed, tail, tip, beyond_px=20.0, beyond_depth=75.0) for seed in (90, 91, 92)]
    for img in frames:
        det = detect_needle(img, g)
        ends = sorted([np.asarray(det.tip_px), np.asarray(det.tail_px)], key=lambda p: p[1])
        assert det.found and np.hypot(*(ends[0] - tip)) < 3.0 and np.hypot(*(ends[1] - tail)) < 3.0
    monkeypatch.setattr(N, "BLACK_RUN_MIN", 2.0)
    uncut = [detect_needle(img, g) for img in frames]
    assert min(min(np.hypot(*(np.asarray(d.tip_px) - tip)), np.hypot(*(np.asarray(d.tail_px) - tip)))
               for d in uncut) > 15.0
