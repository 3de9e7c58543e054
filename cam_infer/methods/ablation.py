"""Ablation-CAM — Desai & Ramaswamy, WACV 2020, pp. 972–980.

w_k = (y_c − y_c,k) / |y_c|, L = Σ_k w_k A^k, where y_c,k is the class score with channel k of A
set to 0. Guard: the paper divides by y_c, which flips every weight when the logit y_c ≤ 0; we
divide by max(|y_c|, 1e-8) instead (a positive per-image constant, so maps keep their meaning).
``score="logit"`` (default, the paper's class score) or ``"prob"``. For a GAP→linear head,
y_c − y_c,k = W_ck·mean(A^k) exactly, so no head pass is needed (``closed_form=False`` forces them).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..kernels import ablated_batch
from ..cost import Passes
from ..numerics import softmax
from .registry import Context, method

EPS = 1e-8


def passes(shape, options: dict, linear_head: bool) -> Passes:
    """K head rows, none for the closed form."""
    return Passes() if options["closed_form"] and linear_head else Passes(head=shape[0])


@method("ablation", needs="head", cost="1 feature pass + K head rows (none: exact closed form on GAP→linear heads)",
        bench={"ablation": {}, "ablation (head passes)": {"closed_form": False}}, passes=passes)
def ablation(ctx: Context, *, score: Literal["logit", "prob"] = "logit", closed_form: bool = True) -> np.ndarray:
    """(y_c − y_c,k)/|y_c| per channel (the |·| guards y_c ≤ 0); closed form on GAP→linear heads"""
    if score == "logit" and ctx.bundle.output_kind == "probabilities":
        score = "prob"  # the model gives no logits; its probabilities are the class score
    n, k, h, w = ctx.activations.shape
    maps = np.empty((n, h, w), np.float32)
    for i, a in enumerate(ctx.activations):
        c = int(ctx.targets[i])
        full, ablated = _target_scores(ctx, i, c, score, closed_form)
        weights = (full - ablated) / max(abs(full), EPS)
        maps[i] = np.tensordot(weights.astype(np.float32), a, axes=1)
    return maps


def _target_scores(ctx: Context, i: int, c: int, score: str, closed_form: bool) -> tuple[float, np.ndarray]:
    """Score of class c on image i: unablated, and with each channel ablated in turn (K,)."""
    a = ctx.activations[i]
    k = a.shape[0]
    if closed_form and ctx.linear_head is not None:
        head = ctx.linear_head
        pooled = a.mean(axis=(1, 2))                                              # (K,)
        logits = head.logits(pooled[None])[0]                                     # (C,)
        if ctx.finer is not None:
            ablated = logits[None, :] - pooled[:, None] * head.weight.T          # (K,C)
            return float(ctx.class_scores(logits[None], i, score)[0]), ctx.class_scores(ablated, i, score)
        if score == "logit":
            return float(logits[c]), logits[c] - pooled * head.weight[c]
        ablated = logits[None, :] - pooled[:, None] * head.weight.T               # (K,C)
        return float(softmax(logits)[c]), softmax(ablated)[:, c]
    outputs = ctx.outputs[i]
    rows = max(1, min(k, ctx.backend.chunk_size("head")))
    batch = np.empty((rows, *a.shape), np.float32)
    ablated = []
    for start in range(0, k, rows):
        channels = np.arange(start, min(k, start + rows))
        ablated_batch(a, channels, batch)
        ablated.append(ctx.backend.head(batch[:len(channels)]))
    ablated = np.concatenate(ablated)
    return float(ctx.class_scores(outputs[None], i, score)[0]), ctx.class_scores(ablated, i, score)
