"""Needle detection and tip tracking in fluoroscopy frames (from the image and its geometry).

A spinal needle in a frame is a thin, dark, perfectly straight line. Detection:

1. **Candidates** on the half-resolution frame: the Hessian of a lightly smoothed image
   gives dark-line strength and direction per pixel; ridge maxima vote, each near its own
   direction, in a Hough accumulator; its peaks are candidate lines.
2. **Refinement** at full resolution along each candidate: a strip of profiles across the
   line every half pixel gives, per position ``t`` along it, the sub-pixel centre of the
   dark line and its contrast ``c(t)`` (mean of the flanks minus the centre). The line is
   refitted to the centres (weighted total least squares) twice.
3. **The segment** is the longest run of ``c(t)`` above a threshold set from the strip's
   own noise (gaps of a few pixels are bridged, e.g. where the needle crosses a cortex);
   the best candidate maximises contrast-to-noise x sqrt(length) and straightness.
4. **The tip**: the half-maximum crossing of ``c(t)`` at the tip end (sub-pixel), moved
   forward by half the projected Quincke bevel (the bevel thins the steel to nothing over
   ``2 r / tan(20 deg)``, ~2 mm for 22 G, so the half-maximum lies half a bevel behind the
   sharp point).
5. **Which end is the tip** (one view cannot tell by itself): an end on the image border
   or fading into the over-exposed skin/air is the hub side; else the previous frame's tip
   (tracker); else the epipolar line of the other view's tip (``tip_hint_line``); else the
   anatomy of a posterior (prone) approach: the tip is the anterior end, and in views along
   the AP axis, where anterior is along the beam, the cranial / medial end.

6. **End-on needles** (a dark spot, the Laplacian's outstanding maximum): the spot's ends are
   the half-maximum crossings of its contrast along its principal axis; a spot shorter than
   ``END_ON_MM`` at the isocentre cannot tell its ends apart, and the tip is reported at its
   centre (cue ``end-on centre``, no side confidence: within half the spot of the truth).

``NeedleTracker`` refines the last needle's line in place each frame (the band's own Hough
candidates only if that fails; an end-on spot is searched in a window around it), checks
for a stronger line elsewhere every ``full_search_every`` frames (candidates collected on one
frame, measured on the next), searches the whole frame on loss, and smooths the tip; a
measurement far from the prediction restarts the track.
"""

from __future__ import annotations

import math
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numba
import numpy as np

from openfluoro.geometry.carm import Geometry
from openfluoro.guidance import _filters as F
from openfluoro.guidance._worker import finished

#: outer diameter (mm) assumed for the bevel correction when the gauge is unknown (22 G)
DEFAULT_NEEDLE_OD_MM = 0.718
BEVEL_ANGLE_DEG = 20.0
#: acceptance of a candidate line (from development frames; see module docstring)
MAX_WIDTH_RATIO = 0.25
#: mean |left flank - right flank| / contrast: a step edge (one side dark) is no needle
MAX_ASYM = 1.0
#: tip correction: fraction of the half-bevel (lateral development frames: the half-maximum
#: lies ~0.85 half-bevels behind the point) and the least foreshortening assumed in one view
BEVEL_GAIN = 0.85
MIN_FORESHORTENING = 0.2
#: a gap a run bridges must show some of the needle: the mean contrast of its unclipped
#: samples at least this fraction of the weaker side's level. A metal needle does not vanish
#: along its length, so a gap as flat as the background is its end, and what lies beyond it
#: in line is something else (a cortical edge past the tip); at low dose, where the noise sets
#: the detection threshold, a dropout can still show this much and is bridged. Development sets
#: (six, 167 cases): AP tip p95 at normal dose 7.7 -> 1.9 mm on the last one, unchanged or
#: better on the others; a 3 mm end-on needle no longer found with a spinous edge (10 frames)
GAP_MIN_FRACTION = 0.35
#: ...and the two sides of a gap must show about the same contrast: the display maps
#: attenuation linearly into grey levels, so a needle's contrast (its own attenuation) is much
#: the same along it wherever neither it nor the background is clipped, and clipped it is
#: black. A side under this fraction of the other's contrast, without its own black samples
#: (less than ``CONTRAST_STEP_BLACK_MAX`` of them), is something else in line (a broad
#: spinous or laminar edge past the tip: the flank-minus-centre contrast of a band wider
#: than the needle is lower still)
CONTRAST_STEP_MIN = 0.5
CONTRAST_STEP_BLACK_MAX = 0.5
#: a run clipped to black over at least this fraction of its samples is a needle denser than
#: the window's black (``_Clipping``): where its line shows a centre more than
#: ``BLACK_END_EXCESS`` grey levels brighter than the needle could leave, it is not there
BLACK_RUN_MIN = 0.8
BLACK_END_EXCESS = 12.0
#: in a lateral-like view, a needle-like segment at least this much longer than the best
#: scoring one, which lies within ``SUBSUME_TOL_PX`` of it along all its length, is taken
#: instead: the same needle, the short one a line met at a slight angle (development cases
#: 12_000, 15_008, 15_009, 16_003: 24-33 mm short; in AP views a short needle may lie on an
#: endplate's line, and this is not done)
SUBSUME_MIN_RATIO = 1.5
SUBSUME_TOL_PX = 3.0
#: a line runs the way anterior travel goes in the image (a lateral-like view of the needle)
#: when 1 mm of anterior travel moves a point along it by more than this fraction of what 1 mm
#: of cranial travel does; in views along the AP axis it does not (``_anterior_along``)
ANTERIOR_ALONG_MIN = 0.3
#: tracking: the search band reaches this far beyond the last segment's ends (px)
ROI_MARGIN_PX = 48.0
#: an end-on needle (a dark spot): Laplacian peak over the frame's 99.9th percentile, and at least
BLOB_RATIO = 3.0
BLOB_MIN_LAPLACIAN = 25.0
MIN_CNR = 5.0
#: an end-on spot shorter than this (mm at the isocentre) has no telling ends: tip at its centre
END_ON_MM = 4.0
MIN_CONTRAST = 15.0
#: a line within this distance (both ends, mm at the isocentre) and angle of an excluded
#: segment, beside it for half its length, lies along it (``_lies_along``). For the endplates
#: of a lateral (detected once per pose) the distance covers traction, which moves the upper
#: lumbar endplates by up to ~10 mm meanwhile: in effect, a line beside the vertebral bodies
#: (not behind them, where a lumbar-puncture needle runs) and along their endplates
EXCLUDE_TOL_MM = 12.0
EXCLUDE_ANGLE_DEG = 6.0
#: a line's second run is tried too where it scores at least this fraction of its best one
ALT_RUN_MIN_RATIO = 0.5
#: least score of a line that the whole-frame search reports in a view that sees the needle
#: from the side (``_sees_from_side``): there it crosses the posterior soft tissue in profile. On the
#: development laterals every real needle found so scored 69 or more (one 6 mm long between
#: a blade and its tip); the lines found where a blade hid the needle, 8-39
MIN_SCORE_SIDE_ON = 50.0
#: pixels inside a collimator blade's edge left out of the line search (the step to black
#: gives a ridge response a few pixels wide)
FIELD_EDGE_PX = 4


@dataclass(frozen=True)
class NeedleDetection:
    """A needle found in one frame (image pixels: (col, row))."""

    found: bool
    tip_px: tuple[float, float] = (math.nan, math.nan)
    tail_px: tuple[float, float] = (math.nan, math.nan)   # the visible end on the hub side
    confidence: float = 0.0          # 0..1, from the line's contrast-to-noise and length
    contrast: float = 0.0            # mean display-unit contrast of the line
    cnr: float = 0.0                 # contrast-to-noise (per half-pixel sample, smoothed)
    tip_side_confidence: float = 0.0  # 0..1 how sure we are which end is the tip
    tip_cue: str = ""                # what decided the tip end
    tracked: bool = False
    score: float = 0.0               # the line's contrast-to-noise x sqrt(length) (a spot: its Laplacian)

    @property
    def direction(self) -> np.ndarray:
        d = np.subtract(self.tip_px, self.tail_px)
        n = float(np.hypot(*d))
        return d / n if n > 0 else np.array([1.0, 0.0])

    @property
    def angle_deg(self) -> float:
        """Image angle of the tail->tip direction (0 = +col, 90 = +row)."""
        d = self.direction
        return float(np.degrees(np.arctan2(d[1], d[0])))

    @property
    def length_px(self) -> float:
        return float(np.hypot(*np.subtract(self.tip_px, self.tail_px)))

    def to_dict(self) -> dict:
        return {"found": self.found, "tip_px": list(self.tip_px), "tail_px": list(self.tail_px),
                "angle_deg": self.angle_deg if self.found else None, "confidence": self.confidence,
                "contrast": self.contrast, "tip_side_confidence": self.tip_side_confidence,
                "tip_cue": self.tip_cue, "tracked": self.tracked}


NOT_FOUND = NeedleDetection(False)


@dataclass
class _Line:
    p0: np.ndarray          # a point on the line (col, row)
    d: np.ndarray           # unit direction
    t0: float = 0.0         # segment start (along d from p0)
    t1: float = 0.0
    score: float = 0.0
    contrast: float = 0.0
    cnr: float = 0.0
    plateau: float = 0.0
    ts: np.ndarray | None = None
    c: np.ndarray | None = None
    sat: np.ndarray | None = None
    noise: float = 1.0
    asym: float = 0.0
    width: float = 0.0
    resid: float = 0.0
    dark_end: tuple[bool, bool] = (False, False)     # an end where the needle's black centre ends


def _q(x, q: float) -> float:
    """Quantile of an array (compiled; as ``np.quantile``)."""
    return float(F.quantile(np.ascontiguousarray(x, dtype=np.float64).ravel(), q))


