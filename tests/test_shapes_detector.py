"""The package's own detector (ShapesDetector, `cam_infer/data/shapes_detector`) on synthetic scenes it was
not trained on: it finds the objects, tells a tagged square from a square by the dot outside the box, and
the per-detection maps find the box and that dot. Ground truth comes from the scene generator, offline."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest
from helpers import run_cli

from cam_infer.tools.demo import embedded_detector_path
from cam_infer import Explainer
from cam_infer.detection.decode import iou
from cam_infer.jobs.journal import JOURNAL
from cam_infer.metrics import energy_pointing, pointing_hit
from cam_infer.tools.synthetic import DETECTION_CLASSES, detection_scene

SCENES = [detection_scene(1, i) for i in range(40)]


@pytest.fixture(scope="module")
def explainer():
    return Explainer(embedded_detector_path())


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


# --- audit ---------------------------------------------------------------------------------------------------

AUDIT_METHODS = "recipro,ablation"


def detector_scenes(folder, n: int = 3):
    """n detection scenes under folder/images/a, …/b (the same file names in both), their boxes keyed by
    the path relative to folder/images."""
    made = folder / "made"
    assert run_cli("synthetic", "--out", made, "--split", "detection", "-n", n).returncode == 0
    truth = json.loads((made / "boxes.json").read_text())
    names = sorted(truth)
    images, boxes = folder / "images", {}
    for sub, chosen in (("a", names[:2]), ("b", names[-2:])):
        (images / sub).mkdir(parents=True)
        for k, name in enumerate(chosen):
            (images / sub / f"scene{k}.png").write_bytes((made / name).read_bytes())
            boxes[f"{sub}/scene{k}.png"] = truth[name]
    (folder / "boxes.json").write_text(json.dumps(boxes))
    return images, folder / "boxes.json"


def audit(images, boxes, out, *extra):
    result = run_cli("audit", embedded_detector_path(), images, "--methods", AUDIT_METHODS, "--boxes", boxes,
                     "--out", out, *extra)
    assert result.returncode == 0, result.stderr
    return result


def jsonl_rows(out):
    return [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]


def csv_rows(out):
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_csv_equals_rows(out):
    """metrics.csv holds rows.jsonl's explained detections, value for value (empty: not measured)."""
    rows = [r for r in jsonl_rows(out) if r["method"] is not None]
    table = csv_rows(out)
    assert len(table) == len(rows) > 0
    for row, line in zip(rows, table):
        for column, text in line.items():
            value = row.get(column)
            if value is None:
                assert text == "", column
            elif isinstance(value, (bool, int)) and not isinstance(value, float):
                assert int(text) == int(value), column
            elif isinstance(value, float):
                assert float(text) == value, column
            else:
                assert text == str(value), column


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    folder = tmp_path_factory.mktemp("detector_audit")
    images, boxes = detector_scenes(folder)
    return folder / "report", audit(images, boxes, folder / "report")


def test_a_detector_audit_writes_the_classifier_audits_files(audited):
    out, result = audited
    assert {p.name for p in out.iterdir()} >= {"metrics.csv", "index.html", "summary.json", "rows.jsonl", "overlays"}
    assert_csv_equals_rows(out)
    rows = jsonl_rows(out)
    # boxes keyed by the path under the folder: both a/scene0.png and b/scene0.png matched their own objects
    for image in ("a/scene0.png", "b/scene0.png"):
        own = [r for r in rows if r["image"].endswith(image)]
        assert own and np.mean([r.get("truth_iou", 0) for r in own]) > 0.7, image
    thumbnails = sorted(p.name for p in (out / "overlays").iterdir())
    assert thumbnails == sorted(f"{s}%2Fscene{k}.png__{m}.png" for s in "ab" for k in (0, 1)
                                for m in AUDIT_METHODS.split(","))
    page = (out / "index.html").read_text()
    assert page.count("<img") == 8 and "Energy in the box" in page and "detections" in page
    for png in re.findall(r"src='data:image/png;base64,([^']+)'", page):
        picture = cv2.imdecode(np.frombuffer(base64.b64decode(png), np.uint8), cv2.IMREAD_COLOR)
        assert picture is not None and max(picture.shape[:2]) == 128 and picture.std() > 10
    assert "src='http" not in page and "href=" not in page
    assert "report:" in result.stdout and "index.html" in result.stdout


