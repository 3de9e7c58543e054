"""The one folder-run driver (`cam_infer.jobs`): explain and audit, classifier and detector, resume from one
journal the same way (after an interruption, a torn last line, a changed image) to the files of an
uninterrupted run; one atomic write; runners that open whatever explainer the bundle's task calls for."""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import cv2
import pytest

import cam_infer.parallel as parallel
from cam_infer import Explainer
from cam_infer.audit import AuditOptions, run_audit
from cam_infer.tools.demo import embedded_bundle_path, embedded_detector_path
from cam_infer.detection.audit import run_detection_audit
from cam_infer.detection.runs import explain_detection_files
from cam_infer.jobs.journal import JOURNAL
from cam_infer.outputs import LOCK_NAME, write_atomically
from cam_infer.parallel import OPEN_AT_MOST, ExplainerSpec, InProcess
from cam_infer.runs import explain_files
from cam_infer.tools.synthetic import write_detection_scenes, write_scenes

SHAPES, DETECTOR = embedded_bundle_path(), embedded_detector_path()
METHODS = ("recipro", "eigen")


def summary_of(result) -> dict:
    """What a run says it redid: explain returns `Results`, audit its summary."""
    return {"redone": result.redone if hasattr(result, "redone") else result["redone"]}


RUNS = {
    "explain-classifier": lambda images, out: explain_files(Explainer(SHAPES), [images], list(METHODS), out,
                                                            batch_size=2, progress=False),
    "explain-detector": lambda images, out: explain_detection_files(Explainer(DETECTOR), [images],
                                                                    list(METHODS), out, progress=False),
    "audit-classifier": lambda images, out: run_audit(SHAPES, [images], AuditOptions(METHODS, ("adcc", "pointing")),
                                                      out, boxes=images / "boxes.json", progress=False,
                                                      batch_size=2),
    "audit-detector": lambda images, out: run_detection_audit(DETECTOR, [images], list(METHODS), out,
                                                              boxes=images / "boxes.json", progress=False),
}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    return {"classifier": write_scenes(root / "shapes", "multiple", 5), "detector": write_detection_scenes(
        root / "detection", 4)}


def images_for(job: str, scenes, tmp_path) -> Path:
    """A copy of the job's scenes (a test may change one)."""
    images = tmp_path / "images"
    shutil.copytree(scenes[job.split("-")[1]], images)
    return images


def outputs(out: Path) -> dict:
    """Every file a run leaves for its user: bytes, results.json without its timings, summary.json without
    what it redid."""
    files = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p.name not in (JOURNAL, LOCK_NAME)):
        data = path.read_bytes()
        if path.name == "results.json":
            data = json.loads(data)
            for record in data["results"]:
                record.pop("milliseconds")
        elif path.name == "summary.json":
            data = json.loads(data)
            data.pop("redone")
        files[path.relative_to(out).as_posix()] = data
    return files


class Interrupted(Exception):
    pass


class StopsAfter(InProcess):
    """This process's runner, stopped after `k` results as a killed run is."""

    def __init__(self, k: int):
        self.k = k

    def map(self, work, items):
        for i, result in enumerate(super().map(work, items)):
            if i == self.k:
                raise Interrupted
            yield result


@pytest.mark.parametrize("job", RUNS)
def test_an_interrupted_run_with_a_torn_journal_resumes_to_the_files_of_an_uninterrupted_one(job, scenes, tmp_path,
                                                                                           monkeypatch):
    images, run = images_for(job, scenes, tmp_path), RUNS[job]
    run(images, tmp_path / "whole")
    with monkeypatch.context() as patched:
        patched.setattr(parallel, "make_runner", lambda *args, **kwargs: StopsAfter(2))
        with pytest.raises(Interrupted):
            run(images, tmp_path / "cut")
    journal = tmp_path / "cut" / JOURNAL
    lines = journal.read_text().splitlines(keepends=True)
    assert len(lines) == 1 + 2                                            # the settings, then 2 finished items
    journal.write_text("".join(lines[:-1]) + lines[-1][:40])             # killed while writing the second
    run(images, tmp_path / "cut")
    assert outputs(tmp_path / "cut") == outputs(tmp_path / "whole")
    kept = journal.read_text()
    assert all(json.loads(line) for line in kept.splitlines())           # the torn line is gone, not appended to
    again = run(images, tmp_path / "cut")                                # nothing left to do
    assert journal.read_text() == kept and summary_of(again) == {"redone": []}
    assert outputs(tmp_path / "cut") == outputs(tmp_path / "whole")


