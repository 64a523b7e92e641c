"""Interspace heights: centroid endplate lines, per-position offsets, tracker jump guard."""

import numpy as np
import pytest

from openfluoro.guidance.interspace import (POSITION_OFFSET_MM, InterspaceHeight, _plausible, centroid_lines, caudal_wedge_bound,
                                            heights_of)
from openfluoro.guidance.levels import ENDPLATE_INSET_MM, RefinedDisc, ViewFrame

P = 2.0   # px per mm


def _disc_image(up=(-10.0, 0.05), lo=(10.0, -0.03), size=200):
    """Bright disc between two dark bodies; the edges v = v0 + slope u about the image centre
    (u along +x, v along +y), anti-aliased by 8x supersampling across."""
    c = (size - 1) / 2.0
    u = np.arange(size)[None, :] - c
    img = np.zeros((size, size))
    for k in range(8):
        v = np.arange(size)[:, None] - c + (k + 0.5) / 8 - 0.5
        inside = (v > up[0] + up[1] * u) & (v < lo[0] + lo[1] * u)
        img += np.where(inside, 200.0, 60.0)
    return (img / 8).astype(np.float32), np.array([c, c])


def _rd(c, up, lo, shift=0.0):
    inset = ENDPLATE_INSET_MM * P
    return RefinedDisc(c, np.array([1.0, 0.0]), np.array([0.0, 1.0]), (up[0] - inset + shift, up[1] + 0.02),
                       (lo[0] + inset - shift, lo[1] - 0.02), -30.0 * P, 30.0 * P, 1.0, 0.1)


def test_centroid_lines_recover_the_endplates():
    up, lo = (-10.0, 0.05), (10.0, -0.03)
    img, c = _disc_image(up, lo)
    rd = centroid_lines(img, P, _rd(c, up, lo, shift=0.6))         # start 0.6 px off and 0.02 turned
    inset = ENDPLATE_INSET_MM * P
    assert rd.upper[0] + inset == pytest.approx(up[0], abs=0.15)
    assert rd.lower[0] - inset == pytest.approx(lo[0], abs=0.15)
    assert rd.upper[1] == pytest.approx(up[1], abs=0.005)
    assert rd.lower[1] == pytest.approx(lo[1], abs=0.005)


def test_centroid_window_takes_in_the_whole_band_of_an_oblique_endplate():
    """Seen by a ray at tan(a) to its plane, a flat endplate of half width X projects as a band
    of half width X tan(a) over which the bone path -- and so the log image -- changes linearly
    (the ray crosses the plane at x = offset / tan(a); the bone on its path runs from there to
    the far side). The mid-sagittal endplate is the middle of the band. A window of the width
    the obliquity calls for finds it from a start 1.5 px off; the fixed 1.5 mm window is pulled
    toward the start."""
    from openfluoro.guidance.interspace import BAND_HALF_WIDTH_MM, CENTROID_HALF_MM

    up, lo, tan_a = (-12.0, 0.03), (12.0, -0.02), 0.1
    b = BAND_HALF_WIDTH_MM * tan_a * P                                # band half width, px
    size = 200
    c = (size - 1) / 2.0
    u = np.arange(size)[None, :] - c
    v = np.arange(size)[:, None] - c
    into_disc = np.minimum(np.clip((v - (up[0] + up[1] * u) + b) / (2 * b), 0, 1),
                           np.clip(((lo[0] + lo[1] * u) - v + b) / (2 * b), 0, 1))
    img = (60.0 + 140.0 * into_disc).astype(np.float32)
    start = _rd(np.array([c, c]), up, lo, shift=1.5)
    inset = ENDPLATE_INSET_MM * P
    wide = centroid_lines(img, P, start, CENTROID_HALF_MM + BAND_HALF_WIDTH_MM * tan_a)
    assert wide.upper[0] + inset == pytest.approx(up[0], abs=0.15)
    assert wide.lower[0] - inset == pytest.approx(lo[0], abs=0.15)
    assert wide.upper[1] == pytest.approx(up[1], abs=0.005)
    narrow = centroid_lines(img, P, start)
    assert narrow.upper[0] + inset - up[0] > 0.8                        # pulled into the disc


