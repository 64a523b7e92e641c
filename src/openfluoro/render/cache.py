"""Per-pose rendering cache: a still C-arm never re-casts the anatomy.

``SceneRenderer`` splits the patient into a static background and, when the spine
is labelled, one block per vertebra and disc. For a given geometry it casts the
background once and keeps it. Each frame then only adds what moved:

* the needle, projected analytically inside its bounding box (``render.tools``);
* vertebrae and discs displaced by traction, each cast through its own 4x4 map
  (``MaterialVolume.moved``) inside its projected bounding box -- exact for rigid
  vertebrae, since moving a voxel grid is the same as moving its affine. Segments are
  stored relative to soft tissue (``FILL_G_CM3``), which also fills their place in the
  background: what a vertebra leaves behind is soft tissue, and where it moves it
  displaces the soft tissue there.

With no traction the segments are part of the cached image, so a still frame costs
one copy of the needle's window; while traction holds still the moved composite is
cached the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from openfluoro.geometry.carm import Geometry
from openfluoro.render.raycast import MaterialVolume, PixelWindow, project_materials
from openfluoro.render.tools import project_needle
from openfluoro.scene.needle import Needle
from openfluoro.scene.patient import Patient


#: Soft tissue (muscle, ligament, disc) that fills the place a moving segment leaves behind.
FILL_G_CM3 = 1.05


@dataclass(frozen=True, eq=False)
class Segment:
    name: str
    material: MaterialVolume


def projected_window(points_lps_mm: np.ndarray, geometry: Geometry, pad_px: int = 2) -> PixelWindow | None:
    """Pixel rectangle covering the projections of ``points`` (None when off the panel)."""
    cr = geometry.project(points_lps_mm)
    det = geometry.detector
    c0 = max(int(np.floor(cr[:, 0].min())) - pad_px, 0)
    c1 = min(int(np.ceil(cr[:, 0].max())) + pad_px + 1, det.image_cols)
    r0 = max(int(np.floor(cr[:, 1].min())) - pad_px, 0)
    r1 = min(int(np.ceil(cr[:, 1].max())) + pad_px + 1, det.image_rows)
    if c0 >= c1 or r0 >= r1:
        return None
    return PixelWindow(r0, r1, c0, c1)


class SceneRenderer:
    """Path-length images of a patient (and a needle) with the anatomy cached per geometry."""

    def __init__(self, patient: Patient, segment_ids: dict[str, int] | None = None) -> None:
        self.patient = patient
        segment_ids = segment_ids or {}
        if segment_ids and patient.labels is None:
            raise ValueError("movable segments need a label map")
        movable = np.zeros(patient.volume.shape, dtype=bool)
        self.segments: dict[str, Segment] = {}
        for name, label in segment_ids.items():
            mask = patient.labels == label
            if not mask.any():
                continue
            movable |= mask
            self.segments[name] = Segment(name, _cropped_material(patient, mask))
        self.background = MaterialVolume.from_volume(patient.volume, keep=~movable if segment_ids else None,
                                                     fill_g_cm3=FILL_G_CM3)
        self._geometry: Geometry | None = None
        self._static: np.ndarray | None = None        # background (+ segments at rest)
        self._background_only: np.ndarray | None = None
        self._work: np.ndarray | None = None
        self._base: np.ndarray | None = None
        self._base_key: tuple | None = None
        self._dirty: list[PixelWindow] = []
        self.casts = 0                                   # full anatomy casts, for tests and benchmarks
        #: windows of the last ``paths`` result that differ from the call before; None = all
        self.changed: list[PixelWindow] | None = None

    # -- anatomy ------------------------------------------------------------------------
    def _ensure(self, geometry: Geometry) -> None:
        if geometry == self._geometry and self._static is not None:
            return
        bg = project_materials(self.background, geometry)
        static = bg.copy()
        for seg in self.segments.values():
            project_materials(seg.material, geometry, out=static)
        self._background_only, self._static = bg, static
        self._base, self._base_key = static, None    # what ``_work`` holds, less the needle
        self._work = static.copy()
        self._dirty = []
        self._geometry = geometry
        self.casts += 1

    def paths(self, geometry: Geometry, needle: Needle | None = None,
              segment_transforms: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """(3, rows, cols) path lengths in g/cm2 of anatomy (+ moved segments) + needle.

        The returned array is an internal buffer, valid until the next call.
        """
        casts = self.casts
        self._ensure(geometry)
        assert self._static is not None and self._work is not None and self._background_only is not None
        assert self._base is not None
        changed: list[PixelWindow] | None = None if self.casts != casts else list(self._dirty)
        moving = {n: t for n, t in (segment_transforms or {}).items()
                  if n in self.segments and not np.allclose(t, np.eye(4))}
        key = tuple((n, moving[n].tobytes()) for n in sorted(moving)) or None
        work = self._work
        if key != self._base_key:
            # the anatomy itself changed (segments moved): compose it anew
            if key is None:
                base = self._static
            else:
                base = self._background_only.copy()
                for name, seg in self.segments.items():
                    mat = seg.material.moved(moving[name]) if name in moving else seg.material
                    win = projected_window(mat.corners_lps_mm(), geometry)
                    if win is not None:
                        project_materials(mat, geometry, win, out=base)
            self._base, self._base_key = base, key
            np.copyto(work, base)
            self._dirty = []
            changed = None
        else:
            for w in self._dirty:  # undo the last frame's additions only where they were made
                work[:, w.row0:w.row1, w.col0:w.col1] = self._base[:, w.row0:w.row1, w.col0:w.col1]
            self._dirty = []
        if needle is not None:
            win = project_needle(needle, geometry, out=work)
            if win is not None and win.row1 > win.row0 and win.col1 > win.col0:
                self._dirty.append(win)
                if changed is not None:
                    changed.append(win)
        self.changed = changed
        return work


def _cropped_material(patient: Patient, mask: np.ndarray) -> MaterialVolume:
    """Material volume of the masked voxels only, on a box around them."""
    from openfluoro.scene.volume import Volume

    k, j, i = np.nonzero(mask)
    lo = np.array([k.min(), j.min(), i.min()]) - 1
    hi = np.array([k.max(), j.max(), i.max()]) + 2
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, patient.volume.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    affine = patient.volume.affine_lps.copy()
    affine[:3, 3] = patient.volume.index_to_lps(np.array([[lo[2], lo[1], lo[0]]]))[0]
    sub = Volume(patient.volume.hu[box], affine, source=f"{patient.description} segment")
    return MaterialVolume.from_volume(sub, keep=mask[box], fill_g_cm3=FILL_G_CM3, relative=True)
