"""Physics stage: tube spectrum, attenuation data, detector response and noise, dose.

Upstream: ``render`` hands over per-material path lengths (g/cm2). This stage turns
them into detector signal (``ResponseTable``) and noise (``DetectorModel``), and
reports air kerma at the interventional reference point and KAP (``dose``).
"""

from openfluoro.physics.attenuation import mass_attenuation_cm2_g, mass_energy_absorption_cm2_g
from openfluoro.physics.detector import DetectorModel, add_noise
from openfluoro.physics.dose import (
    PulseDose,
    air_kerma_per_mas_at_1m_ugy,
    half_value_layer_mm_al,
    kerma_area_product_gy_cm2,
    mas_for_pulse,
    pulse_dose,
    reference_point_kerma_mgy,
)
from openfluoro.physics.response import ResponseTable, build_response_table, response_table
from openfluoro.physics.spectrum import Spectrum, tube_spectrum

__all__ = [
    "DetectorModel",
    "PulseDose",
    "ResponseTable",
    "Spectrum",
    "add_noise",
    "air_kerma_per_mas_at_1m_ugy",
    "build_response_table",
    "half_value_layer_mm_al",
    "kerma_area_product_gy_cm2",
    "mas_for_pulse",
    "mass_attenuation_cm2_g",
    "mass_energy_absorption_cm2_g",
    "pulse_dose",
    "reference_point_kerma_mgy",
    "response_table",
    "tube_spectrum",
]
