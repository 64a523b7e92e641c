"""Vertebra detection and level labelling in AP and lateral frames.

Pipeline (classical; the image scale comes from the known geometry, so every size below
is in millimetres at the isocentre):

1. **Orientation.** From the projection of the patient's axes the frame is classified as
   lateral (the anterior direction runs across the image) or AP/PA, and flipped, if need be,
   so that superior is up and, in laterals, anterior is to the left.
2. **Disc candidates.** Intervertebral discs are radiolucent bands between the dark bodies.
   A bank of oriented filters on the quarter-resolution frame (bright-band curvature across
   the band, smoothed along it) gives per-pixel band strength and direction; its local maxima,
   with their extent along the band, are disc candidates.
   **Learned heat map** (used where ``models/disc_heatmap.npz`` has a model for the view
   kind): the local contrast and the band response are resampled to a 2 mm grid and
   correlated with a linear template (logistic regression trained on development phantoms by
   ``train_levels --heatmap``, AP frames with a needle in); its peaks, chained one body height
   apart (dynamic programming, a skipped disc allowed at a cost), are the interspaces. This
   replaces steps 2-3 below, whose hand-made band filters confuse transverse processes,
   pedicles and the needle with discs in AP views.
3. **The column.** A chain of candidates stacked like a spine (consecutive discs one body
   height apart along their normals, little offset along them, slowly turning) is chosen by
   dynamic programming; a missing disc may be skipped at a cost.
4. **Endplates.** Each disc of the chain is refined at full resolution: along its normal, at
   several positions across it, the sub-pixel edges of the two endplates (the steepest
   dark-to-bright steps bounding the bright band) are located and a straight line is fitted
   to each (these lines feed ``interspace``).
5. **Labels.** The chain is named by its anchors, strongest first: the sacrum (below the
   lowest disc there is no further disc but a large dense block: S1), the iliac crests
   (their tops lie at the L4-L5 interspace, Tuffier's line), and the last rib (T12). Where
   anchors disagree, the sacrum wins; with no anchor the labels are a guess and flagged so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from openfluoro.geometry.carm import Geometry
from openfluoro.guidance import _filters as F
from openfluoro.guidance.needle import image_direction

LEVEL_NAMES = ("T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1")
DISC_LEVELS = ("T11-T12", "T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")


@dataclass(frozen=True)
class ViewFrame:
    """How a frame relates to the patient: view kind, flips to the normalised orientation
    (superior up; anterior left in laterals), and image scale at the isocentre."""

    kind: str                  # "lateral" or "ap"
    flip_x: bool
    flip_y: bool
    px_per_mm: float           # full-resolution pixels per mm at the isocentre plane
    rows: int
    cols: int

    def to_norm(self, pts) -> np.ndarray:
        p = np.array(pts, float, ndmin=2)
        if self.flip_x:
            p[:, 0] = self.cols - 1 - p[:, 0]
        if self.flip_y:
            p[:, 1] = self.rows - 1 - p[:, 1]
        return p

    from_norm = to_norm        # the flips are their own inverse

    def norm_image(self, image: np.ndarray) -> np.ndarray:
        a = image
        if self.flip_x:
            a = a[:, ::-1]
        if self.flip_y:
            a = a[::-1]
        return np.ascontiguousarray(a)


def view_frame(geometry: Geometry, shape: tuple[int, int]) -> ViewFrame:
    rows, cols = shape
    c = ((cols - 1) / 2.0, (rows - 1) / 2.0)
    ant = image_direction(geometry, c, (0.0, -1.0, 0.0))
    sup = image_direction(geometry, c, (0.0, 0.0, 1.0))
    lateral = abs(ant[0]) > 0.5 * float(np.hypot(*sup))
    flip_x = bool(lateral and ant[0] > 0)
    flip_y = bool(sup[1] > 0)
    return ViewFrame("lateral" if lateral else "ap", flip_x, flip_y, float(geometry.px_per_mm_at_isocentre), rows, cols)


@dataclass
class DiscCandidate:
    x: float                   # normalised quarter-resolution pixels
    y: float
    angle: float               # radians; band direction (0 = horizontal, + toward +rows)
    length_mm: float
    strength: float

    @property
    def along(self) -> np.ndarray:
        return np.array([math.cos(self.angle), math.sin(self.angle)])

    @property
    def normal(self) -> np.ndarray:          # pointing down (+rows)
        return np.array([-math.sin(self.angle), math.cos(self.angle)])


@dataclass(frozen=True)
class Endplate:
    """A straight endplate edge in image pixels (original orientation): two end points."""

    p0: tuple[float, float]
    p1: tuple[float, float]

    @property
    def midpoint(self) -> np.ndarray:
        return 0.5 * (np.asarray(self.p0) + np.asarray(self.p1))


@dataclass(frozen=True)
class Disc:
    """An interspace: its centre, the inferior endplate of the vertebra above (``upper``) and
    the superior endplate of the one below (``lower``), in image pixels."""

    name: str | None
    centre_px: tuple[float, float]
    upper: Endplate | None
    lower: Endplate | None
    strength: float
    #: measurement frame in the original image (px): the disc's front (anterior in laterals)
    #: and back margins on its mid-line, and its refined form in normalised coordinates
    front_px: tuple[float, float] | None = None
    back_px: tuple[float, float] | None = None
    refined: "RefinedDisc | None" = field(default=None, repr=False, compare=False)
    #: True for an interspace not seen but placed from its named neighbours (for naming the
    #: level of a needle; it has no endplates and is never measured)
    predicted: bool = False


@dataclass(frozen=True)
class Vertebra:
    name: str | None
    centre_px: tuple[float, float]
    superior: Endplate | None = None
    inferior: Endplate | None = None


@dataclass(frozen=True)
class LevelResult:
    """Vertebrae and interspaces found in one frame, named where anchors allow."""

    view: str
    discs: tuple[Disc, ...]
    vertebrae: tuple[Vertebra, ...]
    anchor: str                    # "sacrum", "iliac_crest", "ribs", or "none"
    confidence: float
    frame: ViewFrame | None = None
    notes: tuple[str, ...] = ()
    #: AP views: the column's mid-line, one (col, row) image point per quarter-resolution row
    axis_px: tuple[tuple[float, float], ...] = ()
    #: names taken from a lateral (``transfer_names``): (the AP's own name, the lateral's) for
    #: each interspace the two views name differently -- one of the two counts is wrong
    name_conflicts: tuple[tuple[str, str], ...] = ()
    #: (shift, log-score): how well the naming model supports every name moved by ``shift``
    #: levels (0: the names given), for weighing this view's count against another view's
    name_shift_scores: tuple[tuple[int, float], ...] = ()

    def disc(self, name: str) -> Disc | None:
        return next((d for d in self.discs if d.name == name), None)

    def vertebra(self, name: str) -> Vertebra | None:
        return next((v for v in self.vertebrae if v.name == name), None)

    def to_dict(self) -> dict:
        return {"view": self.view, "anchor": self.anchor, "confidence": self.confidence,
                "vertebrae": [{"name": v.name, "centre_px": list(v.centre_px)} for v in self.vertebrae],
                "discs": [{"name": d.name, "centre_px": list(d.centre_px)} for d in self.discs],
                "notes": list(self.notes)}


# ---------------------------------------------------------------------------------------------
SCALE = 4                                   # quarter resolution for the coarse stages
#: the steepest step of an endplate edge lies this far inside the disc from the endplate
#: surface (calibrated on development laterals: mean middle height -0.9 mm without it)
ENDPLATE_INSET_MM = 0.45
ANGLES = np.radians(np.arange(-45.0, 45.1, 7.5))


def _quarter(img: np.ndarray) -> np.ndarray:
    r, c = img.shape[0] // SCALE * SCALE, img.shape[1] // SCALE * SCALE
    a = img[:r, :c].astype(np.float32)
    return a.reshape(r // SCALE, SCALE, c // SCALE, SCALE).mean(axis=(1, 3))


def _local_contrast(a: np.ndarray, sigma: float, floor: float = 6.0) -> np.ndarray:
    """(a - local mean) / (local SD + floor): equalises bands in dark (pelvis) and bright regions."""
    m = F.blur(a, sigma)
    v = F.blur((a - m) ** 2, sigma)
    return ((a - m) / (np.sqrt(np.maximum(v, 0.0)) + floor) * 40.0).astype(np.float32)


def disc_candidates(small: np.ndarray, px_per_mm_small: float, kind: str) -> tuple[list[DiscCandidate], np.ndarray]:
    """Local maxima of the oriented bright-band response (normalised quarter-res image)."""
    s_along = 7.0 * px_per_mm_small
    s_across = 2.2 * px_per_mm_small
    bank = F.oriented_bands(_local_contrast(small, 12.0 * px_per_mm_small), ANGLES, s_along, s_across)
    D = bank.max(axis=0)
    A = bank.argmax(axis=0)
    from scipy import ndimage

    size = int(round(9.0 * px_per_mm_small)) | 1
    mx = ndimage.maximum_filter(D, size=size)
    thr = max(float(np.quantile(D, 0.85)), 1e-3)
    rows, cols = D.shape
    peaks = np.argwhere((D >= mx) & (D > thr))
    out = []
    for y, x in peaks:
        k = int(A[y, x])
        a = float(ANGLES[k])
        v = np.array([math.cos(a), math.sin(a)])
        ext = []
        for sgn in (1.0, -1.0):
            s = 0.0
            while True:
                p = np.array([x, y], float) + sgn * (s + 1.0) * v
                xi, yi = int(round(p[0])), int(round(p[1]))
                if not (0 <= xi < cols and 0 <= yi < rows) or bank[k, yi, xi] < 0.4 * D[y, x]:
                    break
                s += 1.0
            ext.append(s)
        out.append(DiscCandidate(float(x), float(y), a,
                                 float((ext[0] + ext[1] + 1.0) / px_per_mm_small), float(D[y, x])))
    return out, bank


def column_axis(small: np.ndarray, pxs: float, widths_mm=(36.0, 44.0, 52.0)) -> np.ndarray:
    """Column (x, quarter-res px) of the vertebral bodies per row of a normalised AP frame:
    a dark band of body width between brighter flanks, followed row to row by dynamic
    programming (at most one pixel per row)."""
    a = F.blur(small, 1.0)
    a = np.minimum(a, np.quantile(a, 0.5))          # keep bright soft tissue from dominating
    rows, cols = a.shape
    cs = np.cumsum(np.pad(a, ((0, 0), (1, 0))), axis=1)
    G = max(2, int(round(8.0 * pxs)))
    R = np.full((rows, cols), -1e6, np.float64)
    for Wmm in widths_mm:
        h = max(2, int(round(Wmm * pxs / 2)))
        x = np.arange(h + G, cols - h - G)
        if len(x) == 0:
            continue
        inner = (cs[:, x + h] - cs[:, x - h]) / (2 * h)
        outer = 0.5 * ((cs[:, x - h] - cs[:, x - h - G]) / G + (cs[:, x + h + G] - cs[:, x + h]) / G)
        R[:, x] = np.maximum(R[:, x], outer - inner)
    R = np.clip(R, -30.0, 60.0)
    score = R[0].copy()
    back = np.zeros((rows, cols), np.int64)
    idx = np.arange(cols)
    for r in range(1, rows):
        best = score.copy()
        arg = idx.copy()
        for dlt in (-1, 1):
            sh = np.full(cols, -1e18)
            if dlt > 0:
                sh[dlt:] = score[:-dlt] - 0.5
            else:
                sh[:dlt] = score[-dlt:] - 0.5
            better = sh > best
            best[better] = sh[better]
            arg[better] = idx[better] - dlt
        score = best + R[r]
        back[r] = arg
    x = np.zeros(rows, np.int64)
    x[-1] = int(np.argmax(score))
    for r in range(rows - 1, 0, -1):
        x[r - 1] = back[r, x[r]]
    return x.astype(float)


def _chain(cands: list[DiscCandidate], px_per_mm_small: float, kind: str) -> list[DiscCandidate]:
    """The most spine-like chain of candidates (top to bottom) by dynamic programming."""
    if not cands:
        return []
    Lmin, Lmax = (18.0, 70.0) if kind == "lateral" else (20.0, 75.0)
    good = [c for c in cands if Lmin <= c.length_mm <= Lmax]
    if not good:
        return []
    good.sort(key=lambda c: c.y)
    smax = max(c.strength for c in good)
    node = [c.strength / smax * min(1.0, c.length_mm / 32.0) for c in good]
    n = len(good)
    score = list(node)
    prev = [-1] * n
    step_lo, step_hi = 24.0, 52.0
    for j in range(n):
        for i in range(j):
            a, b = good[i], good[j]
            d = np.array([b.x - a.x, b.y - a.y]) / px_per_mm_small
            nrm = 0.5 * (a.normal + b.normal)
            nrm /= np.linalg.norm(nrm)
            along = np.array([nrm[1], -nrm[0]])
            dn = float(d @ nrm)
            dt = float(d @ along)
            dang = abs(math.degrees(a.angle - b.angle))
            gap = 0
            if step_lo <= dn <= step_hi:
                gap = 0
            elif 2 * step_lo <= dn <= 2 * step_hi:
                gap = 1
            else:
                continue
            if dang > 25.0 + 10.0 * gap or abs(dt) > 14.0 + 8.0 * gap:
                continue
            cand = score[i] + node[j] - 0.35 * gap - 0.004 * dt * dt / (1 + gap) - 0.0004 * dang * dang / (1 + gap)
            if cand > score[j]:
                score[j] = cand
                prev[j] = i
    j = int(np.argmax(score))
    chain = []
    while j >= 0:
        chain.append(good[j])
        j = prev[j]
    return chain[::-1]


def _extend(chain: list[DiscCandidate], bank: np.ndarray, pxs: float, kind: str,
            axis: np.ndarray | None = None) -> list[DiscCandidate]:
    """Grow the chain up and down: look for the next disc one body height beyond the last one
    along its normal (angle extrapolated), accepting weaker bands than the first pass."""
    if len(chain) < 2:
        return chain
    D = bank.max(axis=0)
    A = bank.argmax(axis=0)
    rows, cols = D.shape
    med = float(np.median([c.strength for c in chain]))
    out = list(chain)
    for direction in (+1, -1):
        misses = 0
        while True:
            a, b = (out[-2], out[-1]) if direction > 0 else (out[1], out[0])
            step = np.array([b.x - a.x, b.y - a.y])
            dist = float(np.hypot(*step))
            if dist > 60.0 * pxs:               # last step was a skip: use half of it
                step = step / 2.0
                dist /= 2.0
            dang = float(np.clip(b.angle - a.angle, -0.35, 0.35))
            ang = b.angle + dang
            nrm = np.array([-math.sin(ang), math.cos(ang)]) * direction
            base = np.array([b.x, b.y]) + (misses + 1) * dist * nrm
            best = None
            rad_n, rad_t = 10.0 * pxs, 12.0 * pxs
            along = np.array([math.cos(ang), math.sin(ang)])
            for dn in np.arange(-rad_n, rad_n + 0.1, 1.0):
                for dt in np.arange(-rad_t, rad_t + 0.1, 1.0):
                    p = base + dn * nrm + dt * along
                    xi, yi = int(round(p[0])), int(round(p[1]))
                    if not (0 <= xi < cols and 0 <= yi < rows):
                        continue
                    k = int(A[yi, xi])
                    if abs(ANGLES[k] - ang) > math.radians(22.0 if axis is None else 12.0):
                        continue
                    if axis is not None and (abs(xi - axis[yi]) > 10.0 * pxs or abs(ANGLES[k]) > math.radians(24)):
                        continue
                    v = float(D[yi, xi]) - 0.002 * (dn * dn + 0.5 * dt * dt) / pxs ** 2 * med
                    if best is None or v > best[0]:
                        best = (v, xi, yi, float(ANGLES[k]), float(D[yi, xi]))
            inside = 0 <= base[0] < cols and 0 <= base[1] < rows
            if best is not None and best[4] > 0.3 * med:
                c = DiscCandidate(float(best[1]), float(best[2]), best[3], 0.0, best[4])
                if direction > 0:
                    out.append(c)
                else:
                    out.insert(0, c)
                misses = 0
                continue
            misses += 1
            if misses > 1 or not inside:
                break
    return out


# ------------------------------------------------------------------ learned disc heat map
#: the heat map works on a fixed millimetre grid (isocentre scale), so one template fits all SIDs
GRID_MM = 2.0
#: template half-sizes in grid cells: (rows, cols)
TEMPLATE_HALF = (20, 12)
#: a refined disc whose centre is further than this from the heat-map peak is not used
HEATMAP_REFINE_TOL_MM = 4.0
#: ... and a band candidate's refinement is taken up to this far from the peak (the peak of a
#: lateral's lowest discs can sit a few mm off the band)
HEATMAP_BAND_TOL_MM = 7.0
DISC_MODEL_PATH = __import__("pathlib").Path(__file__).resolve().parent / "models" / "disc_heatmap.npz"


def heatmap_channels(small: np.ndarray, pxs: float, bank: np.ndarray | None = None) -> np.ndarray:
    """(C, rows, cols) feature channels on the GRID_MM grid of a normalised quarter-res frame:
    local contrast (12 mm) and the oriented bright-band response (horizontal-ish bands)."""
    from scipy import ndimage

    lc = _local_contrast(small, 12.0 * pxs)
    if bank is None:
        bank = F.oriented_bands(lc, ANGLES, 7.0 * pxs, 2.2 * pxs)
    D = bank.max(axis=0)
    D = D / (float(np.quantile(D, 0.99)) + 1e-6)
    lc = np.clip(lc / 40.0, -3.0, 3.0)
    k = GRID_MM * pxs                          # small pixels per grid cell
    rows, cols = small.shape
    gy = np.arange(0.0, rows - 1, k)
    gx = np.arange(0.0, cols - 1, k)
    Y, X = np.meshgrid(gy, gx, indexing="ij")
    ch = [ndimage.map_coordinates(c.astype(np.float32), [Y, X], order=1) for c in (lc, D)]
    return np.stack(ch).astype(np.float32)


def grid_to_small(p, pxs: float) -> np.ndarray:
    """Grid (col, row) -> quarter-resolution (x, y)."""
    return np.asarray(p, float) * GRID_MM * pxs


def template_windows(ch: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Feature vectors (flattened windows of all channels) at integer grid points (col, row)."""
    hr, hc = TEMPLATE_HALF
    C, R, Q = ch.shape
    pad = np.pad(ch, ((0, 0), (hr, hr), (hc, hc)))
    out = np.empty((len(pts), C * (2 * hr + 1) * (2 * hc + 1)), np.float32)
    for i, (x, y) in enumerate(np.asarray(pts, int)):
        out[i] = pad[:, y:y + 2 * hr + 1, x:x + 2 * hc + 1].ravel()
    return out


