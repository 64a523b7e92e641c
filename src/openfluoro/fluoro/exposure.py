"""Pulsed and continuous acquisition, dose modes and automatic dose-rate control (ADRC).

The ADRC holds the detector entrance air kerma per frame, measured in the central
third of the collimated field, at the dose mode's set point, as the patient's
thickness changes. Its curve:

1. start at the lowest kVp of ``KVP_STEPS`` (best contrast) and compute the tube
   current that reaches the set point at that kVp;
2. if that current exceeds the generator's limit for the pulse width (``max_ma``),
   or would push the reference-point air kerma rate past the mode's limit, step
   the kVp up (more penetration, less kerma per detector signal) and try again;
3. at the top kVp, cap the current at whichever limit binds: the image then gets
   less dose than the set point (noisier), never more than the limit.

Regulatory limits on the air kerma rate at the reference point (21 CFR 1020.32(d)):
88 mGy/min in normal (and low) mode, 176 mGy/min in high-level mode. The detector
signal per unit kerma is the polychromatic signal transmission from
``physics.response`` at the median of the measuring field, so thicker (oblique,
lateral) projections get more kVp and mA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from openfluoro.fluoro.frame import Exposure
from openfluoro.geometry.carm import Geometry
from openfluoro.physics import air_kerma_per_mas_at_1m_ugy, reference_point_kerma_mgy, response_table, tube_spectrum

#: Pulse rates a fluoroscope offers (pulses per second); 30 = continuous fluoroscopy.
PULSE_RATES_PPS: tuple[float, ...] = (30.0, 15.0, 7.5, 3.75, 1.0)
CONTINUOUS_PPS = 30.0
KVP_STEPS: tuple[float, ...] = tuple(float(k) for k in range(60, 121, 5))

#: Detector entrance air kerma per frame the ADRC aims at (nGy), per dose mode: typical
#: flat-panel fluoroscopy set points (tens of nGy per pulse; AAPM Report 125, 2012).
SET_POINT_NGY: Mapping[str, float] = {"low": 20.0, "normal": 40.0, "high": 80.0}
#: Reference-point air kerma rate limits (mGy/min), 21 CFR 1020.32(d).
RATE_LIMIT_MGY_MIN: Mapping[str, float] = {"low": 88.0, "normal": 88.0, "high": 176.0}
FILTRATION_MM_AL = 3.0
FILTRATION_MM_CU = 0.1


def pulse_width_ms(pulse_rate_pps: float) -> float:
    """Exposure time per frame: the whole frame period when continuous, else a short pulse."""
    if pulse_rate_pps not in PULSE_RATES_PPS:
        raise ValueError(f"pulse rate must be one of {PULSE_RATES_PPS} pps, got {pulse_rate_pps}")
    if pulse_rate_pps == CONTINUOUS_PPS:
        return 1000.0 / CONTINUOUS_PPS
    return 8.0 if pulse_rate_pps >= 7.5 else 10.0


def max_ma(pulse_ms: float) -> float:
    """Generator limit on tube current: ~6 mA for continuous fluoro, higher for short grid pulses."""
    return 6.0 if pulse_ms > 20.0 else 60.0


@dataclass(frozen=True)
class ExposureDecision:
    exposure: Exposure
    detector_kerma_ngy: float        # achieved, in the measuring field
    set_point_ngy: float
    reference_rate_mgy_min: float
    limited: str | None              # "current" | "dose_rate" when the set point could not be reached


def measuring_field(paths_g_cm2: np.ndarray, geometry: Geometry, max_samples: int = 4096) -> np.ndarray:
    """Path-length samples (3, N) from the central third of the collimated field."""
    rows, cols = paths_g_cm2.shape[1:]
    mask = geometry.collimator.mask(geometry.detector)
    r = np.flatnonzero(mask.any(axis=1))
    c = np.flatnonzero(mask.any(axis=0))
    if len(r) == 0 or len(c) == 0:
        raise ValueError("the collimator closes the whole field")
    r0, r1 = r[0] + (r[-1] - r[0]) // 3, r[-1] - (r[-1] - r[0]) // 3 + 1
    c0, c1 = c[0] + (c[-1] - c[0]) // 3, c[-1] - (c[-1] - c[0]) // 3 + 1
    step = max(1, int(np.sqrt((r1 - r0) * (c1 - c0) / max_samples)))
    return np.ascontiguousarray(paths_g_cm2[:, r0:r1:step, c0:c1:step].reshape(3, -1))


def decide_exposure(paths_g_cm2: np.ndarray, geometry: Geometry, dose_mode: str = "normal",
                    pulse_rate_pps: float = 7.5) -> ExposureDecision:
    """Technique factors for the next frame (see the module docstring for the curve)."""
    if dose_mode not in SET_POINT_NGY:
        raise ValueError(f"dose mode must be one of {tuple(SET_POINT_NGY)}, got {dose_mode!r}")
    width = pulse_width_ms(pulse_rate_pps)
    set_point = SET_POINT_NGY[dose_mode]
    rate_limit = RATE_LIMIT_MGY_MIN[dose_mode]
    sample = measuring_field(paths_g_cm2, geometry)
    inv_sq = (1000.0 / geometry.pose.sid_mm) ** 2
    frames_per_min = pulse_rate_pps * 60.0
    choice = None
    for kvp in KVP_STEPS:
        spectrum = tube_spectrum(kvp, FILTRATION_MM_AL, FILTRATION_MM_CU)
        transmission = float(np.median(response_table(spectrum).transmission(sample)))
        ngy_per_mas = air_kerma_per_mas_at_1m_ugy(spectrum) * 1e3 * inv_sq * transmission
        mas_needed = set_point / max(ngy_per_mas, 1e-12)
        rp_per_mas = reference_point_kerma_mgy(spectrum, 1.0, geometry.pose)
        mas_rate_cap = rate_limit / (rp_per_mas * frames_per_min)
        mas_current_cap = max_ma(width) * width / 1000.0
        choice = (kvp, spectrum, ngy_per_mas, mas_needed, mas_rate_cap, mas_current_cap, rp_per_mas)
        if mas_needed <= min(mas_rate_cap, mas_current_cap):
            break
    assert choice is not None
    kvp, spectrum, ngy_per_mas, mas_needed, mas_rate_cap, mas_current_cap, rp_per_mas = choice
    mas = min(mas_needed, mas_rate_cap, mas_current_cap)
    limited = None
    if mas < mas_needed:
        limited = "dose_rate" if mas_rate_cap <= mas_current_cap else "current"
    exposure = Exposure(kvp=kvp, ma=mas * 1000.0 / width, pulse_ms=width, pulse_rate_pps=pulse_rate_pps,
                        dose_mode=dose_mode, filtration_mm_al=FILTRATION_MM_AL, filtration_mm_cu=FILTRATION_MM_CU)
    return ExposureDecision(exposure, mas * ngy_per_mas, set_point, mas * rp_per_mas * frames_per_min, limited)
