"""CT readers: affines against hand-computed positions, SimpleITK as a second reader, and
clear errors (naming the file and the field) for every kind of bad input."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from openfluoro.scene.volume import Volume, VolumeError, load_volume, save_nifti

CT = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
MR = "1.2.840.10008.5.1.4.1.1.4"


def _stored(rows, cols, z_index, value_offset=0):
    # stored value encodes (row, col, slice): with intercept -1024, HU = 1000 + 100 row + 10 col + slice
    r, c = np.mgrid[0:rows, 0:cols]
    return (2024 + 100 * r + 10 * c + z_index + value_offset).astype(np.uint16)


def _write_slice(path: Path, z_index: int, *, series: str, ipp, iop=(1, 0, 0, 0, 1, 0), rows=8, cols=6,
                 spacing=(0.5, 0.7), modality="CT", value_offset=0, slope=1.0, intercept=-1024.0, sop=CT,
                 meta_sop=CT, padding=None, compress=None, drop=(), image_type=None, bare=False) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = meta_sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series
    ds.StudyInstanceUID = "1.2.3"
    if image_type:
        ds.ImageType = list(image_type)
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.PixelSpacing = [spacing[0], spacing[1]]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    stored = _stored(rows, cols, z_index, value_offset)
    if padding is not None:
        ds.PixelPaddingValue = padding
        stored[0, 0] = padding
    ds.PixelData = stored.tobytes()
    for kw in drop:
        delattr(ds, kw)
    if compress is not None:
        ds.compress(compress)
    if bare:   # no preamble, no file meta: an implicit-VR data set alone, as old archives hold
        pydicom.dcmwrite(str(path), Dataset(ds), implicit_vr=True, little_endian=True)
        return
    ds.save_as(str(path), enforce_file_format=True)


def _series(folder: Path, n=5, step=2.0, iop=(1, 0, 0, 0, 1, 0), origin=(10.0, -20.0, 30.0), order=None,
            drift=(0.0, 0.0, 0.0), **kw):
    """Slice k at origin + k * step * normal + k * drift (drift: in-plane shift per slice)."""
    folder.mkdir(parents=True, exist_ok=True)
    iop_a = np.array(iop, float)
    normal = np.cross(iop_a[:3], iop_a[3:])
    uid = kw.pop("series", generate_uid())
    for k in order if order is not None else range(n):
        ipp = np.array(origin) + k * step * normal + k * np.array(drift)
        _write_slice(folder / f"s{k:03d}.dcm", k, series=uid, ipp=ipp, iop=iop, **kw)
    return folder


def _uid(folder: Path) -> str:
    return pydicom.dcmread(str(folder / "s000.dcm"), stop_before_pixels=True).SeriesInstanceUID


# -- geometry and values of good series ---------------------------------------------------------

def test_axial_series_affine_and_values(tmp_path):
    vol = load_volume(_series(tmp_path / "ax", order=[3, 0, 4, 1, 2]))   # files in shuffled order
    assert vol.shape == (5, 8, 6)
    np.testing.assert_allclose(vol.spacing_mm, [0.7, 0.5, 2.0])
    # voxel (i=col 2, j=row 3, k=slice 4): x = 10 + 2*0.7, y = -20 + 3*0.5, z = 30 + 4*2
    np.testing.assert_allclose(vol.index_to_lps([[2, 3, 4]])[0], [11.4, -18.5, 38.0])
    assert vol.hu[4, 3, 2] == 1000 + 300 + 20 + 4
    assert vol.metadata["format"] == "DICOM" and vol.metadata["gantry_tilt_deg"] == 0.0


def test_oblique_and_flipped_orientation(tmp_path):
    c, s = np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))
    iop = (c, s, 0, 0, 0, -1)           # rows tilted 30 deg in x-y, columns running inferior (coronal-ish)
    vol = load_volume(_series(tmp_path / "obl", iop=iop, step=1.5))
    normal = np.cross(iop[:3], iop[3:])
    expected = np.array([10, -20, 30]) + 1 * 0.7 * np.array(iop[:3]) + 2 * 0.5 * np.array(iop[3:]) + 3 * 1.5 * normal
    np.testing.assert_allclose(vol.index_to_lps([[1, 2, 3]])[0], expected, atol=1e-9)
    assert vol.hu[3, 2, 1] == 1000 + 200 + 10 + 3


def test_reversed_slice_order_follows_the_normal(tmp_path):
    # columns run anterior (-y in LPS), so the normal row x col points inferior (-z); the files
    # climb in z, so along the normal the LAST file (highest z) comes first: k = 0 is s004.
    iop = (1, 0, 0, 0, -1, 0)
    vol = load_volume(_series(tmp_path / "rev", iop=iop, step=-2.0, n=5))
    assert vol.hu[0, 0, 0] == 1000 + 4 and vol.hu[4, 0, 0] == 1000 + 0
    np.testing.assert_allclose(vol.affine_lps[:3, 2], [0, 0, -2.0], atol=1e-12)
    # voxel (i=1, j=2, k=0) lies in file s004 at z = 30 + 8: x = 10 + 0.7, y = -20 - 2 * 0.5
    np.testing.assert_allclose(vol.index_to_lps([[1, 2, 0]])[0], [10.7, -21.0, 38.0])
    np.testing.assert_allclose(vol.index_to_lps([[1, 2, 4]])[0], [10.7, -21.0, 30.0])
    assert vol.hu[0, 2, 1] == 1000 + 200 + 10 + 4


def test_gantry_tilt_keeps_the_true_slice_positions(tmp_path):
    tilt = np.deg2rad(15)
    drift = (0.0, 2.0 * np.tan(tilt), 0.0)          # each slice shifts posteriorly as the gantry is tilted
    vol = load_volume(_series(tmp_path / "tilt", n=4, drift=drift))
    assert vol.metadata["gantry_tilt_deg"] == pytest.approx(15.0)
    # voxel (0, 0, 3) is exactly the IPP of slice 3
    np.testing.assert_allclose(vol.index_to_lps([[0, 0, 3]])[0], [10, -20 + 6 * np.tan(tilt), 36])
    np.testing.assert_allclose(vol.index_to_lps([[2, 1, 3]])[0], [11.4, -19.5 + 6 * np.tan(tilt), 36])


def test_padding_value_and_low_hu_are_clipped(tmp_path):
    vol = load_volume(_series(tmp_path / "pad", padding=0))
    assert vol.hu[0, 0, 0] == -1024.0 and vol.hu.min() == -1024.0
    # stored 0 with intercept -2048 would be -2048 HU: clipped to -1024 even without padding tags
    vol = load_volume(_series(tmp_path / "low", intercept=-3024.0, value_offset=-2024))
    assert vol.hu.min() == -1024.0


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    vol = load_volume(_series(tmp_path / "slope", slope=0.5, intercept=-1000.0))
    assert vol.hu[2, 1, 3] == pytest.approx(0.5 * (2024 + 100 + 30 + 2) - 1000)


def test_empty_sop_class_is_accepted_when_file_meta_says_ct(tmp_path):
    vol = load_volume(_series(tmp_path / "nosop", sop=""))
    assert vol.shape[0] == 5


def test_bare_dataset_files_without_preamble_are_read(tmp_path):
    folder = _series(tmp_path / "bare", n=3, bare=True)
    assert (folder / "s000.dcm").read_bytes()[128:132] != b"DICM"
    (folder / "README").write_text("not DICOM")          # still ignored
    vol = load_volume(folder)
    assert vol.shape == (3, 8, 6) and vol.hu[2, 1, 3] == 1000 + 100 + 30 + 2
    np.testing.assert_allclose(vol.index_to_lps([[2, 3, 2]])[0], [11.4, -18.5, 34.0])


def test_localizer_in_the_series_is_skipped(tmp_path):
    folder = _series(tmp_path / "scout", n=3)
    _write_slice(folder / "scout.dcm", 0, series=_uid(folder), ipp=(0, 0, 0), iop=(1, 0, 0, 0, 0, -1),
                 image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    vol = load_volume(folder)
    assert vol.shape[0] == 3 and vol.metadata["skipped_localizers"] == 1


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_series_decode_exactly(tmp_path, syntax):
    size = dict(rows=32, cols=40)                # JPEG 2000 needs tiles larger than its 6 resolution levels
    vol = load_volume(_series(tmp_path / "c", n=3, compress=syntax, **size))
    ref = load_volume(_series(tmp_path / "u", n=3, **size))
    np.testing.assert_array_equal(vol.hu, ref.hu)
    assert pydicom.dcmread(str(tmp_path / "c" / "s000.dcm")).file_meta.TransferSyntaxUID == syntax


def test_series_uid_picks_one_of_several(tmp_path):
    folder = tmp_path / "two"
    _series(folder / "a", n=3)
    _series(folder / "b", n=4, origin=(0, 0, 100))
    uid_b = _uid(folder / "b")
    with pytest.raises(VolumeError, match="mixes 2 series") as err:
        load_volume(folder)
    assert uid_b in str(err.value) and "4 file(s)" in str(err.value) and "3 file(s)" in str(err.value)
    vol = load_volume(folder, series_uid=uid_b)
    assert vol.shape[0] == 4 and vol.metadata["SeriesInstanceUID"] == uid_b
    with pytest.raises(VolumeError, match="SeriesInstanceUID 9.9.9 not found"):
        load_volume(folder, series_uid="9.9.9")
    # a single file stands for its own series, even in a mixed folder
    (folder / "b" / "s001.dcm").rename(folder / "one.dcm")
    assert load_volume(folder / "one.dcm").shape[0] == 4


def _enhanced_ct(path: Path, order, step=2.5, iop=(1, 0, 0, 0, 1, 0), origin=(-5.0, 7.0, 12.0), rows=8, cols=6):
    """Enhanced CT: one file, frames in the given slice order, geometry in functional groups."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENHANCED_CT
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_CT, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", generate_uid(), "1.2.3"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, len(order)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    measures, orient, rescale = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.5, 0.7], step
    orient.ImageOrientationPatient = [float(v) for v in iop]
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 1, -1024, "HU"
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelValueTransformationSequence = Sequence([rescale])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    normal = np.cross(np.array(iop[:3], float), np.array(iop[3:], float))
    per = []
    for k in order:
        pos = Dataset()
        pos.ImagePositionPatient = [float(v) for v in np.array(origin) + k * step * normal]
        item = Dataset()
        item.PlanePositionSequence = Sequence([pos])
        per.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.PixelData = np.stack([_stored(rows, cols, k) for k in order]).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_enhanced_ct_multiframe(tmp_path):
    f = _enhanced_ct(tmp_path / "enh" / "ct.dcm", order=[2, 0, 3, 1])
    for vol in (load_volume(f), load_volume(f.parent)):
        assert vol.shape == (4, 8, 6)
        np.testing.assert_allclose(vol.index_to_lps([[2, 3, 1]])[0], [-5 + 1.4, 7 + 1.5, 12 + 2.5])
        assert vol.hu[1, 3, 2] == 1000 + 300 + 20 + 1 and vol.hu[3, 0, 0] == 1000 + 3


