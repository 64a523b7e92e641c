"""Image-chain speed: milliseconds per stage and in total, at 512 x 512 and 1024 x 1024.

Usage:
    python benchmarks/chain.py [--frames 300] [--sizes 512,1024] [--pps 15] [--compare-wait-policy]

A synthetic live sequence (a smooth "patient" background with a dense bar, Poisson
noise at a few hundred quanta per pixel, and a needle moving 2 px per frame) runs
through ``ImageChain.process`` with the default settings (all stages on, automatic
window/level, counter overlay). Each stage is timed inside ``process``; the figures
are medians over the frames after a warm-up (so JIT compilation is excluded), with the
95th percentile of the total to show the jitter of this shared machine.
Targets (issue 4): chain <= 3 ms at 512^2 and <= 12 ms at 1024^2 on the 2-core machine.

Two cadences are timed: frames back to back (the throughput figure), and frames paced
at a live pulse rate (``--pps``, default 15) with the process idle in between, as in a
real session. The second matters on this machine: with libgomp's default wait policy
(threads spin at barriers and while idle) single paced frames at 512^2 took 20-45 ms
after gaps of ~50 ms or more, and while another process kept one of the two cores
busy every parallel region cost a scheduler time slice (~7 ms: 44 ms per 512^2 frame,
measured). With ``OMP_WAIT_POLICY=passive`` (set before numba starts its threads)
back-to-back frames cost ~2.1-2.3 ms instead of ~1.4 ms, but paced frames ~3.4 ms and
the contended case stays ~2.3 ms. ``--compare-wait-policy`` reruns the benchmark in
subprocesses with the default policy, ``OMP_WAIT_POLICY=passive`` and
``NUMBA_THREADING_LAYER=workqueue``.
The last line is machine-readable: ``chain_ms_512=<median> chain_ms_1024=<median>``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

from openfluoro.fluoro.chain import ChainSettings, ImageChain

TARGET_MS = {512: 3.0, 1024: 12.0}


def make_sequence(n: int, n_frames: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:n, 0:n] / n
    att = 0.8 + 1.2 * np.exp(-((c - 0.5) / 0.25) ** 2) + 0.3 * np.sin(6 * np.pi * r) ** 2
    att[int(0.45 * n):int(0.55 * n), int(0.3 * n):int(0.7 * n)] += 1.0
    mean = 2000.0 * np.exp(-att)
    frames = []
    cols = np.arange(n)
    for i in range(n_frames):
        centre = 0.2 * n + (2 * i) % int(0.6 * n)
        needle = 0.3 * np.clip(np.minimum(cols + 1 - (centre - 1.5), centre + 1.5 - cols), 0, 1)
        frames.append(rng.poisson(mean * np.exp(-needle[None, :])).astype(np.float32))
    return frames


def bench(n: int, n_frames: int, pps: float | None = None) -> float:
    frames = make_sequence(n, min(n_frames, 60))
    chain = ImageChain(ChainSettings())
    meta = {"i0": 2000.0}
    for f in frames[:10]:  # warm-up: compiles (or loads from the cache) every kernel
        chain.process(f, meta)
    times: dict[str, list[float]] = {k: [] for k in (*ImageChain.STAGES, "total")}
    t0 = time.perf_counter()
    for i in range(n_frames):
        if pps:
            wait = t0 + i / pps - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        chain.process(frames[i % len(frames)], meta)
        for k, v in chain.last_timings_ms.items():
            times[k].append(v)
    med = {k: float(np.median(v)) for k, v in times.items()}
    p95 = float(np.percentile(times["total"], 95))
    stages = "  ".join(f"{k} {med[k]:.3f}" for k in ImageChain.STAGES)
    cadence = f"paced {pps:g} pps" if pps else "back to back"
    print(f"{n}x{n} {cadence}: {stages}  | total {med['total']:.3f} ms (p95 {p95:.3f}) "
          f"= {1000 / med['total']:.0f} frames/s; target <= {TARGET_MS.get(n, float('nan')):g} ms", flush=True)
    return med["total"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--pps", type=float, default=15.0, help="pulse rate of the paced run (0: skip it)")
    ap.add_argument("--compare-wait-policy", action="store_true")
    args = ap.parse_args()
    if args.compare_wait_policy:
        base = [sys.executable, __file__, "--frames", str(args.frames), "--sizes", args.sizes, "--pps", str(args.pps)]
        for extra in ({}, {"OMP_WAIT_POLICY": "passive"}, {"NUMBA_THREADING_LAYER": "workqueue"}):
            print(f"--- env {extra or 'default'}", flush=True)
            subprocess.run(base, env={**os.environ, **extra}, check=True)
        return
    env = {k: os.environ[k] for k in ("NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY") if k in os.environ}
    print(f"cpus={os.cpu_count()} env={env or 'default'}; median ms per stage over {args.frames} frames")
    res = {}
    for n in (int(s) for s in args.sizes.split(",")):
        res[n] = bench(n, args.frames)
        if args.pps > 0:
            bench(n, min(args.frames, int(6 * args.pps)), args.pps)
    print(" ".join(f"chain_ms_{n}={v:.3f}" for n, v in res.items()))


if __name__ == "__main__":
    main()
