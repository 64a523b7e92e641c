"""Interspace (disc height) measurement on lateral frames, in millimetres at the isocentre.

The endplate lines come from ``levels`` (sub-pixel steepest steps between the cortical line
and the disc, fitted robustly along the disc and moved out by the calibrated inset) and,
given the image, are re-located on the centroid of each edge's gradient (``centroid_lines``:
the steepest step jumps between voxel terraces and between near and far rims of a slightly
oblique endplate, which tilted the lines: the old fix, a 1.25 gain on the wedge, corrected
the anterior height at the cost of the posterior one). Small per-position offsets
(``POSITION_OFFSET_MM``) remove what remains of the mean error. The
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
from openfluoro.guidance import _filters as F
from openfluoro.guidance.background import RETRY_EMPTY_FRAMES, BackgroundDetection
from openfluoro.guidance.levels import (ENDPLATE_INSET_MM, LevelResult, RefinedDisc, ViewFrame, detect_levels,
                                        refine_disc, remeasure_disc)


def magnification(geometry: Geometry, depth_offset_mm: float = 0.0) -> float:
    """Geometric magnification of an object ``depth_offset_mm`` beyond the isocentre (toward
    the detector: positive)."""
    return geometry.pose.sid_mm / (geometry.pose.sod_mm + depth_offset_mm)


def px_per_mm_at_isocentre(geometry: Geometry, depth_offset_mm: float = 0.0) -> float:
    """Image pixels per millimetre of an object in the plane through the isocentre (or
    ``depth_offset_mm`` beyond it) parallel to the detector; at the isocentre itself,
    ``Geometry.px_per_mm_at_isocentre``."""
    return magnification(geometry, depth_offset_mm) / geometry.detector.image_pitch_mm


def px_to_mm(distance_px: float, geometry: Geometry, depth_offset_mm: float = 0.0) -> float:
    return float(distance_px) / px_per_mm_at_isocentre(geometry, depth_offset_mm)


#: per-position corrections (mm) of the heights between the centroid endplate lines, from
#: development laterals (four phantom sets, 331 discs; least absolute deviations, fitted
#: together with the obliquity correction below). The middle one is the rest of the edge
#: inset (``levels.ENDPLATE_INSET_MM`` is calibrated for steepest-step edges); the anterior one
#: is what the projection loses at the front of the disc (the lines, fitted over the whole
#: disc, converge slightly toward the front)
POSITION_OFFSET_MM = {"anterior": 0.21, "middle": -0.03, "posterior": -0.23}
#: the same for the steepest-step lines of ``levels`` as they are (no image to re-locate them on)
STEEPEST_OFFSET_MM = {"anterior": 0.5, "middle": 0.2, "posterior": -0.15}
#: oblique rays: a disc far from the central ray (along the spine) is seen through rays that
#: cross its endplates at an angle; the near and far rims of each endplate then project apart
#: and its edge becomes a band. The centroid window takes in the whole band
#: (``BAND_HALF_WIDTH_MM``); what the display's non-linearity still moves inward is about
#: 0.14 mm per 0.01 of the tangent of that angle beyond 0.03 (21 mm off the central ray at
#: 700 mm). Measured heights get that back (``obliquity_correction_mm``), not extrapolated
#: beyond the calibrated range (0.13, the most oblique discs of the development laterals)
OBLIQUITY_ONSET = 0.03
OBLIQUITY_MM_PER_TAN = 13.8
OBLIQUITY_CALIBRATED_MAX = 0.13
#: half width (mm) of the window around each endplate line in which the edge centroid is taken,
#: for a ray along the endplate
CENTROID_HALF_MM = 1.5
#: half the width of a lumbar endplate (bodies are 40-50 mm wide): at ray obliquity tan(a) the
#: edge band spreads this times tan(a) either side of the mid-sagittal endplate, and the window
#: widens by as much. Development laterals, leave-one-set-out over four sets: interspace MAE
#: 0.486 mm with the fixed window, 0.444 with the widened one (0.445 with a fixed 2.5 mm one)
BAND_HALF_WIDTH_MM = 22.0
#: the centroid lines are fitted from this far inside the body margins (rounded rims excluded)
CENTROID_MARGIN_MM = 3.0
#: lordosis grows toward the sacrum: a disc is at least as wedged as the one above it, less
#: this much (degrees, taken as a difference of the lines' slopes), for the two discs whose
#: lower endplate lies behind the pelvis in a lateral. The top of L5 is crossed by the arc of
#: the iliac crest, which was taken for it in 10 of 45 development laterals (L4-L5 measured
#: 5-16 deg less wedged than L3-L4, where the phantoms, like the usual adult lordosis, have it
#: 1-10 deg more wedged); the top of the sacrum is a weak, curved edge behind the iliac wings
#: and its fitted line comes out too flat (anterior heights 2-3 mm short, posterior ones 3-4 mm
#: long). Where a disc is flatter than that bound, its lower line is turned about the middle
#: of the disc to the bound
CAUDAL_WEDGE_MARGIN_DEG = {"L4-L5": 2.0, "L5-S1": 0.0}
#: the lower lines of the two discs behind the pelvis -- the top of L5, crossed by the arc of
#: the iliac crest, and the top of S1, a weak edge behind the iliac wings -- follow their edge
#: points wherever the pelvis puts a stronger edge next to them. They are searched as whole
#: straight lines instead (``lower_line_search``): turned from parallel to the upper line to
#: this lordotic wedge (these discs are wedged ~5-20 deg in adults), moved this far (mm)
#: across the disc about the detected middle. On the development laterals (the sets this was
#: chosen on; 554 discs) the interspace MAE went from 0.469 to 0.429 mm: L5-S1 (33 discs,
#: posterior heights up to 9 mm long before) 1.22 -> 0.66 mm, L4-L5 (77) 0.53 -> 0.48 mm
LINE_SEARCH_LEVELS = ("L4-L5", "L5-S1")
LINE_SEARCH_WEDGE_MAX_DEG = 30.0
LINE_SEARCH_SHIFT_MM = 1.5


def centroid_lines(norm: np.ndarray, px_per_mm: float, rd: RefinedDisc,
                   half_mm: float = CENTROID_HALF_MM) -> RefinedDisc:
    """The endplate lines of ``rd`` re-located on the centroid of each edge's gradient.

    The steepest step of an endplate edge jumps between the terraces of a voxelised (or
    pixelated) oblique endplate and between the near and far rim when the ray is not parallel
    to the endplate, which tilts the fitted lines; the gradient centroid (first moment of the
    dark-to-bright step across the line, within +-``half_mm``) moves smoothly with the
    partial volumes. Per position along the disc (0.5 mm apart, averaged over +-1 mm), a
    centroid; the lines are fitted robustly through them, weighted by the step's strength.
    ``norm``: the frame in normalised orientation (``ViewFrame.norm_image``)."""
    P = px_per_mm
    inset = ENDPLATE_INSET_MM * P
    us = np.arange(rd.u_front + CENTROID_MARGIN_MM * P, rd.u_back - CENTROID_MARGIN_MM * P + 0.01, 0.5 * P)
    if len(us) < 12:
        return rd
    dv = np.arange(-half_mm * P, half_mm * P + 0.01, 0.25)
    out = []
    for sgn, (v0, sl) in ((1.0, (rd.upper[0] + inset, rd.upper[1])), (-1.0, (rd.lower[0] - inset, rd.lower[1]))):
        vmid = v0 + sl * us
        vv = vmid[:, None] + dv[None, :]
        xs = rd.c[0] + us[:, None] * rd.a[0] + vv * rd.n[0]
        ys = rd.c[1] + us[:, None] * rd.a[1] + vv * rd.n[1]
        prof = F.bilinear(norm, xs.ravel().astype(np.float64), ys.ravel().astype(np.float64)).reshape(xs.shape)
        bad = np.isnan(prof).any(axis=1)
        if bad.all():
            return rd
        prof = np.where(np.isnan(prof), np.nanmean(prof), prof).astype(np.float64)
        prof = F.rows_box4(prof)                                  # +-1 mm along the disc
        dp = np.zeros_like(prof)
        dp[:, 1:-1] = 0.5 * (prof[:, 2:] - prof[:, :-2])
        # the upper edge brightens into the disc (+v), the lower one darkens out of it
        w = np.clip(sgn * dp, 0.0, None)
        w = np.clip(w - 0.15 * w.max(axis=1, keepdims=True), 0.0, None)
        s = w.sum(axis=1)
        ok = (s > 0) & ~bad
        if ok.sum() < 10:
            return rd
        cen = (w * dv[None, :]).sum(axis=1) / np.where(s > 0, s, 1.0)
        out.append(F.robust_line(us[ok], (vmid + cen)[ok], s[ok], 0.6)[:2])
    (u0, us_), (l0, ls_) = out
    # a centroid line far from the steepest-step one is a failure (another edge in the window)
    um = 0.5 * (rd.u_front + rd.u_back)
    if abs((u0 - inset + us_ * um) - (rd.upper[0] + rd.upper[1] * um)) > 1.2 * P or \
            abs((l0 + inset + ls_ * um) - (rd.lower[0] + rd.lower[1] * um)) > 1.2 * P:
        return rd
    return RefinedDisc(rd.c, rd.a, rd.n, (u0 - inset, us_), (l0 + inset, ls_), rd.u_front, rd.u_back, rd.strength,
                       rd.residual_px)


def lower_line_search(norm: np.ndarray, px_per_mm: float, rd: RefinedDisc) -> RefinedDisc:
    """``rd`` with its lower line replaced by the straight line along which the image darkens
    most, on average, from the disc into the bone below: wedges from 0 to
    ``LINE_SEARCH_WEDGE_MAX_DEG`` (1 deg steps), shifts of +-``LINE_SEARCH_SHIFT_MM`` (0.25 mm) about the
    middle of the detected line; contrast taken 1 mm either side of the line, averaged +-1 mm
    along the disc, over the body less 3 mm at each margin."""
    P = px_per_mm
    um = 0.5 * (rd.u_front + rd.u_back)
    us = np.arange(rd.u_front + CENTROID_MARGIN_MM * P, rd.u_back - CENTROID_MARGIN_MM * P + 0.01, 0.5 * P)
    if len(us) < 12:
        return rd
    lo_mid = rd.lower[0] + rd.lower[1] * um
    step = 0.25
    reach = (LINE_SEARCH_SHIFT_MM + 2.0) * P + math.tan(math.radians(LINE_SEARCH_WEDGE_MAX_DEG)) * (um - us[0])
    vs = np.arange(lo_mid - reach, lo_mid + reach + step, step)
    xs = rd.c[0] + us[:, None] * rd.a[0] + vs[None, :] * rd.n[0]
    ys = rd.c[1] + us[:, None] * rd.a[1] + vs[None, :] * rd.n[1]
    prof = F.bilinear(norm, xs.ravel().astype(np.float64), ys.ravel().astype(np.float64)).reshape(xs.shape)
    if np.isnan(prof).mean() > 0.2:
        return rd
    prof = np.where(np.isnan(prof), np.nanmean(prof), prof).astype(np.float64)
    prof = F.rows_box4(prof)                                      # +-1 mm along the disc
    d = max(1, int(round(1.0 * P / step)))
    contrast = np.full_like(prof, np.nan)
    contrast[:, d:-d] = prof[:, :-2 * d] - prof[:, 2 * d:]        # disc above minus bone below
    slopes = rd.upper[1] - np.tan(np.radians(np.arange(0.0, LINE_SEARCH_WEDGE_MAX_DEG + 0.01, 1.0)))
    shifts = np.arange(-LINE_SEARCH_SHIFT_MM, LINE_SEARCH_SHIFT_MM + 0.01, 0.25) * P
    v = lo_mid + shifts[None, :, None] + slopes[:, None, None] * (us - um)[None, None, :]
    idx = (v - vs[0]) / step
    i0 = np.clip(np.floor(idx).astype(int), 0, len(vs) - 2)
    f = idx - i0
    rows = np.arange(len(us))[None, None, :]
    score = (contrast[rows, i0] * (1.0 - f) + contrast[rows, i0 + 1] * f).mean(axis=2)
    above = (v - (rd.upper[0] + rd.upper[1] * us)[None, None, :]).min(axis=2) < 0.3 * P
    score = np.where(above | np.isnan(score), -np.inf, score)
    if not np.isfinite(score.max()):
        return rd
    a, b = np.unravel_index(int(np.argmax(score)), score.shape)
    ls = float(slopes[a])
    return RefinedDisc(rd.c, rd.a, rd.n, rd.upper, (float(lo_mid + shifts[b] - ls * um), ls), rd.u_front, rd.u_back,
                       rd.strength, rd.residual_px)


def central_ray_px(geometry: Geometry, frame: ViewFrame) -> np.ndarray:
    """Where the central ray (through the isocentre) meets the detector, normalised pixels."""
    return frame.to_norm(geometry.project(np.asarray(geometry.pose.isocentre_lps_mm, float)))[0]


def ray_obliquity(geometry: Geometry, frame: ViewFrame, rd: RefinedDisc, centre_px: np.ndarray | None = None) -> float:
    """Tangent of the angle at which the ray through a disc crosses the disc plane: the disc's
    offset from the central ray, across the disc (mm at the isocentre), over the
    source-isocentre distance. The central ray runs along the disc; far from it the rays
    cross the endplates obliquely and the near and far rims of each endplate project apart.
    ``centre_px``: ``central_ray_px`` if known."""
    pp = central_ray_px(geometry, frame) if centre_px is None else centre_px
    off_mm = abs(float(np.dot(rd.centre - pp, rd.n))) / frame.px_per_mm
    return off_mm / geometry.pose.sod_mm


def obliquity_correction_mm(tan_obliquity: float) -> float:
    """What the projection takes off an interspace's height at this ray obliquity
    (``OBLIQUITY_ONSET``, ``OBLIQUITY_MM_PER_TAN``)."""
    return OBLIQUITY_MM_PER_TAN * max(0.0, min(tan_obliquity, OBLIQUITY_CALIBRATED_MAX) - OBLIQUITY_ONSET)


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


def heights_of(rd: RefinedDisc, frame: ViewFrame, name: str | None, px_per_mm: float,
               offsets: Mapping[str, float] = POSITION_OFFSET_MM, tan_obliquity: float = 0.0) -> InterspaceHeight:
    """Heights of a refined disc (normalised coordinates) in mm, calipers in image pixels;
    ``offsets``: the per-position corrections that go with how the lines were found;
    ``tan_obliquity``: of the ray through the disc (``ray_obliquity``), for what the
    projection takes off the heights."""
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
    for key in out:
        out[key] += offsets[key] + obliquity_correction_mm(tan_obliquity)
    return InterspaceHeight(name, out["anterior"], out["middle"], out["posterior"], (float(c[0]), float(c[1])),
                            calipers, float(1.0 / (1.0 + rd.residual_px)))


def measure_interspaces(image: np.ndarray | None, geometry: Geometry, levels: LevelResult | None = None
                        ) -> list[InterspaceHeight]:
    """Heights of every refined interspace of a frame (detecting the levels if not given).

    With the image, the endplate lines are re-located on their edge centroids
    (``centroid_lines``); without it (only a LevelResult), the steepest-step lines are used with
    their own, less accurate, calibration."""
    if levels is None:
        if image is None:
            raise ValueError("measure_interspaces: give the frame image or its LevelResult")
        levels = detect_levels(image, geometry)
    if levels.frame is None:
        return []
    P = geometry.px_per_mm_at_isocentre
    if image is None:
        return [heights_of(d.refined, levels.frame, d.name, P, STEEPEST_OFFSET_MM)
                for d in levels.discs if d.refined is not None]
    norm = levels.frame.norm_image(np.asarray(image)).astype(np.float32)
    return _centroid_heights(norm, geometry, levels.frame,
                             [(d.name, d.refined) for d in levels.discs if d.refined is not None])


def _centroid_heights(norm: np.ndarray, geometry: Geometry, frame: ViewFrame,
                      discs: Sequence[tuple[str | None, RefinedDisc]]) -> list[InterspaceHeight]:
    """Heights of named discs from their lines re-located on the edge centroids (the window
    widened for the ray obliquity; the lower lines behind the pelvis searched first as whole
    lines, ``lower_line_search``), the caudal lines bounded (``caudal_wedge_bound``) and the obliquity
    corrected."""
    P = geometry.px_per_mm_at_isocentre
    pp = central_ray_px(geometry, frame)
    lines = [(name, centroid_lines(norm, P, lower_line_search(norm, P, rd) if name in LINE_SEARCH_LEVELS else rd,
                                   CENTROID_HALF_MM + BAND_HALF_WIDTH_MM * ray_obliquity(geometry, frame, rd, pp)))
             for name, rd in discs]
    return [heights_of(rd, frame, name, P, tan_obliquity=ray_obliquity(geometry, frame, rd, pp))
            for name, rd in caudal_wedge_bound(lines)]


def _wedge(rd: RefinedDisc) -> float:
    """Slope difference of the lines (lower minus upper); negative: wider at the front."""
    return float(rd.lower[1] - rd.upper[1])


def caudal_wedge_bound(discs: Sequence[tuple[str | None, RefinedDisc]]
                       ) -> list[tuple[str | None, RefinedDisc]]:
    """Turn the lower line of L4-L5, then of L5-S1, about the middle of the disc where the disc
    is less wedged than the one above it (``CAUDAL_WEDGE_MARGIN_DEG``); the middle height is
    kept."""
    out = list(discs)
    by = {name: i for i, (name, _) in enumerate(out) if name}
    for name, above_name in (("L4-L5", "L3-L4"), ("L5-S1", "L4-L5")):
        if name not in by or above_name not in by:
            continue
        rd, above = out[by[name]][1], out[by[above_name]][1]
        w_above = _wedge(above)
        if w_above >= 0.0:                   # the disc above is not lordotic: no bound to use
            continue
        bound = w_above + math.tan(math.radians(CAUDAL_WEDGE_MARGIN_DEG[name]))
        if _wedge(rd) <= bound:
            continue
        um = 0.5 * (rd.u_front + rd.u_back)
        ls = rd.upper[1] + bound
        l0 = rd.lower[0] + rd.lower[1] * um - ls * um
        out[by[name]] = (name, RefinedDisc(rd.c, rd.a, rd.n, rd.upper, (l0, ls), rd.u_front, rd.u_back,
                                           rd.strength, rd.residual_px))
    return out


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


#: frame-to-frame limit of a re-measured disc at one pose: traction opens a disc but does not
#: turn its endplates; a slope change beyond this (3.4 deg) is a jump to another edge
TRACK_MAX_SLOPE_CHANGE = 0.06


def _plausible(prev: RefinedDisc, new: RefinedDisc) -> bool:
    return abs(new.upper[1] - prev.upper[1]) <= TRACK_MAX_SLOPE_CHANGE and \
        abs(new.lower[1] - prev.lower[1]) <= TRACK_MAX_SLOPE_CHANGE


class InterspaceTracker:
    """Interspace heights frame after frame at one C-arm pose: full detection on the first
    frame (or after a pose change), then a fast re-measurement of the known discs.

    A re-measurement that fails or jumps implausibly (``_plausible``: an endplate line turning
    by more than traction can turn it) keeps the disc's last good lines; after two such frames
    in a row that one disc is searched afresh around its held position (``refine_disc``, a few
    ms, not the whole-frame ``detect_levels``), and a result within 6 mm of it replaces it.
    A disc that stays lost is searched again every ``REACQUIRE_EVERY`` frames, so a frame
    never pays for more than one disc's search (the 15 ms frame budget of issue 5). A pose at
    which the detection found no interspace is tried again every ``background.RETRY_EMPTY_FRAMES`` frames."""

    #: frames between two searches for a disc that stays lost
    REACQUIRE_EVERY = 4

    def __init__(self, redetect_every: int = 0, background: BackgroundDetection | None = None) -> None:
        """``background``: detect the levels of a new pose off the frame path (live sessions;
        no heights until they are there); without it, in line on the pose's first frame."""
        self.redetect_every = redetect_every
        self._background = background
        self.levels: LevelResult | None = None
        self._geometry: Geometry | None = None
        self._discs: list[tuple[str | None, RefinedDisc]] = []
        self._misses: list[int] = []
        self._count = 0
        self._since_detection = 0

    def reset(self) -> None:
        self.levels = None
        self._geometry = None
        self._discs = []
        self._misses = []
        self._count = 0
        self._since_detection = 0

    def update(self, image: np.ndarray, geometry: Geometry, levels: LevelResult | None = None) -> list[InterspaceHeight]:
        self._count += 1
        self._since_detection += 1
        stale = self._geometry is None or geometry != self._geometry or \
            (not self._discs and self._since_detection >= RETRY_EMPTY_FRAMES) or \
            (self.redetect_every and self._count % self.redetect_every == 0)
        if not stale and not self._discs and levels is None:
            return []                              # nothing found at this pose: wait for the retry
        if stale or levels is not None:
            if levels is None:
                levels = detect_levels(image, geometry) if self._background is None else \
                    self._background.get(image, geometry)
                if levels is None:                 # detecting in the background: not there yet
                    self._geometry = None
                    return []
            self._since_detection = 0
            self.levels = levels
            self._geometry = geometry
            self._discs = [(d.name, d.refined) for d in self.levels.discs if d.refined is not None]
            self._misses = [0] * len(self._discs)
            return measure_interspaces(image, geometry, self.levels)
        assert self.levels is not None and self.levels.frame is not None
        vf = self.levels.frame
        norm = vf.norm_image(np.asarray(image)).astype(np.float32)
        P = geometry.px_per_mm_at_isocentre
        new_discs = []
        for i, (name, rd) in enumerate(self._discs):
            new = remeasure_disc(norm, P, rd, vf.kind)
            if new is not None and _plausible(rd, new):
                new_discs.append((name, new))
                self._misses[i] = 0
            else:
                new_discs.append((name, rd))          # hold the last good lines
                self._misses[i] += 1
        lost = [i for i, m in enumerate(self._misses) if m >= 2 and (m - 2) % self.REACQUIRE_EVERY == 0]
        if lost:
            # lost for two frames (large motion, occlusion): search the longest-lost disc afresh
            i = max(lost, key=lambda k: self._misses[k])
            name, rd = new_discs[i]
            cand = refine_disc(norm, P, rd.centre, math.atan2(rd.a[1], rd.a[0]), vf.kind)
            if cand is not None and float(np.hypot(*(cand.centre - rd.centre))) < 6.0 * P:
                new_discs[i] = (name, cand)
                self._misses[i] = 0
        self._discs = new_discs
        return _centroid_heights(norm, geometry, vf, new_discs)
