"""Decompression (traction) monitoring: interspace heights against a baseline, and a verdict
against the planned distraction.

``verdict`` is a pure function (tested on its own); ``DecompressionMonitor`` feeds it with
the heights measured frame after frame on a lateral (``interspace.InterspaceTracker``),
averaging a few frames to beat the noise of a pulsed low-dose image.

Verdicts, checked in this order:

* ``no_baseline`` -- no baseline heights yet (or no monitored level seen in both);
* ``over_distracted`` -- a level opened more than ``planned + over_margin`` (by default the
  larger of 1 mm and half the plan);
* ``uneven`` -- the levels opened by amounts that differ by more than ``uneven_mm``
  (one level taking the pull while another stays shut);
* ``reached`` -- the median opening within the tolerance of the plan (by default the smaller
  of ``TOLERANCE_MAX_MM`` and ``TOLERANCE_FRACTION`` of the plan) and none short of it by
  more than twice that;
* ``not_reached`` -- otherwise (still ramping, or the pull is too weak).

With four or more levels the single most extreme level on each side is ignored for
"over_distracted" and "uneven" (one badly measured interspace -- low dose, the pelvis over
L5-S1 -- must not raise an alarm by itself). The defaults (at most 0.75 mm tolerance, 1.5 mm
spread) sit above the measurement noise of a single low-dose lateral (~0.45 mm mean error of
a height change). The tolerance is also at most 30 % of the plan: a fixed 0.75 mm called a
1.1 mm plan reached at 0.46 mm, while the pull was still ramping (development cases 15_010,
20_009, 25_006).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from openfluoro.guidance.interspace import InterspaceHeight

MONITORED = ("L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")
#: the default tolerance on the plan: the smaller of this (mm) ...
TOLERANCE_MAX_MM = 0.75
#: ... and this fraction of the planned opening
TOLERANCE_FRACTION = 0.3


def default_tolerance_mm(planned_mm: float) -> float:
    """How far short of the plan the median opening may be and still count as reached."""
    return min(TOLERANCE_MAX_MM, TOLERANCE_FRACTION * float(planned_mm))


@dataclass(frozen=True)
class DecompressionVerdict:
    verdict: str
    planned_mm: float
    changes_mm: Mapping[str, float]
    message: str
    baseline_mm: Mapping[str, float] = field(default_factory=dict)
    current_mm: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "planned_mm": self.planned_mm, "changes_mm": dict(self.changes_mm),
                "message": self.message, "baseline_mm": dict(self.baseline_mm), "current_mm": dict(self.current_mm)}


def verdict(changes_mm: Mapping[str, float], planned_mm: float, tolerance_mm: float | None = None,
            uneven_mm: float = 1.5, over_margin_mm: float | None = None) -> tuple[str, str]:
    """(verdict, message) for per-level openings against the plan (see module docstring).

    Robust to one bad level: with four or more levels the extremes are the second lowest and
    second highest; "reached" needs the median within ``tolerance_mm`` of the plan and the
    (robust) lowest within twice that."""
    if planned_mm <= 0:
        raise ValueError(f"planned distraction must be > 0 mm, got {planned_mm}")
    if not changes_mm:
        return "no_baseline", "no interspace measured in both the baseline and the current frame"
    if tolerance_mm is None:
        tolerance_mm = default_tolerance_mm(planned_mm)
    over = max(1.0, 0.5 * planned_mm) if over_margin_mm is None else over_margin_mm
    items = sorted(((float(v), k) for k, v in changes_mm.items()))
    n = len(items)
    lo_v, lo_k = items[1] if n >= 4 else items[0]
    hi_v, hi_k = items[-2] if n >= 4 else items[-1]
    central = float(np.median([v for v, _ in items]))
    listing = ", ".join(f"{k} {v:+.1f}" for v, k in items)
    if hi_v > planned_mm + over:
        return "over_distracted", (f"{hi_k} opened {hi_v:.1f} mm, more than the planned {planned_mm:.1f} mm + "
                                   f"{over:.1f} mm: reduce the pull ({listing} mm)")
    if n > 1 and hi_v - lo_v > uneven_mm:
        return "uneven", (f"uneven opening: {hi_k} {hi_v:+.1f} mm vs {lo_k} {lo_v:+.1f} mm "
                          f"(spread > {uneven_mm:.1f} mm)")
    if central >= planned_mm - tolerance_mm and lo_v >= planned_mm - 2.0 * tolerance_mm:
        return "reached", f"planned distraction reached: {listing} mm (plan {planned_mm:.1f} mm)"
    return "not_reached", f"not yet: median opening {central:+.1f} mm of the planned {planned_mm:.1f} mm ({listing})"


class DecompressionMonitor:
    """Baseline interspace heights, their change during traction, and the verdict."""

    def __init__(self, planned_mm: float, tolerance_mm: float | None = None, uneven_mm: float = 1.5,
                 levels: Sequence[str] = MONITORED, average_frames: int = 3, quantity: str = "middle_mm") -> None:
        if planned_mm <= 0:
            raise ValueError(f"planned distraction must be > 0 mm, got {planned_mm}")
        if quantity not in ("anterior_mm", "middle_mm", "posterior_mm"):
            raise ValueError(f"quantity must be anterior_mm, middle_mm or posterior_mm, got {quantity!r}")
        self.planned_mm = float(planned_mm)
        self.tolerance_mm = default_tolerance_mm(planned_mm) if tolerance_mm is None else float(tolerance_mm)
        self.uneven_mm = float(uneven_mm)
        self.levels = tuple(levels)
        self.quantity = quantity
        self._baseline_frames: list[dict[str, float]] = []
        self._recent: deque[dict[str, float]] = deque(maxlen=max(1, int(average_frames)))
        self.baseline: dict[str, float] = {}

    def _pick(self, heights: Iterable[InterspaceHeight]) -> dict[str, float]:
        return {h.name: float(getattr(h, self.quantity)) for h in heights if h.name in self.levels}

    def add_baseline(self, heights: Iterable[InterspaceHeight]) -> dict[str, float]:
        """Add one frame's heights to the baseline (the baseline is their per-level median)."""
        self._baseline_frames.append(self._pick(heights))
        names = set().union(*self._baseline_frames)
        self.baseline = {n: float(np.median([f[n] for f in self._baseline_frames if n in f])) for n in names}
        return self.baseline

    def update(self, heights: Iterable[InterspaceHeight]) -> DecompressionVerdict:
        self._recent.append(self._pick(heights))
        names = set().union(*self._recent)
        current = {n: float(np.mean([f[n] for f in self._recent if n in f])) for n in names}
        changes = {n: current[n] - self.baseline[n] for n in current if n in self.baseline}
        v, msg = verdict(changes, self.planned_mm, self.tolerance_mm, self.uneven_mm)
        return DecompressionVerdict(v, self.planned_mm, changes, msg, dict(self.baseline), current)
