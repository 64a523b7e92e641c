"""X-Ray Radiation Dose SR (RDSR, SOP Class 1.2.840.10008.5.1.4.1.1.88.67) of a recording.

Built from the recording's per-frame metadata alone (no ledger needed): each fluoro or
cine run and each digital spot (``dicom_common.split_events``) is one irradiation event,
and the accumulated values are sums over the events. Content, in PS3.16 template terms:

``TID 10001`` Projection X-Ray Radiation Dose (root CONTAINER 113701)
  * Procedure reported = Projection X-Ray, with Has Intent
  * TID 1002 observer context: device observer (UID, name, manufacturer, model, serial)
  * Start / End of X-Ray Irradiation, Scope of Accumulation = Study (+ Study Instance UID)
  * ``TID 10002`` Accumulated X-Ray Dose Data (Acquisition Plane = Single Plane) with
    ``TID 10004`` projection X-ray totals: Dose Area Product Total, Dose (RP) Total, Fluoro
    DAP / Dose (RP) Totals, Total Fluoro Time, Acquisition DAP / Dose (RP) Totals, Total
    Acquisition Time, Total Number of Radiographic Frames, Reference Point Definition
  * ``TID 10003`` Irradiation Event X-Ray Data per event: Acquisition Plane, Irradiation
    Event UID, DateTime Started, Irradiation Event Type (Fluoroscopy / Stationary
    Acquisition), Acquisition Protocol, Target Region, Reference Point Definition, Dose Area
    Product, Dose (RP), positioner primary/secondary (end) angles, Collimated Field Area /
    Height / Width (at the detector plane), X-Ray Filters (the added Cu filter; the total
    Al filtration goes in the event's Comment), Fluoro Mode, Pulse Rate, Number of
    Pulses, KVP, X-Ray Tube Current, Exposure Time, Pulse Width, Exposure, Irradiation
    Duration, Distance Source to Detector / Isocenter / Reference Point, Table
    Longitudinal / Lateral / Height Position, Patient Table Relationship and Orientation
    (only when the recording states the patient position), irradiating device, Acquired
    Image (when the images were exported in the same study)
  * Source of Dose Information = System Calculated (the doses come from the simulator's
    physics model, ``physics.dose``, not a dosimeter), and a Comment saying so.

Units (UCUM): Gy, Gy.m2 (KAP: ``kap_gy_cm2 * 1e-4``), s, ms, mm, m2, deg, kV, mA, uA.s,
{pulse}/s. Codes are the current PS3.16 ones (SCT where the standard moved from SRT).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Iterable, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from openfluoro.fluoro.record import RecordedRun
from openfluoro.io.dicom_common import (
    DEVICE_SERIAL,
    MANUFACTURER,
    MODEL_NAME,
    REFERENCE_POINT_OFFSET_MM,
    STATION_NAME,
    EventSummary,
    ExportContext,
    ExportError,
    LoadedRun,
    atomic_write,
    check_output_folder,
    ds_number,
    file_meta_for,
    load_run,
    split_events,
    summarize,
)

RDSR_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.88.67")

Code = tuple[str, str, str]

# -- concept names (DCM unless noted) ---------------------------------------------------
XRAY_RADIATION_DOSE_REPORT: Code = ("113701", "DCM", "X-Ray Radiation Dose Report")
PROCEDURE_REPORTED: Code = ("121058", "DCM", "Procedure reported")
PROJECTION_XRAY: Code = ("113704", "DCM", "Projection X-Ray")
HAS_INTENT: Code = ("363703001", "SCT", "Has Intent")
INTENTS: dict[str, Code] = {
    "diagnostic": ("261004008", "SCT", "Diagnostic Intent"),
    "therapeutic": ("262202000", "SCT", "Therapeutic Intent"),
    "combined": ("1279505009", "SCT", "Combined Diagnostic and Therapeutic Intent"),
}
OBSERVER_TYPE: Code = ("121005", "DCM", "Observer Type")
DEVICE: Code = ("121007", "DCM", "Device")
DEVICE_OBSERVER_UID: Code = ("121012", "DCM", "Device Observer UID")
DEVICE_OBSERVER_NAME: Code = ("121013", "DCM", "Device Observer Name")
DEVICE_OBSERVER_MANUFACTURER: Code = ("121014", "DCM", "Device Observer Manufacturer")
DEVICE_OBSERVER_MODEL: Code = ("121015", "DCM", "Device Observer Model Name")
DEVICE_OBSERVER_SERIAL: Code = ("121016", "DCM", "Device Observer Serial Number")
START_OF_IRRADIATION: Code = ("113809", "DCM", "Start of X-Ray Irradiation")
END_OF_IRRADIATION: Code = ("113810", "DCM", "End of X-Ray Irradiation")
SCOPE_OF_ACCUMULATION: Code = ("113705", "DCM", "Scope of Accumulation")
STUDY: Code = ("113014", "DCM", "Study")
STUDY_INSTANCE_UID: Code = ("110180", "DCM", "Study Instance UID")
ACCUMULATED_DOSE_DATA: Code = ("113702", "DCM", "Accumulated X-Ray Dose Data")
ACQUISITION_PLANE: Code = ("113764", "DCM", "Acquisition Plane")
SINGLE_PLANE: Code = ("113622", "DCM", "Single Plane")
DAP_TOTAL: Code = ("113722", "DCM", "Dose Area Product Total")
DOSE_RP_TOTAL: Code = ("113725", "DCM", "Dose (RP) Total")
FLUORO_DAP_TOTAL: Code = ("113726", "DCM", "Fluoro Dose Area Product Total")
FLUORO_DOSE_RP_TOTAL: Code = ("113728", "DCM", "Fluoro Dose (RP) Total")
TOTAL_FLUORO_TIME: Code = ("113730", "DCM", "Total Fluoro Time")
ACQ_DAP_TOTAL: Code = ("113727", "DCM", "Acquisition Dose Area Product Total")
ACQ_DOSE_RP_TOTAL: Code = ("113729", "DCM", "Acquisition Dose (RP) Total")
TOTAL_ACQ_TIME: Code = ("113855", "DCM", "Total Acquisition Time")
TOTAL_RADIOGRAPHIC_FRAMES: Code = ("113731", "DCM", "Total Number of Radiographic Frames")
REFERENCE_POINT_DEFINITION: Code = ("113780", "DCM", "Reference Point Definition")
IRP_15CM: Code = ("113860", "DCM", "15cm from Isocenter toward Source")
IRRADIATION_EVENT: Code = ("113706", "DCM", "Irradiation Event X-Ray Data")
IRRADIATION_EVENT_UID: Code = ("113769", "DCM", "Irradiation Event UID")
DATETIME_STARTED: Code = ("111526", "DCM", "DateTime Started")
IRRADIATION_EVENT_TYPE: Code = ("113721", "DCM", "Irradiation Event Type")
FLUOROSCOPY: Code = ("44491008", "SCT", "Fluoroscopy")
STATIONARY_ACQUISITION: Code = ("113611", "DCM", "Stationary Acquisition")
ACQUISITION_PROTOCOL: Code = ("125203", "DCM", "Acquisition Protocol")
TARGET_REGION: Code = ("123014", "DCM", "Target Region")
DOSE_AREA_PRODUCT: Code = ("122130", "DCM", "Dose Area Product")
DOSE_RP: Code = ("113738", "DCM", "Dose (RP)")
PRIMARY_ANGLE: Code = ("112011", "DCM", "Positioner Primary Angle")
SECONDARY_ANGLE: Code = ("112012", "DCM", "Positioner Secondary Angle")
PRIMARY_END_ANGLE: Code = ("113739", "DCM", "Positioner Primary End Angle")
SECONDARY_END_ANGLE: Code = ("113740", "DCM", "Positioner Secondary End Angle")
COLLIMATED_FIELD_AREA: Code = ("113790", "DCM", "Collimated Field Area")
COLLIMATED_FIELD_HEIGHT: Code = ("113788", "DCM", "Collimated Field Height")
COLLIMATED_FIELD_WIDTH: Code = ("113789", "DCM", "Collimated Field Width")
XRAY_FILTERS: Code = ("113771", "DCM", "X-Ray Filters")
XRAY_FILTER_TYPE: Code = ("113772", "DCM", "X-Ray Filter Type")
FLAT_FILTER: Code = ("113653", "DCM", "Flat filter")
NO_FILTER: Code = ("111609", "DCM", "No Filter")
XRAY_FILTER_MATERIAL: Code = ("113757", "DCM", "X-Ray Filter Material")
ALUMINUM: Code = ("12503006", "SCT", "Aluminum")
COPPER: Code = ("66925006", "SCT", "Copper")
#: The SRT codes of PS3.16 before 2019 (retired), still what some RDSR readers match on.
LEGACY_FILTER_MATERIALS: dict[str, Code] = {
    "aluminum": ("C-120F9", "SRT", "Aluminum or Aluminum compound"),
    "copper": ("C-127F9", "SRT", "Copper or Copper compound"),
}
FILTER_THICKNESS_MIN: Code = ("113758", "DCM", "X-Ray Filter Thickness Minimum")
FILTER_THICKNESS_MAX: Code = ("113773", "DCM", "X-Ray Filter Thickness Maximum")
FLUORO_MODE: Code = ("113732", "DCM", "Fluoro Mode")
PULSED: Code = ("113631", "DCM", "Pulsed")
CONTINUOUS: Code = ("113630", "DCM", "Continuous")
PULSE_RATE: Code = ("113791", "DCM", "Pulse Rate")
NUMBER_OF_PULSES: Code = ("113768", "DCM", "Number of Pulses")
KVP: Code = ("113733", "DCM", "KVP")
TUBE_CURRENT: Code = ("113734", "DCM", "X-Ray Tube Current")
EXPOSURE_TIME: Code = ("113824", "DCM", "Exposure Time")
PULSE_WIDTH: Code = ("113793", "DCM", "Pulse Width")
EXPOSURE: Code = ("113736", "DCM", "Exposure")
IRRADIATION_DURATION: Code = ("113742", "DCM", "Irradiation Duration")
DIST_SOURCE_DETECTOR: Code = ("113750", "DCM", "Distance Source to Detector")
DIST_SOURCE_ISOCENTER: Code = ("113748", "DCM", "Distance Source to Isocenter")
DIST_SOURCE_RP: Code = ("113737", "DCM", "Distance Source to Reference Point")
TABLE_LONGITUDINAL: Code = ("113751", "DCM", "Table Longitudinal Position")
TABLE_LATERAL: Code = ("113752", "DCM", "Table Lateral Position")
TABLE_HEIGHT: Code = ("113753", "DCM", "Table Height Position")
PATIENT_TABLE_RELATIONSHIP: Code = ("113745", "DCM", "Patient Table Relationship")
PATIENT_ORIENTATION: Code = ("113743", "DCM", "Patient Orientation")
PATIENT_ORIENTATION_MODIFIER: Code = ("113744", "DCM", "Patient Orientation Modifier")
HEADFIRST: Code = ("102540008", "SCT", "headfirst")
FEETFIRST: Code = ("102541007", "SCT", "feet-first")
RECUMBENT: Code = ("102538003", "SCT", "recumbent")
SUPINE: Code = ("40199007", "SCT", "supine")
PRONE: Code = ("1240000", "SCT", "prone")
LEFT_DECUBITUS: Code = ("102536004", "SCT", "left lateral decubitus")
RIGHT_DECUBITUS: Code = ("102535000", "SCT", "right lateral decubitus")
DEVICE_ROLE: Code = ("113876", "DCM", "Device Role in Procedure")
IRRADIATING_DEVICE: Code = ("113859", "DCM", "Irradiating Device")
DEVICE_NAME: Code = ("113877", "DCM", "Device Name")
DEVICE_MANUFACTURER: Code = ("113878", "DCM", "Device Manufacturer")
DEVICE_MODEL: Code = ("113879", "DCM", "Device Model Name")
DEVICE_SERIAL_NUMBER: Code = ("113880", "DCM", "Device Serial Number")
ACQUIRED_IMAGE: Code = ("113795", "DCM", "Acquired Image")
SOURCE_OF_DOSE_INFORMATION: Code = ("113854", "DCM", "Source of Dose Information")
SYSTEM_CALCULATED: Code = ("113940", "DCM", "System Calculated")
COMMENT: Code = ("121106", "DCM", "Comment")

#: Body Part Examined -> target region code (a few; others are left out of the report).
TARGET_REGIONS: dict[str, Code] = {
    "LSPINE": ("122496007", "SCT", "Lumbar spine"),
    "TSPINE": ("122495006", "SCT", "Thoracic spine"),
    "SPINE": ("421060004", "SCT", "Spine"),
    "ABDOMEN": ("818981001", "SCT", "Abdomen"),
    "PELVIS": ("816092008", "SCT", "Pelvis"),
    "CHEST": ("816094009", "SCT", "Chest"),
}
#: DICOM Patient Position (0018,5100) -> (table relationship, orientation, modifier)
PATIENT_POSITIONS: dict[str, tuple[Code, Code, Code]] = {
    "HFS": (HEADFIRST, RECUMBENT, SUPINE), "HFP": (HEADFIRST, RECUMBENT, PRONE),
    "FFS": (FEETFIRST, RECUMBENT, SUPINE), "FFP": (FEETFIRST, RECUMBENT, PRONE),
    "HFDL": (HEADFIRST, RECUMBENT, LEFT_DECUBITUS), "HFDR": (HEADFIRST, RECUMBENT, RIGHT_DECUBITUS),
    "FFDL": (FEETFIRST, RECUMBENT, LEFT_DECUBITUS), "FFDR": (FEETFIRST, RECUMBENT, RIGHT_DECUBITUS),
}

UNITS: dict[str, Code] = {
    "Gy": ("Gy", "UCUM", "Gy"), "Gy.m2": ("Gy.m2", "UCUM", "Gy.m2"), "s": ("s", "UCUM", "s"),
    "ms": ("ms", "UCUM", "ms"), "mm": ("mm", "UCUM", "mm"), "m2": ("m2", "UCUM", "m2"),
    "deg": ("deg", "UCUM", "deg"), "kV": ("kV", "UCUM", "kV"), "mA": ("mA", "UCUM", "mA"),
    "uA.s": ("uA.s", "UCUM", "uA.s"), "pulse/s": ("{pulse}/s", "UCUM", "pulse/s"),
    "1": ("1", "UCUM", "no units"),
}


# --------------------------------------------------------------------------- content items


def _code(c: Code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = c
    return item


def _item(rel: str | None, value_type: str, name: Code) -> Dataset:
    it = Dataset()
    if rel is not None:
        it.RelationshipType = rel
    it.ValueType = value_type
    it.ConceptNameCodeSequence = [_code(name)]
    return it


def container(rel: str | None, name: Code, children: Sequence[Dataset]) -> Dataset:
    it = _item(rel, "CONTAINER", name)
    it.ContinuityOfContent = "SEPARATE"
    it.ContentSequence = list(children)
    return it


def code_item(rel: str, name: Code, value: Code, children: Sequence[Dataset] = ()) -> Dataset:
    it = _item(rel, "CODE", name)
    it.ConceptCodeSequence = [_code(value)]
    if children:
        it.ContentSequence = list(children)
    return it


def num_item(rel: str, name: Code, value: float, unit: str) -> Dataset:
    it = _item(rel, "NUM", name)
    mv = Dataset()
    mv.MeasurementUnitsCodeSequence = [_code(UNITS[unit])]
    mv.NumericValue = ds_number(value)
    it.MeasuredValueSequence = [mv]
    return it


def text_item(rel: str, name: Code, text: str) -> Dataset:
    it = _item(rel, "TEXT", name)
    it.TextValue = text
    return it


def uid_item(rel: str, name: Code, uid: str) -> Dataset:
    it = _item(rel, "UIDREF", name)
    it.UID = uid
    return it


def datetime_item(rel: str, name: Code, dt: str) -> Dataset:
    it = _item(rel, "DATETIME", name)
    it.DateTime = dt
    return it


def image_item(rel: str, name: Code, sop_class: str, sop_instance: str) -> Dataset:
    it = _item(rel, "IMAGE", name)
    ref = Dataset()
    ref.ReferencedSOPClassUID = sop_class
    ref.ReferencedSOPInstanceUID = sop_instance
    it.ReferencedSOPSequence = [ref]
    return it


# --------------------------------------------------------------------------- the report


DEVICE_OBSERVER = generate_uid(entropy_srcs=["openfluoro-device-observer", DEVICE_SERIAL])


def _filters(s: EventSummary, legacy_codes: bool) -> list[Dataset]:
    """The added spectral filter (copper). The recording's aluminium figure is the tube's
    *total* filtration (inherent + added, ``physics.spectrum``), not an added filter, so it
    is stated in the event's Comment instead of as an X-Ray Filter."""
    if s.filtration_mm_cu <= 0:
        return [container("CONTAINS", XRAY_FILTERS, [code_item("CONTAINS", XRAY_FILTER_TYPE, NO_FILTER)])]
    material = LEGACY_FILTER_MATERIALS["copper"] if legacy_codes else COPPER
    return [container("CONTAINS", XRAY_FILTERS, [
        code_item("CONTAINS", XRAY_FILTER_TYPE, FLAT_FILTER),
        code_item("CONTAINS", XRAY_FILTER_MATERIAL, material),
        num_item("CONTAINS", FILTER_THICKNESS_MIN, s.filtration_mm_cu, "mm"),
        num_item("CONTAINS", FILTER_THICKNESS_MAX, s.filtration_mm_cu, "mm"),
    ])]