from functools import lru_cache as _lru_cache


@_lru_cache(maxsize=2)
def _disc_model(path: str):
    import os

    if not os.path.isfile(path):
        return {}
    with np.load(path) as z:
        return {k: (z[f"{k}_W"], float(z[f"{k}_b"])) for k in ("ap", "lateral") if f"{k}_W" in z}


def disc_heatmap(ch: np.ndarray, kind: str, path=DISC_MODEL_PATH) -> np.ndarray | None:
    """Logit of 'a disc centre here' per grid cell (a linear template, correlated by FFT)."""
    from scipy.signal import fftconvolve

    m = _disc_model(str(path)).get(kind)
    if m is None:
        return None
    W, b = m
    hr, hc = TEMPLATE_HALF
    W = W.reshape(ch.shape[0], 2 * hr + 1, 2 * hc + 1)
    S = np.full(ch.shape[1:], b, np.float64)
    for c in range(ch.shape[0]):
        S += fftconvolve(ch[c], W[c][::-1, ::-1], mode="same")
    return S.astype(np.float32)


def heatmap_chain(S: np.ndarray, kind: str, min_logit: float = -1.0) -> list[tuple[float, float, float]]:
    """Peaks of the heat map chained like a spine (top to bottom): (col, row, logit) on the grid.

    Two passes of dynamic programming: the first finds the body step from its strong links
    (both ends logit > 4), the second adds a penalty on steps that depart from it, so that a
    run of weak, closely stacked peaks (pelvis, femoral heads) cannot outscore the column."""
    from scipy import ndimage

    g = GRID_MM
    mx = ndimage.maximum_filter(S, size=int(round(9.0 / g)) | 1)
    pk = np.argwhere((S >= mx) & (S > min_logit))
    if len(pk) == 0:
        return []
    pk = pk[np.argsort(pk[:, 0], kind="stable")]
    v = np.array([float(S[r, c]) for r, c in pk])
    node = np.clip(v, -2.0, 6.0) - 0.5             # weak peaks do not pay for themselves
    n = len(pk)
    lo, hi = 22.0 / g, 50.0 / g
    # lateral: the lordosis moves consecutive interspaces across the image by up to ~20 mm
    dx_max, dx_pen = (12.0, 0.02) if kind == "ap" else (22.0, 0.006)

    def run(step):
        score = node.copy()
        prev = np.full(n, -1)
        for j in range(n):
            for i in range(j):
                dy = pk[j, 0] - pk[i, 0]
                dx = abs(pk[j, 1] - pk[i, 1])
                if lo <= dy <= hi:
                    gap = 0
                elif 2 * lo <= dy <= 2 * hi:
                    gap = 1
                else:
                    continue
                if dx > (dx_max + 8.0 * gap) / g:
                    continue
                c = score[i] + node[j] - 2.5 * gap - dx_pen * (dx * g) ** 2 / (1 + gap)
                if step is not None:
                    d = math.hypot(dx, dy) / (1 + gap)
                    c -= 20.0 * ((d - step) / step) ** 2
                if c > score[j]:
                    score[j], prev[j] = c, i
        j = int(np.argmax(score))
        idx = []
        while j >= 0:
            idx.append(j)
            j = prev[j]
        return idx[::-1]

    idx = run(None)
    strong = [math.hypot(*(pk[b] - pk[a])) for a, b in zip(idx[:-1], idx[1:])
              if v[a] > 4.0 and v[b] > 4.0 and lo <= pk[b, 0] - pk[a, 0] <= hi]
    if strong:
        idx = run(float(np.median(strong)))
    R, Q = S.shape

    def sub(a, b, c_):
        den = a - 2 * b + c_
        return float(np.clip(0.5 * (a - c_) / den, -0.5, 0.5)) if den < 0 else 0.0

    out = []
    for j in idx:
        r, c = pk[j]
        dr = sub(S[r - 1, c], S[r, c], S[r + 1, c]) if 0 < r < R - 1 else 0.0
        dc = sub(S[r, c - 1], S[r, c], S[r, c + 1]) if 0 < c < Q - 1 else 0.0
        out.append((c + dc, r + dr, float(S[r, c])))
    return out