def test_enhanced_ct_split_over_files_is_one_stack(tmp_path):
    # some scanners write an Enhanced CT series as several multi-frame (or one-frame) files
    folder = tmp_path / "split"
    uid = generate_uid()
    for name, order in (("a.dcm", [4, 0]), ("b.dcm", [2]), ("c.dcm", [1, 3])):
        ds = pydicom.dcmread(str(_enhanced_ct(folder / name, order=order)))
        ds.SeriesInstanceUID = uid
        ds.save_as(str(folder / name))
    vol = load_volume(folder)
    assert vol.shape == (5, 8, 6) and vol.metadata["n_files"] == 3
    assert [vol.hu[k, 0, 0] for k in range(5)] == [1000 + k for k in range(5)]
    np.testing.assert_allclose(vol.index_to_lps([[0, 0, 4]])[0], [-5, 7, 12 + 4 * 2.5])


def test_extensionless_dicom_file_is_recognised(tmp_path):
    folder = _series(tmp_path / "noext", n=3)
    (folder / "s001.dcm").rename(folder / "IM0001")
    assert load_volume(folder / "IM0001").shape == (3, 8, 6)


def test_damaged_file_of_another_series_does_not_block_the_chosen_one(tmp_path):
    folder = _series(tmp_path / "mix", n=3)
    other = _series(tmp_path / "mix" / "other", n=2, origin=(0, 0, 100))
    other_uid = _uid(other)
    data = (other / "s000.dcm").read_bytes()
    (other / "s000.dcm").write_bytes(data[: data.index(b"\x28\x00\x10\x00US")])  # cut just before Rows
    assert load_volume(folder, series_uid=_uid(folder)).shape[0] == 3
    with pytest.raises(VolumeError, match="other/s000.dcm: Rows/Columns missing .* truncated"):
        load_volume(folder, series_uid=other_uid)
    # cut before SeriesInstanceUID, the damaged file could belong to any series: refused
    (other / "s000.dcm").write_bytes(data[:300])
    with pytest.raises(VolumeError, match="other/s000.dcm: Rows/Columns missing"):
        load_volume(folder, series_uid=_uid(folder))


