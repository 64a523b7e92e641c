"""File readers that turn DICOM series, NIfTI, NRRD and MHA into a ``Volume``.

Every failure is a ``VolumeError`` that names the file (or folder) and the field and
says what was expected; library exceptions never escape. HU below -1024 (scanner
padding, e.g. -2048 or -1207 outside the field of view) are clipped to -1024, and
DICOM PixelPaddingValue voxels are set to -1024.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from openfluoro.scene.volume import Volume, VolumeError, ras_to_lps

MIN_HU = -1024.0
CT_IMAGE_STORAGE = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")  # CT, Enhanced CT
SPACING_TOLERANCE = 0.01  # relative: slice gaps may differ from the median by 1 %


def read_any(path: Path, series_uid: str | None = None) -> Volume:
    """Dispatch on what ``path`` is: a folder (DICOM series) or a file by its extension."""
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_dicom_series(path, series_uid)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(path)
    if name.endswith((".nrrd", ".nhdr", ".mha", ".mhd")):
        return read_itk(path)
    if name.endswith(".dcm"):
        return read_dicom_series(path.parent, series_uid)
    raise VolumeError(f"{path}: unsupported volume format (expected a DICOM folder, .nii, .nii.gz, .nrrd, "
                      f".nhdr, .mha or .mhd)")


def _finish(hu: np.ndarray, affine: np.ndarray, source: str, metadata: dict | None = None) -> Volume:
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 3 or min(hu.shape) < 2:
        raise VolumeError(f"{source}: expected a 3-D volume, got an image of shape {hu.shape[::-1]} (i, j, k)")
    bad = ~np.isfinite(hu)
    if bad.any():
        raise VolumeError(f"{source}: {int(bad.sum())} voxel(s) are NaN or infinite")
    np.maximum(hu, np.float32(MIN_HU), out=hu)
    return Volume(hu, affine, source=source, metadata=metadata or {})


# -- NIfTI -----------------------------------------------------------------------------------

def read_nifti(path: Path) -> Volume:
    """NIfTI-1/2: nibabel's best affine (sform, else qform) is RAS; it is turned into LPS."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)  # scl_slope / scl_inter applied
    except Exception as exc:  # nibabel raises many exception types for damaged files
        raise VolumeError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"{path}: dim: expected a 3-D image, got {data.ndim}-D of shape {data.shape}")
    return _finish(np.transpose(data, (2, 1, 0)), ras_to_lps(img.affine), str(path))


def save_nifti(volume: Volume, path: str | Path) -> Path:
    """Write HU as NIfTI (int16 when the values fit, else float32) with the RAS affine."""
    import nibabel as nib

    path = Path(path)
    data = np.transpose(volume.hu, (2, 1, 0))
    if data.min() >= -32768 and data.max() <= 32767 and np.all(np.rint(data) == data):
        data = data.astype(np.int16)
    img = nib.Nifti1Image(data, ras_to_lps(volume.affine_lps))  # the flip is its own inverse
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    tmp = path.with_name(f".{path.name}.part{suffix}")   # written whole, then renamed: never half a file
    nib.save(img, str(tmp))
    tmp.replace(path)
    return path


# -- NRRD / MHA via SimpleITK (ITK physical space is LPS) --------------------------------------

def read_itk(path: Path) -> Volume:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise VolumeError(f"{path}: not a readable NRRD/MetaImage file ({first[-1] if first else exc})") from None
    if img.GetDimension() != 3:
        raise VolumeError(f"{path}: dimension: expected a 3-D image, got {img.GetDimension()}-D")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(f"{path}: expected one value per voxel, got {img.GetNumberOfComponentsPerPixel()}")
    arr = sitk.GetArrayFromImage(img).astype(np.float32)  # (k, j, i)
    direction = np.array(img.GetDirection(), dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.array(img.GetSpacing(), dtype=float)[None, :]
    affine[:3, 3] = img.GetOrigin()
    return _finish(arr, affine, str(path))


# -- DICOM series -----------------------------------------------------------------------------

def _read_header(f: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(f), stop_before_pixels=True)
    except InvalidDicomError:
        return None
    except Exception as exc:
        raise VolumeError(f"{f}: unreadable DICOM header ({type(exc).__name__}: {exc})") from None


def _sop_class(ds) -> str:
    sop = str(getattr(ds, "SOPClassUID", "") or "")
    if not sop and hasattr(ds, "file_meta"):
        sop = str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "") or "")
    return sop


def _float_list(ds, keyword: str, n: int, f: Path) -> np.ndarray:
    value = getattr(ds, keyword, None)
    try:
        arr = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        arr = np.array([])
    if arr.size != n or not np.all(np.isfinite(arr)):
        raise VolumeError(f"{f}: {keyword}: expected {n} numbers, got {value!r}")
    return arr


