"""Recipro-CAM — Byun & Lee, CVPR Workshops 2024 (arXiv 2209.14074).

S_c(i, j) = softmax(head(A ⊙ M_ij))_c, M_ij keeping only position (i, j) over all channels
(``kernel="onehot"``), or spreading A[:, i, j] over its 3×3 neighbourhood scaled by
[[1,2,1],[2,4,2],[1,2,1]]/16 (``kernel="gaussian3"``, the official CNN code's variant).
``score="logit"`` uses the raw logit instead (what openvino-xai computes).
Closed form for a GAP→linear head: head(A ⊙ M_ij) = W·A[:, i, j]·g_ij/(h·w) + b, with g_ij the sum
of the kernel weights inside the map, so no head pass is needed (``closed_form=False`` forces the
head passes, for checking). Its product Aᵀ Wᵀ runs in the clean pass's own runtime call, at the runtime's
precision, where the backend runs the joined graph (`bundle/positions.py`).

Detectors (research notes, detection §3.5): for each level l that reaches the target's anchor, the head runs
on copies of the cut maps in which level l keeps one cell (``block``×``block`` cells) and is zero elsewhere,
the other levels as they were; S_l(i,j) = s(head(A with A_l ⊙ M_ij)), the levels summed (same unit,
`levels.same_unit`). With the ``anchor`` score and a head whose locality was measured at split time (Detect's
inputs: each anchor sees a (2r+1)² = 5×5-cell window of its own level), only the cells inside the anchor's
window are run: any cell outside it leaves the anchor the all-zero level, whose score is computed once and
filled in; and each copy is only the level's k×k crop around the anchor through that level's class branch
(`detection.branches`), not the whole head. Exact, and at most 26 crops instead of h·w whole-head rows per
level. The map then shows which neighbouring cells carried the decision (an ODAM-like blob at the box); cut at
the backbone (``split --cut backbone``) for maps that reach the image context.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np

from ..kernels import recipro_masked_batch
from ..cost import Passes
from ..errors import CamInferError
from ..numerics import softmax_column
from .levels import same_unit
from .registry import Context, flat_within_rounding, fused, implements, method, require_logits

KERNELS = {
    "onehot": np.ones((1, 1), np.float32),
    "gaussian3": np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 16,
}


def kernel_mass(kernel: np.ndarray, h: int, w: int) -> np.ndarray:
    """g_ij: the sum of kernel weights that land inside the map when centred at (i, j)."""
    ones = np.ones((1, h, w), np.float32)
    out = np.empty((h * w, 1, h, w), np.float32)
    recipro_masked_batch(ones, kernel, out)
    return out.reshape(h * w, -1).sum(axis=1).reshape(h, w)


def passes(shape, options: dict, linear_head: bool) -> Passes:
    """h·w head rows, none for the closed form."""
    _, h, w = shape
    return Passes() if options["closed_form"] and linear_head else Passes(head=h * w)


@method("recipro", needs="head", cost="1 feature pass + h·w head rows (none: exact closed form on GAP→linear heads)",
        bench={"recipro": {}, "recipro (head passes)": {"closed_form": False}}, passes=passes)
def recipro(ctx: Context, *, score: Literal["prob", "logit"] = "prob", kernel: Literal["onehot", "gaussian3"] = "onehot",
            closed_form: bool = True) -> np.ndarray:
    """softmax(head(A ⊙ M_ij))_c over the h·w one-hot masks; exact closed form on GAP→linear heads"""
    require_logits(score, ctx.bundle.output_kind)
    n, k, h, w = ctx.activations.shape
    if closed_form and ctx.linear_head is not None:
        return _closed_form(ctx, KERNELS[kernel], score)
    masked = np.empty((h * w, k, h, w), np.float32)
    maps = np.empty((n, h, w), np.float32)
    for i, a in enumerate(ctx.activations):
        recipro_masked_batch(a, KERNELS[kernel], masked)
        outputs = ctx.head(i, masked)
        maps[i] = flat_within_rounding(ctx, ctx.class_scores(outputs, i, score), outputs, score).reshape(h, w)
    return maps


def _closed_form(ctx: Context, kernel: np.ndarray, score: str) -> np.ndarray:
    head = ctx.linear_head
    n, k, h, w = ctx.activations.shape
    mass = kernel_mass(kernel, h, w).reshape(1, h * w, 1)
    if ctx.position_products is not None:                    # Aᵀ Wᵀ from the clean pass (`bundle/positions.py`)
        logits = ctx.position_products * (mass / (h * w)).astype(np.float32)                # (N, hw, C)
        logits += head.bias
    else:
        pooled = ctx.activations.reshape(n, k, h * w).transpose(0, 2, 1) * mass / (h * w)   # (N, hw, K)
        logits = head.logits(pooled)                                                         # (N, hw, C)
    if ctx.finer is not None:
        return np.stack([ctx.class_scores(logits[i], i, score) for i in range(n)]).reshape(n, h, w)
    chosen = np.take_along_axis(logits, ctx.targets[:, None, None], axis=2)[..., 0]          # (N, hw)
    if score == "prob":
        chosen = softmax_column(logits, chosen)
    return chosen.reshape(n, h, w)


@fused("recipro", class_specific=True)
def recipro_onnx(f, *, score: str = "prob", kernel: str = "onehot", closed_form: bool = True) -> str:
    """S_c(i,j) = softmax(head(A ⊙ M_ij))_c. GAP→linear heads: one MatMul of the head's weights with
    the position vectors A[:,i,j]·g_ij/(h·w). Other heads: the head applied to the h·w masked copies,
    stacked in the batch dimension, masks made in the graph (no h·w×h·w constant)."""
    require_logits(score, f.output_kind)
    b = f.b
    k, h, w = f.shape
    in_head = not (closed_form and f.linear_head is not None)             # the head's own (rounded) scores
    if in_head:
        scores = f.head_on_masked_copies(f.positions_by_channel(), KERNELS[kernel])           # (N,hw,K)
        softmax_needed = score == "prob" and f.output_kind == "logits"
    else:
        # g_ij/(h·w) multiplies the map before it is read by position: on a quantized cut OpenVINO's low-precision
        # transformations fail to move a per-position scale of the (N,hw,K) positions through their Reshape
        # (the map first made (N,k,h,w): an input of another size then fails in the runtime rather than broadcast)
        mass = kernel_mass(KERNELS[kernel], h, w).reshape(1, 1, h, w) / (h * w)
        at_size = b.reshape(f.activation, (-1, k, h, w), hint="map_at_size")
        weighted = replace(f, activation=b.op("Mul", at_size, b.const(mass), hint="weighted_map"))
        scores = f.linear_scores(f.linear_head, weighted.positions_by_channel())
        softmax_needed = score == "prob"
    scores = b.reshape(scores, (-1, h * w, f.num_classes), hint="scores")                     # (N,hw,C)
    if softmax_needed:
        scores = b.op("Softmax", scores, axis=-1)
    index = b.op("Expand", b.unsqueeze(f.targets, [1]), b.ints([1, h * w, 1]), hint="index")   # (N,hw,T)
    chosen = b.op("GatherElements", scores, index, axis=2)
    if in_head:
        chosen = f.flat_within_step(chosen, softmax_needed)
    return f.per_class(b.op("Transpose", chosen, perm=[0, 2, 1]))


def target_passes(ctx, target, *, score: str = "anchor", block: int = 1) -> Passes:
    """One row per kept block of each level reaching the target, and one with the level all zero: crops
    where the level has a cropped branch, head rows otherwise (fewer near the border, where the anchor's
    window is clipped)."""
    total = Passes()
    for i in ctx.levels_reaching(target):
        _, h, w = ctx.levels[i]["shape"]
        cells = ctx.window_cells(i, target) if score == "anchor" else None
        rows = len(block_cells(h, w, int(block), cells)) + 1
        total += Passes(crops=rows, bound=cells is not None) if ctx.crops(i, target, score) else \
            Passes(head=rows, bound=cells is not None)
    return total


@implements("recipro", "detection", passes=target_passes,
            cost="≤ 26 k×k crops per target at the Detect inputs; h·w/block² head rows per level otherwise")
def recipro_detections(ctx, targets, *, score: Literal["anchor", "match"] = "anchor", block: int = 1) -> list:
    """Σ_l U(max(s(head(A with level l kept at one cell)), s⁰_l)): the cells whose features alone keep the detection,
    s⁰_l the score with level l all zero (the map's zero level: cells outside the head's window score it exactly,
    and a cell that lowers the score below it adds nothing, as noise of the runtime's rounding might)"""
    return [recipro_map(ctx, t, score, block) for t in targets]


def recipro_map(ctx, target, score: str, block: int) -> np.ndarray:
    maps = {}
    for i in ctx.levels_reaching(target):
        c, h, w = ctx.levels[i]["shape"]
        cells = ctx.window_cells(i, target) if score == "anchor" else None
        blocks = block_cells(h, w, block, cells)
        values = kept_values(ctx.perturbable(i, target, score), blocks)
        level_map = np.full((h, w), values[-1], np.float32)
        for (y0, y1, x0, x1), v in zip(blocks, values[:-1]):
            level_map[y0:y1, x0:x1] = max(v, values[-1])
        maps[i] = level_map
    return same_unit(maps, ctx.size)


def kept_values(level, blocks) -> np.ndarray:
    """The target's score with the level kept at each block only, then (last) with the level all zero
    (`level`: a `Crop` or a `WholeLevel`; every block lies in its maps)."""
    rows = np.zeros((len(blocks) + 1, *level.maps.shape), np.float32)
    for r, (y0, y1, x0, x1) in enumerate(blocks):
        ys, xs = slice(y0 - level.y0, y1 - level.y0), slice(x0 - level.x0, x1 - level.x0)
        rows[r, :, ys, xs] = level.maps[:, ys, xs]
    return level.scores(rows)


def block_cells(h: int, w: int, block: int, cells=None) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of the blocks to keep: every block×block block of the grid, or only those of `cells`
    ((rows, cols) slices of the anchor's window)."""
    if block < 1:
        raise CamInferError(f"block must be a positive number of cells, not {block}")
    ys = range(0, h, block) if cells is None else range(cells[0].start, cells[0].stop, block)
    xs = range(0, w, block) if cells is None else range(cells[1].start, cells[1].stop, block)
    y_end = h if cells is None else cells[0].stop
    x_end = w if cells is None else cells[1].stop
    return [(y, min(y + block, y_end), x, min(x + block, x_end)) for y in ys for x in xs]


def segment_passes(shape, options: dict, linear_tail: bool) -> Passes:
    """h·w head rows per target (a cut set: each member's h·w, `shape` their sum as (1, 1, Σ h·w)); none where
    the shortcut runs: the one-hot mask on a head read as a linear tail."""
    _, h, w = shape
    shortcut = linear_tail and options.get("shortcut", True) and options.get("kernel", "onehot") == "onehot"
    return Passes() if shortcut else Passes(head=h * w)


@implements("recipro", "segmentation", passes=segment_passes,
            cost="h·w head rows per target; none on a 1×1-conv + bilinear-resize tail (exact shortcut)")
def recipro_segments(ctx: Context, *, score: Literal["prob", "logit"] = "prob",
                     kernel: Literal["onehot", "gaussian3"] = "onehot", shortcut: bool = True) -> np.ndarray:
    """S(i,j) = (1/|R|) Σ_{p∈R} y_c(head(A ⊙ M_ij))(p): the region score with the cut kept at one position

    With a linear tail (`bundle.linear_tail`: DeepLab's 1×1 conv then bilinear resize) and the one-hot mask,
    the masked logits differ from the bias only inside the resize's support of (i, j): the region score is
    computed there, exactly, without head passes (``shortcut=False`` runs the head, for checking)."""
    if shortcut and kernel == "onehot" and getattr(ctx, "tail", None) is not None:
        activation = "softmax" if score == "prob" and ctx.kind == "logits" else ctx.tail.activation
        return np.stack([ctx.tail.recipro_scores(ctx.activations[i], int(ctx.targets[i]), ctx.regions[i], activation)
                         for i in range(len(ctx.targets))])
    return recipro(ctx, score=score, kernel=kernel, closed_form=False)