def test_enhanced_ct_missing_frames_are_named(tmp_path):
    f = _enhanced_ct(tmp_path / "enh.dcm", order=[0, 1, 3])
    with pytest.raises(VolumeError, match="ImagePositionPatient: gap .* slice\\(s\\) missing") as err:
        load_volume(f)
    assert "enh.dcm frame" in str(err.value)


# -- bad DICOM input: each error names the file or folder and the field --------------------------

@pytest.mark.parametrize("case, match, field", [
    ("no_dicom", "no DICOM image files found", "no DICOM"),
    ("empty", "no DICOM files found", "no DICOM"),
    ("mixed", "mixes 2 series", "SeriesInstanceUID"),
    ("missing", "about 1 slice\\(s\\) missing", "ImagePositionPatient"),
    ("missing3", "about 1 slice\\(s\\) missing", "ImagePositionPatient"),
    ("uneven", "uneven slice spacing", "ImagePositionPatient"),
    ("duplicate", "duplicates", "ImagePositionPatient"),
    ("off_line", "off the line", "ImagePositionPatient"),
    ("mr", "Modality is 'MR'", "Modality"),
    ("no_modality_mr_sop", "not CT Image Storage", "SOPClassUID"),
    ("single", "2-D image", "ImagePositionPatient"),
    ("truncated", "truncated", "PixelData"),
    ("header_cut", "truncated", "Rows/Columns"),
    ("rows", "differ from 8x6", "Rows/Columns"),
    ("orientation", "differs from", "ImageOrientationPatient"),
    ("not_orthonormal", "not two orthonormal", "ImageOrientationPatient"),
    ("spacing", "differs from", "PixelSpacing"),
    ("no_ipp", "expected 3 numbers, got missing", "ImagePositionPatient"),
    ("missing_folder", "no such file or folder", ""),
])
def test_bad_series_are_named(tmp_path, case, match, field):
    folder = tmp_path / case
    if case == "no_dicom":
        folder.mkdir()
        (folder / "notes.txt").write_text("not an image")
    elif case == "empty":
        folder.mkdir()
    elif case == "mixed":
        _series(folder, n=3)
        _series(folder / "b", n=2, origin=(0, 0, 100))
    elif case == "missing":
        _series(folder, order=[0, 1, 3, 4])
    elif case == "missing3":                     # 3 slices, one gap doubled: still "missing", step 2 mm
        _series(folder, order=[0, 1, 3])
    elif case == "uneven":
        _series(folder, n=3)
        _write_slice(folder / "odd.dcm", 3, series=_uid(folder), ipp=(10, -20, 30 + 2 * 2 + 2.6))
    elif case == "duplicate":
        _series(folder, n=3)
        _write_slice(folder / "dup.dcm", 1, series=_uid(folder), ipp=(10, -20, 32))
    elif case == "off_line":
        _series(folder, n=4)
        (folder / "s002.dcm").unlink()
        _write_slice(folder / "s002.dcm", 2, series=_uid(folder), ipp=(10, -15, 34))
    elif case == "mr":
        _series(folder, modality="MR")
    elif case == "no_modality_mr_sop":
        _series(folder, modality="", sop=MR, meta_sop=MR)
    elif case == "single":
        _series(folder, n=1)
    elif case == "truncated":
        _series(folder, n=3)
        data = (folder / "s001.dcm").read_bytes()
        (folder / "s001.dcm").write_bytes(data[: len(data) - 40])
    elif case == "header_cut":
        _series(folder, n=3)
        data = (folder / "s001.dcm").read_bytes()
        (folder / "s001.dcm").write_bytes(data[:450])
    elif case == "rows":
        _series(folder, n=2)
        _write_slice(folder / "big.dcm", 2, series=_uid(folder), ipp=(10, -20, 34), rows=9)
    elif case == "orientation":
        _series(folder, n=2)
        _write_slice(folder / "tilted.dcm", 2, series=_uid(folder), ipp=(10, -20, 34), iop=(1, 0, 0, 0, 0.8, 0.6))
    elif case == "not_orthonormal":
        _series(folder, n=2, iop=(1, 0, 0, 0.5, 0.5, 0))
    elif case == "spacing":
        _series(folder, n=2)
        _write_slice(folder / "fine.dcm", 2, series=_uid(folder), ipp=(10, -20, 34), spacing=(0.4, 0.7))
    elif case == "no_ipp":
        _series(folder, n=3, drop=("ImagePositionPatient",))
    with pytest.raises(VolumeError, match=match) as err:
        load_volume(folder)
    msg = str(err.value)
    assert str(folder) in msg                    # the message names the file or folder
    assert field in msg                          # ... and the field


