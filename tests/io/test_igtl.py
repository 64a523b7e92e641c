"""OpenIGTLink: a pyigtl client receives IMAGE and TRANSFORM messages from a server fed with
synthetic frames (a live-session stand-in: a queue) and from a replayed recording."""

from __future__ import annotations

import queue
import socket
import threading
import time

import numpy as np
import pytest

from openfluoro.fluoro.record import read_run
from openfluoro.io.igtl import IgtlError, IgtlServer, recorded_frames, replay

pyigtl = pytest.importorskip("pyigtl", reason="pyigtl not installed (pip install pyigtl)")

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _client(port: int):
    return pyigtl.OpenIGTLinkClient("127.0.0.1", port)


def _expected_ras(frame, r: int, c: int) -> np.ndarray:
    # independent reference: geometry.carm's own pixel grid, in LPS, flipped to RAS
    return LPS_TO_RAS @ frame.geometry.pixel_positions_lps_mm()[r, c]


def test_client_receives_frames_from_a_live_queue(synth):
    frames = [synth(i, i / 15, primary=25.0, secondary=-12.0, iso=(3.0, -4.0, 20.0)) for i in range(8)]
    live: queue.Queue = queue.Queue()
    with IgtlServer(0) as server:
        client = _client(server.port)
        try:
            assert server.wait_for_client(5)

            def session() -> None:             # a stand-in for the live session: frames arrive on a queue
                for f in frames:
                    live.put(f)
                    time.sleep(0.02)
                live.put(None)

            threading.Thread(target=session, daemon=True).start()
            images, tips = [], []
            for frame in iter(live.get, None):
                assert server.send_frame(frame) == 1
                img = client.wait_for_message("Fluoro", timeout=5)
                tip = client.wait_for_message("NeedleTip", timeout=5)
                assert img is not None and tip is not None
                images.append(img)
                tips.append(tip)
        finally:
            client.stop()
    assert len(images) == len(frames)
    for frame, img, tip in zip(frames, images, tips):
        assert img.world_coordinate_system == "ras"
        assert img.image.shape == (1, 64, 64)
        np.testing.assert_array_equal(img.image[0], frame.image)
        m = np.asarray(img.ijk_to_world_matrix, dtype=float)
        for r, c in ((0, 0), (10, 50), (63, 63)):
            np.testing.assert_allclose(m @ [c, r, 0, 1], np.r_[_expected_ras(frame, r, c), 1], atol=0.02)
        # the slice axis points along the beam (source -> detector), in RAS
        np.testing.assert_allclose(m[:3, 2] / np.linalg.norm(m[:3, 2]), LPS_TO_RAS @ frame.geometry.pose.to_detector,
                                   atol=1e-5)
        nd = frame.ground_truth["needle"]
        t = np.asarray(tip.matrix, dtype=float)
        np.testing.assert_allclose(t[:3, 3], LPS_TO_RAS @ nd["tip_lps_mm"], atol=1e-4)
        axis = LPS_TO_RAS @ np.asarray(nd["axis_lps"]) / np.linalg.norm(nd["axis_lps"])
        np.testing.assert_allclose(t[:3, 2], axis, atol=1e-5)
        np.testing.assert_allclose(t[:3, :3].T @ t[:3, :3], np.eye(3), atol=1e-5)
        assert np.linalg.det(t[:3, :3]) == pytest.approx(1.0, abs=1e-5)


def test_session_consumer_never_blocks(synth):
    frames = [synth(i, i / 30) for i in range(20)]
    with IgtlServer(0) as server:
        client = _client(server.port)
        try:
            assert server.wait_for_client(5)
            t0 = time.monotonic()
            for f in frames:                        # what session.subscribe(server.submit) does
                server.submit(f)
            assert time.monotonic() - t0 < 0.5
            deadline = time.monotonic() + 5
            last = None
            while time.monotonic() < deadline:
                msg = client.wait_for_message("Fluoro", timeout=0.5)
                if msg is not None:
                    last = msg
                    if np.array_equal(msg.image[0], frames[-1].image):
                        break
            assert last is not None and np.array_equal(last.image[0], frames[-1].image)
            deadline = time.monotonic() + 2
            while server.sent_frames + server.dropped_frames < len(frames) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.sent_frames + server.dropped_frames == len(frames)
        finally:
            client.stop()


def test_frame_without_needle_sends_image_only(synth):
    frame = synth(0, 0.0, needle=False)
    with IgtlServer(0) as server:
        assert [m.message_type for m in server.messages_for(frame)] == ["IMAGE"]


def test_port_in_use_is_a_clear_error():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        with pytest.raises(IgtlError, match=rf"port {port} on 127\.0\.0\.1 is already in use"):
            IgtlServer(port).start()


def test_disconnecting_client_does_not_stop_the_stream(synth):
    with IgtlServer(0) as server:
        c1, c2 = _client(server.port), _client(server.port)
        deadline = time.monotonic() + 5
        while server.client_count < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.client_count == 2
        c1.stop()
        for i in range(5):
            server.send_frame(synth(i, i / 15))
            time.sleep(0.02)
        assert c2.wait_for_message("Fluoro", timeout=5) is not None
        c2.stop()


def test_replay_of_a_recording_keeps_its_timing(tmp_path, make_run, free_port):
    make_run(tmp_path / "run")
    run = read_run(tmp_path / "run")
    frames = list(recorded_frames(run))
    assert len(frames) == 23 and frames[0].ground_truth["needle"]["tip_lps_mm"] == [5.0, 10.0, -20.0]
    sent: list[float] = []
    done = threading.Event()
    result: dict[str, int] = {}

    def on_frame(frame, clients):
        sent.append(time.monotonic())

    # the recording spans 12/7.5 + 5 + 10/15 + 3 s = 10.3 s of session time: replay it 20x faster
    def serve() -> None:
        result["n"] = replay(run, port=free_port(), speed=20.0, on_frame=on_frame)
        done.set()

    t = threading.Thread(target=serve, daemon=True)
    t0 = time.monotonic()
    t.start()
    assert done.wait(10)
    elapsed = time.monotonic() - t0
    assert result["n"] == 23
    span = (frames[-1].time_s - frames[0].time_s) / 20.0
    assert span * 0.9 <= elapsed <= span + 2.0
    assert sent[-1] - sent[0] == pytest.approx(span, abs=0.2)
