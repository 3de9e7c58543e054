"""`cam-infer audit` on a detector's bundle: every method on every image, one row per explained detection,
localisation measured against the detection's own box and, given ground truth, against the true box it
matches (same class, IoU ≥ 0.5) and the evidence a true object carries outside its box (``marker``: a
disc (cx, cy, r) in the image's pixels, as the synthetic tagged squares have).

Columns (research notes, detection §6): ``energy`` Σ S in the box / Σ S (energy pointing, ODAM's EPG) next
to ``box_fraction``, the box's share of the image (what a uniform map scores); ``pointing`` the map's maximum
in the box (±tolerance px); ``specificity`` Σ S in the box / Σ S in every box of its class in the image;
with ground truth, ``truth_iou`` and ``marker_energy`` Σ S in the marker disc (grown by 2 px) / Σ S next to
``marker_fraction``. Maps are measured over the original image (the letterbox undone).

Rows go to ``rows.jsonl`` (an image without detections has one row, method None) and, one per detection and
method, to ``metrics.csv``, rewritten as images are done; ``summary.json`` holds the means per method,
``index.html`` the report with a thumbnail per image and method (its detections over their maps), as a
classifier's audit does and with its writers (`cam_infer.audit`). The folder run (lock, resume, runners) is
the one driver's (`cam_infer.jobs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audit import CLEARED, OVERLAYS, boxes_digest, boxes_for, check_boxes_match, load_boxes
from ..audit.baselines import BOX_PRIOR, GAUSSIAN, RANDOM, available, baseline_map, dataset_priors
from ..audit.report import (ROWS_NAME, SUMMARY_NAME, check_grid, check_tolerance, closing_lines,
                            per_target_writer, recorded_protocol)
from ..audit.work import audit_batch, thumbnail_png
from ..jobs.folders import collect_images
from ..errors import CamInferError
from ..images import load_image
from ..methods import get_method
from ..metrics import energy_pointing, pointing_hit
from ..runs import bundle_hashes, with_effective_options
from .decode import iou
from ..explainer import Explainer
from ..explanation import detection_class_fields

MEANS = ("energy", "box_fraction", "pointing", "specificity", "truth_iou", "marker_energy", "marker_fraction")
COLUMNS = ("image", "method", "index", "class_id", "label", "detection_class_id", "detection_label", "score",
           "class_agnostic", "degenerate", "uniform", *MEANS, "baseline")
# column → (shown as, higher is better; None: a reference, what a uniform map scores)
SHOWN = {"energy": ("Energy in the box", True), "box_fraction": ("Box's share of the image (uniform)", None),
         "pointing": ("Pointing game", True), "specificity": ("Specificity", True),
         "truth_iou": ("IoU with the true box", True), "marker_energy": ("Energy on the marker", True),
         "marker_fraction": ("Marker's share (uniform)", None)}
GRID = 48
DRAWN = (RANDOM, GAUSSIAN, BOX_PRIOR)  # the baselines a detector's audit draws (the box prior with true boxes)


def run_detection_audit(bundle, images, methods, out, *, boxes=None, backend: str = "auto", device: str = "CPU",
                        tolerance: float = 0.0, conf: float | None = None, options: dict | None = None,
                        restart: bool = False, progress: bool | None = None, workers=None, ray: str | None = None,
                        threads: int | None = None, grid: int = GRID, report=None, precision: str = "f32",
                        baselines=None) -> dict:
    """`precision`: what the runtime computes in (recorded in summary.json's settings, resolved). `workers`, `ray` and `threads` choose where the images are worked on (`cam_infer.parallel`);
    `report(line)`, when given, hears what the methods will cost before the run starts (`cam_infer.cost`).
    `baselines`: the baseline maps scored beside the methods on the same detections (None: every one `DRAWN`,
    the box prior only with `boxes`; `cam_infer.audit.baselines`)."""
    from ..cost import announce, detection_plan
    from ..jobs.driver import Job, run_job, spec_for
    from ..parallel import make_runner
    from .context import DetectionContext
    from .targets import central_targets

    check_tolerance(tolerance)
    check_grid(grid)
    explainer = Explainer(bundle, backend=backend, device=device, precision=precision)
    for m in methods:
        get_method(m, "detection")
    runner = make_runner(workers, ray, threads)
    truth = load_boxes(boxes, explainer.bundle)
    check_boxes_match(truth, images, boxes, out)
    baselines = tuple(b for b in (DRAWN if baselines is None else baselines) if b in DRAWN and
                      (b != BOX_PRIOR or truth))
    priors = {}
    if BOX_PRIOR in baselines:
        priors = dataset_priors(collect_images(images, out).files, lambda path: boxes_for(truth, path, images),
                                explainer.bundle.preprocessing)
    baselines = tuple(b for b in baselines if b in available(priors))     # no prior where no image has a box
    settings = {"bundle": str(explainer.bundle.path.resolve()), "methods": list(methods), "boxes": boxes and
                str(Path(boxes).resolve()), "tolerance": tolerance, "conf": conf, "options": options or {},
                "precision": explainer.backend.precision, "backend": explainer.backend.describe(),
                "layer": explainer.bundle.layers, "baselines": list(baselines),
                "graphs": bundle_hashes(explainer.bundle), **boxes_digest(boxes)}
    summary: dict = {}
    protocol = {**settings, **recorded_protocol(explainer.bundle, methods)}
    write = per_target_writer(summary, protocol, methods, baselines, COLUMNS, MEANS, SHOWN, "detections", grid)

    def cost() -> str:
        counted_on = DetectionContext(explainer, None, None, None), central_targets(explainer.grid)
        return announce(detection_plan(*counted_on, {m: get_method(m) for m in methods}, options), explainer.backend,
                        detector=True)

    work = DetectionAuditWork(spec_for(explainer, runner), tuple(methods), tolerance, conf, options or {}, baselines,
                              priors)
    job = Job("audit", "an audit", settings, tuple(methods), work, write, names=lambda found: found.names,
              effective=lambda recorded: with_effective_options(recorded, methods, "detection"),
              extra=lambda image: boxes_for(truth, image, images) or [], folders=(OVERLAYS,),
              clear=(ROWS_NAME, *CLEARED), cost=cost)
    run_job(job, images, out, runner, restart=restart, progress=progress, report=report)
    return summary


@dataclass(frozen=True)
class DetectionAuditWork:
    """A batch of images [(path, name, _, its true boxes)] → their rows and thumbnails (`audit_batch`), for any
    runner."""

    spec: object                            # ExplainerSpec
    methods: tuple
    tolerance: float
    conf: float | None
    options: dict
    baselines: tuple = ()
    priors: dict | None = None              # baseline → its dataset prior in the model's input (the box prior)

    def __call__(self, batch) -> dict:
        return audit_batch(batch, self._audit)

    def _audit(self, image, truth) -> dict:
        rows, thumbnails = audit_image(self.spec.open(), image, self.methods, truth, self.tolerance, self.conf,
                                       self.options, thumbnails=True, baselines=self.baselines, priors=self.priors)
        return {"rows": rows or [{"image": str(image), "method": None}], "thumbnails": thumbnails}


def audit_image(explainer: Explainer, image, methods, truth: list, tolerance: float, conf, options,
                thumbnails: bool = False, baselines=(), priors: dict | None = None):
    """One image → its rows (one per method and explained detection, then per baseline and the detections the
    methods explained); with `thumbnails`, (rows, method → thumbnail PNG of its detections over their maps)."""
    rgb = load_image(image)
    rows, pictures, items = [], {}, []
    truth_boxes = [_true_box(t, explainer) for t in truth]
    for method in methods:
        e = explainer.explain([rgb], method, conf=conf, **options.get(method, {}))
        if thumbnails:
            pictures[method] = thumbnail_png(e.overlay(0))
        items = e.items[0]
        for d in items:
            saliency, _ = e.preprocessing.to_image(d.saliency, rgb.shape[:2])
            rows.append(_row(image, method, d, saliency, items, rgb.shape, tolerance, truth_boxes,
                             class_agnostic=e.class_agnostic))
    for name in baselines:
        if name == BOX_PRIOR:                   # the dataset's prior is in the model's input: put back on the image
            saliency, _ = explainer.bundle.preprocessing.to_image(priors[name], rgb.shape[:2])
        else:
            saliency = baseline_map(name, np.moveaxis(rgb, -1, 0), {})         # over the image, as the methods' maps
        rows += [_row(image, name, d, saliency, items, rgb.shape, tolerance, truth_boxes, baseline=True)
                 for d in items]
    return (rows, pictures) if thumbnails else rows


def _row(image, method: str, d, saliency, items, shape, tolerance: float, truth_boxes, class_agnostic=False,
         baseline: bool = False) -> dict:
    """One detection's row: the map `saliency` (over the original image) measured in its box and the truth's."""
    box = _pixels(d.box_image, shape)
    same_class = [_pixels(o.box_image, shape) for o in items if o.class_id == d.class_id]
    degenerate = d.degenerate if not baseline else bool(np.ptp(saliency) == 0)
    row = {"image": str(image), "method": method, "index": d.index,
           **detection_class_fields(d.class_id, d.label, class_agnostic or baseline), "score": round(d.score, 5),
           "class_agnostic": class_agnostic or baseline,
           "degenerate": degenerate, "uniform": d.uniform and not baseline,
           "energy": energy_pointing(saliency, [box]),
           "box_fraction": _area(box) / float(shape[0] * shape[1]),
           "pointing": int(pointing_hit(saliency, [box], tolerance, degenerate)),
           "specificity": energy_pointing(saliency, [box]) / max(energy_pointing(saliency, same_class), 1e-12),
           "baseline": baseline}
    row.update(_against_truth(saliency, np.array(d.box_image), d.class_id, truth_boxes, shape))
    return row


def _true_box(entry, explainer) -> tuple:
    """A boxes-file entry → (box, class index or None: any class, marker or None)."""
    from ..tasks import class_index

    if not isinstance(entry, dict):
        entry = {"box": entry}
    if entry.get("box") is None or len(entry["box"]) != 4:
        raise CamInferError(f"a box must be [x1, y1, x2, y2] or {{\"box\": [...], \"label\": ...}}, not {entry!r}")
    class_id = entry.get("class_id")
    if class_id is None and entry.get("label") is not None:
        class_id = class_index(entry["label"], explainer.labels, explainer.bundle.num_classes)
    return np.array(entry["box"], np.float64), class_id, entry.get("marker")


def _against_truth(saliency, box, class_id, truth_boxes, shape) -> dict:
    candidates = [(iou(box, t + [0, 0, 1, 1]), t, marker) for t, c, marker in truth_boxes
                  if c is None or c == class_id]
    if not candidates:
        return {}
    overlap, t, marker = max(candidates, key=lambda c: c[0])
    if overlap < 0.5:
        return {"truth_iou": float(overlap)}
    out = {"truth_iou": float(overlap)}
    if marker:
        disc = np.zeros(shape[:2], bool)
        yy, xx = np.ogrid[:shape[0], :shape[1]]
        disc[(yy - marker[1]) ** 2 + (xx - marker[0]) ** 2 <= (marker[2] + 2) ** 2] = True
        total = float(saliency.sum())
        out["marker_energy"] = float(saliency[disc].sum() / total) if total > 0 else 0.0
        out["marker_fraction"] = float(disc.mean())
    return out


def _pixels(box, shape) -> list[int]:
    h, w = shape[:2]
    return [int(np.clip(np.floor(box[0]), 0, w - 1)), int(np.clip(np.floor(box[1]), 0, h - 1)),
            int(np.clip(np.ceil(box[2]) - 1, 0, w - 1)), int(np.clip(np.ceil(box[3]) - 1, 0, h - 1))]


def _area(box) -> float:
    return float((box[2] - box[0] + 1) * (box[3] - box[1] + 1))


def summary_lines(summary: dict, out) -> list[str]:
    lines = []
    for m, v in summary["methods"].items():
        parts = [f"{v['detections']} detections"]
        for column, name in (("energy", "energy"), ("pointing", "pointing"), ("specificity", "specificity"),
                             ("marker_energy", "marker energy")):
            if column in v:
                parts.append(f"{name} {v[column]:.3f}" + (f" (uniform {v['box_fraction']:.3f})" if column == "energy"
                                                          else f" (uniform {v['marker_fraction']:.4f}, n={v[column + '_n']})"
                                                          if column == "marker_energy" else ""))
        lines.append(f"{m:<10} " + ", ".join(parts))
    return lines + closing_lines(summary, out, f"metrics.csv, {ROWS_NAME}, {SUMMARY_NAME}")


__all__ = ["audit_image", "run_detection_audit", "summary_lines"]
