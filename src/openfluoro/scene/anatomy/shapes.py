"""Python side of the phantom primitives: frames, primitive rows, bounding boxes, groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from openfluoro.scene.anatomy import kernels as K

Vec = Sequence[float] | np.ndarray


# -- rotations ---------------------------------------------------------------------------------
def rot_x(deg: float) -> np.ndarray:
    """Rotation matrix (columns = local axes in world) about x; positive tips +z toward -y.

    With LPS (+y posterior) a positive angle leans the superior axis anteriorly.
    """
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(deg: float) -> np.ndarray:
    """About y; positive tips +z toward +x (patient left)."""
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(deg: float) -> np.ndarray:
    """About z; positive turns +x toward +y."""
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def frame_z(z_axis: Vec, x_hint: Vec = (1.0, 0.0, 0.0)) -> np.ndarray:
    """Frame (columns = local x, y, z in world) with local z along ``z_axis`` and x near ``x_hint``."""
    z = np.asarray(z_axis, float)
    z = z / np.linalg.norm(z)
    x = np.asarray(x_hint, float) - np.dot(x_hint, z) * z
    if np.linalg.norm(x) < 1e-6:
        alt = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
        x = alt - np.dot(alt, z) * z
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    return np.column_stack([x, y, z])


def orthonormalize(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r


# -- primitives ------------------------------------------------------------------------------
def _row(ptype: int, centre: Vec, frame: np.ndarray, params: Sequence[float],
         local_lo: Vec, local_hi: Vec, op: int) -> np.ndarray:
    row = np.zeros(K.NP)
    row[0] = ptype
    row[1] = op
    c = np.asarray(centre, float)
    row[2:5] = c
    # kernel wants R with rows = local axes: q = R (p - c); ``frame`` has them as columns
    row[5:14] = np.asarray(frame, float).T.reshape(-1)
    p = np.asarray(params, float)
    row[K.P0:K.P0 + p.size] = p
    lo = np.asarray(local_lo, float)
    hi = np.asarray(local_hi, float)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    world = corners @ np.asarray(frame, float).T + c
    row[14:17] = world.min(axis=0)
    row[17:20] = world.max(axis=0)
    return row


def ellipsoid(centre: Vec, frame: np.ndarray, a: float, b: float, c: float, op: int = K.OP_ADD) -> np.ndarray:
    return _row(K.T_ELLIPSOID, centre, frame, (a, b, c), (-a, -b, -c), (a, b, c), op)


def sphere(centre: Vec, r: float, op: int = K.OP_ADD) -> np.ndarray:
    return ellipsoid(centre, np.eye(3), r, r, r, op)


def rbox(centre: Vec, frame: np.ndarray, hx: float, hy: float, hz: float, r: float = 0.0,
         op: int = K.OP_ADD) -> np.ndarray:
    r = min(r, hx, hy, hz)
    return _row(K.T_RBOX, centre, frame, (hx, hy, hz, r), (-hx, -hy, -hz), (hx, hy, hz), op)


def ecyl(p0: Vec, p1: Vec, a0: float, b0: float, a1: float | None = None, b1: float | None = None,
         x_hint: Vec = (1.0, 0.0, 0.0), extend: float = 0.0, op: int = K.OP_ADD) -> np.ndarray:
    """Tapered elliptic cylinder from p0 to p1 (extended by ``extend`` at both ends); semi-axis a along x_hint."""
    a1 = a0 if a1 is None else a1
    b1 = b0 if b1 is None else b1
    p0 = np.asarray(p0, float)
    p1 = np.asarray(p1, float)
    axis = p1 - p0
    L = float(np.linalg.norm(axis))
    f = frame_z(axis, x_hint)
    start = p0 - extend * axis / L
    Lx = L + 2 * extend
    am, bm = max(a0, a1), max(b0, b1)
    return _row(K.T_ECYL, start, f, (a0, b0, a1, b1, Lx), (-am, -bm, 0.0), (am, bm, Lx), op)


def capsule(p0: Vec, p1: Vec, r0: float, r1: float | None = None, op: int = K.OP_ADD) -> np.ndarray:
    r1 = r0 if r1 is None else r1
    p0 = np.asarray(p0, float)
    p1 = np.asarray(p1, float)
    axis = p1 - p0
    L = max(float(np.linalg.norm(axis)), 1e-6)
    f = frame_z(axis if L > 1e-6 else (0, 0, 1))
    rm = max(r0, r1)
    return _row(K.T_CAPSULE, p0, f, (L, r0, r1), (-rm, -rm, -rm), (rm, rm, L + rm), op)


def vbody(centre: Vec, frame: np.ndarray, a: float, b: float, waist: float, yflat: float,
          tan_u: float, h_u: float, tan_l: float, h_l: float, r: float, op: int = K.OP_ADD) -> np.ndarray:
    hz = max(h_u, h_l) + b * max(abs(tan_u), abs(tan_l))
    return _row(K.T_BODY, centre, frame, (a, b, waist, yflat, tan_u, h_u, tan_l, h_l, r),
                (-a, -b, -hz), (a, min(b, yflat), hz), op)


def slab(centre: Vec, frame: np.ndarray, a: float, b: float, yflat: float,
         n1: Vec, o1: float, n2: Vec, o2: float, half_height: float, op: int = K.OP_ADD) -> np.ndarray:
    """Elliptic prism cut by planes n.q <= o (local coordinates); ``half_height`` bounds it in z."""
    return _row(K.T_SLAB, centre, frame, (a, b, yflat, *n1, o1, *n2, o2),
                (-a, -b, -half_height), (a, min(b, yflat), half_height), op)


_NO_PLANE = ((0.0, 0.0, 0.0), 1e6)


def eshell(centre: Vec, frame: np.ndarray, a: float, b: float, c: float, t: float,
           planes: Iterable[tuple[Vec, float]] = (), local_box: tuple[Vec, Vec] | None = None,
           op: int = K.OP_ADD) -> np.ndarray:
    pl = list(planes) + [_NO_PLANE, _NO_PLANE]
    (n1, o1), (n2, o2) = pl[0], pl[1]
    e = 0.5 * max(t, 0.0)
    lo, hi = (-a - e, -b - e, -c - e), (a + e, b + e, c + e)
    if local_box is not None:
        lo = np.maximum(lo, local_box[0])
        hi = np.minimum(hi, local_box[1])
    return _row(K.T_ESHELL, centre, frame, (a, b, c, t, *n1, o1, *n2, o2), lo, hi, op)


# -- groups ------------------------------------------------------------------------------------
@dataclass
class Group:
    """One painted structure: primitives, how to blend them, and what to write.

    ``writable`` lists the labels this group may overwrite (the painter's order plus
    these masks keep, e.g., muscle out of bone and the thecal sac inside the canal).
    """

    name: str
    prims: list[np.ndarray]
    lab_in: int
    hu_in: float
    lab_out: int | None = None
    hu_out: float | None = None
    shell_mm: float = 0.0
    k_smooth: float = 0.0
    tex_amp: float = 0.0
    tex: np.ndarray = field(default_factory=lambda: np.zeros(0))
    writable: tuple[int, ...] = ()

    def array(self) -> np.ndarray:
        return np.ascontiguousarray(np.vstack(self.prims)) if self.prims else np.zeros((0, K.NP))

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        a = self.array()
        add = a[a[:, 1] == K.OP_ADD]
        return add[:, 14:17].min(axis=0), add[:, 17:20].max(axis=0)

    def sdf(self, pts: np.ndarray) -> np.ndarray:
        return K.group_sdf_points(self.array(), float(self.k_smooth), np.atleast_2d(np.asarray(pts, float)))


def value_noise(rng: np.random.Generator, cell_mm: tuple[float, float]) -> np.ndarray:
    """Parameters of the isotropic value-noise texture: lattice cell (mm) and an integer seed.

    """
    cell = float(rng.uniform(*cell_mm))
    return np.array([cell, float(rng.integers(0, 2**31 - 1))])


BLOCK = 8  # voxels per block side in the painter's spatial index


def _blocks(arr: np.ndarray, origin: np.ndarray, h: float, shape: tuple[int, int, int], margin: float):
    """Spatial index: blocks reached by additive primitives, and the primitives near each block."""
    nk, nj, ni = shape
    nb = (-(-ni // BLOCK), -(-nj // BLOCK), -(-nk // BLOCK))
    lo = np.floor((arr[:, 14:17] - margin - origin) / h / BLOCK).astype(np.int64)
    hi = np.floor((arr[:, 17:20] + margin - origin) / h / BLOCK).astype(np.int64)
    lo = np.clip(lo, 0, np.array(nb) - 1)
    hi = np.clip(hi, -1, np.array(nb) - 1)
    add = arr[:, 1] == K.OP_ADD
    if not add.any():
        return None
    # the region covered by additive primitives
    b0 = lo[add].min(axis=0)
    b1 = hi[add].max(axis=0) + 1
    if np.any(b1 <= b0):
        return None
    ext = b1 - b0
    member = np.zeros((arr.shape[0], ext[2], ext[1], ext[0]), dtype=bool)
    for m in range(arr.shape[0]):
        if arr[m, 1] == K.OP_INT:
            member[m] = True
            continue
        l_ = np.maximum(lo[m] - b0, 0)
        u_ = np.minimum(hi[m] - b0 + 1, ext)
        if np.any(u_ <= l_):
            continue
        member[m, l_[2]:u_[2], l_[1]:u_[1], l_[0]:u_[0]] = True
    active = member[add].any(axis=0)
    kk, jj, ii = np.nonzero(active)
    sub = member[:, kk, jj, ii]                       # (n_prims, n_blocks)
    counts = sub.sum(axis=0)
    start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    pr_idx = np.nonzero(sub.T)[1].astype(np.int64)    # row-major over blocks, primitives in order
    corners = np.stack([(ii + b0[0]) * BLOCK, (jj + b0[1]) * BLOCK, (kk + b0[2]) * BLOCK], axis=1).astype(np.int64)
    return corners, start, pr_idx


def paint(hu: np.ndarray, lab: np.ndarray, origin: np.ndarray, h: float, g: Group) -> None:
    """Paint a group into the grid (only the blocks its primitives reach)."""
    if not g.prims:
        return
    arr = g.array()
    margin = g.k_smooth + g.shell_mm + 2 * h + 1.0
    idx = _blocks(arr, np.asarray(origin, float), h, hu.shape, margin)
    if idx is None:
        return
    corners, start, pr_idx = idx
    writable = np.zeros(256, dtype=np.bool_)
    writable[list(g.writable)] = True
    lab_out = g.lab_in if g.lab_out is None else g.lab_out
    hu_out = g.hu_in if g.hu_out is None else g.hu_out
    tex = g.tex if g.tex.size else np.zeros(4)
    K.paint_group(hu, lab, np.asarray(origin, float), float(h), corners, BLOCK, start, pr_idx, arr,
                  float(g.k_smooth), int(lab_out), int(g.lab_in), float(hu_out), float(g.hu_in),
                  float(g.shell_mm), tex, float(g.tex_amp), writable)
