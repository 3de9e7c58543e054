"""Smooth Grad-CAM++ — Omeiza, Speakman, Cintas, Weldemariam, arXiv 1908.01224: Grad-CAM++ with its
gradient terms averaged over noisy copies of the input, as in SmoothGrad.

For m = 1…n: x_m = x + ε_m, ε_m ~ N(0, std²) in the model's (normalised) input units; D1 = ∂y_c/∂A at x_m,
D2 = D1², D3 = D1³ (Grad-CAM++'s exponential-output form); D̄ = their means over the n samples.
α = D̄2 / (2·D̄2 + Σ_ab A_ab·D̄3 + ε), 0 where D̄2 = 0, ε = 1e-6 (as our Grad-CAM++);
w_k = Σ_ij α·ReLU(D̄1); L = Σ_k w_k A_k, with the clean activations A. (The paper's numerator D̄1 is
torchcam's D̄2, which we follow.) ``torchcam_compat=True`` reproduces torchcam 0.5's ``SmoothGradCAMpp``
exactly: the ReLU term uses the last sample's D1 and the map the last noisy sample's activations.
Defaults n = 4, std = 0.3 (torchcam's). With n = 1 and std = 0 it is Grad-CAM++. Noise from
``numpy.random.default_rng(seed)``. Cost: n forwards + n backwards (gradients through the head in torch).
"""

from __future__ import annotations

import numpy as np

from ..cost import Passes
from ..errors import CamInferError
from .registry import Context, method

EPS = 1e-6


@method("smoothgrad-cam++", needs="gradients", cost="n forwards + n backwards (n = samples, 4)",
        passes=lambda shape, options, linear: Passes(model=options["samples"], backward=options["samples"]))
def smoothgrad_campp(ctx: Context, *, samples: int = 4, std: float = 0.3, torchcam_compat: bool = False,
                     seed: int = 0) -> np.ndarray:
    """Grad-CAM++ with D1, D1², D1³ averaged over noisy copies of the input (SmoothGrad)"""
    if samples < 1 or std < 0:
        raise CamInferError("smoothgrad-cam++: samples must be positive and std not negative")
    rng = np.random.default_rng(seed)
    d1 = d2 = d3 = 0.0
    for _ in range(samples):
        noisy = (ctx.x + std * rng.standard_normal(ctx.x.shape)).astype(np.float32)
        a = ctx.features(noisy)
        g = ctx.gradient_source(noisy, a, ctx.targets).astype(np.float64)
        d1, d2, d3 = d1 + g, d2 + g * g, d3 + g * g * g
    d1, d2, d3 = d1 / samples, d2 / samples, d3 / samples
    activations = (a if torchcam_compat else ctx.activations).astype(np.float64)
    relu_term = np.maximum(g if torchcam_compat else d1, 0)
    total = activations.sum(axis=(2, 3), keepdims=True)
    alpha = np.where(d2 != 0, d2 / (2 * d2 + total * d3 + EPS), 0.0)
    weights = (alpha * relu_term).sum(axis=(2, 3))                               # (N,K)
    return np.einsum("nk,nkhw->nhw", weights, activations, optimize=True).astype(np.float32)
