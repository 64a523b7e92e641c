"""Compiled kernels of the phantom: signed-distance primitives and voxel painters.

Every anatomical structure is a *group* of primitives (ellipsoids, rounded boxes,
tapered elliptic cylinders, capsules, vertebral-body prisms, plane-bounded discs,
ellipsoidal shells), each in its own local frame. A group's signed distance is the
smooth union of its additive primitives with its subtractive ones cut out. A
painter evaluates it only inside the group's voxel bounding box and writes Hounsfield
units and labels where the distance is negative, with a one-voxel partial-volume
ramp at the surface and an optional outer shell (cortical bone, dura) of another
value and label. Painting is in a fixed order and, per voxel, independent of every
other voxel, so results are bit-identical for any number of threads.

Primitive rows (float64, ``NP`` columns)::

    0 type, 1 op (0 add, 1 subtract, 2 intersect), 2:5 centre (LPS mm),
    5:14 rotation R (row-major; rows are the local axes in LPS, q = R (p - c)),
    14:17 AABB min, 17:20 AABB max (LPS mm), 20:32 type parameters

Types and parameters (local frame, mm):

* ``T_ELLIPSOID``: a, b, c semi-axes (approximate distance, exact on the surface);
* ``T_RBOX``: half-extents hx, hy, hz and edge radius r (exact);
* ``T_ECYL``: elliptic cylinder along +z from 0 to L, semi-axes a0, b0 at z=0 tapering
  to a1, b1 at z=L: (a0, b0, a1, b1, L);
* ``T_CAPSULE``: segment along +z from 0 to L, radius r0 to r1: (L, r0, r1);
* ``T_BODY``: vertebral body: elliptic prism with a lateral waist, a flattened
  posterior wall and wedge endplates ``z = h_u - y tan_u`` / ``z = -h_l + y tan_l``,
  rounded rim: (a, b, waist, yflat, tan_u, h_u, tan_l, h_l, r);
* ``T_SLAB``: elliptic prism cut by two planes n.q <= o (discs):
  (a, b, yflat, n1x, n1y, n1z, o1, n2x, n2y, n2z, o2);
* ``T_ESHELL``: ellipsoid (a, b, c) as a shell of thickness t (solid if t <= 0) cut by
  two planes n.q <= o: (a, b, c, t, n1x, n1y, n1z, o1, n2x, n2y, n2z, o2).
"""

from __future__ import annotations

import numba
import numpy as np

NP = 32
T_ELLIPSOID, T_RBOX, T_ECYL, T_CAPSULE, T_BODY, T_SLAB, T_ESHELL = 0, 1, 2, 3, 4, 5, 6
OP_ADD, OP_SUB, OP_INT = 0, 1, 2
P0 = 20  # first parameter column


@numba.njit(cache=True, fastmath=True, inline="always")
def _ellipse2d(x, y, a, b):
    k0 = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    k1 = np.sqrt((x / (a * a)) ** 2 + (y / (b * b)) ** 2)
    if k1 < 1e-12:
        return -min(a, b)
    return k0 * (k0 - 1.0) / k1


