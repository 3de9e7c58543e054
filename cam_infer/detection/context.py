"""What a detector's method implementation gets for one image (`DetectionContext`): its input, its cut maps
(packed and per level), its clean output; and what a masking method perturbs of a level (`Crop` through the
level's cropped branch, or `WholeLevel` through the whole head), scored for one target."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .branches import crop_origin
from .targets import Target, target_scores


@dataclass
class Crop:
    """Level `level`'s k×k crop (C,k,k) around a target's anchor, from cell (y0, x0) of its grid, and the
    cropped class-score branch that gives the target's score on perturbed copies of it (`branches`)."""

    ctx: "DetectionContext"
    level: int
    maps: np.ndarray
    y0: int
    x0: int
    target: Target

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """The target's class score at its anchor for each perturbed crop (R, C, k, k) → (R,)."""
        self.ctx.branch_rows += len(rows)
        out = self.ctx.explainer.backend.branch(self.level, rows)
        t = self.target
        return out[:, t.class_id, int(self.ctx.grid.row[t.anchor]) - self.y0,
                   int(self.ctx.grid.col[t.anchor]) - self.x0].astype(np.float64)


@dataclass
class WholeLevel:
    """Level `level`'s whole maps (C,h,w) with `Crop`'s interface: each perturbed copy goes back into the
    clean cut maps and through the whole head, scored by `score` (for heads without a verified branch, and
    for scores other than the anchor's)."""

    ctx: "DetectionContext"
    level: int
    target: Target
    score: str
    y0: int = 0
    x0: int = 0

    @property
    def maps(self) -> np.ndarray:
        return self.ctx.level_maps()[self.level]

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """The target's score for each perturbed copy of the level (R, C, h, w) → (R,)."""
        packed = np.repeat(self.ctx.packed[None], len(rows), axis=0)
        self.ctx.level_view(packed, self.level)[:] = rows
        return self.ctx.scores(self.ctx.head(packed), self.target, self.score)


class DetectionContext:
    """One image for a method: its input, its cut maps (packed and per level), its clean output."""

    def __init__(self, explainer, x: np.ndarray, packed: np.ndarray, output: np.ndarray):
        self.explainer, self.x, self.packed, self.output = explainer, x, packed, output
        self.bundle = explainer.bundle
        self.levels = self.bundle.manifest["cut"]
        self.size = tuple(self.bundle.input_shape[1:])
        self.grid = explainer.grid
        self.head_rows = 0
        self.branch_rows = 0

    def level_view(self, rows: np.ndarray, i: int) -> np.ndarray:
        """Level l of packed rows (R, total) as a writable (R, C, h, w) view."""
        level = self.levels[i]
        size = int(np.prod(level["shape"]))
        return rows[:, level["offset"]:level["offset"] + size].reshape(len(rows), *level["shape"])

    def level_maps(self) -> list[np.ndarray]:
        return [self.level_view(self.packed[None], i)[0] for i in range(len(self.levels))]

    def head(self, rows: np.ndarray) -> np.ndarray:
        self.head_rows += len(rows)
        return self.explainer.backend.head(rows)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.explainer.backend.forward(x)

    def scores(self, outputs: np.ndarray, target: Target, kind: str) -> np.ndarray:
        return target_scores(outputs, target, kind)

    def levels_reaching(self, target: Target) -> list[int]:
        """The cut levels whose change moves the target's anchor (measured at split time)."""
        level = int(self.grid.level[target.anchor])
        return [i for i, lv in enumerate(self.levels) if level in lv.get("moves_levels", [level])]

    def perturbable(self, i: int, target: Target, score: str) -> "Crop | WholeLevel":
        """What a masking method perturbs of level i for this target: its crop through the level's branch
        where that gives the same score (`crop`), else the whole level through the whole head."""
        return self.crop(i, target) if self.crops(i, target, score) else WholeLevel(self, i, target, score)

    def crops(self, i: int, target: Target, score: str) -> bool:
        """Whether level i is perturbed as a crop around the target's anchor through its cropped branch: the
        bundle has one for level i and the anchor lies on its grid (the ``anchor`` score of a level-local head)."""
        return score == "anchor" and self.levels[i].get("branch") is not None and \
            self.window_cells(i, target) is not None

    def crop(self, i: int, target: Target) -> Crop:
        """Level i's crop around the target's anchor, with its cropped branch."""
        _, h, w = self.levels[i]["shape"]
        k = int(self.levels[i]["branch"]["window"])
        y0, x0 = crop_origin(int(self.grid.row[target.anchor]), int(self.grid.col[target.anchor]), h, w, k)
        return Crop(self, i, self.level_maps()[i][:, y0:y0 + k, x0:x0 + k], y0, x0, target)

    def window_cells(self, i: int, target: Target):
        """(rows, cols) slices of level l's cells that reach the target's anchor, or None for all of them:
        its measured receptive window when level l is the anchor's own grid."""
        level = self.levels[i]
        radius = level.get("receptive_radius")
        _, h, w = level["shape"]
        anchor_stride = int(self.grid.stride[target.anchor])
        if radius is None or level["stride"] != anchor_stride or level.get("moves_levels") != [
                int(self.grid.level[target.anchor])]:
            return None
        r, c = int(self.grid.row[target.anchor]), int(self.grid.col[target.anchor])
        return slice(max(r - radius, 0), min(r + radius + 1, h)), slice(max(c - radius, 0), min(c + radius + 1, w))
