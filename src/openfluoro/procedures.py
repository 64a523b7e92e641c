"""Scripted procedures: a lumbar puncture and a traction (decompression) study, end to end.

An orchestration layer above the pipeline (like the CLI): it drives the fluoro stage and
hands the recorded run to the outputs stage for the cine.

Each drives a ``Session`` through a standard sequence, records every frame as it is
acquired (``fluoro.record``), and writes next to the run a cine, the dose summary and
a procedure summary with the ground truth.

Lumbar puncture (prone patient, the C-arm's beam entering anteriorly, i.e. the "AP"
view with the detector over the back): AP localisation; the needle placed at the
skin over the chosen interspace, aimed at the thecal sac (the phantom's recommended
entry and target); advance in 2 mm steps under pulsed fluoroscopy until CSF returns,
bone blocks, or the target depth is reached; lateral confirmation.

Decompression: a lateral baseline, traction ramped to the force that opens each
interspace by the planned distraction (``scene.segments.TractionModel``), a hold
with pulsed monitoring, and release.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from openfluoro.fluoro.record import read_run
from openfluoro.fluoro.session import Session, SessionError
from openfluoro.scene.patient import Patient

LEVELS = ("L2-L3", "L3-L4", "L4-L5")
SYNTHETIC_IDENTITY = {"PatientName": "SYNTHETIC^PATIENT", "PatientID": "OPENFLUORO-SIM"}


@dataclass(frozen=True)
class ProcedureResult:
    folder: Path
    run_folder: Path
    cine: Path
    dose_summary: Path
    summary: Path
    outcome: dict[str, Any]


def _progress(message: str, callback: Callable[[str], None] | None) -> None:
    if callback is not None:
        callback(message)


def lumbar_puncture(patient: Patient, out: str | Path, level: str = "L3-L4", pulse_rate_pps: float = 7.5,
                    seed: int = 0, step_mm: float = 2.0, progress: Callable[[str], None] | None = None,
                    **session_kwargs: Any) -> ProcedureResult:
    """Run a fluoroscopy-guided lumbar puncture at ``level`` and write everything to ``out``."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    plan = patient.landmarks.get("needle", {}).get(level)
    if plan is None:
        raise SessionError(f"{patient.description}: no needle entry/target landmarks for {level}; "
                           "the scripted puncture needs the built-in phantom (or landmarks for the CT)")
    out = Path(out)
    session = Session.for_patient(patient, seed=seed, **session_kwargs)
    session.set_pulse_rate(pulse_rate_pps)
    run_folder = out / "run"
    session.start_recording(run_folder, SYNTHETIC_IDENTITY)
    try:
        _progress("AP localisation", progress)
        session.set_view("AP")
        session.run(1.5)
        session.pedal_up()
        entry = np.asarray(plan["entry"], float)
        target = np.asarray(plan["target"], float)
        depth_to_target = float(np.linalg.norm(target - entry))
        _progress(f"needle at the skin over {level}; target {depth_to_target:.1f} mm deep", progress)
        session.insert_needle(entry, target, gauge=22, length_mm=90.0 if depth_to_target < 80 else 127.0,
                              depth_mm=5.0)
        while True:
            events = session.advance_needle(step_mm)
            session.run(2.0 / pulse_rate_pps)          # two pulses per step
            session.pedal_up()
            depth = session.needle.inserted_depth_mm
            _progress(f"advance: depth {depth:.1f} mm, tip in {session.needle_tissue()}", progress)
            if session.csf_return or session.needle_blocked or depth >= depth_to_target + 10.0 or \
                    any("needle:" in e for e in events):
                break
        _progress("lateral confirmation", progress)
        session.set_view("lateral")
        session.run(1.5)
        session.pedal_up()
    finally:
        session.stop_recording()
    tip = session.needle.tip_lps_mm
    outcome = {
        "procedure": "lumbar_puncture", "level": level, "pulse_rate_pps": pulse_rate_pps,
        "csf_return": session.csf_return, "opening_pressure_cmh2o": session.opening_pressure_cmh2o,
        "needle_blocked": session.needle_blocked, "tip_tissue": session.needle_tissue(),
        "tip_lps_mm": [float(v) for v in tip], "target_lps_mm": [float(v) for v in target],
        "tip_to_target_mm": float(np.linalg.norm(tip - target)),
        "inserted_depth_mm": session.needle.inserted_depth_mm,
    }
    return _finish(session, out, run_folder, outcome)


