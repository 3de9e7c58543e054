"""SESS — Tursun, Denman, Sridharan, Fookes, "SESS: Saliency Enhancing with Scaling and Sliding",
ECCV 2022 (arXiv 2207.01769); official code neouyghur/SESS, `sess.py` (research notes, seed methods §6).

The image is enlarged to several scales; every scale is cut into model-sized windows; the base method
explains each window for the class of the whole image; the window maps are fused back:

1. scales s_i = b + Δ·i (i < 12; b = the model's shorter input side, Δ = 64·b/224, so 224, 288 … 928 at
   224×224); the image is resized so that its shorter side is s_i (bilinear);
2. windows of the model's size at offsets 0, step, 2·step … with the last one snapped to the border
   (1, 4, 4, 4, 9, 9, 9, 9, 16, 16, 16, 25 windows: 122 at the defaults);
3. p_w = softmax(f(window))_c, p_max = max_w p_w; with ``pre_filter=r`` the ⌊r·n⌋ windows of lowest p_w
   are dropped before the base method runs;
4. S_w = minmax(base map of the window) · p_w / p_max, pasted into a zero canvas of the scaled image and
   resized back to the input size (bilinear);
5. E(x) = Σ_w S_w(x)·[S_w(x) > θ] / #{w : S_w(x) > θ} (0 where no window exceeds θ; ``pool="max"``:
   max_w S_w(x)), then a Gaussian blur 11×11, σ = 5 (``smooth``). Not re-normalised: the maximum is ≤ 1.

The official code enlarges the image it is given (its demo does not resize the photo); here that is the
model's input, so a window at scale 1 is the input itself. All windows of an image go through the base
method in one batch; the class comes from one forward pass of the input (or ``target``).
Cost: 1 forward + n windows × the base method (+ n forwards with ``pre_filter`` > 0).
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from ..errors import CamInferError
from ..explanation import Explanation
from ..methods.registry import class_agnostic
from ..numerics import probabilities_of
from ..postprocess import normalise, resize_planes
from . import enhancer

SCALES = 12
BLUR = ((11, 11), 5.0)


def scale_sizes(height: int, width: int, scales) -> list[int]:
    """The shorter side at each scale: `scales` is a count (b + Δ·i) or a list of sizes ≥ b."""
    base = min(height, width)
    if isinstance(scales, (int, np.integer)) and not isinstance(scales, bool):
        if scales < 1:
            raise CamInferError(f"sess needs at least one scale, not {scales}")
        delta = round(64 * base / 224)
        return [base + delta * i for i in range(int(scales))]
    sizes = [int(s) for s in scales]
    if not sizes or min(sizes) < base:
        raise CamInferError(f"sess scales are shorter sides of at least {base} (the model's input), not {sizes}")
    return sizes


def resized_shape(height: int, width: int, shorter: int) -> tuple[int, int]:
    """torchvision's Resize(shorter): the shorter side becomes `shorter`, the longer one int(·) of its ratio."""
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


def offsets(length: int, window: int, step: int) -> list[int]:
    """0, step, 2·step … while the window ends inside, then one window snapped to the border."""
    starts = list(range(0, max(length - window, 0), step))
    return starts + [length - window]


def window_boxes(height: int, width: int, sizes: list[int], step) -> list[tuple[int, int, int, int, int]]:
    """(scale index, scaled H, scaled W, y0, x0) of every window, scale by scale, row by row."""
    step_y, step_x = (height, width) if step is None else (int(step), int(step))
    if step_y < 1:
        raise CamInferError(f"sess step must be a positive number of pixels, not {step}")
    boxes = []
    for index, size in enumerate(sizes):
        hs, ws = resized_shape(height, width, size)
        boxes += [(index, hs, ws, y, x) for y in offsets(hs, height, step_y) for x in offsets(ws, width, step_x)]
    return boxes


def crops(image: np.ndarray, boxes) -> np.ndarray:
    """The windows of one preprocessed image (C,H,W) → (n,C,H,W)."""
    h, w = image.shape[1:]
    scaled = {}
    out = np.empty((len(boxes), *image.shape), np.float32)
    for j, (index, hs, ws, y, x) in enumerate(boxes):
        if index not in scaled:
            scaled[index] = image if (hs, ws) == (h, w) else resize_planes(image, (hs, ws))
        out[j] = scaled[index][:, y:y + h, x:x + w]
    return out


