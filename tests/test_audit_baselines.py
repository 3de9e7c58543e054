"""Baselines beside the methods and intervals on every mean: the baseline maps against their definitions, their
rows against direct metric calls, the bootstrap intervals and paired comparisons of an audit's rows, and the
report's extension points (`add_column`, `add_section`)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from cam_infer.audit import AuditOptions, audit_image
from cam_infer.audit.baselines import (BOX_PRIOR, GAUSSIAN, RANDOM, box_prior, centre_gaussian, dataset_priors,
                                       mask_prior, random_map)
from cam_infer.audit.intervals import uncertainty
from cam_infer.audit.masks import Truth
from cam_infer.audit.report import SECTIONS, SHOWN, add_column, add_section, summarise, write_html, \
    write_uncertainty_csvs
from cam_infer.bundle import Bundle
from cam_infer.errors import CamInferError
from cam_infer.metrics import auc, causal_curve, coherency, energy_pointing, pointing_hit
from cam_infer.metrics.uncertainty import paired_difference
from cam_infer.tools.demo import embedded_bundle_path
from cam_infer.tools.synthetic import generate

SHAPES = embedded_bundle_path()


def test_the_random_map_is_uniform_noise_drawn_again_for_another_input():
    x = np.random.default_rng(1).normal(size=(3, 128, 128)).astype(np.float32)
    s = random_map(x)
    np.testing.assert_array_equal(s, random_map(x.copy()))                  # one input, one map
    assert not np.array_equal(s, random_map(x * 0.5))                        # ADCC's masked input: another map
    assert s.shape == (128, 128) and 0 <= s.min() and s.max() < 1
    deciles = np.histogram(s, bins=10, range=(0, 1))[0] / s.size
    assert np.abs(deciles - 0.1).max() < 0.01                                # U[0, 1): 1 638 ± 30 a bin


def test_the_centre_gaussian_is_its_closed_form():
    s = centre_gaussian((8, 9))                  # σ = ¼ · 8 = 2, centre (3.5, 4)
    assert s[3, 4] == pytest.approx(np.exp(-0.25 / 8)) and s[3, 6] == pytest.approx(np.exp(-4.25 / 8))
    assert s[0, 0] == pytest.approx(np.exp(-(3.5 ** 2 + 4 ** 2) / 8))
    np.testing.assert_allclose(s, s[::-1, ::-1], rtol=1e-6)                  # symmetric about the centre


def test_the_box_prior_is_the_fraction_of_images_whose_boxes_cover_a_pixel():
    images = [[[2, 1, 4, 3]], [[0, 0, 1, 1], [3, 2, 5, 5]], [], [[1, 1, 2, 2], [2, 2, 3, 3]]]
    prior = box_prior(images, (6, 7))
    for y in range(6):
        for x in range(7):
            covering = sum(any(x1 <= x <= x2 and y1 <= y <= y2 for x1, y1, x2, y2 in boxes) for boxes in images)
            assert prior[y, x] == pytest.approx(covering / 4)


def test_the_mask_prior_counts_object_pixels_and_leaves_background_and_void_out():
    a = Truth({0: np.array([[1, 1], [0, 0]], bool), 2: np.array([[0, 0], [1, 0]], bool)},
              np.array([[1, 1], [1, 0]], bool))
    b = Truth({1: np.array([[1, 0], [0, 1]], bool)}, np.ones((2, 2), bool))
    np.testing.assert_allclose(mask_prior([a, b], background={0}), [[0.5, 0], [0.5, 0.5]])
    np.testing.assert_allclose(mask_prior([a, b]), [[1, 0.5], [0.5, 0.5]])


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("baselines")
    import cv2
    scenes = generate("large", 3, seed=5)
    boxes = {}
    for i, s in enumerate(scenes):
        cv2.imwrite(str(folder / f"s{i}.png"), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        boxes[f"s{i}.png"] = [{"box": list(map(int, b)), "label": s.class_name} for b in s.boxes]
    return folder, boxes


def test_baseline_rows_are_scored_by_the_methods_metric_code(scene):
    folder, boxes = scene
    prep = Bundle.load(SHAPES).preprocessing
    priors = dataset_priors(sorted(folder.glob("*.png")), lambda p: boxes[p.name], prep)
    expected_prior = box_prior([[b["box"] for b in boxes[f"s{i}.png"]] for i in range(3)], (128, 128))
    np.testing.assert_allclose(priors[BOX_PRIOR], expected_prior)           # 128² scenes: the input is the image
    options = AuditOptions(methods=("recipro",), metrics=("adcc", "insertion", "pointing", "energy", "box"),
                           tolerance=15.0)
    result = audit_image(SHAPES, folder / "s1.png", options, boxes["s1.png"], priors)
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["recipro", RANDOM, GAUSSIAN, BOX_PRIOR] and set(result["thumbnails"]) == {"recipro"}
    from cam_infer import Explainer
    explainer = Explainer(SHAPES)
    x = explainer.preprocess([folder / "s1.png"])
    own = [b["box"] for b in boxes["s1.png"]]
    for name, s in ((GAUSSIAN, centre_gaussian((128, 128))), (BOX_PRIOR, expected_prior), (RANDOM, random_map(x[0]))):
        row = rows[name]
        assert row["baseline"] == 1 and row["class_id"] == rows["recipro"]["class_id"]
        assert row["pointing"] == int(pointing_hit(s, own, 15.0))
        assert row["energy"] == pytest.approx(energy_pointing(s, own))
        assert row["insertion"] == pytest.approx(auc(causal_curve(explainer, x[0], s, row["class_id"], "insertion")))
    assert rows[GAUSSIAN]["coherency"] == pytest.approx(1.0)                 # the same map for the masked input
    assert rows[RANDOM]["coherency"] == pytest.approx(0.5, abs=0.02)         # a fresh one: uncorrelated
    assert coherency(random_map(x[0]), random_map(x[0])) == pytest.approx(1.0)


def synthetic_rows(n: int = 20) -> list[dict]:
    """Per image: 'better' = 'plain' + 0.2 (clearly different), 'same' = 'plain' (identical), two baselines."""
    rng = np.random.default_rng(3)
    plain = rng.uniform(0.2, 0.6, n)
    rows = []
    for i in range(n):
        for method, value in (("better", plain[i] + 0.2 + rng.normal(0, 0.02)), ("plain", plain[i]),
                              ("same", plain[i]), ("low", 0.1 * rng.uniform()), ("high", 0.3 + 0.1 * rng.uniform())):
            rows.append({"image": f"{i}.png", "method": method, "energy": str(value), "deletion": str(1 - value),
                         "baseline": str(int(method in ("low", "high")))})
    return rows


def test_intervals_and_paired_differences_are_seeded_and_mark_only_real_differences():
    rows = synthetic_rows()
    directions = {"energy": True, "deletion": False, "box_fraction": None}
    found = uncertainty(rows, ["better", "plain", "same"], ["low", "high"], directions)
    assert found == uncertainty(list(reversed(rows)), ["better", "plain", "same"], ["low", "high"], directions)
    for name in ("better", "plain", "same", "low", "high"):                 # every row, every metric
        assert set(found["intervals"][name]) == {"energy", "deletion"}
        i = found["intervals"][name]["energy"]
        assert i["n"] == 20 and i["low"] < i["mean"] < i["high"]
        assert i["mean"] == pytest.approx(np.mean([float(r["energy"]) for r in rows if r["method"] == name]))
    pairs = {(p["a"], p["b"]): p for p in found["paired"]["energy"]}
    assert list(pairs) == [("better", "high"), ("plain", "high"), ("same", "high"), ("better", "plain"),
                           ("better", "same"), ("plain", "same")]             # vs the best baseline, then each pair
    assert pairs["better", "plain"]["different"] and pairs["better", "plain"]["low"] > 0.15
    assert not pairs["plain", "same"]["different"] and pairs["plain", "same"]["mean"] == 0
    ordered = sorted(rows, key=lambda r: r["image"])                      # the units in their sorted order
    a = [float(r["energy"]) for r in ordered if r["method"] == "better"]
    b = [float(r["energy"]) for r in ordered if r["method"] == "plain"]
    expected = paired_difference(a, b)
    assert (pairs["better", "plain"]["low"], pairs["better", "plain"]["high"]) == (expected.low, expected.high)
    assert {p["b"] for p in found["paired"]["deletion"][:3]} == {"high"}      # lower deletion is better: 1 − high
    assert "box_fraction" not in found["paired"]                              # a reference is not compared


def test_pairs_are_matched_by_image_not_by_order():
    rows = synthetic_rows(6)
    shuffled = [r for r in rows if r["method"] != "same"] + [r for r in reversed(rows) if r["method"] == "same"]
    found = uncertainty(shuffled, ["plain", "same"], [], {"energy": True})
    assert found["paired"]["energy"][0]["mean"] == 0 and not found["paired"]["energy"][0]["different"]


def test_summary_csvs_and_page_show_every_interval_and_mark_real_differences(tmp_path):
    rows = synthetic_rows()
    summary = summarise(rows, ["better", "plain", "same"], {"bundle": "b"}, [], baselines=["low", "high"])
    assert set(summary["baselines"]) == {"low", "high"} and set(summary["methods"]) == {"better", "plain", "same"}
    write_uncertainty_csvs(tmp_path, summary)
    with open(tmp_path / "summary.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert {(r["name"], r["metric"]) for r in lines} == {(n, c) for n in ("better", "plain", "same", "low", "high")
                                                         for c in ("energy", "deletion")}
    assert {r["name"] for r in lines if r["baseline"] == "1"} == {"low", "high"}
    with open(tmp_path / "paired.csv", newline="") as f:
        paired = list(csv.DictReader(f))
    assert [(p["a"], p["b"], p["different"]) for p in paired if p["metric"] == "energy"][-1] == ("plain", "same", "0")
    page = write_html(tmp_path, summary, [], ["better", "plain", "same"]).read_text()
    assert page.count("<tr class=baseline>") == 2 and page.count("class=whisker") == 2 * 5
    assert page.count("<td class=real>") == sum(p["different"] == "1" for p in paired)
    json.dumps(summary)                                                      # summary.json can hold it


def test_a_registered_column_and_section_appear_in_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr("cam_infer.audit.report.SHOWN", dict(SHOWN))
    monkeypatch.setattr("cam_infer.audit.report.SECTIONS", list(SECTIONS))
    add_column("road", "ROAD (combined)", True)
    add_section("checks", lambda report: f"<h2 id=checks>Checks of {len(report.methods)} methods</h2>", before="maps")
    from cam_infer.audit import report as module
    rows = [{**r, "road": r["energy"]} for r in synthetic_rows(8)]
    summary = module.summarise(rows, ["better", "plain"], {"bundle": "b"}, [], baselines=["low"])
    assert "road" in summary["intervals"]["better"] and "road" in summary["paired"]
    page = module.write_html(tmp_path, summary, [], ["better", "plain"]).read_text()
    assert "ROAD (combined) ↑" in page and page.index("Paired differences") < page.index("<h2 id=checks>Checks of 2")
    assert page.index("<h2 id=checks>") < page.index("<h2>Maps")


def test_a_prior_asked_for_without_its_ground_truth_is_refused_not_dropped():
    options = AuditOptions(("recipro",), baselines=(RANDOM, BOX_PRIOR))
    with pytest.raises(CamInferError, match="baseline 'box-prior' is drawn from ground-truth boxes; give --boxes"):
        options.drawn_baselines({})
    assert AuditOptions(("recipro",), baselines=(RANDOM,)).drawn_baselines({}) == (RANDOM,)
    assert BOX_PRIOR not in AuditOptions(("recipro",)).drawn_baselines({})        # the default: what the data allows


def test_one_image_shows_no_difference_as_real():
    """The bootstrap of one image is that image's difference, an interval of width 0 that excluded 0 for any
    difference: a one-image audit marked nearly every pair 'different' (insertion 2e-7 apart included)."""
    rows = [r for r in synthetic_rows() if r["image"] == "0.png"]
    found = uncertainty(rows, ["better", "plain", "same"], ["low", "high"], {"energy": True, "deletion": False})
    pairs = [p for compared in found["paired"].values() for p in compared]
    assert pairs and all(p["n"] == 1 for p in pairs) and any(p["mean"] != 0 for p in pairs)
    assert not any(p["different"] for p in pairs)


def test_the_priors_read_a_phone_photo_upright_as_the_audit_does(tmp_path):
    """The priors took an image's size from its header: a photo stored on its side with EXIF orientation 6 was
    W×H where the audit (and every viewer) reads it H×W, so its box was mapped into the model's input through the
    wrong shape, and a mask drawn on the upright photo was refused as the wrong size. Now both read it upright."""
    import cv2
    from cam_infer.images import Preprocessing
    from test_images import _with_orientation
    upright = np.zeros((40, 64, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "upright.jpg"), upright)
    stored = cv2.imencode(".jpg", np.ascontiguousarray(np.rot90(upright, -1)))[1].tobytes()   # on its side
    (tmp_path / "phone.jpg").write_bytes(_with_orientation(stored, 6))
    masks = tmp_path / "masks"
    masks.mkdir()
    label = np.zeros((40, 64), np.uint8)
    label[10:30, 40:60] = 1
    for name in ("upright", "phone"):
        cv2.imwrite(str(masks / f"{name}.png"), label)
    prep = Preprocessing((16, 16), crop="none")
    box = {"upright.jpg": [[40, 10, 59, 29]], "phone.jpg": [[40, 10, 59, 29]]}
    priors = [dataset_priors([tmp_path / name], lambda p: box[p.name], prep, masks, ["background", "thing"])
              for name in ("upright.jpg", "phone.jpg")]
    for prior in (BOX_PRIOR, "mask-prior"):
        np.testing.assert_array_equal(priors[1][prior], priors[0][prior])
