"""Activation map: the channel mean, L = (1/K) Σ_k A^k (class-agnostic).

Detectors: the channel mean of each cut level, combined unit-free (`levels.unit_free`); one map per image."""

from __future__ import annotations

import numpy as np

from .levels import unit_free
from .registry import Context, fused, implements, method


@method("activation", cost="1 feature pass")
def activation(ctx: Context) -> np.ndarray:
    """channel mean"""
    a = np.asarray(ctx.activations, np.float32)
    return np.einsum("nkhw->nhw", a) * np.float32(1 / a.shape[1])     # a contiguous sum: 2× the strided mean


@fused("activation", class_specific=False)
def activation_onnx(f) -> str:
    """L = (1/K) Σ_k A^k: one ReduceMean."""
    return f.b.reduce("ReduceMean", f.activation, [1], keepdims=False, hint="map")


@implements("activation", "detection", cost="no extra pass")
def activation_detections(ctx, targets) -> list[np.ndarray]:
    """mean_l U(minmax(mean_k A_l^k)): where the cut maps are strong, whatever the detection"""
    m = unit_free({i: a.mean(axis=0) for i, a in enumerate(ctx.level_maps())}, ctx.size)
    return [m for _ in targets]


@implements("activation", "segmentation", cost="no extra pass")
def activation_segments(ctx: Context) -> np.ndarray:
    """channel mean of the cut, one map per image whatever the class and region"""
    return activation(ctx)