def irradiation_event(ctx: ExportContext, s: EventSummary, *, image: tuple[str, str] | None = None,
                      legacy_codes: bool = False) -> Dataset:
    """TID 10003 (with 10003B source and 10003C mechanical data) for one event."""
    ev = s.event
    fluoro = ev.kind == "fluoro"
    items: list[Dataset] = [
        code_item("HAS CONCEPT MOD", ACQUISITION_PLANE, SINGLE_PLANE),
        uid_item("CONTAINS", IRRADIATION_EVENT_UID, ctx.uid(f"irradiation-event-{ev.ordinal}")),
        datetime_item("CONTAINS", DATETIME_STARTED, ctx.datetime(s.start_s)),
        code_item("CONTAINS", IRRADIATION_EVENT_TYPE, FLUOROSCOPY if fluoro else STATIONARY_ACQUISITION),
        text_item("CONTAINS", ACQUISITION_PROTOCOL, f"{ev.kind} {s.dose_mode} dose"
                  + (f" {s.pulse_rate_pps:g} p/s" if s.pulse_rate_pps > 0 else "")),
    ]
    region = TARGET_REGIONS.get(str(ctx.identity.get("BodyPartExamined", "LSPINE")).upper())
    if region:
        items.append(code_item("CONTAINS", TARGET_REGION, region))
    items += [
        code_item("CONTAINS", REFERENCE_POINT_DEFINITION, IRP_15CM),
        num_item("CONTAINS", DOSE_AREA_PRODUCT, s.kap_gy_cm2 * 1e-4, "Gy.m2"),
        num_item("CONTAINS", DOSE_RP, s.ka_r_mgy * 1e-3, "Gy"),
        # TID 10003C mechanical data
        num_item("CONTAINS", PRIMARY_ANGLE, s.primary_deg, "deg"),
        num_item("CONTAINS", SECONDARY_ANGLE, s.secondary_deg, "deg"),
    ]
    if ev.kind != "spot" and (s.primary_end_deg != s.primary_deg or s.secondary_end_deg != s.secondary_deg):
        items += [num_item("CONTAINS", PRIMARY_END_ANGLE, s.primary_end_deg, "deg"),
                  num_item("CONTAINS", SECONDARY_END_ANGLE, s.secondary_end_deg, "deg")]
    # TID 10003B source data
    items += [
        num_item("CONTAINS", COLLIMATED_FIELD_AREA, s.field_area_m2, "m2"),
        num_item("CONTAINS", COLLIMATED_FIELD_HEIGHT, s.field_mm[1], "mm"),
        num_item("CONTAINS", COLLIMATED_FIELD_WIDTH, s.field_mm[0], "mm"),
    ]
    items += _filters(s, legacy_codes)
    if ev.kind != "spot":
        items.append(code_item("CONTAINS", FLUORO_MODE, CONTINUOUS if s.continuous else PULSED))
        if not s.continuous:
            items.append(num_item("CONTAINS", PULSE_RATE, s.pulse_rate_pps, "pulse/s"))
    items += [
        num_item("CONTAINS", NUMBER_OF_PULSES, s.n_frames, "1"),
        num_item("CONTAINS", KVP, s.kvp, "kV"),
        num_item("CONTAINS", TUBE_CURRENT, s.ma, "mA"),
        num_item("CONTAINS", EXPOSURE_TIME, s.beam_on_ms, "ms"),
        num_item("CONTAINS", PULSE_WIDTH, s.pulse_ms, "ms"),
        num_item("CONTAINS", EXPOSURE, s.exposure_uas, "uA.s"),
        num_item("CONTAINS", IRRADIATION_DURATION, s.duration_s, "s"),
        # dose-related distances (CID 10008)
        num_item("CONTAINS", DIST_SOURCE_DETECTOR, s.sid_mm, "mm"),
        num_item("CONTAINS", DIST_SOURCE_ISOCENTER, s.sod_mm, "mm"),
        num_item("CONTAINS", DIST_SOURCE_RP, s.sod_mm - REFERENCE_POINT_OFFSET_MM, "mm"),
        num_item("CONTAINS", TABLE_LONGITUDINAL, s.table_mm[0], "mm"),
        num_item("CONTAINS", TABLE_LATERAL, s.table_mm[1], "mm"),
        num_item("CONTAINS", TABLE_HEIGHT, s.table_mm[2], "mm"),
    ]
    position = str(ctx.run.header.get("patient_position") or "").upper()
    if position in PATIENT_POSITIONS:
        rel, orient, modifier = PATIENT_POSITIONS[position]
        items += [code_item("CONTAINS", PATIENT_TABLE_RELATIONSHIP, rel),
                  code_item("CONTAINS", PATIENT_ORIENTATION, orient,
                            [code_item("HAS CONCEPT MOD", PATIENT_ORIENTATION_MODIFIER, modifier)])]
    device_props = [text_item("HAS PROPERTIES", DEVICE_MANUFACTURER, MANUFACTURER),
                    text_item("HAS PROPERTIES", DEVICE_MODEL, MODEL_NAME),
                    text_item("HAS PROPERTIES", DEVICE_SERIAL_NUMBER, DEVICE_SERIAL)]
    if not ctx.deidentify:
        device_props.insert(0, text_item("HAS PROPERTIES", DEVICE_NAME, STATION_NAME))
    items.append(code_item("CONTAINS", DEVICE_ROLE, IRRADIATING_DEVICE, device_props))
    comment = (f"Total tube filtration {s.filtration_mm_al:g} mm Al (inherent + added)"
               + (f" plus the {s.filtration_mm_cu:g} mm Cu filter" if s.filtration_mm_cu > 0 else "") + ".")
    if s.kvp_range[1] - s.kvp_range[0] > 1e-6 or s.ma_range[1] - s.ma_range[0] > 1e-6:
        comment += (f" Automatic dose-rate control varied the technique over the {s.n_frames} pulses: "
                    f"{s.kvp_range[0]:.1f}-{s.kvp_range[1]:.1f} kV, {s.ma_range[0]:.2f}-{s.ma_range[1]:.2f} mA; "
                    "KVP and X-Ray Tube Current are the means.")
    items.append(text_item("CONTAINS", COMMENT, comment))
    if image is not None:
        items.append(image_item("CONTAINS", ACQUIRED_IMAGE, image[0], image[1]))
    return container("CONTAINS", IRRADIATION_EVENT, items)


