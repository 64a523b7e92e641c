"""The console's HTTP API, token checks, WebSocket wire format and the command line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from openfluoro.console.protocol import decode_frame, encode_frame

from .conftest import wait_for

websockets_sync = pytest.importorskip("websockets.sync.client", reason="websockets not installed")


def ws_url(server, token: str | None) -> str:
    base = server.base.replace("http://", "ws://") + "/ws"
    return base if token is None else f"{base}?token={token}"


def test_frame_header_round_trip():
    img = (np.arange(35 * 21) % 256).astype(np.uint8).reshape(35, 21)
    data = encode_frame(img, "hold", 123456, 1.5e12, 1.5e12 + 7.25)
    assert len(data) == 32 + img.size
    head, back = decode_frame(data)
    assert head == {"kind": "hold", "flags": 0, "index": 123456, "rows": 35, "cols": 21, "t_pulse_ms": 1.5e12,
                    "t_ready_ms": 1.5e12 + 7.25}
    np.testing.assert_array_equal(back, img)
    with pytest.raises(ValueError, match="magic"):
        decode_frame(b"XXXX" + data[4:])


@pytest.mark.parametrize("path", ["/api/status", "/api/loops", "/api/events", "/api/images/live.png"])
def test_api_refuses_missing_or_wrong_token(server, path):
    assert httpx.get(server.base + path).status_code == 401
    assert httpx.get(server.base + path, params={"token": "not-the-token"}).status_code == 401
    assert httpx.get(server.base + path, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_api_accepts_the_token_three_ways(server):
    for kw in ({"params": {"token": server.token}}, {"headers": {"Authorization": f"Bearer {server.token}"}},
               {"headers": {"X-OpenFluoro-Token": server.token}}):
        r = httpx.get(server.base + "/api/status", **kw)
        assert r.status_code == 200 and r.json()["patient"]["state"] == "ready"


def test_controls_without_token_change_nothing(server):
    r = httpx.post(server.base + "/api/pedal", json={"down": True})
    assert r.status_code == 401
    st = httpx.get(server.base + "/api/status", params={"token": server.token}).json()
    assert st["session"]["pedal"] is False


def test_websocket_refuses_missing_or_wrong_token(server):
    from websockets.exceptions import InvalidStatus

    for token in (None, "wrong-token"):
        with pytest.raises(InvalidStatus) as info:
            websockets_sync.connect(ws_url(server, token), open_timeout=5).close()
        assert info.value.response.status_code == 401


def test_websocket_streams_status_and_binary_frames(server):
    tok = {"X-OpenFluoro-Token": server.token}
    with websockets_sync.connect(ws_url(server, server.token), open_timeout=5, max_size=None) as ws:
        first = json.loads(ws.recv(timeout=5))
        assert first["type"] == "status" and first["session"] is not None
        httpx.post(server.base + "/api/pedal", json={"down": True, "lease_s": 2.0}, headers=tok)
        try:
            deadline = time.monotonic() + 20
            meta = frame = None
            while time.monotonic() < deadline:
                msg = ws.recv(timeout=10)
                if isinstance(msg, str):
                    m = json.loads(msg)
                    if m["type"] == "frame" and m["kind"] == "live":
                        meta = m
                elif meta is not None:
                    head, frame = decode_frame(msg)
                    if head["kind"] == "live":
                        break
            assert frame is not None, "no live frame came over the WebSocket"
        finally:
            httpx.post(server.base + "/api/pedal", json={"down": False}, headers=tok)
    assert head["index"] == meta["index"] and frame.shape == (meta["rows"], meta["cols"]) == (192, 192)
    assert head["t_pulse_ms"] <= head["t_ready_ms"]
    assert meta["exposure"]["kvp"] > 0 and meta["dose"]["ka_r_mgy"] > 0


def test_pedal_lease_lapses_and_the_beam_stops(server):
    tok = {"X-OpenFluoro-Token": server.token}
    st = httpx.post(server.base + "/api/pedal", json={"down": True, "lease_s": 0.3}, headers=tok).json()
    assert st["session"]["pedal"] is True
    wait_for(lambda: httpx.get(server.base + "/api/status", headers=tok).json()["session"]["pedal"] is False,
             timeout_s=5, message="the pedal to let go when its lease ran out")
    events = httpx.get(server.base + "/api/events", headers=tok).json()
    assert any("stopped renewing" in e["text"] for e in events)


def test_api_errors_are_messages(server):
    tok = {"X-OpenFluoro-Token": server.token}
    r = httpx.post(server.base + "/api/view", json={"name": "upside-down"}, headers=tok)
    assert r.status_code == 422 and "unknown view" in r.json()["detail"]
    r = httpx.post(server.base + "/api/needle/place", json={"level": "C1-C2"}, headers=tok)
    assert r.status_code == 422 and "L3-L4" in r.json()["detail"]
    r = httpx.post(server.base + "/api/technique", json={"pulse_rate_pps": 12}, headers=tok)
    assert r.status_code == 422
    r = httpx.post(server.base + "/api/loops/loop-999/export", json={}, headers=tok)
    assert r.status_code == 404 and "loop-999" in r.json()["detail"]
    r = httpx.post(server.base + "/api/record/stop", headers=tok)
    assert r.status_code == 409 and "not recording" in r.json()["detail"]


def test_display_controls_redisplay_the_held_image(server):
    tok = {"X-OpenFluoro-Token": server.token}
    httpx.post(server.base + "/api/pedal", json={"down": True}, headers=tok)
    wait_for(lambda: httpx.get(server.base + "/api/status", headers=tok).json()["frames_published"] > 0,
             message="a frame")
    httpx.post(server.base + "/api/pedal", json={"down": False}, headers=tok)
    a = httpx.get(server.base + "/api/images/live.png", headers=tok).content
    st = httpx.post(server.base + "/api/display", json={"window": 1.0, "level": 1.5, "invert": True},
                    headers=tok).json()
    d = st["session"]["display"]
    assert d["auto_window"] is False and d["window"] == pytest.approx(1.0) and d["invert"] is True
    b = httpx.get(server.base + "/api/images/live.png", headers=tok).content
    assert a != b
    st = httpx.post(server.base + "/api/display", json={"auto_window": True, "invert": False}, headers=tok).json()
    assert st["session"]["display"]["auto_window"] is True
    st = httpx.post(server.base + "/api/collimation", json={"width_mm": 120, "height_mm": 100}, headers=tok).json()
    assert st["session"]["collimator"] == {"width_mm": 120.0, "height_mm": 100.0}
    httpx.post(server.base + "/api/collimation", json={"width_mm": None, "height_mm": None}, headers=tok)


def test_openapi_documents_every_control(server):
    spec = httpx.get(server.base + "/openapi.json").json()
    paths = set(spec["paths"])
    for p in ("/api/pedal", "/api/technique", "/api/view", "/api/carm", "/api/table", "/api/collimation",
              "/api/display", "/api/needle/place", "/api/needle/advance", "/api/needle/withdraw",
              "/api/needle/steer", "/api/traction", "/api/traction/off", "/api/dose/acknowledge",
              "/api/record/start", "/api/record/stop", "/api/loops/{loop_id}/replay", "/api/loops/{loop_id}/export",
              "/api/patient/load", "/api/patient/upload", "/api/status", "/api/spot", "/api/reference/store"):
        assert p in paths, p
        for op in spec["paths"][p].values():
            assert op.get("summary"), p
    docs = httpx.get(server.base + "/api-docs")
    assert docs.status_code == 200 and "openapi.json" in docs.text


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from openfluoro.cli import app; app()", *args]


def test_cli_console_serves_a_ct_on_loopback_with_a_token(synthetic_spine, tmp_path):
    from openfluoro.scene.volume import save_nifti

    ct = save_nifti(synthetic_spine.volume, tmp_path / "ct.nii.gz")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_cli("console", "--volume", str(ct), "--port", "0"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:(\d+))/\?token=([\w-]+)", line)
        assert m, f"no URL with a token on the first line: {line!r}"
        base, token = m.group(1), m.group(3)
        assert len(token) >= 16
        assert httpx.get(base + "/").status_code == 401
        assert httpx.get(f"{base}/?token={token}").status_code == 200
        wait_for(lambda: httpx.get(base + "/api/status", params={"token": token}).json()["session"] is not None,
                 timeout_s=60, message="the CT's session to be ready")
        st = httpx.get(base + "/api/status", params={"token": token}).json()
        assert st["patient"]["description"].endswith("ct.nii.gz") and st["session"]["spine"] is None
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_cli_console_bad_volume_fails_with_a_message(tmp_path):
    bad = tmp_path / "bad.nrrd"
    bad.write_text("NRRD0004\nnot really\n")
    r = subprocess.run(_cli("console", "--volume", str(bad), "--port", "0"), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert "error:" in r.stderr and "bad.nrrd" in r.stderr
