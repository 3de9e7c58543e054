"""ROAD — Rong, Leemann, Borisov, Kasneci, Kasneci, "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML 2022 (arXiv 2202.00449); the definitions of pytorch-grad-cam 1.5.7
(`pytorch_grad_cam/metrics/road.py`, `perturbation_confidence.py`), which are the paper's code.

At percentile p of the map S (NumPy's linear interpolation), MoRF keeps the pixels with S < t_p and removes
the rest (the top 100 − p % at p); LeRF keeps those with (1 − S) < t_p of 1 − S (removes the least relevant
100 − p %). Removed pixels are filled by noisy linear imputation: each takes the weighted mean of its eight
neighbours (weights 1/6 on the sides, 1/12 on the diagonals, only neighbours inside the image), a sparse
linear system over all removed pixels at once, plus N(0, 0.01²) noise. A score at p is the class probability
after imputation minus the one on the image; MoRF and LeRF are their means over p = 10, 20, …, 90 and
ROAD combined = (LeRF − MoRF)/2 (higher is better: removing what the map calls relevant hurts more than
removing what it calls irrelevant).

The system is solved here without SciPy, by conjugate gradients on the whole grid written with array shifts
(Jacobi-preconditioned, started from the problem solved at half resolution; the system is symmetric positive
definite whenever a pixel is kept), to a relative residual of 1e-6: imputed values within ~1e-5 of the exact
solution, a thousandth of the noise. The noise is a fixed function of (seed, order, percentile), so a run is
reproducible.

ARCC (pytorch-grad-cam 1.5.7, `metrics/arcc.py`): the harmonic mean of Coherency, 1 − Complexity and ROAD
combined at 20, 40, 60, 80 doubled and clipped to [0, 1]: 3 / (1/(Coh + ε) + 1/(1 − Cx + ε) + 1/(R + ε)),
ε = 1e-8, Coherency = (ρ + 1)/2 with ρ the Pearson correlation of S and the map of x ⊙ S
(cov/(σσ + ε), n − 1 normalised), Complexity = mean |S|.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import CamInferError
from ..postprocess import resize_planes

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ARCC_PERCENTILES = (20, 40, 60, 80)
ORDERS = ("morf", "lerf")
NOISE = 0.01
EPSILON = 1e-8
# (row, column) offset → weight, the paper's
NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
              ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))
KERNEL = np.zeros((3, 3))
for (_row, _column), _weight in NEIGHBOURS:
    KERNEL[1 + _row, 1 + _column] = _weight


def kept_pixels(saliency: np.ndarray, percentile: float, order: str) -> np.ndarray:
    """(H,W) bool: the pixels kept at this percentile; MoRF keeps S < t_p, LeRF keeps (1 − S) < t_p of 1 − S
    (in float32, as the reference compares)."""
    if order not in ORDERS:
        raise CamInferError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    s = np.asarray(saliency, np.float32)
    if order == "lerf":
        s = (np.float32(1) - s).astype(np.float32)
    return s < np.float32(np.percentile(s, percentile))


def road_defined(saliency: np.ndarray, percentiles=PERCENTILES) -> bool:
    """Whether every percentile of both orders keeps a pixel (a map with more than p % of its pixels at its
    minimum keeps none for MoRF at p: nothing to impute from, and the reference's system is singular)."""
    return all(kept_pixels(saliency, p, order).any() for p in percentiles for order in ORDERS)


def noise_draws(shape: tuple[int, ...], order: str, percentile: int, seed: int = 0) -> np.ndarray:
    """The imputation's standard normal draws (C, removed pixels) for this order and percentile."""
    return np.random.default_rng([seed, ORDERS.index(order), int(percentile)]).standard_normal(shape)


def neighbour_weights(shape: tuple[int, int]) -> np.ndarray:
    """(H,W): the summed weight of each pixel's neighbours inside the grid (1 inside, less on the border)."""
    return _neighbour_sum(np.ones(shape))


def _neighbour_sum(u: np.ndarray) -> np.ndarray:
    """Σ_k w_k u(pixel + offset_k) per channel, 0 outside the grid: a 3×3 correlation with NEIGHBOURS' weights."""
    if u.ndim == 2:
        return cv2.filter2D(u, -1, KERNEL, borderType=cv2.BORDER_CONSTANT)
    return np.stack([_neighbour_sum(channel) for channel in u])


def linear_imputation(x: np.ndarray, kept: np.ndarray, tolerance: float = 1e-6) -> np.ndarray:
    """(C,H,W), kept (H,W) → (C,H,W) float64: every removed pixel the weighted mean of its neighbours,
    the kept ones unchanged: D·u − W_removed·u = W_kept·x on the removed pixels, D the summed weights
    (`neighbour_weights`). Cascadic conjugate gradients: the problem at half resolution first (recursively),
    its solution upsampled as the starting point (the low frequencies plain CG is slow on)."""
    x = np.asarray(x, np.float64)
    kept = np.asarray(kept, bool)
    if kept.all():
        return x.copy()
    if not kept.any():
        raise CamInferError("noisy linear imputation needs at least one kept pixel (the map is constant)")
    return _conjugate_gradients(x, kept, _coarse_start(x, kept), tolerance)


def _coarse_start(x: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """A starting point: the imputation of the 2×2-block means (a block kept when any of its pixels is),
    upsampled; zeros on grids too small to halve."""
    c, h, w = x.shape
    if min(h, w) < 32:
        return np.zeros_like(x)
    h2, w2 = h // 2 * 2, w // 2 * 2
    blocks = kept[:h2, :w2].reshape(h2 // 2, 2, w2 // 2, 2)
    counts = blocks.sum(axis=(1, 3))
    sums = (x[:, :h2, :w2] * kept[:h2, :w2]).reshape(c, h2 // 2, 2, w2 // 2, 2).sum(axis=(2, 4))
    coarse_kept = counts > 0
    coarse = np.zeros((c, h2 // 2, w2 // 2))
    coarse[:, coarse_kept] = sums[:, coarse_kept] / counts[coarse_kept]
    solved = coarse if coarse_kept.all() else _conjugate_gradients(coarse, coarse_kept,
                                                                   _coarse_start(coarse, coarse_kept), 1e-3)
    return resize_planes(solved, (h, w))


def _conjugate_gradients(x: np.ndarray, kept: np.ndarray, start: np.ndarray, tolerance: float,
                         max_iterations: int = 20000) -> np.ndarray:
    """The imputation system solved from `start` to a relative residual of `tolerance` (every channel),
    Jacobi-preconditioned; the kept pixels are x's."""
    removed = ~kept
    diagonal = neighbour_weights(kept.shape)

    removed_weights = removed * diagonal
    only_removed = removed.astype(np.float64)

    def system(u):                       # u zero on the kept pixels
        return removed_weights * u - only_removed * _neighbour_sum(u)

    def dot(a, b):
        return np.einsum("chw,chw->c", a, b)[:, None, None]

    rhs = np.where(removed, _neighbour_sum(np.where(kept, x, 0.0)), 0.0)
    u = np.where(removed, start, 0.0)
    r = rhs - system(u)
    z = r / diagonal
    p = z
    rz = dot(r, z)
    goal = tolerance * np.maximum(np.sqrt(dot(rhs, rhs)), 1e-30)
    for _ in range(max_iterations):
        if np.all(np.sqrt(dot(r, r)) <= goal):
            break
        q = system(p)
        pq = dot(p, q)
        alpha = rz / np.where(pq == 0, 1, pq)
        u += alpha * p
        r -= alpha * q
        z = r / diagonal
        rz_next = dot(r, z)
        p = z + rz_next / np.where(rz == 0, 1, rz) * p
        rz = rz_next
    return np.where(kept, x, u)


def noisy_linear_imputation(x: np.ndarray, kept: np.ndarray, draws: np.ndarray | None = None,
                            noise: float = NOISE) -> np.ndarray:
    """`linear_imputation` plus noise·draws on the removed pixels (draws (C, removed), in row-major pixel
    order; None: no noise), float32."""
    out = linear_imputation(x, kept)
    if draws is not None and noise:
        out[:, ~kept] += noise * draws
    return out.astype(np.float32)


def perturbed(x: np.ndarray, saliency: np.ndarray, order: str, percentiles=PERCENTILES, noise: float = NOISE,
              seed: int = 0) -> np.ndarray:
    """(P,C,H,W): the image imputed at each percentile for one order."""
    out = []
    for p in percentiles:
        kept = kept_pixels(saliency, p, order)
        draws = noise_draws((x.shape[0], int((~kept).sum())), order, p, seed) if noise else None
        out.append(noisy_linear_imputation(x, kept, draws, noise))
    return np.stack(out)


@dataclass(frozen=True)
class Road:
    """One image's ROAD: the class probability on the image and after imputation at each percentile."""

    base: float
    percentiles: tuple[int, ...]
    morf_curve: np.ndarray                # (P,) probabilities
    lerf_curve: np.ndarray

    def _mean_change(self, curve: np.ndarray, percentiles) -> float:
        picked = [self.percentiles.index(p) for p in percentiles]
        return float(np.mean(np.float32(curve[picked]) - np.float32(self.base)))

    def morf(self, percentiles=None) -> float:
        return self._mean_change(self.morf_curve, percentiles or self.percentiles)

    def lerf(self, percentiles=None) -> float:
        return self._mean_change(self.lerf_curve, percentiles or self.percentiles)

    def combined(self, percentiles=None) -> float:
        return (self.lerf(percentiles) - self.morf(percentiles)) / 2


def road(probability, x: np.ndarray, saliency: np.ndarray, base: float | None = None, percentiles=PERCENTILES,
         noise: float = NOISE, seed: int = 0) -> Road:
    """One image (C,H,W) and its map (H,W) → `Road`. `probability(batch)` → the explained class's probability
    on each input of a batch; both orders go through it in one batch (2·P inputs); `base`: the probability on
    the image when already known (else one more input)."""
    batch = np.concatenate([perturbed(x, saliency, order, percentiles, noise, seed) for order in ORDERS])
    if base is None:
        batch = np.concatenate([x[None].astype(np.float32), batch])
    scores = np.asarray(probability(batch), np.float64)
    if base is None:
        base, scores = float(scores[0]), scores[1:]
    n = len(percentiles)
    return Road(float(base), tuple(percentiles), scores[:n], scores[n:])


def arcc_coherency(saliency: np.ndarray, again: np.ndarray) -> float:
    """(ρ + 1)/2, ρ = cov/(σ_a σ_b + ε) with n − 1 normalisation (pytorch-grad-cam's `Coherency`)."""
    a, b = np.asarray(saliency, np.float64).ravel(), np.asarray(again, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    n = a.size - 1
    rho = (a * b).sum() / n / (np.sqrt((a * a).sum() / n) * np.sqrt((b * b).sum() / n) + EPSILON)
    return float((rho + 1) / 2)


def arcc(coherency: float, complexity: float, road_combined: float) -> float:
    """3 / (1/(Coh + ε) + 1/(1 − Cx + ε) + 1/(clip(2·ROAD, 0, 1) + ε))."""
    r = float(np.clip(2 * road_combined, 0, 1))
    return float(3 / (1 / (coherency + EPSILON) + 1 / ((1 - complexity) + EPSILON) + 1 / (r + EPSILON)))
