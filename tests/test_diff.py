"""`cam-infer diff A B IMAGES`: two deployed classifiers compared per image and method. Checked on a real
quantization (the zoo's int8 MobileNetV2 against its float re-derivation) with every number recomputed from the
unsplit models and a NumPy twin; a model against itself (exactly 1); ONNX Runtime against OpenVINO at float32
(≈ 1); an interrupted run resumed to the bytes of an uninterrupted one; bad input refused in one line."""

from __future__ import annotations

import csv
import importlib.util
import json
import pickle
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli

import cam_infer.parallel as parallel
from conftest import SHARED, STABLE_IMAGES, needs_shared
from cam_infer import CamInferError, Explainer
from cam_infer.diff import Side, run_diff
from cam_infer.jobs.journal import JOURNAL
from cam_infer.metrics.uncertainty import bootstrap_interval
from cam_infer.numerics import softmax
from cam_infer.outputs import LOCK_NAME
from cam_infer.parallel import InProcess
from cam_infer.tools.demo import embedded_bundle_path, embedded_detector_path
from cam_infer.tools.synthetic import write_scenes

SHAPES, DETECTOR = embedded_bundle_path(), embedded_detector_path()
FP32 = SHARED / "models" / "mobilenetv2-fp32-dequant.onnx"
INT8 = SHARED / "deployed" / "mobilenetv2-12-int8.onnx"
PHOTOS = SHARED / "images"
METHODS = ("recipro", "eigen")
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray is not installed (pip install 'cam-infer[ray]')")


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """NumPy twin of Spearman: Pearson of the ranks of |a| and |b|, equal values given their ranks' mean."""
    def ranks(m):
        values = np.abs(m).ravel()
        order = np.empty(values.size)
        order[np.argsort(values)] = np.arange(values.size)
        _, group = np.unique(values, return_inverse=True)
        return (np.bincount(group, order) / np.bincount(group))[group]
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_scenes(tmp_path_factory.mktemp("diff") / "scenes", "multiple", 5)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """The diff of the float MobileNetV2 (A) and the zoo's int8 one (B) on the photos."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not present")
    out = tmp_path_factory.mktemp("quantized") / "diff"
    return out, run_diff(FP32, INT8, [PHOTOS], out, methods=METHODS, progress=False)


@needs_shared
def test_a_real_quantization_keeps_most_top1_and_similar_but_not_identical_maps(quantized):
    out, summary = quantized
    rows = read_csv(out / "diff.csv")
    images = sorted({r["image"] for r in rows})
    assert len(images) == 12 and len(rows) == 12 * len(METHODS)
    assert summary["top1_agreement"]["mean"] >= 0.75                 # SOURCES.md: 14/17 photos agree
    for method in METHODS:
        spearman = summary["methods"][method]["spearman"]
        assert 0.85 <= spearman["mean"] < 0.999, spearman           # alike, but a quantization is not nothing
        assert spearman["low"] <= spearman["mean"] <= spearman["high"]
        assert summary["methods"][method]["top_iou"]["mean"] < 0.99
    for key in ("spearman", "ssim", "top_iou"):                      # the summary is the CSV's, with intervals
        values = [float(r[key]) for r in rows if r["method"] == "recipro"]
        assert summary["methods"]["recipro"][key] == pytest.approx(vars(bootstrap_interval(values)))
    per_image = {r["image"]: r for r in rows}
    agree = [int(r["top1_agree"]) for r in per_image.values()]
    assert summary["top1_agreement"]["mean"] == pytest.approx(np.mean(agree))
    drifted = [d["spearman"] for d in summary["drifted"]]
    assert drifted == sorted(drifted) and len(drifted) == 12
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 12 * len(METHODS)   # the grid: 12 images x A | B per method
    assert "src='http" not in page and "href=" not in page


@needs_shared
def test_every_number_of_a_row_is_what_the_two_models_give_on_their_own(quantized):
    """One photo, recomputed without the diff: each split model's explanation of A's top-1, the similarity by a
    NumPy twin, and the probabilities from the unsplit files run natively on ONNX Runtime."""
    import onnxruntime as ort

    out, _ = quantized
    photo = PHOTOS / "fruits.jpg"                                    # A: 951 lemon, B: 950 orange
    a, b = Explainer(FP32), Explainer(INT8)
    x = a.preprocess([photo])
    native = {side: softmax(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                            .run(None, {"input": x})[0]) for side, path in (("a", FP32), ("b", INT8))}
    c = int(native["a"][0].argmax())
    for row in (r for r in read_csv(out / "diff.csv") if r["image"] == str(photo)):
        assert int(row["top1_a"]) == c and int(row["top1_b"]) == int(native["b"][0].argmax())
        assert row["class_id"] == ("" if row["class_agnostic"] == "1" else str(c))
        assert float(row["probability_a"]) == pytest.approx(native["a"][0, c], abs=1e-5)
        assert float(row["probability_b"]) == pytest.approx(native["b"][0, c], abs=1e-5)
        target = None if row["class_agnostic"] == "1" else [c]
        s_a = a.explain(x, row["method"], target=target).saliency[0]
        s_b = b.explain(x, row["method"], target=target).saliency[0]
        assert float(row["spearman"]) == pytest.approx(rank_correlation(s_a, s_b), abs=1e-6)


@pytest.mark.parametrize("model", ["shapes", pytest.param("mobilenetv2", marks=needs_shared)])
def test_a_model_against_itself_agrees_everywhere_with_similarity_exactly_one(model, scenes, tmp_path):
    photos = [PHOTOS / name for name in STABLE_IMAGES][:3]
    model, images, n = (SHAPES, [scenes], 5) if model == "shapes" else (FP32, photos, 3)
    summary = run_diff(model, model, images, tmp_path / "self", methods=METHODS, batch_size=2, progress=False)
    rows = read_csv(tmp_path / "self" / "diff.csv")
    assert summary["images"] == n and len(rows) == n * len(METHODS)
    for row in rows:
        assert (row["spearman"], row["ssim"], row["top_iou"]) == ("1.0", "1.0", "1.0")
        assert row["top1_agree"] == "1" and float(row["probability_shift"]) == 0.0
    assert summary["top1_agreement"] == {"mean": 1.0, "low": 1.0, "high": 1.0}
    assert all(summary["methods"][m]["spearman"]["mean"] == 1.0 for m in METHODS)
    assert summary["drifted"] == []                                   # nothing drifted, and the report says so
    page = (tmp_path / "self" / "index.html").read_text()
    assert "none: every image's maps and top-1 are the same on A and B" in page


def test_a_target_is_explained_on_both_sides_and_class_agnostic_maps_name_no_class(scenes, tmp_path):
    run_diff(SHAPES, SHAPES, [scenes], tmp_path / "d", methods=METHODS, target="cross", progress=False)
    rows = read_csv(tmp_path / "d" / "diff.csv")
    assert {(r["class_id"], r["label"]) for r in rows if r["method"] == "recipro"} == {("3", "cross")}
    assert {(r["class_id"], r["label"], r["class_agnostic"]) for r in rows if r["method"] == "eigen"} == {("", "", "1")}


def center_cropping_shapes(folder) -> str:
    """The embedded ShapesNet, but resizing the shorter side to 128 and cropping the centre (its own: squashing)."""
    shutil.copytree(SHAPES, folder)
    manifest = json.loads((folder / "bundle.json").read_text())
    manifest["preprocessing"].update(crop="center", resize=128)
    (folder / "bundle.json").write_text(json.dumps(manifest))
    return str(folder)


def test_models_that_see_an_image_differently_are_compared_on_the_original_image(scenes, tmp_path):
    """A squashes a 128x160 photo to 128x128, B crops its centre: each map is put back where its model saw the photo
    (A's stretched over it, B's in the middle 128 columns, 0 beside) and the two are compared there."""
    rgb = np.pad(cv2.cvtColor(cv2.imread(str(sorted(scenes.glob("*.png"))[0])), cv2.COLOR_BGR2RGB),
                 ((0, 0), (16, 16), (0, 0)), constant_values=128)
    photo = tmp_path / "wide.png"
    cv2.imwrite(str(photo), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cropping = center_cropping_shapes(tmp_path / "cropping")
    summary = run_diff(SHAPES, cropping, [photo], tmp_path / "d", methods=("recipro",), progress=False)
    assert summary["protocol"]["compared_on"] == \
        "the part of the original image either model saw, at 224 px (long side)"
    a, b = Explainer(SHAPES), Explainer(cropping)
    s_a = a.explain(a.preprocess([rgb]), "recipro").saliency[0]
    c = int(a.explain(a.preprocess([rgb]), "recipro").targets[0])
    s_b = b.explain(b.preprocess([rgb]), "recipro", target=[c]).saliency[0]
    back_a = cv2.resize(s_a, (160, 128), interpolation=cv2.INTER_LINEAR)
    back_b = np.zeros((128, 160), np.float32)
    back_b[:, 16:144] = s_b
    row = read_csv(tmp_path / "d" / "diff.csv")[0]
    assert float(row["spearman"]) == pytest.approx(rank_correlation(back_a, back_b), abs=1e-6)
    assert float(row["spearman"]) < 0.99                        # they did see the photo differently


def test_the_pixels_neither_model_saw_do_not_make_unrelated_maps_alike(tmp_path):
    """Two center-cropping models of different input sizes both leave a wide photo's sides unseen: 0 in both maps
    put back, those pixels tied at the bottom of both rankings and gave unrelated maps a Spearman of 0.85. They are
    left out: unrelated maps score near 0, and a map against itself (put back by the other model's geometry) still
    near 1."""
    from types import SimpleNamespace

    from cam_infer.bundle import Bundle
    from cam_infer.diff.work import comparable, sees_alike
    from cam_infer.metrics.similarity import spearman

    small = center_cropping_shapes(tmp_path / "small")
    large = tmp_path / "large"
    shutil.copytree(small, large)
    manifest = json.loads((large / "bundle.json").read_text())
    manifest["preprocessing"].update(resize=150)                  # the same 128 px input, a wider view of the centre
    (large / "bundle.json").write_text(json.dumps(manifest))
    a, b = (SimpleNamespace(bundle=Bundle.load(p)) for p in (small, large))
    assert not sees_alike(a.bundle, b.bundle)
    rng = np.random.default_rng(0)
    smooth = [cv2.resize(rng.random((4, 4)).astype(np.float32), (128, 128)) for _ in range(40)]
    unrelated = [spearman(*comparable(smooth[i], smooth[i + 20], a, b, (300, 450, 3), False)) for i in range(20)]
    assert abs(np.mean(unrelated)) < 0.2, np.mean(unrelated)
    m_a, m_b = comparable(smooth[0], smooth[0], a, a, (300, 450, 3), False)
    assert m_a.shape == m_b.shape and max(m_a.shape) == 224 and spearman(m_a, m_b) == 1.0


@needs_shared
def test_onnxruntime_against_openvino_at_float32_gives_nearly_the_same_maps(tmp_path):
    photos = [PHOTOS / name for name in list(STABLE_IMAGES)[:3]]
    summary = run_diff(Side(str(FP32), "onnxruntime"), Side(str(FP32), "openvino", "f32"), photos, tmp_path / "rt",
                       methods=METHODS, progress=False)
    assert summary["protocol"]["b"]["backend"] == "openvino" and summary["protocol"]["b"]["precision"] == "f32"
    assert summary["top1_agreement"]["mean"] == 1.0
    assert summary["absolute_probability_shift"]["mean"] < 1e-4
    for method in METHODS:
        for key in ("spearman", "ssim"):
            assert summary["methods"][method][key]["low"] > 0.99, (method, key, summary["methods"][method][key])


def test_a_paired_difference_is_real_only_beyond_rounding_and_over_more_than_one_image():
    """ONNX Runtime against OpenVINO on one model: per image recipro's Spearman 1 - 3e-10, cam's 1 - 1e-12, and
    the interval of their difference excluded 0: 'real difference: yes' for rounding. One image: its difference is
    an interval of width 0, which excluded 0 too."""
    from cam_infer.diff.report import summarise

    def rows(images, spearman):
        return [{"image": f"{i}.png", "method": m, "spearman": v(i), "ssim": 1.0, "top_iou": 1.0, "top1_a": 1,
                 "top1_b": 1, "top1_agree": 1, "probability_shift": 0.0, "degenerate_a": 0, "degenerate_b": 0,
                 "pair": ""} for i in range(images) for m, v in spearman.items()]

    rounding = {"cam": lambda i: 1 - 1e-12 * (i % 3), "recipro": lambda i: 1 - 3e-10 - 1e-10 * (i % 4)}
    assert not summarise(rows(12, rounding), ("cam", "recipro"), {}, [])["paired_spearman"]["cam - recipro"]["differs"]
    one = summarise(rows(1, {"cam": lambda i: 0.86, "recipro": lambda i: 0.80}), ("cam", "recipro"), {}, [])
    paired = one["paired_spearman"]["cam - recipro"]
    assert paired["images"] == 1 and not paired["differs"]
    real = {"cam": lambda i: 0.9 + 0.01 * (i % 3), "recipro": lambda i: 0.8 + 0.01 * (i % 4)}
    assert summarise(rows(12, real), ("cam", "recipro"), {}, [])["paired_spearman"]["cam - recipro"]["differs"]


class Interrupted(Exception):
    pass


class StopsAfter(InProcess):
    """This process's runner, stopped after `k` results as a killed run is."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def map(self, work, items):
        for i, result in enumerate(super().map(work, items)):
            if i == self.k:
                raise Interrupted
            yield result


def files_of(out) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in (JOURNAL, LOCK_NAME)}


