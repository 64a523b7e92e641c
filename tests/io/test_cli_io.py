"""The export / send / igtl commands: outputs, and one-line errors (never a traceback) for a
missing or truncated recording, a PACS that is down or refuses, a port in use."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys

import pydicom
from typer.testing import CliRunner

from openfluoro.cli import app

runner = CliRunner()


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _one_line_error(result, *needles):
    text = result.output          # stdout and stderr together
    assert result.exit_code != 0, text
    assert "Traceback" not in text and (result.exception is None or isinstance(result.exception, SystemExit)), text
    err = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, text
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def test_export_everything(procedure, tmp_path):
    before = _digest(procedure)
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", str(procedure), "--dicom", str(out), "--rdsr", "--cine", "--xa",
                            "--cine-format", "mp4", "--cine-format", "gif"])
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["cine", "rdsr.dcm", "run000_fluoro000.dcm", "run001_fluoro001.dcm", "run002_spot002.dcm"]
    assert pydicom.dcmread(out / "run000_fluoro000.dcm").Modality == "XA"
    assert sorted(p.suffix for p in (out / "cine").iterdir()) == [".gif", ".gif", ".mp4", ".mp4", ".png"]
    assert _digest(procedure) == before                       # the recording is untouched


def test_export_deidentified_rdsr_only(procedure, tmp_path):
    r = runner.invoke(app, ["export", str(procedure), "--rdsr", "--out", str(tmp_path / "o"), "--deidentify"])
    assert r.exit_code == 0, r.output
    ds = pydicom.dcmread(tmp_path / "o" / "rdsr.dcm")
    assert ds.PatientIdentityRemoved == "YES" and "DOE" not in str(ds.PatientName)


def test_export_errors(procedure, tmp_path):
    _one_line_error(runner.invoke(app, ["export", str(tmp_path / "nope"), "--dicom", str(tmp_path / "o")]),
                    "no such run folder")
    _one_line_error(runner.invoke(app, ["export", str(procedure)]), "nothing to export")
    _one_line_error(runner.invoke(app, ["export", str(procedure), "--rdsr"]), "output folder")
    _one_line_error(runner.invoke(app, ["export", str(procedure), "--dicom", str(procedure)]), "own folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(runner.invoke(app, ["export", str(empty), "--dicom", str(tmp_path / "o")]), "run.json")


def test_truncated_recording_warns_and_exports(procedure, tmp_path):
    with open(procedure / "frames.raw", "ab") as fh:
        fh.write(b"\x00" * 10)
    before = _digest(procedure)
    r = runner.invoke(app, ["export", str(procedure), "--dicom", str(tmp_path / "o")])
    assert r.exit_code == 0
    assert "warning:" in r.output and "truncated recording" in r.output
    assert _digest(procedure) == before


def test_send_to_the_archive(procedure, archive):
    pacs, store = archive
    r = runner.invoke(app, ["send", str(procedure), "--pacs", f"127.0.0.1:{pacs.port}", "--aet", "OURS",
                            "--called-aet", pacs.called_aet])
    assert r.exit_code == 0, r.output
    assert f"sent 4 object(s) to {pacs.called_aet}" in r.output
    assert sorted(pydicom.dcmread(p).Modality for p in store.glob("*.dcm")) == ["RF", "RF", "RF", "SR"]
    _one_line_error(runner.invoke(app, ["send", str(procedure), "--pacs", f"127.0.0.1:{pacs.port}", "--aet", "OURS",
                                        "--called-aet", "STRANGER"]), "refused", "'OURS'", "'STRANGER'")


def test_send_to_a_pacs_that_is_down(procedure, free_port):
    port = free_port()
    _one_line_error(runner.invoke(app, ["send", str(procedure), "--pacs", f"127.0.0.1:{port}", "--aet", "OURS",
                                        "--called-aet", "THEIRS", "--timeout", "2"]),
                    f"127.0.0.1:{port}", "connection refused")
    _one_line_error(runner.invoke(app, ["send", str(procedure), "--pacs", "nowhere", "--called-aet", "X"]),
                    "host:port")


def test_igtl_port_in_use(procedure):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        _one_line_error(runner.invoke(app, ["igtl", str(procedure), "--port", str(port)]), str(port), "in use")


def test_igtl_replays_a_run(procedure, free_port):
    r = runner.invoke(app, ["igtl", str(procedure), "--port", str(free_port()), "--speed", "50"])
    assert r.exit_code == 0, r.output
    assert "sent 23 frame(s)" in r.output


def test_real_process_prints_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "openfluoro.cli", "export", str(tmp_path / "missing"), "--dicom",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: no such run folder"]
