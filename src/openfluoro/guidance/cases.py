"""Varied, seeded test cases for the guidance evaluation: phantom patients, views, dose modes,
needle paths and traction, rendered through a live ``Session``, with the ground truth kept
apart from the frames.

The guidance code sees only ``frame.image`` and ``frame.geometry``; everything in
``CaseRecord.truth`` / ``FrameRecord.truth`` is for scoring.

Development used phantom seeds below ``EVAL_SEED_FLOOR`` (``make_cases(..., dev=True)``);
evaluation cases draw theirs at or above it, so the detectors never saw them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Iterator

import numpy as np

from openfluoro.geometry.carm import Detector, Geometry
from openfluoro.scene.phantom import PhantomParams, cached_phantom
from openfluoro.scene.patient import Patient, patient_from_phantom

#: Phantom seeds of development cases are < this; evaluation cases use seeds >= this.
EVAL_SEED_FLOOR = 100_000
LEVELS = ("L2-L3", "L3-L4", "L4-L5")
TRACTION_RAMP_MM_S = 2.0
DOSE_MODES = ("low", "normal", "high")
VERTEBRA_NAMES = ("T12", "L1", "L2", "L3", "L4", "L5", "sacrum")
DISC_NAMES = ("T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")


@dataclass(frozen=True)
class CaseSpec:
    """One evaluation case (everything random is drawn here, from the case seed)."""

    index: int
    phantom: PhantomParams
    level: str
    dose_mode: str
    gauge: int
    off_midline_mm: float          # lateral shift of the skin entry (paramedian approach)
    entry_shift_z_mm: float        # cranio-caudal shift of the entry (changes the cranial angle)
    depth_fraction: float          # final inserted depth / planned skin-to-target distance
    iso_offset_mm: tuple[float, float, float]
    ap_view: str                   # "AP" or "PA"
    lat_view: str                  # "lateral_left" or "lateral_right"
    ap_jitter_deg: tuple[float, float]
    lat_jitter_deg: tuple[float, float]
    sid_mm: float
    pulse_rate_pps: float
    traction_mm: float             # 0 = no traction part
    noise_seed: int
    # collimator field at the detector (width, height) in mm, None = open; the same for every view
    collimation_mm: tuple[float | None, float | None] = (None, None)

    def describe(self) -> str:
        p = self.phantom
        return (f"case {self.index}: seed {p.seed} bmi {p.bmi:.0f} lordosis {p.lordosis_deg:.0f} "
                f"degen {p.disc_degeneration:.2f} bone {p.bone_density:.2f} {p.sex}; {self.level} "
                f"{self.gauge}G off-midline {self.off_midline_mm:+.0f} mm depth x{self.depth_fraction:.2f}; "
                f"{self.ap_view}/{self.lat_view} {self.dose_mode} dose, SID {self.sid_mm:.0f}"
                + (f"; traction {self.traction_mm:.1f} mm" if self.traction_mm else "")
                + ("; collimated to " + " x ".join("open" if v is None else f"{v:.0f}" for v in self.collimation_mm)
                   + " mm" if self.collimation_mm != (None, None) else ""))


def make_cases(n: int, seed: int, *, dev: bool = False, voxel_mm: float = 1.5) -> list[CaseSpec]:
    """``n`` varied cases from ``seed``; phantom seeds are disjoint between ``dev`` and evaluation."""
    rng = np.random.default_rng([seed, 7919 if dev else 104729])
    # a stream of its own, so that adding collimation left every other draw as it was
    coll_rng = np.random.default_rng([seed, 7919 if dev else 104729, 3])
    out = []
    for i in range(n):
        lo, hi = (1, EVAL_SEED_FLOOR) if dev else (EVAL_SEED_FLOOR, 2**31 - 1)
        pseed = int(rng.integers(lo, hi))
        degen = float(rng.choice([0.0, rng.uniform(0.0, 0.5), rng.uniform(0.3, 0.9)]))
        params = PhantomParams(
            voxel_mm=voxel_mm, bmi=float(rng.uniform(19.0, 36.0)), lordosis_deg=float(rng.uniform(25.0, 65.0)),
            scoliosis_deg=float(rng.choice([0.0, 0.0, rng.uniform(0.0, 12.0)])), disc_degeneration=degen,
            bone_density=float(rng.uniform(0.6, 1.2)), vertebra_scale=float(rng.uniform(0.9, 1.1)),
            sex=str(rng.choice(["M", "F"])), seed=pseed)
        off = float(rng.choice([0.0, 0.0, 1.0]) * rng.choice([-1.0, 1.0]) * rng.uniform(4.0, 12.0))
        out.append(CaseSpec(
            index=i, phantom=params, level=str(LEVELS[i % 3] if n >= 3 else rng.choice(LEVELS)),
            dose_mode=DOSE_MODES[(i // 3) % 3] if n >= 9 else str(rng.choice(DOSE_MODES)),
            gauge=int(rng.choice([20, 22, 22, 25])), off_midline_mm=off,
            entry_shift_z_mm=float(rng.uniform(-8.0, 8.0)), depth_fraction=float(rng.uniform(0.45, 1.08)),
            iso_offset_mm=(float(rng.uniform(-5, 5)), float(rng.uniform(-10, 10)), float(rng.uniform(-12, 12))),
            ap_view=str(rng.choice(["AP", "AP", "PA"])), lat_view=str(rng.choice(["lateral_left", "lateral_right"])),
            ap_jitter_deg=(float(rng.uniform(-3, 3)), float(rng.uniform(-3, 3))),
            lat_jitter_deg=(float(rng.uniform(-2, 2)), float(rng.uniform(-2, 2))),
            sid_mm=float(rng.uniform(950.0, 1150.0)), pulse_rate_pps=float(rng.choice([3.75, 7.5, 15.0])),
            traction_mm=float(rng.uniform(1.0, 3.5)) if rng.uniform() < 0.4 else 0.0,
            noise_seed=int(rng.integers(0, 2**31 - 1)), collimation_mm=_draw_collimation(coll_rng)))
    # shuffle levels and dose modes jointly so every combination appears for n >= 9
    return out


def _draw_collimation(rng: np.random.Generator) -> tuple[float | None, float | None]:
    """Half the cases are collimated, as a clinician cones down on the interspace: side blades,
    top and bottom blades, or both, to a field of 130-240 mm at the 300 mm panel (87-160 mm at
    the isocentre)."""
    kind = int(rng.integers(0, 6))
    w, h = float(rng.uniform(130.0, 240.0)), float(rng.uniform(150.0, 240.0))
    return ((w if kind in (3, 5) else None), (h if kind in (4, 5) else None))


@lru_cache(maxsize=4)
def case_patient(params: PhantomParams) -> Patient:
    return patient_from_phantom(cached_phantom(params))


@dataclass
class FrameRecord:
    """A frame as the guidance sees it (image + geometry) and its truth (for scoring only)."""

    role: str                      # "ap", "lateral", "baseline", "traction"
    image: np.ndarray
    geometry: Geometry
    truth: dict[str, Any] = field(default_factory=dict)
    dose_mode: str = "normal"
    events: tuple[str, ...] = ()


@dataclass
class CaseRecord:
    spec: CaseSpec | None
    frames: list[FrameRecord]
    truth: dict[str, Any]
    description: str = ""


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def disc_normals(landmarks: dict[str, Any]) -> dict[str, np.ndarray]:
    """Unit superior normal of each disc from the endplate corners of its two vertebrae."""
    verts = landmarks["vertebrae"]
    out = {}
    for d in DISC_NAMES:
        up, lo = d.split("-")
        lo = "sacrum" if lo == "S1" else lo
        if up not in verts or "endplate_corners" not in verts[up]:
            continue
        c = verts[up]["endplate_corners"]
        a = np.subtract(c["anterior_inferior"], c["posterior_inferior"])
        if lo in verts and "endplate_corners" in verts[lo]:
            c2 = verts[lo]["endplate_corners"]
            a = _unit(a) + _unit(np.subtract(c2["anterior_superior"], c2["posterior_superior"]))
        a = _unit(a)
        # superior normal in the sagittal plane, perpendicular to the AP direction of the endplates
        n = np.cross(a, [1.0, 0.0, 0.0])
        n = _unit(n if n[2] > 0 else -n)
        out[d] = n
    return out


def frame_truth(frame, patient: Patient, session) -> dict[str, Any]:
    """Scoring truth of one frame: needle, projected vertebrae and interspace heights."""
    g = frame.geometry
    lm = patient.landmarks
    t: dict[str, Any] = {}
    nd = frame.ground_truth.get("needle")
    if nd is not None:
        t["needle"] = {k: nd[k] for k in ("tip_px", "hub_px", "tip_lps_mm", "tip_tissue", "blocked", "csf_return")
                       if k in nd}
        t["needle"]["axis"] = list(session.needle.axis)
        t["needle"]["entry_lps_mm"] = list(map(float, session.needle.entry))
    motion = session.spine_motion()
    trans = motion.translations_mm() if motion is not None else {}
    opening = session.traction.per_disc_mm if motion is not None else 0.0
    verts = {}
    for name in VERTEBRA_NAMES:
        v = lm["vertebrae"].get(name)
        if v is None:
            continue
        shift = np.asarray(trans.get(name, np.zeros(3)), float)
        c = np.asarray(v["body_centre"], float) + shift
        rec = {"centre_px": g.project(c)[0].tolist(), "centre_lps_mm": c.tolist()}
        if "endplate_corners" in v:
            rec["corners_px"] = {k: g.project(np.asarray(p, float) + shift)[0].tolist()
                                 for k, p in v["endplate_corners"].items()}
        verts[name] = rec
    t["vertebrae"] = verts
    normals = disc_normals(lm)
    discs = {}
    for d in DISC_NAMES:
        ld = lm["discs"].get(d)
        if ld is None:
            continue
        axis = motion.spine.disc_axes.get(d) if motion is not None else None
        gain = opening * (abs(float(np.dot(axis, normals[d]))) if axis is not None and d in normals else 1.0)
        up, lo = d.split("-")
        lo = "sacrum" if lo == "S1" else lo
        shift = 0.5 * (np.asarray(trans.get(up, np.zeros(3)), float) + np.asarray(trans.get(lo, np.zeros(3)), float))
        centre = np.asarray(ld["centre"], float) + shift
        discs[d] = {"anterior_mm": ld["anterior_height_mm"] + gain, "middle_mm": ld["height_mm"] + gain,
                    "posterior_mm": ld["posterior_height_mm"] + gain, "opening_mm": opening,
                    "centre_px": g.project(centre)[0].tolist()}
    t["discs"] = discs
    if "traction" in frame.ground_truth:
        t["traction"] = {k: frame.ground_truth["traction"][k] for k in ("per_disc_mm", "target_per_disc_mm")}
    return t


def _wrap(deg: float) -> float:
    return float((deg + 180.0) % 360.0 - 180.0)


def _centre_on(session, point_lps_mm) -> None:
    iso = np.asarray(session.pose.isocentre_lps_mm, float)
    session.move_table(tuple(float(v) for v in (iso - np.asarray(point_lps_mm, float))))


def _record(frames, role, patient, session, mode) -> list[FrameRecord]:
    return [FrameRecord(role, f.image, f.geometry, frame_truth(f, patient, session), mode, f.events) for f in frames]


def run_case(spec: CaseSpec, size_px: int = 512, field_mm: float = 300.0) -> CaseRecord:
    """Render one case: AP needle advance, lateral confirmation, and (if any) a traction run."""
    from openfluoro.fluoro.session import Session

    patient = case_patient(spec.phantom)
    lm = patient.landmarks
    det = Detector.square(size_px, field_mm)
    plan = lm["needle"][spec.level]
    disc_c = np.asarray(lm["discs"][spec.level]["centre"], float)
    centre = disc_c + np.asarray(spec.iso_offset_mm)
    records: list[FrameRecord] = []

    s = Session.for_patient(patient, detector=det, seed=spec.noise_seed)
    s.set_pulse_rate(spec.pulse_rate_pps)
    s.set_dose_mode(spec.dose_mode)
    if spec.collimation_mm != (None, None):
        s.set_collimation(*spec.collimation_mm)
    _centre_on(s, centre)
    lat_primary = 90.0 if spec.lat_view == "lateral_left" else -90.0

    # -- traction on a lateral (before the needle goes in)
    if spec.traction_mm > 0:
        s.move_carm(lat_primary + spec.lat_jitter_deg[0], spec.lat_jitter_deg[1], sid_mm=spec.sid_mm)
        records += _record(s.run(3.0 / spec.pulse_rate_pps), "baseline", patient, s, spec.dose_mode)
        s.set_traction(distraction_mm=spec.traction_mm, ramp_mm_per_s=TRACTION_RAMP_MM_S)
        records += _record(s.run(spec.traction_mm / TRACTION_RAMP_MM_S + 0.01), "ramp", patient, s, spec.dose_mode)
        records += _record(s.run(3.0 / spec.pulse_rate_pps), "traction", patient, s, spec.dose_mode)
        s.set_traction(force_n=0.0, ramp_mm_per_s=100.0)
        s.run(1.0 / spec.pulse_rate_pps)
        s.pedal_up()

    # -- needle: AP advance, then lateral
    s.set_view(spec.ap_view)
    s.move_carm(_wrap(s.pose.primary_deg + spec.ap_jitter_deg[0]), spec.ap_jitter_deg[1], sid_mm=spec.sid_mm)
    entry = np.asarray(plan["entry"], float) + np.array([spec.off_midline_mm, 0.0, spec.entry_shift_z_mm])
    target = np.asarray(plan["target"], float)
    full = float(np.linalg.norm(target - entry))
    final_depth = max(12.0, spec.depth_fraction * full)
    length = 90.0 if final_depth < 80.0 else 127.0
    s.insert_needle(entry, target, gauge=spec.gauge, length_mm=length, depth_mm=min(8.0, final_depth))
    frames = s.run(2.0 / spec.pulse_rate_pps)
    steps = 3
    for _ in range(steps):
        s.advance_needle((final_depth - min(8.0, final_depth)) / steps)
        frames += s.run(2.0 / spec.pulse_rate_pps)
    frames += s.run(2.0 / spec.pulse_rate_pps)
    s.pedal_up()
    records += _record(frames, "ap", patient, s, spec.dose_mode)
    s.move_carm(lat_primary + spec.lat_jitter_deg[0], spec.lat_jitter_deg[1])
    frames = s.run(4.0 / spec.pulse_rate_pps)
    s.pedal_up()
    records += _record(frames, "lateral", patient, s, spec.dose_mode)

    truth = {"level": spec.level, "plan": {k: plan[k] for k in ("entry", "target")},
             "traction_mm": spec.traction_mm, "sac": lm.get("thecal_sac")}
    return CaseRecord(spec, records, truth, spec.describe())


def iter_cases(specs: list[CaseSpec], **kw) -> Iterator[CaseRecord]:
    for spec in specs:
        yield run_case(spec, **kw)


def spec_dict(spec: CaseSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["phantom"] = asdict(spec.phantom)
    return d