def test_an_interrupted_diff_resumes_to_the_bytes_of_an_uninterrupted_one(scenes, tmp_path, monkeypatch):
    def run(out):
        return run_diff(SHAPES, SHAPES, [scenes], out, methods=METHODS, batch_size=2, progress=False)

    run(tmp_path / "whole")
    with monkeypatch.context() as patched:
        patched.setattr(parallel, "make_runner", lambda *args, **kwargs: StopsAfter(1))
        with pytest.raises(Interrupted):
            run(tmp_path / "cut")
    journal = tmp_path / "cut" / JOURNAL
    lines = journal.read_text().splitlines(keepends=True)
    assert len(lines) == 1 + 1                                        # the settings, then the first batch
    assert len(read_csv(tmp_path / "cut" / "diff.csv")) == 2 * len(METHODS)   # written as it went
    summary = run(tmp_path / "cut")
    assert files_of(tmp_path / "cut") == files_of(tmp_path / "whole")
    assert summary["images"] == 5 and summary["redone"] == []


# --- bad input: one line each ------------------------------------------------------------------------------


def relabelled_shapes(folder) -> str:
    shutil.copytree(SHAPES, folder)
    manifest = json.loads((folder / "bundle.json").read_text())
    manifest["labels"] = ["circle", "square", "triangle", "plus"]
    (folder / "bundle.json").write_text(json.dumps(manifest))
    return str(folder)


