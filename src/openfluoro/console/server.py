"""The console's web server: the page, a documented HTTP API and the WebSocket frame stream.

Run it with ``openfluoro console`` (the built-in phantom) or ``openfluoro console --volume
ct.nii.gz``. It listens on 127.0.0.1 unless ``--host`` says otherwise, and prints the page's
URL with its access token: the page (``/?token=...``), every ``/api/...`` call and the
WebSocket (``/ws?token=...``) need the token -- as ``?token=``, an ``Authorization: Bearer``
header or an ``X-OpenFluoro-Token`` header. A missing or wrong token gets 401 (the
WebSocket handshake is refused with 401 too).

The API is described by the OpenAPI schema at ``/openapi.json`` and rendered, without any
external resources, at ``/api-docs``. The WebSocket wire format is in ``console.protocol``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
import socket
import threading
from collections import deque
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from fastapi import APIRouter, Depends, FastAPI, File, HTTPException, Request, UploadFile, WebSocket
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.websockets import WebSocketDisconnect

from openfluoro.console.engine import Console, ConsoleError, Message, NotFound, to_json
from openfluoro.fluoro.session import SessionError

STATIC = Path(__file__).parent / "static"
TOKEN_HEADER = "X-OpenFluoro-Token"
MAX_PENDING_FRAMES = 3     # per page: older frames are dropped when a page falls behind (latest wins)
DEFAULT_PORT = 8765


# =========================================================================== request bodies
class PedalRequest(BaseModel):
    down: bool = Field(..., description="true: press the fluoro pedal (X-ray on); false: release it")
    lease_s: Optional[float] = Field(None, gt=0, le=10, description=(
        "dead-man lease: the pedal lets go by itself unless pressed again within this many seconds "
        "(the page renews it every 0.3 s while held); omit to hold until released"))


class TechniqueRequest(BaseModel):
    pulse_rate_pps: Optional[Literal[30, 15, 7.5, 3.75, 1]] = Field(
        None, description="pulses per second (30 = continuous)")
    dose_mode: Optional[Literal["low", "normal", "high"]] = Field(None, description="dose-rate control set point")


class ViewRequest(BaseModel):
    name: str = Field(..., description="PA, AP, lateral (= lateral_left), lateral_right, LAO45, RAO45, LPO45, RPO45",
                      examples=["AP"])


class CarmRequest(BaseModel):
    primary_deg: Optional[float] = Field(None, ge=-180, le=180, description="LAO(+)/RAO(-) angle")
    secondary_deg: Optional[float] = Field(None, ge=-90, le=90, description="cranial(+)/caudal(-) angle")
    sid_mm: Optional[float] = Field(None, ge=800, le=1300, description="source-to-image distance")


class TableRequest(BaseModel):
    dx_mm: float = Field(0.0, ge=-200, le=200, description="table move along patient x (to the left, LPS)")
    dy_mm: float = Field(0.0, ge=-200, le=200, description="table move along patient y (posterior)")
    dz_mm: float = Field(0.0, ge=-200, le=200, description="table move along patient z (superior)")


class CollimationRequest(BaseModel):
    width_mm: Optional[float] = Field(None, ge=10, le=500, description="field width at the detector (null = open)")
    height_mm: Optional[float] = Field(None, ge=10, le=500, description="field height at the detector (null = open)")


class DisplayRequest(BaseModel):
    auto_window: Optional[bool] = Field(None, description="true: automatic window/level")
    window: Optional[float] = Field(None, gt=0, le=20, description="window width, attenuation units -ln(I/I0)")
    level: Optional[float] = Field(None, ge=-5, le=20, description="window centre, attenuation units")
    invert: Optional[bool] = Field(None, description="bone bright instead of dark")
    flip_horizontal: Optional[bool] = None
    flip_vertical: Optional[bool] = None
    overlay: Optional[bool] = Field(None, description="guidance overlay on/off")


class NeedlePlaceRequest(BaseModel):
    level: Optional[str] = Field(None, description="planned interspace from the patient's landmarks, e.g. L3-L4",
                                 examples=["L3-L4"])
    entry_lps_mm: Optional[list[float]] = Field(None, min_length=3, max_length=3, description="skin entry (LPS mm)")
    target_lps_mm: Optional[list[float]] = Field(None, min_length=3, max_length=3, description="target (LPS mm)")
    gauge: int = Field(22, ge=18, le=27)
    length_mm: Optional[float] = Field(None, description="shaft length (default 90 mm, 127 mm for deep targets)")
    depth_mm: float = Field(5.0, ge=0, le=30, description="initial insertion depth")


class NeedleMoveRequest(BaseModel):
    mm: float = Field(..., gt=0, le=50)


class NeedleSteerRequest(BaseModel):
    deg: float = Field(..., ge=-30, le=30, description="right-handed turn about the axis")
    about: Literal["L", "R", "P", "A", "S", "I"] = Field(
        "L", description="LPS axis: +deg about L tilts the tip caudal, about S to the patient's left")


class TractionRequest(BaseModel):
    force_n: Optional[float] = Field(None, ge=0, le=2000, description="traction force")
    distraction_mm: Optional[float] = Field(None, gt=0, le=6, description="target opening per interspace")
    ramp_mm_per_s: float = Field(0.5, gt=0, le=5, description="how fast the openings ramp to the target")


class PatientLoadRequest(BaseModel):
    path: Optional[str] = Field(None, description="CT on the server: DICOM folder, .nii/.nii.gz, .nrrd or .mha")
    phantom: bool = Field(False, description="true: the built-in lumbar phantom")


class ReplayRequest(BaseModel):
    speed: float = Field(1.0, gt=0, le=8)
    repeat: int = Field(1, ge=1, le=100)


class ExportRequest(BaseModel):
    formats: list[Literal["mp4", "gif", "png"]] = Field(["mp4", "gif"], description="cine formats")
    dicom: bool = Field(True, description="DICOM RF multi-frame images")
    rdsr: bool = Field(True, description="X-Ray Radiation Dose SR")


# =========================================================================== the hub
class _Client:
    def __init__(self) -> None:
        self.items: deque = deque()
        self.ready = asyncio.Event()

    def put(self, item: tuple) -> None:
        kind = item[0]
        if kind == "status":          # keep only the newest pending status
            for i, it in enumerate(self.items):
                if it[0] == "status":
                    del self.items[i]
                    break
        elif kind == "frame":
            frames = [it for it in self.items if it[0] == "frame"]
            if len(frames) >= MAX_PENDING_FRAMES:
                self.items.remove(frames[0])
        self.items.append(item)
        self.ready.set()


class Hub:
    """Fans the console's messages out to every connected page (from any thread)."""

    def __init__(self) -> None:
        self.clients: set[_Client] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    def listener(self, message: Message) -> None:
        loop = self.loop
        if loop is None or not self.clients:
            return
        if message[0] == "json":
            d = message[1]
            item = ("status" if d.get("type") == "status" else "text", to_json(d))
        else:
            item = ("frame", to_json(message[1]), message[2])
        try:
            loop.call_soon_threadsafe(self._fanout, item)
        except RuntimeError:      # loop closed: the server is shutting down
            pass

    def _fanout(self, item: tuple) -> None:
        for c in list(self.clients):
            c.put(item)


