"""Cone-beam ray casting: per-material path-length images (g/cm2) from a volume.

The kernel is Joseph's method (P. M. Joseph, IEEE TMI 1 (1982) 192): each ray
steps through the volume one voxel plane at a time along its dominant index
axis and interpolates bilinearly within the plane. Every interpolation reads
all material channels of the four neighbouring voxels at once (they are stored
last-axis-contiguous), so the volume is traversed once for all materials.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from openfluoro.geometry.carm import Geometry, pixel_offsets_mm
from openfluoro.scene.materials import MATERIALS, hu_to_material_densities
from openfluoro.scene.volume import Volume


@dataclass(frozen=True, eq=False)
class MaterialVolume:
    """Partial mass densities (g/cm3) per material on a volume's grid, ready for the projector.

    ``density[k, j, i, m]``; ``affine_lps`` as in ``Volume``.
    """

    density: np.ndarray
    affine_lps: np.ndarray
    materials: tuple[str, ...] = MATERIALS

    @classmethod
    def from_volume(cls, volume: Volume) -> "MaterialVolume":
        return cls(np.ascontiguousarray(hu_to_material_densities(volume.hu)), volume.affine_lps)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.density.shape[:3])  # type: ignore[return-value]


@dataclass(frozen=True)
class PixelWindow:
    """A rectangle of image pixels ``[row0, row1) x [col0, col1)``."""

    row0: int
    row1: int
    col0: int
    col1: int


def project_materials(
    mvol: MaterialVolume, geometry: Geometry, window: PixelWindow | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Path length through each material for every image pixel, in g/cm2.

    Returns an array ``(n_materials, rows, cols)`` (float32). With ``window`` only
    that rectangle is cast (the rest of ``out`` is left untouched, zero when new);
    the result is *added* to ``out`` when one is given, so several volumes (rigid
    segments, say) can be cast into one image.
    """
    det = geometry.detector
    n_mat = mvol.density.shape[3]
    rows, cols = det.image_rows, det.image_cols
    if out is None:
        out = np.zeros((n_mat, rows, cols), dtype=np.float32)
    elif out.shape != (n_mat, rows, cols) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {(n_mat, rows, cols)}, got {out.dtype} {out.shape}")
    if window is None:
        window = PixelWindow(0, rows, 0, cols)

    pose = geometry.pose
    u_off, v_off = pixel_offsets_mm(det)
    pix00 = pose.detector_centre_lps_mm + u_off[0] * pose.u_axis + v_off[0] * pose.v_axis
    du = det.image_pitch_mm * pose.u_axis
    dv = det.image_pitch_mm * pose.v_axis

    inv = np.linalg.inv(mvol.affine_lps)
    lin, off = inv[:3, :3], inv[:3, 3]
    src_w = pose.source_lps_mm
    src_i = lin @ src_w + off
    pix00_i = lin @ pix00 + off
    du_i, dv_i = lin @ du, lin @ dv

    _cast_kernel(
        mvol.density, out,
        src_w.astype(np.float64), pix00.astype(np.float64), du.astype(np.float64), dv.astype(np.float64),
        src_i.astype(np.float64), pix00_i.astype(np.float64), du_i.astype(np.float64), dv_i.astype(np.float64),
        window.row0, window.row1, window.col0, window.col1,
    )
    return out


@numba.njit(cache=True, fastmath=True, inline="always")
def _axis_range(s: float, d: float, n: int) -> tuple[float, float]:
    """Parameter interval [t0, t1] where s + t*d lies inside [0, n-1]."""
    if abs(d) < 1e-12:
        if 0.0 <= s <= n - 1:
            return -1e30, 1e30
        return 1e30, -1e30
    ta = (0.0 - s) / d
    tb = (n - 1 - s) / d
    return (ta, tb) if ta < tb else (tb, ta)


