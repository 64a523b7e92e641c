"""Needle projection against independent references.

* single rays: the analytic chord 2 sqrt(r^2 - d^2), and brute-force point sampling along
  the ray (0.001 mm steps) with this file's own point-in-needle test;
* pixels: the pixel-averaged chord of a perpendicular needle by 1-D quadrature (scipy),
  and a Monte-Carlo estimate (random rays through the pixel footprint, random points on
  them, point-in-needle test) for random poses;
* the whole image: mass conservation against the needle's analytic steel mass;
* the tip: the shadow ends where ``Geometry.project`` puts the tip.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import integrate

from openfluoro.geometry.carm import CArmPose, Detector, Geometry, pixel_offsets_mm
from openfluoro.render.raycast import PixelWindow
from openfluoro.render.tools import needle_chords_mm, project_needle
from openfluoro.scene.materials import BONE, METAL, RHO_STEEL, SOFT
from openfluoro.scene.needle import Needle

G_PER_CM2_PER_MM = RHO_STEEL / 10.0


# -- independent helpers ---------------------------------------------------------------------

def inside(needle: Needle, pts: np.ndarray) -> np.ndarray:
    """Point-in-needle from the needle's description in its own frame (axial s, across q_b, q_c).

    Solid cylinder of radius r from the hub (s = 0); the Quincke cut runs linearly from the
    point (s = L on the side opposite the bevel face, q_b = -r) back to the heel
    (s = L - 2 r / tan(bevel) at q_b = +r).
    """
    a = np.asarray(needle.direction_lps)
    b = np.asarray(needle.bevel_face_lps)
    c = np.cross(a, b)
    rel = pts - needle.hub_lps_mm
    s, qb, qc = rel @ a, rel @ b, rel @ c
    r = needle.radius_mm
    s_max = needle.length_mm - (r + qb) / math.tan(math.radians(needle.bevel_angle_deg))
    return (qb * qb + qc * qc <= r * r) & (s >= 0) & (s <= s_max)


def pixel_rays(geometry: Geometry, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Detector points (N, 3) at fractional image (row, col) positions."""
    det, pose = geometry.detector, geometry.pose
    u, v = pixel_offsets_mm(det)
    p = det.image_pitch_mm
    uu = u[0] + np.asarray(cols, float) * p
    vv = v[0] + np.asarray(rows, float) * p
    return pose.detector_centre_lps_mm + uu[:, None] * pose.u_axis + vv[:, None] * pose.v_axis


def random_needle(rng: np.random.Generator, length: float = 120.0) -> Needle:
    return Needle(gauge=int(rng.choice([18, 20, 22, 25])), length_mm=length,
                  entry_lps_mm=tuple(rng.uniform(-20, 20, 3)), direction_lps=tuple(rng.normal(size=3)),
                  inserted_depth_mm=float(rng.uniform(0.3, 0.7) * length),
                  bevel_face_lps=tuple(rng.normal(size=3)))


def new_image(geometry: Geometry) -> np.ndarray:
    return np.zeros((3, geometry.detector.image_rows, geometry.detector.image_cols), np.float32)


# -- single rays ------------------------------------------------------------------------------

@pytest.mark.parametrize("gauge", [18, 22, 25])
def test_perpendicular_ray_chord_is_2_sqrt_r2_minus_d2(gauge):
    n = Needle(gauge=gauge, length_mm=100, entry_lps_mm=(0, 0, 0), direction_lps=(1, 0, 0),
               inserted_depth_mm=50)
    r = n.radius_mm
    d = np.linspace(-1.2 * r, 1.2 * r, 41)
    # rays along P (perpendicular to the axis) at height d, crossing the axis at x = 0 (mid-shaft)
    start = np.stack([np.zeros_like(d), np.full_like(d, -300.0), d], axis=1)
    end = np.stack([np.zeros_like(d), np.full_like(d, 300.0), d], axis=1)
    expected = 2 * np.sqrt(np.clip(r * r - d * d, 0, None))
    np.testing.assert_allclose(needle_chords_mm(n, start, end), expected, rtol=0, atol=1e-9)
    # beyond the tip point and behind the hub there is no steel
    for x in (50.0 + 1e-3, -50.0 - 1e-3):
        assert needle_chords_mm(n, [x, -300, -r * 0.99], [x, 300, -r * 0.99])[0] == 0.0


