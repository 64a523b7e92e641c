"""Ground-truth landmarks of the phantom, computed from its exact geometry (not from voxels).

Everything is in LPS millimetres with the origin at the L3 vertebral body centre.
``compute_landmarks`` returns a JSON-serialisable dict:

* ``vertebrae[name]`` (T12, L1..L5, sacrum, coccyx): ``label``, ``body_centre``,
  ``pose`` (rigid pose of the whole vertebra: ``centre`` and ``rotation``, a 3x3 matrix
  given as rows whose *columns* are the vertebra's left / posterior / superior axes, so
  ``p_world = centre + rotation @ p_local``; also ``quaternion_wxyz``),
  ``endplate_corners`` (mid-sagittal plane, on the outer cortex:
  ``anterior_superior``, ``posterior_superior``, ``anterior_inferior``,
  ``posterior_inferior``), ``spinous_tip``; for the sacrum the pose is at the S1
  superior endplate centre;
* ``discs[level]`` (T12-L1 .. L5-S1): ``label``, ``centre`` (interspace centre),
  ``height_mm`` (mid), ``anterior_height_mm``, ``posterior_height_mm``;
* ``interlaminar_windows[level]``: ``centre`` (midline, in the ligamentum flavum),
  ``height_mm`` and ``width_mm`` of the bone-free window seen along the disc's AP axis;
* ``thecal_sac[level]`` (each vertebra and disc level down to S2):
  ``centre``, ``anterior_wall``, ``posterior_wall``, ``left_wall``, ``right_wall``
  (outer dural surface); ``conus_tip``, ``sac_tip``;
* ``needle[level]`` for L2-L3, L3-L4 and L4-L5 (and the other lumbar levels):
  ``target`` (centre of the thecal sac on the trajectory), ``entry`` (skin, midline),
  ``direction`` (unit, entry to target), ``angle_cranial_deg`` (to the disc's AP axis),
  ``skin_to_target_mm``, ``skin_to_dura_mm``, ``clearance_mm`` (closest bone),
  ``recommended`` (true for L2-L3, L3-L4, L4-L5);
* ``iliac_crests``: ``left_top``, ``right_top``, ``tuffier_z_mm``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from openfluoro.scene.anatomy import kernels as K
from openfluoro.scene.anatomy import labels as LB
from openfluoro.scene.anatomy import soft as SO
from openfluoro.scene.anatomy.skeleton import spinous_geometry
from openfluoro.scene.anatomy.shapes import rot_x

if TYPE_CHECKING:  # pragma: no cover
    from openfluoro.scene.phantom import PhantomParams, _Build

RECOMMENDED_LEVELS = ("L2-L3", "L3-L4", "L4-L5")


def _l(p) -> list[float]:
    return [round(float(v), 3) for v in np.asarray(p, float).reshape(-1)]


def _quat(r: np.ndarray) -> list[float]:
    w = np.sqrt(max(0.0, 1.0 + r[0, 0] + r[1, 1] + r[2, 2])) / 2
    x = np.sqrt(max(0.0, 1.0 + r[0, 0] - r[1, 1] - r[2, 2])) / 2
    y = np.sqrt(max(0.0, 1.0 - r[0, 0] + r[1, 1] - r[2, 2])) / 2
    z = np.sqrt(max(0.0, 1.0 - r[0, 0] - r[1, 1] + r[2, 2])) / 2
    x = np.copysign(x, r[2, 1] - r[1, 2])
    y = np.copysign(y, r[0, 2] - r[2, 0])
    z = np.copysign(z, r[1, 0] - r[0, 1])
    return [round(float(v), 6) for v in (w, x, y, z)]


def _pose(centre, frame) -> dict[str, Any]:
    return {"centre": _l(centre), "rotation": [[round(float(v), 7) for v in row] for row in np.asarray(frame)],
            "quaternion_wxyz": _quat(np.asarray(frame))}


def _surface_point(prim: np.ndarray, inside, outside) -> np.ndarray:
    """Bisect between a point inside and one outside a primitive for its surface."""
    a, b = np.asarray(inside, float), np.asarray(outside, float)
    for _ in range(40):
        m = 0.5 * (a + b)
        if K.prim_sdf(prim, m[0], m[1], m[2]) < 0:
            a = m
        else:
            b = m
    return 0.5 * (a + b)


def _vertebra(b: "_Build", name: str) -> dict[str, Any]:
    v = b.skel.vertebrae[name]
    body = b.groups[f"{name} body"].prims[0]
    P = v.pose
    d = v.dims
    corners = {}
    t = np.tan(np.deg2rad(d["wedge"] / 2))
    for key, y_sign, z_sign in (("anterior_superior", -1, 1), ("posterior_superior", 1, 1),
                                ("anterior_inferior", -1, -1), ("posterior_inferior", 1, -1)):
        y = -d["D"] / 2 if y_sign < 0 else d["D"] / 2 - 1.0
        z = z_sign * (d["H"] / 2 - y * t) if z_sign > 0 else -(d["H"] / 2 - y * t)
        sharp = np.array([0.0, y, z])
        inward = np.array([0.0, -y_sign, -z_sign]) / np.sqrt(2.0)
        corners[key] = _l(_surface_point(body, P.pt(sharp + inward * 5.0), P.pt(sharp - inward * 3.0)))
    c, (hx, hy, hz), tilt = spinous_geometry(v)
    tip = P.pt(c + rot_x(-tilt) @ np.array([0.0, hy + 1.5, 0.0]))
    return {"label": v.label, "body_centre": _l(P.centre), "pose": _pose(P.centre, P.frame),
            "endplate_corners": corners, "spinous_tip": _l(tip)}


def _disc(b: "_Build", name: str) -> dict[str, Any]:
    disc = b.skel.discs[name]
    slab = b.groups[f"disc {name}"].prims[0]
    q = K.P0
    n1y, n1z, o1 = slab[q + 4], slab[q + 5], slab[q + 6]
    n2y, n2z, o2 = slab[q + 8], slab[q + 9], slab[q + 10]
    up = b.skel.vertebrae[disc.upper]
    half = up.dims["D"] / 2 - 1.0

    def height(y):
        return (o1 - n1y * y) / n1z - (o2 - n2y * y) / n2z

    return {"label": disc.label, "centre": _l(disc.pose.centre), "height_mm": round(float(height(0.0)), 3),
            "anterior_height_mm": round(float(height(-half)), 3),
            "posterior_height_mm": round(float(height(half)), 3)}


def _bone_groups(b: "_Build", disc_name: str):
    disc = b.skel.discs[disc_name]
    if disc.lower in b.skel.vertebrae:
        return [b.groups[disc.upper], b.groups[f"{disc.upper} body"], b.groups[disc.lower],
                b.groups[f"{disc.lower} body"]]
    return [b.groups[disc.upper], b.groups[f"{disc.upper} body"], b.groups["sacrum"]]


def _bone_sdf(groups, pts: np.ndarray) -> np.ndarray:
    pts = np.atleast_2d(pts)
    return np.min([g.sdf(pts) for g in groups], axis=0)


def _canal_node(b: "_Build", level: str, sac: bool = False):
    names = b.skel.canal_names
    nodes = b.skel.sac_nodes if sac else b.skel.canal_nodes
    i = names.index(level)
    return nodes[i] if i < len(nodes) else None


def _window(b: "_Build", name: str) -> dict[str, Any]:
    disc = b.skel.discs[name]
    P = disc.pose
    groups = _bone_groups(b, name)
    c, f, a, bb = _canal_node(b, name)
    loc = P.to_local(c)
    y_w = loc[1] + bb + 1.5
    ys = np.linspace(y_w - 2.0, y_w + 6.0, 9)
    zs = np.arange(-40.0, 40.0, 0.25)
    pts = np.array([[0.0, y, z] for z in zs for y in ys])
    free = (_bone_sdf(groups, np.array([P.pt(p) for p in pts])) > 0).reshape(len(zs), len(ys)).all(axis=1)
    # the bone-free run nearest the disc's mid-plane
    runs, start = [], None
    for i, ok in enumerate(free):
        if ok and start is None:
            start = i
        if (not ok or i == len(free) - 1) and start is not None:
            end = i if not ok else i + 1
            runs.append((start, end))
            start = None
    best = min(runs, key=lambda r: abs(0.5 * (zs[r[0]] + zs[r[1] - 1])))
    z0, z1 = zs[best[0]], zs[best[1] - 1]
    zc = 0.5 * (z0 + z1)
    # width: bone-free half width in projection over the posterior canal and lamina zone
    ys2 = np.linspace(loc[1], y_w + 6.0, 12)
    xs = np.arange(0.0, 35.0, 0.25)
    half = []
    for s in (1, -1):
        pts = np.array([[s * x, y, zc] for x in xs for y in ys2])
        ok = (_bone_sdf(groups, np.array([P.pt(p) for p in pts])) > 0).reshape(len(xs), len(ys2)).all(axis=1)
        idx = int(np.argmin(ok)) if not ok.all() else len(xs)
        half.append(xs[max(idx - 1, 0)])
    return {"centre": _l(P.pt((0.0, y_w, zc))), "height_mm": round(float(z1 - z0), 3),
            "width_mm": round(float(half[0] + half[1]), 3)}


def _needle(b: "_Build", params: "PhantomParams", name: str, window: dict[str, Any]) -> dict[str, Any]:
    skel = b.skel
    disc = skel.discs[name]
    P = disc.pose
    groups = _bone_groups(b, name)
    W = np.asarray(window["centre"])
    Wl = P.to_local(W)
    best = None
    for ang in np.arange(0.0, 30.5, 1.0):
        d = np.array([0.0, -np.cos(np.deg2rad(ang)), np.sin(np.deg2rad(ang))])   # anterior + cranial
        ts = np.arange(-12.0, 70.0, 1.0)
        pts = np.array([P.pt(Wl - t * d) for t in ts])
        clear = float(np.min(_bone_sdf(groups, pts)))
        score = clear - 0.02 * abs(ang - 10.0)
        if best is None or score > best[0]:
            best = (score, ang, clear, P.vec(d))
    _, ang, clear, dw = best
    cs, fs, _, _ = _canal_node(b, name, sac=True)
    ys = fs[:, 1]
    t_star = float((cs - W) @ ys / (dw @ ys))
    target = W + t_star * dw
    # skin entry: walk back from the window along the trajectory until outside the skin
    ts = np.arange(0.0, 400.0, 0.25)
    pts = W[None, :] - ts[:, None] * dw[None, :]
    prof = SO.torso_profile(skel, params, pts[:, 2])
    depth = K.torso_depth_points(np.ascontiguousarray(prof), pts)
    k = int(np.argmax(depth > 0))
    lo, hi = ts[k - 1], ts[k]
    for _ in range(40):
        m = 0.5 * (lo + hi)
        p = W - m * dw
        if K.torso_depth_points(np.ascontiguousarray(SO.torso_profile(skel, params, np.array([p[2]]))), p[None])[0] > 0:
            hi = m
        else:
            lo = m
    entry = W - 0.5 * (lo + hi) * dw
    # first contact with the dura along the path
    sac = b.groups["thecal sac"]
    L = float(np.linalg.norm(target - entry))
    ss = np.arange(0.0, L, 0.1)
    inside = sac.sdf(entry[None, :] + ss[:, None] * dw[None, :]) < 0
    dura = float(ss[int(np.argmax(inside))]) if inside.any() else float("nan")
    return {"target": _l(target), "entry": _l(entry), "direction": _l(dw), "angle_cranial_deg": float(ang),
            "skin_to_target_mm": round(L, 3), "skin_to_dura_mm": round(dura, 3),
            "clearance_mm": round(clear, 3), "recommended": name in RECOMMENDED_LEVELS}


def compute_landmarks(b: "_Build", params: "PhantomParams") -> dict[str, Any]:
    from dataclasses import asdict

    from openfluoro.scene.phantom import PHANTOM_CODE_VERSION

    skel = b.skel
    out: dict[str, Any] = {
        "coordinate_system": "DICOM LPS mm (+x patient left, +y posterior, +z superior); "
                             "origin at the centre of the L3 vertebral body",
        "phantom_version": PHANTOM_CODE_VERSION,
        "params": asdict(params),
    }
    verts = {n: _vertebra(b, n) for n in skel.vertebrae}
    s1 = skel.s1_endplate
    verts["sacrum"] = {"label": LB.SACRUM, "body_centre": _l(skel.sacral[0].pose.centre),
                       "pose": _pose(s1.centre, s1.frame), "s1_endplate_centre": _l(s1.centre)}
    co = skel.coccygeal[0].pose
    verts["coccyx"] = {"label": LB.COCCYX, "body_centre": _l(co.centre), "pose": _pose(co.centre, co.frame),
                       "tip": _l(skel.coccygeal[-1].pose.pt((0, 0, -skel.coccygeal[-1].height / 2)))}
    out["vertebrae"] = verts
    out["discs"] = {n: _disc(b, n) for n in skel.discs}
    windows = {n: _window(b, n) for n in skel.discs}
    out["interlaminar_windows"] = windows
    sac = {}
    for name, (c, f, a, bb) in zip(skel.canal_names, skel.sac_nodes):
        if name.startswith("T11"):
            continue
        sac[name] = {"centre": _l(c), "anterior_wall": _l(c - f[:, 1] * bb), "posterior_wall": _l(c + f[:, 1] * bb),
                     "left_wall": _l(c + f[:, 0] * a), "right_wall": _l(c - f[:, 0] * a),
                     "ap_diameter_mm": round(2 * bb, 3), "width_mm": round(2 * a, 3)}
    out["thecal_sac"] = sac
    out["conus_tip"] = _l(skel.extra["conus_tip"])
    out["sac_tip"] = _l(skel.extra["sac_tip"])
    out["needle"] = {n: _needle(b, params, n, windows[n]) for n in skel.discs if n != "T12-L1"}
    tops = {("left_top" if h.side > 0 else "right_top"): _l(h.crest_top) for h in b.hips}
    tops["tuffier_z_mm"] = round(float(np.mean([h.crest_top[2] for h in b.hips])), 3)
    out["iliac_crests"] = tops
    return out