def fuse(window_maps: np.ndarray, boxes, size: tuple[int, int], pool: str, theta: float) -> np.ndarray:
    """Paste each weighted window map into its scaled canvas, bring it back to `size`, pool per pixel."""
    h, w = size
    total = np.zeros((h, w), np.float64)
    count = np.zeros((h, w), np.int64)
    best = np.zeros((h, w), np.float64)
    for m, (_, hs, ws, y, x) in zip(window_maps, boxes):
        canvas = np.zeros((hs, ws), np.float32)
        canvas[y:y + h, x:x + w] = m
        back = canvas if (hs, ws) == (h, w) else cv2.resize(canvas, (w, h), interpolation=cv2.INTER_LINEAR)
        if pool == "max":
            np.maximum(best, back, out=best)
        else:
            above = back > theta
            total += np.where(above, back, 0)
            count += above
    if pool == "max":
        return best
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def passes(height: int, width: int, *, scales=SCALES, step=None, pre_filter: float = 0.0, **_) -> int:
    """Inputs the base method explains per image (its windows), plus the windows' scoring passes when
    pre-filtering and the input's own forward pass."""
    n = len(window_boxes(height, width, scale_sizes(height, width, scales), step))
    return 1 + (n if pre_filter == 0 else n + n - int(n * pre_filter))


@enhancer("sess", passes=passes)
def sess(explainer, x: np.ndarray, method: str, target, options: dict, *, scales: int | list | tuple = SCALES,
         step: int | None = None, pre_filter: float = 0.0, pool: Literal["mean", "max"] = "mean", theta: float = 0.0,
         smooth: bool = True):
    """The fused saliency (N,H,W) and an explanation of the input's classes and their probabilities."""
    if not 0.0 <= pre_filter < 1.0:
        raise CamInferError(f"sess pre_filter is the share of windows dropped, in [0, 1), not {pre_filter}")
    h, w = x.shape[2:]
    sizes = scale_sizes(h, w, scales)
    boxes = window_boxes(h, w, sizes, step)
    outputs = explainer.backend.forward(x)
    targets = explainer.targets_for(target, outputs)
    if targets.ndim != 1:
        raise CamInferError("sess explains one class per image; give one target per image")
    fused = np.empty((len(x), h, w), np.float32)
    for i, image in enumerate(x):
        fused[i] = fuse_image(explainer, image, int(targets[i]), method, options, sizes, boxes, pre_filter, pool,
                              theta, smooth)
    scores = probabilities_of(outputs, explainer.bundle.output_kind)[np.arange(len(x)), targets].astype(np.float32)
    base = Explanation(method, fused, fused, targets, scores, np.zeros(len(x), bool), 0.0,
                       labels=explainer.bundle.labels, preprocessing=explainer.bundle.preprocessing,
                       outputs=outputs, class_agnostic=class_agnostic(method))
    return fused, base


def fuse_image(explainer, image, target: int, method, options, sizes, boxes, pre_filter, pool, theta, smooth):
    windows = crops(image, boxes)
    if pre_filter > 0:
        p = probabilities_of(explainer.backend.forward(windows), explainer.bundle.output_kind)[:, target]
        p_max = float(p.max())
        kept = np.sort(np.argsort(p, kind="stable")[int(len(p) * pre_filter):])
        windows, boxes = windows[kept], [boxes[j] for j in kept]
    agnostic = class_agnostic(method)                 # its maps ignore the class: the windows' scores do not
    e = explainer.explain(windows, method, target=None if agnostic else [target] * len(windows), **options)
    p = probabilities_of(e.outputs, explainer.bundle.output_kind)[:, target]
    if pre_filter == 0:
        p_max = float(p.max())
    maps, _ = normalise(e.saliency)
    weighted = maps * (p / p_max if p_max > 0 else np.zeros_like(p)).astype(np.float32)[:, None, None]
    fused = fuse(weighted, boxes, image.shape[1:], pool, theta)
    if smooth:
        fused = cv2.GaussianBlur(fused, BLUR[0], BLUR[1], 0)
    return fused.astype(np.float32)
