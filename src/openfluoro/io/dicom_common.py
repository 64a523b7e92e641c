"""What every DICOM export of a recorded run shares: the run's irradiation events,
patient/study identity, UIDs, date/times, device description and atomic writing.

A recording (``fluoro.record``) holds the frames of a whole procedure. Its frames are
cut into **events** here, one per exported image object and per RDSR irradiation event:

* a *fluoro* or *cine* event is a maximal stretch of consecutive frames with the same
  ``run_index`` (one pedal press) and the same ``exposure.acquisition``;
* a *spot* event is a single frame whose ``exposure.acquisition`` is ``"spot"``.

Everything is computed from the per-frame metadata alone (``Frame.metadata()``), so the
exports need neither the live session nor the dose ledger.

Conventions stated once:

* **DistanceSourceToPatient** and the RDSR's *Distance Source to Isocenter* are the
  C-arm's source-to-isocentre distance ``pose.sod_mm`` (DICOM defines Distance Source to
  Patient as the source-to-isocentre distance, "traditionally referred to as SOD").
* **Reference point**: the IEC 60601-2-43 interventional reference point, 15 cm from the
  isocentre toward the source (``physics.dose``), i.e. ``sod_mm - 150`` from the focal spot.
* **Table position** (RDSR *Table Longitudinal/Lateral/Height Position*): the patient's
  displacement relative to the C-arm, with the patient-coordinate origin at the isocentre
  as the (arbitrary) reference: longitudinal = ``-isocentre_z`` (toward the head),
  lateral = ``-isocentre_x`` (toward the patient's left), height = ``+isocentre_y``
  (table up, for a supine patient).
* **Times**: frame ``time_s`` is the session clock. Wall-clock date/times are anchored at
  the identity's ``StudyDate``/``StudyTime`` if given, else the header's
  ``"started_at"`` (ISO 8601) if present, else the modification time of ``run.json``
  (written when recording starts); the first frame's interval starts at that instant.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import io
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UID, generate_uid

from openfluoro.fluoro.record import HEADER, METADATA, PIXELS, RecordedRun, RecordingError, read_run

MANUFACTURER = "OpenFluoro"
MODEL_NAME = "OpenFluoro Virtual C-arm"
SOFTWARE_VERSION = "openfluoro 0.1.0"
DEVICE_SERIAL = "OF-SIM-0001"
STATION_NAME = "OFSIM01"
IMPLEMENTATION_VERSION = "OPENFLUORO_010"
REFERENCE_POINT_OFFSET_MM = 150.0

#: What a recording with no identity gets: plainly synthetic, never a real person.
SYNTHETIC_IDENTITY: dict[str, str] = {
    "PatientName": "SYNTHETIC^PATIENT",
    "PatientID": "OPENFLUORO-SIM",
    "PatientBirthDate": "",
    "PatientSex": "O",
    "StudyID": "1",
    "AccessionNumber": "",
    "StudyDescription": "OpenFluoro simulated fluoroscopy",
    "ReferringPhysicianName": "",
}

#: Identity keys a recording header may carry (DICOM keywords); anything else is reported.
IDENTITY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientSize", "PatientWeight", "StudyInstanceUID", "StudyID", "AccessionNumber", "StudyDescription",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "InstitutionName", "OperatorsName",
    "PerformingPhysicianName", "BodyPartExamined", "SeriesDescription",
)

#: Dropped from de-identified objects (PS3.15 Basic Application Confidentiality Profile).
_PHI_KEYWORDS = ("IssuerOfPatientID", "PatientBirthDate", "PatientAge", "PatientSize", "PatientWeight",
                 "AccessionNumber", "ReferringPhysicianName", "InstitutionName", "OperatorsName",
                 "PerformingPhysicianName")

DEID_DATE = _dt.date(2000, 1, 1)


class ExportError(ValueError):
    """An export cannot proceed; the message names the file and what was wrong."""


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class LoadedRun:
    """A recorded run plus what was noticed while reading it (e.g. a torn last frame)."""

    run: RecordedRun
    warnings: tuple[str, ...] = ()

    @property
    def folder(self) -> Path:
        return self.run.folder


def load_run(folder: str | Path) -> LoadedRun:
    """Read a run folder for export (read-only); refuse one with no complete frame.

    A recording cut short by a crash keeps its complete frames; the torn remainder is
    reported in ``warnings`` and left on disk untouched.
    """
    folder = Path(folder)
    try:
        run = read_run(folder)
    except RecordingError as exc:
        raise ExportError(str(exc)) from None
    except OSError as exc:
        raise ExportError(f"{folder}: cannot read the recording ({exc.strerror or exc})") from None
    warnings: list[str] = []
    rows, cols = int(run.header["rows"]), int(run.header["cols"])
    frame_bytes = rows * cols * np.dtype(run.header.get("dtype", "uint16")).itemsize
    pix = folder / PIXELS
    meta = folder / METADATA
    n_bytes = pix.stat().st_size if pix.exists() else 0
    n_lines = 0
    torn_line = False
    if meta.exists():
        text = meta.read_bytes()
        n_lines = text.count(b"\n")
        torn_line = bool(text) and not text.endswith(b"\n")
    if n_bytes % frame_bytes or n_bytes // frame_bytes != len(run) or n_lines != len(run) or torn_line:
        warnings.append(
            f"{folder}: truncated recording ({n_lines} complete metadata line(s){', a torn last line' if torn_line else ''}, "
            f"{n_bytes / frame_bytes:.2f} frame(s) of pixels in {PIXELS}); exporting the {len(run)} complete frame(s)")
    if len(run) == 0:
        raise ExportError(f"{folder / METADATA}: the recording holds no complete frame; nothing to export")
    for n, m in enumerate(run.metadata):
        for key in ("time_s", "exposure", "dose", "pose", "detector", "collimator"):
            if key not in m:
                raise ExportError(f"{folder / METADATA}: line {n + 1} has no {key!r} field")
    return LoadedRun(run, tuple(warnings))


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    """One irradiation event: a fluoro/cine run (many frames) or one spot exposure."""

    kind: str                      # "fluoro" | "cine" | "spot"
    run_index: int
    indices: tuple[int, ...]       # positions in RecordedRun.metadata / pixels
    ordinal: int                   # 0-based position among the recording's events

    def frames_meta(self, run: RecordedRun) -> list[dict[str, Any]]:
        return [run.metadata[i] for i in self.indices]


def split_events(run: RecordedRun) -> list[Event]:
    """Cut the recording into irradiation events (see the module docstring)."""
    events: list[Event] = []
    current: list[int] = []
    key: tuple[int, str] | None = None

    def flush() -> None:
        if current:
            events.append(Event(key[1], key[0], tuple(current), len(events)))  # type: ignore[index]

    for i, m in enumerate(run.metadata):
        kind = str(m["exposure"].get("acquisition", "fluoro"))
        if kind not in ("fluoro", "cine", "spot"):
            kind = "fluoro"
        k = (int(m.get("run_index", 0)), kind)
        if kind == "spot" or k != key:
            flush()
            current = []
            key = k
        current.append(i)
        if kind == "spot":
            flush()
            current = []
            key = None
    flush()
    return events


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(np.asarray(values, dtype=float))) if len(values) else 0.0


@dataclass(frozen=True)
class EventSummary:
    """Acquisition and dose figures of one event, computed from its frames' metadata."""

    event: Event
    n_frames: int
    start_s: float                  # session clock: start of the first frame's interval
    end_s: float                    # session clock: time of the last frame
    duration_s: float               # irradiation (pedal) time: frames x frame interval
    frame_interval_s: float         # 1 / pulse rate (spot: its pulse width)
    frame_times_s: tuple[float, ...]
    pulse_rate_pps: float
    kvp: float                      # means over the event's pulses
    ma: float
    pulse_ms: float
    kvp_range: tuple[float, float]
    ma_range: tuple[float, float]
    beam_on_ms: float               # sum of pulse widths
    exposure_uas: float             # sum of mA x ms = uAs
    ka_r_mgy: float                 # sums over the event
    kap_gy_cm2: float
    ka_r_per_frame_mgy: tuple[float, ...]
    kap_per_frame_gy_cm2: tuple[float, ...]
    primary_deg: float              # at the first frame
    secondary_deg: float
    primary_end_deg: float          # at the last frame
    secondary_end_deg: float
    sid_mm: float
    sod_mm: float
    detector: dict[str, Any]
    collimator: dict[str, Any]
    field_mm: tuple[float, float]   # collimated field (width, height) at the detector plane
    table_mm: tuple[float, float, float]  # (longitudinal, lateral, height), see module doc
    filtration_mm_al: float
    filtration_mm_cu: float
    dose_mode: str
    continuous: bool

    @property
    def kind(self) -> str:
        return self.event.kind

    @property
    def field_area_m2(self) -> float:
        return self.field_mm[0] * self.field_mm[1] * 1e-6

    @property
    def magnification(self) -> float:
        return self.sid_mm / self.sod_mm

    @property
    def image_pitch_mm(self) -> float:
        return float(self.detector["pixel_pitch_mm"]) * int(self.detector.get("binning", 1))


