"""HiResCAM — Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
convolutional neural networks", arXiv 2011.08891 (2020).

L = Σ_k g^k ⊙ A^k. On a GAP→linear head g^k = W_ck/(h·w) everywhere, so L = CAM/(h·w).
"""

from __future__ import annotations

import numpy as np

from .registry import Context, implements, method


@method("hirescam", needs="gradients", cost="1 forward + 1 backward through the head (torch)")
def hirescam(ctx: Context) -> np.ndarray:
    """Σ_k g^k ⊙ A^k (= CAM/(h·w) on GAP→linear heads)"""
    return (ctx.gradients * ctx.activations).sum(axis=1)


@implements("hirescam", "segmentation", cost="1 forward + 1 backward through the head (torch) per target")
def hirescam_segments(ctx: Context) -> np.ndarray:
    """Σ_k g^k ⊙ A^k of the region score: where the region's pixels read the cut"""
    return hirescam(ctx)
