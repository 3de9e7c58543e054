"""`cam-infer audit` on the synthetic scenes with the embedded ShapesNet: rows against direct metric
calls, summary against the CSV, resume after a real kill, bad images and files, and the report in
a real browser."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import cv2
import numpy as np
import pytest

from conftest import ROOT
from helpers import assert_one_line_error, run_cli

from cam_infer import CamInferError, Explainer
from cam_infer.audit import AuditOptions, audit_image, run_audit
from cam_infer.audit.report import SHOWN
from cam_infer.tools.demo import embedded_bundle_path
from cam_infer.jobs.journal import JOURNAL
from cam_infer.metrics import adcc, box_localisation, energy_pointing, pointing_hit
from cam_infer.tools.synthetic import generate

SHAPES = embedded_bundle_path()


def write_scenes(folder, n: int, split: str = "multiple"):
    result = run_cli("synthetic", "--out", str(folder), "--split", split, "-n", str(n))
    assert result.returncode == 0, result.stderr
    return json.loads((folder / "boxes.json").read_text())


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    return folder, write_scenes(folder, 6)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_synthetic_command_writes_scenes_and_their_boxes(scenes):
    folder, boxes = scenes
    expected = generate("multiple", 6)
    assert sorted(boxes) == [f"multiple_{i:05d}.png" for i in range(6)]
    for i, scene in enumerate(expected):
        image = cv2.cvtColor(cv2.imread(str(folder / f"multiple_{i:05d}.png")), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(image, scene.image)
        assert boxes[f"multiple_{i:05d}.png"] == [{"box": list(map(int, b)), "label": scene.class_name}
                                                   for b in scene.boxes]


def test_rows_equal_direct_metric_calls(scenes):
    folder, boxes = scenes
    options = AuditOptions(methods=("recipro", "eigen"), tolerance=15.0)
    image = folder / "multiple_00002.png"
    result = audit_image(SHAPES, image, options, boxes[image.name])
    explainer = Explainer(SHAPES)
    x = explainer.preprocess([image])
    assert [r["method"] for r in result["rows"]] == ["recipro", "eigen", "random-map", "centre-gaussian"]
    assert [r["baseline"] for r in result["rows"]] == [0, 0, 1, 1]
    for row in result["rows"][:2]:
        e = explainer.explain(x, row["method"])
        assert row["class_id"] == int(e.targets[0]) and row["label"] == explainer.bundle.label(row["class_id"])
        own = [b["box"] for b in boxes[image.name] if b["label"] == row["label"]]
        s = e.saliency[0]
        assert row["pointing"] == int(pointing_hit(s, own, 15.0))
        assert row["energy"] == pytest.approx(energy_pointing(s, own))
        assert row["box_iou"] == pytest.approx(box_localisation(s, own, 0.2))
        assert row["adcc"] == pytest.approx(adcc(row["coherency"], row["complexity"], row["average_drop"]))
        assert 0 <= row["deletion"] <= row["insertion"] <= 1
    assert set(result["thumbnails"]) == {"recipro", "eigen"}
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in result["thumbnails"].values())


def test_insertion_and_deletion_curves_of_several_images_run_together_with_the_same_values(scenes, monkeypatch):
    """AuditWork sends the curves of a batch's images to the runtime in one call: each AUC equals that image's
    own curve run alone (`causal_curve`), on ONNX Runtime and on OpenVINO in its throughput mode."""
    from cam_infer.audit import work
    from cam_infer.metrics import auc, causal_curve
    from cam_infer.parallel import ExplainerSpec

    folder, boxes = scenes
    images = [folder / f"multiple_{i:05d}.png" for i in range(3)]
    options = AuditOptions(methods=("recipro",), metrics=("insertion", "deletion"), baselines=())
    calls = []
    counted = work.class_probabilities
    monkeypatch.setattr(work, "class_probabilities", lambda ex, x, t: calls.append(len(x)) or counted(ex, x, t))
    for backend in ("onnxruntime", "openvino"):
        calls.clear()
        spec = work.audit_spec(SHAPES, replace(options, backend=backend))
        out = work.AuditWork(spec, options)([(image, image.name, None, None) for image in images])
        assert calls == [3 * 2 * (options.steps + 1)]                    # one call: 3 images x 2 curves
        explainer = ExplainerSpec.open(spec)
        for image, row in zip(images, out["rows"]):
            x = explainer.preprocess([image])
            e = explainer.explain(x, "recipro")
            assert row["image"] == str(image) and row["class_id"] == int(e.targets[0])
            for mode, substrate in (("insertion", "blur"), ("deletion", "zeros")):
                alone = auc(causal_curve(explainer, x[0], e.saliency[0], row["class_id"], mode, options.steps,
                                         substrate))
                assert row[mode] == pytest.approx(alone, abs=1e-6)


def test_adcc_re_explanations_of_several_images_run_together_with_the_same_values(scenes, monkeypatch):
    """AuditWork re-explains a batch's explanation images E = x ⊙ S in one call per method (and baseline): each
    row's ADCC fields equal that image's own re-explanation (Poppi et al.'s formulas on direct explain calls),
    on ONNX Runtime and on OpenVINO in its throughput mode, at the input's and at the map's resolution."""
    from cam_infer.audit import work
    from cam_infer.metrics import average_drop, coherency, complexity
    from cam_infer.numerics import probabilities_of
    from cam_infer.parallel import ExplainerSpec
    from cam_infer.postprocess import normalise

    folder, _ = scenes
    images = [folder / f"multiple_{i:05d}.png" for i in range(3)]
    calls = []
    explained = work.explain_variant
    monkeypatch.setattr(work, "explain_variant", lambda ex, x, variant, *a: calls.append((variant, len(x)))
                        or explained(ex, x, variant, *a))
    for backend, at in (("onnxruntime", "input"), ("openvino", "map")):
        options = AuditOptions(methods=("recipro",), metrics=("adcc",), baselines=("random-map",), coherency_at=at)
        calls.clear()
        spec = work.audit_spec(SHAPES, replace(options, backend=backend))
        out = work.AuditWork(spec, options)([(image, image.name, None, None) for image in images])
        assert sorted(c for c in calls if c[1] > 1) == [("random-map", 3), ("recipro", 3)]   # one call a method
        assert len(calls) == 2 * 3 + 2
        explainer = ExplainerSpec.open(spec)
        for row in out["rows"]:
            x = explainer.preprocess([row["image"]])
            e = explained(explainer, x, row["method"], None, options, {})
            again = explained(explainer, (x * e.saliency[:, None]).astype(np.float32), row["method"], e.targets,
                              options, {})
            o = probabilities_of(again.outputs, explainer.bundle.output_kind)[0, e.targets[0]]
            first, second = ((e.saliency[0], again.saliency[0]) if at == "input" else
                             (normalise(e.maps)[0][0], normalise(again.maps)[0][0]))
            assert row["average_drop"] == pytest.approx(float(average_drop(e.scores, o)[0]), abs=1e-6)
            assert row["coherency"] == pytest.approx(coherency(first, second), abs=1e-6)
            assert row["complexity"] == pytest.approx(complexity(first), abs=1e-6)
            assert row["adcc"] == pytest.approx(adcc(row["coherency"], row["complexity"], row["average_drop"]))


@pytest.mark.integration
def test_audit_writes_csv_summary_and_a_page_that_a_browser_renders(scenes, tmp_path):
    folder, _ = scenes
    out = tmp_path / "report"
    result = run_cli("audit", str(SHAPES), str(folder), "--boxes", str(folder / "boxes.json"), "--methods",
                     "recipro,eigen,activation", "--out", str(out), "--tolerance", "15")
    assert result.returncode == 0, result.stderr
    rows = read_csv(out / "metrics.csv")
    baselines = {"random-map", "centre-gaussian", "box-prior"}
    assert len(rows) == 36 and {r["method"] for r in rows} == {"recipro", "eigen", "activation"} | baselines
    assert {r["method"] for r in rows if r["baseline"] == "1"} == baselines
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["baselines"]) == baselines and set(summary["methods"]) == {"recipro", "eigen", "activation"}
    per_row = read_csv(out / "summary.csv")
    for name in [*summary["methods"], *baselines]:             # an interval for every metric of every row
        assert set(summary["intervals"][name]) == {c for c in SHOWN if rows[0].get(c, "") != ""} - {"energy_baseline"}
        for column, found in summary["intervals"][name].items():
            assert found["low"] <= found["mean"] <= found["high"] and found["n"] == 6
            line = next(r for r in per_row if r["name"] == name and r["metric"] == column)
            assert float(line["mean"]) == pytest.approx(found["mean"]) and line["baseline"] == str(int(name in baselines))
    assert len(read_csv(out / "paired.csv")) == sum(map(len, summary["paired"].values())) > 0
    assert summary["protocol"]["tolerance"] == 15.0 and summary["protocol"]["target"] == "predicted"
    assert summary["protocol"]["deletion_substrate"] == "zeros" and summary["protocol"]["steps"] == 28
    for method, means in summary["methods"].items():
        mine = [r for r in rows if r["method"] == method]
        for column in ("adcc", "insertion", "deletion", "pointing", "energy", "box_hit", "average_drop"):
            assert means[column] == pytest.approx(np.mean([float(r[column]) for r in mine]))
        assert means["adcc_of_means"] == pytest.approx(adcc(means["coherency"], means["complexity"],
                                                            means["average_drop"]))
    assert len(list((out / "overlays").glob("*.png"))) == 18
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 18 and page.count("<svg") >= 11
    assert page.count("<tr class=baseline>") == 3 and page.count("class=whisker") == 6 * (page.count("<svg") - 1)
    # every chart has an error bar per row, but ADCC of the means: it is no mean over images
    assert "src='http" not in page and "href=" not in page                         # self-contained
    check_in_browser(out / "index.html", tmp_path)


def check_in_browser(page, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt install chromium) to check the page")
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(common + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<tr") >= 7 + 6 and "ADCC (of means)" in dom and dom.count("<img") == 18
    assert "Paired differences" in dom and dom.count("(baseline)") >= 3
    shot = tmp_path / "page.png"
    subprocess.run(common + [f"--screenshot={shot}", "--window-size=1200,3000", page.as_uri()],
                   capture_output=True, timeout=120)
    picture = cv2.imread(str(shot))
    assert picture is not None and picture.shape[:2] == (3000, 1200)
    colours = len(np.unique(picture.reshape(-1, 3), axis=0))
    assert colours > 500, "the screenshot is nearly blank"                 # text, bars and heat maps drawn


def _images_journaled(journal) -> int:
    """Images in the journal's whole lines (the settings, then one line per batch of images done)."""
    if not journal.exists():
        return 0
    lines = journal.read_text().splitlines(keepends=True)[1:]
    return sum(len(json.loads(line)["inputs"]) for line in lines if line.endswith("\n"))


@pytest.mark.slow
def test_a_killed_audit_resumes_to_the_same_csv(tmp_path):
    folder = tmp_path / "scenes"
    write_scenes(folder, 48, "cluttered")       # six batches of 8, three in flight: work left after the first line
    args = [sys.executable, "-m", "cam_infer", "audit", str(SHAPES), str(folder), "--boxes",
            str(folder / "boxes.json"), "--methods", "recipro,score", "--option", "score.top_k=16"]
    whole = subprocess.run(args + ["--out", str(tmp_path / "whole")], capture_output=True, text=True, cwd=ROOT)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    process = subprocess.Popen(args + ["--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline, killed = time.monotonic() + 300, False
    while time.monotonic() < deadline and process.poll() is None and not killed:
        if _images_journaled(out / JOURNAL) >= 1:          # a batch's line is written
            process.send_signal(signal.SIGKILL)
            killed = True
        time.sleep(0.01)
    if not killed and process.poll() is None:
        process.kill()
        pytest.fail("no batch was journaled within 300 s")
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "summary.json").exists()
    assert 1 <= _images_journaled(out / JOURNAL) < 48                     # some images done, not all
    resumed = subprocess.run(args + ["--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "metrics.csv").read_text() == (tmp_path / "whole" / "metrics.csv").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["recipro"]["images"] == 48


def test_a_torn_last_line_and_a_half_written_image_are_redone(scenes, tmp_path):
    folder, _ = scenes
    options = AuditOptions(methods=("activation", "eigen"), metrics=("adcc",))
    run_audit(SHAPES, [folder], options, tmp_path / "a", progress=False, batch_size=2)
    full = (tmp_path / "a" / "metrics.csv").read_text()
    journal = tmp_path / "a" / JOURNAL
    lines = journal.read_text().splitlines(keepends=True)               # the settings, then one line a batch
    assert len(lines) == 4
    journal.write_text("".join(lines[:2]) + lines[2][:20])              # images 3-4 torn, 5-6 not written
    run_audit(SHAPES, [folder], options, tmp_path / "a", progress=False, batch_size=2)
    assert (tmp_path / "a" / "metrics.csv").read_text() == full


def test_an_unreadable_image_is_reported_and_skipped(scenes, tmp_path):
    folder, _ = scenes
    images = tmp_path / "images"
    shutil.copytree(folder, images)
    (images / "broken.png").write_bytes(b"not a png")
    result = run_cli("audit", str(SHAPES), str(images), "--methods", "activation", "--metrics", "adcc",
                     "--baselines", "none", "--out", str(tmp_path / "r"))
    assert result.returncode == 1 and "report:" in result.stdout          # the others are reported
    assert result.stderr.strip().startswith("cam-infer: error: 1 image(s) could not be read or audited and were "
                                            "skipped")
    assert len(result.stderr.strip().splitlines()) == 1
    assert len(read_csv(tmp_path / "r" / "metrics.csv")) == 6
    errors = json.loads((tmp_path / "r" / "errors.json").read_text())
    assert [e["image"] for e in errors] == [str(images / "broken.png")]
    assert "1 image(s) could not be read" in (tmp_path / "r" / "index.html").read_text()


@pytest.mark.slow
def test_bad_audit_requests_are_one_line_errors(scenes, tmp_path):
    folder, _ = scenes
    base = ["audit", str(SHAPES), str(folder), "--out", str(tmp_path / "r")]
    assert_one_line_error(run_cli(*base, "--methods", "nope"), "unknown method 'nope'")
    assert_one_line_error(run_cli(*base, "--metrics", "speed"), "unknown metric 'speed'")
    assert_one_line_error(run_cli(*base, "--boxes", str(tmp_path / "none.json")), "none.json' does not exist")
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert_one_line_error(run_cli(*base, "--boxes", str(tmp_path / "bad.json")), "must map image files to lists")
    assert_one_line_error(run_cli(*base, "--option", "eigen.x=1", "--methods", "recipro"),
                          "--option takes method.key=value for one of the chosen methods")
    assert_one_line_error(run_cli(*base, "--target", "truth", "--methods", "activation", "--metrics", "adcc"),
                          "target 'truth' needs boxes with exactly one label")
    ok = run_cli(*base, "--methods", "activation", "--metrics", "adcc")
    assert ok.returncode == 0, ok.stderr
    assert_one_line_error(run_cli(*base, "--methods", "eigen", "--metrics", "adcc"),
                          'holds an audit with other settings (options.methods: ["activation"] then, ["eigen"] now); '
                          "choose another --out or pass --force")
    again = run_cli(*base, "--methods", "eigen", "--metrics", "adcc", "--force")
    assert again.returncode == 0 and {r["method"] for r in read_csv(tmp_path / "r" / "metrics.csv")
                                      if r["baseline"] == "0"} == {"eigen"}
    assert_one_line_error(run_cli(*base, "--methods", "eigen", "--baselines", "random-map,sobel"),
                          "unknown baseline 'sobel'")


def test_ground_truth_target_explains_the_labelled_class(scenes, tmp_path):
    folder, boxes = scenes
    summary = run_audit(SHAPES, [folder], AuditOptions(methods=("cam",), metrics=("pointing",), target="truth"),
                        tmp_path / "t", boxes=folder / "boxes.json", progress=False)
    rows = read_csv(tmp_path / "t" / "metrics.csv")
    assert [r["label"] for r in rows] == [boxes[r["image"].split("/")[-1]][0]["label"] for r in rows]
    assert summary["protocol"]["target"] == "truth"
    run_audit(SHAPES, [folder], AuditOptions(methods=("cam",), metrics=("adcc",), target="square"), tmp_path / "s",
              progress=False)
    assert {r["label"] for r in read_csv(tmp_path / "s" / "metrics.csv")} == {"square"}
    # a class some images have no box of: those images have no localisation metrics (they scored 0, so a mean of
    # pointing over every image fell with each image that lacks the class)
    summary = run_audit(SHAPES, [folder], AuditOptions(methods=("cam",), metrics=("pointing", "energy"),
                                                       target="square"), tmp_path / "loc",
                        boxes=folder / "boxes.json", progress=False)
    with_square = [name for name, entries in boxes.items() if any(b["label"] == "square" for b in entries)]
    rows = read_csv(tmp_path / "loc" / "metrics.csv")
    measured = sorted(r["image"].split("/")[-1] for r in rows if r["method"] == "cam" and r["pointing"] != "")
    assert measured == sorted(with_square) and 0 < len(with_square) < len(boxes)
    assert summary["counts"]["cam"]["pointing"] == len(with_square)
    # eigen scores each image's top-1, cam the square: ADCC compares them only where the top-1 is the square
    summary = run_audit(SHAPES, [folder], AuditOptions(methods=("cam", "eigen"), metrics=("adcc",), target="square",
                                                       baselines=()), tmp_path / "pair", progress=False)
    rows = read_csv(tmp_path / "pair" / "metrics.csv")
    square = Explainer(SHAPES).bundle.labels.index("square")
    same = [r for r in rows if r["method"] == "eigen" and int(r["class_id"]) == square]
    (pair,) = summary["paired"]["adcc"]
    assert (pair["a"], pair["b"], pair["n"]) == ("cam", "eigen", len(same)) and len(same) < len(boxes)
    protocol = summary["protocol"]                   # what the numbers depend on, recorded
    assert protocol["class_agnostic"] == ["eigen"] and protocol["baselines"] == []
    assert protocol["preprocessing"] == Explainer(SHAPES).bundle.preprocessing.to_dict()
    assert set(protocol["graphs"]) == {"features", "head"} and protocol["cam_infer"]
    assert protocol["layer"] == Explainer(SHAPES).bundle.layers           # a list, as every other output records it
    with pytest.raises(CamInferError, match="unknown class label 'hexagon'"):
        run_audit(SHAPES, [folder], AuditOptions(methods=("cam",), target="hexagon"), tmp_path / "h")
    assert not (tmp_path / "h").exists()
    with pytest.raises(CamInferError, match="unknown metric"):
        run_audit(SHAPES, [folder], AuditOptions(methods=("cam",), metrics=("x",)), tmp_path / "u")


def test_enhanced_variants_are_audited_next_to_their_base_method(scenes, tmp_path):
    folder, boxes = scenes
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    result = run_cli("audit", SHAPES, folder, "--boxes", tmp_path / "boxes.json", "--methods", "recipro,eigen+evet",
                     "--enhance", "sess", "--enhance-option", "sess.scales=2", "--option", "recipro.score=logit",
                     "--metrics", "adcc,pointing,energy", "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    rows = read_csv(tmp_path / "report" / "metrics.csv")
    assert [r["method"] for r in rows[:3]] == ["recipro", "recipro+sess", "eigen+evet"]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert list(summary["methods"]) == ["recipro", "recipro+sess", "eigen+evet"]
    explainer = Explainer(SHAPES)
    image = folder / "multiple_00001.png"
    x = explainer.preprocess([image])
    e = explainer.explain(x, "recipro", enhance="sess", enhance_options={"scales": 2}, score="logit")
    row = next(r for r in rows if r["method"] == "recipro+sess" and r["image"].endswith(image.name))
    own = [b["box"] for b in boxes[image.name] if b["label"] == row["label"]]
    assert int(row["pointing"]) == int(pointing_hit(e.saliency[0], own, 0.0))
    assert float(row["energy"]) == pytest.approx(energy_pointing(e.saliency[0], own), rel=1e-5)
    assert (tmp_path / "report" / "overlays" / "multiple_00001.png__recipro+sess.png").is_file()
    assert_one_line_error(run_cli("audit", SHAPES, folder, "--methods", "recipro", "--enhance", "sharpen",
                                  "--out", tmp_path / "r2"), "unknown enhancer 'sharpen'")
    assert_one_line_error(run_cli("audit", SHAPES, folder, "--methods", "recipro", "--enhance-option", "sess.scales=2",
                                  "--out", tmp_path / "r3"), "one of the chosen enhancers")


def test_python_and_cli_audit_the_same_default_metrics(scenes, tmp_path):
    """One set of defaults: every metric with boxes; without them the localisation ones are left out, saying so."""
    folder, _ = scenes
    two = tmp_path / "two"
    two.mkdir()
    for name in sorted(p.name for p in folder.glob("*.png"))[:2]:
        shutil.copy(folder / name, two / name)
    (two / "boxes.json").write_text(json.dumps({k: v for k, v in scenes[1].items() if (two / k).exists()}))

    def measured(path):
        return {c for row in read_csv(path) for c, v in row.items() if v != ""}

    for boxes in (None, two / "boxes.json"):
        tag = "boxes" if boxes else "none"
        summary = run_audit(SHAPES, [two], AuditOptions(methods=("activation",)), tmp_path / f"py_{tag}",
                            boxes=boxes, progress=False)
        cli = run_cli("audit", SHAPES, two, "--methods", "activation", "--out", tmp_path / f"cli_{tag}",
                      *(["--boxes", boxes] if boxes else []))
        assert cli.returncode == 0, cli.stderr
        assert measured(tmp_path / f"py_{tag}" / "metrics.csv") == measured(tmp_path / f"cli_{tag}" / "metrics.csv")
        cli_summary = json.loads((tmp_path / f"cli_{tag}" / "summary.json").read_text())
        assert summary["protocol"]["metrics"] == cli_summary["protocol"]["metrics"]
        assert summary["skipped_metrics"] == cli_summary["skipped_metrics"]
        localised = {"pointing", "energy", "box_iou", "box_hit"} & measured(tmp_path / f"py_{tag}" / "metrics.csv")
        page = (tmp_path / f"py_{tag}" / "index.html").read_text()
        if boxes:
            assert summary["protocol"]["metrics"] == ["adcc", "insertion", "deletion", "pointing", "energy", "box"]
            assert localised and summary["skipped_metrics"] == [] and "not measured" not in cli.stdout
        else:
            assert summary["protocol"]["metrics"] == ["adcc", "insertion", "deletion"]
            assert not localised and summary["skipped_metrics"] == ["pointing", "energy", "box"]
            assert [line for line in cli.stdout.splitlines() if line.startswith("not measured: pointing, energy, box")]
            assert "not measured: pointing, energy, box" in page


@pytest.mark.parametrize("content, message", [
    ({"nothere.png": [[1, 2, 30, 40]]}, r"names none of the 6 images \(its keys: 'nothere.png'\)"),
    ({"{first}": [[100, 100, 10, 10]]}, r"box \[100, 100, 10, 10\] is inverted"),
    ({"{first}": [[1, 2]]}, r"a box must be \[x1, y1, x2, y2\] \(numbers\)"),
    ({"{first}": [{"box": [1, "a", 3, 4], "label": "circle"}]}, "a box must be"),
])
def test_a_boxes_file_that_would_measure_nothing_is_one_line(scenes, tmp_path, content, message):
    """Boxes naming none of the images, or a box no pixel is inside, would leave pointing silently unmeasured."""
    folder, _ = scenes
    first = sorted(folder.glob("*.png"))[0].name
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({k.format(first=first): v for k, v in content.items()}))
    with pytest.raises(CamInferError, match=message):
        run_audit(SHAPES, [folder], AuditOptions(methods=("activation",), metrics=("pointing",)), tmp_path / "py",
                  boxes=boxes, progress=False)


def test_a_localisation_metric_asked_for_without_boxes_is_a_one_line_error(scenes, tmp_path):
    folder, _ = scenes
    with pytest.raises(CamInferError, match="metric pointing needs ground-truth boxes"):
        run_audit(SHAPES, [folder], AuditOptions(methods=("activation",), metrics=("adcc", "pointing")),
                  tmp_path / "py", progress=False)
    assert_one_line_error(run_cli("audit", SHAPES, folder, "--methods", "activation", "--metrics", "adcc,pointing",
                                  "--out", tmp_path / "cli"), "metric pointing needs ground-truth boxes")


@pytest.mark.parametrize("tolerance", [-1.0, float("nan"), float("inf")])
def test_a_pointing_tolerance_that_is_not_a_finite_number_from_0_is_refused(tmp_path, tolerance):
    """A negative tolerance made every pointing a miss, and NaN went into summary.json (not JSON)."""
    with pytest.raises(CamInferError, match="tolerance .* must be a finite number from 0"):
        run_audit(SHAPES, [], AuditOptions(methods=("activation",), tolerance=tolerance), tmp_path / "r")
    with pytest.raises(CamInferError, match="grid .* must be a whole number from 0, not -1"):
        run_audit(SHAPES, [], AuditOptions(methods=("activation",)), tmp_path / "r", grid=-1)
    assert not (tmp_path / "r").exists()


def test_thumbnail_names_never_collide():
    """sub/cat.png and a file named sub__cat.png, .p.jpg and p.jpg had one thumbnail each pair, and the report
    showed one image's map for the other."""
    from cam_infer.audit.work import thumbnail_name
    names = ["a/b.png", "a__b.png", ".p.jpg", "p.jpg", "%2Fx.png", "x.png", "a%2Fb.png", "%2E.png", "sub/.p.jpg"]
    assert len({thumbnail_name(n, "recipro") for n in names}) == len(set(names))
    assert thumbnail_name("cat.png", "recipro") == "overlays/cat.png__recipro.png"


def test_an_audit_rerun_with_an_option_at_its_default_resumes_and_another_value_is_refused(scenes, tmp_path):
    """`--option recipro.score=prob` is what recipro does without it: the same audit, nothing redone; a value that
    changes the maps is refused naming it (for a detector's audit too)."""
    folder, boxes = scenes
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    out = tmp_path / "report"
    common = ["audit", SHAPES, folder, "--boxes", tmp_path / "boxes.json", "--methods", "recipro",
              "--metrics", "pointing,energy", "--out", out]
    assert run_cli(*common).returncode == 0
    written = (out / "metrics.csv").read_text()
    journal = (out / JOURNAL).read_text().splitlines()[1:]
    again = run_cli(*common, "--option", "recipro.score=prob")
    assert again.returncode == 0, again.stderr
    assert (out / "metrics.csv").read_text() == written and (out / JOURNAL).read_text().splitlines()[1:] == journal
    assert_one_line_error(run_cli(*common, "--option", "recipro.score=logit"),
                          'options.method_options.recipro.score: "prob" then, "logit" now')
    from cam_infer.tools.demo import embedded_detector_path
    from test_shapes_detector import detector_scenes
    images, truth = detector_scenes(tmp_path / "det", 2)
    detector = ["audit", embedded_detector_path(), images, "--methods", "recipro", "--boxes", truth, "--out",
                tmp_path / "det-report"]
    assert run_cli(*detector).returncode == 0
    assert run_cli(*detector, "--option", "recipro.score=anchor").returncode == 0
    assert_one_line_error(run_cli(*detector, "--option", "recipro.score=match"),
                          "options.recipro.score: \"anchor\" then, \"match\" now")
