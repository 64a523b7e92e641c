"""Spinal needle model: gauge table, pose arithmetic, moves and their validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openfluoro.scene.needle import GAUGE_OD_MM, Needle, NeedleError, inside_needle

# Nominal outer diameters quoted in the brief / common charts (mm, 2-3 significant digits)
QUOTED_OD_MM = {18: 1.27, 20: 0.91, 22: 0.72, 25: 0.51}


def angle_deg(a, b) -> float:
    c = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def test_gauge_table():
    assert sorted(GAUGE_OD_MM) == list(range(18, 26))
    for g, od in QUOTED_OD_MM.items():
        assert GAUGE_OD_MM[g] == pytest.approx(od, abs=0.006)
    ods = [GAUGE_OD_MM[g] for g in range(18, 26)]
    assert all(a > b for a, b in zip(ods, ods[1:]))          # higher gauge, thinner needle
    assert Needle(gauge=22).radius_mm == pytest.approx(0.5 * 0.7176, abs=1e-4)


def test_pose_derived_points():
    n = Needle(gauge=20, length_mm=120, entry_lps_mm=(10, 80, -5), direction_lps=(0, -2, 0),
               inserted_depth_mm=45, bevel_face_lps=(0, 0, 3))
    np.testing.assert_allclose(n.axis, [0, -1, 0])
    np.testing.assert_allclose(n.bevel_face, [0, 0, 1])
    np.testing.assert_allclose(n.tip_axis_lps_mm, [10, 35, -5])
    np.testing.assert_allclose(n.tip_lps_mm, [10, 35, -5 - n.radius_mm])       # point opposite the bevel face
    np.testing.assert_allclose(n.hub_lps_mm, [10, 155, -5])
    np.testing.assert_allclose(n.shaft_segment_lps_mm, [[10, 155, -5], [10, 35, -5]])
    assert np.linalg.norm(n.shaft_segment_lps_mm[1] - n.shaft_segment_lps_mm[0]) == pytest.approx(120)


def test_bevel_geometry_and_steel_volume_by_sampling():
    """The solid ends at the point; the bevel removes half of the last bevel_length; volume by Monte Carlo."""
    n = Needle(gauge=18, length_mm=100, entry_lps_mm=(0, 0, 0), direction_lps=(0, 0, 1), inserted_depth_mm=50,
               bevel_face_lps=(1, 0, 0), bevel_angle_deg=20)
    r = n.radius_mm
    assert n.bevel_length_mm == pytest.approx(2 * r / math.tan(math.radians(20)))
    # just behind the point (and a hair toward the face, inside the surface) is steel; just beyond is not
    assert inside_needle(n, (n.tip_lps_mm - 1e-5 * n.axis + 1e-7 * n.bevel_face)[None])[0]
    assert not inside_needle(n, (n.tip_lps_mm + 1e-6 * n.axis)[None])[0]
    heel = n.tip_axis_lps_mm + r * n.bevel_face - n.bevel_length_mm * n.axis
    assert inside_needle(n, (heel - 1e-6 * n.axis - 1e-9 * n.bevel_face)[None])[0]
    assert not inside_needle(n, (heel + 1e-6 * n.axis - 1e-9 * n.bevel_face)[None])[0]
    # Monte Carlo over the last bevel_length of the bounding cylinder: half of it is steel
    rng = np.random.default_rng(0)
    m = 400_000
    rad = r * np.sqrt(rng.uniform(0, 1, m))
    ang = rng.uniform(0, 2 * math.pi, m)
    s = rng.uniform(n.length_mm - n.bevel_length_mm, n.length_mm, m)
    pts = n.hub_lps_mm + s[:, None] * n.axis + (rad * np.cos(ang))[:, None] * np.array([1.0, 0, 0]) \
        + (rad * np.sin(ang))[:, None] * np.array([0, 1.0, 0])
    frac = inside_needle(n, pts).mean()
    assert frac == pytest.approx(0.5, abs=4 * math.sqrt(0.25 / m))
    full = math.pi * r * r * n.length_mm
    assert n.steel_volume_mm3 == pytest.approx(full - 0.5 * math.pi * r * r * n.bevel_length_mm, rel=1e-12)
    assert n.steel_mass_g == pytest.approx(n.steel_volume_mm3 * 8.0e-3)


@given(st.floats(0, 40), st.floats(0, 40))
def test_advance_and_withdraw_move_the_tip_along_the_axis(depth, d):
    n = Needle(length_mm=90, entry_lps_mm=(5, 6, 7), direction_lps=(1, -2, 0.5), inserted_depth_mm=depth,
               bevel_face_lps=(0, 0, 1))
    a = n.advanced(d)
    np.testing.assert_allclose(a.tip_lps_mm - n.tip_lps_mm, d * n.axis, atol=1e-12)
    np.testing.assert_allclose(a.hub_lps_mm - n.hub_lps_mm, d * n.axis, atol=1e-12)
    assert a.entry_lps_mm == n.entry_lps_mm and a.direction_lps == n.direction_lps
    back = a.withdrawn(d)
    np.testing.assert_allclose(back.tip_lps_mm, n.tip_lps_mm, atol=1e-12)
    w = a.withdrawn(min(d, a.inserted_depth_mm))
    np.testing.assert_allclose(a.tip_lps_mm - w.tip_lps_mm, min(d, a.inserted_depth_mm) * n.axis, atol=1e-12)


def test_move_validation_messages():
    n = Needle(length_mm=90, inserted_depth_mm=30)
    with pytest.raises(NeedleError, match="withdrawn.*only inserted_depth_mm=30"):
        n.withdrawn(30.5)
    with pytest.raises(NeedleError, match="advanced.*beyond the 90.0 mm shaft"):
        n.advanced(60.5)
    assert n.advanced(60).inserted_depth_mm == 90 and n.withdrawn(30).inserted_depth_mm == 0
    with pytest.raises(NeedleError, match="distance_mm must be a finite number >= 0"):
        n.advanced(-1)
    with pytest.raises(NeedleError, match="distance_mm"):
        n.withdrawn(float("nan"))


unit_vectors = st.tuples(*[st.floats(-1, 1)] * 3).filter(lambda v: np.linalg.norm(v) > 0.1)


@settings(max_examples=200)
@given(unit_vectors, unit_vectors, st.floats(-90, 90))
def test_steer_turns_the_axis_by_exactly_the_angle(direction, about, angle):
    n = Needle(entry_lps_mm=(1, 2, 3), direction_lps=direction, inserted_depth_mm=40)
    k = np.asarray(about) - np.dot(about, n.axis) * n.axis
    if np.linalg.norm(k) < 0.9e-6:
        with pytest.raises(NeedleError):
            n.steered(angle, about)
        return
    if np.linalg.norm(k) < 1.1e-6:
        return                                   # too close to the rejection threshold to call
    s = n.steered(angle, about)
    assert angle_deg(n.axis, s.axis) == pytest.approx(abs(angle), abs=1e-6)
    assert s.entry_lps_mm == n.entry_lps_mm and s.inserted_depth_mm == n.inserted_depth_mm
    # the tip pivots about the entry point and stays at the same depth
    assert np.linalg.norm(s.tip_axis_lps_mm - s.entry) == pytest.approx(40)
    assert abs(float(s.bevel_face @ s.axis)) < 1e-12
    # steering back about the effective (perpendicular) axis undoes it
    back = s.steered(-angle, k)
    np.testing.assert_allclose(back.axis, n.axis, atol=1e-9)
    np.testing.assert_allclose(back.bevel_face, n.bevel_face, atol=1e-9)


def test_steer_named_axes_and_sense():
    n = Needle(entry_lps_mm=(0, 0, 0), direction_lps=(0, -1, 0), inserted_depth_mm=50)   # pointing anterior
    s = n.steered(10, "S")                    # right-handed about +S turns -P toward +L
    assert angle_deg(n.axis, s.axis) == pytest.approx(10)
    assert s.axis[0] > 0 and s.axis[2] == pytest.approx(0)
    with pytest.raises(NeedleError, match="parallel to the needle axis"):
        n.steered(5, "A")
    with pytest.raises(NeedleError, match="about must be"):
        n.steered(5, "Q")
    with pytest.raises(NeedleError, match="d_angle_deg"):
        n.steered(120, "S")


def test_roll_turns_only_the_bevel():
    n = Needle(entry_lps_mm=(0, 0, 0), direction_lps=(0, -1, 0), inserted_depth_mm=50, bevel_face_lps=(0, 0, 1))
    r = n.rolled(90)
    np.testing.assert_allclose(r.axis, n.axis)
    assert angle_deg(r.bevel_face, n.bevel_face) == pytest.approx(90)
    np.testing.assert_allclose(r.tip_axis_lps_mm, n.tip_axis_lps_mm)


@pytest.mark.parametrize("kwargs, field", [
    ({"gauge": 17}, "gauge"), ({"gauge": 22.5}, "gauge"), ({"gauge": True}, "gauge"),
    ({"length_mm": 10}, "length_mm"), ({"length_mm": float("nan")}, "length_mm"),
    ({"inserted_depth_mm": -1}, "inserted_depth_mm"), ({"inserted_depth_mm": 95}, "inserted_depth_mm"),
    ({"direction_lps": (0, 0, 0)}, "direction_lps"), ({"direction_lps": (1, 2)}, "direction_lps"),
    ({"entry_lps_mm": (0, float("inf"), 0)}, "entry_lps_mm"),
    ({"bevel": "whitacre"}, "bevel"), ({"bevel_angle_deg": 80}, "bevel_angle_deg"),
    ({"bevel_face_lps": (0, -3, 0)}, "bevel_face_lps"),
])
def test_constructor_validation_names_the_field(kwargs, field):
    with pytest.raises(NeedleError, match=rf"Needle\.{field}: expected"):
        Needle(**{"length_mm": 90, "direction_lps": (0, -1, 0), **kwargs})


def test_to_dict_is_json_ready_and_round_trips():
    n = Needle(gauge=25, length_mm=127, entry_lps_mm=(1.5, 2.5, -3), direction_lps=(0.1, -1, 0.2),
               inserted_depth_mm=33.3, bevel_face_lps=(1, 0, 0))
    d = json.loads(json.dumps(n.to_dict()))
    assert d["gauge"] == 25 and d["length_mm"] == 127 and d["bevel"] == "quincke"
    np.testing.assert_allclose(d["tip_lps_mm"], n.tip_lps_mm)
    np.testing.assert_allclose(d["hub_lps_mm"], n.hub_lps_mm)
    np.testing.assert_allclose(d["axis_lps"], n.axis)
    assert d["outer_diameter_mm"] == pytest.approx(0.5144, abs=1e-4)
    m = Needle.from_dict(d)
    np.testing.assert_allclose(m.tip_lps_mm, n.tip_lps_mm, atol=1e-12)
    np.testing.assert_allclose(m.bevel_face, n.bevel_face, atol=1e-12)
    with pytest.raises(NeedleError, match="missing field 'gauge'"):
        Needle.from_dict({k: v for k, v in d.items() if k != "gauge"})


def test_aimed_points_at_the_target():
    n = Needle.aimed((0, 60, 0), (0, 0, 10), inserted_depth_mm=20)
    np.testing.assert_allclose(n.axis, np.array([0, -60, 10]) / math.hypot(60, 10))
    with pytest.raises(NeedleError, match="coincides"):
        Needle.aimed((1, 1, 1), (1, 1, 1))