def test_missing_gap_message_gives_position_and_expected_step(tmp_path):
    folder = _series(tmp_path / "gap", order=[0, 1, 2, 5, 6])
    with pytest.raises(VolumeError) as err:
        load_volume(folder)
    msg = str(err.value)
    assert "gap of 6.000 mm" in msg and "steps 2.000 mm" in msg and "about 2 slice(s) missing" in msg
    assert "s002.dcm (at 34.000 mm" in msg and "s005.dcm (at 40.000 mm)" in msg


def test_missing_decoder_names_the_package(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder

    folder = _series(tmp_path / "j2k", n=3, compress=JPEG2000Lossless, rows=32, cols=32)
    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})   # as if no plugin were installed
    with pytest.raises(VolumeError, match="no decoder is installed: install pylibjpeg and pylibjpeg-openjpeg") as err:
        load_volume(folder)
    assert str(folder) in str(err.value) and "TransferSyntaxUID 1.2.840.10008.1.2.4.90" in str(err.value)


def test_dicom_error_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        load_volume(tmp_path / "nothing-here")


# -- NIfTI -----------------------------------------------------------------------------------

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
    hdr = nib.load(str(out)).header
    assert hdr.get_data_dtype() == np.int16 and int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 1
    assert not list(tmp_path.glob(".*part*"))      # no temporary file left behind