def accumulated(summaries: Sequence[EventSummary]) -> dict[str, float]:
    """Procedure totals (the TID 10004 values) in report units (Gy, Gy.m2, s, frames)."""
    fl = [s for s in summaries if s.kind == "fluoro"]
    acq = [s for s in summaries if s.kind != "fluoro"]
    return {
        "dap_total_gy_m2": sum(s.kap_gy_cm2 for s in summaries) * 1e-4,
        "dose_rp_total_gy": sum(s.ka_r_mgy for s in summaries) * 1e-3,
        "fluoro_dap_total_gy_m2": sum(s.kap_gy_cm2 for s in fl) * 1e-4,
        "fluoro_dose_rp_total_gy": sum(s.ka_r_mgy for s in fl) * 1e-3,
        "total_fluoro_time_s": sum(s.duration_s for s in fl),
        "acquisition_dap_total_gy_m2": sum(s.kap_gy_cm2 for s in acq) * 1e-4,
        "acquisition_dose_rp_total_gy": sum(s.ka_r_mgy for s in acq) * 1e-3,
        "total_acquisition_time_s": sum(s.duration_s for s in acq),
        "total_radiographic_frames": float(sum(s.n_frames for s in acq)),
    }


def build_rdsr(ctx: ExportContext, *, images: dict[int, tuple[str, str, str]] | None = None,
               intent: str = "diagnostic", legacy_codes: bool = False) -> Dataset:
    """The RDSR dataset of ``ctx.run``.

    ``images`` maps an event ordinal to ``(sop_class_uid, sop_instance_uid, series_uid)`` of
    its exported image, referenced as Acquired Image (and listed as evidence).
    ``legacy_codes=True`` writes the retired SRT filter-material codes ("Copper or Copper
    compound", "Aluminum or Aluminum compound") that older readers (e.g. pyskindose) match.
    """
    if intent not in INTENTS:
        raise ExportError(f"intent must be one of {sorted(INTENTS)}, got {intent!r}")
    run: RecordedRun = ctx.run
    events = split_events(run)
    summaries = [summarize(run, e) for e in events]
    totals = accumulated(summaries)
    images = images or {}
    start_s = min(s.start_s for s in summaries)
    end_s = max(s.end_s for s in summaries)

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = RDSR_SOP_CLASS
    ds.SOPInstanceUID = ctx.uid("rdsr")
    ds.InstanceCreationDate = ctx.date(end_s)
    ds.InstanceCreationTime = ctx.time(end_s)
    ctx.apply_patient_study(ds)
    ds.DeviceSerialNumber = DEVICE_SERIAL          # Enhanced General Equipment: Type 1
    ds.Modality = "SR"
    ds.SeriesInstanceUID = ctx.uid("rdsr-series")
    ds.SeriesNumber = 990
    ds.SeriesDate = ctx.date(end_s)
    ds.SeriesTime = ctx.time(end_s)
    ds.SeriesDescription = "Radiation Dose Report"
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.InstanceNumber = 1
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ContentDate = ctx.date(end_s)
    ds.ContentTime = ctx.time(end_s)
    ds.PerformedProcedureCodeSequence = []
    if images:
        series: dict[str, list[Dataset]] = {}
        for sop_class, sop_uid, series_uid in images.values():
            ref = Dataset()
            ref.ReferencedSOPClassUID = sop_class
            ref.ReferencedSOPInstanceUID = sop_uid
            series.setdefault(series_uid, []).append(ref)
        study = Dataset()
        study.StudyInstanceUID = ds.StudyInstanceUID
        study.ReferencedSeriesSequence = []
        for series_uid, refs in series.items():
            se = Dataset()
            se.SeriesInstanceUID = series_uid
            se.ReferencedSOPSequence = refs
            study.ReferencedSeriesSequence.append(se)
        ds.CurrentRequestedProcedureEvidenceSequence = [study]

    # SR Document Content: TID 10001
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code(XRAY_RADIATION_DOSE_REPORT)]
    ds.ContinuityOfContent = "SEPARATE"
    tpl = Dataset()
    tpl.MappingResource = "DCMR"
    tpl.TemplateIdentifier = "10001"
    ds.ContentTemplateSequence = [tpl]
    observer = [
        code_item("HAS OBS CONTEXT", OBSERVER_TYPE, DEVICE),
        uid_item("HAS OBS CONTEXT", DEVICE_OBSERVER_UID, DEVICE_OBSERVER),
    ]
    if not ctx.deidentify:
        observer.append(text_item("HAS OBS CONTEXT", DEVICE_OBSERVER_NAME, STATION_NAME))
    observer += [
        text_item("HAS OBS CONTEXT", DEVICE_OBSERVER_MANUFACTURER, MANUFACTURER),
        text_item("HAS OBS CONTEXT", DEVICE_OBSERVER_MODEL, MODEL_NAME),
        text_item("HAS OBS CONTEXT", DEVICE_OBSERVER_SERIAL, DEVICE_SERIAL),
    ]
    acc = container("CONTAINS", ACCUMULATED_DOSE_DATA, [
        code_item("HAS CONCEPT MOD", ACQUISITION_PLANE, SINGLE_PLANE),
        num_item("CONTAINS", DAP_TOTAL, totals["dap_total_gy_m2"], "Gy.m2"),
        num_item("CONTAINS", DOSE_RP_TOTAL, totals["dose_rp_total_gy"], "Gy"),
        num_item("CONTAINS", FLUORO_DAP_TOTAL, totals["fluoro_dap_total_gy_m2"], "Gy.m2"),
        num_item("CONTAINS", FLUORO_DOSE_RP_TOTAL, totals["fluoro_dose_rp_total_gy"], "Gy"),
        num_item("CONTAINS", TOTAL_FLUORO_TIME, totals["total_fluoro_time_s"], "s"),
        num_item("CONTAINS", ACQ_DAP_TOTAL, totals["acquisition_dap_total_gy_m2"], "Gy.m2"),
        num_item("CONTAINS", ACQ_DOSE_RP_TOTAL, totals["acquisition_dose_rp_total_gy"], "Gy"),
        num_item("CONTAINS", TOTAL_ACQ_TIME, totals["total_acquisition_time_s"], "s"),
        num_item("CONTAINS", TOTAL_RADIOGRAPHIC_FRAMES, totals["total_radiographic_frames"], "1"),
        code_item("CONTAINS", REFERENCE_POINT_DEFINITION, IRP_15CM),
    ])
    content = [
        code_item("HAS CONCEPT MOD", PROCEDURE_REPORTED, PROJECTION_XRAY,
                  [code_item("HAS CONCEPT MOD", HAS_INTENT, INTENTS[intent])]),
        *observer,
        datetime_item("HAS OBS CONTEXT", START_OF_IRRADIATION, ctx.datetime(start_s)),
        datetime_item("HAS OBS CONTEXT", END_OF_IRRADIATION, ctx.datetime(end_s)),
        code_item("HAS OBS CONTEXT", SCOPE_OF_ACCUMULATION, STUDY,
                  [uid_item("HAS PROPERTIES", STUDY_INSTANCE_UID, ds.StudyInstanceUID)]),
        acc,
    ]
    for s in summaries:
        img = images.get(s.event.ordinal)
        content.append(irradiation_event(ctx, s, image=(img[0], img[1]) if img else None,
                                         legacy_codes=legacy_codes))
    content += [
        code_item("CONTAINS", SOURCE_OF_DOSE_INFORMATION, SYSTEM_CALCULATED),
        text_item("CONTAINS", COMMENT,
                  "Simulated procedure (OpenFluoro virtual C-arm): air kerma at the interventional reference "
                  "point and kerma-area product are calculated by the simulator's physics model from the tube "
                  "spectrum and the technique factors, not measured."),
    ]
    ds.ContentSequence = content
    ds.file_meta = file_meta_for(ds)
    return ds


