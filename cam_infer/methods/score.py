"""Score-CAM — Wang et al., CVPR Workshops 2020 (arXiv 1910.01279).

For each channel k: M_k = minmax(bilinear(A^k → H×W)), s_k = softmax(model(x ⊙ M_k))_c (x the
normalised input, so masked-out pixels become the dataset mean), L = Σ_k s_k A^k — the official
code's weighting (``weighting="reference"``). Bilinear upsampling is linear, so Σ_k s_k up(A^k) =
up(Σ_k s_k A^k): maps are combined at feature resolution. Constant channels are skipped (weight 0).
``weighting="channel-softmax"``: s = softmax over channels of the target's raw model outputs on
the masked inputs (pytorch-grad-cam's ScoreCAM). ``top_k=N``: only the N channels of largest
spatial std (Faster Score-CAM). Cost: one full pass per kept channel, in chunks.

Detectors: for each channel k of each cut level, the input is multiplied by M = minmax(U(A_l^k)) and run
through the whole model; the weight is the target's ``match`` score (T2: the best IoU × class score of its box
among the new predictions, since the anchor that finds the object can move), and each level's map is
Σ_k w_k A_l^k, combined unit-free (`levels.unit_free`). The masked passes do not depend on the target: one set
serves every detection of the image. ``top_k`` keeps the k channels of each level by the same rule as for
classifiers (largest spatial std). Cost: Σ_l C_l (or top_k per level) full passes per image, batched.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..kernels import bilinear_minmax_masks, masked_inputs
from ..cost import Passes
from ..numerics import softmax
from .levels import unit_free
from .masked_passes import channel_passes, check_counts, full_passes_of, masks, rows_per_call, selected_channels
from .registry import Context, implements, method


@method("score", needs="model", cost="1 full pass per channel (K, or top_k)", floor=full_passes_of(lambda options: 1),
        passes=channel_passes(lambda options: 1),
        bench={"score top_k=64": {"top_k": 64}, "score": {}})
def score(ctx: Context, *, weighting: Literal["reference", "channel-softmax"] = "reference",
          top_k: int | None = None) -> np.ndarray:
    """one full pass per channel on x ⊙ minmax(bilinear(A^k)); weight = softmax probability of the class (official code)"""
    check_counts(top_k)
    n, k, h, w = ctx.activations.shape
    _, height, width = ctx.bundle.input_shape
    rows = rows_per_call(ctx.bundle, ctx.backend.memory_budget, k)
    mask_rows = np.empty((rows, height, width), np.float32)
    masked = np.empty((rows, ctx.x.shape[1], height, width), np.float32)
    maps = np.empty((n, h, w), np.float32)
    for i, a in enumerate(ctx.activations):
        channels = selected_channels(a, top_k).astype(np.int64)
        raw = np.full(len(channels), np.nan, np.float32)
        for start in range(0, len(channels), rows):
            chunk = channels[start:start + rows]
            valid = bilinear_minmax_masks(np.ascontiguousarray(a), chunk, height, width, mask_rows)
            kept = np.flatnonzero(valid)
            if kept.size == 0:
                continue
            masked_inputs(ctx.x[i], mask_rows[kept] if kept.size < len(chunk) else mask_rows[:len(chunk)],
                                  masked)
            outputs = ctx.backend.forward(masked[:kept.size])
            values = ctx.class_scores(outputs, i, "prob" if weighting == "reference" else "logit")
            raw[start + kept] = values
        weights = np.zeros(k, np.float32)
        ok = ~np.isnan(raw)
        if weighting == "reference":
            weights[channels[ok]] = raw[ok]
        elif ok.any():
            weights[channels[ok]] = softmax(raw[ok].astype(np.float64)).astype(np.float32)
        maps[i] = np.tensordot(weights, a, axes=1)
    return maps


CHUNK = 32           # a detector's masked inputs made at a time (320×320: 40 MB)


def image_passes(ctx, *, top_k: int | None = None, score: str = "match") -> Passes:
    """One model pass per channel (or top_k) of each level, at most (constant channels are skipped)."""
    return Passes(model=sum(min(c, top_k or c) for c, _, _ in (level["shape"] for level in ctx.levels)), bound=True)


@implements("score", "detection", image_passes=image_passes, in_all=False,
            cost="Σ_l C_l full passes per image (or top_k per level), shared by its targets")
def score_detections(ctx, targets, *, top_k: int | None = None,
                     score: Literal["match", "anchor"] = "match") -> list[np.ndarray]:
    """mean_l U(minmax(Σ_k s(x ⊙ M_k) A_l^k)), M_k the min–max'd upsampled channel: what keeps the box found"""
    check_counts(top_k)
    outputs = {}
    for i, a in enumerate(ctx.level_maps()):
        channels = selected_channels(a, top_k)
        kept, results = [], []
        for start in range(0, len(channels), CHUNK):
            chunk = channels[start:start + CHUNK]
            m, valid = masks(a, chunk, ctx.size, "upsample-then-normalise")
            if valid.any():
                kept.append(chunk[valid])
                results.append(ctx.forward(ctx.x[0][None] * m[valid][:, None]))
        if kept:
            outputs[i] = (np.concatenate(kept), np.concatenate(results))
    levels = ctx.level_maps()
    return [unit_free({i: np.tensordot(channel_weights(len(levels[i]), channels, ctx.scores(out, target, score)),
                                       levels[i], axes=1) for i, (channels, out) in outputs.items()}, ctx.size)
            for target in targets]


def channel_weights(count: int, channels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Channel weights: the scores of the channels that were run, 0 for the others."""
    w = np.zeros(count, np.float32)
    w[channels] = values
    return w


@implements("score", "segmentation", in_all=False, cost="1 full pass per channel (K, or top_k) per target")
def score_segments(ctx: Context, *, weighting: Literal["reference", "channel-softmax"] = "reference",
                   top_k: int | None = None) -> np.ndarray:
    """Score-CAM with the region score of the masked inputs as each channel's weight"""
    return score(ctx, weighting=weighting, top_k=top_k)