def test_saved_nifti_read_by_simpleitk_gives_the_same_lps_geometry(tmp_path):
    import SimpleITK as sitk

    c, s = np.cos(np.deg2rad(20)), np.sin(np.deg2rad(20))
    aff = np.eye(4)
    aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, -1]]) @ np.diag([0.8, 0.9, 2.5])
    aff[:3, 3] = [12.0, -40.0, 300.0]
    hu = np.random.default_rng(1).integers(-1024, 3000, size=(5, 6, 7)).astype(np.float32)
    out = save_nifti(Volume(hu, aff), tmp_path / "rot.nii")
    img = sitk.ReadImage(str(out))              # ITK reports LPS
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img).astype(np.float32), hu)
    for ijk in ([0, 0, 0], [6, 5, 4], [3, 1, 2]):
        np.testing.assert_allclose(img.TransformIndexToPhysicalPoint(ijk), aff[:3, :3] @ ijk + aff[:3, 3], atol=1e-4)


def test_save_nifti_float_fallback_and_bad_extension(tmp_path):
    import nibabel as nib

    hu = np.full((3, 3, 3), 10.25, np.float32)
    out = save_nifti(Volume(hu, np.eye(4)), tmp_path / "f.nii")
    assert nib.load(str(out)).get_data_dtype() == np.float32
    np.testing.assert_array_equal(load_volume(out).hu, hu)
    with pytest.raises(VolumeError, match="v.nrrd: save_nifti writes .nii or .nii.gz"):
        save_nifti(Volume(hu, np.eye(4)), tmp_path / "v.nrrd")


def test_nifti_scl_slope_and_affine_choice(tmp_path):
    import nibabel as nib

    data = np.arange(27, dtype=np.int16).reshape(3, 3, 3)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(2.0, -1000.0)
    nib.save(img, str(tmp_path / "scaled.nii"))
    vol = load_volume(tmp_path / "scaled.nii")
    assert vol.hu[2, 1, 0] == 2.0 * data[0, 1, 2] - 1000.0

    # sform (code > 0) wins over the qform, as nibabel and the NIfTI standard say
    sform = np.diag([2.0, 2.0, 2.0, 1.0])
    qform = np.diag([1.0, 1.0, 1.0, 1.0])
    img = nib.Nifti1Image(data, None)
    img.set_sform(sform, code=1)
    img.set_qform(qform, code=1)
    nib.save(img, str(tmp_path / "both.nii"))
    vol = load_volume(tmp_path / "both.nii")
    np.testing.assert_allclose(vol.spacing_mm, [2, 2, 2])
    assert vol.metadata["affine_source"] == "sform"
    # without an sform the qform is used: voxel (1, 0, 0) at RAS x = -1 -> LPS x = +1 after the flip
    img = nib.Nifti1Image(data, None)
    img.set_sform(sform, code=0)
    img.set_qform(np.diag([-1.0, 1.0, 1.0, 1.0]), code=1)
    nib.save(img, str(tmp_path / "qonly.nii"))
    vol = load_volume(tmp_path / "qonly.nii")
    assert vol.metadata["affine_source"] == "qform"
    np.testing.assert_allclose(vol.index_to_lps([[1, 0, 0]])[0], [1, 0, 0])

    # spatial unit in metres is converted to mm
    img = nib.Nifti1Image(data, np.diag([0.001, 0.001, 0.002, 1.0]))
    img.header.set_xyzt_units("meter")
    nib.save(img, str(tmp_path / "metres.nii"))
    np.testing.assert_allclose(load_volume(tmp_path / "metres.nii").spacing_mm, [1, 1, 2])


