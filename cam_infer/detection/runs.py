"""`cam-infer explain` on a detector's bundle: image files → one overlay per explained detection, one for
the image (every explained detection), and `results.json` with a record per (image, method) listing its
detections (box in the original image's pixels, class, score, anchor, overlay). Resumable like the
classifier's runs (`cam_infer.runs`): same lock, same settings check, changed files redone."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import CamInferError
from ..explainer import class_index
from ..explanation import _safe
from ..outputs import OutputLock, prepare_folder
from ..postprocess import check_overlay_options, encode_png
from ..progress import Progress
from ..runs import Results, collect_images, options_per_method, overlay_names, read_stamped
from .explainer import DetectionExplainer


def explain_detection_files(explainer: DetectionExplainer, paths, methods: list[str], out, *, targets="all",
                            classes=None, boxes=None, conf=None, iou=None, options: dict | None = None,
                            colormap: str = "jet", alpha: float = 0.5, restart: bool = False,
                            progress: bool | None = None, on: str = "original", workers=None, ray: str | None = None,
                            threads: int | None = None, report=None) -> Results:
    """`report(line)`, when given, hears what the run will cost before it starts (`cam_infer.cost`)."""
    from ..cost import announce, detection_plan
    from ..methods import get_method
    from .explainer import DetectionContext
    from .targets import central_targets
    from ..parallel import ExplainerSpec, InProcess, make_runner

    check_overlay_options(colormap, alpha)
    if on not in ("original", "model"):
        raise CamInferError(f"overlays go on the 'original' image or the 'model' view, not {on!r}")
    per_method = options_per_method(methods, options or {}, "detection")
    explainer._thresholds(conf, iou, None)
    for c in classes or []:                      # an unknown class is refused before the run, not on its first image
        class_index(c, explainer.labels, explainer.bundle.num_classes)
    runner = make_runner(workers, ray, threads)
    found = collect_images(paths)
    out = prepare_folder(out)
    graphs = explainer.bundle.manifest["graphs"]
    settings = {"bundle": {role: graphs[role]["sha256"] for role in ("features", "head")},
                "backend": explainer.backend.describe(), "precision": explainer.backend.precision, "task": "detection", "targets": targets, "classes": classes,
                "boxes": boxes, "conf": conf, "iou": iou, "options": options or {}, "colormap": colormap,
                "alpha": alpha, "on": on}
    spec = ExplainerSpec.of(explainer, runner.threads)
    if isinstance(runner, InProcess):
        spec.remember(explainer)
    with OutputLock(out, "explain"):
        results = Results.open(out, json.loads(json.dumps(settings)), restart)
        results.skipped = [str(f) for f in found.skipped]
        done = results.done()
        names = overlay_names(found.files)
        todo = [i for i in found.files if any((str(i), m) not in done for m in methods)]
        work = DetectionWork(spec, tuple(methods), targets, classes, boxes, conf, iou, per_method, colormap, alpha, on)
        items = ((path, names[path], tuple(m for m in methods if (str(path), m) not in done)) for path in todo)
        if report and todo:
            counted_on = DetectionContext(explainer, None, None, None), central_targets(explainer.grid)
            report(announce(detection_plan(*counted_on, {m: get_method(m) for m in methods}, per_method),
                            explainer.backend, detector=True))
        with Progress(len(todo) * len(methods), "explain", enabled=progress) as bar:
            for result in runner.map(work, items):
                results.collect(result, out)
                bar.advance(len(methods))
        results.save()
    return results


@dataclass(frozen=True)
class DetectionWork:
    """One image (path, overlay name, methods still to do) → its records, overlay PNGs (one for the image,
    one per explained detection) or why it could not be read, for any runner (`cam_infer.parallel`)."""

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

    def __call__(self, item) -> dict:
        path, name, needed = item
        out = {"records": [], "pictures": {}, "errors": []}
        read = read_stamped(path, out["errors"])
        if read is None:
            return out
        rgb, stamp = read
        explainer = self.spec.open()
        for method in (m for m in self.methods if m in needed):
            e = explainer.explain([rgb], method, targets=self.targets, classes=self.classes, boxes=self.boxes,
                                  conf=self.conf, iou=self.iou, **self.options[method])
            overlay = f"{name}_{method}.png"
            out["pictures"][overlay] = encode_png(e.overlay(0, on=self.on, colormap=self.colormap, alpha=self.alpha))
            detections = []
            for j, d in enumerate(e.items[0]):
                if e.class_agnostic:                   # the image's one map: no picture per detection
                    detections.append(d.record())
                    continue
                file = f"{name}_{method}_{j}_{_safe(d.label)}.png"
                out["pictures"][file] = encode_png(e.overlay(0, j, on=self.on, colormap=self.colormap,
                                                             alpha=self.alpha))
                detections.append({**d.record(), "overlay": file})
            out["records"].append({"image": str(path), "method": method,
                                   **({"class_agnostic": True} if e.class_agnostic else {}), "detections": detections,
                                   "found": len(e.detections[0]), "milliseconds": round(e.milliseconds, 3),
                                   "overlay": overlay, "input": stamp})
        return out


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
