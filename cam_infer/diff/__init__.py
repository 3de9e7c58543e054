"""`cam-infer diff A B IMAGES --out DIR`: does model B still look at the same things as model A?

    run_diff("mobilenetv2-fp32.onnx", "mobilenetv2-int8.onnx", ["photos/"], "diff/", methods=("recipro", "eigen"))

A and B are two bundles or model files of the same classifier (fp32 and int8, v1 and v2, ONNX Runtime and
OpenVINO, two precisions: each side has its own runtime and precision). Per image: whether their top-1
classes agree, how the probability of the explained class moved (B − A), and per method how alike the two
maps of that one class are (Spearman of ranks, SSIM, IoU of the top 20 %: `cam_infer.metrics.similarity`).
The class is A's top-1 on both sides unless a target is given. The folder-run driver (`cam_infer.jobs`)
streams the images through `work.DiffWork`, on any runner, and resumes an interrupted run; `report` writes
diff.csv, summary.json (means with bootstrap 95 % intervals) and index.html (the images whose explanation
drifted most, A | B).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..audit.report import check_grid
from ..errors import CamInferError
from ..outputs import write_atomically
from .report import CSV_NAME, DRIFTED, ERRORS_NAME, HTML_NAME, SUMMARY_NAME, summarise, write_html, write_rows
from .work import COLUMNS, COMPARED_SIDE, DiffWork, sees_alike

OVERLAYS = "overlays"
CLEARED = (CSV_NAME, SUMMARY_NAME, ERRORS_NAME, HTML_NAME, OVERLAYS)     # what --force removes


@dataclass(frozen=True)
class Side:
    """One of the two models and how it runs."""

    model: str                            # a bundle folder or a model file (split with auto once, cached)
    backend: str = "auto"
    precision: str = "f32"
    device: str = "CPU"


def run_diff(a, b, images, out, *, methods=("recipro", "eigen"), options: dict | None = None, target=None,
             restart: bool = False, grid: int = 12, batch_size: int = 8, progress: bool | None = None, workers=None,
             ray: str | None = None, threads: int | None = None) -> dict:
    """Compare model `a` with model `b` (paths, or `Side`s with their runtime settings) on the images (files and
    folders); returns the summary. `methods`: names, or ("all",) (every gradient-free method both models take);
    `options`: method → {option: value}; `target`: a class (label or index) explained on both sides instead of
    A's top-1; `grid`: the drifted images shown in index.html. Unreadable images are listed in the summary's
    ``errors``; `workers`, `ray`, `threads` choose where the work runs (`cam_infer.parallel`)."""
    from ..jobs.driver import Job, run_job
    from ..methods import GRADIENT
    from ..parallel import ExplainerSpec, InProcess, make_runner

    side_a, side_b = (s if isinstance(s, Side) else Side(str(s)) for s in (a, b))
    runner = make_runner(workers, ray, threads)
    gradients = "torch" if set(methods) & set(GRADIENT) else None
    explainer_a, explainer_b = open_side(side_a, "A", gradients), open_side(side_b, "B", gradients)
    check_comparable(explainer_a.bundle, explainer_b.bundle)
    methods = chosen_methods(list(methods), explainer_a, explainer_b)
    options = per_method_options(methods, options or {})
    class_id = None if target is None else explainer_a.class_id(target)
    if batch_size < 1:
        raise CamInferError("batch size must be at least 1")
    check_grid(grid)
    specs = [ExplainerSpec(str(e.bundle.path.resolve()), side.backend, side.device, gradients, runner.threads,
                           precision=side.precision) for side, e in ((side_a, explainer_a), (side_b, explainer_b))]
    if isinstance(runner, InProcess):
        for spec, explainer in zip(specs, (explainer_a, explainer_b)):
            spec.remember(explainer)
    same = sees_alike(explainer_a.bundle, explainer_b.bundle)
    protocol = {"a": describe_side(side_a, explainer_a), "b": describe_side(side_b, explainer_b),
                "methods": list(methods), "options": options, "target": class_id,
                "class": "the target on both sides" if class_id is not None else "A's top-1 on both sides",
                "compared_on": "the models' input" if same else
                f"the part of the original image either model saw, at {COMPARED_SIDE} px (long side)"}
    settings = json.loads(json.dumps(protocol))
    summary: dict = {}

    def write(run, final: bool) -> None:
        write_rows(run.out / CSV_NAME, run.rows)
        if final:
            write_atomically(run.out / ERRORS_NAME, json.dumps(run.errors, indent=1) + "\n")
            summary.clear()
            summary.update(summarise(run.rows, methods, settings, run.errors, max(grid, DRIFTED)),
                           skipped=run.skipped, redone=run.redone)
            write_atomically(run.out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
            write_html(run.out, summary, grid, explainer_a.bundle.label)

    from ..runs import with_effective_options
    work = DiffWork(specs[0], specs[1], tuple(methods), options, class_id, same)
    job = Job("diff", "a diff", settings, tuple(methods), work, write, batch_size=batch_size,
              names=lambda found: found.names, folders=(OVERLAYS,), clear=CLEARED,
              keep=lambda out, row: (out / row["pair"]).is_file(),
              effective=lambda recorded: with_effective_options(recorded, methods))
    run_job(job, images, out, runner, restart=restart, progress=progress)
    return summary


def open_side(side: Side, which: str, gradients: str | None = None):
    """The explainer of one side; a model that cannot be opened, or is no classifier, is refused naming the side."""
    from ..bundle import Bundle
    from ..jobs.explainers import open_explainer

    try:
        bundle = Bundle.load(side.model)
        if bundle.task != "classification":
            raise CamInferError(f"'{side.model}' is a {bundle.task} model; cam-infer diff compares classifiers "
                                "(detectors and segmenters are not supported yet)")
        return open_explainer(bundle, side.backend, side.device, gradients=gradients, precision=side.precision)
    except CamInferError as exc:
        raise CamInferError(f"model {which}: {exc}") from None


def check_comparable(a, b) -> None:
    """The two models answer the same question: the same number of classes, and the same labels when both
    have labels; otherwise one line saying what differs."""
    if a.num_classes != b.num_classes:
        raise CamInferError(f"the models have different class counts: A has {a.num_classes}, B {b.num_classes}; "
                            "diff compares two versions of one classifier")
    if a.labels and b.labels and list(a.labels) != list(b.labels):
        first = next(i for i, (x, y) in enumerate(zip(a.labels, b.labels)) if x != y)
        raise CamInferError(f"the models have different labels: class {first} is '{a.labels[first]}' in A, "
                            f"'{b.labels[first]}' in B")


def chosen_methods(names: list[str], a, b) -> list[str]:
    """The methods asked for, 'all' expanded to every gradient-free method both models take; a method named that
    one of them cannot run is refused."""
    from ..runs import choose_methods

    chosen_a, _ = choose_methods(names, a.linear_head is not None)
    chosen_b, _ = choose_methods(names, b.linear_head is not None)
    if not chosen_a:
        raise CamInferError("choose at least one method")
    return [m for m in chosen_a if m in chosen_b]


def per_method_options(methods: list[str], options: dict) -> dict:
    """method → its options, every key checked against what the method takes."""
    from ..runs import options_per_method

    out = {}
    for method, given in options.items():
        if method not in methods:
            raise CamInferError(f"--option takes method.key=value for one of the chosen methods, not '{method}'")
        out[method] = options_per_method([method], given)[method]
    return out


def describe_side(side: Side, explainer) -> dict:
    """What summary.json records of a side: the model, its graphs' hashes, the layer, the runtime and precision."""
    from ..runs import bundle_hashes

    bundle = explainer.bundle
    return {"model": str(Path(side.model).resolve()), "graphs": bundle_hashes(bundle),
            "layer": bundle.manifest.get("target_layer", {}).get("tensor"), "backend": explainer.backend.name,
            "device": side.device, "precision": explainer.backend.precision}


