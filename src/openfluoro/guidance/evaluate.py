"""Accuracy of the guidance against the simulator's ground truth (``openfluoro evaluate guidance``).

For ``N`` seeded cases (``cases.make_cases``: phantom patients never used in development,
AP/PA and left/right laterals with jittered angles and SID, low/normal/high dose, needles to
L2-L3/L3-L4/L4-L5, some paramedian, some stopped short or past the sac, 22/20/25 G,
traction in about 40 % of cases, and half of the cases collimated: side blades, top and
bottom blades or both) the frames are rendered by a live ``Session`` and given to
the guidance as image + geometry only. The ground truth is used only here, to score:

* **needle**: detection rate (all frames with a needle; and frames where the needle is
  visible at all in the displayed image -- the chain's automatic window can clip it to white
  in the soft tissue of a lateral, and a blade can hide its tip); tip error in mm at the
  isocentre (pixel distance to the projected true tip x pitch / magnification), median and
  95th percentile;
* **levels**: per view, the fraction of frames in which the target interspace is found
  (within 8 mm) and correctly named; and the fraction of all named interspaces that are right;
* **interspaces** (laterals): anterior/middle/posterior height errors against the phantom's
  disc geometry (plus the traction opening), matched by position; and the error of the
  measured change under traction;
* **depth**: the 3-D tip triangulated from the last AP and lateral frames vs the true tip
  (Euclidean), and the error of the tip-to-dura distance along the needle's axis;
* **decompression**: the monitor's verdict vs the truth (the planned opening was reached).

The last printed line is machine-readable:
``tip_median_mm=.. tip_p95_mm=.. detection_rate=.. level_accuracy=.. interspace_mae_mm=.. depth_mae_mm=..``
(normal-dose tip statistics; detection rate over visible needles; level accuracy over both
views; interspace MAE over the three positions; depth = 3-D tip error).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from openfluoro.geometry.carm import Geometry
from openfluoro.guidance.cases import CaseRecord, FrameRecord, case_patient, make_cases, run_case
from openfluoro.guidance.decompression import DecompressionMonitor
from openfluoro.guidance.depth import SacModel, distance_to_sac, epipolar_line, needle_from_views
from openfluoro.guidance.interspace import InterspaceTracker, measure_interspaces
from openfluoro.guidance.levels import (NAMING_CONFIDENCE_MIN, LevelResult, count_uncertain, detect_levels,
                                        endplate_segments, reconcile_names)
from openfluoro.guidance.needle import NeedleDetection, NeedleTracker

MATCH_MM = 8.0


def mm_per_px(g: Geometry) -> float:
    return 1.0 / g.px_per_mm_at_isocentre


def needle_visible(fr: FrameRecord, min_fraction: float = 0.15) -> bool:
    """Ground-truth visibility: the tip lies in the irradiated field and some of the true
    needle's projected segment lies over unclipped image (display < 250 and > 5) in that
    field -- evaluation only. (Behind the collimator's blades nothing can be seen.)"""
    nd = fr.truth.get("needle")
    if nd is None:
        return False
    a, b = np.asarray(nd["tip_px"]), np.asarray(nd["hub_px"])
    rows, cols = fr.image.shape
    field = fr.geometry.collimator.field_px(fr.geometry.detector) or (0, rows, 0, cols)
    r0, r1, c0, c1 = field[0] + 1, field[1] - 1, field[2] + 1, field[3] - 1
    if not (c0 <= a[0] < c1 and r0 <= a[1] < r1):
        return False
    ts = np.linspace(0.0, 1.0, 200)
    pts = a[None, :] + ts[:, None] * (b - a)[None, :]
    ins = (pts[:, 0] >= c0) & (pts[:, 0] < c1) & (pts[:, 1] >= r0) & (pts[:, 1] < r1)
    if ins.sum() < 3:
        return False
    p = np.rint(pts[ins]).astype(int)
    v = fr.image[p[:, 1], p[:, 0]]
    return float(np.mean((v < 250) & (v > 5))) >= min_fraction or float(np.mean(v < 250)) >= min_fraction


@dataclass
class FrameScore:
    case: int
    view: str
    dose: str
    visible: bool
    found: bool
    tip_err_mm: float = math.nan


@dataclass
class Scores:
    frames: list[FrameScore] = field(default_factory=list)
    level: list[dict] = field(default_factory=list)          # per view frame: target ok, named ok/total
    heights: list[dict] = field(default_factory=list)        # per measured disc
    changes: list[dict] = field(default_factory=list)        # traction change per disc
    depth: list[dict] = field(default_factory=list)          # per case
    verdicts: list[dict] = field(default_factory=list)
    timings_ms: list[float] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)


