"""Whole-frame detections off the frame path, for live sessions.

``detect_levels`` takes ~50-70 ms for a 512 x 512 frame (once per C-arm pose) and a
whole-frame needle search ~10 ms (a new pose, a lost needle) -- twice as long when the frame
comes after a pause with nothing running, as paced frames do on a shared machine
(``benchmarks/guidance.py``); following a tracked needle and the other guidance of a frame
take a few ms. Run in line, these would take the first frames after a C-arm move over the
15 ms budget of issue 5. ``BackgroundDetection`` runs them in a worker instead, in the
order asked: the frame that starts one goes on without its result, which is there one or
two frames later (the needle tracker takes the line found up and follows it into the frame
at hand, ``needle.NeedleTracker``).

The worker is a process of its own (one per interpreter, shared by all streams, started
with the first ``BackgroundDetection``), not a thread: much of the level detection is
NumPy and Python between the compiled kernels and holds the GIL for about two thirds of
its time, and a frame path sharing the interpreter with it waited for the GIL up to the
switch interval each time (a worker thread gave a frame of 17-31 ms after a C-arm move in
3 of 5 benchmark runs; with a 0.5 ms switch interval, 15-21 ms in 4 of 9). The frame and
its geometry go to the process pickled (~1 MB, on the executor's feeder thread) and the
result comes back the same way. Where a process cannot be started or dies, the worker is a
thread of this interpreter again (``in_process=False`` asks for that; tests that hold a
detection at a gate use it).

The evaluation calls the detectors in line: it scores what is detected, not when.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, TypeVar

import numpy as np

from openfluoro.geometry.carm import Geometry
from openfluoro.guidance._worker import finished, process_died, shared_process
from openfluoro.guidance.levels import LevelResult, detect_levels

T = TypeVar("T")

#: a pose whose detection found no interspace (spine out of the field, collimated away) is
#: searched again after this many frames, not on every frame
RETRY_EMPTY_FRAMES = 8
#: the longest the frame path waits for the GIL while a worker thread runs Python code (s)
SWITCH_INTERVAL_S = 0.0005


def pose_key(g: Geometry) -> tuple:
    """What must stay the same for detected levels to stay valid: the C-arm pose and detector."""
    p = g.pose
    return (round(p.primary_deg, 3), round(p.secondary_deg, 3), round(p.sid_mm, 2), round(p.sod_mm, 2),
            tuple(round(v, 2) for v in p.isocentre_lps_mm), g.detector)


class BackgroundDetection:
    """Levels per C-arm pose, and whole-frame needle searches (``submit``), on one worker
    (the shared worker process, else a thread); nothing here waits for a detection."""

    def __init__(self, in_process: bool = True) -> None:
        """Starts the worker. A worker thread (``in_process=False``, or no process to be had)
        shortens the interpreter's switch interval to ``SWITCH_INTERVAL_S`` for the whole
        process (a live session is a real-time process)."""
        self._thread_pool: ThreadPoolExecutor | None = None
        self._pool: Executor = (shared_process() if in_process else None) or self._thread()
        self._lock = threading.Lock()
        self._jobs: dict[tuple, tuple[Future, int]] = {}      # pose -> (detection, frame it started)
        self._frame = 0

    def get(self, image: np.ndarray, geometry: Geometry) -> LevelResult | None:
        """The levels at this frame's pose if detected by now, else None; a detection is
        started (``request``) on the first frame of a pose."""
        self.request(image, geometry)
        return self.peek(geometry)

    @property
    def in_process(self) -> bool:
        return self._pool is not self._thread_pool

    def _thread(self) -> ThreadPoolExecutor:
        if self._thread_pool is None:
            if sys.getswitchinterval() > SWITCH_INTERVAL_S:
                sys.setswitchinterval(SWITCH_INTERVAL_S)
            self._thread_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openfluoro-detection")
        return self._thread_pool

    def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> "Future[T]":
        """``fn`` on the worker; on a thread from now on if the worker process has died."""
        try:
            return self._pool.submit(fn, *args, **kwargs)
        except BrokenProcessPool:
            process_died(self._pool)
            self._pool = self._thread()
            return self._pool.submit(fn, *args, **kwargs)

    def peek(self, geometry: Geometry) -> LevelResult | None:
        """The levels at this pose if detected by now, starting nothing (a detection lost with
        a dead worker process is started again by the next ``request``)."""
        key = pose_key(geometry)
        job = self._jobs.get(key)
        if job is None or not job[0].done():
            return None
        found = finished(job[0])
        if found is None:
            with self._lock:
                if self._jobs.get(key) is job:
                    del self._jobs[key]
        return found

    def request(self, image: np.ndarray, geometry: Geometry) -> None:
        """Start the detection of this pose's levels from a copy of this frame, unless one has
        started (or found nothing fewer than ``RETRY_EMPTY_FRAMES`` frames ago). A caller
        with other work for the frame asks at its end, so the worker starts after it."""
        key = pose_key(geometry)
        with self._lock:
            self._frame += 1
            job = self._jobs.get(key)
            if job is not None and job[0].done():
                found = finished(job[0])
                if found is None or (not found.discs and self._frame - job[1] >= RETRY_EMPTY_FRAMES):
                    job = None                                # lost, or nothing found there: look again
            if job is None:
                fut = self._run(detect_levels, np.array(image, copy=True), geometry)
                self._jobs[key] = (fut, self._frame)

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> "Future[T]":
        """Run ``fn`` on the worker after what is already queued (the caller passes copies
        of what it will change; in a process, ``fn`` and its arguments must pickle)."""
        return self._run(fn, *args, **kwargs)

    def wait(self, geometry: Geometry, timeout_s: float | None = None) -> LevelResult | None:
        """The levels of a pose whose detection has started, waiting for it (tests)."""
        job = self._jobs.get(pose_key(geometry))
        return None if job is None else job[0].result(timeout=timeout_s)

    def close(self) -> None:
        """Stops this stream's worker thread, if it has one; the shared worker process stays
        for other streams (it ends with the interpreter)."""
        if self._thread_pool is not None:
            self._thread_pool.shutdown(wait=False, cancel_futures=True)
