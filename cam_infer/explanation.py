"""What `Explainer.explain` returns for every kind of model, and how a person looks at it: overlays on the
original images, saved by image, method and target, or plotted with matplotlib (the ``plot`` extra).

    e = ex.explain(["cat.jpg", "dog.png"], method="recipro", top_classes=2)
    e.saliency.shape          # a classifier: (2, 2, H, W), per image, per class
    e.items[0][1].box_image   # a detector: per image, one `DetectionMap` per explained detection
    e.records()               # either: per image, one record (a dict) per explained target
    e.save("out/")            # out/cat_recipro_tabby.png, out/cat_recipro_tiger_cat.png, ...
    e.plot()                  # a matplotlib figure: images × targets
    picture = e.overlay(0)    # RGB uint8: the map over the original cat.jpg, captioned, with a colour bar
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CamInferError
from .images import as_rgb_uint8
from .numerics import is_whole_number
from .postprocess import caption, check_overlay_options, class_fields, near_uniform, overlay_picture, write_png


def detection_class_fields(class_id: int, label, class_agnostic: bool) -> dict:
    """A detection's class as a record names it: ``class_id``/``label`` where the map explains it, else kept apart
    as ``detection_class_id``/``detection_label`` (a class-agnostic map explains no class)."""
    if class_agnostic:
        return {"detection_class_id": class_id, "detection_label": label}
    return {"class_id": class_id, "label": label}


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
    class_agnostic: bool = False  # the image's one map, the same for every detection

    def record(self) -> dict:
        """The detection's fields. A class-agnostic map explains no class, so its record names none: the
        detection's class is kept apart as ``detection_class_id`` and ``detection_label`` (as a segmenter's
        ``region_*``)."""
        return {"box": [round(v, 2) for v in self.box_image],
                **detection_class_fields(self.class_id, self.label, self.class_agnostic), "score": round(self.score, 5),
                "anchor": self.anchor, "level": self.level, "index": self.index,
                **({"match_iou": round(self.match_iou, 4)} if self.index is None else {}),
                "degenerate": self.degenerate, "uniform": self.uniform}


def picture_name(j: int, target) -> str:
    """What target j's picture is named after: a detection's index among the image's detections (as its record
    says; ``box<j>`` for the j-th box given), a segmenter's j; then its label."""
    number = j if not isinstance(target, DetectionMap) else target.index if target.index is not None else f"box{j}"
    return f"{number}_{_safe(target.label or f'class {target.class_id}')}"