def _disc_truth_px(fr: FrameRecord) -> dict[str, np.ndarray]:
    return {d: np.asarray(v["centre_px"], float) for d, v in fr.truth.get("discs", {}).items() if "centre_px" in v}


def score_levels(res: LevelResult, fr: FrameRecord, target: str | None) -> dict:
    g = fr.geometry
    k = mm_per_px(g)
    truth = {d: p for d, p in _disc_truth_px(fr).items()
             if 8 <= p[0] < fr.image.shape[1] - 8 and 8 <= p[1] < fr.image.shape[0] - 8}
    named_ok = named = 0
    for d in res.discs:
        if not d.name:
            continue
        dists = {n: float(np.hypot(*(np.asarray(d.centre_px) - p))) * k for n, p in truth.items()}
        if not dists:
            continue
        n_near = min(dists, key=dists.get)
        if dists[n_near] > MATCH_MM:
            continue
        named += 1
        named_ok += int(n_near == d.name)
    tgt_ok = None
    if target is not None and target in truth:
        mine = res.disc(target)
        tgt_ok = bool(mine is not None and float(np.hypot(*(np.asarray(mine.centre_px) - truth[target]))) * k <= MATCH_MM)
    return {"view": res.view, "target_ok": tgt_ok, "named_ok": named_ok, "named": named, "dose": fr.dose_mode,
            "collimated": fr.geometry.collimator.field_px(fr.geometry.detector) is not None}


def score_heights(heights, fr: FrameRecord) -> list[dict]:
    g = fr.geometry
    k = mm_per_px(g)
    truth = _disc_truth_px(fr)
    out = []
    for h in heights:
        dists = {n: float(np.hypot(*(np.asarray(h.centre_px) - p))) * k for n, p in truth.items()}
        if not dists:
            continue
        n = min(dists, key=dists.get)
        if dists[n] > MATCH_MM:
            continue
        t = fr.truth["discs"][n]
        out.append({"disc": n, "name_ok": h.name == n, "dose": fr.dose_mode,
                    "err_ant": h.anterior_mm - t["anterior_mm"], "err_mid": h.middle_mm - t["middle_mm"],
                    "err_post": h.posterior_mm - t["posterior_mm"]})
    return out


def _needle_run(frames: list[FrameRecord], scores: Scores, case: int, view: str,
                midline=None, epipolar=None, exclude=()) -> tuple[NeedleDetection | None, Geometry | None]:
    tr = NeedleTracker()
    if midline is not None:
        tr.midline_px, tr.midline_dir = midline
    tr.epipolar_line = epipolar
    tr.exclude_segments = list(exclude)
    last = None
    geo = None
    for fr in frames:
        t = time.perf_counter()
        det = tr.update(fr.image, fr.geometry)
        scores.timings_ms.append(1000.0 * (time.perf_counter() - t))
        vis = needle_visible(fr)
        fs = FrameScore(case, view, fr.dose_mode, vis, det.found)
        if det.found:
            fs.tip_err_mm = float(np.hypot(*(np.asarray(det.tip_px) - np.asarray(fr.truth["needle"]["tip_px"])))) * \
                mm_per_px(fr.geometry)
            last, geo = det, fr.geometry
        else:
            last = None
        scores.frames.append(fs)
    return last, geo


