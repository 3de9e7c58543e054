"""Integrated Grad-CAM — Sattarzadeh, Sudhakar, Plataniotis, Jang, Jeong, Kim, ICASSP 2021 (arXiv
2102.07805): Grad-CAM's gradient term integrated along the straight path from a black image to the input.

Baseline b: a black image through the bundle's preprocessing. x_i = b + (i/m)(x − b).
``preset="official"`` (the authors' notebook): i = 0…m−1 (the baseline in, x itself out: a left Riemann
sum), and L = Σ_i ReLU(Σ_k GAP(∂y_c/∂A_k at x_i) · A_k(x_i)), a ReLU per step and a zero activation
baseline. With m = 1 it is Grad-CAM at the baseline (intended, not a bug).
``preset="integral"`` (the paper's formula as we read it): i = 1…m and
L = Σ_k Σ_i (A_k(x_i) − A_k(b)) · GAP(∂y_c/∂A_k at x_i), one ReLU at the end (in post-processing).
y_c is the class's pre-softmax score. Cost: m forwards + m backwards per image, batched (m = steps, 50).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..cost import Passes
from ..errors import CamInferError
from .registry import Context, method


@method("integrated-gradcam", needs="gradients", cost="m forwards + m backwards (m = steps, 50), batched",
        passes=lambda shape, options, linear: Passes(model=options["steps"], backward=options["steps"]))
def integrated_gradcam(ctx: Context, *, preset: Literal["official", "integral"] = "official",
                       steps: int = 50) -> np.ndarray:
    """Grad-CAM terms summed along the straight path from a black image to the input"""
    if steps < 1:
        raise CamInferError("integrated-gradcam: steps must be positive")
    prep = ctx.bundle.preprocessing
    baseline = prep.standardise(np.zeros((*ctx.x.shape[2:], 3), np.uint8))                     # (C,H,W)
    first = 0 if preset == "official" else 1
    alphas = np.arange(first, first + steps, dtype=np.float32) / steps
    n = len(ctx.x)
    maps = np.empty(ctx.activations.shape[:1] + ctx.activations.shape[2:], np.float32)
    a_base = None if preset == "official" else ctx.features(baseline[None]).astype(np.float64)[0]
    for i in range(n):
        path = (baseline[None] + alphas[:, None, None, None] * (ctx.x[i] - baseline)[None]).astype(np.float32)
        a = ctx.features(path).astype(np.float64)                                      # (m,K,h,w)
        targets = np.full(steps, ctx.targets[i], np.int64)
        weights = ctx.gradient_source(path, a.astype(np.float32), targets).astype(np.float64).mean(axis=(2, 3))
        if preset == "official":
            maps[i] = np.maximum(np.einsum("mk,mkhw->mhw", weights, a), 0).sum(axis=0)
        else:
            maps[i] = np.einsum("mk,mkhw->hw", weights, a - a_base[None])
    return maps