@dataclass
class Dome:
    """The iliac crests seen from the side: a convex-up arc; its top (normalised full-res px)."""

    top: tuple[float, float]
    radius_mm: float
    span_mm: float
    score: float
    coef: tuple[float, float, float]        # y = a x^2 + b x + c (normalised quarter-res px)


def find_dome(small: np.ndarray, pxs: float, axis_x: float | None, rng: np.random.Generator | None = None) -> Dome | None:
    """The iliac-crest arc in a normalised lateral: RANSAC parabola through the strongest
    bright-above / dark-below edges, top within reach of the spine, radius 60-300 mm."""
    rng = rng or np.random.default_rng(12345)
    sm = F.blur(small, 1.5 * pxs)
    d = max(1, int(round(3 * pxs)))
    gy = np.zeros_like(sm)
    gy[d:-d] = sm[:-2 * d] - sm[2 * d:]
    rows, cols = sm.shape
    thr = float(np.quantile(gy, 0.9))
    up = gy[1:-1] >= np.maximum(gy[:-2], gy[2:])
    yy, xx = np.nonzero(up & (gy[1:-1] > thr))
    yy = yy + 1
    keep = yy > 0.12 * rows                  # not the top edge (end of the scanned body)
    pts = np.stack([xx[keep], yy[keep], gy[yy[keep], xx[keep]]], 1).astype(float)
    if len(pts) < 10:
        return None
    best = None
    for _ in range(500):
        i = rng.choice(len(pts), 3, replace=False)
        X, Y = pts[i, 0], pts[i, 1]
        A = np.stack([X ** 2, X, np.ones(3)], 1)
        try:
            c = np.linalg.solve(A, Y)
        except np.linalg.LinAlgError:
            continue
        a = c[0]
        if a <= 0:
            continue
        R = 1.0 / (2.0 * a) / pxs
        if not (60.0 < R < 300.0):
            continue
        x0 = -c[1] / (2 * a)
        y0 = c[2] - c[1] ** 2 / (4 * a)
        if not (0 <= x0 < cols and 0.12 * rows <= y0 < rows):
            continue
        if axis_x is not None and abs(x0 - axis_x) > 45.0 * pxs:
            continue
        res = np.abs(pts[:, 1] - (a * pts[:, 0] ** 2 + c[1] * pts[:, 0] + c[2]))
        inl = res < 1.5
        if inl.sum() < 8:
            continue
        xs = pts[inl, 0]
        span = (xs.max() - xs.min()) / pxs
        if span < 50.0:
            continue
        score = float(pts[inl, 2].sum())
        if best is None or score > best.score:
            best = Dome((float(x0 * SCALE + 1.5), float(y0 * SCALE + 1.5)), float(R), float(span), score,
                        (float(c[0]), float(c[1]), float(c[2])))
    return best


