"""How alike two saliency maps are: the measures of Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018 (Spearman rank correlation of absolute values, SSIM) plus the IoU of the top-20 % regions.

Shared by the model-randomisation sanity check and by `cam-infer diff`. Every function takes two maps of
the same shape (any float dtype) and returns a plain float; NumPy only.
"""

from __future__ import annotations

import numpy as np

SSIM_WINDOW = 7          # skimage.metrics.structural_similarity default win_size (uniform window)
SSIM_K1, SSIM_K2 = 0.01, 0.03
TOP_FRACTION = 0.2


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    return a, b


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a flat array, ties given the mean of the ranks they span."""
    values = np.asarray(values).ravel()
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], len(values)] - 1
    ranks = np.empty(len(values), np.float64)
    ranks[order] = (first[group] + last[group]) / 2.0 + 1.0
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation of |a| and |b|: rho = Pearson(rank|a|, rank|b|), ties averaged.

    Returns 1.0 when both maps are constant (identical orderings), 0.0 when only one is.
    """
    a, b = _pair(a, b)
    ra, rb = average_ranks(np.abs(a)), average_ranks(np.abs(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    if norm == 0:
        return 1.0 if not ra.any() and not rb.any() else 0.0
    return float((ra * rb).sum() / norm)


def normalise(saliency) -> np.ndarray:
    """Min-max to [0, 1]; a constant map becomes all zeros."""
    s = np.asarray(saliency, np.float64)
    span = s.max() - s.min()
    return (s - s.min()) / span if span > 0 else np.zeros_like(s)


def _uniform_mean(x: np.ndarray, w: int) -> np.ndarray:
    """Mean over every w x w window fully inside x (valid positions only)."""
    c = np.pad(x, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return (c[w:, w:] - c[:-w, w:] - c[w:, :-w] + c[:-w, :-w]) / (w * w)


def ssim(a, b) -> float:
    """Mean structural similarity (Wang et al. 2004) of the two maps after min-max to [0, 1].

    As skimage.metrics.structural_similarity with its defaults: 7x7 uniform window, data_range=1,
    K1=0.01, K2=0.03, sample covariance (N/(N-1)), mean over the valid (un-padded) windows:
    SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2)),
    C1 = (K1 L)^2, C2 = (K2 L)^2, L = 1.
    """
    a, b = _pair(a, b)
    if a.ndim != 2 or min(a.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs 2-D maps of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {a.shape}")
    a, b = normalise(a), normalise(b)
    w = SSIM_WINDOW
    n = w * w
    cov = n / (n - 1.0)
    mu_a, mu_b = _uniform_mean(a, w), _uniform_mean(b, w)
    var_a = cov * (_uniform_mean(a * a, w) - mu_a * mu_a)
    var_b = cov * (_uniform_mean(b * b, w) - mu_b * mu_b)
    cov_ab = cov * (_uniform_mean(a * b, w) - mu_a * mu_b)
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())  # valid windows = skimage's result cropped by (w-1)//2


def top_mask(saliency, fraction: float = TOP_FRACTION) -> np.ndarray:
    """The ceil(fraction * N) highest pixels (first in row-major order among equals)."""
    s = np.asarray(saliency, np.float64).ravel()
    k = max(1, int(np.ceil(fraction * s.size)))
    mask = np.zeros(s.size, bool)
    mask[np.argsort(-s, kind="mergesort")[:k]] = True
    return mask.reshape(np.shape(saliency))


def top_iou(a, b, fraction: float = TOP_FRACTION) -> float:
    """IoU of the top-`fraction` regions of the two maps: |T_a & T_b| / |T_a | T_b|."""
    a, b = _pair(a, b)
    ma, mb = top_mask(a, fraction), top_mask(b, fraction)
    return float((ma & mb).sum() / (ma | mb).sum())
