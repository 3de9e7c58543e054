"""Explaining a detector's detections, one map per detection, forward passes only.

    ex = DetectionExplainer("bundles/yolo")                        # a bundle from split_detector / split
    e = ex.explain("street.jpg", method="recipro")                  # every detection above conf, one map each
    e = ex.explain(images, "score", targets=0, top_k=32)            # the best detection of each image
    e = ex.explain(images, "ablation", classes=["person"])          # every detection of a class
    e = ex.explain(image, "recipro", boxes=[([10, 20, 120, 200], "person")])   # a box of your own
    e.items[0][0].box_image, e.overlay(0), e.save("out/")

Targets are detections of the bundle's NMS (thresholds from the manifest, or ``conf``/``iou``/``max_det``),
or boxes given in the original image's pixels with a class, matched to the anchor that predicts them best
(`targets.box_target`). Methods: `cam_infer.detection.methods`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backends import load_backend
from ..bundle import Bundle
from ..errors import CamInferError
from ..explainer import class_index, model_inputs
from ..postprocess import near_uniform, normalise
from .branches import crop_origin
from .decode import Detections, anchor_levels, detect
from .methods import get_detection_method
from .targets import Target, box_target, target_scores


@dataclass
class DetectionMap:
    """One explained detection."""

    box: list[float]             # x1, y1, x2, y2 in the model's input pixels
    box_image: list[float]       # the same in the original image's pixels (= box when given a batch)
    class_id: int
    label: str
    score: float                 # the class score of its anchor in the clean output
    anchor: int
    level: int                   # the output level of its anchor (0: stride 8)
    index: int | None            # its index among the image's detections (None: a box you gave)
    match_iou: float             # a box you gave: IoU with its anchor's box
    saliency: np.ndarray         # (H,W) in [0,1], at the model's input
    degenerate: bool             # constant map
    uniform: bool = False        # near-uniform map: no localisation (`postprocess.near_uniform`)

    def record(self) -> dict:
        return {"box": [round(v, 2) for v in self.box_image], "class_id": self.class_id, "label": self.label,
                "score": round(self.score, 5), "anchor": self.anchor, "level": self.level, "index": self.index,
                **({"match_iou": round(self.match_iou, 4)} if self.index is None else {}),
                "degenerate": self.degenerate, "uniform": self.uniform}


@dataclass
class DetectionExplanation:
    method: str
    items: list[list[DetectionMap]]          # per image, per explained detection
    detections: list[Detections]             # per image: every detection of the NMS
    milliseconds: float
    options: dict = field(default_factory=dict)
    images: list | None = None
    names: list | None = None
    preprocessing: object = None
    class_agnostic: bool = False             # one map per image, whatever the detection (activation, eigen)
    image_maps: list | None = None           # class_agnostic: per image, that map (H,W) and whether it is constant

    def overlay(self, i: int = 0, j: int | None = None, on: str = "original", colormap: str = "jet",
                alpha: float = 0.5) -> np.ndarray:
        """Image i with its explained detection j drawn (box, label, score) over its map; j None: every
        explained detection over their maps' pixel-wise maximum. A class-agnostic method's one map is
        captioned as such, its detections drawn as unlabelled boxes."""
        from .overlay import detection_overlay
        return detection_overlay(self, i, j, on, colormap, alpha)

    def save(self, folder, on: str = "original") -> list[Path]:
        """One picture per explained detection: ``<image>_<method>_<k>_<label>.png``; a class-agnostic method:
        one per image, ``<image>_<method>.png``."""
        from ..explanation import _safe
        from ..postprocess import write_png
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, items in enumerate(self.items):
            name = self.names[i] if self.names else f"image{i}"
            if self.class_agnostic:
                paths.append(folder / f"{name}_{self.method}.png")
                write_png(paths[-1], self.overlay(i, on=on))
                continue
            for j, d in enumerate(items):
                path = folder / f"{name}_{self.method}_{j}_{_safe(d.label)}.png"
                write_png(path, self.overlay(i, j, on=on))
                paths.append(path)
        return paths


@dataclass
class Crop:
    """Level `level`'s k×k crop (C,k,k) around a target's anchor, from cell (y0, x0) of its grid, and the
    cropped class-score branch that gives the target's score on perturbed copies of it (`branches`)."""

    ctx: "DetectionContext"
    level: int
    maps: np.ndarray
    y0: int
    x0: int
    target: Target

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """The target's class score at its anchor for each perturbed crop (R, C, k, k) → (R,)."""
        self.ctx.branch_rows += len(rows)
        out = self.ctx.explainer.backend.branch(self.level, rows)
        t = self.target
        return out[:, t.class_id, int(self.ctx.grid.row[t.anchor]) - self.y0,
                   int(self.ctx.grid.col[t.anchor]) - self.x0].astype(np.float64)


