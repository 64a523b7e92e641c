"""Spine layout (one rigid pose per vertebra) and the bony parts of the phantom.

Frames: every pose has a centre (LPS mm) and a 3x3 ``frame`` whose columns are the
structure's local axes in LPS: local x = patient left, y = posterior, z = superior
(cranial) for a vertebra in the neutral position. A point ``q`` in local coordinates
sits at ``centre + frame @ q``.

Dimensions (male adult, ``vertebra_scale`` = 1) are rounded means from:

* vertebral bodies: Panjabi et al., "Human lumbar vertebrae: quantitative
  three-dimensional anatomy", Spine 17 (1992) 299 -- endplate widths ~40-50 mm,
  depths ~32-35 mm, body heights ~25-28 mm;
* pedicles: Zindrick et al., Spine 12 (1987) 160 -- transverse width 8-9 mm at L1 to
  15-18 mm at L5, height ~14-15 mm, medial convergence ~10 deg (L1) to ~30 deg (L5);
* canal: Eisenstein, J Bone Joint Surg Br 59 (1977) 173 -- mid-sagittal diameter
  ~15-18 mm, interpedicular width ~21-26 mm;
* discs: mid heights ~8-12 mm increasing caudally (Hurxthal, Am J Roentgenol 103
  (1968) 635; Amonoo-Kuofi, J Anat 175 (1991) 159);
* segmental lordosis: Bernhardt & Bridwell, Spine 14 (1989) 717 -- about two thirds of
  L1-S1 lordosis is at L4-S1;
* facet orientation from the sagittal plane ~25 deg (L1-L2) to ~50 deg (L5-S1)
  (Masharawi et al., Spine 29 (2004) 1755).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from openfluoro.scene.anatomy import labels as LB
from openfluoro.scene.anatomy import shapes as S
from openfluoro.scene.anatomy.kernels import OP_INT as K_OP_INT
from openfluoro.scene.anatomy.kernels import OP_SUB

# per level: body width W, depth D, posterior height H, body wedge (deg, anterior taller +),
# canal width CW, canal AP CD, pedicle width PW, height PH, convergence (deg),
# transverse-process length TPL, spinous length SPL, spinous height SPH
_DIMS = {
    #        W     D     H    wedge  CW    CD    PW    PH   conv  TPL   SPL   SPH
    "T12": (40.0, 30.0, 23.5, -3.0, 20.0, 17.0, 7.5, 16.0, 5.0, 9.0, 29.0, 18.0),
    "L1": (42.5, 31.5, 25.0, 0.0, 22.0, 17.5, 8.5, 15.5, 10.0, 14.0, 30.0, 18.0),
    "L2": (44.5, 33.0, 26.0, 0.0, 22.5, 17.0, 9.0, 15.0, 12.0, 20.0, 31.0, 19.0),
    "L3": (46.5, 34.5, 26.5, 0.0, 23.0, 16.5, 10.5, 14.5, 15.0, 27.0, 32.0, 19.0),
    "L4": (48.5, 35.0, 26.5, 0.0, 24.0, 16.0, 12.5, 14.0, 20.0, 23.0, 30.0, 18.0),
    "L5": (50.5, 35.0, 26.0, 4.0, 26.0, 16.0, 16.0, 14.0, 28.0, 18.0, 25.0, 15.0),
}
_DIM_KEYS = ("W", "D", "H", "wedge", "CW", "CD", "PW", "PH", "conv", "TPL", "SPL", "SPH")

# discs (upper-lower): mid height (mm), share of the L1-S1 lordosis, facet angle from sagittal (deg),
# weight of degeneration (lower discs degenerate first)
_DISCS = {
    "T12-L1": (7.5, 0.00, 25.0, 0.4),
    "L1-L2": (9.0, 0.06, 27.0, 0.5),
    "L2-L3": (10.0, 0.10, 33.0, 0.6),
    "L3-L4": (11.0, 0.19, 40.0, 0.8),
    "L4-L5": (11.5, 0.29, 47.0, 1.0),
    "L5-S1": (10.5, 0.36, 52.0, 1.0),
}

# sacral segments S1..S5: height, body width, body depth, half width of the lateral masses,
# kyphotic bend below the segment (deg)
_SACRUM = ((28.0, 50.0, 33.0, 54.0, 4.0), (24.0, 40.0, 27.0, 47.0, 8.0), (19.0, 32.0, 21.0, 36.0, 12.0),
           (15.0, 24.0, 16.0, 25.0, 14.0), (12.0, 18.0, 12.0, 16.0, 15.0))
_COCCYX = ((10.0, 22.0, 11.0, 12.0), (8.0, 14.0, 9.0, 12.0), (7.0, 10.0, 7.0, 10.0), (6.0, 7.0, 6.0, 0.0))

SS_REFERENCE_DEG = 0.75 * 45.0 + 5.0  # sacral slope at the default lordosis; pelvis built for this


@dataclass(frozen=True)
class Pose:
    centre: np.ndarray
    frame: np.ndarray

    def pt(self, q) -> np.ndarray:
        return self.centre + self.frame @ np.asarray(q, float)

    def vec(self, v) -> np.ndarray:
        return self.frame @ np.asarray(v, float)

    def fr(self, local_frame: np.ndarray) -> np.ndarray:
        return self.frame @ local_frame

    def to_local(self, p) -> np.ndarray:
        return self.frame.T @ (np.asarray(p, float) - self.centre)

    def moved(self, t: np.ndarray) -> "Pose":
        return Pose(self.centre + t, self.frame)


@dataclass
class Vertebra:
    name: str
    label: int
    pose: Pose                    # body centre, vertebral frame (incl. axial rotation)
    dims: dict[str, float]
    sp_dev_mm: float = 0.0        # lateral deviation of the spinous tip
    tp_scale: float = 1.0

    @property
    def superior_endplate(self) -> np.ndarray:
        return self.pose.pt((0, 0, self.dims["H"] / 2))

    @property
    def inferior_endplate(self) -> np.ndarray:
        return self.pose.pt((0, 0, -self.dims["H"] / 2))


@dataclass
class Disc:
    name: str
    label: int
    pose: Pose                    # disc centre, mid frame
    height: float                 # mid height (mm)
    upper: str
    lower: str
    facet_deg: float
    degeneration: float           # 0..1 for this level


@dataclass
class Segment:                    # sacral / coccygeal segment
    name: str
    pose: Pose
    height: float
    width: float
    depth: float
    half_span: float


@dataclass
class Skeleton:
    vertebrae: dict[str, Vertebra]
    discs: dict[str, Disc]
    sacral: list[Segment]
    coccygeal: list[Segment]
    pelvis: Pose                  # origin at the S1 endplate centre
    s1_endplate: Pose             # S1 superior endplate centre and its frame
    scale: float
    female: bool
    canal_nodes: list[tuple[np.ndarray, np.ndarray, float, float]] = field(default_factory=list)
    sac_nodes: list[tuple[np.ndarray, np.ndarray, float, float]] = field(default_factory=list)
    canal_names: list[str] = field(default_factory=list)     # level name of each canal (and sac) node
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def translate(self, t: np.ndarray) -> None:
        for v in self.vertebrae.values():
            v.pose = v.pose.moved(t)
        for d in self.discs.values():
            d.pose = d.pose.moved(t)
        for s in self.sacral + self.coccygeal:
            s.pose = s.pose.moved(t)
        self.pelvis = self.pelvis.moved(t)
        self.s1_endplate = self.s1_endplate.moved(t)
        self.canal_nodes = [(c + t, f, a, b) for c, f, a, b in self.canal_nodes]
        self.sac_nodes = [(c + t, f, a, b) for c, f, a, b in self.sac_nodes]
        self.extra = {k: p + t for k, p in self.extra.items()}


def _scoliosis_profile(cobb: float) -> tuple[dict[str, float], dict[str, float]]:
    """Coronal tilt (deg, +: superior axis toward the patient's left) and axial rotation per vertebra.

    A single lumbar curve, convex to the left, end vertebrae T12 and L4, apex at L2-L3;
    apical vertebrae rotate toward the convexity (their spinous processes toward the concavity).
    """
    tilt = {"T12": -0.5 * cobb, "L1": -0.3 * cobb, "L2": -0.1 * cobb, "L3": 0.15 * cobb,
            "L4": 0.5 * cobb, "L5": 0.25 * cobb}
    axial = {"T12": 0.05 * cobb, "L1": 0.15 * cobb, "L2": 0.25 * cobb, "L3": 0.2 * cobb,
             "L4": 0.08 * cobb, "L5": 0.0}
    return tilt, axial


def build_skeleton(params, rng: np.random.Generator) -> Skeleton:
    """Lay out the spine from the sacrum upward, then move it so that L3's body centre is at 0."""
    female = params.sex == "F"
    scale = params.vertebra_scale * (0.93 if female else 1.0)
    lordosis = params.lordosis_deg
    dd = params.disc_degeneration

    # natural variation (fixed draw order => same seed, same anatomy)
    size_var = {n: 1.0 + 0.025 * rng.standard_normal() for n in _DIMS}
    height_var = {n: 1.0 + 0.025 * rng.standard_normal() for n in _DIMS}
    disc_var = {n: 1.0 + 0.06 * rng.standard_normal() for n in _DISCS}
    sag_var = {n: 1.0 * rng.standard_normal() for n in _DISCS}
    cor_var = {n: 0.6 * rng.standard_normal() for n in _DISCS}
    ax_var = {n: 1.0 * rng.standard_normal() for n in _DIMS}
    sp_dev = {n: 1.2 * rng.standard_normal() for n in _DIMS}
    tp_var = {n: 1.0 + 0.07 * rng.standard_normal() for n in _DIMS}
    ss = 0.75 * lordosis + 5.0 + 1.5 * rng.standard_normal()

    tilt, axial = _scoliosis_profile(params.scoliosis_deg)
    names = ["L5", "L4", "L3", "L2", "L1", "T12"]
    below = {"L5": "S1", "L4": "L5", "L3": "L4", "L2": "L3", "L1": "L2", "T12": "L1"}

    dims: dict[str, dict[str, float]] = {}
    for n in names:
        raw = dict(zip(_DIM_KEYS, _DIMS[n]))
        d = dict(raw)
        for key in ("W", "D", "CW", "CD", "PW", "PH", "SPL", "SPH"):
            d[key] = raw[key] * scale * size_var[n]
        d["H"] = raw["H"] * scale * height_var[n]
        d["TPL"] = raw["TPL"] * scale * tp_var[n]
        d["wedge"] = raw["wedge"] * (lordosis / 45.0 if n == "L5" else 1.0)
        dims[n] = d

    s1 = Pose(np.zeros(3), S.rot_x(ss))
    frame = s1.frame.copy()
    point = s1.centre.copy()
    prev_tilt = 0.0
    verts: dict[str, Vertebra] = {}
    discs: dict[str, Disc] = {}
    for n in names:
        dname = f"{n}-{below[n]}"
        h0, share, facet, wdeg = _DISCS[dname]
        level_dd = float(np.clip(dd * wdeg, 0.0, 1.0))
        h = h0 * scale * disc_var[dname] * (1.0 - 0.5 * level_dd)
        total = lordosis * share + sag_var[dname]
        if n == "L5":
            total -= dims["L5"]["wedge"]       # part of L5-S1's lordosis sits in the wedged L5 body
        if n == "T12":
            total = -1.0 + sag_var[dname]      # thoracolumbar junction: about neutral
        cor = tilt[n] - prev_tilt + cor_var[dname]
        prev_tilt = tilt[n]
        mid = frame @ S.rot_x(-total / 2) @ S.rot_y(cor / 2)
        dpose = Pose(point + mid[:, 2] * h / 2, mid)
        point = point + mid[:, 2] * h
        frame = frame @ S.rot_x(-total) @ S.rot_y(cor)
        discs[dname] = Disc(dname, LB.DISC_LABEL[dname], dpose, h, n, below[n], facet, level_dd)
        d = dims[n]
        chain = frame @ S.rot_x(-d["wedge"] / 2)
        centre = point + chain[:, 2] * d["H"] / 2
        vframe = chain @ S.rot_z(axial[n] + ax_var[n])
        verts[n] = Vertebra(n, LB.VERTEBRA_LABEL[n], Pose(centre, vframe), d, sp_dev[n], 1.0)
        point = centre + chain[:, 2] * d["H"] / 2
        frame = chain @ S.rot_x(-d["wedge"] / 2)

    # sacrum and coccyx downward from the S1 endplate
    sacral: list[Segment] = []
    frame = s1.frame.copy()
    point = s1.centre.copy()
    w_f = 1.06 if female else 1.0
    for i, (hh, bw, bd, span, bend) in enumerate(_SACRUM):
        hh *= scale * (0.95 if female else 1.0)
        c = point - frame[:, 2] * hh / 2
        sacral.append(Segment(f"S{i + 1}", Pose(c, frame.copy()), hh, bw * scale, bd * scale, span * scale * w_f))
        point = point - frame[:, 2] * (hh + 1.5 * scale)
        frame = frame @ S.rot_x(-bend)
    coccygeal: list[Segment] = []
    for i, (hh, bw, bd, bend) in enumerate(_COCCYX):
        hh *= scale
        c = point - frame[:, 2] * hh / 2
        coccygeal.append(Segment(f"Co{i + 1}", Pose(c, frame.copy()), hh, bw * scale, bd * scale, bw * scale / 2))
        point = point - frame[:, 2] * (hh + 1.5 * scale)
        frame = frame @ S.rot_x(-bend)

    pelvis = Pose(s1.centre.copy(), S.rot_x(ss - SS_REFERENCE_DEG))
    skel = Skeleton(verts, discs, sacral, coccygeal, pelvis, s1, scale, female)
    _canal_nodes(skel)
    skel.translate(-verts["L3"].pose.centre)
    return skel


def _canal_nodes(skel: Skeleton) -> None:
    """Centre, frame and semi-axes of the bony canal and of the thecal sac, cranial to caudal."""
    canal, sac, names = [], [], ["T11", "T11-T12"]
    order = ["T12", "L1", "L2", "L3", "L4", "L5"]
    v = skel.vertebrae
    top = v["T12"]
    d = top.dims
    # above T12 (continues out of the volume)
    for dz in (60.0, 25.0):
        c = top.pose.pt((0, d["D"] / 2 - 1 + d["CD"] / 2, dz))
        canal.append((c, top.pose.frame, d["CW"] / 2, d["CD"] / 2))
    for n in order:
        vt = v[n]
        d = vt.dims
        yb = d["D"] / 2 - 1.0
        canal.append((vt.pose.pt((0, yb + d["CD"] / 2, 0)), vt.pose.frame, d["CW"] / 2, d["CD"] / 2))
        dname = f"{n}-{'S1' if n == 'L5' else order[order.index(n) + 1]}"
        names += [n, dname]
        disc = skel.discs[dname]
        lower = v[disc.lower] if disc.lower in v else None
        cw = (d["CW"] + (lower.dims["CW"] if lower else 28.0 * skel.scale)) / 2
        cd = (d["CD"] + (lower.dims["CD"] if lower else 15.0 * skel.scale)) / 2
        dd = (d["D"] + (lower.dims["D"] if lower else skel.sacral[0].depth)) / 2
        canal.append((disc.pose.pt((0, dd / 2 - 1.0 + cd / 2, 0)), disc.pose.frame, cw / 2, cd / 2))
    # sacral canal: triangular in life, elliptic here, shrinking to the hiatus at S4
    for seg, (cw, cd) in zip(skel.sacral[:4], ((28.0, 15.0), (24.0, 11.0), (18.0, 8.0), (13.0, 6.0))):
        cw *= skel.scale
        cd *= skel.scale
        canal.append((seg.pose.pt((0, seg.depth / 2 - 1.0 + cd / 2, 0)), seg.pose.frame, cw / 2, cd / 2))
        names.append(seg.name)
    # thecal sac: abuts the anterior canal wall; ~17 x 13 mm in the lumbar canal; ends at S2
    for i, (c, f, a, b) in enumerate(canal):
        front = c - f[:, 1] * b                  # anterior canal wall
        sa = min(8.5 * skel.scale, a - 2.5)
        sb = min(6.6 * skel.scale, b - 1.8)
        if i >= len(canal) - 4:                  # sacral nodes: taper to the S2 tip
            k = i - (len(canal) - 4)
            if k >= 2:
                break
            sa, sb = (sa * 0.8, sb * 0.85) if k == 0 else (sa * 0.35, sb * 0.35)
        sac.append((front + f[:, 1] * (1.2 + sb), f, sa, sb))
    skel.canal_nodes = canal
    skel.sac_nodes = sac
    skel.canal_names = names


# -- helpers -----------------------------------------------------------------------------------------
def tube_chain(nodes, extend: float = 1.5, op: int = 0, scale_ab: float = 1.0,
               offset: tuple[float, float] = (0.0, 0.0)) -> list[np.ndarray]:
    """Tapered elliptic cylinders between consecutive (centre, frame, a, b) nodes."""
    prims = []
    for (c0, f0, a0, b0), (c1, f1, a1, b1) in zip(nodes[:-1], nodes[1:]):
        p0 = c0 + f0[:, 0] * offset[0] * a0 + f0[:, 1] * offset[1] * b0
        p1 = c1 + f1[:, 0] * offset[0] * a1 + f1[:, 1] * offset[1] * b1
        xh = f0[:, 0] + f1[:, 0]
        prims.append(S.ecyl(p0, p1, a0 * scale_ab, b0 * scale_ab, a1 * scale_ab, b1 * scale_ab,
                            x_hint=xh, extend=extend, op=op))
    return prims


def _box_between(pose: Pose, a, b, thickness: float, z_top: float, z_bot: float, lean_deg: float = 0.0):
    """Rounded box in a pose's frame spanning from local point a to b (in the xy plane), z range."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    ax = np.array([b[0] - a[0], b[1] - a[1], 0.0])
    length = np.linalg.norm(ax)
    ax /= length
    zc = 0.5 * (z_top + z_bot)
    c = np.array([(a[0] + b[0]) / 2, (a[1] + b[1]) / 2, zc])
    yy = np.cross([0, 0, 1.0], ax)
    local = np.column_stack([ax, yy, [0, 0, 1.0]]) @ S.rot_x(lean_deg)
    return S.rbox(pose.pt(c), pose.fr(local), length / 2 + thickness / 2, thickness / 2, (z_top - z_bot) / 2,
                  r=min(2.0, thickness / 2))


# -- facet joints ---------------------------------------------------------------------------------
@dataclass
class FacetJoint:
    level: str
    side: int
    centre: np.ndarray
    sap: list[np.ndarray]     # belongs to the lower vertebra
    iap: list[np.ndarray]     # belongs to the upper vertebra
    iap_medial_x: float       # local (disc frame) |x| of the IAP's medial border


def facet_joints(skel: Skeleton) -> list[FacetJoint]:
    out = []
    t12 = skel.vertebrae["T12"]
    virtual = Disc("T11-T12", 0, Pose(t12.pose.pt((0, 0, t12.dims["H"] / 2 + 3.5)), t12.pose.frame), 7.0,
                   "T12", "T12", 22.0, 0.0)
    for disc in [virtual, *skel.discs.values()]:
        up = skel.vertebrae[disc.upper]
        lo = skel.vertebrae.get(disc.lower)
        du = up.dims
        cw = du["CW"] if lo is None else 0.5 * (du["CW"] + lo.dims["CW"])
        D = du["D"] if lo is None else 0.5 * (du["D"] + lo.dims["D"])
        hyper = 2.0 * disc.degeneration
        th = np.deg2rad(disc.facet_deg)
        for s in (1, -1):
            xj = cw / 2 + 5.5 * skel.scale
            yj = D / 2 + 16.0 * skel.scale
            zj = -0.2 * disc.height
            n = np.array([-s * np.cos(th), np.sin(th), 0.0])     # from SAP (lateral) to IAP (medial)
            t = np.array([s * np.sin(th), np.cos(th), 0.0])
            gap = 1.6
            ts, ti = 8.0 * skel.scale + hyper, 7.0 * skel.scale + hyper
            J = np.array([s * xj, yj, zj])
            f_local = np.column_stack([n, t, [0, 0, 1.0]])
            sap_c = J - n * (gap / 2 + ts / 2) + np.array([0, 0, -2.5 * skel.scale])
            iap_c = J + n * (gap / 2 + ti / 2) + np.array([0, 0, 1.5 * skel.scale])
            hw = 7.0 * skel.scale
            hz = 10.5 * skel.scale
            P = disc.pose
            sap = [S.rbox(P.pt(sap_c), P.fr(f_local), ts / 2, hw, hz, r=2.0)]
            iap = [S.rbox(P.pt(iap_c), P.fr(f_local), ti / 2, hw * 0.9, hz, r=2.0)]
            # SAP sits on the lower pedicle; the mammillary bulge on its posterior edge
            sap.append(S.ellipsoid(P.pt(sap_c + t * hw * 0.8 + np.array([0, 0, -4.0])), P.fr(f_local),
                                   ts * 0.7, 4.0, 6.0))
            # IAP hangs from the upper lamina
            iap.append(S.capsule(P.pt(iap_c + np.array([0, 0, hz * 0.3])),
                                 P.pt(iap_c + np.array([-s * 2.0, 3.0, hz + 6.0])), 4.0 * skel.scale))
            iap_med = abs(iap_c[0]) - (ti / 2) * np.cos(th) - hw * 0.9 * np.sin(th) * 0.3
            out.append(FacetJoint(disc.name, s, P.pt(J), sap, iap, float(iap_med)))
    return out


# -- bony groups --------------------------------------------------------------------------------
def _lamina_geometry(v: Vertebra):
    """Local points of a vertebra's posterior arch (used by parts and landmarks)."""
    d = v.dims
    sc = d["W"] / 46.5
    yb = d["D"] / 2
    zp = d["H"] / 2 - d["PH"] / 2 - 1.0                       # pedicle axis height
    ped_len = 12.5 * sc + 6.0
    conv = np.deg2rad(d["conv"])
    lam_t = 6.5 * sc
    y_mid = yb - 1.0 + d["CD"] + lam_t / 2 - 0.5             # lamina centre line at the midline
    z_top = d["H"] / 2 - 7.0
    z_bot = -d["H"] / 2 + 3.0
    return dict(yb=yb, zp=zp, ped_len=ped_len, conv=conv, lam_t=lam_t, y_mid=y_mid, z_top=z_top,
                z_bot=z_bot, sc=sc)


def spinous_geometry(v: Vertebra):
    """(local centre, half extents, tilt) of the spinous process body."""
    d = v.dims
    g = _lamina_geometry(v)
    tilt = 12.0
    top = d["H"] / 2 - 11.0
    zc = top - 0.36 * d["SPH"]
    yc = g["y_mid"] + d["SPL"] / 2 - 3.0
    return np.array([v.sp_dev_mm * 0.5, yc, zc]), (3.4 * g["sc"], d["SPL"] / 2 + 2.0, 0.36 * d["SPH"]), tilt


def vertebra_prims(v: Vertebra, rng: np.random.Generator,
                   degeneration: tuple[float, float]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(body, posterior arch) primitives of one lumbar/T12 vertebra in world coordinates.

    The arch (pedicles, laminae, processes) is painted as a second group of the same label:
    it is mostly cortical bone and so denser than the body's cancellous core.
    """
    P = v.pose
    d = v.dims
    g = _lamina_geometry(v)
    body = []
    prims = []
    tw = np.tan(np.deg2rad(d["wedge"] / 2))
    body.append(S.vbody(P.centre, P.frame, d["W"] / 2, d["D"] / 2, 0.07, d["D"] / 2 - 1.0,
                        tw, d["H"] / 2, tw, d["H"] / 2, 1.8))
    canal_half = d["CW"] / 2
    for s in (1, -1):
        # pedicle: from inside the posterolateral body to the lamina junction, converging anteriorly
        base = np.array([s * (canal_half + d["PW"] / 2 - 0.5), g["yb"] - 7.0, g["zp"]])
        dirv = np.array([s * np.sin(g["conv"]), np.cos(g["conv"]), 0.0])
        end = base + dirv * g["ped_len"]
        prims.append(S.ecyl(P.pt(base), P.pt(end), d["PW"] / 2, d["PH"] / 2, d["PW"] / 2 * 1.05,
                            d["PH"] / 2 * 1.1, x_hint=P.vec((1, 0, 0))))
        # lamina: from the pedicle end to the midline, leaning so its lower edge is posterior
        a = np.array([end[0] - s * 1.0, end[1] + 1.0])
        b = np.array([0.0, g["y_mid"]])
        prims.append(_box_between(P, a, b, g["lam_t"], g["z_top"], g["z_bot"], lean_deg=15.0))
        # pars / junction mass between pedicle, lamina and the articular processes
        prims.append(S.ellipsoid(P.pt(end + np.array([0, 1.5, -2.0])), P.frame, 5.5 * g["sc"], 6.0, 9.0))
        # transverse process: lateral, slightly posterior; L5's is short and massive
        beta = np.deg2rad(15.0 if v.name != "L5" else 5.0)
        up = 0.15 if v.name != "L5" else 0.35
        tdir = np.array([s * np.cos(beta), np.sin(beta), up])
        tdir /= np.linalg.norm(tdir)
        t0 = end + np.array([-s * 3.0, -3.0, 1.0])
        t1 = t0 + tdir * (d["TPL"] + 4.0 * g["sc"])
        ta, tb = (4.2, 5.5) if v.name != "L5" else (7.0, 9.0)
        if v.name == "T12":
            ta, tb = 3.5, 4.5
        prims.append(S.ecyl(P.pt(t0), P.pt(t1), ta * g["sc"], tb * g["sc"], ta * 0.7 * g["sc"], tb * 0.75 * g["sc"],
                            x_hint=P.vec((0, 1, 0))))
        prims.append(S.ellipsoid(P.pt(t1 - tdir * 2.0), P.frame, 3.5 * g["sc"], 3.5, 4.5 * g["sc"]))
    # spinous process (hatchet-shaped) with a thickened posterior border
    c, (hx, hy, hz), tilt = spinous_geometry(v)
    sf = S.rot_x(-tilt)
    prims.append(S.rbox(P.pt(c), P.fr(sf), hx, hy, hz, r=2.5))
    tip = c + sf @ np.array([v.sp_dev_mm * 0.5, hy - 4.0, -1.0])
    prims.append(S.ellipsoid(P.pt(tip), P.fr(sf), hx * 1.35, 5.0, d["SPH"] * 0.45))
    # osteophytes at the endplate rims next to degenerated discs
    for end_sign, ddeg in ((1.0, degeneration[0]), (-1.0, degeneration[1])):
        if ddeg < 0.15:
            continue
        nspur = 3 + int(rng.integers(0, 3))
        for _ in range(nspur):
            ang = np.pi + rng.uniform(-1.6, 1.6)           # from +y (posterior); pi = anterior rim
            x = (d["W"] / 2) * np.sin(ang)
            y = (d["D"] / 2) * np.cos(ang)
            z = end_sign * (d["H"] / 2 - 1.0)
            size = ddeg * rng.uniform(3.0, 6.5)
            outward = np.array([np.sin(ang), np.cos(ang), 0.4 * end_sign])
            outward /= np.linalg.norm(outward)
            p0 = np.array([x, y, z]) - outward * 2.0
            p1 = np.array([x, y, z]) + outward * size
            body.append(S.capsule(P.pt(p0), P.pt(p1), 2.2 + 0.8 * ddeg, 0.9))
    return body, prims


def sacrum_prims(skel: Skeleton) -> list[np.ndarray]:
    """Fused S1-S5: bodies, a tapering curved plate of lateral masses, alae, the dorsal roof and
    median crest; the sacral canal and four pairs of foramina are cut out."""
    prims = []
    segs = skel.sacral
    plate = []
    s1 = segs[0]
    plate.append((s1.pose.pt((0, 0.1 * s1.depth, s1.height / 2 - 6.0)), s1.pose.frame, s1.half_span * 0.93,
                  0.4 * s1.depth + 3.0))
    for i, sg in enumerate(segs):
        P = sg.pose
        prims.append(S.vbody(P.centre, P.frame, sg.width / 2, sg.depth / 2, 0.0, sg.depth / 2,
                             0.0, sg.height / 2 + (0.0 if i == 0 else 1.0), 0.0, sg.height / 2 + 1.0, 2.0))
        plate.append((P.pt((0, 0.12 * sg.depth, -0.15 * sg.height)), P.frame, sg.half_span,
                      0.42 * sg.depth + 4.0 * skel.scale))
        if i == 0:
            # alae slope down laterally and reach forward to the pelvic brim
            for s in (1, -1):
                c = P.pt((s * sg.half_span * 0.6, -0.12 * sg.depth, sg.height * 0.08))
                prims.append(S.ellipsoid(c, P.fr(S.rot_y(-s * 18.0)), sg.half_span * 0.42, sg.depth * 0.45,
                                         sg.height * 0.38))
        # dorsal roof (fused laminae) and the median crest, open at S4-S5 (hiatus)
        if i < 4:
            roof_y = sg.depth / 2 + (15.0 if i == 0 else 11.0 - 2 * i) * skel.scale
            top = sg.height / 2 + 1.0 - (11.0 * skel.scale if i == 0 else 0.0)   # L5-S1 interlaminar window
            bot = -sg.height / 2 - 1.0
            prims.append(S.rbox(P.pt((0, roof_y, (top + bot) / 2)), P.frame, 16.0 * skel.scale - i * 2.0, 4.0,
                                (top - bot) / 2, r=2.5))
            if i < 3:
                prims.append(S.rbox(P.pt((0, roof_y + 6.0, (top + bot) / 2)), P.frame, 3.5, 5.0,
                                    (top - bot) / 2 - 3.0, r=2.5))
    last = segs[-1]
    plate.append((last.pose.pt((0, 0.1 * last.depth, -last.height / 2)), last.pose.frame, last.half_span * 0.8,
                  0.4 * last.depth + 3.0))
    prims += tube_chain(plate, extend=0.5)
    # foramina: four pairs between segments, through the lateral masses (anterior to posterior)
    for i in range(4):
        a, b = segs[i], segs[i + 1]
        junction = a.pose.pt((0, 0, -a.height / 2 - 0.75))
        f = a.pose.frame @ S.rot_x(-0.0)
        r = (6.0, 5.0, 4.2, 3.5)[i] * skel.scale
        x = 0.5 * (a.width + b.width) / 2 + r + 2.0
        for s in (1, -1):
            p0 = junction + f[:, 0] * s * x - f[:, 1] * 25.0
            p1 = junction + f[:, 0] * s * (x - 3.0) + f[:, 1] * 30.0
            prims.append(S.capsule(p0, p1, r, r * 0.75, op=OP_SUB))
    return prims


def coccyx_prims(skel: Skeleton) -> list[np.ndarray]:
    prims = []
    for i, sg in enumerate(skel.coccygeal):
        P = sg.pose
        prims.append(S.ellipsoid(P.centre, P.frame, sg.width / 2, sg.depth / 2, sg.height / 2))
        if i == 0:
            for s in (1, -1):   # cornua
                prims.append(S.ellipsoid(P.pt((s * 5.0, sg.depth / 2, 3.0)), P.frame, 2.5, 2.5, 5.0))
    return prims


def disc_group(skel: Skeleton, disc: Disc) -> S.Group:
    """A disc fills the space between the two endplates; the nucleus is a smaller ellipsoid."""
    up = skel.vertebrae[disc.upper]
    lo_v = skel.vertebrae.get(disc.lower)
    P = disc.pose
    if lo_v is not None:
        lw, ld = lo_v.dims["W"], lo_v.dims["D"]
        lo_c = lo_v.superior_endplate
        lo_n = lo_v.pose.frame @ _endplate_normal(lo_v, upper=True)
    else:
        s1 = skel.s1_endplate
        lw, ld = skel.sacral[0].width, skel.sacral[0].depth
        lo_c = s1.centre
        lo_n = s1.frame[:, 2]
    up_c = up.inferior_endplate
    up_n = up.pose.frame @ _endplate_normal(up, upper=False)      # points down (out of the upper body)
    bulge = 1.0 + 2.5 * disc.degeneration
    a = 0.5 * (up.dims["W"] + lw) / 2 + bulge
    b = 0.5 * (up.dims["D"] + ld) / 2 + bulge * 0.7
    yflat = 0.5 * (up.dims["D"] + ld) / 2 - 1.0 + bulge * 0.6
    # planes in the disc frame: n.q <= o ; the disc lies below the upper endplate and above the lower
    F = P.frame
    n1 = F.T @ (-up_n)           # normal pointing up into the upper body
    o1 = float(n1 @ (F.T @ (up_c - P.centre)))
    n2 = F.T @ (-lo_n)           # pointing down into the lower body
    o2 = float(n2 @ (F.T @ (lo_c - P.centre)))
    prims = [S.slab(P.centre, F, a, b, yflat, n1, o1, n2, o2, half_height=disc.height + 6.0)]
    return S.Group(f"disc {disc.name}", prims, lab_in=disc.label, hu_in=0.0, writable=())


def _endplate_normal(v: Vertebra, upper: bool) -> np.ndarray:
    """Outward endplate normal in the vertebra's local frame (body wedge tilts it)."""
    t = np.tan(np.deg2rad(v.dims["wedge"] / 2))
    n = np.array([0.0, t, 1.0]) if upper else np.array([0.0, t, -1.0])
    return n / np.linalg.norm(n)


def nucleus_prim(skel: Skeleton, disc: Disc) -> np.ndarray:
    up = skel.vertebrae[disc.upper]
    P = disc.pose
    w = up.dims["W"]
    dd = up.dims["D"]
    return S.ellipsoid(P.pt((0, 0.1 * dd, 0)), P.frame, 0.27 * w, 0.24 * dd, max(0.36 * disc.height, 1.5))


# -- pelvis --------------------------------------------------------------------------------------------
@dataclass
class HipBone:
    side: int
    wing: list[np.ndarray]        # ilium (wing, crest, posterior ilium) and acetabulum
    brim: list[np.ndarray]        # arcuate line and superior pubic ramus (painted as a second group)
    femur: list[np.ndarray]
    crest_top: np.ndarray         # highest point of the iliac crest (LPS)


def _ellipsoid_implicit(p, c, r):
    q = (np.asarray(p) - c) / r
    return float(q @ q) - 1.0


def _crest_curve(C, a, b, c, dome_c, dome_r, n=240):
    """Points of the iliac crest: where the wing's bowl leaves the dome ellipsoid (pelvic frame)."""
    pts = []
    for th in np.linspace(0, 2 * np.pi, n, endpoint=False):
        dx, dy = np.cos(th), np.sin(th)

        def bowl(z):
            r = np.sqrt(max(1 - (z / c) ** 2, 0.0))
            return np.array([C[0] + a * dx * r, C[1] + b * dy * r, C[2] + z])

        zlo, zhi = -c * 0.999, 0.0
        if _ellipsoid_implicit(bowl(zlo), dome_c, dome_r) > 0 or _ellipsoid_implicit(bowl(zhi), dome_c, dome_r) < 0:
            continue
        for _ in range(50):
            zm = 0.5 * (zlo + zhi)
            if _ellipsoid_implicit(bowl(zm), dome_c, dome_r) < 0:
                zlo = zm
            else:
                zhi = zm
        pts.append(bowl(0.5 * (zlo + zhi)))
    return pts


def hip_bones(skel: Skeleton) -> list[HipBone]:
    """Os coxae and proximal femur, built in the pelvic frame (origin: S1 endplate centre).

    The wing is a shell of a bowl-shaped ellipsoid, cut medially along the pelvic brim, behind
    by the greater sciatic notch and on top by a dome (so the crest is highest mid-way, at about
    the L4-L5 level -- Tuffier's line -- and falls to the ASIS in front and the PSIS behind).
    """
    P = skel.pelvis
    sc = skel.scale * (1.0 if not skel.female else 1.04)
    wide = 1.0 if not skel.female else 1.06
    out = []
    for s in (1, -1):
        prims = []
        C = np.array([s * 10.0 * wide, -48.0 * sc, 48.0 * sc])
        a, b, c = 128.0 * sc * wide, 92.0 * sc, 148.0 * sc
        z_top = 40.0 * sc
        dome_c = np.array([s * 90.0 * wide, -20.0 * sc, z_top - 150.0 * sc])
        dome_r = np.array([200.0 * sc, 85.0 * sc, 150.0 * sc])
        med = np.array([-s * 1.0, 0.0, -0.3])
        med_n = med / np.linalg.norm(med)
        med_o = -42.0 * sc / np.linalg.norm(med)               # keep s*x + 0.3 z >= 42
        x_in = 14.0 * sc                                         # wing is lateral of s*x ~ 24 mm
        box_x = (x_in, a + 4.0) if s > 0 else (-a - 4.0, -x_in)
        prims.append(S.eshell(P.pt(C), P.frame, a, b, c, 5.0 * sc, planes=[(med_n, med_o - C @ med_n)],
                              local_box=((box_x[0], -33.0 * sc, -c - 3), (box_x[1], b + 3, 0.0))))
        # posterior ilium (auricular part, SI joint ~3 mm lateral of the sacral lateral mass) and PSIS
        span = skel.sacral[0].half_span
        si_x = span + 3.5 + 9.0 * sc
        prims.append(S.rbox(P.pt((s * si_x, 12.0 * sc, -30.0 * sc)), P.fr(S.rot_z(s * 20.0)),
                            9.0 * sc, 22.0 * sc, 26.0 * sc, r=6.0))
        prims.append(S.capsule(P.pt((s * (si_x + 6), 22.0 * sc, -10.0 * sc)), P.pt((s * (span - 6.0), 46.0 * sc, -36.0 * sc)),
                               9.0 * sc, 6.5 * sc))
        # acetabular body with its cup
        hip_c = np.array([s * 88.0 * wide, -50.0, -88.0]) * sc
        prims.append(S.ellipsoid(P.pt(hip_c + np.array([-s * 6.0, 2.0, 14.0]) * sc), P.frame, 30.0 * sc, 32.0 * sc,
                                 36.0 * sc))
        prims.append(S.sphere(P.pt(hip_c), 26.0 * sc, op=OP_SUB))
        # in front of the ASIS: nothing
        prims.append(S.rbox(P.pt((s * 80.0, -160.0 * sc, 65.0)), P.frame, 120.0, 78.0 * sc, 135.0, op=OP_SUB))
        # greater sciatic notch: below a line rising from the ischial spine to the posterior ilium
        nrm = np.array([0.0, -0.9, 1.0]) / np.linalg.norm([0.0, -0.9, 1.0])
        p0 = np.array([s * 60.0, 30.0 * sc, -50.0 * sc])
        prims.append(S.rbox(P.pt(p0 - nrm * 100.0), P.fr(S.frame_z(nrm)), 130.0, 200.0, 100.0, op=OP_SUB))
        # crest: the dome cuts the top; a thick rim runs along it
        prims.append(S.ellipsoid(P.pt(dome_c), P.frame, *dome_r, op=K_OP_INT))
        curve = _crest_curve(C, a, b, c, dome_c, dome_r)
        keep = [p for p in curve if s * p[0] + 0.3 * p[2] >= 42.0 * sc and p[1] >= -78.0 * sc
                and p[2] > -50.0 * sc]
        keep.sort(key=lambda p: np.arctan2(p[1] - C[1], s * (p[0] - C[0])))
        top = max(keep, key=lambda p: p[2]) if keep else C
        for p0, p1 in zip(keep[:-1:2], keep[2::2]):
            prims.append(S.capsule(P.pt(p0 - np.array([0, 0, 4.5])), P.pt(p1 - np.array([0, 0, 4.5])), 6.5 * sc))
        # arcuate line / pelvic brim to the pubis
        brim = [(s * (span + 4.0), -6.0, -24.0), (s * 60.0, -38.0, -52.0), (s * 66.0, -66.0, -80.0),
                (s * 32.0, -96.0, -104.0), (s * 5.0, -102.0, -108.0)]
        brim = [np.array(p) * sc for p in brim]
        bprims = []
        for p0, p1, r0, r1 in zip(brim[:-1], brim[1:], (6.0, 6.5, 9.0, 8.0), (6.5, 9.0, 8.0, 8.0)):
            bprims.append(S.capsule(P.pt(p0), P.pt(p1), r0 * sc, r1 * sc))
        femur = [S.sphere(P.pt(hip_c), 23.5 * sc),
                 S.capsule(P.pt(hip_c), P.pt(hip_c + np.array([s * 45.0, 8.0, -32.0]) * sc), 15.0 * sc, 17.0 * sc),
                 S.ellipsoid(P.pt(hip_c + np.array([s * 52.0, 10.0, -42.0]) * sc), P.frame, 18.0 * sc, 20.0 * sc,
                             28.0 * sc)]
        out.append(HipBone(s, prims, bprims, femur, P.pt(top)))
    return out


def rib_prims(skel: Skeleton, side: int) -> list[np.ndarray]:
    """12th rib from T12 and the 11th rib from just above the volume, both curving down laterally."""
    v = skel.vertebrae["T12"]
    P = v.pose
    sc = skel.scale
    s = side
    r12 = [(s * 20.0, 12.0, 4.0), (s * 42.0, 28.0, 0.0), (s * 70.0, 30.0, -14.0), (s * 95.0, 18.0, -34.0),
           (s * 110.0, 2.0, -52.0)]
    h_t11 = v.dims["H"] + 7.0
    r11 = [(s * 20.0, 12.0, 4.0 + h_t11), (s * 45.0, 32.0, h_t11 - 2.0), (s * 80.0, 32.0, h_t11 - 16.0),
           (s * 112.0, 12.0, h_t11 - 38.0), (s * 130.0, -18.0, h_t11 - 60.0), (s * 134.0, -45.0, h_t11 - 78.0)]
    prims = []
    for chain, rads in ((r12, (5.0, 5.5, 5.0, 4.2, 3.0)), (r11, (5.0, 6.0, 5.8, 5.2, 4.5, 3.5))):
        pts = [P.pt(np.array(p) * sc) for p in chain]
        for p0, p1, r0, r1 in zip(pts[:-1], pts[1:], rads[:-1], rads[1:]):
            prims.append(S.capsule(p0, p1, r0 * sc, r1 * sc))
    # head of the 12th rib on the T12 body
    prims.append(S.sphere(P.pt(np.array([s * 20.0, 10.0, 4.0]) * sc), 6.0 * sc))
    return prims
