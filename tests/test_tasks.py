"""One Explainer for every task: the classifier and the detector shipped in the package explained through the
bundle's task give the maps, records, overlays and file names the two former explainers gave (values below
recorded from them, on the same synthetic scenes), and arguments of one task given to the other are errors."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from cam_infer import CamInferError, Explainer
from cam_infer.tools.demo import embedded_bundle_path, embedded_detector_path
from cam_infer.tools.synthetic import write_detection_scenes, write_scenes
from cam_infer.tasks import TASKS, task_of
from helpers import assert_one_line_error, run_cli

# Recorded from the detector's former explainer (DetectionExplainer) before the tasks (scene 2 of write_detection_scenes(seed=1)).
SCENE2 = [{"box": [78.95, 14.03, 101.98, 37.18], "class_id": 1, "label": "square", "score": 0.99956, "anchor": 59,
           "level": 0, "index": 0, "degenerate": False, "uniform": False},
          {"box": [60.9, 36.83, 81.99, 57.96], "class_id": 1, "label": "square", "score": 0.998, "anchor": 88,
           "level": 0, "index": 1, "degenerate": False, "uniform": False},
          {"box": [7.05, 83.49, 25.98, 101.81], "class_id": 2, "label": "triangle", "score": 0.9957, "anchor": 178,
           "level": 0, "index": 2, "degenerate": False, "uniform": False}]
# Recipro-CAM's detector maps re-recorded when their zero level became the all-zero level's score (every sum
# lower: the cells below it no longer lift the rest of the map).
DETECTOR_SUMS = {"recipro": [[528.5861012590696, 108.26011588310672], [91.57677218637014, 499.80293077169824],
                             [165.96764371692666, 75.41915701132555, 128.73430422955047]],
                 "ablation": [[695.3778075284218, 595.0443309711704], [480.76844560446534, 1088.088760336581],
                              [673.4839327699301, 664.3906949281663, 637.8630886178773]]}
DETECTOR_OVERLAY = {"recipro": "a8829182336a7a27c84e1b9986fcda94ef3584d5bbe445f278d3c2c5b64fe0e8",
                    "ablation": "3ab87c4344220d9aec853fab30e8ef22acdf9d3ccec3595100e103499a6b0fbe"}
EIGEN_IMAGE_MAPS = [10145.1982421875, 11195.6201171875, 8151.068359375]
# Recorded from cam_infer.Explainer before the tasks (write_scenes("cluttered", 3, seed=0)).
CLASSIFIER = {("recipro", None): (8287.58870643744, [2, 3, 2], "8ec0541d94102304b2de341069f255ceaa4f029a377d682a58003c7f37d800a9"),
              ("ablation", 1): (193.90966790821403, [1, 1, 1], "c325c1f800c8e3b70be206c7f9b0745e9effa559b9472e86fefc959382a5c3c4")}
SCORES = [0.9998880624771118, 0.9999065399169922, 0.9977838397026062]
# The values were recorded on an AVX-512 CPU. Another CPU's runtime kernels round differently (AVX2: the sums up to
# 8.5e-4 apart, ablation's differences of near-equal scores the most), so elsewhere the sums are compared at 2e-3
# and the overlays' hashes, which one level at one pixel changes, only on the kind of CPU that recorded them.
RECORDED_HERE = "avx512f" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False
RTOL = 1e-6 if RECORDED_HERE else 2e-3


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    detection = sorted(str(p) for p in write_detection_scenes(root / "d", n=3, seed=1).glob("*.png"))
    cluttered = sorted(str(p) for p in write_scenes(root / "c", "cluttered", n=3, seed=0).glob("*.png"))
    return detection, cluttered


@pytest.fixture(scope="module")
def detector():
    return Explainer(embedded_detector_path())


@pytest.fixture(scope="module")
def classifier():
    return Explainer(embedded_bundle_path())


def digest(picture: np.ndarray) -> str:
    return hashlib.sha256(picture.tobytes()).hexdigest()


@pytest.mark.parametrize("method", ["recipro", "ablation"])
def test_a_detector_explains_as_the_former_detection_explainer(detector, scenes, method, tmp_path):
    e = detector.explain(scenes[0], method)
    assert e.detector and e.saliency is None and len(e.detections) == 3
    assert e.records()[2] == SCENE2 == [d.record() for d in e.items[2]]
    sums = [[float(d.saliency.astype(np.float64).sum()) for d in items] for items in e.items]
    assert [len(s) for s in sums] == [len(s) for s in DETECTOR_SUMS[method]]
    np.testing.assert_allclose(sum(sums, []), sum(DETECTOR_SUMS[method], []), rtol=RTOL)
    assert digest(e.overlay(0)) == DETECTOR_OVERLAY[method] or not RECORDED_HERE
    names = sorted(p.name for p in e.save(tmp_path))
    assert names[:3] == [f"detection_00000_{method}_0_circle.png", f"detection_00000_{method}_1_square.png",
                         f"detection_00001_{method}_0_triangle.png"] and len(names) == 7


def test_a_class_agnostic_detector_map_is_shared_by_its_detections(detector, scenes, tmp_path):
    e = detector.explain(scenes[0], "eigen")
    assert e.class_agnostic
    np.testing.assert_allclose([float(s.sum()) for s, _ in e.image_maps], EIGEN_IMAGE_MAPS, rtol=RTOL)
    assert all(np.array_equal(d.saliency, e.image_maps[i][0]) for i, items in enumerate(e.items) for d in items)
    assert sorted(p.name for p in e.save(tmp_path)) == [f"detection_0000{i}_eigen.png" for i in range(3)]


def test_detector_requests_pick_targets(detector, scenes):
    only = detector.explain(scenes[0][2], "recipro", target=[2, 0], conf=0.5)
    assert [d.record() for d in only.items[0]] == [SCENE2[2], SCENE2[0]]
    assert only.options["conf"] == 0.5
    squares = detector.explain(scenes[0][2], "recipro", classes="square")
    assert [d.index for d in squares.items[0]] == [0, 1]
    box = SCENE2[2]["box"]
    mine = detector.explain(scenes[0][2], "recipro", boxes=[(box, "triangle")]).items[0][0]
    assert mine.index is None and mine.anchor == SCENE2[2]["anchor"] and mine.match_iou > 0.9
    assert [len(d) for d in detector.detect(scenes[0])] == [2, 2, 3]


@pytest.mark.parametrize("method, target", [("recipro", None), ("ablation", 1)])
def test_a_classifier_explains_as_before(classifier, scenes, method, target):
    e = classifier.explain(scenes[1], method, target=target)
    total, targets, overlay = CLASSIFIER[(method, target)]
    assert not e.detector and e.targets.tolist() == targets
    assert float(e.saliency.astype(np.float64).sum()) == pytest.approx(total, rel=RTOL)
    assert digest(e.overlay(0)) == overlay or not RECORDED_HERE
    assert [r[0]["class_id"] for r in e.records()] == targets
    assert [r[0]["label"] for r in e.records()] == [classifier.bundle.label(c) for c in targets]


def test_recipro_through_the_task_equals_masked_head_passes(classifier, scenes):
    """Recipro-CAM (Byun & Lee 2022): map_c(i,j) = softmax(head(A ⊙ onehot_ij))_c, recomputed here with the
    runtime's head on each masked activation."""
    e = classifier.explain(scenes[1][:1], "recipro", closed_form=False)
    x = classifier.preprocess(scenes[1][:1])
    a = classifier.backend.features(x)[0]
    k, h, w = a.shape
    masked = np.zeros((h * w, k, h, w), np.float32)
    for cell in range(h * w):
        masked[cell, :, cell // w, cell % w] = a[:, cell // w, cell % w]
    logits = classifier.backend.head(masked).astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected = (p / p.sum(axis=1, keepdims=True))[:, int(e.targets[0])].reshape(h, w)
    np.testing.assert_allclose(e.maps[0], expected, rtol=1e-4, atol=1e-6)


def test_several_classes_give_one_record_each(classifier, scenes):
    e = classifier.explain(scenes[1], "recipro", top_classes=2)
    assert e.multi and e.saliency.shape[:2] == (3, 2)
    records = e.records()
    assert [[r["class_id"] for r in image] for image in records] == e.targets.tolist()
    assert records[0][0]["score"] == round(SCORES[0], 6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        agnostic = classifier.explain(scenes[1], "eigen", target=1).records()
    assert agnostic[0][0]["class_agnostic"] and agnostic[0][0]["predicted_class_id"] == 2
    assert [w.filename for w in caught] == [__file__]              # the warning points at the caller's line


@pytest.mark.parametrize("given", [{"boxes": [([1, 1, 9, 9], 0)]}, {"classes": [0]}, {"conf": 0.3}, {"iou": 0.5},
                                   {"max_det": 5}])
def test_a_detector_argument_on_a_classifier_is_one_line(classifier, scenes, given):
    (name,) = given
    with pytest.raises(CamInferError, match=f"^{name}= does not apply to this bundle: it is a classification model "
                                            r"\(arguments for it: target, enhance"):
        classifier.explain(scenes[1], "recipro", **given)


@pytest.mark.parametrize("given", [{"top_classes": 2}, {"finer": 0.5}, {"enhance": "sess"}, {"upsampled": False}])
def test_a_classifier_argument_on_a_detector_is_one_line(detector, scenes, given):
    (name,) = given
    with pytest.raises(CamInferError, match=f"^{name}= does not apply to this bundle: it is a detection model"):
        detector.explain(scenes[0], "recipro", **given)


def test_task_only_calls_and_gradients_are_refused_for_the_other_task(classifier, detector, scenes):
    with pytest.raises(CamInferError, match=r"^detect\(\) does not apply to this bundle: it is a classification"):
        classifier.detect(scenes[1])
    with pytest.raises(CamInferError, match=r"^targets_for\(\) does not apply to this bundle: it is a detection"):
        detector.targets_for(None, np.zeros((1, 4)))
    with pytest.raises(CamInferError, match="^gradients= does not apply to this bundle: it is a detection model"):
        Explainer(embedded_detector_path(), gradients="torch")


def test_an_unknown_task_is_refused_in_one_line(tmp_path, scenes):
    folder = shutil.copytree(embedded_bundle_path(), tmp_path / "depth")
    manifest = json.loads((folder / "bundle.json").read_text())
    (folder / "bundle.json").write_text(json.dumps({**manifest, "task": "depth"}))
    from cam_infer.bundle import Bundle
    with pytest.raises(CamInferError, match="is a 'depth' model; this version of cam-infer explains "
                                            "classification and detection and segmentation models"):
        task_of(Bundle.load(folder))
    with pytest.raises(CamInferError, match="'depth' model"):
        Explainer(folder)
    assert set(TASKS) == {"classification", "detection", "segmentation"}
    assert_one_line_error(run_cli("explain", folder, scenes[1][0], "--out", tmp_path / "out"), "'depth' model")


def test_a_detector_explanation_plots_one_picture_per_explained_detection(detector, scenes):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    e = detector.explain(scenes[0], "recipro")
    fig = e.plot()
    pictures = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 3 * 3 and len(pictures) == 2 + 2 + 3
    np.testing.assert_array_equal(pictures[-1].images[0].get_array(), e.overlay(2, 2))
    plt.close(fig)


def test_saving_into_a_file_is_one_line_for_every_task(detector, classifier, scenes, tmp_path):
    (tmp_path / "taken").write_text("")
    for explainer, images in ((detector, scenes[0]), (classifier, scenes[1])):
        with pytest.raises(CamInferError, match="folder '.*taken' is a file, not a folder"):
            explainer.explain(images[:1], "activation").save(tmp_path / "taken")


def test_a_number_is_an_index_first_and_a_label_where_no_class_has_that_index():
    """PP-OCR's labels are '0' and '180': --target 180 was 'out of range'. Labels '1'…'10' keep --target 3 as
    class 3, as before."""
    from cam_infer import CamInferError
    from cam_infer.tasks import class_index
    assert class_index("180", ["0", "180"], 2) == 1 and class_index("0", ["0", "180"], 2) == 0
    offset = [str(i) for i in range(1, 11)]
    assert class_index("3", offset, 10) == 3 and class_index("10", offset, 10) == 9
    assert class_index("1", ["1", "0"], 2) == 1 == class_index(1, ["1", "0"], 2)
    with pytest.raises(CamInferError, match="class 7 is out of range"):
        class_index("7", ["0", "180"], 2)