@dataclass
class WholeLevel:
    """Level `level`'s whole maps (C,h,w) with `Crop`'s interface: each perturbed copy goes back into the
    clean cut maps and through the whole head, scored by `score` (for heads without a verified branch, and
    for scores other than the anchor's)."""

    ctx: "DetectionContext"
    level: int
    target: Target
    score: str
    y0: int = 0
    x0: int = 0

    @property
    def maps(self) -> np.ndarray:
        return self.ctx.level_maps()[self.level]

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """The target's score for each perturbed copy of the level (R, C, h, w) → (R,)."""
        packed = np.repeat(self.ctx.packed[None], len(rows), axis=0)
        self.ctx.level_view(packed, self.level)[:] = rows
        return self.ctx.scores(self.ctx.head(packed), self.target, self.score)


class DetectionContext:
    """One image for a method: its input, its cut maps (packed and per level), its clean output."""

    def __init__(self, explainer: "DetectionExplainer", x: np.ndarray, packed: np.ndarray, output: np.ndarray):
        self.explainer, self.x, self.packed, self.output = explainer, x, packed, output
        self.bundle = explainer.bundle
        self.levels = self.bundle.manifest["cut"]
        self.size = tuple(self.bundle.input_shape[1:])
        self.grid = explainer.grid
        self.head_rows = 0
        self.branch_rows = 0

    def level_view(self, rows: np.ndarray, i: int) -> np.ndarray:
        """Level l of packed rows (R, total) as a writable (R, C, h, w) view."""
        level = self.levels[i]
        size = int(np.prod(level["shape"]))
        return rows[:, level["offset"]:level["offset"] + size].reshape(len(rows), *level["shape"])

    def level_maps(self) -> list[np.ndarray]:
        return [self.level_view(self.packed[None], i)[0] for i in range(len(self.levels))]

    def head(self, rows: np.ndarray) -> np.ndarray:
        self.head_rows += len(rows)
        return self.explainer.backend.head(rows)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.explainer.backend.forward(x)

    def scores(self, outputs: np.ndarray, target: Target, kind: str) -> np.ndarray:
        return target_scores(outputs, target, kind)

    def levels_reaching(self, target: Target) -> list[int]:
        """The cut levels whose change moves the target's anchor (measured at split time)."""
        level = int(self.grid.level[target.anchor])
        return [i for i, lv in enumerate(self.levels) if level in lv.get("moves_levels", [level])]

    def perturbable(self, i: int, target: Target, score: str) -> "Crop | WholeLevel":
        """What a masking method perturbs of level i for this target: its crop through the level's branch
        where that gives the same score (`crop`), else the whole level through the whole head."""
        return self.crop(i, target) if self.crops(i, target, score) else WholeLevel(self, i, target, score)

    def crops(self, i: int, target: Target, score: str) -> bool:
        """Whether level i is perturbed as a crop around the target's anchor through its cropped branch: the
        bundle has one for level i and the anchor lies on its grid (the ``anchor`` score of a level-local head)."""
        return score == "anchor" and self.levels[i].get("branch") is not None and \
            self.window_cells(i, target) is not None

    def crop(self, i: int, target: Target) -> Crop:
        """Level i's crop around the target's anchor, with its cropped branch."""
        _, h, w = self.levels[i]["shape"]
        k = int(self.levels[i]["branch"]["window"])
        y0, x0 = crop_origin(int(self.grid.row[target.anchor]), int(self.grid.col[target.anchor]), h, w, k)
        return Crop(self, i, self.level_maps()[i][:, y0:y0 + k, x0:x0 + k], y0, x0, target)

    def window_cells(self, i: int, target: Target):
        """(rows, cols) slices of level l's cells that reach the target's anchor, or None for all of them:
        its measured receptive window when level l is the anchor's own grid."""
        level = self.levels[i]
        radius = level.get("receptive_radius")
        _, h, w = level["shape"]
        anchor_stride = int(self.grid.stride[target.anchor])
        if radius is None or level["stride"] != anchor_stride or level.get("moves_levels") != [
                int(self.grid.level[target.anchor])]:
            return None
        r, c = int(self.grid.row[target.anchor]), int(self.grid.col[target.anchor])
        return slice(max(r - radius, 0), min(r + radius + 1, h)), slice(max(c - radius, 0), min(c + radius + 1, w))


