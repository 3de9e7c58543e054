"""IS-CAM — Naidu, Ghosh, Maurya, Nayak K, Kundu, "IS-CAM: Integrated Score-CAM for axiomatic-based
explanations" (arXiv 2010.03023). No official code; torchcam's ``ISCAM`` is the reference.

Masks M_k = U(n(A_k)) (min–max at feature resolution, then bilinear). With N steps and coefficients c_i,
S_k = Σ_i y_c(c_i · M_k ⊙ x) (the class logit), w = softmax_k(S_k / N), L = Σ_k w_k A_k.
``preset="torchcam"``: the cumulative c_i = Σ_{j≤i} j/N = i(i+1)/(2N) (0.1, 0.3, …, 5.5 for N = 10) that
torchcam computes (six of ten passes amplify the masked input beyond the image);
``preset="linear"``: c_i = i/N, the straight path from the zero input (this package's reading).
The baseline y_c(x) torchcam subtracts cancels in the softmax and is left out. Cost: K·N full passes
(``top_k``: the channels of largest spatial std, as Score-CAM's option).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..numerics import softmax
from .masked_passes import (batched_scores, channel_passes, check_counts, full_passes_of, masks, rows_per_call,
                            selected_channels)
from .registry import Context, implements, method


def coefficients(preset: str, samples: int) -> np.ndarray:
    """The input scales c_1 … c_N of the N passes per channel."""
    steps = np.arange(1, samples + 1, dtype=np.float64)
    return (np.cumsum(steps / samples) if preset == "torchcam" else steps / samples).astype(np.float32)


@method("is-cam", needs="model", cost="K·N full passes (N = samples, 10)", in_all=False,
        floor=full_passes_of(lambda o: o.get("samples", 10)),
        passes=channel_passes(lambda o: o["samples"]), bench={"is-cam top_k=16": {"top_k": 16}})
def is_cam(ctx: Context, *, preset: Literal["torchcam", "linear"] = "torchcam", samples: int = 10,
           top_k: int | None = None) -> np.ndarray:
    """Score-CAM integrated along N input scales: softmax over channels of the mean class logit of c_i·M_k⊙x"""
    check_counts(top_k, samples)
    n, k, h, w = ctx.activations.shape
    size = ctx.x.shape[2:]
    scales = coefficients(preset, samples)
    maps = np.empty((n, h, w), np.float32)
    for i, a in enumerate(ctx.activations):
        channels = selected_channels(a, top_k).astype(np.int64)
        m, valid = masks(a, channels, size, "normalise-then-upsample")
        rows = rows_per_call(ctx.bundle, ctx.backend.memory_budget, len(channels) * samples)
        inputs = (scale * (m[j] * ctx.x[i]) for j in range(len(channels)) for scale in scales)
        scores = batched_scores(ctx, inputs, len(channels) * samples, i, "logit", rows)
        weights = np.zeros(k, np.float32)
        weights[channels] = softmax(scores.reshape(len(channels), samples).mean(axis=1).astype(np.float64))
        maps[i] = np.tensordot(weights, a, axes=1)
    return maps


@implements("is-cam", "segmentation", in_all=False, cost="K·N full passes per target (N = samples, 10)")
def is_cam_segments(ctx: Context, *, preset: Literal["torchcam", "linear"] = "torchcam", samples: int = 10,
                    top_k: int | None = None) -> np.ndarray:
    """IS-CAM on the region score"""
    return is_cam(ctx, preset=preset, samples=samples, top_k=top_k)
