"""C-STORE to a real DICOM archive (dcmtk's dcmqrscp on a free loopback port), queried back
with C-FIND and compared on disk; clear messages for a PACS that refuses, is down or is silent."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pydicom
import pytest

from openfluoro.io.dicom_common import ExportContext, load_run
from openfluoro.io.dicom_rf import export_images
from openfluoro.io.pacs import Pacs, PacsError, find_instances, parse_address, send
from openfluoro.io.rdsr import export_rdsr

THEIR_AET = "OFARCHIVE"   # the archive fixture's AE title (conftest.py)


@pytest.fixture
def exported(procedure, tmp_path):
    ctx = ExportContext.for_run(load_run(procedure).run)
    images = export_images(procedure, tmp_path / "out", context=ctx, sop="XA")
    rdsr = export_rdsr(procedure, tmp_path / "out", context=ctx, images=images)
    return [im.path for im in images] + [rdsr]


def test_store_then_find_and_compare_on_disk(archive, exported):
    pacs, store = archive
    result = send(exported, pacs)
    assert [uid for _, uid in result.sent] == [str(pydicom.dcmread(p).SOPInstanceUID) for p in exported]
    study = str(pydicom.dcmread(exported[0]).StudyInstanceUID)
    found = find_instances(pacs, study)
    assert sorted(f["SOPInstanceUID"] for f in found) == sorted(uid for _, uid in result.sent)
    assert sorted(f["Modality"] for f in found) == ["SR", "XA", "XA", "XA"]
    # what the archive keeps is what we sent, element for element and pixel for pixel
    received = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(p) for p in store.glob("*.dcm"))}
    assert len(received) == len(exported)
    for p in exported:
        sent = pydicom.dcmread(p)
        got = received[str(sent.SOPInstanceUID)]
        assert got == sent
        if "PixelData" in sent:
            assert got.PixelData == sent.PixelData


def test_refused_association_names_the_ae_titles(archive, exported):
    pacs, _ = archive
    wrong = Pacs(pacs.host, pacs.port, "NOTTHEPACS", "OFTEST", timeout_s=5.0)
    with pytest.raises(PacsError) as exc:
        send(exported, wrong)
    msg = str(exc.value)
    assert "refused the association" in msg and "'OFTEST'" in msg and "'NOTTHEPACS'" in msg
    assert f"127.0.0.1:{pacs.port}" in msg and "Called AE title not recognised" in msg


def test_pacs_down_names_host_and_port(exported, free_port):
    port = free_port()                     # nothing listens there
    with pytest.raises(PacsError, match=rf"127\.0\.0\.1:{port} is down: connection refused"):
        send(exported, Pacs("127.0.0.1", port, THEIR_AET, timeout_s=2.0))


def test_silent_peer_times_out(exported):
    with socket.socket() as silent:          # accepts TCP, never answers the association request
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(PacsError, match=rf"127\.0\.0\.1:{port}: no answer .* within 1 s"):
            send(exported, Pacs("127.0.0.1", port, THEIR_AET, timeout_s=1.0))
        assert time.monotonic() - t0 < 10


def test_bad_arguments():
    assert parse_address("127.0.0.1:104") == ("127.0.0.1", 104)
    for bad in ("127.0.0.1", "host:", ":104", "host:99999"):
        with pytest.raises(PacsError, match="host:port"):
            parse_address(bad)
    with pytest.raises(PacsError, match="AE title"):
        Pacs("127.0.0.1", 104, "A" * 17)
    with pytest.raises(PacsError, match="no such file"):
        send([Path("/nonexistent/x.dcm")], Pacs("127.0.0.1", 104, "X"))