def test_bad_files_are_named(tmp_path):
    import nibabel as nib

    (tmp_path / "junk.nii.gz").write_bytes(b"not gzip at all")
    with pytest.raises(VolumeError, match="junk.nii.gz: not a readable NIfTI"):
        load_volume(tmp_path / "junk.nii.gz")
    nib.save(nib.Nifti1Image(np.arange(4000, dtype=np.float32).reshape(10, 20, 20), np.eye(4)),
             str(tmp_path / "whole.nii.gz"))
    blob = (tmp_path / "whole.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(VolumeError, match="cut.nii.gz: not a readable NIfTI file, truncated"):
        load_volume(tmp_path / "cut.nii.gz")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(VolumeError, match="x.png: unsupported volume format"):
        load_volume(tmp_path / "x.png")
    with pytest.raises(VolumeError, match="missing.nii: no such file"):
        load_volume(tmp_path / "missing.nii")
    nib.save(nib.Nifti1Image(np.zeros((5, 5), np.float32), np.eye(4)), str(tmp_path / "flat.nii"))
    with pytest.raises(VolumeError, match="flat.nii: dim: expected a 3-D image"):
        load_volume(tmp_path / "flat.nii")
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 1), np.float32), np.eye(4)), str(tmp_path / "slab.nii"))
    with pytest.raises(VolumeError, match="slab.nii: expected a 3-D volume.*2-D image"):
        load_volume(tmp_path / "slab.nii")
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5, 2), np.float32), np.eye(4)), str(tmp_path / "time.nii"))
    with pytest.raises(VolumeError, match="time.nii: dim: expected a 3-D image, got 4-D"):
        load_volume(tmp_path / "time.nii")
    nan = np.zeros((3, 3, 3), np.float32)
    nan[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(tmp_path / "nan.nii"))
    with pytest.raises(VolumeError, match="nan.nii: voxel values: 1 voxel\\(s\\) are NaN or infinite"):
        load_volume(tmp_path / "nan.nii")
    (tmp_path / "plain.dcm").write_bytes(b"hello")
    with pytest.raises(VolumeError, match="plain.dcm: not a DICOM file"):
        load_volume(tmp_path / "plain.dcm")
    with pytest.raises(VolumeError, match="3-D"):
        Volume(np.zeros((4, 4)), np.eye(4))


# -- NRRD / MHA --------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".nrrd", ".mha", ".nhdr", ".mhd"])
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
    # by hand: i runs along direction column 0 = (0, -1, 0) with spacing 0.8, j along (1, 0, 0) x 0.9,
    # k along z x 2.5: voxel (1, 2, 3) -> (-100 + 1.8, 50 - 0.8, 7 + 7.5)
    np.testing.assert_allclose(vol.index_to_lps([[1, 2, 3]])[0], [-98.2, 49.2, 14.5])
    np.testing.assert_allclose(vol.index_to_lps([[1, 2, 3]])[0], img.TransformIndexToPhysicalPoint((1, 2, 3)))


