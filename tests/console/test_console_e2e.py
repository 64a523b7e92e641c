"""End to end in real headless Chromium: the page, the pedal, live frames over the
WebSocket, C-arm views, needle to CSF return, traction, last-image hold, loops (record,
export, replay), two pages on one session, bad CT files. Timings are measured by
benchmarks/console.py, never asserted here."""

from __future__ import annotations

import httpx
import pytest

from .conftest import wait_for

VIEWPORT = {"width": 1680, "height": 1000}


def open_page(browser, server, context=None):
    page = context.new_page() if context is not None else browser.new_page(viewport=VIEWPORT)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url)
    wait_for(lambda: page.evaluate("window.__of && window.__of.connected"), message="the page's WebSocket to connect")
    wait_for(lambda: page.evaluate("window.__of.status && window.__of.status.session !== null"),
             message="the session status on the page")
    page.errors = errors
    return page


def displayed(page) -> int:
    return page.evaluate("window.__of.displayed")


def unfocus(page) -> None:
    page.evaluate("document.activeElement && document.activeElement.blur()")


def test_workflow_pedal_view_needle_traction_hold_loop(server, browser):
    page = open_page(browser, server)
    try:
        page.click("[data-view=AP]")
        unfocus(page)
        # pedal by holding SPACE: live frames must arrive
        page.keyboard.down("Space")
        wait_for(lambda: displayed(page) >= 4, timeout_s=20, message="live frames on the page (none arrived)")
        assert page.locator("#xray").get_attribute("class").split() == ["xray", "on"]
        assert page.inner_text("#live-badge") == "LIVE"
        assert page.evaluate("window.__of.lastMeta.live.pose.primary_deg") == 180.0

        # change the view while the beam is on: frames of the new pose arrive
        page.click("[data-view=lateral_left]")
        wait_for(lambda: page.evaluate("window.__of.lastMeta.live.pose.primary_deg") == 90.0,
                 message="a lateral frame after the view change")
        page.click("[data-view=AP]")
        wait_for(lambda: page.evaluate("window.__of.lastMeta.live.pose.primary_deg") == 180.0,
                 message="an AP frame after the view change")

        # needle at L3-L4, advanced until CSF returns (the step field, then the button)
        page.select_option("#in-level-plan", "L3-L4")
        page.click("#btn-place")
        wait_for(lambda: page.inner_text("#n-depth").startswith("5.0"), message="the needle placed 5 mm in")
        page.fill("#in-step", "4")
        for _ in range(15):
            page.click("#btn-advance")
            page.wait_for_timeout(100)
            if "YES" in page.inner_text("#n-csf"):
                break
        wait_for(lambda: "YES" in page.inner_text("#n-csf"), message="CSF return in the needle readout")
        wait_for(lambda: page.evaluate("""(window.__of.lastMeta.live.overlay || [])
            .some(p => p.kind === 'banner' && p.text.startsWith('CSF RETURN'))"""),
                 message="the CSF-return banner in the live frame's overlay")
        assert page.locator("#events li.csf").count() >= 1

        # traction: target distraction, the interspace readout grows while frames are taken
        def l3l4_now() -> float:
            return float(page.inner_text("#interspace tr[data-disc='L3-L4'] td.now"))

        before = l3l4_now()
        page.select_option("#in-tr-mode", "distraction")
        page.fill("#in-tr-value", "2")
        page.fill("#in-tr-ramp", "2")
        page.click("#btn-traction")
        unfocus(page)
        wait_for(lambda: l3l4_now() > before + 0.5, timeout_s=15, message="the L3-L4 interspace readout to grow")
        assert "N" in page.inner_text("#r-traction")

        # release the pedal: last-image hold on the live monitor
        page.keyboard.up("Space")
        wait_for(lambda: page.inner_text("#live-badge") == "LIH", message="the last-image-hold badge")
        assert "on" not in page.locator("#xray").get_attribute("class").split()
        st = httpx.get(server.base + "/api/status", params={"token": server.token}).json()
        assert st["session"]["pedal"] is False and st["live"]["kind"] == "hold"
        held = httpx.get(server.base + "/api/images/live.png", params={"token": server.token})
        assert held.status_code == 200 and held.content[:8] == b"\x89PNG\r\n\x1a\n"

        # a loop: record under fluoro, stop, export, download, replay
        page.click("[data-view=lateral_left]")
        page.click("#btn-record")
        wait_for(lambda: "Stop" in page.inner_text("#btn-record"), message="recording to start")
        unfocus(page)
        page.keyboard.down("Space")
        n0 = displayed(page)
        wait_for(lambda: displayed(page) >= n0 + 4, timeout_s=20, message="frames while recording")
        page.keyboard.up("Space")
        page.click("#btn-record")
        loop = page.locator("#loops li").first
        wait_for(lambda: "recording" not in loop.inner_text(), message="the recorded loop in the list")
        loop_id = loop.get_attribute("data-loop")
        loop.locator("[data-action=export]").click()
        links = page.locator(f"#loops li[data-loop='{loop_id}'] .files a")
        wait_for(lambda: links.count() >= 3, timeout_s=60, message="download links of the exported loop")
        names = [links.nth(i).inner_text() for i in range(links.count())]
        assert any(n.endswith(".dcm") for n in names) and "rdsr.dcm" in names
        assert any(n.endswith((".mp4", ".gif")) for n in names)
        href = links.first.get_attribute("href")
        r = httpx.get(server.base + href)
        assert r.status_code == 200 and len(r.content) > 1000
        assert httpx.get(server.base + href.split("?")[0]).status_code == 401
        page.locator(f"#loops li[data-loop='{loop_id}'] [data-action=replay]").click()
        wait_for(lambda: page.evaluate("window.__of.frames.replay") >= 3, message="replayed frames")
        # when the loop has played, the reference monitor shows its stored image again
        wait_for(lambda: page.inner_text("#ref-badge") == "REF", timeout_s=20, message="the stored reference back")
        assert page.errors == [], page.errors
    finally:
        page.keyboard.up("Space")
        httpx.post(server.base + "/api/pedal", json={"down": False}, params={"token": server.token})
        page.close()