def broken_model(folder) -> str:
    folder.mkdir()
    (folder / "broken.onnx").write_bytes(b"not a model")
    return str(folder / "broken.onnx")


@pytest.mark.parametrize("b, message", [
    (lambda tmp: str(DETECTOR), "model B: '.*' is a detection model; cam-infer diff compares classifiers"),
    (relabelled_shapes, "different labels: class 3 is 'cross' in A, 'plus' in B"),
    (broken_model, "model B: .*broken.onnx"),
    (lambda tmp: str(tmp / "missing"), "model B: bundle folder '.*missing' does not exist"),
])
def test_models_that_cannot_be_compared_are_refused_in_one_line(b, message, scenes, tmp_path):
    with pytest.raises(CamInferError, match=message) as refused:
        run_diff(SHAPES, b(tmp_path / "b"), [scenes], tmp_path / "out", methods=METHODS, progress=False)
    assert "\n" not in str(refused.value)


@needs_shared
def test_models_of_different_class_counts_are_refused_by_the_cli_in_one_line(scenes, tmp_path):
    result = run_cli("diff", SHAPES, FP32, scenes, "--out", tmp_path / "out")
    result.stderr = "".join(line for line in result.stderr.splitlines(keepends=True)
                            if not line.startswith("split "))            # the model file's split, announced once
    assert_one_line_error(result, "different class counts: A has 4, B 1000")


