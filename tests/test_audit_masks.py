"""Audits against ground-truth masks: pointing and energy in the explained class's region, and the uniform
baseline beside them (`cam_infer.audit.masks`)."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from helpers import assert_one_line_error, run_cli

from cam_infer import CamInferError, Explainer
from cam_infer.audit import AuditOptions, audit_image
from cam_infer.metrics import energy_in_region, pointing_in_region, uniform_baseline
from cam_infer.tools.demo import embedded_bundle_path
from cam_infer.tools.synthetic import CLASSES, generate

SHAPES = embedded_bundle_path()          # ShapesNet, classes CLASSES: masks in a folder per class


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("masked")
    for name in CLASSES:
        (folder / "masks" / name).mkdir(parents=True)
    for i, s in enumerate(generate("cluttered", 3, seed=4)):
        name = f"scene_{i}.png"
        cv2.imwrite(str(folder / name), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        Image.fromarray(s.masks.any(axis=0).astype(np.uint8) * 255).save(folder / "masks" / s.class_name / name)
    return folder, generate("cluttered", 3, seed=4)


def test_rows_equal_the_region_metrics_of_the_explainer_s_own_map(scenes):
    folder, truth = scenes
    options = AuditOptions(methods=("recipro",), metrics=("pointing", "energy"), masks=str(folder / "masks"))
    result = audit_image(SHAPES, folder / "scene_1.png", options)
    row = result["rows"][0]
    e = Explainer(SHAPES).explain(Explainer(SHAPES).preprocess([folder / "scene_1.png"]), "recipro")
    s = truth[1]
    assert int(e.targets[0]) == s.label
    region = s.masks.any(axis=0)
    assert row["energy"] == pytest.approx(energy_in_region(e.saliency[0], region))
    assert row["pointing"] == int(pointing_in_region(e.saliency[0], region))
    assert row["energy_baseline"] == pytest.approx(uniform_baseline(region))
    assert row["energy"] > 3 * row["energy_baseline"] > 0      # ShapesNet finds its object


def test_a_map_of_a_class_the_masks_do_not_show_has_no_localisation_metrics_as_with_boxes(scenes):
    """Scored against an empty region it was a miss (energy 0, pointing 0) beside a baseline of 0, in every mean; an
    image without a box of the explained class has no localisation metrics, and so has one without its pixels."""
    folder, truth = scenes
    other = next(name for i, name in enumerate(CLASSES) if i != truth[1].label)
    options = AuditOptions(methods=("recipro",), metrics=("pointing", "energy"), masks=str(folder / "masks"),
                           target=other)
    row = audit_image(SHAPES, folder / "scene_1.png", options)["rows"][0]
    assert row["label"] == other
    assert row["pointing"] == row["energy"] == row["energy_baseline"] == ""       # the columns left empty


def test_cli_audit_with_masks_reports_region_metrics_and_their_baseline(scenes, tmp_path):
    folder, _ = scenes
    result = run_cli("audit", SHAPES, folder / "scene_0.png", folder / "scene_2.png", "--masks", folder / "masks",
                     "--methods", "recipro", "--metrics", "pointing,energy", "--out", tmp_path / "audit")
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "audit" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["recipro", "random-map", "centre-gaussian", "mask-prior"] * 2
    assert all(float(r["energy"]) > float(r["energy_baseline"]) > 0 for r in rows[::4])
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert set(summary["baselines"]) == {"random-map", "centre-gaussian", "mask-prior"}
    objects = [s.masks.any(axis=0) for s in generate("cluttered", 3, seed=4)]
    prior = (objects[0].astype(float) + objects[2]) / 2          # the two audited scenes' object pixels (128² = input)
    for row, scene in zip(rows[3::4], (0, 2)):
        assert int(row["class_id"]) == generate("cluttered", 3, seed=4)[scene].label
        assert float(row["energy"]) == pytest.approx(energy_in_region(prior, objects[scene]), rel=1e-5)
    assert summary["protocol"]["masks"] == str((folder / "masks").resolve())
    assert "energy_baseline" in summary["methods"]["recipro"]


def test_box_metrics_still_need_boxes_and_a_missing_mask_is_one_line(scenes, tmp_path):
    folder, _ = scenes
    result = run_cli("audit", SHAPES, folder / "scene_0.png", "--masks", folder / "masks", "--methods", "recipro",
                     "--metrics", "box", "--out", tmp_path / "a")
    assert_one_line_error(result, "metric box needs ground-truth boxes")
    both = run_cli("audit", SHAPES, folder / "scene_0.png", "--masks", folder / "masks", "--boxes",
                   tmp_path / "boxes.json", "--methods", "recipro", "--out", tmp_path / "b")
    assert_one_line_error(both, "give --boxes or --masks, not both")      # one column held either measure
    options = AuditOptions(methods=("recipro",), metrics=("energy",), masks=str(tmp_path))
    with pytest.raises(CamInferError, match="no ground-truth mask for scene_0.png"):
        audit_image(SHAPES, folder / "scene_0.png", options)


def test_an_audit_whose_masks_changed_since_is_refused_not_resumed(scenes, tmp_path):
    """An audit's settings named the masks folder by its path alone: masks corrected there resumed the folder, and the
    images done before kept their pointing and energy against the old masks while the rest met the new ones."""
    import shutil

    from cam_infer.audit import run_audit

    folder, truth = scenes
    masks = tmp_path / "masks"
    shutil.copytree(folder / "masks", masks)
    options = AuditOptions(methods=("recipro",), metrics=("pointing", "energy"), masks=str(masks))
    images = [folder / "scene_0.png", folder / "scene_1.png"]
    run_audit(SHAPES, images, options, tmp_path / "audit", progress=False)
    run_audit(SHAPES, images, options, tmp_path / "audit", progress=False)          # unchanged: resumed
    corrected = masks / truth[1].class_name / "scene_1.png"
    Image.fromarray(np.zeros(truth[1].masks.shape[1:], np.uint8)).save(corrected)
    with pytest.raises(CamInferError, match=r"holds an audit with other settings \(masks_sha256: .* then, .* now\)"):
        run_audit(SHAPES, images, options, tmp_path / "audit", progress=False)
