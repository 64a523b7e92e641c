"""Spectrum units, air kerma, HVL and reference-point dose geometry.

Independent references: SpekPy's own ``get_kerma`` / ``get_hvl1`` / ``get_flu`` (its
NIST mu_en/rho table for air, its own Al attenuation and its own root finder),
and analytic inverse-square / area scaling.
"""

from __future__ import annotations

import numpy as np
import pytest
import spekpy

from openfluoro.geometry.carm import CArmPose, Collimator, Detector, Geometry
from openfluoro.physics.dose import (
    air_kerma_per_mas_at_1m_ugy,
    field_area_at_reference_point_cm2,
    half_value_layer_mm_al,
    kerma_area_product_gy_cm2,
    mas_for_pulse,
    pulse_dose,
    reference_point_distance_mm,
    reference_point_kerma_mgy,
)
from openfluoro.physics.spectrum import Spectrum, tube_spectrum

KVPS = (60.0, 80.0, 100.0, 120.0)


def _spek(kvp: float, al_mm: float = 3.0, cu_mm: float = 0.0) -> "spekpy.Spek":
    """SpekPy built directly (not through our wrapper): 1 mAs, 100 cm, NIST data."""
    s = spekpy.Spek(kvp=kvp, th=12.0, dk=0.5, mu_data_source="nist")
    s.filter("Al", al_mm)
    if cu_mm:
        s.filter("Cu", cu_mm)
    return s


@pytest.mark.parametrize("kvp", KVPS)
def test_kerma_per_mas_matches_spekpy(kvp, record_property):
    ours = air_kerma_per_mas_at_1m_ugy(tube_spectrum(kvp))
    ref = _spek(kvp).get_kerma(norm=True)          # uGy/mAs at x=y=0, z=100 cm
    record_property("kerma_rel_diff", ours / ref - 1.0)
    assert ours == pytest.approx(ref, rel=0.02)
    assert 20.0 < ours < 200.0                     # plausible tube output range, uGy/mAs at 1 m


@pytest.mark.parametrize("kvp,cu_mm", [(60.0, 0.0), (80.0, 0.0), (100.0, 0.0), (120.0, 0.0), (80.0, 0.2)])
def test_first_hvl_matches_spekpy(kvp, cu_mm, record_property):
    ours = half_value_layer_mm_al(tube_spectrum(kvp, 3.0, cu_mm))
    ref = _spek(kvp, 3.0, cu_mm).get_hvl1("Al")
    record_property("hvl_rel_diff", ours / ref - 1.0)
    assert ours == pytest.approx(ref, rel=0.03)


def test_fluence_units_match_spekpy_integral():
    # spekpy get_flu: photons/cm2 for 1 mAs at 100 cm; ours: photons/(mAs mm2) per bin
    s = tube_spectrum(80.0)
    assert s.total_photons_per_mas_mm2_at_1m * 100.0 == pytest.approx(_spek(80.0).get_flu(), rel=1e-6)
    assert s.mean_energy_kev == pytest.approx(_spek(80.0).get_emean(), rel=1e-3)


def test_spectrum_is_cached_and_read_only():
    a = tube_spectrum(70.0)
    assert tube_spectrum(70.0) is a
    with pytest.raises(ValueError):
        a.photons_per_mas_mm2_at_1m[0] = 1.0


@pytest.mark.parametrize("kvp", [49.9, 125.5, float("nan")])
def test_kvp_out_of_range_is_rejected(kvp):
    with pytest.raises(ValueError, match="kvp"):
        tube_spectrum(kvp)


def test_negative_filtration_is_rejected():
    with pytest.raises(ValueError, match="filtration_mm_al"):
        tube_spectrum(80.0, filtration_mm_al=-1.0)


def test_more_kvp_and_filtration_harden_the_beam():
    assert half_value_layer_mm_al(tube_spectrum(100.0)) > half_value_layer_mm_al(tube_spectrum(70.0))
    assert half_value_layer_mm_al(tube_spectrum(80.0, 3.0, 0.1)) > half_value_layer_mm_al(tube_spectrum(80.0))


# -- reference point and KAP ----------------------------------------------------------


def test_mas_for_pulse():
    assert mas_for_pulse(10.0, 8.0) == pytest.approx(0.08)


def test_reference_point_is_15_cm_toward_the_source():
    assert reference_point_distance_mm(CArmPose(sid_mm=1000.0, sod_mm=700.0)) == pytest.approx(550.0)


