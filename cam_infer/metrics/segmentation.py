"""Localisation against ground-truth regions (pixel masks), for segmenters and any task with masks.

Energy in region — the energy-based pointing game of Score-CAM (Wang et al., CVPRW 2020) on a mask
instead of a box: E = Σ_p S(p)·R(p) / Σ_p S(p) over a map S ≥ 0 and a region R ∈ {0,1}. A map spread
evenly over the image scores the region's area fraction |R| / (H·W): that is the uniform baseline
a map must beat. Pointing in region (Zhang et al., ECCV 2016, on a mask): a hit when the map's maximum
(first in row-major order) lies in R. Pixels marked void (255 in a label image) are left out of both,
numerator and denominator, when a `valid` mask is given.
"""

from __future__ import annotations

import numpy as np

from ..errors import CamInferError


def _region(saliency: np.ndarray, region) -> np.ndarray:
    region = np.asarray(region, bool)
    if region.shape != np.shape(saliency):
        raise CamInferError(f"the region is {region.shape[1]}x{region.shape[0]} but the map is "
                            f"{np.shape(saliency)[1]}x{np.shape(saliency)[0]}")
    return region


def _valid(saliency: np.ndarray, valid) -> np.ndarray:
    return np.ones(np.shape(saliency), bool) if valid is None else _region(saliency, valid)


def energy_in_region(saliency: np.ndarray, region, valid=None) -> float:
    """E = Σ S·R / Σ S over the valid pixels, for a map S ≥ 0 (negative values are clipped to 0);
    0 for an all-zero map."""
    saliency = np.clip(np.asarray(saliency, np.float64), 0, None)
    region, keep = _region(saliency, region), _valid(saliency, valid)
    total = saliency[keep].sum()
    return float(saliency[region & keep].sum() / total) if total > 0 else 0.0


def uniform_baseline(region, valid=None) -> float:
    """The energy in region of a constant map: |R ∩ V| / |V| (the region's share of the valid pixels)."""
    region = np.asarray(region, bool)
    keep = np.ones(region.shape, bool) if valid is None else np.asarray(valid, bool)
    count = int(keep.sum())
    return float((region & keep).sum() / count) if count else 0.0


def pointing_in_region(saliency: np.ndarray, region, valid=None, degenerate: bool = False) -> bool:
    """A hit when the map's maximum over the valid pixels (first in row-major order) lies in R;
    a degenerate (constant) map is a miss."""
    saliency = np.asarray(saliency, np.float64)
    region, keep = _region(saliency, region), _valid(saliency, valid)
    if degenerate or not keep.any():
        return False
    masked = np.where(keep, saliency, -np.inf)
    return bool(region.flat[int(np.argmax(masked))])
