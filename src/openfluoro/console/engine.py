"""The console's engine: a live ``Session`` driven in real time, independent of the web layer.

``Console`` owns the session and everything around it that a workstation adds:

* an acquisition thread that calls ``session.acquire()`` while the pedal is down, paced to
  the wall clock at the pulse rate (the session's own clock advances one frame period per
  call), and publishes each frame, encoded once, to every listener;
* the pedal with an optional *lease* (a page holding the pedal renews it; a page that goes
  away lets it lapse and the beam stops -- a dead-man switch);
* the live monitor (live frames, then the last-image hold) and the reference monitor (a
  stored image, or a loop being replayed);
* loading a patient (the built-in phantom or a CT) in the background while the current
  session keeps running; a file that cannot be read leaves the session as it was;
* loops: record, replay to the reference monitor, export (DICOM RF + dose SR + cine via
  ``openfluoro.io``);
* guidance overlays from a pluggable source: the guidance detectors on the pixels
  (``detected.DetectedOverlay``, default) or the ground truth (``overlay.ground_truth_source``).

Listeners are plain callables receiving ``("json", dict)`` or ``("frame", meta_dict, bytes)``
from the engine's threads; the web server forwards them to its WebSocket clients.
"""

from __future__ import annotations

import datetime
import inspect
import itertools
import json
import shutil
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from openfluoro.console.detected import DetectedOverlay
from openfluoro.console.overlay import OverlayContext, OverlaySource, burn_overlay, ground_truth_source
from openfluoro.console.protocol import encode_frame
from openfluoro.fluoro.frame import Frame, geometry_from_metadata
from openfluoro.fluoro.session import Session, SessionError
from openfluoro.geometry.carm import STANDARD_VIEWS, VIEW_ALIASES, Detector
from openfluoro.scene.patient import Patient

PULSE_RATES = (30.0, 15.0, 7.5, 3.75, 1.0)
DOSE_MODES = ("low", "normal", "high")
VIEWS = tuple(STANDARD_VIEWS) + tuple(VIEW_ALIASES)
STATUS_INTERVAL_S = 0.25
#: a frame slower than this extends the pedal lease by its duration
LEASE_STALL_S = 0.2
#: named overlay sources: what the guidance detectors find in the pixels (default), or the
#: simulator's ground truth (teaching)
OVERLAY_SOURCES: dict[str, Callable[[], OverlaySource]] = {"detected": DetectedOverlay,
                                                           "truth": lambda: ground_truth_source}
SYNTHETIC_IDENTITY = {"PatientName": "SYNTHETIC^PATIENT", "PatientID": "OPENFLUORO-SIM"}

Message = tuple  # ("json", dict) | ("frame", dict, bytes)
Listener = Callable[[Message], None]


def _fresh(source: OverlaySource | None, live: bool = True) -> OverlaySource | None:
    """A stateless copy of an overlay source for another stream of frames (or the source itself);
    ``live=False`` for a stream processed faster than real time (a cine export), passed on to
    a ``fresh`` that takes it."""
    fresh = getattr(source, "fresh", None)
    if not callable(fresh):
        return source
    return fresh(live=live) if "live" in inspect.signature(fresh).parameters else fresh()


class ConsoleError(RuntimeError):
    """A console request that cannot be done now (no patient yet, nothing recorded, ...)."""


class NotFound(KeyError):
    """No such loop or exported file."""


def now_ms() -> float:
    return time.time() * 1000.0


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, datetime.datetime)):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def to_json(obj: Any) -> str:
    """JSON text; NaN and infinities become null (JSON has no such numbers)."""
    return json.dumps(_clean(obj), default=_jsonable)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


@dataclass
class Loop:
    """A recorded loop (a run folder written by ``fluoro.record.LoopRecorder``)."""

    id: str
    folder: Path
    started: str
    frames: int = 0
    duration_s: float = 0.0
    pulse_rate_pps: float | None = None
    recording: bool = True
    exports: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "started": self.started, "frames": self.frames, "duration_s": self.duration_s,
                "pulse_rate_pps": self.pulse_rate_pps, "recording": self.recording, "exports": list(self.exports),
                "folder": str(self.folder)}


@dataclass
class Shown:
    """What a monitor shows now (sent to a page that connects later)."""

    image: np.ndarray
    kind: str
    meta: dict[str, Any]


