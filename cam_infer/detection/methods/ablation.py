"""Ablation-CAM for detections (Desai & Ramaswamy, WACV 2020; pytorch-grad-cam's Faster R-CNN variant):
for each level l that reaches the target's anchor and each of its channels k, the head runs with A_l^k set to
zero; w_l^k = (s − s_k)/|s| with s the target's score; the level's map is Σ_k w_l^k A_l^k, levels combined
unit-free. With the ``anchor`` score only the anchor's own level reaches it at the Detect inputs (measured
at split time), so the other levels' channels are not run, and each row is only the level's crop around
the anchor through its class branch (`detection.branches`). Cost: Σ_l C_l head rows (or crops) per target,
batched."""

from __future__ import annotations

import numpy as np

from ...cost import Passes
from . import detection_method, unit_free


def target_passes(ctx, target, *, score: str = "anchor", **_) -> Passes:
    """C_l + 1 rows of each level reaching the target: crops where it has a cropped branch, else head rows."""
    total = Passes()
    for i in ctx.levels_reaching(target):
        rows = ctx.levels[i]["shape"][0] + 1
        total += Passes(crops=rows) if ctx.crops(i, target, score) else Passes(head=rows)
    return total


@detection_method("ablation", cost="C_l head rows (k×k crops at the Detect inputs) per target, for the levels "
                                   "reaching its anchor", target_passes=target_passes)
def ablation(ctx, targets, *, score: str = "anchor", **_):
    """mean_l U(minmax(Σ_k (s − s_k)/|s| · A_l^k)): the channels whose removal lowers the detection's score"""
    out = []
    for target in targets:
        maps = {}
        for i in ctx.levels_reaching(target):
            base, ablated = ablations(ctx.perturbable(i, target, score))
            drops = (base - ablated) / max(abs(base), 1e-12)
            maps[i] = np.tensordot(drops.astype(np.float32), ctx.level_maps()[i], axes=1)
        out.append(unit_free(maps, ctx.size))
    return out


def ablations(level) -> tuple[float, np.ndarray]:
    """The target's score s, and s_k with channel k of the level zeroed (`level`: a `Crop` or a `WholeLevel`)."""
    c = len(level.maps)
    rows = np.repeat(level.maps[None], c + 1, axis=0)
    rows[np.arange(c), np.arange(c)] = 0                 # the last row stays clean
    values = level.scores(rows)
    return float(values[-1]), values[:-1]
