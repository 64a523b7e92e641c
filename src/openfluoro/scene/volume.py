"""CT volumes in patient LPS millimetres.

Array convention (used everywhere in OpenFluoro): ``hu[k, j, i]`` -- slowest axis k
(slices), then j (rows), fastest i (columns). ``affine_lps`` is the 4x4 matrix taking
the column vector ``(i, j, k, 1)`` to DICOM patient LPS millimetres, the same meaning
as ITK's direction/spacing/origin with the numpy axes reversed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np


class VolumeError(ValueError):
    """A volume could not be read or is not usable; the message names the file and the field."""


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT volume: Hounsfield units on a grid with an affine to patient LPS mm."""

    hu: np.ndarray
    affine_lps: np.ndarray
    source: str = "<memory>"
    metadata: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        hu = np.asarray(self.hu)
        if hu.ndim != 3:
            raise VolumeError(f"{self.source}: expected a 3-D volume, got array of shape {hu.shape}")
        if min(hu.shape) < 2:
            raise VolumeError(f"{self.source}: volume of shape {hu.shape} is not 3-D (an axis has < 2 voxels)")
        a = np.asarray(self.affine_lps, dtype=np.float64)
        if a.shape != (4, 4) or not np.all(np.isfinite(a)):
            raise VolumeError(f"{self.source}: affine must be a finite 4x4 matrix, got {a!r}")
        if abs(np.linalg.det(a[:3, :3])) < 1e-9:
            raise VolumeError(f"{self.source}: affine is singular (zero voxel spacing?)")
        if hu.dtype != np.float32:
            hu = hu.astype(np.float32)
        if not np.all(np.isfinite(hu)):
            bad = int(np.count_nonzero(~np.isfinite(hu)))
            raise VolumeError(f"{self.source}: {bad} voxel(s) are NaN or infinite")
        hu = np.ascontiguousarray(hu)
        hu.setflags(write=False)
        a.setflags(write=False)
        object.__setattr__(self, "hu", hu)
        object.__setattr__(self, "affine_lps", a)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel spacing along (i, j, k) in mm."""
        return np.linalg.norm(self.affine_lps[:3, :3], axis=0)

    @property
    def centre_lps_mm(self) -> np.ndarray:
        k, j, i = self.shape
        return (self.affine_lps @ np.array([(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0]))[:3]

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) voxel indices (i, j, k) to (N, 3) LPS mm."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
        return ijk @ self.affine_lps[:3, :3].T + self.affine_lps[:3, 3]

    def lps_to_index(self, lps: np.ndarray) -> np.ndarray:
        """(N, 3) LPS mm to (N, 3) continuous voxel indices (i, j, k)."""
        lps = np.atleast_2d(np.asarray(lps, dtype=float))
        inv = np.linalg.inv(self.affine_lps)
        return lps @ inv[:3, :3].T + inv[:3, 3]

    def bounds_lps_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned (min, max) LPS corners of the voxel-centre grid."""
        k, j, i = self.shape
        corners = np.array([[a, b, c] for a in (0, i - 1) for b in (0, j - 1) for c in (0, k - 1)], float)
        pts = self.index_to_lps(corners)
        return pts.min(axis=0), pts.max(axis=0)


def ras_to_lps(affine_ras: np.ndarray) -> np.ndarray:
    """Convert a NIfTI (RAS) affine to LPS by negating the first two world axes."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ np.asarray(affine_ras, dtype=float)


def load_volume(path: str | Path, series_uid: str | None = None) -> Volume:
    """Read a CT volume from a DICOM series folder, NIfTI, NRRD or MHA file.

    ``path`` is a folder holding one DICOM CT series (searched recursively; when it holds
    several, ``series_uid`` picks one), a single DICOM file (a multi-frame Enhanced CT, or
    one slice standing for its series in its folder), ``.nii``/``.nii.gz`` (RAS, turned into
    LPS), ``.nrrd``/``.nhdr`` or ``.mha``/``.mhd`` (read by SimpleITK, already LPS).
    HU are float32; values below -1024 HU (scanner padding) are clipped to -1024, and DICOM
    voxels marked by PixelPaddingValue are set to -1024.

    Raises ``VolumeError`` naming the file and the field for anything unusable.
    """
    from openfluoro.scene import readers

    return readers.read_any(Path(path), series_uid)


def save_nifti(volume: Volume, path: str | Path) -> Path:
    """Write the volume as NIfTI (RAS affine, int16 HU where they fit)."""
    from openfluoro.scene import readers

    return readers.save_nifti(volume, path)
