"""Soft tissues of the phantom: torso outline, muscles, organs, bowel, and the canal contents.

Body habitus: the posterior subcutaneous fat at the lumbar midline is
``13 + 1.8 (BMI - 25)`` mm (at least 4 mm; +2.5 mm for women), so that the skin to
subarachnoid distance at L3-L4 is ~55 mm at BMI 25 and grows ~1.8 mm per BMI unit:
Ma et al. (Taipei Medical University), "Predictions of the length of lumbar puncture
needles", Comput Math Methods Med (2014) 732694, depth = 1.27 + 0.18 x BMI cm for men;
mean 55.4 +- 6.5 mm at L3-L4 in 250 adults (J Health Sci 7 (2017) 23). Lateral and
anterior fat are thicker than posterior (Halpenny et al., Eur Radiol 23 (2013) 3191:
abdominal girth and subcutaneous fat drive the skin-to-subarachnoid distance).
"""

from __future__ import annotations

import numpy as np

from openfluoro.scene.anatomy import kernels as K
from openfluoro.scene.anatomy import labels as LB
from openfluoro.scene.anatomy import shapes as S
from openfluoro.scene.anatomy.skeleton import (Skeleton, _lamina_geometry, spinous_geometry, tube_chain)

SOFT_WRITABLE = LB.SOFT_LABELS
MUSCLE_WRITABLE = (LB.VISCERAL_FAT, LB.OTHER_MUSCLE)
ORGAN_WRITABLE = (LB.VISCERAL_FAT,)
CANAL_WRITABLE = tuple(v for v in LB.SOFT_LABELS) + (LB.AIR,)


def posterior_fat_mm(bmi: float, female: bool) -> float:
    return max(4.0, 13.0 + 1.8 * (bmi - 25.0)) + (2.5 if female else 0.0)


# -- spine reference lines -----------------------------------------------------------------------
class SpineLines:
    """Body-centre and posterior (spinous tip / sacral crest) lines of the spine as functions of z."""

    def __init__(self, skel: Skeleton):
        body, back = [], []
        for v in skel.vertebrae.values():
            body.append(v.pose.centre)
            c, (hx, hy, hz), tilt = spinous_geometry(v)
            sf = S.rot_x(-tilt)
            for dz in (-hz, 0.0, hz):
                back.append(v.pose.pt(c + sf @ np.array([0.0, hy + 3.0, dz])))
        for i, sg in enumerate(skel.sacral):
            body.append(sg.pose.centre)
            roof = sg.depth / 2 + (15.0 if i == 0 else 11.0 - 2 * i) * skel.scale
            back.append(sg.pose.pt((0, roof + (11.0 if i < 3 else 4.0), 0)))
        for sg in skel.coccygeal:
            body.append(sg.pose.centre)
            back.append(sg.pose.pt((0, sg.depth / 2 + 2.0, 0)))
        body = np.array(sorted(body, key=lambda p: p[2]))
        back = np.array(sorted(back, key=lambda p: p[2]))
        self.body = body
        # the skin does not follow each spinous tip: smooth the posterior line (sigma 12 mm)
        zz = np.arange(back[0, 2] - 40.0, back[-1, 2] + 40.0, 2.0)
        yy = np.interp(zz, back[:, 2], back[:, 1])
        from scipy.ndimage import gaussian_filter1d

        self.back = np.column_stack([np.zeros_like(zz), gaussian_filter1d(yy, 6.0, mode="nearest"), zz])

    def body_y(self, z):
        return np.interp(z, self.body[:, 2], self.body[:, 1])

    def back_y(self, z):
        return np.interp(z, self.back[:, 2], self.back[:, 1])