def summarize(run: RecordedRun, event: Event) -> EventSummary:
    metas = event.frames_meta(run)
    ex = [m["exposure"] for m in metas]
    first, last = metas[0], metas[-1]
    rate = float(ex[0].get("pulse_rate_pps", 0.0) or 0.0)
    pulse = [float(e["pulse_ms"]) for e in ex]
    kvp = [float(e["kvp"]) for e in ex]
    ma = [float(e["ma"]) for e in ex]
    if event.kind == "spot" or rate <= 0:
        interval = pulse[0] / 1000.0
    else:
        interval = 1.0 / rate
    times = tuple(float(m["time_s"]) for m in metas)
    duration = (times[-1] - times[0]) + interval
    det = dict(first["detector"])
    col = dict(first["collimator"])
    det_w = det["cols"] * det["pixel_pitch_mm"]
    det_h = det["rows"] * det["pixel_pitch_mm"]
    w = det_w if col.get("width_mm") is None else min(float(col["width_mm"]), det_w)
    h = det_h if col.get("height_mm") is None else min(float(col["height_mm"]), det_h)
    iso = first["pose"]["isocentre_lps_mm"]
    kr = tuple(float(m["dose"]["reference_air_kerma_mgy"]) for m in metas)
    kap = tuple(float(m["dose"]["kap_gy_cm2"]) for m in metas)
    continuous = rate > 0 and event.kind != "spot" and pulse[0] >= 0.95 * 1000.0 / rate
    return EventSummary(
        event=event, n_frames=len(metas), start_s=times[0] - interval, end_s=times[-1], duration_s=duration,
        frame_interval_s=interval, frame_times_s=times, pulse_rate_pps=rate if event.kind != "spot" else 0.0,
        kvp=_mean(kvp), ma=_mean(ma), pulse_ms=_mean(pulse), kvp_range=(min(kvp), max(kvp)), ma_range=(min(ma), max(ma)),
        beam_on_ms=float(sum(pulse)), exposure_uas=float(sum(a * p for a, p in zip(ma, pulse))),
        ka_r_mgy=float(sum(kr)), kap_gy_cm2=float(sum(kap)), ka_r_per_frame_mgy=kr, kap_per_frame_gy_cm2=kap,
        primary_deg=float(first["pose"]["primary_deg"]), secondary_deg=float(first["pose"]["secondary_deg"]),
        primary_end_deg=float(last["pose"]["primary_deg"]), secondary_end_deg=float(last["pose"]["secondary_deg"]),
        sid_mm=float(first["pose"]["sid_mm"]), sod_mm=float(first["pose"]["sod_mm"]), detector=det, collimator=col,
        field_mm=(float(w), float(h)), table_mm=(-float(iso[2]), -float(iso[0]), float(iso[1])),
        filtration_mm_al=float(ex[0].get("filtration_mm_al", 0.0)), filtration_mm_cu=float(ex[0].get("filtration_mm_cu", 0.0)),
        dose_mode=str(ex[0].get("dose_mode", "normal")), continuous=bool(continuous),
    )


