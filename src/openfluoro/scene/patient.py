"""The patient in the beam: a CT (or the phantom) with its labels and landmarks, if any."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from openfluoro.scene.volume import Volume, VolumeError, load_volume

#: TotalSegmentator "total" (v2) class ids of the spine (totalsegmentator/map_to_binary.py).
TOTALSEG_VERTEBRAE: Mapping[int, str] = {
    25: "sacrum", 26: "S1", 27: "L5", 28: "L4", 29: "L3", 30: "L2", 31: "L1", 32: "T12", 33: "T11",
    34: "T10", 35: "T9",
}
#: HU above which an unlabelled voxel counts as bone (cancellous bone is ~150-300 HU).
BONE_HU = 250.0


@dataclass(frozen=True, eq=False)
class Patient:
    """HU volume plus optional label map (same grid) with its names, and landmarks (LPS mm)."""

    volume: Volume
    labels: np.ndarray | None = None
    label_names: Mapping[int, str] = field(default_factory=dict)
    landmarks: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if self.labels is not None and self.labels.shape != self.volume.shape:
            raise VolumeError(
                f"{self.description or self.volume.source}: label map {self.labels.shape} does not match "
                f"the CT grid {self.volume.shape}"
            )

    @property
    def isocentre_lps_mm(self) -> tuple[float, float, float]:
        """Where to put the C-arm isocentre by default: the landmark if given, else the volume centre."""
        iso = self.landmarks.get("isocentre_lps_mm")
        c = self.volume.centre_lps_mm if iso is None else np.asarray(iso, float)
        return (float(c[0]), float(c[1]), float(c[2]))

    def label_id(self, name: str) -> int | None:
        for k, v in self.label_names.items():
            if v == name:
                return int(k)
        return None

    def tissue_at(self, point_lps_mm: np.ndarray) -> tuple[str, float]:
        """(structure name, HU) at a point: the label's name where labelled, else a HU class."""
        ijk = np.rint(self.volume.lps_to_index(point_lps_mm)[0]).astype(int)
        i, j, k = ijk
        nk, nj, ni = self.volume.shape
        if not (0 <= i < ni and 0 <= j < nj and 0 <= k < nk):
            return "outside", -1000.0
        hu = float(self.volume.hu[k, j, i])
        if self.labels is not None:
            name = self.label_names.get(int(self.labels[k, j, i]))
            if name is not None and name != "air":
                return name, hu
        if hu >= BONE_HU:
            return "bone", hu
        if hu < -500:
            return "air", hu
        return "soft_tissue", hu


def load_patient(volume_path: str | Path, labels_path: str | Path | None = None,
                 label_offset_k: int = 0) -> Patient:
    """A CT with an optional label map; TotalSegmentator ``total`` ids are understood.

    ``label_offset_k`` places a label map that covers only slices ``k0..`` of the CT
    (e.g. TotalSegmentator's ``example_seg`` covers slices 82-111 of ``example_ct``).
    """
    vol = load_volume(volume_path)
    if labels_path is None:
        return Patient(vol, description=str(volume_path))
    import nibabel as nib

    try:
        lab_img = nib.load(str(labels_path))
        lab = np.transpose(np.asarray(lab_img.dataobj).astype(np.int16), (2, 1, 0))
    except Exception as exc:  # nibabel raises many types for bad files
        raise VolumeError(f"{labels_path}: cannot read the label map ({exc})") from None
    full = np.zeros(vol.shape, dtype=np.int16)
    if lab.shape[1:] != vol.shape[1:] or label_offset_k + lab.shape[0] > vol.shape[0]:
        raise VolumeError(f"{labels_path}: label grid {lab.shape} (k,j,i) with offset {label_offset_k} does not fit "
                          f"the CT grid {vol.shape}")
    full[label_offset_k:label_offset_k + lab.shape[0]] = lab
    return Patient(vol, full, dict(TOTALSEG_VERTEBRAE), description=f"{volume_path} + {labels_path}")


def patient_from_phantom(phantom) -> Patient:
    """The built-in phantom as a ``Patient``, with the spine's label ids for traction.

    Landmarks gain ``vertebra_ids`` (T12..L5, sacrum) and ``disc_ids`` ("L3-L4", ...), and
    ``isocentre_lps_mm`` at the L3 body centre (the phantom's origin) when absent.
    """
    names = dict(phantom.label_table)
    vertebra_ids = {n: k for k, n in names.items() if n in ("T12", "L1", "L2", "L3", "L4", "L5", "sacrum")}
    disc_ids = {n[len("disc_"):].replace("_", "-"): k for k, n in names.items() if n.startswith("disc_")}
    landmarks = dict(phantom.landmarks)
    landmarks.setdefault("isocentre_lps_mm", (0.0, 0.0, 0.0))
    landmarks["vertebra_ids"] = vertebra_ids
    landmarks["disc_ids"] = disc_ids
    return Patient(phantom.volume, np.asarray(phantom.labels), names, landmarks, "built-in lumbar phantom")