@numba.njit(cache=True, fastmath=True)
def prim_sdf(pr, px, py, pz):
    """Signed distance (mm, approximate away from the surface) of point p to primitive row ``pr``."""
    dx = px - pr[2]
    dy = py - pr[3]
    dz = pz - pr[4]
    x = pr[5] * dx + pr[6] * dy + pr[7] * dz
    y = pr[8] * dx + pr[9] * dy + pr[10] * dz
    z = pr[11] * dx + pr[12] * dy + pr[13] * dz
    t = int(pr[0])
    q = P0
    if t == T_ELLIPSOID:
        a, b, c = pr[q], pr[q + 1], pr[q + 2]
        k0 = np.sqrt((x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2)
        k1 = np.sqrt((x / (a * a)) ** 2 + (y / (b * b)) ** 2 + (z / (c * c)) ** 2)
        if k1 < 1e-12:
            return -min(a, min(b, c))
        return k0 * (k0 - 1.0) / k1
    if t == T_RBOX:
        r = pr[q + 3]
        qx = abs(x) - pr[q] + r
        qy = abs(y) - pr[q + 1] + r
        qz = abs(z) - pr[q + 2] + r
        ox = max(qx, 0.0)
        oy = max(qy, 0.0)
        oz = max(qz, 0.0)
        return np.sqrt(ox * ox + oy * oy + oz * oz) + min(max(qx, max(qy, qz)), 0.0) - r
    if t == T_ECYL:
        L = pr[q + 4]
        s = min(max(z / L, 0.0), 1.0)
        a = pr[q] + (pr[q + 2] - pr[q]) * s
        b = pr[q + 1] + (pr[q + 3] - pr[q + 1]) * s
        d2 = _ellipse2d(x, y, a, b)
        dzz = max(-z, z - L)
        if d2 > 0.0 and dzz > 0.0:
            return np.sqrt(d2 * d2 + dzz * dzz)
        return max(d2, dzz)
    if t == T_CAPSULE:
        L = pr[q]
        s = min(max(z / L, 0.0), 1.0)
        r = pr[q + 1] + (pr[q + 2] - pr[q + 1]) * s
        zz = z - s * L
        return np.sqrt(x * x + y * y + zz * zz) - r
    if t == T_BODY:
        a, b, waist, yflat = pr[q], pr[q + 1], pr[q + 2], pr[q + 3]
        tu, hu_, tl, hl, r = pr[q + 4], pr[q + 5], pr[q + 6], pr[q + 7], pr[q + 8]
        zn = z / max(hu_, hl)
        w = 1.0 - waist * max(1.0 - zn * zn, 0.0)
        d2 = max(_ellipse2d(x, y, a * w, b), y - yflat)
        du = (z + y * tu - hu_) / np.sqrt(1.0 + tu * tu)
        dl = (-z + y * tl - hl) / np.sqrt(1.0 + tl * tl)
        dzz = max(du, dl)
        ax = d2 + r
        az = dzz + r
        return np.sqrt(max(ax, 0.0) ** 2 + max(az, 0.0) ** 2) + min(max(ax, az), 0.0) - r
    if t == T_SLAB:
        d = max(_ellipse2d(x, y, pr[q], pr[q + 1]), y - pr[q + 2])
        d = max(d, pr[q + 3] * x + pr[q + 4] * y + pr[q + 5] * z - pr[q + 6])
        d = max(d, pr[q + 7] * x + pr[q + 8] * y + pr[q + 9] * z - pr[q + 10])
        return d
    if t == T_ESHELL:
        a, b, c, th = pr[q], pr[q + 1], pr[q + 2], pr[q + 3]
        k0 = np.sqrt((x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2)
        k1 = np.sqrt((x / (a * a)) ** 2 + (y / (b * b)) ** 2 + (z / (c * c)) ** 2)
        if k1 < 1e-12:
            de = -min(a, min(b, c))
        else:
            de = k0 * (k0 - 1.0) / k1
        if th > 0.0:
            de = abs(de) - 0.5 * th
        de = max(de, pr[q + 4] * x + pr[q + 5] * y + pr[q + 6] * z - pr[q + 7])
        de = max(de, pr[q + 8] * x + pr[q + 9] * y + pr[q + 10] * z - pr[q + 11])
        return de
    return 1e9


@numba.njit(cache=True, fastmath=True, inline="always")
def _smin(a, b, k):
    if k <= 0.0:
        return min(a, b)
    h = max(k - abs(a - b), 0.0) / k
    return min(a, b) - h * h * k * 0.25


@numba.njit(cache=True, fastmath=True)
def group_sdf(prims, k_smooth, margin, px, py, pz):
    """Signed distance of point p to a group: smooth union of the adds, minus the subtracts,
    intersected with the intersects.

    Primitives whose bounding box is farther than ``margin`` are skipped (their distance
    cannot change the result where it matters: inside the shell or the surface ramp).
    """
    d = 1e9
    n = prims.shape[0]
    for m in range(n):
        pr = prims[m]
        if pr[1] != OP_ADD:
            continue
        if (px < pr[14] - margin or px > pr[17] + margin or py < pr[15] - margin
                or py > pr[18] + margin or pz < pr[16] - margin or pz > pr[19] + margin):
            continue
        d = _smin(d, prim_sdf(pr, px, py, pz), k_smooth)
    if d > margin:
        return d
    for m in range(n):
        pr = prims[m]
        if pr[1] != OP_SUB:
            continue
        if (px < pr[14] - margin or px > pr[17] + margin or py < pr[15] - margin
                or py > pr[18] + margin or pz < pr[16] - margin or pz > pr[19] + margin):
            continue
        d = max(d, -prim_sdf(pr, px, py, pz))
    for m in range(n):
        pr = prims[m]
        if pr[1] != OP_INT:
            continue
        if (px < pr[14] - margin or px > pr[17] + margin or py < pr[15] - margin
                or py > pr[18] + margin or pz < pr[16] - margin or pz > pr[19] + margin):
            return 1e9
        d = max(d, prim_sdf(pr, px, py, pz))
    return d


@numba.njit(cache=True, fastmath=True, inline="always")
def _hash01(ix, iy, iz, seed):
    """Deterministic pseudo-random value in [-1, 1] for an integer lattice point."""
    h = (ix * 73856093) ^ (iy * 19349663) ^ (iz * 83492791) ^ seed
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return (h & 0xFFFF) / 32767.5 - 1.0


@numba.njit(cache=True, fastmath=True, inline="always")
def _texture(tex, x, y, z):
    """Isotropic value noise (trilinear on a lattice of ``tex[0]`` mm; seed ``tex[1]``) in ~[-1, 1].

    Two octaves; no preferred direction, so projections average it out instead of showing
    the stripes that plane waves would.
    """
    s = 0.0
    amp = 1.0
    cell = tex[0]
    seed = np.int64(tex[1])
    for octave in range(2):
        fx = x / cell
        fy = y / cell
        fz = z / cell
        ix = np.int64(np.floor(fx))
        iy = np.int64(np.floor(fy))
        iz = np.int64(np.floor(fz))
        tx = fx - ix
        ty = fy - iy
        tz = fz - iz
        c000 = _hash01(ix, iy, iz, seed)
        c100 = _hash01(ix + 1, iy, iz, seed)
        c010 = _hash01(ix, iy + 1, iz, seed)
        c110 = _hash01(ix + 1, iy + 1, iz, seed)
        c001 = _hash01(ix, iy, iz + 1, seed)
        c101 = _hash01(ix + 1, iy, iz + 1, seed)
        c011 = _hash01(ix, iy + 1, iz + 1, seed)
        c111 = _hash01(ix + 1, iy + 1, iz + 1, seed)
        c00 = c000 + (c100 - c000) * tx
        c10 = c010 + (c110 - c010) * tx
        c01 = c001 + (c101 - c001) * tx
        c11 = c011 + (c111 - c011) * tx
        c0 = c00 + (c10 - c00) * ty
        c1 = c01 + (c11 - c01) * ty
        s += amp * (c0 + (c1 - c0) * tz)
        amp *= 0.5
        cell *= 0.5
        seed += 7919
    return s / 1.5


@numba.njit(cache=True, fastmath=True)
def _group_sdf_list(prims, idx, a, b, k_smooth, margin, px, py, pz):
    """``group_sdf`` restricted to the primitives ``idx[a:b]`` (those near the voxel's block)."""
    d = 1e9
    for m in range(a, b):
        pr = prims[idx[m]]
        if pr[1] != OP_ADD:
            continue
        if (px < pr[14] - margin or px > pr[17] + margin or py < pr[15] - margin
                or py > pr[18] + margin or pz < pr[16] - margin or pz > pr[19] + margin):
            continue
        d = _smin(d, prim_sdf(pr, px, py, pz), k_smooth)
    if d > margin:
        return d
    for m in range(a, b):
        pr = prims[idx[m]]
        if pr[1] == OP_ADD:
            continue
        inside = not (px < pr[14] - margin or px > pr[17] + margin or py < pr[15] - margin
                      or py > pr[18] + margin or pz < pr[16] - margin or pz > pr[19] + margin)
        if pr[1] == OP_SUB:
            if inside:
                d = max(d, -prim_sdf(pr, px, py, pz))
        else:
            if not inside:
                return 1e9
            d = max(d, prim_sdf(pr, px, py, pz))
    return d


@numba.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def paint_group(hu, lab, origin, h, blocks, bsize, blk_start, blk_idx, prims, k_smooth, lab_out, lab_in,
                hu_out, hu_in, shell, tex, tex_amp, writable):
    """Paint one group into ``hu``/``lab`` (indexed [k, j, i]), block by block.

    ``blocks[n] = (i0, j0, k0)`` are the voxel corners of the blocks (``bsize`` voxels a
    side, clipped to the grid) that some additive primitive may reach; ``blk_idx[blk_start[n]:
    blk_start[n + 1]]`` lists the primitives to evaluate there. Voxels deeper than ``shell``
    below the surface get ``hu_in`` (+ texture) and ``lab_in``, the rest of the inside
    ``hu_out``/``lab_out``. A voxel is touched only when ``writable[its current label]``.
    """
    nk, nj, ni = hu.shape
    margin = k_smooth + h + shell + 1.0
    for n in numba.prange(blocks.shape[0]):
        bi, bj, bk = blocks[n, 0], blocks[n, 1], blocks[n, 2]
        a, b = blk_start[n], blk_start[n + 1]
        for k in range(bk, min(bk + bsize, nk)):
            pz = origin[2] + k * h
            for j in range(bj, min(bj + bsize, nj)):
                py = origin[1] + j * h
                for i in range(bi, min(bi + bsize, ni)):
                    if not writable[lab[k, j, i]]:
                        continue
                    px = origin[0] + i * h
                    d = _group_sdf_list(prims, blk_idx, a, b, k_smooth, margin, px, py, pz)
                    if d >= 0.5 * h:
                        continue
                    if shell <= 0.0:
                        v = hu_in
                        if tex_amp != 0.0:
                            v += tex_amp * _texture(tex, px, py, pz)
                        lb = lab_in
                    else:
                        # fraction of the voxel in the shell (partial volume at its inner face too)
                        g = min(max(0.5 + (d + shell) / h, 0.0), 1.0)
                        v = hu_in
                        if g < 1.0 and tex_amp != 0.0:
                            v += tex_amp * _texture(tex, px, py, pz)
                        v = g * hu_out + (1.0 - g) * v
                        lb = lab_out if g >= 0.5 else lab_in
                    f = 0.5 - d / h
                    if f >= 1.0:
                        hu[k, j, i] = v
                        lab[k, j, i] = lb
                    else:
                        hu[k, j, i] = hu[k, j, i] * (1.0 - f) + v * f
                        if f >= 0.5:
                            lab[k, j, i] = lb


@numba.njit(cache=True, fastmath=True)
def group_sdf_points(prims, k_smooth, pts):
    """Group signed distance at (N, 3) points (for landmarks and tests)."""
    out = np.empty(pts.shape[0])
    for n in range(pts.shape[0]):
        out[n] = group_sdf(prims, k_smooth, 1e6, pts[n, 0], pts[n, 1], pts[n, 2])
    return out


# -- torso ---------------------------------------------------------------------------------
# Per-slice torso profile columns (one row per slice k):
TP_CX, TP_CY, TP_AL, TP_AR, TP_BP, TP_BA, TP_FP, TP_FL, TP_FA, TP_SKIN, TP_WALL, TP_WALLP = range(12)
N_TP = 12


@numba.njit(cache=True, fastmath=True, inline="always")
def _torso_depth(prof, x, y):
    """(distance outside the core outline, fat thickness, skin thickness, wall) in one slice.

    The core (muscle wall outline) is a blend of an ellipse and an L4 superellipse, with
    separate left/right and anterior/posterior semi-axes; distances are radial from the
    slice centre, which for this near-elliptic outline is within ~10 % of the normal distance.
    """
    dx = x - prof[TP_CX]
    dy = y - prof[TP_CY]
    a = prof[TP_AL] if dx >= 0.0 else prof[TP_AR]
    b = prof[TP_BP] if dy >= 0.0 else prof[TP_BA]
    u = dx / a
    v = dy / b
    u2 = u * u
    v2 = v * v
    rho = 0.5 * (np.sqrt(u2 + v2) + np.sqrt(np.sqrt(u2 * u2 + v2 * v2)))
    r = np.sqrt(dx * dx + dy * dy)
    if rho < 1e-9:
        return -min(a, b), prof[TP_FA], prof[TP_SKIN], prof[TP_WALL]
    d = r * (1.0 - 1.0 / rho)
    # fat thickness blends posterior / lateral / anterior by direction
    cu = abs(dx) / max(r, 1e-9)
    cv = dy / max(r, 1e-9)
    if cv >= 0.0:
        fat = prof[TP_FL] * cu * cu + prof[TP_FP] * cv * cv
        wall = prof[TP_WALL] * cu * cu + prof[TP_WALLP] * cv * cv
    else:
        fat = prof[TP_FL] * cu * cu + prof[TP_FA] * cv * cv
        wall = prof[TP_WALL]
    return d, fat, prof[TP_SKIN], wall


@numba.njit(cache=True, fastmath=True, inline="always")
def _torso_class(pr, px, py, h):
    """0 cavity, 1 muscle wall, 2 fat, 3 skin, 4 outside (beyond the partial-volume band)."""
    d, fat, skin, wall = _torso_depth(pr, px, py)
    if d >= fat + skin + 0.5 * h:
        return 4
    if d > fat:
        return 3
    if d > 0.0:
        return 2
    if d > -wall:
        return 1
    return 0


@numba.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def paint_torso(hu, lab, origin, h, prof, lab_skin, lab_fat, lab_wall, lab_cavity,
                hu_skin, hu_fat, hu_wall, hu_cavity):
    """Skin, subcutaneous fat, muscle wall and the (visceral-fat) cavity, row by row.

    Along an image row the layers are nested (the outline is convex), so each row is
    split into spans by bisection from the slice centre outward and the spans are filled;
    only the skin voxels are evaluated one by one (for the partial-volume edge).
    """
    nk, nj, ni = hu.shape
    values = np.array([hu_cavity, hu_wall, hu_fat, hu_skin])
    labels = np.array([lab_cavity, lab_wall, lab_fat, lab_skin])
    for k in numba.prange(nk):
        pr = prof[k]
        ic = int(round((pr[TP_CX] - origin[0]) / h))
        ic = min(max(ic, 0), ni - 1)
        for j in range(nj):
            py = origin[1] + j * h
            for side in (1, -1):
                n = ni - ic if side > 0 else ic + 1
                if side < 0 and n <= 1:
                    continue
                start = 0 if side > 0 else 1       # the centre voxel is done by the +1 side
                # first position (steps from the centre) of class >= t, by bisection
                bounds = np.empty(5, np.int64)
                bounds[0] = start
                for t in range(1, 5):
                    lo = bounds[t - 1]
                    hi = n
                    while lo < hi:
                        mid = (lo + hi) // 2
                        if _torso_class(pr, origin[0] + (ic + side * mid) * h, py, h) >= t:
                            hi = mid
                        else:
                            lo = mid + 1
                    bounds[t] = lo
                for t in range(3):
                    for p in range(bounds[t], bounds[t + 1]):
                        i = ic + side * p
                        hu[k, j, i] = values[t]
                        lab[k, j, i] = labels[t]
                for p in range(bounds[3], min(bounds[4] + 1, n)):
                    i = ic + side * p
                    px = origin[0] + i * h
                    d, fat, skin, wall = _torso_depth(pr, px, py)
                    if d <= fat:
                        hu[k, j, i] = hu_fat
                        lab[k, j, i] = lab_fat
                        continue
                    f = min(0.5 - (d - fat - skin) / h, 1.0)
                    if f <= 0.0:
                        continue
                    hu[k, j, i] = hu[k, j, i] * (1.0 - f) + hu_skin * f
                    if f >= 0.5:
                        lab[k, j, i] = lab_skin


@numba.njit(cache=True, fastmath=True)
def torso_depth_points(prof_rows, pts):
    """(N,) distance outside the skin surface (mm, radial) for (N, 3) points with their profile rows."""
    out = np.empty(pts.shape[0])
    for n in range(pts.shape[0]):
        d, fat, skin, wall = _torso_depth(prof_rows[n], pts[n, 0], pts[n, 1])
        out[n] = d - fat - skin
    return out
