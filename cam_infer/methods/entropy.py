"""Feature Entropy-CAM — after "Enhancing Explainability in CNNs Using Entropy-Based Class
Activation Maps" (ECSA-11, 2024; Eng. Proc. 82(1), 2). The paper gives no formula; ours:

w_k = Ĥ(A^k), L = Σ_k w_k A^k, with the spatial Shannon entropy (default)
Ĥ(X) = −Σ_u p_u ln p_u / ln(h·w), p_u = max(X_u,0) / Σ_v max(X_v,0) (0 when X ≤ 0 everywhere),
or ``estimator="histogram"``: min–max X to [0,1], 256 bins, −Σ q_b log₂ q_b / log₂ min(h·w, 256).
``weighting="negentropy"`` uses 1 − Ĥ (concentrated channels count more).

Why spatial by default: on 7×7 maps a 256-bin histogram puts nearly every value in its own bin,
so all weights come out ≈ equal; the spatial distribution is what a CAM is about. Class-agnostic.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from .registry import Context, check_choice, method


def channel_entropy(a: np.ndarray, estimator: str) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return kernels.spatial_entropy(a) if estimator == "spatial" else kernels.histogram_entropy(a, 256)


@method("entropy")
def entropy(ctx: Context, *, estimator: str = "spatial", weighting: str = "entropy") -> np.ndarray:
    check_choice("estimator", estimator, ("spatial", "histogram"))
    check_choice("weighting", weighting, ("entropy", "negentropy"))
    maps = []
    for a in ctx.activations:
        w = channel_entropy(a, estimator)
        if weighting == "negentropy":
            w = 1.0 - w
        maps.append(np.tensordot(w, a, axes=1))
    return np.stack(maps).astype(np.float32)
