"""The dose ledger: what IEC 60601-2-43 and 21 CFR 1020.32 ask a fluoroscope to count.

Per frame (``DoseRecord``) and cumulative:

- reference-point air kerma **Ka,r** (mGy; IEC 60601-2-43 interventional reference point)
  and **kerma-area product** KAP / P_KA (Gy cm2);
- **fluoroscopic irradiation time**: counted, as 21 CFR 1020.30(b) defines it, as the
  cumulative time the operator holds the fluoro pedal down (``pedal_down`` ..
  ``pedal_up``), *not* the sum of pulse widths -- so 10 s of 7.5 pulse/s fluoro is
  10 s whatever the pulse width. Only runs in ``"fluoro"`` mode count; cine and
  spot (recording) runs are reported separately. The summed pulse widths are also
  kept (``beam_on_time_s``) for information;
- **runs**: one pedal press is one run; its frames, kerma and KAP are listed;
- the **5-minute fluoro-time alarm** (21 CFR 1020.32(h)(2)(ii)): an alarm at each
  passage of 300 s of fluoro time, time-stamped at the exact crossing, which stays
  active ("sounding") until acknowledged (``acknowledge``);
- **notification levels** (configurable, raised once each): by default Ka,r 1000,
  2000, 3000 and 5000 mGy, KAP 100, 200, 300 and 500 Gy cm2, fluoro time 30 and
  60 min (NCRP Report 168 / SIR: first notification at 3 Gy then every 1 Gy, and the
  substantial radiation dose level SRDL 5 Gy, 500 Gy cm2, 60 min);
- the **air-kerma rate** at the reference point (mGy/min) as the mean over a sliding
  window (1 s by default): each frame's kerma is spread evenly over its frame
  interval (``1 / pulse_rate_pps`` ending at the frame time; a spot exposure over
  its pulse width), so a constant pulse train reads exactly kerma/pulse x pulses/s x
  60 once it has lasted a full window;
- **rate limits** (21 CFR 1020.32(d)): 88 mGy/min in normal (and low) mode, 176 mGy/min
  in high-level mode, checked on fluoro frames only (recording is exempt); each
  excursion above the limit raises one ``rate_limit`` alarm and is counted.

Alarms go to subscribers (callbacks, called synchronously) and stay queryable
(``alarms``, ``active_alarms``). ``summary()`` returns a JSON-ready dict.

All times are in seconds on one monotonic clock supplied by the caller (the session);
the ledger never reads a wall clock, so procedures can be simulated faster than real time.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MODES = ("fluoro", "spot", "cine")
DOSE_MODES = ("low", "normal", "high")

RATE_LIMIT_NORMAL_MGY_MIN = 88.0
"""21 CFR 1020.32(d)(1): air-kerma rate limit at the measuring point in normal mode."""
RATE_LIMIT_HIGH_MGY_MIN = 176.0
"""21 CFR 1020.32(d)(2): limit with the optional high-level control activated."""

FLUORO_ALARM_INTERVAL_S = 300.0
"""21 CFR 1020.32(h)(2)(ii): an audible signal at each passage of 5 min of fluoro time."""


def _bad(where: str, field_: str, expected: str, got: Any) -> ValueError:
    return ValueError(f"{where}.{field_}: expected {expected}, got {got!r}")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class DoseRecord:
    """One exposure (one pulse / frame) as the ledger books it.

    ``time_s``               frame time on the session clock (end of its frame interval)
    ``kvp``, ``ma``          tube voltage and current; ``pulse_ms`` the pulse width
    ``mode``                 "fluoro", "spot" or "cine"
    ``pulse_rate_pps``       frames per second of the run (30 for continuous fluoro);
                             0 for a single spot exposure
    ``ka_r_mgy``             air kerma at the reference point delivered by this frame
    ``kap_gy_cm2``           kerma-area product of this frame
    ``field_size_cm``        (width, height) of the collimated field at the reference point
    ``primary_angle_deg``, ``secondary_angle_deg``  C-arm angles (DICOM convention)
    ``dose_mode``            "low", "normal" or "high" (high-level control)
    """

    time_s: float
    kvp: float
    ma: float
    pulse_ms: float
    mode: str = "fluoro"
    pulse_rate_pps: float = 7.5
    ka_r_mgy: float = 0.0
    kap_gy_cm2: float = 0.0
    field_size_cm: tuple[float, float] = (0.0, 0.0)
    primary_angle_deg: float = 0.0
    secondary_angle_deg: float = 0.0
    dose_mode: str = "normal"

    def __post_init__(self) -> None:
        w = "DoseRecord"
        if not math.isfinite(self.time_s):
            raise _bad(w, "time_s", "a finite time in seconds", self.time_s)
        if not self.kvp > 0:
            raise _bad(w, "kvp", "a positive tube voltage", self.kvp)
        if not self.ma >= 0:
            raise _bad(w, "ma", "a tube current >= 0", self.ma)
        if not self.pulse_ms > 0:
            raise _bad(w, "pulse_ms", "a positive pulse width", self.pulse_ms)
        if self.mode not in MODES:
            raise _bad(w, "mode", f"one of {MODES}", self.mode)
        if not self.pulse_rate_pps >= 0 or (self.pulse_rate_pps == 0 and self.mode != "spot"):
            raise _bad(w, "pulse_rate_pps", "> 0 (0 only for a single spot exposure)", self.pulse_rate_pps)
        if not (self.ka_r_mgy >= 0 and math.isfinite(self.ka_r_mgy)):
            raise _bad(w, "ka_r_mgy", "a finite air kerma >= 0", self.ka_r_mgy)
        if not (self.kap_gy_cm2 >= 0 and math.isfinite(self.kap_gy_cm2)):
            raise _bad(w, "kap_gy_cm2", "a finite kerma-area product >= 0", self.kap_gy_cm2)
        if len(self.field_size_cm) != 2 or not all(v >= 0 for v in self.field_size_cm):
            raise _bad(w, "field_size_cm", "(width, height) >= 0", self.field_size_cm)
        if self.dose_mode not in DOSE_MODES:
            raise _bad(w, "dose_mode", f"one of {DOSE_MODES}", self.dose_mode)

    @property
    def interval_s(self) -> float:
        """The time this frame's kerma is spread over for rate purposes."""
        return 1.0 / self.pulse_rate_pps if self.pulse_rate_pps > 0 else self.pulse_ms * 1e-3


