"""CAM — Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016.

L^c = Σ_k W_ck A^k, with W the weights of the linear layer after global average pooling, read
from the head graph. Only for GAP→linear heads.
"""

from __future__ import annotations

import numpy as np

from .registry import Context, fused, method, require_linear_head


@method("cam", needs="linear_head", cost="1 feature pass")
def cam(ctx: Context) -> np.ndarray:
    """Σ_k W_ck A^k, W read from a GAP→linear head"""
    head = require_linear_head(ctx, "cam")
    if ctx.finer is not None:                                        # Finer-CAM: W_c − γ·mean_d W_d
        weights = np.stack([ctx.finer.weight_row(head.weight, int(c), refs)
                            for c, refs in zip(ctx.targets, ctx.finer_refs)])
    else:
        weights = head.weight[ctx.targets]                          # (N,K)
    return np.einsum("nk,nkhw->nhw", weights, ctx.activations)     # NumPy's own loop: no BLAS pool left spinning


@fused("cam", class_specific=True)
def cam_onnx(f) -> str:
    """L^c = Σ_k W_ck A^k with W the head's own weight tensor (no copy): a Gather and a MatMul."""
    weights = f.class_rows(f.require_linear_head("cam"))                      # (N,T,K)
    return f.per_class(f.weighted_sum(weights))