def test_heights_in_mm_with_offsets():
    up, lo = (-10.0, 0.0), (10.0, 0.0)
    img, c = _disc_image(up, lo)
    rd = _rd(c, up, lo)
    rd = RefinedDisc(rd.c, rd.a, rd.n, (-10.0, 0.0), (10.0, 0.0), rd.u_front, rd.u_back, 1.0, 0.1)
    vf = ViewFrame("lateral", False, False, P, 200, 200)
    h = heights_of(rd, vf, "L3-L4", P)
    assert isinstance(h, InterspaceHeight)
    assert h.middle_mm == pytest.approx(20.0 / P + POSITION_OFFSET_MM["middle"], abs=1e-6)
    assert h.anterior_mm == pytest.approx(20.0 / P + POSITION_OFFSET_MM["anterior"], abs=1e-6)
    assert h.posterior_mm == pytest.approx(20.0 / P + POSITION_OFFSET_MM["posterior"], abs=1e-6)


def test_tracker_guard_rejects_a_turned_endplate():
    c = np.array([100.0, 100.0])
    prev = _rd(c, (-10.0, 0.05), (10.0, -0.05))
    opened = _rd(c, (-12.0, 0.05), (12.0, -0.05))
    flipped = _rd(c, (-10.0, -0.04), (10.0, 0.04))
    assert _plausible(prev, opened)
    assert not _plausible(prev, flipped)


def _plain(up, lo):
    return RefinedDisc(np.array([0.0, 0.0]), np.array([1.0, 0.0]), np.array([0.0, 1.0]), up, lo, -30.0, 30.0, 1.0, 0.1)


def test_crest_crossed_l5_endplate_turned_to_the_wedge_of_l3_l4():
    """L4-L5 measured flatter than L3-L4 by more than the margin: its lower line (the top of
    L5, behind the iliac crest) is turned to L3-L4's wedge plus the margin; within the margin
    it is left alone."""
    import math

    from openfluoro.guidance.interspace import CAUDAL_WEDGE_MARGIN_DEG

    above = _plain((-10.0, 0.02), (10.0, -0.12))                    # L3-L4 wedge -0.14
    flat = _plain((-10.0, 0.02), (10.0, 0.0))
    rd = dict(caudal_wedge_bound([("L3-L4", above), ("L4-L5", flat)]))["L4-L5"]
    m = math.tan(math.radians(CAUDAL_WEDGE_MARGIN_DEG["L4-L5"]))
    assert rd.lower[1] - rd.upper[1] == pytest.approx(-0.14 + m)
    assert rd.upper == flat.upper
    near = _plain((-10.0, 0.02), (10.0, -0.12 + 0.5 * m))            # within the margin
    assert dict(caudal_wedge_bound([("L3-L4", above), ("L4-L5", near)]))["L4-L5"] is near


def test_sacral_line_turned_to_the_wedge_of_the_disc_above():
    above = _plain((-10.0, 0.02), (10.0, -0.10))                    # wedge -0.12
    flat = _plain((-10.0, 0.02), (10.0, 0.0))                       # wedge -0.02: sacral line too flat
    out = dict(caudal_wedge_bound([("L4-L5", above), ("L5-S1", flat)]))
    rd = out["L5-S1"]
    assert rd.lower[1] - rd.upper[1] == pytest.approx(-0.12)
    um = 0.5 * (rd.u_front + rd.u_back)
    assert rd.lower[0] + rd.lower[1] * um == pytest.approx(flat.lower[0] + flat.lower[1] * um)   # middle kept
    assert rd.upper == flat.upper
    # wedged enough already, or no L4-L5 to compare with: unchanged
    steep = _plain((-10.0, 0.02), (10.0, -0.2))
    assert dict(caudal_wedge_bound([("L4-L5", above), ("L5-S1", steep)]))["L5-S1"] is steep
    assert dict(caudal_wedge_bound([("L5-S1", flat)]))["L5-S1"] is flat


def test_lower_line_found_as_a_whole_line_past_a_stronger_partial_edge():
    """The top of S1: a weak straight edge (contrast 50) wedged 15 deg against the upper line;
    across the back half of the body a stronger edge (80), flat, as an iliac wing puts there,
    on which the detected line starts. The search over whole lines finds the top of S1."""
    import math

    from openfluoro.guidance.interspace import lower_line_search

    size, c = 200, 99.5
    slope = -math.tan(math.radians(15.0))
    u = np.arange(size)[None, :] - c
    img = np.zeros((size, size))
    for k in range(8):                                               # 8x supersampled across
        v = np.arange(size)[:, None] - c + (k + 0.5) / 8 - 0.5
        disc = (v > -10.0) & (v < 10.0 + slope * u)
        img += np.where(disc, 200.0, np.where(v <= -10.0, 60.0, 150.0)) - np.where((v > 12.0) & (u > 0), 80.0, 0.0)
    img = (img / 8 + np.random.default_rng(3).normal(0.0, 10.0, img.shape)).astype(np.float32)
    start = RefinedDisc(np.array([c, c]), np.array([1.0, 0.0]), np.array([0.0, 1.0]), (-10.0, 0.0), (12.0, 0.0),
                        -30.0 * P, 30.0 * P, 1.0, 0.1)
    rd = lower_line_search(img, P, start)
    assert rd.lower[1] == pytest.approx(slope, abs=math.tan(math.radians(1.0)))
    assert rd.lower[0] == pytest.approx(10.0, abs=0.5)                # middle (u = 0) within 0.25 mm
    assert rd.upper == start.upper


