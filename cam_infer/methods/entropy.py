"""Feature Entropy-CAM — after "Enhancing Explainability in CNNs Using Entropy-Based Class
Activation Maps" (ECSA-11, 2024; Eng. Proc. 82(1), 2). The paper gives no formula; ours:

w_k = Ĥ(A^k), L = Σ_k w_k A^k, with the spatial Shannon entropy (default)
Ĥ(X) = −Σ_u p_u ln p_u / ln(h·w), p_u = max(X_u,0) / Σ_v max(X_v,0) (0 when X ≤ 0 everywhere),
or ``estimator="histogram"``: min–max X to [0,1], 256 bins, −Σ q_b log₂ q_b / log₂ min(h·w, 256).
``weighting="negentropy"`` uses 1 − Ĥ (concentrated channels count more).

Why spatial by default: on 7×7 maps a 256-bin histogram puts nearly every value in its own bin,
so all weights come out ≈ equal; the spatial distribution is what a CAM is about. Class-agnostic.

Detectors: each cut level's entropy-weighted channel sum, its entropies over the level's own grid, combined
unit-free (`levels.unit_free`); one map per image.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..kernels import histogram_entropy, spatial_entropy
from ..errors import CamInferError
from .levels import unit_free
from .registry import Context, fused, implements, method

TINY = 1e-30


def channel_entropy(a: np.ndarray, estimator: str) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return spatial_entropy(a) if estimator == "spatial" else histogram_entropy(a, 256)


@method("entropy", cost="1 feature pass")
def entropy(ctx: Context, *, estimator: Literal["spatial", "histogram"] = "spatial",
            weighting: Literal["entropy", "negentropy"] = "entropy") -> np.ndarray:
    """Σ_k Ĥ(A^k) A^k, Ĥ the spatial Shannon entropy normalised by ln(h·w)"""
    a = np.asarray(ctx.activations, np.float32)
    w = np.stack([channel_entropy(m, estimator) for m in a])
    if weighting == "negentropy":
        w = 1.0 - w
    return np.einsum("nk,nkhw->nhw", w, a)               # NumPy's own loop: no BLAS thread pool left spinning


@fused("entropy", class_specific=False)
def entropy_onnx(f, *, estimator: str = "spatial", weighting: str = "entropy") -> str:
    """The spatial entropy weights in the graph (Relu, ReduceSum, Log), then one MatMul."""
    if estimator != "spatial":
        raise CamInferError("a fused entropy map supports estimator='spatial' only (a 256-bin histogram per "
                            "channel has no compact ONNX form); use the Explainer for estimator='histogram'")
    b = f.b
    k, h, w = f.shape
    positive = b.op("Relu", f.activation)
    total = b.reduce("ReduceSum", positive, [2, 3])
    p = b.op("Div", positive, b.op("Max", total, b.const(TINY)), hint="p")
    plogp = b.op("Mul", p, b.op("Log", b.op("Max", p, b.const(TINY))))
    log_n = float(np.log(h * w)) if h * w > 1 else 1.0
    weights = b.op("Mul", b.reduce("ReduceSum", plogp, [2, 3]), b.const(-1.0 / log_n), hint="entropy")  # (N,K,1,1)
    if weighting == "negentropy":
        weights = b.op("Sub", b.const(1.0), weights, hint="negentropy")
    row = b.reshape(weights, (0, 1, k), hint="weights")                                             # (N,1,K)
    return b.reshape(f.weighted_sum(row), (0, h, w), hint="map")


def entropy_weighted(a: np.ndarray, estimator: str, weighting: str) -> np.ndarray:
    """Σ_k w_k A^k of one image's (K,h,w) maps, w_k = Ĥ(A^k) or 1 − Ĥ(A^k)."""
    w = channel_entropy(a, estimator)
    return np.einsum("k,khw->hw", 1.0 - w if weighting == "negentropy" else w, np.asarray(a, np.float32))


@implements("entropy", "detection", cost="no extra pass")
def entropy_detections(ctx, targets, *, estimator: Literal["spatial", "histogram"] = "spatial",
                       weighting: Literal["entropy", "negentropy"] = "entropy") -> list[np.ndarray]:
    """mean_l U(minmax(Σ_k Ĥ(A_l^k) A_l^k)): the channels whose energy is concentrated, whatever the detection"""
    m = unit_free({i: entropy_weighted(a, estimator, weighting) for i, a in enumerate(ctx.level_maps())}, ctx.size)
    return [m for _ in targets]


@implements("entropy", "segmentation", cost="no extra pass")
def entropy_segments(ctx: Context, *, estimator: Literal["spatial", "histogram"] = "spatial",
                     weighting: Literal["entropy", "negentropy"] = "entropy") -> np.ndarray:
    """entropy-weighted channel sum of the cut, one map per image whatever the class and region"""
    return entropy(ctx, estimator=estimator, weighting=weighting)