# --------------------------------------------------------------------------- identity and context


def ds_number(x: float) -> str:
    """A short DS string (at most 16 characters) for ``x``; never "-0"."""
    from pydicom.valuerep import format_number_as_ds

    x = float(x)
    if x == 0:
        x = 0.0
    text = f"{x:.10g}"
    return text if len(text) <= 16 else format_number_as_ds(x)


def _fmt_date(d: _dt.date) -> str:
    return d.strftime("%Y%m%d")


def _fmt_time(t: _dt.datetime) -> str:
    return t.strftime("%H%M%S.%f")


def _fmt_dt(t: _dt.datetime) -> str:
    return t.strftime("%Y%m%d%H%M%S.%f")


def _anchor_datetime(run: RecordedRun, identity: dict[str, Any]) -> _dt.datetime:
    date, time = str(identity.get("StudyDate") or ""), str(identity.get("StudyTime") or "")
    if date:
        try:
            d = _dt.datetime.strptime(date, "%Y%m%d")
            if time:
                hh, mm, ss = time[0:2], time[2:4] or "00", time[4:] or "00"
                d = d.replace(hour=int(hh), minute=int(mm), second=0) + _dt.timedelta(seconds=float(ss))
            return d
        except ValueError:
            raise ExportError(f"{run.folder / HEADER}: identity StudyDate/StudyTime {date!r}/{time!r} "
                              "is not a DICOM date (YYYYMMDD) / time (HHMMSS)") from None
    started = run.header.get("started_at")
    if started:
        try:
            return _dt.datetime.fromisoformat(str(started)).replace(tzinfo=None)
        except ValueError:
            raise ExportError(f"{run.folder / HEADER}: started_at {started!r} is not an ISO 8601 date-time") from None
    return _dt.datetime.fromtimestamp((run.folder / HEADER).stat().st_mtime)


