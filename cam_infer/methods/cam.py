"""CAM — Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016.

L^c = Σ_k W_ck A^k, with W the weights of the linear layer after global average pooling, read
from the head graph. Only for GAP→linear heads.
"""

from __future__ import annotations

import numpy as np

from .registry import Context, method
from ..errors import CamInferError


def require_linear_head(ctx: Context, name: str):
    if ctx.linear_head is None:
        ops = ", ".join(ctx.bundle.manifest["graphs"]["head"]["ops"])
        raise CamInferError(f"method '{name}' needs a head that is global average pooling followed by a linear "
                            f"layer; this head has {ops}; use recipro, ablation or score instead")
    return ctx.linear_head


@method("cam", needs="linear_head")
def cam(ctx: Context) -> np.ndarray:
    head = require_linear_head(ctx, "cam")
    weights = head.weight[ctx.targets]                              # (N,K)
    return np.einsum("nk,nkhw->nhw", weights, ctx.activations, optimize=True)
