"""The work of `cam-infer diff` for a batch of images: explain each image on model A and on model B with every
method, the same class on both sides, and compare → one row per (image, method) and a picture A | B.

`DiffWork` depends on nothing but its fields (the explainers are opened once per process from their specs),
so every runner (`cam_infer.parallel`: this process, workers, Ray) maps it over batches the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..audit.work import THUMBNAIL, thumbnail_name
from ..jobs.folders import read_stamped
from ..methods.registry import class_agnostic
from ..metrics.similarity import spearman, ssim, top_iou
from ..numerics import probabilities_of
from ..postprocess import encode_png, overlay

COLUMNS = ("image", "method", "class_agnostic", "class_id", "label", "top1_a", "top1_b", "top1_agree",
           "probability_a", "probability_b", "probability_shift", "spearman", "ssim", "top_iou", "degenerate_a",
           "degenerate_b", "pair")
SIMILARITIES = {"spearman": spearman, "ssim": ssim, "top_iou": top_iou}
COMPARED_SIDE = 224           # maps of models that see an image differently are compared on it (the part either
                              # model saw) at this long side
GAP = 4                       # white pixels between the two overlays of a pair


@dataclass(frozen=True)
class DiffWork:
    """A batch of images [(path, name, _, _)] → rows (COLUMNS) and pictures (`cam_infer.jobs.driver.Job`)."""

    spec_a: object                        # ExplainerSpec of model A
    spec_b: object                        # ExplainerSpec of model B
    methods: tuple
    options: dict                         # method → its options
    target: int | None                    # the class explained on both sides; None: A's top-1 per image
    same_view: bool                       # both models see the same input: maps are compared there

    def __call__(self, batch) -> dict:
        a, b = self.spec_a.open(), self.spec_b.open()
        out = {"inputs": {}, "rows": [], "files": {}, "errors": []}
        decoded = []
        for path, name, _, _ in batch:
            read = read_stamped(path, out["errors"])
            if read:
                decoded.append((path, name, read[0]))
                out["inputs"][str(path)] = read[1]
        if decoded:
            images = [rgb for *_, rgb in decoded]
            views_a, x_a = model_inputs(a, images)
            same_input = a.bundle.preprocessing == b.bundle.preprocessing
            views_b, x_b = (views_a, x_a) if same_input else model_inputs(b, images)
            per_method = [self._compare(a, b, method, decoded, (views_a, x_a), (views_b, x_b), out["files"])
                          for method in self.methods]
            out["rows"] = [rows[i] for i in range(len(decoded)) for rows in per_method]   # image by image
        return out

    def _compare(self, a, b, method: str, decoded, side_a, side_b, files: dict) -> list[dict]:
        """One method on A and B for the batch: the class A explains (its top-1 unless a target) on both sides;
        a row per image, and its pair of overlays added to `files`."""
        (views_a, x_a), (views_b, x_b) = side_a, side_b
        agnostic = class_agnostic(method)
        options = self.options.get(method, {})
        e_a = a.explain(x_a, method, target=None if agnostic else self.target, **options)
        classes = np.full(len(decoded), self.target) if self.target is not None else top1(e_a.outputs)
        e_b = b.explain(x_b, method, target=None if agnostic else classes, **options)
        top1_a, top1_b = top1(e_a.outputs), top1(e_b.outputs)
        p_a = probabilities_of(e_a.outputs, a.bundle.output_kind)[np.arange(len(classes)), classes]
        p_b = probabilities_of(e_b.outputs, b.bundle.output_kind)[np.arange(len(classes)), classes]
        rows = []
        for i, (path, name, rgb) in enumerate(decoded):
            s_a, s_b = comparable(e_a.saliency[i], e_b.saliency[i], a, b, rgb.shape, self.same_view)
            c = int(classes[i])
            pair = thumbnail_name(name, method)
            files[pair] = pair_png(overlay(views_a[i], e_a.saliency[i]), overlay(views_b[i], e_b.saliency[i]))
            rows.append({
                "image": str(path), "method": method, "class_agnostic": int(agnostic),
                "class_id": "" if agnostic else c,
                "label": a.bundle.label(c) if a.bundle.labels and not agnostic else "",
                "top1_a": int(top1_a[i]), "top1_b": int(top1_b[i]), "top1_agree": int(top1_a[i] == top1_b[i]),
                "probability_a": float(p_a[i]), "probability_b": float(p_b[i]),
                "probability_shift": float(p_b[i]) - float(p_a[i]),
                **similarities(s_a, s_b, bool(e_a.degenerate[i]) or bool(e_b.degenerate[i])),
                "degenerate_a": int(e_a.degenerate[i]), "degenerate_b": int(e_b.degenerate[i]), "pair": pair})
        return rows


def similarities(s_a: np.ndarray, s_b: np.ndarray, flat: bool) -> dict:
    """Each similarity of the two maps; None for all where either map is flat (degenerate): a constant map has no
    ranking and no top 20 %, so its Spearman, SSIM and IoU would be whatever its ties give (a constant map against
    one hot at the top scored IoU 1.0 and SSIM 0.79). Such images are counted apart (`report.summarise`)."""
    return {key: None if flat else measure(s_a, s_b) for key, measure in SIMILARITIES.items()}


def top1(outputs: np.ndarray) -> np.ndarray:
    """The top-1 class of each image's outputs (logits or probabilities: the same order)."""
    return np.asarray(outputs).reshape(len(outputs), -1).argmax(axis=1)


