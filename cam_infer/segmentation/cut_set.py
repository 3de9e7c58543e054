"""How methods explain a segmenter's cut set (split by `cam_infer.bundle.skip_cut_set`).

A method explains each member with the others kept clean (`explain_levels`), and the members' maps are combined
by the rule of the method's units (`methods.levels`): Recipro-CAM's maps are changes of the one region score,
summed; the others are in their member's own units, each ReLU'd and min–max'd, then averaged.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import CamInferError

# Methods whose maps are changes of the one target score: the members' maps add up (`levels.same_unit`).
SAME_UNIT = frozenset({"recipro"})
CHUNK_VALUES = 2**24         # packed values per head call from one member's rows (64 MB of float32)


def level_view(levels: list[dict], rows: np.ndarray, i: int) -> np.ndarray:
    """Member i of packed rows (R, total) as a writable (R, K, h, w) view."""
    level = levels[i]
    size = int(np.prod(level["shape"]))
    return rows[:, level["offset"]:level["offset"] + size].reshape(len(rows), *level["shape"])


class MemberHead:
    """The head seen from member i: rows (R,K,h,w) of it go back into the image's clean packed cut, the other
    members kept, through the whole head."""

    def __init__(self, backend, levels: list[dict], packed: np.ndarray, member: int):
        self.backend, self.levels, self.packed, self.member = backend, levels, packed, member

    def __call__(self, i: int, rows: np.ndarray) -> np.ndarray:
        step = max(1, CHUNK_VALUES // self.packed.shape[1])
        full = np.repeat(self.packed[i:i + 1], min(step, len(rows)), axis=0)    # the other members stay clean
        outputs = []
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            level_view(self.levels, full, self.member)[:len(chunk)] = chunk
            outputs.append(self.backend.head(full[:len(chunk)]))
        return np.concatenate(outputs)


def finest_grid(levels: list[dict]) -> tuple[int, int]:
    """(h, w) of the finest member: the grid a cut set's maps are combined on."""
    return tuple(max((lv["shape"][1:] for lv in levels), key=lambda s: s[0] * s[1]))


def refuse_gradients(spec) -> None:
    if spec.gradient:
        raise CamInferError(f"method '{spec.name}' needs gradients, which cam-infer does not take through a cut set's "
                            "packed head; use a gradient-free method, or split at one layer")


def explain_levels(code, spec, ctx, options: dict) -> np.ndarray:
    """The method's maps (T, h0, w0) on the finest member's grid: each member explained by `code` with the others
    clean, combined by the rule of the method's units."""
    from ..methods.levels import same_unit, unit_free
    refuse_gradients(spec)
    levels = ctx.bundle.cut_levels
    per_member = []
    for m in range(len(levels)):
        member = replace(ctx, activations=np.ascontiguousarray(level_view(levels, ctx.activations, m)), tail=None)
        member.head = MemberHead(ctx.backend, levels, ctx.activations, m)
        member.features = lambda x, m=m: np.ascontiguousarray(level_view(levels, ctx.backend.features(x), m))
        per_member.append(np.asarray(code(member, **options), np.float32))
    finest = finest_grid(levels)
    combine = same_unit if spec.name in SAME_UNIT else unit_free
    return np.stack([combine({m: maps[t] for m, maps in enumerate(per_member)}, tuple(finest))
                     for t in range(len(ctx.targets))])
