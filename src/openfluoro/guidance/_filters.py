"""Small compiled image kernels for guidance: blur, Hessian ridges, Hough votes, line sampling.

All take and return float32 arrays indexed (row, col); coordinates are (col, row) pixels with
pixel centres at integers, as in ``Geometry.project``. Kernels are single-threaded (a frame is
small; a live session runs the renderer on the other core).
"""

from __future__ import annotations

import math
import threading

import numba
import numpy as np

_NB = dict(cache=True, nogil=True, fastmath=True)
_SCRATCH = threading.local()


def scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 work array of the calling thread, reused from call to call under ``name``
    (contents undefined): a fresh frame-sized array costs its page faults on every call
    (~0.3 ms for 512 x 512 on the development machine), several per whole-frame search."""
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None:
        bufs = _SCRATCH.bufs = {}
    a = bufs.get(name)
    if a is None or a.shape != tuple(shape):
        a = bufs[name] = np.empty(shape, np.float32)
    return a


def gaussian_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


@numba.njit(**_NB)
def _blur_rows(img, k, out):
    rows, cols = img.shape
    r = (k.shape[0] - 1) // 2
    for i in range(rows):
        for j in range(cols):
            s = 0.0
            for t in range(-r, r + 1):
                jj = j + t
                if jj < 0:
                    jj = 0
                elif jj >= cols:
                    jj = cols - 1
                s += k[t + r] * img[i, jj]
            out[i, j] = s


@numba.njit(**_NB)
def _blur_cols(img, k, out):
    rows, cols = img.shape
    r = (k.shape[0] - 1) // 2
    for i in range(rows):
        for t in range(-r, r + 1):
            ii = i + t
            if ii < 0:
                ii = 0
            elif ii >= rows:
                ii = rows - 1
            w = k[t + r]
            for j in range(cols):
                out[i, j] += w * img[ii, j]


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (edge-replicating)."""
    img = np.ascontiguousarray(img, dtype=np.float32)
    if sigma <= 0:
        return img.copy()
    k = gaussian_kernel(sigma)
    tmp = np.empty_like(img)
    _blur_rows(img, k, tmp)
    out = np.zeros_like(img)
    _blur_cols(tmp, k, out)
    return out


@numba.njit(**_NB)
def _blur_rows_tiled(img, k, out):
    """The row pass of ``blur`` on transposed tiles of 64 rows, so that the inner loop runs
    over contiguous memory (float32 sums: equal to ``_blur_rows`` within float32 rounding)."""
    rows, cols = img.shape
    r = (k.shape[0] - 1) // 2
    t_ = np.empty((cols, 64), np.float32)
    o_ = np.empty((cols, 64), np.float32)
    for i0 in range(0, rows, 64):
        n = min(64, rows - i0)
        for j in range(cols):
            for ii in range(n):
                t_[j, ii] = img[i0 + ii, j]
        for j in range(cols):
            for ii in range(n):
                o_[j, ii] = 0.0
            for t in range(-r, r + 1):
                jj = min(max(j + t, 0), cols - 1)
                w = k[t + r]
                for ii in range(n):
                    o_[j, ii] += w * t_[jj, ii]
        for ii in range(n):
            for j in range(cols):
                out[i0 + ii, j] = o_[j, ii]


def blur_fast(img: np.ndarray, sigma: float, out: np.ndarray | None = None) -> np.ndarray:
    """``blur`` computed faster, equal to it within float32 rounding (for detectors whose
    results need not be bit-identical to ``blur``'s); into ``out`` when given."""
    img = np.ascontiguousarray(img, dtype=np.float32)
    if sigma <= 0:
        return img.copy()
    k = gaussian_kernel(sigma)
    tmp = scratch("blur_fast", img.shape)
    _blur_rows_tiled(img, k, tmp)
    if out is None:
        out = np.zeros_like(img)
    else:
        out.fill(0.0)
    _blur_cols(tmp, k, out)
    return out


_KERNELS_1D: dict = {}


