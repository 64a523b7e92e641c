"""Train the interspace-naming model (``naming.py``) on the project's own phantom frames.

    python -m openfluoro.guidance.train_levels --phantoms 250 --seed 77 [--out PATH]

For each development case (``cases.make_cases(..., dev=True)``: phantom seeds below
``EVAL_SEED_FLOOR``, so never an evaluation patient) it renders one AP and one lateral frame
as the evaluation does (C-arm centred on the target interspace, jittered angles, SID, dose),
projects the phantom's disc centres, and takes three jittered feature windows per visible
disc. A multinomial logistic regression (L2, L-BFGS) is fitted per view kind; 20 % of the
phantoms are held out and their accuracy printed. About 5 s per phantom on two cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from openfluoro.guidance import levels as LV
from openfluoro.guidance.naming import CLASSES, MODEL_PATH, disc_features, save_model, smooth_for_features, to_small


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


def features_of_frames(frames, rng: np.random.Generator, group: int, data: dict) -> None:
    for fr in frames:
        g, img = fr["geometry"], fr["image"]
        vf = LV.view_frame(g, img.shape)
        norm = vf.norm_image(img).astype(np.float32)
        P = vf.px_per_mm
        pxs = P / LV.SCALE
        sm = smooth_for_features(LV._quarter(norm), pxs)
        for dn, p in fr["discs"].items():
            if dn not in CLASSES:
                continue
            q = vf.to_norm([p])[0]
            if not (10 <= q[0] < img.shape[1] - 10 and 10 <= q[1] < img.shape[0] - 10):
                continue
            for _ in range(3):
                jx, jy = rng.normal(0, 4.0) * P, rng.normal(0, 2.5) * P
                X, y, grp = data.setdefault(vf.kind, ([], [], []))
                X.append(disc_features(sm, pxs, *to_small((q[0] + jx, q[1] + jy))))
                y.append(CLASSES.index(dn))
                grp.append(group)


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
    args = ap.parse_args(argv)
    from openfluoro.guidance.cases import make_cases

    rng = np.random.default_rng(args.seed)
    data: dict = {}
    if args.frames_dir is not None:
        import pickle

        files = sorted(args.frames_dir.glob("*.pkl"))
        for n, fn in enumerate(files):
            with open(fn, "rb") as f:
                rec = pickle.load(f)
            features_of_frames(rec["frames"], rng, n, data)
        n_ph = len(files)
    else:
        specs = make_cases(args.phantoms, args.seed, dev=True)
        for n, sp in enumerate(specs):
            t = time.time()
            features_of_frames(render_training_frames(sp), rng, n, data)
            print(f"phantom {n + 1}/{len(specs)} ({time.time() - t:.1f} s)", flush=True)
        n_ph = len(specs)
    models = {}
    for kind, (X, y, grp) in data.items():
        X, y, grp = np.asarray(X), np.asarray(y), np.asarray(grp)
        held = grp >= int(0.8 * n_ph)
        m = fit_softmax(X[~held], y[~held], len(CLASSES), args.lam)
        mu, sd, W = m
        Xs = np.hstack([(X[held] - mu) / sd, np.ones((held.sum(), 1))])
        acc = float(np.mean((Xs @ W).argmax(1) == y[held])) if held.any() else float("nan")
        print(f"{kind}: {len(y)} windows, held-out accuracy per window {acc:.3f}")
        models[kind] = fit_softmax(X, y, len(CLASSES), args.lam)
    save_model(args.out, models, meta=f"phantoms={n_ph} seed={args.seed} lam={args.lam} dev seeds only")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
