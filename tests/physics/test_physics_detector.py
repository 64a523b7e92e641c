"""Detector absorption and noise against analytic statistics.

References: Beer-Lambert absorption with xraydb's own compound routine
(``material_mu``, a separate code path from our mixture sums), the Poisson law
(mean = variance = lambda; exact pmf from scipy.stats), and the variance of a sum of
independent noises.
"""

from __future__ import annotations

import numpy as np
import pytest
import xraydb
from scipy import stats

from openfluoro.physics.detector import DetectorModel, add_noise

N_SIDE = 512
N = N_SIDE * N_SIDE


def _variance_se(lam: float, n: int = N) -> float:
    """Standard error of the sample variance of n Poisson(lam) draws (mu4 = lam + 3 lam^2)."""
    return float(np.sqrt((lam + 2.0 * lam * lam) / n))


def test_absorption_efficiency_is_beer_lambert_with_packing():
    det = DetectorModel(csi_thickness_um=600.0, csi_packing_fraction=0.75)
    e = np.array([25.0, 40.0, 60.0, 80.0, 110.0])
    mu_lin_per_cm = xraydb.material_mu("CsI", e * 1e3, density=4.51 * 0.75)     # 1/cm
    ref = 1.0 - np.exp(-mu_lin_per_cm * 600e-4)
    np.testing.assert_allclose(det.absorption_efficiency(e), ref, rtol=1e-4)
    # K edges of I (33.2 keV) and Cs (36.0 keV): efficiency jumps up across them
    assert det.absorption_efficiency(np.array([36.5]))[0] > det.absorption_efficiency(np.array([32.5]))[0]


@pytest.mark.parametrize("lam", [0.7, 5.0, 30.0, 49.0, 51.0, 400.0, 5000.0])
def test_flat_field_mean_and_variance_follow_poisson(lam):
    rng = np.random.default_rng(12345)
    raw = add_noise(np.full((N_SIDE, N_SIDE), lam, dtype=np.float32), rng)
    assert raw.shape == (N_SIDE, N_SIDE) and raw.dtype == np.float32
    x = raw.astype(np.float64)
    assert abs(x.mean() - lam) < 5.0 * np.sqrt(lam / N)                 # unbiased
    assert abs(x.var(ddof=1) - lam) < 5.0 * _variance_se(lam)           # variance = quanta


def test_small_counts_are_exactly_poisson():
    rng = np.random.default_rng(7)
    lam = 3.0
    x = add_noise(np.full(200_000, lam, dtype=np.float32), rng)
    assert np.all(x == np.round(x))                                     # integer counts
    k = np.arange(0, 13)
    observed = np.array([(x == kk).sum() for kk in k[:-1]] + [(x >= k[-1]).sum()])
    p = stats.poisson.pmf(k, lam)
    p[-1] = stats.poisson.sf(k[-1] - 1, lam)
    chi2, pval = stats.chisquare(observed, p * x.size)
    assert pval > 1e-3


def test_electronic_noise_adds_in_quadrature_and_gain_scales_quanta():
    rng = np.random.default_rng(99)
    lam, sigma_e, gain = 100.0, 6.0, 2.5
    x = add_noise(np.full((N_SIDE, N_SIDE), lam, np.float32), rng, electronic_sigma_quanta=sigma_e, gain=gain)
    expected_var = gain**2 * lam + sigma_e**2
    assert abs(x.mean() - gain * lam) < 5.0 * np.sqrt(expected_var / N)
    assert x.var() == pytest.approx(expected_var, rel=5.0 * np.sqrt(2.0 / N) + 0.005)
    # no quanta: the electronic noise alone, zero mean
    z = add_noise(np.zeros((N_SIDE, N_SIDE), np.float32), rng, electronic_sigma_quanta=sigma_e)
    assert abs(z.mean()) < 5.0 * sigma_e / np.sqrt(N)
    assert z.std() == pytest.approx(sigma_e, rel=0.01)


def test_per_pixel_gain_and_shapes():
    rng = np.random.default_rng(3)
    lam = np.full((4, 256, 256), 200.0, np.float32)
    gain = np.ones_like(lam)
    gain[2:] = 3.0
    x = add_noise(lam, rng, gain=gain)
    assert x.shape == lam.shape
    assert x[:2].var() == pytest.approx(200.0, rel=0.03)
    assert x[2:].var() == pytest.approx(9.0 * 200.0, rel=0.03)


def test_reproducible_for_a_seed_and_independent_pixels():
    lam = np.full((N_SIDE, N_SIDE), 80.0, np.float32)
    a = add_noise(lam, np.random.default_rng(5))
    b = add_noise(lam, np.random.default_rng(5))
    c = add_noise(lam, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # neighbouring pixels and successive blocks uncorrelated
    r = np.corrcoef(a[:, :-1].ravel(), a[:, 1:].ravel())[0, 1]
    assert abs(r) < 5.0 / np.sqrt(N)
    r_rows = np.corrcoef(a[:-8].ravel(), a[8:].ravel())[0, 1]          # 8 rows of 512 = one 4096 block
    assert abs(r_rows) < 5.0 / np.sqrt(N)


def test_bad_input_is_rejected():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="expected_quanta"):
        add_noise(np.array([1.0, -1.0]), rng)
    with pytest.raises(ValueError, match="expected_quanta"):
        add_noise(np.array([1.0, np.nan]), rng)
    with pytest.raises(ValueError, match="gain"):
        add_noise(np.ones((4, 4)), rng, gain=np.ones(3))
    with pytest.raises(ValueError, match="csi_packing_fraction"):
        DetectorModel(csi_packing_fraction=1.5)


def test_model_method_uses_its_electronic_noise():
    det = DetectorModel(electronic_noise_quanta=4.0)
    z = det.add_noise(np.zeros((N_SIDE, N_SIDE), np.float32), np.random.default_rng(1))
    assert z.std() == pytest.approx(4.0, rel=0.01)


def test_large_frame_speed_smoke():
    lam = np.full((1024, 1024), 300.0, np.float32)
    x = add_noise(lam, np.random.default_rng(0), 2.0)
    assert np.isfinite(x).all()
