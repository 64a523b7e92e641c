"""Train the interspace-naming model (``naming.py``) on the project's own phantom frames.

    python -m openfluoro.guidance.train_levels --phantoms 250 --seed 77 [--augment 3] [--out PATH]

For each development case (``cases.make_cases(..., dev=True)``: phantom seeds below
``EVAL_SEED_FLOOR``, so never an evaluation patient) it renders one AP and one lateral frame
as the evaluation does (C-arm centred on the target interspace, jittered angles, SID, dose),
projects the phantom's disc centres, and takes three jittered feature windows per visible
disc, and as many from each of ``--augment`` randomised variants of the frame (display gamma,
soft blobs, the end of a CT's scan range, AP mirror: ``augment_view``; half of them seen
through a collimator, ``collimated_field``), so that the names do not rest on what only
phantoms look like, nor on what a collimator hides. A multinomial logistic regression (L2,
L-BFGS) is fitted per view kind; 20 % of the phantoms are held out and their accuracy
printed, on the plain windows and on all. About 5-10 s per phantom on two cores, plus about
4 minutes to fit. ``--frames-dir`` takes the frames pickled per phantom instead
(``{"spec", "frames"}``, the frames as ``render_training_frames`` returns them).

    python -m openfluoro.guidance.train_levels --heatmap --phantoms 31 --seed 77 [--frames-dir DIR]

trains the disc heat map instead (``levels.disc_heatmap``, ``models/disc_heatmap.npz``): per
development phantom three AP frames with a needle in (random depth, C-arm centred near a
random lumbar interspace, random dose, AP/PA, SID) and one lateral (``render_needle_frames``);
grid windows within 2 mm of a true interspace centre are positives, windows more than 4.5 mm
away negatives; a class-balanced logistic regression per view kind gives a linear template.
The shipped model: 31 phantoms of ``make_cases(70, 77, dev=True)`` (124 frames).
Re-running this now gives a different template (weights up to 0.6 apart; see
``benchmarks/RESULTS.md``, real CT), so the shipped one is not reproduced bit for bit.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from openfluoro.guidance import levels as LV
from openfluoro.guidance.naming import CLASSES, MODEL_PATH, disc_features, save_model, to_small


def render_training_frames(spec):
    """One AP and one lateral frame of a case (no needle) with the projected disc centres."""
    from openfluoro.fluoro.session import Session
    from openfluoro.geometry.carm import Detector
    from openfluoro.guidance.cases import _centre_on, _wrap, case_patient

    pat = case_patient(spec.phantom)
    lm = pat.landmarks
    s = Session.for_patient(pat, detector=Detector.square(512, 300.0), seed=spec.noise_seed)
    s.set_dose_mode(spec.dose_mode)
    s.set_pulse_rate(spec.pulse_rate_pps)
    _centre_on(s, np.asarray(lm["discs"][spec.level]["centre"], float) + np.asarray(spec.iso_offset_mm))
    out = []
    for role in ("ap", "lateral"):
        if role == "ap":
            s.set_view(spec.ap_view)
            s.move_carm(_wrap(s.pose.primary_deg + spec.ap_jitter_deg[0]), spec.ap_jitter_deg[1], sid_mm=spec.sid_mm)
        else:
            prim = 90.0 if spec.lat_view == "lateral_left" else -90.0
            s.move_carm(prim + spec.lat_jitter_deg[0], spec.lat_jitter_deg[1])
        fr = s.run(3.0 / spec.pulse_rate_pps)[-1]
        s.pedal_up()
        g = fr.geometry
        discs = {d: g.project(np.asarray(v["centre"], float))[0].tolist() for d, v in lm["discs"].items()}
        out.append({"role": role, "image": fr.image, "geometry": g, "discs": discs})
    return out


def render_needle_frames(spec, rng: np.random.Generator, n_ap: int = 2):
    """Frames as the evaluation scores them: ``n_ap`` AP frames with the needle in (at a random
    depth, C-arm centred near a random lumbar interspace) and one lateral; with the projected
    disc centres. Development phantoms only (the caller's ``spec``)."""
    from openfluoro.fluoro.session import Session
    from openfluoro.geometry.carm import Detector
    from openfluoro.guidance.cases import _centre_on, _wrap, case_patient

    pat = case_patient(spec.phantom)
    lm = pat.landmarks
    out = []
    levels = [d for d in ("L1-L2", "L2-L3", "L3-L4", "L4-L5") if d in lm["discs"] and d in lm.get("needle", {})]
    for k in range(n_ap + 1):
        role = "ap" if k < n_ap else "lateral"
        level = str(rng.choice(levels)) if k > 0 else spec.level
        s = Session.for_patient(pat, detector=Detector.square(512, 300.0), seed=int(rng.integers(0, 2**31 - 1)))
        s.set_dose_mode(str(rng.choice(["low", "normal", "high"])))
        s.set_pulse_rate(spec.pulse_rate_pps)
        off = rng.uniform(-1, 1, 3) * np.array([5.0, 10.0, 14.0])
        _centre_on(s, np.asarray(lm["discs"][level]["centre"], float) + off)
        if role == "ap":
            s.set_view(str(rng.choice(["AP", "AP", "PA"])))
            s.move_carm(_wrap(s.pose.primary_deg + rng.uniform(-3, 3)), rng.uniform(-3, 3),
                        sid_mm=float(rng.uniform(950, 1150)))
            plan = lm["needle"][level]
            entry = np.asarray(plan["entry"], float) + np.array([rng.choice([0.0, 0.0, 1.0]) * rng.uniform(-12, 12),
                                                                  0.0, rng.uniform(-8, 8)])
            target = np.asarray(plan["target"], float)
            full = float(np.linalg.norm(target - entry))
            s.insert_needle(entry, target, gauge=int(rng.choice([20, 22, 25])),
                            length_mm=90.0 if full < 80 else 127.0, depth_mm=max(8.0, rng.uniform(0.45, 1.05) * full))
        else:
            prim = float(rng.choice([90.0, -90.0]))
            s.move_carm(prim + rng.uniform(-2, 2), rng.uniform(-2, 2), sid_mm=float(rng.uniform(950, 1150)))
        fr = s.run(3.0 / spec.pulse_rate_pps)[-1]
        s.pedal_up()
        g = fr.geometry
        discs = {d: g.project(np.asarray(v["centre"], float))[0].tolist() for d, v in lm["discs"].items()}
        out.append({"role": role, "image": fr.image, "geometry": g, "discs": discs})
    return out


def augment_view(norm: np.ndarray, rng: np.random.Generator, kind: str, px_per_mm: float) -> tuple[np.ndarray, bool]:
    """A randomised variant of a normalised frame, so the names do not hang on what only the
    phantoms have: a display gamma, soft blobs (bowel gas, organs, contrast), the end of a CT's
    scan range (air above or below a row), and in APs a left-right mirror (organs are not
    symmetric, the spine and pelvis nearly are). Returns (image, mirrored)."""
    rows, cols = norm.shape
    a = 255.0 * (np.clip(norm, 0, 255) / 255.0) ** math.exp(rng.uniform(-0.5, 0.5))
    yy, xx = np.mgrid[0:rows, 0:cols]
    for _ in range(int(rng.poisson(3))):
        s = rng.uniform(8.0, 30.0) * px_per_mm
        cx, cy = rng.uniform(0, cols), rng.uniform(0, rows)
        a += rng.choice([-1.0, 1.0]) * rng.uniform(20.0, 60.0) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    if rng.random() < 0.2:
        a[: int(rng.uniform(0.0, 0.45) * rows)] = 255.0
    if rng.random() < 0.1:
        a[rows - int(rng.uniform(0.0, 0.3) * rows):] = 255.0
    mirrored = bool(kind == "ap" and rng.random() < 0.5)
    if mirrored:
        a = a[:, ::-1]
    return np.ascontiguousarray(np.clip(a, 0, 255), dtype=np.float32), mirrored


#: fraction of the randomised variants that are collimated (``collimated_field``)
COLLIMATED_FRACTION = 0.5


def collimated_field(shape: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A collimator's field on a frame (``(row0, row1, col0, col1)``): side blades, top and
    bottom blades or both, leaving 40-85 % of the frame's width or height, about its centre
    (the evaluation's cases: 130-240 mm of a 300 mm panel)."""
    rows, cols = shape
    kind = int(rng.integers(0, 3))

    def span(n: int, closed: bool, lo: float, hi: float) -> tuple[int, int]:
        if not closed:
            return 0, n
        f, c = rng.uniform(lo, hi), n / 2 + rng.normal(0, 0.02 * n)
        return max(0, int(c - f * n / 2)), min(n, int(c + f * n / 2))

    c0, c1 = span(cols, kind in (0, 2), 0.40, 0.85)
    r0, r1 = span(rows, kind in (1, 2), 0.45, 0.85)
    return r0, r1, c0, c1


def features_of_frames(frames, rng: np.random.Generator, group: int, data: dict, augment: int = 0) -> None:
    """Three jittered feature windows per visible disc of each frame, and as many again from
    each of ``augment`` randomised variants of the frame (``augment_view``; half of them seen
    through a collimator, ``collimated_field``, as ``detect_levels`` sees such a frame)."""
    for fr in frames:
        g, img = fr["geometry"], fr["image"]
        vf = LV.view_frame(g, img.shape)
        P = vf.px_per_mm
        pxs = P / LV.SCALE
        base = vf.norm_image(img).astype(np.float32)
        for k in range(augment + 1):
            norm, mirrored = (base, False) if k == 0 else augment_view(base, rng, vf.kind, P)
            small = LV._quarter(norm)
            fld = None
            if k > 0 and rng.random() < COLLIMATED_FRACTION:
                fld = LV.Field.of_rect(collimated_field(norm.shape, rng), norm.shape)
                small = LV.fill_outside(small, fld.small_mask, pxs)
            sm = LV.naming_image(small, pxs, fld)
            for dn, p in fr["discs"].items():
                if dn not in CLASSES:
                    continue
                q = vf.to_norm([p])[0]
                if mirrored:
                    q[0] = img.shape[1] - 1 - q[0]
                if not (10 <= q[0] < img.shape[1] - 10 and 10 <= q[1] < img.shape[0] - 10):
                    continue
                if fld is not None and not fld.contains(q, LV.FIELD_EDGE_MM * P):
                    continue
                for _ in range(3):
                    jx, jy = rng.normal(0, 4.0) * P, rng.normal(0, 2.5) * P
                    X, y, grp, plain = data.setdefault(vf.kind, ([], [], [], []))
                    X.append(disc_features(sm, pxs, *to_small((q[0] + jx, q[1] + jy))))
                    y.append(CLASSES.index(dn))
                    grp.append(group)
                    plain.append(k == 0)


def heatmap_samples(frames, rng: np.random.Generator, data: dict, n_neg: int = 400) -> None:
    """Windows for the disc heat map (``levels.disc_heatmap``): positives within one grid cell
    of a true interspace centre, negatives elsewhere (half of them near the column), none in
    the ring between."""
    g = LV.GRID_MM
    for fr in frames:
        img = fr["image"]
        vf = LV.view_frame(fr["geometry"], img.shape)
        norm = vf.norm_image(img).astype(np.float32)
        pxs = vf.px_per_mm / LV.SCALE
        ch = LV.heatmap_channels(LV._quarter(norm), pxs)
        _, R, Q = ch.shape
        tr = []
        for dn, p in fr["discs"].items():
            q = vf.to_norm([p])[0]
            sx, sy = to_small(q)
            tr.append((sx / (g * pxs), sy / (g * pxs)))
        tr = np.array(tr)
        if not len(tr):
            continue
        inside = (tr[:, 0] >= 0) & (tr[:, 0] < Q) & (tr[:, 1] >= 0) & (tr[:, 1] < R)
        pos = []
        for x, y in tr[inside]:
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    xi, yi = int(round(x)) + dx, int(round(y)) + dy
                    if 0 <= xi < Q and 0 <= yi < R and math.hypot(xi - x, yi - y) <= 1.3:
                        pos.append((xi, yi))
        # negatives: uniform, and near the column line (interpolated through the true centres)
        o = np.argsort(tr[:, 1])
        ys = rng.uniform(0, R - 1, n_neg)
        xs = np.where(np.arange(n_neg) < n_neg // 2, rng.uniform(0, Q - 1, n_neg),
                      np.interp(ys, tr[o, 1], tr[o, 0]) + rng.normal(0, 10.0 / g, n_neg))
        neg = []
        for x, y in zip(xs, ys):
            xi, yi = int(round(x)), int(round(y))
            if not (0 <= xi < Q and 0 <= yi < R):
                continue
            d = np.min(np.hypot((tr[:, 0] - xi) * g / 1.5, (tr[:, 1] - yi) * g))
            if d > 4.5:
                neg.append((xi, yi))
        X, y, grp = data.setdefault(vf.kind, ([], [], []))
        for pts, lab in ((pos, 1), (neg, 0)):
            if pts:
                X.append(LV.template_windows(ch, np.array(pts)))
                y.extend([lab] * len(pts))
        grp.extend([fr.get("group", 0)] * (len(pos) + len(neg)))


def fit_heatmap(X: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """Weighted logistic regression (classes balanced) -> (template weights, bias) on raw windows."""
    from scipy.optimize import minimize

    n, d = X.shape
    mu = X.mean(0)
    sd = X.std(0) + 1e-3
    Xs = (X - mu) / sd
    w_cls = np.where(y == 1, 0.5 / max(1, (y == 1).sum()), 0.5 / max(1, (y == 0).sum()))
    t = y.astype(float)

    def f(w):
        z = Xs @ w[:-1] + w[-1]
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
        loss = -np.sum(w_cls * (t * np.log(p + 1e-12) + (1 - t) * np.log(1 - p + 1e-12))) + 0.5 * lam * w[:-1] @ w[:-1]
        r = w_cls * (p - t)
        g = np.concatenate([Xs.T @ r + lam * w[:-1], [r.sum()]])
        return loss, g

    r = minimize(f, np.zeros(d + 1), jac=True, method="L-BFGS-B", options={"maxiter": 400})
    W = r.x[:-1] / sd
    b = float(r.x[-1] - np.sum(mu * W))
    return W.astype(np.float32), b


def train_heatmap(args, rng: np.random.Generator, lam: float = 1e-3) -> None:
    import pickle

    from openfluoro.guidance.cases import make_cases

    data: dict = {}
    if args.frames_dir is not None:
        files = sorted(args.frames_dir.glob("*.pkl"))
        for n, fn in enumerate(files):
            with open(fn, "rb") as f:
                rec = pickle.load(f)
            heatmap_samples(rec["frames"], rng, data)
    else:
        for n, sp in enumerate(make_cases(args.phantoms, args.seed, dev=True)):
            frames = render_needle_frames(sp, np.random.default_rng([args.seed, sp.index]), n_ap=3)
            heatmap_samples(frames, rng, data)
            print(f"phantom {n + 1}/{args.phantoms}", flush=True)
    arrays = {}
    for kind, (X, y, _) in data.items():
        X, y = np.vstack(X), np.asarray(y)
        W, b = fit_heatmap(X, y, lam)
        arrays[f"{kind}_W"], arrays[f"{kind}_b"] = W, np.array(b, np.float32)
        print(f"{kind}: {len(y)} windows ({int(y.sum())} positive)")
    out = LV.DISC_MODEL_PATH if args.out == MODEL_PATH else args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    LV._disc_model.cache_clear()
    print(f"wrote {out}")


def fit_softmax(X: np.ndarray, y: np.ndarray, K: int, lam: float):
    from scipy.optimize import minimize

    n, d = X.shape
    mu = X.mean(0)
    sd = X.std(0) + 1e-3
    Xs = np.hstack([(X - mu) / sd, np.ones((n, 1))])
    Y = np.eye(K)[y]

    def f(w):
        W = w.reshape(d + 1, K)
        z = Xs @ W
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        Pm = e / e.sum(1, keepdims=True)
        loss = -np.sum(Y * np.log(Pm + 1e-12)) / n + 0.5 * lam * np.sum(W[:-1] ** 2)
        g = Xs.T @ (Pm - Y) / n
        g[:-1] += lam * W[:-1]
        return loss, g.ravel()

    r = minimize(f, np.zeros((d + 1) * K), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return mu, sd, r.x.reshape(d + 1, K)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--phantoms", type=int, default=250)
    ap.add_argument("--seed", type=int, default=77)
    ap.add_argument("--lam", type=float, default=0.03)
    ap.add_argument("--out", type=Path, default=MODEL_PATH)
    ap.add_argument("--frames-dir", type=Path, default=None,
                    help="reuse pickled frames ({'spec', 'frames'}) instead of rendering")
    ap.add_argument("--augment", type=int, default=3,
                    help="randomised variants per frame for the names (augment_view); 0: none")
    ap.add_argument("--heatmap", action="store_true", help="train the disc heat map instead of the names")
    args = ap.parse_args(argv)
    from openfluoro.guidance.cases import make_cases

    rng = np.random.default_rng(args.seed)
    if args.heatmap:
        train_heatmap(args, rng)
        return
    data: dict = {}
    if args.frames_dir is not None:
        import pickle

        files = sorted(args.frames_dir.glob("*.pkl"))
        for n, fn in enumerate(files):
            with open(fn, "rb") as f:
                rec = pickle.load(f)
            features_of_frames(rec["frames"], rng, n, data, args.augment)
        n_ph = len(files)
    else:
        specs = make_cases(args.phantoms, args.seed, dev=True)
        for n, sp in enumerate(specs):
            t = time.time()
            features_of_frames(render_training_frames(sp), rng, n, data, args.augment)
            print(f"phantom {n + 1}/{len(specs)} ({time.time() - t:.1f} s)", flush=True)
        n_ph = len(specs)
    models = {}
    for kind, (X, y, grp, plain) in data.items():
        X, y, grp, plain = np.asarray(X), np.asarray(y), np.asarray(grp), np.asarray(plain)
        held = grp >= int(0.8 * n_ph)
        mu, sd, W = fit_softmax(X[~held], y[~held], len(CLASSES), args.lam)
        right = (np.hstack([(X - mu) / sd, np.ones((len(X), 1))]) @ W).argmax(1) == y
        acc = {which: float(np.mean(right[sel])) if sel.any() else float("nan")
               for which, sel in (("plain", held & plain), ("all", held))}
        print(f"{kind}: {len(y)} windows, held-out accuracy per window {acc['plain']:.3f} (plain), "
              f"{acc['all']:.3f} (with the variants)")
        models[kind] = fit_softmax(X, y, len(CLASSES), args.lam)
    save_model(args.out, models, meta=f"phantoms={n_ph} seed={args.seed} lam={args.lam} augment={args.augment} dev seeds only")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
