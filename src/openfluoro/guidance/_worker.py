"""The worker process of live sessions' whole-frame detections (``background``), apart from
the detectors so that the needle tracker can read a worker's results without importing them."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

import numpy as np

T = TypeVar("T")
_log = logging.getLogger(__name__)

_process_lock = threading.Lock()
_process: ProcessPoolExecutor | None = None
_process_failed = False


def _warm_worker() -> None:
    """Load the detectors' compiled kernels in a new worker process (from numba's cache), so
    that its first detection takes as long as the next ones."""
    from openfluoro.geometry.carm import CArmPose, Detector, Geometry, standard_view
    from openfluoro.guidance.levels import detect_levels

    rng = np.random.default_rng(0)
    for view in ("lateral_left", "AP"):
        g = Geometry(standard_view(view, CArmPose()), Detector.square(128, 300.0))
        detect_levels((rng.random((128, 128)) * 255).astype(np.uint8), g)


def shared_process() -> ProcessPoolExecutor | None:
    """The worker process of this interpreter, started (and warmed up) on first use; None
    where processes cannot be started here (or one has died)."""
    global _process, _process_failed
    with _process_lock:
        if _process is None and not _process_failed:
            try:
                # spawned, not forked: the console forks no copy of its server threads
                _process = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                               initializer=_warm_worker)
                # the executor starts its process on the first job: start it now, so that it
                # warms up (seconds on two busy cores) while the console loads its patient,
                # not while the first pose waits for its levels
                _process.submit(int)
            except (OSError, ValueError, NotImplementedError) as exc:
                _log.warning("whole-frame detections run on a thread: no worker process (%s)", exc)
                _process_failed = True
        return _process


def process_died(pool: Executor) -> None:
    """Stop using a worker process that died; later jobs run on a thread."""
    global _process, _process_failed
    with _process_lock:
        if _process is pool:
            _log.warning("the detection worker process died; whole-frame detections run on a thread from now")
            _process, _process_failed = None, True


def finished(job: "Future[T]") -> T | None:
    """The result of a finished job, or None where its worker process died before it ended
    (whoever asked starts it again)."""
    try:
        return job.result()
    except BrokenProcessPool:
        _log.warning("a detection was lost with the worker process")
        return None
