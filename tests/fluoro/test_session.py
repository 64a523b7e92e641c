"""The live session's state machine on a small synthetic labelled spine."""

import json

import numpy as np
import pytest

from openfluoro.fluoro.record import read_run
from openfluoro.fluoro.session import Session, SessionError
from openfluoro.geometry.carm import Detector


@pytest.fixture()
def session(synthetic_spine):
    return Session.for_patient(synthetic_spine, detector=Detector.square(128, 240.0), seed=1)


def test_pedal_gates_acquisition_and_lih_holds_the_last_frame(session):
    with pytest.raises(SessionError, match="pedal"):
        session.acquire()
    frames = session.run(1.0)
    assert len(frames) == 8 and frames[-1].time_s == pytest.approx(8 / 7.5)
    hold = session.pedal_up()
    np.testing.assert_array_equal(hold, frames[-1].image)
    assert session.ledger.fluoro_time_s == pytest.approx(8 / 7.5)
    assert session.ledger.n_frames == 8


def test_frames_carry_full_metadata_and_reach_every_consumer(session):
    got_a, got_b = [], []
    session.subscribe(got_a.append)
    unsubscribe = session.subscribe(got_b.append)
    session.run(0.4)
    unsubscribe()
    session.acquire()
    assert len(got_a) == 4 and len(got_b) == 3
    meta = got_a[0].metadata()
    json.dumps(meta)
    for key in ("time_s", "exposure", "dose", "pose", "detector", "collimator"):
        assert key in meta
    assert meta["exposure"]["kvp"] >= 60 and meta["dose"]["reference_air_kerma_mgy"] > 0


def test_still_carm_casts_the_anatomy_once_and_a_move_recasts(session):
    session.insert_needle((0, 90, 10), (0, 28, 10), depth_mm=20)
    session.run(0.5)
    casts = session.renderer.casts
    for _ in range(5):
        session.advance_needle(1.0)
        session.acquire()
    assert session.renderer.casts == casts          # needle moves never re-cast the anatomy
    session.set_view("lateral")
    session.acquire()
    assert session.renderer.casts == casts + 1


def test_needle_stops_in_bone_and_reports_csf_in_the_sac(session):
    # aimed from behind at the vertebral body through the canal (canal centre y=+28 mm, r=7)
    session.insert_needle((0, 75, 10), (0, 0, 10), gauge=22, length_mm=90, depth_mm=10)
    events = session.advance_needle(80.0)
    assert any("CSF return" in e for e in events)
    assert session.csf_return and 6 <= session.opening_pressure_cmh2o <= 25
    assert any("blocked" in e for e in events)          # went on through the sac and met the body
    tip_y = session.needle.tip_lps_mm[1]
    assert 12.0 < tip_y < 16.0                          # stopped at the posterior face of the body (y=+14)
    frame = session.run(0.2)[-1]
    assert "csf_return" in frame.events and "needle_blocked" in frame.events
    assert frame.ground_truth["needle"]["blocked"]


def test_traction_opens_the_discs_by_the_model(session):
    t = session.set_traction(distraction_mm=2.0, ramp_mm_per_s=100.0)
    assert t.target_per_disc_mm == pytest.approx(2.0)
    frame = session.run(0.2)[-1]
    heights = frame.ground_truth["traction"]["disc_heights_mm"]
    rest = session.spine.disc_heights_mm
    for disc, h in heights.items():
        assert h - rest[disc] == pytest.approx(2.0)
    session.traction_off()
    assert session.traction.target_per_disc_mm == 0.0


def test_recording_survives_and_reads_back(session, tmp_path):
    session.start_recording(tmp_path / "run")
    frames = session.run(0.8)
    folder = session.stop_recording()
    run = read_run(folder)
    assert len(run) == len(frames)
    np.testing.assert_array_equal(run.pixels[-1], frames[-1].image)
    assert run.metadata[0]["exposure"]["pulse_rate_pps"] == 7.5


def test_pulse_rate_changes_the_dose_rate_not_the_dose_per_frame(session):
    session.run(1.0)
    per_frame_7 = session.last_frame.dose.reference_air_kerma_mgy
    session.set_pulse_rate(15.0)
    session.run(1.0)
    per_frame_15 = session.last_frame.dose.reference_air_kerma_mgy
    assert per_frame_15 == pytest.approx(per_frame_7, rel=1e-6)
    rate_15 = session.ledger.air_kerma_rate_mgy_min(session.time_s)
    assert rate_15 == pytest.approx(per_frame_15 * 15 * 60, rel=1e-3)
    with pytest.raises(ValueError, match="pulse rate"):
        session.set_pulse_rate(12.0)


def test_collimation_blocks_the_edges_and_the_display_windows_on_the_field(session):
    """Blades block the beam outside the field: those pixels show black, and the automatic
    window is set by the irradiated field alone, as on a clinical system. (Windowed on the
    whole frame, the blocked edges were the darkest percentile and washed the anatomy out.)"""
    session.set_view("AP")
    open_img = session.run(0.6)[-1].image.astype(float)
    session.pedal_up()
    session.set_collimation(150.0, 110.0)
    img = session.run(0.6)[-1].image.astype(float)
    session.pedal_up()
    field = session.collimator.mask(session.detector)
    r0, r1, c0, c1 = session.collimator.field_px(session.detector)
    assert field[r0:r1, c0:c1].all() and field.sum() == (r1 - r0) * (c1 - c0)
    assert (img[~field][img.shape[1] * 10:] == 0).all()          # below the frame counter's rows
    # the field's centre (the window's region) fills the grey scale, as the open frame's does
    mr, mc = int(0.2 * (r1 - r0)), int(0.2 * (c1 - c0))
    for im, (a, b, c, d) in ((open_img, (0, img.shape[0], 0, img.shape[1])), (img, (r0, r1, c0, c1))):
        ra, ca = int(0.2 * (b - a)), int(0.2 * (d - c))
        lo, hi = np.percentile(im[a + ra:b - ra, c + ca:d - ca], [1, 99])
        assert lo <= 12 and hi >= 243, (lo, hi)
    session.set_collimation(None, None)
    assert session.chain.settings.collimation is None
