"""File readers that turn DICOM series, NIfTI, NRRD and MHA into a ``Volume``.

Every failure is a ``VolumeError`` that names the file (or folder) and the field and
says what was expected; library exceptions never escape.

Padding: HU below -1024 (scanner padding outside the reconstruction circle, e.g. -2048,
-3024 or -1207) are clipped to -1024 (air) for every format, and DICOM voxels equal to
PixelPaddingValue (or inside PixelPaddingValue..PixelPaddingRangeLimit) are set to -1024.

DICOM specifics:

* one series per volume; a folder mixing several SeriesInstanceUIDs is refused (the
  message lists them) unless ``series_uid=`` picks one; localizer (scout) images in the
  series are skipped;
* files whose SOPClassUID is empty are accepted when the file meta
  (MediaStorageSOPClassUID) or Modality says CT; any other Modality is refused;
* slices are sorted by ImagePositionPatient projected on the slice normal
  (row x column direction of ImageOrientationPatient); the slice step is the real
  distance between positions, checked to be even within 1 % (missing, duplicated and
  unevenly spaced slices are refused);
* a gantry-tilted series (positions drifting in-plane, linearly) keeps its true
  geometry: the k column of the affine is the real step between slice positions, so the
  affine is then sheared, and ``metadata["gantry_tilt_deg"]`` says by how much;
* compressed transfer syntaxes are decoded by pydicom's plugins (JPEG 2000 via
  pylibjpeg + pylibjpeg-openjpeg); a missing decoder is named with the package to install;
* Enhanced CT (geometry in functional groups) is read too: one multi-frame file, or a
  series split over several such files.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from openfluoro.scene.volume import Volume, VolumeError, ras_to_lps

MIN_HU = -1024.0
CT_IMAGE_STORAGE = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")  # CT, Enhanced CT
SPACING_TOLERANCE = 0.01  # relative: slice steps may differ from the typical step by 1 %
ORIENTATION_TOLERANCE = 1e-3  # direction cosines may differ by this much between slices

# Packages that provide pydicom decoders, by transfer syntax (pydicom 3 plugins).
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg and pylibjpeg-libjpeg (or Pillow)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg and pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pylibjpeg and pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg and pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pylibjpeg and pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.81": "pylibjpeg and pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg and pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg and pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg and pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg and pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg and pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg and pylibjpeg-rle",
}


def read_any(path: Path, series_uid: str | None = None) -> Volume:
    """Dispatch on what ``path`` is: a folder (DICOM series) or a file by its extension."""
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_dicom_series(path, series_uid)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(path)
    if name.endswith((".nrrd", ".nhdr", ".mha", ".mhd")):
        return read_itk(path)
    if name.endswith((".dcm", ".dicom", ".ima")) or _read_header(path) is not None:
        return read_dicom_file(path, series_uid)
    raise VolumeError(f"{path}: unsupported volume format (expected a DICOM folder or file, .nii, .nii.gz, "
                      f".nrrd, .nhdr, .mha or .mhd)")


def _finish(hu: np.ndarray, affine: np.ndarray, source: str, metadata: dict | None = None) -> Volume:
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 3 or min(hu.shape) < 2:
        raise VolumeError(f"{source}: expected a 3-D volume, got an image of shape {hu.shape[::-1]} (i, j, k): "
                          "a 2-D image is not a CT volume")
    bad = ~np.isfinite(hu)
    if bad.any():
        k, j, i = np.argwhere(bad)[0]
        raise VolumeError(f"{source}: voxel values: {int(bad.sum())} voxel(s) are NaN or infinite "
                          f"(first at i={i}, j={j}, k={k})")
    np.maximum(hu, np.float32(MIN_HU), out=hu)
    return Volume(hu, affine, source=source, metadata=metadata or {})


# -- NIfTI -----------------------------------------------------------------------------------

_NIFTI_UNIT_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}


def read_nifti(path: Path) -> Volume:
    """NIfTI-1/2: nibabel's best affine (sform if its code is set, else qform, else the
    voxel sizes alone) is RAS; it is turned into LPS. scl_slope/scl_inter are applied."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise VolumeError(f"{path}: not a NIfTI file (nibabel read it as {type(img).__name__})")
        hdr = img.header
        data = np.asarray(img.dataobj, dtype=np.float32)  # scl_slope / scl_inter applied
        affine_ras = np.asarray(img.affine, dtype=float)
        space_unit = hdr.get_xyzt_units()[0]
        sform_code, qform_code = int(hdr["sform_code"]), int(hdr["qform_code"])
    except VolumeError:
        raise
    except Exception as exc:  # nibabel, gzip, zlib and numpy raise many types for damaged files
        raise VolumeError(f"{path}: not a readable NIfTI file, truncated or corrupt? "
                          f"({type(exc).__name__}: {exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"{path}: dim: expected a 3-D image, got {data.ndim}-D of shape {data.shape}")
    if not np.all(np.isfinite(affine_ras)):
        raise VolumeError(f"{path}: sform/qform: the affine is not finite: {affine_ras.tolist()}")
    scale = _NIFTI_UNIT_MM.get(space_unit)
    if scale is None:
        raise VolumeError(f"{path}: xyzt_units: spatial unit {space_unit!r} is not a length")
    if scale != 1.0:
        affine_ras = affine_ras.copy()
        affine_ras[:3, :] *= scale
    affine_source = "sform" if sform_code > 0 else "qform" if qform_code > 0 else "none (voxel sizes only)"
    meta = {"format": "NIfTI", "affine_source": affine_source, "space_unit": space_unit}
    return _finish(np.transpose(data, (2, 1, 0)), ras_to_lps(affine_ras), str(path), meta)


def save_nifti(volume: Volume, path: str | Path) -> Path:
    """Write HU as NIfTI (int16 when every value is an integer in int16 range, else float32)
    with the RAS affine in the sform (code 1, scanner) and, when the affine has no shear,
    the qform too. The file is written whole and then renamed into place."""
    import nibabel as nib

    path = Path(path)
    lower = path.name.lower()
    if not lower.endswith((".nii", ".nii.gz")):
        raise VolumeError(f"{path}: save_nifti writes .nii or .nii.gz files, not {path.suffix or 'no extension'}")
    data = np.transpose(volume.hu, (2, 1, 0))  # (k, j, i) -> NIfTI (i, j, k)
    if data.min() >= -32768 and data.max() <= 32767 and np.all(np.rint(data) == data):
        data = data.astype(np.int16)
    else:
        data = data.astype(np.float32)
    ras = ras_to_lps(volume.affine_lps)  # the flip is its own inverse
    img = nib.Nifti1Image(data, ras)
    hdr = img.header
    hdr.set_xyzt_units("mm")
    hdr.set_slope_inter(1.0, 0.0)
    img.set_sform(ras, code=1)
    lin = ras[:3, :3]
    gram = lin.T @ lin
    if np.allclose(gram, np.diag(np.diag(gram)), atol=1e-6 * np.max(np.diag(gram))):
        img.set_qform(ras, code=1)
    else:
        img.set_qform(None, code=0)  # a sheared (gantry-tilted) grid fits only the sform
    hdr["descrip"] = b"openfluoro HU"
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if lower.endswith(".gz") else ".nii"
    tmp = path.with_name(f".{path.name}.part{suffix}")
    try:
        nib.save(img, str(tmp))
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise VolumeError(f"{path}: could not write the NIfTI file ({exc})") from None
    return path


# -- NRRD / MHA via SimpleITK (ITK physical space is LPS) --------------------------------------

def read_itk(path: Path) -> Volume:
    """NRRD (.nrrd/.nhdr) and MetaImage (.mha/.mhd): SimpleITK's origin, spacing and
    direction are already LPS (its NRRD reader converts RAS spaces)."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        raise VolumeError(f"{path}: not a readable NRRD/MetaImage file, truncated or corrupt? "
                          f"({lines[-1] if lines else type(exc).__name__})") from None
    if img.GetDimension() != 3:
        raise VolumeError(f"{path}: dimension: expected a 3-D image, got {img.GetDimension()}-D "
                          f"of size {img.GetSize()}")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(f"{path}: pixel type: expected one value per voxel, got "
                          f"{img.GetNumberOfComponentsPerPixel()} components ({img.GetPixelIDTypeAsString()})")
    try:
        arr = sitk.GetArrayFromImage(img).astype(np.float32)  # (k, j, i)
    except Exception as exc:
        raise VolumeError(f"{path}: voxel data unreadable ({type(exc).__name__}: {exc})") from None
    direction = np.array(img.GetDirection(), dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.array(img.GetSpacing(), dtype=float)[None, :]
    affine[:3, 3] = img.GetOrigin()
    return _finish(arr, affine, str(path), {"format": "NRRD" if "nrrd" in path.name.lower()
                                            or path.name.lower().endswith(".nhdr") else "MetaImage"})


# -- DICOM ------------------------------------------------------------------------------------

@dataclass
class _Frame:
    """One 2-D slice of a DICOM series: a single-frame file, or one frame of a multi-frame file."""

    label: str            # for messages: the file, plus "frame n" in a multi-frame file
    path: Path
    frame: int | None     # 0-based frame index in a multi-frame file, None for a single-frame file
    ipp: np.ndarray
    iop: np.ndarray
    spacing_rc: np.ndarray  # PixelSpacing: (row spacing = between rows, column spacing)
    rows: int
    cols: int
    slope: float
    intercept: float
    padding: tuple[int, int] | None  # stored-value range that marks padding, inclusive


def _dcmread(f: Path, stop_before_pixels: bool):
    """pydicom.dcmread, also accepting a bare data set without the 128-byte preamble and
    file meta (old archives write them): it must start with a group 0008 element and say
    what it is (SOPClassUID or Modality). None when the file is not DICOM."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        return pydicom.dcmread(str(f), stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        pass
    try:
        with open(f, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    if len(head) < 8 or head[:2] != b"\x08\x00":
        return None
    try:
        ds = pydicom.dcmread(str(f), stop_before_pixels=stop_before_pixels, force=True)
    except Exception:
        return None
    if "SOPClassUID" not in ds and "Modality" not in ds:
        return None
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit
                                          else ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds


def _read_header(f: Path):
    """The data set without pixel data, or None when ``f`` is not DICOM at all."""
    try:
        return _dcmread(f, stop_before_pixels=True)
    except Exception as exc:
        raise VolumeError(f"{f}: unreadable DICOM header, truncated or corrupt? ({type(exc).__name__}: {exc})") from None


def _sop_class(ds) -> str:
    sop = str(ds.get("SOPClassUID", "") or "")
    if not sop and getattr(ds, "file_meta", None) is not None:
        sop = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    return sop


def _is_image(ds) -> bool:
    return "Rows" in ds and "Columns" in ds


def _is_localizer(ds) -> bool:
    try:
        return "LOCALIZER" in [str(v).upper() for v in (ds.get("ImageType") or [])]
    except TypeError:
        return False


def _floats(value, n: int, where: str, keyword: str) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        arr = np.array([])
    if arr.size != n or not np.all(np.isfinite(arr)):
        shown = "missing" if value is None else repr(value)
        raise VolumeError(f"{where}: {keyword}: expected {n} numbers, got {shown}")
    return arr


def _number(ds, keyword: str, default: float, where: str) -> float:
    value = ds.get(keyword, None) if ds is not None else None
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not np.isfinite(out):
        raise VolumeError(f"{where}: {keyword}: expected a number, got {value!r}")
    return out


def _int(ds, keyword: str, where: str) -> int:
    value = ds.get(keyword, None)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise VolumeError(f"{where}: {keyword}: expected an integer, got {value!r}") from None


def _padding(ds, where: str) -> tuple[int, int] | None:
    """Stored-value range marking padding (PixelPaddingValue [.. PixelPaddingRangeLimit])."""
    if "PixelPaddingValue" not in ds:
        return None
    vals = []
    for kw in ("PixelPaddingValue", "PixelPaddingRangeLimit"):
        if kw not in ds:
            continue
        v = ds[kw].value
        if isinstance(v, bytes):   # ambiguous US/SS left raw: decode with PixelRepresentation
            v = int.from_bytes(v[:2], "little", signed=int(ds.get("PixelRepresentation", 0) or 0) == 1)
        try:
            v = int(v)
        except (TypeError, ValueError):
            raise VolumeError(f"{where}: {kw}: expected an integer, got {v!r}") from None
        bits = int(ds.get("BitsAllocated", 16) or 16)
        if int(ds.get("PixelRepresentation", 0) or 0) == 1 and v >= 2 ** (bits - 1):
            v -= 2 ** bits  # a signed value that was read as unsigned
        vals.append(v)
    return (min(vals), max(vals))


def _check_modality(f: Path, ds) -> None:
    modality = str(ds.get("Modality", "") or "")
    sop = _sop_class(ds)
    if modality and modality.upper() != "CT":
        raise VolumeError(f"{f}: Modality is {modality!r}; OpenFluoro needs CT (Hounsfield units)")
    if not modality and sop not in CT_IMAGE_STORAGE:
        raise VolumeError(f"{f}: Modality is empty and SOPClassUID ({sop or 'empty'}) is not CT Image Storage: "
                          "not a CT image")


def _n_frames(ds) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def read_dicom_file(path: Path, series_uid: str | None = None) -> Volume:
    """One DICOM file: a multi-frame (Enhanced) CT is read on its own; a single-frame file
    stands for its series, read from the file's folder."""
    ds = _read_header(path)
    if ds is None:
        raise VolumeError(f"{path}: not a DICOM file (no DICM prefix and no file meta information)")
    if not _is_image(ds):
        raise VolumeError(f"{path}: Rows/Columns: the file holds no image (SOP class {_sop_class(ds) or 'empty'})")
    if _n_frames(ds) > 1:
        _check_modality(path, ds)
        return _assemble(_frames_of([(path, ds)]), str(path), _series_meta(ds, 1))
    uid = series_uid if series_uid is not None else str(ds.get("SeriesInstanceUID", "") or "") or None
    return read_dicom_series(path.parent, uid)


def read_dicom_series(folder: Path, series_uid: str | None = None) -> Volume:
    """One CT series from a folder (searched recursively): slices sorted along the slice
    normal, rescaled to HU, with the affine from IOP/IPP/PixelSpacing and the real step."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeError(f"{folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    images, localizers, damaged, non_dicom = [], [], [], 0
    for f in files:
        ds = _read_header(f)
        if ds is None:
            non_dicom += 1
        elif _is_image(ds):
            (localizers if _is_localizer(ds) else images).append((f, ds))
        elif _sop_class(ds) in CT_IMAGE_STORAGE or not _sop_class(ds):
            # pydicom reads a file cut short without complaint: a CT (or unlabelled) data set
            # without Rows/Columns is a damaged image, not some other kind of DICOM object
            damaged.append((f, ds))

    def refuse_damaged(uid: str | None) -> None:
        for f, ds in damaged:
            if uid is None or str(ds.get("SeriesInstanceUID", "") or "") in ("", uid):
                raise VolumeError(f"{f}: Rows/Columns missing from a {'CT image' if _sop_class(ds) else 'DICOM'} "
                                  f"file ({len(ds)} data elements read): truncated or corrupt?")

    if not images and not localizers:
        refuse_damaged(None)
        raise VolumeError(f"{folder}: no DICOM image files found ({len(files)} file(s) looked at, "
                          f"{non_dicom} not DICOM)" if files else f"{folder}: no DICOM files found (the folder is empty)")
    if not images:
        images, localizers = localizers, []   # only scouts: let the checks below say what is wrong

    by_series: dict[str, list] = defaultdict(list)
    for f, ds in images:
        by_series[str(ds.get("SeriesInstanceUID", "") or "<no SeriesInstanceUID>")].append((f, ds))
    if series_uid is not None:
        if series_uid not in by_series:
            raise VolumeError(f"{folder}: SeriesInstanceUID {series_uid} not found; present: "
                              f"{_series_listing(by_series, folder)}")
        series = by_series[series_uid]
    elif len(by_series) > 1:
        raise VolumeError(f"{folder}: SeriesInstanceUID: the folder mixes {len(by_series)} series "
                          f"({_series_listing(by_series, folder)}); pass series_uid= to choose one")
    else:
        series = next(iter(by_series.values()))
    uid_chosen = str(series[0][1].get("SeriesInstanceUID", "") or "")
    refuse_damaged(uid_chosen)
    skipped = sum(1 for _, ds in localizers if str(ds.get("SeriesInstanceUID", "") or "") == uid_chosen)

    for f, ds in series:
        _check_modality(f, ds)
    meta = _series_meta(series[0][1], len(series))
    meta["skipped_localizers"] = skipped
    return _assemble(_frames_of(series), str(folder), meta)


def _frames_of(series: list) -> list[_Frame]:
    """All 2-D frames of the files of one series: classic single-frame images, and
    (Enhanced CT) files whose geometry sits in functional groups, one or many frames each."""
    frames: list[_Frame] = []
    for f, ds in series:
        if _n_frames(ds) > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            frames.extend(_enhanced_frames(f, ds))
        else:
            frames.append(_single_frame(f, ds))
    return frames


def _series_listing(by_series: dict[str, list], folder: Path) -> str:
    parts = []
    for uid, items in sorted(by_series.items(), key=lambda kv: -len(kv[1])):
        desc = str(items[0][1].get("SeriesDescription", "") or "")
        mod = str(items[0][1].get("Modality", "") or "?")
        parts.append(f"{uid} [{mod}{', ' + repr(desc) if desc else ''}]: {len(items)} file(s), "
                     f"e.g. {_relative(items[0][0], folder)}")
    return "; ".join(parts)


def _relative(f: Path, folder: Path) -> str:
    try:
        return str(f.relative_to(folder))
    except ValueError:
        return str(f)


def _series_meta(ds, n_files: int) -> dict:
    def s(kw):
        v = ds.get(kw, None)
        return None if v in (None, "") else str(v)
    return {"format": "DICOM", "SeriesInstanceUID": s("SeriesInstanceUID"), "SeriesDescription": s("SeriesDescription"),
            "Manufacturer": s("Manufacturer"), "KVP": s("KVP"), "ConvolutionKernel": s("ConvolutionKernel"),
            "SliceThickness": s("SliceThickness"), "n_files": n_files}


def _single_frame(f: Path, ds) -> _Frame:
    where = str(f)
    return _Frame(
        label=str(f), path=f, frame=None,
        ipp=_floats(ds.get("ImagePositionPatient", None), 3, where, "ImagePositionPatient"),
        iop=_floats(ds.get("ImageOrientationPatient", None), 6, where, "ImageOrientationPatient"),
        spacing_rc=_floats(ds.get("PixelSpacing", None), 2, where, "PixelSpacing"),
        rows=_int(ds, "Rows", where), cols=_int(ds, "Columns", where),
        slope=_number(ds, "RescaleSlope", 1.0, where), intercept=_number(ds, "RescaleIntercept", 0.0, where),
        padding=_padding(ds, where),
    )


def _enhanced_frames(f: Path, ds) -> list[_Frame]:
    """Frames of a multi-frame Enhanced CT: geometry and rescale from the per-frame
    functional groups, falling back to the shared ones (then to the top level)."""
    n = _n_frames(ds)
    per = ds.get("PerFrameFunctionalGroupsSequence", None)
    if per is None or len(per) != n:
        got = "missing" if per is None else f"{len(per)} item(s)"
        raise VolumeError(f"{f}: PerFrameFunctionalGroupsSequence: expected {n} items (NumberOfFrames), got {got}; "
                          "only Enhanced CT multi-frame files are supported")
    shared_seq = ds.get("SharedFunctionalGroupsSequence", None)
    shared = shared_seq[0] if shared_seq else None

    def lookup(i: int, macro: str, keyword: str):
        for group in (per[i], shared):
            if group is not None and macro in group and len(group[macro].value) and keyword in group[macro].value[0]:
                return group[macro].value[0]
        return ds if keyword in ds else None

    rows, cols = _int(ds, "Rows", str(f)), _int(ds, "Columns", str(f))
    pad = _padding(ds, str(f))
    frames = []
    for i in range(n):
        where = f"{f} frame {i + 1}"
        pos = lookup(i, "PlanePositionSequence", "ImagePositionPatient")
        ori = lookup(i, "PlaneOrientationSequence", "ImageOrientationPatient")
        meas = lookup(i, "PixelMeasuresSequence", "PixelSpacing")
        resc = lookup(i, "PixelValueTransformationSequence", "RescaleSlope")
        frames.append(_Frame(
            label=where if n > 1 else str(f), path=f, frame=i if n > 1 else None,
            ipp=_floats(pos.get("ImagePositionPatient") if pos is not None else None, 3, where,
                        "PlanePositionSequence > ImagePositionPatient"),
            iop=_floats(ori.get("ImageOrientationPatient") if ori is not None else None, 6, where,
                        "PlaneOrientationSequence > ImageOrientationPatient"),
            spacing_rc=_floats(meas.get("PixelSpacing") if meas is not None else None, 2, where,
                               "PixelMeasuresSequence > PixelSpacing"),
            rows=rows, cols=cols,
            slope=_number(resc, "RescaleSlope", 1.0, where), intercept=_number(resc, "RescaleIntercept", 0.0, where),
            padding=pad,
        ))
    return frames


def _typical_step(steps: np.ndarray) -> float:
    """The step most slice gaps agree with (within the tolerance); the smallest such on a tie,
    so that a series with a few missing slices still reports its true step."""
    s = np.sort(steps)
    ends = np.searchsorted(s, s * (1 + SPACING_TOLERANCE), side="right")
    counts = ends - np.arange(s.size)
    best = int(np.argmax(counts))             # argmax takes the first (smallest) on a tie
    return float(np.median(s[best:ends[best]]))


def _assemble(frames: list[_Frame], source: str, meta: dict) -> Volume:
    """Check that the frames form one evenly spaced stack, then decode, rescale and stack them."""
    # the reference slice is one of the most common kind, so the odd one out is the one named
    kinds = [(fr.rows, fr.cols, tuple(np.round(fr.iop, 3)), tuple(np.round(fr.spacing_rc, 3))) for fr in frames]
    counts = Counter(kinds)
    f0 = frames[max(range(len(frames)), key=lambda n: (counts[kinds[n]], -n))]
    iop = f0.iop
    row_dir, col_dir = iop[:3], iop[3:]
    if not (abs(np.linalg.norm(row_dir) - 1) < ORIENTATION_TOLERANCE
            and abs(np.linalg.norm(col_dir) - 1) < ORIENTATION_TOLERANCE
            and abs(row_dir @ col_dir) < ORIENTATION_TOLERANCE):
        raise VolumeError(f"{f0.label}: ImageOrientationPatient {iop.tolist()} is not two orthonormal directions")
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    for fr in frames:
        if (fr.rows, fr.cols) != (f0.rows, f0.cols):
            raise VolumeError(f"{fr.label}: Rows/Columns {fr.rows}x{fr.cols} differ from {f0.rows}x{f0.cols} "
                              f"in {f0.label}: the series is not one stack")
        if not np.allclose(fr.iop, iop, atol=ORIENTATION_TOLERANCE):
            raise VolumeError(f"{fr.label}: ImageOrientationPatient {fr.iop.tolist()} differs from {iop.tolist()} "
                              f"in {f0.label}: the series is not one stack")
        if not np.allclose(fr.spacing_rc, f0.spacing_rc, rtol=1e-3, atol=0):
            raise VolumeError(f"{fr.label}: PixelSpacing {fr.spacing_rc.tolist()} differs from "
                              f"{f0.spacing_rc.tolist()} in {f0.label}")
    if np.any(f0.spacing_rc <= 0):
        raise VolumeError(f"{f0.label}: PixelSpacing {f0.spacing_rc.tolist()}: expected two positive numbers")
    if len(frames) < 2:
        raise VolumeError(f"{source}: only one slice ({f0.label}): a 2-D image, not a CT volume "
                          "(ImagePositionPatient: one position)")

    frames = sorted(frames, key=lambda fr: float(fr.ipp @ normal))
    pos = np.array([fr.ipp @ normal for fr in frames])
    steps = np.diff(pos)
    dup = np.flatnonzero(steps < 1e-3)
    if dup.size:
        a, b = frames[dup[0]], frames[dup[0] + 1]
        raise VolumeError(f"{b.label}: ImagePositionPatient {b.ipp.tolist()} duplicates the slice position of "
                          f"{a.label} ({pos[dup[0]]:.3f} mm along the slice normal)")
    step = _typical_step(steps)
    uneven = np.flatnonzero(np.abs(steps - step) > SPACING_TOLERANCE * step)
    if uneven.size:
        k = int(uneven[0])
        ratio = steps[k] / step
        what = (f"about {round(ratio) - 1} slice(s) missing"
                if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1 else "uneven slice spacing")
        raise VolumeError(f"{source}: ImagePositionPatient: gap of {steps[k]:.3f} mm between {frames[k].label} "
                          f"(at {pos[k]:.3f} mm along the slice normal) and {frames[k + 1].label} "
                          f"(at {pos[k + 1]:.3f} mm) where the series steps {step:.3f} mm: {what} "
                          f"({uneven.size} such gap(s) in {len(frames)} slices)")

    # The real step between slice positions (end to end), and whether it leaves the normal.
    n = len(frames)
    ipps = np.array([fr.ipp for fr in frames])
    step_vec = (ipps[-1] - ipps[0]) / (n - 1)
    tol_mm = max(SPACING_TOLERANCE * step, 0.1 * float(f0.spacing_rc.min()))
    off_line = np.linalg.norm(ipps - (ipps[0] + np.arange(n)[:, None] * step_vec), axis=1)
    if off_line.max() > tol_mm:
        k = int(np.argmax(off_line))
        raise VolumeError(f"{frames[k].label}: ImagePositionPatient {frames[k].ipp.tolist()} is {off_line[k]:.3f} mm "
                          f"off the line through the first and last slice positions (tolerance {tol_mm:.3f} mm): "
                          "the slices do not form one regular stack")
    along = float(step_vec @ normal)
    in_plane = step_vec - along * normal
    if np.linalg.norm(in_plane) * (n - 1) <= tol_mm:
        k_col = normal * along                    # a plain stack: the step along the normal
        tilt_deg = 0.0
    else:
        k_col = step_vec                          # gantry tilt: keep the sheared geometry
        tilt_deg = float(np.degrees(np.arctan2(np.linalg.norm(in_plane), along)))

    hu = _decode_frames(frames, f0.rows, f0.cols)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * f0.spacing_rc[1]   # i runs along a row (across columns): column spacing
    affine[:3, 1] = col_dir * f0.spacing_rc[0]   # j runs down a column (across rows): row spacing
    affine[:3, 2] = k_col
    affine[:3, 3] = frames[0].ipp
    meta = dict(meta)
    meta.update(slice_step_mm=float(np.linalg.norm(k_col)), gantry_tilt_deg=tilt_deg, n_slices=n)
    return _finish(hu, affine, source, meta)


def _check_decoder(f: Path, ts) -> None:
    """Raise a VolumeError naming the package to install when pydicom cannot decode ``ts``."""
    from pydicom.pixels import get_decoder

    try:
        dec = get_decoder(ts)
    except NotImplementedError:
        raise VolumeError(f"{f}: TransferSyntaxUID {ts} ({getattr(ts, 'name', ts)}): pydicom has no decoder for this "
                          "transfer syntax; convert the files to an uncompressed or JPEG 2000 syntax "
                          "(e.g. gdcmconv --raw or dcmdjpeg)") from None
    if not dec.is_available:
        pkgs = _DECODER_PACKAGES.get(str(ts), "python-gdcm")
        missing = "; ".join(dec.missing_dependencies)
        raise VolumeError(f"{f}: PixelData is compressed as {getattr(ts, 'name', ts)} (TransferSyntaxUID {ts}) and "
                          f"no decoder is installed: install {pkgs} (pip install ...). pydicom says: {missing}")


def _decode_frames(frames: list[_Frame], rows: int, cols: int) -> np.ndarray:
    hu = np.empty((len(frames), rows, cols), dtype=np.float32)
    cache: dict[Path, np.ndarray] = {}
    checked: set[str] = set()
    for n, fr in enumerate(frames):
        raw = cache.get(fr.path)
        if raw is None:
            ts = None
            try:
                ds = _dcmread(fr.path, stop_before_pixels=False)
                if ds is None:
                    raise VolumeError(f"{fr.path}: no longer reads as DICOM")
                ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
                if ts is not None and str(ts) not in checked:
                    _check_decoder(fr.path, ts)
                    checked.add(str(ts))
                if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
                    raise VolumeError(f"{fr.path}: PixelData missing: the file holds no pixel data (truncated?)")
                raw = ds.pixel_array
            except VolumeError:
                raise
            except Exception as exc:
                raise VolumeError(f"{fr.path}: PixelData unreadable (transfer syntax {ts or '?'}), the file may be "
                                  f"truncated or corrupt ({type(exc).__name__}: {exc})") from None
            want = (rows, cols) if fr.frame is None else (_n_frames(ds), rows, cols)
            if raw.shape != want:
                raise VolumeError(f"{fr.path}: PixelData decodes to shape {raw.shape}, expected {want} "
                                  "(Rows, Columns, NumberOfFrames, SamplesPerPixel = 1)")
            if fr.frame is not None:
                cache[fr.path] = raw     # its other frames come later in the sorted stack
        plane = raw if fr.frame is None else raw[fr.frame]
        out = plane.astype(np.float32) * np.float32(fr.slope) + np.float32(fr.intercept)
        if fr.padding is not None:
            lo, hi = fr.padding
            out[(plane >= lo) & (plane <= hi)] = MIN_HU
        hu[n] = out
    return hu
