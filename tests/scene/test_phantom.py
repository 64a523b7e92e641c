"""The procedural lumbar phantom: dimensions measured from its label map against published anatomy,
landmarks inside their structures, parameters, determinism, files, cache and a rendering smoke test."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from openfluoro.scene.phantom import (LABEL_TABLE, Phantom, PhantomParams, PhantomParamsError, cached_phantom,
                                      make_phantom)

BONE = {"T12", "L1", "L2", "L3", "L4", "L5", "sacrum", "coccyx", "hip_left", "hip_right", "rib_left",
        "rib_right", "femur_left", "femur_right"}
SAC = {"thecal_sac", "csf", "spinal_cord", "cauda_equina"}
CANAL = SAC | {"epidural_fat"}
LUMBAR = ("L1", "L2", "L3", "L4", "L5")


# -- helpers: measure on the label map ---------------------------------------------------------
def ids(ph: Phantom, names) -> set[int]:
    return {ph.label_of(n) for n in ([names] if isinstance(names, str) else names)}


def labels_at(ph: Phantom, pts) -> np.ndarray:
    """Label of the voxel nearest to each (N, 3) LPS point (0 outside the grid)."""
    pts = np.atleast_2d(np.asarray(pts, float))
    ijk = np.rint(ph.volume.lps_to_index(pts)).astype(int)
    nk, nj, ni = ph.labels.shape
    ok = (ijk >= 0).all(axis=1) & (ijk[:, 0] < ni) & (ijk[:, 1] < nj) & (ijk[:, 2] < nk)
    out = np.zeros(len(pts), dtype=int)
    out[ok] = ph.labels[ijk[ok, 2], ijk[ok, 1], ijk[ok, 0]]
    return out


def run_mm(ph: Phantom, start, direction, names, step: float = 0.05, reach: float = 120.0) -> float:
    """Length of the run of ``names`` voxels through ``start`` along +/- ``direction`` (mm)."""
    d = np.asarray(direction, float)
    d /= np.linalg.norm(d)
    t = np.arange(-reach, reach, step)
    lab = labels_at(ph, np.asarray(start, float)[None, :] + t[:, None] * d[None, :])
    inside = np.isin(lab, list(ids(ph, names)))
    c = len(t) // 2
    if not inside[c]:
        return 0.0
    lo = c
    while lo > 0 and inside[lo - 1]:
        lo -= 1
    hi = c
    while hi < len(t) - 1 and inside[hi + 1]:
        hi += 1
    return float((hi - lo + 1) * step)


def near(ph: Phantom, point, names, radius_vox: float = 1.5) -> bool:
    """Some voxel within ``radius_vox`` voxels of ``point`` carries one of ``names``."""
    h = ph.params.voxel_mm
    r = radius_vox * h
    g = np.arange(-r, r + 1e-9, h / 2)
    offs = np.array([(x, y, z) for x in g for y in g for z in g if x * x + y * y + z * z <= r * r])
    return bool(np.isin(labels_at(ph, np.asarray(point)[None, :] + offs), list(ids(ph, names))).any())


def pose(ph: Phantom, name: str) -> tuple[np.ndarray, np.ndarray]:
    p = ph.landmarks["vertebrae"][name]["pose"]
    return np.asarray(p["centre"]), np.asarray(p["rotation"])


def skin_to_dura_mm(ph: Phantom, level: str = "L3-L4") -> float:
    """Along the planned needle path: first skin voxel to first dural-sac voxel, from the labels."""
    nd = ph.landmarks["needle"][level]
    entry, target = np.asarray(nd["entry"]), np.asarray(nd["target"])
    d = (target - entry) / np.linalg.norm(target - entry)
    t = np.arange(-20.0, np.linalg.norm(target - entry), 0.05)
    lab = labels_at(ph, entry[None, :] + t[:, None] * d[None, :])
    t_skin = t[np.argmax(lab == ph.label_of("skin"))]
    t_sac = t[np.argmax(np.isin(lab, list(ids(ph, SAC))))]
    return float(t_sac - t_skin)


@pytest.fixture(scope="module")
def ph() -> Phantom:
    """1 mm voxels: fine enough to measure to ~1 mm, quick to build (~3 s)."""
    return make_phantom(PhantomParams(voxel_mm=1.0))


# -- parameters ----------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("voxel_mm", 0.3), ("voxel_mm", 2.5), ("bmi", 16.0), ("bmi", 46.0),
                                         ("lordosis_deg", -5.0), ("scoliosis_deg", 41.0),
                                         ("disc_degeneration", 1.5), ("bone_density", 0.2),
                                         ("vertebra_scale", 1.5), ("sex", "X"), ("seed", -1),
                                         ("bmi", float("nan"))])
def test_out_of_range_parameters_are_refused_naming_the_field(field, value):
    with pytest.raises(PhantomParamsError, match=field):
        PhantomParams(**{field: value})


def test_defaults_are_realistic():
    p = PhantomParams()
    assert (p.voxel_mm, p.bmi, p.lordosis_deg, p.scoliosis_deg, p.bone_density, p.sex) == (0.75, 25.0, 45.0, 0.0,
                                                                                           1.0, "M")
    assert PhantomParams(bmi=30).key() != p.key() and PhantomParams().key() == p.key()


def test_cli_defaults_match_the_dataclass():
    import inspect

    from openfluoro.cli import phantom_cmd

    opts = {k: v.default.default for k, v in inspect.signature(phantom_cmd).parameters.items() if k != "output"}
    p = PhantomParams()
    for k, v in opts.items():
        assert getattr(p, k) == v, k


# -- grid, labels, landmarks frame ------------------------------------------------------------------
def test_grid_is_lps_with_the_origin_at_the_l3_body_centre(ph):
    a = ph.volume.affine_lps
    assert np.allclose(a[:3, :3], np.eye(3) * 1.0)
    assert np.allclose(ph.landmarks["vertebrae"]["L3"]["body_centre"], 0.0, atol=1e-6)
    assert labels_at(ph, [[0.0, 0.0, 0.0]])[0] == ph.label_of("L3")
    # cranial is +z, posterior is +y: T12 above L3, spinous tips behind the bodies, psoas/bowel in front
    assert pose(ph, "T12")[0][2] > 80 and pose(ph, "L5")[0][2] < -60
    assert all(ph.landmarks["vertebrae"][n]["spinous_tip"][1] > 55 for n in LUMBAR)


def test_every_structure_of_the_table_is_present(ph):
    counts = np.bincount(ph.labels.ravel(), minlength=256)
    missing = [n for v, n in LABEL_TABLE.items() if counts[v] == 0]
    assert missing == []
    assert ph.labels.dtype == np.uint8 and ph.labels.shape == ph.volume.shape


# -- dimensions measured from the labels against published anatomy -----------------------------------
def test_vertebral_body_heights_widths_and_depths(ph):
    # Panjabi et al., Spine 17 (1992) 299: lumbar body heights ~24-29 mm, endplate widths ~40-50 mm,
    # endplate depths ~30-36 mm (L1 smallest, L5 widest)
    for n in LUMBAR:
        c, r = pose(ph, n)
        x, y, z = r[:, 0], r[:, 1], r[:, 2]
        height = run_mm(ph, c + 3.0 * y, z, n)
        width = run_mm(ph, c + z * 9.0, x, n)           # near the upper endplate, away from the waist
        depth = run_mm(ph, c, y, n)
        assert 23.0 <= height <= 30.0, (n, height)
        assert 38.0 <= width <= 53.0, (n, width)
        assert 28.0 <= depth <= 38.0, (n, depth)
    w = [run_mm(ph, pose(ph, n)[0] + pose(ph, n)[1][:, 2] * 9.0, pose(ph, n)[1][:, 0], n) for n in LUMBAR]
    assert w[-1] > w[0] + 4.0                           # widths grow caudally


def test_disc_heights(ph):
    # mid-disc heights ~8-12 mm in L1-S1, increasing to L4-L5 (Hurxthal, AJR 103 (1968) 635;
    # Amonoo-Kuofi, J Anat 175 (1991) 159); T12-L1 thinner
    heights = {}
    for level, d in ph.landmarks["discs"].items():
        c = np.asarray(d["centre"])
        up = level.split("-")[0]
        z = pose(ph, up)[1][:, 2]
        heights[level] = run_mm(ph, c, z, f"disc_{level.replace('-', '_')}")
    for level in ("L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"):
        assert 7.0 <= heights[level] <= 14.0, (level, heights[level])
    assert 5.0 <= heights["T12-L1"] <= 10.0
    assert heights["L4-L5"] > heights["L1-L2"]
    # lordotic wedges: anterior taller than posterior at L4-L5 and L5-S1
    for level in ("L4-L5", "L5-S1"):
        d = ph.landmarks["discs"][level]
        assert d["anterior_height_mm"] > d["posterior_height_mm"] + 3.0


def test_canal_and_thecal_sac_ap_diameters(ph):
    # bony canal mid-sagittal diameter ~15-18 mm in adults, lower limit of normal ~13-15 mm
    # (Eisenstein, J Bone Joint Surg Br 59 (1977) 173); dural sac AP ~12-16 mm on CT/MR
    # (Hamanishi et al., Spine 19 (1994) 2018: dural sac cross-section ~150-180 mm2)
    for n in LUMBAR:
        c, r = pose(ph, n)
        y = r[:, 1]
        # start just behind the posterior wall of the body, inside the canal
        depth = run_mm(ph, c, y, n)
        start = c + y * (depth / 2 + 4.0)
        canal = run_mm(ph, start, y, CANAL | {"ligamentum_flavum"})
        sac = run_mm(ph, start, y, SAC)
        assert 13.0 <= canal <= 20.0, (n, canal)
        assert 11.0 <= sac <= 16.5, (n, sac)


def test_skin_to_dura_depth_at_bmi_25(ph):
    # skin to subarachnoid space at L3-L4: 55.4 +- 6.5 mm (J Health Sci 7 (2017) 23, 250 adults);
    # 1.27 + 0.18 BMI cm = 57.7 mm at BMI 25 for men (Ma et al., Comput Math Methods Med 2014, 732694)
    depth = skin_to_dura_mm(ph)
    assert 45.0 <= depth <= 65.0, depth
    assert abs(depth - ph.landmarks["needle"]["L3-L4"]["skin_to_dura_mm"]) < 2.5


def test_higher_bmi_means_a_deeper_thecal_sac():
    depths = {b: skin_to_dura_mm(make_phantom(PhantomParams(voxel_mm=1.5, bmi=b))) for b in (20.0, 25.0, 35.0)}
    assert depths[20.0] < depths[25.0] < depths[35.0]
    # Ma et al. 2014: +1.8 mm per BMI unit (men); allow 1.0-3.0
    slope = (depths[35.0] - depths[25.0]) / 10.0
    assert 1.0 <= slope <= 3.0, depths


def test_iliac_crests_at_tuffiers_line(ph):
    # the intercristal (Tuffier's) line crosses L4 or the L4-L5 interspace in most adults
    # (Chakraverty et al., Br J Anaesth 99 (2007) 262; Kim et al., Anesthesiology 99 (2003) 1359)
    k = np.nonzero(np.isin(ph.labels, list(ids(ph, ["hip_left", "hip_right"]))).any(axis=(1, 2)))[0].max()
    z_crest = ph.volume.index_to_lps([[0, 0, k]])[0, 2]
    z_l4 = pose(ph, "L4")[0][2]
    z_disc = ph.landmarks["discs"]["L4-L5"]["centre"][2]
    assert z_disc - 8.0 <= z_crest <= z_l4 + 5.0, (z_crest, z_l4, z_disc)
    assert abs(ph.landmarks["iliac_crests"]["tuffier_z_mm"] - z_crest) < 3.0


def test_conus_ends_near_l1_l2_and_the_sac_at_s2(ph):
    # conus medullaris tip: lower L1 / L1-L2 in most adults (Saifuddin et al., J Anat 1998);
    # dural sac ends at S2 (range L5-S3)
    conus = np.asarray(ph.landmarks["conus_tip"])
    assert pose(ph, "L2")[0][2] < conus[2] < pose(ph, "L1")[0][2] + 5.0
    cord = np.argwhere(ph.labels == ph.label_of("spinal_cord"))
    z_low = ph.volume.index_to_lps(cord[:, ::-1])[:, 2].min()
    assert abs(z_low - conus[2]) < 5.0
    sac_tip = np.asarray(ph.landmarks["sac_tip"])
    assert ph.landmarks["vertebrae"]["sacrum"]["s1_endplate_centre"][2] - 60 < sac_tip[2] < \
        ph.landmarks["vertebrae"]["sacrum"]["s1_endplate_centre"][2] - 15


# -- landmarks inside their structures --------------------------------------------------------------
def test_landmarks_lie_in_their_labelled_structures(ph):
    lm = ph.landmarks
    for n in LUMBAR + ("T12",):
        v = lm["vertebrae"][n]
        assert labels_at(ph, [v["body_centre"]])[0] == ph.label_of(n)
        for corner, p in v["endplate_corners"].items():
            assert near(ph, p, n), (n, corner)
    assert labels_at(ph, [lm["vertebrae"]["sacrum"]["body_centre"]])[0] == ph.label_of("sacrum")
    assert labels_at(ph, [lm["vertebrae"]["coccyx"]["body_centre"]])[0] == ph.label_of("coccyx")
    for level, d in lm["discs"].items():
        assert labels_at(ph, [d["centre"]])[0] == ph.label_of(f"disc_{level.replace('-', '_')}"), level
    for level, s in lm["thecal_sac"].items():
        assert labels_at(ph, [s["centre"]])[0] in ids(ph, SAC), level
        for wall in ("anterior_wall", "posterior_wall", "left_wall", "right_wall"):
            assert near(ph, s[wall], "thecal_sac"), (level, wall)
    for level, w in lm["interlaminar_windows"].items():
        assert labels_at(ph, [w["centre"]])[0] not in ids(ph, BONE), level
        assert 8.0 <= w["height_mm"] <= 25.0 and 12.0 <= w["width_mm"] <= 30.0, (level, w)
    for level in ("L2-L3", "L3-L4", "L4-L5"):
        nd = lm["needle"][level]
        assert nd["recommended"]
        assert labels_at(ph, [nd["target"]])[0] == ph.label_of("csf"), level
        assert near(ph, nd["entry"], "skin") and near(ph, nd["entry"], "air"), level


def test_needle_paths_reach_the_sac_without_touching_bone(ph):
    for level in ("L2-L3", "L3-L4", "L4-L5"):
        nd = ph.landmarks["needle"][level]
        entry, target = np.asarray(nd["entry"]), np.asarray(nd["target"])
        t = np.linspace(0.0, 1.0, 600)
        lab = labels_at(ph, entry[None, :] + t[:, None] * (target - entry)[None, :])
        assert not np.isin(lab, list(ids(ph, BONE))).any(), level
        # skin, fat, (inter)spinous ligament, ligamentum flavum, epidural fat, dura, CSF -- in that order
        assert ph.label_of("ligamentum_flavum") in lab and ph.label_of("thecal_sac") in lab
        assert lab[0] in ids(ph, ["skin", "air"]) and lab[-1] == ph.label_of("csf")
        assert abs(nd["direction"][0]) < 0.05       # midline approach


def test_vertebral_poses_are_rigid_frames(ph):
    for n in LUMBAR + ("T12", "sacrum", "coccyx"):
        c, r = pose(ph, n)
        assert np.allclose(r.T @ r, np.eye(3), atol=1e-5) and np.linalg.det(r) > 0.999
        w, x, y, z = ph.landmarks["vertebrae"][n]["pose"]["quaternion_wxyz"]
        q = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        assert np.allclose(q, r, atol=1e-4)
    json.dumps(ph.landmarks)                          # JSON-serialisable


def test_spinous_processes_are_midline_without_scoliosis(ph):
    for n in LUMBAR:
        tip = ph.landmarks["vertebrae"][n]["spinous_tip"]
        assert abs(tip[0] - pose(ph, n)[0][0]) < 4.0
        # measured: the spinous process voxels behind the lamina are centred on the midline
        c, r = pose(ph, n)
        vox = np.argwhere(ph.labels == ph.label_of(n))
        pts = ph.volume.index_to_lps(vox[:, ::-1])
        behind = pts[(pts - c) @ r[:, 1] > 50.0]
        assert abs(np.mean((behind - c) @ r[:, 0])) < 3.0


# -- parameters change what they should ---------------------------------------------------------------
def _cancellous_hu(ph: Phantom, n: str = "L3") -> float:
    c, r = pose(ph, n)
    g = np.linspace(-8, 8, 9)
    pts = np.array([c + r @ np.array([x, y, z]) for x in g for y in g for z in g])
    ijk = np.rint(ph.volume.lps_to_index(pts)).astype(int)
    return float(np.median(ph.volume.hu[ijk[:, 2], ijk[:, 1], ijk[:, 0]]))


def test_bone_density_lowers_cancellous_hu(ph):
    healthy = _cancellous_hu(ph)
    assert 150.0 <= healthy <= 300.0                # Pickhardt et al., Ann Intern Med 158 (2013) 588
    osteo = _cancellous_hu(make_phantom(PhantomParams(voxel_mm=1.5, bone_density=0.45)))
    assert osteo < 110.0 and osteo < 0.6 * healthy  # < 110 HU: osteoporosis range (Pickhardt 2013)


def test_disc_degeneration_narrows_discs_and_adds_osteophytes(ph):
    deg = make_phantom(PhantomParams(voxel_mm=1.0, disc_degeneration=1.0))

    def h(p, level="L4-L5"):
        return run_mm(p, p.landmarks["discs"][level]["centre"], pose(p, "L4")[1][:, 2], "disc_L4_L5")

    assert h(deg) < 0.75 * h(ph)
    assert np.count_nonzero(deg.labels == deg.label_of("L4")) > np.count_nonzero(ph.labels == ph.label_of("L4"))


@pytest.mark.parametrize("lordosis", [25.0, 60.0])
def test_lordosis_parameter_is_the_l1_s1_angle(lordosis):
    p = make_phantom(PhantomParams(voxel_mm=2.0, lordosis_deg=lordosis))
    _, r1 = pose(p, "L1")
    _, rs = pose(p, "sacrum")

    def sagittal(r):
        return np.degrees(np.arctan2(-r[1, 2], r[2, 2]))   # lean of the superior axis, anterior +

    measured = sagittal(rs) - sagittal(r1)
    assert abs(measured - lordosis) < 6.0, measured


def test_scoliosis_parameter_is_the_cobb_angle():
    p = make_phantom(PhantomParams(voxel_mm=2.0, scoliosis_deg=20.0))

    def coronal(n):
        r = pose(p, n)[1]
        return np.degrees(np.arctan2(r[0, 2], r[2, 2]))

    cobb = max(coronal(a) - coronal(b) for a in ("L3", "L4", "L5") for b in ("T12", "L1", "L2"))
    assert 14.0 < cobb < 26.0, cobb
    ends = 0.5 * (pose(p, "T12")[0][0] + pose(p, "sacrum")[0][0])
    assert pose(p, "L2")[0][0] - ends > 5.0          # apex displaced to the convex (left) side


def test_female_phantom_is_smaller_with_more_fat():
    m = make_phantom(PhantomParams(voxel_mm=2.0))
    f = make_phantom(PhantomParams(voxel_mm=2.0, sex="F"))
    assert np.count_nonzero(f.labels == f.label_of("L3")) < np.count_nonzero(m.labels == m.label_of("L3"))
    assert f.landmarks["needle"]["L3-L4"]["skin_to_dura_mm"] > m.landmarks["needle"]["L3-L4"]["skin_to_dura_mm"] - 3


# -- determinism, files, cache ----------------------------------------------------------------------
def test_same_seed_is_bit_identical_and_another_seed_differs():
    a = make_phantom(PhantomParams(voxel_mm=2.0, seed=3))
    b = make_phantom(PhantomParams(voxel_mm=2.0, seed=3))
    c = make_phantom(PhantomParams(voxel_mm=2.0, seed=4))
    assert np.array_equal(a.volume.hu, b.volume.hu) and np.array_equal(a.labels, b.labels)
    assert a.landmarks == b.landmarks
    assert not np.array_equal(a.volume.hu, c.volume.hu)
    assert a.landmarks["vertebrae"]["L4"]["pose"] != c.landmarks["vertebrae"]["L4"]["pose"]


def test_save_writes_ct_labels_and_landmarks(tmp_path):
    import nibabel as nib

    p = make_phantom(PhantomParams(voxel_mm=2.0, bmi=30, seed=7))
    out = p.save(tmp_path / "patient.nii.gz")
    assert {k: v.name for k, v in out.items()} == {"ct": "patient.nii.gz", "labels": "patient_labels.nii.gz",
                                                   "landmarks": "patient_landmarks.json"}
    ct, lab = nib.load(out["ct"]), nib.load(out["labels"])
    assert np.allclose(ct.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ p.volume.affine_lps)
    assert nib.aff2axcodes(ct.affine) == ("L", "P", "S")       # i, j, k run to patient left, posterior, up
    assert np.array_equal(np.asarray(ct.dataobj).transpose(2, 1, 0), p.volume.hu.astype(np.int16))
    assert np.array_equal(np.asarray(lab.dataobj).transpose(2, 1, 0), p.labels)
    doc = json.loads(out["landmarks"].read_text())
    assert doc["params"]["bmi"] == 30 and doc["label_table"]["16"] == "csf"
    assert doc["needle"]["L3-L4"]["target"] == p.landmarks["needle"]["L3-L4"]["target"]


def test_cache_hits_and_rebuilds_a_corrupt_entry(tmp_path):
    params = PhantomParams(voxel_mm=2.0, seed=11)
    a = cached_phantom(params, cache_dir=tmp_path)
    files = list(tmp_path.glob("phantom-*.npz"))
    assert len(files) == 1
    t = time.perf_counter()
    b = cached_phantom(params, cache_dir=tmp_path)
    assert time.perf_counter() - t < 5.0
    assert np.array_equal(a.volume.hu, b.volume.hu) and np.array_equal(a.labels, b.labels)
    assert a.landmarks == b.landmarks
    files[0].write_bytes(files[0].read_bytes()[:1000])          # truncate: corrupt
    c = cached_phantom(params, cache_dir=tmp_path)
    assert np.array_equal(a.labels, c.labels)
    assert files[0].stat().st_size > 10000                     # rewritten


# -- rendering -------------------------------------------------------------------------------------------
def test_renders_through_the_projector():
    from openfluoro.geometry.carm import CArmPose, Detector, Geometry, standard_view
    from openfluoro.render.raycast import MaterialVolume, project_materials

    p = make_phantom(PhantomParams(voxel_mm=2.0))
    mv = MaterialVolume.from_volume(p.volume)
    for view in ("AP", "lateral", "LPO45"):
        g = Geometry(standard_view(view, CArmPose()), Detector.square(64, 300.0))
        pl = project_materials(mv, g)
        assert np.all(np.isfinite(pl)) and pl.min() >= 0
        centre = pl[:, 28:36, 28:36]
        assert np.median(centre[1]) > 0.3           # bone (the L3 body) at the isocentre
        assert 10.0 < np.median(centre[0]) < 40.0    # ~20-35 cm of soft tissue
        assert pl[2].max() == 0.0                    # no metal in the phantom


@pytest.mark.slow
def test_default_phantom_at_full_resolution():
    t = time.perf_counter()
    p = make_phantom()
    dt = time.perf_counter() - t
    assert dt < 30.0, dt                              # ~4 s on two cores; generous for busy CI
    assert p.volume.spacing_mm == pytest.approx([0.75] * 3)
    l3 = p.volume.hu[p.labels == p.label_of("L3")]
    assert l3.max() >= 1000.0                        # cortical shell
    assert 150.0 <= _cancellous_hu(p) <= 300.0
    csf = p.volume.hu[p.labels == p.label_of("csf")]
    assert 0.0 <= np.median(csf) <= 15.0
    disc = p.volume.hu[p.labels == p.label_of("disc_L3_L4")]
    assert 40.0 <= np.median(disc) <= 100.0
    fat = p.volume.hu[p.labels == p.label_of("subcutaneous_fat")]
    assert -110.0 <= np.median(fat) <= -80.0
    assert 45.0 <= skin_to_dura_mm(p) <= 65.0
