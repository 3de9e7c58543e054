"""Baseline maps: what a method's map must beat, scored by the same metric code as the methods.

A baseline is a map provider: (the model input, its size, the priors of the dataset) → a map (H,W) in [0, 1]
that knows nothing of the model. Its rows go through the audit's metric loop as a method's do, marked
``baseline = 1``:

- ``random-map``: uniform noise U[0, 1) per pixel, drawn from ``default_rng((seed, crc32(input)))``, so a rerun
  draws the same map and a different input (ADCC's masked image) another one;
- ``centre-gaussian``: exp(−((y − c_y)² + (x − c_x)²) / 2σ²) about the input's centre, σ = ¼ of its shorter side
  (the centre bias of photos: Judd et al., "Learning to predict where humans look", ICCV 2009);
- ``box-prior`` (with ground-truth boxes): the fraction of the audited images whose boxes (any class, mapped
  into the model's input) cover each input pixel — where objects are on average in this dataset;
- ``mask-prior`` (with ground-truth masks): the same for the masks' object pixels (every class but one the model
  names "background", as PASCAL VOC's index 0; void left out).

The priors include each image's own ground truth (1/n of it); on n images they are the dataset's layout, not
an image's.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import CamInferError

RANDOM, GAUSSIAN, BOX_PRIOR, MASK_PRIOR = "random-map", "centre-gaussian", "box-prior", "mask-prior"
BASELINES = (RANDOM, GAUSSIAN, BOX_PRIOR, MASK_PRIOR)
NEEDS = {BOX_PRIOR: "boxes", MASK_PRIOR: "masks"}     # the ground truth a prior is drawn from
SIGMA = 0.25                                           # the Gaussian's σ, of the input's shorter side
SEED = 0


def random_map(x: np.ndarray, seed: int = SEED) -> np.ndarray:
    """U[0, 1) noise of the input's size, seeded by the input's bytes: one input, one map."""
    rng = np.random.default_rng((seed, zlib.crc32(np.ascontiguousarray(x).tobytes())))
    return rng.random(x.shape[-2:], dtype=np.float64).astype(np.float32)


def centre_gaussian(shape: tuple[int, int], sigma: float = SIGMA) -> np.ndarray:
    """exp(−d²/2σ²), d the distance to the centre ((H−1)/2, (W−1)/2), σ = sigma·min(H, W); peak 1."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    s = sigma * min(h, w)
    return np.exp(-((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * s * s)).astype(np.float32)


def baseline_map(name: str, x: np.ndarray, priors: dict) -> np.ndarray:
    """The baseline's map for one model input x (C,H,W)."""
    if name == RANDOM:
        return random_map(x)
    if name == GAUSSIAN:
        return centre_gaussian(x.shape[-2:])
    return priors[name]


def available(priors: dict | None) -> tuple[str, ...]:
    """The baselines an audit can draw: the random map and the Gaussian always, a prior when its ground truth
    was given."""
    return tuple(b for b in BASELINES if b not in NEEDS or b in (priors or {}))


def box_prior(boxes_in_input: list[list], shape: tuple[int, int]) -> np.ndarray | None:
    """The mean over images of the union of their boxes ([x1, y1, x2, y2] inclusive, in the input), (H,W)."""
    if not boxes_in_input:
        return None
    total = np.zeros(shape, np.float64)
    for boxes in boxes_in_input:
        inside = np.zeros(shape, bool)
        for x1, y1, x2, y2 in boxes:
            inside[max(y1, 0):y2 + 1, max(x1, 0):x2 + 1] = True
        total += inside
    return (total / len(boxes_in_input)).astype(np.float32)


def mask_prior(truths: list, background=frozenset()) -> np.ndarray | None:
    """The mean over images of their object pixels (every class but the `background` indices, valid pixels
    only), (H,W)."""
    if not truths:
        return None
    total = np.zeros(truths[0].valid.shape, np.float64)
    for truth in truths:
        objects = np.zeros(truth.valid.shape, bool)
        for index, region in truth.regions.items():
            if index not in background:
                objects |= region
        total += objects & truth.valid
    return (total / len(truths)).astype(np.float32)


@dataclass
class BaselineExplanation:
    """A baseline's map for one input, with what the metric loop reads of an `Explanation`: the class it is
    scored on, the one the class-specific methods score (the target, or the model's top-1), and its probability.
    Its map is of no class, but it is no method's: its rows are marked ``baseline``, and no thumbnail shows it."""

    method: str
    saliency: np.ndarray             # (1,H,W)
    targets: np.ndarray              # (1,)
    scores: np.ndarray               # (1,)
    outputs: np.ndarray
    degenerate: np.ndarray           # (1,) a constant map
    class_agnostic: bool = False

    @property
    def maps(self) -> np.ndarray:
        """The map at the input's resolution (a baseline has no low-resolution map)."""
        return self.saliency


def explain_baseline(explainer, x: np.ndarray, name: str, target, priors: dict) -> BaselineExplanation:
    """One forward pass for the class and its probability; the map is the baseline's."""
    from ..numerics import probabilities_of

    outputs = explainer.backend.forward(np.ascontiguousarray(x, np.float32))
    probabilities = probabilities_of(outputs, explainer.bundle.output_kind)
    targets = np.argmax(probabilities, axis=1) if target is None else np.broadcast_to(np.asarray(target), (len(x),))
    s = np.stack([baseline_map(name, xi, priors) for xi in x])
    return BaselineExplanation(name, s, np.asarray(targets, np.int64), probabilities[np.arange(len(x)), targets],
                               outputs, np.ptp(s.reshape(len(s), -1), axis=1) == 0)


def dataset_priors(files, boxes_of, preprocessing, masks=None, classes=None) -> dict:
    """The box prior of the images' boxes (`boxes_of(path)` → a boxes-file entry or None) and the mask prior of
    their masks in `masks` (found by file name), both in the model's input; a prior without ground truth is left
    out. An image that cannot be read is left out here (the audit reports it)."""
    from .masks import read_truth

    boxes, truths = [], []
    for path in files:
        entry = boxes_of(path)
        if not entry and not masks:
            continue
        shape = _image_shape(path)
        if shape is None:
            continue
        if entry:
            given = [b.get("box") if isinstance(b, dict) else b for b in entry]
            mapped = [preprocessing.box_to_input(b, shape) for b in given if b is not None and len(b) == 4]
            boxes.append([b for b in mapped if b is not None])
        if masks:
            truths.append(read_truth(masks, path.name, shape, classes).in_input(preprocessing))
    background = {i for i, name in enumerate(classes or ()) if str(name).strip("_ ").lower() == "background"}
    priors = {BOX_PRIOR: box_prior(boxes, preprocessing.input_size), MASK_PRIOR: mask_prior(truths, background)}
    return {name: prior for name, prior in priors.items() if prior is not None}


def _image_shape(path) -> tuple[int, int] | None:
    """(H, W) of an image file as the audit reads it: upright as its EXIF orientation says (a header's size is the
    stored one, on its side for a phone photo taken upright)."""
    from ..images import load_image

    try:
        return load_image(path).shape[:2]
    except CamInferError:
        return None
