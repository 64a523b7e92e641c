"""Dose ledger: sums, fluoro-time accounting, the 5-minute alarm, notification levels,
the sliding-window air-kerma rate, rate-limit flags and the JSON summary.

Synthetic clock throughout (no sleeping): frame i of a run starting at t0 at f
pulses/s is at t0 + i/f.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from openfluoro.fluoro.ledger import (
    DoseLedger,
    DoseRecord,
    LedgerConfig,
    NotificationLevel,
)


def rec(t: float, ka: float = 0.01, kap: float = 0.001, mode: str = "fluoro", pps: float = 7.5,
        pulse_ms: float = 8.0, dose_mode: str = "normal", **kw) -> DoseRecord:
    return DoseRecord(time_s=t, kvp=80.0, ma=10.0, pulse_ms=pulse_ms, mode=mode, pulse_rate_pps=pps,
                      ka_r_mgy=ka, kap_gy_cm2=kap, field_size_cm=(10.0, 10.0), dose_mode=dose_mode, **kw)


def run_pulses(ledger: DoseLedger, t0: float, t1: float, pps: float, ka: float = 0.01, kap: float = 0.001,
               mode: str = "fluoro", dose_mode: str = "normal", pedal: bool = True):
    """Pedal down at t0, frames at t0 + i/pps while < t1, pedal up at t1."""
    alarms = []
    if pedal:
        alarms += ledger.pedal_down(t0, mode)
    n = 0
    while t0 + n / pps < t1:
        alarms += ledger.add(rec(t0 + n / pps, ka, kap, mode, pps, dose_mode=dose_mode))
        n += 1
    if pedal:
        alarms += ledger.pedal_up(t1)
    return n, alarms


def test_cumulative_sums_equal_sum_of_records():
    rng = np.random.default_rng(0)
    ledger = DoseLedger()
    records = []
    t = 0.0
    for run in range(6):
        mode = ["fluoro", "cine", "fluoro"][run % 3]
        ledger.pedal_down(t, mode)
        for _ in range(int(rng.integers(1, 60))):
            t += 1 / 15
            r = rec(t, float(rng.uniform(0, 0.2)), float(rng.uniform(0, 0.02)), mode, 15.0)
            records.append(r)
            ledger.add(r)
        t += 0.05
        ledger.pedal_up(t)
        t += float(rng.uniform(0.5, 5))
    assert ledger.ka_r_mgy == pytest.approx(math.fsum(r.ka_r_mgy for r in records), rel=1e-12)
    assert ledger.kap_gy_cm2 == pytest.approx(math.fsum(r.kap_gy_cm2 for r in records), rel=1e-12)
    assert ledger.n_frames == len(records)
    assert sum(run.n_frames for run in ledger.runs) == len(records)
    assert sum(run.ka_r_mgy for run in ledger.runs) == pytest.approx(ledger.ka_r_mgy, rel=1e-12)
    for m in ("fluoro", "cine"):
        assert ledger.ka_r_by_mode_mgy[m] == pytest.approx(math.fsum(r.ka_r_mgy for r in records if r.mode == m))


def test_fluoro_time_is_pedal_down_time_of_fluoro_runs():
    """Three pulsed fluoro runs (7.5, 15 and 3.75 pulse/s) and one cine run. Fluoro time
    is the pedal-down time of the fluoro runs (21 CFR 1020.30(b)), not frames/rate and
    not the summed pulse widths; frames are counted per run."""
    ledger = DoseLedger()
    n1, _ = run_pulses(ledger, 0.0, 10.0, 7.5)
    n2, _ = run_pulses(ledger, 20.0, 23.3, 15.0)
    n3, _ = run_pulses(ledger, 30.0, 31.0, 3.75)
    n4, _ = run_pulses(ledger, 40.0, 45.0, 30.0, mode="cine")
    assert (n1, n2, n3, n4) == (75, 50, 4, 150)
    assert [r.n_frames for r in ledger.runs] == [75, 50, 4, 150]
    assert ledger.fluoro_time_s == pytest.approx(10.0 + 3.3 + 1.0, abs=1e-12)
    assert ledger.acquisition_time_s == pytest.approx(5.0, abs=1e-12)
    assert ledger.beam_on_time_s == pytest.approx((75 + 50 + 4 + 150) * 8e-3)
    # while the pedal is down the time runs without frames too
    ledger.pedal_down(50.0)
    ledger.tick(52.5)
    assert ledger.fluoro_time_s == pytest.approx(16.8, abs=1e-12)
    assert ledger.pedal_is_down
    ledger.pedal_up(53.0)
    ledger.tick(100.0)
    assert ledger.fluoro_time_s == pytest.approx(17.3, abs=1e-12)
    # a spot exposure outside any run books its own one-frame run and no fluoro time
    ledger.add(rec(101.0, mode="spot", pps=0.0, pulse_ms=100.0))
    assert ledger.runs[-1].mode == "spot" and ledger.runs[-1].n_frames == 1
    assert ledger.fluoro_time_s == pytest.approx(17.3, abs=1e-12)
    # ... also while the fluoro pedal is held: the fluoro run goes on around it
    ledger.pedal_down(110.0)
    ledger.add(rec(110.5))
    ledger.add(rec(111.0, mode="spot", pps=0.0, pulse_ms=100.0))
    ledger.add(rec(111.5))
    ledger.pedal_up(112.0)
    assert [(r.mode, r.n_frames) for r in ledger.runs[-2:]] == [("fluoro", 2), ("spot", 1)]
    assert ledger.fluoro_time_s == pytest.approx(19.3, abs=1e-12)
    assert ledger.acquisition_time_s == pytest.approx(5.2, abs=1e-12)


def test_five_minute_alarm_fires_at_300_s_once_per_5_min_and_needs_ack():
    """Runs 0-120 s and 200-320 s give 240 s of fluoro time; the third run starts at 400 s
    so 300 s is crossed at exactly t = 460 s (frame 450 at 7.5 pulse/s)."""
    ledger = DoseLedger()
    heard = []
    ledger.subscribe(heard.append)
    _, a1 = run_pulses(ledger, 0.0, 120.0, 7.5)
    _, a2 = run_pulses(ledger, 200.0, 320.0, 7.5)
    assert ledger.fluoro_time_s == 240.0
    assert not [a for a in a1 + a2 if a.kind == "fluoro_time"]
    ledger.pedal_down(400.0)
    for i in range(450):
        assert not [a for a in ledger.add(rec(400.0 + i / 7.5)) if a.kind == "fluoro_time"]
    assert not ledger.fluoro_alarm_active
    raised = [a for a in ledger.add(rec(400.0 + 450 / 7.5)) if a.kind == "fluoro_time"]
    assert len(raised) == 1
    alarm = raised[0]
    assert alarm.time_s == 460.0 and alarm.threshold == 300.0 and alarm.requires_ack
    assert heard.count(alarm) == 1
    # it keeps sounding until acknowledged, and is not raised again meanwhile
    for i in range(451, 600):
        assert not [a for a in ledger.add(rec(400.0 + i / 7.5)) if a.kind == "fluoro_time"]
    assert ledger.fluoro_alarm_active and ledger.active_alarms == [alarm]
    assert ledger.acknowledge(time_s=480.0) == 1
    assert not ledger.fluoro_alarm_active and ledger.is_acknowledged(alarm)
    # next one at 600 s of fluoro time: t = 400 + (600 - 240) = 760 s, here by tick()
    ledger.tick(759.9)
    assert not ledger.fluoro_alarm_active
    second = [a for a in ledger.tick(760.0) if a.kind == "fluoro_time"]
    assert len(second) == 1 and second[0].time_s == 760.0 and second[0].threshold == 600.0
    assert ledger.fluoro_alarm_active
    # pedal up at 1000 s: 840 s of fluoro time, no alarm; the clock running with the pedal
    # up adds nothing; 900 s is then reached 60 s into the next run
    assert not [a for a in ledger.pedal_up(1000.0) if a.kind == "fluoro_time"]
    assert not [a for a in ledger.tick(5000.0) if a.kind == "fluoro_time"]
    assert ledger.fluoro_time_s == 840.0
    ledger.pedal_down(5000.0)
    third = [a for a in ledger.tick(5100.0) if a.kind == "fluoro_time"]
    assert [(a.time_s, a.threshold) for a in third] == [(5060.0, 900.0)]


def test_five_minute_alarm_exact_crossing_inside_a_long_step():
    ledger = DoseLedger()
    ledger.pedal_down(10.0)
    raised = ledger.tick(10.0 + 650.0)  # one long step over 300 s and 600 s
    assert [(a.kind, a.time_s, a.threshold) for a in raised if a.kind == "fluoro_time"] == [
        ("fluoro_time", 310.0, 300.0), ("fluoro_time", 610.0, 600.0)]
    assert len(ledger.active_alarms) == 2
    assert ledger.acknowledge() == 2 and ledger.active_alarms == []


def test_notification_levels_fire_once_each_at_the_right_record():
    """3 mGy and 0.4 Gy cm2 per frame: Ka,r 1000 mGy is first reached by frame 333
    (cumulative 1002), 2000 by frame 666, ...; KAP 100 Gy cm2 by frame 249 (100.0,
    reached exactly at 250 frames -> index 249)."""
    ledger = DoseLedger()
    ka, kap = 3.0, 0.4
    fired: dict[str, list[tuple[int, float]]] = {}
    ledger.pedal_down(0.0)
    for i in range(2000):
        for a in ledger.add(rec(i / 30, ka, kap, pps=30.0, dose_mode="high")):
            fired.setdefault(a.kind, []).append((i, a.threshold))
    ledger.pedal_up(2000 / 30)

    def first_index(level: float, per_frame: float) -> int:
        # smallest i with (i + 1) * per_frame >= level, computed the way the ledger sums
        total, i = 0.0, 0
        while True:
            total += per_frame
            if total >= level:
                return i
            i += 1

    assert fired["ka_r_level"] == [(first_index(v, ka), v) for v in (1000.0, 2000.0, 3000.0, 5000.0)]
    assert fired["kap_level"] == [(first_index(v, kap), v) for v in (100.0, 200.0, 300.0, 500.0)]
    assert [i for i, _ in fired["ka_r_level"]] == [333, 666, 999, 1666]
    # once each: more dose raises nothing new
    ledger.pedal_down(100.0)
    assert not [a for a in ledger.add(rec(100.0, 10000.0, 1000.0, dose_mode="high"))
                if a.kind in ("ka_r_level", "kap_level")]


def test_custom_levels_and_fluoro_time_level():
    cfg = LedgerConfig(notification_levels=(NotificationLevel("ka_r_mgy", 0.5, "test"),
                                            NotificationLevel("fluoro_time_s", 42.0)))
    ledger = DoseLedger(cfg)
    ledger.pedal_down(0.0)
    levels = [a for a in ledger.tick(100.0) if a.kind == "fluoro_time_level"]
    assert [(a.time_s, a.threshold) for a in levels] == [(42.0, 42.0)]
    hits = [a for a in ledger.add(rec(100.0, ka=0.6)) if a.kind == "ka_r_level"]
    assert len(hits) == 1 and "test" in hits[0].message


@pytest.mark.parametrize("pps", [30.0, 15.0, 7.5, 3.75, 1.0])
def test_rate_over_sliding_window_for_constant_pulse_train(pps):
    """Analytic: kerma per pulse x pulses per second x 60, whatever the phase of the
    query within the pulse train, once the train has lasted a full 1 s window; after
    the pedal is released the window empties linearly."""
    q = 0.035  # mGy per pulse
    expected = q * pps * 60.0
    ledger = DoseLedger()
    ledger.pedal_down(0.0)
    n = int(4 * pps)
    for i in range(n):
        ledger.add(rec(i / pps, q, pps=pps))
        if i / pps >= 1.0:
            assert ledger.air_kerma_rate_mgy_min() == pytest.approx(expected, rel=1e-9)
    t_last = (n - 1) / pps
    ledger.pedal_up(t_last)
    assert ledger.air_kerma_rate_mgy_min(t_last + 0.25) == pytest.approx(0.75 * expected, rel=1e-9)
    assert ledger.air_kerma_rate_mgy_min(t_last + 1.0) == pytest.approx(0.0, abs=1e-12)
    assert ledger.peak_rate_mgy_min == pytest.approx(expected, rel=1e-9)


def test_rate_limit_flags():
    """Normal mode: 88 mGy/min; high-level: 176 mGy/min. 0.2 mGy x 7.5 pps = 90 mGy/min
    exceeds normal (flagged once for the excursion) but not high-level."""
    ledger = DoseLedger()
    _, alarms = run_pulses(ledger, 0.0, 5.0, 7.5, ka=0.2)
    over = [a for a in alarms if a.kind == "rate_limit"]
    assert len(over) == 1 and over[0].threshold == 88.0 and over[0].value > 88.0
    assert ledger.frames_over_rate_limit > 0
    _, alarms = run_pulses(ledger, 10.0, 15.0, 7.5, ka=0.2, dose_mode="high")
    assert not [a for a in alarms if a.kind == "rate_limit"]
    _, alarms = run_pulses(ledger, 20.0, 25.0, 7.5, ka=0.4, dose_mode="high")  # 180 mGy/min
    assert [a.threshold for a in alarms if a.kind == "rate_limit"] == [176.0]
    _, alarms = run_pulses(ledger, 30.0, 35.0, 7.5, ka=0.1)  # 45 mGy/min
    assert not [a for a in alarms if a.kind == "rate_limit"]
    # recording (cine) is exempt from the fluoroscopy limit
    _, alarms = run_pulses(ledger, 40.0, 42.0, 30.0, ka=0.5, mode="cine")
    assert not [a for a in alarms if a.kind == "rate_limit"]


def test_summary_round_trips_through_json():
    ledger = DoseLedger()
    run_pulses(ledger, 0.0, 310.0, 7.5, ka=0.2)
    run_pulses(ledger, 320.0, 324.0, 15.0, mode="cine", ka=0.5, kap=0.05)
    ledger.add(rec(330.0, mode="spot", pps=0.0, pulse_ms=50.0))
    ledger.acknowledge(331.0)
    ledger.pedal_down(340.0)
    ledger.add(rec(340.0))
    s = ledger.summary()  # with a run still open
    back = json.loads(json.dumps(s, allow_nan=False))
    assert back == s
    assert s["totals"]["n_runs"] == 4
    assert [r["n_frames"] for r in s["runs"]] == [2325, 60, 1, 1]
    assert s["runs"][-1]["end_s"] is None
    assert s["totals"]["fluoro_time_s"] == pytest.approx(310.0)
    assert any(a["kind"] == "fluoro_time" and a["acknowledged_at_s"] == 331.0 for a in s["alarms"])
    assert s["peak_rate_mgy_min"] > 0


def test_subscribers_and_errors():
    ledger = DoseLedger()
    got = []
    unsub = ledger.subscribe(got.append)

    def broken(alarm):
        raise RuntimeError("display offline")

    ledger.subscribe(broken)
    ledger.pedal_down(0.0)
    with pytest.warns(RuntimeWarning, match="display offline"):
        ledger.tick(301.0)
    assert [a.kind for a in got] == ["fluoro_time"]
    assert ledger.subscriber_errors
    unsub()
    with pytest.warns(RuntimeWarning, match="display offline"):
        ledger.tick(601.0)
    assert len(got) == 1 and len(ledger.alarms) == 2

    with pytest.raises(ValueError, match="pedal_down first"):
        DoseLedger().add(rec(0.0))
    with pytest.raises(ValueError, match="time runs forward"):
        ledger.tick(10.0)
    with pytest.raises(ValueError, match="kvp"):
        DoseRecord(time_s=0.0, kvp=-1.0, ma=1.0, pulse_ms=5.0)
    with pytest.raises(ValueError, match="mode"):
        ledger.add(rec(700.0, mode="cine"))
