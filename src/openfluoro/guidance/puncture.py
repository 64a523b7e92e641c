"""Lumbar-puncture guidance from the frames: target level and interspace, the needle track
against the interlaminar window, distance to the target, warnings and CSF return.

``PunctureGuide.update(image, geometry, events)`` is called for every frame of a session (any
view); it keeps a needle tracker and the detected levels per C-arm pose, and combines the
latest AP-type and lateral-type detections into a 3-D tip by triangulation.

What it reports (``PunctureStatus``):

* the needle (line, tip, confidence) and the interspace nearest its tip, by name;
* AP views: whether the tip lies over the target interlaminar window (between the target
  interspace's endplates, within ``window_half_width_mm`` of the midline) and its distance
  off the midline (warning beyond ``midline_tol_mm``);
* lateral views: where the track, extended from the tip, meets the back of the canal (the
  laminae): between the target interspace's endplates it heads through the window, else for
  bone; a tip in front of the back of the vertebral bodies is beyond the sac;
* with two views: the tip in 3-D, the distance to the target (planned target point if given,
  else the target interspace in the image) and, when the patient has a sac (label map or
  phantom landmarks), the distance to the dura along the needle's axis;
* ``csf_return`` when the frame's events report it (the operator sees CSF at the hub);
* a warning when an AP and a lateral of the same patient position name an interspace
  differently: one of the two counts is wrong; both views then show the count that the two
  views' naming evidence together supports best (``levels.reconcile_names``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from openfluoro.geometry.carm import Geometry
from openfluoro.guidance.depth import Needle3D, SacDistance, SacModel, distance_to_sac, epipolar_line, needle_from_views
from openfluoro.guidance.background import RETRY_EMPTY_FRAMES, BackgroundDetection, pose_key
from openfluoro.guidance.levels import (LevelResult, count_uncertain, detect_levels, endplate_segments,
                                        reconcile_names, view_frame)
from openfluoro.guidance.needle import NOT_FOUND, NeedleDetection, NeedleTracker

#: canal depth behind the posterior body line assumed to reach the laminae (mm)
CANAL_DEPTH_MM = 16.0


@dataclass(frozen=True)
class PunctureStatus:
    target_level: str
    view: str
    needle: NeedleDetection
    tip_level: str | None = None
    on_target_level: bool | None = None
    in_window: bool | None = None
    off_midline_mm: float | None = None
    heading: str | None = None
    needle_3d: Needle3D | None = None
    distance_to_target_mm: float | None = None
    distance_to_sac: SacDistance | None = None
    csf_return: bool = False
    target_px: tuple[float, float] | None = None
    warnings: tuple[str, ...] = ()
    messages: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"target_level": self.target_level, "view": self.view, "needle": self.needle.to_dict(),
                "tip_level": self.tip_level, "on_target_level": self.on_target_level, "in_window": self.in_window,
                "off_midline_mm": self.off_midline_mm, "heading": self.heading,
                "needle_3d": None if self.needle_3d is None else self.needle_3d.to_dict(),
                "distance_to_target_mm": self.distance_to_target_mm,
                "distance_to_sac_mm": None if self.distance_to_sac is None else self.distance_to_sac.distance_mm,
                "csf_return": self.csf_return, "target_px": None if self.target_px is None else list(self.target_px),
                "warnings": list(self.warnings), "messages": list(self.messages)}


@dataclass
class _PoseState:
    geometry: Geometry
    tracker: NeedleTracker
    levels: LevelResult | None = None
    last: NeedleDetection = field(default_factory=lambda: NOT_FOUND)
    frames_since_detection: int = 0


def _point_line_distance(p, a, d) -> float:
    d = np.asarray(d, float) / np.linalg.norm(d)
    q = np.asarray(p, float) - np.asarray(a, float)
    return float(abs(q[0] * d[1] - q[1] * d[0]))


class PunctureGuide:
    """Guidance for one lumbar puncture at ``target_level`` (e.g. "L3-L4")."""

    def __init__(self, target_level: str = "L3-L4", patient: Any = None, target_lps_mm: Sequence[float] | None = None,
                 midline_tol_mm: float = 5.0, window_half_width_mm: float = 8.0,
                 background: BackgroundDetection | None = None) -> None:
        """``background``: detect the levels of a new C-arm pose, and search the whole frame
        for the needle, off the frame path (live sessions); without it both run in line."""
        self._background = background
        self.target_level = target_level
        self.target_lps_mm = None if target_lps_mm is None else np.asarray(target_lps_mm, float)
        self.sac = SacModel(patient) if patient is not None else None
        self.midline_tol_mm = midline_tol_mm
        self.window_half_width_mm = window_half_width_mm
        self._poses: dict[tuple, _PoseState] = {}
        self._latest: dict[str, tuple[Geometry, NeedleDetection]] = {}
        self.csf_return = False
        self._named: tuple[LevelResult, LevelResult, tuple[LevelResult, LevelResult]] | None = None

    def _state(self, image: np.ndarray, geometry: Geometry) -> _PoseState:
        key = pose_key(geometry)
        st = self._poses.get(key)
        if st is None:
            st = _PoseState(geometry, NeedleTracker(background=self._background))
            self._poses[key] = st
        st.frames_since_detection += 1
        if self._background is not None:
            if st.levels is None or not st.levels.discs:
                found = self._background.peek(geometry)           # requested at the end of update
                if found is not None and found is not st.levels:
                    self._adopt(st, found)
        elif st.levels is None or (not st.levels.discs and st.frames_since_detection >= RETRY_EMPTY_FRAMES):
            self._adopt(st, detect_levels(image, geometry))
            st.frames_since_detection = 0
        return st

    def _adopt(self, st: _PoseState, levels: LevelResult) -> None:
        """The levels of a pose, and what its needle tracker learns from them: the midline (AP)
        and the endplates, which are not the needle (lateral)."""
        st.levels = levels
        mid = self._midline(levels)
        if mid is not None:
            st.tracker.midline_px, st.tracker.midline_dir = mid
        if levels.view == "lateral":
            st.tracker.exclude_segments = endplate_segments(levels)

    def levels_at(self, geometry: Geometry) -> LevelResult | None:
        """The levels detected at this C-arm pose (None before its first frame)."""
        st = self._poses.get(pose_key(geometry))
        return None if st is None else st.levels

    def _one_count(self, ap: _PoseState, lat: _PoseState) -> tuple[LevelResult, LevelResult]:
        """``reconcile_names`` for this pair of poses' levels (the AP named from the lateral,
        the lateral), computed once per pair."""
        if self._named is None or self._named[0] is not ap.levels or self._named[1] is not lat.levels:
            self._named = (ap.levels, lat.levels, reconcile_names(ap.levels, ap.geometry, lat.levels, lat.geometry))
        return self._named[2]

    @staticmethod
    def _midline(levels: LevelResult) -> tuple[tuple[float, float], tuple[float, float]] | None:
        if levels.view != "ap" or len(levels.discs) < 2:
            return None
        pts = np.array([d.centre_px for d in levels.discs])
        c = pts.mean(0)
        _, _, vt = np.linalg.svd(pts - c)
        d = vt[0]
        return (float(c[0]), float(c[1])), (float(d[0]), float(d[1]))

    def update(self, image: np.ndarray, geometry: Geometry, events: Sequence[str] = ()) -> PunctureStatus:
        st = self._state(image, geometry)
        levels = st.levels
        own: tuple[LevelResult | None, ...] = (levels,)       # each view's own count
        conflicts: tuple[tuple[str, str], ...] = ()
        view = levels.view if levels is not None else view_frame(geometry, np.shape(image)).kind
        if levels is not None:
            # the other view of the same patient position: one count for both (an AP takes the
            # lateral's names; where the two disagree, the count both views' evidence supports
            # best), and a warning in either view, since one of the counts was wrong
            other_kind = "lateral" if view == "ap" else "ap"
            pair = next((o for o in self._poses.values() if o.levels is not None and o.levels.view == other_kind
                         and o.geometry.pose.isocentre_lps_mm == geometry.pose.isocentre_lps_mm), None)
            if pair is not None:
                own = (levels, pair.levels)
                ap_st = st if view == "ap" else pair
                lat_st = pair if view == "ap" else st
                named_ap, named_lat = self._one_count(ap_st, lat_st)
                conflicts = named_ap.name_conflicts
                levels = named_ap if view == "ap" else named_lat
        # the other view's tip constrains which end of a foreshortened needle is the tip
        other = self._latest.get("lateral" if view == "ap" else "ap")
        st.tracker.epipolar_line = None
        if other is not None and other[1].found:
            st.tracker.epipolar_line = epipolar_line(other[0], other[1].tip_px, geometry)
        det = st.tracker.update(image, geometry)
        st.last = det
        if det.found:
            self._latest[view] = (geometry, det)
        if any("csf_return" in e for e in events):
            self.csf_return = True
        P = geometry.px_per_mm_at_isocentre
        warnings: list[str] = []
        messages: list[str] = []
        if conflicts:
            ap_name, lat_name = conflicts[0]
            warnings.append(f"levels disagree: AP {ap_name} = lateral {lat_name}; count them")
        elif count_uncertain(*own):
            warnings.append("level count uncertain; count them")
        target = levels.disc(self.target_level) if levels is not None else None
        tip_level = on_level = in_window = heading = None
        off_mid = None
        target_px = None
        if levels is not None and det.found and levels.discs:
            tip = np.asarray(det.tip_px)
            near = min(levels.discs, key=lambda dd: float(np.hypot(*(np.asarray(dd.centre_px) - tip))))
            tip_level = near.name
            if tip_level is not None:
                on_level = tip_level == self.target_level
        if target is not None:
            target_px = target.centre_px
        if view == "ap" and levels is not None:
            mid = self._midline(levels)
            if mid is not None and det.found:
                off_mid = _point_line_distance(det.tip_px, mid[0], mid[1]) / P
                if off_mid > self.midline_tol_mm:
                    warnings.append(f"off midline by {off_mid:.1f} mm")
            if target is not None and target.upper is not None and det.found:
                tip = np.asarray(det.tip_px)
                y_up = 0.5 * (target.upper.p0[1] + target.upper.p1[1])
                y_lo = 0.5 * (target.lower.p0[1] + target.lower.p1[1])
                lo, hi = sorted((y_up, y_lo))
                within_rows = lo - 4.0 * P <= tip[1] <= hi + 4.0 * P
                within_cols = off_mid is None or off_mid <= self.window_half_width_mm
                in_window = bool(within_rows and within_cols)
        elif view == "lateral" and target is not None and target.refined is not None and det.found:
            rd = target.refined
            vf = levels.frame
            tip_n, tail_n = vf.to_norm([det.tip_px, det.tail_px])
            d = tip_n - tail_n
            d = d / max(np.hypot(*d), 1e-9)
            u_back = rd.u_back
            u_lam = u_back + CANAL_DEPTH_MM * P
            tip_u = float((tip_n - rd.c) @ rd.a)
            # where the track (extended either way) crosses u = u_lam and u = u_back
            du = float(d @ rd.a)
            if abs(du) > 1e-3:
                t = (u_lam - tip_u) / du
                cross = tip_n + t * d
                v = float((cross - rd.c) @ rd.n)
                v_up = rd.upper[0] + rd.upper[1] * u_lam
                v_lo = rd.lower[0] + rd.lower[1] * u_lam
                if v < v_up - 3.0 * P:
                    heading = "bone above (lamina of the upper vertebra)"
                elif v > v_lo + 3.0 * P:
                    heading = "bone below (lamina of the lower vertebra)"
                else:
                    heading = "interlaminar window"
                in_window = heading == "interlaminar window"
                if not in_window:
                    warnings.append(f"heading for {heading}")
            if tip_u < u_back - 1.0 * P:
                warnings.append("tip beyond the sac (in front of the posterior vertebral line)")
            back = rd.c + (u_back + 0.5 * CANAL_DEPTH_MM * P) * rd.a + \
                0.5 * ((rd.upper[0] + rd.lower[0]) + (rd.upper[1] + rd.lower[1]) * u_back) * rd.n
            target_px = tuple(map(float, vf.from_norm([back])[0]))
        # three dimensions from the latest AP-type and lateral-type detections
        n3 = dist_target = sacd = None
        if "ap" in self._latest and "lateral" in self._latest:
            (ga, da), (gl, dl) = self._latest["ap"], self._latest["lateral"]
            try:
                n3 = needle_from_views([ga, gl], [da.tip_px, dl.tip_px], [da.tail_px, dl.tail_px])
            except (ValueError, np.linalg.LinAlgError):
                n3 = None
            if n3 is not None:
                if n3.ray_gap_mm > 3.0:
                    warnings.append(f"views disagree by {n3.ray_gap_mm:.1f} mm (needle moved between views?)")
                if self.target_lps_mm is not None:
                    dist_target = float(np.linalg.norm(np.asarray(n3.tip_lps_mm) - self.target_lps_mm))
                if self.sac is not None and n3.axis_lps is not None:
                    sacd = distance_to_sac(n3.tip_lps_mm, n3.axis_lps, self.sac)
                    if sacd is not None:
                        if sacd.inside:
                            messages.append(f"tip in the thecal sac ({-sacd.distance_mm:.1f} mm past the dura)")
                        elif math.isfinite(sacd.distance_mm):
                            messages.append(f"dura {sacd.distance_mm:.1f} mm ahead along the needle")
                        else:
                            warnings.append("the needle's axis misses the thecal sac")
        if dist_target is None and target_px is not None and det.found:
            dist_target = float(np.hypot(*(np.asarray(det.tip_px) - np.asarray(target_px)))) / P
        if self.csf_return:
            messages.append("CSF return")
        if tip_level is not None and on_level is False:
            warnings.append(f"needle at {tip_level}, target {self.target_level}")
        if not det.found:
            messages.append("needle not found")
        if self._background is not None and (st.levels is None or not st.levels.discs):
            self._background.request(image, geometry)     # after this frame's own work
        return PunctureStatus(self.target_level, view, det, tip_level, on_level, in_window, off_mid, heading, n3,
                              dist_target, sacd, self.csf_return, target_px, tuple(warnings), tuple(messages))
