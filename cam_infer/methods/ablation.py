"""Ablation-CAM — Desai & Ramaswamy, WACV 2020, pp. 972–980.

w_k = (y_c − y_c,k) / |y_c|, L = Σ_k w_k A^k, where y_c,k is the class score with channel k of A
set to 0. Guard: the paper divides by y_c, which flips every weight when the logit y_c ≤ 0; we
divide by max(|y_c|, 1e-8) instead (a positive per-image constant, so maps keep their meaning).
``score="logit"`` (default, the paper's class score) or ``"prob"``. For a GAP→linear head,
y_c − y_c,k = W_ck·mean(A^k) exactly, so no head pass is needed (``closed_form=False`` forces them).
Head passes on an int8 file's head (its scores in steps of s): a drop within their rounding (≤ 1.5·s; for
probabilities of its logits, times 2·max p(1−p), `numerics.within_rounding`) is the rounding's, not the channel's,
and weighs 0 — else the map is built from one-step drops (MobileNetV2 int8: 1 168 of 1 280 drops 0, 111 exactly
one step).

Detectors (pytorch-grad-cam's Faster R-CNN variant): for each level l that reaches the target's anchor and
each of its channels k, the head runs with A_l^k set to zero; w_l^k = (s − s_k)/|s| with s the target's
score; the level's map is Σ_k w_l^k A_l^k, levels combined unit-free (`levels.unit_free`). With the
``anchor`` score only the anchor's own level reaches it at the Detect inputs (measured at split time), so the
other levels' channels are not run, and each row is only the level's crop around the anchor through its class
branch (`detection.branches`). Cost: Σ_l C_l head rows (or crops) per target, in chunks under the backend's
memory budget as the classifier's.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..kernels import ablated_batch
from ..cost import Passes
from ..numerics import ROUNDING_STEPS, softmax, softmax_column, softmax_sensitivity
from .levels import unit_free
from .registry import Context, implements, method

EPS = 1e-8


def passes(shape, options: dict, linear_head: bool) -> Passes:
    """K head rows, none for the closed form."""
    return Passes() if options["closed_form"] and linear_head else Passes(head=shape[0])


@method("ablation", needs="head", cost="1 feature pass + K head rows (none: exact closed form on GAP→linear heads)",
        bench={"ablation": {}, "ablation (head passes)": {"closed_form": False}}, passes=passes)
def ablation(ctx: Context, *, score: Literal["logit", "prob"] = "logit", closed_form: bool = True) -> np.ndarray:
    """(y_c − y_c,k)/|y_c| per channel (the |·| guards y_c ≤ 0); closed form on GAP→linear heads"""
    if score == "logit" and ctx.bundle.output_kind == "probabilities":
        score = "prob"  # the model gives no logits; its probabilities are the class score
    n, k, h, w = ctx.activations.shape
    maps = np.empty((n, h, w), np.float32)
    for i, a in enumerate(ctx.activations):
        c = int(ctx.targets[i])
        full, ablated = _target_scores(ctx, i, c, score, closed_form)
        weights = (full - ablated) / max(abs(full), EPS)
        maps[i] = np.einsum("k,khw->hw", weights.astype(np.float32), a)     # no BLAS pool left spinning
    return maps


def _target_scores(ctx: Context, i: int, c: int, score: str, closed_form: bool) -> tuple[float, np.ndarray]:
    """Score of class c on image i: unablated, and with each channel ablated in turn (K,)."""
    a = ctx.activations[i]
    if closed_form and ctx.linear_head is not None:
        head = ctx.linear_head
        pooled = a.mean(axis=(1, 2))                                              # (K,)
        if score == "logit" and ctx.finer is None:                                # one class: one row of W
            full = float(np.dot(head.weight[c], pooled) + head.bias[c])
            return full, full - pooled * head.weight[c]
        logits = head.logits(pooled[None])[0]                                     # (C,)
        ablated = logits[None, :] - pooled[:, None] * head.weight.T               # (K,C)
        if ctx.finer is not None:
            return float(ctx.class_scores(logits[None], i, score)[0]), ctx.class_scores(ablated, i, score)
        return float(softmax(logits)[c]), softmax_column(ablated, ablated[:, c].copy())
    ablated = ablated_scores(a, lambda rows: ctx.head(i, rows), ctx.backend.chunk_size("head"))
    full, scores = float(ctx.class_scores(ctx.outputs[i][None], i, score)[0]), ctx.class_scores(ablated, i, score)
    return full, beyond_rounding(ctx, full, scores, score)


def beyond_rounding(ctx: Context, full: float, ablated: np.ndarray, score: str) -> np.ndarray:
    """The ablated scores, each within the quantized scores' rounding of the full score set to it (its drop: 0)."""
    step = ctx.bundle.scores_step if ctx.finer is None else 0.0
    if not step:
        return ablated
    noise = ROUNDING_STEPS * step
    if score == "prob" and ctx.bundle.output_kind == "logits":          # probabilities of quantized logits
        noise *= softmax_sensitivity(np.append(ablated, full))
    return np.where(np.abs(full - ablated) <= noise, full, ablated)


