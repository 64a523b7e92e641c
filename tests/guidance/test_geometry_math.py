"""Triangulation and magnification against exact, independently computed geometry."""

import numpy as np
import pytest

from openfluoro.geometry.carm import CArmPose, Detector, Geometry, standard_view
from openfluoro.guidance.depth import (SacModel, closest_approach, distance_to_sac, epipolar_line,
                                       needle_from_views, triangulate_line, triangulate_point)
from openfluoro.guidance.interspace import magnification, px_per_mm_at_isocentre, px_to_mm


def _views(iso=(3.0, 5.0, -10.0)):
    g1 = Geometry(standard_view("AP", CArmPose(isocentre_lps_mm=iso)).rotated(177.0, 2.0), Detector.square(512, 300.0))
    g2 = Geometry(standard_view("lateral", CArmPose(isocentre_lps_mm=iso, sid_mm=1100.0)).rotated(92.0, -3.0),
                  Detector.square(512, 300.0))
    return g1, g2


def test_triangulated_point_is_exact_for_exact_projections():
    g1, g2 = _views()
    rng = np.random.default_rng(1)
    for X in rng.uniform(-60, 60, (20, 3)):
        x = [g.project(X)[0] for g in (g1, g2)]
        Y, err = triangulate_point([g1, g2], x)
        assert np.allclose(Y, X, atol=1e-6)
        assert err.max() < 1e-6
        M, gap = closest_approach([g1, g2], x)
        assert np.allclose(M, X, atol=1e-6) and gap < 1e-6


def test_triangulation_error_scales_with_pixel_error():
    # one pixel of error in one view moves the point by about a pixel at the isocentre
    g1, g2 = _views()
    X = np.array([2.0, 30.0, -15.0])
    x1, x2 = g1.project(X)[0], g2.project(X)[0]
    Y, _ = triangulate_point([g1, g2], [x1 + [1.0, 0.0], x2])
    assert 0.3 < np.linalg.norm(Y - X) < 2.0 * (1.0 / px_per_mm_at_isocentre(g1))


def test_needle_axis_and_tip_from_two_views():
    g1, g2 = _views()
    tip = np.array([1.0, 25.0, -18.0])
    hub = tip + np.array([4.0, 70.0, -12.0])
    n = needle_from_views([g1, g2], [g1.project(tip)[0], g2.project(tip)[0]], [g1.project(hub)[0], g2.project(hub)[0]])
    assert np.allclose(n.tip_lps_mm, tip, atol=1e-6)
    u = (tip - hub) / np.linalg.norm(tip - hub)
    assert np.allclose(n.axis_lps, u, atol=1e-6)
    p, d = triangulate_line([g1, g2], [(g1.project(tip)[0], g1.project(hub)[0]), (g2.project(tip)[0], g2.project(hub)[0])])
    assert abs(abs(d @ u) - 1.0) < 1e-9 and np.linalg.norm(np.cross(tip - p, d)) < 1e-6


def test_epipolar_line_passes_through_the_corresponding_point():
    g1, g2 = _views()
    X = np.array([-7.0, 12.0, 33.0])
    a, b, c = epipolar_line(g1, g1.project(X)[0], g2)
    x2 = g2.project(X)[0]
    assert abs(a * x2[0] + b * x2[1] + c) < 1e-6 and abs(np.hypot(a, b) - 1) < 1e-12


def test_magnification_correction():
    g = Geometry(CArmPose(sid_mm=1200.0, sod_mm=800.0), Detector(rows=512, cols=512, pixel_pitch_mm=0.3, binning=2))
    assert magnification(g) == pytest.approx(1.5)
    # a 10 mm object at the isocentre spans 10 * 1.5 / 0.6 = 25 image pixels
    assert px_per_mm_at_isocentre(g) == pytest.approx(2.5)
    assert px_to_mm(25.0, g) == pytest.approx(10.0)
    # projected extent of a real 10 mm segment at the isocentre, perpendicular to the beam
    p = g.project(np.array([[0.0, 0.0, 5.0], [0.0, 0.0, -5.0]]))
    assert px_to_mm(float(np.hypot(*(p[0] - p[1]))), g) == pytest.approx(10.0, rel=1e-9)
    # off the isocentre plane, toward the detector: larger magnification
    assert magnification(g, 100.0) == pytest.approx(1200.0 / 900.0)


def test_distance_to_sac_from_landmark_rings():
    class P:
        labels = None
        label_names = {}
        landmarks = {"thecal_sac": {
            "A": {"centre": [0, 20, -20], "left_wall": [7, 20, -20], "posterior_wall": [0, 27, -20]},
            "B": {"centre": [0, 20, 20], "left_wall": [7, 20, 20], "posterior_wall": [0, 27, 20]}}}

    sac = SacModel(P())
    assert sac.available and sac.source == "landmarks"
    # from 40 mm behind the sac centre, heading anterior: dura at y = 27, i.e. 13 mm ahead
    d = distance_to_sac([0.0, 40.0, 0.0], [0.0, -1.0, 0.0], sac)
    assert not d.inside and d.distance_mm == pytest.approx(13.0, abs=0.3)
    d = distance_to_sac([0.0, 22.0, 0.0], [0.0, -1.0, 0.0], sac)
    assert d.inside and d.distance_mm == pytest.approx(-5.0, abs=0.3)
