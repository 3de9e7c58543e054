"""`cam-infer explain`: overlays and results.json from image folders, bad files, resume, user errors."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli, without_progress

from cam_infer import Explainer, split_onnx
from cam_infer.methods import GRADIENT_FREE
from cam_infer.jobs.folders import overlay_names
from cam_infer.runs import explain_files
from tiny_onnx import tiny_cnn


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Readable images in every storage form users have, plus two files that are not images."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (90, 120, 3), np.uint8)
    cv2.imwrite(str(folder / "colour.jpg"), colour)
    cv2.imwrite(str(folder / "gray.png"), colour[..., 0])
    cv2.imwrite(str(folder / "alpha.png"), np.dstack([colour, np.full((90, 120), 200, np.uint8)]))
    cv2.imwrite(str(folder / "deep.png"), colour.astype(np.uint16) * 257)
    (folder / "notes.jpg").write_text("not an image\n")
    (folder / "empty.png").write_bytes(b"")
    (folder / "readme.txt").write_text("ignored: not an image suffix\n")
    return folder


@pytest.fixture(scope="module")
def labelled_bundle(tmp_path_factory, tiny_bundle):
    labels = tmp_path_factory.mktemp("labels") / "labels.txt"
    labels.write_text("cat\ndog\nfox\nowl\n")
    return split_onnx(tiny_cnn(), layer="auto", out=tmp_path_factory.mktemp("b") / "b", labels=labels)


def test_folder_run_writes_every_overlay_and_reports_bad_files(tmp_path, photos, labelled_bundle):
    result = run_cli("explain", labelled_bundle.path, photos, "--method", "all", "--out", tmp_path / "out",
                     "--backend", "openvino", "--batch-size", "3")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(without_progress(result.stderr)) == 1 and "2 image(s) could not be read" in result.stderr
    assert "28 overlays (4 images x 7 methods)" in result.stdout
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(e["image"].rsplit("/", 1)[1] for e in data["errors"]) == ["empty.png", "notes.jpg"]
    assert data["settings"]["backend"].startswith("openvino CPU (throughput")     # a folder run: every stream busy
    assert len(data["results"]) == 4 * len(GRADIENT_FREE)
    for record in data["results"]:
        picture = cv2.imread(str(tmp_path / "out" / record["overlay"]))
        assert picture.shape[0] > 90 and picture.shape[1] > 120   # the 90x120 original, a caption and a colour bar
        agnostic = record.get("class_agnostic", False)
        assert agnostic == (record["method"] in ("activation", "eigen", "entropy"))
        shown = "predicted_" if agnostic else ""             # a class-agnostic map explains no class
        assert record[f"{shown}label"] == ["cat", "dog", "fox", "owl"][record[f"{shown}class_id"]]
        assert 0 < record[f"{shown}score"] <= 1 and record["milliseconds"] > 0 and record["degenerate"] is False
    names = {r["overlay"] for r in data["results"]}
    assert {f"{stem}_{m}.jpg" for stem in ("colour", "gray", "alpha", "deep") for m in GRADIENT_FREE} == names


def test_results_match_the_python_api(tmp_path, photos, labelled_bundle):
    ex = Explainer(labelled_bundle)
    explain_files(ex, [photos / "colour.jpg", photos / "gray.png"], ["recipro"], tmp_path, target="fox",
                  batch_size=2, overlays="png")
    records = json.loads((tmp_path / "results.json").read_text())["results"]
    e = ex.explain(ex.preprocess([photos / "colour.jpg", photos / "gray.png"]), "recipro", target=2)
    assert [r["class_id"] for r in records] == [2, 2]
    np.testing.assert_allclose([r["score"] for r in records], e.scores, atol=1e-6)
    on_images = ex.explain([photos / "colour.jpg", photos / "gray.png"], "recipro", target=2)
    np.testing.assert_array_equal(on_images.saliency, e.saliency)
    written = cv2.cvtColor(cv2.imread(str(tmp_path / "colour_recipro.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(written, on_images.overlay(0))


def test_an_interrupted_run_resumes_without_redoing_work(tmp_path, photos, tiny_bundle):
    ex = Explainer(tiny_bundle)
    good = [photos / n for n in ("colour.jpg", "gray.png", "alpha.png", "deep.png")]
    explain_files(ex, good[:2], ["eigen", "activation"], tmp_path)
    first = json.loads((tmp_path / "results.json").read_text())["results"]
    (tmp_path / "gray_activation.jpg").unlink()              # lost overlay: redone
    explain_files(ex, good, ["eigen", "activation"], tmp_path)
    final = json.loads((tmp_path / "results.json").read_text())["results"]
    kept = [r for r in first if r["overlay"] != "gray_activation.jpg"]
    assert final[:len(kept)] == kept                         # earlier records untouched (same milliseconds)
    assert sorted(r["overlay"] for r in final) == sorted(
        f"{n}_{m}.jpg" for n in ("colour", "gray", "alpha", "deep") for m in ("eigen", "activation"))


def test_other_settings_in_the_same_folder_need_force(tmp_path, photos, tiny_bundle):
    image = photos / "colour.jpg"
    assert run_cli("explain", tiny_bundle.path, image, "--method", "recipro", "--out", tmp_path).returncode == 0
    assert_one_line_error(run_cli("explain", tiny_bundle.path, image, "--method", "recipro", "--target", "1",
                                  "--out", tmp_path), "holds results of a run with other settings")
    result = run_cli("explain", tiny_bundle.path, image, "--method", "recipro", "--target", "1", "--out", tmp_path,
                     "--force")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "results.json").read_text())["results"][0]["class_id"] == 1


def test_an_option_given_at_its_default_resumes_and_another_value_is_refused_naming_it(tmp_path, photos,
                                                                                      tiny_bundle):
    """`--option score=prob` is what recipro does without it, yet the rerun that gave it was refused as other
    settings. The settings are compared as they take effect; a value that changes the maps is still refused."""
    image, out = photos / "colour.jpg", tmp_path / "out"
    assert run_cli("explain", tiny_bundle.path, image, "--method", "recipro,eigen", "--out", out).returncode == 0
    done = (out / "colour_recipro.jpg").stat().st_mtime_ns
    again = run_cli("explain", tiny_bundle.path, image, "--method", "recipro,eigen", "--option", "score=prob",
                    "--option", "centered=false", "--out", out)
    assert again.returncode == 0, again.stderr
    assert (out / "colour_recipro.jpg").stat().st_mtime_ns == done
    assert_one_line_error(run_cli("explain", tiny_bundle.path, image, "--method", "recipro,eigen", "--option",
                                  "score=logit", "--out", out),
                          'other settings (options.recipro.score: "prob" then, "logit" now)')


def test_a_method_added_on_the_command_line_runs_alone_and_one_left_out_is_refused(tmp_path, photos, tiny_bundle):
    """From another working folder, with the image folder given relative to it: eigen's overlays are kept, only
    activation runs; a rerun without eigen is told to give it."""
    out = tmp_path / "out"
    assert run_cli("explain", tiny_bundle.path, photos / "colour.jpg", "--method", "eigen", "--out", out,
                   cwd=photos).returncode == 0
    done = (out / "colour_eigen.jpg").stat().st_mtime_ns
    added = run_cli("explain", tiny_bundle.path, "colour.jpg", "--method", "eigen,activation", "--out", out,
                    cwd=photos)
    assert added.returncode == 0, added.stderr
    assert (out / "colour_eigen.jpg").stat().st_mtime_ns == done
    results = json.loads((out / "results.json").read_text())
    assert [(r["image"], r["method"]) for r in results["results"]] == [(str(photos / "colour.jpg"), "eigen"),
                                                                       (str(photos / "colour.jpg"), "activation")]
    assert set(results["settings"]["options"]) == {"eigen", "activation"}
    assert_one_line_error(run_cli("explain", tiny_bundle.path, photos / "colour.jpg", "--method", "activation",
                                  "--out", out), "holds results of a run of methods eigen, activation; give --method "
                                                 "each of them (left out: eigen;")


def test_options_reach_only_the_methods_that_take_them(tmp_path, photos, tiny_bundle):
    result = run_cli("explain", tiny_bundle.path, photos / "colour.jpg", "--method", "score,eigen",
                     "--option", "top_k=3", "--option", "centered=true", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["options"] == {
        "score": {"top_k": 3}, "eigen": {"centered": True}}


def test_all_skips_cam_when_the_head_is_not_gap_linear(tmp_path, photos):
    bundle = split_onnx(tiny_cnn(), layer="relu2", out=tmp_path / "b")
    result = run_cli("explain", bundle.path, photos / "colour.jpg", "--method", "all", "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    assert "skipped cam" in result.stdout and "6 overlays" in result.stdout
    assert_one_line_error(run_cli("explain", bundle.path, photos / "colour.jpg", "--method", "cam", "--out",
                                  tmp_path / "o2"), "needs a head that is global average pooling")


@pytest.mark.parametrize("extra, fragment", [
    (["--method", "gradcam++x"], "unknown method 'gradcam++x'"),
    (["--target", "7"], "class 7 is out of range: this model has classes 0..3"),
    (["--target", "zebra"], "unknown class label 'zebra'"),
    (["--option", "top_k"], "--option takes key=value"),
    (["--option", "window=3"], "no chosen method has an option 'window'"),
    (["--option", "top_k=0", "--method", "score"], "top_k must be a positive integer"),
    (["--colormap", "rainbow"], "unknown colormap 'rainbow'"),
    (["--batch-size", "0"], "batch size must be at least 1"),
    (["--backend", "openvino", "--device", "NPU"], "OpenVINO device 'NPU' is not available"),
])
def test_user_errors_print_one_line(tmp_path, photos, labelled_bundle, extra, fragment):
    args = ["explain", labelled_bundle.path, photos / "colour.jpg", "--out", tmp_path / "o", *extra]
    assert_one_line_error(run_cli(*args), fragment)


def test_missing_inputs_are_one_line_errors(tmp_path, tiny_bundle):
    assert_one_line_error(run_cli("explain", tiny_bundle.path, tmp_path / "nope.jpg", "--out", tmp_path / "o"),
                          "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("explain", tiny_bundle.path, tmp_path / "empty", "--out", tmp_path / "o"),
                          "no images found")


def test_overlay_names_stay_unique(tmp_path):
    paths = [tmp_path / "a" / "cat.jpg", tmp_path / "b" / "cat.jpg", tmp_path / "b" / "cat.png",
             tmp_path / "c" / "b_cat.jpg"]
    names = overlay_names(paths)
    assert list(names.values()) == ["cat", "b_cat", "b_cat-2", "c_b_cat"]


def test_an_output_folder_inside_the_image_folder_is_no_input(tmp_path, labelled_bundle):
    """The run's own overlays were explained again on every resume (chelsea_recipro_recipro.jpg), and its journal,
    lock and results.json were listed as skipped files."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8))
    for extra in ((), (), ("--force",)):
        result = run_cli("explain", labelled_bundle.path, images, "--method", "eigen", "--out", images / "out", *extra)
        assert result.returncode == 0, result.stderr
        records = json.loads((images / "out" / "results.json").read_text())
        assert [r["image"] for r in records["results"]] == [str(images / "a.png")] and records["skipped"] == []
    assert sorted(p.name for p in (images / "out").glob("*.jpg")) == ["a_eigen.jpg"]
    # --out the image folder itself is refused; a folder above it (the images in a subfolder) works
    assert_one_line_error(run_cli("explain", labelled_bundle.path, images, "--method", "eigen", "--out", images),
                          f"--out '{images}' is the image folder")
    project = tmp_path / "project"
    (project / "images").mkdir(parents=True)
    shutil.copy(images / "a.png", project / "images" / "a.png")
    above = run_cli("explain", labelled_bundle.path, project / "images", "--method", "eigen", "--out", project)
    assert above.returncode == 0, above.stderr
    records = json.loads((project / "results.json").read_text())["results"]
    assert [r["image"] for r in records] == [str(project / "images" / "a.png")]


