"""Projector speed: our Joseph ray caster (all material channels) vs RTK's CPU Joseph projector.

Usage:
    python benchmarks/render.py [VOLUME] [--resample 512,512,300] [--repeats 3]

VOLUME defaults to the real CT in ../shared/data (resampled to 512x512x300 so the
benchmark measures the size the target names), or the built-in phantom if the data is
absent. Both projectors run the same views in one process, so the ratios are fair on a
noisy machine. (DiffDRR is not timed: see benchmarks/RESULTS.md.)
The last line is machine-readable: ``ratio_vs_rtk_256=<ours/rtk> ratio_vs_rtk_512=<ours/rtk>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from openfluoro.geometry.carm import CArmPose, Detector, Geometry, standard_view
from openfluoro.render.raycast import MaterialVolume, project_materials
from openfluoro.render.reference import RtkProjector
from openfluoro.scene.materials import hu_to_material_densities
from openfluoro.scene.volume import Volume, load_volume

VIEWS = ("PA", "lateral", "LPO45")
DEFAULT_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator_example" / "example_ct.nii.gz"


def _resample(vol: Volume, shape_ijk: tuple[int, int, int]) -> Volume:
    """Trilinear resampling onto a finer grid covering the same extent."""
    from scipy.ndimage import zoom

    ni, nj, nk = shape_ijk
    factors = (nk / vol.shape[0], nj / vol.shape[1], ni / vol.shape[2])
    hu = zoom(vol.hu, factors, order=1).astype(np.float32)
    affine = vol.affine_lps.copy()
    affine[:3, :3] = affine[:3, :3] / np.array([factors[2], factors[1], factors[0]])
    return Volume(hu, affine, source=f"{vol.source} resampled to {hu.shape[::-1]}")


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up: numba compile / RTK pipeline set-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("volume", nargs="?", default=None)
    ap.add_argument("--resample", default="512,512,300", help="i,j,k grid to resample to ('none' to keep)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    if args.volume:
        vol = load_volume(args.volume)
    elif DEFAULT_CT.exists():
        vol = load_volume(DEFAULT_CT)
    else:
        from openfluoro.scene.phantom import default_phantom

        vol = default_phantom().volume
    if args.resample != "none":
        vol = _resample(vol, tuple(int(x) for x in args.resample.split(",")))
    print(f"volume {vol.source}: {vol.shape[::-1]} (i,j,k) voxels, spacing {np.round(vol.spacing_mm, 3)} mm")
    print(f"cpu cores: {os.cpu_count()}")
    mvol = MaterialVolume.from_volume(vol)
    rtk = RtkProjector(hu_to_material_densities(vol.hu).sum(axis=3), vol.affine_lps)  # converted once, outside the timing

    ratios = {}
    print(f"{'size':>6} {'view':>8} {'ours_s':>8} {'rtk_s':>8} {'ours/rtk':>9}  (ours: {len(mvol.materials)} material channels; rtk: 1)")
    for size in (256, 512):
        per_view = []
        for view in VIEWS:
            g = Geometry(standard_view(view, CArmPose(isocentre_lps_mm=tuple(vol.centre_lps_mm))),
                         Detector.square(size, 300.0))
            t_ours = _median_time(lambda: project_materials(mvol, g), args.repeats)
            t_rtk = _median_time(lambda: rtk.project(g), args.repeats)
            per_view.append(t_ours / t_rtk)
            print(f"{size:>6} {view:>8} {t_ours:8.3f} {t_rtk:8.3f} {t_ours / t_rtk:9.3f}")
        ratios[size] = statistics.geometric_mean(per_view)
    print(f"ratio_vs_rtk_256={ratios[256]:.3f} ratio_vs_rtk_512={ratios[512]:.3f}")


if __name__ == "__main__":
    main()
