"""A class-agnostic map (activation, eigen, entropy) is never shown under a class name: one map per image
whatever the class asked, captioned class-agnostic, in Python, the CLI, the audit, detectors and the demo.
(The served answers: test_serve.py.)"""

from __future__ import annotations

import csv
import json
import warnings

import cv2
import numpy as np
import pytest
from helpers import run_cli

from cam_infer import CamInferError, Explainer
from cam_infer.tools.demo import embedded_bundle_path, embedded_detector_path
from cam_infer.errors import ClassAgnosticWarning
from cam_infer.methods import METHODS
from cam_infer.postprocess import overlay_picture
from cam_infer.tools.synthetic import detection_scene, scene

AGNOSTIC = ("activation", "eigen", "entropy")


@pytest.fixture(scope="module")
def shapes():
    return Explainer(embedded_bundle_path(), backend="onnxruntime")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("agnostic")
    paths = []
    for i, split in enumerate(("large", "multiple")):
        cv2.imwrite(str(folder / f"{split}.png"), cv2.cvtColor(scene(split, 5, i).image, cv2.COLOR_RGB2BGR))
        paths.append(folder / f"{split}.png")
    return paths


def test_the_registry_knows_which_methods_depend_on_the_class():
    from cam_infer.methods import explaining
    assert {n for n, m in METHODS.items() if not m.class_specific} == {*AGNOSTIC, "rollout"}   # rollout: tests/test_tokens
    assert {n for n in explaining("detection") if not METHODS[n].class_specific} == {"activation", "eigen", "entropy"}


def test_a_method_without_an_onnx_builder_can_say_it_is_class_agnostic(shapes, images):
    from cam_infer.methods import method

    @method("channel-max", cost="1 feature pass", class_specific=False)
    def channel_max(ctx):
        """max over channels"""
        return ctx.activations.max(axis=1)

    try:
        with pytest.warns(ClassAgnosticWarning):
            e = shapes.explain(images, "channel-max", top_classes=2)
        assert e.class_agnostic and e.saliency.shape == (2, 128, 128)
    finally:
        del METHODS["channel-max"]


@pytest.mark.parametrize("method", AGNOSTIC)
def test_a_class_agnostic_method_gives_one_map_per_image_captioned_without_a_class(shapes, images, method, tmp_path):
    plain = shapes.explain(images, method)
    with pytest.warns(ClassAgnosticWarning, match=f"{method}: class-agnostic") as caught:
        top = shapes.explain(images, method, top_classes=3)
    assert len(caught) == 1
    with pytest.warns(ClassAgnosticWarning):
        given = shapes.explain(images, method, target="circle")
    for e in (plain, top, given):
        assert e.class_agnostic and not e.multi and e.saliency.shape == (2, 128, 128)
        np.testing.assert_array_equal(e.saliency, plain.saliency)
        np.testing.assert_array_equal(e.targets, shapes.backend.forward(shapes.preprocess(images)).argmax(axis=1))
    rgb = cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB)
    expected = overlay_picture(plain.saliency[0], rgb, shapes.bundle.preprocessing, f"{method}: class-agnostic")
    np.testing.assert_array_equal(top.overlay(0), expected)
    assert [p.name for p in top.save(tmp_path)] == [f"large_{method}.png", f"multiple_{method}.png"]
    assert not shapes.explain(images, "recipro").class_agnostic
    with pytest.raises(CamInferError, match="unknown class label 'zebra'"):     # a wrong class is still an error
        shapes.explain(images, method, target="zebra")


def test_class_specific_methods_keep_their_classes(shapes, images, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = shapes.explain(images, "recipro", top_classes=2)
    assert e.saliency.shape == (2, 2, 128, 128)
    class_id = int(e.targets[0, 1])
    label = shapes.bundle.labels[class_id]
    rgb = cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB)
    expected = overlay_picture(e.saliency[0, 1], rgb, shapes.bundle.preprocessing,
                               f"recipro: {label} ({class_id}) p={e.scores[0, 1]:.2f}")
    np.testing.assert_array_equal(e.overlay(0, 1), expected)
    assert f"large_recipro_{label}.png" in [p.name for p in e.save(tmp_path)]


