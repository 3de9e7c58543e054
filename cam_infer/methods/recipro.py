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

from typing import Literal

import numpy as np

from ..kernels import recipro_masked_batch
from ..cost import Passes
from ..errors import CamInferError
from ..numerics import softmax
from .registry import Context, fused, method

KERNELS = {
    "onehot": np.ones((1, 1), np.float32),
    "gaussian3": np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 16,
}


def kernel_mass(kernel: np.ndarray, h: int, w: int) -> np.ndarray:
    """g_ij: the sum of kernel weights that land inside the map when centred at (i, j)."""
    ones = np.ones((1, h, w), np.float32)
    out = np.empty((h * w, 1, h, w), np.float32)
    recipro_masked_batch(ones, kernel, out)
    return out.reshape(h * w, -1).sum(axis=1).reshape(h, w)


def passes(shape, options: dict, linear_head: bool) -> Passes:
    """h·w head rows, none for the closed form."""
    _, h, w = shape
    return Passes() if options["closed_form"] and linear_head else Passes(head=h * w)


@method("recipro", needs="head", cost="1 feature pass + h·w head rows (none: exact closed form on GAP→linear heads)",
        bench={"recipro": {}, "recipro (head passes)": {"closed_form": False}}, passes=passes)
def recipro(ctx: Context, *, score: Literal["prob", "logit"] = "prob", kernel: Literal["onehot", "gaussian3"] = "onehot",
            closed_form: bool = True) -> np.ndarray:
    """softmax(head(A ⊙ M_ij))_c over the h·w one-hot masks; exact closed form on GAP→linear heads"""
    if score == "logit" and ctx.bundle.output_kind == "probabilities":
        raise CamInferError("score='logit' needs a model that outputs logits; this one ends in a softmax")
    n, k, h, w = ctx.activations.shape
    if closed_form and ctx.linear_head is not None:
        return _closed_form(ctx, KERNELS[kernel], score)
    masked = np.empty((h * w, k, h, w), np.float32)
    maps = np.empty((n, h, w), np.float32)
    for i, a in enumerate(ctx.activations):
        recipro_masked_batch(a, KERNELS[kernel], masked)
        maps[i] = ctx.class_scores(ctx.backend.head(masked), i, score).reshape(h, w)
    return maps


def _closed_form(ctx: Context, kernel: np.ndarray, score: str) -> np.ndarray:
    head = ctx.linear_head
    n, k, h, w = ctx.activations.shape
    mass = kernel_mass(kernel, h, w).reshape(1, h * w, 1)
    pooled = ctx.activations.reshape(n, k, h * w).transpose(0, 2, 1) * mass / (h * w)   # (N, hw, K)
    logits = head.logits(pooled)                                                         # (N, hw, C)
    if ctx.finer is not None:
        return np.stack([ctx.class_scores(logits[i], i, score) for i in range(n)]).reshape(n, h, w)
    scores = softmax(logits) if score == "prob" else logits
    return np.take_along_axis(scores, ctx.targets[:, None, None], axis=2)[..., 0].reshape(n, h, w)


@fused("recipro", class_specific=True)
def recipro_onnx(f, *, score: str = "prob", kernel: str = "onehot", closed_form: bool = True) -> str:
    """S_c(i,j) = softmax(head(A ⊙ M_ij))_c. GAP→linear heads: one MatMul of the head's weights with
    the position vectors A[:,i,j]·g_ij/(h·w). Other heads: the head applied to the h·w masked copies,
    stacked in the batch dimension, masks made in the graph (no h·w×h·w constant)."""
    if score == "logit" and f.output_kind == "probabilities":
        raise CamInferError("score='logit' needs a model that outputs logits; this one ends in a softmax")
    b = f.b
    k, h, w = f.shape
    positions = b.op("Transpose", f.channels_by_position(), perm=[0, 2, 1], hint="positions")   # (N,hw,K)
    if closed_form and f.linear_head is not None:
        mass = kernel_mass(KERNELS[kernel], h, w).reshape(1, h * w, 1) / (h * w)
        scores = f.linear_scores(f.linear_head, b.op("Mul", positions, b.const(mass)))
        softmax_needed = score == "prob"
    else:
        scores = f.head_on_masked_copies(positions, KERNELS[kernel])
        softmax_needed = score == "prob" and f.output_kind == "logits"
    scores = b.reshape(scores, (-1, h * w, f.num_classes), hint="scores")                     # (N,hw,C)
    if softmax_needed:
        scores = b.op("Softmax", scores, axis=-1)
    index = b.op("Expand", b.unsqueeze(f.targets, [1]), b.ints([1, h * w, 1]), hint="index")   # (N,hw,T)
    chosen = b.op("GatherElements", scores, index, axis=2)
    return f.per_class(b.op("Transpose", chosen, perm=[0, 2, 1]))