def test_nrrd_in_ras_space_is_converted_to_lps(tmp_path):
    # a hand-written NRRD header in RAS space: SimpleITK must hand back LPS
    raw = np.arange(2 * 3 * 4, dtype=np.int16)
    (tmp_path / "ras.raw").write_bytes(raw.tobytes())
    (tmp_path / "ras.nhdr").write_text(
        "NRRD0004\ntype: short\ndimension: 3\nspace: right-anterior-superior\nsizes: 4 3 2\n"
        "space directions: (1,0,0) (0,2,0) (0,0,3)\nspace origin: (10,20,30)\nendian: little\n"
        "encoding: raw\ndata file: ras.raw\n")
    vol = load_volume(tmp_path / "ras.nhdr")
    assert vol.shape == (2, 3, 4)
    # voxel (1, 1, 1) is RAS (11, 22, 33) -> LPS (-11, -22, 33)
    np.testing.assert_allclose(vol.index_to_lps([[1, 1, 1]])[0], [-11, -22, 33])


def test_bad_itk_files_are_named(tmp_path):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.zeros((8, 9, 10), np.int16))
    sitk.WriteImage(img, str(tmp_path / "whole.mha"))
    blob = (tmp_path / "whole.mha").read_bytes()
    (tmp_path / "cut.mha").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(VolumeError, match="cut.mha: not a readable NRRD/MetaImage file"):
        load_volume(tmp_path / "cut.mha")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((9, 10), np.int16)), str(tmp_path / "flat.mha"))
    with pytest.raises(VolumeError, match="flat.mha: dimension: expected a 3-D image, got 2-D"):
        load_volume(tmp_path / "flat.mha")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.float32), isVector=True),
                    str(tmp_path / "rgb.nrrd"))
    with pytest.raises(VolumeError, match="rgb.nrrd: pixel type: expected one value per voxel"):
        load_volume(tmp_path / "rgb.nrrd")
    nan = np.zeros((3, 4, 5), np.float32)
    nan[0, 0, 0] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "inf.mha"))
    with pytest.raises(VolumeError, match="inf.mha: voxel values: 1 voxel\\(s\\) are NaN or infinite"):
        load_volume(tmp_path / "inf.mha")


# -- real data (../shared/data) ----------------------------------------------------------------

def test_real_nifti(example_ct_path):
    vol = load_volume(example_ct_path)
    assert vol.shape == (112, 101, 122)
    np.testing.assert_allclose(vol.spacing_mm, [3, 3, 3])
    assert vol.hu.min() == -1024.0 and vol.hu.max() == pytest.approx(3382)   # -1207 padding clipped
    import nibabel as nib

    img = nib.load(str(example_ct_path))
    ras = img.affine @ np.array([10, 20, 30, 1.0])
    np.testing.assert_allclose(vol.index_to_lps([[10, 20, 30]])[0], [-ras[0], -ras[1], ras[2]])
    assert vol.hu[30, 20, 10] == max(float(img.dataobj[10, 20, 30]), -1024.0)


def test_real_dicom_series_matches_simpleitk(shared_data):
    import SimpleITK as sitk

    folder = shared_data / "totalsegmentator_example" / "example_ct_dicom"
    vol = load_volume(folder)          # JPEG 2000 lossless, empty SOPClassUID
    assert vol.shape == (20, 512, 512)
    np.testing.assert_allclose(vol.spacing_mm, [0.9765625, 0.9765625, 2.0])
    assert vol.hu.min() == -1024 and vol.hu.max() == 1839        # the documented range
    assert vol.metadata["gantry_tilt_deg"] == 0.0
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    ref = np.maximum(sitk.GetArrayFromImage(img).astype(np.float32), -1024)
    np.testing.assert_array_equal(vol.hu, ref)
    sitk_affine = np.eye(4)
    sitk_affine[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())[None, :]
    sitk_affine[:3, 3] = img.GetOrigin()
    np.testing.assert_allclose(vol.affine_lps, sitk_affine, atol=1e-6)
    for ijk in ([0, 0, 0], [511, 3, 19], [100, 400, 7]):
        np.testing.assert_allclose(vol.index_to_lps([ijk])[0], img.TransformIndexToPhysicalPoint(ijk), atol=1e-6)
    # one file of the series stands for the whole series
    one = sorted(folder.iterdir())[5]
    np.testing.assert_array_equal(load_volume(one).hu, vol.hu)


def test_real_dicom_round_trips_through_nifti(shared_data, tmp_path):
    vol = load_volume(shared_data / "totalsegmentator_example" / "example_ct_dicom")
    again = load_volume(save_nifti(vol, tmp_path / "ct.nii.gz"))
    np.testing.assert_array_equal(again.hu, vol.hu)
    np.testing.assert_allclose(again.affine_lps, vol.affine_lps, atol=1e-5)