@pytest.mark.parametrize("job", RUNS)
def test_every_job_redoes_an_image_whose_file_changed(job, scenes, tmp_path):
    images, run = images_for(job, scenes, tmp_path), RUNS[job]
    run(images, tmp_path / "out")
    changed = sorted(p for p in images.iterdir() if p.suffix == ".png")[-1]    # the last: its rows stay last
    picture = cv2.imread(str(changed))
    cv2.imwrite(str(changed), picture[:, ::-1])
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    assert summary_of(run(images, tmp_path / "out")) == {"redone": [str(changed)]}
    run(images, tmp_path / "fresh")
    assert outputs(tmp_path / "out") == outputs(tmp_path / "fresh")


def test_a_journal_of_other_settings_is_refused_in_one_line_and_force_starts_over(scenes, tmp_path):
    from cam_infer import CamInferError
    images = images_for("audit-detector", scenes, tmp_path)
    run_detection_audit(DETECTOR, [images], ["eigen"], tmp_path / "out", progress=False)
    with pytest.raises(CamInferError, match=r'holds an audit with other settings \(methods: \["eigen"\] then, '
                                            r'\["recipro"\] now\); choose another --out or pass --force'):
        run_detection_audit(DETECTOR, [images], ["recipro"], tmp_path / "out", progress=False)
    summary = run_detection_audit(DETECTOR, [images], ["recipro"], tmp_path / "out", restart=True, progress=False)
    assert list(summary["methods"]) == ["recipro"]
    assert {p.name.rsplit("__", 1)[1] for p in (tmp_path / "out" / "overlays").iterdir()} == {"recipro.png"}


def test_an_audit_into_a_folder_of_explanations_says_what_the_folder_holds(scenes, tmp_path):
    """The folder's journal was compared as if it held an audit: "holds an audit with other settings (job: explain
    then, audit now)", about a folder that held no audit."""
    from cam_infer import CamInferError

    images = images_for("explain-classifier", scenes, tmp_path)
    RUNS["explain-classifier"](images, tmp_path / "out")
    with pytest.raises(CamInferError, match=r"holds the results of `cam-infer explain`, not an audit; choose another "
                                            r"--out or pass --force"):
        RUNS["audit-classifier"](images, tmp_path / "out")


@pytest.mark.parametrize("job", ["explain-classifier", "explain-detector"])
def test_a_resume_removes_the_pictures_of_images_removed_from_the_folder(job, scenes, tmp_path):
    """A resume dropped a removed image's records but left its overlays in the folder, as pictures of the run that
    results.json did not list, and a later --force no longer knew them: the folder ended as a fresh run's would."""
    images, run = images_for(job, scenes, tmp_path), RUNS[job]
    run(images, tmp_path / "out")
    removed = sorted(p for p in images.iterdir() if p.suffix == ".png")[0]
    removed.unlink()
    run(images, tmp_path / "out")
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(removed.stem + "__")]
    run(images, tmp_path / "fresh")
    assert outputs(tmp_path / "out") == outputs(tmp_path / "fresh")


AUDITS = {
    "audit-classifier": lambda bundle, images, out: run_audit(bundle, [images], AuditOptions(("recipro",), ("adcc",)),
                                                              out, progress=False),
    "audit-detector": lambda bundle, images, out: run_detection_audit(bundle, [images], ["recipro"], out,
                                                                      progress=False),
}


@pytest.mark.parametrize("job", AUDITS)
def test_an_audit_of_a_bundle_whose_graphs_changed_since_is_refused_not_resumed(job, scenes, tmp_path):
    """An audit's settings named the bundle by its path alone: a bundle made again at that path (another model, another
    layer) resumed the folder, and metrics.csv held rows of both models under the new one's protocol."""
    import onnx
    from cam_infer import CamInferError
    from cam_infer.bundle.manifest import sha256_of

    images, bundle = images_for(job, scenes, tmp_path), tmp_path / "bundle"
    shutil.copytree(SHAPES if job == "audit-classifier" else DETECTOR, bundle)
    AUDITS[job](bundle, images, tmp_path / "out")
    head = onnx.load(bundle / "head.onnx")                    # the same bundle made again from other weights
    weights = max(head.graph.initializer, key=lambda w: len(w.raw_data) or len(w.float_data))
    weights.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weights) * 0.5, weights.name))
    onnx.save(head, bundle / "head.onnx")
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["graphs"]["head"]["sha256"] = sha256_of(bundle / "head.onnx")
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(CamInferError, match=r"holds an audit with other settings \(graphs\.head: .* then, .* now\)"):
        AUDITS[job](bundle, images, tmp_path / "out")


