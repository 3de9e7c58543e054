"""Methods for detections, one module each, registered in `DETECTION_METHODS` (name → `DetectionMethod`).

A method gets a `DetectionContext` (one image: its input, its cut maps, the clean output) and the targets
to explain, and returns one raw map per target at the input's resolution; the explainer normalises them.
Per-level maps are combined by the rule of their units (research notes, detection §3.6):

- `same_unit`: every level's value is a change of the same target score (Recipro-CAM): the levels are
  **summed**, no per-level normalisation;
- `unit_free`: activations or their projections (activation map, Eigen-CAM, Ablation-/Score-CAM weighted
  sums): each level ReLU'd and min–max'd, then **averaged** (pytorch-grad-cam's rule).

Either way the coarser levels are first resampled (bilinear, half-pixel) to the finest level's grid, and the
combined map is upsampled to the input once: one full-size resize per map instead of one per level.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...kernels import add_normalised
from ...errors import CamInferError
from ...postprocess import EPS


@dataclass(frozen=True)
class DetectionMethod:
    name: str
    fn: Callable
    cost: str
    summary: str
    class_specific: bool
    target_passes: Callable | None = None     # (DetectionContext, target, **options) → `cost.Passes` for it
    image_passes: Callable | None = None      # (DetectionContext, **options) → `cost.Passes` shared by the targets

    def passes(self, explainer, options: dict):
        """(passes per image beyond the clean pass, passes per explained detection): the most any detection
        takes, measured on a detection at the centre of each output level's grid."""
        from ...cost import Passes
        from ..explainer import DetectionContext
        ctx = DetectionContext(explainer, None, None, None)
        per_image = self.image_passes(ctx, **options) if self.image_passes else Passes()
        if self.target_passes is None:
            return per_image, None
        per_target = [self.target_passes(ctx, t, **options) for t in central_targets(explainer.grid)]
        most = max(per_target, key=lambda p: sum(p.counts().values()))
        bound = len({tuple(p.counts().values()) for p in per_target}) > 1 or most.bound
        return per_image, Passes(**most.counts(), bound=bound)


DETECTION_METHODS: dict[str, DetectionMethod] = {}


def detection_method(name: str, cost: str, class_specific: bool = True, target_passes: Callable | None = None,
                     image_passes: Callable | None = None):
    """Register a detection method: fn(ctx, targets, **options) → list of (H,W) raw maps, one per target;
    `cost` says its passes in words, `target_passes` and `image_passes` count them (`DetectionMethod.passes`)."""
    def register(fn):
        summary = (fn.__doc__ or "").strip().splitlines()[0]
        DETECTION_METHODS[name] = DetectionMethod(name, fn, cost, summary, class_specific, target_passes,
                                                  image_passes)
        return fn
    return register


def central_targets(grid) -> list:
    """A made-up detection at the centre of each output level's grid (class 0): what a cost is counted on."""
    from ..targets import Target
    out = []
    for level in range(len(grid.strides)):
        anchors = np.flatnonzero(grid.level == level)
        rows, cols = grid.row[anchors], grid.col[anchors]
        centre = anchors[np.argmin(np.abs(rows - rows.max() / 2) + np.abs(cols - cols.max() / 2))]
        out.append(Target(np.zeros(4, np.float32), 0, int(centre), 1.0, None))
    return out


def get_detection_method(name: str) -> DetectionMethod:
    if name not in DETECTION_METHODS:
        raise CamInferError(f"method '{name}' does not explain detections; choose one of: "
                            f"{', '.join(DETECTION_METHODS)}")
    return DETECTION_METHODS[name]


def same_unit(maps: dict[int, np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """U(Σ_l R(S_l)): the levels' maps of one score, brought to the finest level's grid (R), summed, then
    upsampled to `size` (U)."""
    return upsample_raw(on_finest_grid(maps.values(), lambda m: m).sum(axis=0), size)


def unit_free(maps: dict[int, np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """U(mean_l R(minmax(ReLU(S_l)))): maps in the units of their own level, made comparable first (one
    Numba call per level: `kernels.add_normalised`)."""
    if not maps:
        return np.zeros(size, np.float32)
    levels = [np.ascontiguousarray(m, np.float32) for m in maps.values()]
    combined = np.zeros(max((m.shape for m in levels), key=lambda shape: shape[0] * shape[1]), np.float32)
    for m in levels:
        add_normalised(m, combined, 1.0 / len(levels), EPS)
    return upsample_raw(combined, size)


def on_finest_grid(maps, prepare) -> np.ndarray:
    """(L, h0, w0): each level's `prepare`d map, resampled bilinearly to the largest of their grids."""
    maps = [prepare(np.asarray(m, np.float32)) for m in maps]
    finest = max((m.shape for m in maps), key=lambda shape: shape[0] * shape[1])
    return np.stack([m if m.shape == finest else upsample_raw(m, finest) for m in maps])


def upsample_raw(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (align_corners=False), values kept as they are (no clipping)."""
    import cv2
    return cv2.resize(np.asarray(m, np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DETECTION_METHODS", "DetectionMethod", "detection_method", "get_detection_method", "same_unit",
           "unit_free"]