# =========================================================================== the app
def create_app(console: Console, token: str) -> FastAPI:
    """The FastAPI application around a ``Console``; ``token`` guards the page, API and stream."""
    hub = Hub()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        hub.loop = asyncio.get_running_loop()
        remove = console.add_listener(hub.listener)
        try:
            yield
        finally:
            remove()

    app = FastAPI(title="OpenFluoro console API", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=(
                      "Drive the virtual fluoroscope: pedal, technique, C-arm, table, collimation, display, needle, "
                      "traction, dose alarm, loops and patient loading. Every call needs the access token printed "
                      "at start-up: `?token=...`, `Authorization: Bearer ...` or `X-OpenFluoro-Token: ...`. "
                      "Each control returns the console status (the same as `GET /api/status`). Frames stream "
                      "over the WebSocket `/ws?token=...`: a JSON text message with the frame's metadata, then a "
                      "binary message (32-byte header + raw 8-bit pixels; see `openfluoro.console.protocol`)."))
    app.state.console = console
    app.state.hub = hub

    def valid(candidate: str | None) -> bool:
        return bool(candidate) and secrets.compare_digest(str(candidate).encode(), token.encode())

    def request_token(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.headers.get(TOKEN_HEADER) or request.query_params.get("token")

    def require_token(request: Request) -> None:
        if not valid(request_token(request)):
            raise HTTPException(401, "missing or wrong access token: use the URL printed when the console started",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(ConsoleError)
    async def _console_error(request: Request, exc: ConsoleError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(SessionError)
    async def _session_error(request: Request, exc: SessionError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(ValueError)
    async def _value_error(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": exc.args[0] if exc.args else "not found"}, status_code=404)

    # ------------------------------------------------------------------ page
    nocache = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}

    @app.get("/", include_in_schema=False)
    def page(request: Request) -> Response:
        if not valid(request.query_params.get("token")):
            return HTMLResponse((STATIC / "denied.html").read_text(), status_code=401, headers=nocache)
        return HTMLResponse((STATIC / "index.html").read_text(), headers=nocache)

    @app.get("/api-docs", include_in_schema=False)
    def api_docs() -> Response:
        return HTMLResponse((STATIC / "api.html").read_text(), headers=nocache)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ------------------------------------------------------------------ API
    api = APIRouter(prefix="/api", dependencies=[Depends(require_token)])

    @api.get("/status", tags=["state"], summary="Console state: session, dose, needle, traction, loops")
    def get_status() -> dict[str, Any]:
        return console.status()

    @api.get("/events", tags=["state"], summary="The latest console events (newest last)")
    def get_events() -> list[dict[str, Any]]:
        return list(console.log)

    @api.get("/dose", tags=["dose"], summary="Dose ledger summary (totals, runs, alarms)")
    def get_dose() -> dict[str, Any]:
        return console.require_session().ledger.summary()

    @api.post("/dose/acknowledge", tags=["dose"], summary="Acknowledge the 5-minute fluoro-time alarm")
    def post_acknowledge() -> dict[str, Any]:
        return console.acknowledge_alarm()

    @api.post("/pedal", tags=["fluoro"], summary="Press or release the fluoro pedal")
    def post_pedal(body: PedalRequest) -> dict[str, Any]:
        return console.pedal(body.down, body.lease_s)

    @api.post("/spot", tags=["fluoro"], summary="Take one digital spot image")
    def post_spot() -> dict[str, Any]:
        return console.spot()

    @api.post("/technique", tags=["fluoro"], summary="Pulse rate and dose mode")
    def post_technique(body: TechniqueRequest) -> dict[str, Any]:
        return console.set_technique(body.pulse_rate_pps, body.dose_mode)

    @api.post("/view", tags=["c-arm"], summary="Move the C-arm to a named view")
    def post_view(body: ViewRequest) -> dict[str, Any]:
        return console.set_view(body.name)

    @api.post("/carm", tags=["c-arm"], summary="Set C-arm angles and SID (absolute)")
    def post_carm(body: CarmRequest) -> dict[str, Any]:
        return console.move_carm(body.primary_deg, body.secondary_deg, body.sid_mm)

    @api.post("/table", tags=["c-arm"], summary="Move the table (relative, LPS mm)")
    def post_table(body: TableRequest) -> dict[str, Any]:
        return console.move_table((body.dx_mm, body.dy_mm, body.dz_mm))

    @api.post("/collimation", tags=["c-arm"], summary="Collimator field at the detector")
    def post_collimation(body: CollimationRequest) -> dict[str, Any]:
        return console.set_collimation(body.width_mm, body.height_mm)

    @api.post("/display", tags=["display"], summary="Window/level, invert, flips, guidance overlay")
    def post_display(body: DisplayRequest) -> dict[str, Any]:
        return console.set_display(**body.model_dump())

    @api.post("/reference/store", tags=["display"], summary="Store the live monitor's image on the reference monitor")
    def post_store_reference() -> dict[str, Any]:
        return console.store_reference()

    @api.get("/images/{monitor}.png", tags=["display"], summary="What a monitor shows, as PNG",
             responses={200: {"content": {"image/png": {}}}})
    def get_image(monitor: Literal["live", "reference"], overlay: bool = False) -> Response:
        from PIL import Image

        from openfluoro.console.overlay import burn_overlay

        shown = console.live if monitor == "live" else console.reference
        if shown is None:
            raise HTTPException(404, f"the {monitor} monitor shows no image yet")
        img = shown.image
        if overlay and shown.meta.get("overlay"):
            img = burn_overlay(img, shown.meta["overlay"])
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    @api.post("/needle/place", tags=["needle"], summary="Place a spinal needle at a level or entry/target")
    def post_needle_place(body: NeedlePlaceRequest) -> dict[str, Any]:
        return console.place_needle(body.level, body.entry_lps_mm, body.target_lps_mm, body.gauge, body.length_mm,
                                    body.depth_mm)

    @api.post("/needle/advance", tags=["needle"], summary="Advance the needle (stops at bone; reports CSF return)")
    def post_needle_advance(body: NeedleMoveRequest) -> dict[str, Any]:
        return console.advance_needle(body.mm)

    @api.post("/needle/withdraw", tags=["needle"], summary="Withdraw the needle")
    def post_needle_withdraw(body: NeedleMoveRequest) -> dict[str, Any]:
        return console.withdraw_needle(body.mm)

    @api.post("/needle/steer", tags=["needle"], summary="Pivot the needle about its entry point")
    def post_needle_steer(body: NeedleSteerRequest) -> dict[str, Any]:
        return console.steer_needle(body.deg, body.about)

    @api.post("/traction", tags=["traction"], summary="Traction by force or by target distraction")
    def post_traction(body: TractionRequest) -> dict[str, Any]:
        if (body.force_n is None) == (body.distraction_mm is None):
            raise HTTPException(422, "give exactly one of force_n and distraction_mm")
        return console.set_traction(body.force_n, body.distraction_mm, body.ramp_mm_per_s)

    @api.post("/traction/off", tags=["traction"], summary="Release traction")
    def post_traction_off() -> dict[str, Any]:
        return console.traction_off()

    @api.post("/record/start", tags=["loops"], summary="Start recording a loop")
    def post_record_start() -> dict[str, Any]:
        return console.start_recording()

    @api.post("/record/stop", tags=["loops"], summary="Stop recording")
    def post_record_stop() -> dict[str, Any]:
        return console.stop_recording()

    @api.get("/loops", tags=["loops"], summary="Recorded loops")
    def get_loops() -> list[dict[str, Any]]:
        return [lp.to_dict() for lp in console.loops.values()]

    @api.post("/loops/{loop_id}/replay", tags=["loops"], summary="Replay a loop on the reference monitor")
    def post_replay(loop_id: str, body: ReplayRequest | None = None) -> dict[str, Any]:
        body = body or ReplayRequest()
        return console.replay(loop_id, body.speed, body.repeat)

    @api.post("/replay/stop", tags=["loops"], summary="Stop a replay")
    def post_replay_stop() -> dict[str, Any]:
        console.stop_replay()
        console.publish_status()
        return console.status()

    @api.post("/loops/{loop_id}/export", tags=["loops"],
              summary="Export a loop: DICOM RF, dose SR, cine (MP4/GIF); returns the files")
    def post_export(loop_id: str, body: ExportRequest | None = None) -> dict[str, Any]:
        body = body or ExportRequest()
        files = console.export(loop_id, tuple(body.formats), body.dicom, body.rdsr)
        return {"loop": loop_id, "files": [{"path": f, "url": f"/api/loops/{loop_id}/files/{f}"} for f in files]}

    @api.get("/loops/{loop_id}/files/{path:path}", tags=["loops"], summary="Download an exported file")
    def get_export_file(loop_id: str, path: str) -> FileResponse:
        return FileResponse(console.export_file(loop_id, path))

    @api.post("/patient/load", tags=["patient"], status_code=202,
              summary="Load the phantom or a CT on the server (a bad file: 422 with the reason, nothing changes)")
    def post_patient_load(body: PatientLoadRequest) -> dict[str, Any]:
        if body.phantom:
            console.load_phantom()
        elif body.path:
            console.load_volume(body.path)
        else:
            raise HTTPException(422, "give a path or phantom: true")
        return console.status()

    @api.post("/patient/upload", tags=["patient"], status_code=202,
              summary="Upload a CT: one file (.nii/.nii.gz/.nrrd/.mha) or the files of a DICOM series")
    async def post_patient_upload(files: list[UploadFile] = File(...)) -> dict[str, Any]:
        folder = Path(console.workdir) / "uploads" / secrets.token_hex(4)
        folder.mkdir(parents=True)
        saved = []
        for f in files:
            name = Path(f.filename or "upload").name or "upload"
            dest = folder / name
            with open(dest, "wb") as out:
                while chunk := await f.read(1 << 20):
                    out.write(chunk)
            saved.append(dest)
        target = saved[0] if len(saved) == 1 else folder
        await asyncio.get_running_loop().run_in_executor(None, console.load_volume, target)
        return console.status()

    app.include_router(api)

    # ------------------------------------------------------------------ stream
    @app.websocket("/ws")
    async def stream(websocket: WebSocket) -> None:
        if not valid(websocket.query_params.get("token")):
            try:
                await websocket.send_denial_response(PlainTextResponse("missing or wrong access token", 401))
            except RuntimeError:   # the server cannot send an HTTP denial: close the handshake instead
                await websocket.close(code=1008)
            return
        await websocket.accept()
        client = _Client()
        hub.clients.add(client)
        # catch up: the state, the recent events and what the monitors show now
        client.put(("status", to_json({"type": "status", **console.status()})))
        for e in list(console.log)[-20:]:
            client.put(("text", to_json(e)))
        for m in console.current_images():
            client.put(("frame", to_json(m[1]), m[2]))

        async def sender() -> None:
            while True:
                await client.ready.wait()
                client.ready.clear()
                while client.items:
                    item = client.items.popleft()
                    if item[0] == "frame":
                        await websocket.send_text(item[1])
                        await websocket.send_bytes(item[2])
                    else:
                        await websocket.send_text(item[1])

        task = asyncio.create_task(sender())
        try:
            while True:
                msg = await websocket.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                if msg.get("text") == "ping":
                    client.put(("text", '{"type":"pong"}'))
        except WebSocketDisconnect:
            pass
        finally:
            hub.clients.discard(client)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    return app


# =========================================================================== running it
def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def page_url(host: str, port: int, token: str) -> str:
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/?token={token}"


def _config(app: FastAPI):
    import uvicorn

    # no per-message deflate: raw frames barely compress and deflating 7.7 MB/s costs latency
    return uvicorn.Config(app, log_level="warning", ws_per_message_deflate=False, lifespan="on")


class RunningConsole:
    """A console server running in a background thread (tests, benchmarks, notebooks)."""

    def __init__(self, console: Console, token: str | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.console = console
        self.token = token or secrets.token_urlsafe(18)
        self.sock = bind_socket(host, port)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(_config(create_app(console, self.token)))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="openfluoro-console-server", daemon=True)
        self.thread.start()
        import time

        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the console server did not start")
            time.sleep(0.02)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return page_url(self.host, self.port, self.token)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.console.close()
        self.sock.close()


def serve(volume: str | Path | None = None, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          token: str | None = None, echo: Callable[[str], None] = print, **console_kwargs: Any) -> None:
    """Run the console until interrupted: load the patient (a bad ``volume`` raises
    ``VolumeError`` before anything listens), bind, print the URL with the token, serve."""
    import uvicorn

    token = token or secrets.token_urlsafe(18)
    console = Console(**console_kwargs)
    try:
        if volume is not None:
            console.load_volume(volume)
        else:
            console.load_phantom()
        sock = bind_socket(host, port)
    except BaseException:
        console.close()
        raise
    actual = sock.getsockname()[1]
    echo(f"OpenFluoro console: {page_url(host, actual, token)}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        echo(f"warning: listening on {host}: anyone who can reach this machine and has the token can drive "
             "the fluoroscope")
    echo(f"API: {page_url(host, actual, token).split('/?')[0]}/api-docs   loops and exports: {console.workdir}")
    echo("the patient is being prepared in the background; press Ctrl+C to stop")
    server = uvicorn.Server(_config(create_app(console, token)))
    try:
        server.run(sockets=[sock])
    finally:
        console.close()
        sock.close()