@pytest.mark.parametrize("job", ["audit-classifier", "audit-detector"])
def test_an_audit_whose_boxes_file_changed_since_is_refused_not_resumed(job, scenes, tmp_path):
    """An audit's settings named the boxes file by its path alone: boxes corrected in that file resumed the folder, the
    images done before kept their pointing and energy against the old boxes and the new ones were measured against
    the new."""
    from cam_infer import CamInferError

    images, run = images_for(job, scenes, tmp_path), RUNS[job]
    run(images, tmp_path / "out")
    boxes = json.loads((images / "boxes.json").read_text())
    first = next(iter(boxes))
    boxes[first] = boxes[first][:1]
    (images / "boxes.json").write_text(json.dumps(boxes))
    with pytest.raises(CamInferError, match=r"holds an audit with other settings \(boxes_sha256: .* then, .* now\)"):
        run(images, tmp_path / "out")


@pytest.mark.parametrize("damage", ["[1, 2]", '{"rows": []}', '{"inputs": {}, "rows": [{"x": 1}]}'])
def test_a_damaged_journal_line_is_redone_from_and_a_damaged_header_is_refused_in_one_line(damage, scenes, tmp_path):
    """A journal line that parsed but was no entry (a list, no inputs, a row without its image) stopped the resume with
    an AttributeError or KeyError, and a first line that was not UTF-8 with a UnicodeDecodeError."""
    from cam_infer import CamInferError

    images, run = images_for("explain-classifier", scenes, tmp_path), RUNS["explain-classifier"]
    run(images, tmp_path / "whole")
    shutil.copytree(tmp_path / "whole", tmp_path / "out")
    journal = tmp_path / "out" / JOURNAL
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:2]) + damage + "\n" + "".join(lines[3:]))
    run(images, tmp_path / "out")
    assert outputs(tmp_path / "out") == outputs(tmp_path / "whole")
    journal.write_bytes(b"\xff\xfe" + journal.read_bytes())
    with pytest.raises(CamInferError, match=r"holds a damaged journal \(\.cam-infer\.journal: its first line is not a "
                                            r"run's settings\); choose another --out or pass --force"):
        run(images, tmp_path / "out")
    explain_files(Explainer(SHAPES), [images], list(METHODS), tmp_path / "out", batch_size=2, progress=False,
                  restart=True)
    assert outputs(tmp_path / "out") == outputs(tmp_path / "whole")


def test_an_atomic_write_that_fails_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_atomically(path, "old")
    write_atomically(path, b"new")
    assert path.read_text() == "new"

    def fails(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fails)
    with pytest.raises(OSError):
        write_atomically(path, "half")
    assert path.read_text() == "new"


def test_a_process_keeps_few_explainers_open_the_least_recently_used_let_go():
    assert OPEN_AT_MOST >= 2
    parallel._OPENED.clear()
    specs = [ExplainerSpec(f"/bundles/{i}") for i in range(OPEN_AT_MOST + 1)]
    explainers = [object() for _ in specs]
    for spec, explainer in zip(specs[:-1], explainers):
        spec.remember(explainer)
    assert specs[0].open() is explainers[0]                 # used again: now the most recent
    specs[-1].remember(explainers[-1])
    assert list(parallel._OPENED) == [*specs[2:-1], specs[0], specs[-1]]    # specs[1], the least recent, let go