def test_two_browsers_watch_one_session(server, browser):
    contexts = [browser.new_context(viewport=VIEWPORT), browser.new_context(viewport=VIEWPORT)]
    try:
        pages = [open_page(browser, server, ctx) for ctx in contexts]
        start = [displayed(p) for p in pages]
        r = httpx.post(server.base + "/api/pedal", json={"down": True}, headers={"X-OpenFluoro-Token": server.token})
        assert r.status_code == 200 and r.json()["session"]["pedal"] is True
        for p, n0 in zip(pages, start):
            wait_for(lambda: displayed(p) >= n0 + 5, timeout_s=20, message="live frames on both pages")
        httpx.post(server.base + "/api/pedal", json={"down": False}, headers={"X-OpenFluoro-Token": server.token})
        for p in pages:
            wait_for(lambda: p.inner_text("#live-badge") == "LIH", message="last-image hold on both pages")
        seen = [set(p.evaluate("window.__of.latency.map(l => l.index)")) for p in pages]
        assert len(seen[0] & seen[1]) >= 3, "the two pages did not receive the same frames"
    finally:
        for ctx in contexts:
            ctx.close()


def test_bad_ct_gets_a_message_and_the_session_keeps_running(server, browser, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a CT volume")
    page = open_page(browser, server)
    try:
        before = page.inner_text("#patient-name")
        page.fill("#in-path", str(bad))
        page.click("#btn-load-path")

        def state() -> str:
            events = page.evaluate("window.__of.events.map(e => e.level + ': ' + e.text)")
            return f"toast {page.inner_text('#toast')!r} visible={page.locator('#toast').is_visible()}, events {events}"

        wait_for(lambda: page.locator("#toast").is_visible() and "broken.nii.gz" in page.inner_text("#toast"),
                 message="an error message about the bad file on the page", detail=state)
        page.set_input_files("#in-upload", str(bad))
        page.click("#btn-upload")
        wait_for(lambda: page.locator("#events li.error").count() >= 2, message="the upload's error in the events",
                 detail=state)
        missing = tmp_path / "nowhere.nii.gz"
        r = httpx.post(server.base + "/api/patient/load", json={"path": str(missing)},
                       headers={"Authorization": f"Bearer {server.token}"})
        assert r.status_code == 422 and "nowhere.nii.gz" in r.json()["detail"]
        assert page.inner_text("#patient-name") == before
        n0 = displayed(page)
        httpx.post(server.base + "/api/pedal", json={"down": True, "lease_s": 3}, params={"token": server.token})
        wait_for(lambda: displayed(page) >= n0 + 3, timeout_s=20, message="frames after the failed loads",
                 detail=state)
        assert page.errors == [], page.errors
    finally:
        httpx.post(server.base + "/api/pedal", json={"down": False}, params={"token": server.token})
        page.close()


def test_page_without_token_is_refused(server, browser):
    page = browser.new_page()
    try:
        resp = page.goto(server.base + "/")
        assert resp.status == 401
        assert "token" in page.inner_text("#denied").lower()
        resp = page.goto(server.base + "/?token=wrong-token")
        assert resp.status == 401
    finally:
        page.close()


def test_load_ct_from_the_page_by_upload_and_by_path(server, browser, synthetic_spine, tmp_path):
    """Runs last in this module: it replaces the patient."""
    from openfluoro.scene.volume import save_nifti

    ct = save_nifti(synthetic_spine.volume, tmp_path / "upload_ct.nii.gz")
    page = open_page(browser, server)
    try:
        page.set_input_files("#in-upload", str(ct))
        page.click("#btn-upload")
        wait_for(lambda: page.inner_text("#patient-name").endswith("upload_ct.nii.gz")
                 and page.inner_text("#patient-state") == "ready", timeout_s=60, message="the uploaded CT ready")
        # an unlabelled CT: no needle plans, traction says why it is unavailable
        assert "no labelled spine" in page.inner_text("#interspace")
        copy = save_nifti(synthetic_spine.volume, tmp_path / "path_ct.nii.gz")
        page.fill("#in-path", str(copy))
        page.press("#in-path", "Enter")
        wait_for(lambda: page.inner_text("#patient-name") == str(copy) and page.inner_text("#patient-state") == "ready",
                 timeout_s=60, message="the CT loaded by path ready")
        n0 = displayed(page)
        httpx.post(server.base + "/api/pedal", json={"down": True, "lease_s": 3}, params={"token": server.token})
        wait_for(lambda: displayed(page) >= n0 + 3, timeout_s=30, message="frames of the new CT")
        assert page.errors == [], page.errors
    finally:
        httpx.post(server.base + "/api/pedal", json={"down": False}, params={"token": server.token})
        page.close()
