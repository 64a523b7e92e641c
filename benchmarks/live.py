"""Live-frame speed: needle frames and traction frames with the anatomy cached, vs re-casting it.

Usage:  python benchmarks/live.py [--frames 60]

Measures, in one run on the built-in phantom, the median wall time of one complete frame
(needle projection, physics look-up, noise, image chain, dose ledger, ground truth):
  * 512^2 and 1024^2, C-arm still, needle advancing every frame (PA view);
  * 512^2 lateral with traction ramping (T12-L5 and six discs moving every frame), and
    holding still (the moved composite cached);
  * the same needle frame when the anatomy is re-cast every frame (no pose cache),
and prints the ratios. Machine-readable last line:
  needle_512_ms=.. needle_1024_ms=.. traction_512_ms=.. speedup_vs_recast_512=..
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from openfluoro.fluoro.session import Session
from openfluoro.geometry.carm import Detector
from openfluoro.scene.patient import patient_from_phantom
from openfluoro.scene.phantom import default_phantom


def _needle_frames(session: Session, n: int, recast: bool = False) -> float:
    plan = session.patient.landmarks["needle"]["L3-L4"]
    session.set_view("AP")
    session.insert_needle(plan["entry"], plan["target"], depth_mm=5.0)
    session.pedal_down()
    session.acquire()                       # warm-up: cast, ADRC, compile
    times = []
    for _ in range(n):
        session.withdraw_needle(0.1) if session.needle_blocked else session.advance_needle(0.3)
        if recast:
            session.renderer._geometry = None   # forget the pose cache: re-cast the anatomy
        t0 = time.perf_counter()
        session.acquire()
        times.append(time.perf_counter() - t0)
    session.pedal_up()
    return statistics.median(times) * 1e3


def _traction_frames(session: Session, n: int) -> tuple[float, float]:
    """Median ms per frame while the traction ramps (every segment moves every frame) and
    while it holds still at its target."""
    session.set_view("lateral")
    session.pedal_down()
    session.acquire()
    session.set_traction(distraction_mm=3.0, ramp_mm_per_s=0.5)
    ramp, hold = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        session.acquire()
        ramp.append(time.perf_counter() - t0)
    session.set_traction(distraction_mm=session.traction.per_disc_mm)   # hold where it is
    session.acquire()
    for _ in range(n):
        t0 = time.perf_counter()
        session.acquire()
        hold.append(time.perf_counter() - t0)
    session.pedal_up()
    return statistics.median(ramp) * 1e3, statistics.median(hold) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60)
    args = ap.parse_args()
    patient = patient_from_phantom(default_phantom())
    print(f"phantom {patient.volume.shape[::-1]} voxels (i,j,k), spacing {np.round(patient.volume.spacing_mm, 2)} mm")
    d512 = Detector(rows=1024, cols=1024, pixel_pitch_mm=300 / 1024, binning=2)
    d1024 = Detector(rows=1024, cols=1024, pixel_pitch_mm=300 / 1024, binning=1)
    s512 = Session.for_patient(patient, detector=d512)
    needle_512 = _needle_frames(s512, args.frames)
    recast_512 = _needle_frames(Session.for_patient(patient, detector=d512), max(5, args.frames // 6), recast=True)
    needle_1024 = _needle_frames(Session.for_patient(patient, detector=d1024), args.frames)
    traction_512, holding_512 = _traction_frames(Session.for_patient(patient, detector=d512), args.frames)
    print(f"{'case':<46} {'ms/frame':>9} {'fps':>7}")
    for name, ms in [("needle, still C-arm, 512^2", needle_512), ("needle, still C-arm, 1024^2", needle_1024),
                     ("traction ramping (11 moving segments), 512^2", traction_512),
                     ("traction holding, 512^2", holding_512),
                     ("needle, anatomy re-cast every frame, 512^2", recast_512)]:
        print(f"{name:<46} {ms:9.2f} {1000 / ms:7.1f}")
    print(f"needle_512_ms={needle_512:.2f} needle_1024_ms={needle_1024:.2f} traction_512_ms={traction_512:.2f} "
          f"speedup_vs_recast_512={recast_512 / needle_512:.1f}")


if __name__ == "__main__":
    main()