def test_runners_are_task_neutral_and_open_what_the_bundle_is():
    folder = Path(parallel.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "detection" not in (node.module or ""), f"{path.name} imports {node.module}"
    parallel._OPENED.clear()
    assert ExplainerSpec(str(DETECTOR)).open().task.name == "detection"
    assert ExplainerSpec(str(SHAPES)).open().task.name == "classification"


class Watches(InProcess):
    """This process's runner, noting after each result whether `path` is on disk yet."""

    def __init__(self, path: Path):
        self.path, self.seen = path, []

    def map(self, work, items):
        for result in super().map(work, items):
            yield result
            self.seen.append(self.path.exists())


@pytest.mark.parametrize("job, growing", [("explain-classifier", "results.json"), ("audit-detector", "metrics.csv")])
def test_a_runs_files_show_its_first_result_at_once(job, growing, scenes, tmp_path, monkeypatch):
    runner = Watches(tmp_path / "out" / growing)
    monkeypatch.setattr(parallel, "make_runner", lambda *args, **kwargs: runner)
    RUNS[job](images_for(job, scenes, tmp_path), tmp_path / "out")
    assert runner.seen[0], f"{growing} was not written after the first result"


@pytest.mark.parametrize("overlays", ["jpg", "none"])
def test_results_read_image_by_image_whatever_the_batch_size(scenes, tmp_path, overlays):
    """Rows were method by method within a batch, so a run resumed at another --batch-size wrote another order;
    now each image's rows come together in the run's method order, and the array store's maps follow their rows."""
    from cam_infer.jobs.map_store import read_maps

    explainer = Explainer(embedded_bundle_path(), backend="onnxruntime")
    records = {}
    for batch in (1, 3):
        out = tmp_path / f"b{batch}"
        explain_files(explainer, [scenes["classifier"]], ["activation", "cam"], out, batch_size=batch,
                      progress=False, overlays=overlays)
        rows = json.loads((out / "results.json").read_text())["results"]
        records[batch] = [(r["image"], r["method"], r["class_id"]) for r in rows]
        if overlays == "none":
            maps = read_maps(out)
            single = explainer.explain([rows[3]["image"]], rows[3]["method"]).saliency[0]
            assert abs(maps[(rows[3]["image"], rows[3]["method"])] - single).max() <= 1 / 255 + 1e-6
    assert records[1] == records[3] and [m for _, m, _ in records[3][:4]] == ["activation", "cam"] * 2


def test_a_resume_never_gives_a_new_image_the_files_of_one_done_before(tmp_path):
    """b/x.png explained, then a_later/x.png added: the new image was named first (sorted) and took x_…, the
    overlay of b/x.png was overwritten and two records named one file. A name, once given, stays the image's."""
    from cam_infer.tools.synthetic import scene

    folder = tmp_path / "photos"
    for sub, index in (("b", 0), ("a_later", 1)):
        (folder / sub).mkdir(parents=True)
        cv2.imwrite(str(folder / sub / "x.png"), scene("multiple", 0, index).image[..., ::-1])
    moved = tmp_path / "a_later"
    shutil.move(folder / "a_later", moved)
    explainer = Explainer(embedded_bundle_path(), backend="onnxruntime")
    out = tmp_path / "out"
    explain_files(explainer, [folder], ["activation"], out, progress=False)
    first = {p.name: p.read_bytes() for p in out.glob("*.jpg")}
    shutil.move(moved, folder / "a_later")
    explain_files(explainer, [folder], ["activation"], out, progress=False)
    rows = json.loads((out / "results.json").read_text())["results"]
    files = [r["overlay"] for r in rows]
    assert len(rows) == 2 and len(set(files)) == 2 and all((out / f).is_file() for f in files)
    assert {p.name: p.read_bytes() for p in out.glob("*.jpg") if p.name in first} == first   # b/x.png's kept


def test_one_folder_given_two_ways_is_one_folder(scenes, tmp_path, monkeypatch):
    """Given relative, then absolute, the same images were explained again and results.json held each twice."""
    explainer = Explainer(embedded_bundle_path(), backend="onnxruntime")
    monkeypatch.chdir(scenes["classifier"].parent)
    relative = Path(scenes["classifier"].name)
    explain_files(explainer, [relative], ["activation"], tmp_path / "o", progress=False)
    before = (tmp_path / "o" / "results.json").read_text()
    explain_files(explainer, [scenes["classifier"].resolve()], ["activation"], tmp_path / "o", progress=False)
    rows = json.loads((tmp_path / "o" / "results.json").read_text())["results"]
    assert len(rows) == 5 and json.loads(before)["results"] == rows


def pictures(out: Path) -> dict[str, int]:
    """Every picture a run wrote (overlays, thumbnails), with its modification time: a picture done again is new."""
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".jpg", ".png")}