def test_reference_point_kerma_is_linear_in_mas():
    s, pose = tube_spectrum(80.0), CArmPose()
    k1 = reference_point_kerma_mgy(s, 1.0, pose)
    assert reference_point_kerma_mgy(s, 2.0, pose) == pytest.approx(2.0 * k1, rel=1e-12)
    assert reference_point_kerma_mgy(s, 0.0, pose) == 0.0


def test_reference_point_kerma_absolute_and_inverse_square():
    s = tube_spectrum(80.0)
    k_1m_mgy = air_kerma_per_mas_at_1m_ugy(s) / 1000.0
    # reference point exactly 1 m from the focus: the 1 m kerma itself
    at_1m = reference_point_kerma_mgy(s, 1.0, CArmPose(sid_mm=1300.0, sod_mm=1150.0))
    assert at_1m == pytest.approx(k_1m_mgy, rel=1e-12)
    near = reference_point_kerma_mgy(s, 1.0, CArmPose(sid_mm=1200.0, sod_mm=700.0))
    far = reference_point_kerma_mgy(s, 1.0, CArmPose(sid_mm=1200.0, sod_mm=900.0))
    assert near / far == pytest.approx(((900.0 - 150.0) / (700.0 - 150.0)) ** 2, rel=1e-12)


def _geometry(sod_mm=700.0, sid_mm=1100.0, width_mm=200.0, height_mm=150.0):
    return Geometry(pose=CArmPose(sid_mm=sid_mm, sod_mm=sod_mm), detector=Detector.square(512, 300.0),
                    collimator=Collimator(width_mm=width_mm, height_mm=height_mm))


def test_kap_analytic():
    s, g = tube_spectrum(80.0), _geometry()
    k_ref_gy = air_kerma_per_mas_at_1m_ugy(s) * 1e-6 * 0.5 * (1000.0 / 550.0) ** 2
    area_cm2 = 200.0 * 150.0 * (550.0 / 1100.0) ** 2 / 100.0
    assert field_area_at_reference_point_cm2(g) == pytest.approx(area_cm2, rel=1e-12)
    assert kerma_area_product_gy_cm2(s, 0.5, g) == pytest.approx(k_ref_gy * area_cm2, rel=1e-12)


def test_kap_is_distance_invariant_and_scales_with_field():
    s = tube_spectrum(80.0)
    base = kerma_area_product_gy_cm2(s, 1.0, _geometry(sod_mm=700.0))
    # moving the patient plane (SOD) changes Ka,r but not KAP
    assert kerma_area_product_gy_cm2(s, 1.0, _geometry(sod_mm=850.0)) == pytest.approx(base, rel=1e-12)
    assert reference_point_kerma_mgy(s, 1.0, CArmPose(sid_mm=1100.0, sod_mm=850.0)) < \
        reference_point_kerma_mgy(s, 1.0, CArmPose(sid_mm=1100.0, sod_mm=700.0))
    # KAP equals kerma x area in the isocentre plane too (the geometry's own plane)
    k_iso_gy = air_kerma_per_mas_at_1m_ugy(s) * 1e-6 * (1000.0 / 700.0) ** 2
    assert base == pytest.approx(k_iso_gy * _geometry().field_area_at_isocentre_cm2(), rel=1e-12)
    # half the field width, half the KAP; the kerma itself does not change
    assert kerma_area_product_gy_cm2(s, 1.0, _geometry(width_mm=100.0)) == pytest.approx(base / 2, rel=1e-12)


def test_pulse_dose_bundles_the_numbers():
    s, g = tube_spectrum(80.0), _geometry()
    d = pulse_dose(s, tube_current_ma=12.0, pulse_width_ms=10.0, geometry=g)
    assert d.mas == pytest.approx(0.12)
    assert d.reference_kerma_mgy == pytest.approx(reference_point_kerma_mgy(s, 0.12, g.pose))
    assert d.kap_gy_cm2 == pytest.approx(kerma_area_product_gy_cm2(s, 0.12, g))


def test_custom_spectrum_validation():
    with pytest.raises(ValueError, match="equal-length"):
        Spectrum(np.array([1.0, 2.0]), np.array([1.0]), 80.0, 3.0)
    with pytest.raises(ValueError, match="non-negative"):
        Spectrum(np.array([1.0, 2.0]), np.array([1.0, -1.0]), 80.0, 3.0)
