"""Loop recording survives a crash with at most the frame in flight lost."""

import numpy as np
import pytest

from openfluoro.fluoro.frame import Exposure, Frame, FrameDose, geometry_from_metadata
from openfluoro.fluoro.record import LoopRecorder, RecordingError, read_run
from openfluoro.geometry.carm import CArmPose, Detector, Geometry


def _frame(i: int) -> Frame:
    g = Geometry(CArmPose(10.0 * i, 5.0), Detector.square(16))
    img = np.full((16, 16), 50 * i, dtype=np.uint8)
    return Frame(i, i / 7.5, img, g, Exposure(75, 2.0, 8.0, 7.5), FrameDose(0.01, 0.001), ground_truth={"i": i})


def test_round_trip(tmp_path):
    with LoopRecorder(tmp_path / "run", 16, 16, identity={"PatientName": "SYNTHETIC^PATIENT"}) as rec:
        for i in range(5):
            rec.append(_frame(i))
    run = read_run(tmp_path / "run")
    assert len(run) == 5 and run.header["identity"]["PatientName"] == "SYNTHETIC^PATIENT"
    for i, (img, meta) in enumerate(run.frames()):
        assert img[0, 0] == 50 * i and meta["ground_truth"] == {"i": i}
        assert geometry_from_metadata(meta) == _frame(i).geometry


def test_crash_loses_at_most_the_frame_in_flight(tmp_path):
    rec = LoopRecorder(tmp_path / "run", 16, 16)
    for i in range(4):
        rec.append(_frame(i))
    # simulate a crash mid-frame: half the pixels of frame 4 and no metadata line
    rec._pixels.write(b"\x01" * (16 * 8))
    rec._pixels.flush()
    run = read_run(tmp_path / "run")
    assert len(run) == 4
    # and a torn metadata line
    rec._meta.write('{"index": 4, "trunc')
    rec._meta.flush()
    assert len(read_run(tmp_path / "run")) == 4


def test_sixteen_bit_runs(tmp_path):
    f = _frame(1)
    deep = Frame(f.index, f.time_s, f.image.astype(np.uint16) * 16, f.geometry, f.exposure, f.dose)
    with LoopRecorder(tmp_path / "run16", 16, 16, dtype="uint16") as rec:
        rec.append(deep)
        with pytest.raises(RecordingError, match="uint8"):
            rec.append(f)
    run = read_run(tmp_path / "run16")
    assert run.pixels.dtype == np.uint16 and run.pixels[0, 0, 0] == 800


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(RecordingError, match="no such run folder"):
        read_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordingError, match="run.json"):
        read_run(tmp_path / "empty")
    with LoopRecorder(tmp_path / "r", 16, 16) as rec:
        rec.append(_frame(0))
    with pytest.raises(RecordingError, match="already holds"):
        LoopRecorder(tmp_path / "r", 16, 16)


def test_replay_through_another_chain(synthetic_spine, tmp_path):
    """A recorded run replays from its detector signal: the same chain gives the same
    frames (to float16 rounding), another window gives other frames."""
    from openfluoro.fluoro.chain import ChainSettings, ImageChain
    from openfluoro.fluoro.record import replay
    from openfluoro.fluoro.session import Session

    session = Session.for_patient(synthetic_spine, detector=Detector.square(64, 240.0), seed=2)
    session.start_recording(tmp_path / "run")
    frames = session.run(1.0)
    session.set_view("lateral")
    frames += session.run(0.5)
    session.stop_recording()
    run = read_run(tmp_path / "run")
    same = list(replay(run, ImageChain(session.chain.settings)))
    assert len(same) == len(frames)
    diff = [np.abs(a.astype(int) - f.image.astype(int)).mean() for a, f in zip(same, frames)]
    assert max(diff) < 1.0
    inverted = list(replay(run, ImageChain(ChainSettings(invert=True))))
    assert np.abs(inverted[0].astype(int) - frames[0].image.astype(int)).mean() > 50