def score_depth(det_ap: NeedleDetection, g_ap: Geometry, det_lat: NeedleDetection, g_lat: Geometry,
                last_lateral: FrameRecord, case: int, patient=None) -> dict:
    """3-D tip from an AP and a lateral detection vs the true tip; with a patient that has a
    sac, also the error of the tip-to-dura distance along the needle's axis."""
    a, b, c = epipolar_line(g_lat, det_lat.tip_px, g_ap)
    tip_ap, tail_ap = det_ap.tip_px, det_ap.tail_px
    if abs(a * tail_ap[0] + b * tail_ap[1] + c) < abs(a * tip_ap[0] + b * tip_ap[1] + c) - 2.0:
        tip_ap, tail_ap = tail_ap, tip_ap          # the other end agrees with the lateral
    n3 = needle_from_views([g_ap, g_lat], [tip_ap, det_lat.tip_px], [tail_ap, det_lat.tail_px])
    truth = last_lateral.truth["needle"]
    true_tip = np.asarray(truth["tip_lps_mm"], float)
    out = {"case": case, "dose": last_lateral.dose_mode,
           "err_mm": float(np.linalg.norm(np.asarray(n3.tip_lps_mm) - true_tip)), "gap_mm": n3.ray_gap_mm}
    if patient is not None and n3.axis_lps is not None:
        sac = SacModel(patient)
        if sac.available:
            mine = distance_to_sac(n3.tip_lps_mm, n3.axis_lps, sac)
            true = distance_to_sac(true_tip, truth["axis"], sac)
            if mine is not None and true is not None and math.isfinite(true.distance_mm) \
                    and math.isfinite(mine.distance_mm):
                out["sac_err_mm"] = mine.distance_mm - true.distance_mm
    return out


def _midline(res: LevelResult):
    from openfluoro.guidance.puncture import PunctureGuide

    return PunctureGuide._midline(res)


def _score_level_views(ap: list[FrameRecord], lat: list[FrameRecord], target: str | None, scores: Scores,
                       case: int) -> tuple[LevelResult | None, LevelResult | None]:
    """Levels once per pose, on the pose's last frame, scored per view and with the AP named
    from the lateral (noting whether the two views' names conflict)."""
    lv_ap = detect_levels(ap[-1].image, ap[-1].geometry) if ap else None
    lv_lat = detect_levels(lat[-1].image, lat[-1].geometry) if lat else None
    for res, fr in ((lv_ap, ap[-1] if ap else None), (lv_lat, lat[-1] if lat else None)):
        if res is not None and fr is not None:
            scores.level.append({"case": case, **score_levels(res, fr, target)})
    if lv_ap is not None and lv_lat is not None:
        two, _ = reconcile_names(lv_ap, ap[-1].geometry, lv_lat, lat[-1].geometry)
        scores.level.append({"case": case, **score_levels(two, ap[-1], target), "view": "ap+lateral",
                             "conflict": bool(two.name_conflicts), "uncertain": count_uncertain(lv_ap, lv_lat)})
    return lv_ap, lv_lat