def torso_profile(skel: Skeleton, params, z: np.ndarray) -> np.ndarray:
    """Per-slice torso rows (see ``kernels.TP_*``) for world heights ``z``."""
    z = np.asarray(z, float)
    lines = SpineLines(skel)
    female = params.sex == "F"
    bmi = params.bmi
    v = skel.vertebrae
    z_t12, z_l3 = v["T12"].pose.centre[2], v["L3"].pose.centre[2]
    z_s1 = skel.s1_endplate.centre[2]
    z_co = skel.coccygeal[-1].pose.centre[2]
    z_crest = v["L4"].pose.centre[2] - 15.0
    out = np.zeros((z.size, K.N_TP))
    out[:, K.TP_CX] = skel.s1_endplate.centre[0]
    cy = lines.body_y(z)
    out[:, K.TP_CY] = cy
    # posterior: fascia 3 mm behind the spinous tips; buttocks below S1
    s1_back = lines.back_y(z_s1 - 20.0)
    t = np.clip((z_s1 - 15.0 - z) / max(z_s1 - 15.0 - z_co, 1.0), 0.0, 1.0)
    glute = s1_back + (48.0 if not female else 56.0) * np.sin(t * np.pi / 2) ** 0.8
    glute = np.where(z < z_s1 - 15.0, glute, -1e9)
    y_post = np.maximum(lines.back_y(z) + 3.0, glute)
    out[:, K.TP_BP] = y_post - cy
    visc = (2.2 if not female else 1.2) if bmi >= 25 else 1.4
    zc = np.array([z_co - 40.0, z_co, z_s1, z_l3, z_t12, z_t12 + 60.0])
    ba = np.array([105.0, 108.0, 118.0, 116.0, 110.0, 108.0]) * (0.94 if female else 1.0)
    out[:, K.TP_BA] = np.interp(z, zc, ba) + visc * (bmi - 25.0)
    zc2 = np.array([z_co - 40.0, z_co, z_crest, z_l3, z_t12, z_t12 + 60.0])
    hips = 152.0 if not female else 162.0
    aw = np.array([hips, hips - 4.0, 140.0, 130.0, 136.0, 138.0]) * (0.95 if female else 1.0)
    aw = np.interp(z, np.sort(zc2), aw[np.argsort(zc2)]) + 0.8 * (bmi - 25.0)
    out[:, K.TP_AL] = aw
    out[:, K.TP_AR] = aw
    fp = posterior_fat_mm(bmi, female)
    out[:, K.TP_FP] = fp
    lat = 1.35 * fp
    if female:
        lat = lat * (1.0 + 0.35 * np.clip((z_crest - z) / 60.0, 0.0, 1.0))   # gluteofemoral fat
    out[:, K.TP_FL] = lat
    out[:, K.TP_FA] = max(5.0, (1.5 if not female else 1.35) * fp)
    out[:, K.TP_SKIN] = 2.0
    out[:, K.TP_WALL] = 12.0
    out[:, K.TP_WALLP] = 3.0
    return out


