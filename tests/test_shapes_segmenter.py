"""The shipped ShapesSegmenter: small, and its masks right on scenes it was not trained on."""

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from cam_infer.tools.synthetic import SPLITS, scene, segmentation_labels

FOLDER = Path(str(resources.files("cam_infer") / "data" / "shapes_segmenter"))


@pytest.fixture(scope="module")
def predictions():
    import onnxruntime as ort

    session = ort.InferenceSession(str(FOLDER / "shapes_segmenter.onnx"), providers=["CPUExecutionProvider"])
    scenes = [scene(SPLITS[i % 4], 2, i) for i in range(24)]     # seed 2: neither training (0) nor held-out (1)
    x = np.stack([s.image for s in scenes]).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    logits = session.run(None, {"images": x})[0]
    return scenes, logits


def test_the_segmenter_is_shipped_small_with_its_training_record():
    assert (FOLDER / "shapes_segmenter.onnx").stat().st_size < 1_000_000
    record = json.loads((FOLDER.parent / "shapes_segmenter_training.json").read_text())
    assert record["test"]["miou"] >= 0.85


def test_its_masks_are_right_on_unseen_scenes(predictions):
    scenes, logits = predictions
    assert logits.shape == (24, 5, 128, 128)
    truth = np.stack([segmentation_labels(s) for s in scenes]).astype(np.int64)
    predicted = logits.argmax(1)
    ious = []
    for c in range(5):
        union = ((predicted == c) | (truth == c)).sum()
        ious.append(((predicted == c) & (truth == c)).sum() / union)
    assert np.mean(ious) >= 0.8, ious
    majority = [np.bincount(p[s.masks.any(axis=0)], minlength=5).argmax() == s.label + 1
                for s, p in zip(scenes, predicted)]                  # the object's class wins on its own pixels
    assert np.mean(majority) >= 0.9, majority