def _level_steps(chain: list[DiscCandidate]) -> list[int]:
    """Level index of each chain disc from the first (a long step counts as a skipped disc)."""
    if len(chain) < 2:
        return [0] * len(chain)
    d = [math.hypot(b.x - a.x, b.y - a.y) for a, b in zip(chain[:-1], chain[1:])]
    unit = float(np.median([v for v in d if v < 1.5 * min(d)] or d))
    k = [0]
    for v in d:
        k.append(k[-1] + max(1, int(round(v / unit))))
    return k


def _name_chain(chain: list[DiscCandidate], steps: list[int], dome: Dome | None, pxs: float) -> tuple[list[str | None], str, float]:
    """Names for the chain discs from the anchors; returns (names, anchor, confidence)."""
    n = len(chain)
    if n == 0:
        return [], "none", 0.0
    i45 = DISC_LEVELS.index("L4-L5")
    ys = np.array([c.y for c in chain])
    ks = np.array(steps, float)
    unit = float(np.median(np.diff(ys) / np.maximum(np.diff(ks), 1))) if n > 1 else 36.0 * pxs
    scores = {}
    for o in range(-len(DISC_LEVELS), len(DISC_LEVELS) + 1):
        # o: level index of the first chain disc
        if o < 0 or o + steps[-1] >= len(DISC_LEVELS):
            continue
        s = 0.0
        if dome is not None:
            k45 = i45 - o                      # chain step of L4-L5
            # predicted y of L4-L5 by linear inter/extrapolation of the chain
            y45 = float(np.interp(k45, ks, ys, left=np.nan, right=np.nan))
            if not np.isfinite(y45):
                y45 = ys[0] + (k45 - ks[0]) * unit if k45 < ks[0] else ys[-1] + (k45 - ks[-1]) * unit
            dy = (y45 - dome.top[1] / SCALE) / pxs
            s -= (dy / 12.0) ** 2
        scores[o] = s
    if not scores:
        return [None] * n, "none", 0.0
    order = sorted(scores, key=scores.get, reverse=True)
    o = order[0]
    gapv = scores[order[0]] - scores[order[1]] if len(order) > 1 else 0.0
    conf = float(1.0 - math.exp(-gapv)) if dome is not None else 0.0
    names = [DISC_LEVELS[o + k] for k in steps]
    return names, ("iliac_crest" if dome is not None else "none"), conf


@dataclass
class RefinedDisc:
    """A disc refined at full resolution, in normalised full-res pixels: the disc frame
    (centre ``c``, unit ``a`` along it toward +x, unit ``n`` across it, downward), the two
    endplate lines ``v = v0 + slope * u`` (upper: inferior endplate of the vertebra above),
    and the body margins ``u_front`` < ``u_back`` along ``a``."""

    c: np.ndarray
    a: np.ndarray
    n: np.ndarray
    upper: tuple[float, float]
    lower: tuple[float, float]
    u_front: float
    u_back: float
    strength: float
    residual_px: float

    def point(self, u: float, which: str) -> np.ndarray:
        v0, sl = self.upper if which == "upper" else self.lower
        return self.c + u * self.a + (v0 + sl * u) * self.n

    @property
    def centre(self) -> np.ndarray:
        um = 0.5 * (self.u_front + self.u_back)
        return 0.5 * (self.point(um, "upper") + self.point(um, "lower"))


def _strip(norm_sm, c, a, n, us, vs):
    prof = F.sample_grid(norm_sm, float(c[0]), float(c[1]), float(a[0]), float(a[1]), float(n[0]), float(n[1]),
                         us.astype(np.float32), vs.astype(np.float32))
    ok_u = ~np.isnan(prof).any(axis=1)
    fill = np.nanmean(prof) if np.isfinite(np.nanmean(prof)) else 0.0
    return np.where(np.isnan(prof), fill, prof).astype(np.float32), ok_u


def _smooth_strip(prof: np.ndarray) -> np.ndarray:
    """Average +-1 mm along the disc (rows: 0.5 mm apart) and ~1 px across (columns: 0.25 px)."""
    p = F.rows_box4(prof)
    for _ in range(2):
        q = np.pad(p, ((0, 0), (2, 2)), mode="edge")
        p = (q[:, :-4] + q[:, 1:-3] + q[:, 2:-2] + q[:, 3:-1] + q[:, 4:]) / 5.0
    return p.astype(np.float32)


def _margins(norm_sm, P, c, a, n, line, side: int, u_lo: float, u_hi: float) -> tuple[float, float]:
    """Front and back margins of the body on one side of a disc (side -1: the body above the
    ``line``, +1: below), from the darkness 2-6 mm into the body along the disc direction."""
    us = np.arange(-48.0 * P, 48.0 * P + 0.01, 0.5)
    v0, sl = line
    acc = np.zeros(len(us))
    cnt = 0
    for dv in np.arange(2.0, 6.01, 1.0):
        pts_v = v0 + sl * us + side * dv * P
        # sample point by point along u at the offset line
        xs = c[0] + us * a[0] + pts_v * n[0]
        ys = c[1] + us * a[1] + pts_v * n[1]
        val = F.bilinear(norm_sm, xs.astype(np.float64), ys.astype(np.float64))
        if np.isnan(val).all():
            continue
        acc += np.where(np.isnan(val), np.nanmean(val), val)
        cnt += 1
    if cnt == 0:
        return u_lo, u_hi
    q = F.blur_1d(acc / cnt, 1.5 * P / 0.5 / 2.0)
    dq = np.gradient(q)
    win = int(round(8.0 * P / 0.5))

    def pick(u0, sign):
        i0 = int(np.clip(np.searchsorted(us, u0), 0, len(us) - 1))
        lo, hi = max(1, i0 - win), min(len(us) - 2, i0 + win)
        seg = sign * dq[lo:hi + 1]
        k = lo + int(np.argmax(seg))
        y0, y1, y2 = sign * dq[k - 1], sign * dq[k], sign * dq[k + 1]
        den = y0 - 2 * y1 + y2
        off = 0.5 * (y0 - y2) / den if den != 0 else 0.0
        return float(us[k] + np.clip(off, -0.5, 0.5) * 0.5)

    # front: bright -> dark going +u (dq < 0); back: dark -> bright (dq > 0)
    return pick(u_lo, -1.0), pick(u_hi, +1.0)


