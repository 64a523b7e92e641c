"""Guidance overlays for the console: what to draw on a frame, and drawing it.

An overlay is a list of JSON-ready drawing primitives in image pixel coordinates
(``[col, row]``, the frame's own pixel grid before any CSS scaling). The page draws them
as vectors on a layer above the monitor; ``burn_overlay`` draws the same primitives into
the pixels (exported cine loops, PNG snapshots).

Primitive kinds (all have ``"kind"`` and optional ``"color"``, CSS colour strings):

``line``     ``points`` [[c, r], ...], ``dash`` (bool), ``width`` (px)
``marker``   ``at`` [c, r], ``shape`` "cross" | "circle" | "diamond", ``size`` (px), ``label``
``text``     ``at`` [c, r], ``text``, ``align`` "left" | "right" | "center"
``caliper``  ``a``, ``b`` (the two ends), ``text`` (shown beside the caliper), ``side`` "left" | "right"
``banner``   ``text``, ``level`` "ok" | "warn" | "alert" (screen-fixed, top of the monitor)
``progress`` ``label``, ``value`` (0-1), ``text`` (screen-fixed, bottom of the monitor)

The overlay *source* is a callable ``(image, geometry, ground_truth, context) -> list of
primitives``: the frame's uint8 pixels, its imaging geometry, its ground truth and an
``OverlayContext``; it is called once per frame, in acquisition order, so a source may keep
state (a needle tracker); a source with a ``fresh()`` method is asked for a new instance for
each other stream (a replay, a cine export) so those never disturb its live state
(``fresh(live=False)`` where the method takes ``live``: a cine export, processed faster than
real time, which wants every frame complete rather than the frame path kept short). Two
sources exist: ``detected.DetectedOverlay`` (the console's default) draws what the guidance
detectors find in the pixels; ``ground_truth_source`` ignores the pixels and draws the
simulator's ground truth (needle tip and hub, CSF return, disc heights) and the patient's
landmarks -- the teaching view of what the image *should* show. The same source also draws
replayed loops and exported cine loops (from the recorded pixels and metadata).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from openfluoro.geometry.carm import Geometry
from openfluoro.scene.segments import SpineGeometry, SpineMotion

Primitive = dict[str, Any]

#: Colours shared with the page's stylesheet.
COLOR_NEEDLE = "#ffd23f"
COLOR_TARGET = "#3fd0ff"
COLOR_LEVEL = "#9fe870"
COLOR_CALIPER = "#ff9f43"
COLOR_ALERT = "#ff4d4d"
#: how far to the side of the midline the interspace calipers sit on a frontal view
CALIPER_OFFSET_MM = 24.0


@dataclass(frozen=True)
class OverlayContext:
    """What the overlay needs besides the frame: landmarks and plan (LPS mm).

    ``spine``: the session's measured spine (levels, disc axes) or None for an unlabelled CT.
    ``needle_target_lps_mm``: the target of the placed needle (from the plan), if known.
    ``baseline_disc_heights_mm``: disc heights before traction (for decompression progress).
    ``patient``: the patient in use (detector-based sources read only its thecal sac).
    """

    spine: SpineGeometry | None = None
    needle_target_lps_mm: tuple[float, float, float] | None = None
    needle_level: str | None = None
    baseline_disc_heights_mm: Mapping[str, float] = field(default_factory=dict)
    patient: Any = field(default=None, compare=False, repr=False)


OverlaySource = Callable[[np.ndarray, Geometry, Mapping[str, Any], OverlayContext], list[Primitive]]


def _px(geometry: Geometry, points_lps_mm: Any) -> list[list[float]]:
    return [[round(float(c), 1), round(float(r), 1)] for c, r in geometry.project(np.asarray(points_lps_mm, float))]


def _visible(geometry: Geometry, p: Sequence[float], margin: float = 0.0) -> bool:
    d = geometry.detector
    return -margin <= p[0] <= d.image_cols - 1 + margin and -margin <= p[1] <= d.image_rows - 1 + margin


def ground_truth_overlay(geometry: Geometry, ground_truth: Mapping[str, Any],
                         ctx: OverlayContext) -> list[Primitive]:
    """Overlay primitives from a frame's ground truth (stand-in for the guidance detectors).

    Needle shaft and tip, the target and the tip-to-target distance; vertebral level labels;
    interspace calipers with the current disc heights; CSF return; decompression progress.
    """
    out: list[Primitive] = []
    scale = max(geometry.detector.image_rows, geometry.detector.image_cols) / 512.0
    traction = ground_truth.get("traction")
    spine = ctx.spine
    if spine is not None:
        openings = {}
        if traction is not None:
            openings = {d: float(traction.get("per_disc_mm", 0.0)) for d in spine.disc_axes}
        shifts = SpineMotion(spine, openings).translations_mm()
        # level labels to the image-left of each vertebral body
        for name in spine.vertebrae:
            c = np.asarray(spine.centroids_lps_mm[name]) + shifts.get(name, 0.0)
            p = _px(geometry, c)[0]
            if _visible(geometry, p):
                out.append({"kind": "text", "at": [p[0] - 60 * scale, p[1]], "text": name, "align": "right",
                            "color": COLOR_LEVEL})
        # interspace calipers along each disc axis (rest height plus the traction opening); on a
        # frontal view they sit over the right-hand side of the bodies, clear of a midline needle
        heights = dict(traction.get("disc_heights_mm", {})) if traction else dict(spine.disc_heights_mm)
        u = geometry.pose.u_axis
        side = CALIPER_OFFSET_MM * abs(float(u[0])) * u
        for lower, upper in zip(spine.vertebrae[:-1], spine.vertebrae[1:]):
            d = f"{upper}-{'S1' if lower == 'sacrum' else lower}"
            if d not in spine.disc_axes:
                continue
            axis = np.asarray(spine.disc_axes[d])
            mid = 0.5 * (np.asarray(spine.centroids_lps_mm[lower]) + np.asarray(spine.centroids_lps_mm[upper]))
            lo = mid + (spine.disc_lower_face_mm[d] - float(axis @ mid)) * axis + shifts.get(lower, 0.0)
            lo = lo + side - float(side @ axis) * axis
            h = float(heights.get(d, spine.disc_heights_mm[d]))
            a, b = _px(geometry, [lo, lo + h * axis])
            if abs(a[0] - b[0]) + abs(a[1] - b[1]) < 2:     # disc seen end-on: nothing to measure
                continue
            if _visible(geometry, a) and _visible(geometry, b):
                out.append({"kind": "caliper", "a": a, "b": b, "text": f"{d} {h:.1f} mm", "color": COLOR_CALIPER,
                            "side": "right" if abs(float(u[0])) >= 0.5 else "left"})
    needle = ground_truth.get("needle")
    if needle is not None and "tip_px" in needle:
        tip = [round(float(v), 1) for v in needle["tip_px"]]
        if "hub_px" in needle:
            out.append({"kind": "line", "points": [[round(float(v), 1) for v in needle["hub_px"]], tip],
                        "color": COLOR_NEEDLE, "width": 1})
        out.append({"kind": "marker", "at": tip, "shape": "circle", "size": 7 * scale, "label": "tip",
                    "color": COLOR_ALERT if needle.get("blocked") else COLOR_NEEDLE})
        if ctx.needle_target_lps_mm is not None:
            target = _px(geometry, ctx.needle_target_lps_mm)[0]
            dist = float(np.linalg.norm(np.asarray(needle["tip_lps_mm"], float)
                                        - np.asarray(ctx.needle_target_lps_mm, float)))
            out.append({"kind": "marker", "at": target, "shape": "cross", "size": 9 * scale, "color": COLOR_TARGET,
                        "label": "target"})
            out.append({"kind": "line", "points": [tip, target], "dash": True, "color": COLOR_TARGET, "width": 1})
            # the distance label sits along the shaft, outside the body, when the shaft is seen
            # side-on; to the left of the tip when the needle points along the beam
            at, align = [tip[0] - 14 * scale, tip[1] - 12 * scale], "right"
            if "hub_px" in needle:
                v = np.asarray(needle["hub_px"], float) - np.asarray(tip, float)
                if np.linalg.norm(v) > 30 * scale:
                    q = np.asarray(tip, float) + v / np.linalg.norm(v) * 60 * scale
                    at, align = [round(float(q[0]), 1), round(float(q[1] - 14 * scale), 1)], "center"
            out.append({"kind": "text", "at": at, "text": f"{dist:.1f} mm to target", "align": align,
                        "color": COLOR_TARGET})
        if needle.get("csf_return"):
            p = needle.get("opening_pressure_cmh2o")
            out.append({"kind": "banner", "level": "ok",
                        "text": "CSF RETURN" + (f"  opening pressure {p:.1f} cmH2O" if p is not None else "")})
        elif needle.get("blocked"):
            out.append({"kind": "banner", "level": "alert", "text": "NEEDLE BLOCKED: tip against bone"})
    if traction is not None and traction.get("target_per_disc_mm", 0.0) > 0:
        target = float(traction["target_per_disc_mm"])
        now = float(traction.get("per_disc_mm", 0.0))
        out.append({"kind": "progress", "label": "Decompression", "value": min(1.0, now / target),
                    "text": f"{now:.2f} / {target:.2f} mm per interspace at {traction.get('force_n', 0.0):.0f} N"})
    return out


def ground_truth_source(image: np.ndarray, geometry: Geometry, ground_truth: Mapping[str, Any],
                        ctx: OverlayContext) -> list[Primitive]:
    """The console's default overlay source: ``ground_truth_overlay`` (the pixels are not used)."""
    return ground_truth_overlay(geometry, ground_truth, ctx)


