"""`cam-infer audit`: every method on every image of a folder, every metric, one report.

    run_audit("bundle/", ["images/"], AuditOptions(methods=("recipro", "eigen")), out="report/",
              boxes="boxes.json")

`work.audit_image` does one image; this driver streams the folder through it, appends each
image's rows to metrics.csv as soon as they exist (a rerun resumes after the last complete image),
writes thumbnails, and at the end summary.json and index.html.

Boxes file (JSON): ``{"photo.jpg": [[x1, y1, x2, y2], ...], "sub/b.png": [{"box": [...], "label": "cat"}]}``,
keyed by the path as given on the command line, by the path relative to a given folder, or by file
name; inclusive pixel coordinates in the original image. A labelled box counts only for maps of
that class; an unlabelled one for any class.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..errors import CamInferError
from ..outputs import SAVE_EVERY, OutputLock, fingerprint, prepare_folder
from ..progress import Progress
from .report import (
    CSV_NAME,
    ERRORS_NAME,
    SETTINGS_NAME,
    SUMMARY_NAME,
    MetricsFile,
    summarise,
    write_atomically,
    skipped_metrics_line,
    write_html,
)
from .work import COLUMNS, LOCALISATION, METRICS, AuditOptions, AuditWork, audit_image, audit_precision, audit_spec

GRID = 48
OVERLAYS = "overlays"
INPUTS_NAME = "inputs.json"


def run_audit(bundle, images, options: AuditOptions, out, *, boxes=None, restart: bool = False, grid: int = GRID,
              progress: bool | None = None, workers=None, ray: str | None = None, threads: int | None = None,
              report=None) -> dict:
    """Audit the images (files and folders); returns the summary. Unreadable images are listed in
    the summary's ``errors`` and skipped. `workers` (N or "auto": processes on this machine), `ray` (a
    Ray address) and `threads` (runtime threads per worker) choose where the images are worked on
    (`cam_infer.parallel`); the files written are the same. `report(line)`, when given, hears what the
    methods will cost before the run starts (`cam_infer.cost`)."""
    from ..bundle import Bundle
    from ..parallel import make_runner
    from ..runs import collect_images

    bundle = Bundle.load(bundle)
    _check_options(bundle, options)
    runner = make_runner(workers, ray, threads)
    found = collect_images(images)
    files = found.files
    truth = load_boxes(boxes, bundle)
    if options.target == "truth" and not truth:
        raise CamInferError("target 'truth' needs boxes with exactly one label per image (--boxes)")
    skipped_metrics = options.skipped_metrics(bool(truth))
    options = options.resolved(bool(truth))
    settings = {"bundle": str(bundle.path.resolve()), "options": options.to_dict(),
                "runs_at": audit_precision(bundle, options),
                "boxes": str(Path(boxes).resolve()) if boxes else None}
    out = prepare_folder(out)
    with OutputLock(out, "audit"):
        _prepare(out, settings, restart)
        metrics = MetricsFile(out / CSV_NAME, options.methods)
        inputs = InputsFile(out / INPUTS_NAME)
        changed = inputs.changed(files)
        done = set(metrics.complete_images()) - set(changed)
        metrics.drop(changed)
        errors: list[dict] = []
        todo = [f for f in files if str(f) not in done]
        work = AuditWork(audit_spec(bundle.path.resolve(), options, runner.threads), options)
        by_name = {str(f): f for f in todo}
        if report and todo:
            report(_cost(work.spec, options, runner))
        with Progress(len(files), "audit", enabled=progress) as bar:
            bar.advance(len(files) - len(todo))
            for result in runner.map(work, ((f, boxes_for(truth, f, images)) for f in todo)):
                image = by_name[result["image"]]
                if "error" in result:
                    errors.append({"image": result["image"], "error": result["error"]})
                else:
                    write_thumbnails(out, found.names[image], result["thumbnails"])
                    metrics.append(result["rows"])
                    inputs.record(image, result["stamp"])
                bar.advance()
        inputs.save()
        write_atomically(out / ERRORS_NAME, json.dumps(errors, indent=1) + "\n")
        protocol = {"bundle": settings["bundle"], "boxes": settings["boxes"], **options.to_dict(),
                    "runs_at": settings["runs_at"]}
        summary = summarise(metrics, options.methods, protocol, errors)
        summary["skipped"] = [str(f) for f in found.skipped]
        summary["redone"] = changed
        summary["skipped_metrics"] = list(skipped_metrics)
        write_atomically(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
        write_html(out, summary, thumbnail_grid(out, files[:grid], found.names, options.methods), options.methods)
    return summary


def _cost(spec, options: AuditOptions, runner) -> str:
    """The methods' cost line; timed on the explainer the images will use when they are worked on here."""
    from ..bundle import Bundle
    from ..cost import announce, classifier_plan, reads_linear_head
    from ..enhancers import variants
    from ..parallel import InProcess

    explainer = spec.open() if isinstance(runner, InProcess) else None
    bundle = explainer.bundle if explainer else Bundle.load(spec.bundle)
    linear = explainer.linear_head is not None if explainer else reads_linear_head(bundle)
    plan = classifier_plan(bundle, variants(options.methods), options.method_options, linear, options.enhance_options)
    return announce(plan, explainer and explainer.backend)


