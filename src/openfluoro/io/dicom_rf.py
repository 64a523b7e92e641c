"""DICOM image export of a recorded run.

Each fluoro or cine run (one pedal press, see ``dicom_common.split_events``) becomes one
multi-frame **X-Ray Radiofluoroscopic Image** object (``1.2.840.10008.5.1.4.1.1.12.2``,
the default) or **X-Ray Angiographic Image** object (``...12.1``, ``sop="XA"``); each
digital spot becomes a single-frame object of the same class.

What is written, and where the values come from (per-frame metadata, ``Frame.metadata()``):

* Cine / Multi-frame: ``NumberOfFrames``; ``FrameTime`` (ms) when the frames are evenly
  spaced, else ``FrameTimeVector`` (ms since the previous frame, first 0), pointed to by
  ``FrameIncrementPointer``; ``CineRate`` and ``RecommendedDisplayFrameRate`` (the pulse
  rate, rounded), ``ActualFrameDuration``.
* X-Ray Acquisition: ``KVP``, ``XRayTubeCurrent`` (mA, integer by its VR) and
  ``XRayTubeCurrentInuA``, ``ExposureTime`` = pulse width x number of frames (PS3.3
  C.8.7.2.1.1) and ``ExposureTimeInuS``, ``Exposure``/``ExposureInuAs`` (sum of mA x ms),
  ``AveragePulseWidth``, ``RadiationSetting`` (SC for fluoro, GR for spot and cine),
  ``RadiationMode``, ``ImagerPixelSpacing`` (the binned pitch at the detector),
  ``FieldOfViewShape``/``Dimensions``. Values are means over the run when the automatic
  dose-rate control varied them.
* Positioner: ``PositionerPrimaryAngle``/``SecondaryAngle`` (DICOM convention, as
  ``geometry.carm``), ``PositionerMotion`` with per-frame increments when the C-arm
  moved during the run, ``DistanceSourceToDetector`` (SID), ``DistanceSourceToPatient``
  (= SOD, the source-to-isocentre distance, as DICOM defines it),
  ``EstimatedRadiographicMagnificationFactor`` (SID/SOD).
* Collimator (edges in image pixels), added filtration (``TypeOfFilters``, text: the
  legacy IODs have no coded filter attributes), table motion (increments when the table
  moved during the run).
* Dose: the legacy RF/XA IODs have no per-frame dose attribute; the object carries the
  run's kerma-area product in ``ImageAndFluoroscopyAreaDoseProduct`` (dGy cm2) and the
  reference-point air kerma in ``ImageComments``; the RDSR (``io.rdsr``) has the
  per-event figures.
* ``PixelIntensityRelationship`` DISP (monitor images: log, windowed, edge-enhanced),
  ``BurnedInAnnotation`` YES unless the recording says the frame counter was off.

The RF IOD describes table-and-column equipment and has no patient-based positioner
angles; they are written anyway (a Standard Extended SOP Class) because they are the
geometry of a C-arm image. Use ``sop="XA"`` for an object that is plain standard.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID

from openfluoro.fluoro.record import RecordedRun
from openfluoro.io.dicom_common import (
    Event,
    EventSummary,
    ExportContext,
    ExportError,
    LoadedRun,
    atomic_write,
    check_output_folder,
    ds_number,
    displayed_pixel_to_lps,
    display_settings,
    file_meta_for,
    load_run,
    patient_orientation,
    split_events,
    summarize,
)

RF_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.12.2")
XA_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.12.1")
SOP_CLASSES = {"RF": RF_SOP_CLASS, "XA": XA_SOP_CLASS}


def _ds(x: float) -> str:
    """A DS string (at most 16 characters) for ``x``."""
    return ds_number(x)


@dataclass(frozen=True)
class ExportedImage:
    path: Path
    sop_instance_uid: str
    event: Event
    n_frames: int


def _series_key(event: Event) -> str:
    return f"series-{event.run_index}-{event.kind}"


def build_image_dataset(ctx: ExportContext, event: Event, *, sop: str = "RF", instance_number: int = 1,
                        series_number: int | None = None) -> Dataset:
    """The RF/XA dataset (with pixels) of one event of ``ctx.run``."""
    if sop not in SOP_CLASSES:
        raise ExportError(f"sop must be 'RF' or 'XA', got {sop!r}")
    run: RecordedRun = ctx.run
    s: EventSummary = summarize(run, event)
    metas = event.frames_meta(run)
    first = metas[0]
    header = run.header
    dtype = np.dtype(header.get("dtype", "uint16"))
    rows, cols = int(header["rows"]), int(header["cols"])
    multi = event.kind != "spot"

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SOP_CLASSES[sop]
    ds.SOPInstanceUID = ctx.uid(f"image-{event.ordinal}")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    t_first = s.frame_times_s[0]
    ds.InstanceCreationDate = ctx.date(s.end_s)
    ds.InstanceCreationTime = ctx.time(s.end_s)
    ctx.apply_patient_study(ds)

    # General Series
    ds.Modality = sop
    ds.SeriesInstanceUID = ctx.uid(_series_key(event))
    ds.SeriesNumber = series_number if series_number is not None else event.ordinal + 1
    ds.SeriesDate = ctx.date(s.start_s)
    ds.SeriesTime = ctx.time(s.start_s)
    label = {"fluoro": "Fluoroscopy run", "cine": "Cine run", "spot": "Digital spot"}[event.kind]
    ds.SeriesDescription = f"{label} {event.run_index}"
    ds.ProtocolName = f"OpenFluoro {event.kind} {s.dose_mode} dose"
    if ctx.identity.get("BodyPartExamined"):
        ds.BodyPartExamined = str(ctx.identity["BodyPartExamined"])
    ds.ImageLaterality = "U"      # the imaged region (spine) is not a paired structure

    # General Image / Acquisition
    ds.InstanceNumber = instance_number
    ds.AcquisitionNumber = event.ordinal + 1
    ds.AcquisitionDate = ctx.date(s.start_s)
    ds.AcquisitionTime = ctx.time(s.start_s)
    ds.AcquisitionDateTime = ctx.datetime(s.start_s)
    ds.ContentDate = ctx.date(t_first)
    ds.ContentTime = ctx.time(t_first)
    u_lps = displayed_pixel_to_lps(first, header)
    ds.PatientOrientation = patient_orientation(u_lps[:3, 0], u_lps[:3, 1])
    ds.ImageComments = (
        f"OpenFluoro {event.kind} run {event.run_index}: {s.n_frames} frame(s); air kerma at the interventional "
        f"reference point (15 cm from the isocentre toward the source) {s.ka_r_mgy:.6g} mGy; kerma-area product "
        f"{s.kap_gy_cm2:.6g} Gy.cm2; per-event dose in the X-Ray Radiation Dose SR")
    disp = display_settings(first, header)
    counter = bool((header.get("display") or {}).get("frame_counter", True))
    ds.BurnedInAnnotation = "YES" if counter else "NO"
    ds.LossyImageCompression = "00"

    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 8 * dtype.itemsize
    ds.BitsStored = 8 * dtype.itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    pixels = np.ascontiguousarray(run.pixels[list(event.indices)])
    if pixels.dtype != dtype:
        raise ExportError(f"{run.folder}: pixels are {pixels.dtype}, header says {dtype}")
    ds.PixelIntensityRelationship = "DISP"
    ds.WindowCenter = _ds((2 ** ds.BitsStored) / 2)
    ds.WindowWidth = _ds(2 ** ds.BitsStored)

    # Multi-frame / Cine
    if multi:
        ds.NumberOfFrames = s.n_frames
        times_ms = np.diff(np.asarray(s.frame_times_s)) * 1000.0
        rate = s.pulse_rate_pps
        nominal_ms = 1000.0 / rate if rate > 0 else (float(np.mean(times_ms)) if len(times_ms) else 0.0)
        even = len(times_ms) == 0 or bool(np.allclose(times_ms, nominal_ms, rtol=1e-3, atol=1e-3))
        if even:
            ds.FrameTime = _ds(nominal_ms)
            ds.FrameIncrementPointer = Tag("FrameTime")
        else:
            ds.FrameTimeVector = [_ds(0.0)] + [_ds(t) for t in times_ms]
            ds.FrameIncrementPointer = Tag("FrameTimeVector")
        fps = int(round(rate)) if rate > 0 else max(1, int(round(1000.0 / max(nominal_ms, 1e-3))))
        ds.CineRate = max(1, fps)
        ds.RecommendedDisplayFrameRate = max(1, fps)
        ds.ActualFrameDuration = max(1, int(round(nominal_ms)))
        ds.PreferredPlaybackSequencing = 0
        ds.StartTrim = 1
        ds.StopTrim = s.n_frames
    ds.PixelData = pixels.tobytes()

    # X-Ray Image
    turned = disp["flip_horizontal"] or disp["flip_vertical"] or disp["rotate_deg"]
    ds.AcquisitionDeviceProcessingDescription = ("log, recursive filter, denoise, edge, window"
                                                 + (", flipped/rotated" if turned else ""))

    # X-Ray Acquisition
    ds.KVP = _ds(s.kvp)
    ds.RadiationSetting = "SC" if event.kind == "fluoro" else "GR"
    ds.XRayTubeCurrent = int(round(s.ma))
    ds.XRayTubeCurrentInuA = _ds(s.ma * 1000.0)
    ds.ExposureTime = int(round(s.beam_on_ms))
    ds.ExposureTimeInuS = _ds(s.beam_on_ms * 1000.0)
    ds.Exposure = int(round(s.exposure_uas / 1000.0))
    ds.ExposureInuAs = int(round(s.exposure_uas))
    ds.AveragePulseWidth = _ds(s.pulse_ms)
    ds.RadiationMode = "CONTINUOUS" if s.continuous else "PULSED"
    ds.Grid = "NONE"
    pitch = s.image_pitch_mm
    ds.ImagerPixelSpacing = [_ds(pitch), _ds(pitch)]
    det_h = s.detector["rows"] * s.detector["pixel_pitch_mm"]
    det_w = s.detector["cols"] * s.detector["pixel_pitch_mm"]
    ds.FieldOfViewShape = "RECTANGLE"
    ds.FieldOfViewDimensions = [int(round(det_h)), int(round(det_w))]

    # X-Ray Collimator (edges in detector image pixels, 0-based as DICOM: first column is 0)
    col = s.collimator
    cu, cv = float(col.get("centre_u_mm", 0.0)), float(col.get("centre_v_mm", 0.0))
    w, h = s.field_mm
    c_mid, r_mid = (cols - 1) / 2.0, (rows - 1) / 2.0
    ds.CollimatorShape = "RECTANGULAR"
    ds.CollimatorLeftVerticalEdge = int(max(0, np.floor(c_mid + (cu - w / 2) / pitch + 0.5)))
    ds.CollimatorRightVerticalEdge = int(min(cols - 1, np.ceil(c_mid + (cu + w / 2) / pitch - 0.5)))
    ds.CollimatorUpperHorizontalEdge = int(max(0, np.floor(r_mid + (cv - h / 2) / pitch + 0.5)))
    ds.CollimatorLowerHorizontalEdge = int(min(rows - 1, np.ceil(r_mid + (cv + h / 2) / pitch - 0.5)))

    # added filtration (the legacy XA/RF IODs describe it in text only)
    ds.TypeOfFilters = (f"COPPER {s.filtration_mm_cu:g} mm added" if s.filtration_mm_cu > 0 else "NONE added") \
        + f"; total {s.filtration_mm_al:g} mm Al"

    # dose: the run's kerma-area product (the IOD has no per-frame dose attribute)
    ds.ImageAndFluoroscopyAreaDoseProduct = _ds(s.kap_gy_cm2 * 10.0)   # dGy cm2

    # Positioner (XA Positioner attributes; DistanceSourceTo* also in XRF Positioner)
    ds.DistanceSourceToDetector = _ds(s.sid_mm)
    ds.DistanceSourceToPatient = _ds(s.sod_mm)
    ds.EstimatedRadiographicMagnificationFactor = _ds(s.magnification)
    ds.PositionerPrimaryAngle = _ds(s.primary_deg)
    ds.PositionerSecondaryAngle = _ds(s.secondary_deg)
    if multi:
        prim = np.array([float(m["pose"]["primary_deg"]) for m in metas])
        sec = np.array([float(m["pose"]["secondary_deg"]) for m in metas])
        moving = np.ptp(prim) > 1e-6 or np.ptp(sec) > 1e-6
        if moving:
            ds.PositionerPrimaryAngleIncrement = [_ds(0.0)] + [_ds(x) for x in np.diff(prim)]
            ds.PositionerSecondaryAngleIncrement = [_ds(0.0)] + [_ds(x) for x in np.diff(sec)]
        if sop == "XA" or moving:
            ds.PositionerMotion = "DYNAMIC" if moving else "STATIC"
        iso = np.array([m["pose"]["isocentre_lps_mm"] for m in metas], dtype=float)
        if np.ptp(iso, axis=0).max() > 1e-6:
            table = np.stack([-iso[:, 2], -iso[:, 0], iso[:, 1]], axis=1)  # longitudinal, lateral, height
            d = np.vstack([np.zeros((1, 3)), np.diff(table, axis=0)])
            ds.TableMotion = "DYNAMIC"
            ds.TableVerticalIncrement = [_ds(x) for x in d[:, 2]]
            ds.TableLongitudinalIncrement = [_ds(x) for x in d[:, 0]]
            ds.TableLateralIncrement = [_ds(x) for x in d[:, 1]]
        else:
            ds.TableMotion = "STATIC"

    ds.file_meta = file_meta_for(ds)
    return ds


def export_images(run: str | Path | RecordedRun | LoadedRun, out_dir: str | Path, *, sop: str = "RF",
                  deidentify: bool = False, identity: dict[str, Any] | None = None,
                  context: ExportContext | None = None, start: _dt.datetime | None = None) -> list[ExportedImage]:
    """Write one DICOM file per event of the recording into ``out_dir``.

    Files are ``run{run_index:03d}_{kind}{ordinal:03d}.dcm``; each is written atomically.
    Pass the same ``context`` to ``rdsr.export_rdsr`` to put the RDSR in the same study.
    """
    if sop not in SOP_CLASSES:
        raise ExportError(f"sop must be 'RF' or 'XA', got {sop!r}")
    if context is None:
        loaded = run if isinstance(run, LoadedRun) else (LoadedRun(run) if isinstance(run, RecordedRun) else load_run(run))
        context = ExportContext.for_run(loaded.run, deidentify=deidentify, identity=identity, start=start)
    out = check_output_folder(context.run, out_dir)
    written: list[ExportedImage] = []
    series_numbers: dict[str, int] = {}
    instance_in_series: dict[str, int] = {}
    for event in split_events(context.run):
        key = _series_key(event)
        series_numbers.setdefault(key, len(series_numbers) + 1)
        instance_in_series[key] = instance_in_series.get(key, 0) + 1
        ds = build_image_dataset(context, event, sop=sop, instance_number=instance_in_series[key],
                                 series_number=series_numbers[key])
        path = out / f"run{event.run_index:03d}_{event.kind}{event.ordinal:03d}.dcm"
        atomic_write(ds, path)
        written.append(ExportedImage(path, str(ds.SOPInstanceUID), event, len(event.indices)))
    return written


def read_frames(path: str | Path) -> tuple[Dataset, np.ndarray]:
    """Read an exported object back: (dataset, pixels as (frames, rows, cols))."""
    import pydicom

    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if arr.ndim == 2:
        arr = arr[None]
    return ds, arr


def frame_count(datasets: Sequence[Dataset]) -> int:
    return sum(int(getattr(d, "NumberOfFrames", 1) or 1) for d in datasets)
