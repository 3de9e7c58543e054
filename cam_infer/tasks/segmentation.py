"""Segmentation: the targets are classes over regions of pixels (Seg-Grad-CAM's target: Vinogradova, Dibrov &
Myers, "Towards Interpretable Semantic Segmentation via Gradient-weighted Class Activation Mapping", AAAI 2020).

A target (class c, region R) scores S = (1/|R|) Σ_{p∈R} y_c(p): the mean of the class's score over the region,
y the head's output (the scores before any ArgMax: logits, softmax or sigmoid probabilities, as the model has
them; ``score="prob"`` reads probabilities, a softmax over the classes of logits). The mean rather than the
sum: a score in the unit of one pixel's score whatever the region's size, so the maps of a small and of a
large region are on one scale, and a recipro map's values stay comparable to the clean score.

The region is fixed from the clean pass: by default the pixels the model assigns to c (its argmax; for
sigmoid models the pixels where y_c > 0.5); or ``region=``: a mask (a PNG path or a boolean array at the
original image's size), a box ``[x1, y1, x2, y2]`` or a pixel ``(x, y)`` in the original image's pixels.
Perturbed passes score the same pixels. ``target``: None = the largest predicted class that is not the
background (with a region: the class predicted most inside it), a class by index or label, a list of
them, or ``"all"`` = every class present, one map each.

What `Explainer.explain` returns for a segmenter: an `Explanation` whose ``items[i]`` lists, for image i,
one `SegmentMap` per explained target: ``class_id``, ``label``, ``score`` (the clean region score),
``region`` ((H,W) bool at the model's scores resolution = the input), ``pixels`` (|R|), ``saliency``
((H,W) in [0,1] at the input), ``degenerate``, ``uniform``; the low-resolution raw map is ``raw``.
A class-agnostic method's map is the same for every target and carries no class name in its records
(``class_agnostic``); each record keeps the class of the region it is measured on as ``region_class_id``."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import CamInferError, NotInImage
from ..explanation import Explanation
from ..methods.registry import Context
from ..metrics.segmentation import energy_in_region, uniform_baseline
from ..numerics import nonzero_per_row, softmax
from ..postprocess import near_uniform, normalise, upsample
from .base import Task, box_corners, class_index


@dataclass
class SegmentMap:
    """One explained (class, region) of an image."""

    class_id: int
    label: str | None
    score: float                 # the clean region score (mean of the class's score over the region)
    region: np.ndarray           # (H,W) bool, at the model's input (its scores' resolution)
    pixels: int
    saliency: np.ndarray         # (H,W) in [0,1] at the model's input
    raw: np.ndarray              # (h,w) the method's map at the cut
    degenerate: bool
    uniform: bool = False
    class_agnostic: bool = False
    source: str = "predicted"    # where the region came from: predicted | mask | box | pixel

    def record(self, energy: bool = True) -> dict:
        """The target's fields. A class-agnostic map explains no class, so its record names none; the class whose
        region (and region score) it is measured on is kept apart, as ``region_class_id`` and ``region_label``
        (as a classifier's class-agnostic records keep the top-1 as ``predicted_*``). With `energy`: the map's
        energy inside its region, Σ S·R / Σ S, and a uniform map's, |R| / |image| (an audit measures both
        against its masks' valid pixels instead)."""
        named = {"region_class_id": self.class_id, "region_label": self.label} if self.class_agnostic else \
            {"class_id": self.class_id, "label": self.label}
        record = {**named, "score": round(self.score, 5), "region": self.source, "region_pixels": self.pixels,
                  "degenerate": self.degenerate, "uniform": self.uniform}
        if energy:
            record.update(energy_in_region=round(energy_in_region(self.saliency, self.region), 5),
                          uniform_baseline=round(uniform_baseline(self.region), 5))
        return record


@dataclass
class SegmentationContext(Context):
    """One image's targets as rows: `x`, `activations` repeated per target, `targets` their classes,
    `regions` (T,H,W) their pixels; `outputs` (T,C,H,W) the clean scores. A method's class score of
    head/forward outputs is the region score (`class_scores`)."""

    regions: np.ndarray | None = None
    kind: str = "logits"
    tail: object = None           # `recipro_scores` without whole-head rows: a `bundle.linear_tail.LinearTail`
    #                               (1×1 conv + bilinear resize), or a cut set member's `cut_set.MemberRecipro`

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        return softmax(outputs, axis=1) if self.kind == "logits" else outputs

    def class_scores(self, outputs: np.ndarray, i: int, kind: str) -> np.ndarray:
        """(1/|R_i|) Σ_{p∈R_i} y_c(p) for each row of outputs (R,C,H,W)."""
        values = self.probabilities(outputs) if kind == "prob" else outputs
        return region_scores(values[:, int(self.targets[i])], self.regions[i])


def rows(values: np.ndarray, i: int, k: int) -> np.ndarray:
    """Image i of a batch as k rows, one per target: a view when k = 1 (no copy of its full-size scores)."""
    return values[i:i + 1] if k == 1 else np.repeat(values[i:i + 1], k, axis=0)


def region_scores(scores: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Mean of (R,H,W) scores over the region's pixels → (R,), float64 (`kernels.region_means`: one pass over the
    region, no index arrays)."""
    from ..kernels import region_means
    return region_means(as_compiled_float(scores), np.ascontiguousarray(region, dtype=bool))


def as_compiled_float(values: np.ndarray) -> np.ndarray:
    """Scores as the compiled kernels read them: float32 or float64 as they are, float16 (an fp16 model's
    outputs, which Numba cannot read) as float32."""
    return values if values.dtype in (np.float32, np.float64) else values.astype(np.float32)


class Assignment:
    """Where the model assigns each class of one image's (C,H,W) scores: the argmax over the classes (sigmoid: each
    class above 0.5), kept as one label map — a class's region is drawn only when it is asked for."""

    def __init__(self, outputs: np.ndarray, kind: str):
        from ..kernels import class_argmax
        self.sigmoid, self.classes = kind == "sigmoid", len(outputs)
        self.values = outputs > 0.5 if self.sigmoid else class_argmax(np.ascontiguousarray(as_compiled_float(outputs)))

    def counts(self, within: np.ndarray | None = None) -> np.ndarray:
        """(C,): each class's pixels (within a (H,W) mask)."""
        if self.sigmoid:
            values = self.values if within is None else self.values[:, within]
            return nonzero_per_row(values)
        values = self.values if within is None else self.values[within]
        return np.bincount(values.ravel(), minlength=self.classes)

    def regions(self, classes: list[int]) -> np.ndarray:
        """(T,H,W) bool: the pixels assigned to each of `classes`."""
        if self.sigmoid:
            return self.values[classes]
        return self.values[None] == np.asarray(classes)[:, None, None]