# -- muscles ---------------------------------------------------------------------------------------
def muscle_groups(skel: Skeleton, rng: np.random.Generator) -> list[S.Group]:
    groups = []
    sc = skel.scale
    v = skel.vertebrae
    order = ["T12", "L1", "L2", "L3", "L4", "L5"]
    # erector spinae + multifidus: an elliptic column each side, from the laminae and transverse
    # processes back to the thoracolumbar fascia (the torso's core outline trims it)
    prims = []
    for s in (1, -1):
        nodes = []
        top = v["T12"]
        nodes.append((top.pose.pt((s * 36.0 * sc, 48.0 * sc, 60.0)), top.pose.frame, 32.0 * sc, 30.0 * sc))
        for n in order:
            vt = v[n]
            g = _lamina_geometry(vt)
            yc = 0.5 * (g["yb"] + 4.0 + g["y_mid"] + vt.dims["SPL"]) + 8.0
            nodes.append((vt.pose.pt((s * 37.0 * sc, yc, 0.0)), vt.pose.frame, 33.0 * sc, 31.0 * sc))
        for i, sg in enumerate(skel.sacral[:4]):
            k = 1.0 - 0.2 * i
            nodes.append((sg.pose.pt((s * 26.0 * sc * k, sg.depth / 2 + 22.0, 0.0)), sg.pose.frame,
                          24.0 * sc * k, 16.0 * k))
        prims += tube_chain(nodes, extend=4.0)
    groups.append(S.Group("paraspinal muscles", prims, LB.PARASPINAL_MUSCLE, LB.HU_MUSCLE, writable=MUSCLE_WRITABLE))
    # quadratus lumborum: 12th rib to the iliac crest, anterior to the transverse-process tips
    prims = []
    for s in (1, -1):
        nodes = []
        for n in order[:5]:
            vt = v[n]
            nodes.append(vt.pose.pt((s * (vt.dims["W"] / 2 + 42.0 * sc), vt.dims["D"] / 2 + 6.0, 0.0)))
        nodes.append(skel.pelvis.pt((s * 80.0 * sc, 10.0, 15.0)))
        rads = (9.0, 12.0, 14.0, 15.0, 14.0, 10.0)
        for p0, p1, r0, r1 in zip(nodes[:-1], nodes[1:], rads[:-1], rads[1:]):
            prims.append(S.capsule(p0, p1, r0 * sc, r1 * sc))
    groups.append(S.Group("quadratus lumborum", prims, LB.OTHER_MUSCLE, LB.HU_MUSCLE, writable=MUSCLE_WRITABLE))
    # psoas: from the T12/L1 bodies, growing caudally, over the pelvic brim toward the femur
    prims = []
    for s in (1, -1):
        nodes, rads = [], []
        for n, r in zip(order, (5.0, 9.0, 13.0, 17.0, 21.0, 23.0)):
            vt = v[n]
            nodes.append(vt.pose.pt((s * (vt.dims["W"] / 2 + r * 0.75), -0.1 * vt.dims["D"], 0.0)))
            rads.append(r * sc)
        for p, r in (((s * 52.0, -38.0, -30.0), 22.0), ((s * 66.0, -62.0, -75.0), 18.0),
                     ((s * 78.0, -70.0, -115.0), 15.0)):
            nodes.append(skel.pelvis.pt(np.array(p) * sc))
            rads.append(r * sc)
        for p0, p1, r0, r1 in zip(nodes[:-1], nodes[1:], rads[:-1], rads[1:]):
            prims.append(S.capsule(p0, p1, r0, r1))
    groups.append(S.Group("psoas", prims, LB.PSOAS, LB.HU_PSOAS, writable=MUSCLE_WRITABLE))
    # iliacus in the iliac fossae, gluteal muscles behind and lateral to the wings
    prims = []
    P = skel.pelvis
    for s in (1, -1):
        prims.append(S.ellipsoid(P.pt(np.array((s * 88.0, -40.0, -12.0)) * sc), P.fr(S.rot_y(s * 25.0)),
                                 18.0 * sc, 32.0 * sc, 42.0 * sc))
        prims.append(S.ellipsoid(P.pt(np.array((s * 98.0, 38.0, -78.0)) * sc), P.frame, 52.0 * sc, 48.0 * sc, 62.0 * sc))
        prims.append(S.ellipsoid(P.pt(np.array((s * 128.0, -10.0, -30.0)) * sc), P.fr(S.rot_y(-s * 20.0)),
                                 24.0 * sc, 48.0 * sc, 42.0 * sc))
    groups.append(S.Group("pelvic muscles", prims, LB.OTHER_MUSCLE, LB.HU_MUSCLE, writable=MUSCLE_WRITABLE))
    return groups