def refine_disc(norm_sm: np.ndarray, px_per_mm: float, centre: Sequence[float], angle: float,
                kind: str = "lateral") -> RefinedDisc | None:
    """Endplate lines of one disc near ``centre`` (normalised full-res px) at ``angle``.

    Two passes: the second re-samples the strip in the frame of the first pass's lines."""
    P = px_per_mm
    c = np.asarray(centre, float)
    a = np.array([math.cos(angle), math.sin(angle)])
    out = None
    for it in range(2):
        n = np.array([-a[1], a[0]])
        half_u = 32.0 if kind == "lateral" else 36.0
        us = np.arange(-half_u * P, half_u * P + 0.01, 0.5 * P)
        vs = np.arange(-13.0 * P, 13.0 * P + 0.01, 0.25)
        if it == 1:                                         # second pass: near the first lines
            vlo = min(up[0] + up[1] * us[0], up[0] + up[1] * us[-1]) - 4.0 * P
            vhi = max(lo[0] + lo[1] * us[0], lo[0] + lo[1] * us[-1]) + 4.0 * P
            vs = vs[(vs >= vlo - 1.0) & (vs <= vhi + 1.0)]
        prof, ok_u = _strip(norm_sm, c, a, n, us, vs)
        prof = _smooth_strip(prof)
        dp = np.zeros_like(prof)
        dp[:, 1:-1] = 0.5 * (prof[:, 2:] - prof[:, :-2])
        e = np.empty((len(us), 3), np.float32)
        vc = 0.5 * (float(vs[0]) + float(vs[-1]))
        F.edge_pairs(dp, (vs - vc).astype(np.float32), np.float32(7.0 * P if it == 0 else 0.5 * (vs[-1] - vs[0])),
                     np.float32(1.2 * P), np.float32(22.0 * P), e)
        e[:, :2] += vc
        strength = np.where(ok_u, e[:, 2], 0.0)
        if not np.any(strength > 0):
            return None
        ref = float(np.quantile(strength[strength > 0], 0.9))
        strong = strength > 0.5 * ref
        best = None
        i = 0
        nU = len(us)
        while i < nU:
            if not strong[i]:
                i += 1
                continue
            j = last = i
            gap = 0
            while j + 1 < nU:
                j += 1
                if strong[j]:
                    last = j
                    gap = 0
                else:
                    gap += 1
                    if gap > 3:
                        break
            if best is None or last - i > best[1] - best[0]:
                best = (i, last)
            i = last + 1
        i0, i1 = best
        if (i1 - i0) * 0.5 < 15.0:
            return None
        sel = np.zeros(nU, bool)
        sel[i0 + 4:i1 - 3] = True
        sel &= strong & np.isfinite(e[:, 0])
        if sel.sum() < 10:
            return None
        u = us[sel]
        w = strength[sel].astype(float)
        up = F.robust_line(u, e[sel, 0].astype(float), w, 0.6)
        lo = F.robust_line(u, e[sel, 1].astype(float), w, 0.6)
        out = (c, a, n, up, lo, float(us[i0]), float(us[i1]), float(np.mean(w)))
        if it == 0:
            # re-centre on the run and turn the frame to the mean endplate direction
            um = 0.5 * (us[i0] + us[i1])
            vm = 0.5 * ((up[0] + up[1] * um) + (lo[0] + lo[1] * um))
            c = c + um * a + vm * n
            turn = math.atan(0.5 * (up[1] + lo[1]))
            ca, sa = math.cos(turn), math.sin(turn)
            a = np.array([a[0] * ca - a[1] * sa, a[0] * sa + a[1] * ca])
    c, a, n, up, lo, uf, ub, st = out
    uf2, ub2 = _margins(norm_sm, P, c, a, n, (up[0], up[1]), -1, uf, ub)
    if 15.0 * P < ub2 - uf2 < 55.0 * P:
        uf, ub = uf2, ub2
    # quality: the two endplates within 20 deg of each other, heights 1-22 mm, body 18-55 mm deep
    wedge = abs(math.degrees(math.atan(lo[1]) - math.atan(up[1])))
    h_f = (lo[0] + lo[1] * uf) - (up[0] + up[1] * uf)
    h_b = (lo[0] + lo[1] * ub) - (up[0] + up[1] * ub)
    depth = (ub - uf) / P
    if wedge > 20.0 or min(h_f, h_b) < 0.8 * P or max(h_f, h_b) > 24.0 * P or not (18.0 <= depth <= 44.0):
        return None
    if kind == "lateral" and h_b > h_f + 3.0 * P:        # lumbar discs are not kyphotic wedges
        return None
    # the edges (steepest step between cortex line and disc) lie ENDPLATE_INSET_MM inside the
    # endplate surfaces (development laterals): move each line out by that much
    inset = ENDPLATE_INSET_MM * P
    up = (up[0] - inset, up[1], up[2])
    lo = (lo[0] + inset, lo[1], lo[2])
    return RefinedDisc(c, a, n, (up[0], up[1]), (lo[0], lo[1]), uf, ub, st, float(max(up[2], lo[2])))


def remeasure_disc(norm: np.ndarray, px_per_mm: float, prev: RefinedDisc, kind: str = "lateral") -> RefinedDisc | None:
    """Fast re-measurement of a known disc in a new frame of the same pose (traction moves
    its endplates by a few mm): one strip in the previous disc frame, edges searched within
    5 mm of the previous endplates, the body margins kept."""
    P = px_per_mm
    inset = ENDPLATE_INSET_MM * P
    us = np.arange(prev.u_front + 2.0 * P, prev.u_back - 2.0 * P + 0.01, 0.5 * P)
    if len(us) < 10:
        return None
    vu = prev.upper[0] + inset + prev.upper[1] * us
    vl = prev.lower[0] - inset + prev.lower[1] * us
    v_lo = float(min(vu.min(), vl.min()) - 5.0 * P)
    v_hi = float(max(vu.max(), vl.max()) + 5.0 * P)
    vs = np.arange(v_lo, v_hi + 0.01, 0.25)
    prof, ok_u = _strip(norm, prev.c, prev.a, prev.n, us, vs)
    prof = F.rows_box4(prof).astype(np.float32)
    prof[:, 1:-1] = 0.25 * prof[:, :-2] + 0.5 * prof[:, 1:-1] + 0.25 * prof[:, 2:]
    dp = np.zeros_like(prof)
    dp[:, 1:-1] = 0.5 * (prof[:, 2:] - prof[:, :-2])
    e = np.empty((len(us), 3), np.float32)
    vc = 0.5 * (v_lo + v_hi)
    F.edge_pairs(dp, (vs - vc).astype(np.float32), np.float32(0.5 * (v_hi - v_lo)), np.float32(1.0 * P),
                 np.float32(v_hi - v_lo), e)
    e[:, :2] += vc
    strength = np.where(ok_u, e[:, 2], 0.0)
    sel = (strength > 0.3 * float(np.quantile(strength, 0.9))) & np.isfinite(e[:, 0])
    if sel.sum() < 8:
        return None
    u = us[sel]
    w = strength[sel].astype(float)
    up = F.robust_line(u, e[sel, 0].astype(float), w, 0.6)
    lo = F.robust_line(u, e[sel, 1].astype(float), w, 0.6)
    if abs(up[0] - (prev.upper[0] + inset)) > 6.0 * P or abs(lo[0] - (prev.lower[0] - inset)) > 6.0 * P:
        return None
    # move the disc frame to the new mid-line so the next frame searches around it
    um = 0.5 * (prev.u_front + prev.u_back)
    dv = 0.5 * ((up[0] + up[1] * um) + (lo[0] + lo[1] * um))
    c = prev.c + dv * prev.n
    return RefinedDisc(c, prev.a, prev.n, (up[0] - inset - dv, up[1]), (lo[0] + inset - dv, lo[1]), prev.u_front,
                       prev.u_back, float(np.mean(w)), float(max(up[2], lo[2])))


