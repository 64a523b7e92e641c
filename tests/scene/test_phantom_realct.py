"""The phantom next to a real CT (../shared/data/totalsegmentator_example) at matched geometry.

A PA view is centred on the L3 vertebral body of each. The real CT's segmentation labels
only T11-L2 (in its top 30 slices, index offset 82), so L3 is found as the next vertebra
below L2 by following the bone of the vertebral bodies down the spine and locating the two
discs (HU minima) below L2. The phantom is given the real patient's habitus, measured
from the CT: its BMI is chosen so that the phantom's AP body diameter at L3 matches the
patient's, and its bone density so that the L3 cancellous HU matches (this patient's L3
reads ~120 HU: osteoporotic range). Its soft-tissue and bone path lengths through L3
(medians over a 12 x 12 mm region at the isocentre) must then fall inside the range the
real CT gives over the same region.
"""

from __future__ import annotations

import numpy as np
import pytest

from openfluoro.geometry.carm import CArmPose, Detector, Geometry, standard_view
from openfluoro.render.raycast import MaterialVolume, project_materials
from openfluoro.scene.phantom import Phantom, PhantomParams, make_phantom

SEG_OFFSET_K = 82          # example_seg.nii.gz == slices 82..111 of example_ct.nii.gz (shared/data/README.md)
L2_LABEL = 30              # TotalSegmentator "total" class id of L2
HALF_REGION_MM = 6.0


def _load_real(example_ct_path):
    import nibabel as nib

    try:
        from openfluoro.scene.volume import load_volume

        vol = load_volume(example_ct_path)
    except (ImportError, AttributeError, NotImplementedError):
        from openfluoro.scene.volume import Volume

        img = nib.load(str(example_ct_path))
        vol = Volume(np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0),
                     np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine, source=str(example_ct_path))
    seg = np.asarray(nib.load(str(example_ct_path.parent / "example_seg.nii.gz")).dataobj).transpose(2, 1, 0)
    return vol, seg


def find_l3_centre(vol, seg) -> np.ndarray:
    """L3 body centre (LPS mm) of the real CT: track the vertebral bodies down from L2."""
    k, j, i = np.nonzero(seg == L2_LABEL)
    pts = vol.index_to_lps(np.stack([i, j, k + SEG_OFFSET_K], axis=1))
    body = pts[pts[:, 1] < np.percentile(pts[:, 1], 45)]       # anterior part of the label: the body
    centre = body.mean(axis=0)
    a = vol.affine_lps
    nk, nj, ni = vol.shape
    jj, ii = np.mgrid[0:nj, 0:ni]
    X = a[0, 0] * ii + a[0, 3]
    Y = a[1, 1] * jj + a[1, 3]
    k2 = int(round(vol.lps_to_index(centre[None])[0, 2]))
    x, y = centre[0], centre[1]
    ks, xs, ys, prof = [], [], [], []
    for kk in range(k2, max(k2 - 40, 0), -1):
        sl = vol.hu[kk]
        win = (np.abs(X - x) < 22.0) & (np.abs(Y - y) < 14.0) & (sl > 120.0)   # the body, not the arch
        if win.sum() > 5:
            x, y = 0.7 * x + 0.3 * X[win].mean(), 0.7 * y + 0.3 * Y[win].mean()
        disc = (X - x) ** 2 + (Y - y) ** 2 < 12.0 ** 2
        ks.append(kk)
        xs.append(x)
        ys.append(y)
        prof.append(float(sl[disc].mean()))
    ks, prof = np.array(ks), np.convolve(np.array(prof), np.ones(3) / 3, mode="same")
    step = abs(a[2, 2])

    def argmin_between(lo_mm, hi_mm, k_from):
        sel = (ks <= k_from - lo_mm / step) & (ks >= k_from - hi_mm / step)
        return int(ks[sel][np.argmin(prof[sel])])

    d1 = argmin_between(9.0, 36.0, k2)          # L2-L3 disc: below the L2 body centre
    d2 = argmin_between(24.0, 51.0, d1)         # L3-L4 disc: one body + disc further down
    kc = 0.5 * (d1 + d2)
    sel = [n for n, kk in enumerate(ks) if abs(kk - kc) <= 1.0]
    return np.array([np.mean(np.array(xs)[sel]), np.mean(np.array(ys)[sel]), a[2, 2] * kc + a[2, 3]])


