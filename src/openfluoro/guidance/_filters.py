"""Small compiled image kernels for guidance: blur, Hessian ridges, Hough votes, line sampling.

All take and return float32 arrays indexed (row, col); coordinates are (col, row) pixels with
pixel centres at integers, as in ``Geometry.project``. Kernels are single-threaded (a frame is
small; a live session runs the renderer on the other core).
"""

from __future__ import annotations

import math

import numba
import numpy as np

_NB = dict(cache=True, nogil=True, fastmath=True)


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


def blur_1d(x: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return np.asarray(x, float).copy()
    k = gaussian_kernel(sigma).astype(np.float64)
    r = (len(k) - 1) // 2
    xp = np.pad(np.asarray(x, float), r, mode="edge")
    return np.convolve(xp, k, mode="valid")


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
    a = np.asarray(img, np.float32)
    d = a[1:-1, 1:-1] * 2.0 - a[1:-1, :-2] - a[1:-1, 2:]
    d = d[::2, ::2]
    mad = float(np.median(np.abs(d - np.median(d))))
    return max(1e-3, 1.4826 * mad / math.sqrt(6.0))
