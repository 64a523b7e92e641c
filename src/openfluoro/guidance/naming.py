"""Naming the interspaces of a detected disc chain with a small model trained on phantom frames.

Each detected interspace is described by the image around it: a 120 x 240 mm window (at the
isocentre scale, superior up, anterior left in laterals) centred on the disc, smoothed and
sampled every 6 mm, standardised, plus its position in the frame. A multinomial logistic
regression per view kind (lateral / AP) gives the probability of each name (T12-L1 .. L5-S1);
the window is large enough to hold the anchors a radiologist would count from -- the
sacrum and the pelvis, the iliac crests, the lowest ribs. The chain's names are then chosen
jointly: consecutive discs of the chain (a skipped disc counts two steps) take consecutive
names, and the offset with the largest summed log-probability wins.

The weights (``models/level_names.npz``) were trained by ``openfluoro.guidance.train_levels``
on frames of phantoms with seeds in the development range (below ``cases.EVAL_SEED_FLOOR``),
and on randomised variants of those frames (``train_levels.augment_view``: display gamma, soft
blobs, a CT's scan range ending in the field, AP mirror) so that the names transfer to
frames of real CTs; half of the variants are seen through a collimator
(``train_levels.collimated_field``): behind the blades the window holds no values, as beyond
the frame's edge. The evaluation draws phantoms from the disjoint range.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from openfluoro.guidance import _filters as F

CLASSES = ("T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")
PATCH_W_MM, PATCH_H_MM, STEP_MM = 120.0, 240.0, 6.0
MODEL_PATH = Path(__file__).resolve().parent / "models" / "level_names.npz"


def smooth_for_features(small: np.ndarray, px_per_mm: float) -> np.ndarray:
    """The smoothed image the windows are sampled from: the normalised frame at quarter
    resolution (``levels._quarter``) with its own ``px_per_mm``."""
    return F.blur(np.asarray(small, np.float32), 0.25 * STEP_MM * px_per_mm)


def to_small(p_full: Sequence[float], scale: int = 4) -> tuple[float, float]:
    """Full-resolution (normalised) pixel -> quarter-resolution pixel coordinates."""
    return ((p_full[0] - (scale - 1) / 2.0) / scale, (p_full[1] - (scale - 1) / 2.0) / scale)


def disc_features(sm: np.ndarray, px_per_mm: float, cx: float, cy: float) -> np.ndarray:
    """Feature vector of the interspace at (cx, cy) (pixels of ``sm``, whose scale is
    ``px_per_mm``) in a normalised, smoothed frame."""
    P = px_per_mm
    xs = np.arange(-PATCH_W_MM / 2 + STEP_MM / 2, PATCH_W_MM / 2, STEP_MM) * P + cx
    ys = np.arange(-PATCH_H_MM / 2 + STEP_MM / 2, PATCH_H_MM / 2, STEP_MM) * P + cy
    X, Y = np.meshgrid(xs, ys)
    v = F.bilinear(sm, X.ravel().astype(np.float64), Y.ravel().astype(np.float64)).astype(np.float64)
    ok = ~np.isnan(v)
    if ok.any():
        m, s = float(v[ok].mean()), float(v[ok].std()) + 5.0
    else:
        m, s = 0.0, 1.0
    f = np.where(ok, (v - m) / s, 0.0)
    rows, cols = sm.shape
    extra = [(cy - rows / 2) / P / 100.0, (cx - cols / 2) / P / 100.0, float(ok.mean())]
    return np.concatenate([f, ok.astype(float) * 0.5, extra])


@lru_cache(maxsize=2)
def _load(path: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    p = Path(path)
    if not p.is_file():
        return {}
    with np.load(p) as z:
        return {k: (z[f"{k}_mu"], z[f"{k}_sd"], z[f"{k}_W"]) for k in ("lateral", "ap") if f"{k}_W" in z}


def model_available(kind: str, path: Path = MODEL_PATH) -> bool:
    return kind in _load(str(path))


def name_probabilities(kind: str, features: np.ndarray, path: Path = MODEL_PATH) -> np.ndarray | None:
    """(n_discs, n_classes) probabilities, or None without a model for this view kind."""
    models = _load(str(path))
    if kind not in models:
        return None
    mu, sd, W = models[kind]
    X = np.atleast_2d(features)
    Xs = np.hstack([(X - mu) / sd, np.ones((len(X), 1))])
    z = Xs @ W
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def name_chain(prob: np.ndarray, steps: Sequence[int], outside_logp: float = math.log(0.02)
               ) -> tuple[list[str | None], float, dict[int, float]]:
    """Consecutive names for a chain: (names, confidence, log-score per offset).

    Offsets may put chain discs above T12-L1 or below L5-S1 (a band that is no lumbar
    interspace: the end of the scanned body, a sacral line); those get ``outside_logp`` and
    the name None."""
    K = prob.shape[1]
    logp = np.log(prob + 1e-9)
    span = steps[-1] if len(steps) else 0
    scores: dict[int, float] = {}
    for o in range(-span - 1, K + 1):
        idx = [o + k for k in steps]
        if not any(0 <= j < K for j in idx):
            continue
        scores[o] = float(sum(logp[i, j] if 0 <= j < K else outside_logp for i, j in enumerate(idx)))
    o = max(scores, key=scores.get)
    srt = sorted(scores.values(), reverse=True)
    margin = float(srt[0] - srt[1]) if len(srt) > 1 else 10.0
    conf = float(1.0 - math.exp(-margin))
    names = [CLASSES[o + k] if 0 <= o + k < K else None for k in steps]
    return names, conf, scores


def save_model(path: Path, models: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], meta: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for k, (mu, sd, W) in models.items():
        arrays[f"{k}_mu"] = mu.astype(np.float32)
        arrays[f"{k}_sd"] = sd.astype(np.float32)
        arrays[f"{k}_W"] = W.astype(np.float32)
    np.savez_compressed(path, meta=np.array(meta), classes=np.array(CLASSES), **arrays)
    _load.cache_clear()