def cancellous_hu(vol, centre) -> float:
    """Median HU in a cylinder of radius 8 mm, +-4.5 mm high, at the body centre."""
    ijk = vol.lps_to_index(np.array([centre]))[0]
    h = vol.spacing_mm
    nk, nj, ni = vol.shape
    r_i, r_k = int(np.ceil(8.0 / h[0])), int(np.ceil(4.5 / h[2]))
    c = np.rint(ijk).astype(int)
    sub = vol.hu[c[2] - r_k:c[2] + r_k + 1, c[1] - r_i:c[1] + r_i + 1, c[0] - r_i:c[0] + r_i + 1]
    jj, ii = np.mgrid[-r_i:r_i + 1, -r_i:r_i + 1]
    disc = (jj * h[1]) ** 2 + (ii * h[0]) ** 2 <= 64.0
    return float(np.median(sub[:, disc]))


def ap_diameter_mm(vol, centre) -> float:
    c = np.rint(vol.lps_to_index(np.array([centre]))[0]).astype(int)
    body = np.nonzero(vol.hu[c[2], :, c[0]] > -500.0)[0]
    return float((body.max() - body.min() + 1) * vol.spacing_mm[1])


def l3_path_lengths(vol, centre) -> np.ndarray:
    """(2, n) soft-tissue and bone path lengths (g/cm2) over the region at the isocentre, PA view."""
    g = Geometry(standard_view("PA", CArmPose(isocentre_lps_mm=tuple(float(v) for v in centre))),
                 Detector(rows=96, cols=96, pixel_pitch_mm=0.5))
    pl = project_materials(MaterialVolume.from_volume(vol), g)
    r = int(round(HALF_REGION_MM * g.pose.magnification / 0.5))
    return pl[:2, 48 - r:48 + r, 48 - r:48 + r].reshape(2, -1)


@pytest.fixture(scope="module")
def real(example_ct_path):
    vol, seg = _load_real(example_ct_path)
    c = find_l3_centre(vol, seg)
    return vol, c


@pytest.mark.realdata
def test_l3_is_found_below_the_labelled_l2(real):
    vol, c = real
    # one disc + one body below L2's labelled body, and bone (not disc) at its centre
    assert 60.0 < cancellous_hu(vol, c) < 300.0
    assert 290.0 < c[2] < 335.0                    # scanner z; the L2 label spans z 340-367 mm


@pytest.mark.realdata
def test_l3_path_lengths_inside_the_real_ct_range_at_matched_habitus(real):
    vol, c = real
    real_paths = l3_path_lengths(vol, c)
    # habitus of the real patient, measured on its CT
    ap_real = ap_diameter_mm(vol, c)
    hu_real = cancellous_hu(vol, c)
    probes = {b: make_phantom(PhantomParams(voxel_mm=2.0, bmi=b)) for b in (25.0, 35.0)}
    ap = {b: ap_diameter_mm(p.volume, np.zeros(3)) for b, p in probes.items()}
    bmi = float(np.clip(25.0 + 10.0 * (ap_real - ap[25.0]) / (ap[35.0] - ap[25.0]), 17.0, 45.0))
    bd = float(np.clip(hu_real / cancellous_hu(probes[25.0].volume, np.zeros(3)), 0.4, 1.3))
    ph: Phantom = make_phantom(PhantomParams(voxel_mm=1.5, bmi=round(bmi, 1), bone_density=round(bd, 2)))
    ph_paths = l3_path_lengths(ph.volume, np.zeros(3))
    report = []
    for m, name in enumerate(("soft tissue", "bone")):
        lo, hi = float(real_paths[m].min()), float(real_paths[m].max())
        med = float(np.median(ph_paths[m]))
        report.append(f"{name}: phantom median {med:.3f} g/cm2, real CT {np.median(real_paths[m]):.3f} "
                      f"[{lo:.3f}, {hi:.3f}]")
        assert lo <= med <= hi, (report, bmi, bd)
    print(f"\nmatched habitus: BMI {bmi:.1f} (AP {ap_real:.0f} mm), bone density {bd:.2f} "
          f"(L3 {hu_real:.0f} HU)\n" + "\n".join(report))
