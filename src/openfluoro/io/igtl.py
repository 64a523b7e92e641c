"""OpenIGTLink server: live fluoroscopy frames and the needle tip for 3D Slicer.

``IgtlServer`` listens on a TCP port (18944 by default, loopback unless told otherwise) and
pushes to every connected client (e.g. Slicer's OpenIGTLinkIF, or a pyigtl client):

* an **IMAGE** message per frame (device ``"Fluoro"``): the recorded/monitor pixels as a
  one-slice volume (i = image column, j = image row, k = one slice along the beam), with
  the image-to-world matrix that puts every pixel where it lies on the detector plane;
* a **TRANSFORM** per frame (device ``"NeedleTip"``) when the frame's ground truth has a
  needle (``ground_truth["needle"]`` with ``tip_lps_mm`` and ``axis_lps`` or ``axis``): the
  tip position, with the transform's z axis along the needle toward the tip.

**Coordinates.** OpenFluoro works in DICOM patient LPS; Slicer's world is RAS. Both
messages are converted to RAS (x and y negated) and the IMAGE header says RAS
(coordinate field 1), so Slicer places them without further conversion. The image matrix
comes from the C-arm geometry (``geometry.carm``): pixel (col, row) of a detector image is
at ``detector_centre + (col - (cols-1)/2) p u + (row - (rows-1)/2) p v`` (p = binned
pitch), undoing any display flips/rotation the recording declares.

A live session feeds it with ``session.subscribe(server.submit)`` (non-blocking: frames
queue and the oldest are dropped if clients fall behind) or ``server.stream(iterable)``.

Messages are encoded with ``pyigtl`` (its ``ImageMessage`` / ``TransformMessage``); the
server itself is a small threaded TCP broadcaster, so any number of clients can watch and
a client that disconnects does not disturb the stream. Incoming messages from clients
(Slicer sends some) are read and ignored.
"""

from __future__ import annotations

import errno
import queue
import socket
import threading
import time
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from openfluoro.fluoro.frame import Exposure, Frame, FrameDose, geometry_from_metadata
from openfluoro.fluoro.record import RecordedRun
from openfluoro.io.dicom_common import displayed_pixel_to_lps

DEFAULT_PORT = 18944
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class IgtlError(RuntimeError):
    """The OpenIGTLink server cannot start or run; the message says why (port, address)."""


def image_to_ras(meta: dict[str, Any], header: dict[str, Any] | None = None) -> np.ndarray:
    """4x4 ijk-to-RAS matrix (mm) of a frame's image: i = column, j = row, k = beam direction
    (1 mm per slice, pointing from the source to the detector)."""
    return LPS_TO_RAS @ displayed_pixel_to_lps(meta, header)


def needle_to_ras(needle: dict[str, Any]) -> np.ndarray | None:
    """4x4 RAS pose of the needle tip: translation = tip, z axis = needle direction (toward
    the tip); None if the dict lacks a tip or an axis."""
    tip = needle.get("tip_lps_mm")
    axis = needle.get("axis_lps", needle.get("axis"))
    if tip is None or axis is None:
        return None
    d = np.diag([-1.0, -1.0, 1.0])
    z = d @ np.asarray(axis, dtype=float)
    n = np.linalg.norm(z)
    if not np.isfinite(n) or n == 0:
        return None
    z /= n
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2] = x, y, z
    m[:3, 3] = d @ np.asarray(tip, dtype=float)
    return m


def recorded_frames(run: RecordedRun) -> Iterator[Frame]:
    """The frames of a recorded run as ``Frame`` objects (pixels, geometry, technique, dose)."""
    for img, meta in run.frames():
        yield Frame(int(meta.get("index", 0)), float(meta["time_s"]), np.asarray(img), geometry_from_metadata(meta),
                    Exposure(**meta["exposure"]), FrameDose(**meta["dose"]), run_index=int(meta.get("run_index", 0)),
                    ground_truth=dict(meta.get("ground_truth") or {}), events=tuple(meta.get("events") or ()))


