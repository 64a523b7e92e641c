"""The console's WebSocket wire format.

Every image goes to the page as one *binary* WebSocket message: a 32-byte little-endian
header followed by the raw 8-bit grey pixels, row-major (rows x cols bytes; no
compression -- a 512 x 512 frame is 256 KiB, 7.7 MB/s at 30 pulses/s, trivial on the
loopback and cheap for both ends). Its metadata goes just before it as a *text* message,
JSON ``{"type": "frame", "index": ..., "kind": ...}``; the two are paired by ``index``
and ``kind``.

Header (``struct`` format ``<4sBBHIHHdd``)::

    0  4s  magic  b"OFRM"
    4  B   version (1)
    5  B   kind: 0 live, 1 hold (last-image hold), 2 reference, 3 replay, 4 spot
    6  H   flags (0; reserved)
    8  I   frame index (session frame number; replay: position in the loop)
    12 H   rows
    14 H   cols
    16 d   pulse time: wall clock (ms since the Unix epoch) when the acquisition started
    24 d   ready time: wall clock (ms) when the processed image was ready to send

Other text messages: ``{"type": "status", ...}`` (the whole console state, the same as
``GET /api/status``), ``{"type": "event", "level": "info"|"warn"|"error", "text": ...}``.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

MAGIC = b"OFRM"
VERSION = 1
HEADER = struct.Struct("<4sBBHIHHdd")
KINDS = {"live": 0, "hold": 1, "reference": 2, "replay": 3, "spot": 4}
KIND_NAMES = {v: k for k, v in KINDS.items()}


def encode_frame(image: np.ndarray, kind: str, index: int, t_pulse_ms: float, t_ready_ms: float) -> bytes:
    """One binary WebSocket message: header + raw uint8 pixels."""
    img = np.ascontiguousarray(image, dtype=np.uint8)
    if img.ndim != 2:
        raise ValueError(f"encode_frame: expected a 2-D grey image, got shape {img.shape}")
    rows, cols = img.shape
    return HEADER.pack(MAGIC, VERSION, KINDS[kind], 0, int(index) & 0xFFFFFFFF, rows, cols,
                       float(t_pulse_ms), float(t_ready_ms)) + img.tobytes()


def decode_frame(data: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """Inverse of ``encode_frame``: (header fields, image)."""
    if len(data) < HEADER.size:
        raise ValueError(f"frame message too short: {len(data)} bytes")
    magic, version, kind, flags, index, rows, cols, t_pulse, t_ready = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"not an OpenFluoro frame (magic {magic!r}, version {version})")
    img = np.frombuffer(data, dtype=np.uint8, count=rows * cols, offset=HEADER.size).reshape(rows, cols)
    return {"kind": KIND_NAMES.get(kind, str(kind)), "flags": flags, "index": index, "rows": rows, "cols": cols,
            "t_pulse_ms": t_pulse, "t_ready_ms": t_ready}, img
