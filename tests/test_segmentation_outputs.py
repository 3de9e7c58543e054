"""What users see of a segmenter's explanation: the region's outline per class, the caption, the files, the
folder runs, the audit and the demo scene."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cam_infer import Explainer
from cam_infer.detection.overlay import COLOURS
from cam_infer.errors import CamInferError
from cam_infer.segmentation.overlay import draw_outlines, region_source
from cam_infer.tools.demo import SHAPES_PREPROCESSING

from helpers import assert_one_line_error, run_cli

ROOT = Path(__file__).resolve().parent.parent
SEGMENTER = ROOT / "cam_infer" / "data" / "shapes_segmenter" / "shapes_segmenter.onnx"
LABELS = ["background", "circle", "square", "triangle", "cross"]


def boundary(mask: np.ndarray) -> np.ndarray:
    """The region's pixels with a 4-neighbour outside it (brute force)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def test_outline_is_drawn_on_the_region_boundary_and_nowhere_far_from_it():
    picture = np.full((100, 120, 3), 90, np.uint8)
    region = np.zeros((80, 120), bool)                  # the image starts 20 rows down, under a caption
    region[30:60, 40:90] = True
    out = draw_outlines(picture, [region], [None], top=20)
    colour = np.all(out[20:] == COLOURS[0], axis=2)
    assert colour[boundary(region)].all()
    near = np.zeros_like(region)
    ys, xs = np.nonzero(boundary(region))
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            near[np.clip(ys + dy, 0, 79), np.clip(xs + dx, 0, 119)] = True
    changed = np.any(out[20:] != picture[20:], axis=2)
    assert not (changed & ~near).any()
    assert (out[:20] == picture[:20]).all()             # the caption is left alone


def test_outlines_of_several_regions_take_their_own_colours_and_labels():
    picture = np.full((90, 90, 3), 90, np.uint8)
    a, b = np.zeros((90, 90), bool), np.zeros((90, 90), bool)
    a[40:60, 10:30], b[40:80, 50:80] = True, True
    plain = draw_outlines(picture, [a, b], [None, None])
    labelled = draw_outlines(picture, [a, b], ["cat", "dog"])
    for k, region in enumerate((a, b)):
        assert np.all(plain[boundary(region)] == COLOURS[k], axis=1).all()
    above = np.any(labelled != plain, axis=2)
    assert above[:40, 10:30].any() and above[:40, 50:80].any()       # a chip above each region's top


@pytest.mark.parametrize("region, source", [(None, "predicted"), ("mask.png", "mask"), (np.zeros((4, 4)), "mask"),
                                            ([1, 2, 3, 4], "box"), ((5, 6), "pixel")])
def test_region_source_says_where_the_region_came_from(region, source):
    assert region_source(region) == source


@pytest.fixture(scope="module")
def segmenter_and_scene(tmp_path_factory):
    from cam_infer.bundle.segmentation import split_segmenter
    from cam_infer.tools.synthetic import write_segmentation_scenes

    work = tmp_path_factory.mktemp("segmentation-overlay")
    scenes = write_segmentation_scenes(work / "scenes", 2)
    bundle = split_segmenter(SEGMENTER, out=work / "bundle", labels=LABELS, preprocessing=SHAPES_PREPROCESSING)
    return Explainer(bundle, backend="onnxruntime"), sorted((scenes / "images").glob("*.png"))


def test_overlay_outlines_each_explained_region_in_the_models_view(segmenter_and_scene):
    ex, images = segmenter_and_scene
    e = ex.explain(images[1], "activation", target="all")
    items = e.items[0]
    assert items
    for j, s in enumerate(items):
        picture = e.overlay(0, j, on="model")
        top = picture.shape[0] - s.region.shape[0]
        white = np.all(picture[top:, :s.region.shape[1]] == COLOURS[0], axis=2)
        assert white[boundary(s.region)].mean() > 0.9                  # the label chip may hide a few
    every = e.overlay(0, None, on="model")
    top = every.shape[0] - items[0].region.shape[0]
    for k, s in enumerate(items):
        drawn = np.all(every[top:, :s.region.shape[1]] == COLOURS[k], axis=2)
        assert drawn[boundary(s.region)].mean() > 0.5


def test_overlay_on_the_original_and_saved_files_name_each_class(segmenter_and_scene, tmp_path):
    ex, images = segmenter_and_scene
    e = ex.explain(images[1], "recipro", target="all")
    picture = e.overlay(0, 0)
    assert picture.shape[1] >= e.images[0].shape[1] and picture.shape[0] > e.images[0].shape[0]
    paths = e.save(tmp_path)
    assert [p.name.split("_recipro_")[1] for p in paths] == [f"{j}_{s.label}.png" for j, s in enumerate(e.items[0])]
    with pytest.raises(CamInferError, match="target 9 does not exist"):
        e.overlay(0, 9)