#: interspaces whose centre or body margins come this close to a collimator blade's edge
#: (mm at the isocentre) are left out: the step to black looks like an endplate
FIELD_EDGE_MM = 4.0
#: blur of the continuation of the field behind the blades (``fill_outside``)
FILL_SIGMA_MM = 10.0


@dataclass(frozen=True)
class Field:
    """The irradiated field of a collimated frame in normalised coordinates: full-res
    ``(row0, row1, col0, col1)`` and a quarter-res mask of the wholly irradiated pixels."""

    rect: tuple[int, int, int, int]
    small_mask: np.ndarray

    def contains(self, p_norm, margin_px: float) -> bool:
        r0, r1, c0, c1 = self.rect
        return c0 + margin_px <= p_norm[0] < c1 - margin_px and r0 + margin_px <= p_norm[1] < r1 - margin_px

    @classmethod
    def of_rect(cls, rect: tuple[int, int, int, int], shape: tuple[int, int]) -> "Field":
        """The field of a normalised frame of ``shape`` irradiated inside ``rect``."""
        m = np.zeros(shape, np.float32)
        r0, r1, c0, c1 = rect
        m[r0:r1, c0:c1] = 1.0
        return cls(tuple(map(int, rect)), _quarter(m) > 0.999)


def _field(img: np.ndarray, vf: ViewFrame) -> Field | None:
    """The collimated field of a frame (None when the beam covers it all), normalised."""
    rows, cols = img.shape
    r0, r1, c0, c1 = F.field_rect(img)
    if (r0, r1, c0, c1) == (0, rows, 0, cols):
        return None
    (x0, y0), (x1, y1) = vf.to_norm([(c0, r0), (c1 - 1, r1 - 1)])
    return Field.of_rect((int(min(y0, y1)), int(max(y0, y1)) + 1, int(min(x0, x1)), int(max(x0, x1)) + 1),
                          (rows, cols))


def naming_image(small: np.ndarray, pxs: float, fld: Field | None) -> np.ndarray:
    """The image the naming windows are sampled from (``naming.smooth_for_features`` of the
    quarter-res frame, filled behind the blades by ``fill_outside``): NaN behind the blades,
    as beyond the frame's edge. Shared by detection and training."""
    from openfluoro.guidance import naming

    sm = naming.smooth_for_features(small, pxs)
    if fld is not None:
        sm[~fld.small_mask] = np.nan
    return sm


def fill_outside(small: np.ndarray, inside: np.ndarray, pxs: float) -> np.ndarray:
    """``small`` (quarter resolution, ``pxs`` pixels per mm) with the pixels outside the field
    replaced by a smooth continuation of the field (nearest field pixel, blurred over
    ``FILL_SIGMA_MM``), so that the blades' edges make no bands."""
    from scipy import ndimage

    if not inside.any():
        return small
    _, (ri, ci) = ndimage.distance_transform_edt(~inside, return_indices=True)
    cont = F.blur(np.ascontiguousarray(small[ri, ci], np.float32), FILL_SIGMA_MM * pxs)
    return np.where(inside, small, cont).astype(np.float32)


def detect_levels(image: np.ndarray, geometry: Geometry) -> LevelResult:
    """Find the vertebral column, its interspaces and their names in one frame. In a
    collimated frame only the irradiated field is searched and named from."""
    img = np.asarray(image)
    vf = view_frame(geometry, img.shape)
    norm = vf.norm_image(img).astype(np.float32)
    small = _quarter(norm)
    pxs = vf.px_per_mm / SCALE
    fld = _field(img, vf)
    if fld is not None:
        small = fill_outside(small, fld.small_mask, pxs)
    cands, bank = disc_candidates(small, pxs, vf.kind)
    if fld is not None:
        edge = FIELD_EDGE_MM * vf.px_per_mm
        half = (SCALE - 1) / 2.0
        cands = [c for c in cands if fld.contains((c.x * SCALE + half, c.y * SCALE + half), edge)]
    ax = None
    if vf.kind == "ap":
        ax = column_axis(small, pxs)
        rows_s = small.shape[0]
        cands = [c for c in cands
                 if abs(c.x - ax[int(np.clip(round(c.y), 0, rows_s - 1))]) < 12.0 * pxs and abs(c.angle) < math.radians(24)]
    use_hm = vf.kind in _disc_model(str(DISC_MODEL_PATH))
    if use_hm:
        chain = _heatmap_candidates(small, pxs, bank, vf.kind, fld)
    else:
        chain = _chain(cands, pxs, vf.kind)
        chain = _extend(chain, bank, pxs, vf.kind, ax)
    steps = _level_steps(chain)
    norm_sm = norm
    refined = []
    for c in chain:
        cn = (c.x * SCALE + (SCALE - 1) / 2.0, c.y * SCALE + (SCALE - 1) / 2.0)
        rd = refine_disc(norm_sm, vf.px_per_mm, cn, c.angle, vf.kind)
        if use_hm:
            rd = _refine_near(norm_sm, vf, cn, c, rd, cands)
        if rd is not None and fld is not None and not all(
                fld.contains(rd.point(u, w), FIELD_EDGE_MM * vf.px_per_mm)
                for u in (rd.u_front, rd.u_back) for w in ("upper", "lower")):
            rd = None                      # a blade cuts the body: its margins are the blade's
        refined.append((cn, rd))
    names, anchor, conf = [None] * len(chain), "none", 0.0
    shift_scores: tuple[tuple[int, float], ...] = ()
    from openfluoro.guidance import naming

    if chain and naming.model_available(vf.kind):
        sm = naming_image(small, pxs, fld)
        feats = np.array([naming.disc_features(sm, pxs, *naming.to_small(rd.centre if rd is not None else cn))
                          for cn, rd in refined])
        prob = naming.name_probabilities(vf.kind, feats)
        names, conf, offset_scores = naming.name_chain(prob, steps)
        best = max(offset_scores, key=offset_scores.get)
        shift_scores = tuple(sorted((o - best, sc) for o, sc in offset_scores.items()))
        anchor = "model"
    elif chain and vf.kind == "lateral":
        axis_x = float(np.median([c.x for c in chain]))
        dome = find_dome(small, pxs, axis_x)
        names, anchor, conf = _name_chain(chain, steps, dome, pxs)
    discs = []
    for c, nm, (cn, rd) in zip(chain, names, refined):
        if anchor == "model" and nm is None:
            continue                       # a band that cannot be a lumbar interspace
        if rd is None:
            p = vf.from_norm([cn])[0]
            discs.append(Disc(nm, (float(p[0]), float(p[1])), None, None, c.strength))
            continue
        pts = vf.from_norm([rd.point(rd.u_front, "upper"), rd.point(rd.u_back, "upper"),
                            rd.point(rd.u_front, "lower"), rd.point(rd.u_back, "lower"), rd.centre])
        mid_f = 0.5 * (pts[0] + pts[2])
        mid_b = 0.5 * (pts[1] + pts[3])
        discs.append(Disc(nm, (float(pts[4][0]), float(pts[4][1])),
                          Endplate(tuple(map(float, pts[0])), tuple(map(float, pts[1]))),
                          Endplate(tuple(map(float, pts[2])), tuple(map(float, pts[3]))), c.strength,
                          (float(mid_f[0]), float(mid_f[1])), (float(mid_b[0]), float(mid_b[1])), rd))
    if anchor == "model":
        if vf.kind == "ap" and ax is not None:
            discs = _ap_consistency(discs, vf, ax)
        discs = _with_predicted(discs, vf)
    axis_px: tuple = ()
    if ax is not None:
        pts = vf.from_norm([(x * SCALE + (SCALE - 1) / 2.0, r * SCALE + (SCALE - 1) / 2.0) for r, x in enumerate(ax)])
        axis_px = tuple((float(p[0]), float(p[1])) for p in pts)
    return LevelResult(vf.kind, tuple(discs), tuple(_vertebrae(discs)), anchor, conf, vf, axis_px=axis_px,
                       name_shift_scores=shift_scores)


