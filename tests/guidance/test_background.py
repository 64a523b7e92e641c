"""Detection off the frame path: the frame that starts it does not wait, the result is
the in-line detection's, and a puncture guide takes it up when it is there."""

import threading

import numpy as np

from openfluoro.geometry.carm import CArmPose, Detector, Geometry, standard_view
from openfluoro.guidance import background as BG
from openfluoro.guidance.levels import detect_levels
from openfluoro.guidance.puncture import PunctureGuide


def _drawn_needle() -> tuple[np.ndarray, Geometry]:
    """A lateral frame with a needle drawn on a smooth noisy background."""
    g = Geometry(standard_view("lateral_left", CArmPose()), Detector.square(512, 300.0))
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:512, 0:512].astype(float)
    img = 140.0 + 30.0 * np.sin(xx / 90.0) + rng.normal(0.0, 5.0, (512, 512))
    tip, tail = np.array([230.3, 300.6]), np.array([380.0, 250.0])
    u = (tip - tail) / np.hypot(*(tip - tail))
    t = (xx - tail[0]) * u[0] + (yy - tail[1]) * u[1]
    s = np.abs(-(xx - tail[0]) * u[1] + (yy - tail[1]) * u[0])
    along = np.clip(np.minimum(t + 0.5, np.hypot(*(tip - tail)) - t + 0.5), 0.0, 1.0)
    return np.clip(img - 110.0 * np.clip(1.5 - s, 0.0, 1.0) * along, 0, 255).astype(np.uint8), g


def test_first_frame_does_not_wait_and_the_result_is_the_in_line_one(lateral_frame, monkeypatch):
    frame = lateral_frame
    gate = threading.Event()

    def held(image, geometry):                # a detection that cannot finish until released
        gate.wait(10.0)
        return detect_levels(image, geometry)

    monkeypatch.setattr(BG, "detect_levels", held)
    bg = BG.BackgroundDetection(in_process=False)              # the gate is in this interpreter
    try:
        assert bg.get(frame.image, frame.geometry) is None             # started, not waited for
        assert bg.get(frame.image, frame.geometry) is None             # one detection per pose
        gate.set()
        got = bg.wait(frame.geometry, timeout_s=30.0)
        assert bg.get(frame.image, frame.geometry) is got
        ref = detect_levels(frame.image, frame.geometry)
        assert [(d.name, d.centre_px) for d in got.discs] == [(d.name, d.centre_px) for d in ref.discs]
    finally:
        gate.set()
        bg.close()


def test_the_worker_process_gives_the_in_line_levels_and_needle(lateral_frame):
    """Live sessions detect in a process of their own (no GIL shared with the frame path):
    what comes back is what the in-line detectors find in the same frame."""
    from openfluoro.guidance.needle import TipPrior, detect_needle

    frame = lateral_frame
    bg = BG.BackgroundDetection()
    try:
        assert bg.in_process
        bg.request(frame.image, frame.geometry)
        img, g = _drawn_needle()
        search = bg.submit(detect_needle, img, g, TipPrior())
        got = bg.wait(frame.geometry, timeout_s=60.0)
        ref = detect_levels(frame.image, frame.geometry)
        assert got.discs and [(d.name, d.centre_px) for d in got.discs] == [(d.name, d.centre_px) for d in ref.discs]
        found, ref_needle = search.result(timeout=30.0), detect_needle(img, g, TipPrior())
        assert found.found and found == ref_needle
    finally:
        bg.close()


def test_a_dead_worker_process_is_replaced_by_a_thread(lateral_frame, monkeypatch):
    """A worker process that dies loses the detections it held; they are started again on a
    thread, and the guidance goes on."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from openfluoro.guidance import _worker

    class Dead:
        def submit(self, *args, **kwargs):
            raise BrokenProcessPool("the worker process died")

    lost: Future = Future()
    lost.set_exception(BrokenProcessPool("the worker process died"))
    dead = Dead()
    monkeypatch.setattr(_worker, "_process", dead)
    monkeypatch.setattr(_worker, "_process_failed", False)
    frame = lateral_frame
    bg = BG.BackgroundDetection()
    try:
        assert not bg.in_process or bg._pool is dead
        bg._jobs[BG.pose_key(frame.geometry)] = (lost, 0)                 # held when it died
        assert bg.peek(frame.geometry) is None                             # lost, not raised
        assert bg.get(frame.image, frame.geometry) is None                 # started again
        assert not bg.in_process and _worker.shared_process() is None
        assert bg.wait(frame.geometry, timeout_s=60.0).discs
    finally:
        bg.close()


def test_puncture_guide_takes_up_the_levels_when_they_arrive(lateral_frame):
    frame = lateral_frame
    bg = BG.BackgroundDetection()
    try:
        guide = PunctureGuide("L2-L3", background=bg)
        first = guide.update(frame.image, frame.geometry)
        assert first.view == "lateral"                                 # known from the geometry alone
        bg.wait(frame.geometry, timeout_s=30.0)
        guide.update(frame.image, frame.geometry)
        lv = guide.levels_at(frame.geometry)
        assert lv is not None and lv.disc("L2-L3") is not None
    finally:
        bg.close()


def test_needle_search_runs_on_the_worker_and_a_later_frame_takes_it_up(monkeypatch):
    """A tracker with a worker never waits for a whole-frame needle search: the frames while it
    runs report no needle; the first after it follows the line it found, the in-line tracker's
    needle to within half a pixel."""
    from openfluoro.guidance import needle as N

    img, g = _drawn_needle()
    gate = threading.Event()
    real = N.detect_needle

    def held(*args, **kwargs):
        gate.wait(10.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(N, "detect_needle", held)
    bg = BG.BackgroundDetection(in_process=False)
    try:
        tracker = N.NeedleTracker(background=bg)
        assert not tracker.update(img, g).found            # search started, not waited for
        assert not tracker.update(img, g).found            # still running
        gate.set()
        bg.submit(lambda: None).result(timeout=30.0)       # the worker is past the search
        det = tracker.update(img, g)
        ref = N.NeedleTracker().update(img, g)
        assert det.found and ref.found
        assert np.hypot(*np.subtract(det.tip_px, ref.tip_px)) < 0.5
        assert np.hypot(*np.subtract(det.tail_px, ref.tail_px)) < 0.5
    finally:
        gate.set()
        bg.close()