@numba.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _cast_kernel(vol, out, src_w, pix00_w, du_w, dv_w, src_i, pix00_i, du_i, dv_i, r0, r1, c0, c1):
    nk, nj, ni, nm = vol.shape
    for r in numba.prange(r0, r1):
        acc = np.zeros(nm, dtype=np.float64)
        for c in range(c0, c1):
            # ray in world (for lengths) and index space (for sampling)
            wx = pix00_w[0] + c * du_w[0] + r * dv_w[0] - src_w[0]
            wy = pix00_w[1] + c * du_w[1] + r * dv_w[1] - src_w[1]
            wz = pix00_w[2] + c * du_w[2] + r * dv_w[2] - src_w[2]
            di = pix00_i[0] + c * du_i[0] + r * dv_i[0] - src_i[0]
            dj = pix00_i[1] + c * du_i[1] + r * dv_i[1] - src_i[1]
            dk = pix00_i[2] + c * du_i[2] + r * dv_i[2] - src_i[2]
            wlen = np.sqrt(wx * wx + wy * wy + wz * wz)
            # clip the ray (t in [0, 1]) to the grid box
            t0, t1 = 0.0, 1.0
            a, b = _axis_range(src_i[0], di, ni)
            t0, t1 = max(t0, a), min(t1, b)
            a, b = _axis_range(src_i[1], dj, nj)
            t0, t1 = max(t0, a), min(t1, b)
            a, b = _axis_range(src_i[2], dk, nk)
            t0, t1 = max(t0, a), min(t1, b)
            if t1 <= t0:
                continue
            for m in range(nm):
                acc[m] = 0.0
            adi, adj, adk = abs(di), abs(dj), abs(dk)
            if adi >= adj and adi >= adk:
                # dominant axis i: planes i = const, bilinear in (j, k)
                step_mm = wlen / adi
                lo = src_i[0] + t0 * di
                hi = src_i[0] + t1 * di
                if lo > hi:
                    lo, hi = hi, lo
                p0 = int(np.ceil(lo - 1e-9))
                p1 = int(np.floor(hi + 1e-9))
                for p in range(p0, p1 + 1):
                    t = (p - src_i[0]) / di
                    y = src_i[1] + t * dj
                    z = src_i[2] + t * dk
                    y0 = min(max(int(y), 0), nj - 2)
                    z0 = min(max(int(z), 0), nk - 2)
                    fy = y - y0
                    fz = z - z0
                    w00 = (1 - fy) * (1 - fz)
                    w10 = fy * (1 - fz)
                    w01 = (1 - fy) * fz
                    w11 = fy * fz
                    for m in range(nm):
                        acc[m] += (w00 * vol[z0, y0, p, m] + w10 * vol[z0, y0 + 1, p, m]
                                   + w01 * vol[z0 + 1, y0, p, m] + w11 * vol[z0 + 1, y0 + 1, p, m])
            elif adj >= adk:
                step_mm = wlen / adj
                lo = src_i[1] + t0 * dj
                hi = src_i[1] + t1 * dj
                if lo > hi:
                    lo, hi = hi, lo
                p0 = int(np.ceil(lo - 1e-9))
                p1 = int(np.floor(hi + 1e-9))
                for p in range(p0, p1 + 1):
                    t = (p - src_i[1]) / dj
                    x = src_i[0] + t * di
                    z = src_i[2] + t * dk
                    x0 = min(max(int(x), 0), ni - 2)
                    z0 = min(max(int(z), 0), nk - 2)
                    fx = x - x0
                    fz = z - z0
                    w00 = (1 - fx) * (1 - fz)
                    w10 = fx * (1 - fz)
                    w01 = (1 - fx) * fz
                    w11 = fx * fz
                    for m in range(nm):
                        acc[m] += (w00 * vol[z0, p, x0, m] + w10 * vol[z0, p, x0 + 1, m]
                                   + w01 * vol[z0 + 1, p, x0, m] + w11 * vol[z0 + 1, p, x0 + 1, m])
            else:
                step_mm = wlen / adk
                lo = src_i[2] + t0 * dk
                hi = src_i[2] + t1 * dk
                if lo > hi:
                    lo, hi = hi, lo
                p0 = int(np.ceil(lo - 1e-9))
                p1 = int(np.floor(hi + 1e-9))
                for p in range(p0, p1 + 1):
                    t = (p - src_i[2]) / dk
                    x = src_i[0] + t * di
                    y = src_i[1] + t * dj
                    x0 = min(max(int(x), 0), ni - 2)
                    y0 = min(max(int(y), 0), nj - 2)
                    fx = x - x0
                    fy = y - y0
                    w00 = (1 - fx) * (1 - fy)
                    w10 = fx * (1 - fy)
                    w01 = (1 - fx) * fy
                    w11 = fx * fy
                    for m in range(nm):
                        acc[m] += (w00 * vol[p, y0, x0, m] + w10 * vol[p, y0, x0 + 1, m]
                                   + w01 * vol[p, y0 + 1, x0, m] + w11 * vol[p, y0 + 1, x0 + 1, m])
            # g/cm3 * mm -> g/cm2
            scale = step_mm * 0.1
            for m in range(nm):
                out[m, r, c] += acc[m] * scale
