"""Guidance overlays from the detectors (``openfluoro.guidance``), working on the frames alone.

``DetectedOverlay`` is an overlay source (see ``overlay``) that draws what the guidance stage
finds in each frame's pixels with its known imaging geometry -- as it would on a real
C-arm's video feed -- rather than the simulator's ground truth:

* needle line, tip and confidence (``PunctureGuide`` / ``NeedleTracker``), the target
  interspace, the distance to the target, warnings (off midline, heading for bone, beyond the
  sac) and the tip-to-dura distance once an AP-type and a lateral view have both seen it;
* the detected interspaces with their names (AP and lateral);
* on laterals, interspace calipers with the measured anterior/middle/posterior heights, and
  during traction the measured opening against the plan with the monitor's verdict
  (``DecompressionMonitor``; the baseline is measured on the laterals before traction).

Besides the pixels and the geometry it uses only what the operator and the machine know:
the needle plan the operator chose (level and target point), whether traction is set and
its planned distraction (the traction unit's set point), CSF seen at the hub, and the
patient's thecal sac when the CT's labels or the phantom provide it. Nothing else of the
frame's ground truth is read.

Each stream of frames needs its own state (trackers, baseline): the console calls
``fresh()`` for replays and cine exports so they never disturb the live trackers. A live
stream detects the levels of a new C-arm pose in the background (``BackgroundDetection``: the
frame path keeps the pace of the pulses, the labels follow a frame or two later); a cine
export (``fresh(live=False)``) detects them in line so that every exported frame has them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from openfluoro.console.overlay import (COLOR_ALERT, COLOR_CALIPER, COLOR_LEVEL, COLOR_NEEDLE, COLOR_TARGET,
                                        OverlayContext, Primitive)
from openfluoro.geometry.carm import Geometry
from openfluoro.guidance.background import BackgroundDetection
from openfluoro.guidance.decompression import DecompressionMonitor
from openfluoro.guidance.interspace import InterspaceHeight, InterspaceTracker
from openfluoro.guidance.levels import LevelResult, detect_levels, view_frame
from openfluoro.guidance.puncture import PunctureGuide, PunctureStatus

#: baseline frames averaged before traction (median per level)
BASELINE_FRAMES = 5


@dataclass(frozen=True)
class _Plan:
    level: str | None
    target_lps_mm: tuple[float, float, float] | None


def _r(p) -> list[float]:
    return [round(float(p[0]), 1), round(float(p[1]), 1)]


class DetectedOverlay:
    """Overlay source built on the guidance detectors (one instance per stream of frames)."""

    def __init__(self, live: bool = True) -> None:
        self._background = BackgroundDetection() if live else None
        self._guide: PunctureGuide | None = None
        self._plan: _Plan | None = None
        self._patient: Any = None
        self._heights = InterspaceTracker(background=self._background)
        self._baseline: list[list[InterspaceHeight]] = []
        self._monitor: DecompressionMonitor | None = None
        self._planned_mm = 0.0
        self._lateral_geometry: Geometry | None = None
        self._still: tuple[Geometry, LevelResult] | None = None

    def fresh(self, live: bool = True) -> "DetectedOverlay":
        """A new source with no state, for another stream (a replay; ``live=False``: an export)."""
        return DetectedOverlay(live=live)

    # ------------------------------------------------------------------ state
    def _guide_for(self, ctx: OverlayContext) -> PunctureGuide | None:
        plan = _Plan(ctx.needle_level, ctx.needle_target_lps_mm)
        if plan.level is None and plan.target_lps_mm is None:
            self._guide, self._plan = None, None         # no needle in the patient
            return None
        if self._guide is None or plan != self._plan or ctx.patient is not self._patient:
            self._guide = PunctureGuide(plan.level or "L3-L4", patient=ctx.patient,
                                        target_lps_mm=plan.target_lps_mm, background=self._background)
            self._plan, self._patient = plan, ctx.patient
        return self._guide

    def _traction(self, image: np.ndarray, geometry: Geometry, set_point_mm: float
                  ) -> tuple[list[InterspaceHeight], Any]:
        """Heights on a lateral; baseline while no traction is set, verdict while it is."""
        if self._lateral_geometry is not None and geometry != self._lateral_geometry:
            self._baseline, self._monitor = [], None         # new pose: a new baseline
        self._lateral_geometry = geometry
        heights = self._heights.update(image, geometry)
        if set_point_mm <= 0:
            self._monitor = None
            if heights:                                     # none while the levels are being found
                self._baseline = (self._baseline + [heights])[-BASELINE_FRAMES:]
            return heights, None
        if not self._baseline:
            return heights, None                            # traction set before any lateral: no baseline
        if self._monitor is None or abs(self._planned_mm - set_point_mm) > 1e-9:
            self._monitor = DecompressionMonitor(planned_mm=set_point_mm)
            for b in self._baseline:
                self._monitor.add_baseline(b)
            self._planned_mm = set_point_mm
        return heights, self._monitor.update(heights)

    def _levels_at(self, image: np.ndarray, geometry: Geometry) -> LevelResult | None:
        """Levels of a view with neither needle nor traction: detected once per C-arm pose."""
        if self._background is not None:
            return self._background.get(image, geometry)
        if self._still is None or self._still[0] != geometry:
            self._still = (geometry, detect_levels(image, geometry))
        return self._still[1]

    # ------------------------------------------------------------------ drawing
    def __call__(self, image: np.ndarray, geometry: Geometry, ground_truth: Mapping[str, Any],
                 ctx: OverlayContext) -> list[Primitive]:
        out: list[Primitive] = []
        scale = max(geometry.detector.image_rows, geometry.detector.image_cols) / 512.0
        image = np.asarray(image)
        kind = view_frame(geometry, image.shape).kind
        traction = ground_truth.get("traction") or {}
        set_point_mm = float(traction.get("target_per_disc_mm", 0.0))       # the traction unit's setting
        needle_gt = ground_truth.get("needle") or {}
        events = ("csf_return",) if needle_gt.get("csf_return") else ()  # CSF seen at the hub

        guide = self._guide_for(ctx)
        status: PunctureStatus | None = None
        levels: LevelResult | None = None
        if guide is not None:
            status = guide.update(image, geometry, events)
            levels = guide.levels_at(geometry)
        heights: list[InterspaceHeight] = []
        result = None
        if kind == "lateral":
            # measured on every lateral, so that a baseline exists when traction starts with a
            # needle in; shown as calipers during traction or when there is no needle
            heights, result = self._traction(image, geometry, set_point_mm)
            if levels is None:
                levels = self._heights.levels
            if guide is not None and set_point_mm <= 0:
                heights = []
        if levels is None:
            levels = self._levels_at(image, geometry)
        out += self._levels(levels, scale, heights)
        out += self._calipers(heights, kind)
        if status is not None:
            out += self._needle(status, scale, ctx)
        if result is not None:
            opened = _median_change(result.changes_mm)
            out.append({"kind": "progress", "label": "Decompression (measured)",
                        "value": max(0.0, min(1.0, opened / max(set_point_mm, 1e-6))),
                        "text": f"{result.verdict.replace('_', ' ')}, median {opened:+.1f} of {set_point_mm:.1f} mm"})
        return out

    @staticmethod
    def _levels(levels: LevelResult | None, scale: float, heights: list[InterspaceHeight]) -> list[Primitive]:
        if levels is None:
            return []
        measured = {h.name for h in heights}
        out: list[Primitive] = []
        for d in levels.discs:
            if not d.name or d.predicted or d.name in measured:    # a measured disc is shown by its caliper
                continue
            c = d.centre_px
            out.append({"kind": "marker", "at": _r(c), "shape": "diamond", "size": 3 * scale, "color": COLOR_LEVEL})
            out.append({"kind": "text", "at": [round(c[0] - 40 * scale, 1), round(c[1], 1)], "text": d.name,
                        "align": "right", "color": COLOR_LEVEL})
        return out

    @staticmethod
    def _calipers(heights: list[InterspaceHeight], kind: str) -> list[Primitive]:
        out: list[Primitive] = []
        if kind != "lateral":
            return out
        for h in heights:
            mid = h.calipers_px.get("middle")
            if mid is None or not h.name:
                continue
            out.append({"kind": "caliper", "a": _r(mid[0]), "b": _r(mid[1]), "color": COLOR_CALIPER, "side": "right",
                        "text": f"{h.name} {h.anterior_mm:.1f}/{h.middle_mm:.1f}/{h.posterior_mm:.1f} mm"})
        return out

    @staticmethod
    def _needle(st: PunctureStatus, scale: float, ctx: OverlayContext) -> list[Primitive]:
        out: list[Primitive] = []
        det = st.needle
        if st.target_px is not None:
            out.append({"kind": "marker", "at": _r(st.target_px), "shape": "cross", "size": 9 * scale,
                        "color": COLOR_TARGET, "label": f"target {st.target_level}"})
        if det.found:
            tip = _r(det.tip_px)
            out.append({"kind": "line", "points": [_r(det.tail_px), tip], "color": COLOR_NEEDLE, "width": 1})
            out.append({"kind": "marker", "at": tip, "shape": "circle", "size": 7 * scale,
                        "label": f"tip ({det.confidence:.0%})",
                        "color": COLOR_ALERT if st.warnings else COLOR_NEEDLE})
            if st.target_px is not None:
                out.append({"kind": "line", "points": [tip, _r(st.target_px)], "dash": True, "color": COLOR_TARGET,
                            "width": 1})
            lines = []
            if st.distance_to_target_mm is not None and math.isfinite(st.distance_to_target_mm):
                # in 3-D once an AP and a lateral have seen the needle; before, across this view only
                where = "" if st.needle_3d is not None else " in this view"
                lines.append(f"{st.distance_to_target_mm:.1f} mm to target{where}")
            if st.tip_level:
                lines.append(f"tip at {st.tip_level}")
            for i, s in enumerate(lines):          # right of the tip: the level labels sit on the left
                out.append({"kind": "text", "at": [round(tip[0] + 14 * scale, 1), round(tip[1] + (i * 14 - 14) * scale, 1)],
                            "text": s, "align": "left", "color": COLOR_TARGET})
        if st.csf_return:
            out.append({"kind": "banner", "level": "ok", "text": "CSF RETURN"})
        elif st.warnings:
            out.append({"kind": "banner", "level": "warn", "text": "; ".join(st.warnings)})
        elif st.messages:
            out.append({"kind": "banner", "level": "ok", "text": "; ".join(st.messages)})
        return out


def _median_change(changes_mm: Mapping[str, float]) -> float:
    return float(np.median(list(changes_mm.values()))) if changes_mm else 0.0
