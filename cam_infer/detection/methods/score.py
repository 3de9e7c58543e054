"""Score-CAM for detections (Wang et al., CVPR Workshops 2020, with a detection score): for each channel k of
each cut level, the input is multiplied by M = minmax(U(A_l^k)) and run through the whole model; the weight
is the target's ``match`` score (T2: the best IoU × class score of its box among the new predictions, since
the anchor that finds the object can move), and each level's map is Σ_k w_k A_l^k, combined unit-free.
The masked passes do not depend on the target: one set serves every detection of the image.
``top_k`` keeps the k channels of each level with the largest mean activation.
Cost: Σ_l C_l (or top_k per level) full passes per image, batched."""

from __future__ import annotations

import numpy as np

from ...methods.masked_passes import masks
from ...cost import Passes
from . import detection_method, unit_free

CHUNK = 32           # masked inputs made at a time (320×320: 40 MB)


def image_passes(ctx, *, top_k: int | None = None, **_) -> Passes:
    """One model pass per channel (or top_k) of each level, at most (constant channels are skipped)."""
    return Passes(model=sum(min(c, top_k or c) for c, _, _ in (level["shape"] for level in ctx.levels)), bound=True)


@detection_method("score", cost="Σ_l C_l full passes per image (or top_k per level), shared by its targets",
                  image_passes=image_passes)
def score(ctx, targets, *, top_k: int | None = None, score: str = "match", **_):
    """mean_l U(minmax(Σ_k s(x ⊙ M_k) A_l^k)), M_k the min–max'd upsampled channel: what keeps the box found"""
    outputs = {}
    for i, a in enumerate(ctx.level_maps()):
        channels = np.argsort(-a.mean(axis=(1, 2)), kind="stable")[:top_k] if top_k else np.arange(len(a))
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
    return [unit_free({i: np.tensordot(weights(len(levels[i]), channels, ctx.scores(out, target, score)), levels[i],
                                       axes=1) for i, (channels, out) in outputs.items()}, ctx.size)
            for target in targets]


def weights(count: int, channels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Channel weights: the scores of the channels that were run, 0 for the others."""
    w = np.zeros(count, np.float32)
    w[channels] = values
    return w
