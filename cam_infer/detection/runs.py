"""`cam-infer explain` on a detector's bundle: image files → one overlay per explained detection, one for
the image (every explained detection), and `results.json` with a record per (image, method) listing its
detections (box in the original image's pixels, class, score, anchor, overlay). The folder run is the one
driver's (`cam_infer.jobs`), as for a classifier; this module is the detector's settings and `DetectionWork`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import NotInImage
from ..tasks import class_index
from ..explanation import picture_name
from ..jobs.explain import Results
from ..jobs.folders import read_stamped
from ..postprocess import check_overlay_options, check_overlays, encode_map, encode_picture
from ..runs import bundle_hashes, check_on, options_per_method, with_effective_options
from ..explainer import Explainer


def explain_detection_files(explainer: Explainer, paths, methods: list[str], out, *, targets="all",
                            classes=None, boxes=None, conf=None, iou=None, options: dict | None = None,
                            colormap: str = "jet", alpha: float = 0.5, restart: bool = False,
                            progress: bool | None = None, on: str = "original", workers=None, ray: str | None = None,
                            threads: int | None = None, report=None, overlays: str = "jpg") -> Results:
    """`report(line)`, when given, hears what the run will cost before it starts (`cam_infer.cost`). `overlays`:
    "jpg" (default), "png", or "none": the maps alone, 8-bit grey PNGs at the model's input (`.map.png`; the
    image's map is the pixel-wise maximum of its detections' maps, as its overlay draws them)."""
    from ..cost import announce, detection_plan
    from ..jobs.driver import spec_for
    from ..jobs.explain import explain_job
    from ..methods import get_method
    from ..parallel import make_runner
    from .context import DetectionContext
    from .targets import central_targets

    check_overlay_options(colormap, alpha)
    check_overlays(overlays)
    check_on(on)
    per_method = options_per_method(methods, options or {}, "detection")
    conf, iou, _ = explainer.task.thresholds(conf, iou, None)      # recorded as they run: the bundle's by default
    for c in classes or []:                      # an unknown class is refused before the run, not on its first image
        class_index(c, explainer.labels, explainer.bundle.num_classes)
    runner = make_runner(workers, ray, threads)
    settings = {"bundle": bundle_hashes(explainer.bundle), "layer": explainer.bundle.layers,
                "backend": explainer.backend.describe(), "precision": explainer.backend.precision, "task": "detection",
                "targets": targets, "classes": classes, "boxes": boxes, "conf": conf, "iou": iou,
                "options": per_method, "colormap": colormap, "alpha": alpha, "on": on,
                "overlays": overlays}
    work = DetectionWork(spec_for(explainer, runner), tuple(methods), targets, classes, boxes, conf, iou, per_method,
                         colormap, alpha, on, overlays)

    def cost() -> str:
        counted_on = DetectionContext(explainer, None, None, None), central_targets(explainer.grid)
        return announce(detection_plan(*counted_on, {m: get_method(m) for m in methods}, per_method), explainer.backend,
                        detector=True)

    return explain_job(paths, out, settings, methods, work, runner, restart=restart, progress=progress, report=report,
                       cost=cost,
                       effective=lambda recorded: with_effective_options(recorded, methods, "detection"))


@dataclass(frozen=True)
class DetectionWork:
    """A batch of images [(path, overlay name, methods still to do, _)] → their records, overlays or maps (one
    for each image, one per explained detection) or why they could not be read (`cam_infer.jobs.driver.Job`)."""

    spec: object                            # ExplainerSpec
    methods: tuple
    targets: object
    classes: object
    boxes: object
    conf: float | None
    iou: float | None
    options: dict                           # method → its options
    colormap: str
    alpha: float
    on: str
    overlays: str = "jpg"

    def __call__(self, batch) -> dict:
        out = {"inputs": {}, "rows": [], "files": {}, "errors": []}
        for path, name, needed, _ in batch:
            read = read_stamped(path, out["errors"])
            if read is not None:
                out["inputs"][str(path)] = read[1]
                self._explain(self.spec.open(), path, name, needed, *read, out)
        return out

    def _explain(self, explainer, path, name: str, needed, rgb, stamp, out: dict) -> None:
        for method in (m for m in self.methods if m in needed):
            try:
                e = explainer.explain([rgb], method, target=self.targets, classes=self.classes, boxes=self.boxes,
                                      conf=self.conf, iou=self.iou, **self.options[method])
            except NotInImage as error:          # the detection asked of every image is not in this one
                out["errors"].append({"image": str(path), "error": f"{Path(path).name}: {error}"})
                return
            key = "map" if self.overlays == "none" else "overlay"
            overlay = self._picture(e, None, f"{name}_{method}", out)
            detections = []
            for j, d in enumerate(e.items[0]):
                if e.class_agnostic:                   # the image's one map: no picture per detection
                    detections.append(d.record())
                    continue
                detections.append({**d.record(), key: self._picture(e, j, f"{name}_{method}_{picture_name(j, d)}",
                                                                    out)})
            out["rows"].append({"image": str(path), "method": method,
                                **({"class_agnostic": True} if e.class_agnostic else {}), "detections": detections,
                                "found": len(e.detections[0]), "milliseconds": round(e.milliseconds, 3),
                                key: overlay, "input": stamp})

    def _picture(self, e, j: int | None, stem: str, out: dict) -> str:
        """Detection j's picture (None: the image's), as `overlays` asks; its file name."""
        if self.overlays != "none":
            file = f"{stem}.{self.overlays}"
            out["files"][file] = encode_picture(e.overlay(0, j, on=self.on, colormap=self.colormap,
                                                          alpha=self.alpha), self.overlays)
            return file
        if e.class_agnostic:
            saliency = e.image_maps[0][0]
        elif j is not None:
            saliency = e.items[0][j].saliency
        else:
            saliency = (np.max([d.saliency for d in e.items[0]], axis=0) if e.items[0]
                        else np.zeros(e.preprocessing.input_size, np.float32))
        out["files"][f"{stem}.map.png"] = encode_map(saliency)
        return f"{stem}.map.png"


def summary_lines(results: Results, methods: int, out) -> list[str]:
    lines = [line for line in results.summary_lines(methods, out) if not line.endswith(str(results.path))]
    explained = sum(len(r["detections"]) for r in results.records if not r.get("class_agnostic"))
    agnostic = sum(1 for r in results.records if r.get("class_agnostic"))
    empty = sorted({r["image"] for r in results.records if not r["detections"]})
    lines.append(f"{explained} detection maps" + (f" and {agnostic} class-agnostic image maps" if agnostic else "")
                 + f" for {len({r['image'] for r in results.records})} images x {methods} methods in {out}; "
                 f"results in {results.path}")
    if empty:
        lines.append(f"no detection explained in {len(empty)} image(s) (none above the threshold, or none of the "
                     f"chosen classes), e.g. {empty[0]}")
    return lines