def blur_1d(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a 1-D signal (edge-replicating); float64."""
    if sigma <= 0:
        return np.asarray(x, float).copy()
    k = _KERNELS_1D.get(sigma)
    if k is None:
        k = gaussian_kernel(sigma).astype(np.float64)
        if len(_KERNELS_1D) < 64:
            _KERNELS_1D[sigma] = k
    return _blur_1d(np.ascontiguousarray(x, dtype=np.float64), k)


@numba.njit(cache=True, nogil=True)
def _blur_1d(x, k):
    n = x.shape[0]
    r = (k.shape[0] - 1) // 2
    out = np.empty(n, np.float64)
    for i in range(n):
        s = 0.0
        for t in range(-r, r + 1):
            j = i + t
            if j < 0:
                j = 0
            elif j >= n:
                j = n - 1
            s += k[r - t] * x[j]
        out[i] = s
    return out


@numba.njit(cache=True, nogil=True)
def quantile(x, q):
    """``np.quantile(x, q)`` (linear) of a 1-D float array, compiled (no Python overhead)."""
    return np.quantile(x, q)


@numba.njit(cache=True, nogil=True)
def median(x):
    """``np.median`` of a 1-D float array, compiled."""
    return np.median(x)


@numba.njit(**_NB)
def downsample2(img):
    """2x2 mean."""
    rows, cols = img.shape[0] // 2, img.shape[1] // 2
    out = np.empty((rows, cols), np.float32)
    for i in range(rows):
        for j in range(cols):
            out[i, j] = 0.25 * (np.float32(img[2 * i, 2 * j]) + np.float32(img[2 * i + 1, 2 * j])
                                + np.float32(img[2 * i, 2 * j + 1]) + np.float32(img[2 * i + 1, 2 * j + 1]))
    return out


@numba.njit(**_NB)
def dark_ridges(sm, strength, theta):
    """Dark-line (valley) strength and line direction from the Hessian of a smoothed image.

    ``strength`` = lambda_max - |lambda_min| clipped at 0 (a line has one large positive
    curvature across it and ~0 along it); ``theta`` = the line's direction angle in radians
    (col axis = 0, row axis = pi/2), in [0, pi).
    """
    rows, cols = sm.shape
    for i in range(rows):
        for j in range(cols):
            if i == 0 or j == 0 or i == rows - 1 or j == cols - 1:
                strength[i, j] = 0.0
                theta[i, j] = 0.0
                continue
            c = sm[i, j]
            ixx = sm[i, j + 1] - 2.0 * c + sm[i, j - 1]
            iyy = sm[i + 1, j] - 2.0 * c + sm[i - 1, j]
            ixy = 0.25 * (sm[i + 1, j + 1] - sm[i + 1, j - 1] - sm[i - 1, j + 1] + sm[i - 1, j - 1])
            tr = 0.5 * (ixx + iyy)
            d = math.sqrt(0.25 * (ixx - iyy) ** 2 + ixy * ixy)
            l1 = tr + d
            l2 = tr - d
            s = l1 - abs(l2)
            strength[i, j] = s if s > 0.0 else 0.0
            # eigenvector of l1 (across the line): angle phi; the line runs at phi + pi/2
            phi = 0.5 * math.atan2(2.0 * ixy, ixx - iyy)
            t = phi + 0.5 * math.pi
            if t < 0.0:
                t += math.pi
            if t >= math.pi:
                t -= math.pi
            theta[i, j] = t


@numba.njit(**_NB)
def ridge_and_laplacian(sm, strength, lap):
    """Dark-line strength (as ``dark_ridges``, without the direction) and the Laplacian."""
    rows, cols = sm.shape
    for i in range(rows):
        for j in range(cols):
            if i == 0 or j == 0 or i == rows - 1 or j == cols - 1:
                strength[i, j] = 0.0
                lap[i, j] = 0.0
                continue
            c = sm[i, j]
            ixx = sm[i, j + 1] - 2.0 * c + sm[i, j - 1]
            iyy = sm[i + 1, j] - 2.0 * c + sm[i - 1, j]
            ixy = 0.25 * (sm[i + 1, j + 1] - sm[i + 1, j - 1] - sm[i - 1, j + 1] + sm[i - 1, j - 1])
            tr = 0.5 * (ixx + iyy)
            d = math.sqrt(0.25 * (ixx - iyy) ** 2 + ixy * ixy)
            s = (tr + d) - abs(tr - d)
            strength[i, j] = s if s > 0.0 else 0.0
            lap[i, j] = ixx + iyy


@numba.njit(**_NB)
def ridge_nms_sm(sm, strength, thresh, mask, max_pts):
    """``ridge_nms`` with the line direction computed from ``sm`` only where needed."""
    rows, cols = strength.shape
    out = np.empty((max_pts, 4), np.float32)
    n = 0
    for i in range(2, rows - 2):
        for j in range(2, cols - 2):
            s = strength[i, j]
            if s <= thresh or not mask[i, j]:
                continue
            c = sm[i, j]
            ixx = sm[i, j + 1] - 2.0 * c + sm[i, j - 1]
            iyy = sm[i + 1, j] - 2.0 * c + sm[i - 1, j]
            ixy = 0.25 * (sm[i + 1, j + 1] - sm[i + 1, j - 1] - sm[i - 1, j + 1] + sm[i - 1, j - 1])
            phi = 0.5 * math.atan2(2.0 * ixy, ixx - iyy)
            t = phi + 0.5 * math.pi
            if t < 0.0:
                t += math.pi
            if t >= math.pi:
                t -= math.pi
            nx = -math.sin(t)
            ny = math.cos(t)
            a = strength[int(round(i + ny)), int(round(j + nx))]
            b = strength[int(round(i - ny)), int(round(j - nx))]
            if s >= a and s >= b:
                if n < max_pts:
                    out[n, 0] = j
                    out[n, 1] = i
                    out[n, 2] = s
                    out[n, 3] = t
                    n += 1
    return out[:n]


@numba.njit(**_NB)
def ridge_nms(strength, theta, thresh, mask, max_pts):
    """Pixels that are ridge maxima across the line direction and above ``thresh``."""
    rows, cols = strength.shape
    out = np.empty((max_pts, 4), np.float32)
    n = 0
    for i in range(2, rows - 2):
        for j in range(2, cols - 2):
            s = strength[i, j]
            if s <= thresh or not mask[i, j]:
                continue
            t = theta[i, j]
            nx = -math.sin(t)
            ny = math.cos(t)
            a = strength[int(round(i + ny)), int(round(j + nx))]
            b = strength[int(round(i - ny)), int(round(j - nx))]
            if s >= a and s >= b:
                if n < max_pts:
                    out[n, 0] = j
                    out[n, 1] = i
                    out[n, 2] = s
                    out[n, 3] = t
                    n += 1
    return out[:n]


@numba.njit(**_NB)
def hough_votes(pts, n_theta, rho_max, spread):
    """Orientation-restricted Hough accumulator: each point votes near its own direction.

    A line through (x, y) with direction angle ``t`` has normal angle ``t + pi/2``;
    rho = x cos(a) + y sin(a) with a = normal angle in [0, pi). Returns acc[n_theta, 2 rho_max + 1].
    """
    n_rho = 2 * rho_max + 1
    acc = np.zeros((n_theta, n_rho), np.float32)
    dth = math.pi / n_theta
    for p in range(pts.shape[0]):
        x = pts[p, 0]
        y = pts[p, 1]
        w = pts[p, 2]
        a0 = pts[p, 3] + 0.5 * math.pi
        k0 = int(round(a0 / dth))
        for dk in range(-spread, spread + 1):
            k = k0 + dk
            kk = k % n_theta
            a = kk * dth
            r = x * math.cos(a) + y * math.sin(a)
            ri = int(round(r)) + rho_max
            if 0 <= ri < n_rho:
                acc[kk, ri] += w * (1.0 - 0.5 * abs(dk) / (spread + 1))
    return acc


@numba.njit(**_NB)
def bilinear(img, xs, ys):
    """Bilinear samples at (xs, ys) = (col, row); NaN outside."""
    rows, cols = img.shape
    n = xs.shape[0]
    out = np.empty(n, np.float32)
    for p in range(n):
        x = xs[p]
        y = ys[p]
        if not (0.0 <= x <= cols - 1.0 and 0.0 <= y <= rows - 1.0):
            out[p] = np.nan
            continue
        j = int(x)
        i = int(y)
        if j >= cols - 1:
            j = cols - 2
        if i >= rows - 1:
            i = rows - 2
        fx = x - j
        fy = y - i
        out[p] = ((1 - fy) * ((1 - fx) * img[i, j] + fx * img[i, j + 1])
                  + fy * ((1 - fx) * img[i + 1, j] + fx * img[i + 1, j + 1]))
    return out


@numba.njit(**_NB)
def line_profiles(img, x0, y0, dx, dy, ts, offsets):
    """Samples on a grid along a line: out[k, m] = img(p0 + ts[k] d + offsets[m] n)
    with d = (dx, dy) unit and n = (-dy, dx); NaN outside."""
    rows, cols = img.shape
    nt = ts.shape[0]
    no = offsets.shape[0]
    out = np.empty((nt, no), np.float32)
    nx = -dy
    ny = dx
    for k in range(nt):
        for m in range(no):
            x = x0 + ts[k] * dx + offsets[m] * nx
            y = y0 + ts[k] * dy + offsets[m] * ny
            if not (0.0 <= x <= cols - 1.0 and 0.0 <= y <= rows - 1.0):
                out[k, m] = np.nan
                continue
            j = int(x)
            i = int(y)
            if j >= cols - 1:
                j = cols - 2
            if i >= rows - 1:
                i = rows - 2
            fx = x - j
            fy = y - i
            out[k, m] = ((1 - fy) * ((1 - fx) * img[i, j] + fx * img[i, j + 1])
                         + fy * ((1 - fx) * img[i + 1, j] + fx * img[i + 1, j + 1]))
    return out


def noise_sigma(img: np.ndarray) -> float:
    """Robust pixel-noise SD from the MAD of a second difference (Immerkaer-like)."""
    if isinstance(img, np.ndarray) and img.ndim == 2 and img.shape[0] > 2 and img.shape[1] > 2 and \
            (img.dtype == np.uint8 or (img.dtype == np.float32 and _integral_u8(img))):
        # 8-bit frames: the differences are integers; exact medians from a histogram
        mad = _second_diff_mad_u8(np.ascontiguousarray(img))
        return max(1e-3, 1.4826 * mad / math.sqrt(6.0))
    a = np.asarray(img, np.float32)
    d = a[1:-1, 1:-1] * 2.0 - a[1:-1, :-2] - a[1:-1, 2:]
    d = d[::2, ::2]
    mad = float(np.median(np.abs(d - np.median(d))))
    return max(1e-3, 1.4826 * mad / math.sqrt(6.0))


def _integral_u8(a: np.ndarray) -> bool:
    """float32 frame holding 8-bit values (checked on a sparse sample, then in full)."""
    s = a[::17, ::13]
    if not (np.all(s == np.round(s)) and float(s.min()) >= 0.0 and float(s.max()) <= 255.0):
        return False
    return bool(_all_u8(a))


@numba.njit(**_NB)
def _all_u8(a):
    for v in a.ravel():
        if not (0.0 <= v <= 255.0) or v != math.floor(v):
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _hist_median(h, n, off):
    """Median (NumPy's: mean of the two middle values for even n) of integers in histogram h
    (value = index - off)."""
    k1 = (n - 1) // 2
    k2 = n // 2
    c = 0
    v1 = -1
    v2 = -1
    for i in range(h.shape[0]):
        c += h[i]
        if v1 < 0 and c > k1:
            v1 = i
        if c > k2:
            v2 = i
            break
    return 0.5 * ((v1 - off) + (v2 - off))


@numba.njit(cache=True, nogil=True)
def _second_diff_mad_u8(a):
    rows, cols = a.shape
    h = np.zeros(2048, np.int64)
    off = 1024
    n = 0
    for i in range(1, rows - 1, 2):
        for j in range(1, cols - 1, 2):
            d = 2 * int(a[i, j]) - int(a[i, j - 1]) - int(a[i, j + 1])
            h[d + off] += 1
            n += 1
    med = _hist_median(h, n, off)
    # |d - med| takes values in half-integers when med is one: work in doubled units
    h2 = np.zeros(4096, np.int64)
    for v in range(h.shape[0]):
        if h[v] > 0:
            h2[int(abs(2.0 * (v - off) - 2.0 * med))] += h[v]
    return _hist_median(h2, n, 0) / 2.0


@numba.njit(**_NB)
def _blur_along(img, dx, dy, weights, out):
    """Smooth along the direction (dx, dy): out(p) = sum_t w_t img(p + t (dx, dy)), bilinear,
    edge-clamped."""
    rows, cols = img.shape
    r = (weights.shape[0] - 1) // 2
    for i in range(rows):
        for j in range(cols):
            s = 0.0
            for t in range(-r, r + 1):
                x = j + t * dx
                y = i + t * dy
                if x < 0.0:
                    x = 0.0
                elif x > cols - 1.0:
                    x = cols - 1.0
                if y < 0.0:
                    y = 0.0
                elif y > rows - 1.0:
                    y = rows - 1.0
                jj = int(x)
                ii = int(y)
                if jj >= cols - 1:
                    jj = cols - 2
                if ii >= rows - 1:
                    ii = rows - 2
                fx = x - jj
                fy = y - ii
                v = ((1 - fy) * ((1 - fx) * img[ii, jj] + fx * img[ii, jj + 1])
                     + fy * ((1 - fx) * img[ii + 1, jj] + fx * img[ii + 1, jj + 1]))
                s += weights[t + r] * v
            out[i, j] = s


@numba.njit(**_NB)
def _second_across(sm, nx, ny, h, out):
    """out(p) = -(sm(p + h n) - 2 sm(p) + sm(p - h n)) / h^2 (bright band across n: positive)."""
    rows, cols = sm.shape
    for i in range(rows):
        for j in range(cols):
            acc = -2.0 * sm[i, j]
            for sgn in (-1.0, 1.0):
                x = j + sgn * h * nx
                y = i + sgn * h * ny
                if x < 0.0:
                    x = 0.0
                elif x > cols - 1.0:
                    x = cols - 1.0
                if y < 0.0:
                    y = 0.0
                elif y > rows - 1.0:
                    y = rows - 1.0
                jj = int(x)
                ii = int(y)
                if jj >= cols - 1:
                    jj = cols - 2
                if ii >= rows - 1:
                    ii = rows - 2
                fx = x - jj
                fy = y - ii
                acc += ((1 - fy) * ((1 - fx) * sm[ii, jj] + fx * sm[ii, jj + 1])
                        + fy * ((1 - fx) * sm[ii + 1, jj] + fx * sm[ii + 1, jj + 1]))
            out[i, j] = -acc / (h * h)


def oriented_bands(img: np.ndarray, angles_rad: np.ndarray, sigma_along: float, sigma_across: float) -> np.ndarray:
    """Bright-band response per direction: ``-d2/dn2`` (scale-normalised) of the image smoothed
    by ``sigma_across`` isotropically and ``sigma_along`` along the band. Angle 0 = bands along
    the columns axis (horizontal); angles grow toward +rows. Returns (n_angles, rows, cols)."""
    pre = blur(img, sigma_across)
    step = max(1.0, sigma_along / 2.5)
    r = max(1, int(math.ceil(3.0 * sigma_along / step)))
    t = np.arange(-r, r + 1) * step
    k = np.exp(-0.5 * (t / sigma_along) ** 2)
    k = (k / k.sum()).astype(np.float32)
    out = np.empty((len(angles_rad),) + pre.shape, np.float32)
    tmp = np.empty_like(pre)
    h = max(1.0, float(sigma_across))
    for n, a in enumerate(angles_rad):
        dx, dy = math.cos(a) * step, math.sin(a) * step
        _blur_along(pre, dx, dy, k, tmp)
        _second_across(tmp, -dy, dx, h, out[n])
    out *= np.float32(sigma_across ** 2)
    return out


@numba.njit(**_NB)
def sample_grid(img, ox, oy, ax, ay, nx, ny, us, vs):
    """out[i, k] = img(o + us[i] a + vs[k] n), bilinear; NaN outside."""
    rows, cols = img.shape
    out = np.empty((us.shape[0], vs.shape[0]), np.float32)
    for i in range(us.shape[0]):
        for k in range(vs.shape[0]):
            x = ox + us[i] * ax + vs[k] * nx
            y = oy + us[i] * ay + vs[k] * ny
            if not (0.0 <= x <= cols - 1.0 and 0.0 <= y <= rows - 1.0):
                out[i, k] = np.nan
                continue
            j = int(x)
            r = int(y)
            if j >= cols - 1:
                j = cols - 2
            if r >= rows - 1:
                r = rows - 2
            fx = x - j
            fy = y - r
            out[i, k] = ((1 - fy) * ((1 - fx) * img[r, j] + fx * img[r, j + 1])
                         + fy * ((1 - fx) * img[r + 1, j] + fx * img[r + 1, j + 1]))
    return out


@numba.njit(**_NB)
def edge_pairs(dp, vs, vmax_centre, min_gap, max_gap, out):
    """Per row u of ``dp`` (derivative across a band, along ``vs``): the pair v1 < v2 of a
    positive (dark->bright) and a negative (bright->dark) step that maximises
    dp[v1] - dp[v2], with min_gap <= v2 - v1 <= max_gap and |(v1+v2)/2| <= vmax_centre.
    out[u] = (v1, v2, strength) with sub-sample parabolic refinement; strength 0 if none."""
    nu, nv = dp.shape
    for u in range(nu):
        best = 0.0
        b1 = -1
        b2 = -1
        for i in range(1, nv - 1):
            a = dp[u, i]
            if not (a > 0.0 and a >= dp[u, i - 1] and a >= dp[u, i + 1]):
                continue
            for k in range(i + 1, nv - 1):
                g = vs[k] - vs[i]
                if g > max_gap:
                    break
                if g < min_gap:
                    continue
                b = dp[u, k]
                if not (b < 0.0 and b <= dp[u, k - 1] and b <= dp[u, k + 1]):
                    continue
                if abs(0.5 * (vs[i] + vs[k])) > vmax_centre:
                    continue
                s = a - b
                if s > best:
                    best = s
                    b1 = i
                    b2 = k
        if b1 < 0:
            out[u, 0] = np.nan
            out[u, 1] = np.nan
            out[u, 2] = 0.0
            continue
        step = vs[1] - vs[0]
        for slot, idx in ((0, b1), (1, b2)):
            y0 = dp[u, idx - 1]
            y1 = dp[u, idx]
            y2 = dp[u, idx + 1]
            den = y0 - 2.0 * y1 + y2
            off = 0.0
            if den != 0.0:
                off = 0.5 * (y0 - y2) / den
                if off > 0.5:
                    off = 0.5
                elif off < -0.5:
                    off = -0.5
            out[u, slot] = vs[idx] + off * step
        out[u, 2] = best


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _robust_line_kernel(u, v, w, scale):
    n = u.size
    if n == 0:
        return np.nan, 0.0, np.inf
    ww = w.copy()
    r = np.empty(n)
    v0 = np.median(v)
    sl = 0.0
    for _ in range(5):
        sw = 0.0
        su = 0.0
        sv = 0.0
        for i in range(n):
            sw += ww[i]
            su += ww[i] * u[i]
            sv += ww[i] * v[i]
        if sw <= 0.0:
            break
        mu = su / sw
        mv = sv / sw
        suu = 0.0
        suv = 0.0
        for i in range(n):
            du = u[i] - mu
            suu += ww[i] * du * du
            suv += ww[i] * du * (v[i] - mv)
        sl = suv / suu if suu > 0.0 else 0.0
        v0 = mv - sl * mu
        for i in range(n):
            r[i] = abs(v[i] - (v0 + sl * u[i]))
        c = 4.0 * max(scale, 1.4826 * np.median(r))
        for i in range(n):
            t = min(max((v[i] - (v0 + sl * u[i])) / c, -1.0), 1.0)
            ww[i] = w[i] * (1.0 - t * t) ** 2
    ss = 0.0
    k = 0
    for i in range(n):
        ri = v[i] - (v0 + sl * u[i])
        if abs(ri) < 2.5 * scale + 1e-9:
            ss += ri * ri
            k += 1
    return v0, sl, (math.sqrt(ss / k) if k > 0 else np.inf)


def robust_line(u: np.ndarray, v: np.ndarray, w: np.ndarray, scale: float) -> tuple[float, float, float]:
    """Robust straight-line fit ``v = v0 + slope u`` with weights ``w``: five rounds of
    iteratively reweighted least squares with Tukey's biweight (cut at 4 x max(``scale``,
    the residuals' MAD-sigma)), so that edge points on other structures do not pull the line.
    Returns ``(v0, slope, rms of the residuals within 2.5 scale)`` (inf without any)."""
    f = lambda a: np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
    v0, sl, rms = _robust_line_kernel(f(u), f(v), f(w), float(scale))
    return float(v0), float(sl), float(rms)


@numba.njit(cache=True, nogil=True)
def _rows_box4_kernel(a, out):
    n, m = a.shape
    for i in range(n):
        for j in range(m):
            s = 0.0
            for d in range(-1, 3):
                s += a[min(max(i + d, 0), n - 1), j]
            out[i, j] = 0.25 * s


def rows_box4(a: np.ndarray) -> np.ndarray:
    """Mean of rows i-1 .. i+2 for each row i of a 2-D array (the edge rows repeated beyond
    the ends), float64: profiles across a disc sampled every 0.5 mm along it, averaged over
    +-1 mm."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    out = np.empty_like(a)
    if a.size:
        _rows_box4_kernel(a, out)
    return out


# ------------------------------------------------------------------------- the irradiated field
#: a displayed pixel at most this grey is blank: behind the collimator's blades a display shows black
BLANK_GREY = 2.0
#: a row or column at the frame's edge is behind a blade when this fraction of it is blank
BLANK_FRACTION = 0.97


def counter_box(shape: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) from the top-left corner that a burnt-in frame counter (up to six digits
    of a 3x5 font, white on a black box, scaled with the image) may cover."""
    s = max(1, min(shape) // 256)
    return 13 * s, 30 * s


@numba.njit(cache=True, nogil=True)
def _blank_fraction(img, r, c0, c1, by_row, grey):
    """Fraction of every other pixel of row (or column) ``r`` from ``c0`` to ``c1`` that is blank."""
    n = 0
    k = 0
    for j in range(c0, c1, 2):
        v = img[r, j] if by_row else img[j, r]
        k += 1
        if v <= grey:
            n += 1
    return n / k if k else 0.0


@numba.njit(cache=True, nogil=True)
def _field_rect_kernel(img, cr, cc, grey, frac):
    rows, cols = img.shape

    def blank_row(r, c_lo, c_hi):
        lo = max(c_lo, cc) if r < cr else c_lo       # the counter's black box is not a blade
        return c_hi > lo and _blank_fraction(img, r, lo, c_hi, True, grey) >= frac

    def blank_col(c, r_lo, r_hi):
        lo = max(r_lo, cr) if c < cc else r_lo
        return r_hi > lo and _blank_fraction(img, c, lo, r_hi, False, grey) >= frac

    r0, r1, c0, c1 = 0, rows, 0, cols
    while r0 < r1 and blank_row(r0, 0, cols):
        r0 += 1
    while r1 > r0 and blank_row(r1 - 1, 0, cols):
        r1 -= 1
    while c0 < c1 and blank_col(c0, r0, r1):
        c0 += 1
    while c1 > c0 and blank_col(c1 - 1, r0, r1):
        c1 -= 1
    return r0, r1, c0, c1


def field_rect(img: np.ndarray) -> tuple[int, int, int, int]:
    """The irradiated field of a displayed frame, ``(row0, row1, col0, col1)`` (half-open): the
    frame less the blank (black) rows and columns at its edges, where the collimator's blades
    kept the beam off. The whole frame when nothing is blank, or when everything is."""
    a = np.asarray(img)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"field_rect: expected a 2-D image, got shape {a.shape}")
    cr, cc = counter_box(a.shape)
    r0, r1, c0, c1 = _field_rect_kernel(a, cr, cc, BLANK_GREY, BLANK_FRACTION)
    if r1 - r0 < 8 or c1 - c0 < 8:
        return 0, a.shape[0], 0, a.shape[1]
    return int(r0), int(r1), int(c0), int(c1)
