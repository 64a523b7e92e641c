"""Rigid vertebral segments, stretching discs, and a traction model for spinal decompression.

Kinematics. The sacrum (with the pelvis and everything not in the spinal column)
stays fixed. Each disc opens along its own axis (the unit vector from the centroid
of the vertebra below to the one above) by its distraction; a vertebra therefore
translates by the sum of the openings of all discs below it. A disc's voxels follow
an affine stretch that carries its lower face with the vertebra below and its upper
face with the vertebra above; the disc keeps its density as it lengthens (traction
draws fluid into the disc; the extra mass is < 1 % of the disc).

Traction model (``TractionModel``). Discs in series, each a linear spring in
tension. The pull first has to overcome a threshold (table friction of the lower
body and the pre-tension of the trunk muscles and ligaments): below about 25 % of
body weight on a split (friction-free) table nothing separates, consistent with the
clinical rule that roughly 25-50 % of body weight is needed before vertebrae
separate (Judovich 1955, as summarised in traction device literature). Above it
each disc opens by ``(F - F0) / k``. With ``k = 150 N/mm`` per healthy lumbar disc a
70 kg patient at 60 % of body weight opens each level by 1.6 mm and the five lumbar
levels by 8 mm, in line with the ~7 mm stature gain measured at 60 % BW traction
(Rev Bras Fisioter 11 (2007), "Changes in stature during and after spinal traction
in young male subjects") and the 1-3 mm per level reported on radiographs.
Degenerated discs are stiffer (``k * (1 + 2 * degeneration)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

G = 9.81

#: Column order, inferior to superior; discs are named "upper-lower" (e.g. "L4-L5").
COLUMN: tuple[str, ...] = ("sacrum", "L5", "L4", "L3", "L2", "L1", "T12")
DISCS: tuple[str, ...] = ("L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2", "T12-L1")


def _disc_name(upper: str, lower: str) -> str:
    return f"{upper}-{'S1' if lower == 'sacrum' else lower}"


@dataclass(frozen=True)
class SpineGeometry:
    """What the kinematics need, measured from a label map: centroids, disc axes and faces."""

    vertebrae: tuple[str, ...]                       # present, inferior to superior (sacrum first)
    centroids_lps_mm: Mapping[str, tuple[float, float, float]]
    disc_axes: Mapping[str, tuple[float, float, float]]        # unit, from lower to upper vertebra
    disc_lower_face_mm: Mapping[str, float]          # position of the lower face along the axis (axis . x)
    disc_heights_mm: Mapping[str, float]

    @property
    def discs(self) -> tuple[str, ...]:
        return tuple(_disc_name(u, l) for l, u in zip(self.vertebrae[:-1], self.vertebrae[1:]))


def measure_spine(labels: np.ndarray, affine_lps: np.ndarray, vertebra_ids: Mapping[str, int],
                  disc_ids: Mapping[str, int]) -> SpineGeometry:
    """Centroids of the vertebrae and, per disc, its axis, lower face and height (2-98 % extent)."""
    present = [n for n in COLUMN if n in vertebra_ids and np.any(labels == vertebra_ids[n])]
    cents: dict[str, tuple[float, float, float]] = {}
    for n in present:
        k, j, i = np.nonzero(labels == vertebra_ids[n])
        c = affine_lps[:3, :3] @ np.array([i.mean(), j.mean(), k.mean()]) + affine_lps[:3, 3]
        cents[n] = (float(c[0]), float(c[1]), float(c[2]))
    axes, faces, heights = {}, {}, {}
    for lower, upper in zip(present[:-1], present[1:]):
        name = _disc_name(upper, lower)
        if name not in disc_ids:
            continue
        axis = np.subtract(cents[upper], cents[lower])
        axis /= np.linalg.norm(axis)
        k, j, i = np.nonzero(labels == disc_ids[name])
        if len(i) == 0:
            continue
        pts = np.stack([i, j, k], axis=1) @ affine_lps[:3, :3].T + affine_lps[:3, 3]
        s = pts @ axis
        lo, hi = np.percentile(s, [2, 98])
        axes[name] = tuple(float(a) for a in axis)
        faces[name] = float(lo)
        heights[name] = float(hi - lo)
    return SpineGeometry(tuple(present), cents, axes, faces, heights)


@dataclass(frozen=True)
class TractionModel:
    """Discs in series as tension springs behind a force threshold (module docstring)."""

    body_mass_kg: float = 70.0
    threshold_fraction_bw: float = 0.25
    disc_stiffness_n_per_mm: float = 150.0
    degeneration: float = 0.0

    def __post_init__(self) -> None:
        if not 20 <= self.body_mass_kg <= 250:
            raise ValueError(f"TractionModel.body_mass_kg must be in [20, 250], got {self.body_mass_kg}")
        if not 0 <= self.degeneration <= 1:
            raise ValueError(f"TractionModel.degeneration must be in [0, 1], got {self.degeneration}")

    @property
    def threshold_n(self) -> float:
        return self.threshold_fraction_bw * self.body_mass_kg * G

    @property
    def stiffness_n_per_mm(self) -> float:
        return self.disc_stiffness_n_per_mm * (1.0 + 2.0 * self.degeneration)

    def distraction_per_disc_mm(self, force_n: float) -> float:
        """Opening of each disc under a traction force."""
        if force_n < 0:
            raise ValueError(f"traction force must be >= 0 N, got {force_n}")
        return max(0.0, force_n - self.threshold_n) / self.stiffness_n_per_mm

    def force_for_distraction_n(self, per_disc_mm: float) -> float:
        """The force that opens each disc by ``per_disc_mm`` (inverse of the above)."""
        if per_disc_mm <= 0:
            return 0.0
        return self.threshold_n + per_disc_mm * self.stiffness_n_per_mm


@dataclass(frozen=True)
class SpineMotion:
    """Disc openings (mm) -> a 4x4 map of patient space for every vertebra and disc."""

    spine: SpineGeometry
    openings_mm: Mapping[str, float] = field(default_factory=dict)

    def translations_mm(self) -> dict[str, np.ndarray]:
        t = np.zeros(3)
        out = {}
        verts = self.spine.vertebrae
        out[verts[0]] = t.copy()
        for lower, upper in zip(verts[:-1], verts[1:]):
            name = _disc_name(upper, lower)
            if name in self.spine.disc_axes:
                t = t + self.openings_mm.get(name, 0.0) * np.asarray(self.spine.disc_axes[name])
            out[upper] = t.copy()
        return out

    def transforms(self) -> dict[str, np.ndarray]:
        """Vertebra name -> rigid translation; disc name -> affine stretch (4x4, LPS mm)."""
        trans = self.translations_mm()
        out: dict[str, np.ndarray] = {}
        for name, t in trans.items():
            m = np.eye(4)
            m[:3, 3] = t
            out[name] = m
        verts = self.spine.vertebrae
        for lower, upper in zip(verts[:-1], verts[1:]):
            name = _disc_name(upper, lower)
            if name not in self.spine.disc_axes:
                continue
            n = np.asarray(self.spine.disc_axes[name])
            h = self.spine.disc_heights_mm[name]
            s0 = self.spine.disc_lower_face_mm[name]
            t_lo, t_up = trans[lower], trans[upper]
            # x' = x + t_lo + (n.x - s0)/h * (t_up - t_lo): lower face moves with t_lo, upper with t_up
            d = (t_up - t_lo) / h
            m = np.eye(4)
            m[:3, :3] += np.outer(d, n)
            m[:3, 3] = t_lo - d * s0
            out[name] = m
        return out

    def disc_heights_mm(self) -> dict[str, float]:
        """Current disc heights along their axes (rest height plus opening)."""
        return {d: h + self.openings_mm.get(d, 0.0) for d, h in self.spine.disc_heights_mm.items()}