def test_force_removes_the_pictures_of_the_run_it_starts_over(tmp_path, labelled_bundle):
    """--force removed results.json and the journal but left the earlier run's overlays beside the new ones:
    the folder held pictures results.json does not list. A file of the user's in the folder stays."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b"):
        cv2.imwrite(str(images / f"{name}.png"), np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8))
    out = tmp_path / "out"
    assert run_cli("explain", labelled_bundle.path, images, "--method", "recipro,eigen", "--out", out).returncode == 0
    (out / "notes.txt").write_text("mine\n")
    assert len(list(out.glob("*.jpg"))) == 4
    again = run_cli("explain", labelled_bundle.path, images / "a.png", "--method", "activation", "--overlays", "png",
                    "--out", out, "--force")
    assert again.returncode == 0, again.stderr
    listed = {r["overlay"] for r in json.loads((out / "results.json").read_text())["results"]}
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted([*listed, "notes.txt",
                                                                                          "results.json"])


def test_a_run_made_before_the_layer_was_recorded_resumes(tmp_path, labelled_bundle):
    """results.json's settings gained the layer; a folder of an earlier release (its journal without it) resumed
    only with --force, which starts over. It resumes: the bundle's hashes already pin the cut."""
    from cam_infer.jobs.journal import JOURNAL
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8))
    out = tmp_path / "out"
    assert run_cli("explain", labelled_bundle.path, images, "--method", "eigen", "--out", out).returncode == 0
    lines = (out / JOURNAL).read_text().splitlines()
    header = json.loads(lines[0])
    del header["settings"]["layer"]
    (out / JOURNAL).write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    again = run_cli("explain", labelled_bundle.path, images, "--method", "eigen", "--option", "centered=true",
                    "--out", out)
    assert "other settings (options.eigen.centered" in again.stderr    # still compared: everything but the layer
    again = run_cli("explain", labelled_bundle.path, images, "--method", "eigen", "--out", out)
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "results.json").read_text())["settings"]["layer"] == labelled_bundle.layers


