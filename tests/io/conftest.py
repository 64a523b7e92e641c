"""Synthetic recorded runs for the io tests (made with LoopRecorder in tmp_path)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from openfluoro.fluoro.frame import Exposure, Frame, FrameDose
from openfluoro.fluoro.record import LoopRecorder
from openfluoro.geometry.carm import CArmPose, Collimator, Detector, Geometry
from openfluoro.io.pacs import Pacs, PacsError, echo

ROWS = COLS = 64
ARCHIVE_AET = "OFARCHIVE"


def synthetic_frame(i: int, t: float, *, run_index: int = 0, acquisition: str = "fluoro", primary: float = 0.0,
                    secondary: float = 0.0, rate: float = 7.5, kvp: float = 78.0, ma: float = 3.5,
                    pulse_ms: float = 8.0, iso=(0.0, 0.0, 0.0), needle: bool = True, dtype=np.uint8) -> Frame:
    det = Detector(rows=128, cols=128, pixel_pitch_mm=300.0 / 128, binning=2)
    g = Geometry(CArmPose(primary, secondary, sid_mm=1000.0, sod_mm=700.0, isocentre_lps_mm=iso), det,
                 Collimator(width_mm=200.0, height_mm=180.0))
    yy, xx = np.mgrid[0:ROWS, 0:COLS]
    img = ((xx * 3 + yy * 2 + i * 5) % 256).astype(np.uint8)
    img[20:30, 10 + i % 20:14 + i % 20] = 10   # a dark "needle" that moves
    if dtype == np.uint16:
        img = img.astype(np.uint16) * 64
    # dose per pulse scales with mAs (independent figures: 0.004 mGy/mAs at the IRP)
    mas = ma * pulse_ms / 1000.0
    ka = 0.4 * mas * 10
    area_cm2 = (200 * 180 / 100) * ((700 - 150) / 1000) ** 2
    gt = {}
    if needle:
        gt["needle"] = {"tip_lps_mm": [5.0 + i, 10.0, -20.0 - 0.5 * i], "axis_lps": [0.0, 0.6, 0.8]}
    return Frame(i, t, img, g, Exposure(kvp, ma, pulse_ms, 0.0 if acquisition == "spot" else rate,
                                        acquisition=acquisition),
                 FrameDose(ka, ka * 1e-3 * area_cm2), run_index=run_index, ground_truth=gt)


def make_procedure(folder: Path, *, identity=None, dtype="uint8", moving=False) -> list[Frame]:
    """Two fluoro runs (the second at LAO 30 / CRA 10, optionally rotating) and one spot."""
    frames: list[Frame] = []
    t = 0.0
    for _ in range(12):
        t += 1 / 7.5
        frames.append(synthetic_frame(len(frames), t, run_index=0, dtype=np.dtype(dtype)))
    t += 5.0
    for i in range(10):
        t += 1 / 15
        prim = 30.0 + (2.0 * i if moving else 0.0)
        frames.append(synthetic_frame(len(frames), t, run_index=1, primary=prim, secondary=10.0, rate=15.0,
                                      kvp=82.0 + i * 0.2, ma=4.0, pulse_ms=6.0, iso=(0.0, 0.0, 15.0),
                                      dtype=np.dtype(dtype)))
    t += 3.0
    frames.append(synthetic_frame(len(frames), t, run_index=2, acquisition="spot", kvp=80.0, ma=16.0,
                                  pulse_ms=8.0, dtype=np.dtype(dtype)))
    with LoopRecorder(folder, ROWS, COLS, identity=identity, dtype=dtype) as rec:
        for f in frames:
            rec.append(f)
    return frames


@pytest.fixture
def procedure(tmp_path) -> Path:
    folder = tmp_path / "run"
    make_procedure(folder, identity={"PatientName": "DOE^JANE", "PatientID": "12345",
                                     "PatientBirthDate": "19700101", "PatientSex": "F",
                                     "StudyDate": "20240305", "StudyTime": "101500"})
    return folder


def run_tool(tool: str, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which(tool)
    if exe is None:
        package = {"dciodvfy": "dicom3tools", "dcmdump": "dcmtk", "storescp": "dcmtk",
                   "dcmqrscp": "dcmtk"}.get(tool, tool)
        pytest.skip(f"{tool} not installed (Debian package {package})")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def dciodvfy_report(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) lines of dciodvfy for one file; also checks dcmdump reads it."""
    r = run_tool("dciodvfy", str(path))
    lines = (r.stdout + r.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    warnings = [ln for ln in lines if ln.startswith("Warning")]
    d = run_tool("dcmdump", "-q", str(path))
    assert d.returncode == 0, f"dcmdump could not read {path}: {d.stderr}"
    return errors, warnings


@pytest.fixture
def make_run():
    """The ``make_procedure`` function (tests build variants of the recording)."""
    return make_procedure


@pytest.fixture
def synth():
    """The ``synthetic_frame`` function."""
    return synthetic_frame


@pytest.fixture
def dicom_check():
    """``dciodvfy_report(path) -> (errors, warnings)``; skips naming the tool when absent."""
    return dciodvfy_report


@pytest.fixture
def free_port():
    """A function returning a loopback TCP port nobody listens on (right now)."""
    return _free_port


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def archive(tmp_path):
    """dcmqrscp (a storage + query/retrieve SCP) on a free loopback port; yields (Pacs, storage folder)."""
    exe = shutil.which("dcmqrscp")
    if exe is None:
        pytest.skip("dcmqrscp not installed (Debian package dcmtk)")
    store = tmp_path / "archive"
    store.mkdir()
    port = _free_port()
    cfg = tmp_path / "dcmqrscp.cfg"
    cfg.write_text(f"""NetworkTCPPort = {port}
MaxPDUSize = 16384
MaxAssociations = 16
HostTable BEGIN
HostTable END
VendorTable BEGIN
VendorTable END
AETable BEGIN
{ARCHIVE_AET} {store} RW (200, 1024mb) ANY
AETable END
""")
    # fork mode (the default): one child per association
    log = open(tmp_path / "dcmqrscp.log", "wb")
    proc = subprocess.Popen([exe, "-c", str(cfg), str(port)], stdout=log, stderr=subprocess.STDOUT)
    pacs = Pacs("127.0.0.1", port, ARCHIVE_AET, "OFTEST", timeout_s=5.0)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                echo(pacs)
                break
            except PacsError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    out = (tmp_path / "dcmqrscp.log").read_text(errors="replace")
                    pytest.fail(f"dcmqrscp did not start on port {port}: {out}")
                time.sleep(0.05)
        yield pacs, store
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


