"""Faithfulness: does the model still see the class in what the map keeps, and how fast does the
class fade as the most salient pixels go?

- Average Drop = max(0, Y − O)/Y and Increase in Confidence = 1[O > Y] (Chattopadhay et al.,
  Grad-CAM++, WACV 2018), Y the class probability on the image, O on the explanation map
  E = x ⊙ S: in the normalised input by default (Poppi et al., Recipro-CAM), or ``space="raw"``:
  raw pixels ⊙ S, then normalised (black where S = 0; openvino-xai).
- Deletion and Insertion (Petsiuk et al., RISE, BMVC 2018): pixels in descending saliency order,
  ⌈H·W/steps⌉ per step, replaced by a substrate (deletion) or pasted onto it (insertion); the curve
  is the class probability after each step (steps+1 points). Defaults follow the RISE code:
  deletion onto zeros of the normalised input (the mean grey), insertion from its Gaussian blur
  (klen 11, σ 5), AUC = (Σ aᵢ − a₀/2 − aₙ/2)/n; ``auc="recipro"`` is the Recipro-CAM code's
  Σ-trapezoid/(n+1).

Scores are softmax probabilities of the explained class (the model's own when it ends in a softmax).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..errors import CamInferError
from ..numerics import probabilities_of

SUBSTRATES = ("zeros", "blur", "mean")
AUCS = ("rise", "recipro")
SPACES = ("normalised", "raw")


def class_probabilities(explainer, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Probability of `targets` on each input, through the bundle's backend (batched)."""
    outputs = explainer.backend.forward(np.ascontiguousarray(x, np.float32))
    probabilities = probabilities_of(outputs, explainer.bundle.output_kind)
    return probabilities[np.arange(len(x)), np.broadcast_to(targets, (len(x),))]


def explanation_inputs(x: np.ndarray, saliency: np.ndarray, space: str = "normalised", views=None,
                       preprocessing=None) -> np.ndarray:
    """E = x ⊙ S (normalised space), or normalise(view ⊙ S) with `views` the RGB images as the model
    sees them (after resize and crop) for ``space="raw"``."""
    if space not in SPACES:
        raise CamInferError(f"space must be one of {', '.join(SPACES)}, not {space!r}")
    if space == "normalised":
        return (x * saliency[:, None]).astype(np.float32)
    if views is None or preprocessing is None:
        raise CamInferError("space='raw' needs the images as the model sees them and the preprocessing")
    return np.stack([preprocessing.standardise(v.astype(np.float32) * s[..., None]) for v, s in zip(views, saliency)])


def average_drop(y: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Per image: max(0, Y − O)/Y."""
    y, o = np.asarray(y, np.float64), np.asarray(o, np.float64)
    return np.maximum(0.0, y - o) / np.maximum(y, 1e-12)


def increase_in_confidence(y: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Per image: 1 when the explanation map raises the class probability."""
    return (np.asarray(o) > np.asarray(y)).astype(np.float64)


def gaussian_kernel(klen: int = 11, nsig: float = 5.0) -> np.ndarray:
    """RISE's gkern (Petsiuk et al., BMVC 2018, the official evaluation code): a klen×klen Dirac delta smoothed by
    SciPy's ``gaussian_filter(·, nsig)``, i.e. a Gaussian of σ = nsig truncated at 4σ with the array reflected at
    its edges (d c b a | a b c d | d c b a). At klen 11, σ 5 the reflections fold the tails back: an almost flat
    kernel. Separable, so the 1-D result's outer product; it sums to 1."""
    radius = int(4.0 * nsig + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / nsig) ** 2)
    weights /= weights.sum()
    centre = klen // 2
    k1 = np.zeros(klen)
    for j in range(klen):                       # out[j] = Σ_i w[i]·dirac[reflect(j − i)]
        where = np.mod(j - offsets, 2 * klen)
        where = np.where(where >= klen, 2 * klen - 1 - where, where)
        k1[j] = weights[where == centre].sum()
    k2 = np.outer(k1, k1)
    return (k2 / k2.sum()).astype(np.float32)


def substrate_of(x: np.ndarray, kind: str) -> np.ndarray:
    """(3,H,W) → what replaces removed pixels: zeros, the RISE blur (zero padding), or the channel means."""
    if kind == "zeros":
        return np.zeros_like(x)
    if kind == "mean":
        return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).astype(np.float32)
    if kind == "blur":
        kernel = gaussian_kernel()
        return np.stack([cv2.filter2D(c, -1, kernel, borderType=cv2.BORDER_CONSTANT) for c in x]).astype(np.float32)
    raise CamInferError(f"substrate must be one of {', '.join(SUBSTRATES)}, not {kind!r}")


def causal_curve(explainer, x: np.ndarray, saliency: np.ndarray, target: int, mode: str, steps: int = 28,
                 substrate: str | None = None) -> np.ndarray:
    """One image (3,H,W) and its map (H,W) → the class probability after 0..steps steps, (steps+1,)."""
    return class_probabilities(explainer, causal_frames(x, saliency, mode, steps, substrate), np.array([target]))


def causal_frames(x: np.ndarray, saliency: np.ndarray, mode: str, steps: int = 28,
                  substrate: str | None = None) -> np.ndarray:
    """The inputs of a deletion or insertion curve: (steps+1, 3, H, W), step i with the i·⌈H·W/steps⌉ most
    salient pixels replaced by the substrate (deletion) or pasted onto it (insertion)."""
    if mode not in ("deletion", "insertion"):
        raise CamInferError(f"mode must be 'deletion' or 'insertion', not {mode!r}")
    if not isinstance(steps, int) or steps < 1:
        raise CamInferError(f"steps must be a positive integer, not {steps!r}")
    substrate = substrate or ("zeros" if mode == "deletion" else "blur")
    _, h, w = x.shape
    order = np.argsort(-saliency.ravel(), kind="stable")
    per_step = math.ceil(h * w / steps)
    base = substrate_of(x, substrate)
    start, finish = (x, base) if mode == "deletion" else (base, x)
    start, finish = start.reshape(3, -1), finish.reshape(3, -1)
    frames = np.empty((steps + 1, 3, h * w), np.float32)
    for i in range(steps + 1):
        frames[i] = start
        changed = order[:min(i * per_step, h * w)]
        frames[i][:, changed] = finish[:, changed]
    return frames.reshape(steps + 1, 3, h, w)


def auc(curve: np.ndarray, normalisation: str = "rise") -> float:
    """Area under a curve of n+1 points: (Σ aᵢ − a₀/2 − aₙ/2)/n (RISE) or that trapezoid sum/(n+1) (Recipro)."""
    if normalisation not in AUCS:
        raise CamInferError(f"auc must be one of {', '.join(AUCS)}, not {normalisation!r}")
    curve = np.asarray(curve, np.float64)
    n = len(curve) - 1
    trapezoid = curve.sum() - curve[0] / 2 - curve[-1] / 2
    return float(trapezoid / n if normalisation == "rise" else trapezoid / (n + 1))
