"""CT readers: affines against hand-computed positions, SimpleITK as a second reader, and
clear errors for every kind of bad input."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from openfluoro.scene.volume import Volume, VolumeError, load_volume, save_nifti

CT = "1.2.840.10008.5.1.4.1.1.2"


def _write_slice(path: Path, z_index: int, *, series: str, ipp, iop=(1, 0, 0, 0, 1, 0), rows=8, cols=6,
                 spacing=(0.5, 0.7), modality="CT", value_offset=0, slope=1.0, intercept=-1024.0, sop=CT,
                 padding=None) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series
    ds.StudyInstanceUID = "1.2.3"
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.PixelSpacing = [spacing[0], spacing[1]]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    # stored value encodes (row, col, slice): HU = 1000 + 100 row + 10 col + slice
    r, c = np.mgrid[0:rows, 0:cols]
    stored = (2024 + 100 * r + 10 * c + z_index + value_offset).astype(np.uint16)
    if padding is not None:
        ds.PixelPaddingValue = padding
        stored[0, 0] = padding
    ds.PixelData = stored.tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def _series(folder: Path, n=5, step=2.0, iop=(1, 0, 0, 0, 1, 0), origin=(10.0, -20.0, 30.0), order=None, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    iop_a = np.array(iop, float)
    normal = np.cross(iop_a[:3], iop_a[3:])
    uid = kw.pop("series", generate_uid())
    for k in order if order is not None else range(n):
        ipp = np.array(origin) + k * step * normal
        _write_slice(folder / f"s{k:03d}.dcm", k, series=uid, ipp=ipp, iop=iop, **kw)
    return folder


def test_axial_series_affine_and_values(tmp_path):
    vol = load_volume(_series(tmp_path / "ax", order=[3, 0, 4, 1, 2]))   # files in shuffled order
    assert vol.shape == (5, 8, 6)
    np.testing.assert_allclose(vol.spacing_mm, [0.7, 0.5, 2.0])
    # voxel (i=col 2, j=row 3, k=slice 4): x = 10 + 2*0.7, y = -20 + 3*0.5, z = 30 + 4*2
    np.testing.assert_allclose(vol.index_to_lps([[2, 3, 4]])[0], [11.4, -18.5, 38.0])
    assert vol.hu[4, 3, 2] == 1000 + 300 + 20 + 4


def test_oblique_and_flipped_orientation(tmp_path):
    c, s = np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))
    iop = (c, s, 0, 0, 0, -1)           # rows tilted 30 deg in x-y, columns running inferior (coronal-ish)
    vol = load_volume(_series(tmp_path / "obl", iop=iop, step=1.5))
    normal = np.cross(iop[:3], iop[3:])
    expected = np.array([10, -20, 30]) + 1 * 0.7 * np.array(iop[:3]) + 2 * 0.5 * np.array(iop[3:]) + 3 * 1.5 * normal
    np.testing.assert_allclose(vol.index_to_lps([[1, 2, 3]])[0], expected, atol=1e-9)
    assert vol.hu[3, 2, 1] == 1000 + 200 + 10 + 3


def test_padding_value_and_low_hu_are_clipped(tmp_path):
    vol = load_volume(_series(tmp_path / "pad", padding=0))
    assert vol.hu[0, 0, 0] == -1024.0 and vol.hu.min() == -1024.0


def test_empty_sop_class_is_accepted_when_file_meta_says_ct(tmp_path):
    vol = load_volume(_series(tmp_path / "nosop", sop=""))
    assert vol.shape[0] == 5


@pytest.mark.parametrize("case, match", [
    ("no_dicom", "no DICOM files"),
    ("mixed", "mixes 2 series"),
    ("missing", "slice\\(s\\) missing"),
    ("uneven", "uneven slice spacing"),
    ("duplicate", "duplicates"),
    ("mr", "Modality is 'MR'"),
    ("single", "2-D image"),
    ("truncated", "truncated"),
    ("rows", "Rows/Columns"),
])
def test_bad_series_are_named(tmp_path, case, match):
    folder = tmp_path / case
    if case == "no_dicom":
        folder.mkdir()
        (folder / "notes.txt").write_text("not an image")
    elif case == "mixed":
        _series(folder, n=3)
        _series(folder / "b", n=2, origin=(0, 0, 100))
    elif case == "missing":
        _series(folder, order=[0, 1, 3, 4])
    elif case == "uneven":
        _series(folder, n=3)
        uid = pydicom.dcmread(str(folder / "s000.dcm")).SeriesInstanceUID
        _write_slice(folder / "odd.dcm", 3, series=uid, ipp=(10, -20, 30 + 2 * 2 + 2.6))
    elif case == "duplicate":
        _series(folder, n=3)
        uid = pydicom.dcmread(str(folder / "s000.dcm")).SeriesInstanceUID
        _write_slice(folder / "dup.dcm", 1, series=uid, ipp=(10, -20, 32))
    elif case == "mr":
        _series(folder, modality="MR")
    elif case == "single":
        _series(folder, n=1)
    elif case == "truncated":
        _series(folder, n=3)
        data = (folder / "s001.dcm").read_bytes()
        (folder / "s001.dcm").write_bytes(data[: len(data) - 40])
    elif case == "rows":
        _series(folder, n=2)
        uid = pydicom.dcmread(str(folder / "s000.dcm")).SeriesInstanceUID
        _write_slice(folder / "big.dcm", 2, series=uid, ipp=(10, -20, 34), rows=9)
    with pytest.raises(VolumeError, match=match) as err:
        load_volume(folder)
    assert str(folder) in str(err.value)            # the message names the file or folder


def test_nifti_round_trip_and_ras_to_lps(tmp_path):
    import nibabel as nib

    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # nibabel order (i, j, k)
    ras = np.array([[2.0, 0, 0, -10], [0, 3.0, 0, 20], [0, 0, 4.0, 5], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, ras), str(tmp_path / "a.nii.gz"))
    vol = load_volume(tmp_path / "a.nii.gz")
    assert vol.shape == (6, 5, 4) and vol.hu[5, 4, 3] == data[3, 4, 5]
    # RAS (x, y, z) -> LPS (-x, -y, z): voxel (1, 2, 3) is RAS (-8, 26, 17) -> LPS (8, -26, 17)
    np.testing.assert_allclose(vol.index_to_lps([[1, 2, 3]])[0], [8, -26, 17])
    out = save_nifti(vol, tmp_path / "b.nii.gz")
    again = load_volume(out)
    np.testing.assert_array_equal(again.hu, vol.hu)
    np.testing.assert_allclose(again.affine_lps, vol.affine_lps)


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_itk_formats_keep_lps_geometry(tmp_path, ext):
    import SimpleITK as sitk

    arr = np.random.default_rng(0).integers(-1000, 2000, size=(4, 5, 6)).astype(np.int16)  # (k, j, i)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetOrigin((-100.0, 50.0, 7.0))
    img.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    sitk.WriteImage(img, str(tmp_path / f"v{ext}"))
    vol = load_volume(tmp_path / f"v{ext}")
    np.testing.assert_array_equal(vol.hu, arr.astype(np.float32))
    # ITK: point = origin + direction @ (spacing * index)
    expected = np.array(img.TransformIndexToPhysicalPoint((1, 2, 3)))
    np.testing.assert_allclose(vol.index_to_lps([[1, 2, 3]])[0], expected)


def test_bad_files_are_named(tmp_path):
    (tmp_path / "junk.nii.gz").write_bytes(b"not gzip at all")
    with pytest.raises(VolumeError, match="junk.nii.gz: not a readable NIfTI"):
        load_volume(tmp_path / "junk.nii.gz")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(VolumeError, match="unsupported volume format"):
        load_volume(tmp_path / "x.png")
    with pytest.raises(VolumeError, match="no such file"):
        load_volume(tmp_path / "missing.nii")
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((5, 5), np.float32), np.eye(4)), str(tmp_path / "flat.nii"))
    with pytest.raises(VolumeError, match="flat.nii: .*3-D"):
        load_volume(tmp_path / "flat.nii")
    nan = np.zeros((3, 3, 3), np.float32)
    nan[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(tmp_path / "nan.nii"))
    with pytest.raises(VolumeError, match="nan.nii: 1 voxel\\(s\\) are NaN"):
        load_volume(tmp_path / "nan.nii")
    with pytest.raises(VolumeError, match="3-D"):
        Volume(np.zeros((4, 4)), np.eye(4))


def test_real_nifti(example_ct_path):
    vol = load_volume(example_ct_path)
    assert vol.shape == (112, 101, 122)
    np.testing.assert_allclose(vol.spacing_mm, [3, 3, 3])
    assert vol.hu.min() == -1024.0 and vol.hu.max() == pytest.approx(3382)


def test_real_dicom_series_matches_simpleitk(shared_data):
    import SimpleITK as sitk

    folder = shared_data / "totalsegmentator_example" / "example_ct_dicom"
    vol = load_volume(folder)          # JPEG 2000 lossless, empty SOPClassUID
    assert vol.shape == (20, 512, 512)
    np.testing.assert_allclose(vol.spacing_mm, [0.9765625, 0.9765625, 2.0])
    assert -1024 <= vol.hu.min() and vol.hu.max() <= 1839
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    ref = np.maximum(sitk.GetArrayFromImage(img).astype(np.float32), -1024)
    np.testing.assert_array_equal(vol.hu, ref)
    for ijk in ([0, 0, 0], [511, 3, 19], [100, 400, 7]):
        np.testing.assert_allclose(vol.index_to_lps([ijk])[0], img.TransformIndexToPhysicalPoint(ijk), atol=1e-6)
