"""Guidance overlays on a frame (RGB uint8) for the console and the recorded cine: the needle
line and tip, level labels at the interspaces, interspace calipers with their heights, the
target, and the guidance messages. Everything is drawn in image pixel coordinates (the
same as ``Geometry.project``); the input frame is never modified.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

NEEDLE_RGB = (255, 220, 0)
TIP_RGB = (255, 60, 60)
LEVEL_RGB = (80, 200, 255)
CALIPER_RGB = (90, 255, 120)
TARGET_RGB = (255, 80, 255)
TEXT_RGB = (255, 255, 255)
WARN_RGB = (255, 140, 0)


def _rgb(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"overlay: expected a grey (H, W) or RGB (H, W, 3) image, got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a[:, :, :3]).copy()


def draw_overlay(image: np.ndarray, needle=None, levels=None, heights: Iterable | None = None,
                 target_px: Sequence[float] | None = None, messages: Sequence[str] = (),
                 warnings: Sequence[str] = (), scale: int | None = None) -> np.ndarray:
    """A copy of ``image`` (grey or RGB) as RGB uint8 with the guidance drawn on it.

    ``needle``: a ``NeedleDetection``; ``levels``: a ``LevelResult``; ``heights``: an iterable
    of ``InterspaceHeight``; ``target_px``: (col, row); ``messages``/``warnings``: text lines.
    """
    from PIL import Image, ImageDraw

    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    s = scale or max(1, min(h, w) // 256)
    im = Image.fromarray(rgb)
    d = ImageDraw.Draw(im)
    if levels is not None:
        for disc in getattr(levels, "discs", ()):
            x, y = disc.centre_px
            for ep in (disc.upper, disc.lower):
                if ep is not None:
                    d.line([ep.p0, ep.p1], fill=LEVEL_RGB, width=1)
            if disc.name:
                d.text((x + 6 * s, y - 5 * s), disc.name, fill=LEVEL_RGB)
            d.ellipse([x - 2 * s, y - 2 * s, x + 2 * s, y + 2 * s], outline=LEVEL_RGB)
    for hgt in heights or ():
        for key, (a, b) in hgt.calipers_px.items():
            d.line([a, b], fill=CALIPER_RGB, width=1)
            for p in (a, b):                           # caliper ticks
                d.line([(p[0] - 2 * s, p[1]), (p[0] + 2 * s, p[1])], fill=CALIPER_RGB, width=1)
        mid = hgt.calipers_px.get("middle")
        if mid is not None:
            x = max(mid[0][0], mid[1][0]) + 4 * s
            y = 0.5 * (mid[0][1] + mid[1][1]) - 4 * s
            d.text((x, y), f"{hgt.anterior_mm:.1f}/{hgt.middle_mm:.1f}/{hgt.posterior_mm:.1f}", fill=CALIPER_RGB)
    if target_px is not None:
        x, y = float(target_px[0]), float(target_px[1])
        r = 6 * s
        d.ellipse([x - r, y - r, x + r, y + r], outline=TARGET_RGB, width=1)
        d.line([(x - 2 * r, y), (x - r // 2, y)], fill=TARGET_RGB)
        d.line([(x + r // 2, y), (x + 2 * r, y)], fill=TARGET_RGB)
        d.line([(x, y - 2 * r), (x, y - r // 2)], fill=TARGET_RGB)
        d.line([(x, y + r // 2), (x, y + 2 * r)], fill=TARGET_RGB)
    if needle is not None and getattr(needle, "found", False):
        tip, tail = needle.tip_px, needle.tail_px
        d.line([tail, tip], fill=NEEDLE_RGB, width=1)
        r = 3 * s
        d.ellipse([tip[0] - r, tip[1] - r, tip[0] + r, tip[1] + r], outline=TIP_RGB, width=max(1, s // 2 + 1))
    y = h - 4 * s
    for text, col in [(t, WARN_RGB) for t in reversed(list(warnings))] + [(t, TEXT_RGB) for t in reversed(list(messages))]:
        y -= 11 * s if s > 1 else 11
        box = d.textbbox((4 * s, y), text)
        d.rectangle([box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1], fill=(0, 0, 0))
        d.text((4 * s, y), text, fill=col)
    return np.asarray(im)
