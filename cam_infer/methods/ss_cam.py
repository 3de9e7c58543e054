"""SS-CAM — Wang, Naidu, Michael, Kundu, "SS-CAM: Smoothed Score-CAM for sharper visual feature
localization" (arXiv 2006.14255): Score-CAM with its channel scores averaged over N noisy copies.

``preset="torchcam"`` (torchcam's ``SSCAM``, the default): M_k = U(n(A_k)); for each of N samples
δ ~ N(0, std²) of shape H×W (per channel, shared over the colour channels); S_k = (1/N) Σ y_c((M_k + δ) ⊙ x)
(the class logit); w = softmax_k(S); L = Σ_k w_k A_k.
``preset="paper-mask"`` (the authors' SSCAM1): s_k = U(A_k) raw, skipped when constant; ε of shape H×W with
std σ_k = std / range(s_k); w_k = mean softmax probability of (s_k + ε) ⊙ x.
``preset="paper-input"`` (SSCAM2): z_k = n(U(A_k)) ⊙ x; ε of shape C×H×W with σ_k = std / range(z_k);
w_k = mean softmax probability of z_k + ε.
The authors' code passes σ_k as torch's ``normal_`` std argument after squaring it, so its noise std is
σ_k², not σ_k: ``sigma_is_variance=True`` (default) reproduces that for the paper presets. Noise comes from
``numpy.random.default_rng(seed)``, drawn channel by channel, sample by sample: a seed gives the same map
every time. Cost: K·N full passes (N = samples, 35; ``top_k``: the channels of largest spatial std).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..numerics import softmax
from .masked_passes import (batched_scores, channel_passes, check_counts, full_passes_of, masks, rows_per_call,
                            selected_channels)
from .registry import Context, implements, method


@method("ss-cam", needs="model", cost="K·N full passes (N = samples, 35)", in_all=False,
        floor=full_passes_of(lambda o: o.get("samples", 35)),
        passes=channel_passes(lambda o: o["samples"]), bench={"ss-cam top_k=16": {"top_k": 16}})
def ss_cam(ctx: Context, *, preset: Literal["torchcam", "paper-mask", "paper-input"] = "torchcam",
           samples: int = 35, std: float = 2.0, sigma_is_variance: bool = True, top_k: int | None = None,
           seed: int = 0) -> np.ndarray:
    """Score-CAM with channel scores averaged over N noisy copies of the masks or masked inputs"""
    check_counts(top_k, samples, std)
    n, k, h, w = ctx.activations.shape
    size = ctx.x.shape[2:]
    maps = np.empty((n, h, w), np.float32)
    for i, a in enumerate(ctx.activations):
        rng = np.random.default_rng(seed)
        channels = selected_channels(a, top_k).astype(np.int64)
        order = {"torchcam": "normalise-then-upsample", "paper-mask": "upsample",
                 "paper-input": "upsample-then-normalise"}[preset]
        m, valid = masks(a, channels, size, order)
        if preset != "torchcam":                       # the authors skip constant channels (weight 0)
            channels, m = channels[valid], m[valid]
        rows = rows_per_call(ctx.bundle, ctx.backend.memory_budget, max(1, len(channels) * samples))
        inputs = _noisy_inputs(ctx.x[i], m, preset, samples, std, sigma_is_variance, rng)
        score = "logit" if preset == "torchcam" else "prob"
        scores = batched_scores(ctx, inputs, len(channels) * samples, i, score, rows)
        means = scores.reshape(len(channels), samples).mean(axis=1) if len(channels) else scores[:0]
        weights = np.zeros(k, np.float32)
        weights[channels] = softmax(means.astype(np.float64)) if preset == "torchcam" else means
        maps[i] = np.tensordot(weights, a, axes=1)
    return maps


def _noisy_inputs(x: np.ndarray, m: np.ndarray, preset: str, samples: int, std: float, squared: bool, rng):
    """The masked inputs in order: channel by channel, sample by sample (the order noise is drawn in)."""
    height, width = x.shape[1:]
    for mask in m:
        if preset == "paper-input":
            base = mask * x
            span = float(base.max() - base.min())
        else:
            base = None
            span = float(mask.max() - mask.min())
        sigma = std if preset == "torchcam" else (std / span if span > 0 else 0.0)
        if preset != "torchcam" and squared:
            sigma = sigma ** 2
        shape = x.shape if preset == "paper-input" else (height, width)
        noise = rng.standard_normal((samples, *shape), dtype=np.float32)      # one channel's draws at once
        for sample in noise:
            if preset == "paper-input":
                yield base + sigma * sample
            else:
                yield (mask + sigma * sample) * x


@implements("ss-cam", "segmentation", in_all=False, cost="K·N full passes per target (N = samples, 35)")
def ss_cam_segments(ctx: Context, *, preset: Literal["torchcam", "paper-mask", "paper-input"] = "torchcam",
                    samples: int = 35, std: float = 2.0, sigma_is_variance: bool = True, top_k: int | None = None,
                    seed: int = 0) -> np.ndarray:
    """SS-CAM on the region score"""
    return ss_cam(ctx, preset=preset, samples=samples, std=std, sigma_is_variance=sigma_is_variance, top_k=top_k,
                  seed=seed)