def read_dicom_series(folder: Path, series_uid: str | None = None) -> Volume:
    """One CT series from a folder: slices sorted along the slice normal, rescaled to HU.

    Accepts files whose SOPClassUID is empty when the file meta says CT Image Storage,
    and JPEG 2000 / JPEG-LS / RLE compressed pixel data (pylibjpeg).
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    headers = [(f, ds) for f in files if (ds := _read_header(f)) is not None]
    if not headers:
        raise VolumeError(f"{folder}: no DICOM files found ({len(files)} file(s) looked at)")
    images = [(f, ds) for f, ds in headers if "PixelData" in ds or "FloatPixelData" in ds
              or hasattr(ds, "Rows")]
    if not images:
        raise VolumeError(f"{folder}: the DICOM files hold no images")
    by_series: dict[str, list] = defaultdict(list)
    for f, ds in images:
        by_series[str(getattr(ds, "SeriesInstanceUID", "") or "<no SeriesInstanceUID>")].append((f, ds))
    if series_uid is not None:
        if series_uid not in by_series:
            raise VolumeError(f"{folder}: SeriesInstanceUID {series_uid} not found; present: {', '.join(by_series)}")
        series = by_series[series_uid]
    elif len(by_series) > 1:
        listing = "; ".join(f"{uid} ({len(v)} files)" for uid, v in sorted(by_series.items(), key=lambda kv: -len(kv[1])))
        raise VolumeError(f"{folder}: SeriesInstanceUID: the folder mixes {len(by_series)} series ({listing}); "
                          "pass series_uid= to choose one")
    else:
        series = next(iter(by_series.values()))

    f0, ds0 = series[0]
    modality = str(getattr(ds0, "Modality", "") or "")
    sop = _sop_class(ds0)
    if modality and modality != "CT":
        raise VolumeError(f"{f0}: Modality is {modality!r}; OpenFluoro needs CT (Hounsfield units)")
    if not modality and sop not in CT_IMAGE_STORAGE:
        raise VolumeError(f"{f0}: neither Modality nor SOPClassUID says CT (SOP class {sop or 'empty'})")
    if getattr(ds0, "NumberOfFrames", 1) not in (None, "", 1) and int(ds0.NumberOfFrames) > 1:
        raise VolumeError(f"{f0}: NumberOfFrames = {ds0.NumberOfFrames}: multi-frame (Enhanced) CT is not supported; "
                          "convert the series to single-frame files or NIfTI")

    iop = _float_list(ds0, "ImageOrientationPatient", 6, f0)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    if not (abs(np.linalg.norm(row_dir) - 1) < 1e-3 and abs(np.linalg.norm(col_dir) - 1) < 1e-3
            and abs(row_dir @ col_dir) < 1e-3):
        raise VolumeError(f"{f0}: ImageOrientationPatient {iop.tolist()} is not two orthonormal directions")
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    spacing_rc = _float_list(ds0, "PixelSpacing", 2, f0)  # (row spacing, column spacing)
    entries = []
    for f, ds in series:
        if (int(getattr(ds, "Rows", -1)), int(getattr(ds, "Columns", -1))) != (rows, cols):
            raise VolumeError(f"{f}: Rows/Columns {ds.Rows}x{ds.Columns} differ from {rows}x{cols} in {f0.name}")
        if not np.allclose(_float_list(ds, "ImageOrientationPatient", 6, f), iop, atol=1e-4):
            raise VolumeError(f"{f}: ImageOrientationPatient differs from {f0.name}: the series is not one stack")
        ipp = _float_list(ds, "ImagePositionPatient", 3, f)
        entries.append((float(ipp @ normal), ipp, f, ds))
    if len(entries) < 2:
        raise VolumeError(f"{folder}: only one slice ({f0.name}): a 2-D image, not a CT volume")
    entries.sort(key=lambda e: e[0])
    pos = np.array([e[0] for e in entries])
    steps = np.diff(pos)
    dup = np.flatnonzero(steps < 1e-3)
    if dup.size:
        a, b = entries[dup[0]][2], entries[dup[0] + 1][2]
        raise VolumeError(f"{b}: ImagePositionPatient duplicates that of {a} (position {pos[dup[0]]:.3f} mm along the "
                          "slice normal)")
    step = float(np.median(steps))
    uneven = np.flatnonzero(np.abs(steps - step) > SPACING_TOLERANCE * step)
    if uneven.size:
        k = uneven[0]
        missing = steps[k] / step
        what = (f"about {round(missing) - 1} slice(s) missing" if missing > 1.5
                else "uneven slice spacing")
        raise VolumeError(f"{entries[k + 1][2]}: ImagePositionPatient: gap of {steps[k]:.3f} mm after "
                          f"{entries[k][2].name} where the series steps {step:.3f} mm ({what})")

    hu = np.empty((len(entries), rows, cols), dtype=np.float32)
    for n, (_, _, f, _) in enumerate(entries):
        hu[n] = _slice_hu(f)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing_rc[1]   # i runs along a row (columns), spaced by column spacing
    affine[:3, 1] = col_dir * spacing_rc[0]
    affine[:3, 2] = normal * step
    affine[:3, 3] = entries[0][1]
    meta = {"SeriesInstanceUID": str(getattr(ds0, "SeriesInstanceUID", "")), "n_files": len(entries),
            "KVP": getattr(ds0, "KVP", None)}
    return _finish(hu, affine, str(folder), meta)


def _slice_hu(f: Path) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(str(f))
        raw = ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise VolumeError(f"{f}: cannot decode PixelData (transfer syntax {ts}): {exc}. For JPEG 2000 install "
                          "pylibjpeg and pylibjpeg-openjpeg (they are OpenFluoro dependencies)") from None
    except Exception as exc:
        raise VolumeError(f"{f}: PixelData unreadable, the file may be truncated ({type(exc).__name__}: {exc})") from None
    if raw.ndim != 2:
        raise VolumeError(f"{f}: expected one 2-D slice per file, got pixel data of shape {raw.shape}")
    values = raw.astype(np.float32)
    pad = getattr(ds, "PixelPaddingValue", None)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    out = values * np.float32(slope) + np.float32(intercept)
    if pad is not None:
        out[raw == pad] = MIN_HU
    return out