@dataclass
class Explanation:
    """Maps of one method for a batch, per image and explained target.

    A classifier's targets are classes and its maps arrays: one class per image, (N,...); several classes
    per image (``top_classes=k`` or ``target=[[...], ...]``), (N,k,...), `multi` is True. A detector's
    targets are detections: `items` holds, per image, one `DetectionMap` per explained detection, and
    `detections` every detection of the NMS; its arrays are None."""

    method: str
    saliency: np.ndarray | None  # (N,H,W) or (N,k,H,W) float32 in [0,1], at the model's input resolution
    maps: np.ndarray | None      # (N,h,w) or (N,k,h,w) raw low-resolution maps, before ReLU and normalisation
    targets: np.ndarray | None   # (N,) or (N,k) class explained (class_agnostic: the model's top-1, not explained)
    scores: np.ndarray | None    # (N,) or (N,k) probability of that class (softmax of the logits)
    degenerate: np.ndarray | None  # (N,) or (N,k) True where the map was constant
    milliseconds: float         # wall time of the whole call
    options: dict = field(default_factory=dict)
    labels: list | None = None                 # the bundle's class names
    images: list | None = None                 # the original RGB images, when explain() was given images
    names: list | None = None                  # their file names (stems), when given as paths
    preprocessing: object = None               # the bundle's `Preprocessing`, to undo its resize and crop
    outputs: np.ndarray | None = None          # (N,C) the model's own outputs (logits or probabilities)
    class_agnostic: bool = False               # the map does not depend on the class: one map per image, shown
                                               # under no class; `targets`/`scores` are then the model's top-1
    items: list | None = None                  # a detector: per image, per explained detection, a `DetectionMap`
    detections: list | None = None             # a detector: per image, every detection of the NMS (`Detections`)
    image_maps: list | None = None             # a detector, class_agnostic: per image, (its map (H,W), constant?)
    runtime: str | None = None                 # where it ran: onnxruntime, openvino or torch
    precision: str | None = None               # the precision the runtime computed in: f32, bf16 or f16
    layers: list | None = None                 # the tensor(s) the model was cut at (`Bundle.layers`)

    @property
    def detector(self) -> bool:
        return self.items is not None

    @property
    def segmenter(self) -> bool:
        """Items are a segmenter's (class, region) targets (`tasks.segmentation.SegmentMap`)."""
        return self.items is not None and any(hasattr(s, "region") for items in self.items for s in items)

    def records(self) -> list[list[dict]]:
        """Per image, one record per explained target: its class (a detector's: and box, anchor, level; a
        segmenter's: and region, with the map's energy inside it), score, and whether its map is constant or
        near-uniform."""
        if self.detector:
            return [[d.record() for d in items] for items in self.items]
        uniform = self.uniform
        return [[self._class_record(i, j, uniform) for j in self._per_class(i)] for i in range(len(self.targets))]

    def _class_record(self, i: int, j, uniform: np.ndarray) -> dict:
        class_id = int(self._pick(self.targets, i, j))
        return {**class_fields(class_id, self.label(class_id) if self.labels else None,
                               round(float(self._pick(self.scores, i, j)), 6), self.class_agnostic),
                "degenerate": bool(self._pick(self.degenerate, i, j)), "uniform": bool(self._pick(uniform, i, j))}

    def map_class(self, i: int, j: int | None = None) -> int | None:
        """The class map (i, j) explains; None for a class-agnostic map, which explains no class. A detector's or
        a segmenter's: the class of its explained target j."""
        if self.detector:
            i, j = self._item(i, j if j is not None else 0)
            return None if self.class_agnostic else int(self.items[i][j].class_id)
        return None if self.class_agnostic else int(self._pick(self.targets, i, j))

    @property
    def uniform(self) -> np.ndarray:
        """(N,) or (N,k) True where the map is near-uniform: it carries no localisation
        (`postprocess.near_uniform`)."""
        if self.detector:
            raise CamInferError("a detector's or segmenter's maps are per explained target: read items[i][j].uniform")
        return near_uniform(self.saliency)

    @property
    def multi(self) -> bool:
        """Several classes per image ((N,k) arrays); a detector's or segmenter's targets are in `items`."""
        return self.targets is not None and self.targets.ndim == 2

    def _item(self, i, j) -> tuple[int, int | None]:
        """(i, j) checked against `items`: image i, its explained target j (or None)."""
        if not is_whole_number(i) or not 0 <= i < len(self.items):
            raise CamInferError(f"image {i!r} does not exist: the explanation has {len(self.items)}")
        if j is not None and (not is_whole_number(j) or not 0 <= j < len(self.items[i])):
            raise CamInferError(f"target {j!r} does not exist: image {i} has {len(self.items[i])} explained targets")
        return int(i), None if j is None else int(j)

    def _per_class(self, i: int) -> list[int]:
        return list(range(self.targets.shape[1])) if self.multi else [None]

    def _pick(self, array: np.ndarray, i: int, j):
        return array[i] if j is None else array[i, j]

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if self.labels else f"class {class_id}"

    def overlay(self, i: int = 0, j: int | None = None, image=None, on: str = "original", colormap: str = "jet",
                alpha: float = 0.5) -> np.ndarray:
        """Image i's map (class j of several) as an RGB uint8 picture, captioned with the method, class and
        probability, with a colour bar. ``on="original"`` puts the map back on the original image (given to
        explain() or here as `image`), undoing the bundle's resize and crop; ``on="model"`` shows the
        model's view. A detector's image i with its explained detection j drawn (box, label, score) over its
        map; j None: every explained detection over their maps' pixel-wise maximum."""
        check_overlay_options(colormap, alpha)
        if on not in ("original", "model"):
            raise CamInferError(f"on must be 'original' or 'model', not {on!r}")
        if self.detector:
            return self._targets_overlay(i, j, image, on, colormap, alpha)
        if self.multi and j is None:
            j = 0
        if not self.multi:                      # one map per image: j is None, or 0 for the only one
            if j not in (None, 0):
                raise CamInferError(f"no map ({i}, {j}): this explanation has one map per image (j is None or 0)")
            j = None
        in_range = is_whole_number(i) and 0 <= i < len(self.targets) and \
            (not self.multi or (is_whole_number(j) and 0 <= j < self.targets.shape[1]))
        if not in_range:
            raise CamInferError(f"no map ({i}, {j}) in an explanation of shape {self.targets.shape}")
        original = image if image is not None else (self.images[i] if self.images else None)
        if original is None:
            raise CamInferError("no original image: pass explain() image paths or arrays, or give overlay(image=...)")
        rgb = as_rgb_uint8(original)
        class_id = self.map_class(i, j)
        text = caption(self.method, self.labels[class_id] if self.labels and class_id is not None else None,
                       class_id, float(self._pick(self.scores, i, j)), bool(self._pick(self.degenerate, i, j)),
                       bool(self._pick(self.uniform, i, j)))
        saliency = self._pick(self.saliency, i, j)
        if on == "model":
            view = self.preprocessing.geometry(rgb) if rgb.shape[:2] != saliency.shape else rgb
            return overlay_picture(saliency, view, None, text, colormap, alpha)
        return overlay_picture(saliency, rgb, self.preprocessing, text, colormap, alpha)

    def save(self, folder, on: str = "original", colormap: str = "jet", alpha: float = 0.5) -> list[Path]:
        """Write one overlay per image and class: ``<image>_<method>_<label>.png`` (image i is ``image<i>``
        when explain() got arrays, ``<image>_<i>`` when two images of the batch share a name; ``<image>_<method>.png``
        for a class-agnostic map). A detector: one per explained detection, ``<image>_<method>_<k>_<label>.png``, k its
        index among the image's detections (``box<j>`` for the j-th box given).
        Returns the paths."""
        from .outputs import prepare_folder

        folder = prepare_folder(folder, "folder")
        paths = []
        for i, stem in enumerate(_distinct(self.names or [f"image{i}" for i in range(self._images)])):
            for j, shown in self._pictures(i):
                path = folder / f"{stem}_{_safe(self.method)}{shown}.png"
                write_png(path, self.overlay(i, j, on=on, colormap=colormap, alpha=alpha))
                paths.append(path)
        return paths

    def _targets_overlay(self, i, j, image, on: str, colormap: str, alpha: float) -> np.ndarray:
        """A detector's or a segmenter's picture: image i with its explained target j (None: all of them)."""
        i, j = self._item(i, j)
        original = image if image is not None else (self.images[i] if self.images else None)
        rgb = None if original is None else as_rgb_uint8(original)
        seen = self.images[i].shape[:2] if self.images else tuple(self.preprocessing.input_size)
        if rgb is not None and rgb.shape[:2] != seen:           # the boxes and regions are in that image's pixels
            raise CamInferError(f"the image given is {rgb.shape[1]}x{rgb.shape[0]}; the targets were found on a "
                                f"{seen[1]}x{seen[0]} image: draw them on that one")
        if not self.images:                 # a preprocessed batch: the image given is the model's view
            on = "model"
        if self.segmenter:
            from .segmentation.overlay import segment_overlay
            return segment_overlay(self, i, j, rgb, on, colormap, alpha)
        from .detection.overlay import detection_overlay
        return detection_overlay(self, i, j, rgb, on, colormap, alpha)

    @property
    def _images(self) -> int:
        return len(self.items if self.detector else self.targets)

    def _pictures(self, i: int) -> list[tuple]:
        """Image i's pictures: (j for `overlay`, what its file name adds after the method): one per class, or
        per explained detection; one for a class-agnostic map."""
        if self.detector:
            return [(None, "")] if self.class_agnostic else \
                [(j, f"_{picture_name(j, d)}") for j, d in enumerate(self.items[i])]
        return [(j, "" if self.map_class(i, j) is None else f"_{_safe(self.label(self.map_class(i, j)))}")
                for j in self._per_class(i)]

    def plot(self, on: str = "original", colormap: str = "jet", alpha: float = 0.5, width: float = 3.2):
        """A matplotlib figure, one row per image and one column per class (needs ``pip install
        'cam-infer[plot]'``). Returns the figure; call ``plt.show()`` or ``fig.savefig(...)``."""
        try:
            import matplotlib.pyplot as plt          # picks a non-interactive backend on a headless box
        except ImportError:
            raise CamInferError("plot() needs matplotlib: pip install 'cam-infer[plot]' (or matplotlib); "
                                "save() writes the same overlays as PNG files without it") from None
        shown = [[j for j, _ in self._pictures(i)] or [None] for i in range(self._images)]
        rows, cols = len(shown), max(map(len, shown))
        fig, axes = plt.subplots(rows, cols, figsize=(width * cols, width * rows), squeeze=False)
        for i in range(rows):
            for ax in axes[i][len(shown[i]):]:
                ax.set_axis_off()
            for c, j in enumerate(shown[i]):
                ax = axes[i][c]
                ax.imshow(self.overlay(i, j, on=on, colormap=colormap, alpha=alpha))
                ax.set_axis_off()
                if self.names:
                    ax.set_title(self.names[i], fontsize=9)
        fig.tight_layout()
        return fig


def _distinct(names: list[str]) -> list[str]:
    """The names, each one shared by several images suffixed with ``_<i>`` (again while that is another's name)."""
    counts = Counter(names)
    taken = {name for name in names if counts[name] == 1}
    stems = []
    for i, name in enumerate(names):
        stem = name
        if counts[name] > 1:
            stem = f"{name}_{i}"
            while stem in taken:
                stem += f"_{i}"
        taken.add(stem)
        stems.append(stem)
    return stems


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "class"
