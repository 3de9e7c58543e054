"""Methods for detections, one module each, registered in `DETECTION_METHODS` (name → `DetectionMethod`).

A method gets a `DetectionContext` (one image: its input, its cut maps, the clean output) and the targets
to explain, and returns one raw map per target at the input's resolution; the explainer normalises them.
Per-level maps are combined by the rule of their units (research notes, detection §3.6):

- `same_unit`: every level's value is a change of the same target score (Recipro-CAM): each level
  upsampled (bilinear) and **summed**, no per-level normalisation;
- `unit_free`: activations or their projections (activation map, Eigen-CAM, Ablation-/Score-CAM weighted
  sums): each level ReLU'd, min–max'd and upsampled, then **averaged** (pytorch-grad-cam's rule).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...errors import CamInferError
from ...postprocess import normalise, upsample


@dataclass(frozen=True)
class DetectionMethod:
    name: str
    fn: Callable
    cost: str
    summary: str
    class_specific: bool


DETECTION_METHODS: dict[str, DetectionMethod] = {}


def detection_method(name: str, cost: str, class_specific: bool = True):
    """Register a detection method: fn(ctx, targets, **options) → list of (H,W) raw maps, one per target."""
    def register(fn):
        summary = (fn.__doc__ or "").strip().splitlines()[0]
        DETECTION_METHODS[name] = DetectionMethod(name, fn, cost, summary, class_specific)
        return fn
    return register


def get_detection_method(name: str) -> DetectionMethod:
    if name not in DETECTION_METHODS:
        raise CamInferError(f"method '{name}' does not explain detections; choose one of: "
                            f"{', '.join(DETECTION_METHODS)}")
    return DETECTION_METHODS[name]


def same_unit(maps: dict[int, np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Σ_l U(S_l): the levels' maps of one score, upsampled to `size` and summed."""
    h, w = size
    total = np.zeros((h, w), np.float32)
    for m in maps.values():
        total += upsample_raw(m, size)
    return total


def unit_free(maps: dict[int, np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """mean_l U(minmax(ReLU(S_l))): maps in the units of their own level, made comparable first."""
    if not maps:
        return np.zeros(size, np.float32)
    normalised = [upsample(normalise(m[None])[0], size)[0] for m in maps.values()]
    return np.mean(normalised, axis=0)


def upsample_raw(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (align_corners=False), values kept as they are (no clipping)."""
    import cv2
    return cv2.resize(np.asarray(m, np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DETECTION_METHODS", "DetectionMethod", "detection_method", "get_detection_method", "same_unit",
           "unit_free"]
