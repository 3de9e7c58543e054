"""XGrad-CAM — Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation
of CNNs", BMVC 2020 (arXiv 2008.02312).

α_k = Σ_ij (A^k_ij / (Σ_ab A^k_ab + ε)) g^k_ij, ε = 1e-7 (pytorch-grad-cam's); L = Σ_k α_k A^k.
"""

from __future__ import annotations

import numpy as np

from .registry import Context, method

EPS = 1e-7


@method("xgradcam", needs="gradients", cost="1 forward + 1 backward through the head (torch)")
def xgradcam(ctx: Context) -> np.ndarray:
    """α_k = Σ_ij A^k_ij g^k_ij / (Σ_ab A^k_ab + 1e-7)"""
    a = ctx.activations
    weights = (ctx.gradients * a).sum(axis=(2, 3)) / (a.sum(axis=(2, 3)) + EPS)   # (N,K)
    return np.einsum("nk,nkhw->nhw", weights, a, optimize=True)
