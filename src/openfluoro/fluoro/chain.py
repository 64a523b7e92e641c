"""The clinical image chain: from detected quanta to the 8-bit picture on the monitor.

Input frames are 2-D arrays of detected signal in *mean detected quanta per pixel*
(with their noise): larger means more transmission, so bone and steel are LOW
values. One frame goes through these stages, in this order:

1. **log / normalise** -- ``p = -ln(I / I0)`` (attenuation, "line integral"), with
   ``I`` clamped below at ``MIN_QUANTA`` and ``p`` clamped to
   ``[-MAX_NEGATIVE_LOG, ln(I0 / MIN_QUANTA)]``. ``I0`` is the unattenuated level:
   ``ChainSettings.i0``, else ``meta["i0"]``, else a flat-field estimate (the 99.5th
   percentile of the collimated field, smoothed over frames). The quantum noise
   of ``p`` is estimated per pixel as ``1 / sqrt(I * quanta_per_unit)`` (Poisson,
   propagated through the log).
2. **motion-adaptive recursive temporal filter** -- ``y_n = y_(n-1) + k (x_n - y_(n-1))``.
   At a still pixel ``k = a = 1 - recursive_strength``; ``k`` ramps linearly up to 1
   as the 3x3-averaged difference ``|mean(x_n - y_(n-1))|`` goes from ``T`` to
   ``T + R`` standard deviations of its own noise (``T = motion_threshold``,
   ``R = motion_ramp``), so moving objects are not smeared.
3. **spatial denoising** -- an edge-preserving 3x3 range filter (bilateral with a
   quadratic range kernel ``max(0, 1 - (d/h)^2)``, ``h = 3 * denoise_strength *``
   the local noise SD left after the temporal filter).
4. **edge enhancement** -- unsharp mask ``s + amount (s - box_m(s))``.
5. **window / level** -- manual (``window``, ``level`` in attenuation units) or
   automatic (the ``auto_percentiles`` of the collimated field map to the two ends
   of the grey scale).
6. **flip / rotate** -- flips in detector coordinates first, then a clockwise
   rotation by ``rotate_deg``.
7. **virtual collimation** -- pixels outside the rectangle (detector coordinates)
   are black.
8. **frame counter overlay** -- digits from a built-in 3x5 bitmap font, white on a
   black box in the top-left corner of the displayed image.

Display convention (default, ``invert=False``): as on a clinical fluoroscope, bone
and steel are DARK and air is BRIGHT (high attenuation -> low grey value).
``invert=True`` shows bone bright.

The hot loops are numba kernels (``cache=True``, parallel over rows where it pays)
behind plain-Python stage functions (``log_normalize``, ``recursive_filter``,
``denoise``, ``edge_enhance``, ``auto_window``, ``render_display``,
``draw_counter``). ``ImageChain`` strings them together, owns the buffers and
the temporal state, and keeps the last image for last-image hold (LIH). The log
itself is numpy's (SIMD) ``np.log``: numba's scalar log was ~5-25x slower here.

Measured (tests/fluoro/test_chain.py): with the default a = 0.25 the filter raises
the CNR of a still needle 2.62x (theory sqrt((2-a)/a) = 2.65); a 3-px needle of
log-contrast 0.15 moving 2 px/frame lags its true position by 0.1-0.3 px (4.6 px
without motion adaptation). Speed (benchmarks/chain.py): ~1.4 ms per 512^2 frame and
~5 ms per 1024^2 frame on the 2-core machine, frames back to back. Run the process
with ``OMP_WAIT_POLICY=passive`` where other work competes for the cores: libgomp's
default spinning made each parallel region cost a time slice (~7 ms) under contention.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numba
import numpy as np

MIN_QUANTA = 0.5
"""Frames are clamped below at this many quanta before the log (a zero count has no log)."""

MAX_NEGATIVE_LOG = 1.0
"""Attenuation below ``-MAX_NEGATIVE_LOG`` (a pixel brighter than e x I0: a hot pixel) is clamped."""

_FLAT_FIELD_PERCENTILE = 99.5
_FLAT_FIELD_SMOOTHING = 0.2  # weight of the new estimate in the running flat-field (I0) estimate

_F32 = np.float32


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ChainSettings:
    """Everything the operator can set on the image chain.

    ``recursive_strength``  0 = temporal filter off; at a still pixel the new frame has
                            weight ``a = 1 - recursive_strength`` (default 0.75 -> a = 0.25,
                            noise SD reduced by ``sqrt(a / (2 - a)) = 0.378``).
    ``motion_threshold``    T, in noise SDs of the 3x3-mean frame difference: below T the
                            pixel is "still" (k = a), above T + ``motion_ramp`` it is
                            "moving" (k = 1), linear in between.
    ``denoise_strength``    0 = off; range width of the 3x3 edge-preserving filter in units
                            of 3 noise SDs.
    ``edge_amount``         unsharp-mask gain (0 = off); ``edge_kernel`` its odd box size.
    ``window``/``level``    manual window width and centre in attenuation units
                            (``-ln(I/I0)``); both None = automatic.
    ``auto_percentiles``    attenuation percentiles of the collimated field mapped to the
                            two ends of the grey scale in automatic mode.
    ``auto_wl_smoothing``   weight of the previous automatic window/level (0 = none).
    ``auto_region``         side of the central part of the field (fraction, 0-1] whose
                            percentiles set the automatic window, as a clinical system
                            windows on the anatomy at the centre, not the air at the edges.
    ``rotate_deg``          0, 90, 180 or 270, clockwise, applied after the flips.
    ``invert``              False: bone/steel dark, air bright (clinical fluoroscopy).
    ``collimation``         ``(row0, row1, col0, col1)`` in detector pixels (half-open);
                            outside is black. None = whole frame.
    ``i0``                  unattenuated level in frame units; None = ``meta["i0"]`` or a
                            flat-field estimate.
    ``quanta_per_unit``     detected quanta per frame unit (1 when frames are in quanta).
    """

    recursive_strength: float = 0.75
    motion_threshold: float = 3.0
    motion_ramp: float = 1.0
    denoise_strength: float = 1.0
    edge_amount: float = 0.5
    edge_kernel: int = 7
    window: float | None = None
    level: float | None = None
    auto_percentiles: tuple[float, float] = (1.0, 99.0)
    auto_wl_smoothing: float = 0.0
    auto_region: float = 1.0
    flip_horizontal: bool = False
    flip_vertical: bool = False
    rotate_deg: int = 0
    invert: bool = False
    collimation: tuple[int, int, int, int] | None = None
    frame_counter: bool = True
    i0: float | None = None
    quanta_per_unit: float = 1.0

    def __post_init__(self) -> None:
        def bad(field: str, expected: str, got: Any) -> ValueError:
            return ValueError(f"ChainSettings.{field}: expected {expected}, got {got!r}")

        if not 0.0 <= self.recursive_strength < 1.0:
            raise bad("recursive_strength", "a number in [0, 1)", self.recursive_strength)
        if not self.motion_threshold > 0.0:
            raise bad("motion_threshold", "a positive number of noise SDs", self.motion_threshold)
        if not self.motion_ramp > 0.0:
            raise bad("motion_ramp", "a positive number of noise SDs", self.motion_ramp)
        if not self.denoise_strength >= 0.0:
            raise bad("denoise_strength", ">= 0", self.denoise_strength)
        if not self.edge_amount >= 0.0:
            raise bad("edge_amount", ">= 0", self.edge_amount)
        if int(self.edge_kernel) != self.edge_kernel or self.edge_kernel < 3 or self.edge_kernel % 2 == 0:
            raise bad("edge_kernel", "an odd integer >= 3", self.edge_kernel)
        if (self.window is None) != (self.level is None):
            raise bad("window/level", "both set (manual) or both None (automatic)", (self.window, self.level))
        if self.window is not None and not self.window > 0.0:
            raise bad("window", "a positive width", self.window)
        lo, hi = self.auto_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise bad("auto_percentiles", "(low, high) with 0 <= low < high <= 100", self.auto_percentiles)
        if not 0.0 <= self.auto_wl_smoothing < 1.0:
            raise bad("auto_wl_smoothing", "a number in [0, 1)", self.auto_wl_smoothing)
        if not 0.0 < self.auto_region <= 1.0:
            raise bad("auto_region", "a fraction in (0, 1]", self.auto_region)
        if self.rotate_deg not in (0, 90, 180, 270):
            raise bad("rotate_deg", "one of 0, 90, 180, 270", self.rotate_deg)
        if self.collimation is not None:
            if len(self.collimation) != 4:
                raise bad("collimation", "(row0, row1, col0, col1)", self.collimation)
            r0, r1, c0, c1 = self.collimation
            if not (0 <= r0 < r1 and 0 <= c0 < c1):
                raise bad("collimation", "0 <= row0 < row1 and 0 <= col0 < col1", self.collimation)
        if self.i0 is not None and not self.i0 > 0.0:
            raise bad("i0", "a positive unattenuated level", self.i0)
        if not self.quanta_per_unit > 0.0:
            raise bad("quanta_per_unit", "a positive number", self.quanta_per_unit)


# --------------------------------------------------------------------------- kernels


@numba.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _clamp_and_sigma(frame, logp, log_i0, p_lo, p_hi, inv_gain, p_out, sigma_out):
    """p = log I0 - log I (logp holds log(max(I, MIN_QUANTA))), clamped; sigma = 1/sqrt(I g)."""
    rows, cols = frame.shape
    for r in numba.prange(rows):
        for c in range(cols):
            p = log_i0 - logp[r, c]
            p_out[r, c] = min(max(p, p_lo), p_hi)
            q = max(frame[r, c], _F32(MIN_QUANTA)) * inv_gain
            sigma_out[r, c] = _F32(1.0) / np.sqrt(q)


@numba.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _recursive_kernel(x, sigma, y_prev, y_out, sigma_out, a, thr, sd_mean, ramp):
    """One step of the motion-adaptive recursive filter (see ``recursive_filter``)."""
    rows, cols = x.shape
    inv_ramp = _F32(1.0) / ramp
    one = _F32(1.0)
    for r in numba.prange(rows):
        ra = max(r - 1, 0)
        rb = min(r + 1, rows - 1)
        colsum = np.empty(cols, dtype=np.float32)
        for c in range(cols):
            colsum[c] = (x[ra, c] - y_prev[ra, c]) + (x[r, c] - y_prev[r, c]) + (x[rb, c] - y_prev[rb, c])
        for c in range(cols):
            cl = max(c - 1, 0)
            cr = min(c + 1, cols - 1)
            dmean = (colsum[cl] + colsum[c] + colsum[cr]) * _F32(1.0 / 9.0)
            z = abs(dmean) / (sigma[r, c] * sd_mean)
            m = min(max((z - thr) * inv_ramp, _F32(0.0)), one)
            k = a + (one - a) * m
            yp = y_prev[r, c]
            y_out[r, c] = yp + k * (x[r, c] - yp)
            sigma_out[r, c] = sigma[r, c] * np.sqrt(k / (_F32(2.0) - k))


@numba.njit(cache=True, fastmath=True, inline="always")
def _range_w(d, inv_h2):
    return max(_F32(1.0) - d * d * inv_h2, _F32(0.0))


@numba.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _denoise_kernel(src, sigma, dst, hscale):
    rows, cols = src.shape
    wd = _F32(0.7)  # diagonal neighbours: spatial weight
    for r in numba.prange(rows):
        ra = max(r - 1, 0)
        rb = min(r + 1, rows - 1)
        for c in range(cols):
            cl = max(c - 1, 0)
            cr = min(c + 1, cols - 1)
            v = src[r, c]
            h = hscale * sigma[r, c]
            inv_h2 = _F32(1.0) / (h * h)
            num = v
            den = _F32(1.0)
            u = src[ra, c]; w = _range_w(u - v, inv_h2); num += w * u; den += w
            u = src[rb, c]; w = _range_w(u - v, inv_h2); num += w * u; den += w
            u = src[r, cl]; w = _range_w(u - v, inv_h2); num += w * u; den += w
            u = src[r, cr]; w = _range_w(u - v, inv_h2); num += w * u; den += w
            u = src[ra, cl]; w = wd * _range_w(u - v, inv_h2); num += w * u; den += w
            u = src[ra, cr]; w = wd * _range_w(u - v, inv_h2); num += w * u; den += w
            u = src[rb, cl]; w = wd * _range_w(u - v, inv_h2); num += w * u; den += w
            u = src[rb, cr]; w = wd * _range_w(u - v, inv_h2); num += w * u; den += w
            dst[r, c] = num / den


@numba.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _box_rows_kernel(src, tmp, half):
    """Horizontal running-sum box (width 2*half+1, replicated edges) into tmp (sums, not means)."""
    rows, cols = src.shape
    for r in numba.prange(rows):
        s = _F32(0.0)
        for j in range(-half, half + 1):
            s += src[r, min(max(j, 0), cols - 1)]
        tmp[r, 0] = s
        for c in range(1, cols):
            s += src[r, min(c + half, cols - 1)] - src[r, max(c - half - 1, 0)]
            tmp[r, c] = s


@numba.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _unsharp_cols_kernel(src, tmp, dst, half, amount):
    rows, cols = src.shape
    inv_n = _F32(1.0) / _F32((2 * half + 1) * (2 * half + 1))
    for r in numba.prange(rows):
        acc = np.zeros(cols, dtype=np.float32)
        for j in range(r - half, r + half + 1):
            rr = min(max(j, 0), rows - 1)
            for c in range(cols):
                acc[c] += tmp[rr, c]
        for c in range(cols):
            s = src[r, c]
            dst[r, c] = s + amount * (s - acc[c] * inv_n)


@numba.njit(cache=True, fastmath=False, nogil=True)
def _percentiles_kernel(img, r0, r1, c0, c1, step, q_lo, q_hi, nbins):
    """Two percentiles (in %) of img[r0:r1:step, c0:c1:step] from a fine histogram."""
    vmin = np.inf
    vmax = -np.inf
    n = 0
    for r in range(r0, r1, step):
        for c in range(c0, c1, step):
            v = img[r, c]
            if v < vmin:
                vmin = v
            if v > vmax:
                vmax = v
            n += 1
    if not vmax > vmin:
        return float(vmin), float(vmax)
    hist = np.zeros(nbins, dtype=np.int64)
    scale = nbins / (vmax - vmin)
    for r in range(r0, r1, step):
        for c in range(c0, c1, step):
            b = int((img[r, c] - vmin) * scale)
            if b >= nbins:
                b = nbins - 1
            hist[b] += 1
    out = np.empty(2)
    for qi in range(2):
        target = (q_lo if qi == 0 else q_hi) * 0.01 * n
        cum = 0.0
        val = vmax
        for b in range(nbins):
            h = hist[b]
            if cum + h >= target and h > 0:
                val = vmin + (b + (target - cum) / h) / scale
                break
            cum += h
        out[qi] = val
    return out[0], out[1]


# no fastmath: contracting ``t * 255 + 0.5`` into a fused multiply-add in the vectorised body
# but not in the loop's remainder rounds a pixel differently by where it falls in its row,
# and flips/rotations must be exact permutations of the picture (numba 0.68: one grey level)
@numba.njit(parallel=True, cache=True, fastmath=False, nogil=True)
def _display_kernel(src, out, lo, inv_range, invert, flip_h, flip_v, rot_k, r0, r1, c0, c1, fill):
    rows, cols = src.shape
    orows, ocols = out.shape
    for ii in numba.prange(orows):
        i = np.int64(ii)
        for jj in range(ocols):
            j = np.int64(jj)
            if rot_k == 0:
                fr = i
                fc = j
            elif rot_k == 1:
                fr = rows - 1 - j
                fc = i
            elif rot_k == 2:
                fr = rows - 1 - i
                fc = cols - 1 - j
            else:
                fr = j
                fc = cols - 1 - i
            sr = rows - 1 - fr if flip_v else fr
            sc = cols - 1 - fc if flip_h else fc
            if sr < r0 or sr >= r1 or sc < c0 or sc >= c1:
                out[i, j] = fill
            else:
                t = (src[sr, sc] - lo) * inv_range
                t = min(max(t, _F32(0.0)), _F32(1.0))
                if not invert:
                    t = _F32(1.0) - t
                out[i, j] = np.uint8(t * _F32(255.0) + _F32(0.5))


# --------------------------------------------------------------------------- stage functions


def _as_frame(frame: np.ndarray, name: str = "frame") -> np.ndarray:
    arr = np.asarray(frame)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D array (rows, cols), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name}: expected real numbers (detected quanta), got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def log_normalize(
    frame: np.ndarray, i0: float, quanta_per_unit: float = 1.0,
    out: np.ndarray | None = None, sigma_out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Attenuation ``p = -ln(I / i0)`` (clamped) and its per-pixel quantum-noise SD.

    Returns ``(p, sigma)``, both float32 like ``frame``; ``sigma = 1 / sqrt(I g)``
    with ``g = quanta_per_unit`` (the SD of ``-ln`` of a Poisson count of mean I).
    """
    f = _as_frame(frame)
    if not i0 > 0:
        raise ValueError(f"log_normalize: i0 must be a positive unattenuated level, got {i0!r}")
    if out is None:
        out = np.empty_like(f)
    if sigma_out is None:
        sigma_out = np.empty_like(f)
    np.maximum(f, _F32(MIN_QUANTA), out=out)
    np.log(out, out=out)
    _clamp_and_sigma(f, out, _F32(math.log(i0)), _F32(-MAX_NEGATIVE_LOG),
                     _F32(math.log(i0 / MIN_QUANTA)), _F32(1.0 / quanta_per_unit), out, sigma_out)
    return out, sigma_out


