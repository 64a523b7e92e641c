"""Air kerma at the interventional reference point and kerma-area product.

Air kerma free in air (no backscatter) from the spectral fluence ``Phi(E)``::

    K = sum_E Phi(E) * E * (mu_en/rho)_air(E)

With ``Phi`` in photons/cm^2, ``E`` in keV and ``mu_en/rho`` in cm^2/g the sum is in
keV/g; times 1.602176634e-16 J/keV and 1000 g/kg it is in J/kg = Gy.

The interventional reference point (IEC 60601-2-43) lies on the beam axis 15 cm from
the isocentre toward the focal spot, i.e. at ``sod_mm - 150`` from the focal spot;
kerma there follows the inverse square law from the spectrum's 1 m reference.
Air attenuation between focal spot and reference point, the table and the pad are
not included (IEC reports Ka,r free in air).

The kerma-area product is kerma times irradiated area in one plane perpendicular to
the beam; both scale with distance so that the product does not depend on the plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from openfluoro.geometry.carm import CArmPose, Geometry
from openfluoro.physics.attenuation import DENSITY_G_CM3, mass_attenuation_cm2_g, mass_energy_absorption_cm2_g
from openfluoro.physics.spectrum import REFERENCE_DISTANCE_MM, Spectrum

JOULE_PER_KEV = 1.602176634e-16
REFERENCE_POINT_OFFSET_MM = 150.0     #: IEC 60601-2-43: 15 cm from isocentre toward the source


def mas_for_pulse(tube_current_ma: float, pulse_width_ms: float) -> float:
    """Tube load of one pulse, mAs = mA * ms / 1000."""
    if tube_current_ma < 0 or pulse_width_ms < 0:
        raise ValueError(
            f"physics/dose.py: tube_current_ma and pulse_width_ms must be >= 0, got {tube_current_ma}, {pulse_width_ms}"
        )
    return float(tube_current_ma) * float(pulse_width_ms) / 1000.0


def _kerma_gy_per_mas_at_1m(spectrum: Spectrum, filter_mm_al: float = 0.0) -> float:
    e = spectrum.energies_kev
    fluence_per_cm2 = spectrum.photons_per_mas_mm2_at_1m * 100.0
    weight = fluence_per_cm2 * e * mass_energy_absorption_cm2_g("air", e)
    if filter_mm_al > 0.0:
        mu_lin_per_mm = mass_attenuation_cm2_g("aluminium", e) * DENSITY_G_CM3["aluminium"] / 10.0
        weight = weight * np.exp(-mu_lin_per_mm * filter_mm_al)
    return float(weight.sum() * JOULE_PER_KEV * 1000.0)


def air_kerma_per_mas_at_1m_ugy(spectrum: Spectrum) -> float:
    """Free-in-air air kerma per mAs at 1 m from the focal spot, in uGy/mAs."""
    return _kerma_gy_per_mas_at_1m(spectrum) * 1e6


def half_value_layer_mm_al(spectrum: Spectrum) -> float:
    """First half-value layer in aluminium (mm): the Al thickness that halves the air kerma."""
    k0 = _kerma_gy_per_mas_at_1m(spectrum)
    return float(brentq(lambda t: _kerma_gy_per_mas_at_1m(spectrum, t) - 0.5 * k0, 0.0, 50.0, xtol=1e-6))


def reference_point_distance_mm(pose: CArmPose) -> float:
    """Distance from the focal spot to the interventional reference point (mm)."""
    d = pose.sod_mm - REFERENCE_POINT_OFFSET_MM
    if d <= 0:
        raise ValueError(f"physics/dose.py: pose.sod_mm must exceed {REFERENCE_POINT_OFFSET_MM} mm, got {pose.sod_mm}")
    return d


def reference_point_kerma_mgy(spectrum: Spectrum, mas: float, pose: CArmPose) -> float:
    """Air kerma (mGy) at the interventional reference point for a tube load ``mas``."""
    if mas < 0:
        raise ValueError(f"physics/dose.py: mas must be >= 0, got {mas}")
    d = reference_point_distance_mm(pose)
    return air_kerma_per_mas_at_1m_ugy(spectrum) * 1e-3 * mas * (REFERENCE_DISTANCE_MM / d) ** 2


def field_area_at_reference_point_cm2(geometry: Geometry) -> float:
    """Collimated field area in the plane of the reference point (cm2)."""
    d = reference_point_distance_mm(geometry.pose)
    return geometry.field_area_at_isocentre_cm2() * (d / geometry.pose.sod_mm) ** 2


def kerma_area_product_gy_cm2(spectrum: Spectrum, mas: float, geometry: Geometry) -> float:
    """Kerma-area product (Gy cm2): reference-point kerma times the field area in that plane."""
    k_gy = reference_point_kerma_mgy(spectrum, mas, geometry.pose) * 1e-3
    return k_gy * field_area_at_reference_point_cm2(geometry)


@dataclass(frozen=True)
class PulseDose:
    """Dose quantities of one exposure (pulse or acquisition frame)."""

    mas: float
    reference_kerma_mgy: float
    kap_gy_cm2: float


def pulse_dose(spectrum: Spectrum, tube_current_ma: float, pulse_width_ms: float, geometry: Geometry) -> PulseDose:
    """Reference-point kerma and KAP of one pulse of ``tube_current_ma`` for ``pulse_width_ms``."""
    mas = mas_for_pulse(tube_current_ma, pulse_width_ms)
    return PulseDose(
        mas=mas,
        reference_kerma_mgy=reference_point_kerma_mgy(spectrum, mas, geometry.pose),
        kap_gy_cm2=kerma_area_product_gy_cm2(spectrum, mas, geometry),
    )
