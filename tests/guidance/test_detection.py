"""Needle, level and interspace detection on synthetic and rendered frames."""

import math

import numpy as np
import pytest

from openfluoro.geometry.carm import CArmPose, Detector, Geometry, standard_view
from openfluoro.guidance.needle import NeedleTracker, detect_needle


def _lateral_geometry():
    return Geometry(standard_view("lateral_left", CArmPose()), Detector.square(512, 300.0))


def _draw_needle(img, tail, tip, depth=110.0, halo=25.0):
    """A 2-px dark line with a brighter rim (as edge enhancement leaves it), anti-aliased."""
    rows, cols = img.shape
    yy, xx = np.mgrid[0:rows, 0:cols].astype(float)
    a, b = np.asarray(tail, float), np.asarray(tip, float)
    d = b - a
    L = np.hypot(*d)
    u = d / L
    t = (xx - a[0]) * u[0] + (yy - a[1]) * u[1]
    s = np.abs(-(xx - a[0]) * u[1] + (yy - a[1]) * u[0])
    along = np.clip(np.minimum(t + 0.5, L - t + 0.5), 0.0, 1.0)
    core = np.clip(1.5 - s, 0.0, 1.0) * along
    rim = np.clip(1.0 - np.abs(s - 2.3), 0.0, 1.0) * along
    return img - depth * core + halo * rim


def _background(seed, sigma=6.0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:512, 0:512].astype(float)
    img = 140.0 + 30.0 * np.sin(xx / 90.0) + 20.0 * np.cos(yy / 70.0)
    img[200:214, 100:300] -= 60.0          # a wide dark band (an endplate seen edge-on)
    return img + rng.normal(0.0, sigma, img.shape)


@pytest.mark.parametrize("angle_deg", [8.0, -20.0, 35.0])
def test_needle_tip_on_synthetic_frames(angle_deg):
    g = _lateral_geometry()
    # lateral_left: columns run posterior -> the needle comes from the right (posterior), tip left
    a = math.radians(angle_deg)
    tip = np.array([230.3, 300.6])
    tail = tip + 160.0 * np.array([math.cos(a), math.sin(a)])
    img = np.clip(_draw_needle(_background(int(angle_deg) + 50), tail, tip), 0, 255).astype(np.uint8)
    det = detect_needle(img, g, needle_od_mm=0.01)        # no bevel on a drawn line
    assert det.found and det.confidence > 0.5
    assert np.hypot(*(np.asarray(det.tip_px) - tip)) < 1.5
    assert det.tip_cue == "anterior"
    # the direction of the line
    d = np.asarray(det.tip_px) - np.asarray(det.tail_px)
    assert abs(abs(math.degrees(math.atan2(d[1], d[0]))) - abs(math.degrees(math.atan2(-math.sin(a), -math.cos(a))))) < 2.0


def test_a_line_along_an_excluded_endplate_is_not_the_needle():
    """A sharp cortical endplate line in front of a fainter needle: without the endplates the
    stronger line wins; with them the needle behind the bodies is found (its drawn tip)."""
    g = _lateral_geometry()
    tip = np.array([330.0, 298.0])
    tail = np.array([470.0, 312.0])
    img = _draw_needle(_background(11), tail, tip, depth=60.0)
    img = _draw_needle(img, (290.0, 262.0), (200.0, 262.0), depth=110.0)      # the endplate's cortex
    img = np.clip(img, 0, 255).astype(np.uint8)
    plain = detect_needle(img, g, needle_od_mm=0.01)
    assert plain.found and abs(plain.tip_px[1] - 262.0) < 3.0                # the stronger line
    # the detected endplate 4 mm off the cortex line (traction moved it since its detection)
    endplate = [((195.0, 262.0 + 4.0 * 2.4), (295.0, 262.0 + 4.0 * 2.4))]
    det = detect_needle(img, g, needle_od_mm=0.01, exclude_segments=endplate)
    assert det.found and np.hypot(*(np.asarray(det.tip_px) - tip)) < 1.5
    tr = NeedleTracker(needle_od_mm=0.01, exclude_segments=endplate)
    for _ in range(3):
        det = tr.update(img, g)
    assert np.hypot(*(np.asarray(det.tip_px) - tip)) < 1.5


