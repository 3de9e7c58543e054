"""What the Score-CAM family shares (Score-CAM, SS-CAM, IS-CAM): the channels chosen, masks made from them,
and many full passes on masked copies of the input, batched under the backend's memory budget.

``masks(a, channels, size, order)``: ``"normalise-then-upsample"`` is torchcam's U(n(A_k)) (min–max at
feature resolution, then bilinear); ``"upsample-then-normalise"`` is n(U(A_k)) (pytorch-grad-cam, the
original Score-CAM code); ``"upsample"`` is the raw U(A_k) (SS-CAM's authors, noise on the mask).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from ..postprocess import resize_planes

EPS = 1e-8


def selected_channels(a: np.ndarray, top_k: int | None) -> np.ndarray:
    """The channels of one (K,h,w) activation that get a masked pass, in order: all of them, or the top_k of
    largest spatial std (Faster Score-CAM's rule, tabayashi0117/Score-CAM), for classifiers and detectors."""
    k = a.shape[0]
    if top_k is None or top_k >= k:
        return np.arange(k)
    std = a.reshape(k, -1).std(axis=1)
    return np.sort(np.argpartition(-std, top_k - 1)[:top_k])


def rows_per_call(bundle, memory_budget: int, channels: int) -> int:
    """Masked images per backend call: a full pass of each, plus its mask and input, within the budget."""
    _, height, width = bundle.input_shape
    per_pass = bundle.bytes_per_item("features") + bundle.bytes_per_item("head")
    return int(max(1, min(channels, memory_budget // (per_pass + 16 * height * width))))


def minmax(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-map min–max to [0,1] (eps 1e-8 on the range) and whether each map was not constant."""
    lo = maps.min(axis=(1, 2), keepdims=True)
    hi = maps.max(axis=(1, 2), keepdims=True)
    span = (hi - lo)[:, 0, 0]
    return ((maps - lo) / (hi - lo + EPS)).astype(np.float32), span > 1e-12 * np.maximum(1.0, np.abs(hi[:, 0, 0]))


def masks(a: np.ndarray, channels: np.ndarray, size: tuple[int, int], order: str) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the chosen channels of one (K,h,w) activation, (n,H,W) float32, and which are not constant."""
    chosen = np.ascontiguousarray(a[channels], np.float32)
    if order == "normalise-then-upsample":
        normalised, valid = minmax(chosen)
        return resize_planes(normalised, size), valid
    raw = resize_planes(chosen, size)
    if order == "upsample":
        return raw, minmax(raw)[1]
    return minmax(raw)


def batched_scores(ctx, inputs: Iterator[np.ndarray], count: int, i: int, score: str, rows: int) -> np.ndarray:
    """Run `count` masked inputs of image i (yielded one by one, (C,H,W)) through the whole model, `rows` per
    call; return the score explained for each (`Context.class_scores`), in order."""
    out = np.empty(count, np.float32)
    batch = np.empty((rows, *ctx.x.shape[1:]), np.float32)
    filled, done = 0, 0
    for item in inputs:
        batch[filled] = item
        filled += 1
        if filled == rows:
            out[done:done + filled] = ctx.class_scores(ctx.backend.forward(batch[:filled]), i, score)
            done, filled = done + filled, 0
    if filled:
        out[done:done + filled] = ctx.class_scores(ctx.backend.forward(batch[:filled]), i, score)
    return out


def check_counts(top_k=None, samples: int = 1, std: float = 0.0) -> None:
    """The Score-CAM family's counts: ``top_k`` channels (None: all) and ``samples`` passes positive, ``std`` not
    negative; one line otherwise."""
    from ..errors import CamInferError

    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise CamInferError(f"top_k must be a positive integer, not {top_k!r}")
    if samples < 1:
        raise CamInferError(f"samples must be positive, not {samples!r}")
    if std < 0:
        raise CamInferError(f"std must not be negative, not {std!r}")


def channel_passes(samples_of: Callable[[dict], int]):
    """The `passes` of a Score-CAM-family method: one model pass per selected channel and sample, at most
    (constant channels are skipped)."""
    from ..cost import Passes

    def passes(shape, options: dict, linear_head: bool) -> Passes:
        top_k, samples = options.get("top_k"), samples_of(options)
        check_counts(top_k, samples)
        return Passes(model=(shape[0] if top_k is None else min(shape[0], top_k)) * samples, bound=True)
    return passes


def full_passes_of(samples_of: Callable[[dict], int]):
    """A cost model for bench (the Score-CAM family): (full passes for one image: the selected channels times
    `samples_of(options)` per channel, images per backend call)."""
    def floor(explainer, x: np.ndarray, options: dict) -> tuple[int, int]:
        channels = len(selected_channels(explainer.task.grid_of(explainer.backend.features(x[:1]))[0][0],
                                          options.get("top_k")))
        passes = channels * samples_of(options)
        return passes, rows_per_call(explainer.bundle, explainer.backend.memory_budget, passes)
    return floor