def decompression(patient: Patient, out: str | Path, distraction_mm: float = 2.0, pulse_rate_pps: float = 3.75,
                  hold_s: float = 4.0, ramp_mm_per_s: float = 1.0, seed: int = 0,
                  progress: Callable[[str], None] | None = None, **session_kwargs: Any) -> ProcedureResult:
    """Traction under lateral fluoroscopy: baseline, ramp to ``distraction_mm`` per interspace, hold, release."""
    if not 0 < distraction_mm <= 6:
        raise ValueError(f"distraction_mm must be in (0, 6] mm per interspace, got {distraction_mm}")
    out = Path(out)
    session = Session.for_patient(patient, seed=seed, **session_kwargs)
    if session.spine is None:
        raise SessionError(f"{patient.description}: traction needs labelled vertebrae and discs "
                           "(use the built-in phantom)")
    session.set_pulse_rate(pulse_rate_pps)
    run_folder = out / "run"
    session.start_recording(run_folder, SYNTHETIC_IDENTITY)
    try:
        session.set_view("lateral")
        _progress("lateral baseline", progress)
        session.run(1.0)
        baseline = dict(session.spine_motion().disc_heights_mm())
        state = session.set_traction(distraction_mm=distraction_mm, ramp_mm_per_s=ramp_mm_per_s)
        _progress(f"traction {state.force_n:.0f} N (target {state.target_per_disc_mm:.2f} mm per interspace)",
                  progress)
        session.run(distraction_mm / ramp_mm_per_s + hold_s)
        under_traction = dict(session.spine_motion().disc_heights_mm())
        _progress("release", progress)
        session.traction_off()
        session.run(distraction_mm / ramp_mm_per_s + 1.0)
        session.pedal_up()
    finally:
        session.stop_recording()
    outcome = {
        "procedure": "decompression", "planned_distraction_mm_per_interspace": distraction_mm,
        "traction_force_n": state.force_n, "model": "discs in series, 150 N/mm each above a 25 % body-weight "
                                                     "threshold (scene.segments.TractionModel)",
        "baseline_disc_heights_mm": baseline, "under_traction_disc_heights_mm": under_traction,
        "change_mm": {d: under_traction[d] - baseline[d] for d in baseline},
    }
    return _finish(session, out, run_folder, outcome)


def _finish(session: Session, out: Path, run_folder: Path, outcome: dict[str, Any]) -> ProcedureResult:
    from openfluoro.io.cine import write_gif, write_mp4

    run = read_run(run_folder)
    frames = [np.asarray(img) for img in run.pixels]
    fps = session.pulse_rate_pps
    write_gif(frames, out / "cine.gif", fps)
    cine = write_mp4(frames, out / "cine.mp4", fps)
    dose_path = out / "dose_summary.json"
    dose_path.write_text(json.dumps(session.ledger.summary(), indent=2))
    outcome = {**outcome, "frames": len(run), "events": [{"time_s": t, "event": e} for t, e in session.events],
               "dose": {"ka_r_mgy": session.ledger.ka_r_mgy, "kap_gy_cm2": session.ledger.kap_gy_cm2,
                        "fluoro_time_s": session.ledger.fluoro_time_s}}
    summary_path = out / "procedure.json"
    summary_path.write_text(json.dumps(outcome, indent=2))
    return ProcedureResult(out, run_folder, cine, dose_path, summary_path, outcome)