def test_a_missing_image_is_refused_and_an_unreadable_one_is_listed_while_the_others_are_done(scenes, tmp_path):
    with pytest.raises(CamInferError, match="'.*nowhere.png' does not exist"):
        run_diff(SHAPES, SHAPES, [tmp_path / "nowhere.png"], tmp_path / "out", methods=METHODS, progress=False)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    files = sorted(scenes.glob("*.png"))[:2] + [broken]
    summary = run_diff(SHAPES, SHAPES, files, tmp_path / "out", methods=METHODS, progress=False)
    assert summary["images"] == 2 and [e["image"] for e in summary["errors"]] == [str(broken)]
    result = run_cli("diff", SHAPES, SHAPES, broken, "--out", tmp_path / "none")      # nothing left to compare
    assert result.returncode == 1 and "0 images: top-1 agreement -" in result.stdout
    assert result.stderr.strip().splitlines() == [f"cam-infer: error: 1 image(s) could not be read and were skipped, "
                                                  f"e.g. {summary['errors'][0]['error']}"]


@pytest.mark.integration
@needs_shared
def test_the_cli_writes_a_report_that_a_browser_renders(quantized, tmp_path):
    out, _ = quantized
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt install chromium) to check the page")
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    page = (out / "index.html").as_uri()
    dom = subprocess.run(common + ["--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img") == 12 * len(METHODS) and "top-1 agreement" in dom and dom.count("<svg") == 3
    shot = tmp_path / "page.png"
    subprocess.run(common + [f"--screenshot={shot}", "--window-size=1200,1400", page], capture_output=True, timeout=120)
    picture = cv2.imread(str(shot))
    assert picture is not None and len(np.unique(picture.reshape(-1, 3), axis=0)) > 500   # text, charts, maps


@pytest.mark.slow
def test_worker_processes_write_the_files_of_a_run_in_this_process(scenes, tmp_path):
    for out, workers in (("here", None), ("workers", 2)):
        run_diff(SHAPES, Side(str(SHAPES), "openvino"), [scenes], tmp_path / out, methods=METHODS, batch_size=2,
                 workers=workers, progress=False)
    assert files_of(tmp_path / "workers") == files_of(tmp_path / "here")


@needs_ray
def test_a_ray_worker_on_another_node_gets_both_models_and_compares_as_here(scenes):
    """A Ray actor where the bundle folders do not exist is sent both models' files, and does the same work."""
    from cam_infer.diff.work import DiffWork
    from cam_infer.parallel import ExplainerSpec
    from cam_infer.parallel.ray_cluster import RayWorker, bundle_files

    work = DiffWork(ExplainerSpec(str(SHAPES)), ExplainerSpec(str(SHAPES), "openvino"), METHODS, {}, None, True)
    elsewhere = DiffWork(ExplainerSpec("/nowhere/a"), ExplainerSpec("/nowhere/b", "openvino"), METHODS, {}, None, True)
    worker = RayWorker(pickle.dumps(elsewhere), {"spec_a": bundle_files(SHAPES), "spec_b": bundle_files(SHAPES)})
    assert all((Path(spec.bundle) / "bundle.json").is_file() for spec in (worker.work.spec_a, worker.work.spec_b))
    assert worker.work.spec_b.backend == "openvino"
    batch = [(path, path.name, METHODS, None) for path in sorted(scenes.glob("*.png"))[:2]]
    here = work(batch)
    there = pickle.loads(worker({"item": np.array([pickle.dumps(batch)], dtype=object)})["result"][0])
    assert there == here and len(here["rows"]) == 2 * len(METHODS)


def test_a_node_keeps_one_copy_of_each_bundle_however_many_actors_start(tmp_path, monkeypatch):
    """Actors (and restarted actors, and later runs) on one node share the bundle's copy named by its content."""
    import tempfile
    from cam_infer.parallel.ray_cluster import bundle_files, materialise

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    files = bundle_files(SHAPES)
    first, again = materialise(files), materialise(dict(reversed(files.items())))
    assert again == first and bundle_files(first) == files
    other = materialise({**files, "bundle.json": files["bundle.json"] + b" "})
    assert other != first and bundle_files(first) == files
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])
    (first / "features.onnx").unlink()                      # a temp cleaner took one file: the copy is mended
    assert materialise(files) == first and bundle_files(first) == files
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])


