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


LAYER = "/decoder/decoder.1/decoder.1.2/Relu_output_0"          # ``decoder``: 48×32×32, before the linear tail


def upsample(x: np.ndarray) -> np.ndarray:
    """The model's last step, bilinear ×4 (half-pixel, as PyTorch's align_corners=False): (C,32,32) → (C,128,128)."""
    import cv2
    return np.stack([cv2.resize(c, (128, 128), interpolation=cv2.INTER_LINEAR) for c in x])


def recipro_region_map(features, weight, bias, label: int, region: np.ndarray) -> np.ndarray:
    """A plain NumPy Recipro-CAM (Byun & Lee 2022; one-hot kernel, probability score) of a region score: for
    each cell (i,j) of the layer, the tail (1×1 conv W·F + b, bilinear ×4, softmax) run on the features with only
    that cell kept; the score is the class's mean probability over `region`. Min–max normalised, upsampled."""
    import cv2
    cells = np.einsum("kc,chw->khw", weight, features)
    scores = np.zeros(features.shape[1:])
    for i, j in np.ndindex(*scores.shape):
        low = np.broadcast_to(bias[:, None, None], cells.shape).copy()
        low[:, i, j] += cells[:, i, j]
        up = upsample(low.astype(np.float32))
        p = np.exp(up - up.max(0))
        scores[i, j] = (p[label] / p.sum(0))[region].mean()
    scores = (scores - scores.min()) / max(np.ptp(scores), 1e-12)
    return cv2.resize(scores.astype(np.float32), (128, 128), interpolation=cv2.INTER_LINEAR)


def test_recipro_puts_most_of_its_energy_on_the_true_object_well_above_the_uniform_baseline():
    """The issue's check: Recipro-CAM of the predicted region of the object's class holds ≥ 0.5 of its energy
    inside the ground-truth mask, and more than half way from a uniform map's share (the baseline) to 1, on
    large, several and cluttered objects. (Small objects are left out: the segmenter misses some of them.)"""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from cam_infer.metrics import energy_in_region, uniform_baseline

    model = onnx.load(str(FOLDER / "shapes_segmenter.onnx"))
    model.graph.output.append(onnx.helper.make_tensor_value_info(LAYER, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weight, bias = weights["classifier.weight"][:, :, 0, 0], weights["classifier.bias"]
    for split in ("large", "multiple", "cluttered"):
        for index in range(100, 103):
            s = scene(split, 1, index)
            x = (s.image.astype(np.float32).transpose(2, 0, 1) / 255)[None]
            logits, features = (v[0] for v in session.run(None, {"images": x}))
            tail = upsample(np.einsum("kc,chw->khw", weight, features) + bias[:, None, None])
            np.testing.assert_allclose(tail, logits, atol=1e-3)            # the twin of the tail is the model's
            region = logits.argmax(0) == s.label + 1
            saliency = recipro_region_map(features, weight, bias, s.label + 1, region)
            truth = s.masks.any(axis=0)
            energy, baseline = energy_in_region(saliency, truth), uniform_baseline(truth)
            assert energy >= 0.5 and energy - baseline >= (1 - baseline) / 2, (split, index, energy, baseline)


def test_the_model_file_records_its_preprocessing_and_classes_so_a_split_of_it_alone_is_right(tmp_path):
    """Split from the file alone (Explainer(path), cam-infer audit path), the segmenter got ImageNet's mean and std
    where it was trained on x/255: a triangle's predicted region covered 79 % of a scene. Its metadata now says
    both, and a split reads them where none is given (an explicit preprocessing still wins)."""
    from cam_infer.bundle.segmentation import split_segmenter
    from cam_infer.tools.demo import SEGMENTER_LABELS, SHAPES_PREPROCESSING
    bundle = split_segmenter(FOLDER / "shapes_segmenter.onnx", out=tmp_path / "b")
    prep = bundle.preprocessing
    assert (prep.scale, prep.mean, prep.std, prep.crop) == (SHAPES_PREPROCESSING["scale"], SHAPES_PREPROCESSING["mean"],
                                                            SHAPES_PREPROCESSING["std"], SHAPES_PREPROCESSING["crop"])
    assert bundle.labels == list(SEGMENTER_LABELS)
    given = split_segmenter(FOLDER / "shapes_segmenter.onnx", out=tmp_path / "g", preprocessing={"mean": (0.5,) * 3})
    assert given.preprocessing.mean == (0.5,) * 3 and given.preprocessing.scale == SHAPES_PREPROCESSING["scale"]
    from helpers import run_cli                   # the command line too, which gives the fields it was given
    assert run_cli("split", FOLDER / "shapes_segmenter.onnx", "--out", tmp_path / "cli").returncode == 0
    from cam_infer import Bundle
    assert Bundle.load(tmp_path / "cli").preprocessing == prep
