"""HiResCAM — Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
convolutional neural networks", arXiv 2011.08891 (2020).

L = Σ_k g^k ⊙ A^k. On a GAP→linear head g^k = W_ck/(h·w) everywhere, so L = CAM/(h·w).

At a cut the head reads through a LayerNorm only (a class-token ViT's stream before its last block), the sum
cancels: LayerNorm is scale-invariant, so Σ_k g^k A^k is 0 but for its ε (7.6e-17 in float64 with ε = 0; 1e-6
of Σ_k |g^k A^k| at float32, rounding noise in a float16 file). A map whose |L| stays below `CANCELLED` of
Σ_k |g^k A^k| at every position is that residue, not evidence: it is returned flat (reported degenerate).
"""

from __future__ import annotations

import numpy as np

from .registry import Context, implements, method


CANCELLED = 1e-3          # twice float16's unit roundoff: beyond any rounding of the terms, far below evidence


@method("hirescam", needs="gradients", cost="1 forward + 1 backward through the head (torch)")
def hirescam(ctx: Context) -> np.ndarray:
    """Σ_k g^k ⊙ A^k (= CAM/(h·w) on GAP→linear heads)"""
    terms = ctx.gradients * ctx.activations
    maps = terms.sum(axis=1)
    scale = np.abs(terms).sum(axis=1).max(axis=(-2, -1))                                  # (N,)
    cancelled = np.abs(maps).max(axis=(-2, -1)) <= CANCELLED * scale
    maps[cancelled] = 0.0
    return maps


@implements("hirescam", "segmentation", cost="1 forward + 1 backward through the head (torch) per target")
def hirescam_segments(ctx: Context) -> np.ndarray:
    """Σ_k g^k ⊙ A^k of the region score: where the region's pixels read the cut"""
    return hirescam(ctx)
