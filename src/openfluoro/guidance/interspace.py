"""Interspace (disc height) measurement on lateral frames, in millimetres at the isocentre.

The endplate lines come from ``levels`` (sub-pixel steepest steps between the cortical line
and the disc, fitted robustly along the disc and moved out by the calibrated inset). The
height at a position along the disc is the distance between the two lines there, measured
across the disc, in image pixels; dividing by the pixels per millimetre of the isocentre
plane -- ``SID / SOD / pitch`` from the frame's known geometry -- removes the magnification.

Positions follow the phantom's definition (and the usual radiographic one): anterior and
posterior heights 1 mm inside the front and back margins of the vertebral body above the
disc, the middle height halfway between the margins.

For a spine off the isocentre plane (a patient off the table centre in a lateral), the
scale is off by ``offset / SOD`` (10 mm off-plane: 1.4 %), which is small next to a disc
height; ``isocentre_scale`` accepts a known off-plane offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from openfluoro.geometry.carm import Geometry
from openfluoro.guidance.levels import LevelResult, RefinedDisc, ViewFrame, detect_levels, remeasure_disc


def magnification(geometry: Geometry, depth_offset_mm: float = 0.0) -> float:
    """Geometric magnification of an object ``depth_offset_mm`` beyond the isocentre (toward
    the detector: positive)."""
    return geometry.pose.sid_mm / (geometry.pose.sod_mm + depth_offset_mm)


def px_per_mm_at_isocentre(geometry: Geometry, depth_offset_mm: float = 0.0) -> float:
    """Image pixels per millimetre of an object in the plane through the isocentre (or
    ``depth_offset_mm`` beyond it) parallel to the detector."""
    return magnification(geometry, depth_offset_mm) / geometry.detector.image_pitch_mm


def px_to_mm(distance_px: float, geometry: Geometry, depth_offset_mm: float = 0.0) -> float:
    return float(distance_px) / px_per_mm_at_isocentre(geometry, depth_offset_mm)


#: correction of the measured wedge (anterior/posterior minus middle height): development
#: laterals show 0.80 of the phantom's true wedge (regression through the origin, 170 discs)
WEDGE_GAIN = 1.25


@dataclass(frozen=True)
class InterspaceHeight:
    """Anterior, middle and posterior height of one interspace, mm at the isocentre, with the
    caliper end points (image px, original orientation) for overlays."""

    name: str | None
    anterior_mm: float
    middle_mm: float
    posterior_mm: float
    centre_px: tuple[float, float]
    calipers_px: Mapping[str, tuple[tuple[float, float], tuple[float, float]]] = field(default_factory=dict)
    quality: float = 1.0

    def to_dict(self) -> dict:
        return {"name": self.name, "anterior_mm": self.anterior_mm, "middle_mm": self.middle_mm,
                "posterior_mm": self.posterior_mm, "centre_px": list(self.centre_px),
                "calipers_px": {k: [list(a), list(b)] for k, (a, b) in self.calipers_px.items()}}


def heights_of(rd: RefinedDisc, frame: ViewFrame, name: str | None, px_per_mm: float) -> InterspaceHeight:
    """Heights of a refined disc (normalised coordinates) in mm, calipers in image pixels."""
    P = px_per_mm
    positions = {"anterior": rd.u_front + 1.0 * P, "middle": 0.5 * (rd.u_front + rd.u_back),
                 "posterior": rd.u_back - 1.0 * P}
    out = {}
    calipers = {}
    for key, u in positions.items():
        top = rd.point(u, "upper")
        bottom = rd.point(u, "lower")
        # distance across the disc: between the lines, along the mean normal of the two lines
        t_up = np.array([1.0, rd.upper[1]])
        t_lo = np.array([1.0, rd.lower[1]])
        t = t_up / np.linalg.norm(t_up) + t_lo / np.linalg.norm(t_lo)
        t = t / np.linalg.norm(t)
        nrm = np.array([-t[1], t[0]])
        h_px = abs(float(((rd.lower[0] + rd.lower[1] * u) - (rd.upper[0] + rd.upper[1] * u)) * nrm[1]))
        out[key] = h_px / P
        a, b = frame.from_norm([top, bottom])
        calipers[key] = ((float(a[0]), float(a[1])), (float(b[0]), float(b[1])))
    c = frame.from_norm([rd.centre])[0]
    # the fitted endplates show ~80 % of the true wedge (development laterals): scale the
    # anterior and posterior heights' departure from the middle height accordingly
    for key in ("anterior", "posterior"):
        out[key] = out["middle"] + WEDGE_GAIN * (out[key] - out["middle"])
    return InterspaceHeight(name, out["anterior"], out["middle"], out["posterior"], (float(c[0]), float(c[1])),
                            calipers, float(1.0 / (1.0 + rd.residual_px)))


def measure_interspaces(image: np.ndarray | None, geometry: Geometry, levels: LevelResult | None = None
                        ) -> list[InterspaceHeight]:
    """Heights of every refined interspace of a frame (detecting the levels if not given)."""
    if levels is None:
        if image is None:
            raise ValueError("measure_interspaces: give the frame image or its LevelResult")
        levels = detect_levels(image, geometry)
    if levels.frame is None:
        return []
    P = px_per_mm_at_isocentre(geometry)
    return [heights_of(d.refined, levels.frame, d.name, P) for d in levels.discs if d.refined is not None]


@dataclass(frozen=True)
class HeightChange:
    name: str
    baseline: InterspaceHeight
    current: InterspaceHeight

    @property
    def anterior_mm(self) -> float:
        return self.current.anterior_mm - self.baseline.anterior_mm

    @property
    def middle_mm(self) -> float:
        return self.current.middle_mm - self.baseline.middle_mm

    @property
    def posterior_mm(self) -> float:
        return self.current.posterior_mm - self.baseline.posterior_mm

    @property
    def mean_mm(self) -> float:
        return (self.anterior_mm + self.middle_mm + self.posterior_mm) / 3.0


def change_from_baseline(baseline: Sequence[InterspaceHeight], current: Sequence[InterspaceHeight]
                         ) -> dict[str, HeightChange]:
    """Per named interspace present in both: the change of its heights."""
    base = {h.name: h for h in baseline if h.name}
    return {h.name: HeightChange(h.name, base[h.name], h) for h in current if h.name in base}


class InterspaceTracker:
    """Interspace heights frame after frame at one C-arm pose: full detection on the first
    frame (or after a pose change), then a fast re-measurement of the known discs."""

    def __init__(self, redetect_every: int = 0) -> None:
        self.redetect_every = redetect_every
        self.levels: LevelResult | None = None
        self._geometry: Geometry | None = None
        self._discs: list[tuple[str | None, RefinedDisc]] = []
        self._count = 0

    def reset(self) -> None:
        self.levels = None
        self._geometry = None
        self._discs = []
        self._count = 0

    def update(self, image: np.ndarray, geometry: Geometry, levels: LevelResult | None = None) -> list[InterspaceHeight]:
        self._count += 1
        stale = self._geometry is None or geometry != self._geometry or not self._discs or \
            (self.redetect_every and self._count % self.redetect_every == 0)
        if stale or levels is not None:
            self.levels = levels if levels is not None else detect_levels(image, geometry)
            self._geometry = geometry
            self._discs = [(d.name, d.refined) for d in self.levels.discs if d.refined is not None]
            return measure_interspaces(image, geometry, self.levels)
        assert self.levels is not None and self.levels.frame is not None
        vf = self.levels.frame
        norm = vf.norm_image(np.asarray(image)).astype(np.float32)
        P = px_per_mm_at_isocentre(geometry)
        new_discs = []
        for name, rd in self._discs:
            new = remeasure_disc(norm, P, rd, vf.kind)
            if new is None:
                break
            new_discs.append((name, new))
        if len(new_discs) < len(self._discs):
            # lost one (large motion, occlusion): detect afresh and keep the known names
            fresh = detect_levels(image, geometry)
            named = {d.name: d for d in fresh.discs if d.refined is not None and d.name}
            if all(nm in named for nm, _ in self._discs if nm):
                self.levels = fresh
                self._discs = [(d.name, d.refined) for d in fresh.discs if d.refined is not None]
                return measure_interspaces(image, geometry, fresh)
            return [heights_of(rd, vf, name, P) for name, rd in self._discs]
        self._discs = new_discs
        return [heights_of(rd, vf, name, P) for name, rd in new_discs]
