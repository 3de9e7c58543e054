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


def energy_pointing(saliency: np.ndarray, boxes) -> float:
    """Energy-based pointing game (Score-CAM, Wang et al. 2020): Σ_{boxes} S / Σ S, over the union of
    the boxes (inclusive bounds, rows y1..y2 and columns x1..x2). 0 for an all-zero map."""
    saliency = np.asarray(saliency, np.float64)
    total = saliency.sum()
    inside = np.zeros(saliency.shape, bool)
    for x1, y1, x2, y2 in np.asarray(boxes, np.int64).reshape(-1, 4):
        inside[max(y1, 0):y2 + 1, max(x1, 0):x2 + 1] = True
    return float(saliency[inside].sum() / total) if total > 0 else 0.0


def box_from_map(saliency: np.ndarray, threshold: float = 0.2) -> list[int] | None:
    """CAM's box (Zhou et al., CVPR 2016): keep pixels ≥ threshold·max, take the bounding box
    [x1,y1,x2,y2] (inclusive) of the largest 8-connected component; None for a map with max ≤ 0."""
    import cv2

    saliency = np.asarray(saliency, np.float32)
    peak = float(saliency.max()) if saliency.size else 0.0
    if peak <= 0:
        return None
    mask = (saliency >= threshold * peak).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(stats[largest, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                                   cv2.CC_STAT_HEIGHT))
    return [x, y, x + w - 1, y + h - 1]


def iou(a, b) -> float:
    """Intersection over union of two inclusive-pixel boxes (the ImageNet devkit's +1 convention)."""
    ix = min(a[2], b[2]) - max(a[0], b[0]) + 1
    iy = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(ix, 0) * max(iy, 0)
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return float(inter / (area(a) + area(b) - inter))


def box_localisation(saliency: np.ndarray, boxes, threshold: float = 0.2) -> float:
    """Best IoU between the map's box and any ground-truth box (0 when the map has no box);
    a localisation is correct at IoU ≥ 0.5."""
    box = box_from_map(saliency, threshold)
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    if box is None or len(boxes) == 0:
        return 0.0
    return max(iou(box, b) for b in boxes)
