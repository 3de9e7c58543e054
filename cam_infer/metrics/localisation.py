"""Localisation against ground-truth boxes.

Pointing game — Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016: a hit
when the map's maximum lies inside a ground-truth box of the explained class, or within
`tolerance` pixels of one (the paper uses 15 px). Boxes are [x1, y1, x2, y2] with inclusive pixel
bounds. A map whose maximum is not unique counts its first maximum in row-major order; a
degenerate (constant) map is a miss.
"""

from __future__ import annotations

import numpy as np


def pointing_hit(saliency: np.ndarray, boxes, tolerance: float = 0.0, degenerate: bool = False) -> bool:
    """One map (H,W) against the boxes of the explained class."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if degenerate or len(boxes) == 0:
        return False
    y, x = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    dx = np.maximum(np.maximum(boxes[:, 0] - x, x - boxes[:, 2]), 0)
    dy = np.maximum(np.maximum(boxes[:, 1] - y, y - boxes[:, 3]), 0)
    return bool((np.hypot(dx, dy) <= tolerance).any())


def pointing_game(saliency: np.ndarray, boxes_per_image, tolerance: float = 0.0, degenerate=None) -> float:
    """Fraction of hits over a batch (N,H,W) with one list of boxes per image."""
    flags = np.zeros(len(saliency), bool) if degenerate is None else np.asarray(degenerate, bool)
    hits = [pointing_hit(s, b, tolerance, d) for s, b, d in zip(saliency, boxes_per_image, flags)]
    return float(np.mean(hits)) if hits else float("nan")