def test_oblique_ray_chord_through_axis_is_2r_over_sin():
    n = Needle(gauge=20, length_mm=100, entry_lps_mm=(0, 0, 0), direction_lps=(0, 0, 1), inserted_depth_mm=50)
    for phi_deg in (90.0, 60.0, 30.0, 10.0):
        phi = math.radians(phi_deg)
        d = np.array([math.sin(phi), 0.0, math.cos(phi)])      # angle phi to the axis, through the origin
        got = needle_chords_mm(n, -200 * d, 200 * d)[0]
        assert got == pytest.approx(2 * n.radius_mm / math.sin(phi), rel=1e-9)


def test_chords_match_brute_force_sampling():
    """Random poses, rays aimed at random points of the steel (hub end and bevel included)."""
    rng = np.random.default_rng(7)
    step = 0.001
    worst = 0.0
    for _ in range(12):
        n = random_needle(rng, length=float(rng.uniform(90, 150)))
        # random points inside the needle, a third of them in the last bevel length, a few near the hub
        pts = []
        while len(pts) < 4:
            s = rng.uniform(0, n.length_mm) if len(pts) % 3 else rng.uniform(n.length_mm - n.bevel_length_mm,
                                                                                n.length_mm)
            if len(pts) == 1:
                s = rng.uniform(0, 0.5)
            q = rng.normal(size=3)
            q -= (q @ n.axis) * n.axis
            q *= rng.uniform(0, n.radius_mm) / np.linalg.norm(q)
            p = n.hub_lps_mm + s * n.axis + q
            if inside(n, p[None])[0]:
                pts.append(p)
        centre = n.hub_lps_mm + 0.5 * n.length_mm * n.axis
        reach = 0.5 * n.length_mm + n.radius_mm + 0.01
        for p in pts:
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            src, dst = p - 700 * u, p + 300 * u
            got = needle_chords_mm(n, src, dst)[0]
            # brute force: midpoints of 0.001 mm steps over the ray's part inside the bounding sphere
            tc = (centre - src) @ u
            half = math.sqrt(max(reach**2 - np.sum((src + tc * u - centre) ** 2), 0.0))
            t = np.arange(tc - half, tc + half, step) + step / 2
            brute = inside(n, src + t[:, None] * u).sum() * step
            assert brute > 0
            assert abs(got - brute) <= max(0.01 * brute, 2 * step), (got, brute)
            worst = max(worst, abs(got - brute) / brute)
    assert worst < 0.01


# -- pixels ------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [255, 511, 1023])
def test_perpendicular_needle_profile_matches_quadrature(size):
    """A needle along +x through the isocentre, PA view; odd panel so column (size-1)/2 looks at x = 0.

    Rays of that column lie in the plane x ~ 0, perpendicular to the needle; the ray to
    detector height v passes the axis at d(v) = SOD v / sqrt(SID^2 + v^2), so the
    pixel's mean chord is (1/p) * integral of 2 sqrt(r^2 - d(v)^2) dv over the pixel.
    """
    sid, sod = 1000.0, 700.0
    det = Detector(rows=size, cols=size, pixel_pitch_mm=300.0 / size)
    geom = Geometry(CArmPose(0, 0, sid_mm=sid, sod_mm=sod), det)
    n = Needle(gauge=25, length_mm=100, entry_lps_mm=(-50, 0, 0), direction_lps=(1, 0, 0), inserted_depth_mm=100)
    out = new_image(geom)
    project_needle(n, geom, out)
    col = (size - 1) // 2
    _, v = pixel_offsets_mm(det)
    p = det.image_pitch_mm
    r = n.radius_mm

    def chord(vv: float) -> float:
        d = sod * vv / math.sqrt(sid * sid + vv * vv)
        return 2 * math.sqrt(max(r * r - d * d, 0.0))

    edge = r * sid / sod
    got = out[METAL, :, col]
    checked = 0
    for row in np.nonzero(np.abs(v) < edge + 2 * p)[0]:
        lo, hi = v[row] - p / 2, v[row] + p / 2
        brk = [x for x in (-edge, edge) if lo < x < hi]
        ref = integrate.quad(chord, lo, hi, points=brk or None, epsabs=1e-12, epsrel=1e-10, limit=200)[0] / p
        assert got[row] == pytest.approx(ref * G_PER_CM2_PER_MM, abs=2e-4 * 2 * r * G_PER_CM2_PER_MM)
        checked += 1
    assert checked >= 3