class DetectionExplainer:
    def __init__(self, bundle: "Bundle | str | os.PathLike", backend: str = "auto", device: str = "CPU",
                 **backend_options):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        if self.bundle.task != "detection":
            raise CamInferError(f"bundle '{self.bundle.path}' is a classifier; use Explainer")
        self.backend = load_backend(self.bundle, backend, device=device, **backend_options)
        self.grid = anchor_levels(self.bundle.input_shape[1:], self.bundle.output_shape[1])

    @property
    def labels(self) -> list[str] | None:
        return self.bundle.labels

    def label(self, class_id: int) -> str:
        return self.bundle.label(class_id)

    def detect(self, images, conf: float | None = None, iou: float | None = None,
               max_det: int | None = None) -> list[Detections]:
        """Every image's detections (input pixels), by the bundle's NMS thresholds unless given."""
        x, _, _ = self._inputs(images)
        outputs = self.backend.forward(x)
        return [detect(o, *self._thresholds(conf, iou, max_det)) for o in outputs]

    def explain(self, images, method: str = "recipro", targets="all", classes=None, boxes=None,
                conf: float | None = None, iou: float | None = None, max_det: int | None = None,
                **options) -> DetectionExplanation:
        """Maps for the detections of each image. targets: "all" (every detection above conf), a detection
        index or a list of them (after NMS, by score); classes: only the detections of these classes
        (labels or indices); boxes: [(box [x1,y1,x2,y2] in the original image's pixels, class), ...] per
        image (one list for one image), each explained for the anchor that predicts it best."""
        start = time.perf_counter()
        chosen = get_detection_method(method)
        x, originals, names = self._inputs(images)
        packed, outputs = self.backend.observe(x)
        thresholds = self._thresholds(conf, iou, max_det)
        prep = self.bundle.preprocessing
        items, found, image_maps = [], [], []
        for i in range(len(x)):
            detections = detect(outputs[i], *thresholds)
            found.append(detections)
            shape = originals[i].shape if originals else self.bundle.input_shape[1:]
            chosen_targets = self._targets(i, detections, outputs[i], targets, classes, boxes, shape)
            ctx = DetectionContext(self, x[i:i + 1], packed[i], outputs[i])
            image_items, normalised = [], {}
            if chosen.class_specific:
                maps = chosen.fn(ctx, chosen_targets, **options) if chosen_targets else []
            else:                                              # its one map, with or without detections
                raw = chosen.fn(ctx, [None], **options)[0]
                saliency, degenerate = normalised[id(raw)] = normalise(np.asarray(raw, np.float32)[None],
                                                                       in_place=True)
                image_maps.append((saliency[0], bool(degenerate[0])))
                maps = [raw] * len(chosen_targets)
            for t, m in zip(chosen_targets, maps):
                if id(m) not in normalised:                    # class-agnostic methods share one map
                    normalised[id(m)] = normalise(np.asarray(m, np.float32)[None], in_place=True)   # a method's own
                saliency, degenerate = normalised[id(m)]
                box_image = prep.box_to_image(t.box, shape) if originals else [float(v) for v in t.box]
                image_items.append(DetectionMap([float(v) for v in t.box], box_image, t.class_id,
                                                self.label(t.class_id), t.score, t.anchor,
                                                int(self.grid.level[t.anchor]), t.index, t.match_iou, saliency[0],
                                                bool(degenerate[0]), bool(near_uniform(saliency[0]))))
            items.append(image_items)
        return DetectionExplanation(method, items, found, (time.perf_counter() - start) * 1000,
                                    {**options, "conf": thresholds[0], "iou": thresholds[1]}, originals, names, prep,
                                    class_agnostic=not chosen.class_specific,
                                    image_maps=None if chosen.class_specific else image_maps)

    def _thresholds(self, conf, iou, max_det) -> tuple[float, float, int]:
        nms = self.bundle.manifest.get("nms", {})
        conf = nms.get("conf", 0.25) if conf is None else conf
        iou = nms.get("iou", 0.7) if iou is None else iou
        max_det = int(nms.get("max_det", 300) if max_det is None else max_det)
        if not 0 <= conf < 1 or not 0 < iou <= 1 or max_det < 1:
            raise CamInferError(f"conf must be in [0, 1), iou in (0, 1] and max_det ≥ 1, not {conf}, {iou}, {max_det}")
        return float(conf), float(iou), max_det

    def _targets(self, i, detections: Detections, output, targets, classes, boxes, shape) -> list[Target]:
        num = self.bundle.num_classes
        if boxes is not None:
            per_image = boxes[i] if boxes and isinstance(boxes[0], list) and boxes[0] and \
                isinstance(boxes[0][0], (list, tuple)) else boxes
            prep = self.bundle.preprocessing
            out = []
            for box, cls in per_image:
                class_id = class_index(cls, self.labels, num)
                mapped = self._box_in_input(box, shape, prep)
                out.append(box_target(output, mapped, class_id, self.bundle.input_shape[1:]))
            return out
        all_targets = [Target(detections.boxes[k], int(detections.classes[k]), int(detections.anchors[k]),
                              float(detections.scores[k]), k) for k in range(len(detections))]
        if classes is not None:
            wanted = {class_index(c, self.labels, num) for c in ([classes] if isinstance(classes, (str, int))
                                                                  else classes)}
            all_targets = [t for t in all_targets if t.class_id in wanted]
        if isinstance(targets, str) and targets == "all":
            return all_targets
        indices = [targets] if isinstance(targets, (int, np.integer)) else list(targets)
        for k in indices:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < len(all_targets):
                raise CamInferError(f"detection {k!r} does not exist: the image has {len(all_targets)} detections "
                                    "above the threshold")
        return [all_targets[k] for k in indices]

    def _box_in_input(self, box, shape, prep) -> list[float]:
        if len(box) != 4:
            raise CamInferError(f"a box is [x1, y1, x2, y2], not {box!r}")
        x1, y1, x2, y2 = (float(v) for v in box)
        h0, w0 = shape[:2]
        if x2 <= 0 or y2 <= 0 or x1 >= w0 or y1 >= h0 or x2 <= x1 or y2 <= y1:
            raise CamInferError(f"the box {[x1, y1, x2, y2]} lies outside the {w0}x{h0} image or is empty")
        return prep.box_from_image([x1, y1, x2, y2], shape)

    def _inputs(self, images):
        """Image paths, RGB arrays or a preprocessed batch → (x, originals or None, names or None)."""
        return model_inputs(images, self.bundle.preprocessing, self.backend.check_input)