class Console:
    """A fluoroscope workstation around one live session at a time."""

    def __init__(self, *, detector: Detector | None = None, seed: int = 0, workdir: str | Path | None = None,
                 overlay_source: OverlaySource | str = "detected", pedal_lease_s: float = 1.0,
                 session_kwargs: dict[str, Any] | None = None) -> None:
        self.detector = detector
        self.seed = seed
        self.session_kwargs = dict(session_kwargs or {})
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="openfluoro-console-")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if isinstance(overlay_source, str):
            if overlay_source not in OVERLAY_SOURCES:
                raise ValueError(f"overlay source must be one of {', '.join(OVERLAY_SOURCES)} or a callable, "
                                 f"got {overlay_source!r}")
            self.overlay_name = overlay_source
            overlay_source = OVERLAY_SOURCES[overlay_source]()
        else:
            self.overlay_name = getattr(overlay_source, "__name__", type(overlay_source).__name__)
        self.overlay_source: OverlaySource | None = overlay_source
        self.default_pedal_lease_s = pedal_lease_s

        self.session: Session | None = None
        self.patient: Patient | None = None
        #: state "empty" | "loading" | "ready" | "error"; description: the patient in use (None before
        #: the first); loading: what is being loaded; message: progress or the last load's error
        self.patient_state: dict[str, Any] = {"state": "empty", "description": None, "loading": None,
                                              "message": None}
        self.context = OverlayContext()
        self.overlay_enabled = True
        self.live: Shown | None = None
        self.reference: Shown | None = None
        self.loops: dict[str, Loop] = {}
        self._loop_ids = itertools.count(1)
        self._current_loop: Loop | None = None
        self.replay_state: dict[str, Any] | None = None
        self.log: deque[dict[str, Any]] = deque(maxlen=200)

        self._listeners: list[Listener] = []
        self._lock = threading.RLock()             # console state
        self._status_lock = threading.Lock()
        self._acq_lock = threading.RLock()         # acquisition, image chain and what the monitors show
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pedal_deadline: float | None = None  # monotonic time the pedal lease runs out
        self._loading = False
        self._events_seen = 0
        self._last_status = 0.0
        self._replay_stop = threading.Event()
        self._replay_thread: threading.Thread | None = None
        self.frames_published = 0
        self._thread = threading.Thread(target=self._acquisition_loop, name="openfluoro-acquisition", daemon=True)
        self._thread.start()

    # ================================================================== listeners
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _emit(self, message: Message) -> None:
        for listener in list(self._listeners):
            try:
                listener(message)
            except Exception:  # noqa: BLE001 - one broken listener must not stop the beam loop
                pass

    def event(self, text: str, level: str = "info") -> None:
        e = {"type": "event", "level": level, "text": text, "time": datetime.datetime.now().strftime("%H:%M:%S")}
        self.log.append(e)
        self._emit(("json", e))

    def _session_events(self) -> None:
        s = self.session
        if s is None:
            return
        new = s.events[self._events_seen:]
        self._events_seen = len(s.events)
        for _, text in new:
            level = "warn" if ("blocked" in text or "alarm" in text) else "info"
            self.event(text, level)

    def publish_status(self) -> None:
        # computed and handed on under one lock, so that no older status overtakes a newer one
        with self._status_lock:
            self._last_status = time.monotonic()
            self._emit(("json", {"type": "status", **self.status()}))

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._replay_stop.set()
        with self._lock:
            s = self.session
        if s is not None:
            with self._acq_lock:
                s.pedal_up()
                s.stop_recording()
        self._thread.join(timeout=5)

    # ================================================================== patient
    def _build(self, make_patient: Callable[[], Patient], description: str) -> None:
        try:
            patient = make_patient()
            self._set_patient_state("loading", loading=patient.description or description,
                                    message="preparing the renderer (material volumes, spine)")
            session = Session.for_patient(patient, detector=self.detector, seed=self.seed, **self.session_kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the running session as it was
            self._load_failed(f"cannot load {description}: {exc}")
            return
        self._install(patient, session)

    def _load_failed(self, message: str) -> None:
        with self._lock:
            self._loading = False
        self._set_patient_state("ready" if self.session is not None else "error", loading=None, message=message)
        self.event(message, "error")
        self.publish_status()

    def _install(self, patient: Patient, session: Session) -> None:
        self.stop_replay()
        with self._acq_lock:
            old = self.session
            if old is not None:
                old.pedal_up()
                if old.recorder is not None:
                    self._finish_loop(old)
            with self._lock:
                self.session, self.patient = session, patient
                self._pedal_deadline = None
                self._events_seen = 0
                self.context = OverlayContext(spine=session.spine, patient=patient)
                self.overlay_source = _fresh(self.overlay_source)     # no tracker state from the last patient
                self.live = None
                self.reference = None
                self._loading = False
        self._set_patient_state("ready", loading=None, message=None)
        levels = sorted(self.needle_levels())
        self.event(f"patient ready: {patient.description}"
                   + (f" (needle plans {', '.join(levels)})" if levels else "")
                   + ("" if session.spine is not None else "; no labelled spine: traction unavailable"))
        self.publish_status()

    def _set_patient_state(self, state: str, loading: str | None, message: str | None) -> None:
        with self._lock:
            current = None if self.patient is None else (self.patient.description or "patient")
            self.patient_state = {"state": state, "description": current, "loading": loading, "message": message}

    def _start_loading(self, description: str) -> None:
        with self._lock:
            if self._loading:
                raise ConsoleError("a patient is already being loaded; wait for it to finish")
            self._loading = True
        self._set_patient_state("loading", loading=description, message="reading")
        self.publish_status()

    def load_phantom(self, wait: bool = False) -> None:
        """Load the built-in lumbar phantom (generated once, then read from the disk cache)."""
        def make() -> Patient:
            from openfluoro.scene.patient import patient_from_phantom
            from openfluoro.scene.phantom import default_phantom

            return patient_from_phantom(default_phantom())

        self._start_loading("built-in lumbar phantom")
        self._run(lambda: self._build(make, "built-in lumbar phantom"), wait)

    def load_patient(self, patient: Patient, wait: bool = False) -> None:
        """Use an already loaded patient (e.g. from a script or a test)."""
        self._start_loading(patient.description or "patient")
        self._run(lambda: self._build(lambda: patient, patient.description or "patient"), wait)

    def load_volume(self, path: str | Path, wait: bool = False) -> str:
        """Read a CT (DICOM folder, NIfTI, NRRD, MHA) now -- a bad file raises ``VolumeError``
        with its message and changes nothing -- then build its session in the background."""
        from openfluoro.scene.patient import load_patient

        path = Path(path)
        self._start_loading(str(path))
        try:
            patient = load_patient(path)
        except BaseException as exc:
            self._load_failed(f"cannot load {path}: {exc}")
            raise
        self._run(lambda: self._build(lambda: patient, str(path)), wait)
        return patient.description

    def _run(self, fn: Callable[[], None], wait: bool) -> None:
        if wait:
            fn()
        else:
            threading.Thread(target=fn, name="openfluoro-load", daemon=True).start()

    def needle_levels(self) -> dict[str, dict[str, Any]]:
        if self.patient is None:
            return {}
        return dict(self.patient.landmarks.get("needle", {}) or {})

    def require_session(self) -> Session:
        s = self.session
        if s is None:
            state = self.patient_state
            if state["state"] == "loading":
                raise ConsoleError(f"the patient is still being prepared ({state['loading']}); try again shortly")
            raise ConsoleError("no patient loaded: load the phantom or a CT first")
        return s

    # ================================================================== acquisition
    def _acquisition_loop(self) -> None:
        next_t: float | None = None
        while not self._stop.is_set():
            s = self.session
            deadline = self._pedal_deadline
            if s is not None and s.pedal and deadline is not None and time.monotonic() > deadline:
                self.pedal(False, reason="pedal released: the page holding it stopped renewing it")
                continue
            if s is None or not s.pedal:
                next_t = None
                if s is not None and time.monotonic() - self._last_status > 1.0:
                    self.publish_status()
                self._wake.wait(0.1)
                self._wake.clear()
                continue
            now = time.perf_counter()
            if next_t is not None and now < next_t:
                self._wake.wait(next_t - now)
                self._wake.clear()
                continue
            t_pulse = now_ms()
            with self._acq_lock:
                if self.session is not s or not s.pedal:
                    continue
                try:
                    t0 = time.monotonic()
                    frame = s.acquire()
                    took = time.monotonic() - t0
                    if took > LEASE_STALL_S and self._pedal_deadline is not None:
                        # a slow frame (a new C-arm pose being cast, kernels compiling) can keep the
                        # server from hearing the page's renewals: that time does not count
                        self._pedal_deadline += took
                except SessionError:
                    continue
                except Exception as exc:  # noqa: BLE001 - stop the beam, say why, keep the console up
                    s.pedal_up()
                    self.event(f"acquisition failed, beam stopped: {exc}", "error")
                    continue
                self._show_frame(frame, "live", t_pulse)
            period = 1.0 / s.pulse_rate_pps
            next_t = (now if next_t is None else next_t) + period
            if time.perf_counter() > next_t + period:   # more than a frame behind: do not try to catch up
                next_t = time.perf_counter()
            self._session_events()
            if any(e.startswith("alarm:") for e in frame.events):
                for e in frame.events:
                    if e.startswith("alarm:"):
                        self.event(e, "warn")
            if time.monotonic() - self._last_status > STATUS_INTERVAL_S:
                self.publish_status()

    def _frame_meta(self, frame: Frame, kind: str, t_pulse: float) -> dict[str, Any]:
        ex = frame.exposure
        gt = frame.ground_truth
        overlay = None
        if self.overlay_enabled and self.overlay_source is not None:
            try:
                overlay = self.overlay_source(frame.image, frame.geometry, gt, self.context)
            except Exception as exc:  # noqa: BLE001 - a broken overlay never stops the images
                overlay = [{"kind": "banner", "level": "warn", "text": f"overlay error: {exc}"}]
        needle = gt.get("needle")
        traction = gt.get("traction")
        return {
            "type": "frame", "kind": kind, "index": frame.index, "run_index": frame.run_index,
            "time_s": frame.time_s, "rows": int(frame.image.shape[0]), "cols": int(frame.image.shape[1]),
            "exposure": {"kvp": ex.kvp, "ma": ex.ma, "pulse_ms": ex.pulse_ms, "pulse_rate_pps": ex.pulse_rate_pps,
                         "dose_mode": ex.dose_mode, "acquisition": ex.acquisition},
            "dose": {"ka_r_mgy": frame.dose.reference_air_kerma_mgy, "kap_gy_cm2": frame.dose.kap_gy_cm2},
            "pose": {"primary_deg": frame.geometry.pose.primary_deg,
                     "secondary_deg": frame.geometry.pose.secondary_deg, "sid_mm": frame.geometry.pose.sid_mm},
            "events": list(frame.events),
            "needle": None if needle is None else {
                "tip_px": needle.get("tip_px"), "tip_tissue": needle.get("tip_tissue"),
                "inserted_depth_mm": needle.get("inserted_depth_mm"), "blocked": needle.get("blocked"),
                "csf_return": needle.get("csf_return"), "opening_pressure_cmh2o": needle.get("opening_pressure_cmh2o")},
            "traction": traction,
            "overlay": overlay,
            "t_pulse_ms": t_pulse,
        }

    def _show_frame(self, frame: Frame, kind: str, t_pulse: float) -> None:
        """Publish a frame to the live monitor (call with ``_acq_lock`` held)."""
        meta = self._frame_meta(frame, kind, t_pulse)
        t_ready = now_ms()
        meta["t_ready_ms"] = t_ready
        data = encode_frame(frame.image, kind, frame.index, t_pulse, t_ready)
        self.live = Shown(frame.image, kind, meta)
        self.frames_published += 1
        self._emit(("frame", meta, data))

    def _show(self, image: np.ndarray, kind: str, meta: dict[str, Any], monitor: str) -> None:
        meta = {**meta, "type": "frame", "kind": kind}
        t = now_ms()
        meta.setdefault("t_pulse_ms", t)
        meta["t_ready_ms"] = t
        data = encode_frame(image, kind, int(meta.get("index", 0)), meta["t_pulse_ms"], t)
        shown = Shown(image, kind, meta)
        if monitor == "live":
            self.live = shown
        else:
            self.reference = shown
        self._emit(("frame", meta, data))

    def current_images(self) -> list[Message]:
        """What both monitors show now, as messages (for a page that has just connected)."""
        out: list[Message] = []
        with self._acq_lock:
            for shown in (self.live, self.reference):
                if shown is not None:
                    m = shown.meta
                    out.append(("frame", m, encode_frame(shown.image, shown.kind, int(m.get("index", 0)),
                                                         m.get("t_pulse_ms", 0.0), m.get("t_ready_ms", 0.0))))
        return out

    # ================================================================== pedal and spot
    def pedal(self, down: bool, lease_s: float | None = None, reason: str | None = None) -> dict[str, Any]:
        """Press (``down``) or release the fluoro pedal. With ``lease_s`` the pedal lets go by
        itself unless pressed again within that many seconds (a page renews it while held)."""
        s = self.require_session()
        if down:
            if self.replay_state is not None:
                self.stop_replay()
            self._pedal_deadline = None if lease_s is None else time.monotonic() + float(lease_s)
            if not s.pedal:
                s.pedal_down()
                self._wake.set()
                self.publish_status()
            return self.status()
        with self._acq_lock:
            self._pedal_deadline = None
            was_down = s.pedal
            hold = s.pedal_up()
            if was_down and hold is not None and self.live is not None:
                self._show(hold, "hold", {**self.live.meta, "index": self.live.meta.get("index", 0)}, "live")
                if self.reference is None:
                    self._show(hold, "reference", {**self.live.meta, "stored": "first LIH"}, "reference")
        if was_down and reason:
            self.event(reason, "warn")
        self._session_events()
        self.publish_status()
        return self.status()

    def spot(self) -> dict[str, Any]:
        """One digital spot image (four times the fluoro dose per frame) to the live monitor."""
        s = self.require_session()
        with self._acq_lock:
            t = now_ms()
            frame = s.digital_spot()
            self._show_frame(frame, "spot", t)
        self.event(f"digital spot #{frame.index}: {frame.exposure.kvp:.0f} kV {frame.exposure.ma:.1f} mA")
        self.publish_status()
        return self.status()

    def store_reference(self) -> dict[str, Any]:
        """Copy the image on the live monitor (the last-image hold) to the reference monitor."""
        with self._acq_lock:
            if self.live is None:
                raise ConsoleError("nothing to store: the live monitor shows no image yet")
            self._show(self.live.image.copy(), "reference", {**self.live.meta, "stored": "stored"}, "reference")
        self.publish_status()
        return self.status()

    # ================================================================== controls
    def _control(self, fn: Callable[[Session], Any], message: str | None = None) -> dict[str, Any]:
        s = self.require_session()
        try:
            fn(s)
        except (SessionError, ValueError) as exc:
            self.event(str(exc), "error")
            raise
        if message:
            self.event(message)
        self._session_events()
        self.publish_status()
        return self.status()

    def set_technique(self, pulse_rate_pps: float | None = None, dose_mode: str | None = None) -> dict[str, Any]:
        def f(s: Session) -> None:
            if pulse_rate_pps is not None:
                if float(pulse_rate_pps) not in PULSE_RATES:
                    raise ValueError(f"pulse rate must be one of {PULSE_RATES} pulses/s, got {pulse_rate_pps}")
                s.set_pulse_rate(float(pulse_rate_pps))
            if dose_mode is not None:
                s.set_dose_mode(dose_mode)
        return self._control(f)

    def set_view(self, name: str) -> dict[str, Any]:
        if name not in VIEWS:
            raise ValueError(f"unknown view {name!r}; known views: {', '.join(VIEWS)}")
        return self._control(lambda s: s.set_view(name), f"C-arm to {name}")

    def move_carm(self, primary_deg: float | None = None, secondary_deg: float | None = None,
                  sid_mm: float | None = None) -> dict[str, Any]:
        return self._control(lambda s: s.move_carm(primary_deg, secondary_deg, sid_mm))

    def move_table(self, delta_lps_mm: tuple[float, float, float]) -> dict[str, Any]:
        return self._control(lambda s: s.move_table(tuple(float(v) for v in delta_lps_mm)))

    def set_collimation(self, width_mm: float | None, height_mm: float | None) -> dict[str, Any]:
        return self._control(lambda s: s.set_collimation(width_mm, height_mm))

    def set_display(self, *, auto_window: bool | None = None, window: float | None = None,
                    level: float | None = None, invert: bool | None = None, flip_horizontal: bool | None = None,
                    flip_vertical: bool | None = None, overlay: bool | None = None) -> dict[str, Any]:
        """Window/level (attenuation units -ln(I/I0)), inversion, flips and the overlay toggle.
        With the pedal up the held image is re-rendered at once."""
        s = self.require_session()
        with self._acq_lock:
            changes: dict[str, Any] = {}
            if auto_window:
                changes.update(window=None, level=None)
            elif window is not None or level is not None or auto_window is False:
                w0, l0 = s.chain.window_level or (4.0, 2.0)
                w = float(window if window is not None else (s.chain.settings.window or w0))
                lv = float(level if level is not None else (s.chain.settings.level or l0))
                if not w > 0:
                    raise ValueError(f"window must be positive, got {w}")
                changes.update(window=w, level=lv)
            for k, v in (("invert", invert), ("flip_horizontal", flip_horizontal), ("flip_vertical", flip_vertical)):
                if v is not None:
                    changes[k] = bool(v)
            if changes:
                s.chain.update(**changes)
            if overlay is not None:
                self.overlay_enabled = bool(overlay)
            if not s.pedal and self.live is not None and (changes or overlay is not None):
                img = s.chain.redisplay() if changes else None
                meta = dict(self.live.meta)
                if overlay is not None and self.live.kind in ("live", "hold", "spot") and s.last_frame is not None:
                    meta["overlay"] = self._frame_meta(s.last_frame, self.live.kind, meta.get("t_pulse_ms", 0.0))[
                        "overlay"]
                self._show(img if img is not None else self.live.image, "hold" if img is not None else self.live.kind,
                           meta, "live")
        self.publish_status()
        return self.status()

    # ------------------------------------------------------------------ needle
    def place_needle(self, level: str | None = None, entry_lps_mm: list[float] | None = None,
                     target_lps_mm: list[float] | None = None, gauge: int = 22, length_mm: float | None = None,
                     depth_mm: float = 5.0) -> dict[str, Any]:
        """Place a spinal needle at the skin: at a planned level (the patient's landmarks) or at
        an explicit entry aimed at a target (LPS mm)."""
        if level is not None:
            plans = self.needle_levels()
            if level not in plans:
                known = ", ".join(sorted(plans)) or "none (this patient has no needle landmarks: give entry and target)"
                raise ValueError(f"no needle plan for level {level!r}; planned levels: {known}")
            entry_lps_mm, target_lps_mm = plans[level]["entry"], plans[level]["target"]
        if entry_lps_mm is None or target_lps_mm is None:
            raise ValueError("give a level or both entry_lps_mm and target_lps_mm")
        entry = np.asarray(entry_lps_mm, float)
        target = np.asarray(target_lps_mm, float)
        if length_mm is None:
            length_mm = 90.0 if np.linalg.norm(target - entry) < 80 else 127.0

        def f(s: Session) -> None:
            s.insert_needle(entry, target, gauge=gauge, length_mm=length_mm, depth_mm=depth_mm)
            self.context = replace(self.context, needle_target_lps_mm=tuple(float(v) for v in target),
                                   needle_level=level)
        where = f"at {level}" if level else f"at {np.round(entry, 1).tolist()}"
        return self._control(f, f"needle {gauge} G {length_mm:.0f} mm placed {where}, {depth_mm:.0f} mm in")

    def advance_needle(self, mm: float) -> dict[str, Any]:
        if not 0 < mm <= 50:
            raise ValueError(f"advance by 0-50 mm per step, got {mm}")
        return self._control(lambda s: s.advance_needle(mm))

    def withdraw_needle(self, mm: float) -> dict[str, Any]:
        if not 0 < mm <= 50:
            raise ValueError(f"withdraw by 0-50 mm per step, got {mm}")
        return self._control(lambda s: s.withdraw_needle(mm), f"needle withdrawn {mm:g} mm")

    def steer_needle(self, deg: float, about: str) -> dict[str, Any]:
        return self._control(lambda s: s.steer_needle(deg, about), f"needle steered {deg:+g} deg about {about}")

    # ------------------------------------------------------------------ traction
    def set_traction(self, force_n: float | None = None, distraction_mm: float | None = None,
                     ramp_mm_per_s: float = 0.5) -> dict[str, Any]:
        def f(s: Session) -> None:
            if s.traction.target_per_disc_mm == 0 and s.spine is not None:
                self.context = replace(self.context, baseline_disc_heights_mm=dict(s.spine.disc_heights_mm))
            s.set_traction(force_n=force_n, distraction_mm=distraction_mm, ramp_mm_per_s=ramp_mm_per_s)
        return self._control(f)

    def traction_off(self) -> dict[str, Any]:
        return self._control(lambda s: s.traction_off())

    def acknowledge_alarm(self) -> dict[str, Any]:
        def f(s: Session) -> None:
            n = s.ledger.acknowledge()
            self.event(f"dose alarm acknowledged ({n})" if n else "no active dose alarm to acknowledge")
        return self._control(f)

    # ================================================================== loops
    def start_recording(self) -> dict[str, Any]:
        s = self.require_session()
        with self._lock:
            if s.recorder is not None:
                raise ConsoleError("already recording")
            n = next(self._loop_ids)
            loop_id = f"loop-{n:03d}"
            folder = self.workdir / "loops" / loop_id
            while folder.exists():
                n = next(self._loop_ids)
                loop_id = f"loop-{n:03d}"
                folder = self.workdir / "loops" / loop_id
            s.start_recording(folder, SYNTHETIC_IDENTITY)
            loop = Loop(loop_id, folder, datetime.datetime.now().strftime("%H:%M:%S"))
            self.loops[loop_id] = loop
            self._current_loop = loop
        self.event(f"recording {loop_id}")
        self.publish_status()
        return self.status()

    def _finish_loop(self, s: Session) -> Loop | None:
        s.stop_recording()
        loop = self._current_loop
        self._current_loop = None
        if loop is None:
            return None
        loop.recording = False
        self._count_loop(loop)
        return loop

    def _count_loop(self, loop: Loop) -> None:
        meta = loop.folder / "frames.jsonl"
        if not meta.exists():
            return
        lines = [json.loads(ln) for ln in meta.read_text().splitlines() if ln.strip()]
        loop.frames = len(lines)
        if lines:
            rate = lines[-1]["exposure"].get("pulse_rate_pps") or None
            loop.pulse_rate_pps = rate
            loop.duration_s = float(lines[-1]["time_s"] - lines[0]["time_s"]) + (1.0 / rate if rate else 0.0)

    def stop_recording(self) -> dict[str, Any]:
        s = self.require_session()
        with self._acq_lock:
            if s.recorder is None:
                raise ConsoleError("not recording")
            loop = self._finish_loop(s)
        if loop is not None:
            self.event(f"{loop.id}: {loop.frames} frames recorded")
        self.publish_status()
        return self.status()

    def get_loop(self, loop_id: str) -> Loop:
        loop = self.loops.get(loop_id)
        if loop is None:
            raise NotFound(f"no loop {loop_id!r}; loops: {', '.join(self.loops) or 'none recorded'}")
        return loop

    def replay(self, loop_id: str, speed: float = 1.0, repeat: int = 1) -> dict[str, Any]:
        """Play a recorded loop on the reference monitor at its recorded pulse rate (x ``speed``)."""
        from openfluoro.fluoro.record import read_run

        loop = self.get_loop(loop_id)
        if loop.recording:
            raise ConsoleError(f"{loop_id} is still recording: stop the recording first")
        run = read_run(loop.folder)
        if len(run) == 0:
            raise ConsoleError(f"{loop_id} holds no frames")
        self.stop_replay()
        rate = (loop.pulse_rate_pps or 7.5) * float(speed)
        self._replay_stop = stop = threading.Event()
        stored = self.reference

        source = _fresh(self.overlay_source)        # its own trackers: the live ones stay as they are

        def play() -> None:
            n = len(run)
            t0 = time.perf_counter()
            k = 0
            for _ in range(max(1, int(repeat))):
                for i in range(n):
                    if stop.is_set():
                        break
                    delay = t0 + k / rate - time.perf_counter()
                    if delay > 0 and stop.wait(delay):
                        break
                    k += 1
                    meta = run.metadata[i]
                    gt = meta.get("ground_truth", {})
                    pixels = np.asarray(run.pixels[i])
                    overlay = None
                    if self.overlay_enabled and source is not None:
                        try:
                            overlay = source(pixels, geometry_from_metadata(meta), gt, self.context)
                        except Exception:  # noqa: BLE001
                            overlay = None
                    with self._acq_lock:
                        self._show(pixels, "replay",
                                   {"index": i + 1, "loop": loop_id, "n": i + 1, "of": n,
                                    "time_s": meta.get("time_s"), "exposure": meta.get("exposure"),
                                    "overlay": overlay, "traction": gt.get("traction")}, "reference")
            with self._acq_lock:      # back to the stored image, as before the replay
                if stored is not None and self.reference is not None and self.reference.kind == "replay":
                    self._show(stored.image, stored.kind, stored.meta, "reference")
            with self._lock:
                if self._replay_stop is stop:
                    self.replay_state = None
            self.publish_status()

        with self._lock:
            self.replay_state = {"loop": loop_id, "frames": len(run), "rate_pps": rate}
        self._replay_thread = threading.Thread(target=play, name="openfluoro-replay", daemon=True)
        self._replay_thread.start()
        self.event(f"replaying {loop_id} ({len(run)} frames at {rate:g} frames/s)")
        self.publish_status()
        return self.status()

    def stop_replay(self) -> None:
        self._replay_stop.set()
        t = self._replay_thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=2)
        self._replay_thread = None
        with self._lock:
            self.replay_state = None

    def export(self, loop_id: str, formats: tuple[str, ...] = ("mp4", "gif"), dicom: bool = True,
               rdsr: bool = True) -> list[str]:
        """Export a loop with ``openfluoro.io``: DICOM RF images, the radiation dose SR and cine
        loops (MP4/GIF; with the guidance overlay burned in when the overlay is on). Returns
        the written files relative to the loop's export folder."""
        from openfluoro.io.cine import default_overlay, export_cine
        from openfluoro.io.dicom_common import ExportContext, load_run
        from openfluoro.io.dicom_rf import export_images
        from openfluoro.io.rdsr import export_rdsr

        loop = self.get_loop(loop_id)
        if loop.recording:
            raise ConsoleError(f"{loop_id} is still recording: stop the recording first")
        out = self.workdir / "exports" / loop_id
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        loaded = load_run(loop.folder)
        ctx = ExportContext.for_run(loaded.run)
        written: list[Path] = []
        images = []
        if dicom:
            images = export_images(loaded, out / "dicom", sop="RF", context=ctx)
            written += [im.path for im in images]
        if rdsr:
            written.append(export_rdsr(loaded, out / "dicom", context=ctx, images=images))
        if formats:
            context, source, guided = self.context, _fresh(self.overlay_source, live=False), self.overlay_enabled

            def overlay(image, meta, n, summary):
                raw = np.asarray(image)
                image = default_overlay(image, meta, n, summary)
                if guided and source is not None:
                    prims = [p for p in source(raw, geometry_from_metadata(meta), meta.get("ground_truth", {}),
                                               context) if p.get("kind") not in ("banner", "progress")]
                    from PIL import Image

                    image = Image.fromarray(burn_overlay(np.asarray(image), prims, rgb=False))
                return image

            written += [c.path for c in export_cine(loaded, out / "cine", formats=list(formats), overlay=overlay)]
        loop.exports = sorted(str(p.relative_to(out)) for p in written)
        self.event(f"{loop_id} exported: {len(loop.exports)} file(s) in {out}")
        self.publish_status()
        return loop.exports

    def export_file(self, loop_id: str, relpath: str) -> Path:
        loop = self.get_loop(loop_id)
        base = (self.workdir / "exports" / loop.id).resolve()
        path = (base / relpath).resolve()
        if base not in path.parents or not path.is_file():
            raise NotFound(f"{loop_id} has no exported file {relpath!r}")
        return path

    # ================================================================== status
    def status(self) -> dict[str, Any]:
        """The whole console state (JSON-ready): session status plus what the console adds."""
        s = self.session
        st: dict[str, Any] = {
            "patient": dict(self.patient_state),
            "session": None,
            "views": list(VIEWS),
            "pulse_rates": list(PULSE_RATES),
            "dose_modes": list(DOSE_MODES),
            "needle_levels": {k: {"recommended": bool(v.get("recommended", True)),
                                  "skin_to_target_mm": v.get("skin_to_target_mm")}
                              for k, v in sorted(self.needle_levels().items())},
            "overlay": self.overlay_enabled,
            "overlay_source": self.overlay_name,
            "loops": [lp.to_dict() for lp in self.loops.values()],
            "replay": self.replay_state,
            "reference": None if self.reference is None else {"kind": self.reference.kind,
                                                              "index": self.reference.meta.get("index")},
            "live": None if self.live is None else {"kind": self.live.kind, "index": self.live.meta.get("index")},
            "frames_published": self.frames_published,
            "workdir": str(self.workdir),
        }
        if self._current_loop is not None and s is not None and s.recorder is not None:
            self._current_loop.frames = s.recorder.count
        if s is None:
            return st
        ss = s.status()
        ss["dose"]["alarm_5min_acknowledged"] = bool(
            ss["dose"]["alarm_5min"] is False and any(a.kind == "fluoro_time" for a in s.ledger.alarms))
        ss["needle_target_lps_mm"] = None if self.context.needle_target_lps_mm is None else list(
            self.context.needle_target_lps_mm)
        if s.needle is not None and ss["needle"] is not None:
            ss["needle"]["inserted_depth_mm"] = s.needle.inserted_depth_mm
            ss["needle"]["gauge"] = s.needle.gauge
            ss["needle"]["length_mm"] = s.needle.length_mm
            if self.context.needle_target_lps_mm is not None:
                ss["needle"]["tip_to_target_mm"] = float(np.linalg.norm(
                    s.needle.tip_lps_mm - np.asarray(self.context.needle_target_lps_mm)))
            ss["needle"]["level"] = self.context.needle_level
        motion = s.spine_motion()
        ss["spine"] = None if motion is None else {
            "discs": list(motion.spine.discs),
            "rest_heights_mm": dict(motion.spine.disc_heights_mm),
            "heights_mm": motion.disc_heights_mm(),
        }
        win = s.chain.window_level
        cs = s.chain.settings
        ss["display"] = {"auto_window": cs.window is None, "window": win[0] if win else None,
                         "level": win[1] if win else None, "invert": cs.invert,
                         "flip_horizontal": cs.flip_horizontal, "flip_vertical": cs.flip_vertical}
        ss["detector"] = {"rows": s.detector.image_rows, "cols": s.detector.image_cols,
                          "field_mm": [s.detector.width_mm, s.detector.height_mm]}
        ss["pedal_lease_s"] = None if self._pedal_deadline is None else max(
            0.0, self._pedal_deadline - time.monotonic())
        st["session"] = ss
        return st