def _mc_pixel_mean_chord(needle: Needle, geometry: Geometry, row: int, col: int, rng, n_samples: int) -> float:
    """Monte-Carlo mean chord (mm) over the pixel footprint: random rays, random points, inside()."""
    src = geometry.pose.source_lps_mm
    # t-window along the rays: where the corner/centre rays come within r + 1 mm of the axis segment
    seg0, seg1 = needle.hub_lps_mm, needle.tip_axis_lps_mm
    corners = pixel_rays(geometry, np.array([row - .5, row - .5, row + .5, row + .5, row]),
                         np.array([col - .5, col + .5, col - .5, col + .5, col]))
    t = np.linspace(0, 1, 200001)
    t_lo, t_hi = 1.0, 0.0
    for q in corners:
        x = src + t[:, None] * (q - src)
        w = np.clip(((x - seg0) @ (seg1 - seg0)) / np.sum((seg1 - seg0) ** 2), 0, 1)
        dist = np.linalg.norm(x - (seg0 + w[:, None] * (seg1 - seg0)), axis=1)
        near = t[dist <= needle.radius_mm + 1.0]
        if near.size:
            t_lo, t_hi = min(t_lo, near[0]), max(t_hi, near[-1])
    assert t_hi > t_lo
    total = 0.0
    chunk = 500_000
    for start in range(0, n_samples, chunk):
        m = min(chunk, n_samples - start)
        q = pixel_rays(geometry, row + rng.uniform(-.5, .5, m), col + rng.uniform(-.5, .5, m))
        tt = rng.uniform(t_lo, t_hi, m)
        pts = src + tt[:, None] * (q - src)
        total += np.sum(inside(needle, pts) * np.linalg.norm(q - src, axis=1))
    return total / n_samples * (t_hi - t_lo)


def test_pixels_match_monte_carlo_brute_force():
    """Random poses; random shadow pixels plus the tip and hub pixels; 1 % of the pixel (or 0.5 % of the peak)."""
    rng = np.random.default_rng(11)
    for trial in range(3):
        geom = Geometry(CArmPose(float(rng.uniform(-60, 60)), float(rng.uniform(-30, 30))),
                        Detector.square(1024 if trial % 2 else 512))
        n = random_needle(rng)
        out = new_image(geom)
        project_needle(n, geom, out)
        img = out[METAL] / G_PER_CM2_PER_MM
        peak = img.max()
        nz = np.argwhere(img > 0.3 * peak)
        picks = [tuple(x) for x in nz[rng.choice(len(nz), 3, replace=False)]]
        for p3 in (n.tip_lps_mm, n.hub_lps_mm):
            c, r = geom.project(p3)[0]
            if 0 <= round(r) < img.shape[0] and 0 <= round(c) < img.shape[1]:
                picks.append((int(round(r)), int(round(c))))
        for row, col in picks:
            ref = _mc_pixel_mean_chord(n, geom, row, col, rng, 1_000_000)
            assert abs(img[row, col] - ref) <= max(0.01 * ref, 0.005 * peak), (trial, row, col, img[row, col], ref)


def test_binned_pixel_is_the_mean_of_its_native_pixels():
    """Area averaging: a 2x2-binned image equals the 2x2 block means of the unbinned image."""
    rng = np.random.default_rng(21)
    fine = Geometry(CArmPose(15, 10), Detector(rows=768, cols=768, pixel_pitch_mm=300 / 768))
    coarse = Geometry(CArmPose(15, 10), Detector(rows=768, cols=768, pixel_pitch_mm=300 / 768, binning=2))
    for _ in range(3):
        n = random_needle(rng, length=90.0)
        a, b = new_image(fine), new_image(coarse)
        project_needle(n, fine, a)
        project_needle(n, coarse, b)
        blocks = a[METAL].reshape(384, 2, 384, 2).mean(axis=(1, 3))
        assert b[METAL].max() > 0
        np.testing.assert_allclose(b[METAL], blocks, rtol=0, atol=2e-3 * b[METAL].max())


