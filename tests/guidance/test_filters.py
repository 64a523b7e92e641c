"""The small compiled helpers of the guidance detectors, against independent NumPy references."""

import numpy as np
import pytest

from openfluoro.guidance import _filters as F


def test_robust_line_ignores_points_on_another_edge_and_matches_least_squares_on_the_rest():
    """Edge points along an endplate (a straight line with sub-pixel noise) plus a quarter of
    points on another structure 6 px away: the fit is the weighted least-squares line of the
    endplate's points alone (``np.polyfit``), which the outliers would pull 1.5 px off."""
    rng = np.random.default_rng(3)
    u = np.linspace(-40.0, 40.0, 120)
    v = 12.5 + 0.08 * u + rng.normal(0.0, 0.2, u.size)
    w = rng.uniform(0.5, 2.0, u.size)
    out = rng.random(u.size) < 0.25
    v_all = np.where(out, v + 6.0, v)
    v0, slope, rms = F.robust_line(u, v_all, w, 0.6)
    ref_slope, ref_v0 = np.polyfit(u[~out], v[~out], 1, w=np.sqrt(w[~out]))
    assert v0 == pytest.approx(ref_v0, abs=0.02) and slope == pytest.approx(ref_slope, abs=5e-4)
    assert rms == pytest.approx(np.sqrt(np.mean((v[~out] - ref_v0 - ref_slope * u[~out]) ** 2)), rel=0.05)
    plain_slope, plain_v0 = np.polyfit(u, v_all, 1, w=np.sqrt(w))
    assert abs(plain_v0 - ref_v0) > 1.0                        # the outliers matter to a plain fit
    assert F.robust_line(u[:0], v[:0], w[:0], 0.6)[2] == np.inf


def test_rows_box4_is_the_edge_padded_four_row_mean():
    a = np.random.default_rng(1).normal(size=(9, 5))
    padded = np.pad(a, ((1, 2), (0, 0)), mode="edge")
    ref = np.stack([padded[i:i + 4].mean(axis=0) for i in range(a.shape[0])])
    np.testing.assert_allclose(F.rows_box4(a), ref, rtol=0, atol=1e-12)
    b = a.copy()
    b[2, 1] = np.nan                                          # a gap spoils only the rows that see it
    got = F.rows_box4(b)
    assert np.isnan(got[0:4, 1]).all() and np.isfinite(got[4:, 1]).all()


def test_field_rect_finds_the_blades_and_not_the_frame_counter():
    """A displayed frame with black blades on three sides and the chain's frame counter (white
    digits on a black box, top-left): the field is what lies between the blades. Black inside
    the field (dense bone), a lone counter, or a frame black all over leave the whole frame."""
    from openfluoro.fluoro.chain import draw_counter

    rng = np.random.default_rng(4)
    img = rng.integers(20, 230, (512, 512)).astype(np.uint8)
    img[200:260, 150:400] = 0                                    # clipped bone in the field
    open_img = img.copy()
    draw_counter(open_img, 123456)
    assert F.field_rect(open_img) == (0, 512, 0, 512)
    img[:100] = 0
    img[420:] = 0
    img[:, :60] = 0
    draw_counter(img, 123456)                                    # drawn on top of a blade
    assert F.field_rect(img) == (100, 420, 60, 512)
    assert F.field_rect(np.zeros((64, 64), np.uint8)) == (0, 64, 0, 64)
    with pytest.raises(ValueError, match="2-D"):
        F.field_rect(np.zeros(5))