# -- organs ---------------------------------------------------------------------------------------
def organ_groups(skel: Skeleton, params, rng: np.random.Generator) -> list[S.Group]:
    groups = []
    v = skel.vertebrae
    sc = skel.scale * (0.93 if params.sex == "F" else 1.0)
    order = ["T12", "L1", "L2", "L3", "L4", "L5"]

    def j(sd):
        return sd * rng.standard_normal()

    # aorta (left of midline, bifurcating at L4) and IVC (right, confluence at L5)
    nodes_a, nodes_v = [], []
    for n in order:
        vt = v[n]
        F = vt.pose.frame
        front = -vt.dims["D"] / 2
        if n in ("T12", "L1", "L2", "L3"):
            nodes_a.append((vt.pose.pt((14.0, front - 13.0, 0.0)), F, 11.0 * sc, 11.0 * sc))
        nodes_v.append((vt.pose.pt((-22.0, front - 12.0, 0.0)), F, 13.0 * sc, 9.5 * sc))
    top = v["T12"].pose
    nodes_a.insert(0, (top.pt((14.0, -v["T12"].dims["D"] / 2 - 13.0, 80.0)), top.frame, 11.0 * sc, 11.0 * sc))
    nodes_v.insert(0, (top.pt((-22.0, -v["T12"].dims["D"] / 2 - 12.0, 80.0)), top.frame, 13.0 * sc, 9.5 * sc))
    l4 = v["L4"].pose
    bif = l4.pt((8.0, -v["L4"].dims["D"] / 2 - 11.0, 0.0))
    nodes_a.append((bif, l4.frame, 10.0 * sc, 10.0 * sc))
    prims = tube_chain(nodes_a)
    P = skel.pelvis
    for s in (1, -1):
        prims.append(S.capsule(bif, P.pt(np.array((s * 42.0, -30.0, -25.0)) * sc), 6.5 * sc, 5.5 * sc))
        prims.append(S.capsule(P.pt(np.array((s * 42.0, -30.0, -25.0)) * sc), P.pt(np.array((s * 75.0, -70.0, -95.0)) * sc),
                               5.5 * sc, 4.5 * sc))
    groups.append(S.Group("aorta", prims, LB.AORTA, LB.HU_BLOOD, writable=ORGAN_WRITABLE))
    prims = tube_chain(nodes_v)
    conf = nodes_v[-1][0]
    for s in (1, -1):
        prims.append(S.capsule(conf, P.pt(np.array((s * 48.0, -22.0, -35.0)) * sc), 8.0 * sc, 7.0 * sc))
        prims.append(S.capsule(P.pt(np.array((s * 48.0, -22.0, -35.0)) * sc), P.pt(np.array((s * 72.0, -62.0, -98.0)) * sc),
                               7.0 * sc, 6.5 * sc))
    groups.append(S.Group("ivc", prims, LB.IVC, LB.HU_BLOOD, writable=ORGAN_WRITABLE))

    # kidneys: hila at L1-L2 (left) and ~1.5 cm lower on the right; upper poles medial and posterior
    for s, lab in ((1, LB.KIDNEY_LEFT), (-1, LB.KIDNEY_RIGHT)):
        d = skel.discs["L1-L2"].pose
        c = d.pt((s * 72.0 * sc + j(4), 12.0 + j(4), (0.0 if s > 0 else -16.0) + j(6)))
        f = S.rot_z(-s * 30.0) @ S.rot_y(-s * 14.0) @ S.rot_x(-12.0)
        prims = [S.ellipsoid(c, f, 29.0 * sc, 23.0 * sc, 56.0 * sc)]
        groups.append(S.Group(f"kidney {'left' if s > 0 else 'right'}", prims, lab, LB.HU_KIDNEY,
                              writable=ORGAN_WRITABLE))
    # spleen (left upper quadrant, posterolateral) and liver (right upper quadrant down to ~L2-L3)
    t12 = v["T12"].pose
    groups.append(S.Group("spleen", [S.ellipsoid(t12.pt((102.0 * sc + j(5), 20.0 + j(5), 40.0 + j(8))),
                                                 S.rot_z(35.0), 28.0 * sc, 55.0 * sc, 58.0 * sc)],
                          LB.SPLEEN, LB.HU_SPLEEN, writable=ORGAN_WRITABLE))
    liver = [S.ellipsoid(t12.pt((-68.0 * sc + j(5), -42.0 + j(5), 42.0 + j(8))), S.rot_y(-12.0),
                         100.0 * sc, 82.0 * sc, 118.0 * sc)]
    groups.append(S.Group("liver", liver, LB.LIVER, LB.HU_LIVER, writable=ORGAN_WRITABLE))
    # bladder (mostly below the volume) behind the pubis
    groups.append(S.Group("bladder", [S.ellipsoid(P.pt(np.array((0.0, -72.0, -108.0)) * sc), np.eye(3),
                                                  42.0 * sc, 34.0 * sc, 36.0 * sc)],
                          LB.BLADDER, LB.HU_URINE, writable=ORGAN_WRITABLE))
    groups += bowel_groups(skel, params, rng)
    return groups


