"""Console speed as the page sees it: frames per second delivered to a real browser and the
delay from acquisition to display, at 15 and 30 pulses/s.

Usage:  python benchmarks/console.py [--seconds 8] [--size 512] [--pages 1] [--synthetic]
                                     [--screenshots docs/images]

Starts the console in this process (the built-in phantom, 512 x 512 frames as in
``openfluoro console``; ``--synthetic``: a small water-and-boxes spine instead), opens the
page in headless Debian Chromium (Playwright with ``/usr/bin/chromium``), holds the pedal
through the HTTP API for ``--seconds`` at each pulse rate with the C-arm still and a needle
in, and reads the page's own per-frame record (``window.__of.latency``: wall-clock times
stamped by the server at the pulse and when the image was ready, and by the page when the
frame arrived, when it was drawn into the canvas and at the next animation frame).

Reported per pulse rate: frames acquired by the server and drawn by the page, delivered
frames per second (drawn frames over the drawing span), and the delays (median and 95th
percentile, ms, from the second second on): pulse -> drawn (acquisition, image chain,
encoding, WebSocket, decoding, drawing), ready -> drawn (transport and drawing only), and
pulse -> next animation frame (when the compositor can show it; the screen adds at most one
refresh more); and the delay from pressing the pedal to the first frame drawn (the first
frame after a pulse-rate change recomputes the exposure: about a second at 30 p/s). Server and
browser share this machine's CPUs. Machine-readable last line:
  fps_15=.. fps_30=.. delay_ms_15=.. delay_ms_30=.. (medians, pulse -> drawn)

``--screenshots DIR`` also writes the documentation screenshots (console_*.png).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def _patient(synthetic: bool):
    if not synthetic:
        from openfluoro.scene.patient import patient_from_phantom
        from openfluoro.scene.phantom import default_phantom

        return patient_from_phantom(default_phantom())
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import conftest  # the synthetic spine of the test suite

    from openfluoro.scene.patient import Patient

    p = conftest.synthetic_spine.__wrapped__()
    plan = {"entry": [0.0, 59.0, 26.0], "target": [0.0, 28.0, 26.0], "recommended": True}
    return Patient(p.volume, p.labels, p.label_names, {**p.landmarks, "needle": {"L3-L4": plan}}, "synthetic spine")


class Client:
    def __init__(self, base: str, token: str) -> None:
        self.http = httpx.Client(base_url=base, headers={"X-OpenFluoro-Token": token}, timeout=120)

    def post(self, path: str, body: dict | None = None) -> dict:
        r = self.http.post(path, json=body or {})
        r.raise_for_status()
        return r.json()

    def status(self) -> dict:
        return self.http.get("/api/status").raise_for_status().json()


def _wait(pred, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def measure(api: Client, pages: list, pps: float, seconds: float) -> dict:
    api.post("/api/technique", {"pulse_rate_pps": pps})
    for p in pages:
        p.evaluate("window.__of.latency = []")
    published0 = api.status()["frames_published"]
    t_press = time.time() * 1000.0
    api.post("/api/pedal", {"down": True})
    time.sleep(seconds)
    api.post("/api/pedal", {"down": False})
    time.sleep(0.5)
    published = api.status()["frames_published"] - published0
    out = {"pps": pps, "acquired": published, "pages": []}
    for p in pages:
        rec = p.evaluate("window.__of.latency")
        first_ms = rec[0]["drawn"] - t_press if rec else float("nan")
        rec = [r for r in rec if r["drawn"] - rec[0]["drawn"] > 1000.0]   # skip the first second (ramp-up)
        drawn = [r["drawn"] for r in rec]
        span_s = (drawn[-1] - drawn[0]) / 1000.0 if len(drawn) > 1 else float("nan")
        d_pulse = [r["drawn"] - r["pulse"] for r in rec]
        d_ready = [r["drawn"] - r["ready"] for r in rec]
        d_paint = [r["painted"] - r["pulse"] for r in rec if r.get("painted")]
        compute = [r["ready"] - r["pulse"] for r in rec]
        out["pages"].append({
            "drawn": len(p.evaluate("window.__of.latency")),
            "fps": (len(drawn) - 1) / span_s if len(drawn) > 1 else 0.0,
            "pulse_to_drawn": (statistics.median(d_pulse), _pct(d_pulse, 95)),
            "ready_to_drawn": (statistics.median(d_ready), _pct(d_ready, 95)),
            "pulse_to_paint": (statistics.median(d_paint), _pct(d_paint, 95)) if d_paint else (float("nan"),) * 2,
            "acquire_ms": statistics.median(compute),
            "first_ms": first_ms,
        })
    return out


def screenshots(api: Client, page, console, out: Path) -> list[Path]:
    """The documentation screenshots: puncture (AP, CSF), traction (lateral), loops, dose alarm."""
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def shot(name: str) -> None:
        time.sleep(0.6)
        path = out / f"console_{name}.png"
        page.screenshot(path=str(path))
        written.append(path)

    def fluoro(seconds: float) -> None:
        api.post("/api/pedal", {"down": True})
        time.sleep(seconds)
        api.post("/api/pedal", {"down": False})

    api.post("/api/technique", {"pulse_rate_pps": 7.5})
    api.post("/api/traction/off")
    api.post("/api/view", {"name": "AP"})
    api.post("/api/needle/place", {"level": "L3-L4"})
    fluoro(2.0)
    api.post("/api/reference/store")
    api.post("/api/record/start")
    api.post("/api/pedal", {"down": True})
    for _ in range(60):
        st = api.post("/api/needle/advance", {"mm": 2.0})
        time.sleep(0.35)
        if st["session"]["needle"]["csf_return"] or st["session"]["needle"]["blocked"]:
            break
    time.sleep(1.0)
    api.post("/api/pedal", {"down": False})
    api.post("/api/record/stop")
    shot("lumbar_puncture")

    api.post("/api/view", {"name": "lateral"})
    fluoro(3.0)                       # the exposure settles, then the baseline heights are measured
    api.post("/api/reference/store")
    api.post("/api/traction", {"distraction_mm": 2.0, "ramp_mm_per_s": 1.0})
    api.post("/api/pedal", {"down": True})
    time.sleep(4.0)
    page.evaluate("document.getElementById('p-traction').scrollIntoView({block: 'center'})")
    shot("traction")
    api.post("/api/pedal", {"down": False})

    loop = api.status()["loops"][-1]["id"]
    api.post(f"/api/loops/{loop}/export", {"formats": ["gif"]})
    api.post(f"/api/loops/{loop}/replay", {"speed": 1.0})
    page.evaluate("document.getElementById('p-loops').scrollIntoView({block: 'center'})")
    time.sleep(2.5)
    shot("loops")
    api.post("/api/replay/stop")

    # the 5-minute alarm: run the session clock past 5 min of fluoro (faster than real time), then show it
    api.post("/api/traction/off")
    s = console.session
    with console._acq_lock:
        s.run(300.0 - s.ledger.fluoro_time_s + 1.0)
        s.pedal_up()
    fluoro(1.0)
    page.evaluate("document.getElementById('p-fluoro').scrollIntoView({block: 'center'})")
    shot("dose_alarm")
    api.post("/api/dose/acknowledge")
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0, help="pedal time per pulse rate")
    ap.add_argument("--size", type=int, default=512, help="image rows and columns")
    ap.add_argument("--pages", type=int, default=1, help="browser pages watching the session")
    ap.add_argument("--synthetic", action="store_true", help="small synthetic spine instead of the phantom")
    ap.add_argument("--screenshots", type=Path, default=None, help="also write console_*.png here")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from openfluoro.console.engine import Console
    from openfluoro.console.server import RunningConsole
    from openfluoro.geometry.carm import Detector

    exe = os.environ.get("OPENFLUORO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    t0 = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="openfluoro-console-bench-"))
    console = Console(detector=Detector(rows=2 * args.size, cols=2 * args.size, pixel_pitch_mm=300 / (2 * args.size),
                                        binning=2), workdir=workdir)
    console.load_patient(_patient(args.synthetic), wait=True)
    print(f"patient and session ready in {time.perf_counter() - t0:.1f} s: {console.patient_state['description']}, "
          f"{args.size}x{args.size} frames; {os.cpu_count()} CPUs shared by server and browser")
    server = RunningConsole(console)
    api = Client(server.base, server.token)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=FLAGS)
        print(f"browser: {browser.version} ({exe})")
        pages = []
        for _ in range(args.pages):
            page = browser.new_context(viewport={"width": 1680, "height": 1000}).new_page()
            page.goto(server.url)
            page.wait_for_function("window.__of && window.__of.connected && window.__of.status "
                                   "&& window.__of.status.session")
            pages.append(page)
        api.post("/api/view", {"name": "AP"})
        api.post("/api/needle/place", {"level": "L3-L4"})
        api.post("/api/pedal", {"down": True})           # warm-up: cast the pose, set the technique
        _wait(lambda: pages[0].evaluate("window.__of.displayed") >= 3, 120, "the first frames")
        api.post("/api/pedal", {"down": False})
        results = [measure(api, pages, pps, args.seconds) for pps in (15.0, 30.0)]
        print(f"\n{'pps':>5} {'page':>4} {'acq':>5} {'drawn':>5} {'fps':>6}   {'pulse->drawn ms':>17}   "
              f"{'ready->drawn ms':>17}   {'pulse->paint ms':>17}   {'acquire ms':>10}   {'1st frame ms':>12}")
        for r in results:
            for i, pg in enumerate(r["pages"]):
                f = lambda t: f"{t[0]:7.1f} (p95 {t[1]:5.1f})"  # noqa: E731
                print(f"{r['pps']:5g} {i + 1:4d} {r['acquired']:5d} {pg['drawn']:5d} {pg['fps']:6.2f}   "
                      f"{f(pg['pulse_to_drawn'])}   {f(pg['ready_to_drawn'])}   {f(pg['pulse_to_paint'])}   "
                      f"{pg['acquire_ms']:10.1f}   {pg['first_ms']:12.0f}")
        if args.screenshots is not None:
            for p in pages[1:]:
                p.close()
            for path in screenshots(api, pages[0], console, args.screenshots):
                print(f"wrote {path}")
        browser.close()
    server.stop()
    r15, r30 = results[0]["pages"][0], results[1]["pages"][0]
    print(f"fps_15={r15['fps']:.2f} fps_30={r30['fps']:.2f} delay_ms_15={r15['pulse_to_drawn'][0]:.1f} "
          f"delay_ms_30={r30['pulse_to_drawn'][0]:.1f}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