def model_inputs(explainer, images: list) -> tuple[list, np.ndarray]:
    """What the model sees of each RGB image (its resized and cropped view) and the batch x of their inputs."""
    prep = explainer.bundle.preprocessing
    views = [prep.geometry(rgb) for rgb in images]
    return views, np.stack([prep.standardise(v) for v in views])


def sees_alike(bundle_a, bundle_b) -> bool:
    """Both models see an image the same way (input size, resize and crop): their maps are compared pixel for
    pixel over the model's input; otherwise over the original image."""
    geometry = ("input_size", "resize", "crop", "interpolation")
    a, b = bundle_a.preprocessing, bundle_b.preprocessing
    return all(getattr(a, g, None) == getattr(b, g, None) for g in geometry)


def comparable(s_a: np.ndarray, s_b: np.ndarray, a, b, image_shape, same: bool) -> tuple[np.ndarray, np.ndarray]:
    """The two saliency maps on one grid: as they are when both models see the same input; otherwise each put back
    on the original image (what its model did not see is 0), cut to the box of the pixels either model saw, and
    shrunk to COMPARED_SIDE pixels on its long side. The pixels neither model saw are left out: 0 in both maps, they
    would tie at the bottom of both rankings and agree whatever the maps (two unrelated maps of two center-cropping
    models scored a Spearman of 0.85 on a 3:2 photo)."""
    if same:
        return s_a, s_b
    back = [e.bundle.preprocessing.to_image(s, image_shape) for e, s in ((a, s_a), (b, s_b))]
    seen = back[0][1] | back[1][1]
    rows, cols = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    h, w = rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]
    scale = min(1.0, COMPARED_SIDE / max(h, w))
    size = (max(7, round(w * scale)), max(7, round(h * scale)))
    return tuple(cv2.resize(m[box], size, interpolation=cv2.INTER_AREA) for m, _ in back)


def pair_png(left: np.ndarray, right: np.ndarray) -> bytes:
    """Two RGB overlays side by side, each shrunk to the report's thumbnail size, as PNG bytes."""
    left, right = shrink(left), shrink(right)
    h = max(left.shape[0], right.shape[0])
    padded = [np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255) for p in (left, right)]
    return encode_png(np.concatenate([padded[0], np.full((h, GAP, 3), 255, np.uint8), padded[1]], axis=1))


def shrink(picture: np.ndarray) -> np.ndarray:
    """A picture at most THUMBNAIL pixels a side."""
    h, w = picture.shape[:2]
    scale = THUMBNAIL / max(h, w)
    if scale >= 1:
        return picture
    return cv2.resize(picture, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