def test_no_needle_no_detection():
    g = _lateral_geometry()
    img = np.clip(_background(7), 0, 255).astype(np.uint8)
    assert not detect_needle(img, g).found


def test_tracker_learns_the_tip_end_from_the_advance():
    # a view along the AP axis cannot tell the tip end from one frame: the needle is seen to
    # slide toward its tip when advanced
    g = Geometry(standard_view("AP", CArmPose()), Detector.square(512, 300.0))
    u = np.array([0.25, -0.97])
    u /= np.linalg.norm(u)
    tr = NeedleTracker()
    found = []
    for k, step in enumerate([0, 0, 8, 8, 16, 16]):
        tip = np.array([270.0, 300.0]) + step * u        # off-centre: the "centred" prior points the wrong way
        tail = tip - 60.0 * u
        img = np.clip(_draw_needle(_background(100 + k), tail, tip), 0, 255).astype(np.uint8)
        det = tr.update(img, g)
        found.append((det, tip))
    det, tip = found[-1]
    assert det.found and np.hypot(*(np.asarray(det.tip_px) - tip)) < 4.0
    assert tr.advance_direction is not None and float(tr.advance_direction @ u) > 0.9


# ------------------------------------------------------------------ rendered frames (phantom)
@pytest.fixture(scope="module")
def rendered():
    from openfluoro.fluoro.session import Session
    from openfluoro.scene.patient import patient_from_phantom
    from openfluoro.scene.phantom import PhantomParams, cached_phantom

    patient = patient_from_phantom(cached_phantom(PhantomParams(voxel_mm=1.5, seed=3)))
    s = Session.for_patient(patient, detector=Detector.square(512, 300.0), seed=11)
    lm = patient.landmarks
    s.move_table(tuple(-np.asarray(lm["discs"]["L3-L4"]["centre"], float)))
    plan = lm["needle"]["L3-L4"]
    s.insert_needle(plan["entry"], plan["target"], gauge=22, depth_mm=0.85 * np.linalg.norm(
        np.subtract(plan["target"], plan["entry"])))
    s.set_view("lateral")
    lat = s.run(0.5)
    s.pedal_up()
    s.set_view("AP")
    ap = s.run(0.5)
    s.pedal_up()
    return patient, s, lat, ap


def test_needle_in_rendered_lateral(rendered):
    patient, s, lat, _ = rendered
    tr = NeedleTracker()
    for f in lat:
        det = tr.update(f.image, f.geometry)
    f = lat[-1]
    mm_px = f.geometry.detector.image_pitch_mm * f.geometry.pose.sod_mm / f.geometry.pose.sid_mm
    assert det.found
    assert np.hypot(*(np.asarray(det.tip_px) - f.ground_truth["needle"]["tip_px"])) * mm_px < 1.5


def test_levels_and_interspaces_in_rendered_lateral(rendered):
    from openfluoro.guidance.interspace import measure_interspaces
    from openfluoro.guidance.levels import detect_levels

    patient, s, lat, _ = rendered
    f = lat[-1]
    res = detect_levels(f.image, f.geometry)
    target = res.disc("L3-L4")
    assert target is not None and not target.predicted
    truth = f.geometry.project(np.asarray(patient.landmarks["discs"]["L3-L4"]["centre"], float))[0]
    mm_px = 1.0 / (f.geometry.pose.sid_mm / f.geometry.pose.sod_mm / f.geometry.detector.image_pitch_mm)
    assert np.hypot(*(np.asarray(target.centre_px) - truth)) * mm_px < 6.0
    heights = {h.name: h for h in measure_interspaces(f.image, f.geometry, res)}
    gt = patient.landmarks["discs"]["L3-L4"]
    assert heights["L3-L4"].middle_mm == pytest.approx(gt["height_mm"], abs=1.0)