class SegmentationTask(Task):
    name = "segmentation"
    requests = frozenset({"region", "gradients"})

    def open(self) -> None:
        """Read the head as a linear tail (1×1 conv + bilinear resize), verified, when it is one."""
        from .in_pass import MapsInPass
        self.in_pass = MapsInPass(self.explainer, per_class=False)
        self.tail = None
        if self.bundle.cut_levels:                    # a cut set: no single map before a linear tail
            return
        if self.bundle.graph_format == "onnx":
            import onnx

            from ..bundle.linear_tail import read_linear_tail
            self.tail = read_linear_tail(onnx.load(self.bundle.head_path), self.bundle.activation_shape,
                                         self.clean_cut)
        elif self.bundle.graph_format == "openvino":
            from ..backends.sessions import openvino_model
            from ..bundle.linear_tail import read_openvino_tail
            self.tail = read_openvino_tail(openvino_model(self.bundle.head_path), self.clean_cut,
                                           float(self.bundle.manifest["output"].get("model_output_step", 0.0)))

    def clean_cut(self) -> tuple[np.ndarray, np.ndarray]:
        """The cut of a random image through the bundle's preprocessing, and the head's scores on it."""
        from ..bundle.verify import random_images
        a, scores = self.explainer.backend.observe(random_images(self.bundle.preprocessing, 1, seed=5))
        return a, scores

    def run_method(self, spec, ctx, targets, options: dict) -> np.ndarray:
        if self.bundle.cut_levels:
            from ..segmentation.cut_set import explain_levels
            return explain_levels(spec.implementation(self.name), spec, ctx, options)
        return spec.implementation(self.name)(ctx, **options)

    def explained_in_pass(self, spec, x, request, options, originals, names, start):
        """A class-agnostic map (activation, entropy) computed inside the clean pass where it applies
        (`tasks.in_pass`): one runtime call returns the scores and the map, the cut staying in the runtime; the
        targets and their regions are then found in the scores, and the map normalised, as on the general path."""
        if not self.in_pass.applies(spec.name, len(x), request, options):
            return None
        out = self.in_pass.run(spec.name, x)
        if out is None:
            return None
        shapes = self.in_pass.shapes
        outputs = out["scores"].reshape(len(x), *shapes["scores"])
        jobs = self.contexts(spec, x, None, outputs, request, originals)
        maps = [np.repeat(out["map"].reshape(1, *shapes["map"]), len(classes), axis=0) for _, classes in jobs]
        return self.explanation(spec, spec.name, jobs, maps, request, options, originals, names, outputs, start)

    def contexts(self, spec, x, activations, outputs, request: dict, originals):
        """One context per image, one row per target (class, region); `activations` None where no method
        runs on them (`explained_in_pass`)."""
        jobs = []
        for i in range(len(x)):
            shape = originals[i].shape[:2] if originals else self.bundle.input_shape[1:]
            try:
                classes, regions = self.targets(outputs[i], request["target"], request["region"], shape)
            except NotInImage as error:
                if len(x) == 1:
                    raise
                raise NotInImage(f"image {i} of the batch: {error}") from None
            k = len(classes)
            cut = None if activations is None else rows(activations, i, k)
            ctx = SegmentationContext(x=rows(x, i, k), activations=cut,
                                      targets=np.array(classes, np.int64), outputs=rows(outputs, i, k),
                                      backend=self.explainer.backend, bundle=self.bundle, regions=regions,
                                      kind=self.bundle.output_kind, tail=self.tail)
            if spec.needs == "gradients" and self.bundle.cut_levels:
                from ..segmentation.cut_set import refuse_gradients
                refuse_gradients(spec)
            if spec.needs == "gradients":
                ctx.gradients = self.gradients(spec.name, ctx)
            jobs.append((ctx, classes))
        return jobs

    def gradients(self, method: str, ctx: SegmentationContext) -> np.ndarray:
        """∂S/∂A of each row's region score S = (1/|R|) Σ_{p∈R} y_c(p) (Seg-Grad-CAM), through the head in torch."""
        if self.explainer.gradients is None:
            from ..gradients import require_torch
            require_torch()
            raise CamInferError(f"method '{method}' needs gradients: open the Explainer with gradients='torch'")
        masks = ctx.regions.astype(np.float32)
        shape = (len(ctx.targets), self.bundle.num_classes, *masks.shape[1:])

        def region_score(torch, scores):
            picked = scores.reshape(shape)[torch.arange(shape[0]), torch.from_numpy(ctx.targets)]
            weights = torch.from_numpy(masks / masks.sum(axis=(1, 2), keepdims=True))
            return (picked * weights).sum(dim=(1, 2))
        return self.explainer.gradients(ctx.x, ctx.activations, ctx.targets, region_score)

    def targets(self, output: np.ndarray, target, region, shape) -> tuple[list[int], np.ndarray]:
        """The classes to explain and their regions (T,H,W) of one image's clean scores (C,H,W)."""
        present = Assignment(output, self.bundle.output_kind)
        counts = present.counts()
        given = None if region is None else self.region_mask(region, shape, output.shape[1:])
        if isinstance(target, str) and target == "all":
            classes = [c for c in range(len(counts)) if counts[c] and not self.is_background(c)]
        elif target is None:
            within = counts if given is None else present.counts(given)
            order = [c for c in np.argsort(-within, kind="stable") if within[c] and not self.is_background(c)]
            classes = order[:1] or [int(np.argmax(within))]
        else:
            values = target if isinstance(target, (list, tuple)) else [target]
            classes = [class_index(v, self.bundle.labels, self.bundle.num_classes) for v in values]
        classes = list(dict.fromkeys(int(c) for c in classes))          # a class named twice is explained once
        if given is not None:
            return classes, np.repeat(given[None], len(classes), axis=0)
        absent = [c for c in classes if not counts[c]]
        if absent:
            shown = ", ".join(self.name_of(c) for c in range(len(counts)) if counts[c]) or "none"
            raise NotInImage(f"class {self.name_of(absent[0])} is not in the image (classes present: {shown}); "
                                "give a region= to explain it over pixels of your choice")
        if not classes:
            raise NotInImage("no pixel of the image is assigned a class (but the background, where the model has one): "
                             "name a class and a region to explain it over (target= and region=; --target and "
                             "--region; a request's class and region)")
        return classes, present.regions(classes)

    def is_background(self, c: int) -> bool:
        labels = self.bundle.labels
        return bool(labels) and labels[c].lower() in ("background", "__background__", "bg")

    def name_of(self, c: int) -> str:
        labels = self.bundle.labels
        return f"{labels[c]} ({c})" if labels else str(c)

    def region_mask(self, region, shape, size) -> np.ndarray:
        """A region given in the original image's pixels → (H,W) bool at the scores' size `size`."""
        h0, w0 = shape[:2]
        if self.bundle.preprocessing.crop != "none":
            raise CamInferError(f"region= is given in the image's pixels, and this bundle's preprocessing crops "
                                f"({self.bundle.preprocessing.crop}); re-split it with the default (no crop)")
        if isinstance(region, (str, bytes)) or hasattr(region, "__fspath__"):
            from ..images import load_mask
            region = load_mask(region)
        array = np.asarray(region)
        if array.ndim == 2:
            if array.dtype.kind == "f" and not np.isin(array, (0.0, 1.0)).all():
                raise CamInferError("a region mask holds 0 and 1 (or is boolean), and this one other values "
                                    f"({float(np.nanmin(array)):.3g} … {float(np.nanmax(array)):.3g}): a soft mask? "
                                    "threshold it (mask > 0.5)")
            if array.shape != (h0, w0):
                raise CamInferError(f"the region mask is {array.shape[1]}x{array.shape[0]}, the image "
                                    f"{w0}x{h0}: give a mask of the image's size")
            import cv2
            mask = cv2.resize((array != 0).astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0
        elif array.shape == (4,):
            x1, y1, x2, y2 = box_corners(array)
            if x2 <= x1 or y2 <= y1 or x2 <= 0 or y2 <= 0 or x1 >= w0 or y1 >= h0:
                raise CamInferError(f"the box {[x1, y1, x2, y2]} lies outside the {w0}x{h0} image or is empty")
            mask = np.zeros(size, bool)
            sy, sx = size[0] / h0, size[1] / w0
            mask[int(max(y1, 0) * sy):max(int(np.ceil(y2 * sy)), int(max(y1, 0) * sy) + 1),
                 int(max(x1, 0) * sx):max(int(np.ceil(x2 * sx)), int(max(x1, 0) * sx) + 1)] = True
        elif array.shape == (2,):
            x, y = (float(v) for v in array)
            if not (0 <= x < w0 and 0 <= y < h0):
                raise CamInferError(f"the pixel ({x}, {y}) lies outside the {w0}x{h0} image")
            mask = np.zeros(size, bool)                 # the model's pixel under the pixel's centre
            row, col = int((y + 0.5) * size[0] / h0), int((x + 0.5) * size[1] / w0)
            mask[min(row, size[0] - 1), min(col, size[1] - 1)] = True
        else:
            raise CamInferError("region= is a mask (PNG path or array of the image's size), a box [x1, y1, x2, y2] "
                                f"or a pixel (x, y), not an array of shape {array.shape}")
        if not mask.any():
            raise CamInferError("the region mask is empty")
        return mask

    def explanation(self, spec, method, jobs, maps, request, options, originals, names, model_outputs, start):
        from ..segmentation.overlay import region_source
        size = self.bundle.input_shape[1:]
        source = region_source(request.get("region"))
        items = []
        for (ctx, classes), raw in zip(jobs, maps):
            raw = np.asarray(raw, np.float32)
            normalised, degenerate = normalise(raw.copy())
            saliency = upsample(normalised, size)
            scores = [float(ctx.class_scores(ctx.outputs[j:j + 1], j, "logit")[0]) for j in range(len(classes))]
            items.append([SegmentMap(c, None if not self.bundle.labels else self.bundle.labels[c], scores[j],
                                     ctx.regions[j], int(np.count_nonzero(ctx.regions[j])), saliency[j], raw[j],
                                     bool(degenerate[j]), bool(near_uniform(saliency[j])), not spec.class_specific,
                                     source=source)
                          for j, c in enumerate(classes)])
        return Explanation(method, None, None, None, None, None, (time.perf_counter() - start) * 1000, dict(options),
                           labels=self.bundle.labels, images=originals, names=names,
                           preprocessing=self.bundle.preprocessing, outputs=model_outputs,
                           class_agnostic=not spec.class_specific, items=items)