def endplate_segments(levels: LevelResult) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """The detected endplates of a frame as image segments (p0, p1), px."""
    return [(e.p0, e.p1) for d in levels.discs if not d.predicted for e in (d.upper, d.lower) if e is not None]


def _refine_near(norm: np.ndarray, vf: ViewFrame, cn, c: DiscCandidate, rd: "RefinedDisc | None",
                 cands: list[DiscCandidate]) -> "RefinedDisc | None":
    """Endplates for a heat-map interspace: the refinement from its peak if it stays within
    ``HEATMAP_REFINE_TOL_MM``; else from the nearest band candidates (within 10 mm), whose
    bright band the strip search locks on to more easily, if it stays within
    ``HEATMAP_BAND_TOL_MM``."""
    P = vf.px_per_mm
    tol = HEATMAP_REFINE_TOL_MM * P
    cn = np.asarray(cn, float)
    if rd is not None and np.hypot(*(rd.centre - cn)) <= tol:
        return rd
    near = []
    for b in cands:
        q = np.array([b.x * SCALE + (SCALE - 1) / 2.0, b.y * SCALE + (SCALE - 1) / 2.0])
        d = float(np.hypot(*(q - cn)))
        if d <= 10.0 * P:
            near.append((d, q, b.angle))
    for _, q, ang in sorted(near, key=lambda t: t[0])[:3]:
        r2 = refine_disc(norm, P, q, ang, vf.kind)
        if r2 is not None and np.hypot(*(r2.centre - cn)) <= HEATMAP_BAND_TOL_MM * P:
            return r2
    return None


def _heatmap_candidates(small: np.ndarray, pxs: float, bank: np.ndarray, kind: str,
                        fld: Field | None = None) -> list[DiscCandidate]:
    """The chain of interspaces from the learned heat map, as quarter-res candidates. Behind
    a collimator's blades the channels are zero, as beyond the frame's edge, and no
    interspace is placed there or at the blades' edges."""
    ch = heatmap_channels(small, pxs, bank)
    if fld is not None:
        ys, xs = grid_to_small(np.arange(ch.shape[1]), pxs), grid_to_small(np.arange(ch.shape[2]), pxs)
        gy = np.minimum(np.rint(ys).astype(int), small.shape[0] - 1)
        gx = np.minimum(np.rint(xs).astype(int), small.shape[1] - 1)
        ch = ch * fld.small_mask[np.ix_(gy, gx)][None]
    S = disc_heatmap(ch, kind)
    if S is None:
        return []
    if fld is not None:
        r0, r1, c0, c1 = fld.rect
        e = FIELD_EDGE_MM * pxs * SCALE
        yy, xx = ys[:S.shape[0]] * SCALE, xs[:S.shape[1]] * SCALE
        ok = ((yy >= r0 + e) & (yy < r1 - e))[:, None] & ((xx >= c0 + e) & (xx < c1 - e))[None, :]
        S = np.where(ok, S, np.float32(-50.0))
    A = bank.argmax(axis=0)
    rows, cols = small.shape
    out = []
    for gx, gy, lg in heatmap_chain(S, kind):
        sx, sy = grid_to_small((gx, gy), pxs)
        xi, yi = int(np.clip(round(sx), 0, cols - 1)), int(np.clip(round(sy), 0, rows - 1))
        ang = float(ANGLES[int(A[yi, xi])])
        if abs(ang) > math.radians(24.0 if kind == "ap" else 45.0):
            ang = 0.0
        out.append(DiscCandidate(float(sx), float(sy), ang, 30.0, float(lg)))
    return out


def _ap_consistency(discs: list[Disc], vf: ViewFrame, axis_small: np.ndarray, tol_mm: float = 7.0) -> list[Disc]:
    """AP views: named interspaces are evenly stacked: one that departs by more than
    ``tol_mm`` from its neighbours' interpolation (or, at an end, from the extrapolation of the
    two before it) is taken for a false band and replaced by the prediction."""
    from dataclasses import replace as _replace

    from openfluoro.guidance.naming import CLASSES

    P = vf.px_per_mm
    out = list(discs)
    named = {CLASSES.index(d.name): i for i, d in enumerate(out) if d.name in CLASSES}
    if len(named) < 3:
        return out
    pos = {k: vf.to_norm([out[i].centre_px])[0] for k, i in named.items()}
    ks = sorted(pos)
    bad = []
    for k in ks:
        others = [j for j in ks if j != k]
        lo = [j for j in others if j < k]
        hi = [j for j in others if j > k]
        if lo and hi:
            a, b = max(lo), min(hi)
            pred = pos[a] + (pos[b] - pos[a]) * (k - a) / (b - a)
        elif len(lo) >= 2:
            a, b = sorted(lo)[-2:]
            pred = pos[b] + (pos[b] - pos[a]) * (k - b) / (b - a)
        elif len(hi) >= 2:
            a, b = sorted(hi)[:2]
            pred = pos[a] - (pos[b] - pos[a]) * (a - k) / (b - a)
        else:
            continue
        if abs(pos[k][1] - pred[1]) / P > tol_mm:
            bad.append((k, pred))
    if len(bad) * 2 >= len(ks):            # the pattern itself is doubtful: leave it
        return out
    for k, pred in bad:
        c = vf.from_norm([pred])[0]
        out[named[k]] = Disc(CLASSES[k], (float(c[0]), float(c[1])), None, None, 0.0, predicted=True)
    return out


def _with_predicted(discs: list[Disc], vf: ViewFrame, extend: int = 2) -> list[Disc]:
    """Add the interspaces missing between named ones (interpolated) and up to ``extend``
    beyond the ends (extrapolated one level step at a time), inside the frame."""
    from openfluoro.guidance.naming import CLASSES

    named = {d.name: d for d in discs if d.name in CLASSES}
    if len(named) < 2:
        return discs
    idx = sorted(CLASSES.index(n) for n in named)
    pos = {i: vf.to_norm([named[CLASSES[i]].centre_px])[0] for i in idx}
    out = list(discs)
    margin = 8.0

    def inside(p):
        return margin <= p[0] < vf.cols - margin and margin <= p[1] < vf.rows - margin

    def add(i, p):
        q = vf.from_norm([p])[0]
        out.append(Disc(CLASSES[i], (float(q[0]), float(q[1])), None, None, 0.0, predicted=True))

    for i in range(idx[0], idx[-1] + 1):
        if i in pos:
            continue
        lo = max(j for j in idx if j < i)
        hi = min(j for j in idx if j > i)
        t = (i - lo) / (hi - lo)
        p = (1 - t) * pos[lo] + t * pos[hi]
        pos[i] = p
        add(i, p)
    for direction in (-1, 1):
        ends = sorted(pos)
        last = ends[0] if direction < 0 else ends[-1]
        prev = ends[1] if direction < 0 else ends[-2]
        step = pos[last] - pos[prev]
        for k in range(1, extend + 1):
            i = last + direction * k
            if not (0 <= i < len(CLASSES)):
                break
            p = pos[last] + k * step
            if not inside(p):
                break
            add(i, p)
    out.sort(key=lambda d: CLASSES.index(d.name) if d.name in CLASSES else -1)
    return out


