"""End to end with the real live session (small synthetic spine): frames stream to a pyigtl
client while recording; the recording exports to DICOM that dciodvfy accepts, and the
RDSR's totals agree with the session's own dose ledger (an independent tally)."""

from __future__ import annotations

import time

import numpy as np
import pydicom
import pytest

from openfluoro.geometry.carm import Detector
from openfluoro.io.dicom_common import ExportContext, load_run
from openfluoro.io.dicom_rf import export_images
from openfluoro.io.igtl import IgtlServer
from openfluoro.io.rdsr import export_rdsr, read_totals

pyigtl = pytest.importorskip("pyigtl", reason="pyigtl not installed (pip install pyigtl)")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def test_live_session_streams_records_and_exports(synthetic_spine, tmp_path, dicom_check):
    from openfluoro.fluoro.session import Session

    session = Session.for_patient(synthetic_spine, detector=Detector.square(128, 240.0), seed=1)
    session.start_recording(tmp_path / "run")
    with IgtlServer(0) as server:
        client = pyigtl.OpenIGTLinkClient("127.0.0.1", server.port)
        try:
            assert server.wait_for_client(5)
            session.subscribe(server.submit)
            session.insert_needle((0, 90, 10), (0, 28, 10), depth_mm=20)
            frames = session.run(0.8)
            session.pedal_up()
            session.set_view("lateral")
            frames += session.run(0.4)
            session.pedal_up()
            last = frames[-1]
            deadline = time.monotonic() + 10
            image = tip = None
            while time.monotonic() < deadline:
                msg = client.wait_for_message("Fluoro", timeout=0.5)
                if msg is not None and np.array_equal(msg.image[0], last.image):
                    image = msg
                    tip = client.wait_for_message("NeedleTip", timeout=5)
                    break
        finally:
            client.stop()
    session.stop_recording()
    assert image is not None, "the last live frame never reached the OpenIGTLink client"
    m = np.asarray(image.ijk_to_world_matrix, dtype=float)
    pos = last.geometry.pixel_positions_lps_mm()
    for r, c in ((0, 0), (100, 20)):
        np.testing.assert_allclose(m @ [c, r, 0, 1], np.r_[LPS_TO_RAS @ pos[r, c], 1], atol=0.02)
    assert tip is not None
    np.testing.assert_allclose(np.asarray(tip.matrix)[:3, 3],
                               LPS_TO_RAS @ np.asarray(last.ground_truth["needle"]["tip_lps_mm"]), atol=1e-3)

    loaded = load_run(tmp_path / "run")
    assert len(loaded.run) == len(frames) and not loaded.warnings
    ctx = ExportContext.for_run(loaded.run)
    out = tmp_path / "dicom"
    images = export_images(loaded, out, context=ctx)
    rdsr = export_rdsr(loaded, out, context=ctx, images=images)
    assert [w.n_frames for w in images] == [6, 3]           # 0.8 s and 0.4 s at 7.5 pulses/s
    for path in [w.path for w in images] + [rdsr]:
        errors, _ = dicom_check(path)
        assert errors == [], f"{path.name}: {errors}"
    ds = pydicom.dcmread(images[1].path)
    assert float(ds.PositionerPrimaryAngle) == pytest.approx(90.0)          # lateral
    totals = session.ledger.summary()["totals"]
    t = read_totals(rdsr)
    assert t["Dose (RP) Total"] * 1000 == pytest.approx(totals["ka_r_mgy"], rel=1e-9)
    assert t["Dose Area Product Total"] * 1e4 == pytest.approx(totals["kap_gy_cm2"], rel=1e-9)
    assert t["Total Fluoro Time"] == pytest.approx(totals["fluoro_time_s"], rel=1e-9)