def _check_options(bundle, options: AuditOptions) -> None:
    from ..methods import get_method

    if not options.methods:
        raise CamInferError("choose at least one method")
    from ..enhancers import get_enhancer
    from .work import split_variant

    for m in options.methods:
        method, enhancer = split_variant(m)
        get_method(method)
        if enhancer is not None:
            get_enhancer(enhancer)
    unknown = [m for m in options.metrics or () if m not in METRICS]
    if unknown:
        raise CamInferError(f"unknown metric {', '.join(map(repr, unknown))}; metrics: {', '.join(METRICS)}")
    if options.target not in ("predicted", "truth"):
        from ..explainer import class_index
        class_index(options.target, bundle.labels, bundle.num_classes)
    for name, value, choices in (("space", options.space, ("normalised", "raw")),
                                 ("coherency_at", options.coherency_at, ("input", "map")),
                                 ("auc", options.auc, ("rise", "recipro")),
                                 ("deletion substrate", options.deletion_substrate, ("zeros", "blur", "mean")),
                                 ("insertion substrate", options.insertion_substrate, ("zeros", "blur", "mean"))):
        if value not in choices:
            raise CamInferError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    if not isinstance(options.steps, int) or options.steps < 1:
        raise CamInferError(f"steps must be a positive integer, not {options.steps!r}")
    if not 0 < options.box_threshold <= 1 or not 0 < options.iou_threshold <= 1:
        raise CamInferError("box and IoU thresholds must be in (0, 1]")


def _prepare(out: Path, settings: dict, restart: bool) -> None:
    path = out / SETTINGS_NAME
    if restart and out.exists():
        for name in (CSV_NAME, SUMMARY_NAME, ERRORS_NAME, "index.html", SETTINGS_NAME, INPUTS_NAME):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / OVERLAYS, ignore_errors=True)
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            previous = None
        if previous != settings:
            raise CamInferError(f"'{out}' holds an audit with other settings; choose another --out or pass --force "
                                "to start over")
    (out / OVERLAYS).mkdir(exist_ok=True)
    write_atomically(path, json.dumps(settings, indent=2) + "\n")


class InputsFile:
    """inputs.json: image → the size and mtime it had when audited, so a resume redoes changed files."""

    def __init__(self, path: Path):
        self.path, self.saved_at = path, 0.0
        try:
            self.stamps = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            self.stamps = {}

    def changed(self, files) -> list[str]:
        """Images audited before whose file is no longer the one that was audited."""
        out = []
        for f in files:
            old = self.stamps.get(str(f))
            try:
                now = fingerprint(f)
            except OSError:
                continue
            if old is not None and old != now:
                out.append(str(f))
        return out

    def record(self, image, stamp: dict) -> None:
        """Note an audited image's stamp; written every SAVE_EVERY seconds and at the end (`save`). A stamp
        lost to a kill only means that file's later changes are not noticed; its rows are in metrics.csv."""
        self.stamps[str(image)] = stamp
        if time.monotonic() - self.saved_at >= SAVE_EVERY:
            self.save()

    def save(self) -> None:
        self.saved_at = time.monotonic()
        write_atomically(self.path, json.dumps(self.stamps) + "\n")


