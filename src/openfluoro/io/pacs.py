"""Send exported DICOM objects (images and the RDSR) to a PACS with C-STORE, and ask it
back what it holds with C-FIND (pynetdicom).

Every failure becomes one ``PacsError`` whose message says what happened and to whom:

* the PACS is down: ``connection refused by host:port``;
* nothing answers in time: ``no answer from host:port within N s``;
* the PACS refuses the association: the calling and called AE titles and the PACS's
  stated reason (e.g. "called AE title not recognised");
* the PACS accepts the association but none of the object's SOP classes, or answers a
  C-STORE with a failure status: the file and the status.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

DEFAULT_CALLING_AET = "OPENFLUORO"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"   # Study Root Query/Retrieve Information Model - FIND
VERIFICATION = "1.2.840.10008.1.1"


class PacsError(RuntimeError):
    """A PACS transfer failed; the message names the peer (host:port, AE titles) and why."""


def parse_address(text: str) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``; a clear error otherwise."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PacsError(f"PACS address {text!r}: expected host:port, e.g. 127.0.0.1:11112")
    return host, int(port)


def _check_aet(aet: str, what: str) -> str:
    if not aet or len(aet) > 16 or not aet.isascii() or "\\" in aet or not aet.strip():
        raise PacsError(f"{what} {aet!r}: an AE title is 1-16 ASCII characters")
    return aet


@dataclass(frozen=True)
class Pacs:
    """Where to send: the PACS's address and AE title, and ours."""

    host: str
    port: int
    called_aet: str
    calling_aet: str = DEFAULT_CALLING_AET
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        _check_aet(self.called_aet, "called AE title")
        _check_aet(self.calling_aet, "calling AE title")

    @classmethod
    def from_address(cls, address: str, called_aet: str, calling_aet: str = DEFAULT_CALLING_AET,
                     timeout_s: float = 10.0) -> "Pacs":
        host, port = parse_address(address)
        return cls(host, port, called_aet, calling_aet, timeout_s)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def who(self) -> str:
        return f"calling AE {self.calling_aet!r} -> called AE {self.called_aet!r} at {self.where}"


@dataclass
class SendResult:
    sent: list[tuple[Path, str]] = field(default_factory=list)     # (file, SOP Instance UID)
    warnings: list[str] = field(default_factory=list)


def _probe(pacs: Pacs) -> None:
    """After a failed association: a plain TCP connection tells 'down' from 'silent'.
    (Not done beforehand: some servers take a bare connect-and-close badly.)"""
    try:
        with socket.create_connection((pacs.host, pacs.port), timeout=pacs.timeout_s):
            pass
    except ConnectionRefusedError:
        raise PacsError(f"PACS {pacs.where} is down: connection refused") from None
    except (socket.timeout, TimeoutError):
        raise PacsError(f"PACS {pacs.where}: no answer within {pacs.timeout_s:g} s (timeout)") from None
    except socket.gaierror as exc:
        raise PacsError(f"PACS {pacs.where}: unknown host ({exc.strerror})") from None
    except OSError as exc:
        raise PacsError(f"PACS {pacs.where}: cannot connect ({exc.strerror or exc})") from None


def _associate(pacs: Pacs, contexts: Sequence[str]):
    from pynetdicom import AE, evt

    ae = AE(ae_title=pacs.calling_aet)
    ae.acse_timeout = pacs.timeout_s
    ae.dimse_timeout = pacs.timeout_s
    ae.network_timeout = pacs.timeout_s
    ae.connection_timeout = pacs.timeout_s
    for uid in dict.fromkeys(contexts):
        ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    seen: dict[str, object] = {}

    def on_acse(event) -> None:
        prim = getattr(event, "primitive", None)
        if prim is not None and getattr(prim, "result", None) in (1, 2):
            seen["reject"] = prim

    t0 = time.monotonic()
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.called_aet, evt_handlers=[(evt.EVT_ACSE_RECV, on_acse)])
    elapsed = time.monotonic() - t0
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        prim = seen.get("reject")
        why = ""
        if prim is not None:
            try:
                why = f": {prim.result_str}, {prim.source_str}, {prim.reason_str}"
            except Exception:  # noqa: BLE001 - describing the rejection must not fail
                why = ""
        raise PacsError(f"PACS refused the association ({pacs.who}){why}")
    _probe(pacs)     # pynetdicom reports a refused TCP connection as an abort: tell them apart
    if elapsed >= 0.9 * pacs.timeout_s:
        raise PacsError(f"PACS {pacs.where}: no answer to the association request within {pacs.timeout_s:g} s "
                        f"(timeout; {pacs.who})")
    if assoc.is_aborted:
        raise PacsError(f"PACS aborted the association ({pacs.who}): it accepted none of the requested "
                        f"SOP classes ({', '.join(sorted(set(contexts)))}) or closed the connection")
    raise PacsError(f"PACS {pacs.where}: no association ({pacs.who}); no answer within {pacs.timeout_s:g} s "
                    "or the peer is not a DICOM application")