def bowel_groups(skel: Skeleton, params, rng: np.random.Generator) -> list[S.Group]:
    """Colon frame (ascending, transverse, descending, sigmoid, rectum) and small-bowel loops, with gas."""
    v = skel.vertebrae
    P = skel.pelvis
    sc = skel.scale
    lines = SpineLines(skel)
    zl = {n: v[n].pose.centre[2] for n in v}
    cy = lambda z: float(lines.body_y(z))
    z_s1 = skel.s1_endplate.centre[2]
    jit = lambda sd: sd * rng.standard_normal()
    colon_pts = [
        (-95.0, cy(z_s1 - 40) - 45, z_s1 - 40),                       # caecum
        (-105.0, cy(zl["L4"]) - 15, zl["L4"]),                        # ascending
        (-100.0, cy(zl["L2"]) - 20, zl["L2"]),
        (-80.0, cy(zl["L1"]) - 55, zl["L1"] + 10),                    # hepatic flexure
        (-20.0, cy(zl["L3"]) - 100, zl["L3"] + 5 + jit(10)),           # transverse (sagging)
        (40.0, cy(zl["L2"]) - 95, zl["L2"] + 5 + jit(10)),
        (95.0, cy(zl["T12"]) - 30, zl["T12"] + 20),                   # splenic flexure
        (105.0, cy(zl["L2"]) - 5, zl["L2"]),                          # descending
        (100.0, cy(zl["L4"]) - 10, zl["L4"]),
        (75.0, cy(z_s1) - 45, z_s1 - 30),                             # sigmoid
        (25.0, cy(z_s1) - 60, z_s1 - 55),
        (-10.0, cy(z_s1) - 40, z_s1 - 70),
    ]
    colon_pts = [np.array(p, float) + np.array([jit(5), jit(5), jit(5)]) for p in colon_pts]
    # rectum: in front of the lower sacrum
    for sg in skel.sacral[2:]:
        colon_pts.append(sg.pose.pt((0.0, -sg.depth / 2 - 22.0, 0.0)))
    colon, gas_prims = [], []
    for p0, p1 in zip(colon_pts[:-1], colon_pts[1:]):
        colon.append(S.capsule(p0, p1, 24.0 * sc, 24.0 * sc))
        # gas pockets on the non-dependent (anterior) side of the lumen, elongated along the bowel
        axis = (p1 - p0) / max(np.linalg.norm(p1 - p0), 1e-6)
        for _ in range(3):
            if rng.uniform() < 0.5:
                t = rng.uniform(0.1, 0.9)
                c = p0 + t * (p1 - p0) + np.array([jit(4), -9.0 + jit(3), jit(4)])
                r = rng.uniform(8.0, 15.0) * sc
                f = S.frame_z(axis, (0.0, 1.0, 0.0))
                gas_prims.append(S.ellipsoid(c, f, r, r * rng.uniform(0.5, 0.8), r * rng.uniform(1.3, 2.5)))
    groups = [S.Group("colon", colon, LB.BOWEL, -40.0, tex=S.value_noise(rng, (4.0, 7.0)), tex_amp=120.0,
                      writable=ORGAN_WRITABLE + (LB.BOWEL,))]
    # small bowel: random walks of 25 mm loops in the mid and lower abdomen
    sb = []
    for _ in range(7):
        p = np.array([rng.uniform(-70, 70), 0.0, rng.uniform(zl["L5"] - 10, zl["L2"])])
        p[1] = cy(p[2]) - rng.uniform(60, 100)
        for _ in range(6):
            step = rng.normal(size=3) * np.array([30.0, 12.0, 25.0])
            q = p + step
            q[0] = np.clip(q[0], -85, 85)
            q[1] = np.clip(q[1], cy(q[2]) - 115, cy(q[2]) - 45)
            sb.append(S.capsule(p, q, 12.0 * sc))
            if rng.uniform() < 0.3:
                c = 0.5 * (p + q) + np.array([0.0, -4.0, 0.0])
                f = S.frame_z(q - p if np.linalg.norm(q - p) > 1 else (0, 0, 1.0), (0.0, 1.0, 0.0))
                gas_prims.append(S.ellipsoid(c, f, 7.0 * sc, 5.0 * sc, rng.uniform(8.0, 16.0) * sc))
            p = q
    groups.append(S.Group("small bowel", sb, LB.BOWEL, LB.HU_BOWEL, writable=ORGAN_WRITABLE))
    groups.append(S.Group("bowel gas", gas_prims, LB.BOWEL_GAS, LB.HU_GAS, k_smooth=4.0, writable=(LB.BOWEL,)))
    return groups


