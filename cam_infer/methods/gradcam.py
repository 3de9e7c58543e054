"""Grad-CAM — Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017 (arXiv 1610.02391).

g^k = ∂y^c/∂A^k (y^c the pre-softmax score); α_k = (1/hw) Σ_ij g^k_ij; L = Σ_k α_k A^k.
"""

from __future__ import annotations

import numpy as np

from .registry import Context, implements, method


@method("gradcam", needs="gradients", cost="1 forward + 1 backward through the head (torch)")
def gradcam(ctx: Context) -> np.ndarray:
    """Σ_k α_k A^k, α_k = mean_ij g^k_ij (g = ∂y^c/∂A, y^c before softmax)"""
    weights = ctx.gradients.mean(axis=(2, 3))                                  # (N,K)
    return np.einsum("nk,nkhw->nhw", weights, ctx.activations, optimize=True)


@implements("gradcam", "segmentation", cost="1 forward + 1 backward through the head (torch) per target")
def seg_gradcam(ctx: Context) -> np.ndarray:
    """Seg-Grad-CAM (Vinogradova et al., AAAI 2020): Grad-CAM of the region score (1/|R|) Σ_{p∈R} y_c(p)"""
    return gradcam(ctx)
