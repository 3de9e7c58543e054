"""Maps → pictures: ReLU, per-map min–max with a degenerate flag, bilinear resize, overlay."""

from __future__ import annotations

import cv2
import numpy as np

from .errors import CamInferError
from .images import as_rgb_uint8

EPS = 1e-7
COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "viridis": cv2.COLORMAP_VIRIDIS,
             "inferno": cv2.COLORMAP_INFERNO, "hot": cv2.COLORMAP_HOT, "magma": cv2.COLORMAP_MAGMA}


def normalise(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ReLU then per-map min–max to [0,1]. A map whose range is below EPS·max(1, |max|) is
    *degenerate* (constant after ReLU): it comes back all zeros with its flag set, never NaN."""
    maps = np.maximum(np.asarray(maps, np.float32), 0)
    lo = maps.min(axis=(1, 2), keepdims=True)
    hi = maps.max(axis=(1, 2), keepdims=True)
    span = hi - lo
    degenerate = (span <= EPS * np.maximum(1.0, np.abs(hi)))[:, 0, 0]
    out = np.where(degenerate[:, None, None], 0.0, (maps - lo) / np.where(span > 0, span, 1.0))
    return out.astype(np.float32), degenerate


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (align_corners=False, as torch's and cv2's default) to size (H,W), clipped to [0,1]."""
    h, w = size
    return np.stack([np.clip(cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR), 0, 1) for m in maps]) \
        if len(maps) else np.zeros((0, h, w), np.float32)


def check_overlay_options(colormap: str, alpha: float) -> None:
    if colormap not in COLORMAPS:
        raise CamInferError(f"unknown colormap '{colormap}'; choose one of: {', '.join(COLORMAPS)}")
    if not 0.0 <= alpha <= 1.0:
        raise CamInferError(f"alpha must be in [0, 1], not {alpha}")


def overlay(image: np.ndarray, saliency: np.ndarray, colormap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """Blend a colour-mapped saliency (H,W in [0,1]) over an RGB image: (1−alpha)·image + alpha·heat.
    The saliency is resized to the image when sizes differ. Returns RGB uint8."""
    check_overlay_options(colormap, alpha)
    rgb = as_rgb_uint8(image)
    saliency = np.asarray(saliency, np.float32)
    if saliency.ndim != 2:
        raise CamInferError(f"saliency must be one (H,W) map, not shape {saliency.shape}")
    if saliency.shape != rgb.shape[:2]:
        saliency = upsample(saliency[None], rgb.shape[:2])[0]
    heat = cv2.applyColorMap(np.uint8(np.round(np.clip(saliency, 0, 1) * 255)), COLORMAPS[colormap])
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return np.uint8(np.round((1 - alpha) * rgb.astype(np.float32) + alpha * heat.astype(np.float32)))
