"""`cam-infer audit`: every method on every image of a folder, every metric, one report.

    run_audit("bundle/", ["images/"], AuditOptions(methods=("recipro", "eigen")), out="report/",
              boxes="boxes.json")

`work.audit_image` does one image; the folder-run driver (`cam_infer.jobs`) streams the folder through
it and resumes a rerun; this module writes the rows to metrics.csv as they come, the thumbnails, and at the
end summary.json (with the baselines, intervals and paired differences), summary.csv, paired.csv and
index.html.

Boxes file (JSON): ``{"photo.jpg": [[x1, y1, x2, y2], ...], "sub/b.png": [{"box": [...], "label": "cat"}]}``,
keyed by the path as given on the command line, by the path relative to a given folder, or by file
name; inclusive pixel coordinates in the original image. A labelled box counts only for maps of
that class; an unlabelled one for any class.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import CamInferError
from ..outputs import write_atomically
from .report import (
    CSV_NAME,
    ERRORS_NAME,
    HTML_NAME,
    PAIRED_CSV,
    SUMMARY_CSV,
    SUMMARY_NAME,
    check_grid,
    check_tolerance,
    csv_rows,
    degenerate_line,
    recorded_protocol,
    skipped_metrics_line,
    summarise,
    thumbnail_grid,
    write_csv,
    write_html,
    write_uncertainty_csvs,
)
from .masks import masks_digest
from .sanity import SANITY_CSV, SanityOptions, check_sanity, run_sanity, sanity_line, write_sanity_csv
from .work import COLUMNS, METRICS, OVERLAYS, AuditOptions, AuditWork, audit_image, audit_runtime, \
    audit_spec

GRID = 48
BATCH = 8           # images audited together: their curves and ADCC's re-explanations share the runtime's calls
MAX_STEPS = 1024    # insertion/deletion steps: one model pass per step and image


def run_audit(bundle, images, options: AuditOptions, out, *, boxes=None, restart: bool = False, grid: int = GRID,
              progress: bool | None = None, workers=None, ray: str | None = None, threads: int | None = None,
              report=None, sanity=None, batch_size: int = BATCH) -> dict:
    """Audit the images (files and folders); returns the summary. Unreadable images are listed in
    the summary's ``errors`` and skipped. `workers` (N or "auto": processes on this machine), `ray` (a
    Ray address) and `threads` (runtime threads per worker) choose where the images are worked on
    (`cam_infer.parallel`); the files written are the same. `report(line)`, when given, hears what the
    methods will cost before the run starts (`cam_infer.cost`). `sanity` (a `SanityOptions`): also the
    model-randomisation sanity check (`cam_infer.audit.sanity`): sanity.csv, summary["sanity"], its section.
    `batch_size`: images audited together (their curves and ADCC's re-explanations share runtime calls; a
    resume redoes at most the batch in progress)."""
    from ..bundle import Bundle
    from ..jobs.driver import Job, run_job
    from ..parallel import make_runner
    from ..runs import bundle_hashes

    bundle = Bundle.load(bundle)
    _check_options(bundle, options)
    check_grid(grid)
    if sanity is not None:
        check_sanity(bundle, sanity)
    if boxes is not None and options.masks:
        raise CamInferError("give --boxes or --masks, not both: each gives the pointing and energy columns, and one "
                            "column would hold two measures")
    runner = make_runner(workers, ray, threads)
    truth = load_boxes(boxes, bundle)
    check_boxes_match(truth, images, boxes, out)
    if options.target == "truth" and not truth:
        raise CamInferError("target 'truth' needs boxes with exactly one label per image (--boxes)")
    skipped_metrics = options.skipped_metrics(bool(truth))
    options = options.resolved(bool(truth))
    priors = _priors(bundle, images, truth, options, out)
    runs_on, runs_at = audit_runtime(bundle, options)
    settings = {"bundle": str(bundle.path.resolve()), "graphs": bundle_hashes(bundle), "options": options.to_dict(),
                "runs_at": runs_at, "boxes": str(Path(boxes).resolve()) if boxes else None, **boxes_digest(boxes),
                **masks_digest(options.masks)}
    protocol = {"bundle": settings["bundle"], "boxes": settings["boxes"], **options.to_dict(),
                "baselines": list(options.drawn_baselines(priors)), "runs_on": runs_on, "runs_at": runs_at,
                **recorded_protocol(bundle, options.methods)}
    summary: dict = {}

    def write(run, final: bool) -> None:
        write_csv(run.out / CSV_NAME, run.rows)
        if final:
            write_atomically(run.out / ERRORS_NAME, json.dumps(run.errors, indent=1) + "\n")
            summary.update(summarise(csv_rows(run.out / CSV_NAME), options.methods, protocol, run.errors,
                                     options.drawn_baselines(priors)),
                           skipped=run.skipped, redone=run.redone, skipped_metrics=list(skipped_metrics))
            if sanity is not None:
                _sanity(bundle, run, options, sanity, summary)
            write_atomically(run.out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
            write_uncertainty_csvs(run.out, summary)
            write_html(run.out, summary, thumbnail_grid(run.out, run.found.files[:grid], run.names,
                                                        options.methods), options.methods)

    work = AuditWork(audit_spec(bundle.path.resolve(), options, runner.threads), options, priors)
    job = Job("audit", "an audit", settings, options.methods, work, write, batch_size=batch_size,
              names=lambda found: found.names, effective=lambda recorded: _effective(recorded, options.methods),
              extra=lambda image: boxes_for(truth, image, images), folders=(OVERLAYS,), clear=CLEARED,
              cost=lambda: _cost(work.spec, options, runner))
    run_job(job, images, out, runner, restart=restart, progress=progress, report=report)
    return summary


CLEARED = (CSV_NAME, SUMMARY_NAME, SUMMARY_CSV, PAIRED_CSV, ERRORS_NAME, HTML_NAME, OVERLAYS,
           SANITY_CSV)   # what --force removes


def _priors(bundle, images, truth: dict, options: AuditOptions, out) -> dict:
    """The dataset's box and mask priors in the model's input, when they are baselines to draw."""
    from ..jobs.folders import collect_images
    from .baselines import NEEDS, dataset_priors

    wanted = [b for b in NEEDS if options.baselines is None or b in options.baselines]
    if not wanted or not (truth or options.masks):
        return {}
    labels = [bundle.label(i) for i in range(bundle.num_classes)] if options.masks else None
    priors = dataset_priors(collect_images(images, out).files, lambda path: boxes_for(truth, path, images),
                            bundle.preprocessing, options.masks, labels)
    return {name: prior for name, prior in priors.items() if name in wanted}


def _sanity(bundle, run, options: AuditOptions, sanity, summary: dict) -> None:
    """The sanity check on the run's readable images: sanity.csv and summary["sanity"] (its report section:
    `sanity.sanity_section`)."""
    unreadable = {e["image"] for e in run.errors}
    result = run_sanity(bundle, [f for f in run.found.files if str(f) not in unreadable], options, sanity)
    write_sanity_csv(run.out / SANITY_CSV, result)
    summary["sanity"] = result


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


def _effective(settings: dict, methods) -> dict:
    """An audit's settings with each method's options as it runs them (`runs.effective_options`): a rerun that gives
    an option at its default is the same audit."""
    from ..runs import effective_options

    options = settings.get("options")
    if not isinstance(options, dict) or not isinstance(options.get("method_options"), dict):
        return settings
    return {**settings, "options": {**options,
                                    "method_options": effective_options(options["method_options"], methods)}}


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
        from ..tasks import class_index
        class_index(options.target, bundle.labels, bundle.num_classes)
    for name, value, choices in (("space", options.space, ("normalised", "raw")),
                                 ("coherency_at", options.coherency_at, ("input", "map")),
                                 ("auc", options.auc, ("rise", "recipro")),
                                 ("deletion substrate", options.deletion_substrate, ("zeros", "blur", "mean")),
                                 ("insertion substrate", options.insertion_substrate, ("zeros", "blur", "mean"))):
        if value not in choices:
            raise CamInferError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    if not isinstance(options.steps, int) or not 1 <= options.steps <= MAX_STEPS:
        raise CamInferError(f"steps must be an integer from 1 to {MAX_STEPS}, not {options.steps!r} (each step is one "
                            "model pass per image; RISE's 224·8 pixels a step is 28 at 224x224)")
    if not 0 < options.box_threshold <= 1 or not 0 < options.iou_threshold <= 1:
        raise CamInferError("box and IoU thresholds must be in (0, 1]")
    check_tolerance(options.tolerance)


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
    from ..tasks import class_index

    for image, entries in data.items():
        for entry in entries:
            _check_box(entry.get("box") if isinstance(entry, dict) else entry, path, image)
            if isinstance(entry, dict) and entry.get("label") is not None:
                label = entry["label"]
                try:
                    entry["class_id"] = class_index(label if isinstance(label, (str, int)) and not isinstance(
                        label, bool) else repr(label), bundle.labels, bundle.num_classes)
                except CamInferError as exc:
                    raise CamInferError(f"boxes file '{path}', image '{image}': {exc}") from None
    return data


def boxes_digest(path) -> dict:
    """What an audit's settings record of its boxes file beside its path, its sha256: boxes corrected in the same file
    are another audit."""
    from ..bundle.manifest import sha256_of

    return {} if path is None else {"boxes_sha256": sha256_of(path)}


def _check_box(box, path, image: str) -> None:
    """[x1, y1, x2, y2]: four finite numbers, inclusive pixels, x1 ≤ x2 and y1 ≤ y2; else one line naming the
    image."""
    numbers = isinstance(box, (list, tuple)) and len(box) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in box)
    if not numbers:
        raise CamInferError(f"boxes file '{path}', image '{image}': a box must be [x1, y1, x2, y2] (numbers) or "
                            f"{{\"box\": [...], \"label\": ...}}, not {box!r}")
    if box[2] < box[0] or box[3] < box[1]:
        raise CamInferError(f"boxes file '{path}', image '{image}': box {list(box)} is inverted (x2 < x1 or y2 < y1)")


def check_boxes_match(truth: dict, images, path, out) -> None:
    """Refuse a boxes file that names none of the images (those of `out` left out): every box metric would be
    silently empty."""
    if not truth:
        return
    from ..jobs.folders import collect_images
    files = collect_images(images, out).files
    if files and not any(boxes_for(truth, f, images) is not None for f in files):
        first = ", ".join(repr(k) for k in list(truth)[:3])
        more = " …" if len(truth) > 3 else ""
        raise CamInferError(f"boxes file '{path}' names none of the {len(files)} images (its keys: {first}{more}); "
                            "a key is an image's path, its path inside the folder given, or its file name")


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


def summary_lines(summary: dict, out) -> list[str]:
    """What `cam-infer audit` prints: per method its means (with n where a mean is over fewer images)."""
    lines = []
    baselines = summary.get("baselines", {})
    for method, means in {**summary["methods"], **baselines}.items():
        counts = summary["counts"].get(method, {})
        shown = ", ".join(f"{k} {v:.3f}" + (f" (n={counts[k]})" if counts.get(k, means["images"]) != means["images"]
                                             else "") for k, v in means.items() if k != "images")
        lines.append(f"{method:<14} {means['images']} images: {shown}" + (" (baseline)" if method in baselines else ""))
    if line := degenerate_line(summary):
        lines.append(line)
    if summary.get("paired"):
        lines.append("95 % intervals and paired differences: summary.csv, paired.csv and the report")
    if summary["redone"]:
        lines.append(f"redid {len(summary['redone'])} image(s) that changed since the last run, e.g. "
                     f"{summary['redone'][0]}")
    if summary.get("skipped_metrics"):
        lines.append(skipped_metrics_line(summary["skipped_metrics"]))
    if summary["skipped"]:
        from ..jobs.folders import skipped_line
        lines.append(skipped_line(summary["skipped"], 1, "summary.json"))
    if summary.get("sanity"):
        lines.append(sanity_line(summary["sanity"]))
    lines.append(f"report: {Path(out) / 'index.html'} (metrics.csv, summary.json)")
    return lines


__all__ = ["AuditOptions", "COLUMNS", "METRICS", "SanityOptions", "audit_image", "run_audit", "summary_lines"]
