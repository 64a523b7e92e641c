"""Cine export of a recording: MP4 (H.264 via the ffmpeg binary that the ``imageio-ffmpeg``
wheel ships), animated GIF and PNG frame sequences (Pillow), with optional burned-in
overlays.

One file (or one PNG folder) per irradiation event (``dicom_common.split_events``): a
fluoro/cine run plays at its own pulse rate; a digital spot is a single PNG. Overlays are
a callback ``overlay(image, meta, n, summary) -> image`` on a Pillow image (mode ``"L"``);
``default_overlay`` writes the frame counter and time, kV / mA and the running
reference-point air kerma with Pillow's built-in font. Files are written atomically
(temporary file, then rename).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from openfluoro.fluoro.record import RecordedRun
from openfluoro.io.dicom_common import (
    Event,
    EventSummary,
    ExportError,
    LoadedRun,
    check_output_folder,
    load_run,
    split_events,
    summarize,
)

Overlay = Callable[[Image.Image, dict[str, Any], int, EventSummary], Image.Image]
FORMATS = ("mp4", "gif", "png")


def to_8bit(img: np.ndarray) -> np.ndarray:
    """Monitor pixels as 8-bit grey (uint16 recordings are scaled from their full range)."""
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.dtype == np.uint16:
        return (np.asarray(img, dtype=np.uint32) * 255 // 65535).astype(np.uint8)
    a = np.asarray(img, dtype=float)
    lo, hi = float(np.min(a)), float(np.max(a))
    return np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) / (hi - lo) * 255).astype(np.uint8)


def _font(height_px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    size = max(8, height_px // 28)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType support: the fixed bitmap font
        return ImageFont.load_default()


def default_overlay(image: Image.Image, meta: dict[str, Any], n: int, summary: EventSummary) -> Image.Image:
    """Frame counter and time (top left), kV / mA and cumulative Ka,r (bottom left)."""
    draw = ImageDraw.Draw(image)
    font = _font(image.height)
    ex = meta["exposure"]
    kr = sum(summary.ka_r_per_frame_mgy[: n + 1])
    lines_top = f"{summary.kind.upper()} {n + 1}/{summary.n_frames}  t {float(meta['time_s']):.2f} s"
    lines_bottom = f"{float(ex['kvp']):.0f} kV  {float(ex['ma']):.1f} mA  Ka,r {kr:.3f} mGy"
    pad = 2
    for text, top in ((lines_top, True), (lines_bottom, False)):
        box = draw.textbbox((0, 0), text, font=font)
        w, h = box[2] - box[0], box[3] - box[1]
        y = pad if top else image.height - h - 2 * pad - box[1]
        draw.rectangle((0, y, w + 2 * pad, y + h + box[1] + pad), fill=0)
        draw.text((pad, y), text, fill=255, font=font)
    return image


@dataclass(frozen=True)
class CineFile:
    path: Path
    event: Event
    n_frames: int
    fps: float


def _frames_8bit(run: RecordedRun, event: Event, overlay: Overlay | None) -> list[np.ndarray]:
    s = summarize(run, event)
    out = []
    for n, i in enumerate(event.indices):
        img = to_8bit(run.pixels[i])
        if overlay is not None:
            pil = overlay(Image.fromarray(img), run.metadata[i], n, s)
            img = np.asarray(pil.convert("L"))
        out.append(img)
    return out


def _tmp_path(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_mp4(frames: Sequence[np.ndarray], path: str | Path, fps: float, quality: float = 8.0) -> Path:
    """H.264 MP4 (yuv420p, plays everywhere); odd sizes are padded by one black row/column."""
    import imageio_ffmpeg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape
    H, W = h + (h % 2), w + (w % 2)
    tmp = _tmp_path(path)
    try:
        writer = imageio_ffmpeg.write_frames(str(tmp), (W, H), pix_fmt_in="gray", pix_fmt_out="yuv420p", fps=fps,
                                             codec="libx264", quality=quality, macro_block_size=2,
                                             output_params=["-movflags", "+faststart"])
        writer.send(None)
        for f in frames:
            if f.shape != (H, W):
                g = np.zeros((H, W), np.uint8)
                g[:h, :w] = f
                f = g
            writer.send(np.ascontiguousarray(f))
        writer.close()
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_gif(frames: Sequence[np.ndarray], path: str | Path, fps: float) -> Path:
    """Looping animated GIF (frame durations rounded to GIF's 10 ms steps)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    duration = max(20, int(round(1000.0 / fps / 10.0)) * 10)
    tmp = _tmp_path(path)
    try:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0,
                       optimize=False)
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_png(frame: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        Image.fromarray(np.ascontiguousarray(frame)).save(tmp, format="PNG")
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def export_cine(run: str | Path | RecordedRun | LoadedRun, out_dir: str | Path, *,
                formats: Sequence[str] = ("mp4",), overlay: Overlay | bool | None = None,
                speed: float = 1.0) -> list[CineFile]:
    """Write each run of the recording as MP4 / GIF / PNG sequence into ``out_dir``.

    ``overlay``: a callback, ``True`` for ``default_overlay``, or None/False for clean
    frames. PNG sequences keep the recorded bit depth when there is no overlay (16-bit
    PNGs for uint16 recordings). ``speed`` scales the playback rate.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ExportError(f"cine formats must be among {FORMATS}, got {list(formats)!r}")
    if not speed > 0:
        raise ExportError(f"cine speed must be positive, got {speed!r}")
    if overlay is True:
        overlay = default_overlay
    elif overlay is False:
        overlay = None
    loaded = run if isinstance(run, LoadedRun) else (LoadedRun(run) if isinstance(run, RecordedRun) else load_run(run))
    rec = loaded.run
    out = check_output_folder(rec, out_dir)
    written: list[CineFile] = []
    for event in split_events(rec):
        s = summarize(rec, event)
        stem = f"run{event.run_index:03d}_{event.kind}{event.ordinal:03d}"
        fps = (s.pulse_rate_pps if s.pulse_rate_pps > 0 else 1.0) * speed
        if event.kind == "spot":
            img = _frames_8bit(rec, event, overlay)[0] if overlay else np.asarray(rec.pixels[event.indices[0]])
            written.append(CineFile(write_png(img, out / f"{stem}.png"), event, 1, fps))
            continue
        frames = _frames_8bit(rec, event, overlay)
        if "mp4" in formats:
            written.append(CineFile(write_mp4(frames, out / f"{stem}.mp4", fps), event, len(frames), fps))
        if "gif" in formats:
            written.append(CineFile(write_gif(frames, out / f"{stem}.gif", fps), event, len(frames), fps))
        if "png" in formats:
            folder = out / f"{stem}_png"
            for n, i in enumerate(event.indices):
                img = frames[n] if overlay else np.asarray(rec.pixels[i])
                write_png(img, folder / f"frame{n:05d}.png")
            written.append(CineFile(folder, event, len(frames), fps))
    return written