def test_two_view_depth_on_rendered_frames(rendered):
    from openfluoro.guidance.depth import needle_from_views

    patient, s, lat, ap = rendered
    dl = detect_needle(lat[-1].image, lat[-1].geometry)
    da = detect_needle(ap[-1].image, ap[-1].geometry)
    assert dl.found and da.found
    from openfluoro.guidance.depth import epipolar_line

    a, b, c = epipolar_line(lat[-1].geometry, dl.tip_px, ap[-1].geometry)
    tip_ap, tail_ap = da.tip_px, da.tail_px
    if abs(a * tail_ap[0] + b * tail_ap[1] + c) < abs(a * tip_ap[0] + b * tip_ap[1] + c):
        tip_ap, tail_ap = tail_ap, tip_ap
    n3 = needle_from_views([ap[-1].geometry, lat[-1].geometry], [tip_ap, dl.tip_px], [tail_ap, dl.tail_px])
    assert np.linalg.norm(np.asarray(n3.tip_lps_mm) - s.needle.tip_lps_mm) < 2.0
    assert float(np.dot(n3.axis_lps, s.needle.axis)) > 0.98


def test_line_refit_converges_on_the_needle_from_a_start_off_and_turned():
    """The refit of a candidate line (``needle._refine``: sub-pixel centres of the dark profile,
    weighted principal axis), repeated, lands on the drawn needle's centre line from a start
    1.5 px off it and turned by 2 deg."""
    from openfluoro.guidance.needle import _Line, _refine

    tail, tip = np.array([120.3, 340.6]), np.array([390.8, 250.1])
    img = np.clip(_draw_needle(_background(4, sigma=3.0), tail, tip), 0, 255).astype(np.float32)
    u = (tip - tail) / np.hypot(*(tip - tail))
    turn = math.radians(2.0)
    d0 = np.array([u[0] * math.cos(turn) - u[1] * math.sin(turn), u[0] * math.sin(turn) + u[1] * math.cos(turn)])
    mid = 0.5 * (tail + tip)
    L = float(np.hypot(*(tip - tail)))
    line = _refine(img, _Line(mid + 1.5 * np.array([-u[1], u[0]]), d0), -0.45 * L, 0.45 * L, iterations=4)
    assert abs(float(line.d @ u)) > math.cos(math.radians(0.05))
    for p in (tail, mid, tip):                   # distance of the needle's points from the line
        assert abs(float((p - line.p0) @ np.array([-line.d[1], line.d[0]]))) < 0.02


def test_lateral_needle_pointing_at_an_interspace_is_kept_not_the_endplate_in_line():
    """Built-in phantom, lateral, a needle 29 mm in at L3-L4: its line runs on into the L3-L4
    endplates, whose dark run is stronger than the needle's once the dose control settles.
    Tracked with the endplates excluded, the needle stays found to within 1 mm on every
    frame, and a whole-frame search finds it too (it used to jump to the endplate, 76 mm off,
    and report the tip beyond the sac)."""
    from openfluoro.fluoro.session import Session
    from openfluoro.geometry.carm import Detector
    from openfluoro.guidance.interspace import px_per_mm_at_isocentre
    from openfluoro.guidance.levels import detect_levels, endplate_segments
    from openfluoro.scene.patient import patient_from_phantom
    from openfluoro.scene.phantom import default_phantom

    patient = patient_from_phantom(default_phantom())
    s = Session.for_patient(patient, detector=Detector.square(512, 300.0), seed=3)
    s.set_pulse_rate(7.5)
    plan = patient.landmarks["needle"]["L3-L4"]
    s.set_view("AP")
    s.insert_needle(plan["entry"], plan["target"], depth_mm=5.0)
    s.advance_needle(24.0)
    s.run(0.3)
    s.set_view("lateral_left")
    frames = s.run(1.2)
    s.pedal_up()
    endplates = endplate_segments(detect_levels(frames[0].image, frames[0].geometry))
    tracker = NeedleTracker(exclude_segments=list(endplates))
    for f in frames:
        truth = np.asarray(f.ground_truth["needle"]["tip_px"])
        mm = px_per_mm_at_isocentre(f.geometry)
        det = tracker.update(f.image, f.geometry)
        assert det.found and np.hypot(*(np.asarray(det.tip_px) - truth)) / mm < 1.0
    full = detect_needle(frames[-1].image, frames[-1].geometry, exclude_segments=endplates)
    assert full.found and np.hypot(*(np.asarray(full.tip_px) - truth)) / mm < 1.0


