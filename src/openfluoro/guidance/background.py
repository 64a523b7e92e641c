"""Level detection off the frame path, for live sessions.

``detect_levels`` takes ~50-60 ms for a 512 x 512 frame (once per C-arm pose); every other
piece of guidance for a frame takes a few ms. Run in line, the first frame after a C-arm move
would take four frame periods' worth of the 15 ms budget (issue 5). ``BackgroundLevels`` runs
the detection on a worker thread instead: the frame that starts it goes on without levels
(needle tracking does not need them), and the levels are there one or two frames later. Its
compiled kernels release the GIL, so on two cores the frame path keeps its pace while the
detection runs (``benchmarks/guidance.py``: the pose-change rows).

The evaluation calls ``detect_levels`` in line: it scores what is detected, not when.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from openfluoro.geometry.carm import Geometry
from openfluoro.guidance.levels import LevelResult, detect_levels

#: a pose whose detection found no interspace (spine out of the field, collimated away) is
#: searched again after this many frames, not on every frame
RETRY_EMPTY_FRAMES = 8


def pose_key(g: Geometry) -> tuple:
    """What must stay the same for detected levels to stay valid: the C-arm pose and detector."""
    p = g.pose
    return (round(p.primary_deg, 3), round(p.secondary_deg, 3), round(p.sid_mm, 2), round(p.sod_mm, 2),
            tuple(round(v, 2) for v in p.isocentre_lps_mm), g.detector)


class BackgroundLevels:
    """Levels per C-arm pose, detected on one worker thread; ``get`` never waits."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openfluoro-levels")
        self._lock = threading.Lock()
        self._jobs: dict[tuple, tuple[Future, int]] = {}      # pose -> (detection, frame it started)
        self._frame = 0

    def get(self, image: np.ndarray, geometry: Geometry) -> LevelResult | None:
        """The levels at this frame's pose if detected by now, else None; a detection is
        started (``request``) on the first frame of a pose."""
        self.request(image, geometry)
        return self.peek(geometry)

    def peek(self, geometry: Geometry) -> LevelResult | None:
        """The levels at this pose if detected by now, starting nothing."""
        job = self._jobs.get(pose_key(geometry))
        return job[0].result() if job is not None and job[0].done() else None

    def request(self, image: np.ndarray, geometry: Geometry) -> None:
        """Start the detection of this pose's levels from a copy of this frame, unless one has
        started (or found nothing fewer than ``RETRY_EMPTY_FRAMES`` frames ago). A caller
        with other work for the frame asks at its end, so the worker starts after it."""
        key = pose_key(geometry)
        with self._lock:
            self._frame += 1
            job = self._jobs.get(key)
            if job is not None and job[0].done() and not job[0].result().discs and \
                    self._frame - job[1] >= RETRY_EMPTY_FRAMES:
                job = None                                    # nothing found there: look again
            if job is None:
                fut = self._pool.submit(detect_levels, np.array(image, copy=True), geometry)
                self._jobs[key] = (fut, self._frame)

    def wait(self, geometry: Geometry, timeout_s: float | None = None) -> LevelResult | None:
        """The levels of a pose whose detection has started, waiting for it (tests)."""
        job = self._jobs.get(pose_key(geometry))
        return None if job is None else job[0].result(timeout=timeout_s)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
