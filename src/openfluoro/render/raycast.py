"""Cone-beam ray casting: per-material path-length images (g/cm2) from a volume.

The kernel is Joseph's method (P. M. Joseph, IEEE TMI 1 (1982) 192): each ray
steps through the volume one voxel plane at a time along its dominant index
axis and interpolates bilinearly within the plane. Soft tissue and bone are
packed side by side as uint16 (4 bytes a voxel, as much as one float32), so one
read of the four neighbouring voxels serves both materials and the volume is
traversed once; metal lives in its own small block around the implant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from openfluoro.geometry.carm import Geometry, pixel_offsets_mm
from openfluoro.scene.materials import BONE, MATERIALS, METAL, METAL_HU, SOFT, hu_to_material_densities
from openfluoro.scene.volume import Volume


#: Packed densities are uint16 counts of this many g/cm3 (0 .. 16.4 g/cm3, steps of 0.025 %
#: of water's density): a voxel's two channels then take 4 bytes, as one float32 would.
DENSITY_QUANTUM_G_CM3 = 2.5e-4
_EMPTY_G_CM3 = 0.005  # below this a voxel counts as empty when cropping (air is 0.0012)


@dataclass(frozen=True, eq=False)
class PackedBlock:
    """A box of voxels with two material channels packed as uint16, and where they go.

    ``(counts[k, j, i, c] - offset) x DENSITY_QUANTUM_G_CM3`` is the density of material
    ``channels[c]``; ``affine_lps`` maps this box's own indices. A non-zero ``offset``
    (counts) lets a block hold negative densities: a segment stored *relative to* the
    soft tissue that fills its place in the background.
    """

    counts: np.ndarray
    affine_lps: np.ndarray
    channels: tuple[int, int]
    offset: int = 0
    #: per axis (i, j, k): ``[plane, row, (x0, x1)]``, where along each in-plane row a sample
    #: can touch non-empty voxels; samples outside are skipped unread (empty-space skipping)
    plane_bounds: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    #: skipping pays only where much of the box is empty (a vertebra's box, not a CT's)
    sparse: bool | None = None

    def __post_init__(self) -> None:
        if self.plane_bounds is None:
            object.__setattr__(self, "plane_bounds", _plane_bounds(self.counts, self.offset))
        if self.sparse is None:
            occupied = float(np.mean(np.any(self.counts != self.offset, axis=3)))
            object.__setattr__(self, "sparse", occupied < 0.5)


@dataclass(frozen=True, eq=False)
class MaterialVolume:
    """Partial mass densities per material, packed for the projector.

    Soft tissue and bone share one block cropped to the non-empty voxels; metal, which
    is rare, gets a block of its own around the metal voxels (none without metal).
    """

    blocks: tuple[PackedBlock, ...]
    shape: tuple[int, int, int]
    materials: tuple[str, ...] = MATERIALS

    @classmethod
    def from_volume(cls, volume: Volume, keep: np.ndarray | None = None, fill_g_cm3: float = 0.0,
                    relative: bool = False, chunk_slices: int = 16) -> "MaterialVolume":
        """Decompose HU into material densities (``scene.materials``), a few slices at a time.

        ``keep`` (boolean, the volume's shape) limits the result to those voxels, to cut a
        patient into movable segments and a background. In the background (``relative``
        False) the voxels not kept hold soft tissue of ``fill_g_cm3``; a segment
        (``relative`` True) holds its soft-tissue density *minus* ``fill_g_cm3``, so that
        segment plus background is the patient again, and a segment that moves away
        leaves soft tissue behind instead of a void.
        """
        nk = volume.shape[0]
        if keep is not None and keep.shape != volume.shape:
            raise ValueError(f"keep mask {keep.shape} does not match the volume {volume.shape}")
        soft_bone = np.empty(volume.shape + (2,), dtype=np.uint16)
        hu_metal = volume.hu >= METAL_HU
        has_metal = bool(np.any(hu_metal if keep is None else hu_metal & keep))
        metal = np.zeros(volume.shape, dtype=np.float32) if has_metal else None
        offset = _RELATIVE_OFFSET if relative else 0
        for k0 in range(0, nk, chunk_slices):
            sl = slice(k0, k0 + chunk_slices)
            dens = hu_to_material_densities(volume.hu[sl])
            if keep is not None:
                dropped = ~keep[sl]
                dens[dropped] = 0.0
                if relative:
                    dens[~dropped, SOFT] -= fill_g_cm3
                else:
                    dens[dropped, SOFT] = fill_g_cm3
            soft_bone[sl] = _quantise(dens[..., [SOFT, BONE]], offset)
            if metal is not None:
                metal[sl] = dens[..., METAL]
        return cls._from_parts(soft_bone, metal, volume.affine_lps, volume.shape, offset)

    def moved(self, transform_lps: np.ndarray) -> "MaterialVolume":
        """The same voxels carried by an affine map of patient space (4x4, LPS mm).

        Joseph's method works on any grid affine, so projecting the moved volume is exact
        for a rigid motion; a stretch keeps each voxel's density (see ``scene.segments``).
        """
        t = np.asarray(transform_lps, dtype=float)
        return MaterialVolume(tuple(PackedBlock(b.counts, t @ b.affine_lps, b.channels, b.offset, b.plane_bounds,
                                                b.sparse) for b in self.blocks),
                              self.shape, self.materials)

    def corners_lps_mm(self) -> np.ndarray:
        """(8 * n_blocks, 3) LPS corners of the blocks' voxel grids, for projected bounding boxes."""
        pts = []
        for b in self.blocks:
            nk, nj, ni = b.counts.shape[:3]
            for c in np.array([[i, j, k] for i in (0, ni - 1) for j in (0, nj - 1) for k in (0, nk - 1)], float):
                pts.append(b.affine_lps[:3, :3] @ c + b.affine_lps[:3, 3])
        return np.array(pts).reshape(-1, 3)

    @classmethod
    def from_densities(cls, density: np.ndarray, affine_lps: np.ndarray) -> "MaterialVolume":
        """From partial densities ``density[k, j, i, m]`` in g/cm3, m in ``MATERIALS`` order."""
        density = np.asarray(density, dtype=np.float32)
        if density.ndim != 4 or density.shape[3] != len(MATERIALS):
            raise ValueError(f"density must have shape (k, j, i, {len(MATERIALS)}), got {density.shape}")
        metal = density[..., METAL] if np.any(density[..., METAL] > 0) else None
        return cls._from_parts(_quantise(density[..., [SOFT, BONE]]), metal,
                               np.asarray(affine_lps, float), density.shape[:3])

    @classmethod
    def _from_parts(cls, soft_bone_counts, metal, affine, shape, offset: int = 0) -> "MaterialVolume":
        blocks = []
        box = _bounding_box(np.abs(soft_bone_counts.astype(np.int32) - offset).max(axis=3)
                            > _EMPTY_G_CM3 / DENSITY_QUANTUM_G_CM3)
        if box is not None:
            blocks.append(_block(soft_bone_counts, box, affine, (SOFT, BONE), offset))
        if metal is not None:
            mbox = _bounding_box(metal > 0)
            counts = np.zeros(metal.shape + (2,), dtype=np.uint16)
            counts[..., 0] = _quantise(metal)
            blocks.append(_block(counts, mbox, affine, (METAL, METAL)))
        return cls(tuple(blocks), tuple(int(n) for n in shape))


#: Offset (counts) of relative segments: densities down to -2 g/cm3 can be stored.
_RELATIVE_OFFSET = 8000


def _row_ranges(occ: np.ndarray) -> np.ndarray:
    """``occ[p, y, x]`` occupancy -> ``[p, y, (x0, x1)]``: the x range a bilinear sample at row
    ``y`` of plane ``p`` can touch occupied voxels in (rows y and y+1, grown by one voxel);
    (inf, -inf) where it cannot."""
    near = occ.copy()
    near[:, :-1] |= occ[:, 1:]          # a sample at row y reads rows y and y+1
    n = near.shape[2]
    anyv = near.any(axis=2)
    x0 = np.where(anyv, np.argmax(near, axis=2) - 1.0, np.inf)
    x1 = np.where(anyv, n - np.argmax(near[:, :, ::-1], axis=2), -np.inf)   # last + 1
    return np.ascontiguousarray(np.stack([x0, x1], axis=2), dtype=np.float64)


def _plane_bounds(counts: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For planes i, j and k, the per-row x ranges (``_row_ranges``) with (x, y) the in-plane
    index axes the kernel uses: (j, k), (i, k) and (i, j)."""
    occ = np.any(counts != offset, axis=3)                  # (k, j, i)
    return (_row_ranges(np.transpose(occ, (2, 0, 1))),      # [i, k, j]
            _row_ranges(np.transpose(occ, (1, 0, 2))),      # [j, k, i]
            _row_ranges(occ))                               # [k, j, i]


def _quantise(density: np.ndarray, offset: int = 0) -> np.ndarray:
    q = np.rint(np.asarray(density, dtype=np.float32) / DENSITY_QUANTUM_G_CM3) + offset
    return np.clip(q, 0, 65535).astype(np.uint16)


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Index box of the True voxels, grown by one voxel so interpolation at its edges is exact."""
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(idx[0] - 1, 0), min(idx[-1] + 2, mask.shape[axis])))
    return tuple(box)  # type: ignore[return-value]


