"""Activation map: the channel mean, L = (1/K) Σ_k A^k (class-agnostic)."""

from __future__ import annotations

import numpy as np

from .registry import Context, method


@method("activation")
def activation(ctx: Context) -> np.ndarray:
    return ctx.activations.mean(axis=1)