def ablated_scores(a: np.ndarray, scores, rows: int, clean: bool = False) -> np.ndarray:
    """scores(copies of one (K,h,w) activation, copy k with channel k set to 0), made and scored `rows` copies
    at a time (the memory budget); with `clean`, one more copy last: the activation as it is."""
    k = a.shape[0]
    total = k + clean
    rows = max(1, min(total, rows))
    batch = np.empty((rows, *a.shape), np.float32)
    out = []
    for start in range(0, total, rows):
        stop = min(total, start + rows)
        channels = np.arange(start, min(k, stop))
        ablated_batch(a, channels, batch)
        batch[len(channels):stop - start] = a                # the clean copy
        out.append(scores(batch[:stop - start]))
    return np.concatenate(out)


def target_passes(ctx, target, *, score: str = "anchor") -> Passes:
    """C_l + 1 rows of each level reaching the target: crops where it has a cropped branch, else head rows."""
    total = Passes()
    for i in ctx.levels_reaching(target):
        rows = ctx.levels[i]["shape"][0] + 1
        total += Passes(crops=rows) if ctx.crops(i, target, score) else Passes(head=rows)
    return total


@implements("ablation", "detection", passes=target_passes,
            cost="C_l head rows (k×k crops at the Detect inputs) per target, for the levels reaching its anchor")
def ablation_detections(ctx, targets, *, score: Literal["anchor", "match"] = "anchor") -> list[np.ndarray]:
    """mean_l U(minmax(Σ_k (s − s_k)/|s| · A_l^k)): the channels whose removal lowers the detection's score"""
    out = []
    for target in targets:
        maps = {}
        for i in ctx.levels_reaching(target):
            level = ctx.perturbable(i, target, score)
            role = f"branch_{i}" if ctx.crops(i, target, score) else "head"
            values = ablated_scores(np.ascontiguousarray(level.maps, np.float32), level.scores,
                                    ctx.explainer.backend.chunk_size(role), clean=True)
            base, ablated = float(values[-1]), values[:-1]
            drops = (base - ablated) / max(abs(base), EPS)
            maps[i] = np.tensordot(drops.astype(np.float32), ctx.level_maps()[i], axes=1)
        out.append(unit_free(maps, ctx.size))
    return out


@implements("ablation", "segmentation", cost="K head rows per target")
def ablation_segments(ctx: Context, *, score: Literal["logit", "prob"] = "logit") -> np.ndarray:
    """(S − S_k)/|S| per channel, S the region score (`tasks.segmentation`), S_k with channel k zeroed"""
    return ablation(ctx, score=score, closed_form=False)


def ablation_in_graph(f) -> str:
    """The closed form as ONNX nodes on a GAP→linear head, for one class per image (`tasks.in_pass`):
    w_k = W_ck·mean(A^k) / max(|y_c|, ε), y_c = W_c·mean(A) + b_c, L = Σ_k w_k A^k; the head's own tensors."""
    b = f.b
    k, h, w = f.shape
    head = f.require_linear_head("ablation")
    pooled = b.unsqueeze(b.reduce("ReduceMean", f.activation, [2, 3], keepdims=False, hint="pooled"), [1])  # (N,1,K)
    drops = b.op("Mul", f.class_rows(head), pooled, hint="drops")                                          # (N,1,K)
    full = b.reduce("ReduceSum", drops, [2], hint="full")                                                  # (N,1,1)
    if head.source.bias is not None:
        bias = b.op("Gather", b.reshape(head.source.bias, (-1,)), f.targets, axis=0, hint="bias")           # (N,1)
        full = b.op("Add", full, b.unsqueeze(b.scale(bias, head.source.bias_scale), [2]))
    weights = b.op("Div", drops, b.op("Max", b.op("Abs", full), b.const(EPS)), hint="weights")            # (N,1,K)
    return b.reshape(f.weighted_sum(weights), (0, h, w), hint="map")
