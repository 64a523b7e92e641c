"""Hounsfield units to mass density and material fractions.

Density calibration: piecewise-linear through the tissue points of
Schneider, Pedroni & Lomax, "The calibration of CT Hounsfield units for
radiotherapy treatment planning", Phys. Med. Biol. 41 (1996) 111-124
(the same points DeepDRR uses): air (-1000 HU, 0.00121 g/cm3), adipose
(-98, 0.93), soft-tissue interval (14, 1.03) to (23, 1.031), (100, 1.1199), and
the bone line to (1600, 1.9) extended linearly above it.

Material decomposition: below ``SOFT_BONE_HU`` everything is soft tissue (ICRU-44
soft tissue; air and fat differ from it mainly in density, which the calibration
carries). Between the soft-tissue and cortical-bone anchor points a voxel is a
volume mixture of the two, so that its soft and bone masses add up to the
calibrated density. Above ``METAL_HU`` (implants, ~2500 HU and up) the voxel is
metal; CT cannot measure a metal's density (the scale saturates), so metal
voxels get the nominal density of stainless steel 316L.
"""

from __future__ import annotations

import numpy as np

#: Material channels, in the order the projector returns them.
MATERIALS: tuple[str, ...] = ("soft_tissue", "bone", "metal")
SOFT, BONE, METAL = 0, 1, 2

#: Schneider et al. 1996 calibration points (HU, g/cm3).
_CAL_HU = np.array([-1000.0, -98.0, 14.0, 23.0, 100.0, 1600.0])
_CAL_RHO = np.array([0.00121, 0.93, 1.03, 1.031, 1.1199, 1.9])
_BONE_SLOPE = (_CAL_RHO[-1] - _CAL_RHO[-2]) / (_CAL_HU[-1] - _CAL_HU[-2])

SOFT_BONE_HU = 100.0          #: soft-tissue end member of the soft/bone mixture
CORTICAL_HU = 1600.0          #: cortical-bone end member (ICRU cortical bone, 1.92 g/cm3)
METAL_HU = 2500.0             #: above this a voxel is metal
RHO_SOFT = 1.1199             #: density at SOFT_BONE_HU on the calibration curve
RHO_CORTICAL = 1.92           #: ICRU-44 cortical bone
RHO_STEEL = 8.0               #: stainless steel 316L

#: Element mass fractions, for the attenuation tables (ICRU Report 44 compositions).
COMPOSITIONS: dict[str, dict[str, float]] = {
    "soft_tissue": {"H": 0.102, "C": 0.143, "N": 0.034, "O": 0.708, "Na": 0.002, "P": 0.003,
                    "S": 0.003, "Cl": 0.002, "K": 0.003},
    "bone": {"H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001, "Mg": 0.002,
             "P": 0.103, "S": 0.003, "Ca": 0.225},
    "metal": {"Fe": 0.655, "Cr": 0.17, "Ni": 0.12, "Mo": 0.025, "Mn": 0.02, "Si": 0.01},
}


def hu_to_density(hu: np.ndarray) -> np.ndarray:
    """Mass density in g/cm3 for Hounsfield units (metal voxels excluded: see ``hu_to_material_densities``)."""
    hu = np.asarray(hu, dtype=np.float32)
    rho = np.interp(hu, _CAL_HU, _CAL_RHO).astype(np.float32)
    above = hu > _CAL_HU[-1]
    if np.any(above):
        rho[above] = (_CAL_RHO[-1] + _BONE_SLOPE * (hu[above] - _CAL_HU[-1])).astype(np.float32)
    return np.maximum(rho, np.float32(_CAL_RHO[0]))


def hu_to_material_densities(hu: np.ndarray) -> np.ndarray:
    """Partial mass densities (g/cm3) per material, shape ``hu.shape + (len(MATERIALS),)``.

    The last axis is the material, so one voxel's channels sit together in memory and
    the projector reads them in one go.
    """
    hu = np.asarray(hu, dtype=np.float32)
    rho = hu_to_density(hu)
    out = np.zeros(hu.shape + (len(MATERIALS),), dtype=np.float32)
    # volume fraction of cortical bone in a soft/bone mixture with the calibrated density
    vb = np.clip((rho - RHO_SOFT) / (RHO_CORTICAL - RHO_SOFT), 0.0, 1.0).astype(np.float32)
    vb[hu <= SOFT_BONE_HU] = 0.0
    bone_mass = np.where(rho >= RHO_CORTICAL, rho, vb * RHO_CORTICAL)
    out[..., BONE] = np.minimum(bone_mass, rho)
    out[..., SOFT] = rho - out[..., BONE]
    metal = hu >= METAL_HU
    out[metal, SOFT] = 0.0
    out[metal, BONE] = 0.0
    out[metal, METAL] = RHO_STEEL
    return out
