"""Procedural lumbar-spine phantom: the built-in patient, with perfect ground truth.

``make_phantom(PhantomParams(...))`` builds a CT volume (Hounsfield units) from T12 to
the coccyx with the pelvis, the lower ribs, the abdominal and back muscles, organs,
bowel (with gas) and the spinal canal contents, plus a label map and landmarks.

Coordinates are DICOM LPS millimetres (+x patient left, +y posterior, +z superior).
**Origin: the centre of the L3 vertebral body** (so a C-arm isocentre at (0, 0, 0)
looks at L3). The grid is axis-aligned; ``hu[k, j, i]`` as everywhere in OpenFluoro.

Each vertebra is one rigid body: its pose (body centre and rotation, whose columns
are the vertebra's left / posterior / superior axes in LPS) is in
``landmarks["vertebrae"][name]["pose"]``, so later code can move vertebrae rigidly.

How it is built: every structure is a group of signed-distance primitives in the
structure's local frame, painted in a fixed order into its own bounding box by a
compiled kernel (see ``openfluoro.scene.anatomy``). Anatomical dimensions and HU
values, with their sources, are in ``anatomy/skeleton.py``, ``anatomy/soft.py`` and
``anatomy/labels.py``. The same parameters (including ``seed``) give a bit-identical
volume.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np

from openfluoro.scene.anatomy import kernels as K
from openfluoro.scene.anatomy import labels as LB
from openfluoro.scene.anatomy import shapes as S
from openfluoro.scene.anatomy import skeleton as SK
from openfluoro.scene.anatomy import soft as SO
from openfluoro.scene.volume import Volume

#: Bump when the generated anatomy changes (it keys the on-disk cache).
PHANTOM_CODE_VERSION = "phantom-2026.11-2"

#: The label table written with every phantom (value -> structure name).
LABEL_TABLE: Mapping[int, str] = LB.LABELS

__all__ = ["PhantomParams", "Phantom", "PhantomParamsError", "make_phantom", "default_phantom",
           "cached_phantom", "LABEL_TABLE", "PHANTOM_CODE_VERSION", "phantom_cache_dir"]


def _source_digest() -> str:
    """Digest of the modules that shape the anatomy, so an edited phantom never reads a stale cache."""
    global _SOURCE_DIGEST
    if _SOURCE_DIGEST is None:
        h = hashlib.sha256()
        here = Path(__file__).resolve().parent
        for f in [here / "phantom.py", here / "phantom_landmarks.py", *sorted((here / "anatomy").glob("*.py"))]:
            try:
                h.update(f.read_bytes())
            except OSError:
                h.update(f.name.encode())
        _SOURCE_DIGEST = h.hexdigest()[:16]
    return _SOURCE_DIGEST


_SOURCE_DIGEST: str | None = None


class PhantomParamsError(ValueError):
    """A phantom parameter is out of range; the message names the field and the allowed range."""


_RANGES: dict[str, tuple[float, float]] = {
    "voxel_mm": (0.4, 2.0),
    "bmi": (17.0, 45.0),
    "lordosis_deg": (0.0, 80.0),
    "scoliosis_deg": (0.0, 40.0),
    "disc_degeneration": (0.0, 1.0),
    "bone_density": (0.4, 1.3),
    "vertebra_scale": (0.8, 1.2),
}


@dataclass(frozen=True)
class PhantomParams:
    """What the phantom patient looks like. Every field has a realistic default and a checked range.

    * ``voxel_mm``: isotropic voxel size, 0.4-2.0 mm;
    * ``bmi``: body-mass index, 17-45 kg/m2; sets subcutaneous (and visceral) fat, and so
      the skin-to-thecal-sac depth (~55 mm at 25, ~+1.8 mm per unit);
    * ``lordosis_deg``: L1-S1 Cobb lordosis, 0-80 (normal ~40-60); the sacral slope follows;
    * ``scoliosis_deg``: Cobb angle of a left-convex lumbar curve (T12-L4, apex L2-L3), 0-40;
    * ``disc_degeneration``: 0-1; narrows the discs (more at L4-S1), bulges them, adds
      osteophytes, thickens the ligamenta flava and facets, vacuum discs above 0.7;
    * ``bone_density``: 0.4-1.3 times the healthy cancellous HU (0.5 ~ osteoporosis);
    * ``vertebra_scale``: 0.8-1.2 times the average male vertebral dimensions;
    * ``sex``: "M" or "F" (smaller vertebrae, wider pelvis, more subcutaneous fat);
    * ``seed``: natural variation (sizes, angles, organ positions, bowel gas).
    """

    voxel_mm: float = 0.75
    bmi: float = 25.0
    lordosis_deg: float = 45.0
    scoliosis_deg: float = 0.0
    disc_degeneration: float = 0.0
    bone_density: float = 1.0
    vertebra_scale: float = 1.0
    sex: Literal["M", "F"] = "M"
    seed: int = 0

    def __post_init__(self) -> None:
        for name, (lo, hi) in _RANGES.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise PhantomParamsError(f"PhantomParams.{name}: expected a number in [{lo}, {hi}], got {v!r}")
            if not (lo <= float(v) <= hi):
                raise PhantomParamsError(f"PhantomParams.{name}: expected a value in [{lo}, {hi}], got {v}")
            object.__setattr__(self, name, float(v))
        if self.sex not in ("M", "F"):
            raise PhantomParamsError(f"PhantomParams.sex: expected 'M' or 'F', got {self.sex!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise PhantomParamsError(f"PhantomParams.seed: expected a non-negative integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))

    def key(self) -> str:
        """Hash of the parameters, the code version and the anatomy source (the cache key)."""
        blob = json.dumps({"params": asdict(self), "version": PHANTOM_CODE_VERSION, "source": _source_digest()},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass(frozen=True, eq=False)
class Phantom:
    """A generated patient: CT volume, label map on the same grid, label table, landmarks."""

    volume: Volume
    labels: np.ndarray
    label_table: Mapping[int, str]
    landmarks: dict[str, Any]
    params: PhantomParams

    def __post_init__(self) -> None:
        if self.labels.shape != self.volume.shape:
            raise ValueError(f"labels {self.labels.shape} and volume {self.volume.shape} differ in shape")
        lab = np.ascontiguousarray(self.labels)
        lab.setflags(write=False)
        object.__setattr__(self, "labels", lab)

    def label_of(self, name: str) -> int:
        for v, n in self.label_table.items():
            if n == name:
                return v
        raise KeyError(f"no structure named {name!r}; known: {', '.join(self.label_table.values())}")

    def save(self, path: str | Path) -> dict[str, Path]:
        """Write ``X.nii.gz`` (CT, int16 HU), ``X_labels.nii.gz`` (uint8) and ``X_landmarks.json``.

        NIfTI files carry the RAS affine ``diag(-1, -1, 1, 1) @ affine_lps``.
        """
        import nibabel as nib

        path = Path(path)
        name = path.name
        for suffix in (".nii.gz", ".nii"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        ext = ".nii" if path.name.endswith(".nii") else ".nii.gz"
        base = path.parent / name
        path.parent.mkdir(parents=True, exist_ok=True)
        ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.volume.affine_lps
        out = {"ct": base.parent / f"{name}{ext}", "labels": base.parent / f"{name}_labels{ext}",
               "landmarks": base.parent / f"{name}_landmarks.json"}
        for key, data, dtype in (("ct", self.volume.hu, np.int16), ("labels", self.labels, np.uint8)):
            img = nib.Nifti1Image(np.asarray(data).transpose(2, 1, 0).astype(dtype), ras)
            img.header.set_xyzt_units("mm")
            img.header.set_qform(ras, code=1)
            img.header.set_sform(ras, code=1)
            if key == "ct":
                img.header["descrip"] = f"openfluoro phantom {PHANTOM_CODE_VERSION}".encode()[:79]
            nib.save(img, str(out[key]))
        doc = dict(self.landmarks)
        doc["label_table"] = {str(k): v for k, v in self.label_table.items()}
        out["landmarks"].write_text(json.dumps(doc, indent=1))
        return out


# -- generation -------------------------------------------------------------------------------------
@dataclass
class _Build:
    skel: SK.Skeleton
    groups: dict[str, S.Group] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    joints: list[SK.FacetJoint] = field(default_factory=list)
    hips: list[SK.HipBone] = field(default_factory=list)

    def add(self, g: S.Group) -> None:
        key = g.name
        n = 2
        while key in self.groups:
            key = f"{g.name} #{n}"
            n += 1
        self.groups[key] = g
        self.order.append(key)


def _rngs(seed: int) -> dict[str, np.random.Generator]:
    names = ("skeleton", "bones", "soft", "organs", "canal", "texture")
    children = np.random.SeedSequence(seed).spawn(len(names))
    return {n: np.random.Generator(np.random.PCG64(c)) for n, c in zip(names, children)}


def _build(params: PhantomParams) -> _Build:
    """Lay out the anatomy and make every group (nothing is voxelised yet)."""
    rng = _rngs(params.seed)
    skel = SK.build_skeleton(params, rng["skeleton"])
    b = _Build(skel)
    b.joints = SK.facet_joints(skel)
    h = params.voxel_mm
    bd = params.bone_density
    tex = rng["texture"]

    # soft tissue first (painter's order), bones overwrite it, canal contents go into the bony canal
    for g in SO.muscle_groups(skel, rng["soft"]):
        b.add(g)
    for g in SO.organ_groups(skel, params, rng["organs"]):
        b.add(g)
    nuc_hu = LB.HU_NUCLEUS + 30.0 * params.disc_degeneration
    for disc in skel.discs.values():
        g = SK.disc_group(skel, disc)
        g.hu_in = LB.HU_ANNULUS
        g.writable = LB.SOFT_LABELS
        b.add(g)
        prims = [SK.nucleus_prim(skel, disc)]
        b.add(S.Group(f"nucleus {disc.name}", prims, disc.label, nuc_hu, writable=(disc.label,)))
        if disc.degeneration >= 0.7:
            c = disc.pose.pt((0.0, -0.1 * skel.vertebrae[disc.upper].dims["D"], 0.0))
            gas = [S.ellipsoid(c, disc.pose.frame, 9.0, 4.0, max(disc.height * 0.22, 1.0))]
            b.add(S.Group(f"vacuum {disc.name}", gas, disc.label, -900.0, writable=(disc.label,)))

    canal_cut = SK.tube_chain(skel.canal_nodes, op=K.OP_SUB)
    bone_w = LB.SOFT_LABELS + LB.DISC_LABELS
    canc = LB.HU_CANCELLOUS * bd
    cort = LB.HU_CORTICAL * (0.75 + 0.25 * bd)
    arch_in = LB.HU_ARCH * bd
    arch_cort = LB.HU_CORTICAL_ARCH * (0.75 + 0.25 * bd)
    for n in ["T12", "L1", "L2", "L3", "L4", "L5"]:
        v = skel.vertebrae[n]
        above = next((d for d in skel.discs.values() if d.lower == n), None)
        below = next(d for d in skel.discs.values() if d.upper == n)
        degen = ((above or below).degeneration, below.degeneration)
        body, prims = SK.vertebra_prims(v, rng["bones"], degen)
        b.add(S.Group(f"{n} body", body, v.label, canc, lab_out=v.label, hu_out=cort, shell_mm=1.0, k_smooth=2.0,
                      tex=S.value_noise(tex, (2.0, 3.5)), tex_amp=0.2 * canc, writable=bone_w))
        for jt in b.joints:
            lvl_up, lvl_lo = jt.level.split("-")
            if lvl_lo == n:
                prims += jt.sap
            if lvl_up == n:
                prims += jt.iap
        prims += canal_cut
        b.add(S.Group(n, prims, v.label, arch_in, lab_out=v.label, hu_out=arch_cort, shell_mm=1.0, k_smooth=2.5,
                      tex=S.value_noise(tex, (2.0, 3.5)), tex_amp=0.15 * arch_in, writable=bone_w))
    sac = SK.sacrum_prims(skel)
    for jt in b.joints:
        if jt.level == "L5-S1":
            sac += jt.sap
    sac += canal_cut
    b.add(S.Group("sacrum", sac, LB.SACRUM, canc * 0.65, lab_out=LB.SACRUM, hu_out=cort * 0.9, shell_mm=1.0,
                  k_smooth=4.0, tex=S.value_noise(tex, (2.0, 3.5)), tex_amp=0.2 * canc, writable=bone_w))
    b.add(S.Group("coccyx", SK.coccyx_prims(skel), LB.COCCYX, canc * 0.8, lab_out=LB.COCCYX, hu_out=cort * 0.85,
                  shell_mm=1.0, k_smooth=2.0, writable=bone_w))
    b.hips = SK.hip_bones(skel)
    pc = LB.HU_CANCELLOUS_PELVIS * bd
    pcort = LB.HU_CORTICAL_PELVIS * (0.75 + 0.25 * bd)
    for hb in b.hips:
        lab = LB.HIP_LEFT if hb.side > 0 else LB.HIP_RIGHT
        flab = LB.FEMUR_LEFT if hb.side > 0 else LB.FEMUR_RIGHT
        side = "left" if hb.side > 0 else "right"
        b.add(S.Group(f"hip {side}", hb.wing, lab, pc, lab_out=lab, hu_out=pcort, shell_mm=1.6, k_smooth=5.0,
                      tex=S.value_noise(tex, (2.5, 4.0)), tex_amp=0.2 * pc, writable=bone_w))
        b.add(S.Group(f"pelvic brim {side}", hb.brim, lab, pc, lab_out=lab, hu_out=pcort, shell_mm=1.6,
                      k_smooth=4.0, writable=bone_w))
        b.add(S.Group(f"femur {side}", hb.femur, flab, pc, lab_out=flab, hu_out=pcort, shell_mm=2.0, k_smooth=4.0,
                      tex=S.value_noise(tex, (2.5, 4.0)), tex_amp=0.2 * pc, writable=bone_w))
    for s, lab in ((1, LB.RIB_LEFT), (-1, LB.RIB_RIGHT)):
        b.add(S.Group(f"ribs {'left' if s > 0 else 'right'}", SK.rib_prims(skel, s), lab, 180.0 * bd, lab_out=lab,
                      hu_out=pcort, shell_mm=1.2, k_smooth=2.0, writable=bone_w))

    for g in SO.canal_groups(skel, params, rng["canal"], h):
        b.add(g)
    b.add(S.Group("interspinous ligament", SO.interspinous_prims(skel), LB.INTERSPINOUS_LIGAMENT,
                  LB.HU_INTERSPINOUS, writable=(LB.PARASPINAL_MUSCLE, LB.VISCERAL_FAT, LB.OTHER_MUSCLE)))
    return b


def _grid(b: _Build, params: PhantomParams) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Origin (LPS of voxel 0,0,0) and shape (k, j, i); the L3 body centre (0,0,0) is a voxel centre."""
    h = params.voxel_mm
    skel = b.skel
    t12 = skel.vertebrae["T12"]
    z_top = float(t12.pose.centre[2] + t12.dims["H"] / 2 + 14.0)
    co = skel.coccygeal[-1]
    z_bot = float(min(co.pose.centre[2] - co.height / 2 - 12.0, skel.pelvis.pt((0, 0, -112.0))[2]))
    zs = np.linspace(z_bot, z_top, 64)
    prof = SO.torso_profile(skel, params, zs)
    half_w = prof[:, K.TP_AL] + prof[:, K.TP_FL] + prof[:, K.TP_SKIN]
    cx = prof[0, K.TP_CX]
    x_lo = float(np.min(cx - half_w)) - 4.0
    x_hi = float(np.max(cx + half_w)) + 4.0
    y_lo = float(np.min(prof[:, K.TP_CY] - prof[:, K.TP_BA] - prof[:, K.TP_FA] - prof[:, K.TP_SKIN])) - 4.0
    y_hi = float(np.max(prof[:, K.TP_CY] + prof[:, K.TP_BP] + prof[:, K.TP_FP] + prof[:, K.TP_SKIN])) + 4.0
    lo = np.array([x_lo, y_lo, z_bot])
    hi = np.array([x_hi, y_hi, z_top])
    n_lo = np.ceil(-lo / h).astype(int)      # voxels below 0 on each axis
    n_hi = np.ceil(hi / h).astype(int)
    origin = -n_lo * h
    shape = tuple(int(v) for v in (n_lo + n_hi + 1)[::-1])
    return origin.astype(float), shape  # type: ignore[return-value]


