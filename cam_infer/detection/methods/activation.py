"""Activation map for detections: the channel mean of each cut level, combined unit-free; one map per
image (class- and instance-agnostic), shown once per image under no class."""

from __future__ import annotations

from . import detection_method, unit_free


@detection_method("activation", cost="no extra pass", class_specific=False)
def activation(ctx, targets, **_):
    """mean_l U(minmax(mean_k A_l^k)): where the cut maps are strong, whatever the detection"""
    m = unit_free({i: a.mean(axis=0) for i, a in enumerate(ctx.level_maps())}, ctx.size)
    return [m for _ in targets]
