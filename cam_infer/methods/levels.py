"""How a detector method combines the maps of the levels of its cut (research notes, detection §3.6):

- `same_unit`: every level's value is a change of the same target score (Recipro-CAM): the levels are
  **summed**, no per-level normalisation;
- `unit_free`: activations or their projections (activation map, Eigen-CAM, Ablation-/Score-CAM weighted
  sums): each level ReLU'd and min–max'd, then **averaged** (pytorch-grad-cam's rule).

Either way the coarser levels are first resampled (bilinear, half-pixel) to the finest level's grid, and the
combined map is upsampled to the input once: one full-size resize per map instead of one per level.
"""

from __future__ import annotations

import numpy as np

from ..kernels import add_normalised
from ..postprocess import EPS, resize_planes


def same_unit(maps: dict[int, np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """U(Σ_l R(S_l)): the levels' maps of one score, brought to the finest level's grid (R), summed, then
    upsampled to `size` (U)."""
    return upsample_raw(on_finest_grid(maps.values()).sum(axis=0), size)


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


def on_finest_grid(maps) -> np.ndarray:
    """(L, h0, w0): each level's map, resampled bilinearly to the largest of their grids."""
    maps = [np.asarray(m, np.float32) for m in maps]
    finest = max((m.shape for m in maps), key=lambda shape: shape[0] * shape[1])
    return np.stack([m if m.shape == finest else upsample_raw(m, finest) for m in maps])


def upsample_raw(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One map, bilinear (align_corners=False), values kept as they are (no clipping)."""
    return resize_planes(np.asarray(m, np.float32)[None], size)[0]