ExposureEvent = DoseRecord
"""Alias: the issue calls a per-frame exposure an ExposureEvent."""


@dataclass(frozen=True)
class NotificationLevel:
    """A threshold raised once: ``quantity`` is "ka_r_mgy", "kap_gy_cm2" or "fluoro_time_s"."""

    quantity: str
    threshold: float
    label: str = ""

    def __post_init__(self) -> None:
        if self.quantity not in ("ka_r_mgy", "kap_gy_cm2", "fluoro_time_s"):
            raise _bad("NotificationLevel", "quantity", "'ka_r_mgy', 'kap_gy_cm2' or 'fluoro_time_s'", self.quantity)
        if not self.threshold > 0:
            raise _bad("NotificationLevel", "threshold", "a positive level", self.threshold)


def default_notification_levels() -> tuple[NotificationLevel, ...]:
    """Ka,r 1/2/3/5 Gy, KAP 100/200/300/500 Gy cm2, fluoro time 30/60 min (NCRP 168 / SIR)."""
    lv = [NotificationLevel("ka_r_mgy", v, lab) for v, lab in
          ((1000.0, ""), (2000.0, ""), (3000.0, "first notification (NCRP 168)"), (5000.0, "SRDL (NCRP 168)"))]
    lv += [NotificationLevel("kap_gy_cm2", v, lab) for v, lab in
           ((100.0, ""), (200.0, ""), (300.0, "first notification (NCRP 168)"), (500.0, "SRDL (NCRP 168)"))]
    lv += [NotificationLevel("fluoro_time_s", 1800.0, "first notification (NCRP 168)"),
           NotificationLevel("fluoro_time_s", 3600.0, "SRDL (NCRP 168)")]
    return tuple(lv)


