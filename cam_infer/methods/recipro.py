"""Recipro-CAM — Byun & Lee, CVPR Workshops 2024 (arXiv 2209.14074).

S_c(i, j) = softmax(head(A ⊙ M_ij))_c, M_ij keeping only position (i, j) over all channels
(``kernel="onehot"``), or spreading A[:, i, j] over its 3×3 neighbourhood scaled by
[[1,2,1],[2,4,2],[1,2,1]]/16 (``kernel="gaussian3"``, the official CNN code's variant).
``score="logit"`` uses the raw logit instead (what openvino-xai computes).
Closed form for a GAP→linear head: head(A ⊙ M_ij) = W·A[:, i, j]·g_ij/(h·w) + b, with g_ij the sum
of the kernel weights inside the map, so no head pass is needed (``closed_form=False`` forces the
head passes, for checking).
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..errors import CamInferError
from .registry import Context, check_choice, method, softmax

KERNELS = {
    "onehot": np.ones((1, 1), np.float32),
    "gaussian3": np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 16,
}


def kernel_mass(kernel: np.ndarray, h: int, w: int) -> np.ndarray:
    """g_ij: the sum of kernel weights that land inside the map when centred at (i, j)."""
    ones = np.ones((1, h, w), np.float32)
    out = np.empty((h * w, 1, h, w), np.float32)
    kernels.recipro_masked_batch(ones, kernel, out)
    return out.reshape(h * w, -1).sum(axis=1).reshape(h, w)


@method("recipro", needs="head")
def recipro(ctx: Context, *, score: str = "prob", kernel: str = "onehot", closed_form: bool = True) -> np.ndarray:
    check_choice("score", score, ("prob", "logit"))
    check_choice("kernel", kernel, tuple(KERNELS))
    if score == "logit" and ctx.bundle.output_kind == "probabilities":
        raise CamInferError("score='logit' needs a model that outputs logits; this one ends in a softmax")
    n, k, h, w = ctx.activations.shape
    if closed_form and ctx.linear_head is not None:
        return _closed_form(ctx, KERNELS[kernel], score)
    masked = np.empty((h * w, k, h, w), np.float32)
    maps = np.empty((n, h, w), np.float32)
    for i, a in enumerate(ctx.activations):
        kernels.recipro_masked_batch(a, KERNELS[kernel], masked)
        outputs = ctx.backend.head(masked)
        scores = outputs if score == "logit" else ctx.probabilities(outputs)
        maps[i] = scores[:, ctx.targets[i]].reshape(h, w)
    return maps


def _closed_form(ctx: Context, kernel: np.ndarray, score: str) -> np.ndarray:
    head = ctx.linear_head
    n, k, h, w = ctx.activations.shape
    mass = kernel_mass(kernel, h, w).reshape(1, h * w, 1)
    pooled = ctx.activations.reshape(n, k, h * w).transpose(0, 2, 1) * mass / (h * w)   # (N, hw, K)
    logits = head.logits(pooled)                                                         # (N, hw, C)
    scores = softmax(logits) if score == "prob" else logits
    return np.take_along_axis(scores, ctx.targets[:, None, None], axis=2)[..., 0].reshape(n, h, w)