# --------------------------------------------------------------------------- burning in


def _font(height_px: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=max(9, height_px // 40))
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def burn_overlay(image: np.ndarray, primitives: Sequence[Primitive], rgb: bool = True) -> np.ndarray:
    """Draw overlay primitives into a copy of a uint8 grey image; RGB (rows, cols, 3) or grey."""
    from PIL import Image, ImageColor, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(image)).convert("RGB" if rgb else "L")
    draw = ImageDraw.Draw(img)
    font = _font(img.height)

    def col(p: Primitive, default: str = "#ffffff"):
        c = ImageColor.getrgb(p.get("color", default))
        return c if rgb else int(0.3 * c[0] + 0.59 * c[1] + 0.11 * c[2])

    def text(at, s, fill, align="left") -> None:
        box = draw.textbbox((0, 0), s, font=font)
        w = box[2] - box[0]
        x = at[0] - w if align == "right" else at[0] - w / 2 if align == "center" else at[0]
        y = at[1] - (box[3] - box[1]) / 2
        draw.text((x + 1, y + 1), s, fill=(0, 0, 0) if rgb else 0, font=font)
        draw.text((x, y), s, fill=fill, font=font)

    for p in primitives:
        k = p.get("kind")
        if k == "line":
            pts = [tuple(q) for q in p["points"]]
            if p.get("dash"):
                a, b = np.asarray(pts[0], float), np.asarray(pts[-1], float)
                n = max(1, int(np.linalg.norm(b - a) / 6))
                for i in range(0, n, 2):
                    draw.line([tuple(a + (b - a) * i / n), tuple(a + (b - a) * min(i + 1, n) / n)], fill=col(p))
            else:
                draw.line(pts, fill=col(p), width=int(p.get("width", 1)))
        elif k == "marker":
            c, r = p["at"]
            s = float(p.get("size", 6))
            if p.get("shape") == "cross":
                draw.line([(c - s, r), (c + s, r)], fill=col(p))
                draw.line([(c, r - s), (c, r + s)], fill=col(p))
            else:
                draw.ellipse([c - s, r - s, c + s, r + s], outline=col(p))
        elif k == "text":
            text(p["at"], p["text"], col(p), p.get("align", "left"))
        elif k == "caliper":
            a, b = np.asarray(p["a"], float), np.asarray(p["b"], float)
            d = b - a
            n = np.array([-d[1], d[0]]) / max(float(np.linalg.norm(d)), 1e-6) * 6
            draw.line([tuple(a), tuple(b)], fill=col(p))
            for e in (a, b):
                draw.line([tuple(e - n), tuple(e + n)], fill=col(p))
            if p.get("side") == "left":
                text((min(a[0], b[0]) - 10, (a[1] + b[1]) / 2), p.get("text", ""), col(p), "right")
            else:
                text((max(a[0], b[0]) + 10, (a[1] + b[1]) / 2), p.get("text", ""), col(p))
        elif k == "banner":
            fill = {"ok": "#3ddc84", "warn": "#ffd23f", "alert": "#ff4d4d"}.get(p.get("level", "ok"), "#ffffff")
            text((img.width / 2, 14), p["text"], col({"color": fill}), "center")
        elif k == "progress":
            w = img.width * 0.5
            x0, y0 = img.width * 0.25, img.height - 22
            draw.rectangle([x0, y0, x0 + w, y0 + 8], outline=col(p, "#ffffff"))
            draw.rectangle([x0, y0, x0 + w * float(p.get("value", 0.0)), y0 + 8], fill=col(p, "#ff9f43"))
            text((img.width / 2, y0 - 10), f"{p.get('label', '')}: {p.get('text', '')}", col(p, "#ffffff"),
                 "center")
    return np.asarray(img)