@pytest.mark.integration
@needs_ray
def test_a_local_ray_cluster_writes_the_files_of_a_run_in_this_process(scenes, tmp_path):
    for out, ray in (("here", None), ("ray", "local")):
        run_diff(SHAPES, Side(str(SHAPES), "openvino"), [scenes], tmp_path / out, methods=METHODS, batch_size=2,
                 ray=ray, workers=2 if ray else None, progress=False)
    assert files_of(tmp_path / "ray") == files_of(tmp_path / "here")


def test_a_diff_rerun_with_an_option_at_its_default_resumes_and_another_value_is_refused(scenes, tmp_path):
    """As explain's and audit's reruns: the options are compared as they take effect."""
    out = tmp_path / "diff"
    common = ["diff", SHAPES, SHAPES, scenes, "--methods", "recipro", "--out", out]
    assert run_cli(*common).returncode == 0
    rows = (out / "diff.csv").read_text()
    again = run_cli(*common, "--option", "recipro.score=prob")
    assert again.returncode == 0, again.stderr
    assert (out / "diff.csv").read_text() == rows
    assert_one_line_error(run_cli(*common, "--option", "recipro.score=logit"),
                          'options.recipro.score: "prob" then, "logit" now')


def test_a_flat_map_on_one_side_has_no_similarity_and_ranks_first_among_the_drifted():
    """A constant map has no ranking and no top 20 %: against a map hot at the top it scored IoU 1.0 and SSIM 0.79
    (its ties taken in row order) and entered the means. Now no similarity, counted apart, and listed first."""
    from cam_infer.diff.report import summarise
    from cam_infer.diff.work import similarities
    hot_top = np.zeros((16, 16), np.float32)
    hot_top[:3] = 1
    flat = np.full((16, 16), 0.5, np.float32)
    assert similarities(hot_top, flat, flat=True) == {"spearman": None, "ssim": None, "top_iou": None}
    assert similarities(hot_top, hot_top, flat=False)["top_iou"] == 1.0

    def row(image, spearman, degenerate_b=0):
        values = {"spearman": spearman, "ssim": spearman, "top_iou": spearman}
        return {"image": image, "method": "recipro", "top1_a": 0, "top1_b": 0, "top1_agree": 1,
                "probability_shift": 0.0, "degenerate_a": 0, "degenerate_b": degenerate_b, "pair": f"{image}.png",
                **values}
    rows = [row("a.png", 0.9), row("b.png", 0.5), row("c.png", None, degenerate_b=1), row("d.png", 1.0)]
    summary = summarise(rows, ["recipro"], {}, [])
    method = summary["methods"]["recipro"]
    assert method["images"] == 4 and method["compared"] == 3 and method["degenerate_b"] == 1
    assert method["spearman"]["mean"] == pytest.approx((0.9 + 0.5 + 1.0) / 3)
    assert [d["image"] for d in summary["drifted"]] == ["c.png", "b.png", "a.png"]     # d.png is unchanged
    assert summary["drifted"][0]["spearman"] is None and summary["drifted"][0]["methods"]["recipro"]["flat"] == "B"
