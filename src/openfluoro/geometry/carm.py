"""C-arm geometry: pose, flat-panel detector, collimator and projection matrices.

Coordinates are DICOM patient LPS millimetres (+x patient left, +y posterior,
+z superior). Angles follow DICOM PS3.3 C.8.7.5 (Positioner Primary/Secondary
Angle), read as the direction from the isocentre to the detector:

* primary angle ``alpha``: rotation about the patient's cranio-caudal axis;
  0 deg = detector in front of the patient's chest (anterior), +90 = detector at
  the patient's left (LAO 90), -90 = at the patient's right (RAO 90);
* secondary angle ``beta``: +90 = detector toward the head (CRA), -90 = caudal.

The unit vector from isocentre to detector is therefore

    d = (sin a cos b, -cos a cos b, sin b)

and the detector's in-plane axes are the images of patient-left (+x, image
columns) and inferior (-z, image rows) under the same rotation, so at 0/0 the
image shows the patient with the head up and the patient's left on the right
(looking from the detector side); the image chain flips for display.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class Detector:
    """A flat-panel detector. ``pixel_pitch_mm`` is the native (unbinned) pitch."""

    rows: int = 1024
    cols: int = 1024
    pixel_pitch_mm: float = 300.0 / 1024.0
    binning: int = 1

    def __post_init__(self) -> None:
        if self.rows <= 0 or self.cols <= 0:
            raise ValueError(f"Detector rows/cols must be positive, got {self.rows}x{self.cols}")
        if self.pixel_pitch_mm <= 0:
            raise ValueError(f"Detector pixel_pitch_mm must be positive, got {self.pixel_pitch_mm}")
        if self.binning not in (1, 2, 3, 4):
            raise ValueError(f"Detector binning must be 1, 2, 3 or 4, got {self.binning}")
        if self.rows % self.binning or self.cols % self.binning:
            raise ValueError(f"Detector {self.rows}x{self.cols} is not divisible by binning {self.binning}")

    @property
    def image_rows(self) -> int:
        return self.rows // self.binning

    @property
    def image_cols(self) -> int:
        return self.cols // self.binning

    @property
    def image_pitch_mm(self) -> float:
        """Pitch of one image pixel after binning."""
        return self.pixel_pitch_mm * self.binning

    @property
    def width_mm(self) -> float:
        return self.cols * self.pixel_pitch_mm

    @property
    def height_mm(self) -> float:
        return self.rows * self.pixel_pitch_mm

    @classmethod
    def square(cls, size_px: int, field_mm: float = 300.0) -> "Detector":
        """A square panel of ``field_mm`` side imaged at ``size_px`` pixels (no binning)."""
        return cls(rows=size_px, cols=size_px, pixel_pitch_mm=field_mm / size_px)


@dataclass(frozen=True)
class Collimator:
    """Rectangular collimation, as the field size projected onto the detector plane.

    ``None`` width/height means fully open (the whole detector).
    """

    width_mm: float | None = None
    height_mm: float | None = None
    centre_u_mm: float = 0.0
    centre_v_mm: float = 0.0

    def field_mm(self, detector: Detector) -> tuple[float, float]:
        """(width, height) of the irradiated field at the detector plane, clipped to the panel."""
        w = detector.width_mm if self.width_mm is None else min(self.width_mm, detector.width_mm)
        h = detector.height_mm if self.height_mm is None else min(self.height_mm, detector.height_mm)
        return float(w), float(h)

    def mask(self, detector: Detector) -> np.ndarray:
        """Boolean (rows, cols) image, True where the primary beam reaches the detector."""
        w, h = self.field_mm(detector)
        u, v = pixel_offsets_mm(detector)
        inside_u = np.abs(u - self.centre_u_mm) <= w / 2
        inside_v = np.abs(v - self.centre_v_mm) <= h / 2
        return inside_v[:, None] & inside_u[None, :]

    def field_px(self, detector: Detector) -> tuple[int, int, int, int] | None:
        """The irradiated field as image pixels ``(row0, row1, col0, col1)`` (half-open), or
        None when the field is the whole panel: what the image chain windows on."""
        m = self.mask(detector)
        if m.all():
            return None
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if rows.size == 0:
            raise ValueError(f"Collimator {self}: the field misses the {detector.rows}x{detector.cols} panel")
        return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def pixel_offsets_mm(detector: Detector) -> tuple[np.ndarray, np.ndarray]:
    """In-plane offsets (u along columns, v along rows) of image-pixel centres from the panel centre."""
    p = detector.image_pitch_mm
    u = (np.arange(detector.image_cols) - (detector.image_cols - 1) / 2.0) * p
    v = (np.arange(detector.image_rows) - (detector.image_rows - 1) / 2.0) * p
    return u, v


@dataclass(frozen=True)
class CArmPose:
    """Where the C-arm is relative to the patient.

    ``isocentre_lps_mm`` is the C-arm isocentre expressed in patient coordinates;
    moving the table moves the patient, which moves this point (see ``moved_table``).
    """

    primary_deg: float = 0.0
    secondary_deg: float = 0.0
    sid_mm: float = 1000.0
    sod_mm: float = 700.0
    isocentre_lps_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        iso = tuple(float(v) for v in np.asarray(self.isocentre_lps_mm, dtype=float).ravel())
        if len(iso) != 3:
            raise ValueError(f"CArmPose isocentre_lps_mm needs 3 coordinates, got {self.isocentre_lps_mm!r}")
        object.__setattr__(self, "isocentre_lps_mm", iso)        # a plain tuple: immutable, hashable
        if not (0 < self.sod_mm < self.sid_mm):
            raise ValueError(
                f"CArmPose needs 0 < sod_mm < sid_mm, got sod_mm={self.sod_mm}, sid_mm={self.sid_mm}"
            )
        if not (-180.0 <= self.primary_deg <= 180.0):
            raise ValueError(f"CArmPose primary_deg must be in [-180, 180], got {self.primary_deg}")
        if not (-90.0 <= self.secondary_deg <= 90.0):
            raise ValueError(f"CArmPose secondary_deg must be in [-90, 90], got {self.secondary_deg}")

    # -- directions -----------------------------------------------------------------
    def rotation(self) -> np.ndarray:
        """3x3 rotation taking the 0/0 frame to this pose: R = Rz(primary) @ Rx(-secondary)
        (read-only: computed once per pair of angles, as the guidance asks for it per call)."""
        return _rotation(self.primary_deg, self.secondary_deg)

    @property
    def to_detector(self) -> np.ndarray:
        """Unit vector from isocentre toward the detector (the beam direction)."""
        return self.rotation() @ np.array([0.0, -1.0, 0.0])

    @property
    def u_axis(self) -> np.ndarray:
        """Unit vector of increasing image column on the detector."""
        return self.rotation() @ np.array([1.0, 0.0, 0.0])

    @property
    def v_axis(self) -> np.ndarray:
        """Unit vector of increasing image row on the detector."""
        return self.rotation() @ np.array([0.0, 0.0, -1.0])

    @property
    def isocentre(self) -> np.ndarray:
        return np.asarray(self.isocentre_lps_mm, dtype=float)

    @property
    def source_lps_mm(self) -> np.ndarray:
        return self.isocentre - self.sod_mm * self.to_detector

    @property
    def detector_centre_lps_mm(self) -> np.ndarray:
        return self.isocentre + (self.sid_mm - self.sod_mm) * self.to_detector

    @property
    def magnification(self) -> float:
        """Geometric magnification of an object at the isocentre."""
        return self.sid_mm / self.sod_mm

    # -- moves ------------------------------------------------------------------------
    def rotated(self, primary_deg: float | None = None, secondary_deg: float | None = None) -> "CArmPose":
        return replace(
            self,
            primary_deg=self.primary_deg if primary_deg is None else primary_deg,
            secondary_deg=self.secondary_deg if secondary_deg is None else secondary_deg,
        )

    def moved_table(self, delta_lps_mm: tuple[float, float, float]) -> "CArmPose":
        """Move the table (and the patient on it) by ``delta``: the isocentre moves by ``-delta``
        in patient coordinates."""
        iso = self.isocentre - np.asarray(delta_lps_mm, dtype=float)
        return replace(self, isocentre_lps_mm=(float(iso[0]), float(iso[1]), float(iso[2])))


@dataclass(frozen=True)
class Geometry:
    """A complete imaging geometry: pose, detector and collimation."""

    pose: CArmPose = field(default_factory=CArmPose)
    detector: Detector = field(default_factory=Detector)
    collimator: Collimator = field(default_factory=Collimator)

    @property
    def px_per_mm_at_isocentre(self) -> float:
        """Image pixels per millimetre of an object in the isocentre plane (parallel to the detector)."""
        return self.pose.magnification / self.detector.image_pitch_mm

    def projection_matrix(self) -> np.ndarray:
        """3x4 matrix P mapping homogeneous LPS mm to homogeneous image (col, row) pixel indices.

        For a point X: ``[c*w, r*w, w] = P @ [X, 1]``; ``w`` is the distance from the
        source along the beam axis, so ``w > 0`` for points between source and detector.
        """
        return _projection_matrix(self.pose, self.detector)

    def project(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """Project (N, 3) LPS points to (N, 2) image (col, row) coordinates."""
        pts = np.atleast_2d(np.asarray(points_lps_mm, dtype=float))
        h = np.hstack([pts, np.ones((pts.shape[0], 1))]) @ self.projection_matrix().T
        return h[:, :2] / h[:, 2:3]

    def pixel_positions_lps_mm(self) -> np.ndarray:
        """(rows, cols, 3) LPS positions of every image-pixel centre on the detector."""
        u, v = pixel_offsets_mm(self.detector)
        c = self.pose.detector_centre_lps_mm
        return (
            c[None, None, :]
            + u[None, :, None] * self.pose.u_axis[None, None, :]
            + v[:, None, None] * self.pose.v_axis[None, None, :]
        )

    def field_area_at_isocentre_cm2(self) -> float:
        """Collimated field area scaled to the isocentre plane (for kerma-area product)."""
        w, h = self.collimator.field_mm(self.detector)
        scale = (self.pose.sod_mm / self.pose.sid_mm) ** 2
        return w * h * scale / 100.0

    def with_pose(self, pose: CArmPose) -> "Geometry":
        return replace(self, pose=pose)


def _read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@lru_cache(maxsize=256)
def _rotation(primary_deg: float, secondary_deg: float) -> np.ndarray:
    a = np.deg2rad(primary_deg)
    b = np.deg2rad(secondary_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(-b), -np.sin(-b)], [0, np.sin(-b), np.cos(-b)]])
    return _read_only(rz @ rx)


@lru_cache(maxsize=256)
def _projection_matrix(pose: CArmPose, det: Detector) -> np.ndarray:
    s = pose.source_lps_mm
    d, u, v = pose.to_detector, pose.u_axis, pose.v_axis
    f = pose.sid_mm / det.image_pitch_mm
    c0 = (det.image_cols - 1) / 2.0
    r0 = (det.image_rows - 1) / 2.0
    m = np.vstack([f * u + c0 * d, f * v + r0 * d, d])
    return _read_only(np.hstack([m, -(m @ s)[:, None]]))


# Named standard views: (primary_deg, secondary_deg). The view name says where the beam
# enters and leaves the patient: "AP" = enters anterior, detector posterior.
STANDARD_VIEWS: Mapping[str, tuple[float, float]] = {
    "PA": (0.0, 0.0),
    "AP": (180.0, 0.0),
    "lateral_left": (90.0, 0.0),     # left side against the detector (LAO 90)
    "lateral_right": (-90.0, 0.0),   # right side against the detector (RAO 90)
    "LAO45": (45.0, 0.0),
    "RAO45": (-45.0, 0.0),
    "LPO45": (135.0, 0.0),           # detector behind the patient's left side
    "RPO45": (-135.0, 0.0),
}
VIEW_ALIASES: Mapping[str, str] = {"lateral": "lateral_left", "oblique_left": "LPO45", "oblique_right": "RPO45"}


def standard_view(name: str, base: CArmPose | None = None) -> CArmPose:
    """The pose for a named view, keeping distances and isocentre from ``base``."""
    key = VIEW_ALIASES.get(name, name)
    if key not in STANDARD_VIEWS:
        known = ", ".join(sorted(set(STANDARD_VIEWS) | set(VIEW_ALIASES)))
        raise ValueError(f"unknown view {name!r}; known views: {known}")
    primary, secondary = STANDARD_VIEWS[key]
    return (base or CArmPose()).rotated(primary, secondary)
