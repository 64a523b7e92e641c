// OpenFluoro console page: controls over the HTTP API, frames over the WebSocket.
// Wire format of a frame (see openfluoro/console/protocol.py): a JSON text message with the
// metadata, then a binary message: 32-byte little-endian header + raw 8-bit grey pixels.
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const TOKEN = params.get("token") || "";
  const $ = (id) => document.getElementById(id);
  const KINDS = ["live", "hold", "reference", "replay", "spot"];
  const HEADER = 32;

  // Everything the page knows, also read by the end-to-end tests and the benchmark.
  const OF = (window.__of = {
    status: null,
    frames: { live: 0, hold: 0, reference: 0, replay: 0, spot: 0 },
    displayed: 0,               // live frames drawn on the live monitor
    latency: [],                // per live frame: {index, pulse, ready, recv, drawn} (ms, wall clock)
    events: [],
    lastMeta: { live: null, reference: null },
    connected: false,
  });

  // ----------------------------------------------------------------- HTTP API
  async function api(path, body, opts = {}) {
    const init = { method: body === undefined && !opts.post ? "GET" : "POST",
      headers: { "X-OpenFluoro-Token": TOKEN } };
    if (body instanceof FormData) init.body = body;
    else if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    let r;
    try { r = await fetch(path, init); } catch (e) { toast(`connection lost: ${e}`); throw e; }
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
    if (!r.ok) {
      let msg = data && data.detail !== undefined ? data.detail : text;
      if (Array.isArray(msg)) msg = msg.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
      toast(String(msg));
      throw new Error(String(msg));
    }
    if (data && data.session !== undefined && data.patient !== undefined) render(data);
    return data;
  }
  const post = (path, body) => api(path, body === undefined ? {} : body, { post: true });
  const quiet = (p) => p.catch(() => {});

  let toastTimer = null;
  function toast(text, level = "error") {
    const t = $("toast");
    t.textContent = text;
    t.className = `toast ${level}`;
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (t.hidden = true), 5000);
  }

  // ----------------------------------------------------------------- monitors
  class Monitor {
    constructor(id) {
      this.root = $(id);
      this.screen = this.root.querySelector(".screen");
      this.img = this.root.querySelector("canvas.img");
      this.ovl = this.root.querySelector("canvas.ovl");
      this.ctx = this.img.getContext("2d");
      this.octx = this.ovl.getContext("2d");
      this.rows = 0; this.cols = 0; this.imageData = null; this.px32 = null;
      this.meta = null;
      new ResizeObserver(() => this.layout()).observe(this.screen);
    }
    layout() {
      const W = this.screen.clientWidth, H = this.screen.clientHeight;
      if (!this.rows) return;
      const s = Math.min(W / this.cols, H / this.rows);
      const w = Math.floor(this.cols * s), h = Math.floor(this.rows * s);
      for (const c of [this.img, this.ovl]) {
        c.style.width = `${w}px`; c.style.height = `${h}px`;
        c.style.left = `${Math.floor((W - w) / 2)}px`; c.style.top = `${Math.floor((H - h) / 2)}px`;
      }
      const dpr = window.devicePixelRatio || 1;
      this.ovl.width = Math.round(w * dpr); this.ovl.height = Math.round(h * dpr);
      this.drawOverlay();
    }
    draw(rows, cols, pixels, meta) {
      if (rows !== this.rows || cols !== this.cols) {
        this.rows = rows; this.cols = cols;
        this.img.width = cols; this.img.height = rows;
        this.imageData = this.ctx.createImageData(cols, rows);
        this.px32 = new Uint32Array(this.imageData.data.buffer);
        this.layout();
      }
      const px = this.px32, n = rows * cols;
      for (let i = 0; i < n; i++) { const g = pixels[i]; px[i] = 0xff000000 | (g << 16) | (g << 8) | g; }
      this.ctx.putImageData(this.imageData, 0, 0);
      this.meta = meta;
      this.drawOverlay();
    }
    drawOverlay() {
      const c = this.octx, W = this.ovl.width, H = this.ovl.height;
      c.clearRect(0, 0, W, H);
      const prims = this.meta && this.meta.overlay;
      if (!prims || !overlayOn() || !this.cols) return;
      const s = W / this.cols, dpr = window.devicePixelRatio || 1;
      const P = (p) => [(p[0] + 0.5) * s, (p[1] + 0.5) * s];
      c.lineWidth = 1.5 * dpr;
      c.font = `${Math.round(12 * dpr)}px ui-monospace, "DejaVu Sans Mono", monospace`;
      c.textBaseline = "middle";
      const label = (x, y, text, color, align = "left") => {
        const w = c.measureText(text).width, pad = 4 * dpr;
        const left = align === "right" ? x - w : align === "center" ? x - w / 2 : x;
        if (left < pad) x += pad - left;                      // keep labels on the screen
        else if (left + w > W - pad) x -= left + w - (W - pad);
        c.textAlign = align;
        c.lineWidth = 3 * dpr; c.strokeStyle = "rgba(0,0,0,0.85)"; c.strokeText(text, x, y);
        c.fillStyle = color; c.fillText(text, x, y);
        c.lineWidth = 1.5 * dpr;
      };
      for (const p of prims) {
        const color = p.color || "#fff";
        c.strokeStyle = color; c.fillStyle = color;
        if (p.kind === "line") {
          c.setLineDash(p.dash ? [5 * dpr, 4 * dpr] : []);
          c.beginPath();
          p.points.forEach((q, i) => { const [x, y] = P(q); i ? c.lineTo(x, y) : c.moveTo(x, y); });
          c.stroke(); c.setLineDash([]);
        } else if (p.kind === "marker") {
          const [x, y] = P(p.at), r = (p.size || 6) * s;
          c.beginPath();
          if (p.shape === "cross") { c.moveTo(x - r, y); c.lineTo(x + r, y); c.moveTo(x, y - r); c.lineTo(x, y + r); }
          else c.arc(x, y, Math.max(r, 4 * dpr), 0, 2 * Math.PI);
          c.stroke();
        } else if (p.kind === "text") {
          const [x, y] = P(p.at);
          label(x, y, p.text, color, p.align || "left");
        } else if (p.kind === "caliper") {
          const [ax, ay] = P(p.a), [bx, by] = P(p.b);
          const dx = bx - ax, dy = by - ay, L = Math.hypot(dx, dy) || 1, nx = -dy / L * 7 * dpr, ny = dx / L * 7 * dpr;
          c.beginPath(); c.moveTo(ax, ay); c.lineTo(bx, by);
          c.moveTo(ax - nx, ay - ny); c.lineTo(ax + nx, ay + ny); c.moveTo(bx - nx, by - ny); c.lineTo(bx + nx, by + ny);
          c.stroke();
          if (p.side === "left") label(Math.min(ax, bx) - 12 * dpr, (ay + by) / 2, p.text || "", color, "right");
          else label(Math.max(ax, bx) + 12 * dpr, (ay + by) / 2, p.text || "", color);
        } else if (p.kind === "banner") {
          const fill = { ok: "#3ddc84", warn: "#ffd23f", alert: "#ff4d4d" }[p.level || "ok"];
          c.font = `bold ${Math.round(15 * dpr)}px ui-monospace, "DejaVu Sans Mono", monospace`;
          const w = c.measureText(p.text).width + 24 * dpr;
          c.fillStyle = "rgba(0,0,0,0.7)"; c.fillRect((W - w) / 2, 30 * dpr, w, 26 * dpr);
          c.strokeStyle = fill; c.strokeRect((W - w) / 2, 30 * dpr, w, 26 * dpr);
          label(W / 2, 43 * dpr, p.text, fill, "center");
          c.font = `${Math.round(12 * dpr)}px ui-monospace, "DejaVu Sans Mono", monospace`;
        } else if (p.kind === "progress") {
          const w = W * 0.5, x0 = W * 0.25, y0 = H - 16 * dpr;
          c.strokeStyle = "#ff9f43"; c.strokeRect(x0, y0, w, 8 * dpr);
          c.fillStyle = "#ff9f43"; c.fillRect(x0, y0, w * Math.max(0, Math.min(1, p.value || 0)), 8 * dpr);
          label(W / 2, y0 - 10 * dpr, `${p.label}: ${p.text}`, "#ffcf9a", "center");
        }
      }
    }
  }
  const live = new Monitor("mon-live");
  const ref = new Monitor("mon-ref");
  const overlayOn = () => $("in-overlay").checked;

  const fmt = (v, d = 1) => (v === null || v === undefined || Number.isNaN(v) ? "—" : Number(v).toFixed(d));
  const VIEW_NAMES = { "0": "PA", "180": "AP", "-180": "AP", "90": "LAT L", "-90": "LAT R", "45": "LAO45",
    "-45": "RAO45", "135": "LPO45", "-135": "RPO45" };
  const angleText = (p, s) => {
    const name = Number(s) === 0 ? VIEW_NAMES[String(Math.round(p))] : null;
    const angles = `${p >= 0 ? "LAO" : "RAO"} ${Math.abs(p).toFixed(0)}°  ${s >= 0 ? "CRA" : "CAU"} ${Math.abs(s).toFixed(0)}°`;
    return name && Math.round(p) === Number(p) ? `${name}  ·  ${angles}` : angles;
  };

  function cornerText(prefix, meta) {
    const ex = meta.exposure || {};
    const pose = meta.pose || (OF.status && OF.status.session && OF.status.session.pose) || null;
    const rate = ex.pulse_rate_pps ? `${ex.pulse_rate_pps} p/s` : "";
    $(`${prefix}-tl`).textContent = meta.kind === "replay"
      ? `REPLAY ${meta.loop}\n${meta.n}/${meta.of}`
      : `${(ex.acquisition || "fluoro").toUpperCase()} ${rate}\n${(ex.dose_mode || "").toUpperCase()} DOSE`;
    $(`${prefix}-tr`).textContent = pose ? `${angleText(pose.primary_deg, pose.secondary_deg)}\nSID ${fmt(pose.sid_mm, 0)} mm` : "";
    $(`${prefix}-bl`).textContent = ex.kvp ? `${fmt(ex.kvp, 0)} kV  ${fmt(ex.ma, 1)} mA\n${fmt(ex.pulse_ms, 1)} ms` : "";
    $(`${prefix}-br`).textContent = `#${meta.index}\nt ${fmt(meta.time_s, 2)} s`;
  }

  function setBadge(id, kind, text) {
    const b = $(id);
    b.className = `badge ${kind}`;
    b.textContent = text;
  }

  function onFrame(meta, buf) {
    const dv = new DataView(buf);
    const kind = KINDS[dv.getUint8(5)] || "live";
    const index = dv.getUint32(8, true), rows = dv.getUint16(12, true), cols = dv.getUint16(14, true);
    const tPulse = dv.getFloat64(16, true), tReady = dv.getFloat64(24, true);
    const recv = performance.timeOrigin + performance.now();
    const pixels = new Uint8Array(buf, HEADER, rows * cols);
    if (!meta || meta.index !== index || meta.kind !== kind) meta = { index, kind };
    OF.frames[kind] = (OF.frames[kind] || 0) + 1;
    if (kind === "reference" || kind === "replay") {
      ref.draw(rows, cols, pixels, meta);
      $("ref-placeholder").hidden = true;
      setBadge("ref-badge", kind, kind === "replay" ? `REPLAY ${meta.n}/${meta.of}` : "REF");
      cornerText("ref", meta);
      OF.lastMeta.reference = meta;
      return;
    }
    live.draw(rows, cols, pixels, meta);
    $("live-placeholder").hidden = true;
    setBadge("live-badge", kind, { live: "LIVE", hold: "LIH", spot: "SPOT" }[kind]);
    cornerText("live", meta);
    OF.lastMeta.live = meta;
    if (kind === "live") {
      OF.displayed += 1;
      lastLive = performance.now();
      const drawn = performance.timeOrigin + performance.now();
      const entry = { index, pulse: tPulse, ready: tReady, recv, drawn, painted: null };
      OF.latency.push(entry);
      requestAnimationFrame(() => { entry.painted = performance.timeOrigin + performance.now(); });
      if (OF.latency.length > 5000) OF.latency.splice(0, 1000);
    }
    if (meta.traction) renderInterspace(meta.traction.disc_heights_mm);
  }

  // ----------------------------------------------------------------- stream
  let ws = null, pendingMeta = null, backoff = 500;
  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    ws = new WebSocket(`${proto}://${location.host}/ws?token=${encodeURIComponent(TOKEN)}`);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => { OF.connected = true; backoff = 500; setConn(true); };
    ws.onclose = () => {
      OF.connected = false; setConn(false);
      setTimeout(connect, backoff); backoff = Math.min(backoff * 2, 5000);
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") {
        const m = JSON.parse(ev.data);
        if (m.type === "frame") pendingMeta = m;
        else if (m.type === "status") render(m);
        else if (m.type === "event") addEvent(m);
      } else {
        onFrame(pendingMeta, ev.data);
        pendingMeta = null;
      }
    };
  }
  function setConn(on) {
    const c = $("conn");
    c.textContent = on ? "ONLINE" : "OFFLINE";
    c.className = `ind ${on ? "on" : "off"}`;
  }

  // ----------------------------------------------------------------- events
  function addEvent(e) {
    OF.events.push(e);
    const li = document.createElement("li");
    li.className = e.level + (/CSF return/i.test(e.text) ? " csf" : "");
    const t = document.createElement("span");
    t.className = "t"; t.textContent = e.time || "";
    li.append(t, document.createTextNode(e.text));
    const ol = $("events");
    ol.append(li);
    while (ol.children.length > 200) ol.firstChild.remove();
    ol.scrollTop = ol.scrollHeight;
    if (e.level === "error") toast(e.text);
  }

  // ----------------------------------------------------------------- status -> page
  const editing = (el) => document.activeElement === el;
  function setVal(id, v) { const el = $(id); if (!editing(el) && v !== null && v !== undefined) el.value = v; }
  function segment(id, values, current, onPick, label = (v) => String(v)) {
    const seg = $(id);
    if (seg.children.length !== values.length) {
      seg.innerHTML = "";
      for (const v of values) {
        const b = document.createElement("button");
        b.textContent = label(v); b.dataset.value = v;
        b.onclick = () => onPick(v);
        seg.append(b);
      }
    }
    for (const b of seg.children) b.classList.toggle("on", String(b.dataset.value) === String(current));
  }
  const mmss = (s) => `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, "0")}`;

  function render(st) {
    OF.status = st;
    const p = st.patient || {};
    $("patient-name").textContent = p.description || (p.loading ? "—" : "no patient");
    const pill = $("patient-state");
    pill.textContent = p.state === "loading" ? `loading ${p.loading}: ${p.message || ""}…` : p.state || "";
    pill.className = `pill ${p.state || ""}`;
    const msg = $("patient-msg");
    const failed = p.state !== "loading" && p.message;
    msg.textContent = p.state === "loading" ? `Preparing ${p.loading}…` : failed ? p.message : "";
    msg.className = `msg ${failed ? "error" : ""}`;
    $("btn-replay-stop").disabled = !st.replay;
    renderLoops(st.loops || []);
    renderViews(st.views || []);
    const levels = Object.keys(st.needle_levels || {});
    const sel = $("in-level-plan");
    if (sel.dataset.levels !== levels.join(",")) {
      sel.dataset.levels = levels.join(",");
      sel.innerHTML = "";
      for (const l of levels) {
        const o = document.createElement("option");
        o.value = l; o.textContent = l + (st.needle_levels[l].recommended ? "" : " (not advised)");
        sel.append(o);
      }
      if (levels.includes("L3-L4")) sel.value = "L3-L4";
      if (!levels.length) { const o = document.createElement("option"); o.textContent = "no plan"; o.value = ""; sel.append(o); }
    }
    $("in-overlay").checked = !!st.overlay;
    const s = st.session;
    const xray = !!(s && s.pedal);
    $("xray").classList.toggle("on", xray);
    $("pedal").classList.toggle("down", xray);
    $("rec-ind").hidden = !(s && s.recording);
    const recBtn = $("btn-record");
    recBtn.classList.toggle("on", !!(s && s.recording));
    recBtn.textContent = s && s.recording ? "■ Stop recording" : "● Record";
    if (!s) return;
    segment("seg-pps", st.pulse_rates, s.pulse_rate_pps, (v) => quiet(post("/api/technique", { pulse_rate_pps: v })));
    segment("seg-mode", st.dose_modes, s.dose_mode, (v) => quiet(post("/api/technique", { dose_mode: v })));
    // dose panel
    const d = s.dose;
    const rate = $("d-rate");
    rate.textContent = fmt(d.air_kerma_rate_mgy_min, 2);
    rate.classList.toggle("stale", !xray);
    $("d-kar").textContent = fmt(d.ka_r_mgy, 2);
    $("d-kap").textContent = fmt(d.kap_gy_cm2, 3);
    $("d-time").textContent = mmss(d.fluoro_time_s);
    const nextAlarm = 300 * (Math.floor(d.fluoro_time_s / 300) + 1);
    $("d-next").textContent = `next alarm at ${mmss(nextAlarm)}`;
    const t = s.technique;
    $("d-tech").textContent = t ? `${fmt(t.kvp, 0)} kV · ${fmt(t.ma, 1)} mA` : "— kV · — mA";
    $("d-tech2").textContent = t ? `${fmt(t.pulse_ms, 1)} ms pulse · ${s.pulse_rate_pps} p/s${t.limited ? " · RATE LIMITED" : ""}` : "ADRC sets kV/mA at the first pulse";
    const cell = $("alarm-cell");
    cell.classList.toggle("active", !!d.alarm_5min);
    cell.classList.toggle("acked", !d.alarm_5min && !!d.alarm_5min_acknowledged);
    $("alarm-text").textContent = d.alarm_5min ? `FLUORO ${mmss(d.fluoro_time_s)} — ACKNOWLEDGE`
      : d.alarm_5min_acknowledged ? "acknowledged" : "clear";
    $("btn-ack").disabled = !d.alarm_5min;
    // C-arm
    setVal("in-primary", s.pose.primary_deg); setVal("in-secondary", s.pose.secondary_deg); setVal("in-sid", s.pose.sid_mm);
    $("r-iso").textContent = `(${s.pose.isocentre_lps_mm.map((v) => v.toFixed(0)).join(", ")}) mm LPS`;
    const cw = s.collimator.width_mm, ch = s.collimator.height_mm;
    setVal("in-collw", cw === null ? 300 : cw); setVal("in-collh", ch === null ? 300 : ch);
    $("r-coll").textContent = cw === null && ch === null ? "open" : `${fmt(cw, 0)} × ${fmt(ch, 0)} mm at detector`;
    for (const b of $("views").children) b.classList.toggle("on", b.dataset.primary == s.pose.primary_deg && Number(s.pose.secondary_deg) === 0);
    // display
    const disp = s.display;
    $("in-auto").checked = disp.auto_window;
    setVal("in-window", disp.window !== null ? disp.window.toFixed(2) : null);
    setVal("in-level", disp.level !== null ? disp.level.toFixed(2) : null);
    $("r-window").textContent = fmt(disp.window, 2); $("r-level").textContent = fmt(disp.level, 2);
    $("in-invert").checked = disp.invert; $("in-fliph").checked = disp.flip_horizontal; $("in-flipv").checked = disp.flip_vertical;
    // needle
    const n = s.needle;
    $("n-depth").textContent = n ? `${fmt(n.inserted_depth_mm, 1)} mm` : "—";
    $("n-tissue").textContent = n ? (n.blocked ? `${n.tissue} (BLOCKED)` : n.tissue) : "—";
    $("n-target").textContent = n && n.tip_to_target_mm !== undefined ? `${fmt(n.tip_to_target_mm, 1)} mm` : "—";
    const csf = $("n-csf");
    csf.textContent = n ? (n.csf_return ? `YES ${fmt(n.opening_pressure_cmh2o, 1)} cmH₂O` : "none") : "—";
    csf.classList.toggle("yes", !!(n && n.csf_return));
    // traction
    const tr = s.traction;
    $("r-traction").textContent = tr.target_per_disc_mm > 0 || tr.per_disc_mm > 0
      ? `${fmt(tr.force_n, 0)} N · ${fmt(tr.per_disc_mm, 2)} / ${fmt(tr.target_per_disc_mm, 2)} mm per interspace` : "off";
    $("p-traction").classList.toggle("disabled", !s.spine);
    if (s.spine) renderInterspace(s.spine.heights_mm, s.spine.rest_heights_mm);
    else $("interspace").querySelector("tbody").innerHTML = "<tr><td colspan=4>no labelled spine: traction unavailable</td></tr>";
  }

  let restHeights = {};
  function renderInterspace(heights, rest) {
    if (rest) restHeights = rest;
    if (!heights) return;
    const body = $("interspace").querySelector("tbody");
    const names = Object.keys(heights).filter((k) => k.startsWith("L") || k.startsWith("T")).reverse();
    const rows = names.map((k) => {
      const r0 = restHeights[k], h = heights[k], dd = r0 === undefined ? null : h - r0;
      return `<tr data-disc="${k}"><td>${k}</td><td>${fmt(r0, 1)}</td><td class="now">${fmt(h, 2)}</td>` +
        `<td class="${dd > 0.005 ? "up" : ""}">${dd === null ? "—" : (dd >= 0 ? "+" : "") + dd.toFixed(2)}</td></tr>`;
    });
    body.innerHTML = rows.join("");
  }

  function renderViews(views) {
    const box = $("views");
    if (box.children.length) return;
    const show = [["AP", "AP", 180], ["PA", "PA", 0], ["lateral_left", "LAT L", 90], ["lateral_right", "LAT R", -90],
      ["LAO45", "LAO45", 45], ["RAO45", "RAO45", -45], ["LPO45", "LPO45", 135], ["RPO45", "RPO45", -135]];
    for (const [name, text, primary] of show) {
      if (!views.includes(name)) continue;
      const b = document.createElement("button");
      b.className = "btn"; b.textContent = text; b.dataset.view = name; b.dataset.primary = primary;
      b.onclick = () => quiet(post("/api/view", { name }));
      box.append(b);
    }
  }

  function renderLoops(loops) {
    const ul = $("loops");
    const key = JSON.stringify(loops.map((l) => [l.id, l.frames, l.recording, l.exports.length]));
    if (ul.dataset.key === key) return;
    ul.dataset.key = key;
    ul.innerHTML = "";
    for (const l of loops.slice().reverse()) {
      const li = document.createElement("li");
      li.dataset.loop = l.id;
      const head = document.createElement("div");
      head.className = "lp-head";
      head.innerHTML = `<b>${l.id}</b><span>${l.started} · ${l.frames} fr${l.recording ? " · recording" : ` · ${l.duration_s.toFixed(1)} s`}</span>`;
      const rp = document.createElement("button");
      rp.className = "btn sm"; rp.textContent = "Replay"; rp.disabled = l.recording; rp.dataset.action = "replay";
      rp.onclick = () => quiet(post(`/api/loops/${l.id}/replay`, {}));
      const ex = document.createElement("button");
      ex.className = "btn sm"; ex.textContent = "Export"; ex.disabled = l.recording; ex.dataset.action = "export";
      ex.onclick = async () => {
        ex.disabled = true; ex.textContent = "Exporting…";
        try { await post(`/api/loops/${l.id}/export`, {}); toast(`${l.id} exported`, "info"); }
        catch (e) { /* toast shown */ } finally { ex.disabled = false; ex.textContent = "Export"; }
      };
      head.append(rp, ex);
      li.append(head);
      if (l.exports.length) {
        const files = document.createElement("div");
        files.className = "files";
        for (const f of l.exports) {
          const a = document.createElement("a");
          a.href = `/api/loops/${l.id}/files/${f}?token=${encodeURIComponent(TOKEN)}`;
          a.textContent = f.split("/").pop(); a.download = f.split("/").pop();
          files.append(a);
        }
        li.append(files);
      }
      ul.append(li);
    }
  }

  // ----------------------------------------------------------------- pedal
  let pedalTimer = null;
  function pedalDown() {
    if (pedalTimer) return;
    $("pedal").classList.add("down");
    const press = () => quiet(post("/api/pedal", { down: true, lease_s: 1.0 }));
    press();
    pedalTimer = setInterval(press, 300);
  }
  function pedalUp() {
    if (!pedalTimer) return;
    clearInterval(pedalTimer); pedalTimer = null;
    $("pedal").classList.remove("down");
    quiet(post("/api/pedal", { down: false }));
  }
  const typing = (el) => el && (el.tagName === "INPUT" && !["checkbox", "range", "button"].includes(el.type) || el.tagName === "TEXTAREA" || el.tagName === "SELECT");
  window.addEventListener("keydown", (e) => {
    if (e.code !== "Space" || typing(e.target)) return;
    e.preventDefault();
    if (!e.repeat) pedalDown();
  });
  window.addEventListener("keyup", (e) => {
    if (e.code !== "Space" || typing(e.target)) return;
    e.preventDefault();
    pedalUp();
  });
  window.addEventListener("blur", pedalUp);
  document.addEventListener("visibilitychange", () => { if (document.hidden) pedalUp(); });
  const pedal = $("pedal");
  pedal.addEventListener("pointerdown", (e) => { e.preventDefault(); pedal.setPointerCapture(e.pointerId); pedalDown(); });
  pedal.addEventListener("pointerup", pedalUp);
  pedal.addEventListener("pointercancel", pedalUp);
  pedal.addEventListener("keydown", (e) => { if (e.code === "Space" || e.code === "Enter") e.preventDefault(); });

  // ----------------------------------------------------------------- controls
  const num = (id) => { const v = parseFloat($(id).value); return Number.isFinite(v) ? v : null; };
  $("btn-spot").onclick = () => quiet(post("/api/spot"));
  $("btn-store").onclick = () => quiet(post("/api/reference/store"));
  $("btn-ack").onclick = () => quiet(post("/api/dose/acknowledge"));
  $("btn-carm").onclick = () => quiet(post("/api/carm", { primary_deg: num("in-primary"), secondary_deg: num("in-secondary"), sid_mm: num("in-sid") }));
  for (const b of document.querySelectorAll("[data-table]")) {
    b.onclick = () => {
      const step = parseFloat($("in-table-step").value);
      const [x, y, z] = b.dataset.table.split(",").map((v) => parseFloat(v) * step);
      quiet(post("/api/table", { dx_mm: x, dy_mm: y, dz_mm: z }));
    };
  }
  const collimate = () => quiet(post("/api/collimation", { width_mm: num("in-collw"), height_mm: num("in-collh") }));
  $("in-collw").onchange = collimate; $("in-collh").onchange = collimate;
  $("btn-coll-open").onclick = () => quiet(post("/api/collimation", { width_mm: null, height_mm: null }));
  $("in-auto").onchange = (e) => quiet(post("/api/display", e.target.checked ? { auto_window: true }
    : { auto_window: false, window: num("in-window"), level: num("in-level") }));
  const wl = () => { $("in-auto").checked = false; return quiet(post("/api/display", { window: num("in-window"), level: num("in-level") })); };
  $("in-window").oninput = () => ($("r-window").textContent = fmt(num("in-window"), 2));
  $("in-level").oninput = () => ($("r-level").textContent = fmt(num("in-level"), 2));
  $("in-window").onchange = wl; $("in-level").onchange = wl;
  $("in-invert").onchange = (e) => quiet(post("/api/display", { invert: e.target.checked }));
  $("in-fliph").onchange = (e) => quiet(post("/api/display", { flip_horizontal: e.target.checked }));
  $("in-flipv").onchange = (e) => quiet(post("/api/display", { flip_vertical: e.target.checked }));
  $("in-overlay").onchange = (e) => { live.drawOverlay(); ref.drawOverlay(); quiet(post("/api/display", { overlay: e.target.checked })); };
  $("btn-place").onclick = () => { const level = $("in-level-plan").value; if (!level) return toast("this patient has no needle plan: use the API with entry_lps_mm and target_lps_mm"); quiet(post("/api/needle/place", { level })); };
  $("btn-advance").onclick = () => quiet(post("/api/needle/advance", { mm: num("in-step") }));
  $("btn-withdraw").onclick = () => quiet(post("/api/needle/withdraw", { mm: num("in-step") }));
  for (const b of document.querySelectorAll("[data-steer]")) {
    b.onclick = () => { const [deg, about] = b.dataset.steer.split(","); quiet(post("/api/needle/steer", { deg: parseFloat(deg), about })); };
  }
  $("in-tr-mode").onchange = (e) => {
    const force = e.target.value === "force";
    $("tr-unit").textContent = force ? "N" : "mm";
    $("in-tr-value").value = force ? 400 : 2;
    $("in-tr-value").step = force ? 50 : 0.5;
  };
  $("btn-traction").onclick = () => {
    const v = num("in-tr-value"), ramp = num("in-tr-ramp") || 0.5;
    quiet(post("/api/traction", $("in-tr-mode").value === "force" ? { force_n: v, ramp_mm_per_s: ramp } : { distraction_mm: v, ramp_mm_per_s: ramp }));
  };
  $("btn-traction-off").onclick = () => quiet(post("/api/traction/off"));
  $("btn-record").onclick = () => quiet(post(OF.status && OF.status.session && OF.status.session.recording ? "/api/record/stop" : "/api/record/start"));
  $("btn-replay-stop").onclick = () => quiet(post("/api/replay/stop"));
  $("btn-load-path").onclick = () => { const path = $("in-path").value.trim(); if (path) quiet(post("/api/patient/load", { path })); };
  $("in-path").addEventListener("keydown", (e) => { if (e.key === "Enter") $("btn-load-path").click(); });
  $("btn-phantom").onclick = () => quiet(post("/api/patient/load", { phantom: true }));
  $("btn-upload").onclick = () => {
    const files = $("in-upload").files;
    if (!files.length) return toast("choose a CT file (or the files of a DICOM series) first");
    const fd = new FormData();
    for (const f of files) fd.append("files", f, f.name);
    $("patient-msg").textContent = `uploading ${files.length} file(s)…`;
    quiet(api("/api/patient/upload", fd));
  };
  $("api-link").href = `/api-docs?token=${encodeURIComponent(TOKEN)}`;

  // with the beam on but no frame for a while the renderer is casting a new C-arm pose
  let lastLive = 0;
  setInterval(() => {
    $("clock").textContent = new Date().toLocaleTimeString([], { hour12: false });
    const s = OF.status && OF.status.session;
    if (s && s.pedal && performance.now() - lastLive > Math.max(1500, 2500 / s.pulse_rate_pps)) {
      setBadge("live-badge", "hold", "RENDERING POSE…");
    }
  }, 250);
  connect();
})();