def test_mass_conservation_needle_in_isocentre_plane():
    """sum path x pixel area x cos(gamma) x (SOD/SID)^2 = steel mass, for a needle in the isocentre plane.

    A ray bundle through detector area dA at obliquity gamma covers, at depth w, the area
    dA cos^3(gamma) (w/SID)^2 / cos^2(gamma) measured perpendicular to the ray, so the
    steel volume is sum(chord dA cos(gamma)) (w/SID)^2 with w = SOD for every point of a
    needle in the isocentre plane (to second order in r/SOD). Without the cos(gamma) factor
    the sum is ~0.2 % high for a 150 mm needle; with it the tolerance is 0.05 %.
    """
    sid, sod = 1000.0, 700.0
    for gauge, size, direction, face in [(22, 1024, (1, 0, 0.3), (0, 1, 0)), (25, 512, (0.2, 0, -1), (1, 0, 0)),
                                         (18, 768, (1, 0, 1), (0.3, 0.5, -0.3))]:
        geom = Geometry(CArmPose(0, 0, sid_mm=sid, sod_mm=sod), Detector.square(size))
        # PA: beam along -y, isocentre plane y = 0; the needle lies in it
        n = Needle(gauge=gauge, length_mm=150, entry_lps_mm=(0, 0, 0), direction_lps=direction,
                   inserted_depth_mm=75, bevel_face_lps=face)
        out = new_image(geom)
        win = project_needle(n, geom, out)
        pix = geom.pixel_positions_lps_mm()
        cos_g = sid / np.linalg.norm(pix - geom.pose.source_lps_mm, axis=2)
        area_cm2 = (geom.detector.image_pitch_mm / 10.0) ** 2
        mass = float(np.sum(out[METAL].astype(np.float64) * cos_g)) * area_cm2 * (sod / sid) ** 2
        assert mass == pytest.approx(n.steel_mass_g, rel=5e-4)
        assert win.row1 > win.row0 and win.col1 > win.col0


def test_tip_shadow_ends_at_projected_tip():
    """Needles parallel to the detector: no shadow beyond the projected tip; the tip's pixel is dark."""
    rng = np.random.default_rng(3)
    for size, gauge in [(512, 25), (1024, 22), (1024, 18)]:
        geom = Geometry(CArmPose(0, 0), Detector.square(size))
        for _ in range(4):
            alpha = rng.uniform(0, 2 * math.pi)
            n = Needle(gauge=gauge, length_mm=120, entry_lps_mm=(0, 0, 0),
                       direction_lps=(math.cos(alpha), 0, math.sin(alpha)), inserted_depth_mm=60,
                       bevel_face_lps=tuple(rng.normal(size=3)))
            # shift (parallel to the detector) so the tip projects 0.2-0.3 px from a pixel centre
            c, r = geom.project(n.tip_lps_mm)[0]
            dc, dr = round(c) - c + rng.uniform(-.3, .3), round(r) - r + rng.uniform(-.3, .3)
            k = geom.detector.image_pitch_mm * geom.pose.sod_mm / geom.pose.sid_mm
            shift = k * (dc * geom.pose.u_axis + dr * geom.pose.v_axis)
            n = replace(n, entry_lps_mm=tuple(n.entry + shift))
            out = new_image(geom)
            project_needle(n, geom, out)
            img = out[METAL]
            tip = geom.project(n.tip_lps_mm)[0]
            hub = geom.project(n.hub_lps_mm)[0]
            u2 = (tip - hub) / np.linalg.norm(tip - hub)
            rc = np.argwhere(img > 0)
            along = (rc[:, 1] - tip[0]) * u2[0] + (rc[:, 0] - tip[1]) * u2[1]
            reach = 0.5 * (abs(u2[0]) + abs(u2[1]))          # a pixel's half-extent along u2
            assert np.all(along - reach <= 1e-6)              # every dark pixel has some of it behind the tip
            tip_px = (int(round(tip[1])), int(round(tip[0])))
            assert img[tip_px] > 0                            # the pixel holding the tip is dark
            # and the pixel one step further along the needle is clear
            ahead = (int(round(tip[1] + 1.5 * u2[1])), int(round(tip[0] + 1.5 * u2[0])))
            assert img[ahead] == 0