def test_a_piece_of_a_lateral_needle_met_at_an_angle_gives_way_to_the_whole_needle(monkeypatch):
    """Development case 12_000 (BMI 32, osteopenic, low dose, lateral from the right): the best
    scoring line of the whole-frame search is a 28 px piece at the skin, 6 deg off the needle,
    whose inner end was taken for the tip (33 mm short on all four frames, tracked so). It lies
    along the whole needle (104 px), which the search also finds: the needle is that line, and
    its tip is found to within 1 mm on every frame. Without that rule the piece is kept."""
    from openfluoro.guidance import needle as N
    from openfluoro.guidance.cases import make_cases, run_case
    from openfluoro.guidance.evaluate import mm_per_px
    from openfluoro.guidance.levels import detect_levels, endplate_segments

    rec = run_case(make_cases(9, 12, dev=True)[0])
    lateral = [f for f in rec.frames if f.role == "lateral"]
    endplates = endplate_segments(detect_levels(lateral[-1].image, lateral[-1].geometry))

    def tip_errors_mm():
        tracker = NeedleTracker(exclude_segments=list(endplates))
        out = []
        for f in lateral:
            det = tracker.update(f.image, f.geometry)
            truth = np.asarray(f.truth["needle"]["tip_px"])
            out.append(np.hypot(*(np.asarray(det.tip_px) - truth)) * mm_per_px(f.geometry) if det.found else np.inf)
        return out

    assert max(tip_errors_mm()) < 1.0
    monkeypatch.setattr(N, "SUBSUME_MIN_RATIO", np.inf)
    assert min(tip_errors_mm()) > 20.0


def test_a_collimated_case_is_searched_and_named_inside_its_field():
    """Development case 11_003 (L2-L3), collimated on all four sides to 179 x 195 mm at the
    panel (about 120 x 130 mm at the isocentre). The blades' edges are long straight steps:
    before the search kept off them they took every candidate line and no needle was found,
    and before the naming model saw collimated frames in training both views named their
    interspaces one level low. Now the needle's tip is found to within 1 mm in each view, the
    target interspace is found and named in each view, and no interspace sits on a blade."""
    from openfluoro.guidance import _filters as F
    from openfluoro.guidance.cases import make_cases, run_case
    from openfluoro.guidance.evaluate import mm_per_px
    from openfluoro.guidance.levels import detect_levels, endplate_segments

    spec = make_cases(9, 11, dev=True)[3]
    assert spec.collimation_mm[0] is not None and spec.collimation_mm[1] is not None
    rec = run_case(spec)
    for role in ("ap", "lateral"):
        frames = [f for f in rec.frames if f.role == role]
        last = frames[-1]
        mm = mm_per_px(last.geometry)
        r0, r1, c0, c1 = F.field_rect(last.image)
        assert (r0, r1, c0, c1) == last.geometry.collimator.field_px(last.geometry.detector)
        levels = detect_levels(last.image, last.geometry)
        target = levels.disc(spec.level)
        truth = np.asarray(last.truth["discs"][spec.level]["centre_px"])
        assert target is not None and np.hypot(*(np.asarray(target.centre_px) - truth)) * mm < 8.0, role
        for d in levels.discs:
            if not d.predicted:
                assert c0 + 4 / mm <= d.centre_px[0] < c1 - 4 / mm and r0 + 4 / mm <= d.centre_px[1] < r1 - 4 / mm
        tracker = NeedleTracker(exclude_segments=endplate_segments(levels) if role == "lateral" else ())
        for f in frames:
            det = tracker.update(f.image, f.geometry)
        tip = np.asarray(last.truth["needle"]["tip_px"])
        assert det.found and np.hypot(*(np.asarray(det.tip_px) - tip)) * mm < 1.0, role