def load_boxes(path, bundle) -> dict:
    """The boxes file, with every label resolved to a class index of the bundle (a label, or an index as
    a number or digit string); an unknown or ambiguous label is an error naming the image."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CamInferError(f"boxes file '{path}' does not exist") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CamInferError(f"boxes file '{path}' is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise CamInferError(f"boxes file '{path}' must map image files to lists of boxes")
    from ..explainer import class_index

    for image, entries in data.items():
        for entry in entries:
            if isinstance(entry, dict) and entry.get("label") is not None:
                label = entry["label"]
                try:
                    entry["class_id"] = class_index(label if isinstance(label, (str, int)) and not isinstance(
                        label, bool) else repr(label), bundle.labels, bundle.num_classes)
                except CamInferError as exc:
                    raise CamInferError(f"boxes file '{path}', image '{image}': {exc}") from None
    return data


def boxes_for(truth: dict, image: Path, roots) -> list | None:
    """An image's entry in the boxes file: by its path as given, relative to a given folder, or its name."""
    keys = [str(image), image.as_posix()]
    for root in map(Path, roots):
        if root.is_dir():
            try:
                keys.append(image.relative_to(root).as_posix())
            except ValueError:
                pass
    keys.append(image.name)
    return next((truth[k] for k in keys if k in truth), None)


def _thumbnail_name(name: str, method: str) -> str:
    """`name` is the image's path relative to the folder it was found in: sub/cat.png → sub__cat.png__recipro.png."""
    return f"{name.replace('/', '__').lstrip('.')}__{method}.png"


def write_thumbnails(out: Path, name: str, thumbnails: dict) -> None:
    """An image's thumbnails (method → PNG bytes) into the report's overlays folder."""
    for method, png in thumbnails.items():
        (out / OVERLAYS / _thumbnail_name(name, method)).write_bytes(png)


def thumbnail_grid(out: Path, files, names: dict, methods) -> list[tuple[str, dict]]:
    """The report's grid: (image name, method → thumbnail PNG) for the images that have thumbnails."""
    grid = []
    for image in files:
        paths = {m: out / OVERLAYS / _thumbnail_name(names[image], m) for m in methods}
        pngs = {m: path.read_bytes() for m, path in paths.items() if path.exists()}
        if pngs:
            grid.append((names[image], pngs))
    return grid


def summary_lines(summary: dict, out) -> list[str]:
    """What `cam-infer audit` prints: per method its means (with n where a mean is over fewer images)."""
    lines = []
    for method, means in summary["methods"].items():
        counts = summary["counts"].get(method, {})
        shown = ", ".join(f"{k} {v:.3f}" + (f" (n={counts[k]})" if counts.get(k, means["images"]) != means["images"]
                                             else "") for k, v in means.items() if k != "images")
        lines.append(f"{method:<14} {means['images']} images: {shown}")
    if summary["redone"]:
        lines.append(f"redid {len(summary['redone'])} image(s) that changed since the last run, e.g. "
                     f"{summary['redone'][0]}")
    if summary.get("skipped_metrics"):
        lines.append(skipped_metrics_line(summary["skipped_metrics"]))
    if summary["skipped"]:
        lines.append(f"skipped {len(summary['skipped'])} file(s) that are not images, e.g. {summary['skipped'][0]} "
                     "(all listed in summary.json)")
    lines.append(f"report: {Path(out) / 'index.html'} (metrics.csv, summary.json)")
    return lines


__all__ = ["AuditOptions", "COLUMNS", "METRICS", "audit_image", "run_audit", "summary_lines"]
