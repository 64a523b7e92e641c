"""Phantom generation time, and the preview images of the default phantom.

Usage:
    python benchmarks/phantom.py [--voxel-mm 0.75] [--repeats 2] [--images docs/images]

Prints the wall time of ``make_phantom`` (the first call includes loading the compiled
kernels from numba's cache; the later ones are steady state) and the voxel count. The
last line is machine-readable: ``phantom_seconds=<first> phantom_seconds_warm=<best>
voxels=<n>``.

``--images DIR`` also renders AP, lateral and both posterior-oblique views at 512 x 512
to DIR/phantom_{ap,lateral,lpo,rpo}.png. These previews do not use the physics package:
a monochromatic Beer-Lambert approximation at ~60 keV (mu/rho 0.20 cm2/g soft tissue,
0.30 cm2/g bone) on the projector's material path lengths; the log image gets the
dynamic-range compression and edge enhancement a fluoroscopy image chain applies (two
unsharp masks) and is windowed on the spine; displayed as a fluoroscopy monitor shows it:
bone dark, air bright.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from openfluoro.scene.phantom import PhantomParams, make_phantom

MU_RHO_CM2_G = (0.20, 0.30, 1.5)   # soft tissue, bone, metal at ~60 keV (ICRU 44 / NIST XCOM, rounded)
PREVIEWS = (("ap", "AP", 400.0), ("lateral", "lateral", 400.0), ("lpo", "LPO45", 300.0), ("rpo", "RPO45", 300.0))


def _display(path_g_cm2: np.ndarray) -> np.ndarray:
    """uint8 fluoro-style frame (bone dark) from (3, rows, cols) path lengths."""
    from scipy.ndimage import gaussian_filter

    line_integral = np.tensordot(np.asarray(MU_RHO_CM2_G, np.float32), path_g_cm2, axes=1)   # -ln(I/I0)
    rows, cols = line_integral.shape
    # dynamic-range compression (large-kernel unsharp mask) and edge enhancement, as in a fluoro chain
    background = gaussian_filter(line_integral, rows / 12)
    comp = line_integral - 0.75 * (background - background.mean())
    sharp = comp + 0.8 * (comp - gaussian_filter(comp, rows / 90))
    centre = sharp[rows // 5: 4 * rows // 5, cols // 4: 3 * cols // 4]
    lo, hi = np.percentile(centre, [0.5, 99.7])
    img = 1.0 - np.clip((sharp - lo) / (hi - lo), 0.0, 1.0)
    return (255 * img ** 0.9).astype(np.uint8)


def render_previews(phantom, folder: Path, size: int = 512) -> list[Path]:
    from PIL import Image, ImageDraw

    from openfluoro.geometry.carm import CArmPose, Detector, Geometry, standard_view
    from openfluoro.render.raycast import MaterialVolume, project_materials

    mvol = MaterialVolume.from_volume(phantom.volume)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    iso = (0.0, 0.0, -20.0)   # L3-L4: T12 to the sacrum in the field
    for name, view, field in PREVIEWS:
        geom = Geometry(standard_view(view, CArmPose(isocentre_lps_mm=iso)), Detector.square(size, field))
        img = Image.fromarray(_display(project_materials(mvol, geom))).convert("RGB")
        # orientation markers: where the patient's right (or anterior) lands in the raw detector image
        probe = np.array(iso) + (np.array([-150.0, 0.0, 0.0]) if view != "lateral" else np.array([0.0, -150.0, 0.0]))
        col = geom.project(probe[None])[0, 0]
        mark = "R" if view != "lateral" else "A"
        draw = ImageDraw.Draw(img)
        x = 8 if col < size / 2 else size - 20
        draw.text((x, size // 2), mark, fill=(255, 220, 0))
        draw.text((8, 8), f"{view}  (mono 60 keV preview, bone dark)", fill=(255, 220, 0))
        path = folder / f"phantom_{name}.png"
        img.save(path)
        out.append(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxel-mm", type=float, default=0.75)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--images", type=Path, default=None, help="write the preview PNGs to this folder")
    args = ap.parse_args()
    params = PhantomParams(voxel_mm=args.voxel_mm)
    times = []
    phantom = None
    for r in range(max(args.repeats, 1)):
        t = time.perf_counter()
        phantom = make_phantom(params)
        times.append(time.perf_counter() - t)
        print(f"run {r + 1}: {times[-1]:.2f} s")
    k, j, i = phantom.volume.shape
    n = k * j * i
    print(f"grid {i} x {j} x {k} (i, j, k) at {args.voxel_mm} mm = {n / 1e6:.1f} M voxels")
    if args.images is not None:
        for p in render_previews(phantom, args.images):
            print(f"wrote {p}")
    print(f"phantom_seconds={times[0]:.2f} phantom_seconds_warm={min(times):.2f} voxels={n}")


if __name__ == "__main__":
    main()
