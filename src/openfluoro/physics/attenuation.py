"""Mass attenuation and mass energy-absorption coefficients of the simulated materials.

Elemental data come from xraydb's Elam, Ravel & Sieber tables (Radiat. Phys. Chem.
63 (2002) 121), which reproduce the NIST XCOM / SRD 126 mu/rho to about 1 % at
diagnostic energies. A compound or mixture is the mass-fraction-weighted sum of its elements
(Bragg additivity), exactly as XCOM and the NIST SRD 126 tables do.

``mass_attenuation_cm2_g`` is the total coefficient (photoelectric + incoherent +
coherent): what narrow-beam primary transmission needs.

xraydb has no mass energy-absorption table (it offers total, photoelectric,
incoherent and coherent cross sections only), so ``mass_energy_absorption_cm2_g``
builds mu_en/rho from those, following the definitions of Hubbell & Seltzer (NIST
SRD 126, section 3)::

    mu_en/rho = tau/rho * (1 - P_K w_K X_K / E)  +  (N_A Z / A) * sigma_KN,tr(E)

* ``tau``: Elam photoelectric coefficient. Above an element's K edge a fraction
  ``P_K = 1 - 1/J_K`` (``J_K`` the K-edge jump ratio) of photoabsorptions happens in
  the K shell and a fraction ``w_K`` (fluorescence yield) of those emits a K x ray of
  mean energy ``X_K`` (intensity-weighted xraydb lines), which escapes.
* ``sigma_KN,tr``: the free-electron Klein-Nishina energy-transfer cross section
  (closed form, Attix, *Introduction to Radiological Physics and Radiation
  Dosimetry*, ch. 7). Electron binding mostly removes small-transfer collisions, so
  the free-electron value is the better estimate of energy transfer than Elam's
  bound incoherent cross section times the mean KN transfer fraction (that
  product reads about 1.3 % low against NIST in air at 60-100 keV).
* Coherent scattering deposits nothing.

Neglected: L-shell fluorescence and radiative losses of the secondary electrons
(``g`` < 0.1 % below 150 keV for low-Z media). Against NIST SRD 126 this model is
within 0.5 % for air, water, ICRU-44 soft tissue and cortical bone from 20 to
150 keV (the test suite checks it).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping

import numpy as np
import xraydb

from openfluoro.scene.materials import COMPOSITIONS, MATERIALS, RHO_CORTICAL, RHO_STEEL

#: Element mass fractions of the auxiliary media (NIST SRD 126, Table 2).
EXTRA_COMPOSITIONS: dict[str, dict[str, float]] = {
    "air": {"C": 0.000124, "N": 0.755268, "O": 0.231781, "Ar": 0.012827},   # dry, near sea level
    "water": {"H": 0.111894, "O": 0.888106},
    "csi": {"Cs": 0.511549, "I": 0.488451},
    "aluminium": {"Al": 1.0},
    "copper": {"Cu": 1.0},
}

#: Nominal mass densities (g/cm3), for converting mm of a medium to g/cm2.
DENSITY_G_CM3: dict[str, float] = {
    "soft_tissue": 1.06,         # ICRU-44 soft tissue
    "bone": RHO_CORTICAL,        # ICRU-44 cortical bone
    "metal": RHO_STEEL,          # stainless steel 316L
    "air": 0.001205,
    "water": 1.0,
    "csi": 4.51,
    "aluminium": 2.699,
    "copper": 8.96,
}

KNOWN_MATERIALS: tuple[str, ...] = tuple(MATERIALS) + tuple(EXTRA_COMPOSITIONS)


def composition(material: str) -> Mapping[str, float]:
    """Element mass fractions of ``material`` (one of ``KNOWN_MATERIALS``)."""
    if material in COMPOSITIONS:
        return COMPOSITIONS[material]
    if material in EXTRA_COMPOSITIONS:
        return EXTRA_COMPOSITIONS[material]
    raise ValueError(
        f"physics/attenuation.py: unknown material {material!r}; expected one of {', '.join(KNOWN_MATERIALS)}"
    )


ELECTRON_REST_ENERGY_KEV = 510.99895      # CODATA 2018
AVOGADRO = 6.02214076e23                  # 1/mol
CLASSICAL_ELECTRON_RADIUS_CM = 2.8179403262e-13


def klein_nishina_cm2(energies_kev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Free-electron Klein-Nishina total and energy-transfer cross sections (cm2 per electron)."""
    a = np.asarray(energies_kev, dtype=np.float64) / ELECTRON_REST_ENERGY_KEV
    log = np.log1p(2.0 * a)
    b = 1.0 + 2.0 * a
    # total and scattered-photon-energy cross sections, in units of pi r_e^2
    sigma = 2.0 * ((1.0 + a) / a**2 * (2.0 * (1.0 + a) / b - log / a) + log / (2.0 * a) - (1.0 + 3.0 * a) / b**2)
    sigma_s = log / a**3 + 2.0 * (1.0 + a) * (2.0 * a * a - 2.0 * a - 1.0) / (a * a * b**2) + 8.0 * a * a / (3.0 * b**3)
    unit = np.pi * CLASSICAL_ELECTRON_RADIUS_CM**2
    return sigma * unit, (sigma - sigma_s) * unit


