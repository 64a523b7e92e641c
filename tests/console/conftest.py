"""Fixtures for the console's end-to-end tests: a console server on a free loopback port
(a small synthetic labelled spine, so the whole suite stays quick) and headless Chromium.

Chromium is Debian's ``chromium`` package (``/usr/bin/chromium``), driven by Playwright
with ``executable_path`` -- never a browser downloaded by ``playwright install``. Set
``OPENFLUORO_CHROMIUM`` to use another binary. Each launch gets a fresh temporary profile
(Playwright's own ``--user-data-dir``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from openfluoro.geometry.carm import Detector

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
#: A needle plan for the synthetic spine: from the skin of the back straight into the canal at L3-L4.
NEEDLE_PLAN = {"entry": [0.0, 59.0, 26.0], "target": [0.0, 28.0, 26.0], "recommended": True,
               "skin_to_target_mm": 31.0}


def chromium_executable() -> str | None:
    for candidate in (os.environ.get("OPENFLUORO_CHROMIUM"), shutil.which("chromium"),
                      shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def console_patient(synthetic_spine):
    """The synthetic spine with a needle plan at L3-L4 (like the phantom's landmarks)."""
    from openfluoro.scene.patient import Patient

    p = synthetic_spine
    return Patient(p.volume, p.labels, p.label_names, {**p.landmarks, "needle": {"L3-L4": NEEDLE_PLAN}},
                   "synthetic spine (test)")


@pytest.fixture(scope="session")
def compiled_kernels(console_patient):
    """One frame acquired before any server starts: on a fresh clone this compiles (and
    caches) every numba kernel of the frame path, which takes longer than a pedal lease."""
    from openfluoro.fluoro.session import Session
    from openfluoro.geometry.carm import Detector

    session = Session.for_patient(console_patient, detector=Detector.square(64, 240.0))
    session.pedal_down()
    session.acquire()
    session.pedal_up()


@pytest.fixture(scope="module")
def server(console_patient, compiled_kernels, tmp_path_factory):
    """A console server on a free 127.0.0.1 port around the synthetic spine; yields RunningConsole."""
    from openfluoro.console.engine import Console
    from openfluoro.console.server import RunningConsole

    console = Console(detector=Detector.square(192, 240.0), seed=3, workdir=tmp_path_factory.mktemp("console"))
    console.load_patient(console_patient, wait=True)
    assert console.session is not None, console.patient_state
    running = RunningConsole(console)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium under Playwright (skips, naming the package, when absent)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    exe = chromium_executable()
    if exe is None:
        pytest.skip("chromium not found (Debian package chromium, or set OPENFLUORO_CHROMIUM)")
    pw = sync_api.sync_playwright().start()
    b = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_FLAGS)
    try:
        yield b
    finally:
        b.close()
        pw.stop()


def wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.05, message: str = "condition",
             detail=None):
    """Poll ``predicate`` until it returns something truthy; fail naming ``message`` (and
    what ``detail()`` says about the state then)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"; {detail()}" if detail is not None else ""
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {message}{extra}")
        time.sleep(interval_s)
