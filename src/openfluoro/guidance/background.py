"""Whole-frame detections off the frame path, for live sessions.

``detect_levels`` takes ~50-70 ms for a 512 x 512 frame (once per C-arm pose) and a
whole-frame needle search ~10 ms (a new pose, a lost needle) -- twice as long when the frame
comes after a pause with nothing running, as paced frames do on a shared machine
(``benchmarks/guidance.py``); following a tracked needle and the other guidance of a frame
take a few ms. Run in line, these would take the first frames after a C-arm move over the
15 ms budget of issue 5. ``BackgroundDetection`` runs them on one worker thread instead, in
the order asked: the frame that starts one goes on without its result, which is there one
or two frames later (the needle tracker takes the line found up and follows it into the
frame at hand, ``needle.NeedleTracker``). The compiled kernels release the GIL, so on two
cores the frame path keeps its pace while the detection runs. Between kernels the worker
holds the GIL, and the frame path waits for it up to the interpreter's switch interval each
time (5 ms by default, a third of the budget: 3 of 5 benchmark runs had a frame of 17-31 ms
after a C-arm move); a live session shortens it to ``SWITCH_INTERVAL_S`` (4 of 9 runs had
one, of 15-21 ms).

The evaluation calls the detectors in line: it scores what is detected, not when.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import numpy as np

from openfluoro.geometry.carm import Geometry
from openfluoro.guidance.levels import LevelResult, detect_levels

T = TypeVar("T")

#: a pose whose detection found no interspace (spine out of the field, collimated away) is
#: searched again after this many frames, not on every frame
RETRY_EMPTY_FRAMES = 8
#: the longest the frame path waits for the GIL while the worker runs Python code (s)
SWITCH_INTERVAL_S = 0.0005


def pose_key(g: Geometry) -> tuple:
    """What must stay the same for detected levels to stay valid: the C-arm pose and detector."""
    p = g.pose
    return (round(p.primary_deg, 3), round(p.secondary_deg, 3), round(p.sid_mm, 2), round(p.sod_mm, 2),
            tuple(round(v, 2) for v in p.isocentre_lps_mm), g.detector)


class BackgroundDetection:
    """Levels per C-arm pose, and whole-frame needle searches (``submit``), on one worker
    thread; nothing here waits for a detection."""

    def __init__(self) -> None:
        """Starts the worker; shortens the interpreter's switch interval to
        ``SWITCH_INTERVAL_S`` for the whole process (a live session is a real-time process)."""
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openfluoro-detection")
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

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> "Future[T]":
        """Run ``fn`` on the worker after what is already queued (the caller passes copies
        of what it will change)."""
        return self._pool.submit(fn, *args, **kwargs)

    def wait(self, geometry: Geometry, timeout_s: float | None = None) -> LevelResult | None:
        """The levels of a pose whose detection has started, waiting for it (tests)."""
        job = self._jobs.get(pose_key(geometry))
        return None if job is None else job[0].result(timeout=timeout_s)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