@pytest.mark.integration
def test_a_detector_audits_page_loads_in_a_browser(audited, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt install chromium) to check the page")
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    page = audited[0] / "index.html"
    dom = subprocess.run(common + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img") == 8 and "Energy in the box" in dom
    shot = tmp_path / "page.png"
    subprocess.run(common + [f"--screenshot={shot}", "--window-size=1200,1400", page.as_uri()],
                   capture_output=True, timeout=120)
    picture = cv2.imread(str(shot))
    assert picture is not None and len(np.unique(picture.reshape(-1, 3), axis=0)) > 500


@pytest.mark.slow
def test_a_detector_audit_resumes_redoing_changed_torn_and_half_written_images(tmp_path):
    images, boxes = detector_scenes(tmp_path)
    out = tmp_path / "report"
    audit(images, boxes, out)
    changed = images / "b" / "scene1.png"
    from cam_infer.images import load_image
    from cam_infer.postprocess import write_png
    write_png(changed, np.ascontiguousarray(load_image(changed)[:, ::-1]))          # mirrored: other boxes
    again = audit(images, boxes, out)
    assert "redid 1 image(s)" in again.stdout
    assert json.loads((out / "summary.json").read_text())["redone"] == [str(changed)]
    fresh = tmp_path / "fresh"
    audit(images, boxes, fresh)
    assert jsonl_rows(out) == jsonl_rows(fresh)            # the changed image's rows are its new ones
    assert (out / "metrics.csv").read_text() == (fresh / "metrics.csv").read_text()
    journal = out / JOURNAL
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:-1]))                                 # the last image not written
    audit(images, boxes, out)
    assert jsonl_rows(out) == jsonl_rows(fresh)
    journal.write_text("".join(lines[:-1]) + lines[-1][:25])                # …or its line torn
    audit(images, boxes, out)
    assert jsonl_rows(out) == jsonl_rows(fresh)
    assert (out / "metrics.csv").read_text() == (fresh / "metrics.csv").read_text()


def test_a_detector_audit_scores_the_baselines_on_the_same_detections_with_intervals(audited):
    from cam_infer.audit.baselines import centre_gaussian
    from cam_infer.detection.audit import _pixels
    from cam_infer.images import load_image
    out, _ = audited
    rows = [r for r in jsonl_rows(out) if r["method"] is not None]
    explained = sorted((r["image"], r["index"]) for r in rows if r["method"] == "recipro")
    for baseline in ("random-map", "centre-gaussian", "box-prior"):
        own = [r for r in rows if r["method"] == baseline]
        assert sorted((r["image"], r["index"]) for r in own) == explained and all(r["baseline"] for r in own)
    first = next(r for r in rows if r["method"] == "centre-gaussian")
    recipro = next(r for r in rows if r["method"] == "recipro" and (r["image"], r["index"]) == (first["image"],
                                                                                                  first["index"]))
    rgb = load_image(first["image"])
    detection = next(d for d in Explainer(embedded_detector_path()).explain([rgb], "recipro").items[0]
                     if d.index == first["index"])
    box = _pixels(detection.box_image, rgb.shape)
    assert first["box_fraction"] == recipro["box_fraction"]           # the same detection, the same box
    assert first["energy"] == pytest.approx(energy_pointing(centre_gaussian(rgb.shape[:2]), [box]))
    check_box_prior(out, rows)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["baselines"]) == {"random-map", "centre-gaussian", "box-prior"}
    for name in [*AUDIT_METHODS.split(","), "random-map", "centre-gaussian", "box-prior"]:
        assert {"energy", "pointing", "specificity", "box_fraction"} <= set(summary["intervals"][name])
        assert summary["intervals"][name]["energy"]["n"] == len(explained)
    assert {(p["a"], p["b"]) for p in summary["paired"]["energy"]} >= {("recipro", "ablation")}
    page = (out / "index.html").read_text()
    assert page.count("<tr class=baseline>") == 3 and "Paired differences" in page and "class=whisker" in page
    assert {p.name for p in out.iterdir()} >= {"summary.csv", "paired.csv"}