class IgtlServer:
    """Push frames to every connected OpenIGTLink client. Use as a context manager."""

    def __init__(self, port: int = DEFAULT_PORT, host: str = "127.0.0.1", *, image_device: str = "Fluoro",
                 needle_device: str = "NeedleTip", header: dict[str, Any] | None = None) -> None:
        self.host, self.port = host, int(port)
        self.image_device, self.needle_device = image_device, needle_device
        self.header = header
        self._sock: socket.socket | None = None
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pending: queue.Queue = queue.Queue(maxsize=4)
        self.sent_frames = 0
        self.dropped_frames = 0

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> "IgtlServer":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((self.host, self.port))
            s.listen(8)
        except OSError as exc:
            s.close()
            if exc.errno == errno.EADDRINUSE:
                raise IgtlError(f"OpenIGTLink port {self.port} on {self.host} is already in use "
                                "(another server, e.g. a running 'openfluoro igtl' or Slicer's own server, holds it); "
                                "choose another port with --port") from None
            if exc.errno == errno.EACCES:
                raise IgtlError(f"OpenIGTLink port {self.port} on {self.host}: permission denied "
                                "(ports below 1024 need privileges)") from None
            raise IgtlError(f"OpenIGTLink server cannot listen on {self.host}:{self.port}: "
                            f"{exc.strerror or exc}") from None
        s.settimeout(0.2)
        self._sock = s
        self.port = s.getsockname()[1]
        for target, name in ((self._accept_loop, "igtl-accept"), (self._send_loop, "igtl-send")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        for t in self._threads:
            t.join(timeout=1.0)

    def __enter__(self) -> "IgtlServer":
        return self.start() if self._sock is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client_count(self) -> int:
        with self._lock:
            return len(self._clients)

    def wait_for_client(self, timeout_s: float = 5.0) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.client_count:
                return True
            time.sleep(0.01)
        return False

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            sock = self._sock
            if sock is None:
                return
            try:
                conn, _ = sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._clients.append(conn)
            t = threading.Thread(target=self._drain, args=(conn,), name="igtl-client", daemon=True)
            t.start()
            self._threads.append(t)

    def _drain(self, conn: socket.socket) -> None:
        """Read and ignore what a client sends; drop it when it hangs up. (The timeout also
        bounds each send: a client that takes nothing for a second is dropped.)"""
        conn.settimeout(1.0)
        while not self._stop.is_set():
            try:
                data = conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
        self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        with self._lock:
            if conn in self._clients:
                self._clients.remove(conn)
        try:
            conn.close()
        except OSError:
            pass

    # -- sending ----------------------------------------------------------------
    def _broadcast(self, payload: bytes) -> int:
        with self._lock:
            clients = list(self._clients)
        n = 0
        for c in clients:
            try:
                c.sendall(payload)
                n += 1
            except OSError:
                self._drop(c)
        return n

    def messages_for(self, frame: Frame, header: dict[str, Any] | None = None) -> list[Any]:
        """The pyigtl messages of one frame (IMAGE, then TRANSFORM when a needle is known)."""
        import pyigtl

        meta = frame.metadata()
        img = np.ascontiguousarray(frame.image)
        if img.dtype not in (np.uint8, np.uint16, np.int16, np.float32):
            img = img.astype(np.float32)
        now = time.time()
        msgs = [pyigtl.ImageMessage(img[None, :, :], ijk_to_world_matrix=image_to_ras(meta, header or self.header),
                                    world_coordinate_system="ras", timestamp=now, device_name=self.image_device)]
        needle = (frame.ground_truth or {}).get("needle")
        if isinstance(needle, dict):
            m = needle_to_ras(needle)
            if m is not None:
                msgs.append(pyigtl.TransformMessage(m, timestamp=now, device_name=self.needle_device))
        return msgs

    def send_frame(self, frame: Frame) -> int:
        """Send one frame to all clients; returns how many clients got it."""
        if self._sock is None:
            raise IgtlError("OpenIGTLink server is not started")
        payload = b"".join(m.pack() for m in self.messages_for(frame))
        n = self._broadcast(payload)
        self.sent_frames += 1
        return n

    def submit(self, frame: Frame) -> None:
        """Queue a frame for sending without waiting (for a live session's frame consumer:
        ``session.subscribe(server.submit)``). If clients are slower than the session, the
        oldest queued frames are dropped, never the session held up."""
        while True:
            try:
                self._pending.put_nowait(frame)
                return
            except queue.Full:
                try:
                    self._pending.get_nowait()
                    self.dropped_frames += 1
                except queue.Empty:
                    pass

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self._pending.get(timeout=0.1)
            except queue.Empty:
                continue
            if self._sock is not None:
                try:
                    self.send_frame(frame)
                except Exception:  # noqa: BLE001 - a bad frame must not kill the sender thread
                    self.dropped_frames += 1

    def stream(self, frames: Iterable[Frame], *, realtime: bool = True, speed: float = 1.0,
               stop: threading.Event | None = None, on_frame: Callable[[Frame, int], None] | None = None) -> int:
        """Send frames as they come (a live session's queue or generator) or, with
        ``realtime=True``, paced by their ``time_s`` (a recording replayed at its frame rate;
        gaps between runs are kept). Returns the number of frames sent."""
        t_wall0: float | None = None
        t_frame0 = 0.0
        count = 0
        for frame in frames:
            if stop is not None and stop.is_set():
                break
            if realtime:
                if t_wall0 is None:
                    t_wall0, t_frame0 = time.monotonic(), frame.time_s
                due = t_wall0 + (frame.time_s - t_frame0) / speed
                while True:
                    wait = due - time.monotonic()
                    if wait <= 0 or (stop is not None and stop.is_set()):
                        break
                    time.sleep(min(wait, 0.05))
            n = self.send_frame(frame)
            count += 1
            if on_frame is not None:
                on_frame(frame, n)
        return count


def replay(run: RecordedRun, port: int = DEFAULT_PORT, host: str = "127.0.0.1", *, speed: float = 1.0,
           loop: bool = False, wait_for_client_s: float = 0.0, stop: threading.Event | None = None,
           on_frame: Callable[[Frame, int], None] | None = None) -> int:
    """Serve a recorded run over OpenIGTLink at its frame rate (optionally looping)."""
    with IgtlServer(port, host, header=run.header) as server:
        if wait_for_client_s > 0:
            server.wait_for_client(wait_for_client_s)
        total = 0
        while True:
            total += server.stream(recorded_frames(run), realtime=True, speed=speed, stop=stop, on_frame=on_frame)
            if not loop or (stop is not None and stop.is_set()):
                return total