def test_tip_pixel_along_rows_is_last_dark_column():
    geom = Geometry(CArmPose(0, 0), Detector.square(1024))
    n = Needle(gauge=22, length_mm=90, entry_lps_mm=(0, 0, 0), direction_lps=(1, 0, 0), inserted_depth_mm=40,
               bevel_face_lps=(0, 0, 1))
    c, r = geom.project(n.tip_lps_mm)[0]
    k = geom.detector.image_pitch_mm * geom.pose.sod_mm / geom.pose.sid_mm
    shift = k * ((round(c) + 0.1 - c) * geom.pose.u_axis + (round(r) - r) * geom.pose.v_axis)
    n = replace(n, entry_lps_mm=tuple(n.entry + shift))
    out = new_image(geom)
    project_needle(n, geom, out)
    tip_c, tip_r = np.round(geom.project(n.tip_lps_mm)[0]).astype(int)
    dark_cols = np.nonzero(out[METAL].any(axis=0))[0]
    assert dark_cols.max() == tip_c
    assert out[METAL, tip_r, tip_c] > 0


# -- window, accumulation, bad input -------------------------------------------------------------

def test_needle_outside_field_gives_empty_window_and_no_change():
    geom = Geometry(CArmPose(0, 0), Detector.square(256))
    out = new_image(geom)
    out += 1.0
    for n in [Needle(entry_lps_mm=(400, 0, 0), direction_lps=(1, 0, 0), inserted_depth_mm=10),     # beside the field
              Needle(entry_lps_mm=(0, 900, 0), direction_lps=(1, 0, 0), inserted_depth_mm=10)]:    # behind the source
        win = project_needle(n, geom, out)
        assert win.row1 <= win.row0 or win.col1 <= win.col0
    assert np.all(out == 1.0)


def test_window_bounds_every_pixel_a_ray_hits():
    rng = np.random.default_rng(5)
    geom = Geometry(CArmPose(20, -10), Detector.square(256))
    rows, cols = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    for _ in range(5):
        n = random_needle(rng)
        win = project_needle(n, geom, new_image(geom))
        q = pixel_rays(geom, rows.ravel(), cols.ravel())
        hit = needle_chords_mm(n, np.broadcast_to(geom.pose.source_lps_mm, q.shape), q).reshape(256, 256) > 0
        assert hit.any()
        inside_win = np.zeros_like(hit)
        inside_win[win.row0:win.row1, win.col0:win.col1] = True
        assert not np.any(hit & ~inside_win)


def test_adds_into_the_requested_channel_only():
    geom = Geometry(CArmPose(0, 0), Detector.square(256))
    n = Needle(gauge=18, entry_lps_mm=(-30, 0, 0), direction_lps=(1, 0, 0.2), inserted_depth_mm=60)
    base = new_image(geom)
    project_needle(n, geom, base)
    out = new_image(geom)
    out[:] = 0.25
    win = project_needle(n, geom, out, channel=SOFT)
    assert isinstance(win, PixelWindow)
    np.testing.assert_allclose(out[SOFT], 0.25 + base[METAL], rtol=1e-6)
    assert np.all(out[BONE] == 0.25) and np.all(out[METAL] == 0.25)


def test_bad_out_array_is_rejected():
    geom = Geometry(CArmPose(0, 0), Detector.square(64))
    n = Needle(inserted_depth_mm=10)
    with pytest.raises(ValueError, match="float32"):
        project_needle(n, geom, np.zeros((3, 64, 64)))
    with pytest.raises(ValueError, match="shape"):
        project_needle(n, geom, np.zeros((3, 32, 64), np.float32))
    with pytest.raises(ValueError, match="channel"):
        project_needle(n, geom, np.zeros((3, 64, 64), np.float32), channel=3)