def check_box_prior(out, rows):
    """The box prior's rows: the fraction of the images whose true boxes cover each pixel of the model's
    letterboxed input, recomputed here with the same rounding of each box to whole input pixels, put back on each
    image and measured in each detection's box."""
    from cam_infer.detection.audit import _pixels
    from cam_infer.images import load_image
    bundle = Explainer(embedded_detector_path()).bundle
    prep, truth = bundle.preprocessing, json.loads((out.parent / "boxes.json").read_text())
    covered = []
    for name, entries in truth.items():
        shape = load_image(out.parent / "images" / name).shape[:2]
        inside = np.zeros(prep.input_size, bool)
        for entry in entries:
            x1, y1, x2, y2 = prep.box_from_image([*entry["box"][:2], entry["box"][2] + 1, entry["box"][3] + 1], shape)
            inside[max(int(np.floor(y1)), 0):int(np.ceil(y2)), max(int(np.floor(x1)), 0):int(np.ceil(x2))] = True
        covered.append(inside)
    prior = np.mean(covered, axis=0).astype(np.float32)
    own = [r for r in rows if r["method"] == "box-prior"]
    assert own
    for r in own:
        rgb = load_image(r["image"])
        on_image, _ = prep.to_image(prior, rgb.shape[:2])
        detection = next(d for d in Explainer(embedded_detector_path()).explain([rgb], "recipro").items[0]
                         if d.index == r["index"])
        assert r["energy"] == pytest.approx(energy_pointing(on_image, [_pixels(detection.box_image, rgb.shape)]),
                                            abs=1e-6)


def test_the_api_s_bad_calls_on_a_detector_are_one_line_and_an_image_given_to_overlay_is_drawn(explainer):
    from cam_infer import CamInferError
    scene = SCENES[0]
    e = explainer.explain([scene.image], "recipro")
    n = len(e.items[0])
    assert n >= 1
    for i, j, message in ((0, n, f"target {n} does not exist"), (0, -1, "target -1 does not exist"),
                          (0.0, None, "image 0.0 does not exist"), (1, 0, "image 1 does not exist")):
        with pytest.raises(CamInferError, match=message):
            e.overlay(i, j)
    with pytest.raises(CamInferError, match=r"boxes= takes \(box \[x1, y1, x2, y2\], class\) pairs"):
        explainer.explain([scene.image], "recipro", boxes=[[10, 10, 50, 50]])
    with pytest.raises(CamInferError, match="the batch is empty"):
        explainer.explain(np.zeros((0, *explainer.bundle.input_shape), np.float32), "recipro")
    with pytest.raises(CamInferError, match="per explained target"):
        e.uniform
    assert e.map_class(0, 0) == e.items[0][0].class_id and not e.multi
    preprocessed = explainer.explain(explainer.preprocess([scene.image]), "recipro")
    view = explainer.bundle.preprocessing.geometry(scene.image)
    np.testing.assert_array_equal(preprocessed.overlay(0, 0, image=view), e.overlay(0, 0, on="model"))
    with pytest.raises(CamInferError, match="the targets were found on a"):
        e.overlay(0, 0, image=np.zeros((7, 9, 3), np.uint8))


def test_a_boxes_file_whose_images_hold_no_box_draws_no_box_prior(tmp_path):
    """Negative images only: the prior has nothing to average, and the audit runs without it (was a KeyError)."""
    images, _ = detector_scenes(tmp_path, 2)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({f"{s}/scene{k}.png": [] for s in "ab" for k in (0, 1)}))
    audit(images, empty, tmp_path / "report")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert set(summary["baselines"]) == {"random-map", "centre-gaussian"}
    assert summary["protocol"]["baselines"] == ["random-map", "centre-gaussian"]
    assert summary["protocol"]["backend"] and len(summary["protocol"]["layer"]) == 2       # the runtime, the cut set


