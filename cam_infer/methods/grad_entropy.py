"""Grad Entropy-CAM — after "Enhancing Explainability in CNNs Using Entropy-Based Class
Activation Maps" (ECSA-11, 2024; Eng. Proc. 82(1), 2): entropy in place of Grad-CAM's gradient
average. The paper gives no formula; ours, as Feature Entropy-CAM's on |g|:

w_k = Ĥ(|g^k|) (spatial Shannon entropy normalised by ln(h·w), or ``estimator="histogram"`` on g^k),
``weighting="negentropy"``: 1 − Ĥ; L = Σ_k w_k A^k.

It cannot tell classes apart where the gradients are constant in space: at a layer followed by
global average pooling and a linear layer, g^k = W_ck/(h·w) for every position, so every channel
has the maximal spatial entropy (1) whatever the class, and the map is Σ_k A^k for all classes: there
its explanations are class-agnostic (`agnostic_on_linear_head`), shown and recorded under no class.
It carries class information only where gradients vary in space (VGG-style heads, inner layers).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .entropy import channel_entropy
from .registry import Context, method


@method("grad-entropy", needs="gradients", cost="1 forward + 1 backward through the head (torch)",
        agnostic_on_linear_head=True)
def grad_entropy(ctx: Context, *, estimator: Literal["spatial", "histogram"] = "spatial",
                 weighting: Literal["entropy", "negentropy"] = "entropy") -> np.ndarray:
    """Σ_k Ĥ(|g^k|) A^k; class-agnostic on GAP→linear heads"""
    maps = []
    for a, g in zip(ctx.activations, ctx.gradients):
        w = channel_entropy(np.abs(g) if estimator == "spatial" else g, estimator)
        if weighting == "negentropy":
            w = 1.0 - w
        maps.append(np.tensordot(w, a, axes=1))
    return np.stack(maps).astype(np.float32)