def evaluate_case(rec: CaseRecord, scores: Scores, patient=None) -> None:
    spec = rec.spec
    case = spec.index if spec is not None else len(scores.cases)
    target = rec.truth.get("level")
    by_role: dict[str, list[FrameRecord]] = {}
    for fr in rec.frames:
        by_role.setdefault(fr.role, []).append(fr)
    ap, lat = by_role.get("ap", []), by_role.get("lateral", [])
    lv_ap, lv_lat = _score_level_views(ap, lat, target, scores, case)
    # needle: AP run, then lateral run (epipolar of the AP tip is no help for a long lateral
    # needle, so only the tracker and anatomy decide there)
    det_ap, g_ap = _needle_run(ap, scores, case, "ap", _midline(lv_ap) if lv_ap is not None else None)
    det_lat, g_lat = _needle_run(lat, scores, case, "lateral",
                                 exclude=endplate_segments(lv_lat) if lv_lat is not None else ())
    # depth from the last AP and lateral frames (the needle did not move in between)
    if det_ap is not None and det_lat is not None:
        scores.depth.append(score_depth(det_ap, g_ap, det_lat, g_lat, lat[-1], case, patient))
    # interspaces on the lateral (needle in, no traction)
    if lv_lat is not None:
        scores.heights.extend({"case": case, **h} for h in score_heights(measure_interspaces(lat[-1].image, lat[-1].geometry, lv_lat), lat[-1]))
    # traction: baseline, ramp, hold
    base, ramp, trac = by_role.get("baseline", []), by_role.get("ramp", []), by_role.get("traction", [])
    if base and trac:
        tr = InterspaceTracker()
        hb = tr.update(base[-1].image, base[-1].geometry)
        mon = DecompressionMonitor(planned_mm=float(rec.truth.get("traction_mm") or 1.0))
        mon.add_baseline(hb)
        hc = hb
        mid_v = None
        for n_fr, fr in enumerate(ramp + trac):
            t = time.perf_counter()
            hc = tr.update(fr.image, fr.geometry)
            scores.timings_ms.append(1000.0 * (time.perf_counter() - t))
            v = mon.update(hc)
            tt = fr.truth.get("traction", {})
            if mid_v is None and 0.3 < tt.get("per_disc_mm", 0.0) / max(tt.get("target_per_disc_mm", 1.0), 1e-6) < 0.6:
                mid_v = v.verdict
                scores.verdicts.append({"case": case, "verdict": v.verdict, "truth": "not_reached", "stage": "ramp"})
        k = mm_per_px(base[-1].geometry)
        truth_b, truth_c = base[-1].truth["discs"], trac[-1].truth["discs"]
        tb = _disc_truth_px(base[-1])
        base_by = {}
        for h in hb:
            n = min(tb, key=lambda d: float(np.hypot(*(np.asarray(h.centre_px) - tb[d]))))
            if float(np.hypot(*(np.asarray(h.centre_px) - tb[n]))) * k <= MATCH_MM:
                base_by[id(h)] = n
        cur_by_name = {h.name: h for h in hc if h.name}
        for h in hb:
            n = base_by.get(id(h))
            if n is None or h.name is None or h.name not in cur_by_name:
                continue
            c = cur_by_name[h.name]
            dg = truth_c[n]["middle_mm"] - truth_b[n]["middle_mm"]
            scores.changes.append({"case": case, "disc": n, "dose": base[-1].dose_mode,
                                   "err_mid": (c.middle_mm - h.middle_mm) - dg,
                                   "err_ant": (c.anterior_mm - h.anterior_mm) - dg,
                                   "err_post": (c.posterior_mm - h.posterior_mm) - dg})
        reached = trac[-1].truth.get("traction", {})
        truth_v = "reached" if abs(reached.get("per_disc_mm", 0) - reached.get("target_per_disc_mm", 0)) < 1e-6 else "not_reached"
        scores.verdicts.append({"case": case, "verdict": v.verdict, "truth": truth_v, "stage": "hold"})


