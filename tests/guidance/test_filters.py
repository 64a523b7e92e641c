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