def test_earlier_runs_inside_the_image_folder_are_no_input_and_symlinked_folders_are_followed(tmp_path,
                                                                                             labelled_bundle):
    """A second run with another --out inside the image folder explained the first run's captioned overlays as
    photos (and an audit averaged them in); a dataset of symlinked subfolders was explained partly, without a word.
    Now earlier runs' folders (their journal) are left out and listed, and symlinked folders followed, once each."""
    images = tmp_path / "images"
    (images / "batch").mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / "a.png"), rng.integers(0, 256, (40, 50, 3), np.uint8))
    cv2.imwrite(str(images / "batch" / "b.png"), rng.integers(0, 256, (40, 50, 3), np.uint8))
    for run in ("run1", "run2"):
        result = run_cli("explain", labelled_bundle.path, images, "--method", "eigen", "--out", images / run)
        assert result.returncode == 0, result.stderr
        records = json.loads((images / run / "results.json").read_text())
        assert sorted(r["image"] for r in records["results"]) == [str(images / "a.png"), str(images / "batch/b.png")]
    assert records["skipped"] == [str(images / "run1")] and "skipped 1 folder(s) of earlier runs" in result.stdout
    dataset = tmp_path / "dataset"                    # photos laid out as symlinked folders, one a loop
    dataset.mkdir()
    (dataset / "linked").symlink_to(images / "batch", target_is_directory=True)
    (dataset / "loop").symlink_to(dataset, target_is_directory=True)
    result = run_cli("explain", labelled_bundle.path, dataset, "--method", "eigen", "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    records = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["image"] for r in records["results"]] == [str(dataset / "linked" / "b.png")]


@pytest.mark.parametrize("command, theirs", [("explain", "maps"), ("explain", "results.json"), ("audit", "overlays"),
                                             ("audit", "summary.json")])
def test_a_folder_holding_someone_else_s_files_is_refused_with_or_without_force(tmp_path, labelled_bundle, command,
                                                                              theirs):
    """--force deleted a user's own maps/ or overlays/ folder; without it, their results.json was overwritten."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8))
    out = tmp_path / "project"
    out.mkdir()
    if "." in theirs:
        (out / theirs).write_text('{"my": "experiment"}')
    else:
        (out / theirs).mkdir()
        (out / theirs / "slide1.txt").write_text("precious")
    methods = ("--method" if command == "explain" else "--methods", "eigen")
    for extra in ((), ("--force",)):
        result = run_cli(command, labelled_bundle.path, images, *methods, "--out", out, *extra)
        assert_one_line_error(result, f"'{out}' holds {theirs} but no earlier run of cam-infer")
    assert (out / theirs / "slide1.txt").read_text() == "precious" if "." not in theirs else \
        (out / theirs).read_text() == '{"my": "experiment"}'


@pytest.mark.parametrize("workers", [(), ("--workers", "2")])
def test_a_broken_link_in_an_image_folder_is_recorded_not_left_out(tmp_path, labelled_bundle, workers):
    """A link to a photo that was moved or deleted was left out of a folder run without a word: not explained,
    not an error, not skipped, so the run said it was complete. Now it is an unreadable image, named."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8))
    (images / "moved.jpg").symlink_to(tmp_path / "gone.jpg")
    result = run_cli("explain", labelled_bundle.path, images, "--method", "eigen", "--out", tmp_path / "o", *workers)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    records = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["image"] for r in records["results"]] == [str(images / "a.png")]
    assert records["errors"] == [{"image": str(images / "moved.jpg"),
                                  "error": f"'{images / 'moved.jpg'}' is a link to '{tmp_path / 'gone.jpg'}', which "
                                           "does not exist"}]


def test_hidden_files_in_an_image_folder_are_skipped_not_errors(tmp_path, labelled_bundle):
    """A folder copied from a Mac holds a `._name.jpg` beside each photo (its metadata, no picture): each was an
    unreadable image, an error line and exit 1. Hidden files are now skipped and listed as such."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8))
    (images / "._a.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (images / "notes.txt").write_text("not an image\n")
    result = run_cli("explain", labelled_bundle.path, images, "--method", "eigen", "--out", tmp_path / "o")
    assert result.returncode == 0 and "skipped 1 file(s) that are not images and 1 hidden file(s)" in result.stdout
    records = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["image"] for r in records["results"]] == [str(images / "a.jpg")] and records["errors"] == []
    assert sorted(records["skipped"]) == sorted([str(images / "._a.jpg"), str(images / "notes.txt")])