def _med(x) -> float:
    return float(F.median(np.ascontiguousarray(x, dtype=np.float64).ravel()))


def _mask_for(image: np.ndarray, field: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Pixels worth searching: not the burnt-in frame counter, not the collimated (black)
    borders nor the few pixels inside their edges, where the step to black looks like a line.
    ``field``: the frame's ``_filters.field_rect`` where already found."""
    rows, cols = image.shape
    m = np.zeros((rows, cols), bool)
    r0, r1, c0, c1 = F.field_rect(image) if field is None else field
    e = FIELD_EDGE_PX if (r0, r1, c0, c1) != (0, rows, 0, cols) else 0
    m[r0 + (e if r0 else 0):r1 - (e if r1 < rows else 0), c0 + (e if c0 else 0):c1 - (e if c1 < cols else 0)] = True
    cr, cc = F.counter_box(image.shape)
    m[:cr, :cc] = False
    return m


def frame_noise(image: np.ndarray, field: tuple[int, int, int, int] | None = None) -> float:
    """Pixel-noise SD of a displayed frame, in its irradiated field (blank blades have none;
    ``field``: the frame's ``_filters.field_rect`` where already found)."""
    r0, r1, c0, c1 = F.field_rect(image) if field is None else field
    a = image if image.dtype == np.uint8 else np.asarray(image, np.float32)
    return F.noise_sigma(np.ascontiguousarray(a[r0:r1, c0:c1]))


def _clip_to_image(p0: np.ndarray, d: np.ndarray, rows: int, cols: int) -> tuple[float, float]:
    lo, hi = -1e9, 1e9
    for k, n in ((0, cols), (1, rows)):
        if abs(d[k]) < 1e-9:
            if not (0 <= p0[k] <= n - 1):
                return 0.0, -1.0
            continue
        a = (0.0 - p0[k]) / d[k]
        b = (n - 1.0 - p0[k]) / d[k]
        lo, hi = max(lo, min(a, b)), min(hi, max(a, b))
    return lo, hi


_OFFS = np.array([-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0], np.float32)


def _profile(img: np.ndarray, line: _Line, t_lo: float, t_hi: float, step: float = 0.5):
    ts = np.arange(t_lo, t_hi + 1e-6, step, dtype=np.float32)
    prof = F.line_profiles(img, float(line.p0[0]), float(line.p0[1]), float(line.d[0]), float(line.d[1]), ts, _OFFS)
    return ts, prof


@numba.njit(cache=True, nogil=True)
def _refit(prof, ts, p0x, p0y, dx, dy):
    """One refit of ``_refine`` from the profiles across the line: (done, centre x, y,
    direction x, y); done is False where too few samples show the needle."""
    n = prof.shape[0]
    ok = np.zeros(n, np.bool_)
    for k in range(n):
        ok[k] = not np.isnan(prof[k]).any()
    if ok.sum() < 8:
        return False, 0.0, 0.0, 0.0, 0.0
    m = int(ok.sum())
    w = np.empty(m, np.float64)
    off = np.empty(m, np.float64)
    t = np.empty(m, np.float64)
    i = 0
    for k in range(n):
        if not ok[k]:
            continue
        p = prof[k]                         # float32 arithmetic, as the profiles
        flank = (p[0] + p[1] + p[7] + p[8]) * np.float32(0.5) / np.float32(2.0)
        y0, y1, y2 = p[3], p[4], p[5]
        if y0 <= y1 and y0 <= y2:           # darkest sample left of the centre
            o = -1.0
        elif y1 <= y2:                      # at the centre: parabola vertex
            den = y0 - np.float32(2.0) * y1 + y2
            o = float(np.float32(0.5) * (y0 - y2) / den) if den > np.float32(1e-3) else 0.0
            o = min(max(o, -1.0), 1.0)
        else:
            o = 1.0
        off[i] = o
        w[i] = max(float(flank - y1), 0.0)
        t[i] = ts[k]
        i += 1
    if w.sum() <= 0.0:
        return False, 0.0, 0.0, 0.0, 0.0
    keep = w >= 0.3 * np.quantile(w, 0.9)
    if keep.sum() < 6:
        return False, 0.0, 0.0, 0.0, 0.0
    nx, ny = -dy, dx
    sw = sx = sy = 0.0
    for k in range(m):
        if keep[k]:
            x = p0x + t[k] * dx + off[k] * nx
            y = p0y + t[k] * dy + off[k] * ny
            sw += w[k]
            sx += w[k] * x
            sy += w[k] * y
    cx, cy = sx / sw, sy / sw
    a = b = c = 0.0
    for k in range(m):
        if keep[k]:
            qx = p0x + t[k] * dx + off[k] * nx - cx
            qy = p0y + t[k] * dy + off[k] * ny - cy
            a += w[k] * qx * qx
            b += w[k] * qx * qy
            c += w[k] * qy * qy
    # principal axis of the symmetric 2x2 [[a, b], [b, c]]
    lam = 0.5 * (a + c) + math.sqrt(0.25 * (a - c) ** 2 + b * b)
    if abs(b) > 1e-12 * (abs(a) + abs(c)):
        ex, ey = (b, lam - a) if a < c else (lam - c, b)
    else:
        ex, ey = (1.0, 0.0) if a >= c else (0.0, 1.0)
    nrm = math.hypot(ex, ey)
    ex, ey = ex / nrm, ey / nrm
    if ex * dx + ey * dy < 0.0:
        ex, ey = -ex, -ey
    return True, cx, cy, ex, ey


def _refine(img: np.ndarray, line: _Line, t_lo: float, t_hi: float, iterations: int = 2) -> _Line:
    """Refit the line to the sub-pixel centres of the dark profile along it: per sample, the
    darkest of the three central offsets (a parabola through them where it is the middle),
    weighted by its depth below the flanks; the line through the weighted centre along the
    principal axis (samples shallower than 0.3 x the 90th-percentile depth left out)."""
    for _ in range(iterations):
        ts, prof = _profile(img, line, t_lo, t_hi, 1.0)
        done, cx, cy, ex, ey = _refit(prof, ts, float(line.p0[0]), float(line.p0[1]), float(line.d[0]), float(line.d[1]))
        if not done:
            return line
        c = np.array([cx, cy])
        d = np.array([ex, ey])
        # re-express the segment bounds about the new origin
        shift = float((c - line.p0) @ d)
        t_lo, t_hi = t_lo - shift, t_hi - shift
        line = replace(line, p0=c, d=d)
    line.t0, line.t1 = t_lo, t_hi
    return line


def _runs(on: np.ndarray, off: np.ndarray, max_gap: int, min_len: float) -> list[tuple[int, int]]:
    """Runs that start and end "on", bridging at most ``max_gap`` "off" samples (samples that
    are neither on nor off do not count as gap)."""
    r = _runs_nb(np.ascontiguousarray(on, dtype=np.bool_), np.ascontiguousarray(off, dtype=np.bool_),
                 int(max_gap), float(min_len))
    return [(int(a), int(b)) for a, b in r]


@numba.njit(cache=True, nogil=True)
def _runs_nb(on, off, max_gap, min_len):
    n = on.shape[0]
    out = np.empty((n, 2), np.int64)
    m = 0
    i = 0
    while i < n:
        if not on[i]:
            i += 1
            continue
        a = i
        b = i
        gap = 0
        j = i + 1
        while j < n:
            if on[j]:
                b = j
                gap = 0
            elif off[j]:
                gap += 1
                if gap > max_gap:
                    break
            j += 1
        if b - a >= min_len:
            out[m, 0] = a
            out[m, 1] = b
            m += 1
        i = b + 1
    return out[:m]


@dataclass(frozen=True)
class _Clipping:
    """Where the display's black clips a needle along a profile. The display is linear in
    attenuation and a needle's attenuation adds to the background's, so its contrast is the
    same along it wherever neither is clipped; denser than the window's black, it shows only
    as much as the background's grey above black (``room``). And a needle seen black over a
    background is at least that dark (its contrast at least the background's grey there), so
    over a background no brighter it is black too: a centre brighter than that is no needle."""

    blk: np.ndarray            # centre clipped to black
    centre: np.ndarray         # darkest of the centre samples
    near: np.ndarray           # darker of the samples 2 px either side
    flank: np.ndarray          # mean grey of the flanks (the background)
    valid: np.ndarray
    room: np.ndarray           # most contrast the display can show, in the units of ``above``

    def no_needle(self, a: int, b: int) -> np.ndarray | None:
        """Samples too bright for a needle black along most of the run [a, b]
        (``BLACK_RUN_MIN``): the centre above black and, over three samples in a row (1.5 px),
        by more than ``BLACK_END_EXCESS`` brighter than the needle could leave it, with no
        black 2 px beside it (a line drifting off the needle). None for a run not clipped."""
        if b - a < 8 or float(np.mean(self.blk[a:b + 1])) < BLACK_RUN_MIN:
            return None
        own = float(_q(self.flank[a:b + 1][self.blk[a:b + 1]], 0.9))     # its contrast, at least
        excess = self.centre - np.maximum(self.flank - own, 0.0)
        seen = self.valid & ~self.blk & (self.near > 4.0)
        return np.convolve(np.where(seen, excess, 0.0), np.full(3, 1.0 / 3.0), "same") > BLACK_END_EXCESS


def _split_at_empty_gaps(above: np.ndarray, on: np.ndarray, off: np.ndarray, black: np.ndarray, a: int, b: int,
                         clip: _Clipping | None = None) -> list[tuple[int, int]]:
    """The run [a, b] cut at every gap (over 2 px between "on" samples) whose unclipped ("off")
    samples show on average less than ``GAP_MIN_FRACTION`` of the contrast the needle would
    show there -- the weaker side's level (upper quartile of the "on" samples from the last cut
    to the gap, and from the gap to the run's end), or the background's room for it
    (``_Clipping.room``) where that is less -- or whose weaker side, not black, shows less than
    ``CONTRAST_STEP_MIN`` of the stronger side's contrast, or where a needle black along the
    run would be black and the gap is not (``_Clipping.no_needle``)."""
    idx = np.flatnonzero(on[a:b + 1]) + a
    if GAP_MIN_FRACTION <= 0.0 or len(idx) < 2:
        return [(a, b)]
    no_needle = clip.no_needle(a, b) if clip is not None else None
    out = []
    first = int(idx[0])
    for k in np.flatnonzero(np.diff(idx) > 4):
        g0, g1 = int(idx[k]) + 1, int(idx[k + 1])
        seen = off[g0:g1]
        if seen.sum() < 3:
            continue
        sides = [(first, g0), (g1, b + 1)]
        level = [float(_q(above[i:j][on[i:j]], 0.75)) for i, j in sides]
        weak = int(level[1] < level[0])
        i, j = sides[weak]
        black_weak = float(np.mean(black[i:j][on[i:j]]))
        expected = level[weak] if clip is None else float(np.mean(np.minimum(level[weak], clip.room[g0:g1][seen])))
        if float(np.mean(above[g0:g1][seen])) < GAP_MIN_FRACTION * expected or \
                (level[weak] < CONTRAST_STEP_MIN * level[1 - weak] and black_weak < CONTRAST_STEP_BLACK_MAX) or \
                (no_needle is not None and bool(no_needle[g0:g1].any())):
            out.append((first, int(idx[k])))
            first = g1
    out.append((first, int(idx[-1])))
    return out


def _segment(img: np.ndarray, line: _Line, noise_px: float, min_len_px: float,
             t_range: tuple[float, float] | None = None, accept: Callable[[float, float], bool] | None = None
             ) -> _Line | None:
    """Find the needle's run along a refined line; fills t0/t1, contrast, score. ``accept``:
    which runs (t0, t1 along the line) may be the needle (``_in_span``)."""
    rows, cols = img.shape
    lo, hi = _clip_to_image(line.p0, line.d, rows, cols)
    if t_range is not None:
        lo, hi = max(lo, t_range[0]), min(hi, t_range[1])
    if hi - lo < min_len_px:
        return None
    ts, prof = _profile(img, line, lo + 1.0, hi - 1.0, 0.5)
    valid = ~np.isnan(prof).any(axis=1)
    prof = np.where(np.isnan(prof), 0.0, prof)
    flank = 0.25 * (prof[:, 0] + prof[:, 1] + prof[:, 7] + prof[:, 8])
    centre = prof[:, 3:6].min(axis=1)
    c = flank - centre
    sat = (prof.max(axis=1) >= 254.0) & (flank >= 250.0)
    c = np.where(valid, c, 0.0)
    cs = F.blur_1d(c, 3.0)
    # noise of the smoothed contrast: from the pixel noise (the centre is a min of 3, biased)
    sig = noise_px * 0.9 / math.sqrt(3.0) + 0.2
    base = float(_med(cs)) if t_range is None else float(_q(cs, 0.3))
    mad = float(_med(np.abs(cs - base))) * 1.4826
    sig = max(sig, 0.5 * mad)
    above = cs - base
    thr = max(4.0 * sig, 0.25 * float(_q(above, 0.98)))
    # a needle over dark bone is clipped to black: its contrast is only what the background
    # leaves; a black centre line between clearly brighter flanks counts as needle
    cmin = F.blur_1d(centre, 1.0)
    lf = 0.5 * (prof[:, 0] + prof[:, 1])
    rf = 0.5 * (prof[:, 7] + prof[:, 8])
    side = F.blur_1d(np.minimum(lf, rf), 1.0)
    near = F.blur_1d(np.minimum(prof[:, 2], prof[:, 6]), 1.0)
    black = (cmin <= 4.0) & (side >= 15.0) & (near >= 8.0) & valid
    on = (above > thr) | black
    # where the background is clipped (black bone, white skin/air) a needle cannot show:
    # such samples neither end nor extend a run
    unknown = ~on & ((np.minimum(lf, rf) < 12.0) | (np.maximum(lf, rf) > 248.0) | ~valid)
    off = ~on & ~unknown
    clip = _Clipping(cmin <= 4.0, centre, np.minimum(prof[:, 2], prof[:, 6]), flank, valid, F.blur_1d(flank, 3.0) - base)
    runs = _runs(on, off, max_gap=16, min_len=2.0 * min_len_px)   # half-pixel samples: gaps <= 8 px
    if not runs:
        return None
    best = None
    for a, b in runs:
        if accept is not None and not accept(float(ts[a]), float(ts[b])):
            continue
        sel = on[a:b + 1]
        plateau = float(_q(above[a:b + 1][sel], 0.8))
        # second pass: relative to this run's own plateau (drops faint bumps beyond gaps)
        on2 = on.copy()
        on2[a:b + 1] &= (above[a:b + 1] > 0.35 * plateau) | black[a:b + 1]
        off2 = off | (on & ~on2)
        min_len2 = min(2.0 * min_len_px, b - a)
        sub = _runs(on2[a:b + 1], off2[a:b + 1], max_gap=16, min_len=min_len2)
        sub = [piece for a2, b2 in sub for piece in _split_at_empty_gaps(above, on2, off2, black, a + a2, a + b2, clip)
               if piece[1] - piece[0] >= min_len2]
        for a2, b2 in sub:
            if accept is not None and not accept(float(ts[a2]), float(ts[b2])):
                continue
            sel = on2[a2:b2 + 1]
            m = float(np.mean(above[a2:b2 + 1][sel]))
            score = m / sig * math.sqrt(float(sel.sum()) * 0.5)
            if best is None or score > best[0]:
                best = (score, a2, b2, m)
    if best is None:
        return None
    score, a, b, m = best
    a, b, cut = _trim_past_black(a, b, clip)
    sel = above[a:b + 1] > 0.35 * float(_med(above[a:b + 1]))
    plateau = float(_med(above[a:b + 1][sel]))
    seg = prof[a:b + 1][sel]
    left = 0.5 * (seg[:, 0] + seg[:, 1])
    right = 0.5 * (seg[:, 7] + seg[:, 8])
    line.asym = float(np.mean(np.abs(left - right))) / max(m, 1e-3)
    # darkness at +-2 px relative to the centre: ~1 for a narrow line, less for a wide band
    mid2 = 0.5 * (seg[:, 2] + seg[:, 6])
    fl = 0.5 * (left + right)
    line.width = float(np.mean(fl - mid2) / max(np.mean(fl - seg[:, 3:6].min(axis=1)), 1e-3))
    # follow an end into clipped-black background while one flank still shows the needle
    lnear, rnear = prof[:, 2], prof[:, 6]
    half = clip.blk & valid & (((F.blur_1d(lf, 1.0) >= 15.0) & (lnear >= 6.0)) |
                                   ((F.blur_1d(rf, 1.0) >= 15.0) & (rnear >= 6.0)))
    dark_end = list(cut)
    for end, sgn in ((0, -1), (1, +1)):
        k = a if end == 0 else b
        last = k
        miss = 0
        while 0 <= k + sgn < len(ts) and miss <= 6:
            k += sgn
            if half[k]:
                last = k
                miss = 0
            elif cmin[k] <= 4.0 and valid[k]:
                miss += 1
            else:
                break
        if last != (a if end == 0 else b) and abs(last - (a if end == 0 else b)) >= 4:
            dark_end[end] = True
            if end == 0:
                a = last
            else:
                b = last
    line.dark_end = (dark_end[0], dark_end[1])
    line.ts, line.c, line.sat, line.noise = ts, above, sat, sig
    line.t0, line.t1 = float(ts[a]), float(ts[b])
    line.score, line.contrast, line.cnr, line.plateau = score, m, m / sig, plateau
    return line


def _trim_past_black(a: int, b: int, clip: _Clipping) -> tuple[int, int, tuple[bool, bool]]:
    """Ends of the run [a, b] cut back to where a needle clipped to black along it can no
    longer be (``_Clipping.no_needle``): in line past the tip lies something else, a spinous
    or laminar edge. Returns the ends and which of them were cut."""
    no_needle = clip.no_needle(a, b)
    if no_needle is None:
        return a, b, (False, False)
    mostly = F.blur_1d(clip.blk.astype(np.float32), 2.0) >= 0.5     # black but for a stray sample
    ends = [a, b]
    for end, outward in ((0, -1), (1, +1)):
        e = k = ends[end]
        while not mostly[k] and (k - ends[1 - end]) * outward > 0:
            k -= outward                       # the last black stretch before the end
        hits = [i for i in range(k, e + outward, outward) if no_needle[i]]
        if hits:
            ends[end] = hits[0] - outward
    return ends[0], ends[1], (ends[0] != a, ends[1] != b)


def _in_span(span: tuple[float, float] | None) -> Callable[[float, float], bool] | None:
    """The runs along a line ``_segment`` may take for the needle: at least half inside ``span``
    (the stretch searched), not another dark run further along in line with it -- seen from
    the side, a needle pointing at an interspace has an endplate's dark run in line with it,
    often the stronger one."""
    if span is None:
        return None
    lo, hi = sorted(span)
    return lambda t0, t1: min(t1, hi) - max(t0, lo) >= 0.5 * (t1 - t0)


def _end_position(line: _Line, end: int, bevel_px: float) -> float:
    """Sub-pixel half-maximum crossing at one end (+1: the t1 end, -1: the t0 end), corrected
    outward by half the projected bevel."""
    ts, c = line.ts, line.c
    assert ts is not None and c is not None
    if line.dark_end[1 if end > 0 else 0]:
        # the needle's black centre ends there (followed into black background, or cut back
        # where the line goes on above black: ``_trim_past_black``)
        return (line.t1 if end > 0 else line.t0) + end * 0.5 * bevel_px
    step = float(ts[1] - ts[0])
    i_end = int(np.clip(int(round(((line.t1 if end > 0 else line.t0) - float(ts[0])) / step)), 0, len(ts) - 1))
    length = max(line.t1 - line.t0, 1.0)
    n_out = int(round(min(12.0, 0.7 * length) / step))
    n_in = max(1, int(round(min(3.0, 0.25 * length) / step)))
    lo, hi = sorted((i_end - end * n_in, i_end - end * n_out))
    inner = c[max(0, lo):max(0, hi) + 1]
    plat = float(_med(inner)) if inner.size >= 3 else line.plateau
    half = 0.5 * plat
    # walk from inside outward to the first crossing below half
    i = int(np.clip(i_end - end * n_in, 0, len(ts) - 1))
    raw = np.asarray(c, float)
    while 0 <= i + end < len(ts) and raw[i + end] >= half:
        i += end
    if not (0 <= i + end < len(ts)):
        return float(ts[i])
    # smooth locally for the sub-pixel crossing
    cs = F.blur_1d(raw, 1.0)
    j0, j1 = i, i + end
    a, b = cs[j0], cs[j1]
    frac = 0.5 if a == b else float(np.clip((a - half) / (a - b), 0.0, 1.0))
    t = float(ts[j0] + frac * (ts[j1] - ts[j0]))
    return t + end * 0.5 * bevel_px


def _projected_bevel_px(geometry: Geometry, p_px: np.ndarray, d_px: np.ndarray, od_mm: float,
                        foreshortening: float | None = None) -> float:
    """Half-maximum-to-point distance (px) at the tip: ``BEVEL_GAIN`` x half the bevel length,
    magnified to the detector and foreshortened by ``foreshortening`` (sine of the angle
    between needle and beam). Unknown foreshortening is estimated as that of the needle
    direction, among those the image line allows, closest to anterior (a posterior
    approach), but no less than ``MIN_FORESHORTENING``."""
    bevel_mm = od_mm / math.tan(math.radians(BEVEL_ANGLE_DEG))
    mag = geometry.pose.magnification
    if foreshortening is None:
        foreshortening = estimate_foreshortening(geometry, p_px, d_px, (0.0, -1.0, 0.0))
    f = float(np.clip(foreshortening, MIN_FORESHORTENING, 1.0))
    return BEVEL_GAIN * bevel_mm * f * mag / geometry.detector.image_pitch_mm


def estimate_foreshortening(geometry: Geometry, p_px, d_px, prior_dir_lps) -> float:
    """Sine of the beam angle of the 3-D direction in the plane of the source and the image
    line (through ``p_px`` along ``d_px``) that is closest to ``prior_dir_lps``."""
    a = backproject(geometry, p_px)
    b = backproject(geometry, np.asarray(p_px, float) + 10.0 * np.asarray(d_px, float))
    u = b - a
    u = u / np.linalg.norm(u)
    r = a - geometry.pose.source_lps_mm
    r = r - (r @ u) * u
    r = r / np.linalg.norm(r)
    q = np.asarray(prior_dir_lps, float)
    d = (q @ u) * u + (q @ r) * r
    if np.linalg.norm(d) < 1e-9:
        return 1.0
    d = d / np.linalg.norm(d)
    beam = geometry.pose.to_detector
    return float(np.sqrt(max(0.0, 1.0 - (d @ beam) ** 2)))


def image_direction(geometry: Geometry, point_px: Sequence[float], direction_lps: Sequence[float],
                    depth_mm: float | None = None) -> np.ndarray:
    """Image displacement (px) of a 1 mm step along ``direction_lps`` at the point on the ray
    through ``point_px`` at the isocentre's depth (or ``depth_mm`` from the source)."""
    X = backproject(geometry, point_px, depth_mm)
    d = np.asarray(direction_lps, float)
    d = d / np.linalg.norm(d)
    a, b = geometry.project(np.vstack([X, X + d]))
    return b - a


def backproject(geometry: Geometry, point_px: Sequence[float], depth_mm: float | None = None) -> np.ndarray:
    """LPS point on the ray through ``point_px`` at ``depth_mm`` from the source along the beam
    axis (default: the isocentre's, SOD)."""
    pose = geometry.pose
    P = geometry.projection_matrix()
    M = P[:, :3]
    ray = np.linalg.solve(M, np.array([point_px[0], point_px[1], 1.0]))
    ray = ray / np.linalg.norm(ray)
    w = float(ray @ pose.to_detector)
    depth = pose.sod_mm if depth_mm is None else depth_mm
    return pose.source_lps_mm + ray * depth / w


@dataclass
class TipPrior:
    """Hints for deciding the tip end: previous tip (tracker), another view's epipolar line
    ``(a, b, c)`` with ``a x + b y + c = 0``, and the image column of the spine's midline."""

    previous_tip_px: tuple[float, float] | None = None
    previous_tail_px: tuple[float, float] | None = None
    epipolar_line: tuple[float, float, float] | None = None
    midline_px: tuple[float, float] | None = None          # a point on the spine midline (AP views)
    midline_dir: tuple[float, float] | None = None
    motion_dir: tuple[float, float] | None = None           # image direction the needle was seen to advance


def _anterior_along(geometry: Geometry, point: np.ndarray, d: np.ndarray) -> float:
    """How far 1 mm of anterior travel at ``point`` moves it along the image direction ``d``,
    in units of what 1 mm of cranial travel moves it (px per mm at the isocentre); signed."""
    along = float(image_direction(geometry, point, (0.0, -1.0, 0.0)) @ d)
    return along / float(np.hypot(*image_direction(geometry, point, (0.0, 0.0, 1.0))))


def _sees_from_side(geometry: Geometry, shape: tuple[int, int]) -> bool:
    """Whether the view shows anterior travel across the image (a lateral or a steep oblique),
    so that a lumbar-puncture needle is seen from the side."""
    c = np.array([(shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0])
    return float(np.hypot(*image_direction(geometry, c, (0.0, -1.0, 0.0)))) > \
        ANTERIOR_ALONG_MIN * float(np.hypot(*image_direction(geometry, c, (0.0, 0.0, 1.0))))


def _orient(line: _Line, image: np.ndarray, geometry: Geometry, prior: TipPrior | None,
            bevel_px: float, field: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray, float, str]:
    """Return (tip, tail, side_confidence, cue) for a segmented line (``field``: the frame's
    ``_filters.field_rect``)."""
    rows, cols = image.shape
    e0 = line.p0 + line.t0 * line.d
    e1 = line.p0 + line.t1 * line.d
    votes: list[tuple[float, str]] = []   # positive: the t1 end is the tip
    r0, r1, c0, c1 = field

    def near_border(p):
        # the frame's edge, or a collimator blade's (whose edge the line search keeps off)
        if min(p[0], p[1], cols - 1 - p[0], rows - 1 - p[1]) < 4.0:
            return True
        return any(e > 0 and d < FIELD_EDGE_PX + 4.0 for e, d in (
            (r0, p[1] - r0), (rows - r1, r1 - 1 - p[1]), (c0, p[0] - c0), (cols - c1, c1 - 1 - p[0])))

    b0, b1 = near_border(e0), near_border(e1)
    if b0 != b1:
        votes.append((3.0 if b0 else -3.0, "border"))
    # an end fading into saturated (over-exposed) background: the hub side outside the body
    ts, sat = line.ts, line.sat
    if ts is not None and sat is not None:
        step = float(ts[1] - ts[0])
        k0 = int(np.clip(round((line.t0 - ts[0]) / step), 0, len(ts) - 1))
        k1 = int(np.clip(round((line.t1 - ts[0]) / step), 0, len(ts) - 1))
        w = int(round(6.0 / step))
        s0 = float(np.mean(sat[max(0, k0 - w):k0 + 1])) if k0 > 0 else 0.0
        s1 = float(np.mean(sat[k1:k1 + w + 1])) if k1 < len(ts) - 1 else 0.0
        if abs(s0 - s1) > 0.5:
            votes.append((2.0 if s0 > s1 else -2.0, "overexposed"))
    if prior is not None and prior.motion_dir is not None:
        m = float(np.dot(prior.motion_dir, line.d))
        if abs(m) > 0.5:
            votes.append((4.0 if m > 0 else -4.0, "advance"))
    if prior is not None and prior.previous_tip_px is not None and prior.previous_tail_px is not None:
        pt = np.asarray(prior.previous_tip_px, float)
        pl = np.asarray(prior.previous_tail_px, float)
        keep = np.hypot(*(e0 - pl)) + np.hypot(*(e1 - pt))      # t1 end is the tip
        swap = np.hypot(*(e1 - pl)) + np.hypot(*(e0 - pt))
        if abs(keep - swap) > 4.0:
            votes.append((2.5 if keep < swap else -2.5, "track"))
    if prior is not None and prior.epipolar_line is not None:
        a, b, c = prior.epipolar_line
        n = math.hypot(a, b)
        d0 = abs(a * e0[0] + b * e0[1] + c) / n
        d1 = abs(a * e1[0] + b * e1[1] + c) / n
        if abs(d0 - d1) > 2.0:
            votes.append((2.0 if d1 < d0 else -2.0, "epipolar"))
    # anatomy of a posterior approach
    mid = 0.5 * (e0 + e1)
    along = _anterior_along(geometry, mid, line.d)
    if abs(along) > ANTERIOR_ALONG_MIN:
        votes.append((1.5 if along > 0 else -1.5, "anterior"))
    else:
        # views along the AP axis: the line's own image cannot tell. Priors: a paramedian
        # needle heads for the midline; the C-arm is centred on the target interspace, which
        # lies ahead of the tip on the needle's line
        if prior is not None and prior.midline_px is not None:
            m0 = np.asarray(prior.midline_px, float)
            md = np.asarray(prior.midline_dir if prior.midline_dir is not None else
                            image_direction(geometry, mid, (0.0, 0.0, 1.0)), float)
            md = md / np.linalg.norm(md)
            nrm = np.array([-md[1], md[0]])
            dist0, dist1 = abs((e0 - m0) @ nrm), abs((e1 - m0) @ nrm)
            if abs(dist0 - dist1) > 0.25 * max(line.t1 - line.t0, 1.0):
                votes.append((1.2 if dist1 < dist0 else -1.2, "medial"))
        centre = np.array([(cols - 1) / 2.0, (rows - 1) / 2.0])
        sc = float((centre - line.p0) @ line.d)
        lead = (sc - line.t1) if sc > line.t1 else (sc - line.t0 if sc < line.t0 else 0.0)
        d0, d1 = abs(sc - line.t0), abs(sc - line.t1)
        v = (d0 - d1) / max(line.t1 - line.t0, 1.0)
        if abs(v) > 0.05 or lead != 0.0:
            votes.append((float(np.clip(v, -1.0, 1.0)), "centred"))
    total = sum(v for v, _ in votes)
    cue = max(votes, key=lambda v: abs(v[0]))[1] if votes else "none"
    conf = float(1.0 - math.exp(-abs(total))) if votes else 0.0
    if line.ts is None:                 # an end-on spot: its ends as they are
        t_tip, t_tail = (line.t1, line.t0) if total >= 0 else (line.t0, line.t1)
    elif total >= 0:
        t_tip = _end_position(line, +1, bevel_px)
        t_tail = line.t0
    else:
        t_tip = _end_position(line, -1, bevel_px)
        t_tail = line.t1
    return line.p0 + t_tip * line.d, line.p0 + t_tail * line.d, conf, cue


def _candidates(img: np.ndarray, mask: np.ndarray, n_lines: int, roi_line: _Line | None = None,
                roi_halfwidth: float = 16.0, blobs: list | None = None, box: tuple | None = None,
                blob_min_peak: float | None = None) -> list[_Line]:
    """Candidate lines from full-resolution dark-ridge maxima voting in a Hough accumulator
    (within ``box`` = (r0, r1, c0, c1) when given)."""
    rows, cols = img.shape
    r0, r1, c0, c1 = 0, rows, 0, cols
    mk = mask
    if box is not None:
        r0, r1 = max(0, int(box[0])), min(rows, int(box[1]))
        c0, c1 = max(0, int(box[2])), min(cols, int(box[3]))
        mk = mask[r0:r1, c0:c1]
    elif roi_line is not None:
        lo, hi = _clip_to_image(roi_line.p0, roi_line.d, rows, cols)
        if roi_line.t1 > roi_line.t0:
            lo, hi = max(lo, roi_line.t0 - ROI_MARGIN_PX), min(hi, roi_line.t1 + ROI_MARGIN_PX)
        if hi <= lo:
            return []
        ends = np.array([roi_line.p0 + lo * roi_line.d, roi_line.p0 + hi * roi_line.d])
        c0 = int(max(0, np.floor(ends[:, 0].min() - roi_halfwidth)))
        c1 = int(min(cols, np.ceil(ends[:, 0].max() + roi_halfwidth + 1)))
        r0 = int(max(0, np.floor(ends[:, 1].min() - roi_halfwidth)))
        r1 = int(min(rows, np.ceil(ends[:, 1].max() + roi_halfwidth + 1)))
        rr, cc = np.mgrid[r0:r1, c0:c1]
        nrm = np.array([-roi_line.d[1], roi_line.d[0]])
        dist = np.abs((cc - roi_line.p0[0]) * nrm[0] + (rr - roi_line.p0[1]) * nrm[1])
        mk = mask[r0:r1, c0:c1] & (dist <= roi_halfwidth)
    sub = np.ascontiguousarray(img[r0:r1, c0:c1])
    if sub.shape[0] < 8 or sub.shape[1] < 8:
        return []
    sm = F.blur_fast(sub, 1.0, out=F.scratch("candidates.sm", sub.shape))
    strength = F.scratch("candidates.strength", sub.shape)
    lap = F.scratch("candidates.lap", sub.shape)
    F.ridge_and_laplacian(sm, strength, lap)
    sample = strength[::3, ::3][mk[::3, ::3]]
    if sample.size == 0:
        return []
    thr = max(float(_q(sample, 0.995)), 4.0)
    if blobs is not None:
        b = _blob(sm, lap, mk, blob_min_peak)
        if b is not None:
            b.p0 = b.p0 + np.array([c0, r0], float)
            blobs.append(b)
    pts = F.ridge_nms_sm(sm, strength, thr, mk, 8000)
    if pts.shape[0] < 5:
        return []
    pts[:, 0] += c0
    pts[:, 1] += r0
    pts[:, 2] = pts[:, 2] ** 2
    n_theta = 180
    rho_max = int(math.ceil(math.hypot(rows, cols))) + 1
    acc = F.hough_votes(pts, n_theta, rho_max, 2)
    lines = []
    a = acc
    for _ in range(n_lines):
        k, ri = np.unravel_index(int(np.argmax(a)), a.shape)
        if a[k, ri] <= 0:
            break
        ang = k * math.pi / n_theta
        nrm = np.array([math.cos(ang), math.sin(ang)])
        lines.append(_Line(nrm * (ri - rho_max), np.array([-math.sin(ang), math.cos(ang)])))
        for dk in range(-5, 6):
            a[(k + dk) % n_theta, max(0, ri - 8):ri + 9] = 0.0
    return lines


@numba.njit(cache=True, nogil=True)
def _masked_argmax(a, mask):
    best = 0.0
    bi = 0
    bj = 0
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            v = a[i, j] if mask[i, j] else 0.0
            if v > best:
                best = v
                bi = i
                bj = j
    return bi, bj, best


@numba.njit(cache=True, nogil=True)
def _count_above(a, mask, thr, step):
    n = 0
    k = 0
    for i in range(0, a.shape[0], step):
        for j in range(0, a.shape[1], step):
            if mask[i, j]:
                n += 1
                if a[i, j] > thr:
                    k += 1
    return k, n


def _blob(sm: np.ndarray, lap: np.ndarray, mask: np.ndarray, min_peak: float | None = None) -> _Line | None:
    """A needle seen (nearly) end-on: the most compact dark spot (Laplacian maximum) if it
    stands far above the frame's other spots (or, tracking one in a small window, reaches
    ``min_peak``); its extent along its principal axis."""
    r, c, peak = _masked_argmax(lap, mask)
    if min_peak is not None:
        if peak < max(min_peak, BLOB_MIN_LAPLACIAN):
            return None
    elif peak < BLOB_MIN_LAPLACIAN:
        return None
    # peak >= BLOB_RATIO x the 99.9th percentile of the (every 2nd pixel) sample, i.e. at most
    # 0.1 % of the sample above peak / BLOB_RATIO
    if min_peak is None:
        n_above, n = _count_above(lap, mask, peak / BLOB_RATIO, 2)
        if n == 0 or n_above > 0.001 * (n - 1):
            return None
    h = 10
    r0, r1, c0, c1 = max(0, r - h), min(sm.shape[0], r + h + 1), max(0, c - h), min(sm.shape[1], c + h + 1)
    win = sm[r0:r1, c0:c1]
    yy, xx = np.mgrid[r0:r1, c0:c1]
    rad = np.hypot(yy - r, xx - c)
    ring = win[(rad >= 4.0) & (rad <= 6.5)]
    centre = win[rad <= 1.5]
    if ring.size < 8 or centre.size == 0:
        return None
    bg = float(_med(ring))
    depth = bg - float(centre.mean())
    if depth <= 10.0:
        return None
    dark = (win < bg - 0.5 * depth) & (rad <= 8.0)
    # the connected dark spot around the peak (4-neighbour flood fill)
    from scipy import ndimage

    lab, _ = ndimage.label(dark)
    idl = lab[r - r0, c - c0]
    if idl == 0:
        idl = lab[np.unravel_index(int(np.argmin(win)), win.shape)]
    yy, xx = np.nonzero(lab == idl)
    if yy.size < 3 or yy.size > 200:
        return None
    w = (bg - win[yy, xx]).astype(float)
    cx, cy = float((w * xx).sum() / w.sum()) + c0, float((w * yy).sum() / w.sum()) + r0
    q0 = np.stack([xx + c0 - cx, yy + r0 - cy])
    cov = (w * q0) @ q0.T / w.sum()
    ev, evec = np.linalg.eigh(cov)
    d = evec[:, 1]
    half = math.sqrt(3.0 * max(ev[1] - ev[0], 0.0))
    line = _Line(np.array([cx, cy]), d / np.linalg.norm(d), -half, half)
    line.score = peak
    line.contrast = depth
    ends = _blob_extent(sm, line)
    if ends is not None:
        line.t0, line.t1 = ends
    return line


def _blob_extent(sm: np.ndarray, line: _Line, reach: float = 24.0) -> tuple[float, float] | None:
    """Ends of a short dark segment along its axis: the half-maximum crossings of its contrast
    (flanks minus centre) on either side of the darkest part (sub-pixel)."""
    ts = np.arange(-reach, reach + 1e-6, 0.5, dtype=np.float32)
    prof = F.line_profiles(sm, float(line.p0[0]), float(line.p0[1]), float(line.d[0]), float(line.d[1]), ts, _OFFS)
    if np.isnan(prof).any():
        return None
    flank = 0.25 * (prof[:, 0] + prof[:, 1] + prof[:, 7] + prof[:, 8])
    c = flank - prof[:, 3:6].min(axis=1)
    i0 = int(np.argmin(np.abs(ts)))
    core = c[max(0, i0 - 2):i0 + 3]
    peak = float(core.max())
    if peak <= 0:
        return None
    half = 0.5 * peak
    out = []
    for step in (-1, +1):
        i = i0
        while 0 <= i + step < len(ts) and c[i + step] >= half:
            i += step
        if not (0 <= i + step < len(ts)):
            return None
        a, b = float(c[i]), float(c[i + step])
        frac = 0.5 if a == b else float(np.clip((a - half) / (a - b), 0.0, 1.0))
        out.append(float(ts[i]) + step * 0.5 * frac)
    return out[0], out[1]


def _lies_along(seg: _Line, segments: Sequence, tol_px: float) -> bool:
    """Whether ``seg`` runs along one of ``segments`` ((p0, p1) image px): within
    ``EXCLUDE_ANGLE_DEG`` of its direction, both ends within ``tol_px`` of its line and at least
    half of its length beside it."""
    a, b = seg.p0 + seg.t0 * seg.d, seg.p0 + seg.t1 * seg.d
    length = max(float(np.hypot(*(b - a))), 1e-9)
    for p0, p1 in segments:
        q0, q1 = np.asarray(p0, float), np.asarray(p1, float)
        e = q1 - q0
        n = float(np.hypot(*e))
        if n < 1e-9:
            continue
        e = e / n
        if abs(float(seg.d[0] * e[1] - seg.d[1] * e[0])) > math.sin(math.radians(EXCLUDE_ANGLE_DEG)):
            continue
        nrm = np.array([-e[1], e[0]])
        if abs(float((a - q0) @ nrm)) > tol_px or abs(float((b - q0) @ nrm)) > tol_px:
            continue
        ta, tb = sorted((float((a - q0) @ e), float((b - q0) @ e)))
        if min(tb, n) - max(ta, 0.0) >= 0.5 * length:
            return True
    return False


def _evaluate(img: np.ndarray, cands: list[_Line], noise: float, min_len: float, t_range_of=None,
              prune: float = 0.0, exclude: Sequence = (), exclude_tol_px: float = 0.0,
              may_subsume: Callable[[_Line], bool] | None = None) -> _Line | None:
    """Refine and segment the candidate lines; the best needle-like segment or None. With
    ``prune`` > 0, candidates whose first-pass score is below ``prune`` x the best final score
    are not refined a second time. A segment lying along one of ``exclude`` (anatomy known
    not to be the needle: detected endplates) is not a needle. ``may_subsume``: which
    segments may take the place of a shorter best one lying along them."""
    rows, cols = img.shape
    first: list[_Line] = []
    for ln in cands:
        lo, hi = _clip_to_image(ln.p0, ln.d, rows, cols)
        if hi - lo < min_len:
            continue
        if t_range_of is not None:
            lo, hi = max(lo, t_range_of(ln)[0]), min(hi, t_range_of(ln)[1])
            if hi - lo < min_len:
                continue
        ln = _refine(img, ln, lo, hi)
        flt = _in_span((ln.t0, ln.t1) if t_range_of is not None else None)
        bare = replace(ln) if exclude else None           # ``_segment`` fills in ``ln``
        seg = _segment(img, ln, noise, min_len, accept=flt)
        if seg is None:
            continue
        runs = [seg]
        if bare is not None:
            # the line's best run apart from that one, if about as strong: seen from the side, a
            # needle pointing at an interspace has an endplate's dark run in line with it
            span, score = (seg.t0, seg.t1), seg.score
            alt = _segment(img, bare, noise, min_len, accept=lambda t0, t1: (flt is None or flt(t0, t1)) and
                           min(t1, span[1]) - max(t0, span[0]) <= 0.0)
            if alt is not None and alt.score >= ALT_RUN_MIN_RATIO * score:
                runs.append(alt)
        for seg in runs:
            if seg.width > MAX_WIDTH_RATIO + 0.15 or seg.cnr < 0.7 * MIN_CNR:
                continue
            if exclude and _lies_along(seg, exclude, exclude_tol_px):
                continue
            first.append(seg)
    first.sort(key=lambda sg: -sg.score)
    best = None
    passing: list[_Line] = []
    done: list[np.ndarray] = []
    for seg in first:
        if best is not None and seg.score < prune * best.score:
            break
        # Hough peaks next to each other are often the same (short) needle: a segment whose ends
        # both lie within 3 px of one already refined is not refined again
        ends = np.array([seg.p0 + seg.t0 * seg.d, seg.p0 + seg.t1 * seg.d])
        if any(min(np.hypot(*(ends - e).T).max(), np.hypot(*(ends - e[::-1]).T).max()) < 3.0 for e in done):
            continue
        done.append(ends)
        # refine once more on the segment alone
        seg2 = _refine(img, replace(seg), seg.t0, seg.t1, iterations=1)
        seg2 = _segment(img, seg2, noise, min_len, accept=_in_span((seg2.t0, seg2.t1))) or seg
        # a needle is narrow (no darkness left 2 px off its centre line) and symmetric
        if seg2.width > MAX_WIDTH_RATIO or seg2.cnr < MIN_CNR or seg2.contrast < MIN_CONTRAST or seg2.asym > MAX_ASYM:
            continue
        # refined on its own, a short piece can turn into the anatomy it lay across
        if exclude and _lies_along(seg2, exclude, exclude_tol_px):
            continue
        seg2.score = seg2.score / (1.0 + 2.0 * max(0.0, seg2.asym - 0.5))
        passing.append(seg2)
        if best is None or seg2.score > best.score:
            best = seg2
    if best is not None and may_subsume is not None:
        # a piece lying along a much longer needle-like segment is part of that line, met at a
        # slight angle (it can score higher: a short stretch over a smooth bright background
        # has less noise); the needle is the line that explains all of it
        for other in sorted(passing, key=lambda sg: sg.t0 - sg.t1):
            if other.t1 - other.t0 >= SUBSUME_MIN_RATIO * (best.t1 - best.t0) and \
                    _covers(other, best, SUBSUME_TOL_PX) and may_subsume(other):
                return other
    return best


def _covers(long: _Line, short: _Line, tol_px: float) -> bool:
    """Both ends of the segment ``short`` lie within ``tol_px`` of the segment ``long``'s line
    and within its extent."""
    for t in (short.t0, short.t1):
        r = short.p0 + t * short.d - long.p0
        along = float(r @ long.d)
        if abs(float(r[0] * long.d[1] - r[1] * long.d[0])) > tol_px or \
                not long.t0 - tol_px <= along <= long.t1 + tol_px:
            return False
    return True


def detect_needle(image: np.ndarray, geometry: Geometry, prior: TipPrior | None = None,
                  needle_od_mm: float = DEFAULT_NEEDLE_OD_MM, roi: tuple | None = None,
                  min_length_mm: float = 4.0, n_candidates: int = 4,
                  foreshortening: float | None = None, noise: float | None = None,
                  window: tuple | None = None, blob_min_peak: float | None = None,
                  exclude_segments: Sequence = ()) -> NeedleDetection:
    """Find the needle in one frame. ``roi`` = (point, direction[, t0, t1]) restricts the
    search to a band around a predicted line (tracking), and along it to ``ROI_MARGIN_PX``
    beyond the segment [t0, t1] (measured from ``point`` along ``direction``): the predicted
    line itself is refined first, the band's own candidate lines only if it shows no needle.
    ``noise``: the frame's pixel-noise SD when already known. ``window`` = (r0, r1, c0, c1):
    search only there (tracking an end-on needle), a spot counting when its Laplacian reaches
    ``blob_min_peak``. ``exclude_segments``: straight anatomy known not to be the needle
    ((p0, p1) image px: the endplates of a lateral, whose dark cortical lines run the way a
    lumbar-puncture needle does); a line lying along one is passed over."""
    img = np.ascontiguousarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"detect_needle: expected a 2-D grey image, got shape {image.shape}")
    field = F.field_rect(img)                # found once: the search mask, the noise, the tip's end
    mask = _mask_for(img, field)
    if noise is None:
        noise = frame_noise(image if isinstance(image, np.ndarray) and image.dtype == np.uint8 else img, field)
    px_per_mm = geometry.px_per_mm_at_isocentre
    min_len = min_length_mm * px_per_mm
    excl = {"exclude": exclude_segments, "exclude_tol_px": EXCLUDE_TOL_MM * px_per_mm}
    roi_line = None
    t_range_of = None
    best = None
    blobs: list[_Line] = []
    if roi is not None:
        roi_line = _Line(np.asarray(roi[0], float), np.asarray(roi[1], float) / np.linalg.norm(roi[1]))
        if len(roi) >= 4:
            roi_line.t0, roi_line.t1 = float(roi[2]), float(roi[3])
            ends = [roi_line.p0 + roi_line.t0 * roi_line.d, roi_line.p0 + roi_line.t1 * roi_line.d]

            def t_range_of(ln):
                ts_ = sorted(float((e - ln.p0) @ ln.d) for e in ends)
                return ts_[0] - ROI_MARGIN_PX, ts_[1] + ROI_MARGIN_PX
            best = _evaluate(img, [_Line(roi_line.p0.copy(), roi_line.d.copy())], noise, min_len, t_range_of, **excl)
        n_candidates = min(n_candidates, 2)
    if window is not None:
        n_candidates = min(n_candidates, 2)
    if best is None:
        cands = _candidates(img, mask, n_candidates, roi_line, blobs=blobs, box=window, blob_min_peak=blob_min_peak)
        # seen from the side (the line runs the way anterior travel goes), a needle is long and
        # crosses skin and soft tissue; seen along the AP axis it is short, and may lie on an
        # endplate's line, which must not take its place
        def side_on(ln: _Line) -> bool:
            return abs(_anterior_along(geometry, ln.p0 + 0.5 * (ln.t0 + ln.t1) * ln.d, ln.d)) > ANTERIOR_ALONG_MIN

        best = _evaluate(img, cands, noise, min_len, t_range_of, prune=0.5, **excl, may_subsume=side_on)
        if best is not None and roi is None and window is None and best.score < MIN_SCORE_SIDE_ON and \
                _sees_from_side(geometry, img.shape):
            best = None
    blob = blobs[0] if blobs else None
    if blob is not None and best is not None:
        # the blob wins over a line it is not part of when it is much darker than the line
        off = abs(float((blob.p0 - best.p0) @ np.array([-best.d[1], best.d[0]])))
        along = float((blob.p0 - best.p0) @ best.d)
        on_line = off < 4.0 and best.t0 - 4.0 <= along <= best.t1 + 4.0
        if on_line or blob.contrast < 1.5 * best.contrast and (best.t1 - best.t0) > 3.0 * (blob.t1 - blob.t0 + 2.0):
            blob = None
    if blob is not None:
        noise_c = noise / math.sqrt(3.0) + 0.2
        tip, tail, side_conf, cue = _orient(blob, img, geometry, prior, 0.0, field)
        if blob.t1 - blob.t0 < END_ON_MM * px_per_mm:
            # too short to tell its ends apart: the tip is within half the spot of its centre
            tip = blob.p0 + 0.5 * (blob.t0 + blob.t1) * blob.d
            side_conf, cue = 0.0, "centre"
        conf = float(1.0 - math.exp(-blob.contrast / noise_c / 20.0))
        return NeedleDetection(True, (float(tip[0]), float(tip[1])), (float(tail[0]), float(tail[1])), conf,
                               float(blob.contrast), float(blob.contrast / noise_c), side_conf, "end-on " + cue,
                               roi is not None or window is not None, float(blob.score))
    if best is None:
        return NOT_FOUND
    bevel_px = _projected_bevel_px(geometry, best.p0, best.d, needle_od_mm, foreshortening)
    tip, tail, side_conf, cue = _orient(best, img, geometry, prior, bevel_px, field)
    conf = float(1.0 - math.exp(-max(0.0, best.score - 6.0) / 15.0))
    return NeedleDetection(True, (float(tip[0]), float(tip[1])), (float(tail[0]), float(tail[1])), conf,
                           float(best.contrast), float(best.cnr), side_conf, cue, roi is not None or window is not None,
                           float(best.score))


def _lines_off(img: np.ndarray, mid: np.ndarray) -> list[_Line]:
    """The frame's candidate lines, less those through ``mid`` (the tracked segment's middle:
    they are the tracked needle itself)."""
    return [ln for ln in _candidates(img, _mask_for(img), 4)
            if abs(float((mid - ln.p0) @ np.array([-ln.d[1], ln.d[0]]))) >= 6.0]


def _stronger_among(img: np.ndarray, lines: list[_Line], geometry: Geometry, noise: float, exclude: Sequence,
                    score: float) -> bool:
    """Whether a needle-like segment on one of ``lines`` scores over 1.2 x the tracked ``score``."""
    px_per_mm = geometry.px_per_mm_at_isocentre
    other = _evaluate(img, lines, noise, 4.0 * px_per_mm, prune=0.5, exclude=exclude,
                      exclude_tol_px=EXCLUDE_TOL_MM * px_per_mm)
    return other is not None and other.score > 1.2 * score


def _stronger_elsewhere(img: np.ndarray, geometry: Geometry, prior: TipPrior, needle_od_mm: float, noise: float,
                        mid: np.ndarray, exclude: Sequence, score: float) -> NeedleDetection:
    """What ``NeedleTracker._check_elsewhere`` does over two frames, at once (on a worker): the
    full detection where a needle-like line off the tracked one (through ``mid``) scores over
    1.2 x the tracked ``score``, else NOT_FOUND."""
    img = np.ascontiguousarray(img, dtype=np.float32)
    if not _stronger_among(img, _lines_off(img, mid), geometry, noise, exclude, score):
        return NOT_FOUND
    return detect_needle(img, geometry, prior, needle_od_mm, noise=noise, exclude_segments=exclude)


@dataclass
class NeedleTracker:
    """Tracks one needle over the frames of a run (one C-arm pose; a new pose restarts it).

    Per frame: detection in a band around the last line (full-frame search on loss); the
    tip is averaged over frames while the needle is still and follows the measurement at
    once when it moves (steps of more than ``jump_px``). The direction the needle is seen
    to slide along its own line while it is advanced tells the tip end for good (a needle
    moves toward its tip when advanced; both ends slide the same way in projection).

    The same rigidity guards the tip in views along the AP axis, where the whole needle lies
    over the body (not in a lateral, where the shaft outside the skin does not show): a
    segment that suddenly reaches further at the tip while its far end stays put is the
    needle joined to something in line beyond its tip (an end-on needle lines up with the
    spinous processes), so the last tip is held (``_grown_at_tip_only``), for at most
    ``hold_max_frames`` frames in a row.
    """

    alpha: float = 0.5
    jump_px: float = 2.5
    gate_px: float = 40.0
    needle_od_mm: float = DEFAULT_NEEDLE_OD_MM
    midline_px: tuple[float, float] | None = None
    midline_dir: tuple[float, float] | None = None
    epipolar_line: tuple[float, float, float] | None = None
    advance_evidence_px: float = 4.0
    use_roi: bool = True
    full_search_every: int = 8
    #: frames in a row the tip may be held against a line grown at the tip (2 s at 15 pulses/s)
    hold_max_frames: int = 30
    #: straight anatomy at this pose that is not the needle (``detect_needle``'s ``exclude_segments``)
    exclude_segments: list = field(default_factory=list)
    #: where whole-frame searches run (``background.BackgroundDetection``: live sessions), so
    #: that no frame waits for one (``_full_search``); None: in line
    background: Any = None
    _search: tuple[Geometry, Future] | None = None
    _elsewhere: Future | None = None
    _geometry: Geometry | None = None
    _tip: np.ndarray | None = None
    _tail: np.ndarray | None = None
    _ref: np.ndarray | None = None        # fixed reference direction of the track's line
    _ends: tuple[float, float] | None = None
    _ends0: tuple[float, float] | None = None
    _motion: float = 0.0
    _misses: int = 0
    _held: int = 0
    last: NeedleDetection = field(default_factory=lambda: NOT_FOUND)

    def reset(self) -> None:
        self._geometry = None
        self._tip = self._tail = self._ref = None
        self._ends = self._ends0 = None
        self._motion = 0.0
        self._misses = 0
        self._held = 0
        self._pending = []
        self._search = None
        self._elsewhere = None
        self.last = NOT_FOUND

    @property
    def advance_direction(self) -> np.ndarray | None:
        if self._ref is None or abs(self._motion) < self.advance_evidence_px:
            return None
        return self._ref * (1.0 if self._motion > 0 else -1.0)

    def _prior(self) -> TipPrior:
        adv = self.advance_direction
        return TipPrior(previous_tip_px=None if self._tip is None else (float(self._tip[0]), float(self._tip[1])),
                        previous_tail_px=None if self._tail is None else (float(self._tail[0]), float(self._tail[1])),
                        midline_px=self.midline_px, midline_dir=self.midline_dir, epipolar_line=self.epipolar_line,
                        motion_dir=None if adv is None else (float(adv[0]), float(adv[1])))

    def _detect(self, image: np.ndarray, geometry: Geometry, prior: TipPrior, noise: float, **search) -> NeedleDetection:
        """``detect_needle`` with this tracker's needle and excluded anatomy."""
        return detect_needle(image, geometry, prior, self.needle_od_mm, noise=noise,
                             exclude_segments=self.exclude_segments, **search)

    def _full_search(self, image: np.ndarray, geometry: Geometry, prior: TipPrior, noise: float) -> NeedleDetection:
        """The whole-frame search, in line or (with ``background``) on the worker: a frame that
        needs one starts it and goes on without a needle; the first frame after it finished
        follows the line it found into itself (the band search of tracking, a few ms) -- the
        needle moves little in a frame or two -- or, where that finds nothing there (an end-on
        spot, a line just withdrawn), reports what the search found; a search that found
        nothing is started again from the frame at hand."""
        if self.background is None:
            return self._detect(image, geometry, prior, noise)
        job = self._search
        if job is not None and job[0] == geometry and not job[1].done():
            return NOT_FOUND
        self._search = None
        found = (finished(job[1]) or NOT_FOUND) if job is not None and job[0] == geometry else NOT_FOUND
        if found.found and self.exclude_segments:
            # anatomy learnt since the search started (a lateral's endplates) is not the needle
            tail, tip = np.asarray(found.tail_px, float), np.asarray(found.tip_px, float)
            L = max(float(np.hypot(*(tip - tail))), 1e-9)
            if _lies_along(_Line(tail, (tip - tail) / L, 0.0, L), self.exclude_segments,
                           EXCLUDE_TOL_MM * geometry.px_per_mm_at_isocentre):
                found = NOT_FOUND
        if not found.found:
            self._search = (geometry, self.background.submit(
                detect_needle, np.array(image, copy=True), geometry, prior, self.needle_od_mm, noise=noise,
                exclude_segments=list(self.exclude_segments)))
            return NOT_FOUND
        return self._follow(found, image, geometry, prior, noise)

    def _follow(self, found: NeedleDetection, image: np.ndarray, geometry: Geometry, prior: TipPrior,
                noise: float) -> NeedleDetection:
        """A needle found on the worker in an earlier frame, looked for in this one in the band
        around its line (what it found where that shows nothing: an end-on spot, a withdrawn
        needle's last place)."""
        tail, tip = np.asarray(found.tail_px, float), np.asarray(found.tip_px, float)
        L = float(np.hypot(*(tip - tail)))
        if L > 12.0 and not found.tip_cue.startswith("end-on"):
            det = self._detect(image, geometry, prior, noise, roi=(tail, (tip - tail) / L, 0.0, L))
            if det.found:
                return replace(det, tracked=False)
        return found

    def _check_elsewhere(self, image: np.ndarray, geometry: Geometry, det: NeedleDetection,
                         noise: float) -> NeedleDetection:
        """The whole-frame search while a line is tracked, spread over two frames: every
        ``full_search_every``-th frame collects the frame's candidate lines off the tracked
        one; the next frame measures them, and a clearly stronger needle-like line elsewhere
        restarts the track with a full detection. With ``background`` all of it runs on the
        worker (``_stronger_elsewhere``) and a later frame takes up what it found."""
        if self.background is not None:
            job = self._elsewhere
            if job is not None and job.done():
                self._elsewhere = None
                full = finished(job)
                if full is not None and full.found:
                    return self._follow(full, image, geometry, self._prior(), noise)
            elif job is None and self._frames % self.full_search_every == 0:
                mid = 0.5 * (np.asarray(det.tail_px, float) + np.asarray(det.tip_px, float))
                self._elsewhere = self.background.submit(
                    _stronger_elsewhere, np.array(image, copy=True), geometry, self._prior(), self.needle_od_mm,
                    noise, mid, list(self.exclude_segments), det.score)
            return det
        pending = getattr(self, "_pending", [])
        self._pending = []
        if pending:
            img = np.ascontiguousarray(image, dtype=np.float32)
            if _stronger_among(img, pending, geometry, noise, self.exclude_segments, det.score):
                full = self._detect(image, geometry, self._prior(), noise)
                if full.found:
                    return full
            return det
        if self._frames % self.full_search_every == 0:
            mid = 0.5 * (np.asarray(det.tail_px, float) + np.asarray(det.tip_px, float))
            self._pending = _lines_off(np.ascontiguousarray(image, dtype=np.float32), mid)
        return det

    def _grown_at_tip_only(self, det: NeedleDetection, geometry: Geometry, shape: tuple[int, ...]) -> bool:
        """``det`` is the tracked line reaching >= 8 px (and a quarter of its length) further
        at the tip while its tail stayed within 3 px and away from the image border, the line
        not one along which anterior travel runs (``ANTERIOR_ALONG_MIN``, as ``_orient`` tells
        views along the AP axis; in a lateral the needle runs anteriorly, and the part of it
        seen grows at the tip from a tail fixed at the skin as it is advanced), and the hold
        not yet used up."""
        assert self._tip is not None and self._tail is not None
        if not det.found or self._held >= self.hold_max_frames:
            return False
        d = self._tip - self._tail
        L = float(np.hypot(*d))
        if L < 1e-6:
            return False
        u = d / L
        nrm = np.array([-u[1], u[0]])
        tip, tail = np.asarray(det.tip_px, float), np.asarray(det.tail_px, float)
        rows, cols = shape[:2]
        if min(tail[0], tail[1], cols - 1 - tail[0], rows - 1 - tail[1]) < 6.0:
            return False
        if abs(float((tip - self._tail) @ nrm)) > 3.0 or float(np.hypot(*(tail - self._tail))) > 3.0:
            return False
        if float((tip - self._tip) @ u) <= max(8.0, 0.25 * L):
            return False
        return abs(_anterior_along(geometry, 0.5 * (self._tip + self._tail), u)) <= ANTERIOR_ALONG_MIN

    def _hold(self) -> NeedleDetection:
        self._held += 1
        return replace(self.last, tracked=True)

    def update(self, image: np.ndarray, geometry: Geometry) -> NeedleDetection:
        if self._geometry is not None and geometry != self._geometry:
            self.reset()
        self._geometry = geometry
        prior = self._prior()
        det = NOT_FOUND
        self._frames = getattr(self, "_frames", 0) + 1
        noise = frame_noise(image)
        held_before = self._held
        tracking = self.use_roi and self._tip is not None and self._tail is not None and self.last.found and \
            self.last.confidence > 0.5
        if tracking and self.last.tip_cue.startswith("end-on"):
            # an end-on needle: search a window around the spot (it moves little in the image)
            assert self._tip is not None and self._tail is not None
            c = 0.5 * (self._tip + self._tail)
            h = 40.0 + 0.5 * float(np.hypot(*(self._tip - self._tail)))
            det = self._detect(image, geometry, prior, noise,
                               window=(c[1] - h, c[1] + h + 1, c[0] - h, c[0] + h + 1),
                               blob_min_peak=0.4 * self.last.score)
            if det.found and (not det.tip_cue.startswith("end-on") or
                              np.hypot(*(0.5 * (np.asarray(det.tip_px) + np.asarray(det.tail_px)) - c)) > 12.0):
                det = NOT_FOUND          # no longer the same spot: search the whole frame
        elif tracking:
            assert self._tip is not None and self._tail is not None
            d = self._tip - self._tail
            L = float(np.hypot(*d))
            if L > 12.0:
                det = self._detect(image, geometry, prior, noise, roi=(self._tail, d / L, 0.0, L))
                # a tracked needle stays on its line, its ends move little between pulses and
                # (rigid, advanced along itself) its visible length hardly changes
                if det.found:
                    dn = np.asarray(det.tip_px) - np.asarray(det.tail_px)
                    same_dir = abs(float(dn @ d)) / max(float(np.hypot(*dn)) * L, 1e-9) > 0.98
                    near = min(np.hypot(*(np.asarray(det.tip_px) - self._tip)),
                               np.hypot(*(np.asarray(det.tail_px) - self._tip))) < self.gate_px
                    if not (same_dir and near and det.found and abs(det.length_px - L) < 0.25 * L + 10.0):
                        det = self._hold() if self._grown_at_tip_only(det, geometry, image.shape) else NOT_FOUND
                if det.found:
                    det = self._check_elsewhere(image, geometry, det, noise)
        if not det.found:
            self._pending = []
            det = self._full_search(image, geometry, prior, noise)
            if tracking and self._grown_at_tip_only(det, geometry, image.shape):
                det = self._hold()
        if self._held == held_before:
            self._held = 0                       # a frame not held ends a run of holds
        if not det.found:
            self._misses += 1
            if self._misses > 3:
                search = self._search
                self.reset()
                self._geometry, self._search = geometry, search
            return NOT_FOUND
        self._misses = 0
        z = np.asarray(det.tip_px, float)
        tail = np.asarray(det.tail_px, float)
        d = z - tail
        d = d / max(np.hypot(*d), 1e-9)
        if self._ref is None or self._tip is None or abs(float(d @ self._ref)) < 0.97 or \
                abs(float((z - self._tip) @ np.array([-self._ref[1], self._ref[0]]))) > 6.0:
            # a new line: restart the track
            self._ref, self._motion = d, 0.0
            self._ends = tuple(sorted((float(tail @ d), float(z @ d))))
            self._ends0 = self._ends
            self._tip, self._tail = z, tail
            self.last = det
            return det
        # slide of the two ends along the line since the track began (ends matched by their
        # position along the reference): evidence only from a rigid slide, both ends moving the
        # same way by about as much
        ends = tuple(sorted((float(tail @ self._ref), float(z @ self._ref))))
        assert self._ends0 is not None
        s0, s1 = ends[0] - self._ends0[0], ends[1] - self._ends0[1]
        span0, span = self._ends0[1] - self._ends0[0], ends[1] - ends[0]
        if abs(span - span0) > max(3.0, 0.2 * span0) and abs(self._motion) < self.advance_evidence_px:
            self._ends0 = ends            # the visible extent changed: not a slide; start again
            s0 = s1 = 0.0
        if s0 * s1 > 0 and min(abs(s0), abs(s1)) > 2.0 and abs(s0 - s1) < max(2.5, 0.4 * max(abs(s0), abs(s1))):
            if abs(0.5 * (s0 + s1)) > abs(self._motion):
                self._motion = 0.5 * (s0 + s1)
        self._ends = ends
        if np.hypot(*(z - self._tip)) > self.jump_px:
            self._tip = z
        else:
            self._tip = self._tip + self.alpha * (z - self._tip)
        self._tail = tail
        # re-decide the tip end with the (possibly new) advance evidence
        if self.advance_direction is not None and float(self.advance_direction @ d) < 0:
            # live (``background``): the line is the tracked one, searched in its band only
            L = float(np.hypot(*(z - tail)))
            band = {"roi": (tail, (z - tail) / L, 0.0, L)} if self.background is not None and L > 12.0 else {}
            det = self._detect(image, geometry, self._prior(), noise, **band)
            if det.found:
                self._tip = np.asarray(det.tip_px, float)
                self._tail = np.asarray(det.tail_px, float)
        out = replace(det, tip_px=(float(self._tip[0]), float(self._tip[1])),
                      tail_px=(float(self._tail[0]), float(self._tail[1])), tracked=True)
        self.last = out
        return out