def send(paths: Iterable[str | Path], pacs: Pacs) -> SendResult:
    """C-STORE every file in ``paths`` over one association; stop at the first failure."""
    files = [Path(p) for p in paths]
    if not files:
        raise PacsError("nothing to send: no DICOM files given")
    datasets: list[tuple[Path, Dataset]] = []
    for f in files:
        try:
            datasets.append((f, pydicom.dcmread(f)))
        except FileNotFoundError:
            raise PacsError(f"{f}: no such file") from None
        except Exception as exc:  # noqa: BLE001 - pydicom raises several types for bad files
            raise PacsError(f"{f}: not a readable DICOM file ({exc})") from None
    assoc = _associate(pacs, [str(ds.SOPClassUID) for _, ds in datasets])
    result = SendResult()
    try:
        for f, ds in datasets:
            try:
                status = assoc.send_c_store(ds)
            except (ValueError, RuntimeError) as exc:
                raise PacsError(f"{f}: not sent to {pacs.where}: {exc}") from None
            if not status or "Status" not in status:
                raise PacsError(f"{f}: no C-STORE response from {pacs.where} within {pacs.timeout_s:g} s "
                                "(timeout or connection lost)")
            code = int(status.Status)
            if code in (0xB000, 0xB007, 0xB006):
                result.warnings.append(f"{f}: stored with warning status 0x{code:04X}")
            elif code != 0x0000:
                comment = f" ({status.ErrorComment})" if "ErrorComment" in status else ""
                raise PacsError(f"{f}: {pacs.where} refused to store it, C-STORE status 0x{code:04X}{comment}")
            result.sent.append((f, str(ds.SOPInstanceUID)))
    finally:
        if assoc.is_established:
            assoc.release()
    return result


def echo(pacs: Pacs) -> None:
    """C-ECHO; raises ``PacsError`` unless the PACS answers Success."""
    assoc = _associate(pacs, [VERIFICATION])
    try:
        status = assoc.send_c_echo()
        if not status or int(status.Status) != 0:
            raise PacsError(f"PACS {pacs.where} did not answer C-ECHO with Success")
    finally:
        if assoc.is_established:
            assoc.release()


def find_instances(pacs: Pacs, study_uid: str) -> list[dict[str, str]]:
    """C-FIND at IMAGE level (Study Root): the PACS's instances of ``study_uid`` as dicts of
    SeriesInstanceUID, SOPInstanceUID, SOPClassUID, Modality."""
    series_query = Dataset()
    series_query.QueryRetrieveLevel = "SERIES"
    series_query.StudyInstanceUID = study_uid
    series_query.SeriesInstanceUID = ""
    series_query.Modality = ""
    assoc = _associate(pacs, [STUDY_ROOT_FIND])
    out: list[dict[str, str]] = []
    try:
        series: list[tuple[str, str]] = []
        for status, ident in assoc.send_c_find(series_query, STUDY_ROOT_FIND):
            _check_find(status, pacs)
            if ident is not None and int(status.Status) in (0xFF00, 0xFF01):
                series.append((str(ident.SeriesInstanceUID), str(ident.get("Modality", ""))))
        for series_uid, modality in series:
            q = Dataset()
            q.QueryRetrieveLevel = "IMAGE"
            q.StudyInstanceUID = study_uid
            q.SeriesInstanceUID = series_uid
            q.SOPInstanceUID = ""
            q.SOPClassUID = ""
            for status, ident in assoc.send_c_find(q, STUDY_ROOT_FIND):
                _check_find(status, pacs)
                if ident is not None and int(status.Status) in (0xFF00, 0xFF01):
                    out.append({"SeriesInstanceUID": series_uid, "Modality": modality,
                                "SOPInstanceUID": str(ident.SOPInstanceUID),
                                "SOPClassUID": str(ident.get("SOPClassUID", ""))})
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def _check_find(status: Dataset, pacs: Pacs) -> None:
    if not status or "Status" not in status:
        raise PacsError(f"no C-FIND response from {pacs.where} within {pacs.timeout_s:g} s")
    code = int(status.Status)
    if code not in (0x0000, 0xFF00, 0xFF01):
        raise PacsError(f"{pacs.where} answered C-FIND with status 0x{code:04X}")
