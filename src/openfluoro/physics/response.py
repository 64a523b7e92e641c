"""Polychromatic detector response: path lengths (g/cm2) -> signal and noise, by table look-up.

Model: an energy-integrating panel behind the patient, primary beam only (no
scatter), central-ray spectrum everywhere (no heel effect or obliquity). A photon of
energy E reaching the panel is absorbed with probability eta(E) (``DetectorModel``)
and adds a signal proportional to E. For path lengths t_m (g/cm2) of the materials
m in ``MATERIALS`` the transmission of the *signal* relative to the open beam is::

    T(t) = sum_E N(E) eta(E) E A(E, t) / sum_E N(E) eta(E) E,   A = exp(-sum_m mu_m(E) t_m)

and, because the detected counts per energy bin are Poisson, the signal variance
scales with ``V(t) = sum_E N eta E^2 A / sum_E N eta E^2``.

Signals are expressed in *detected quanta of the open beam*: an unattenuated pixel
reads ``n0 = sum_E N eta`` (its mean number of detected photons) and an attenuated one
``n0 * T``. Its variance is ``n0 * (<E^2>_0 / <E>_0^2) * V / I`` (``<>_0`` the averages
over the detected open-beam spectrum, ``I`` the optical Swank factor). The
noise-equivalent quanta ``Q = mean^2 / variance`` then include the spectral (absorbed-
energy) Swank factor, and a noisy frame is ``gain * Poisson(Q) + electronic noise``
with ``gain = variance / mean``: mean and variance are both right.

``log T`` and ``log V`` are tabulated on a 3-D grid whose nodes are spaced as the
square of a uniform index (dense near zero, where log T curves most) and are
interpolated trilinearly (within a cell, linearly in t); the error of T is below
0.1 % over the grid (checked in the tests against the direct energy sum). Beyond
the last node the interpolation continues linearly in t, which slightly
over-attenuates (beam hardening goes on): about 1 % at 10 % past the soft-tissue
end, a few % for bone or metal. T is returned as float32, so transmissions below
~1e-38 (e.g. 30 g/cm2 of steel at 50 kVp) read 0.

Building a table is one matrix product over the energy bins (the triple sum
factorises) and takes about 0.1 s including the attenuation data; tables are cached
per spectrum content and panel.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numba
import numpy as np

from openfluoro.physics.attenuation import material_attenuation_table
from openfluoro.physics.detector import _BLOCK, _GAMMA, GAUSSIAN_ABOVE_QUANTA, DetectorModel, _mix, _poisson, add_noise
from openfluoro.physics.spectrum import REFERENCE_DISTANCE_MM, Spectrum
from openfluoro.scene.materials import MATERIALS

#: Upper ends of the tabulated path lengths (g/cm2): 85 cm of soft tissue, 20 cm of
#: cortical bone, 37 mm of steel. Longer paths are extrapolated.
GRID_MAX_G_CM2: tuple[float, float, float] = (90.0, 40.0, 30.0)
GRID_NODES: tuple[int, int, int] = (64, 64, 128)


@dataclass(frozen=True, eq=False)
class ResponseTable:
    """Look-up tables of log T and log V for one spectrum and one panel (see the module docstring)."""

    spectrum: Spectrum
    detector: DetectorModel
    grid_max_g_cm2: tuple[float, float, float]
    axes_g_cm2: tuple[np.ndarray, np.ndarray, np.ndarray]
    #: ``(n_soft, n_bone, n_metal, 2)`` float32: [..., 0] = log T, [..., 1] = log V
    log_tables: np.ndarray
    #: open-beam detected photons per mAs per mm2 at 1 m (n0 per unit load, area, distance)
    detected_photons_per_mas_mm2_at_1m: float
    #: <E^2>_0 / <E>_0^2 of the detected open-beam spectrum (>= 1)
    energy_variance_factor: float

    # -- scalars ---------------------------------------------------------------------
    def open_field_quanta(self, mas: float, pixel_area_mm2: float, sid_mm: float) -> float:
        """Mean detected photons in an unattenuated pixel (inverse square from the 1 m spectrum)."""
        if mas < 0 or pixel_area_mm2 <= 0 or sid_mm <= 0:
            raise ValueError(
                f"ResponseTable: need mas >= 0, pixel_area_mm2 > 0, sid_mm > 0; got {mas}, {pixel_area_mm2}, {sid_mm}"
            )
        return self.detected_photons_per_mas_mm2_at_1m * mas * pixel_area_mm2 * (REFERENCE_DISTANCE_MM / sid_mm) ** 2

    # -- images ------------------------------------------------------------------------
    def transmission(self, paths: np.ndarray) -> np.ndarray:
        """Signal transmission T (float32, shape ``paths.shape[1:]``) for ``(3, ...)`` paths in g/cm2."""
        return self._run(paths, _MODE_T)[0]

    def transmission_and_variance(self, paths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T, V) images: signal transmission and relative signal-variance factor."""
        return self._run(paths, _MODE_TV)

    def expected_signal_quanta(self, paths: np.ndarray, mas: float, pixel_area_mm2: float,
                               sid_mm: float) -> np.ndarray:
        """Mean pixel signal in open-beam detected quanta, ``n0 * T`` (float32)."""
        return self.transmission(paths) * np.float32(self.open_field_quanta(mas, pixel_area_mm2, sid_mm))

    def quanta_per_pixel(self, paths: np.ndarray, mas: float, pixel_area_mm2: float, sid_mm: float) -> np.ndarray:
        """Noise-equivalent detected quanta per pixel, ``mean^2 / variance`` (float32).

        Equals the detected photon count times the spectral Swank factor
        ``<E>^2 / <E^2>`` of the detected spectrum (about 0.9-0.95), times the optical
        Swank factor of the panel.
        """
        return self._quanta_and_gain(paths, mas, pixel_area_mm2, sid_mm)[0]

    def noisy_signal_quanta(self, paths: np.ndarray, mas: float, pixel_area_mm2: float, sid_mm: float,
                            rng: np.random.Generator) -> np.ndarray:
        """One noisy frame in open-beam detected quanta (quantum + electronic noise), float32.

        Its expectation is ``expected_signal_quanta``; divide by ``open_field_quanta``
        for a noisy transmission image.
        """
        p = np.asarray(paths)
        if p.ndim != 3:
            quanta, gain = self._quanta_and_gain(paths, mas, pixel_area_mm2, sid_mm)
            return add_noise(quanta, rng, self.detector.electronic_noise_quanta, gain)
        mean, var = self.signal_moments(p, mas, pixel_area_mm2, sid_mm)
        return self.noisy_from_moments(mean, var, rng)

    def signal_moments(self, paths: np.ndarray, mas: float, pixel_area_mm2: float, sid_mm: float,
                       mean_out: np.ndarray | None = None, var_out: np.ndarray | None = None,
                       window: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean signal and its variance (open-beam detected quanta) for a (3, rows, cols) image.

        With ``window = (r0, r1, c0, c1)`` only that rectangle of the given outputs is
        updated: a live session recomputes just where the needle moved.
        """
        p = np.asarray(paths)
        if p.ndim != 3 or p.shape[0] != len(MATERIALS) or p.dtype != np.float32:
            raise ValueError(f"ResponseTable.signal_moments: paths must be float32 ({len(MATERIALS)}, rows, cols), "
                             f"got {p.dtype} {p.shape}")
        rows, cols = p.shape[1:]
        if mean_out is None:
            mean_out = np.empty((rows, cols), dtype=np.float32)
        if var_out is None:
            var_out = np.empty((rows, cols), dtype=np.float32)
        r0, r1, c0, c1 = window if window is not None else (0, rows, 0, cols)
        n0 = self.open_field_quanta(mas, pixel_area_mm2, sid_mm)
        var_scale = n0 * self.energy_variance_factor / self.detector.optical_swank_factor
        _moments_kernel(p, self.axes_g_cm2[0], self.axes_g_cm2[1], self.axes_g_cm2[2], self.log_tables,
                        float(n0), float(var_scale), mean_out, var_out, r0, r1, c0, c1)
        return mean_out, var_out

    def noisy_from_moments(self, mean: np.ndarray, var: np.ndarray, rng: np.random.Generator,
                           out: np.ndarray | None = None) -> np.ndarray:
        """One noisy frame from ``signal_moments`` (quantum + electronic noise), float32."""
        if out is None:
            out = np.empty(mean.shape, dtype=np.float32)
        seed = np.uint64(rng.integers(0, np.iinfo(np.int64).max, dtype=np.int64))
        _noise_kernel(mean.reshape(-1), var.reshape(-1), _NORMALS, float(self.detector.electronic_noise_quanta),
                      seed, out.reshape(-1))
        return out

    # -- helpers -------------------------------------------------------------------------
    def _quanta_and_gain(self, paths, mas, pixel_area_mm2, sid_mm):
        n0 = self.open_field_quanta(mas, pixel_area_mm2, sid_mm)
        var_scale = n0 * self.energy_variance_factor / self.detector.optical_swank_factor
        return self._run(paths, _MODE_QG, n0, var_scale)

    def _run(self, paths, mode, n0=0.0, var_scale=0.0):
        flat, shape = self._flat(paths)
        a = np.empty(flat.shape[1], dtype=np.float32)
        b = np.empty(flat.shape[1] if mode != _MODE_T else 0, dtype=np.float32)
        _lookup_kernel(flat, self.axes_g_cm2[0], self.axes_g_cm2[1], self.axes_g_cm2[2],
                       self.log_tables, a, b, mode, float(n0), float(var_scale))
        return a.reshape(shape), (b.reshape(shape) if mode != _MODE_T else None)

    def _flat(self, paths: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        p = np.asarray(paths)
        if p.ndim < 1 or p.shape[0] != len(MATERIALS):
            raise ValueError(
                f"ResponseTable: paths must have shape ({len(MATERIALS)}, ...) in the order {MATERIALS}, got {p.shape}"
            )
        shape = p.shape[1:]
        return np.ascontiguousarray(p, dtype=np.float32).reshape(len(MATERIALS), -1), shape


_CACHE: "OrderedDict[tuple, ResponseTable]" = OrderedDict()
_CACHE_SIZE = 32


def response_table(spectrum: Spectrum, detector: DetectorModel | None = None) -> ResponseTable:
    """The response table for ``spectrum`` and ``detector`` (default panel if None), cached
    by spectrum content and panel so a kVp change costs one build and a revisit none."""
    detector = detector or DetectorModel()
    key = (spectrum.key, detector)
    table = _CACHE.get(key)
    if table is None:
        table = build_response_table(spectrum, detector)
        _CACHE[key] = table
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return table


def signal_weights(spectrum: Spectrum, detector: DetectorModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-energy-bin detected photons ``N eta`` per mAs per mm2 at 1 m, and mu/rho (3, nE) of ``MATERIALS``.

    Returns ``(detected, energies_kev, mu)``.
    """
    e = spectrum.energies_kev
    detected = spectrum.photons_per_mas_mm2_at_1m * detector.absorption_efficiency(e)
    return detected, e, material_attenuation_table(e, MATERIALS)


def build_response_table(
    spectrum: Spectrum,
    detector: DetectorModel,
    grid_max_g_cm2: tuple[float, float, float] = GRID_MAX_G_CM2,
    nodes: tuple[int, int, int] = GRID_NODES,
) -> ResponseTable:
    """Tabulate log T and log V (uncached; ``response_table`` caches)."""
    if len(grid_max_g_cm2) != 3 or len(nodes) != 3 or min(nodes) < 2 or min(grid_max_g_cm2) <= 0:
        raise ValueError(f"build_response_table: need 3 positive maxima and >= 2 nodes per axis, got "
                         f"{grid_max_g_cm2}, {nodes}")
    detected, e, mu = signal_weights(spectrum, detector)
    w_signal = detected * e
    w_var = detected * e * e
    axes = tuple(
        (tmax * (np.arange(n, dtype=np.float64) / (n - 1)) ** 2) for tmax, n in zip(grid_max_g_cm2, nodes)
    )
    # A_m[i, E] = exp(-mu_m(E) t_m,i); the triple sum factorises into a matrix product
    a_soft = np.exp(-np.outer(axes[0], mu[0]))
    a_bone = np.exp(-np.outer(axes[1], mu[1]))
    a_metal = np.exp(-np.outer(axes[2], mu[2]))
    sb = (a_soft[:, None, :] * a_bone[None, :, :]).reshape(-1, e.size)
    tables = np.empty(tuple(nodes) + (2,), dtype=np.float32)
    for j, w in enumerate((w_signal, w_var)):
        total = (sb @ (a_metal * (w / w.sum())).T).reshape(nodes)
        tables[..., j] = np.log(np.maximum(total, 1e-300))
    n0 = float(detected.sum())
    mean_e = float(w_signal.sum() / n0)
    mean_e2 = float(w_var.sum() / n0)
    for a in axes:
        a.setflags(write=False)
    tables.setflags(write=False)
    return ResponseTable(
        spectrum=spectrum,
        detector=detector,
        grid_max_g_cm2=tuple(float(x) for x in grid_max_g_cm2),
        axes_g_cm2=axes,
        log_tables=tables,
        detected_photons_per_mas_mm2_at_1m=n0,
        energy_variance_factor=mean_e2 / (mean_e * mean_e),
    )


# --- compiled kernel ---------------------------------------------------------------------

# fast-math without the no-NaN/no-Inf assumptions, so that NaN paths are caught
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
_MODE_T, _MODE_TV, _MODE_QG = 0, 1, 2


@numba.njit(inline="always", cache=True, fastmath=_FASTMATH)
def _locate(t, axis):
    """Cell index i and fraction f (linear in t; f > 1 beyond the last node) on a square-spaced axis."""
    n = axis.size
    tmax = axis[n - 1]
    if t <= 0.0:
        return 0, 0.0
    if t > 1e30:        # infinite path: keep the arithmetic finite, T -> 0
        t = 1e30
    u = np.sqrt(t / tmax) * (n - 1)
    i = int(u)
    if i > n - 2:       # beyond the last node (also an infinite t): extrapolate from the last cell
        i = n - 2
    if i < 0:
        i = 0
    f = (t - axis[i]) / (axis[i + 1] - axis[i])
    return i, f


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def _lookup_kernel(paths, ax0, ax1, ax2, tables, out_a, out_b, mode, n0, var_scale):
    """mode 0: a = T; mode 1: a = T, b = V; mode 2: a = Q = mean^2/var, b = gain = var/mean,
    with mean = n0 T and var = var_scale V."""
    n = paths.shape[1]
    for p in numba.prange(n):
        t0 = paths[0, p]
        t1 = paths[1, p]
        t2 = paths[2, p]
        if np.isnan(t0) or np.isnan(t1) or np.isnan(t2):
            out_a[p] = np.nan
            if mode != _MODE_T:
                out_b[p] = np.nan
            continue
        i, fi = _locate(t0, ax0)
        j, fj = _locate(t1, ax1)
        k, fk = _locate(t2, ax2)
        lt = _bilinear_or_trilinear(tables, 0, i, fi, j, fj, k, fk)
        if mode == _MODE_T:
            out_a[p] = np.exp(lt)
            continue
        lv = _bilinear_or_trilinear(tables, 1, i, fi, j, fj, k, fk)
        if mode == _MODE_TV:
            out_a[p] = np.exp(lt)
            out_b[p] = np.exp(lv)
        else:
            # Q = (n0 T)^2 / (var_scale V), gain = var_scale V / (n0 T), in log space (no overflow)
            if n0 > 0.0 and var_scale > 0.0:
                lq = 2.0 * (np.log(n0) + lt) - np.log(var_scale) - lv
                out_a[p] = np.exp(lq)
                out_b[p] = np.exp(np.log(var_scale) + lv - np.log(n0) - lt)
            else:
                out_a[p] = 0.0
                out_b[p] = 0.0


def _normal_table(n: int = 1 << 16) -> np.ndarray:
    """Standard normal deviates at the n quantile midpoints (exact quantiles, mean 0, variance
    normalised to 1): indexing it with uniform random integers draws N(0, 1) to within the
    table's resolution, at the cost of one table read instead of Box-Muller's log/sin/cos."""
    from scipy.special import ndtri

    z = ndtri((np.arange(n) + 0.5) / n)
    return (z / np.sqrt(np.mean(z**2))).astype(np.float32)


_NORMALS = _normal_table()
_LOW16 = np.uint64(0xFFFF)


@numba.njit(inline="always", cache=True, fastmath=_FASTMATH)
def _bilinear_or_trilinear(tables, c, i, fi, j, fj, k, fk):
    """Interpolated log table ``c`` at (i+fi, j+fj, k+fk); the metal axis is skipped when k = fk = 0."""
    gi = 1.0 - fi
    gj = 1.0 - fj
    if k == 0 and fk == 0.0:
        return (gi * gj * tables[i, j, 0, c] + gi * fj * tables[i, j + 1, 0, c]
                + fi * gj * tables[i + 1, j, 0, c] + fi * fj * tables[i + 1, j + 1, 0, c])
    gk = 1.0 - fk
    return (gi * gj * gk * tables[i, j, k, c] + gi * gj * fk * tables[i, j, k + 1, c]
            + gi * fj * gk * tables[i, j + 1, k, c] + gi * fj * fk * tables[i, j + 1, k + 1, c]
            + fi * gj * gk * tables[i + 1, j, k, c] + fi * gj * fk * tables[i + 1, j, k + 1, c]
            + fi * fj * gk * tables[i + 1, j + 1, k, c] + fi * fj * fk * tables[i + 1, j + 1, k + 1, c])


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def _moments_kernel(paths, ax0, ax1, ax2, tables, n0, var_scale, mean_out, var_out, r0, r1, c0, c1):
    """Mean signal ``n0 T`` and its variance ``var_scale V`` per pixel of a (3, rows, cols)
    path image, inside rows [r0, r1) x cols [c0, c1)."""
    for r in numba.prange(r0, r1):
        for c in range(c0, c1):
            i, fi = _locate(paths[0, r, c], ax0)
            j, fj = _locate(paths[1, r, c], ax1)
            k, fk = _locate(paths[2, r, c], ax2)
            mean_out[r, c] = n0 * np.exp(_bilinear_or_trilinear(tables, 0, i, fi, j, fj, k, fk))
            var_out[r, c] = var_scale * np.exp(_bilinear_or_trilinear(tables, 1, i, fi, j, fj, k, fk))


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
def _noise_kernel(mean, var, normals, sigma_e, seed, out):
    """``gain * Poisson(Q) + N(0, sigma_e^2)`` per pixel with ``Q = mean^2 / var`` and
    ``gain = var / mean`` (the noise model of ``add_noise``), drawn as one Gaussian of the
    summed variance where ``Q`` is above ``GAUSSIAN_ABOVE_QUANTA``. Random streams are per
    block of pixels, as in ``add_noise``; one 64-bit draw gives four normal deviates."""
    n = mean.size
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    s2 = sigma_e * sigma_e
    for b in numba.prange(n_blocks):
        state = _mix(seed ^ _mix(np.uint64(b) + np.uint64(1)))
        lo = b * _BLOCK
        hi = min(lo + _BLOCK, n)
        bits = np.uint64(0)
        left = 0
        for p in range(lo, hi):
            if left == 0:
                state = state + _GAMMA
                bits = _mix(state)
                left = 4
            z = normals[np.int64(bits & _LOW16)]
            bits = bits >> np.uint64(16)
            left -= 1
            m = mean[p]
            v = var[p]
            if m <= 0.0 or v <= 0.0:
                out[p] = sigma_e * z
            elif m * m >= GAUSSIAN_ABOVE_QUANTA * v:
                x = m + np.sqrt(v + s2) * z
                out[p] = x if x > -4.0 * sigma_e else -4.0 * sigma_e
            else:
                state, kk = _poisson(state, m * m / v)
                out[p] = (v / m) * kk + sigma_e * z
