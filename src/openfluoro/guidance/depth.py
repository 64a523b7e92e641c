"""Depth from two views: the needle tip and axis in 3-D by triangulation, and the distance
from the tip to the thecal sac along the needle's axis.

With two calibrated views (3x4 projection matrices ``P = Geometry.projection_matrix()``):

* a point seen at ``x1`` and ``x2`` is the linear (DLT) least-squares solution of
  ``x cross (P X) = 0`` for both views (exact for exact image points), refined by a few
  Gauss-Newton steps on the reprojection error;
* the needle axis is the intersection of the two planes through each source and the
  needle's image line;
* ``epipolar_line`` maps a point of one view to the line of the other view it must lie on
  (used to decide which end of a short, foreshortened needle image is the tip).

Distances to the sac use the patient's label map (``thecal_sac``/``csf``/``cauda_equina``/
``spinal_cord`` labels) when there is one, else the phantom's sac landmarks (elliptical
cross-sections per level); a CT without either has no sac and gets ``None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from openfluoro.geometry.carm import Geometry

SAC_LABEL_NAMES = ("thecal_sac", "csf", "cauda_equina", "spinal_cord")


def backproject_ray(geometry: Geometry, point_px: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(source, unit direction) of the ray through an image point."""
    P = geometry.projection_matrix()
    d = np.linalg.solve(P[:, :3], np.array([point_px[0], point_px[1], 1.0]))
    d = d / np.linalg.norm(d)
    if d @ geometry.pose.to_detector < 0:
        d = -d
    return geometry.pose.source_lps_mm.copy(), d


def _dlt(Ps: Sequence[np.ndarray], xs: Sequence[Sequence[float]]) -> np.ndarray:
    rows = []
    for P, x in zip(Ps, xs):
        rows.append(x[0] * P[2] - P[0])
        rows.append(x[1] * P[2] - P[1])
    A = np.asarray(rows, float)
    # condition: scale columns so the homogeneous solve is well balanced (mm vs 1)
    s = np.array([1e-2, 1e-2, 1e-2, 1.0])
    _, _, vt = np.linalg.svd(A * s[None, :])
    X = vt[-1] * s
    return X[:3] / X[3]


def reprojection_errors(X: np.ndarray, geometries: Sequence[Geometry], xs: Sequence[Sequence[float]]) -> np.ndarray:
    return np.array([float(np.hypot(*(g.project(X)[0] - np.asarray(x, float)))) for g, x in zip(geometries, xs)])


def triangulate_point(geometries: Sequence[Geometry], points_px: Sequence[Sequence[float]], refine: bool = True
                      ) -> tuple[np.ndarray, np.ndarray]:
    """3-D point (LPS mm) seen at ``points_px[i]`` in view ``geometries[i]`` (two or more views);
    returns (point, reprojection error per view in px)."""
    if len(geometries) < 2 or len(geometries) != len(points_px):
        raise ValueError("triangulate_point: need two or more views with one image point each")
    Ps = [g.projection_matrix() for g in geometries]
    X = _dlt(Ps, points_px)
    if refine:
        for _ in range(5):
            J, r = [], []
            for P, x in zip(Ps, points_px):
                h = P @ np.append(X, 1.0)
                proj = h[:2] / h[2]
                r.extend(proj - np.asarray(x, float))
                # d(proj)/dX = (P[:2,:3] * h2 - h[:2] outer P[2,:3]) / h2^2
                J.extend((P[:2, :3] * h[2] - np.outer(h[:2], P[2, :3])) / h[2] ** 2)
            J = np.asarray(J)
            r = np.asarray(r)
            step, *_ = np.linalg.lstsq(J, -r, rcond=None)
            X = X + step
            if np.linalg.norm(step) < 1e-9:
                break
    return X, reprojection_errors(X, geometries, points_px)


def closest_approach(geometries: Sequence[Geometry], points_px: Sequence[Sequence[float]]) -> tuple[np.ndarray, float]:
    """Midpoint of closest approach of two back-projected rays and their gap (mm)."""
    (s1, d1), (s2, d2) = (backproject_ray(g, x) for g, x in zip(geometries[:2], points_px[:2]))
    w = s1 - s2
    a, b, c = d1 @ d1, d1 @ d2, d2 @ d2
    d, e = d1 @ w, d2 @ w
    den = a * c - b * b
    if abs(den) < 1e-12:
        raise ValueError("closest_approach: the two rays are parallel")
    t1 = (b * e - c * d) / den
    t2 = (a * e - b * d) / den
    p1, p2 = s1 + t1 * d1, s2 + t2 * d2
    return 0.5 * (p1 + p2), float(np.linalg.norm(p1 - p2))