def _vertebrae(discs: list[Disc]) -> list[Vertebra]:
    """Vertebral bodies between consecutive named interspaces (L1..L5)."""
    by = {d.name: d for d in discs if d.name}
    out = []
    for up, lo in zip(DISC_LEVELS[:-1], DISC_LEVELS[1:]):
        name = up.split("-")[1]
        if up in by and lo in by:
            a, b = np.asarray(by[up].centre_px), np.asarray(by[lo].centre_px)
            c = 0.5 * (a + b)
            out.append(Vertebra(name, (float(c[0]), float(c[1])), by[up].lower, by[lo].upper))
    return out


#: a view's count of the levels is uncertain below this naming confidence (``LevelResult.confidence``,
#: from the margin between the best and the next offset of the names): on the development
#: phantoms' frames (168 views, seeds 11-17) one view is under it (0.66), the next lowest 0.9975
NAMING_CONFIDENCE_MIN = 0.99


def count_uncertain(*views: LevelResult | None) -> bool:
    """Whether the count of the levels rests only on uncertain naming: every given view that
    names its interspaces with the model does so with a confidence under
    ``NAMING_CONFIDENCE_MIN`` (one confident view is enough where the views agree; where they
    disagree, ``name_conflicts`` says so)."""
    named = [v for v in views if v is not None and v.anchor == "model" and v.discs]
    return bool(named) and all(v.confidence < NAMING_CONFIDENCE_MIN for v in named)


def transfer_names(ap: LevelResult, ap_geometry: Geometry, lateral: LevelResult, lateral_geometry: Geometry,
                   match_mm: float = 6.0) -> LevelResult:
    """Name the interspaces of an AP frame from a lateral of the same patient position.

    Each named lateral interspace is a ray from the lateral source; it meets the spine's
    mid-sagittal plane -- the plane through the AP source and the AP column line -- at the
    interspace, which projects into the AP frame. An AP interspace within ``match_mm`` takes
    the lateral's name; a lateral interspace with no AP partner is added to the AP as predicted.
    Where the AP had named that interspace otherwise, the pair is kept in ``name_conflicts``.
    (The C-arm moved between the frames, the patient did not: a table move breaks this.)"""
    from openfluoro.guidance.depth import backproject_ray, image_line_plane

    if ap.frame is None or lateral.frame is None or not lateral.discs:
        return ap
    seen = [d for d in ap.discs if d.refined is not None and not d.predicted]
    if len(seen) < 3:
        # too few refined to place the column line (two at one end tilt it: the AP of a field
        # narrowed by side blades, where the blades cut most bodies' margins): the heat-map
        # peaks place it too
        seen = [d for d in ap.discs if not d.predicted]
    if len(seen) >= 2:
        pts = np.array([d.centre_px for d in seen])
        A = np.stack([np.ones(len(pts)), pts[:, 1] - pts[:, 1].mean()], 1)
        (x0, slope), *_ = np.linalg.lstsq(A, pts[:, 0], rcond=None)
        if abs(slope) > 0.3:                   # implausible for a spine in an AP view
            x0, slope = float(np.median(pts[:, 0])), 0.0
        c = np.array([x0, pts[:, 1].mean()])
        dirn = np.array([slope, 1.0]) / math.hypot(slope, 1.0)
    elif len(seen) == 1:
        c = np.asarray(seen[0].centre_px, float)
        dirn = np.array([0.0, 1.0])
    else:
        return ap
    n, off = image_line_plane(ap_geometry, c - 50.0 * dirn, c + 50.0 * dirn)
    P = ap.frame.px_per_mm
    used = set()
    out: list[Disc] = []
    conflicts: list[tuple[str, str]] = []
    for ld in lateral.discs:
        if not ld.name:
            continue
        s, r = backproject_ray(lateral_geometry, ld.centre_px)
        den = float(n @ r)
        if abs(den) < 1e-6:
            continue
        X = s + (off - float(n @ s)) / den * r
        p = ap_geometry.project(X)[0]
        best = None
        for i, d in enumerate(ap.discs):
            if i in used:
                continue
            dist = float(np.hypot(*(np.asarray(d.centre_px) - p))) / P
            if dist <= match_mm and (best is None or dist < best[0]):
                best = (dist, i)
        if not (0 <= p[0] < ap.frame.cols and 0 <= p[1] < ap.frame.rows):
            continue
        if best is not None:
            # the lateral places the interspace; the AP band, if close, keeps its endplates
            used.add(best[1])
            d = ap.discs[best[1]]
            if d.name is not None and d.name != ld.name:
                conflicts.append((d.name, ld.name))
            out.append(Disc(ld.name, (float(p[0]), float(p[1])), d.upper, d.lower, d.strength, d.front_px, d.back_px,
                            d.refined, d.predicted))
        else:
            out.append(Disc(ld.name, (float(p[0]), float(p[1])), None, None, 0.0, predicted=True))
    from openfluoro.guidance.naming import CLASSES

    out.sort(key=lambda d: CLASSES.index(d.name) if d.name in CLASSES else -1)
    return LevelResult(ap.view, tuple(out), tuple(_vertebrae(out)), "lateral", lateral.confidence, ap.frame,
                       ap.notes + ("names from the lateral",), name_conflicts=tuple(conflicts))


def shift_names(res: LevelResult, shift: int) -> LevelResult:
    """``res`` with every interspace name moved ``shift`` levels caudally (negative: cranially);
    interspaces that would leave T12-L1..L5-S1 are dropped."""
    from openfluoro.guidance.naming import CLASSES

    if shift == 0:
        return res
    out = []
    for d in res.discs:
        if d.name in CLASSES:
            i = CLASSES.index(d.name) + shift
            if not 0 <= i < len(CLASSES):
                continue
            d = replace(d, name=CLASSES[i])
        out.append(d)
    return replace(res, discs=tuple(out), vertebrae=tuple(_vertebrae(out)),
                   name_shift_scores=tuple((k - shift, v) for k, v in res.name_shift_scores),
                   notes=res.notes + (f"names moved {shift:+d} level(s)",))


def reconcile_names(ap: LevelResult, ap_geometry: Geometry, lateral: LevelResult, lateral_geometry: Geometry
                    ) -> tuple[LevelResult, LevelResult]:
    """One count of the levels for an AP and a lateral of the same patient position: (the AP
    named from the lateral, the lateral). Where the two views name their shared interspaces
    differently, each view's naming evidence (``name_shift_scores``, log-probabilities) is
    summed over the ways of making them agree, and both views take the best; the AP keeps the
    original disagreement in ``name_conflicts``, since one count was wrong."""
    from collections import Counter

    from openfluoro.guidance.naming import CLASSES

    named = transfer_names(ap, ap_geometry, lateral, lateral_geometry)
    if not named.name_conflicts or not ap.name_shift_scores or not lateral.name_shift_scores:
        return named, lateral
    # AP name index - lateral name index, agreed by most of the shared interspaces
    gap = Counter(CLASSES.index(a) - CLASSES.index(b) for a, b in named.name_conflicts).most_common(1)[0][0]
    s_ap, s_lat = dict(ap.name_shift_scores), dict(lateral.name_shift_scores)
    both = {k: s_ap[k] + s_lat[k + gap] for k in s_ap if k + gap in s_lat}
    if not both:
        return named, lateral
    k_lat = max(both, key=both.get) + gap
    if k_lat == 0:                           # the lateral's count stands: the AP already has it
        return named, lateral
    lat2 = shift_names(lateral, k_lat)
    named2 = transfer_names(ap, ap_geometry, lat2, lateral_geometry)
    return replace(named2, name_conflicts=named.name_conflicts), lat2
