"""The live fluoroscopy session: a fluoroscope's state machine.

One ``Session`` owns the patient, the C-arm, the needle, the traction device, the
image chain and the dose ledger. A console or a script drives it with the same
calls (pedal, pulse rate, dose mode, C-arm and table moves, collimation, needle,
traction, recording, digital spot) and gets ``Frame`` objects back; any number of
consumers can subscribe to the frames as they are acquired.

Time is the session's own clock: ``acquire()`` advances it by one frame period, so
a script runs faster than real time and a console paces calls to the wall clock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from openfluoro.fluoro.chain import ChainSettings, ImageChain
from openfluoro.fluoro.exposure import ExposureDecision, decide_exposure, pulse_width_ms
from openfluoro.fluoro.frame import Exposure, Frame
from openfluoro.fluoro.imager import Imager, LiveImager
from openfluoro.fluoro.ledger import DoseLedger, DoseRecord
from openfluoro.fluoro.record import LoopRecorder
from openfluoro.geometry.carm import CArmPose, Collimator, Detector, Geometry, standard_view
from openfluoro.render.cache import SceneRenderer
from openfluoro.scene.needle import Needle
from openfluoro.scene.patient import Patient
from openfluoro.scene.segments import SpineGeometry, SpineMotion, TractionModel, measure_spine

#: Structures a needle cannot pass (it stops and the session says so).
BONE_STRUCTURES = ("T12", "L1", "L2", "L3", "L4", "L5", "sacrum", "coccyx", "S1", "hip_left", "hip_right",
                   "rib_left", "rib_right", "femur_left", "femur_right", "bone")
#: Structures where the needle tip is in the subarachnoid space: CSF flows back.
CSF_STRUCTURES = ("csf", "cauda_equina", "thecal_sac")
NEEDLE_STEP_MM = 0.25

FrameConsumer = Callable[[Frame], None]


class SessionError(RuntimeError):
    """A control that does not apply in the session's current state."""


@dataclass(frozen=True)
class TractionState:
    """Traction as set (force or target) and as reached (openings ramp toward the target)."""

    force_n: float = 0.0
    target_per_disc_mm: float = 0.0
    per_disc_mm: float = 0.0
    ramp_mm_per_s: float = 0.5


