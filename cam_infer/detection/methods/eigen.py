"""Eigen-CAM for detections (Muhammad & Yeasin, IJCNN 2020; pytorch-grad-cam's YOLO tutorial): the first
principal component of each cut level, combined unit-free; one map per image (class- and instance-agnostic).
The tutorial uses one level only (the stride-32 map before Detect); here every level of the cut counts."""

from __future__ import annotations

from ...methods.eigen import first_component
from . import detection_method, unit_free


@detection_method("eigen", cost="no extra pass (an SVD per level)", class_specific=False)
def eigen(ctx, targets, *, centered: bool = False, **_):
    """mean_l U(minmax(first principal component of A_l)): the dominant pattern of the cut maps"""
    m = unit_free({i: first_component(a, centered) for i, a in enumerate(ctx.level_maps())}, ctx.size)
    return [m for _ in targets]
