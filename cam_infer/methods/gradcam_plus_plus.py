"""Grad-CAM++ — Chattopadhay et al., "Grad-CAM++: Generalized Gradient-based Visual Explanations
for Deep Convolutional Networks", WACV 2018 (arXiv 1710.11063), in pytorch-grad-cam's form
(which assumes Y = exp(y^c)):

α^k_ij = (g^k_ij)² / (2 (g^k_ij)² + Σ_ab A^k_ab (g^k_ij)³ + ε), 0 where g^k_ij = 0, ε = 1e-6;
w_k = Σ_ij α^k_ij ReLU(g^k_ij); L = Σ_k w_k A^k.
"""

from __future__ import annotations

import numpy as np

from .registry import Context, method

EPS = 1e-6


@method("gradcam++", needs="gradients", cost="1 forward + 1 backward through the head (torch)")
def gradcam_plus_plus(ctx: Context) -> np.ndarray:
    """α^k_ij = g²/(2g² + Σ_ab A^k_ab g³ + 1e-6), 0 where g = 0; w_k = Σ_ij α^k_ij ReLU(g^k_ij) (pytorch-grad-cam's form)"""
    g = ctx.gradients.astype(np.float64)
    a = ctx.activations.astype(np.float64)
    g2 = g * g
    total = a.sum(axis=(2, 3), keepdims=True)
    alpha = np.where(g != 0, g2 / (2 * g2 + total * g2 * g + EPS), 0.0)
    weights = (alpha * np.maximum(g, 0)).sum(axis=(2, 3))                        # (N,K)
    return np.einsum("nk,nkhw->nhw", weights, a, optimize=True).astype(np.float32)