# -- spinal canal ---------------------------------------------------------------------------------
def canal_groups(skel: Skeleton, params, rng: np.random.Generator, h: float) -> list[S.Group]:
    groups = [S.Group("spinal canal (epidural fat)", tube_chain(skel.canal_nodes), LB.EPIDURAL_FAT,
                      LB.HU_EPIDURAL_FAT, writable=CANAL_WRITABLE)]
    groups.append(S.Group("ligamentum flavum", flavum_prims(skel), LB.LIGAMENTUM_FLAVUM, LB.HU_LIGAMENTUM_FLAVUM,
                          writable=CANAL_WRITABLE + (LB.EPIDURAL_FAT,)))
    dura = max(1.0, h)
    groups.append(S.Group("thecal sac", tube_chain(skel.sac_nodes), lab_in=LB.CSF, hu_in=LB.HU_CSF,
                          lab_out=LB.THECAL_SAC, hu_out=LB.HU_DURA, shell_mm=dura, writable=(LB.EPIDURAL_FAT,)))
    cord, roots = cord_and_roots(skel, params, rng)
    groups.append(S.Group("spinal cord / conus", cord, LB.SPINAL_CORD, LB.HU_CORD, writable=(LB.CSF,)))
    groups.append(S.Group("cauda equina", roots, LB.CAUDA_EQUINA, LB.HU_ROOTS, writable=(LB.CSF,)))
    return groups


def flavum_prims(skel: Skeleton) -> list[np.ndarray]:
    """Ligamentum flavum: two plates per level on the posterior canal wall, between the laminae."""
    prims = []
    for disc in skel.discs.values():
        P = disc.pose
        c, f, a, b = min(skel.canal_nodes, key=lambda n: np.linalg.norm(n[0] - P.centre))
        loc = P.to_local(c)
        t = (3.0 + 2.5 * disc.degeneration) * skel.scale
        yc, zc = loc[1], loc[2]
        for s in (1, -1):
            p_lat = np.array([s * (a - 1.5), yc + 0.35 * b + t / 2, 0.0])
            p_mid = np.array([0.0, yc + b + t / 2 - 0.5, 0.0])
            ax = p_mid - p_lat
            L = np.linalg.norm(ax)
            ax /= L
            yy = np.cross([0, 0, 1.0], ax)
            fr = np.column_stack([ax, yy, [0, 0, 1.0]])
            up_h = skel.vertebrae[disc.upper].dims["H"]
            z_top = disc.height / 2 + 0.35 * up_h
            z_bot = -disc.height / 2 - 6.0
            cen = 0.5 * (p_lat + p_mid) + np.array([0, 0, 0.5 * (z_top + z_bot)])
            prims.append(S.rbox(P.pt(cen), P.fr(fr), L / 2 + t / 2, t / 2, (z_top - z_bot) / 2, r=1.0))
    return prims


def _polyline(nodes):
    c = np.array([n[0] for n in nodes])
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(c, axis=0), axis=1))])
    return c, s


def _sample_node(nodes, s_nodes, s):
    """Interpolated (centre, frame, a, b) along a node chain at arclength s."""
    i = int(np.clip(np.searchsorted(s_nodes, s) - 1, 0, len(nodes) - 2))
    t = float(np.clip((s - s_nodes[i]) / max(s_nodes[i + 1] - s_nodes[i], 1e-9), 0.0, 1.0))
    c0, f0, a0, b0 = nodes[i]
    c1, f1, a1, b1 = nodes[i + 1]
    f = S.orthonormalize((1 - t) * f0 + t * f1)
    return (1 - t) * c0 + t * c1, f, (1 - t) * a0 + t * a1, (1 - t) * b0 + t * b1


def conus_tip(skel: Skeleton, rng_offset_mm: float) -> float:
    """Arclength along the sac nodes of the conus tip (L1-L2 disc level, shifted by ``rng_offset_mm``)."""
    c, s = _polyline(skel.sac_nodes)
    disc = skel.discs["L1-L2"].pose.centre
    k = int(np.argmin(np.linalg.norm(c - disc, axis=1)))
    return float(s[k] + rng_offset_mm)