def test_a_class_agnostic_map_over_a_box_names_no_class_and_says_box(segmenter_and_scene, tmp_path):
    ex, images = segmenter_and_scene
    e = ex.explain(images[0], "activation", region=[10, 10, 60, 60])
    record = e.records()[0][0]
    assert record["region"] == "box" and "label" not in record and "class_id" not in record
    _, scores = ex.backend.observe(ex.bundle.preprocessing(images[0])[None])
    inside = np.argmax(scores[0], axis=0)[10:60, 10:60]             # the scene is the model's 128² input
    counts = np.bincount(inside.ravel(), minlength=len(LABELS))
    counts[LABELS.index("background")] = 0
    assert record["region_class_id"] == int(np.argmax(counts)) and record["region_label"] == \
        LABELS[record["region_class_id"]]                           # the class predicted most inside the box
    from cam_infer.segmentation.overlay import _caption
    text = _caption(e.method, e.items[0])
    assert "class-agnostic" in text and "box region" in text
    assert [p.name for p in e.save(tmp_path)] == [f"{images[0].stem}_activation.png"]


def test_the_demo_explains_a_segmentation_scene_with_its_ground_truth(tmp_path):
    from cam_infer.metrics.segmentation import uniform_baseline
    from cam_infer.tools.demo import DEMO_SEED, run_segmentation_demo
    from cam_infer.tools.synthetic import scene, segmentation_labels

    lines = []
    rows = run_segmentation_demo(tmp_path, "onnxruntime", 2, report=lines.append)
    s = scene("multiple", DEMO_SEED, 0)
    baseline = uniform_baseline(segmentation_labels(s) == s.label + 1)
    assert {r["label"] for r in rows} == {s.class_name}
    recipro = next(r for r in rows if r["method"] == "recipro")
    assert recipro["energy"] >= 0.5 and recipro["energy"] > 4 * baseline
    assert "embedded segmenter: ShapesSegmenter" in lines[0] and f"{baseline:.3f}" in lines[0]
    methods = {r["method"] for r in rows}
    shown = {line.split()[0]: line for line in lines[0].splitlines() if line and line.split()[0] in methods}
    assert s.class_name not in shown["activation"] and "class-agnostic" in shown["eigen"]
    assert s.class_name in shown["recipro"]
    import cv2
    grid = cv2.imread(str(tmp_path / "segmentation.png"))
    assert grid is not None and grid.shape[1] > 5 * 256


def test_explain_over_a_folder_records_each_region_with_its_energy_and_resumes(segmenter_and_scene, tmp_path):
    ex, images = segmenter_and_scene
    bundle, folder, out = ex.bundle.path, images[0].parent, tmp_path / "run"
    result = run_cli("explain", bundle, folder, "--method", "recipro,activation", "--target", "all", "--out", out)
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "results.json").read_text())["results"]
    assert sorted((r["image"], r["method"]) for r in rows) == sorted((str(p), m) for p in images
                                                                     for m in ("recipro", "activation"))
    for r in rows:
        e = ex.explain(r["image"], r["method"], target="all")
        assert len(r["targets"]) == len(e.items[0]) and (out / r["overlay"]).is_file()
        for record, s in zip(r["targets"], e.items[0]):
            inside = (s.saliency * s.region).sum() / s.saliency.sum()          # plain NumPy twin
            assert record["energy_in_region"] == pytest.approx(inside, abs=1e-4)
            assert record["uniform_baseline"] == pytest.approx(s.region.mean(), abs=1e-4)
            assert record["region"] == "predicted" and record["region_pixels"] == s.pixels
            assert ("label" in record) == (r["method"] == "recipro")
            assert ("overlay" in record) == (r["method"] == "recipro")
    recipro = [t for r in rows if r["method"] == "recipro" for t in r["targets"]]
    assert np.mean([t["energy_in_region"] for t in recipro]) > 4 * np.mean([t["uniform_baseline"] for t in recipro])
    first = rows[0]["overlay"]
    (out / first).unlink()
    again = run_cli("explain", bundle, folder, "--method", "recipro,activation", "--target", "all", "--out", out)
    assert again.returncode == 0, again.stderr
    assert (out / first).is_file()
    redone = {(r["image"], r["method"]): r for r in json.loads((out / "results.json").read_text())["results"]}
    for r in rows:                                  # the row whose picture was gone is redone, the others kept
        kept = redone[r["image"], r["method"]]
        assert kept == r if r["overlay"] != first else {**kept, "milliseconds": 0} == {**r, "milliseconds": 0}


def test_explain_of_a_segmenter_refuses_classifier_flags_and_unknown_classes(segmenter_and_scene, tmp_path):
    ex, images = segmenter_and_scene
    for box in ([np.nan, 0, 10, 10], [0, 0, np.inf, np.inf]):
        with pytest.raises(CamInferError, match="a box's corners must be finite numbers"):
            ex.explain(images[0], "activation", region=box)
    result = run_cli("explain", ex.bundle.path, images[0], "--method", "recipro", "--target", "dog", "--out", tmp_path)
    assert_one_line_error(result, "unknown class label 'dog'")
    result = run_cli("explain", ex.bundle.path, images[0], "--method", "recipro", "--finer", "1", "--out", tmp_path)
    assert_one_line_error(result, "--finer is for classifiers")