def test_ray_obliquity_is_the_angle_of_the_ray_through_the_disc():
    """Against the 3-D ray from the source to a point 50 mm cranial of the isocentre on a
    lateral: its angle to the axial plane (the plane of a level disc)."""
    from openfluoro.geometry.carm import CArmPose, Detector, Geometry
    from openfluoro.guidance.interspace import obliquity_correction_mm, ray_obliquity
    from openfluoro.guidance.levels import view_frame

    g = Geometry(pose=CArmPose(primary_deg=90.0, sid_mm=1000.0, sod_mm=700.0), detector=Detector.square(512, 300.0))
    point = np.array([0.0, 0.0, 50.0])
    ray = point - np.asarray(g.pose.source_lps_mm, float)
    tan_ref = abs(ray[2]) / float(np.hypot(ray[0], ray[1]))
    vf = view_frame(g, (512, 512))
    c = vf.to_norm(g.project(point))[0]
    rd = RefinedDisc(c, np.array([1.0, 0.0]), np.array([0.0, 1.0]), (-8.0, 0.0), (8.0, 0.0), -40.0, 40.0, 1.0, 0.1)
    assert ray_obliquity(g, vf, rd) == pytest.approx(tan_ref, rel=1e-3)
    assert obliquity_correction_mm(0.01) == 0.0                     # near the central ray: nothing
    assert 0.0 < obliquity_correction_mm(0.1) < obliquity_correction_mm(0.2) == obliquity_correction_mm(0.5)


def test_tracker_refinds_a_lost_disc_around_where_it_was(lateral_frame, monkeypatch):
    """Re-measurement failing (occlusion) for two frames: the disc is searched again around its
    held lines, one disc per frame, without a whole-frame detection."""
    from openfluoro.guidance import interspace as I

    f = lateral_frame
    tr = I.InterspaceTracker()
    first = {h.name: h for h in tr.update(f.image, f.geometry)}
    assert len(first) >= 2

    def no_full_detection(*a, **k):
        raise AssertionError("detect_levels called while tracking")

    monkeypatch.setattr(I, "detect_levels", no_full_detection)
    monkeypatch.setattr(I, "remeasure_disc", lambda *a, **k: None)
    tr.update(f.image, f.geometry)
    assert all(m == 1 for m in tr._misses)
    again = {h.name: h for h in tr.update(f.image, f.geometry)}
    assert sorted(tr._misses).count(0) == 1                           # one disc re-found this frame
    for name, h in again.items():                                     # same image: same heights
        assert h.middle_mm == pytest.approx(first[name].middle_mm, abs=0.3), name


def test_a_pose_without_interspaces_is_searched_again_only_now_and_then(monkeypatch):
    """A frame with no spine in it: the whole-frame detection (~60 ms) is not repeated on
    every frame, by the interspace tracker nor by the puncture guide."""
    from openfluoro.geometry.carm import CArmPose, Detector, Geometry
    from openfluoro.guidance import interspace as I
    from openfluoro.guidance import puncture as PG
    from openfluoro.guidance.levels import LevelResult, detect_levels, view_frame

    g = Geometry(pose=CArmPose(primary_deg=90.0), detector=Detector.square(256, 300.0))
    blank = np.full((256, 256), 100.0, np.float32)
    calls = []

    def counted(image, geometry):
        calls.append(1)
        return LevelResult("lateral", (), (), "none", 0.0, view_frame(geometry, image.shape))

    monkeypatch.setattr(I, "detect_levels", counted)
    tr = I.InterspaceTracker()
    assert all(tr.update(blank, g) == [] for _ in range(16))
    assert len(calls) == 2                                             # frames 1 and 9
    calls.clear()
    monkeypatch.setattr(PG, "detect_levels", counted)
    guide = PG.PunctureGuide("L3-L4")
    for _ in range(16):
        guide.update(blank, g)
    assert len(calls) == 2
    assert detect_levels(blank, g).discs == ()                         # what the stand-in stands for
