"""The package's own detector (ShapesDetector, `cam_infer/data/shapes_detector`) on synthetic scenes it was
not trained on: it finds the objects, tells a tagged square from a square by the dot outside the box, and
the per-detection maps find the box and that dot. Ground truth comes from the scene generator, offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import run_cli

from cam_infer.demo import embedded_detector_path
from cam_infer.detection import DetectionExplainer
from cam_infer.detection.decode import iou
from cam_infer.metrics import energy_pointing, pointing_hit
from cam_infer.synthetic import DETECTION_CLASSES, detection_scene

SCENES = [detection_scene(1, i) for i in range(40)]


@pytest.fixture(scope="module")
def explainer():
    return DetectionExplainer(embedded_detector_path())


def matched(scene, d):
    """The true object a detection finds (IoU ≥ 0.5, same class), or None."""
    boxes = scene.boxes.astype(np.float64) + [0, 0, 1, 1]
    overlaps = iou(np.array(d.box_image), boxes)
    k = int(np.argmax(overlaps))
    return k if overlaps[k] >= 0.5 and scene.labels[k] == d.class_id else None


def test_the_shipped_detector_finds_and_classifies_the_objects(explainer):
    record = json.loads((embedded_detector_path().parent / "shapes_detector_training.json").read_text())
    assert record["test"]["recall"] > 0.95 and record["test"]["square_vs_tagged_square"] > 0.95
    e = explainer.explain([s.image for s in SCENES], "activation")
    found = sum(matched(s, d) is not None for s, items in zip(SCENES, e.items) for d in items)
    assert found >= 0.95 * sum(len(s.boxes) for s in SCENES)
    assert explainer.labels == list(DETECTION_CLASSES)


@pytest.mark.parametrize("method", ["recipro", "ablation"])
def test_maps_fall_in_their_boxes_and_on_the_dot_that_makes_a_tagged_square(explainer, method):
    e = explainer.explain([s.image for s in SCENES], method)
    energy, uniform, hits, on_dot, dot_uniform = [], [], [], [], []
    for s, items in zip(SCENES, e.items):
        for d in items:
            box = [int(v) for v in np.round(d.box_image)]
            energy.append(energy_pointing(d.saliency, [box]))
            uniform.append((box[2] - box[0] + 1) * (box[3] - box[1] + 1) / d.saliency.size)
            hits.append(pointing_hit(d.saliency, [box], 0.0, d.degenerate))
            k = matched(s, d)
            if k is not None and s.markers[k][2]:
                cx, cy, r = s.markers[k]
                yy, xx = np.ogrid[:128, :128]
                disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= (r + 2) ** 2
                on_dot.append(d.saliency[disc].sum() / max(d.saliency.sum(), 1e-12))
                dot_uniform.append(disc.mean())
    assert np.mean(energy) > 4 * np.mean(uniform)
    assert np.mean(hits) > (0.9 if method == "recipro" else 0.6)
    assert len(on_dot) >= 5 and np.mean(on_dot) > 5 * np.mean(dot_uniform)       # the evidence outside the box


def test_the_demo_explains_a_detection_scene(tmp_path):
    result = run_cli("demo", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "embedded detector: ShapesDetector" in result.stdout and "tagged square" in result.stdout
    import cv2
    grid = cv2.imread(str(tmp_path / "detection.png"))
    assert grid is not None and grid.shape[1] > 4 * 256