def _block(counts: np.ndarray, box, affine: np.ndarray, channels: tuple[int, int], offset: int = 0) -> PackedBlock:
    sub = np.ascontiguousarray(counts[box])
    # make every axis at least 2 voxels long so the bilinear stencil fits
    pad = [(0, max(0, 2 - n)) for n in sub.shape[:3]] + [(0, 0)]
    sub = np.pad(sub, pad, constant_values=offset)
    shifted = np.array(affine, dtype=float, copy=True)
    shifted[:3, 3] = affine[:3, :3] @ np.array([box[2].start, box[1].start, box[0].start]) + affine[:3, 3]
    return PackedBlock(sub, shifted, channels, offset)


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
    n_mat = len(mvol.materials)
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
    src_w = pose.source_lps_mm
    for block in mvol.blocks:
        inv = np.linalg.inv(block.affine_lps)
        lin, off = inv[:3, :3], inv[:3, 3]
        _cast_kernel(
            block.counts, *block.plane_bounds, bool(block.sparse), DENSITY_QUANTUM_G_CM3, float(block.offset), out,
            block.channels[0], block.channels[1],
            src_w, pix00, du, dv, lin @ src_w + off, lin @ pix00 + off, lin @ du, lin @ dv,
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


@numba.njit(cache=True, fastmath=True, inline="always")
def _plane_range(s: float, d: float, t0: float, t1: float) -> tuple[int, int]:
    """First and last integer plane index the ray crosses along an axis for t in [t0, t1]."""
    lo = s + t0 * d
    hi = s + t1 * d
    if lo > hi:
        lo, hi = hi, lo
    return int(np.ceil(lo - 1e-9)), int(np.floor(hi + 1e-9))


@numba.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _cast_kernel(vol, bnd_i, bnd_j, bnd_k, skip_empty, quantum, offset, out, ch0, ch1, src_w, pix00_w, du_w, dv_w, src_i, pix00_i, du_i, dv_i,
                 r0, r1, c0, c1):
    """Joseph ray casting of a two-channel packed block into ``out[ch0]`` and ``out[ch1]``."""
    nk, nj, ni, _ = vol.shape
    flat = vol.ravel()
    s_i, s_j, s_k = 2, 2 * ni, 2 * ni * nj  # flat strides of i, j, k (2 channels per voxel)
    for r in numba.prange(r0, r1):
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
            adi, adj, adk = abs(di), abs(dj), abs(dk)
            # Walk the planes of the dominant axis; (x, y) are the two in-plane coordinates,
            # advanced by (gx, gy) per plane; sp, sx, sy are the flat strides of p, x, y.
            if adi >= adj and adi >= adk:       # planes i = p; x -> j, y -> k
                step_mm = wlen / adi
                p0, p1 = _plane_range(src_i[0], di, t0, t1)
                gx, gy = dj / di, dk / di
                x = src_i[1] + (p0 - src_i[0]) * gx
                y = src_i[2] + (p0 - src_i[0]) * gy
                nx, ny, sp, sx, sy = nj, nk, s_i, s_j, s_k
                bnd = bnd_i
            elif adj >= adk:                    # planes j = p; x -> i, y -> k
                step_mm = wlen / adj
                p0, p1 = _plane_range(src_i[1], dj, t0, t1)
                gx, gy = di / dj, dk / dj
                x = src_i[0] + (p0 - src_i[1]) * gx
                y = src_i[2] + (p0 - src_i[1]) * gy
                nx, ny, sp, sx, sy = ni, nk, s_j, s_i, s_k
                bnd = bnd_j
            else:                               # planes k = p; x -> i, y -> j
                step_mm = wlen / adk
                p0, p1 = _plane_range(src_i[2], dk, t0, t1)
                gx, gy = di / dk, dj / dk
                x = src_i[0] + (p0 - src_i[2]) * gx
                y = src_i[1] + (p0 - src_i[2]) * gy
                nx, ny, sp, sx, sy = ni, nj, s_k, s_i, s_j
                bnd = bnd_k
            a0 = 0.0
            a1 = 0.0
            n_read = 0
            for p in range(p0, p1 + 1):
                if skip_empty:
                    yr = min(int(y), ny - 2)
                    if x < bnd[p, yr, 0] or x > bnd[p, yr, 1]:
                        x += gx                 # nothing but empty voxels around: skip unread
                        y += gy
                        continue
                n_read += 1
                x0 = min(max(int(x), 0), nx - 2)
                y0 = min(max(int(y), 0), ny - 2)
                fx = x - x0
                fy = y - y0
                w00 = (1 - fx) * (1 - fy)
                w10 = fx * (1 - fy)
                w01 = (1 - fx) * fy
                w11 = fx * fy
                q = p * sp + x0 * sx + y0 * sy
                a0 += (w00 * flat[q] + w10 * flat[q + sx] + w01 * flat[q + sy] + w11 * flat[q + sx + sy])
                a1 += (w00 * flat[q + 1] + w10 * flat[q + sx + 1] + w01 * flat[q + sy + 1]
                       + w11 * flat[q + sx + sy + 1])
                x += gx
                y += gy
            # (counts - offset) * quantum = g/cm3; g/cm3 * mm -> g/cm2
            a0 -= offset * n_read
            a1 -= offset * n_read
            scale = step_mm * 0.1 * quantum
            out[ch0, r, c] += a0 * scale
            out[ch1, r, c] += a1 * scale
