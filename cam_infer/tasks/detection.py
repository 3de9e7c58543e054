"""Detection: the targets are detections of the bundle's NMS (thresholds from the manifest, or ``conf``/``iou``/
``max_det``), or boxes given in the original image's pixels with a class, matched to the anchor that
predicts them best (`detection.targets.box_target`); a target's score is its class score at its anchor. The
cut is a set of levels packed in one vector (`detection.context`); a method call explains one image, its
levels combined by the rule of the method's units (`methods.levels`)."""

from __future__ import annotations

import time

import numpy as np

from ..detection.context import DetectionContext
from ..detection.decode import Detections, anchor_levels, detect
from ..detection.split import check_thresholds
from ..detection.targets import Target, box_target
from ..errors import CamInferError, NotInImage
from ..explanation import DetectionMap, Explanation
from ..numerics import is_whole_number
from ..postprocess import near_uniform, normalise
from .base import Task, box_corners, class_index


class DetectionTask(Task):
    name = "detection"
    requests = frozenset({"classes", "boxes", "conf", "iou", "max_det"})

    def open(self) -> None:
        self.grid = anchor_levels(self.bundle.input_shape[1:], self.bundle.output_shape[1])

    def run_method(self, spec, ctx, targets, options: dict) -> list:
        """One raw map per target; a class-agnostic method: its one map, with or without detections."""
        code = spec.implementation(self.name)
        if not spec.class_specific:
            return code(ctx, [None], **options)[:1]
        return code(ctx, targets, **options) if targets else []

    def detect(self, x: np.ndarray, conf=None, iou=None, max_det=None) -> list[Detections]:
        """Every image's detections (input pixels), by the bundle's NMS thresholds unless given."""
        outputs = self.explainer.backend.forward(x)
        return [detect(o, *self.thresholds(conf, iou, max_det), end_to_end=self.end_to_end) for o in outputs]

    def contexts(self, spec, x, packed, outputs, request: dict, originals):
        """One context per image, with its explained detections, every detection of its NMS and its shape."""
        thresholds = self.thresholds(request["conf"], request["iou"], request["max_det"])
        jobs = []
        for i in range(len(x)):
            detections = detect(outputs[i], *thresholds, end_to_end=self.end_to_end)
            shape = originals[i].shape if originals else self.bundle.input_shape[1:]
            try:
                targets = self.targets(i, detections, outputs[i], request, shape)
            except NotInImage as error:
                if len(x) == 1:
                    raise
                raise NotInImage(f"image {i} of the batch: {error}") from None
            jobs.append((DetectionContext(self.explainer, x[i:i + 1], packed[i], outputs[i]), targets, detections,
                         shape))
        return jobs

    def explanation(self, spec, method, jobs, maps, request, options, originals, names, model_outputs, start):
        prep = self.bundle.preprocessing
        items, image_maps = [], []
        for (ctx, targets, _, shape), raw in zip(jobs, maps):
            if not spec.class_specific:                       # one map for every detection of the image
                saliency, degenerate = normalise(np.asarray(raw[0], np.float32)[None], in_place=True)
                image_maps.append((saliency[0], bool(degenerate[0])))
                normalised = [(saliency, degenerate)] * len(targets)
            else:
                normalised = _normalised_once(raw)
            image_items = []
            for t, (saliency, degenerate) in zip(targets, normalised):
                box_image = prep.box_to_image(t.box, shape) if originals else [float(v) for v in t.box]
                image_items.append(DetectionMap([float(v) for v in t.box], box_image, t.class_id,
                                                self.bundle.label(t.class_id), t.score, t.anchor,
                                                int(self.grid.level[t.anchor]), t.index, t.match_iou, saliency[0],
                                                bool(degenerate[0]), bool(near_uniform(saliency[0])),
                                                not spec.class_specific))
            items.append(image_items)
        conf, iou, _ = self.thresholds(request["conf"], request["iou"], request["max_det"])
        return Explanation(method, None, None, None, None, None, (time.perf_counter() - start) * 1000,
                           {**options, "conf": conf, "iou": iou}, labels=self.bundle.labels, images=originals,
                           names=names, preprocessing=prep, class_agnostic=not spec.class_specific, items=items,
                           detections=[job[2] for job in jobs],
                           image_maps=None if spec.class_specific else image_maps)

    @property
    def end_to_end(self) -> bool:
        """The bundle explains an end-to-end export: its detections are the top (anchor, class) scores, no NMS."""
        return bool(self.bundle.manifest.get("nms", {}).get("end_to_end", False))

    def thresholds(self, conf, iou, max_det) -> tuple[float, float | None, int]:
        """The NMS thresholds: those given, else the manifest's, else YOLO's defaults; checked. An end-to-end export
        has no NMS to take an IoU threshold (None), and returns at most its own k rows (the manifest's max_det)."""
        nms = self.bundle.manifest.get("nms", {})
        if self.end_to_end and iou is not None:
            raise CamInferError("this detector is an end-to-end export: it has no NMS, so an IoU threshold does not "
                                "apply (its detections are its top (anchor, class) scores)")
        if self.end_to_end and max_det is not None and max_det > nms.get("max_det", max_det):
            raise CamInferError(f"this end-to-end export returns at most {nms['max_det']} detections an image; "
                                f"max_det {max_det} would explain detections it never returns")
        conf = nms.get("conf", 0.25) if conf is None else conf
        iou = nms.get("iou", 0.7) if iou is None else iou
        max_det = nms.get("max_det", 300) if max_det is None else max_det
        check_thresholds(conf, iou, max_det)
        return float(conf), None if self.end_to_end else float(iou), int(max_det)

    def request_for(self, spec, n: int, request: dict) -> dict:
        """The request checked for n images: ``boxes`` one list of (box, class) pairs (one image) or one per image,
        and not with ``target`` or ``classes`` (they choose among the detections, the boxes replace them);
        ``target`` None, "all", an index or a list of them; ``classes`` not empty."""
        boxes, target, classes = request["boxes"], request["target"], request["classes"]
        if isinstance(target, np.ndarray) and target.ndim == 0:
            target = request["target"] = target.item()
        if boxes is not None:
            if not isinstance(boxes, (list, tuple)):
                raise CamInferError(f"boxes= takes [(box [x1, y1, x2, y2], class), ...], not {type(boxes).__name__}")
            if _is_pair(boxes):                          # one (box, class) pair for one image
                boxes = request["boxes"] = [boxes]
            per_image = bool(boxes) and not _is_pair(boxes[0])
            if per_image and len(boxes) != n:
                raise CamInferError(f"{len(boxes)} box lists given for {n} images: one list per image")
            if boxes and not per_image and n != 1:
                raise CamInferError(f"boxes= for {n} images takes one list of (box, class) pairs per image")
            if (target is not None and not (isinstance(target, str) and target == "all")) or classes is not None:
                raise CamInferError("boxes= explains the boxes given; target= and classes= choose among the "
                                    "detections: give one or the other")
        if target is not None and not (isinstance(target, str) and target == "all") and not \
                is_whole_number(target) and not (isinstance(target, (list, tuple, np.ndarray)) and
                                                 all(is_whole_number(k) for k in np.ravel(target))):
            raise CamInferError(f"target= is a detection index after NMS, a list of them or 'all', not {target!r}"
                                + (" (a class's detections: classes=[...])" if isinstance(target, str) else ""))
        if classes is not None and not isinstance(classes, (str, int, np.integer)) and not len(classes):
            raise CamInferError("classes= is empty: it would explain nothing; give classes or leave it out")
        return request

    def targets(self, i, detections: Detections, output, request: dict, shape) -> list[Target]:
        """Image i's targets: its boxes (``boxes``: [(box [x1,y1,x2,y2] in the original image's pixels, class),
        ...] per image, or one list for one image), else its detections (``target``: None or "all", an index
        or a list of indices after NMS, by score), of ``classes`` only when given."""
        num = self.bundle.num_classes
        boxes, target, classes = request["boxes"], request["target"], request["classes"]
        if boxes is not None:
            per_image = boxes if not boxes or _is_pair(boxes[0]) else boxes[i]
            for entry in per_image if isinstance(per_image, (list, tuple)) else [per_image]:
                if not isinstance(entry, (list, tuple)) or len(entry) != 2 or \
                        not isinstance(entry[0], (list, tuple, np.ndarray)):
                    raise CamInferError(f"boxes= takes (box [x1, y1, x2, y2], class) pairs, not {entry!r}")
            return [box_target(output, self._box_in_input(box, shape), class_index(cls, self.bundle.labels, num),
                               self.bundle.input_shape[1:]) for box, cls in per_image]
        all_targets = [Target(detections.boxes[k], int(detections.classes[k]), int(detections.anchors[k]),
                              float(detections.scores[k]), k) for k in range(len(detections))]
        if classes is not None:
            wanted = {class_index(c, self.bundle.labels, num) for c in ([classes] if isinstance(classes, (str, int))
                                                                         else classes)}
            all_targets = [t for t in all_targets if t.class_id in wanted]
        if target is None or (isinstance(target, str) and target == "all"):
            return all_targets
        indices = [target] if isinstance(target, (int, np.integer)) else list(target)
        for k in indices:
            if not is_whole_number(k) or k < 0:
                raise CamInferError(f"a detection is an index 0, 1, ... after NMS, not {k!r}")
            if k >= len(all_targets):
                raise NotInImage(f"detection {k!r} does not exist: the image has {len(all_targets)} detections "
                                 "above the threshold")
        return [all_targets[k] for k in indices]

    def _box_in_input(self, box, shape) -> list[float]:
        if len(box) != 4:
            raise CamInferError(f"a box is [x1, y1, x2, y2], not {box!r}")
        x1, y1, x2, y2 = box_corners(box)
        h0, w0 = shape[:2]
        if x2 <= 0 or y2 <= 0 or x1 >= w0 or y1 >= h0 or x2 <= x1 or y2 <= y1:
            raise CamInferError(f"the box {[x1, y1, x2, y2]} lies outside the {w0}x{h0} image or is empty")
        return self.bundle.preprocessing.box_from_image([x1, y1, x2, y2], shape)


def _is_pair(entry) -> bool:
    """A (box, class) pair, its box four scalars, as opposed to an image's list of pairs."""
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and _is_box(entry[0])


def _is_box(box) -> bool:
    return isinstance(box, (list, tuple, np.ndarray)) and len(box) == 4 and all(np.ndim(v) == 0 for v in box)


def _normalised_once(raw: list) -> list:
    """Each raw map normalised in place, once per array (a method may return one array for several targets)."""
    done = {}
    for m in raw:
        if id(m) not in done:
            done[id(m)] = normalise(np.asarray(m, np.float32)[None], in_place=True)
    return [done[id(m)] for m in raw]
