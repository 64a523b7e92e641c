"""C-arm geometry against hand-derived positions and the DICOM angle conventions."""

import numpy as np
import pytest

from openfluoro.geometry.carm import CArmPose, Collimator, Detector, Geometry, standard_view


def test_zero_pose_puts_detector_anterior_and_source_posterior():
    pose = CArmPose(sid_mm=1000, sod_mm=700)
    # DICOM PS3.3 C.8.7.5: 0 deg primary = detector perpendicular to the patient's chest.
    np.testing.assert_allclose(pose.to_detector, [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(pose.source_lps_mm, [0, 700, 0], atol=1e-9)
    np.testing.assert_allclose(pose.detector_centre_lps_mm, [0, -300, 0], atol=1e-9)


@pytest.mark.parametrize(
    "primary, secondary, expected",
    [
        (90, 0, [1, 0, 0]),    # LAO 90: detector at the patient's left
        (-90, 0, [-1, 0, 0]),  # RAO 90: detector at the patient's right
        (0, 90, [0, 0, 1]),    # CRA 90: detector toward the head
        (0, -30, [0, -np.cos(np.pi / 6), -0.5]),  # CAU 30
        (180, 0, [0, 1, 0]),   # detector behind the patient
    ],
)
def test_dicom_angle_conventions(primary, secondary, expected):
    np.testing.assert_allclose(CArmPose(primary, secondary).to_detector, expected, atol=1e-12)


def test_axes_are_orthonormal_for_any_pose():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = CArmPose(rng.uniform(-180, 180), rng.uniform(-90, 90))
        m = np.vstack([p.u_axis, p.v_axis, p.to_detector])
        np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12)
        # columns right, rows down: the screen's "into" axis u x v points from the detector
        # toward the source, i.e. the image is seen from the detector side
        np.testing.assert_allclose(np.cross(p.u_axis, p.v_axis), -p.to_detector, atol=1e-12)


def test_projection_matrix_maps_isocentre_to_image_centre_and_scales_by_magnification():
    det = Detector(rows=100, cols=200, pixel_pitch_mm=0.5)
    g = Geometry(CArmPose(30, 10, sid_mm=1200, sod_mm=800, isocentre_lps_mm=(5, -3, 40)), det)
    c, r = g.project(g.pose.isocentre)[0]
    assert c == pytest.approx(99.5) and r == pytest.approx(49.5)
    # a point 10 mm along u at the isocentre projects 10 * M / pitch pixels away
    p = g.pose.isocentre + 10 * g.pose.u_axis
    c2, r2 = g.project(p)[0]
    assert c2 - c == pytest.approx(10 * 1.5 / 0.5)
    assert r2 == pytest.approx(r)


def test_projection_matches_pixel_positions():
    det = Detector(rows=8, cols=6, pixel_pitch_mm=2.0)
    g = Geometry(CArmPose(-40, 20), det)
    pix = g.pixel_positions_lps_mm()
    src = g.pose.source_lps_mm
    # any point on the ray from the source through a pixel centre projects onto that pixel
    for r in range(det.image_rows):
        for c in range(det.image_cols):
            x = src + 0.37 * (pix[r, c] - src)
            np.testing.assert_allclose(g.project(x)[0], [c, r], atol=1e-9)


def test_table_move_shifts_isocentre_in_patient_coordinates():
    pose = CArmPose().moved_table((0, 0, 50))  # table (and patient) moves 50 mm toward the head
    np.testing.assert_allclose(pose.isocentre, [0, 0, -50])


def test_binning_and_collimation():
    det = Detector(rows=1024, cols=1024, pixel_pitch_mm=300 / 1024, binning=2)
    assert det.image_rows == 512 and det.image_pitch_mm == pytest.approx(300 / 512)
    coll = Collimator(width_mm=150, height_mm=100)
    mask = coll.mask(det)
    assert mask.sum() == pytest.approx(512 * 512 * 0.5 * (100 / 300), rel=0.01)
    g = Geometry(CArmPose(sid_mm=1000, sod_mm=500), det, coll)
    assert g.field_area_at_isocentre_cm2() == pytest.approx(15 * 10 / 4)
    # pixel centres within +-75 mm (columns) and +-50 mm (rows) of the panel centre, 300/512 mm apart
    assert coll.field_px(det) == (171, 341, 128, 384)
    assert Collimator().field_px(det) is None
    with pytest.raises(ValueError, match="misses"):
        Collimator(width_mm=0.1, height_mm=0.1).field_px(det)


def test_named_views_and_errors():
    assert standard_view("lateral").primary_deg == 90
    assert standard_view("AP").primary_deg == 180
    with pytest.raises(ValueError, match="unknown view"):
        standard_view("sideways")
    with pytest.raises(ValueError, match="sod_mm"):
        CArmPose(sid_mm=500, sod_mm=700)
    with pytest.raises(ValueError, match="binning"):
        Detector(binning=5)


def test_pose_keeps_its_isocentre_as_a_tuple_and_shares_its_matrices():
    """An array given as the isocentre is kept as a plain tuple (a frozen pose cannot change
    under its user, and equal poses hash alike); the projection matrix of equal geometries is
    computed once and cannot be written to."""
    iso = np.array([1.0, 2.0, 3.0])
    pose = CArmPose(isocentre_lps_mm=iso)
    iso[0] = 99.0
    assert pose.isocentre_lps_mm == (1.0, 2.0, 3.0)
    g1, g2 = Geometry(pose=pose), Geometry(pose=CArmPose(isocentre_lps_mm=(1.0, 2.0, 3.0)))
    assert g1.projection_matrix() is g2.projection_matrix()
    with pytest.raises(ValueError):
        g1.projection_matrix()[0, 0] = 1.0
    with pytest.raises(ValueError, match="3 coordinates"):
        CArmPose(isocentre_lps_mm=(1.0, 2.0))


@pytest.mark.parametrize("view", ["AP", "lateral_left"])
def test_pixels_per_mm_at_the_isocentre_is_what_the_projection_does(view):
    """A 20 mm segment through the isocentre, across the beam, projects to 20 x
    ``px_per_mm_at_isocentre`` pixels (SID 1100 / SOD 700, 0.6 mm pixels: 2.619 px/mm)."""
    g = Geometry(standard_view(view, CArmPose(sid_mm=1100.0, sod_mm=700.0, isocentre_lps_mm=(5.0, -3.0, 40.0))),
                 Detector.square(500, 300.0))
    iso = np.asarray(g.pose.isocentre_lps_mm)
    ends = g.project(np.array([iso - 10.0 * g.pose.u_axis, iso + 10.0 * g.pose.u_axis]))
    assert g.px_per_mm_at_isocentre == pytest.approx(1100.0 / 700.0 / 0.6)
    assert np.hypot(*(ends[1] - ends[0])) == pytest.approx(20.0 * g.px_per_mm_at_isocentre, rel=1e-9)
