"""Loop recording: frames written to disk as they are acquired, and read back.

A run folder holds
  ``run.json``      header (image size, dtype, patient and study identity), written first;
  ``frames.raw``    the frames' pixels, appended one after another (row-major, in the
                    header's ``dtype``: uint8 for monitor images, uint16 for deeper ones);
  ``frames.jsonl``  one JSON line of metadata per frame, written *after* its pixels;
  ``signal.f16``    (optional) the detector signal before the image chain relative to
                    the frame's open-beam level ``i0`` (float16: 0.05 % steps, finer than
                    the quantum noise), so the run can be replayed through another chain.

Each frame's pixels are flushed before its metadata line, and the metadata line is
flushed at once, so a crash loses at most the frame in flight: on reading, a frame counts
only when its metadata line is complete and its pixels are all there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from openfluoro.fluoro.frame import Frame

HEADER = "run.json"
PIXELS = "frames.raw"
SIGNAL = "signal.f16"
METADATA = "frames.jsonl"
FORMAT_VERSION = 1


class RecordingError(ValueError):
    """A run folder is missing, unreadable or inconsistent; the message names the file."""


class LoopRecorder:
    """Appends frames to a run folder as they arrive. Use as a context manager."""

    def __init__(self, folder: str | Path, rows: int, cols: int, identity: dict[str, Any] | None = None,
                 fsync_every: int = 15, dtype: str = "uint8", extra: dict[str, Any] | None = None) -> None:
        """``extra``: more header keys (e.g. ``patient_position``, ``display``, ``started_at``)."""
        if dtype not in ("uint8", "uint16"):
            raise RecordingError(f"{folder}: dtype must be uint8 or uint16, got {dtype!r}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if (self.folder / METADATA).exists() and (self.folder / METADATA).stat().st_size > 0:
            raise RecordingError(f"{self.folder}: already holds a recording; choose an empty folder")
        self.rows, self.cols = rows, cols
        self.dtype = np.dtype(dtype)
        self.count = 0
        self._fsync_every = fsync_every
        header = {"format_version": FORMAT_VERSION, "rows": rows, "cols": cols, "dtype": dtype,
                  "identity": identity or {}, **(extra or {})}
        (self.folder / HEADER).write_text(json.dumps(header, indent=2))
        self._pixels = open(self.folder / PIXELS, "ab")
        self._signal = open(self.folder / SIGNAL, "ab")
        self._meta = open(self.folder / METADATA, "a", encoding="utf-8")

    def append(self, frame: Frame) -> None:
        if frame.image.dtype != self.dtype:
            raise RecordingError(f"{self.folder}: frame {frame.index} is {frame.image.dtype}, run is {self.dtype}")
        img = np.ascontiguousarray(frame.image)
        if img.shape != (self.rows, self.cols):
            raise RecordingError(f"{self.folder}: frame {frame.index} is {img.shape}, run is {(self.rows, self.cols)}")
        self._pixels.write(img.tobytes())
        self._pixels.flush()
        if frame.signal is not None and frame.i0:
            rel = np.asarray(frame.signal, dtype=np.float32) / np.float32(frame.i0)
            self._signal.write(np.ascontiguousarray(rel, dtype=np.float16).tobytes())
            self._signal.flush()
        self._meta.write(json.dumps(frame.metadata()) + "\n")
        self._meta.flush()
        self.count += 1
        if self.count % self._fsync_every == 0:
            os.fsync(self._pixels.fileno())
            os.fsync(self._meta.fileno())

    def close(self) -> None:
        for f in (self._pixels, self._signal, self._meta):
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()

    def __enter__(self) -> "LoopRecorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class RecordedRun:
    """A run read back from disk: header, per-frame metadata, and lazily mapped pixels."""

    folder: Path
    header: dict[str, Any]
    metadata: tuple[dict[str, Any], ...]
    pixels: np.ndarray  # (n_frames, rows, cols) in the header's dtype, memory-mapped
    signal: np.ndarray | None = None  # (n_frames, rows, cols) float16 signal / i0, if recorded

    def __len__(self) -> int:
        return len(self.metadata)

    def frames(self) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        for img, meta in zip(self.pixels, self.metadata):
            yield img, meta


def read_run(folder: str | Path) -> RecordedRun:
    """Read a run folder; a frame torn by a crash (incomplete pixels or metadata) is dropped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RecordingError(f"{folder}: no such run folder")
    try:
        header = json.loads((folder / HEADER).read_text())
        rows, cols = int(header["rows"]), int(header["cols"])
        dtype = np.dtype(header.get("dtype", "uint16"))
    except FileNotFoundError:
        raise RecordingError(f"{folder / HEADER}: missing; this is not a recorded run") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RecordingError(f"{folder / HEADER}: unreadable header ({exc})") from None
    metas: list[dict[str, Any]] = []
    meta_path = folder / METADATA
    if meta_path.exists():
        for n, line in enumerate(meta_path.read_text(encoding="utf-8").splitlines(keepends=True), 1):
            if not line.endswith("\n"):
                break  # torn last line
            try:
                metas.append(json.loads(line))
            except json.JSONDecodeError:
                raise RecordingError(f"{meta_path}: line {n} is not valid JSON") from None
    frame_bytes = rows * cols * dtype.itemsize
    pix_path = folder / PIXELS
    size = pix_path.stat().st_size if pix_path.exists() else 0
    n = min(len(metas), size // frame_bytes)
    if n == 0:
        pixels = np.zeros((0, rows, cols), dtype=dtype)
    else:
        pixels = np.memmap(pix_path, dtype=dtype, mode="r", shape=(n, rows, cols))
    sig_path = folder / SIGNAL
    signal = None
    if n and sig_path.exists() and sig_path.stat().st_size >= n * rows * cols * 2:
        signal = np.memmap(sig_path, dtype=np.float16, mode="r", shape=(n, rows, cols))
    return RecordedRun(folder, header, tuple(metas[:n]), pixels, signal)


def replay(run: RecordedRun, chain) -> Iterator[np.ndarray]:
    """The run's frames processed again by ``chain`` (an ``ImageChain``, e.g. with other
    filter or window settings), from the recorded detector signal; the chain is reset
    wherever the C-arm moved between frames."""
    if run.signal is None:
        raise RecordingError(f"{run.folder / SIGNAL}: this run has no recorded detector signal to replay")
    last_pose = None
    for sig, meta in zip(run.signal, run.metadata):
        if meta["pose"] != last_pose:
            chain.reset()
            last_pose = meta["pose"]
        i0 = float(meta["i0"])
        yield chain.process(np.asarray(sig, dtype=np.float32) * np.float32(i0), {"i0": i0, "frame_number": meta["index"]})
