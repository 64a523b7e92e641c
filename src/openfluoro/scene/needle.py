"""A spinal needle (Quincke bevel) and its pose in patient LPS millimetres.

Geometry
--------
A spinal needle with its stylet in place is modelled as a **solid stainless-steel
cylinder** of the cannula's outer diameter: the stylet fills the lumen (the small
stylet/lumen clearance, a few per cent of the cross-section, is ignored) and ends flush
with the bevel. The plastic hub and stylet cap are nearly radiolucent and are not
modelled: the steel starts at the hub end of the shaft.

The shaft runs from the hub centre ``H`` along the unit axis ``a`` (hub -> tip) for
``length_mm``. The Quincke tip is one oblique plane cut: a plane making
``bevel_angle_deg`` with the axis, whose face looks toward ``bevel_face`` (a unit vector
perpendicular to the axis). The sharp point -- ``tip_lps_mm`` -- lies on the cylinder
surface on the side *opposite* the bevel face, at axial distance ``length_mm`` from the
hub; the bevel's heel, on the face side, is ``bevel_length_mm = 2 r / tan(bevel_angle)``
behind it. Points of the needle satisfy

* ``|(x - H) - ((x - H).a) a| <= r``          (inside the infinite cylinder),
* ``(x - H).a >= 0``                           (on the tip side of the hub end plane),
* ``(x - T).n <= 0`` with ``n = sin(bevel) a + cos(bevel) bevel_face`` (behind the bevel).

The bevel cuts away exactly half of the last ``bevel_length_mm`` of the cylinder (the cut
is centrally symmetric about the bevel's centre), so the steel volume is
``pi r^2 (length_mm - r / tan(bevel_angle))``.

Pose
----
The needle is placed by its skin **entry point** (on the axis), its **direction**
(hub -> tip) and its **inserted depth** (axial distance from the entry point to the
tip). ``advanced``/``withdrawn`` slide it along its axis; ``steered`` pivots it about
the entry point; ``rolled`` turns the bevel about the axis. All return new instances.

Sources
-------
Outer diameters: nominal outer diameters of regular-wall hypodermic tubing in the
Stubs (Birmingham) iron wire gauge as tabulated in the "Needle gauge comparison chart"
(Wikipedia, which cites ISO 9626:1991/Amd 1:2001 "Stainless steel needle tubing for the
manufacture of medical devices"); values are thousandths of an inch, converted exactly.

Bevel angle: no standard fixes the Quincke bevel angle; it is a "medium" cutting bevel,
between the ~12 deg regular and ~18 deg short hypodermic bevels and blunter cuts. The
default ``QUINCKE_BEVEL_ANGLE_DEG = 20`` is an assumption, a parameter to override, not
a measured value. (Bevelled needles deflect *away* from the bevel face, about 1 mm per
cm of travel in tough tissue: Drummond & Scott, Anaesthesia 35 (1980) 854-857; this
module does not model deflection -- use ``steered``.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from openfluoro.scene.materials import RHO_STEEL

#: Nominal outer diameter in inches (Stubs iron wire gauge, regular-wall needle tubing).
GAUGE_OD_INCH: Mapping[int, float] = {
    18: 0.05000,
    19: 0.04200,
    20: 0.03575,
    21: 0.03225,
    22: 0.02825,
    23: 0.02525,
    24: 0.02225,
    25: 0.02025,
}
#: Nominal outer diameter in mm (18G 1.270, 20G 0.908, 22G 0.718, 25G 0.514 ...).
GAUGE_OD_MM: Mapping[int, float] = {g: d * 25.4 for g, d in GAUGE_OD_INCH.items()}

QUINCKE_BEVEL_ANGLE_DEG = 20.0     #: assumed (see module docstring)
BEVELS: tuple[str, ...] = ("quincke",)
#: Accepted shaft lengths. Spinal needles are sold from 3.5" (88.9 mm, labelled "90 mm")
#: to 6" (152 mm) and beyond; the range is kept generous.
LENGTH_RANGE_MM = (25.0, 200.0)
BEVEL_ANGLE_RANGE_DEG = (5.0, 60.0)
MAX_STEER_DEG = 90.0

_AXIS_NAMES: Mapping[str, tuple[float, float, float]] = {
    "L": (1.0, 0.0, 0.0), "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0), "A": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0), "I": (0.0, 0.0, -1.0),
    "x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0),
}


class NeedleError(ValueError):
    """Bad needle parameters or an impossible move; the message names the field."""


def _vec3(value: Any, name: str) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise NeedleError(f"Needle.{name}: expected 3 finite numbers (LPS), got {value!r}") from exc
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        raise NeedleError(f"Needle.{name}: expected 3 finite numbers (LPS), got {value!r}")
    return v


def _unit(value: Any, name: str) -> np.ndarray:
    v = _vec3(value, name)
    n = float(np.linalg.norm(v))
    if n < 1e-12:
        raise NeedleError(f"Needle.{name}: expected a non-zero direction vector, got {value!r}")
    return v / n


def _tuple(v: np.ndarray) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))


def _rotate(v: np.ndarray, axis_unit: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues rotation of ``v`` about ``axis_unit`` by ``angle_rad`` (right-handed)."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return v * c + np.cross(axis_unit, v) * s + axis_unit * float(axis_unit @ v) * (1.0 - c)


def _default_bevel_face(axis: np.ndarray) -> np.ndarray:
    """Bevel facing superior (+S) where possible, else posterior (+P): perpendicular to ``axis``."""
    for ref in ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0)):
        r = np.asarray(ref)
        p = r - float(r @ axis) * axis
        if np.linalg.norm(p) > 0.1:
            return p / np.linalg.norm(p)
    raise AssertionError("unreachable: +S and +P cannot both be parallel to one axis")


@dataclass(frozen=True)
class Needle:
    """A Quincke spinal needle (solid steel with the stylet in) and its pose.

    ``entry_lps_mm``: skin entry point, on the needle axis. ``direction_lps``: hub -> tip
    (normalised on construction). ``inserted_depth_mm``: axial distance from the entry
    point to the tip, in ``[0, length_mm]``. ``bevel_face_lps``: where the bevel face
    looks (made perpendicular to the axis and normalised; ``None`` = superior, or
    posterior for a cranio-caudal needle).
    """

    gauge: int = 22
    length_mm: float = 90.0
    entry_lps_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction_lps: tuple[float, float, float] = (0.0, -1.0, 0.0)
    inserted_depth_mm: float = 0.0
    bevel: str = "quincke"
    bevel_angle_deg: float = QUINCKE_BEVEL_ANGLE_DEG
    bevel_face_lps: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.gauge, bool) or not isinstance(self.gauge, (int, np.integer)) \
                or int(self.gauge) not in GAUGE_OD_MM:
            raise NeedleError(
                f"Needle.gauge: expected an integer gauge in {min(GAUGE_OD_MM)}..{max(GAUGE_OD_MM)} "
                f"(Stubs / ISO 9626 table), got {self.gauge!r}")
        object.__setattr__(self, "gauge", int(self.gauge))
        lo, hi = LENGTH_RANGE_MM
        if not (isinstance(self.length_mm, (int, float, np.floating)) and lo <= float(self.length_mm) <= hi):
            raise NeedleError(f"Needle.length_mm: expected a shaft length in [{lo}, {hi}] mm, got {self.length_mm!r}")
        object.__setattr__(self, "length_mm", float(self.length_mm))
        if self.bevel not in BEVELS:
            raise NeedleError(f"Needle.bevel: expected one of {BEVELS}, got {self.bevel!r}")
        alo, ahi = BEVEL_ANGLE_RANGE_DEG
        if not (isinstance(self.bevel_angle_deg, (int, float, np.floating))
                and alo <= float(self.bevel_angle_deg) <= ahi):
            raise NeedleError(
                f"Needle.bevel_angle_deg: expected an angle in [{alo}, {ahi}] deg, got {self.bevel_angle_deg!r}")
        object.__setattr__(self, "bevel_angle_deg", float(self.bevel_angle_deg))
        if self.bevel_length_mm >= self.length_mm:
            raise NeedleError(
                f"Needle.bevel_angle_deg: a {self.bevel_angle_deg} deg bevel ({self.bevel_length_mm:.2f} mm long) "
                f"does not fit on a {self.length_mm} mm shaft")
        object.__setattr__(self, "entry_lps_mm", _tuple(_vec3(self.entry_lps_mm, "entry_lps_mm")))
        axis = _unit(self.direction_lps, "direction_lps")
        object.__setattr__(self, "direction_lps", _tuple(axis))
        depth = self.inserted_depth_mm
        if not (isinstance(depth, (int, float, np.floating)) and math.isfinite(depth)
                and 0.0 <= float(depth) <= self.length_mm):
            raise NeedleError(
                f"Needle.inserted_depth_mm: expected a depth in [0, length_mm={self.length_mm}] mm, got {depth!r}")
        object.__setattr__(self, "inserted_depth_mm", float(depth))
        if self.bevel_face_lps is None:
            face = _default_bevel_face(axis)
        else:
            f = _vec3(self.bevel_face_lps, "bevel_face_lps")
            face = f - float(f @ axis) * axis
            if np.linalg.norm(face) < 1e-6 * max(1.0, float(np.linalg.norm(f))):
                raise NeedleError(
                    f"Needle.bevel_face_lps: expected a direction not parallel to the needle axis "
                    f"{self.direction_lps}, got {self.bevel_face_lps!r}")
            face = face / np.linalg.norm(face)
        object.__setattr__(self, "bevel_face_lps", _tuple(face))

    # -- construction --------------------------------------------------------------------
    @classmethod
    def aimed(cls, entry_lps_mm: Sequence[float], target_lps_mm: Sequence[float], inserted_depth_mm: float = 0.0,
              **kwargs: Any) -> "Needle":
        """A needle entering at ``entry`` and pointing at ``target``."""
        entry = _vec3(entry_lps_mm, "entry_lps_mm")
        target = _vec3(target_lps_mm, "target_lps_mm")
        if np.linalg.norm(target - entry) < 1e-9:
            raise NeedleError(f"Needle.aimed: target {tuple(target)} coincides with the entry point")
        return cls(entry_lps_mm=_tuple(entry), direction_lps=_tuple(target - entry),
                   inserted_depth_mm=inserted_depth_mm, **kwargs)

    # -- dimensions -----------------------------------------------------------------------
    @property
    def outer_diameter_mm(self) -> float:
        return GAUGE_OD_MM[self.gauge]

    @property
    def radius_mm(self) -> float:
        return 0.5 * GAUGE_OD_MM[self.gauge]

    @property
    def bevel_length_mm(self) -> float:
        """Axial length of the bevel face, heel to point: ``2 r / tan(bevel_angle)``."""
        return 2.0 * self.radius_mm / math.tan(math.radians(self.bevel_angle_deg))

    @property
    def steel_volume_mm3(self) -> float:
        """``pi r^2 (L - r / tan(bevel))``: the cylinder less the half-cylinder the bevel cuts away."""
        r = self.radius_mm
        return math.pi * r * r * (self.length_mm - r / math.tan(math.radians(self.bevel_angle_deg)))

    @property
    def steel_mass_g(self) -> float:
        return self.steel_volume_mm3 * 1e-3 * RHO_STEEL

    # -- pose -----------------------------------------------------------------------------
    @property
    def axis(self) -> np.ndarray:
        """Unit vector hub -> tip."""
        return np.asarray(self.direction_lps, dtype=np.float64)

    @property
    def bevel_face(self) -> np.ndarray:
        """Unit vector, perpendicular to the axis, toward which the bevel face looks."""
        return np.asarray(self.bevel_face_lps, dtype=np.float64)

    @property
    def bevel_normal(self) -> np.ndarray:
        """Outward unit normal of the bevel plane: ``sin(bevel) axis + cos(bevel) bevel_face``."""
        t = math.radians(self.bevel_angle_deg)
        return math.sin(t) * self.axis + math.cos(t) * self.bevel_face

    @property
    def entry(self) -> np.ndarray:
        return np.asarray(self.entry_lps_mm, dtype=np.float64)

    @property
    def tip_axis_lps_mm(self) -> np.ndarray:
        """The point on the axis level with the tip (centre of the distal end of the shaft)."""
        return self.entry + self.inserted_depth_mm * self.axis

    @property
    def tip_lps_mm(self) -> np.ndarray:
        """The sharp point of the bevel: on the surface, opposite the bevel face."""
        return self.tip_axis_lps_mm - self.radius_mm * self.bevel_face

    @property
    def hub_lps_mm(self) -> np.ndarray:
        """Centre of the hub end of the steel shaft (on the axis)."""
        return self.tip_axis_lps_mm - self.length_mm * self.axis

    @property
    def shaft_segment_lps_mm(self) -> np.ndarray:
        """(2, 3) array: the axis from the hub centre to the tip's axial position."""
        return np.vstack([self.hub_lps_mm, self.tip_axis_lps_mm])

    # -- moves ----------------------------------------------------------------------------
    def advanced(self, distance_mm: float) -> "Needle":
        """Push the needle ``distance_mm`` (>= 0) further in along its axis."""
        d = _distance(distance_mm, "advanced")
        new = self.inserted_depth_mm + d
        if new > self.length_mm + 1e-9:
            raise NeedleError(
                f"Needle.advanced({distance_mm}): inserted_depth_mm would become {new:.3f} mm, beyond the "
                f"{self.length_mm} mm shaft (the hub would enter the skin); at most "
                f"{self.length_mm - self.inserted_depth_mm:.3f} mm more can go in")
        return replace(self, inserted_depth_mm=min(new, self.length_mm))

    def withdrawn(self, distance_mm: float) -> "Needle":
        """Pull the needle back ``distance_mm`` (>= 0) along its axis."""
        d = _distance(distance_mm, "withdrawn")
        new = self.inserted_depth_mm - d
        if new < -1e-9:
            raise NeedleError(
                f"Needle.withdrawn({distance_mm}): only inserted_depth_mm={self.inserted_depth_mm:.3f} mm is "
                f"inserted; withdrawing more would pull the tip back out past the entry point")
        return replace(self, inserted_depth_mm=max(new, 0.0))

    def steered(self, d_angle_deg: float, about: str | Sequence[float] = "L") -> "Needle":
        """Pivot the needle about its entry point by ``d_angle_deg`` (right-handed) about ``about``.

        ``about`` is an LPS vector or a letter ``L R P A S I`` (or ``x y z``). Only its
        component perpendicular to the needle axis is used (a turn about the axis itself
        is ``rolled``), so the axis always turns by exactly ``|d_angle_deg|``. Entry point
        and inserted depth are kept; the bevel face turns with the needle.
        """
        if not (isinstance(d_angle_deg, (int, float, np.floating)) and math.isfinite(d_angle_deg)
                and abs(d_angle_deg) <= MAX_STEER_DEG):
            raise NeedleError(
                f"Needle.steered: d_angle_deg must be a finite angle within +-{MAX_STEER_DEG} deg, got {d_angle_deg!r}")
        if isinstance(about, str):
            if about not in _AXIS_NAMES:
                raise NeedleError(
                    f"Needle.steered: about must be an LPS vector or one of {sorted(_AXIS_NAMES)}, got {about!r}")
            k = np.asarray(_AXIS_NAMES[about])
        else:
            k = _vec3(about, "steered.about")
        ax = self.axis
        k = k - float(k @ ax) * ax
        if np.linalg.norm(k) < 1e-6:
            raise NeedleError(
                f"Needle.steered: the steering axis {about!r} is parallel to the needle axis "
                f"{self.direction_lps}; use rolled() to turn the bevel")
        k = k / np.linalg.norm(k)
        ang = math.radians(float(d_angle_deg))
        return replace(self, direction_lps=_tuple(_rotate(ax, k, ang)),
                       bevel_face_lps=_tuple(_rotate(self.bevel_face, k, ang)))

    def rolled(self, d_angle_deg: float) -> "Needle":
        """Turn the needle about its own axis (right-handed about hub -> tip): the bevel face turns."""
        if not (isinstance(d_angle_deg, (int, float, np.floating)) and math.isfinite(d_angle_deg)):
            raise NeedleError(f"Needle.rolled: d_angle_deg must be a finite angle, got {d_angle_deg!r}")
        face = _rotate(self.bevel_face, self.axis, math.radians(float(d_angle_deg)))
        return replace(self, bevel_face_lps=_tuple(face))

    # -- ground truth ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready pose and model (plain floats and lists; LPS mm)."""
        return {
            "model": "spinal_needle",
            "gauge": self.gauge,
            "outer_diameter_mm": self.outer_diameter_mm,
            "length_mm": self.length_mm,
            "bevel": self.bevel,
            "bevel_angle_deg": self.bevel_angle_deg,
            "bevel_face_lps": list(self.bevel_face_lps),  # type: ignore[arg-type]
            "entry_lps_mm": list(self.entry_lps_mm),
            "axis_lps": list(self.direction_lps),
            "inserted_depth_mm": self.inserted_depth_mm,
            "tip_lps_mm": [float(x) for x in self.tip_lps_mm],
            "tip_axis_lps_mm": [float(x) for x in self.tip_axis_lps_mm],
            "hub_lps_mm": [float(x) for x in self.hub_lps_mm],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Needle":
        """Inverse of ``to_dict`` (derived fields are ignored)."""
        try:
            return cls(gauge=d["gauge"], length_mm=d["length_mm"], entry_lps_mm=tuple(d["entry_lps_mm"]),
                       direction_lps=tuple(d["axis_lps"]), inserted_depth_mm=d["inserted_depth_mm"],
                       bevel=d.get("bevel", "quincke"),
                       bevel_angle_deg=d.get("bevel_angle_deg", QUINCKE_BEVEL_ANGLE_DEG),
                       bevel_face_lps=tuple(d["bevel_face_lps"]) if d.get("bevel_face_lps") is not None else None)
        except KeyError as exc:
            raise NeedleError(f"Needle.from_dict: missing field {exc.args[0]!r}") from exc


def _distance(value: float, op: str) -> float:
    if not (isinstance(value, (int, float, np.floating)) and math.isfinite(value) and value >= 0):
        raise NeedleError(f"Needle.{op}: distance_mm must be a finite number >= 0, got {value!r}")
    return float(value)


def inside_needle(needle: Needle, points_lps_mm: np.ndarray) -> np.ndarray:
    """Boolean mask: which of the (..., 3) points lie inside the needle's steel (the defining inequalities)."""
    p = np.asarray(points_lps_mm, dtype=np.float64)
    rel = p - needle.hub_lps_mm
    ax = needle.axis
    s = rel @ ax
    perp2 = np.einsum("...i,...i->...", rel, rel) - s * s
    bevel = (p - needle.tip_lps_mm) @ needle.bevel_normal
    return (perp2 <= needle.radius_mm ** 2) & (s >= 0.0) & (bevel <= 0.0)