def klein_nishina_transfer_cm2(energies_kev: np.ndarray) -> np.ndarray:
    """Klein-Nishina energy-transfer cross section sigma * <T>/E (cm2 per electron)."""
    return klein_nishina_cm2(energies_kev)[1]


def _energies_key(energies_kev: np.ndarray | float) -> tuple[float, ...]:
    e = np.atleast_1d(np.asarray(energies_kev, dtype=np.float64))
    if e.ndim != 1 or e.size == 0:
        raise ValueError(f"physics/attenuation.py: energies_kev must be a non-empty 1-D array, got shape {e.shape}")
    if not np.all(np.isfinite(e)) or np.any(e < 1.0) or np.any(e > 1000.0):
        raise ValueError("physics/attenuation.py: energies_kev must lie in [1, 1000] keV")
    return tuple(float(x) for x in e)


@lru_cache(maxsize=256)
def _element_coefficients(symbol: str, energies: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(mu/rho, mu_en/rho) in cm2/g of one element on ``energies`` (keV)."""
    e_ev = np.asarray(energies) * 1e3
    total = np.asarray(xraydb.mu_elam(symbol, e_ev, kind="total"), dtype=np.float64)
    photo = np.asarray(xraydb.mu_elam(symbol, e_ev, kind="photo"), dtype=np.float64)

    escape = np.zeros_like(e_ev)                     # fluorescence energy escaping per photoabsorption
    edges = xraydb.xray_edges(symbol)
    if "K" in edges and xraydb.atomic_number(symbol) > 2:
        edge = edges["K"]
        lines = xraydb.xray_lines(symbol, "K")
        if lines:
            w = np.array([ln.intensity for ln in lines.values()])
            x_k = float(np.sum(w * np.array([ln.energy for ln in lines.values()])) / np.sum(w))
            p_k = 1.0 - 1.0 / edge.jump_ratio if edge.jump_ratio > 1.0 else 0.0
            escape = np.where(e_ev >= edge.energy, p_k * edge.fyield * x_k, 0.0)
    electrons_per_g = AVOGADRO * xraydb.atomic_number(symbol) / xraydb.atomic_mass(symbol)
    compton_tr = electrons_per_g * klein_nishina_transfer_cm2(np.asarray(energies))
    mu_en = photo * (1.0 - escape / e_ev) + compton_tr
    total.setflags(write=False)
    mu_en.setflags(write=False)
    return total, mu_en


def _mixture(material: str, energies_kev: np.ndarray | float, which: int) -> np.ndarray:
    key = _energies_key(energies_kev)
    out = np.zeros(len(key), dtype=np.float64)
    for symbol, fraction in composition(material).items():
        out += fraction * _element_coefficients(symbol, key)[which]
    return out


def mass_attenuation_cm2_g(material: str, energies_kev: np.ndarray | float) -> np.ndarray:
    """Total mass attenuation coefficient mu/rho (cm2/g) of ``material`` at ``energies_kev``."""
    return _mixture(material, energies_kev, 0)


def mass_energy_absorption_cm2_g(material: str, energies_kev: np.ndarray | float) -> np.ndarray:
    """Mass energy-absorption coefficient mu_en/rho (cm2/g) of ``material`` (model in the module docstring)."""
    return _mixture(material, energies_kev, 1)


def material_attenuation_table(energies_kev: np.ndarray, materials: tuple[str, ...] = MATERIALS) -> np.ndarray:
    """mu/rho (cm2/g) as a ``(len(materials), len(energies))`` array, rows in ``materials`` order."""
    return np.stack([mass_attenuation_cm2_g(m, energies_kev) for m in materials])
