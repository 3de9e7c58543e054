"""What a detection map explains, and the score it follows through perturbed passes (research notes,
detection §3.2).

A target is a box b* of class c* produced by anchor a*: a detection of our NMS, or a box the user gives
(matched to the anchor a* = argmax_a IoU(b, box_a)·p_a[c] of the clean output). Two scores of a (possibly
perturbed) output y:

- ``anchor`` (T1): y[4+c*, a*], the class score at the anchor that produced the box: for perturbations of
  the cut maps that leave the box in place (Recipro-CAM, Ablation-CAM);
- ``match`` (T2, D-RISE without the cosine): max_a IoU(b*, box_a(y)) · y[4+c*, a], the best match of the
  box among the new predictions: for perturbed inputs, where the anchor that finds the object can move
  (Score-CAM). Anchors with y[4+c*, a] ≤ 1e-3 are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CamInferError
from .decode import boxes_xyxy, iou

SCORES = ("anchor", "match")


@dataclass(frozen=True)
class Target:
    box: np.ndarray          # (4,) x1, y1, x2, y2 in the model's input pixels
    class_id: int
    anchor: int
    score: float             # the class score at the anchor in the clean output
    index: int | None        # the detection's index after NMS (None: a box the user gave)
    match_iou: float = 1.0   # a user box: IoU with the box its anchor predicts


def target_scores(outputs: np.ndarray, target: Target, kind: str) -> np.ndarray:
    """The target's score in each of R outputs (R, 4+C, A) → (R,)."""
    if kind == "anchor":
        return outputs[:, 4 + target.class_id, target.anchor].astype(np.float64)
    if kind != "match":
        raise CamInferError(f"score must be one of {', '.join(SCORES)}, not {kind!r}")
    p = outputs[:, 4 + target.class_id, :].astype(np.float64)                    # (R, A)
    overlap = iou(target.box, boxes_xyxy(outputs))                                # (R, A)
    return np.where(p > 1e-3, overlap * p, 0.0).max(axis=1)


def box_target(output: np.ndarray, box, class_id: int, size: tuple[int, int]) -> Target:
    """A user's box (input pixels) and class → the target of the anchor that predicts it best."""
    h, w = size
    box = np.asarray(box, np.float64)
    if box[2] <= box[0] or box[3] <= box[1]:
        raise CamInferError(f"a box is [x1, y1, x2, y2] with x2 > x1 and y2 > y1, not {box.tolist()}")
    if box[2] <= 0 or box[3] <= 0 or box[0] >= w or box[1] >= h:
        raise CamInferError(f"the box {np.round(box, 1).tolist()} lies outside the image")
    overlap = iou(box, boxes_xyxy(output))
    match = overlap * output[4 + class_id]
    anchor = int(np.argmax(match))
    if match[anchor] <= 0:
        raise CamInferError(f"no prediction of class {class_id} overlaps the box {np.round(box, 1).tolist()}")
    return Target(box, class_id, anchor, float(output[4 + class_id, anchor]), None, float(overlap[anchor]))


def central_targets(grid) -> list[Target]:
    """A made-up detection at the centre of each output level's grid (class 0): what a cost is counted on."""
    out = []
    for level in range(len(grid.strides)):
        anchors = np.flatnonzero(grid.level == level)
        rows, cols = grid.row[anchors], grid.col[anchors]
        centre = anchors[np.argmin(np.abs(rows - rows.max() / 2) + np.abs(cols - cols.max() / 2))]
        out.append(Target(np.zeros(4, np.float32), 0, int(centre), 1.0, None))
    return out
