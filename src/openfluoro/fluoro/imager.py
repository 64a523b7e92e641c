"""One exposure: material path lengths -> noisy detector signal, with its dose.

This is where the render and physics stages meet: the path-length image comes from
``render``, the technique from ``fluoro.frame.Exposure``, and ``physics`` turns them
into detected quanta (polychromatic look-up, quantum and electronic noise) and into
reference-point air kerma and kerma-area product.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from openfluoro.fluoro.frame import Exposure, FrameDose
from openfluoro.geometry.carm import Geometry
from openfluoro.physics import DetectorModel, pulse_dose, response_table, tube_spectrum
from openfluoro.physics.response import ResponseTable


@dataclass(frozen=True)
class ExposedImage:
    """Detector signal of one exposure, in open-beam detected quanta (float32)."""

    signal: np.ndarray
    open_field_quanta: float
    dose: FrameDose


@dataclass(frozen=True)
class Imager:
    """A detector behind a tube: turns path lengths and a technique into a noisy image."""

    detector_model: DetectorModel = field(default_factory=DetectorModel)

    def table(self, exposure: Exposure) -> ResponseTable:
        spectrum = tube_spectrum(exposure.kvp, exposure.filtration_mm_al, exposure.filtration_mm_cu)
        return response_table(spectrum, self.detector_model)

    def dose(self, exposure: Exposure, geometry: Geometry) -> FrameDose:
        spectrum = tube_spectrum(exposure.kvp, exposure.filtration_mm_al, exposure.filtration_mm_cu)
        d = pulse_dose(spectrum, exposure.ma, exposure.pulse_ms, geometry)
        return FrameDose(d.reference_kerma_mgy, d.kap_gy_cm2)

    def expose(self, paths_g_cm2: np.ndarray, geometry: Geometry, exposure: Exposure,
               rng: np.random.Generator | None, collimation_mask: np.ndarray | None = None) -> ExposedImage:
        """Noisy signal for ``paths_g_cm2`` (3, rows, cols); ``rng=None`` gives the noiseless mean.

        Outside ``collimation_mask`` (True = irradiated) no primary reaches the panel:
        those pixels hold electronic noise only.
        """
        table = self.table(exposure)
        det = geometry.detector
        area = det.image_pitch_mm**2
        n0 = table.open_field_quanta(exposure.mas, area, geometry.pose.sid_mm)
        if rng is None:
            signal = table.expected_signal_quanta(paths_g_cm2, exposure.mas, area, geometry.pose.sid_mm)
        else:
            signal = table.noisy_signal_quanta(paths_g_cm2, exposure.mas, area, geometry.pose.sid_mm, rng)
        if collimation_mask is not None:
            signal = np.where(collimation_mask, signal, np.float32(0.0)).astype(np.float32)
        return ExposedImage(signal, n0, self.dose(exposure, geometry))


class LiveImager:
    """An ``Imager`` for a frame stream: the signal's mean and variance are kept between
    frames and recomputed only inside the windows where the path lengths changed (the
    needle's), so a frame costs the noise draw plus a small look-up."""

    def __init__(self, imager: Imager | None = None) -> None:
        self.imager = imager or Imager()
        self._key: tuple | None = None
        self._mean: np.ndarray | None = None
        self._var: np.ndarray | None = None

    def expose(self, paths_g_cm2: np.ndarray, changed, geometry: Geometry, exposure: Exposure,
               rng: np.random.Generator, collimation_mask: np.ndarray | None = None) -> ExposedImage:
        """``changed``: list of ``PixelWindow`` that differ from the previous call's paths, or None."""
        table = self.imager.table(exposure)
        area = geometry.detector.image_pitch_mm**2
        sid = geometry.pose.sid_mm
        key = (geometry, exposure.kvp, exposure.mas, exposure.filtration_mm_al, exposure.filtration_mm_cu,
               paths_g_cm2.shape)
        if key != self._key or changed is None or self._mean is None:
            self._mean, self._var = table.signal_moments(paths_g_cm2, exposure.mas, area, sid)
            if collimation_mask is not None:
                self._mean[~collimation_mask] = 0.0
                self._var[~collimation_mask] = 0.0
            self._key = key
        else:
            for w in changed:
                table.signal_moments(paths_g_cm2, exposure.mas, area, sid, self._mean, self._var,
                                     (w.row0, w.row1, w.col0, w.col1))
                if collimation_mask is not None:
                    blocked = ~collimation_mask[w.row0:w.row1, w.col0:w.col1]
                    self._mean[w.row0:w.row1, w.col0:w.col1][blocked] = 0.0
                    self._var[w.row0:w.row1, w.col0:w.col1][blocked] = 0.0
        signal = table.noisy_from_moments(self._mean, self._var, rng)
        n0 = table.open_field_quanta(exposure.mas, area, sid)
        return ExposedImage(signal, n0, self.imager.dose(exposure, geometry))