def cord_and_roots(skel: Skeleton, params, rng: np.random.Generator):
    nodes = skel.sac_nodes
    c, s_nodes = _polyline(nodes)
    tip = conus_tip(skel, 4.0 * rng.standard_normal())
    skel.extra["conus_tip"] = _sample_node(nodes, s_nodes, tip)[0] - _sample_node(nodes, s_nodes, tip)[1][:, 1] * 0.8
    skel.extra["sac_tip"] = nodes[-1][0] + (nodes[-1][0] - nodes[-2][0]) / max(
        np.linalg.norm(nodes[-1][0] - nodes[-2][0]), 1e-9) * 1.5
    sc = skel.scale
    cord_nodes = []
    for s in np.arange(0.0, tip + 0.01, 4.0):
        cc, f, a, b = _sample_node(nodes, s_nodes, s)
        taper = np.clip((tip - s) / 28.0, 0.0, 1.0)     # conus medullaris: tapers over ~28 mm
        r = 0.8 + (4.6 * sc - 0.8) * np.sqrt(taper)
        cord_nodes.append((cc - f[:, 1] * 0.8, f, r * 1.12, r * 0.85))
    cord = tube_chain(cord_nodes, extend=0.5)
    # cauda equina: roots L2..S3 per side, fanning from the conus toward the lateral recess of their level
    roots = []
    exits = ["L2-L3", "L3-L4", "L4-L5", "L5-S1"]
    ex_s = []
    for dname in exits:
        dp = skel.discs[dname].pose.centre
        ex_s.append(float(s_nodes[int(np.argmin(np.linalg.norm(c - dp, axis=1)))]))
    ex_s += [s_nodes[-2] - 8.0, s_nodes[-2], s_nodes[-1]]          # S1-S3 roots leave at S1-S2
    for side in (1, -1):
        for i, s_exit in enumerate(ex_s):
            ang0 = np.deg2rad(60.0 - 18.0 * i)                      # posterior-medial ... lateral
            ang1 = np.deg2rad(-10.0 - 8.0 * i * 0.3)
            rn = []
            for s in np.linspace(tip - 12.0, s_exit, 12):
                cc, f, a, b = _sample_node(nodes, s_nodes, s)
                t = (s - (tip - 12.0)) / max(s_exit - tip + 12.0, 1e-6)
                ang = (1 - t) * ang0 + t * (np.deg2rad(75.0 - 10.0 * i) if i < 4 else ang0)
                rad = 0.55 + 0.2 * min(t * 3, 1.0)            # a crescent around a free centre
                if s_exit - s < 10.0 and i < 4:
                    rad = 0.75 + 0.15 * (1 - (s_exit - s) / 10.0)
                    ang = ang1
                u, w = rad * np.cos(ang) * side, rad * np.sin(ang)
                rn.append((cc + f[:, 0] * u * a + f[:, 1] * w * b, f, 1.1 * sc, 1.1 * sc))
            roots += tube_chain(rn, extend=0.3)
    # filum terminale to the sac tip
    fil = []                                  # filum terminale: dorsal, slightly off the midline
    for s in np.linspace(tip, s_nodes[-1], 8):
        cc, f, a, b = _sample_node(nodes, s_nodes, s)
        fil.append((cc + f[:, 0] * 0.3 * a + f[:, 1] * 0.45 * b, f, 0.6, 0.6))
    roots += tube_chain(fil, extend=0.2)
    return cord, roots


def interspinous_prims(skel: Skeleton) -> list[np.ndarray]:
    """Interspinous (and supraspinous) ligament between adjacent spinous processes."""
    prims = []
    for disc in skel.discs.values():
        if disc.lower not in skel.vertebrae:
            continue
        up, lo = skel.vertebrae[disc.upper], skel.vertebrae[disc.lower]
        cu, (hxu, hyu, hzu), tu = spinous_geometry(up)
        cl, (hxl, hyl, hzl), tl = spinous_geometry(lo)
        a = up.pose.pt(cu + S.rot_x(-tu) @ np.array([0, 0, -hzu]))
        b = lo.pose.pt(cl + S.rot_x(-tl) @ np.array([0, 0, hzl]))
        P = disc.pose
        la, lb = P.to_local(a), P.to_local(b)
        cen = 0.5 * (la + lb)
        hz = abs(la[2] - lb[2]) / 2 + 4.0
        prims.append(S.rbox(P.pt((0.0, cen[1] + 4.0, cen[2])), P.frame, 3.5, max(hyu, hyl) + 6.0, hz, r=1.5))
    return prims
