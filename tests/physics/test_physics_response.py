"""The response look-up table against the direct polychromatic energy sum.

Reference: the defining sums evaluated directly over every energy bin,
T = sum N eta E exp(-mu.t) / sum N eta E, with eta from xraydb's own compound
routine; Beer-Lambert for a monochromatic beam; a per-energy-bin Poisson Monte
Carlo of an energy-integrating pixel for the noise.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import xraydb

from openfluoro.physics.attenuation import mass_attenuation_cm2_g
from openfluoro.physics.detector import DetectorModel
from openfluoro.physics.response import GRID_MAX_G_CM2, build_response_table, response_table
from openfluoro.physics.spectrum import Spectrum, tube_spectrum
from openfluoro.scene.materials import MATERIALS

DET = DetectorModel()
TMAX = np.array(GRID_MAX_G_CM2)


def _direct(spectrum: Spectrum, det: DetectorModel, paths: np.ndarray, power: int = 1) -> np.ndarray:
    """sum N eta E^power A / sum N eta E^power, eta from xraydb.material_mu (independent path)."""
    e = spectrum.energies_kev
    eta = 1.0 - np.exp(-xraydb.material_mu("CsI", e * 1e3, density=4.51 * det.csi_packing_fraction)
                       * det.csi_thickness_um * 1e-4)
    w = spectrum.photons_per_mas_mm2_at_1m * eta * e**power
    mu = np.stack([mass_attenuation_cm2_g(m, e) for m in MATERIALS])
    a = np.exp(-(mu.T @ paths.reshape(3, -1).astype(np.float64)))
    return (w @ a) / w.sum()


def _random_paths(rng: np.random.Generator, n: int) -> np.ndarray:
    # half uniform over the grid, half square-distributed (dense near zero, where log T curves most)
    u = rng.random((3, n))
    u[:, n // 2:] **= 2
    # a quarter with no metal at all (most pixels of a real image)
    u[2, : n // 4] = 0.0
    return (u * TMAX[:, None]).astype(np.float32)


@pytest.mark.parametrize("kvp", [60.0, 80.0, 120.0])
def test_lut_matches_direct_energy_sum(kvp, record_property):
    s = tube_spectrum(kvp)
    t0 = time.perf_counter()
    table = build_response_table(s, DET)
    record_property("build_s", time.perf_counter() - t0)
    rng = np.random.default_rng(int(kvp))
    paths = _random_paths(rng, 40_000)
    ref = _direct(s, DET, paths)
    got = table.transmission(paths).astype(np.float64)
    ok = ref > 1e-30                      # below that float32 T underflows (and the pixel is black)
    rel = np.abs(got[ok] / ref[ok] - 1.0)
    record_property("lut_max_rel_err", float(rel.max()))
    assert ok.mean() > 0.9
    assert rel.max() < 0.005
    assert np.all(got[~ok] < 1e-28)


@pytest.mark.parametrize("material", range(3))
def test_lut_along_each_axis(material):
    s = tube_spectrum(70.0)
    table = response_table(s, DET)
    paths = np.zeros((3, 3001), np.float32)
    paths[material] = np.linspace(0.0, TMAX[material], 3001)
    ref = _direct(s, DET, paths)
    got = table.transmission(paths)
    assert got[0] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(got, ref, rtol=0.005)
    assert np.all(np.diff(got) < 0)


def test_monochromatic_beam_is_beer_lambert():
    e = np.array([59.5])
    s = Spectrum(e, np.array([1e5]), kvp=60.0, filtration_mm_al=0.0)
    table = build_response_table(s, DET)
    rng = np.random.default_rng(1)
    paths = (rng.random((3, 5000)) * np.array([40.0, 20.0, 5.0])[:, None]).astype(np.float32)
    mu = np.array([mass_attenuation_cm2_g(m, e)[0] for m in MATERIALS])
    ref = np.exp(-(mu @ paths.astype(np.float64)))
    np.testing.assert_allclose(table.transmission(paths), ref, rtol=2e-5)


def test_beyond_the_grid_stays_finite_and_monotone():
    table = response_table(tube_spectrum(90.0), DET)
    soft = np.linspace(0.0, 1.5 * TMAX[0], 500)
    paths = np.zeros((3, soft.size), np.float32)
    paths[0] = soft
    t = table.transmission(paths)
    assert np.all(np.isfinite(t)) and np.all(np.diff(t) < 0)
    # 10 % past the end the extrapolation (linear in t) stays within 2 % of the truth
    p = np.array([[1.1 * TMAX[0]], [0.0], [0.0]], np.float32)
    assert table.transmission(p)[0] == pytest.approx(_direct(tube_spectrum(90.0), DET, p)[0], rel=0.02)


def test_table_cache_and_shapes():
    s = tube_spectrum(80.0)
    assert response_table(s, DET) is response_table(tube_spectrum(80.0), DetectorModel())
    assert response_table(s, DetectorModel(csi_thickness_um=400.0)) is not response_table(s, DET)
    with pytest.raises(ValueError, match="paths must have shape"):
        response_table(s, DET).transmission(np.zeros((2, 4, 4), np.float32))


def test_nan_paths_give_nan_not_garbage():
    table = response_table(tube_spectrum(80.0), DET)
    p = np.zeros((3, 4), np.float32)
    p[1, 2] = np.nan
    t = table.transmission(p)
    assert np.isnan(t[2]) and np.all(t[[0, 1, 3]] == pytest.approx(1.0))


def test_full_frame_1024_no_nans(record_property):
    table = response_table(tube_spectrum(80.0), DET)
    rng = np.random.default_rng(0)
    paths = (rng.random((3, 1024, 1024)) * TMAX[:, None, None]).astype(np.float32)
    paths[2, :, :700] = 0.0
    table.transmission(paths[:, :8, :8])                     # compile outside the timing
    t0 = time.perf_counter()
    t = table.transmission(paths)
    record_property("transmission_1024_s", time.perf_counter() - t0)
    assert t.shape == (1024, 1024) and t.dtype == np.float32
    assert not np.isnan(t).any() and np.all((t >= 0) & (t <= 1.0 + 1e-6))
    t0 = time.perf_counter()
    frame = table.noisy_signal_quanta(paths, mas=0.05, pixel_area_mm2=0.3**2, sid_mm=1100.0, rng=rng)
    record_property("noisy_frame_1024_s", time.perf_counter() - t0)
    assert frame.shape == (1024, 1024) and np.isfinite(frame).all()


# -- quanta and noise -------------------------------------------------------------------


def test_open_field_quanta_inverse_square_and_direct_sum():
    s = tube_spectrum(80.0)
    table = response_table(s, DET)
    e = s.energies_kev
    eta = 1.0 - np.exp(-xraydb.material_mu("CsI", e * 1e3, density=4.51 * 0.75) * 0.06)
    n_1m = float((s.photons_per_mas_mm2_at_1m * eta).sum())
    assert table.open_field_quanta(2.0, 0.25, 1000.0) == pytest.approx(n_1m * 2.0 * 0.25, rel=1e-4)
    assert table.open_field_quanta(1.0, 1.0, 2000.0) == pytest.approx(n_1m / 4.0, rel=1e-4)


def test_noise_equivalent_quanta_match_direct_sums():
    s = tube_spectrum(80.0)
    table = response_table(s, DET)
    paths = np.array([[0.0, 20.0, 35.0, 10.0], [0.0, 0.0, 5.0, 2.0], [0.0, 0.0, 0.0, 0.5]], np.float32)
    mas, area, sid = 0.1, 0.3**2, 1100.0
    n0 = table.open_field_quanta(mas, area, sid)
    e = s.energies_kev
    eta = 1.0 - np.exp(-xraydb.material_mu("CsI", e * 1e3, density=4.51 * 0.75) * 0.06)
    n_e = s.photons_per_mas_mm2_at_1m * eta * mas * area * (1000.0 / sid) ** 2      # detected photons per bin
    mu = np.stack([mass_attenuation_cm2_g(m, e) for m in MATERIALS])
    a = np.exp(-(mu.T @ paths.astype(np.float64)))
    s1, s2 = (n_e * e) @ a, (n_e * e * e) @ a
    q_ref = s1**2 / s2                                  # (sum nE)^2 / sum nE^2
    np.testing.assert_allclose(table.quanta_per_pixel(paths, mas, area, sid), q_ref, rtol=3e-3)
    eps0 = (n_e * e).sum() / n_e.sum()
    np.testing.assert_allclose(table.expected_signal_quanta(paths, mas, area, sid), s1 / eps0, rtol=3e-3)
    assert table.quanta_per_pixel(paths, mas, area, sid)[0] < n0        # spectral Swank factor < 1


def test_noisy_frame_statistics_match_energy_resolved_monte_carlo():
    """An energy-integrating pixel simulated bin by bin (Poisson per energy) has the same
    mean and variance as the table's gain * Poisson(Q) + electronic noise."""
    s = tube_spectrum(70.0)
    det = DetectorModel(electronic_noise_quanta=3.0)
    table = build_response_table(s, det)
    mas, area, sid = 0.02, 0.3**2, 1000.0
    path = np.array([15.0, 1.5, 0.0], np.float32)
    rng = np.random.default_rng(2024)
    n_pix = 200_000
    paths = np.broadcast_to(path[:, None, None], (3, 1, n_pix))
    frame = table.noisy_signal_quanta(paths, mas, area, sid, rng).ravel().astype(np.float64)

    e = s.energies_kev
    n_e = s.photons_per_mas_mm2_at_1m * det.absorption_efficiency(e) * mas * area * (1000.0 / sid) ** 2
    eps0 = (n_e * e).sum() / n_e.sum()
    mu = np.stack([mass_attenuation_cm2_g(m, e) for m in MATERIALS])
    lam_e = n_e * np.exp(-(mu.T @ path.astype(np.float64)))
    mc = np.zeros(n_pix)
    for lam, energy in zip(lam_e, e):
        if lam > 1e-9:
            mc += energy * rng.poisson(lam, n_pix)
    mc = mc / eps0 + rng.normal(0.0, 3.0, n_pix)

    assert frame.mean() == pytest.approx(mc.mean(), rel=0.01)
    assert frame.var() == pytest.approx(mc.var(), rel=0.03)
    # and both against the analytic moments
    var_ref = (lam_e * e * e).sum() / eps0**2 + 9.0
    assert frame.var() == pytest.approx(var_ref, rel=0.02)
