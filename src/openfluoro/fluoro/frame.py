"""One acquired fluoroscopy frame and its metadata, as every consumer downstream sees it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from openfluoro.geometry.carm import CArmPose, Collimator, Detector, Geometry


@dataclass(frozen=True)
class Exposure:
    """Technique factors of one pulse (or one 1/fps slot of continuous fluoro)."""

    kvp: float
    ma: float
    pulse_ms: float
    pulse_rate_pps: float
    dose_mode: str = "normal"         # "low" | "normal" | "high"
    acquisition: str = "fluoro"       # "fluoro" | "spot"
    filtration_mm_al: float = 3.0
    filtration_mm_cu: float = 0.1

    @property
    def mas(self) -> float:
        return self.ma * self.pulse_ms / 1000.0


@dataclass(frozen=True)
class FrameDose:
    """Dose of this frame: air kerma at the interventional reference point and kerma-area product."""

    reference_air_kerma_mgy: float
    kap_gy_cm2: float


@dataclass(frozen=True, eq=False)
class Frame:
    """A processed frame (``image``: uint8, what the live monitor shows) with everything
    needed to archive it, dose it and check guidance against ground truth."""

    index: int
    time_s: float
    image: np.ndarray
    geometry: Geometry
    exposure: Exposure
    dose: FrameDose
    run_index: int = 0
    ground_truth: dict[str, Any] = field(default_factory=dict)
    events: tuple[str, ...] = ()
    #: the detector signal before the image chain (open-beam detected quanta), and the
    #: unattenuated level; recorded so a run can be replayed through another chain
    signal: np.ndarray | None = None
    i0: float | None = None

    def metadata(self) -> dict[str, Any]:
        """JSON-ready metadata (everything but the pixels)."""
        g = self.geometry
        return {
            "index": self.index,
            "run_index": self.run_index,
            "time_s": self.time_s,
            "exposure": asdict(self.exposure),
            "dose": asdict(self.dose),
            "pose": {**asdict(g.pose), "isocentre_lps_mm": list(g.pose.isocentre_lps_mm)},
            "detector": asdict(g.detector),
            "collimator": asdict(g.collimator),
            "ground_truth": self.ground_truth,
            "events": list(self.events),
            "i0": self.i0,
        }


def geometry_from_metadata(meta: dict[str, Any]) -> Geometry:
    """Rebuild the imaging geometry from ``Frame.metadata()`` output."""
    pose = dict(meta["pose"])
    pose["isocentre_lps_mm"] = tuple(pose["isocentre_lps_mm"])
    return Geometry(CArmPose(**pose), Detector(**meta["detector"]), Collimator(**meta["collimator"]))