def _fmt(v, f="{:.2f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f.format(v)


def summarise(scores: Scores) -> tuple[str, dict[str, float]]:
    lines = []
    modes = ["low", "normal", "high"]

    def tips(sel):
        e = np.array([f.tip_err_mm for f in sel if f.found and math.isfinite(f.tip_err_mm)])
        return (float(np.median(e)) if e.size else math.nan, float(np.percentile(e, 95)) if e.size else math.nan, e.size)

    def det_rate(sel, visible_only):
        s = [f for f in sel if f.visible or not visible_only]
        return (float(np.mean([f.found for f in s])) if s else math.nan, len(s))

    def lvl(sel, view):
        s = [r for r in sel if r["view"] == view and r["target_ok"] is not None]
        return (float(np.mean([r["target_ok"] for r in s])) if s else math.nan, len(s))

    def mae(sel, keys=("err_ant", "err_mid", "err_post")):
        e = [abs(r[k]) for r in sel for k in keys]
        return float(np.mean(e)) if e else math.nan

    hdr = (f"{'dose':7s} {'frames':>6s} {'det(vis)':>8s} {'det(all)':>8s} {'tip med':>7s} {'tip p95':>7s} "
           f"{'lvl AP':>6s} {'lvl LAT':>7s} {'AP+LAT':>6s} {'disc ant':>8s} {'mid':>5s} {'post':>5s} {'trac Δ':>6s} "
           f"{'depth':>6s} {'sac':>5s}")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for mode in modes + ["all"]:
        F = [f for f in scores.frames if mode == "all" or f.dose == mode]
        L = [r for r in scores.level if mode == "all" or r["dose"] == mode]
        H = [r for r in scores.heights if mode == "all" or r["dose"] == mode]
        C = [r for r in scores.changes if mode == "all" or r["dose"] == mode]
        D = [r for r in scores.depth if mode == "all" or r["dose"] == mode]
        med, p95, _ = tips(F)
        dv, _ = det_rate(F, True)
        da, _ = det_rate(F, False)
        la, _ = lvl(L, "ap")
        ll, _ = lvl(L, "lateral")
        l2, _ = lvl(L, "ap+lateral")
        dep = float(np.mean([r["err_mm"] for r in D])) if D else math.nan
        sac = [abs(r["sac_err_mm"]) for r in D if "sac_err_mm" in r]
        lines.append(f"{mode:7s} {len(F):6d} {_fmt(dv):>8s} {_fmt(da):>8s} {_fmt(med):>7s} {_fmt(p95):>7s} "
                     f"{_fmt(la):>6s} {_fmt(ll):>7s} {_fmt(l2):>6s} {_fmt(mae(H, ('err_ant',))):>8s} {_fmt(mae(H, ('err_mid',))):>5s} "
                     f"{_fmt(mae(H, ('err_post',))):>5s} {_fmt(mae(C, ('err_mid',))):>6s} {_fmt(dep):>6s} "
                     f"{_fmt(float(np.mean(sac)) if sac else math.nan):>5s}")
    # per view tip errors
    for view in ("ap", "lateral"):
        F = [f for f in scores.frames if f.view == view]
        med, p95, n = tips(F)
        dv, nv = det_rate(F, True)
        lines.append(f"  {view:8s} tip median {_fmt(med)} mm, p95 {_fmt(p95)} mm over {n} detections; "
                     f"detection {_fmt(dv)} of {nv} frames with a visible needle")
    named = sum(r["named"] for r in scores.level if r["view"] != "ap+lateral")
    named_ok = sum(r["named_ok"] for r in scores.level if r["view"] != "ap+lateral")
    lines.append(f"  named interspaces correct: {named_ok}/{named}")
    per_view = [r for r in scores.level if r["view"] in ("ap", "lateral") and r["target_ok"] is not None]
    if any(r.get("collimated") for r in per_view):
        part = {c: [r["target_ok"] for r in per_view if bool(r.get("collimated")) == c] for c in (False, True)}
        lines.append(f"  target interspace named right per view: open field {sum(part[False])}/{len(part[False])}, "
                     f"collimated {sum(part[True])}/{len(part[True])}")
    both = [r for r in scores.level if r["view"] == "ap+lateral"]
    if both:
        wrong = [r for r in both if r["target_ok"] is False]
        lines.append(f"  AP and lateral name an interspace differently (warned) in {sum(r['conflict'] for r in both)}"
                     f"/{len(both)} cases; of the {len(wrong)} whose target the two views name wrong, "
                     f"{sum(r['conflict'] for r in wrong)} warned")
        flagged = [r for r in both if r["uncertain"] and not r["conflict"]]
        lines.append(f"  the two views agree but name with confidence under {NAMING_CONFIDENCE_MIN} (warned: count "
                     f"uncertain) in {len(flagged)}/{len(both)} cases; warned either way: "
                     f"{sum(r['conflict'] or r['uncertain'] for r in wrong)} of the {len(wrong)} named wrong, "
                     f"{sum(r['conflict'] or r['uncertain'] for r in both if r['target_ok'] is not False)} of the "
                     f"{sum(r['target_ok'] is not False for r in both)} named right")
    if scores.verdicts:
        ok = sum(v["verdict"] == v["truth"] for v in scores.verdicts)
        lines.append(f"  decompression verdicts matching the truth: {ok}/{len(scores.verdicts)} "
                     f"({', '.join(sorted(set(v['verdict'] for v in scores.verdicts)))})")
    if scores.timings_ms:
        t = np.array(scores.timings_ms)
        lines.append(f"  per-frame tracking time: median {np.median(t):.1f} ms, p95 {np.percentile(t, 95):.1f} ms")
    Fn = [f for f in scores.frames if f.dose == "normal"]
    med_n, p95_n, _ = tips(Fn)
    dv_all, _ = det_rate(scores.frames, True)
    lv = [r["target_ok"] for r in scores.level if r["target_ok"] is not None and r["view"] in ("ap", "lateral")]
    H = scores.heights
    summary = {"tip_median_mm": med_n, "tip_p95_mm": p95_n, "detection_rate": dv_all,
               "level_accuracy": float(np.mean(lv)) if lv else math.nan, "interspace_mae_mm": mae(H),
               "depth_mae_mm": float(np.mean([r["err_mm"] for r in scores.depth])) if scores.depth else math.nan}
    return "\n".join(lines), summary


def last_line(summary: dict[str, float]) -> str:
    keys = ("tip_median_mm", "tip_p95_mm", "detection_rate", "level_accuracy", "interspace_mae_mm", "depth_mae_mm")
    return " ".join(f"{k}={_fmt(summary[k], '{:.3f}')}" for k in keys)


def evaluate_guidance(n_cases: int, seed: int, progress: Callable[[str], None] | None = None,
                      size_px: int = 512, voxel_mm: float = 1.5) -> tuple[Scores, str, dict[str, float]]:
    scores = Scores()
    specs = make_cases(n_cases, seed, voxel_mm=voxel_mm)
    for sp in specs:
        t = time.time()
        rec = run_case(sp, size_px=size_px)
        evaluate_case(rec, scores, case_patient(sp.phantom))
        scores.cases.append(rec.description)
        if progress is not None:
            progress(f"{rec.description} [{time.time() - t:.1f} s]")
    table, summary = summarise(scores)
    return scores, table, summary


# ----------------------------------------------------------------------------------- real CT
def ct_spine_landmarks(patient) -> dict[str, Any]:
    """Vertebral body centres and interspace centres of a CT, in LPS mm.

    Labelled vertebrae (TotalSegmentator ids, any of T11-L5/sacrum) give their bodies: the
    anterior 30 mm of each label. Below the lowest *completely* labelled body the column is
    continued from the CT itself: one level step (the mean of the labelled steps) at a time,
    each body re-centred on the dense bone (> 180 HU) of its slab. Interspace centres are the
    midpoints of consecutive bodies. Rough below the labels: the mean labelled step is a
    thoracic one, shorter than a lumbar vertebra (on the example CT the continued interspaces
    are 7-24 mm too high at L2-L3..L4-L5); ``evaluate_volume(levels_path=...)`` takes
    interspaces read from the CT instead (``tests/data/totalsegmentator_example_levels.json``).
    """
    vol = patient.volume
    A = vol.affine_lps
    hu = vol.hu
    order = ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"]
    bodies: dict[str, np.ndarray] = {}
    complete: list[str] = []
    labels = patient.labels
    if labels is not None:
        for lab_id, name in patient.label_names.items():
            if name not in order:
                continue
            m = labels == lab_id
            if not m.any():
                continue
            kk, jj, ii = np.nonzero(m)
            P = np.stack([ii, jj, kk], 1) @ A[:3, :3].T + A[:3, 3]
            body = P[P[:, 1] < P[:, 1].min() + 30.0]
            bodies[name] = body.mean(0)
            # usable for the column if large and not cut by the lower end of the label map
            # (a cut at the CT's top end leaves most of a body in place)
            ks = np.nonzero(labels.any(axis=(1, 2)))[0]
            if kk.min() > ks.min() and kk.size >= 1500:
                complete.append(name)
    known = [n for n in order if n in complete]
    if len(known) < 2:
        raise ValueError(f"{patient.description}: need two completely labelled vertebrae to follow the column; "
                         f"found {known or 'none'}")
    steps = [bodies[b] - bodies[a] for a, b in zip(known[:-1], known[1:])]
    step = np.mean(steps, axis=0)
    last = known[-1]
    cur = bodies[last].copy()
    nk, nj, ni = hu.shape
    for name in order[order.index(last) + 1:]:
        guess = cur + step
        # re-centre on dense bone in the slab of the guessed body
        ijk = np.rint(vol.lps_to_index(guess[None, :])[0]).astype(int)
        if not (0 <= ijk[2] < nk):
            break
        dk = max(1, int(round(8.0 / abs(A[2, 2]))))
        r = int(round(22.0 / abs(A[0, 0])))
        k0, k1 = max(0, ijk[2] - dk), min(nk, ijk[2] + dk + 1)
        j0, j1 = max(0, ijk[1] - r), min(nj, ijk[1] + r + 1)
        i0, i1 = max(0, ijk[0] - r), min(ni, ijk[0] + r + 1)
        sub = hu[k0:k1, j0:j1, i0:i1]
        kk, jj, ii = np.nonzero(sub > 180)
        if kk.size > 30:
            P = np.stack([ii + i0, jj + j0, kk + k0], 1) @ A[:3, :3].T + A[:3, 3]
            c = P.mean(0)
            guess = np.array([c[0], c[1], guess[2]])
        bodies[name] = guess
        cur = guess
    names = [n for n in order if n in bodies]
    discs = {f"{a}-{b}": {"centre": list(0.5 * (bodies[a] + bodies[b]))} for a, b in zip(names[:-1], names[1:])}
    return {"vertebrae": {n: {"body_centre": list(bodies[n])} for n in names}, "discs": discs,
            "labelled": complete}


def _ct_needle_plan(patient, disc_centre: np.ndarray, cranial_deg: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Entry and target for a midline puncture at an interspace of a CT: target in the canal
    (8 mm behind the back of the body at the disc level), entry where the track leaves the skin."""
    vol = patient.volume
    c = np.asarray(disc_centre, float)
    # back of the body: first soft voxel going posterior (+y) from the body centre, just above the disc
    probe = c + np.array([0.0, 0.0, 6.0])
    y_back = None
    for t in np.arange(0.0, 60.0, 1.0):
        _, h = patient.tissue_at(probe + np.array([0.0, t, 0.0]))
        if t > 8.0 and h < 150.0:
            y_back = probe[1] + t
            break
    if y_back is None:
        y_back = c[1] + 20.0
    target = np.array([c[0], y_back + 8.0, c[2]])
    a = math.radians(cranial_deg)
    d = np.array([0.0, -math.cos(a), math.sin(a)])         # anterior + cranial: hub -> tip
    entry = target.copy()
    for t in np.arange(0.0, 250.0, 1.0):
        p = target - t * d
        _, h = patient.tissue_at(p)
        if h < -400.0:
            entry = target - (t - 1.0) * d
            break
    return entry, target


def read_levels_file(path) -> dict[str, dict]:
    """Interspace centres of a CT read from the CT itself (``tests/data/make_ct_levels.py``):
    ``{"discs": {name: {"centre": [x, y, z], "uncertain": bool?}}}``; uncertain ones are dropped."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        data = json.loads(path.read_text())
        discs = data["discs"]
        out = {n: {"centre": [float(v) for v in d["centre"]]} for n, d in discs.items() if not d.get("uncertain")}
    except FileNotFoundError:
        raise ValueError(f"{path}: no such levels file") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a levels file ({{'discs': {{name: {{'centre': [x, y, z]}}}}}}): {exc}") from None
    if any(len(d["centre"]) != 3 for d in out.values()):
        raise ValueError(f"{path}: discs.*.centre must be [x, y, z] in LPS mm")
    return out


def evaluate_volume(ct_path, labels_path=None, label_offset_k: int = 0, n_cases: int = 6, seed: int = 0,
                    progress: Callable[[str], None] | None = None, size_px: int = 512, levels_path=None
                    ) -> tuple[Scores, str, dict[str, float]]:
    """The guidance on a real CT: C-arm centred on interspaces found from the labels and the CT,
    AP and lateral frames with a midline needle (low/normal/high dose). Scored: needle, tip,
    depth (exact: the session knows the needle) and level naming (against the CT-derived
    interspaces); no interspace heights or traction (no disc geometry or movable segments)."""
    from openfluoro.fluoro.session import Session
    from openfluoro.geometry.carm import Detector
    from openfluoro.guidance.cases import CaseRecord, FrameRecord, _centre_on
    from openfluoro.scene.patient import load_patient

    patient = load_patient(ct_path, labels_path, label_offset_k)
    lm = ct_spine_landmarks(patient)
    if levels_path is not None:
        lm["discs"] = read_levels_file(levels_path)
    rng = np.random.default_rng([seed, 31337])
    levels = [d for d in ("L1-L2", "L2-L3", "L3-L4", "L4-L5") if d in lm["discs"]]
    if not levels:
        raise ValueError(f"{ct_path}: no lumbar interspace found")
    scores = Scores()
    det = Detector.square(size_px, 300.0)
    modes = ("low", "normal", "high")
    for i in range(n_cases):
        t0 = time.time()
        level = levels[i % len(levels)]
        mode = modes[(i // len(levels)) % 3]
        centre = np.asarray(lm["discs"][level]["centre"], float) + rng.uniform(-8, 8, 3) * np.array([0.5, 0.5, 1.0])
        entry, target = _ct_needle_plan(patient, lm["discs"][level]["centre"], float(rng.uniform(0.0, 15.0)))
        s = Session(patient, detector=det, seed=int(rng.integers(0, 2**31 - 1)))
        s.set_dose_mode(mode)
        _centre_on(s, centre)
        frames: list[FrameRecord] = []

        def truth(fr) -> dict:
            g = fr.geometry
            t = {"discs": {d: {"centre_px": g.project(np.asarray(v["centre"], float))[0].tolist()}
                           for d, v in lm["discs"].items()}}
            nd = fr.ground_truth.get("needle")
            if nd is not None:
                t["needle"] = {"tip_px": nd["tip_px"], "hub_px": nd["hub_px"], "tip_lps_mm": nd["tip_lps_mm"],
                               "axis": list(s.needle.axis)}
            return t

        s.set_view("AP")
        s.move_carm(180.0 - float(rng.uniform(0, 3)), float(rng.uniform(-3, 3)))
        depth_full = float(np.linalg.norm(target - entry))
        s.insert_needle(entry, target, gauge=22, length_mm=90.0 if depth_full < 80 else 127.0, depth_mm=8.0)
        fs = s.run(0.3)
        for _ in range(3):
            s.advance_needle(max(0.0, (depth_full * float(rng.uniform(0.7, 1.0)) - 8.0) / 3.0))
            fs += s.run(0.3)
        s.pedal_up()
        frames += [FrameRecord("ap", f.image, f.geometry, truth(f), mode, f.events) for f in fs]
        s.move_carm(90.0 + float(rng.uniform(-2, 2)), float(rng.uniform(-2, 2)))
        fs = s.run(0.5)
        s.pedal_up()
        frames += [FrameRecord("lateral", f.image, f.geometry, truth(f), mode, f.events) for f in fs]
        rec = CaseRecord(None, frames, {"level": level}, f"CT case {i}: {level}, {mode} dose")
        _evaluate_ct_case(rec, scores, i)
        scores.cases.append(rec.description)
        if progress is not None:
            progress(f"{rec.description} [{time.time() - t0:.1f} s]")
    table, summary = summarise(scores)
    order = ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"]
    lowest = max(lm["labelled"], key=order.index)
    note = (f"CT interspaces from {levels_path}" if levels_path is not None else
            f"CT interspaces below {lowest} (the lowest usable labelled vertebra) are placed by stepping down "
            f"the column (rough: the thoracic step); give --levels for better") + \
        "; no disc heights, traction or sac on this CT"
    return scores, table + "\n  " + note, summary


def _evaluate_ct_case(rec: CaseRecord, scores: Scores, case: int) -> None:
    by_role: dict[str, list[FrameRecord]] = {}
    for fr in rec.frames:
        by_role.setdefault(fr.role, []).append(fr)
    ap, lat = by_role.get("ap", []), by_role.get("lateral", [])
    target = rec.truth.get("level")
    lv_ap, lv_lat = _score_level_views(ap, lat, target, scores, case)
    det_ap, g_ap = _needle_run(ap, scores, case, "ap", _midline(lv_ap) if lv_ap is not None else None)
    det_lat, g_lat = _needle_run(lat, scores, case, "lateral",
                                 exclude=endplate_segments(lv_lat) if lv_lat is not None else ())
    if det_ap is not None and det_lat is not None:
        scores.depth.append(score_depth(det_ap, g_ap, det_lat, g_lat, lat[-1], case))
