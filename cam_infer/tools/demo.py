"""`cam-infer demo`: the embedded ShapesNet bundle explaining one synthetic scene per split.

Nothing is downloaded: the bundle ships inside the package (``cam_infer/data/shapes``), trained by
``export/train_shapes.py`` on `cam_infer.tools.synthetic` scenes, whose ground truth says where the
object is. For each scene the demo writes a grid (the scene with its ground-truth boxes, then
one overlay per method) and prints, per method, the time per image and whether the map's maximum
falls within 15 px of a ground-truth box of the explained class (the pointing game).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from ..explainer import Explainer
from ..methods import GRADIENT_FREE, in_all
from ..metrics import pointing_hit
from ..postprocess import caption, overlay, with_caption, with_colour_bar, write_png
from .synthetic import SPLITS, scene

DEMO_SEED = 7
POINTING_TOLERANCE = 15   # pixels, as in the pointing game's paper; why: docs/guides/audits.md, "The project's own model"
LEGEND = ("colours: red = most evidence for the class, blue = none (bar: 1 to 0). This model's features answer "
          "to object edges, so a red ring around a shape is a hit")


def embedded_bundle_path() -> Path:
    """The folder of the bundle that ships with the package."""
    return Path(str(resources.files("cam_infer") / "data" / "shapes"))


def embedded_detector_path() -> Path:
    """The folder of the detector bundle that ships with the package (ShapesDetector)."""
    return Path(str(resources.files("cam_infer") / "data" / "shapes_detector"))


SEGMENTER_LABELS = ("background", "circle", "square", "triangle", "cross")
SHAPES_PREPROCESSING = {"crop": "none", "scale": 1 / 255, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
SEGMENTATION_METHODS = ("activation", "eigen", "entropy", "recipro")


def embedded_segmenter_path() -> Path:
    """The ONNX file of the segmenter that ships with the package (ShapesSegmenter; split when used)."""
    return Path(str(resources.files("cam_infer") / "data" / "shapes_segmenter" / "shapes_segmenter.onnx"))


def training_record() -> dict:
    return json.loads((resources.files("cam_infer") / "data" / "shapes_training.json").read_text())


def run_demo(out, backend: str = "onnxruntime", scale: int = 2, report=print, precision: str = "f32",
             device: str = "CPU") -> list[dict]:
    """Explain one scene per split with every gradient-free method on `backend` and `device`; write grids into `out`."""
    from ..outputs import prepare_folder

    out = prepare_folder(out)
    explainer = Explainer(embedded_bundle_path(), backend=backend, precision=precision, device=device)
    scenes = [scene(split, DEMO_SEED, 0) for split in SPLITS]
    x = explainer.preprocess([s.image for s in scenes])
    for method in GRADIENT_FREE:        # warm-up: loading compiled kernels is a first-call cost, not the method's
        explainer.explain(x[:1], method)
    rows = []
    tiles: list[list[np.ndarray]] = [[_with_boxes(s.image, s.boxes, scale)] for s in scenes]
    for method in GRADIENT_FREE:
        e = explainer.explain(x, method)
        hits = [pointing_hit(e.saliency[i], s.boxes, POINTING_TOLERANCE, e.degenerate[i])
                if e.targets[i] == s.label else False for i, s in enumerate(scenes)]
        rows.append({"method": method, "milliseconds_per_image": e.milliseconds / len(scenes),
                     "hits": dict(zip(SPLITS, hits)),
                     "predicted": [explainer.bundle.label(int(t)) for t in e.targets]})
        for i, s in enumerate(scenes):
            panel = caption(method, explainer.bundle.label(int(e.targets[i])), e.map_class(i), float(e.scores[i]))
            tiles[i].append(_labelled(overlay(s.image, e.saliency[i]), panel, scale))
    for s, row in zip(scenes, tiles):
        grid = with_caption(with_colour_bar(np.concatenate(row, axis=1)), LEGEND)
        write_png(out / f"{s.split}.png", grid)
    report(_table(rows, scenes, explainer))
    report(f"\ngrids (scene with ground-truth boxes, then one overlay per method, each titled with the class "
           f"it explains and its probability, or class-agnostic): "
           f"{', '.join(str(out / f'{s}.png') for s in SPLITS)}\n{LEGEND}")
    run_detection_demo(out, backend, scale, report, precision, device)
    run_segmentation_demo(out, backend, scale, report, precision, device)
    return rows


def run_detection_demo(out: Path, backend: str, scale: int, report=print, precision: str = "f32",
                       device: str = "CPU") -> None:
    """The embedded detector on one synthetic scene: every detection explained by each method, one grid."""
    from .synthetic import DETECTION_CLASSES, detection_scene

    ex = Explainer(embedded_detector_path(), backend=backend, precision=precision, device=device)
    s = detection_scene(DEMO_SEED, 3)
    tiles = [_with_boxes(s.image, s.boxes, scale)]
    lines = []
    for method in in_all("detection"):
        e = ex.explain([s.image], method)
        title = caption(method, None, None, None) if e.class_agnostic else method
        tiles.append(_labelled(_detections_panel(e, s.image), title, scale))
        lines.append(f"{method:<12}" + ", ".join(f"{d.label} {d.score:.2f}" for d in e.items[0]))
    write_png(out / "detection.png", with_caption(with_colour_bar(np.concatenate(tiles, axis=1)), LEGEND))
    truth = ", ".join(DETECTION_CLASSES[c] for c in s.labels)
    report(f"\nembedded detector: ShapesDetector on {ex.backend.describe()}; scene objects: {truth}\n"
           + "\n".join(lines) + f"\ngrid (ground truth, then every detection's map and box per method): "
           f"{out / 'detection.png'}")


def run_segmentation_demo(out: Path, backend: str, scale: int, report=print, precision: str = "f32",
                          device: str = "CPU") -> list[dict]:
    """The embedded segmenter on one synthetic scene: each method's map of the class it finds, its predicted
    region outlined, the map's energy inside the ground-truth region next to a uniform map's, one grid."""
    import tempfile

    from ..bundle.segmentation import split_segmenter
    from ..metrics.segmentation import energy_in_region, uniform_baseline
    from ..segmentation.overlay import draw_outlines
    from .synthetic import segmentation_labels

    s = scene("multiple", DEMO_SEED, 0)
    truth = segmentation_labels(s) == s.label + 1
    tiles, rows = [_labelled(draw_outlines(s.image, [truth], [None]), "ground truth", scale)], []
    with tempfile.TemporaryDirectory() as folder:
        bundle = split_segmenter(embedded_segmenter_path(), out=Path(folder) / "bundle", labels=SEGMENTER_LABELS,
                                 preprocessing=SHAPES_PREPROCESSING)
        ex = Explainer(bundle, backend=backend, precision=precision, device=device)
        for method in SEGMENTATION_METHODS:     # warm-up: compiled kernels load on a first call, not the method's cost
            ex.explain([s.image], method)
        for method in SEGMENTATION_METHODS:
            e = ex.explain([s.image], method)
            item = e.items[0][0]
            rows.append({"method": method, "label": item.label, "class_agnostic": e.class_agnostic,
                         "energy": energy_in_region(item.saliency, truth), "milliseconds": e.milliseconds})
            title = caption(method, None, None, None) if e.class_agnostic else f"{method}: {item.label}"
            tiles.append(_labelled(draw_outlines(overlay(s.image, item.saliency), [item.region], [None]), title,
                                   scale))
        described = ex.backend.describe()
    write_png(out / "segmentation.png", with_caption(with_colour_bar(np.concatenate(tiles, axis=1)), LEGEND))
    report(f"\nembedded segmenter: ShapesSegmenter on {described}; scene: {len(s.boxes)} {s.class_name}s; each map "
           f"(of the predicted {rows[-1]['label']} region) and its energy inside the ground-truth region (a uniform "
           f"map: {uniform_baseline(truth):.3f})\n"
           + "\n".join(f"{r['method']:<12}{'class-agnostic' if r['class_agnostic'] else r['label']:<16}"
                       f"{r['energy']:.3f}  {r['milliseconds']:.0f} ms" for r in rows)
           + f"\ngrid (ground truth outlined, then each map with the predicted region outlined): "
           f"{out / 'segmentation.png'}")
    return rows


def _detections_panel(e, image: np.ndarray) -> np.ndarray:
    """Every explained detection's map (their maximum; a class-agnostic method's one map) over the image, each
    box drawn."""
    items = e.items[0]
    saliency = np.max([d.saliency for d in items], axis=0) if items else np.zeros(image.shape[:2], np.float32)
    panel = overlay(image, e.image_maps[0][0] if e.class_agnostic else saliency)
    for d in items:
        x1, y1, x2, y2 = (int(round(v)) for v in d.box_image)
        cv2.rectangle(panel, (x1, y1), (x2, y2), (255, 255, 255), 1)
    return panel


def _table(rows, scenes, explainer) -> str:
    truth = ", ".join(f"{s.split}: {s.class_name}" for s in scenes)
    predicted = ", ".join(rows[0]["predicted"])
    lines = [f"embedded bundle: ShapesNet on {explainer.backend.describe()}; scenes ({truth}); predicted: {predicted}",
             "", f"{'method':<12}{'ms/image':>9}   " + "".join(f"{s:>11}" for s in SPLITS)]
    for r in rows:
        marks = "".join(f"{'hit' if r['hits'][s] else 'MISS':>11}" for s in SPLITS)
        lines.append(f"{r['method']:<12}{r['milliseconds_per_image']:>9.2f}   {marks}")
    lines.append(f"\nhit: the map's maximum lies within {POINTING_TOLERANCE} px of a ground-truth box of the object's "
                 "class (pointing game); MISS also when the predicted class is wrong")
    return "\n".join(lines)


def _with_boxes(image: np.ndarray, boxes, scale: int) -> np.ndarray:
    big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    for x1, y1, x2, y2 in boxes:
        cv2.rectangle(big, (int(x1) * scale, int(y1) * scale), (int(x2 + 1) * scale - 1, int(y2 + 1) * scale - 1),
                      (0, 255, 0), 1)
    return _labelled(big, "ground truth", 1)


def _labelled(image: np.ndarray, text: str, scale: int) -> np.ndarray:
    if scale != 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    strip = np.full((18, image.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, image], axis=0)