def make_phantom(params: PhantomParams | None = None) -> Phantom:
    """Generate a phantom (~4-6 s for the default 0.75 mm grid, 86 M voxels, on two cores)."""
    params = params or PhantomParams()
    b = _build(params)
    h = params.voxel_mm
    origin, shape = _grid(b, params)
    hu = np.full(shape, LB.HU_AIR, dtype=np.float32)
    lab = np.zeros(shape, dtype=np.uint8)
    z = origin[2] + h * np.arange(shape[0])
    prof = np.ascontiguousarray(SO.torso_profile(b.skel, params, z))
    K.paint_torso(hu, lab, origin, float(h), prof, LB.SKIN, LB.SUBCUTANEOUS_FAT, LB.OTHER_MUSCLE, LB.VISCERAL_FAT,
                  LB.HU_SKIN, LB.HU_FAT, LB.HU_MUSCLE, LB.HU_VISCERAL_FAT)
    for key in b.order:
        S.paint(hu, lab, origin, h, b.groups[key])
    np.rint(hu, out=hu)
    affine = np.diag([h, h, h, 1.0])
    affine[:3, 3] = origin
    from openfluoro.scene.phantom_landmarks import compute_landmarks

    landmarks = compute_landmarks(b, params)
    vol = Volume(hu, affine, source=f"phantom:{params.key()}",
                 metadata={"phantom_params": asdict(params), "phantom_version": PHANTOM_CODE_VERSION})
    return Phantom(vol, lab, LABEL_TABLE, landmarks, params)