def export_rdsr(run: str | Path | RecordedRun | LoadedRun, out_dir: str | Path, *, deidentify: bool = False,
                identity: dict[str, Any] | None = None, context: ExportContext | None = None,
                images: Iterable[Any] | None = None, intent: str = "diagnostic", legacy_codes: bool = False,
                start: _dt.datetime | None = None, filename: str = "rdsr.dcm") -> Path:
    """Write the RDSR of a recording to ``out_dir/filename`` (atomically).

    ``images``: the ``dicom_rf.ExportedImage`` list of the same export (same ``context``),
    referenced from their irradiation events.
    """
    if context is None:
        loaded = run if isinstance(run, LoadedRun) else (LoadedRun(run) if isinstance(run, RecordedRun) else load_run(run))
        context = ExportContext.for_run(loaded.run, deidentify=deidentify, identity=identity, start=start)
    out = check_output_folder(context.run, out_dir)
    refs: dict[int, tuple[str, str, str]] = {}
    for img in images or ():
        import pydicom

        d = pydicom.dcmread(img.path, stop_before_pixels=True)
        refs[img.event.ordinal] = (str(d.SOPClassUID), str(d.SOPInstanceUID), str(d.SeriesInstanceUID))
    ds = build_rdsr(context, images=refs, intent=intent, legacy_codes=legacy_codes)
    return atomic_write(ds, out / filename)


def read_totals(path: str | Path) -> dict[str, float]:
    """Read the accumulated (TID 10004) values back from an RDSR file, by concept name."""
    import pydicom

    ds = pydicom.dcmread(path)
    out: dict[str, float] = {}
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == ACCUMULATED_DOSE_DATA[0]:
            for c in item.ContentSequence:
                if c.ValueType == "NUM":
                    out[c.ConceptNameCodeSequence[0].CodeMeaning] = float(c.MeasuredValueSequence[0].NumericValue)
    return out