def image_line_plane(geometry: Geometry, p_px: Sequence[float], q_px: Sequence[float]) -> tuple[np.ndarray, float]:
    """The plane through the source and an image line (two points): unit normal n and offset
    d with n.X = d."""
    s, r1 = backproject_ray(geometry, p_px)
    _, r2 = backproject_ray(geometry, q_px)
    n = np.cross(r1, r2)
    n = n / np.linalg.norm(n)
    return n, float(n @ s)


def triangulate_line(geometries: Sequence[Geometry], segments_px: Sequence[Sequence[Sequence[float]]]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """3-D line (point, unit direction) whose images are the given segments (two views)."""
    (n1, d1), (n2, d2) = (image_line_plane(g, seg[0], seg[1]) for g, seg in zip(geometries[:2], segments_px[:2]))
    u = np.cross(n1, n2)
    nu = np.linalg.norm(u)
    if nu < 1e-9:
        raise ValueError("triangulate_line: the two planes are parallel (same line of sight)")
    u = u / nu
    # a point on both planes, closest to the origin
    A = np.vstack([n1, n2, u])
    X0 = np.linalg.solve(A, np.array([d1, d2, 0.0]))
    return X0, u


def fundamental_matrix(g1: Geometry, g2: Geometry) -> np.ndarray:
    """F with x2^T F x1 = 0 for corresponding homogeneous image points."""
    P1, P2 = g1.projection_matrix(), g2.projection_matrix()
    C1 = np.append(g1.pose.source_lps_mm, 1.0)
    e2 = P2 @ C1
    ex = np.array([[0, -e2[2], e2[1]], [e2[2], 0, -e2[0]], [-e2[1], e2[0], 0]])
    return ex @ P2 @ np.linalg.pinv(P1)


def epipolar_line(g_from: Geometry, point_px: Sequence[float], g_to: Geometry) -> tuple[float, float, float]:
    """Line (a, b, c), a x + b y + c = 0 with a^2 + b^2 = 1, in view ``g_to`` on which the
    image of the 3-D point seen at ``point_px`` in ``g_from`` lies."""
    s, d = backproject_ray(g_from, point_px)
    p1, p2 = g_to.project(np.vstack([s + 300.0 * d, s + 1200.0 * d]))
    t = p2 - p1
    n = np.array([-t[1], t[0]]) / np.linalg.norm(t)
    return float(n[0]), float(n[1]), float(-n @ p1)


@dataclass(frozen=True)
class Needle3D:
    """The needle from two views: tip and axis (unit, hub -> tip) in LPS mm."""

    tip_lps_mm: tuple[float, float, float]
    axis_lps: tuple[float, float, float] | None
    reprojection_px: tuple[float, ...]
    ray_gap_mm: float

    def to_dict(self) -> dict:
        return {"tip_lps_mm": list(self.tip_lps_mm), "axis_lps": None if self.axis_lps is None else list(self.axis_lps),
                "reprojection_px": list(self.reprojection_px), "ray_gap_mm": self.ray_gap_mm}


def needle_from_views(geometries: Sequence[Geometry], tips_px: Sequence[Sequence[float]],
                      tails_px: Sequence[Sequence[float]] | None = None) -> Needle3D:
    """Triangulate the tip (and, with the tails, the axis) from two (or more) views."""
    X, err = triangulate_point(geometries, tips_px)
    _, gap = closest_approach(geometries, tips_px)
    axis = None
    if tails_px is not None:
        try:
            X0, u = triangulate_line(geometries, [(t, h) for t, h in zip(tips_px, tails_px)])
            # orient hub -> tip: the tail's back-projection lies behind the tip along u
            tail_pt, _ = triangulate_point(geometries, tails_px, refine=False)
            if (X - tail_pt) @ u < 0:
                u = -u
            axis = (float(u[0]), float(u[1]), float(u[2]))
        except ValueError:
            axis = None
    return Needle3D((float(X[0]), float(X[1]), float(X[2])), axis, tuple(float(e) for e in err), gap)


# ----------------------------------------------------------------------------------- the sac
@dataclass(frozen=True)
class SacDistance:
    """Distance from the tip to the dura along the needle axis (mm): positive ahead of the
    tip, 0 at the dura, negative once the tip is inside (depth past the dura)."""

    distance_mm: float
    inside: bool
    entry_lps_mm: tuple[float, float, float] | None
    source: str                      # "labels" or "landmarks"


class SacModel:
    """Membership test for the thecal sac (label map or landmark ellipses)."""

    def __init__(self, patient: Any) -> None:
        self.source = "none"
        self._labels = None
        self._ids: list[int] = []
        self._volume = None
        self._rings: list[tuple[np.ndarray, np.ndarray, np.ndarray, float, float]] = []
        labels = getattr(patient, "labels", None)
        names: Mapping[int, str] = getattr(patient, "label_names", {}) or {}
        ids = [int(k) for k, v in names.items() if v in SAC_LABEL_NAMES]
        if labels is not None and ids and np.isin(labels, ids).any():
            self._labels, self._ids, self._volume = labels, ids, patient.volume
            self.source = "labels"
            return
        sac = (getattr(patient, "landmarks", {}) or {}).get("thecal_sac")
        if sac:
            for rec in sac.values():
                c = np.asarray(rec["centre"], float)
                left = np.asarray(rec["left_wall"], float) - c
                post = np.asarray(rec["posterior_wall"], float) - c
                self._rings.append((c, left / np.linalg.norm(left), post / np.linalg.norm(post),
                                    float(np.linalg.norm(left)), float(np.linalg.norm(post))))
            self._rings.sort(key=lambda r: r[0][2])
            self.source = "landmarks"

    @property
    def available(self) -> bool:
        return self.source != "none"

    def contains(self, pts: np.ndarray) -> np.ndarray:
        pts = np.atleast_2d(np.asarray(pts, float))
        if self.source == "labels":
            ijk = np.rint(self._volume.lps_to_index(pts)).astype(int)
            nk, nj, ni = self._labels.shape
            i, j, k = ijk[:, 0], ijk[:, 1], ijk[:, 2]
            ok = (i >= 0) & (i < ni) & (j >= 0) & (j < nj) & (k >= 0) & (k < nk)
            out = np.zeros(len(pts), bool)
            out[ok] = np.isin(self._labels[k[ok], j[ok], i[ok]], self._ids)
            return out
        if self.source == "landmarks":
            zs = np.array([r[0][2] for r in self._rings])
            out = np.zeros(len(pts), bool)
            for n, p in enumerate(pts):
                if p[2] < zs[0] or p[2] > zs[-1]:
                    continue
                k = int(np.clip(np.searchsorted(zs, p[2]) - 1, 0, len(zs) - 2))
                t = (p[2] - zs[k]) / max(zs[k + 1] - zs[k], 1e-6)
                r0, r1 = self._rings[k], self._rings[k + 1]
                c = (1 - t) * r0[0] + t * r1[0]
                ax = (1 - t) * r0[1] + t * r1[1]
                ay = (1 - t) * r0[2] + t * r1[2]
                a = (1 - t) * r0[3] + t * r1[3]
                b = (1 - t) * r0[4] + t * r1[4]
                q = p - c
                out[n] = (q @ ax / a) ** 2 + (q @ ay / b) ** 2 <= 1.0
            return out
        return np.zeros(len(pts), bool)


def distance_to_sac(tip_lps_mm: Sequence[float], axis_lps: Sequence[float], sac: SacModel,
                    max_mm: float = 80.0, step_mm: float = 0.25) -> SacDistance | None:
    """March along the axis from the tip to the first point in the sac (or, from inside,
    back to where the axis entered it)."""
    if not sac.available:
        return None
    tip = np.asarray(tip_lps_mm, float)
    u = np.asarray(axis_lps, float)
    u = u / np.linalg.norm(u)
    inside = bool(sac.contains(tip)[0])
    if inside:
        ts = -np.arange(0.0, max_mm, step_mm)
        hit = ~sac.contains(tip[None, :] + ts[:, None] * u[None, :])
        if not hit.any():
            return SacDistance(-max_mm, True, None, sac.source)
        k = int(np.argmax(hit))
        t = float(ts[max(k - 1, 0)] - 0.5 * step_mm)
        e = tip + t * u
        return SacDistance(t, True, (float(e[0]), float(e[1]), float(e[2])), sac.source)
    ts = np.arange(0.0, max_mm, step_mm)
    hit = sac.contains(tip[None, :] + ts[:, None] * u[None, :])
    if not hit.any():
        return SacDistance(math.inf, False, None, sac.source)
    k = int(np.argmax(hit))
    t = float(ts[k] - 0.5 * step_mm)
    e = tip + t * u
    return SacDistance(t, False, (float(e[0]), float(e[1]), float(e[2])), sac.source)
