"""Attention rollout — Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020 (arXiv 2005.00928).

For each block l, the attention probabilities A_l (H heads, T×T) are fused over the heads (mean, max or min),
the lowest ``discard_ratio`` of the fused entries set to 0 (never the class token's own entry [0, 0]), the
residual added and the rows renormalised:

    Â_l = (fuse_h A_l + I) / 2,   Â_l ← Â_l / Â_l·1,   R = Â_L · … · Â_2 · Â_1

and the map is the class token's row of R over the patch grid, R[0, P:] reshaped to (h, w). Heads fused and
tokens discarded as the reference code does (jacobgil/vit-explain, ``vit_rollout.py``: ``head_fusion="mean"``,
``discard_ratio=0.9``); ``renormalise="reference"`` divides as that code's ``a / a.sum(dim=-1)`` does, which
broadcasts the row sums along the last axis (column j divided by the sum of row j), where ``"rows"`` (the paper)
divides each row by its own sum.

Gradient-free and class-agnostic: one pass of the model with the attention Softmax outputs of every block exposed
(`bundle.tokens.with_attention`), no class involved.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..kernels import rollout_step
from ..errors import CamInferError, MethodNotApplicable
from .registry import Context, method


@method("rollout", needs="attention", cost="1 pass of the model with its attention probabilities as outputs",
        class_specific=False, in_all=False)
def rollout(ctx: Context, *, head_fusion: Literal["mean", "max", "min"] = "mean", discard_ratio: float = 0.9,
            renormalise: Literal["rows", "reference"] = "rows") -> np.ndarray:
    """The class token's row of the product of the blocks' head-fused attention, identity added (Abnar & Zuidema).
    ``head_fusion`` is applied in the clean pass (`Task.observe_for`): the attention arrives fused."""
    if not 0.0 <= discard_ratio < 1.0:
        raise CamInferError(f"rollout: discard_ratio must be in [0, 1), not {discard_ratio!r}")
    tokens = ctx.bundle.tokens
    if tokens is None or ctx.attention is None:
        raise MethodNotApplicable("method 'rollout' explains vision transformers (split at a block); this bundle is no "
                                  "token model")
    if tokens.prefix == 0:
        raise no_class_token("rollout")
    if not tokens.class_token:
        raise MethodNotApplicable("method 'rollout' reads the class token's row of the attention, and this model's "
                                  "head pools its patch tokens, not a class token (its prefix tokens are registers "
                                  "or unread); use recipro, ablation or score")
    count = tokens.prefix + tokens.grid[0] * tokens.grid[1]
    shapes = {tuple(a.shape[1:]) for a in ctx.attention}
    if shapes != {(count, count)}:
        raise MethodNotApplicable(f"method 'rollout' needs every block's attention over all {count} tokens, "
                                  f"({count}, {count}) per head; this graph's Softmax outputs give "
                                  f"{sorted(shapes)} (windowed attention?)")
    row = class_token_row(ctx.attention, discard_ratio, renormalise)
    return row[:, tokens.prefix:].reshape(len(row), *tokens.grid).astype(np.float32)


def no_class_token(method: str) -> MethodNotApplicable:
    """The refusal of an attention method on a model without a class token."""
    return MethodNotApplicable(f"method '{method}' reads the class token's row of the attention, and this model has "
                               "no class token (a Swin-style grid of tokens); use recipro, ablation or score")


def class_token_row(fused: list[np.ndarray], discard_ratio: float = 0.9, renormalise: str = "rows") -> np.ndarray:
    """Row 0 of R = Â_L · … · Â_1 for the attention fused over the heads [(N,T,T) per block, in order] → (N,T).

    Only the class token's row is needed, so it is carried from the last block down as a vector, v ← v·Â_l,
    never forming R: O(L·T²) per image instead of O(L·T³). With F the fused, discarded attention and s its row
    sums plus 1, Â = (F + I)/2 / (s/2) row by row, so v·Â = ((v/s)·F + v/s); the reference's division by s along
    the last axis gives v·Â = (v·F + v)/s. The discarded entries are those at or below the fused matrix's
    ``discard_ratio`` quantile (the reference's topk of the lowest, up to ties), selected exactly (`kth_smallest`);
    s and v·F are then one pass over the block (`kernels.rollout_step`)."""
    n, t, _ = fused[0].shape
    v = np.zeros((n, t), np.float64)
    v[:, 0] = 1.0
    drop = int(t * t * discard_ratio)
    for block in reversed(fused):
        block = np.ascontiguousarray(block, np.float32)
        thresholds = np.full(n, -np.inf, np.float32)
        if drop:
            thresholds = np.array([kth_smallest(image.ravel(), drop - 1) for image in block], np.float32)
        rollout_step(block, thresholds, renormalise == "reference", v)
    return v


SAMPLE_STRIDE = 16


def kth_smallest(values: np.ndarray, k: int):
    """The k-th smallest (0-based) of `values` (m,), exactly ``np.partition(values, k)[k]``, selected inside a
    bracket: quantiles of a strided sample around k/m, four standard deviations of a binomial count apart, give
    lo ≤ hi; one pass counts the values below lo and gathers those in [lo, hi] (~5 % of them), and the select runs
    there. Where the bracket misses the k-th value, the whole partition. Why: NumPy's AVX-512 selection stores
    through compress instructions, which AMD's Zen 4 microcodes: 0.23 ms for 197² float32 there (48 µs on a Zen 3),
    the bracket 0.055 ms."""
    m = values.size
    sample = values[::SAMPLE_STRIDE]
    p, s = k / m, sample.size
    margin = 4.0 * np.sqrt(s * p * (1.0 - p)) + 2.0
    low, high = max(int(p * s - margin), 0), min(int(p * s + margin), s - 1)
    picked = np.partition(sample, (low, high))
    lo, hi = picked[low], picked[high]
    inside = values[(values >= lo) & (values <= hi)]
    j = k - np.count_nonzero(values < lo)
    if 0 <= j < inside.size:
        return np.partition(inside, j)[j]
    return np.partition(values, k)[k]