def summary_lines(summary: dict, out) -> list[str]:
    """What `cam-infer diff` prints: agreement, the probability shift, and per method its similarities."""
    def shown(interval: dict) -> str:
        if interval["mean"] is None:
            return "-"
        return f"{interval['mean']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"

    lines = [f"{summary['images']} images: top-1 agreement {shown(summary['top1_agreement'])}, probability shift "
             f"(B - A) {shown(summary['probability_shift'])}"]
    for method, m in summary["methods"].items():
        left_out = m["images"] - m.get("compared", m["images"])
        lines.append(f"{method:<14} Spearman {shown(m['spearman'])}, SSIM {shown(m['ssim'])}, "
                     f"top-20% IoU {shown(m['top_iou'])}"
                     + (f" ({left_out} image(s) with a flat map left out)" if left_out else ""))
    if summary["redone"]:
        lines.append(f"redid {len(summary['redone'])} image(s) that changed since the last run, e.g. "
                     f"{summary['redone'][0]}")
    if summary["skipped"]:
        from ..jobs.folders import skipped_line
        lines.append(skipped_line(summary["skipped"], 1, "summary.json"))
    lines.append(f"report: {Path(out) / HTML_NAME} ({CSV_NAME}, {SUMMARY_NAME})")
    return lines


__all__ = ["COLUMNS", "Side", "run_diff", "summary_lines"]