@pytest.mark.parametrize("job", RUNS)
def test_a_run_resumed_from_another_folder_through_a_link_redoes_nothing_and_ends_as_an_uninterrupted_one(
        job, scenes, tmp_path, monkeypatch):
    """The journal knew an image by its path as typed: the same command from another working folder (or with the
    folder given through a link) found none of its images done and did every one again."""
    images_for(job, scenes, tmp_path)
    (tmp_path / "link").symlink_to(tmp_path / "images", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    run = RUNS[job]
    monkeypatch.chdir(tmp_path)
    run(Path("images"), Path("whole"))
    with monkeypatch.context() as patched:
        patched.setattr(parallel, "make_runner", lambda *args, **kwargs: StopsAfter(2))
        with pytest.raises(Interrupted):
            run(Path("images"), Path("cut"))
    done = pictures(tmp_path / "cut")
    monkeypatch.chdir(tmp_path / "elsewhere")
    resumed = run(Path("../link"), Path("../cut"))
    assert summary_of(resumed) == {"redone": []} and done
    assert {name: when for name, when in pictures(tmp_path / "cut").items() if name in done} == done
    assert outputs(tmp_path / "cut") == outputs(tmp_path / "whole")      # the images as the first run wrote them
    journal = (tmp_path / "cut" / JOURNAL).read_text()
    run(tmp_path.resolve() / "images", tmp_path / "cut")                  # absolute, from a third folder: nothing
    assert (tmp_path / "cut" / JOURNAL).read_text() == journal


@pytest.mark.parametrize("job", ["explain-classifier", "explain-detector", "audit-classifier"])
def test_a_journal_written_before_images_were_known_by_their_file_resumes(job, scenes, tmp_path, monkeypatch):
    """A journal of the previous release (no "keys"; a detector's options one dict for all its methods) resumes
    from the folder it was written in, doing nothing again, and is rewritten in the new form."""
    images_for(job, scenes, tmp_path)
    monkeypatch.chdir(tmp_path)
    run = RUNS[job]
    run(Path("images"), Path("out"))
    journal = tmp_path / "out" / JOURNAL
    header, *lines = map(json.loads, journal.read_text().splitlines())
    if job == "explain-detector":
        header["settings"]["options"] = {}
    for line in lines:
        line.pop("keys", None)
    journal.write_text("".join(json.dumps(line) + "\n" for line in [header, *lines]))
    done = pictures(tmp_path / "out")
    assert summary_of(run(Path("images"), Path("out"))) == {"redone": []}
    assert pictures(tmp_path / "out") == done
    assert all("keys" in json.loads(line) for line in journal.read_text().splitlines()[1:])


def test_a_method_added_to_a_finished_run_runs_alone_over_every_image_and_the_results_hold_both(scenes, tmp_path):
    """Adding a method was refused as other settings: it runs over every image, the earlier method's pictures and
    records stay as they were, and the folder ends as one run of both would have left it."""
    explainer = Explainer(SHAPES, backend="onnxruntime")
    explain_files(explainer, [scenes["classifier"]], ["eigen"], tmp_path / "out", progress=False)
    first = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    done = pictures(tmp_path / "out")
    added = explain_files(explainer, [scenes["classifier"]], ["eigen", "activation"], tmp_path / "out", progress=False)
    assert added.records[:len(first)] == first and len(added.records) == 2 * len(first)
    assert {name: when for name, when in pictures(tmp_path / "out").items() if name in done} == done
    explain_files(explainer, [scenes["classifier"]], ["eigen", "activation"], tmp_path / "both", progress=False)
    whole, grown = outputs(tmp_path / "both"), outputs(tmp_path / "out")
    key = lambda record: (record["image"], record["method"])                                  # noqa: E731
    assert sorted(whole.pop("results.json")["results"], key=key) == sorted(grown.pop("results.json")["results"],
                                                                           key=key)
    assert grown == whole


def test_a_run_that_leaves_out_a_method_the_folder_holds_is_refused_naming_it(scenes, tmp_path):
    from cam_infer import CamInferError
    explainer = Explainer(SHAPES, backend="onnxruntime")
    explain_files(explainer, [scenes["classifier"]], ["eigen", "activation"], tmp_path / "out", progress=False)
    with pytest.raises(CamInferError, match=r"holds results of a run of methods eigen, activation; give --method "
                                            r"each of them \(left out: eigen;"):
        explain_files(explainer, [scenes["classifier"]], ["activation", "recipro"], tmp_path / "out", progress=False)