@dataclass(frozen=True)
class LedgerConfig:
    rate_window_s: float = 1.0
    fluoro_alarm_interval_s: float = FLUORO_ALARM_INTERVAL_S
    notification_levels: tuple[NotificationLevel, ...] = field(default_factory=default_notification_levels)
    rate_limit_normal_mgy_min: float = RATE_LIMIT_NORMAL_MGY_MIN
    rate_limit_high_mgy_min: float = RATE_LIMIT_HIGH_MGY_MIN

    def __post_init__(self) -> None:
        if not self.rate_window_s > 0:
            raise _bad("LedgerConfig", "rate_window_s", "a positive window", self.rate_window_s)
        if not self.fluoro_alarm_interval_s > 0:
            raise _bad("LedgerConfig", "fluoro_alarm_interval_s", "a positive interval", self.fluoro_alarm_interval_s)

    def rate_limit(self, dose_mode: str) -> float:
        return self.rate_limit_high_mgy_min if dose_mode == "high" else self.rate_limit_normal_mgy_min


@dataclass(frozen=True)
class Alarm:
    """One alarm or notification.

    ``kind``: "fluoro_time" (the 5-minute signal; needs acknowledgement),
    "ka_r_level", "kap_level", "fluoro_time_level" (notification levels) or
    "rate_limit" (air-kerma rate above the regulatory limit for the dose mode).
    ``time_s`` is when the threshold was crossed (exact for the time-based kinds,
    the time of the record that crossed it otherwise); ``value`` the quantity then.
    """

    index: int
    kind: str
    time_s: float
    threshold: float
    value: float
    unit: str
    message: str
    requires_ack: bool

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "kind": self.kind, "time_s": self.time_s, "threshold": self.threshold,
                "value": self.value, "unit": self.unit, "message": self.message, "requires_ack": self.requires_ack}


@dataclass
class Run:
    """One pedal press (or one implicit spot exposure); mutable while open."""

    index: int
    mode: str
    start_s: float
    end_s: float | None = None
    n_frames: int = 0
    ka_r_mgy: float = 0.0
    kap_gy_cm2: float = 0.0
    beam_on_s: float = 0.0
    pulse_rates_pps: list[float] = field(default_factory=list)
    dose_modes: list[str] = field(default_factory=list)
    kvp_min: float = math.inf
    kvp_max: float = -math.inf
    primary_angle_deg: float | None = None
    secondary_angle_deg: float | None = None
    implicit: bool = False

    def duration_s(self, now_s: float) -> float:
        return (self.end_s if self.end_s is not None else now_s) - self.start_s

    def to_dict(self, now_s: float) -> dict[str, Any]:
        return {
            "index": self.index, "mode": self.mode, "start_s": self.start_s, "end_s": self.end_s,
            "duration_s": self.duration_s(now_s), "n_frames": self.n_frames, "ka_r_mgy": self.ka_r_mgy,
            "kap_gy_cm2": self.kap_gy_cm2, "beam_on_s": self.beam_on_s,
            "pulse_rates_pps": list(self.pulse_rates_pps), "dose_modes": list(self.dose_modes),
            "kvp_range": [self.kvp_min, self.kvp_max] if self.n_frames else None,
            "primary_angle_deg": self.primary_angle_deg, "secondary_angle_deg": self.secondary_angle_deg,
            "implicit": self.implicit,
        }


