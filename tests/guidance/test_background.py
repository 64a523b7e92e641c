"""Level detection off the frame path: the frame that starts it does not wait, the result is
the in-line detection's, and a puncture guide takes it up when it is there."""

import threading

from openfluoro.guidance import background as BG
from openfluoro.guidance.levels import detect_levels
from openfluoro.guidance.puncture import PunctureGuide


def test_first_frame_does_not_wait_and_the_result_is_the_in_line_one(lateral_frame, monkeypatch):
    frame = lateral_frame
    gate = threading.Event()

    def held(image, geometry):                # a detection that cannot finish until released
        gate.wait(10.0)
        return detect_levels(image, geometry)

    monkeypatch.setattr(BG, "detect_levels", held)
    bg = BG.BackgroundLevels()
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


def test_puncture_guide_takes_up_the_levels_when_they_arrive(lateral_frame):
    frame = lateral_frame
    bg = BG.BackgroundLevels()
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
