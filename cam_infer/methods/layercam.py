"""LayerCAM — Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for
Localization", IEEE TIP 30, 2021.

L = Σ_k ReLU(g^k) ⊙ A^k (element-wise weights: each position keeps its own positive gradient).
"""

from __future__ import annotations

import numpy as np

from .registry import Context, method


@method("layercam", needs="gradients", cost="1 forward + 1 backward through the head (torch)")
def layercam(ctx: Context) -> np.ndarray:
    """Σ_k ReLU(g^k) ⊙ A^k"""
    return (np.maximum(ctx.gradients, 0) * ctx.activations).sum(axis=1)