# -- cache ----------------------------------------------------------------------------------------
def phantom_cache_dir() -> Path:
    """``$OPENFLUORO_CACHE`` or ``$XDG_CACHE_HOME/openfluoro`` or ``~/.cache/openfluoro``."""
    env = os.environ.get("OPENFLUORO_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "openfluoro"


def _digest(hu16: np.ndarray, lab: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(hu16.tobytes())
    h.update(lab.tobytes())
    return h.hexdigest()


def _load_cached(path: Path, params: PhantomParams) -> Phantom:
    with np.load(path, allow_pickle=False) as z:
        hu16, lab, affine = z["hu"], z["labels"], z["affine"]
        meta = json.loads(str(z["meta"]))
    if meta.get("key") != params.key() or meta.get("digest") != _digest(hu16, lab):
        raise ValueError(f"{path}: cache entry does not match (key or checksum)")
    vol = Volume(hu16.astype(np.float32), affine, source=f"phantom:{params.key()}",
                 metadata={"phantom_params": asdict(params), "phantom_version": PHANTOM_CODE_VERSION})
    return Phantom(vol, lab, LABEL_TABLE, meta["landmarks"], params)


def cached_phantom(params: PhantomParams | None = None, cache_dir: str | Path | None = None) -> Phantom:
    """``make_phantom(params)``, read from / written to the on-disk cache (a corrupt entry is rebuilt)."""
    params = params or PhantomParams()
    d = Path(cache_dir) if cache_dir is not None else phantom_cache_dir()
    path = d / f"phantom-{params.key()}.npz"
    if path.is_file():
        try:
            return _load_cached(path, params)
        except Exception:  # noqa: BLE001 - any unreadable entry is simply regenerated
            pass
    ph = make_phantom(params)
    hu16 = ph.volume.hu.astype(np.int16)
    meta = {"key": params.key(), "digest": _digest(hu16, ph.labels), "landmarks": ph.landmarks}
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, hu=hu16, labels=np.asarray(ph.labels), affine=ph.volume.affine_lps, meta=json.dumps(meta))
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass  # a read-only cache is not an error: the phantom is still returned
    return ph


def default_phantom() -> Phantom:
    """The default patient (``PhantomParams()``), generated once and then read from the cache."""
    return cached_phantom(PhantomParams())
