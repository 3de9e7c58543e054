"""`cam-infer audit` on a segmenter's bundle: every method on every image, one row per explained (class, region),
localisation measured in the region the map explains and, given ground-truth masks (``--masks DIR``,
`cam_infer.audit.masks`), in the class's true region.

Columns (`cam_infer.metrics.segmentation`): ``energy`` Σ S·R / Σ S in the target's region R (the pixels the
model assigns to the class in the clean pass) next to ``region_fraction``, what a uniform map scores (|R| over
the input); ``pointing`` the map's maximum in R. With masks: ``truth_energy``, ``truth_fraction`` and
``truth_pointing`` in the class's ground-truth region, void pixels (255) left out (a class the mask does not hold:
none, and the summary's counts say over how many regions each mean is). Maps and regions are at the
model's input; the masks are brought there by the bundle's resize and crop.

Beside the methods, the baseline maps of `cam_infer.audit.baselines` (the random map, the centre Gaussian and,
with masks, the mask prior) are scored on the same (class, region) targets, rows marked ``baseline``, each
mean with its bootstrap interval and each method compared with each baseline (`cam_infer.audit.intervals`).

The report is the other tasks' (`cam_infer.audit.report`): ``rows.jsonl``, ``metrics.csv``, ``summary.json``
(means per method), ``index.html`` (table, charts, a thumbnail per image and method with every region
outlined); the folder run (lock, resume, runners) is the one driver's (`cam_infer.jobs`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..audit import CLEARED, OVERLAYS
from ..audit.masks import masks_digest
from ..audit.baselines import GAUSSIAN, MASK_PRIOR, RANDOM, available, baseline_map, dataset_priors
from ..audit.report import ROWS_NAME, SUMMARY_NAME, check_grid, closing_lines, per_target_writer, recorded_protocol
from ..audit.work import _masks_in_input, audit_batch, thumbnail_png
from ..jobs.folders import collect_images
from ..explainer import Explainer
from ..images import load_image
from ..methods import get_method
from ..metrics.segmentation import energy_in_region, pointing_in_region, uniform_baseline
from ..runs import bundle_hashes, with_effective_options
from .runs import cost_line

MEANS = ("energy", "region_fraction", "pointing", "truth_energy", "truth_fraction", "truth_pointing")
COLUMNS = ("image", "method", "index", "class_id", "label", "score", "region", "region_pixels", "class_agnostic",
           "region_class_id", "region_label", "degenerate", "uniform", *MEANS, "baseline")
# column → (shown as, higher is better; None: a reference, what a uniform map scores)
SHOWN = {"energy": ("Energy in the region", True), "region_fraction": ("Region's share (uniform)", None),
         "pointing": ("Pointing in the region", True), "truth_energy": ("Energy in the true region", True),
         "truth_fraction": ("True region's share (uniform)", None),
         "truth_pointing": ("Pointing in the true region", True)}
GRID = 48
DRAWN = (RANDOM, GAUSSIAN, MASK_PRIOR)      # the baselines a segmenter's audit draws (the mask prior with masks)


def run_segmentation_audit(bundle, images, methods, out, *, masks=None, target=None, backend: str = "auto",
                           device: str = "CPU", options: dict | None = None, restart: bool = False,
                           progress: bool | None = None, workers=None, ray: str | None = None,
                           threads: int | None = None, grid: int = GRID, report=None, precision: str = "f32",
                           baselines=None) -> dict:
    """`target`: None (each image's largest class but the background), "all" or a list of classes. `masks`: a
    folder of ground-truth masks. `workers`, `ray` and `threads` choose where the images are worked on.
    `baselines`: the baseline maps scored beside the methods (None: every one `DRAWN`, the mask prior only with
    masks)."""
    from ..jobs.driver import Job, run_job, spec_for
    from ..parallel import make_runner

    check_grid(grid)
    explainer = Explainer(bundle, backend=backend, device=device, precision=precision)
    for m in methods:
        get_method(m, "segmentation")
    runner = make_runner(workers, ray, threads)
    baselines = tuple(b for b in (DRAWN if baselines is None else baselines) if b in DRAWN and
                      (b != MASK_PRIOR or masks))
    priors = {}
    if MASK_PRIOR in baselines:
        labels = [explainer.bundle.label(i) for i in range(explainer.bundle.num_classes)]
        priors = dataset_priors(collect_images(images, out).files, lambda path: None, explainer.bundle.preprocessing,
                                masks, labels)
    baselines = tuple(b for b in baselines if b in available(priors))     # no prior where no mask could be read
    settings = {"bundle": str(explainer.bundle.path.resolve()), "methods": list(methods), "target": target,
                "masks": masks and str(Path(masks).resolve()), **masks_digest(masks), "options": options or {},
                "precision": explainer.backend.precision, "backend": explainer.backend.describe(),
                "layer": explainer.bundle.layers, "baselines": list(baselines),
                "graphs": bundle_hashes(explainer.bundle)}
    summary: dict = {}
    protocol = {**settings, **recorded_protocol(explainer.bundle, methods)}
    write = per_target_writer(summary, protocol, methods, baselines, COLUMNS, MEANS, SHOWN, "regions", grid)

    work = SegmentationAuditWork(spec_for(explainer, runner), tuple(methods), target, masks, options or {},
                                 baselines, priors)
    job = Job("audit", "an audit", settings, tuple(methods), work, write, names=lambda found: found.names,
              effective=lambda recorded: with_effective_options(recorded, methods, "segmentation"),
              extra=lambda image: [], folders=(OVERLAYS,), clear=(ROWS_NAME, *CLEARED),
              cost=lambda: cost_line(methods, explainer, options))
    run_job(job, images, out, runner, restart=restart, progress=progress, report=report)
    return summary


@dataclass(frozen=True)
class SegmentationAuditWork:
    """A batch of images [(path, name, _, _)] → their rows and thumbnails (`audit_batch`), for any runner."""

    spec: object                            # ExplainerSpec
    methods: tuple
    target: object
    masks: str | None
    options: dict
    baselines: tuple = ()
    priors: dict | None = None              # baseline → its dataset prior in the model's input (the mask prior)

    def __call__(self, batch) -> dict:
        return audit_batch(batch, self._audit)

    def _audit(self, image, _) -> dict:
        rows, thumbnails = audit_image(self.spec.open(), image, self.methods, self.target, self.masks, self.options,
                                       thumbnails=True, baselines=self.baselines, priors=self.priors)
        return {"rows": rows or [{"image": str(image), "method": None}], "thumbnails": thumbnails}


def audit_image(explainer: Explainer, image, methods, target, masks, options, thumbnails: bool = False,
                baselines=(), priors: dict | None = None):
    """One image → its rows (one per method and explained (class, region), then per baseline and the (class,
    region) targets the methods explained); with `thumbnails`, (rows, method → thumbnail PNG of its maps with
    every region outlined)."""
    rgb = load_image(image)
    truth = _masks_in_input(masks, image, rgb.shape[:2], explainer) if masks else None
    rows, pictures, items = [], {}, []
    for method in methods:
        e = explainer.explain([rgb], method, target=target, **options.get(method, {}))
        if thumbnails:
            pictures[method] = thumbnail_png(e.overlay(0))
        items = e.items[0]
        rows += [{"image": str(image), "method": method, "index": j, **s.record(energy=False),
                  "class_agnostic": e.class_agnostic,
                  **_metrics(s.saliency, s, truth, s.degenerate)} for j, s in enumerate(items)]
    if baselines:
        x = explainer.preprocess([rgb])[0]
        for name in baselines:
            saliency = baseline_map(name, x, priors or {})                  # at the model's input, as the methods'
            degenerate = bool(np.ptp(saliency) == 0)
            rows += [{"image": str(image), "method": name, "index": j, "class_agnostic": True, "baseline": True,
                      **replace(s, class_agnostic=True, degenerate=degenerate, uniform=False).record(energy=False),
                      **_metrics(saliency, s, truth, degenerate)} for j, s in enumerate(items)]
    return (rows, pictures) if thumbnails else rows


def _metrics(saliency: np.ndarray, s, truth, degenerate: bool) -> dict:
    """A map's metrics for one explained (class, region) `s`: in its region, and with masks in its class's
    true region. A class the model finds that the mask does not hold (or holds only on void pixels) has no true
    region: no truth metrics, as an image without a box of the class has no box metrics (zeros would count its
    map as a miss and its baseline as 0 in every mean)."""
    found = region_metrics(saliency, s.region, None, degenerate)
    region = None if truth is None else truth.region(s.class_id)
    if region is not None and (region & truth.valid).any():
        true = region_metrics(saliency, region, truth.valid, degenerate)
        found.update({f"truth_{k.split('_')[0]}" if k != "region_fraction" else "truth_fraction": v
                      for k, v in true.items()})
    return found


def region_metrics(saliency: np.ndarray, region: np.ndarray, valid, degenerate: bool) -> dict:
    """Energy and pointing of one map in a region, and the energy a uniform map would get there."""
    return {"energy": energy_in_region(saliency, region, valid), "region_fraction": uniform_baseline(region, valid),
            "pointing": int(pointing_in_region(saliency, region, valid, degenerate))}


def summary_lines(summary: dict, out) -> list[str]:
    lines = []
    for m, v in {**summary["methods"], **summary.get("baselines", {})}.items():
        parts = [f"{v['regions']} regions"]
        if "energy" in v:
            parts.append(f"energy {v['energy']:.3f} (uniform {v['region_fraction']:.3f}), pointing {v['pointing']:.3f}")
        if "truth_energy" in v:
            parts.append(f"in the true region: energy {v['truth_energy']:.3f} (uniform {v['truth_fraction']:.3f}), "
                         f"pointing {v['truth_pointing']:.3f}")
        lines.append(f"{m:<10} " + ", ".join(parts))
    return lines + closing_lines(summary, out, f"metrics.csv, {ROWS_NAME}, {SUMMARY_NAME}")


__all__ = ["audit_image", "run_segmentation_audit", "summary_lines"]