class _RateWindow:
    """Sliding-window mean of a piecewise-constant kerma rate (frames spread over their interval)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._items: deque[tuple[float, float, float]] = deque()  # (t_start, t_end, mgy_per_s)

    def add(self, t_end: float, interval_s: float, ka_mgy: float) -> None:
        """Add a frame at ``t_end`` (the ledger clock): frames that ended a full window
        before it can no longer matter to a query at or after the clock and are dropped."""
        self._items.append((t_end - interval_s, t_end, ka_mgy / interval_s))
        while self._items and self._items[0][1] <= t_end - self.window_s:
            self._items.popleft()

    def rate_mgy_min(self, now_s: float) -> float:
        lo = now_s - self.window_s
        total = 0.0
        for a, b, r in self._items:
            overlap = min(b, now_s) - max(a, lo)
            if overlap > 0:
                total += r * overlap
        return total / self.window_s * 60.0


# --------------------------------------------------------------------------- the ledger

Subscriber = Callable[[Alarm], None]


class DoseLedger:
    """The stateful per-procedure dose ledger (see the module docstring)."""

    def __init__(self, config: LedgerConfig | None = None) -> None:
        self.config = config if config is not None else LedgerConfig()
        self._subscribers: list[Subscriber] = []
        self.now_s: float | None = None
        self.ka_r_mgy = 0.0
        self.kap_gy_cm2 = 0.0
        self.beam_on_time_s = 0.0
        self.n_frames = 0
        self.n_frames_by_mode = {m: 0 for m in MODES}
        self.ka_r_by_mode_mgy = {m: 0.0 for m in MODES}
        self.kap_by_mode_gy_cm2 = {m: 0.0 for m in MODES}
        self.runs: list[Run] = []
        self._open: Run | None = None
        self._closed_fluoro_s = 0.0
        self._closed_acq_s = 0.0
        self._alarms: list[Alarm] = []
        self._acked: dict[int, float] = {}
        self._next_fluoro_alarm_s = self.config.fluoro_alarm_interval_s
        self._levels_pending = sorted(self.config.notification_levels, key=lambda lv: lv.threshold)
        self._rate_all = _RateWindow(self.config.rate_window_s)
        self._rate_fluoro = _RateWindow(self.config.rate_window_s)
        self.peak_rate_mgy_min = 0.0
        self.peak_fluoro_rate_mgy_min = 0.0
        self._over_limit = False
        self.frames_over_rate_limit = 0
        self.subscriber_errors: list[str] = []

    # ---------------------------------------------------------------- subscribers
    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(alarm)`` for every alarm raised from now on; returns an unsubscribe function."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _raise(self, kind: str, time_s: float, threshold: float, value: float, unit: str, message: str,
               requires_ack: bool, raised: list[Alarm]) -> None:
        alarm = Alarm(len(self._alarms), kind, float(time_s), float(threshold), float(value), unit, message,
                      requires_ack)
        self._alarms.append(alarm)
        raised.append(alarm)
        for cb in list(self._subscribers):
            try:
                cb(alarm)
            except Exception as exc:  # a broken display must not stop the dose accounting
                msg = f"subscriber {cb!r} failed on alarm {alarm.index} ({kind}): {exc!r}"
                self.subscriber_errors.append(msg)
                warnings.warn(msg, RuntimeWarning, stacklevel=3)

    # ---------------------------------------------------------------- clock
    def _advance(self, time_s: float, where: str) -> list[Alarm]:
        t = float(time_s)
        if not math.isfinite(t):
            raise _bad("DoseLedger", where, "a finite time in seconds", time_s)
        if self.now_s is not None and t < self.now_s:
            raise _bad("DoseLedger", where, f"a time >= the ledger clock {self.now_s} s (time runs forward)", time_s)
        self.now_s = t
        raised: list[Alarm] = []
        self._check_time_alarms(raised)
        return raised

    def fluoro_time_s_at(self, now_s: float | None = None) -> float:
        """Cumulative fluoro pedal-down time (s) at ``now_s`` (default: the ledger clock)."""
        now = self.now_s if now_s is None else now_s
        extra = 0.0
        if self._open is not None and self._open.mode == "fluoro" and now is not None:
            extra = max(0.0, now - self._open.start_s)
        return self._closed_fluoro_s + extra

    @property
    def fluoro_time_s(self) -> float:
        return self.fluoro_time_s_at()

    @property
    def acquisition_time_s(self) -> float:
        """Cumulative pedal-down time of cine and spot runs (not fluoro time)."""
        extra = 0.0
        if self._open is not None and self._open.mode != "fluoro" and self.now_s is not None:
            extra = self.now_s - self._open.start_s
        return self._closed_acq_s + extra

    def _crossing_time(self, fluoro_s: float) -> float:
        """The session time at which the cumulative fluoro time reached ``fluoro_s`` (inside the open run)."""
        run = self._open
        assert run is not None and run.mode == "fluoro"
        return run.start_s + (fluoro_s - self._closed_fluoro_s)

    def _check_time_alarms(self, raised: list[Alarm]) -> None:
        if self._open is None or self._open.mode != "fluoro":
            return
        ft = self.fluoro_time_s
        interval = self.config.fluoro_alarm_interval_s
        while ft >= self._next_fluoro_alarm_s:
            thr = self._next_fluoro_alarm_s
            self._raise("fluoro_time", self._crossing_time(thr), thr, thr, "s",
                        f"{thr / 60:g} min of fluoroscopy time -- acknowledge to silence (21 CFR 1020.32(h))",
                        True, raised)
            self._next_fluoro_alarm_s += interval
        while self._levels_pending:
            lv = next((lv for lv in self._levels_pending if lv.quantity == "fluoro_time_s"), None)
            if lv is None or ft < lv.threshold:
                break
            self._levels_pending.remove(lv)
            self._raise("fluoro_time_level", self._crossing_time(lv.threshold), lv.threshold, lv.threshold, "s",
                        f"fluoro time reached {lv.threshold / 60:g} min" + (f" ({lv.label})" if lv.label else ""),
                        False, raised)

    def tick(self, time_s: float) -> list[Alarm]:
        """Advance the clock without an exposure (fluoro time runs while the pedal is down)."""
        return self._advance(time_s, "tick.time_s")

    # ---------------------------------------------------------------- runs
    def pedal_down(self, time_s: float, mode: str = "fluoro") -> list[Alarm]:
        """Start a run (one pedal press) in ``mode`` ("fluoro", "cine" or "spot")."""
        if mode not in MODES:
            raise _bad("DoseLedger.pedal_down", "mode", f"one of {MODES}", mode)
        raised = self._advance(time_s, "pedal_down.time_s")
        if self._open is not None:
            raise ValueError(f"DoseLedger.pedal_down: run {self._open.index} ({self._open.mode}) is still open "
                             f"since {self._open.start_s} s; call pedal_up first")
        self._open = Run(len(self.runs), mode, float(time_s))
        self.runs.append(self._open)
        return raised

    def pedal_up(self, time_s: float) -> list[Alarm]:
        """End the open run (the fluoro time of a fluoro run stops counting here)."""
        if self._open is None:
            raise ValueError("DoseLedger.pedal_up: no run is open (pedal_down was not called)")
        raised = self._advance(time_s, "pedal_up.time_s")
        self._close(float(time_s))
        return raised

    def _close(self, end_s: float) -> None:
        run = self._open
        assert run is not None
        run.end_s = end_s
        if run.mode == "fluoro":
            self._closed_fluoro_s += end_s - run.start_s
        else:
            self._closed_acq_s += end_s - run.start_s
        self._open = None
        self._over_limit = False

    @property
    def pedal_is_down(self) -> bool:
        return self._open is not None

    @property
    def current_run(self) -> Run | None:
        return self._open

    # ---------------------------------------------------------------- records
    def add(self, record: DoseRecord) -> list[Alarm]:
        """Book one frame. Fluoro and cine frames must fall inside a run (between
        ``pedal_down`` and ``pedal_up``) of the same mode. A spot frame outside a spot
        run (no run open, or a fluoro/cine run open) is booked as its own one-frame
        run lasting its pulse width; an open fluoro run keeps running. Returns the
        alarms this frame raised."""
        if not isinstance(record, DoseRecord):
            raise TypeError(f"DoseLedger.add: expected a DoseRecord, got {type(record).__name__}")
        t = record.time_s
        implicit = record.mode == "spot" and (self._open is None or self._open.mode != "spot")
        if self._open is None and not implicit:
            raise ValueError(f"DoseLedger.add: {record.mode} frame at {t} s outside a run; call pedal_down first")
        if self._open is not None and not implicit and record.mode != self._open.mode:
            raise _bad("DoseLedger.add", "record.mode", f"{self._open.mode!r} (the open run's mode)", record.mode)
        raised = self._advance(t, "add.record.time_s")
        if implicit:
            run = Run(len(self.runs), "spot", t, end_s=t + record.pulse_ms * 1e-3, implicit=True)
            self.runs.append(run)
            self._closed_acq_s += record.pulse_ms * 1e-3
        else:
            run = self._open
        run.n_frames += 1
        run.ka_r_mgy += record.ka_r_mgy
        run.kap_gy_cm2 += record.kap_gy_cm2
        run.beam_on_s += record.pulse_ms * 1e-3
        if record.pulse_rate_pps not in run.pulse_rates_pps:
            run.pulse_rates_pps.append(record.pulse_rate_pps)
        if record.dose_mode not in run.dose_modes:
            run.dose_modes.append(record.dose_mode)
        run.kvp_min = min(run.kvp_min, record.kvp)
        run.kvp_max = max(run.kvp_max, record.kvp)
        if run.primary_angle_deg is None:
            run.primary_angle_deg = record.primary_angle_deg
            run.secondary_angle_deg = record.secondary_angle_deg

        self.n_frames += 1
        self.n_frames_by_mode[record.mode] += 1
        self.ka_r_mgy += record.ka_r_mgy
        self.kap_gy_cm2 += record.kap_gy_cm2
        self.ka_r_by_mode_mgy[record.mode] += record.ka_r_mgy
        self.kap_by_mode_gy_cm2[record.mode] += record.kap_gy_cm2
        self.beam_on_time_s += record.pulse_ms * 1e-3

        # rates
        self._rate_all.add(t, record.interval_s, record.ka_r_mgy)
        rate = self._rate_all.rate_mgy_min(t)
        self.peak_rate_mgy_min = max(self.peak_rate_mgy_min, rate)
        if record.mode == "fluoro":
            self._rate_fluoro.add(t, record.interval_s, record.ka_r_mgy)
            frate = self._rate_fluoro.rate_mgy_min(t)
            self.peak_fluoro_rate_mgy_min = max(self.peak_fluoro_rate_mgy_min, frate)
            limit = self.config.rate_limit(record.dose_mode)
            if frate > limit:
                self.frames_over_rate_limit += 1
                if not self._over_limit:
                    self._raise("rate_limit", t, limit, frate, "mGy/min",
                                f"air-kerma rate {frate:.1f} mGy/min exceeds the {limit:g} mGy/min limit of "
                                f"{record.dose_mode} mode (21 CFR 1020.32(d))", False, raised)
                self._over_limit = True
            else:
                self._over_limit = False

        # notification levels on the cumulative dose
        for lv in list(self._levels_pending):
            if lv.quantity == "fluoro_time_s":
                continue
            value = self.ka_r_mgy if lv.quantity == "ka_r_mgy" else self.kap_gy_cm2
            if value >= lv.threshold:
                self._levels_pending.remove(lv)
                kind, unit = ("ka_r_level", "mGy") if lv.quantity == "ka_r_mgy" else ("kap_level", "Gy cm2")
                name = "Ka,r" if lv.quantity == "ka_r_mgy" else "KAP"
                self._raise(kind, t, lv.threshold, value, unit,
                            f"cumulative {name} reached {lv.threshold:g} {unit}" + (f" ({lv.label})" if lv.label else ""),
                            False, raised)

        return raised

    # ---------------------------------------------------------------- queries
    def air_kerma_rate_mgy_min(self, now_s: float | None = None, fluoro_only: bool = False) -> float:
        """Mean reference-point air-kerma rate over the last ``rate_window_s`` before ``now_s``
        (default: the ledger clock; times before the clock may miss frames already dropped)."""
        now = self.now_s if now_s is None else float(now_s)
        if now is None:
            return 0.0
        return (self._rate_fluoro if fluoro_only else self._rate_all).rate_mgy_min(now)

    @property
    def alarms(self) -> list[Alarm]:
        """Every alarm raised so far, in order."""
        return list(self._alarms)

    @property
    def active_alarms(self) -> list[Alarm]:
        """Alarms that need acknowledgement and have not had it."""
        return [a for a in self._alarms if a.requires_ack and a.index not in self._acked]

    @property
    def fluoro_alarm_active(self) -> bool:
        """True while a 5-minute alarm is sounding (raised and not yet acknowledged)."""
        return any(a.kind == "fluoro_time" for a in self.active_alarms)

    def is_acknowledged(self, alarm: Alarm) -> bool:
        return alarm.index in self._acked

    def acknowledge(self, time_s: float | None = None, kind: str | None = "fluoro_time") -> int:
        """Acknowledge (silence / reset) the active alarms of ``kind`` (None: all kinds).
        Returns how many were acknowledged. ``time_s`` (default: the ledger clock) is
        recorded in the summary."""
        t = self.now_s if time_s is None else float(time_s)
        if time_s is not None:
            self._advance(time_s, "acknowledge.time_s")
        n = 0
        for a in self.active_alarms:
            if kind is None or a.kind == kind:
                self._acked[a.index] = t if t is not None else 0.0
                n += 1
        return n

    def summary(self) -> dict[str, Any]:
        """Per-procedure summary; only dicts, lists, strings, numbers, booleans and None."""
        now = self.now_s if self.now_s is not None else 0.0
        fluoro_runs = [r for r in self.runs if r.mode == "fluoro"]
        return {
            "clock_s": now,
            "definitions": {
                "fluoro_time_s": "cumulative fluoro-pedal-down time of fluoro-mode runs "
                                 "(21 CFR 1020.30(b) fluoroscopic irradiation time); cine/spot excluded",
                "beam_on_time_s": "sum of pulse widths of all frames",
                "ka_r_mgy": "air kerma at the patient entrance reference point (IEC 60601-2-43)",
                "air_kerma_rate": f"mean over a sliding {self.config.rate_window_s:g} s window",
            },
            "totals": {
                "ka_r_mgy": self.ka_r_mgy,
                "kap_gy_cm2": self.kap_gy_cm2,
                "fluoro_time_s": self.fluoro_time_s,
                "fluoro_time_min": self.fluoro_time_s / 60.0,
                "acquisition_time_s": self.acquisition_time_s,
                "beam_on_time_s": self.beam_on_time_s,
                "n_frames": self.n_frames,
                "n_frames_by_mode": dict(self.n_frames_by_mode),
                "ka_r_by_mode_mgy": dict(self.ka_r_by_mode_mgy),
                "kap_by_mode_gy_cm2": dict(self.kap_by_mode_gy_cm2),
                "n_runs": len(self.runs),
                "n_fluoro_runs": len(fluoro_runs),
            },
            "peak_rate_mgy_min": self.peak_rate_mgy_min,
            "peak_fluoro_rate_mgy_min": self.peak_fluoro_rate_mgy_min,
            "rate_limits_mgy_min": {"normal": self.config.rate_limit_normal_mgy_min,
                                    "high": self.config.rate_limit_high_mgy_min},
            "frames_over_rate_limit": self.frames_over_rate_limit,
            "runs": [r.to_dict(now) for r in self.runs],
            "alarms": [dict(a.to_dict(), acknowledged_at_s=self._acked.get(a.index)) for a in self._alarms],
            "fluoro_alarm_active": self.fluoro_alarm_active,
            "notification_levels": [
                {"quantity": lv.quantity, "threshold": lv.threshold, "label": lv.label,
                 "raised": lv not in self._levels_pending}
                for lv in sorted(self.config.notification_levels, key=lambda lv: (lv.quantity, lv.threshold))
            ],
        }