class Session:
    """A virtual C-arm fluoroscope around one patient."""

    def __init__(self, patient: Patient, *, detector: Detector | None = None, seed: int = 0,
                 vertebra_ids: dict[str, int] | None = None, disc_ids: dict[str, int] | None = None,
                 body_mass_kg: float = 70.0, disc_degeneration: float = 0.0,
                 chain_settings: ChainSettings | None = None) -> None:
        self.patient = patient
        self._lock = threading.RLock()
        self.rng = np.random.default_rng(seed)
        self.detector = detector or Detector(rows=1024, cols=1024, pixel_pitch_mm=300 / 1024, binning=2)
        self.pose = standard_view("PA", CArmPose(isocentre_lps_mm=patient.isocentre_lps_mm))
        self.collimator = Collimator()
        self.pulse_rate_pps = 7.5
        self.dose_mode = "normal"
        self.time_s = 0.0
        self.frame_index = 0
        self.pedal = False
        self.needle: Needle | None = None
        self.needle_blocked = False
        self.csf_return = False
        self.opening_pressure_cmh2o: float | None = None
        self.events: list[tuple[float, str]] = []
        self.imager = LiveImager(Imager())
        self.chain = ImageChain(chain_settings or ChainSettings(auto_region=0.6))
        self.ledger = DoseLedger()
        self.recorder: LoopRecorder | None = None
        self._consumers: list[FrameConsumer] = []
        self._decision: ExposureDecision | None = None
        self._decision_key: tuple | None = None
        self.last_frame: Frame | None = None

        segment_ids: dict[str, int] = {}
        self.spine: SpineGeometry | None = None
        if patient.labels is not None and vertebra_ids and disc_ids:
            self.spine = measure_spine(patient.labels, patient.volume.affine_lps, vertebra_ids, disc_ids)
            segment_ids = {n: vertebra_ids[n] for n in self.spine.vertebrae if n != "sacrum"}
            segment_ids.update({d: disc_ids[d] for d in self.spine.disc_axes})
        self.renderer = SceneRenderer(patient, segment_ids)
        self.traction_model = TractionModel(body_mass_kg=body_mass_kg, degeneration=disc_degeneration)
        self.traction = TractionState()

    @classmethod
    def for_patient(cls, patient: Patient, **kwargs: Any) -> "Session":
        """A session whose traction uses the label ids in the patient's landmarks, if any."""
        return cls(patient, vertebra_ids=patient.landmarks.get("vertebra_ids"),
                   disc_ids=patient.landmarks.get("disc_ids"), **kwargs)

    # ------------------------------------------------------------------ consumers
    def subscribe(self, consumer: FrameConsumer) -> Callable[[], None]:
        """Call ``consumer(frame)`` for every frame; returns a function that unsubscribes."""
        with self._lock:
            self._consumers.append(consumer)
        return lambda: self._consumers.remove(consumer) if consumer in self._consumers else None

    def _event(self, text: str) -> str:
        self.events.append((self.time_s, text))
        return text

    # ------------------------------------------------------------------ geometry
    @property
    def geometry(self) -> Geometry:
        return Geometry(self.pose, self.detector, self.collimator)

    def _moved(self) -> None:
        self.chain.reset()
        self._decision = None

    def set_view(self, name: str) -> None:
        with self._lock:
            self.pose = standard_view(name, self.pose)
            self._moved()

    def move_carm(self, primary_deg: float | None = None, secondary_deg: float | None = None,
                  sid_mm: float | None = None) -> None:
        with self._lock:
            pose = self.pose.rotated(primary_deg, secondary_deg)
            if sid_mm is not None:
                pose = replace(pose, sid_mm=float(sid_mm))
            self.pose = pose
            self._moved()

    def move_table(self, delta_lps_mm: tuple[float, float, float]) -> None:
        with self._lock:
            self.pose = self.pose.moved_table(delta_lps_mm)
            self._moved()

    def set_collimation(self, width_mm: float | None, height_mm: float | None) -> None:
        with self._lock:
            collimator = Collimator(width_mm, height_mm)
            try:
                field = collimator.field_px(self.detector)
            except ValueError as exc:
                raise SessionError(str(exc)) from None
            self.collimator = collimator
            # the blades block the beam outside the field: the display windows on the field
            # alone (a clinical system's auto-window ignores the collimated edges) and shows
            # the blocked edges black
            self.chain.update(collimation=field)
            self._decision = None

    # ------------------------------------------------------------------ technique
    def set_pulse_rate(self, pps: float) -> None:
        pulse_width_ms(pps)  # validates
        with self._lock:
            self.pulse_rate_pps = float(pps)
            self._decision = None

    def set_dose_mode(self, mode: str) -> None:
        if mode not in ("low", "normal", "high"):
            raise SessionError(f"dose mode must be low, normal or high, got {mode!r}")
        with self._lock:
            self.dose_mode = mode
            self._decision = None

    # ------------------------------------------------------------------ pedal
    def pedal_down(self) -> None:
        with self._lock:
            if not self.pedal:
                self.pedal = True
                self.ledger.pedal_down(self.time_s, "fluoro")

    def pedal_up(self) -> np.ndarray | None:
        """Release the pedal; returns the last-image hold."""
        with self._lock:
            if self.pedal:
                self.pedal = False
                self.ledger.pedal_up(self.time_s)
            return self.chain.last_image_hold

    @property
    def last_image_hold(self) -> np.ndarray | None:
        return self.chain.last_image_hold

    # ------------------------------------------------------------------ needle
    def insert_needle(self, entry_lps_mm, target_lps_mm, gauge: int = 22, length_mm: float = 90.0,
                      depth_mm: float = 5.0) -> Needle:
        """Place a spinal needle at the skin, aimed at a target, inserted ``depth_mm``."""
        with self._lock:
            self.needle = Needle.aimed(entry_lps_mm, target_lps_mm, inserted_depth_mm=0.0, gauge=gauge,
                                       length_mm=length_mm)
            self.needle_blocked = False
            self.csf_return = False
            self.opening_pressure_cmh2o = None
            self.advance_needle(depth_mm)
            return self.needle

    def advance_needle(self, distance_mm: float) -> list[str]:
        """Advance in small steps; stops in bone and reports CSF return in the thecal sac."""
        if self.needle is None:
            raise SessionError("no needle: insert one first")
        events: list[str] = []
        with self._lock:
            remaining = float(distance_mm)
            while remaining > 1e-9:
                step = min(NEEDLE_STEP_MM, remaining)
                try:
                    candidate = self.needle.advanced(step)
                except ValueError as exc:
                    events.append(self._event(f"needle: {exc}"))
                    break
                tissue, _ = self.patient.tissue_at(candidate.tip_lps_mm)
                if tissue in BONE_STRUCTURES:
                    self.needle_blocked = True
                    events.append(self._event(f"needle blocked: tip against bone ({tissue}); cannot advance"))
                    break
                self.needle = candidate
                self.needle_blocked = False
                remaining -= step
                if tissue in CSF_STRUCTURES and not self.csf_return:
                    self.csf_return = True
                    self.opening_pressure_cmh2o = float(np.clip(self.rng.normal(15.0, 3.0), 6.0, 25.0))
                    events.append(self._event(
                        f"CSF return: opening pressure {self.opening_pressure_cmh2o:.1f} cmH2O"))
        return events

    def withdraw_needle(self, distance_mm: float) -> None:
        if self.needle is None:
            raise SessionError("no needle: insert one first")
        with self._lock:
            self.needle = self.needle.withdrawn(distance_mm)
            self.needle_blocked = False
            tissue, _ = self.patient.tissue_at(self.needle.tip_lps_mm)
            self.csf_return = tissue in CSF_STRUCTURES

    def steer_needle(self, angle_deg: float, about: str = "L") -> None:
        if self.needle is None:
            raise SessionError("no needle: insert one first")
        with self._lock:
            self.needle = self.needle.steered(angle_deg, about)

    def needle_tissue(self) -> str | None:
        return None if self.needle is None else self.patient.tissue_at(self.needle.tip_lps_mm)[0]

    # ------------------------------------------------------------------ traction
    def _require_spine(self) -> SpineGeometry:
        if self.spine is None:
            raise SessionError("traction needs a labelled spine (vertebrae and discs): use the phantom "
                               "or give a label map")
        return self.spine

    def set_traction(self, force_n: float | None = None, distraction_mm: float | None = None,
                     ramp_mm_per_s: float = 0.5) -> TractionState:
        """Pull with ``force_n``, or with the force that opens each disc by ``distraction_mm``."""
        self._require_spine()
        with self._lock:
            if distraction_mm is not None:
                force_n = self.traction_model.force_for_distraction_n(distraction_mm)
            if force_n is None:
                raise SessionError("give a traction force or a target distraction")
            target = self.traction_model.distraction_per_disc_mm(force_n)
            self.traction = TractionState(force_n, target, self.traction.per_disc_mm, ramp_mm_per_s)
            self._event(f"traction {force_n:.0f} N: target {target:.2f} mm per disc")
            return self.traction

    def traction_off(self) -> None:
        if self.spine is not None:
            self.set_traction(force_n=0.0)

    def _advance_traction(self, dt_s: float) -> None:
        t = self.traction
        if t.per_disc_mm == t.target_per_disc_mm:
            return
        step = t.ramp_mm_per_s * dt_s
        delta = np.clip(t.target_per_disc_mm - t.per_disc_mm, -step, step)
        self.traction = replace(t, per_disc_mm=float(t.per_disc_mm + delta))

    def spine_motion(self) -> SpineMotion | None:
        if self.spine is None:
            return None
        return SpineMotion(self.spine, {d: self.traction.per_disc_mm for d in self.spine.disc_axes})

    # ------------------------------------------------------------------ recording
    def start_recording(self, folder: str | Path, identity: dict[str, Any] | None = None,
                        patient_position: str = "HFP") -> None:
        """Record every frame to ``folder`` as it is acquired (``fluoro.record``).

        ``patient_position`` (DICOM: HFP head-first prone, as for a lumbar puncture; HFS
        supine) and the chain's display flips go into the header for the archive.
        """
        import datetime

        with self._lock:
            if self.recorder is not None:
                raise SessionError("already recording")
            st = self.chain.settings
            extra = {"patient_position": patient_position,
                     "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                     "display": {"flip_horizontal": st.flip_horizontal, "flip_vertical": st.flip_vertical,
                                 "rotate_deg": st.rotate_deg, "frame_counter": st.frame_counter}}
            self.recorder = LoopRecorder(folder, self.detector.image_rows, self.detector.image_cols, identity,
                                         extra=extra)

    def stop_recording(self) -> Path | None:
        with self._lock:
            if self.recorder is None:
                return None
            folder = self.recorder.folder
            self.recorder.close()
            self.recorder = None
            return folder

    # ------------------------------------------------------------------ acquisition
    def exposure_decision(self, paths: np.ndarray) -> ExposureDecision:
        key = (self.pose, self.collimator, self.dose_mode, self.pulse_rate_pps)
        if self._decision is None or self._decision_key != key:
            self._decision = decide_exposure(paths, self.geometry, self.dose_mode, self.pulse_rate_pps)
            self._decision_key = key
        return self._decision

    def acquire(self) -> Frame:
        """Take one fluoroscopy frame (the pedal must be down); advances the clock one frame."""
        with self._lock:
            if not self.pedal:
                raise SessionError("fluoro pedal is up: press it (pedal_down) to acquire")
            return self._take(acquisition="fluoro")

    def digital_spot(self) -> Frame:
        """One spot image at four times the fluoro set point, booked as a spot exposure."""
        with self._lock:
            return self._take(acquisition="spot")

    def _take(self, acquisition: str) -> Frame:
        dt = 1.0 / self.pulse_rate_pps
        self.time_s += dt
        self._advance_traction(dt)
        motion = self.spine_motion()
        transforms = motion.transforms() if motion is not None and self.traction.per_disc_mm > 0 else None
        geometry = self.geometry
        paths = self.renderer.paths(geometry, self.needle, transforms)
        decision = self.exposure_decision(paths)
        exposure = decision.exposure
        if acquisition == "spot":
            exposure = replace(exposure, ma=exposure.ma * 4, acquisition="spot", pulse_rate_pps=0.0)
        mask = None if self.collimator.width_mm is None and self.collimator.height_mm is None \
            else self.collimator.mask(self.detector)
        exposed = self.imager.expose(paths, self.renderer.changed, geometry, exposure, self.rng, mask)
        self.frame_index += 1
        display = self.chain.process(exposed.signal, {"i0": exposed.open_field_quanta,
                                                      "frame_number": self.frame_index})
        w, h = self.collimator.field_mm(self.detector)
        scale = (self.pose.sod_mm - 150.0) / self.pose.sid_mm / 10.0
        alarms = self.ledger.add(DoseRecord(
            time_s=self.time_s, kvp=exposure.kvp, ma=exposure.ma, pulse_ms=exposure.pulse_ms,
            mode=acquisition, pulse_rate_pps=exposure.pulse_rate_pps,
            ka_r_mgy=exposed.dose.reference_air_kerma_mgy, kap_gy_cm2=exposed.dose.kap_gy_cm2,
            field_size_cm=(w * scale, h * scale), primary_angle_deg=self.pose.primary_deg,
            secondary_angle_deg=self.pose.secondary_deg, dose_mode=self.dose_mode))
        events = tuple(f"alarm: {a.message}" for a in alarms)
        if self.csf_return:
            events += ("csf_return",)
        if self.needle_blocked:
            events += ("needle_blocked",)
        frame = Frame(self.frame_index, self.time_s, display, geometry, exposure, exposed.dose,
                      run_index=len(self.ledger.runs), ground_truth=self._ground_truth(geometry, motion),
                      events=events, signal=exposed.signal, i0=exposed.open_field_quanta)
        self.last_frame = frame
        if self.recorder is not None:
            self.recorder.append(frame)
        for consumer in list(self._consumers):
            consumer(frame)
        return frame

    def _ground_truth(self, geometry: Geometry, motion: SpineMotion | None) -> dict[str, Any]:
        gt: dict[str, Any] = {"adrc": {"limited": self._decision.limited if self._decision else None}}
        if self.needle is not None:
            nd = self.needle.to_dict()
            tip_px = geometry.project(self.needle.tip_lps_mm)[0]
            hub_px = geometry.project(self.needle.hub_lps_mm)[0]
            gt["needle"] = {**nd, "tip_px": [float(tip_px[0]), float(tip_px[1])],
                            "hub_px": [float(hub_px[0]), float(hub_px[1])],
                            "tip_tissue": self.needle_tissue(), "blocked": self.needle_blocked,
                            "csf_return": self.csf_return, "opening_pressure_cmh2o": self.opening_pressure_cmh2o}
        if motion is not None:
            gt["traction"] = {"force_n": self.traction.force_n, "per_disc_mm": self.traction.per_disc_mm,
                              "target_per_disc_mm": self.traction.target_per_disc_mm,
                              "disc_heights_mm": motion.disc_heights_mm()}
        return gt

    def run(self, seconds: float) -> list[Frame]:
        """Hold the pedal for ``seconds`` of session time and return the frames (scripts)."""
        self.pedal_down()
        n = max(1, int(round(seconds * self.pulse_rate_pps)))
        frames = [self.acquire() for _ in range(n)]
        return frames

    def status(self) -> dict[str, Any]:
        """Everything a console shows besides the image (JSON-ready)."""
        d = self._decision
        return {
            "time_s": self.time_s, "frame_index": self.frame_index, "pedal": self.pedal,
            "pulse_rate_pps": self.pulse_rate_pps, "dose_mode": self.dose_mode,
            "pose": {"primary_deg": self.pose.primary_deg, "secondary_deg": self.pose.secondary_deg,
                     "sid_mm": self.pose.sid_mm, "isocentre_lps_mm": list(self.pose.isocentre_lps_mm)},
            "collimator": {"width_mm": self.collimator.width_mm, "height_mm": self.collimator.height_mm},
            "technique": None if d is None else {"kvp": d.exposure.kvp, "ma": d.exposure.ma,
                                                  "pulse_ms": d.exposure.pulse_ms, "limited": d.limited},
            "dose": {"air_kerma_rate_mgy_min": self.ledger.air_kerma_rate_mgy_min(self.time_s),
                     "ka_r_mgy": self.ledger.ka_r_mgy, "kap_gy_cm2": self.ledger.kap_gy_cm2,
                     "fluoro_time_s": self.ledger.fluoro_time_s_at(self.time_s),
                     "alarm_5min": self.ledger.fluoro_alarm_active},
            "needle": None if self.needle is None else {
                "tip_lps_mm": list(map(float, self.needle.tip_lps_mm)), "tissue": self.needle_tissue(),
                "blocked": self.needle_blocked, "csf_return": self.csf_return,
                "opening_pressure_cmh2o": self.opening_pressure_cmh2o},
            "traction": {"force_n": self.traction.force_n, "per_disc_mm": self.traction.per_disc_mm,
                         "target_per_disc_mm": self.traction.target_per_disc_mm},
            "recording": self.recorder is not None,
            "events": [t for _, t in self.events[-10:]],
        }
