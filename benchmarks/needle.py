"""Time ``project_needle`` (150 mm spinal needle) at 512 and 1024 px, and check it against supersampling.

Run: ``.venv/bin/python benchmarks/needle.py``. Prints, per case, the median / best time
of one call (ms, after a warm-up call that includes numba's compile or cache load), the
window and pixels touched, and the largest per-pixel difference from a 32 x 32 sub-ray
average of exact chords over the whole window (as % of the needle's peak value), plus
how much slower that brute-force supersampling is.
"""

from __future__ import annotations

import time

import numpy as np

from openfluoro.geometry.carm import CArmPose, Detector, Geometry, pixel_offsets_mm
from openfluoro.render.tools import needle_chords_mm, project_needle
from openfluoro.scene.materials import METAL, RHO_STEEL
from openfluoro.scene.needle import Needle


def supersampled(needle: Needle, geometry: Geometry, win, k: int = 32) -> np.ndarray:
    det, pose = geometry.detector, geometry.pose
    u, v = pixel_offsets_mm(det)
    o = (np.arange(k) + 0.5) / k - 0.5
    cols = np.arange(win.col0, win.col1)
    uu = u[0] + (cols[:, None] + o[None, :]).ravel() * det.image_pitch_mm
    res = np.zeros((win.row1 - win.row0, win.col1 - win.col0))
    for i, row in enumerate(range(win.row0, win.row1)):
        vv = v[0] + (row + o) * det.image_pitch_mm
        p = (pose.detector_centre_lps_mm + uu[None, :, None] * pose.u_axis + vv[:, None, None] * pose.v_axis)
        p = p.reshape(-1, 3)
        ch = needle_chords_mm(needle, np.broadcast_to(pose.source_lps_mm, p.shape), p)
        res[i] = ch.reshape(k, len(cols), k).mean(axis=(0, 2))
    return res * RHO_STEEL / 10.0


def main() -> None:
    cases = [
        ("22G 150mm diagonal", Needle(gauge=22, length_mm=150, entry_lps_mm=(-45, 20, -45), direction_lps=(1, -0.3, 1),
                                      inserted_depth_mm=110, bevel_face_lps=(0, 1, 0))),
        ("18G 150mm diagonal", Needle(gauge=18, length_mm=150, entry_lps_mm=(-45, 20, -45), direction_lps=(1, -0.3, 1),
                                      inserted_depth_mm=110, bevel_face_lps=(0, 1, 0))),
        ("25G 150mm along rows", Needle(gauge=25, length_mm=150, entry_lps_mm=(-60, 0, 5), direction_lps=(1, 0, 0.02),
                                        inserted_depth_mm=120)),
    ]
    print(f"{'case':24s} {'size':>5s} {'median ms':>10s} {'best ms':>8s} {'window':>11s} {'pixels':>7s} "
          f"{'max err %peak':>14s} {'32x32 ref / ours':>17s}")
    for size in (512, 1024):
        geom = Geometry(CArmPose(25.0, -10.0), Detector.square(size, 300.0))
        for name, needle in cases:
            out = np.zeros((3, size, size), np.float32)
            project_needle(needle, geom, out)                     # warm-up (compile / cache load)
            times = []
            for _ in range(50):
                out[METAL] = 0.0
                t = time.perf_counter()
                win = project_needle(needle, geom, out)
                times.append(time.perf_counter() - t)
            img = out[METAL, win.row0:win.row1, win.col0:win.col1]
            t = time.perf_counter()
            ref = supersampled(needle, geom, win)
            t_ref = time.perf_counter() - t
            err = np.abs(img - ref).max() / img.max() * 100
            med = np.median(times) * 1e3
            print(f"{name:24s} {size:5d} {med:10.3f} {min(times) * 1e3:8.3f} "
                  f"{win.row1 - win.row0:4d}x{win.col1 - win.col0:<6d} {int((img > 0).sum()):7d} "
                  f"{err:14.4f} {t_ref * 1e3 / med:16.0f}x")


if __name__ == "__main__":
    main()
