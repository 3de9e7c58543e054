"""Activation map: the channel mean, L = (1/K) Σ_k A^k (class-agnostic)."""

from __future__ import annotations

import numpy as np

from .registry import Context, fused, method


@method("activation", cost="1 feature pass")
def activation(ctx: Context) -> np.ndarray:
    """channel mean"""
    return ctx.activations.mean(axis=1)


@fused("activation", class_specific=False)
def activation_onnx(f) -> str:
    """L = (1/K) Σ_k A^k: one ReduceMean."""
    return f.b.reduce("ReduceMean", f.activation, [1], keepdims=False, hint="map")