def test_a_class_absent_from_one_image_of_a_batch_names_that_image(segmenter_and_scene, tmp_path):
    from cam_infer.tools.synthetic import write_segmentation_scenes
    ex, _ = segmenter_and_scene
    images = sorted((write_segmentation_scenes(tmp_path / "scenes", 4) / "images").glob("*.png"))
    shown = [{s.class_id for s in ex.explain(p, "recipro", target="all").items[0]} for p in images]
    c, a, b = next((c, a, b) for a in range(4) for b in range(4) for c in shown[a] if c not in shown[b])
    with pytest.raises(CamInferError, match=rf"image 1 of the batch: class {LABELS[c]} \({c}\) is not in the image"):
        ex.explain([images[a], images[b]], "recipro", target=c)


def test_a_segmenter_without_labels_saves_and_draws_its_classes_by_number(tmp_path):
    from cam_infer.bundle.segmentation import split_segmenter
    from cam_infer.tools.synthetic import write_segmentation_scenes
    import onnx
    model = onnx.load(SEGMENTER)                     # the file names its classes: a copy that does not
    kept = [p for p in model.metadata_props if p.key != "names"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    bundle = split_segmenter(model, out=tmp_path / "bundle", preprocessing=SHAPES_PREPROCESSING)
    assert bundle.labels is None
    image = sorted((write_segmentation_scenes(tmp_path / "scenes", 1) / "images").glob("*.png"))[0]
    e = Explainer(bundle, backend="onnxruntime").explain([image], "recipro")
    c = e.items[0][0].class_id
    assert [p.name for p in e.save(tmp_path / "out")] == [f"{image.stem}_recipro_0_class_{c}.png"]


def test_a_16_bit_mask_file_as_region_keeps_every_labelled_pixel(segmenter_and_scene, tmp_path):
    import cv2
    ex, images = segmenter_and_scene
    mask = np.zeros((128, 128), np.uint16)
    mask[10:50, 10:50], mask[60:70, 60:70] = 1, 300            # label 1 was 0 once divided by 257
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    from_file = ex.explain(images[0], "activation", region=tmp_path / "m.png").items[0][0]
    from_array = ex.explain(images[0], "activation", region=mask > 0).items[0][0]
    assert from_file.pixels == from_array.pixels == 1700
    np.testing.assert_array_equal(from_file.region, from_array.region)
    negative = ex.explain(images[0], "activation", region=np.where(mask > 0, -1, 0).astype(np.int8)).items[0][0]
    np.testing.assert_array_equal(negative.region, from_array.region)          # nonzero is inside, -1 too


def test_targets_are_drawn_on_an_image_given_to_overlay_and_bad_indices_are_one_line(segmenter_and_scene):
    from cam_infer.images import load_image
    ex, images = segmenter_and_scene
    rgb = load_image(images[0])
    from_files = ex.explain([rgb], "recipro")
    preprocessed = ex.explain(ex.preprocess([rgb]), "recipro")
    np.testing.assert_array_equal(preprocessed.overlay(0, 0, image=rgb), from_files.overlay(0, 0, on="model"))
    with pytest.raises(CamInferError, match="or overlay\\(image=...\\)"):
        preprocessed.overlay(0, 0)
    with pytest.raises(CamInferError, match="the image given is 10x10; the targets were found on a 128x128 image"):
        from_files.overlay(0, 0, image=np.zeros((10, 10, 3), np.uint8))
    for i, j, message in ((0, 5, "target 5 does not exist"), (0, -1, "target -1 does not exist"),
                          (0.0, None, "image 0.0 does not exist"), (True, None, "image True does not exist"),
                          (3, None, "image 3 does not exist")):
        with pytest.raises(CamInferError, match=message):
            from_files.overlay(i, j)
    assert from_files.map_class(0, 0) == from_files.items[0][0].class_id and not from_files.multi
    with pytest.raises(CamInferError, match="per explained target: read items"):
        from_files.uniform


def test_a_class_named_twice_is_explained_once(segmenter_and_scene):
    ex, images = segmenter_and_scene
    once = ex.explain(images[0], "recipro")
    c = once.items[0][0].class_id
    twice = ex.explain(images[0], "recipro", target=[c, LABELS[c]])
    assert [s.class_id for s in twice.items[0]] == [c]
    np.testing.assert_array_equal(twice.items[0][0].saliency, once.items[0][0].saliency)


def test_audit_of_a_segmenter_against_its_ground_truth_masks(segmenter_and_scene, tmp_path):
    from cam_infer.audit.masks import read_truth
    from cam_infer.tools.synthetic import write_segmentation_scenes

    ex, _ = segmenter_and_scene
    scenes = write_segmentation_scenes(tmp_path / "scenes", 4)
    out = tmp_path / "audit"
    result = run_cli("audit", ex.bundle.path, scenes / "images", "--masks", scenes / "masks", "--methods",
                     "activation,recipro", "--out", out)
    assert result.returncode == 0, result.stderr
    every = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    rows = [r for r in every if not r.get("baseline")]
    assert len(rows) == 8 and (out / "index.html").is_file() and (out / "metrics.csv").is_file()
    flat = {m: sum(r["degenerate"] for r in rows if r["method"] == m) for m in ("activation", "recipro")}
    assert json.loads((out / "summary.json").read_text())["degenerate"] == {
        m: {"degenerate": n, "of": 4} for m, n in flat.items() if n}                  # a count beside the means
    protocol = json.loads((out / "summary.json").read_text())["protocol"]
    assert protocol["backend"].startswith("onnxruntime") and protocol["layer"] == [ex.bundle.activation_name]
    assert protocol["class_agnostic"] == ["activation"] and protocol["cam_infer"]     # as a classifier audit's
    assert protocol["preprocessing"] == ex.bundle.preprocessing.to_dict() and set(protocol["graphs"]) == {"features",
                                                                                                          "head"}
    for r in rows:
        e = ex.explain(r["image"], r["method"])
        s = e.items[0][r["index"]]
        truth = read_truth(scenes / "masks", Path(r["image"]).name, e.images[0].shape[:2], LABELS)
        true = ex.bundle.preprocessing.mask_geometry(truth.region(s.class_id))
        assert r["truth_energy"] == pytest.approx((s.saliency * true).sum() / s.saliency.sum(), abs=1e-4)
        assert r["truth_fraction"] == pytest.approx(true.mean(), abs=1e-6)
        assert r["energy"] == pytest.approx((s.saliency * s.region).sum() / s.saliency.sum(), abs=1e-4)
    explained = {(r["image"], r["index"]): r["class_id"] for r in rows if r["method"] == "recipro"}
    agnostic = [r for r in rows if r["method"] == "activation"]
    assert all("class_id" not in r or r["class_id"] is None for r in agnostic)
    assert [r["region_class_id"] for r in agnostic] == [explained[r["image"], r["index"]] for r in agnostic]
    with open(out / "metrics.csv", newline="") as f:
        table = [r for r in csv.DictReader(f) if r["method"] == "activation"]
    assert [int(r["region_class_id"]) for r in table] == [r["region_class_id"] for r in agnostic]
    assert all(r["class_id"] == "" for r in table)
    summary = json.loads((out / "summary.json").read_text())["methods"]
    for method in ("activation", "recipro"):
        own = [r for r in rows if r["method"] == method]
        assert summary[method]["truth_energy"] == pytest.approx(np.mean([r["truth_energy"] for r in own]))
    assert summary["recipro"]["truth_energy"] >= 0.5
    assert summary["recipro"]["truth_energy"] > 4 * summary["recipro"]["truth_fraction"]
    refused = run_cli("audit", ex.bundle.path, scenes / "images", "--boxes", scenes / "masks" / "x.json", "--out",
                      tmp_path / "other")
    assert_one_line_error(refused, "takes --masks DIR")
    check_baselines(ex, scenes, every, out)


def check_baselines(ex, scenes, every, out):
    """The baselines' rows: each map (the random map, the centre Gaussian, the masks' object pixels averaged over
    the images) scored on the methods' regions, recomputed here in NumPy; their means, intervals and comparisons."""
    from cam_infer.audit.baselines import random_map
    from cam_infer.audit.masks import read_truth

    truths = {}
    for image in sorted((scenes / "images").glob("*.png")):
        truth = read_truth(scenes / "masks", image.name, (128, 128), LABELS)
        truths[str(image)] = truth
    geometry = ex.bundle.preprocessing.mask_geometry
    objects = np.mean([geometry(np.any([t.region(c) for c in t.regions if c], axis=0)) & geometry(t.valid)
                       for t in truths.values()], axis=0)
    yy, xx = np.mgrid[:128, :128]
    gaussian = np.exp(-((yy - 63.5) ** 2 + (xx - 63.5) ** 2) / (2 * 32.0 ** 2))
    baselines = [r for r in every if r.get("baseline")]
    assert sorted({r["method"] for r in baselines}) == ["centre-gaussian", "mask-prior", "random-map"]
    assert len(baselines) == 3 * 4
    for r in baselines:
        s = ex.explain(r["image"], "recipro").items[0][r["index"]]
        shown = {"random-map": lambda: random_map(ex.preprocess([r["image"]])[0]), "centre-gaussian": lambda: gaussian,
                 "mask-prior": lambda: objects}[r["method"]]()
        assert r["energy"] == pytest.approx((shown * s.region).sum() / shown.sum(), abs=1e-4)
        assert r["region_class_id"] == s.class_id and "class_id" not in r and r["class_agnostic"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["baselines"]) == {"random-map", "centre-gaussian", "mask-prior"}
    assert summary["baselines"]["random-map"]["energy"] == pytest.approx(
        np.mean([r["energy"] for r in baselines if r["method"] == "random-map"]))
    assert summary["methods"]["recipro"]["energy"] > summary["baselines"]["mask-prior"]["energy"]
    compared = {(c["a"], c["b"], metric) for metric, found in summary["paired"].items() for c in found}
    for method in ("activation", "recipro"):             # each method against the best baseline of each metric
        for metric in ("energy", "pointing", "truth_energy"):
            assert len({b for a, b, m in compared if a == method and m == metric} & set(summary["baselines"])) == 1
    assert (out / "paired.csv").is_file()
    assert "random-map" in (out / "index.html").read_text()


def test_audit_of_a_segmenter_refuses_a_classifier_s_protocol_and_skips_images_without_the_class(
        segmenter_and_scene, tmp_path):
    from cam_infer.tools.synthetic import write_segmentation_scenes

    ex, _ = segmenter_and_scene
    scenes = write_segmentation_scenes(tmp_path / "scenes", 4)
    for flags, given in ((("--metrics", "insertion"), "--metrics"), (("--steps", "5", "--tolerance", "3"),
                                                                      "--steps, --tolerance")):
        refused = run_cli("audit", ex.bundle.path, scenes / "images", *flags, "--out", tmp_path / "x")
        assert_one_line_error(refused, f"{given} belong to a classifier's audit")
    assert_one_line_error(run_cli("audit", ex.bundle.path, scenes / "images", "--target", "truth", "--out",
                                  tmp_path / "x"), "--target truth reads a classifier's boxes")
    assert_one_line_error(run_cli("audit", ex.bundle.path, scenes / "images", "--enhance-option", "sess.scales=2",
                                  "--out", tmp_path / "x"), "not --boxes, --enhance or --enhance-option")
    from PIL import Image
    present = {p.name: {int(c) for c in np.unique(np.asarray(Image.open(p)))}
               for p in sorted((scenes / "masks").glob("*.png"))}
    label = next(c for c in range(1, len(LABELS)) if 0 < sum(c in v for v in present.values()) < len(present))
    without = sorted(name for name, classes in present.items() if label not in classes)
    for command in ("audit", "explain"):
        out = tmp_path / command
        flag = ("--methods", "recipro") if command == "audit" else ("--method", "recipro")
        result = run_cli(command, ex.bundle.path, scenes / "images", *flag, "--target", LABELS[label], "--out", out)
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert f"{len(without)} image(s) could not be read or" in result.stderr
        assert f"{without[0]}: class {LABELS[label]} ({label}) is not in the image" in result.stderr
        if command == "audit":
            rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
            errors = json.loads((out / "summary.json").read_text())["errors"]
        else:
            rows = json.loads((out / "results.json").read_text())["results"]
            errors = json.loads((out / "results.json").read_text())["errors"]
        assert sorted({Path(r["image"]).name for r in rows}) == sorted(set(present) - set(without))
        assert sorted(Path(e["image"]).name for e in errors) == without


@pytest.mark.parametrize("method", ["activation", "eigen", "entropy"])     # entropy: refused before, as not fusable
def test_fused_segmenter_returns_its_scores_and_the_explainers_map(segmenter_and_scene, tmp_path, method):
    import onnxruntime as ort

    from helpers import triton_config
    ex, images = segmenter_and_scene
    out = tmp_path / "fused.onnx"
    result = run_cli("fuse", ex.bundle.path, "--method", method, "--out", out, "--repository", tmp_path / "repo")
    assert result.returncode == 0, result.stderr              # before: an internal error with --repository
    config = triton_config(tmp_path / "repo" / "fused" / "config.pbtxt")
    assert [o.name for o in config.output] == ["class_scores", "saliency"]
    assert list(config.output[1].dims) == list(ex.bundle.input_shape[1:])
    assert (tmp_path / "repo" / "fused" / "1" / "model.onnx").read_bytes() == out.read_bytes()
    refused = run_cli("fuse", ex.bundle.path, "--method", method, "--top-classes", "2", "--out", tmp_path / "t.onnx")
    assert_one_line_error(refused, "--top-classes is for classifiers; a segmentation bundle's fused map")
    refused = run_cli("fuse", ex.bundle.path, "--method", method, "--raw", "--precision", "bf16",
                      "--out", tmp_path / "t.onnx")
    assert_one_line_error(refused, "--raw, --precision are for classifiers")     # the flags given, not all four
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    e = ex.explain(images[0], method)
    x = ex._inputs([images[0]])[0]
    scores, saliency = session.run(None, {session.get_inputs()[0].name: x})
    assert np.abs(scores - ex.backend.forward(x)).max() < 1e-4
    assert np.abs(saliency[0] - e.items[0][0].saliency).max() < 1e-3
    from cam_infer.serve.loading import load_served
    served = load_served(out, None, "onnxruntime", "CPU", None)          # what `cam-infer serve model.onnx` serves
    answer = served.run(x, served.key({}, 1)[0], None)
    assert np.abs(answer["saliency"] - saliency).max() < 1e-6 and answer["scores"].shape == scores.shape
    import onnx                          # the scores' kind recorded as a fused classifier's is, /explain not offered
    recorded = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert recorded["cam_infer.output_kind"] == ex.bundle.output_kind and served.preprocessing is None


@pytest.mark.parametrize("method", ["activation", "eigen", "entropy"])
def test_an_ir_segmenter_fuses_into_ir_with_the_explainers_map(segmenter_and_scene, tmp_path, method):
    """Our segmenter as an IR file, split with OpenVINO: `fuse` writes IR whose scores and map are the Explainer's
    on the IR bundle and the fused ONNX model's; served as it is."""
    import openvino as ov

    from cam_infer.bundle.openvino_segmentation import split_openvino_segmenter
    from cam_infer.serve.loading import load_served
    ex, images = segmenter_and_scene
    ov.save_model(ov.convert_model(str(SEGMENTER)), str(tmp_path / "segmenter.xml"), compress_to_fp16=False)
    bundle = split_openvino_segmenter(tmp_path / "segmenter.xml", out=tmp_path / "ir", labels=LABELS,
                                      preprocessing=SHAPES_PREPROCESSING)
    assert bundle.graph_format == "openvino"
    out = tmp_path / "fused.xml"
    result = run_cli("fuse", bundle.path, "--method", method, "--out", out)
    assert result.returncode == 0, result.stderr
    ir = Explainer(bundle, backend="openvino")
    x = ir._inputs([images[0]])[0]
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(out)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    results = compiled({bundle.input_name: x})
    got = {n: results[o] for o in compiled.outputs for n in o.get_names()}
    assert np.abs(got["scores"] - ir.backend.forward(x)).max() < 1e-4
    assert np.abs(got["saliency"][0] - ir.explain(images[0], method).items[0][0].saliency).max() < 1e-3
    onnx_fused = tmp_path / "fused.onnx"
    assert run_cli("fuse", ex.bundle.path, "--method", method, "--out", onnx_fused).returncode == 0
    served = load_served(onnx_fused, None, "onnxruntime", "CPU", None)
    assert np.abs(served.run(x, served.key({}, 1)[0], None)["saliency"] - got["saliency"]).max() < 1e-3
    served = load_served(out, None, "auto", "CPU", None)                 # `cam-infer serve fused.xml`
    answer = served.run(x, served.key({}, 1)[0], None)
    assert np.abs(answer["saliency"] - got["saliency"]).max() < 1e-6 and answer["scores"].shape == got["scores"].shape


def test_cli_bench_points_a_segmenter_to_the_segmentation_benchmark(segmenter_and_scene):
    ex, _ = segmenter_and_scene                                  # before: it pointed to the detectors' benchmark
    assert_one_line_error(run_cli("bench", ex.bundle.path), "for a segmentation bundle run bench/segmentation.py")


def test_fuse_refuses_a_class_specific_segmentation_method(segmenter_and_scene, tmp_path):
    ex, _ = segmenter_and_scene
    result = run_cli("fuse", ex.bundle.path, "--method", "recipro", "--out", tmp_path / "fused.onnx")
    assert_one_line_error(result, "a segmenter fuses")
    plain = run_cli("fuse", ex.bundle.path, "--out", tmp_path / "default.onnx")    # no --method: eigen, not recipro
    assert plain.returncode == 0, plain.stderr
    assert "eigen at its cut" in plain.stdout
    from cam_infer.fuse import fuse
    fused = fuse(ex.bundle)                                        # the Python API's default too
    assert {p.key: p.value for p in fused.metadata_props}["cam_infer.method"] == "eigen"


def test_fuse_and_info_of_a_segmenter_check_what_they_are_given(segmenter_and_scene, tmp_path):
    """An unknown option is one line (was a TypeError); --out onto the bundle's own graph is refused (--force
    overwrote it, and the bundle failed its hash check after); --out a folder leaves no temporary file."""
    import shutil
    ex, _ = segmenter_and_scene
    bundle = shutil.copytree(ex.bundle.path, tmp_path / "bundle")
    assert_one_line_error(run_cli("fuse", bundle, "--method", "eigen", "--option", "foo=bar", "--out",
                                  tmp_path / "f.onnx"), "fused method 'eigen' has no option foo")
    before = (bundle / "features.onnx").read_bytes()
    assert_one_line_error(run_cli("fuse", bundle, "--method", "eigen", "--out", bundle / "features.onnx", "--force"),
                          "is a file of the bundle being fused")
    assert (bundle / "features.onnx").read_bytes() == before
    (tmp_path / "d.onnx").mkdir()
    assert_one_line_error(run_cli("fuse", bundle, "--method", "eigen", "--out", tmp_path / "d.onnx", "--force"),
                          "is a folder; --out is the fused model's file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "d.onnx"]
    for backend in ("onnxruntime", "openvino"):          # a segmenter's (1,C,H,W) scores are what it gives
        info = run_cli("info", bundle, "--backend", backend)
        assert info.returncode == 0 and f"runs on    {backend}" in info.stdout and ": yes," in info.stdout, info.stdout


def test_explain_over_a_region_from_the_command_line_box_or_folder_of_masks(segmenter_and_scene, tmp_path, tiny_bundle):
    """--region X1,Y1,X2,Y2 and --region DIR (a mask per image) give the records the Python region= gives."""
    import cv2
    ex, images = segmenter_and_scene
    h, w = cv2.imread(str(images[0])).shape[:2]
    masks = tmp_path / "masks"
    masks.mkdir()
    for k, image in enumerate(images):
        mask = np.zeros((h, w), np.uint8)
        mask[k * 5:h // 2 + k * 5, w // 4:w // 2] = 255
        cv2.imwrite(str(masks / f"{image.stem}.png"), mask)
    box = [w // 8, h // 8, w // 2, h // 2]
    for region, given in ((",".join(map(str, box)), lambda image: box),
                          (str(masks), lambda image: str(masks / f"{image.stem}.png"))):
        out = tmp_path / f"run-{len(region)}"
        result = run_cli("explain", ex.bundle.path, images[0].parent, "--method", "recipro", "--target", "1",
                         "--region", region, "--out", out)
        assert result.returncode == 0, result.stderr
        written = json.loads((out / "results.json").read_text())
        rows = written["results"]
        assert len(rows) == len(images) and written["settings"]["layer"] == ex.bundle.layers
        for r in rows:
            e = ex.explain(r["image"], "recipro", target=1, region=given(Path(r["image"])))
            (record,), s = r["targets"], e.items[0][0]
            assert record["region"] in ("box", "mask") and record["region_pixels"] == s.pixels
            assert record["energy_in_region"] == pytest.approx((s.saliency * s.region).sum() / s.saliency.sum(),
                                                               abs=1e-4)
            fields = {k: v for k, v in record.items() if k != "overlay"}      # the CLI's record is the Python one
            assert fields == pytest.approx(e.records()[0][0], abs=1e-4)
    result = run_cli("explain", ex.bundle.path, images[0], "--region", "left", "--out", tmp_path / "bad")
    assert_one_line_error(result, "--region 'left' is neither")
    result = run_cli("explain", tiny_bundle.path, images[0], "--region", "1,2", "--out", tmp_path / "cls")
    assert_one_line_error(result, "--region is for segmenters")
    result = run_cli("explain", tiny_bundle.path, images[0], "--box", "1,2,30,40:1", "--conf", "0.5", "--out",
                     tmp_path / "box")          # detector flags on a classifier, then on a segmenter: refused
    assert_one_line_error(result, "--box and --conf are for detectors; this bundle is a classification model")
    result = run_cli("explain", ex.bundle.path, images[0], "--classes", "1", "--out", tmp_path / "classes")
    assert_one_line_error(result, "--classes is for detectors; this bundle is a segmentation model")


def test_a_segmenter_kept_at_batch_one_fuses_from_python_with_the_explainers_map(tmp_path):
    """`cam_infer.fuse.fuse` on a segmenter's bundle writes the segmenter's fused model (before: a TypeError from
    the classifier's check), and on a bundle kept at batch 1 its check runs one image per call (before: ONNX
    Runtime's batch error). The fused map equals the Explainer's; classifier options are refused in one line."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from cam_infer import CamInferError
    from cam_infer.bundle.segmentation import split_segmenter
    from cam_infer.bundle.verify import random_images
    from cam_infer.fuse import fuse
    model = onnx.load(SEGMENTER)
    graph = model.graph
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    batch.ClearField("dim_param")
    batch.dim_value = 1
    relu = next(n for n in graph.node if n.op_type == "Relu")       # its output mixed with the batch's mean
    for node in graph.node:
        node.input[:] = ["bound" if name == relu.output[0] else name for name in node.input]
    at = list(graph.node).index(relu) + 1
    graph.node.insert(at, helper.make_node("ReduceMean", [relu.output[0]], ["batch_mean"], axes=[0], keepdims=1))
    graph.node.insert(at + 1, helper.make_node("Sub", [relu.output[0], "batch_mean"], ["centred"]))
    graph.node.insert(at + 2, helper.make_node("Add", [relu.output[0], "centred"], ["bound"]))
    del graph.value_info[:]
    onnx.save(model, tmp_path / "bound.onnx")
    bundle = split_segmenter(tmp_path / "bound.onnx", out=tmp_path / "b", labels=LABELS,
                             preprocessing=SHAPES_PREPROCESSING)
    assert bundle.manifest["batch"] == "fixed" and bundle.fixed_batch == 1
    fused = fuse(bundle, "activation")
    declared = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                for v in (fused.graph.input[0], *fused.graph.output)]
    assert [shape[0] for shape in declared] == [1, 1, 1]    # saliency's batch is the input's (before: N)
    session = ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
    x = random_images(bundle.preprocessing, 1, seed=2)
    _, saliency = session.run(None, {session.get_inputs()[0].name: x})
    h, w = bundle.input_shape[1:]
    expected = Explainer(bundle, backend="onnxruntime").explain(x, "activation", target=0, region=[0, 0, w, h])
    np.testing.assert_allclose(saliency[0], expected.items[0][0].saliency, rtol=0, atol=1e-3)
    with pytest.raises(CamInferError, match="are for classifiers; a segmentation bundle's fused map is class-agnostic"):
        fuse(bundle, "activation", top_classes=2)


def test_a_class_the_mask_does_not_hold_has_no_true_region_metrics(segmenter_and_scene, tmp_path):
    """A region the model finds for a class absent from the ground truth is not scored as a miss in the true region
    (energy 0 against a baseline of 0, pointing 0): its row has no truth metrics and the means leave it out."""
    from cam_infer.audit.masks import write_label_image
    from cam_infer.segmentation.audit import audit_image, run_segmentation_audit

    ex, images = segmenter_and_scene
    image = images[0]
    classes = [s.class_id for s in ex.explain(image, "recipro", target="all").items[0]]
    masks = tmp_path / "masks"
    masks.mkdir()
    labels = np.zeros((128, 128), np.uint8)
    labels[ex.explain(image, "recipro", target=classes[0]).items[0][0].region] = classes[0]
    write_label_image(masks / image.name, labels)                                # the first class only
    rows = audit_image(ex, image, ["recipro"], "all", masks, {})
    assert [r["class_id"] for r in rows] == classes
    assert rows[0]["truth_energy"] > rows[0]["truth_fraction"] > 0
    assert all("truth_energy" not in r for r in rows[1:])
    write_label_image(masks / image.name, np.zeros((128, 128), np.uint8))       # the mask holds no object
    rows = audit_image(ex, image, ["recipro"], "all", masks, {})
    assert all("truth_energy" not in r and "truth_pointing" not in r and "truth_fraction" not in r for r in rows)
    assert all("energy" in r for r in rows)                                      # the predicted region's stay
    summary = run_segmentation_audit(ex.bundle.path, [image], ["recipro"], tmp_path / "audit", masks=masks,
                                     target="all", progress=False)
    assert "truth_energy" not in summary["methods"]["recipro"]
    assert summary["methods"]["recipro"]["regions"] == len(classes)


def test_a_pixel_region_of_an_image_smaller_than_the_input_is_outlined_on_it(segmenter_and_scene):
    """The model's pixel chosen for a pixel of a 50² image (128² input) lies between two original pixel centres'
    samples: thresholding its bilinear samples at 0.5 outlined nothing; it is drawn where its centre falls."""
    import cv2

    from cam_infer.images import load_image
    from cam_infer.segmentation.overlay import region_on_image

    ex, images = segmenter_and_scene
    small = cv2.resize(load_image(images[0]), (50, 50), interpolation=cv2.INTER_AREA)
    e = ex.explain([small], "recipro", region=(20, 30))
    s = e.items[0][0]
    assert s.pixels == 1 and s.source == "pixel"
    on_image = region_on_image(ex.bundle.preprocessing, s.region, small.shape[:2])
    assert np.argwhere(on_image).tolist() == [[30, 20]]
    picture = e.overlay(0, 0)
    top = picture.shape[0] - small.shape[0]
    drawn = np.all(picture[top:, :small.shape[1]] == COLOURS[0], axis=2)
    assert drawn[28:33, 18:23].any()


def test_a_segmenter_audit_whose_masks_changed_since_is_refused_not_resumed(segmenter_and_scene, tmp_path):
    """As for boxes: a label image corrected in the masks folder between two runs made the second a resume, scoring
    the images done before against the old truth and the rest against the new."""
    import os

    from cam_infer import CamInferError
    from cam_infer.audit.masks import write_label_image
    from cam_infer.segmentation.audit import run_segmentation_audit

    ex, images = segmenter_and_scene
    masks = tmp_path / "masks"
    masks.mkdir()
    write_label_image(masks / images[0].name, np.zeros((128, 128), np.uint8))
    run = lambda: run_segmentation_audit(ex.bundle.path, [images[0]], ["activation"], tmp_path / "audit",
                                         masks=masks, progress=False)
    run()
    run()                                                                       # unchanged: resumed
    labels = np.zeros((128, 128), np.uint8)
    labels[:64] = 1
    write_label_image(masks / images[0].name, labels)
    stat = (masks / images[0].name).stat()
    os.utime(masks / images[0].name, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(CamInferError, match=r"holds an audit with other settings \(masks_sha256: .* then, .* now\)"):
        run()