def test_the_cli_records_no_class_for_a_class_agnostic_map_and_says_so_once(images, tmp_path):
    result = run_cli("explain", embedded_bundle_path(), *images, "--method", "eigen,entropy,recipro",
                     "--target", "circle", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if "class-agnostic" in line]
    assert notes == ["note: eigen, entropy: class-agnostic (the map does not depend on the class), one map per "
                     "image; the class asked for is not used"]
    records = json.loads((tmp_path / "results.json").read_text())["results"]
    for r in records:
        if r["method"] == "recipro":
            assert r["class_id"] == 0 and r["label"] == "circle" and "class_agnostic" not in r
        else:
            assert r["class_agnostic"] is True and r["class_id"] is r["label"] is r["score"] is None
            assert 0 < r["predicted_score"] <= 1 and r["predicted_label"] in ("circle", "square", "triangle", "cross")
    assert sorted(r["overlay"] for r in records) == sorted(f"{s}_{m}.jpg" for s in ("large", "multiple")
                                                           for m in ("eigen", "entropy", "recipro"))


def test_the_audit_cli_says_once_that_the_class_asked_is_not_used(images, tmp_path):
    result = run_cli("audit", embedded_bundle_path(), *images, "--methods", "eigen,recipro", "--metrics", "adcc",
                     "--target", "circle", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if "class-agnostic" in line] == [
        "note: eigen: class-agnostic (the map does not depend on the class), one map per image; the class asked "
        "for is not used; their rows score the model's top-1"]


def test_the_audit_marks_class_agnostic_rows_and_scores_them_on_the_top_1(images, tmp_path):
    from cam_infer.audit import AuditOptions, run_audit
    options = AuditOptions(methods=("eigen", "recipro"), metrics=("adcc",), target="circle", baselines=())
    run_audit(embedded_bundle_path(), images, options, tmp_path, progress=False)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    shapes = Explainer(embedded_bundle_path())
    top1 = shapes.backend.forward(shapes.preprocess(images)).argmax(axis=1)
    for r in rows:
        agnostic = r["method"] == "eigen"
        assert int(r["class_agnostic"]) == int(agnostic)
        assert int(r["class_id"]) == (int(top1[[str(p) for p in images].index(r["image"])]) if agnostic else 0)


@pytest.fixture(scope="module")
def detector():
    from cam_infer import Explainer
    return Explainer(embedded_detector_path(), backend="onnxruntime")


def test_a_detector_gives_one_class_agnostic_map_per_image_not_one_per_detection(detector, tmp_path):
    from cam_infer.detection import overlay as drawing
    image = detection_scene(5, 3).image
    for method in ("activation", "eigen"):
        e = detector.explain([image], method)
        assert e.class_agnostic and len(e.items[0]) >= 2 and len(e.image_maps) == 1
        saliency, degenerate = e.image_maps[0]
        for d in e.items[0]:
            np.testing.assert_array_equal(d.saliency, saliency)
        boxes = [d.box_image for d in e.items[0]]
        picture = overlay_picture(saliency, image, e.preprocessing, f"{method}: class-agnostic", bar=True)
        strip = picture.shape[0] - image.shape[0]
        unlabelled = drawing._draw_boxes(picture, e.items[0], boxes, image.shape, strip, labelled=False)
        labelled = drawing._draw_boxes(picture, e.items[0], boxes, image.shape, strip)
        assert not np.array_equal(unlabelled, labelled)
        np.testing.assert_array_equal(e.overlay(0), unlabelled)
        assert [p.name for p in e.save(tmp_path)] == [f"image0_{method}.png"]
    specific = detector.explain([image], "recipro")
    assert not specific.class_agnostic and len(specific.save(tmp_path / "r")) == len(specific.items[0])


def test_the_detector_cli_writes_one_class_agnostic_picture_per_image(tmp_path):
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), cv2.cvtColor(detection_scene(5, 3).image, cv2.COLOR_RGB2BGR))
    result = run_cli("explain", embedded_detector_path(), image, "--method", "eigen", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "0 detection maps and 1 class-agnostic image maps for 1 images" in result.stdout, result.stdout
    record = json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]
    assert record["class_agnostic"] is True and record["detections"]
    assert all("overlay" not in d for d in record["detections"])
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg")) == ["scene_eigen.jpg"]


def test_the_detection_audit_marks_the_rows_of_a_class_agnostic_map(tmp_path):
    from cam_infer.detection.audit import run_detection_audit
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), cv2.cvtColor(detection_scene(5, 3).image, cv2.COLOR_RGB2BGR))
    run_detection_audit(embedded_detector_path(), [image], ["eigen", "recipro"], tmp_path / "audit", progress=False,
                        baselines=())
    rows = [json.loads(line) for line in (tmp_path / "audit" / "rows.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == {"eigen", "recipro"}
    assert all(r["class_agnostic"] is (r["method"] == "eigen") for r in rows)
