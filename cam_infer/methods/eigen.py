"""Eigen-CAM — Muhammad & Yeasin, IJCNN 2020 (arXiv 2008.00299).

O = A reshaped to (h·w, K); L = O v₁ = σ₁ u₁, the projection on the first principal component,
computed through the h·w×h·w Gram matrix O Oᵀ (u₁ its top eigenvector, L = √λ₁ u₁), or through
OᵀO (K×K, L = O v₁) when the layer has fewer channels than positions: the same L, a smaller
eigenproblem.
Sign made deterministic: not centred (the paper), flip so that Σ_k v₁ₖ ≥ 0 (for A ≥ 0, Perron–
Frobenius gives v₁ ≥ 0, so L ≥ 0); ``centered=True`` subtracts the column means first, as
pytorch-grad-cam's EigenCAM does, and flips so that L correlates positively with the channel mean.
Class-agnostic.
"""

from __future__ import annotations

import numpy as np

from .registry import Context, method


def first_component(a: np.ndarray, centered: bool) -> np.ndarray:
    """(K,h,w) → (h,w) projection on the first principal component, sign fixed."""
    k, h, w = a.shape
    o = a.reshape(k, h * w).T.astype(np.float64)                   # (hw, K)
    if centered:
        o = o - o.mean(axis=0, keepdims=True)
    if h * w <= k:
        values, vectors = np.linalg.eigh(o @ o.T)
        projection = vectors[:, -1] * np.sqrt(max(values[-1], 0.0))
    else:
        projection = o @ np.linalg.eigh(o.T @ o)[1][:, -1]
    if centered:
        reference = a.mean(axis=0).ravel()
        flip = np.dot(projection - projection.mean(), reference - reference.mean()) < 0
    else:
        flip = np.sum(o.T @ projection) < 0                         # Oᵀ L = σ₁² v₁: the sign of Σ_k v₁ₖ
    return (-projection if flip else projection).reshape(h, w).astype(np.float32)


@method("eigen")
def eigen(ctx: Context, *, centered: bool = False) -> np.ndarray:
    return np.stack([first_component(a, centered) for a in ctx.activations])
