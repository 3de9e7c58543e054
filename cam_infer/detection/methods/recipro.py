"""Recipro-CAM for detections (Byun & Lee 2024, applied to a detector's cut; research notes, detection §3.5):
for each level l that reaches the target's anchor, the head runs on copies of the cut maps in which level l
keeps one cell (``block``×``block`` cells) and is zero elsewhere, the other levels as they were; the map of
level l is the target's score in each copy, S_l(i,j) = s(head(A with A_l ⊙ M_ij)). Levels are summed
(same unit).

With the ``anchor`` score and a head whose locality was measured at split time (Detect's inputs: each
anchor sees a (2r+1)² = 5×5-cell window of its own level), only the cells inside the anchor's window are
run: any cell outside it leaves the anchor the all-zero level, whose score is computed once and filled in;
and each copy is only the level's k×k crop around the anchor through that level's class branch
(`detection.branches`), not the whole head. Exact, and at most 26 crops instead of h·w whole-head rows
per level. The map then shows which neighbouring cells carried the decision (an ODAM-like blob at the
box); cut at the backbone (``split --cut backbone``) for maps that reach the image context.
Cost: Σ_l (cells of level l)/block² head rows per target, batched (≤ 26 crops with the shortcut)."""

from __future__ import annotations

import numpy as np

from ...cost import Passes
from . import detection_method, same_unit


def target_passes(ctx, target, *, score: str = "anchor", block: int = 1, **_) -> Passes:
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


@detection_method("recipro", cost="≤ 26 k×k crops per target at the Detect inputs; h·w/block² head rows per level "
                                  "otherwise", target_passes=target_passes)
def recipro(ctx, targets, *, score: str = "anchor", block: int = 1, **_):
    """Σ_l U(s(head(A with level l kept at one cell))): the cells whose features alone keep the detection"""
    return [recipro_map(ctx, t, score, int(block)) for t in targets]


def recipro_map(ctx, target, score: str, block: int) -> np.ndarray:
    maps = {}
    for i in ctx.levels_reaching(target):
        c, h, w = ctx.levels[i]["shape"]
        cells = ctx.window_cells(i, target) if score == "anchor" else None
        blocks = block_cells(h, w, block, cells)
        values = kept_values(ctx.perturbable(i, target, score), blocks)
        level_map = np.full((h, w), values[-1], np.float32)
        for (y0, y1, x0, x1), v in zip(blocks, values[:-1]):
            level_map[y0:y1, x0:x1] = v
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
        from ...errors import CamInferError
        raise CamInferError(f"block must be a positive number of cells, not {block}")
    ys = range(0, h, block) if cells is None else range(cells[0].start, cells[0].stop, block)
    xs = range(0, w, block) if cells is None else range(cells[1].start, cells[1].stop, block)
    y_end = h if cells is None else cells[0].stop
    x_end = w if cells is None else cells[1].stop
    return [(y, min(y + block, y_end), x, min(x + block, x_end)) for y in ys for x in xs]