@dataclass
class ExportContext:
    """Identity, UIDs and clock shared by all objects exported from one recording.

    Build it once per export (``ExportContext.for_run``) and pass it to the image and
    RDSR writers so that they land in the same study.
    """

    run: RecordedRun
    identity: dict[str, Any]
    deidentify: bool
    anchor: _dt.datetime
    t0_s: float
    salt: str
    warnings: list[str] = field(default_factory=list)
    _uids: dict[str, UID] = field(default_factory=dict)

    @classmethod
    def for_run(cls, run: RecordedRun, *, deidentify: bool = False, identity: dict[str, Any] | None = None,
                start: _dt.datetime | None = None) -> "ExportContext":
        raw = dict(run.header.get("identity") or {})
        raw.update(identity or {})
        warnings: list[str] = []
        unknown = sorted(k for k in raw if k not in IDENTITY_KEYWORDS)
        if unknown:
            warnings.append(f"{run.folder / HEADER}: identity keys not exported (not patient/study attributes): "
                            + ", ".join(unknown))
        ident = dict(SYNTHETIC_IDENTITY)
        ident.update({k: ("" if v is None else v) for k, v in raw.items() if k in IDENTITY_KEYWORDS})
        anchor = start if start is not None else _anchor_datetime(run, ident)
        first = run.metadata[0]
        rate = float(first["exposure"].get("pulse_rate_pps", 0.0) or 0.0)
        interval = 1.0 / rate if rate > 0 else float(first["exposure"]["pulse_ms"]) / 1000.0
        t0 = float(first["time_s"]) - interval
        # UIDs: deterministic from the recording's content (a re-export gives the same
        # UIDs); de-identified exports draw a fresh random salt so they cannot be linked.
        if deidentify:
            salt = os.urandom(16).hex()
        else:
            h = hashlib.sha256()
            h.update((run.folder / HEADER).read_bytes())
            h.update(json.dumps(run.metadata[0], sort_keys=True).encode())
            h.update(str(len(run)).encode())
            salt = h.hexdigest()
        ctx = cls(run, ident, deidentify, anchor, t0, salt, warnings)
        if deidentify:
            ctx._deidentify_identity()
        return ctx

    # -- de-identification ---------------------------------------------------------
    def _deidentify_identity(self) -> None:
        ident = self.identity
        for k in _PHI_KEYWORDS:
            ident.pop(k, None)
        ident["PatientName"] = "ANONYMOUS^PATIENT"
        ident["PatientID"] = "ANON-" + self.salt[:8].upper()
        ident["PatientSex"] = ""
        ident.pop("StudyInstanceUID", None)
        ident["StudyID"] = "1"
        ident.pop("StudyDate", None)
        ident.pop("StudyTime", None)
        # dates moved to 2000-01-01, times of day and intervals kept (PS3.15 Retain
        # Longitudinal Temporal Information with Modified Dates Option)
        self.anchor = _dt.datetime.combine(DEID_DATE, self.anchor.time())

    # -- UIDs and times ------------------------------------------------------------
    def uid(self, name: str) -> UID:
        if name == "study" and not self.deidentify and self.identity.get("StudyInstanceUID"):
            return UID(str(self.identity["StudyInstanceUID"]))
        if name not in self._uids:
            self._uids[name] = generate_uid(entropy_srcs=[self.salt, name])
        return self._uids[name]

    def at(self, time_s: float) -> _dt.datetime:
        """Wall-clock date-time of session time ``time_s``."""
        return self.anchor + _dt.timedelta(seconds=float(time_s) - self.t0_s)

    def date(self, time_s: float) -> str:
        return _fmt_date(self.at(time_s))

    def time(self, time_s: float) -> str:
        return _fmt_time(self.at(time_s))

    def datetime(self, time_s: float) -> str:
        return _fmt_dt(self.at(time_s))

    # -- shared modules ------------------------------------------------------------
    def apply_patient_study(self, ds: Dataset) -> None:
        """Patient, General Study, Patient Study and General Equipment attributes."""
        ident = self.identity
        ds.PatientName = str(ident.get("PatientName", ""))
        ds.PatientID = str(ident.get("PatientID", ""))
        if ident.get("IssuerOfPatientID"):
            ds.IssuerOfPatientID = str(ident["IssuerOfPatientID"])
        ds.PatientBirthDate = str(ident.get("PatientBirthDate", ""))
        ds.PatientSex = str(ident.get("PatientSex", ""))
        for kw in ("PatientAge", "PatientSize", "PatientWeight"):
            if ident.get(kw) not in (None, ""):
                setattr(ds, kw, ident[kw])
        ds.StudyInstanceUID = self.uid("study")
        ds.StudyDate = self.date(self.t0_s)
        ds.StudyTime = self.time(self.t0_s)
        ds.ReferringPhysicianName = str(ident.get("ReferringPhysicianName", ""))
        ds.StudyID = str(ident.get("StudyID", "1"))
        ds.AccessionNumber = str(ident.get("AccessionNumber", ""))
        if ident.get("StudyDescription"):
            ds.StudyDescription = str(ident["StudyDescription"])
        if ident.get("PerformingPhysicianName"):
            ds.PerformingPhysicianName = str(ident["PerformingPhysicianName"])
        if ident.get("OperatorsName"):
            ds.OperatorsName = str(ident["OperatorsName"])
        ds.Manufacturer = MANUFACTURER
        ds.ManufacturerModelName = MODEL_NAME
        ds.SoftwareVersions = SOFTWARE_VERSION
        if not self.deidentify:
            ds.DeviceSerialNumber = DEVICE_SERIAL
            ds.StationName = STATION_NAME
            if ident.get("InstitutionName"):
                ds.InstitutionName = str(ident["InstitutionName"])
        if self.deidentify:
            ds.PatientIdentityRemoved = "YES"
            ds.DeidentificationMethod = ["OpenFluoro export: PS3.15 Basic Profile",
                                         "UIDs replaced", "dates moved to 2000-01-01, times kept"]
            ds.DeidentificationMethodCodeSequence = [
                _code("113100", "DCM", "Basic Application Confidentiality Profile"),
                _code("113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option"),
            ]
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            ds.PatientIdentityRemoved = "NO"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def file_meta_for(ds: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(entropy_srcs=["openfluoro", IMPLEMENTATION_VERSION])
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


def atomic_write(ds: Dataset, path: str | Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file: to a temporary file in the same folder,
    flushed and fsync'ed, then renamed over ``path``. A crash leaves either the old
    file or the new one, never half a file."""
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = file_meta_for(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return atomic_write_bytes(buf.getvalue(), path)


def atomic_write_bytes(data: bytes, path: str | Path) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def check_output_folder(run: RecordedRun, out: str | Path) -> Path:
    """Refuse to write exports into the recording's own folder (the recording stays as it was)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    try:
        same = out.resolve() == run.folder.resolve()
    except OSError:
        same = False
    if same:
        raise ExportError(f"{out}: is the recording's own folder; choose another output folder")
    return out


def patient_orientation(u_axis: Iterable[float], v_axis: Iterable[float]) -> list[str]:
    """DICOM Patient Orientation (0020,0020) of an image whose columns run along ``u`` and rows
    along ``v`` (LPS unit vectors): the direction of the row (increasing column index) first,
    then of the column; up to three letters each, the dominant direction first."""
    def letters(vec: Iterable[float]) -> str:
        v = np.asarray(list(vec), dtype=float)
        pos, neg = "LPH", "RAF"
        out = ""
        for axis in np.argsort(-np.abs(v)):
            if abs(v[axis]) < 1e-3 or len(out) == 3:
                break
            out += pos[axis] if v[axis] > 0 else neg[axis]
        return out or "L"
    return [letters(u_axis), letters(v_axis)]


def pose_axes(meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, beam) unit vectors of a frame's detector in LPS (see ``geometry.carm``)."""
    from openfluoro.fluoro.frame import geometry_from_metadata

    pose = geometry_from_metadata(meta).pose
    return pose.u_axis, pose.v_axis, pose.to_detector


def finite(x: float, what: str) -> float:
    if not math.isfinite(x):
        raise ExportError(f"{what}: expected a finite number, got {x!r}")
    return x


def display_settings(meta: dict[str, Any], header: dict[str, Any] | None = None) -> dict[str, Any]:
    """Flips/rotation the image chain applied to the recorded pixels, if the recording says
    (``meta["display"]`` or ``header["display"]``: ``flip_horizontal``, ``flip_vertical``,
    ``rotate_deg`` clockwise, flips first); none by default (the chain's default)."""
    d = dict((header or {}).get("display") or {})
    d.update(meta.get("display") or {})
    rot = int(d.get("rotate_deg", 0)) % 360
    if rot % 90:
        raise ExportError(f"display rotate_deg must be a multiple of 90, got {d.get('rotate_deg')!r}")
    return {"flip_horizontal": bool(d.get("flip_horizontal", False)),
            "flip_vertical": bool(d.get("flip_vertical", False)), "rotate_deg": rot}


def displayed_to_detector_index(meta: dict[str, Any], header: dict[str, Any] | None = None) -> np.ndarray:
    """3x3 affine taking a displayed pixel ``(row, col, 1)`` of the recorded image to the
    detector image pixel ``(row, col, 1)`` of ``geometry.carm`` (undoing rotation, then flips)."""
    det = meta["detector"]
    b = int(det.get("binning", 1))
    R, C = int(det["rows"]) // b, int(det["cols"]) // b
    s = display_settings(meta, header)
    k = s["rotate_deg"] // 90
    # displayed -> A (the flipped detector image, shape R x C)
    if k == 0:
        rot = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    elif k == 1:   # disp[r', c'] = A[R-1-c', r']
        rot = np.array([[0, -1, R - 1], [1, 0, 0], [0, 0, 1]], dtype=float)
    elif k == 2:   # disp[r', c'] = A[R-1-r', C-1-c']
        rot = np.array([[-1, 0, R - 1], [0, -1, C - 1], [0, 0, 1]], dtype=float)
    else:          # disp[r', c'] = A[c', C-1-r']
        rot = np.array([[0, 1, 0], [-1, 0, C - 1], [0, 0, 1]], dtype=float)
    flip = np.eye(3)
    if s["flip_vertical"]:
        flip[0] = [-1, 0, R - 1]
    if s["flip_horizontal"]:
        flip[1] = [0, -1, C - 1]
    return flip @ rot


def displayed_pixel_to_lps(meta: dict[str, Any], header: dict[str, Any] | None = None) -> np.ndarray:
    """4x4 matrix taking ``(col, row, 0, 1)`` of the recorded (displayed) image to LPS mm on the
    detector plane; the third column is the unit beam direction (source -> detector)."""
    from openfluoro.fluoro.frame import geometry_from_metadata

    g = geometry_from_metadata(meta)
    pose, det = g.pose, g.detector
    p = det.image_pitch_mm
    R, C = det.image_rows, det.image_cols
    centre = pose.detector_centre_lps_mm
    # detector (r, c) -> LPS: centre + (c - (C-1)/2) p u + (r - (R-1)/2) p v
    det_to_lps = np.zeros((4, 4))
    det_to_lps[:3, 0] = p * pose.v_axis                     # per detector row
    det_to_lps[:3, 1] = p * pose.u_axis                     # per detector col
    det_to_lps[:3, 3] = centre - (C - 1) / 2 * p * pose.u_axis - (R - 1) / 2 * p * pose.v_axis
    det_to_lps[3, 3] = 1.0
    m = displayed_to_detector_index(meta, header)           # (r', c', 1) -> (r, c, 1)
    # (col', row', 0, 1) -> (r', c', 1)
    swap = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    lift = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]], dtype=float)  # (r, c, 1) -> (r, c, 0, 1)
    out = det_to_lps @ lift @ m @ swap
    out[:3, 2] = pose.to_detector
    out[3] = [0, 0, 0, 1]
    return out
