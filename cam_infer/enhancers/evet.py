"""EVET — Oh, Jung, Park, Kim, "EVET: Enhancing Visual Explanations of Deep Neural Networks Using Image
Transformations", WACV 2021: explain transformed copies of the input, map each explanation back, combine.

No code or full text was found (research notes, seed methods §5); this is the pipeline the abstract
describes, with the transforms as data. For each invertible transform T_j (the identity included):
x_j = T_j(x) (an affine warp in the model's input space, zero padding = the mean colour after
normalisation); E_j = the base method's normalised saliency of x_j for the class of the original input;
E = Σ_j V_j · T_j⁻¹(E_j) / Σ_j V_j, V_j the pixels of x that T_j keeps inside the image.
Cost: len(transforms) × the base method.

Transforms (``transforms=`` a tuple of names): ``identity``, ``flip`` (horizontal), ``shift`` (by 10 % of
the width and height), ``zoom`` (1.2× about the centre), ``rotate`` (10° about the centre). Default: all five.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import CamInferError
from . import enhancer

TRANSFORMS = ("identity", "flip", "shift", "zoom", "rotate")


def affine(name: str, height: int, width: int) -> np.ndarray:
    """The 2×3 matrix of a named transform, in pixel coordinates (x right, y down) of an H×W image."""
    cx, cy = (width - 1) / 2, (height - 1) / 2
    if name == "identity":
        return np.array([[1, 0, 0], [0, 1, 0]], np.float64)
    if name == "flip":
        return np.array([[-1, 0, width - 1], [0, 1, 0]], np.float64)
    if name == "shift":
        return np.array([[1, 0, 0.1 * width], [0, 1, 0.1 * height]], np.float64)
    if name == "zoom":
        return cv2.getRotationMatrix2D((cx, cy), 0.0, 1.2)
    if name == "rotate":
        return cv2.getRotationMatrix2D((cx, cy), 10.0, 1.0)
    raise CamInferError(f"unknown EVET transform '{name}'; choose from {', '.join(TRANSFORMS)}")


def warp(images: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(…,H,W) float32 planes warped by `matrix` (bilinear, zero outside)."""
    h, w = images.shape[-2:]
    flat = images.reshape(-1, h, w)
    out = np.stack([cv2.warpAffine(p, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                   borderValue=0.0) for p in flat])
    return out.reshape(images.shape).astype(np.float32)


def passes(height: int, width: int, *, transforms: tuple | list | str = TRANSFORMS) -> int:
    """Inputs the base method explains per image: one per transform."""
    return 1 if isinstance(transforms, str) else len(transforms)


@enhancer("evet", passes=passes)
def evet(explainer, x: np.ndarray, method: str, target, options: dict, *,
         transforms: tuple | list | str = TRANSFORMS):
    """The fused saliency (N,H,W), with the base explanation of the untransformed input (for its classes).
    The transformed copies of every image go through the base method in one batch."""
    if isinstance(transforms, str):
        transforms = (transforms,)
    if not transforms:
        raise CamInferError("evet needs at least one transform")
    matrices = [affine(name, *x.shape[2:]) for name in transforms]
    base = explainer.explain(x, method, target=target, **options)
    if base.multi:
        raise CamInferError("evet explains one class per image; give one target per image")
    h, w = x.shape[2:]
    moved = [j for j, name in enumerate(transforms) if name != "identity"]
    copies = np.concatenate([warp(x, matrices[j]) for j in moved]) if moved else x[:0]
    again = None if base.class_agnostic else np.tile(base.targets, len(moved))
    others = explainer.explain(copies, method, target=again, **options) if moved else None
    total = np.zeros((len(x), h, w), np.float64)
    weight = np.zeros((len(x), h, w), np.float64)
    for j, (name, matrix) in enumerate(zip(transforms, matrices)):
        inverse = cv2.invertAffineTransform(matrix)
        if name == "identity":
            saliency = base.saliency
        else:
            index = moved.index(j)
            saliency = others.saliency[index * len(x):(index + 1) * len(x)]
        back = warp(saliency, inverse)
        valid = warp(warp(np.ones((1, h, w), np.float32), matrix), inverse)[0] > 0.999
        total += back * valid
        weight += valid
    fused = np.where(weight > 0, total / np.maximum(weight, 1), 0).astype(np.float32)
    return fused, base