def test_a_class_agnostic_map_in_a_detector_audit_names_no_class(tmp_path):
    """Its rows keep the detection's class apart (``detection_*``, as explain's records), are paired with the
    class-specific method's rows of the same detections, and the protocol records what the classifier's does."""
    images, boxes = detector_scenes(tmp_path, 2)
    result = run_cli("audit", embedded_detector_path(), images, "--methods", "recipro,activation", "--boxes", boxes,
                     "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    rows = jsonl_rows(tmp_path / "report")
    explained = {(r["image"], r["index"]): (r["class_id"], r["label"]) for r in rows if r["method"] == "recipro"}
    unnamed = [r for r in rows if r["method"] != "recipro"]
    assert explained and {r["method"] for r in unnamed} == {"activation", "random-map", "centre-gaussian", "box-prior"}
    for r in unnamed:
        assert "class_id" not in r and "label" not in r and r["class_agnostic"], r
        assert (r["detection_class_id"], r["detection_label"]) == explained[r["image"], r["index"]]
    assert all("detection_class_id" not in r and not r["class_agnostic"] for r in rows if r["method"] == "recipro")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    (pair,) = [p for p in summary["paired"]["energy"] if {p["a"], p["b"]} == {"recipro", "activation"}]
    assert pair["n"] == len(explained)
    protocol = summary["protocol"]
    assert protocol["class_agnostic"] == ["activation"] and protocol["cam_infer"] and "settings" not in summary
    assert protocol["preprocessing"] == Explainer(embedded_detector_path()).bundle.preprocessing.to_dict()
    assert set(protocol["graphs"]) == {"features", "head"} and len(protocol["layer"]) == 2


@pytest.mark.parametrize("flags, said", [
    (["--target", "circle"], "--target is for classifiers and segmenters"),
    (["--target", "truth"], "--target is for classifiers and segmenters"),
    (["--masks", "masks"], "not --masks, --enhance or --enhance-option"),
    (["--enhance", "sess"], "not --masks, --enhance or --enhance-option"),
    (["--metrics", "pointing,insertion,box"], "--metrics box,insertion belong to a classifier's audit"),
    (["--space", "raw", "--steps", "10"], "--steps, --space belong to a classifier's audit"),
])
def test_a_detector_audit_refuses_what_it_would_leave_unread(tmp_path, flags, said):
    """Before, each of these ran and wrote the report it writes without them: all detections, no insertion."""
    from helpers import assert_one_line_error
    images, boxes = detector_scenes(tmp_path, 1)
    result = run_cli("audit", embedded_detector_path(), images, "--methods", "activation", "--boxes", boxes,
                     "--out", tmp_path / "report", *flags)
    assert_one_line_error(result, said)
    assert not (tmp_path / "report").exists()


BOX, OTHER = [([10, 20, 60, 80], "square")], [([30, 30, 90, 90], "circle")]


@pytest.mark.parametrize("images, request_, message", [
    (2, {"boxes": [BOX, OTHER, OTHER]}, "3 box lists given for 2 images: one list per image"),
    (2, {"boxes": [BOX]}, "1 box lists given for 2 images"),
    (2, {"boxes": BOX}, r"boxes= for 2 images takes one list of \(box, class\) pairs per image"),
    (1, {"boxes": {"box": [1, 2, 3, 4]}}, r"boxes= takes \[\(box \[x1, y1, x2, y2\], class\), ...\], not dict"),
    (1, {"boxes": [(["a", "b", "c", "d"], 1)]}, r"a box is four numbers \[x1, y1, x2, y2\], not \['a'"),
    (1, {"boxes": BOX, "target": 0}, "boxes= explains the boxes given; target= and classes= choose among"),
    (1, {"target": 1.0}, "target= is a detection index after NMS, a list of them or 'all', not 1.0"),
    (1, {"target": "circle"}, r"not 'circle' \(a class's detections: classes=\[...\]\)"),
    (1, {"classes": []}, "classes= is empty: it would explain nothing"),
])
def test_a_detectors_request_that_does_not_fit_is_one_line(explainer, images, request_, message):
    """Extra box lists were dropped silently, too few an IndexError; boxes beside target/classes silently won;
    a label as target was read letter by letter ('not c'); string corners, a dict of boxes: raw exceptions."""
    from cam_infer import CamInferError
    scenes = [detection_scene(1, 3).image, detection_scene(1, 4).image][:images]
    with pytest.raises(CamInferError, match=message):
        explainer.explain(scenes, "recipro", **request_)
    per_image = explainer.explain(scenes[:1] * 2, "recipro", boxes=[BOX, []])       # one list per image, one empty
    assert [len(items) for items in per_image.items] == [1, 0]
    assert [len(i) for i in explainer.explain(scenes[:1] * 2, "recipro", boxes=[]).items] == [0, 0]   # no box
    bare = explainer.explain(scenes[:1], "recipro", boxes=BOX[0]).items[0]                  # one pair, one image
    assert len(bare) == 1 and bare[0].box_image == per_image.items[0][0].box_image
    assert explainer.explain(scenes[:1], "recipro", target=np.array(0)).items[0][0].index == 0   # argmax()'s 0-d
