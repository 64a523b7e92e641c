"""X-ray tube spectra from SpekPy (Poludniowski et al., Med. Phys. 48 (2021) 3630).

SpekPy's ``Spek.get_spectrum(edges=False, flu=True, diff=True)`` (its default in
2.5.4) returns bin-centre energies in keV and the fluence *differential in energy*,
photons / (cm^2 keV), for the state's tube load (``mas``, default 1 mAs) at the point
``x, y, z`` (default on the central axis at z = 100 cm from the focal spot), in vacuum
(no air attenuation unless an air filter is added). We ask for 1 mAs at 100 cm, then
multiply by the bin width (``diff=False`` does the same) and divide by 100 mm^2/cm^2,
so a ``Spectrum`` holds photons per bin per mAs per mm^2 at 1 m.

SpekPy runs with its ``'casim'`` physics and ``mu_data_source='nist'``: the
filters then attenuate with NIST XCOM coefficients and SpekPy's own kerma uses the
NIST SRD 126 air mu_en/rho, the same basis as ``physics.attenuation`` (xraydb). Its
default source for ``'casim'``, PENELOPE, has air mu_en/rho 1-2.5 % below NIST at
10-60 keV, which would show up as a kerma offset between the two codes.

Filtration is the *total* filtration of the tube (inherent + added), in mm of Al
and Cu. The beam is the central ray: no heel effect and no off-axis obliquity.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

KVP_MIN = 50.0
KVP_MAX = 125.0
BIN_WIDTH_KEV = 0.5       #: SpekPy's default energy bin width
REFERENCE_DISTANCE_MM = 1000.0


@dataclass(frozen=True, eq=False)
class Spectrum:
    """A tube output spectrum on the central axis at 1 m from the focal spot.

    ``energies_kev``: bin centres (keV); ``photons_per_mas_mm2_at_1m``: photons per bin per
    mAs per mm^2 at ``REFERENCE_DISTANCE_MM`` (free in air, no scatter). Arrays are
    read-only. Compare spectra by ``key``.
    """

    energies_kev: np.ndarray
    photons_per_mas_mm2_at_1m: np.ndarray
    kvp: float
    filtration_mm_al: float
    filtration_mm_cu: float = 0.0
    anode_angle_deg: float = 12.0
    bin_width_kev: float = BIN_WIDTH_KEV

    def __post_init__(self) -> None:
        e = np.array(self.energies_kev, dtype=np.float64)
        n = np.array(self.photons_per_mas_mm2_at_1m, dtype=np.float64)
        if e.ndim != 1 or e.shape != n.shape or e.size == 0:
            raise ValueError(
                f"Spectrum: energies_kev and photons_per_mas_mm2_at_1m must be equal-length 1-D arrays, "
                f"got {e.shape} and {n.shape}"
            )
        if np.any(e <= 0) or np.any(np.diff(e) <= 0):
            raise ValueError("Spectrum: energies_kev must be positive and increasing")
        if np.any(n < 0) or not np.all(np.isfinite(n)):
            raise ValueError("Spectrum: photons_per_mas_mm2_at_1m must be finite and non-negative")
        e.setflags(write=False)
        n.setflags(write=False)
        object.__setattr__(self, "energies_kev", e)
        object.__setattr__(self, "photons_per_mas_mm2_at_1m", n)

    @property
    def key(self) -> tuple:
        """Hashable identity of the spectrum (parameters plus the data)."""
        return (self.kvp, self.filtration_mm_al, self.filtration_mm_cu, self.anode_angle_deg,
                self.energies_kev.tobytes(), self.photons_per_mas_mm2_at_1m.tobytes())

    @property
    def total_photons_per_mas_mm2_at_1m(self) -> float:
        """Photon fluence per mAs at 1 m, photons / (mAs mm^2)."""
        return float(self.photons_per_mas_mm2_at_1m.sum())

    @property
    def mean_energy_kev(self) -> float:
        """Fluence-weighted mean photon energy (keV)."""
        n = self.photons_per_mas_mm2_at_1m
        return float(np.dot(self.energies_kev, n) / n.sum())

    def trimmed(self, min_fraction: float = 0.0) -> "Spectrum":
        """The spectrum without empty (or below ``min_fraction`` of the peak) bins at either end."""
        keep = np.nonzero(self.photons_per_mas_mm2_at_1m > min_fraction * self.photons_per_mas_mm2_at_1m.max())[0]
        sl = slice(keep[0], keep[-1] + 1)
        return Spectrum(self.energies_kev[sl], self.photons_per_mas_mm2_at_1m[sl], self.kvp,
                        self.filtration_mm_al, self.filtration_mm_cu, self.anode_angle_deg, self.bin_width_kev)


def _check(name: str, value: float, lo: float, hi: float) -> float:
    v = float(value)
    if not (lo <= v <= hi):
        raise ValueError(f"physics/spectrum.py: {name} must be in [{lo:g}, {hi:g}], got {value!r}")
    return v


def tube_spectrum(
    kvp: float,
    filtration_mm_al: float = 3.0,
    filtration_mm_cu: float = 0.0,
    anode_angle_deg: float = 12.0,
) -> Spectrum:
    """Tungsten-anode spectrum for a tube potential (50-125 kVp) and total filtration.

    Cached: SpekPy takes about half a second per spectrum. Raises ``ValueError`` for a
    kVp outside 50-125, negative filtration or an anode angle outside 5-25 degrees.
    """
    kvp = _check("kvp", kvp, KVP_MIN, KVP_MAX)
    filtration_mm_al = _check("filtration_mm_al", filtration_mm_al, 0.0, 50.0)
    filtration_mm_cu = _check("filtration_mm_cu", filtration_mm_cu, 0.0, 5.0)
    anode_angle_deg = _check("anode_angle_deg", anode_angle_deg, 5.0, 25.0)
    return _tube_spectrum(round(kvp, 6), round(filtration_mm_al, 6), round(filtration_mm_cu, 6),
                          round(anode_angle_deg, 6))


@lru_cache(maxsize=64)
def _tube_spectrum(kvp: float, al_mm: float, cu_mm: float, anode_deg: float) -> Spectrum:
    spek = spek_model(kvp, al_mm, cu_mm, anode_deg)
    k_kev, dphi_dk = spek.get_spectrum(edges=False, flu=True, diff=True)   # photons / (cm^2 keV) per mAs at 1 m
    per_bin_cm2 = np.asarray(dphi_dk, dtype=np.float64) * BIN_WIDTH_KEV
    spectrum = Spectrum(np.asarray(k_kev, dtype=np.float64), per_bin_cm2 / 100.0, kvp, al_mm, cu_mm, anode_deg)
    return spectrum.trimmed()


def spek_model(kvp: float, filtration_mm_al: float = 3.0, filtration_mm_cu: float = 0.0,
               anode_angle_deg: float = 12.0):
    """The SpekPy model behind ``tube_spectrum`` (1 mAs, 100 cm on axis); for cross-checks."""
    import spekpy  # slow import; only needed to build spectra

    spek = spekpy.Spek(kvp=kvp, th=anode_angle_deg, dk=BIN_WIDTH_KEV, physics="casim",
                       mu_data_source="nist", z=REFERENCE_DISTANCE_MM / 10.0, mas=1.0)
    if filtration_mm_al > 0:
        spek.filter("Al", filtration_mm_al)
    if filtration_mm_cu > 0:
        spek.filter("Cu", filtration_mm_cu)
    return spek
