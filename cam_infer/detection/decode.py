"""A detector's raw output → detections, in NumPy (research notes, detection §3.1).

Ultralytics (N, 4+C, A): rows 0–3 the box (cx, cy, w, h) in input pixels, rows 4… the sigmoid class
scores; anchor a lies in level l (stride s_l, grid H/s_l × W/s_l, level-major, row-major) at the cell
centre ((col+0.5)·s_l, (row+0.5)·s_l). A detection keeps the anchor it came from.

NMS as Ultralytics' predict does by default: candidates whose best class score exceeds `conf`, one class
per anchor (its best), greedy class-aware suppression at IoU > `iou`, at most `max_det`, by score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CamInferError


@dataclass(frozen=True)
class AnchorGrid:
    level: np.ndarray        # (A,) level index
    row: np.ndarray          # (A,) row in its level's grid
    col: np.ndarray          # (A,)
    stride: np.ndarray       # (A,)
    strides: tuple[int, ...]

    def level_of_stride(self, stride: int) -> int:
        return self.strides.index(stride) if stride in self.strides else -1


def is_anchor_count(size: tuple[int, int], anchors: int) -> bool:
    """Whether `anchors` is Σ (H/s)·(W/s) over strides 8, 16, 32 … (as many as it takes) at input `size`:
    the anchors of a YOLO-style output, rather than the features of a token sequence."""
    total, stride = 0, 8
    while total < anchors and size[0] // stride and size[1] // stride:
        total += (size[0] // stride) * (size[1] // stride)
        stride *= 2
    return total == anchors


def anchor_levels(size: tuple[int, int], anchors: int) -> AnchorGrid:
    """Level, row, column and stride of every anchor of an output with `anchors` anchors at input `size`:
    strides 8, 16, 32 … as many as it takes."""
    if not is_anchor_count(size, anchors):
        raise ValueError(f"{anchors} anchors are not a stride 8, 16, 32 … layout at {size}")
    strides: list[int] = []
    total = 0
    while total < anchors:
        s = 8 * 2 ** len(strides)
        strides.append(s)
        total += (size[0] // s) * (size[1] // s)
    parts = []
    for i, s in enumerate(strides):
        h, w = size[0] // s, size[1] // s
        rows, cols = np.divmod(np.arange(h * w), w)
        parts.append((np.full(h * w, i), rows, cols, np.full(h * w, s)))
    level, row, col, stride = (np.concatenate(p) for p in zip(*parts))
    return AnchorGrid(level, row, col, stride, tuple(strides))


def boxes_xyxy(output: np.ndarray) -> np.ndarray:
    """(…, 4+C, A) → (…, A, 4) corner boxes."""
    cx, cy, w, h = (output[..., i, :] for i in range(4))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with boxes (…, 4)."""
    x1 = np.maximum(box[0], boxes[..., 0])
    y1 = np.maximum(box[1], boxes[..., 1])
    x2 = np.minimum(box[2], boxes[..., 2])
    y2 = np.minimum(box[3], boxes[..., 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


@dataclass(frozen=True)
class Detections:
    """The detections of one image, by decreasing score."""

    boxes: np.ndarray        # (D, 4) x1, y1, x2, y2 in the model's input pixels
    scores: np.ndarray       # (D,)
    classes: np.ndarray      # (D,) int
    anchors: np.ndarray      # (D,) the anchor each came from

    def __len__(self) -> int:
        return len(self.scores)


def detect(output: np.ndarray, conf: float = 0.25, iou_threshold: float = 0.7, max_det: int = 300,
           end_to_end: bool = False) -> Detections:
    """One image's output (4+C, A) → its detections after NMS; `end_to_end`: an NMS-free head's (`top_pairs`)."""
    if end_to_end:
        return top_pairs(output, conf, max_det)
    scores = output[4:]
    best = scores.max(axis=0)
    candidates = np.flatnonzero(best > conf)
    candidates = candidates[np.argsort(-best[candidates], kind="stable")]
    classes = scores[:, candidates].argmax(axis=0)
    boxes = boxes_xyxy(output[:4, candidates])
    suppressed = np.zeros(len(candidates), bool)
    kept: list[int] = []
    for j in range(len(candidates)):
        if suppressed[j]:
            continue
        kept.append(j)
        if len(kept) == max_det:
            break
        suppressed |= (classes == classes[j]) & (iou(boxes[j], boxes) > iou_threshold)
    kept_array = np.array(kept, np.int64)
    return Detections(boxes[kept_array].reshape(-1, 4), best[candidates[kept_array]], classes[kept_array],
                      candidates[kept_array])


def top_pairs(output: np.ndarray, conf: float, max_det: int) -> Detections:
    """The detections of an end-to-end head (Ultralytics YOLO26/YOLOv10 `nms=False`, `Detect.postprocess`): the
    max_det highest (anchor, class) scores, an anchor once per class it scores, no suppression; those above conf.
    Ultralytics takes the top k = max_det anchors by their best score, then the top k of their k·C pairs: the same
    pairs, since an anchor with a pair among the k best has its best score above all but k − 1 anchors' (ties
    aside). By decreasing score, as the export's TopK returns them."""
    scores = output[4:]
    order = np.argsort(-scores, axis=None, kind="stable")[:max_det]
    classes, anchors = np.unravel_index(order, scores.shape)
    best = scores[classes, anchors]
    keep = best > conf
    classes, anchors = classes[keep].astype(np.int64), anchors[keep].astype(np.int64)
    return Detections(boxes_xyxy(output[:4, anchors]).reshape(-1, 4), best[keep], classes, anchors)


DEFAULTS = {"conf": 0.25, "iou": 0.7, "max_det": 300}     # NMS as Ultralytics' predict


def check_thresholds(conf, iou, max_det) -> None:
    """NMS's thresholds as Ultralytics takes them: conf in [0, 1), IoU in (0, 1], max_det ≥ 1."""
    for name, value, fits, allowed in (("conf", conf, lambda v: 0 <= v < 1, "in [0, 1)"),
                                       ("iou", iou, lambda v: 0 < v <= 1, "in (0, 1]"),
                                       ("max_det", max_det, lambda v: v >= 1, "at least 1")):
        number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        if not number or not fits(value) or (name == "max_det" and value != int(value)):
            raise CamInferError(f"{name} must be {'a whole number ' if name == 'max_det' else 'a number '}{allowed}, "
                                f"not {value!r}")


__all__ = ["DEFAULTS", "AnchorGrid", "Detections", "anchor_levels", "boxes_xyxy", "check_thresholds", "detect", "iou",
           "top_pairs"]
