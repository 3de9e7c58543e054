"""Score-CAM — Wang et al., CVPR Workshops 2020 (arXiv 1910.01279).

For each channel k: M_k = minmax(bilinear(A^k → H×W)), s_k = softmax(model(x ⊙ M_k))_c (x the
normalised input, so masked-out pixels become the dataset mean), L = Σ_k s_k A^k — the official
code's weighting (``weighting="reference"``). Bilinear upsampling is linear, so Σ_k s_k up(A^k) =
up(Σ_k s_k A^k): maps are combined at feature resolution. Constant channels are skipped (weight 0).
``weighting="channel-softmax"``: s = softmax over channels of the target's raw model outputs on
the masked inputs (pytorch-grad-cam's ScoreCAM). ``top_k=N``: only the N channels of largest
spatial std (Faster Score-CAM). Cost: one full pass per kept channel, in chunks.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..kernels import bilinear_minmax_masks, masked_inputs
from ..errors import CamInferError
from ..numerics import softmax
from .masked_passes import channel_passes, full_passes_of
from .registry import Context, method


def selected_channels(a: np.ndarray, top_k: int | None) -> np.ndarray:
    k = a.shape[0]
    if top_k is None or top_k >= k:
        return np.arange(k)
    std = a.reshape(k, -1).std(axis=1)
    return np.sort(np.argpartition(-std, top_k - 1)[:top_k])


def rows_per_call(bundle, memory_budget: int, channels: int) -> int:
    """Masked images per backend call: a full pass of each, plus its mask and input, within the budget."""
    _, height, width = bundle.input_shape
    per_pass = bundle.bytes_per_item("features") + bundle.bytes_per_item("head")
    return int(max(1, min(channels, memory_budget // (per_pass + 16 * height * width))))


@method("score", needs="model", cost="1 full pass per channel (K, or top_k)", floor=full_passes_of(lambda options: 1),
        passes=channel_passes(lambda options: 1),
        bench={"score top_k=64": {"top_k": 64}, "score": {}})
def score(ctx: Context, *, weighting: Literal["reference", "channel-softmax"] = "reference",
          top_k: int | None = None) -> np.ndarray:
    """one full pass per channel on x ⊙ minmax(bilinear(A^k)); weight = softmax probability of the class (official code)"""
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise CamInferError(f"top_k must be a positive integer, not {top_k!r}")
    n, k, h, w = ctx.activations.shape
    _, height, width = ctx.bundle.input_shape
    rows = rows_per_call(ctx.bundle, ctx.backend.memory_budget, k)
    masks = np.empty((rows, height, width), np.float32)
    masked = np.empty((rows, ctx.x.shape[1], height, width), np.float32)
    maps = np.empty((n, h, w), np.float32)
    for i, a in enumerate(ctx.activations):
        channels = selected_channels(a, top_k).astype(np.int64)
        raw = np.full(len(channels), np.nan, np.float32)
        for start in range(0, len(channels), rows):
            chunk = channels[start:start + rows]
            valid = bilinear_minmax_masks(np.ascontiguousarray(a), chunk, height, width, masks)
            kept = np.flatnonzero(valid)
            if kept.size == 0:
                continue
            masked_inputs(ctx.x[i], masks[kept] if kept.size < len(chunk) else masks[:len(chunk)],
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