def recursive_filter(
    x: np.ndarray, sigma: np.ndarray, y_prev: np.ndarray | None, weight: float,
    motion_threshold: float = 3.0, adaptive: bool = True,
    out: np.ndarray | None = None, sigma_out: np.ndarray | None = None, motion_ramp: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One step of the (motion-adaptive) first-order recursive filter.

    ``y = y_prev + k (x - y_prev)``; ``weight`` is ``a``, the value of ``k`` at a still
    pixel (1 = no filtering). With ``adaptive`` the gain ``k`` rises linearly from
    ``a`` to 1 as ``z = |mean_3x3(x - y_prev)| / SD`` goes from ``T`` to ``T + motion_ramp``, with
    the SD taken as ``sigma * sqrt(2 / (2 - a)) / 3`` (steady-state noise of the
    difference, averaged over 9 pixels). ``y_prev=None`` starts the filter (``y = x``).
    Returns ``(y, sigma_y)`` where ``sigma_y = sigma * sqrt(k / (2 - k))`` is the
    steady-state noise SD left at each pixel.
    """
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"recursive_filter: weight must be in (0, 1], got {weight!r}")
    if out is None:
        out = np.empty_like(x)
    if sigma_out is None:
        sigma_out = np.empty_like(x)
    if y_prev is None or weight >= 1.0:
        out[...] = x
        sigma_out[...] = sigma
        return out, sigma_out
    if y_prev.shape != x.shape:
        raise ValueError(f"recursive_filter: y_prev shape {y_prev.shape} differs from x shape {x.shape}")
    if np.may_share_memory(out, y_prev):
        raise ValueError("recursive_filter: out must not share memory with y_prev (the kernel reads neighbours)")
    thr = motion_threshold if adaptive else 1e30
    sd_mean = math.sqrt(2.0 / (2.0 - weight)) / 3.0
    _recursive_kernel(x, sigma, y_prev, out, sigma_out, _F32(weight), _F32(thr), _F32(sd_mean), _F32(motion_ramp))
    return out, sigma_out


def denoise(src: np.ndarray, sigma: np.ndarray, strength: float, out: np.ndarray | None = None) -> np.ndarray:
    """Edge-preserving 3x3 range filter; neighbours differing by more than
    ``h = 3 * strength * sigma`` get no weight (quadratic range kernel)."""
    if out is None:
        out = np.empty_like(src)
    if strength <= 0.0:
        out[...] = src
        return out
    _denoise_kernel(src, sigma, out, _F32(3.0 * strength))
    return out


def edge_enhance(src: np.ndarray, amount: float, kernel: int, out: np.ndarray | None = None,
                 tmp: np.ndarray | None = None) -> np.ndarray:
    """Unsharp mask ``src + amount (src - box_kernel(src))`` (replicated edges)."""
    if out is None:
        out = np.empty_like(src)
    if amount <= 0.0:
        out[...] = src
        return out
    if tmp is None:
        tmp = np.empty_like(src)
    half = int(kernel) // 2
    _box_rows_kernel(src, tmp, half)
    _unsharp_cols_kernel(src, tmp, out, half, _F32(amount))
    return out


def _field(shape: tuple[int, int], collimation: tuple[int, int, int, int] | None) -> tuple[int, int, int, int]:
    rows, cols = shape
    if collimation is None:
        return 0, rows, 0, cols
    r0, r1, c0, c1 = collimation
    r0, r1 = min(r0, rows), min(r1, rows)
    c0, c1 = min(c0, cols), min(c1, cols)
    if r1 <= r0 or c1 <= c0:
        raise ValueError(f"ChainSettings.collimation: {collimation} leaves no pixels of a {rows}x{cols} frame")
    return r0, r1, c0, c1


def _continue_field(p: np.ndarray, sigma: np.ndarray, field: tuple[int, int, int, int]) -> None:
    """Outside the collimated field, in place: the field's edge rows and columns carried out
    to the frame's edges. The blocked edges hold no image (the display shows them black), and
    the spatial filters must not see a step there: edge enhancement would draw a bright line
    along every blade."""
    r0, r1, c0, c1 = field
    for a in (p, sigma):
        a[:r0] = a[r0]
        a[r1:] = a[r1 - 1]
        a[:, :c0] = a[:, c0:c0 + 1]
        a[:, c1:] = a[:, c1 - 1:c1]


def auto_window(img: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0),
                collimation: tuple[int, int, int, int] | None = None) -> tuple[float, float]:
    """The two ``percentiles`` of ``img`` inside the collimated field, ``(low, high)``.

    Computed from a 2048-bin histogram of a regular subsample of about 65 000 pixels
    (interpolated within the bin)."""
    r0, r1, c0, c1 = _field(img.shape, collimation)
    step = max(1, int(math.sqrt((r1 - r0) * (c1 - c0) / 65536.0)))
    lo, hi = _percentiles_kernel(img, r0, r1, c0, c1, step, float(percentiles[0]), float(percentiles[1]), 2048)
    return float(lo), float(hi)


def display_shape(shape: tuple[int, int], rotate_deg: int) -> tuple[int, int]:
    rows, cols = shape
    return (cols, rows) if rotate_deg in (90, 270) else (rows, cols)


def render_display(
    img: np.ndarray, low: float, high: float, settings: ChainSettings, out: np.ndarray | None = None,
) -> np.ndarray:
    """Window ``[low, high]`` (attenuation) to 0..255, flips, rotation and virtual collimation.

    With ``settings.invert`` False ``low`` (least attenuation) is white and ``high`` black.
    """
    oshape = display_shape(img.shape, settings.rotate_deg)
    if out is None:
        out = np.empty(oshape, dtype=np.uint8)
    r0, r1, c0, c1 = _field(img.shape, settings.collimation)
    span = high - low
    inv_range = 1.0 / span if span > 1e-12 else 1e12
    _display_kernel(img, out, _F32(low), _F32(inv_range), settings.invert, settings.flip_horizontal,
                    settings.flip_vertical, settings.rotate_deg // 90, r0, r1, c0, c1, np.uint8(0))
    return out


# --------------------------------------------------------------------------- counter overlay

_FONT_3X5 = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", "###", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
}
_GLYPHS = {d: np.array([[ch == "#" for ch in row] for row in rows], dtype=bool) for d, rows in _FONT_3X5.items()}
_COUNTER_DIGITS = 6


@functools.lru_cache(maxsize=64)
def _glyph(ch: str, scale: int) -> np.ndarray:
    g = _GLYPHS[ch]
    return np.kron(g, np.ones((scale, scale), dtype=bool)) if scale > 1 else g


def _counter_scale(display_shape_: tuple[int, int]) -> int:
    return max(1, min(display_shape_) // 256)


def counter_box(display_shape_: tuple[int, int], n_digits: int) -> tuple[int, int, int, int]:
    """``(row0, row1, col0, col1)`` of the counter overlay (black box included) on a display."""
    s = _counter_scale(display_shape_)
    margin, pad = 2 * s, s
    height = 5 * s + 2 * pad
    width = n_digits * 4 * s - s + 2 * pad
    rows, cols = display_shape_
    return margin, min(margin + height, rows), margin, min(margin + width, cols)


def draw_counter(display: np.ndarray, number: int) -> tuple[int, int, int, int]:
    """Draw ``number`` (white on black, 3x5 font scaled with the image) in the top-left corner.

    Returns the box it touched, ``(row0, row1, col0, col1)``."""
    text = str(int(number) % 10**_COUNTER_DIGITS)
    box = counter_box(display.shape, len(text))
    r0, r1, c0, c1 = box
    display[r0:r1, c0:c1] = 0
    s = _counter_scale(display.shape)
    gy = r0 + s
    for i, ch in enumerate(text):
        g = _glyph(ch, s)
        gx = c0 + s + i * 4 * s
        sub = display[gy:gy + g.shape[0], gx:gx + g.shape[1]]
        sub[g[:sub.shape[0], :sub.shape[1]]] = 255
    return box


# --------------------------------------------------------------------------- the chain


def _meta_get(meta: Any, name: str, default: Any = None) -> Any:
    if meta is None:
        return default
    if isinstance(meta, Mapping):
        return meta.get(name, default)
    return getattr(meta, name, default)


class ImageChain:
    """The stateful image chain: ``process(frame, meta) -> uint8 display``.

    State: the temporal filter's running image, the flat-field (I0) estimate and the
    automatic window/level (all cleared by ``reset()``, to be called when the C-arm
    or table moves), and the last displayed image for last-image hold (kept across
    ``reset()``). Frames of a new shape reset the temporal state by themselves.

    ``meta`` may be a mapping or an object with attributes; the chain reads
    ``i0`` (unattenuated level, frame units) and ``frame_number`` (shown by the
    counter; default: frames processed by this chain, from 1). The settings can be
    swapped at any time (``chain.settings = ...`` or ``chain.update(...)``).
    """

    STAGES = ("log", "temporal", "denoise", "edge", "window", "display", "overlay", "hold")

    def __init__(self, settings: ChainSettings | None = None) -> None:
        self.settings = settings if settings is not None else ChainSettings()
        self.frames_processed = 0
        self.last_timings_ms: dict[str, float] = {}
        self.window_level: tuple[float, float] | None = None  # (window, level) last used
        self._shape: tuple[int, int] | None = None
        self._hold: np.ndarray | None = None
        self._hold_float: np.ndarray | None = None
        self._hold_number = 0
        self.reset()

    # ---------------------------------------------------------------- state
    def update(self, **changes: Any) -> ChainSettings:
        """Replace some settings (validated); returns the new settings."""
        self.settings = replace(self.settings, **changes)
        return self.settings

    def reset(self, clear_hold: bool = False) -> None:
        """Forget the temporal state (call on C-arm / table move); keeps LIH unless asked."""
        self._y: np.ndarray | None = None
        self._i0_estimate: float | None = None
        self._auto_wl: tuple[float, float] | None = None
        if clear_hold:
            self._hold = None
            self._hold_float = None

    @property
    def last_image_hold(self) -> np.ndarray | None:
        """A copy of the last displayed image (uint8), or None before the first frame."""
        return None if self._hold is None else self._hold.copy()

    @property
    def last_processed(self) -> np.ndarray | None:
        """The last processed image before window/level (float32 attenuation units), a copy."""
        return None if self._hold_float is None else self._hold_float.copy()

    def _alloc(self, shape: tuple[int, int]) -> None:
        self._shape = shape
        mk = lambda: np.empty(shape, dtype=np.float32)  # noqa: E731
        self._p, self._sig, self._sig_f, self._den, self._enh, self._tmp = mk(), mk(), mk(), mk(), mk(), mk()
        self._ybufs = (mk(), mk())
        self._ysel = 0
        self.reset()

    def _i0_for(self, frame: np.ndarray, meta: Any) -> float:
        s = self.settings
        if s.i0 is not None:
            return float(s.i0)
        i0 = _meta_get(meta, "i0")
        if i0 is not None:
            if not float(i0) > 0:
                raise ValueError(f"meta['i0']: expected a positive unattenuated level, got {i0!r}")
            return float(i0)
        r0, r1, c0, c1 = _field(frame.shape, s.collimation)
        step = max(1, int(math.sqrt((r1 - r0) * (c1 - c0) / 4096.0)))
        est = float(np.percentile(frame[r0:r1:step, c0:c1:step], _FLAT_FIELD_PERCENTILE))
        est = max(est, 1.0)
        if self._i0_estimate is None:
            self._i0_estimate = est
        else:
            self._i0_estimate += _FLAT_FIELD_SMOOTHING * (est - self._i0_estimate)
        return self._i0_estimate

    # ---------------------------------------------------------------- processing
    def process(self, frame: np.ndarray, meta: Any = None) -> np.ndarray:
        """Run one frame through the chain; returns the display image (uint8, rows x cols
        after rotation). A copy of it is kept as the last-image hold."""
        clock = time.perf_counter
        t = [clock()]
        s = self.settings
        f = _as_frame(frame)
        if f.shape != self._shape:
            self._alloc(f.shape)

        i0 = self._i0_for(f, meta)
        x, sig = log_normalize(f, i0, s.quanta_per_unit, out=self._p, sigma_out=self._sig)
        if s.collimation is not None:
            _continue_field(x, sig, _field(x.shape, s.collimation))
        t.append(clock())

        y_out = self._ybufs[self._ysel]
        y, sig_f = recursive_filter(x, sig, self._y, 1.0 - s.recursive_strength, s.motion_threshold,
                                    out=y_out, sigma_out=self._sig_f, motion_ramp=s.motion_ramp)
        self._y = y
        self._ysel ^= 1
        t.append(clock())

        d = denoise(y, sig_f, s.denoise_strength, out=self._den) if s.denoise_strength > 0 else y
        t.append(clock())
        e = edge_enhance(d, s.edge_amount, s.edge_kernel, out=self._enh, tmp=self._tmp) if s.edge_amount > 0 else d
        t.append(clock())

        low, high = self._window(e)
        t.append(clock())
        disp = render_display(e, low, high, s)
        t.append(clock())

        self.frames_processed += 1
        number = _meta_get(meta, "frame_number")
        if number is None:
            number = self.frames_processed
        if s.frame_counter:
            draw_counter(disp, number)
        t.append(clock())

        self._hold = disp.copy()  # the caller may draw on what it gets back
        spare = self._hold_float if self._hold_float is not None and self._hold_float.shape == e.shape else None
        if e is self._enh:  # swap buffers instead of copying the float image
            self._enh, self._hold_float = (spare if spare is not None else np.empty_like(e)), e
        elif e is self._den:
            self._den, self._hold_float = (spare if spare is not None else np.empty_like(e)), e
        else:  # e is the temporal state itself: copy
            self._hold_float = spare if spare is not None else np.empty_like(e)
            np.copyto(self._hold_float, e)
        self._hold_number = number
        t.append(clock())
        self.last_timings_ms = {name: (t[i + 1] - t[i]) * 1e3 for i, name in enumerate(self.STAGES)}
        self.last_timings_ms["total"] = (t[-1] - t[0]) * 1e3
        return disp

    def _window(self, img: np.ndarray) -> tuple[float, float]:
        s = self.settings
        if s.window is not None:
            low, high = s.level - 0.5 * s.window, s.level + 0.5 * s.window
        else:
            r0, r1, c0, c1 = _field(img.shape, s.collimation)
            if s.auto_region < 1.0:
                mr = int((r1 - r0) * (1 - s.auto_region) / 2)
                mc = int((c1 - c0) * (1 - s.auto_region) / 2)
                r0, r1, c0, c1 = r0 + mr, r1 - mr, c0 + mc, c1 - mc
            low, high = auto_window(img, s.auto_percentiles, (r0, r1, c0, c1))
            if self._auto_wl is not None and s.auto_wl_smoothing > 0:
                w = s.auto_wl_smoothing
                low = w * self._auto_wl[0] + (1 - w) * low
                high = w * self._auto_wl[1] + (1 - w) * high
            self._auto_wl = (low, high)
        self.window_level = (high - low, 0.5 * (high + low))
        return low, high

    def redisplay(self) -> np.ndarray | None:
        """Re-render the held image with the current display settings (window/level,
        flip/rotate, collimation, counter) -- e.g. adjusting the LIH after the pedal is
        released. Updates and returns the last-image hold."""
        if self._hold_float is None:
            return None
        low, high = self._window(self._hold_float)
        disp = render_display(self._hold_float, low, high, self.settings)
        if self.settings.frame_counter:
            draw_counter(disp, self._hold_number)
        self._hold = disp
        return disp.copy()
