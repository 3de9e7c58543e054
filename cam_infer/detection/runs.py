"""`cam-infer explain` on a detector's bundle: image files → one overlay per explained detection, one for
the image (every explained detection), and `results.json` with a record per (image, method) listing its
detections (box in the original image's pixels, class, score, anchor, overlay). Resumable like the
classifier's runs (`cam_infer.runs`): same lock, same settings check, changed files redone."""

from __future__ import annotations

import json

from ..errors import CamInferError
from ..explanation import _safe
from ..outputs import OutputLock, prepare_folder
from ..postprocess import check_overlay_options, write_png
from ..progress import Progress
from ..runs import Results, _decode, collect_images, overlay_names
from .explainer import DetectionExplainer
from .methods import get_detection_method


def explain_detection_files(explainer: DetectionExplainer, paths, methods: list[str], out, *, targets="all",
                            classes=None, boxes=None, conf=None, iou=None, options: dict | None = None,
                            colormap: str = "jet", alpha: float = 0.5, restart: bool = False,
                            progress: bool | None = None, on: str = "original") -> Results:
    check_overlay_options(colormap, alpha)
    if on not in ("original", "model"):
        raise CamInferError(f"overlays go on the 'original' image or the 'model' view, not {on!r}")
    for m in methods:
        get_detection_method(m)
    explainer._thresholds(conf, iou, None)
    found = collect_images(paths)
    out = prepare_folder(out)
    graphs = explainer.bundle.manifest["graphs"]
    settings = {"bundle": {role: graphs[role]["sha256"] for role in ("features", "head")},
                "backend": explainer.backend.describe(), "task": "detection", "targets": targets, "classes": classes,
                "boxes": boxes, "conf": conf, "iou": iou, "options": options or {}, "colormap": colormap,
                "alpha": alpha, "on": on}
    with OutputLock(out, "explain"):
        results = Results.open(out, json.loads(json.dumps(settings)), restart)
        results.skipped = [str(f) for f in found.skipped]
        done = results.done()
        names = overlay_names(found.files)
        todo = [i for i in found.files if any((str(i), m) not in done for m in methods)]
        with Progress(len(todo) * len(methods), "explain", enabled=progress) as bar:
            for path in todo:
                for path_, rgb, stamp in _decode([path], results):
                    for method in methods:
                        if (str(path_), method) not in done:
                            record = _explain_one(explainer, path_, rgb, stamp, method, names[path_], out, targets,
                                                  classes, boxes, conf, iou, options or {}, colormap, alpha, on)
                            results.records.append(record)
                        bar.advance()
                results.save()
        results.save()
    return results


def _explain_one(explainer, path, rgb, stamp, method, name, out, targets, classes, boxes, conf, iou, options,
                 colormap, alpha, on) -> dict:
    e = explainer.explain([rgb], method, targets=targets, classes=classes, boxes=boxes, conf=conf, iou=iou, **options)
    e.names = [name]
    overlay = f"{name}_{method}.png"
    write_png(out / overlay, e.overlay(0, on=on, colormap=colormap, alpha=alpha))
    detections = []
    for j, d in enumerate(e.items[0]):
        file = f"{name}_{method}_{j}_{_safe(d.label)}.png"
        write_png(out / file, e.overlay(0, j, on=on, colormap=colormap, alpha=alpha))
        detections.append({**d.record(), "overlay": file})
    return {"image": str(path), "method": method, "detections": detections, "found": len(e.detections[0]),
            "milliseconds": round(e.milliseconds, 3), "overlay": overlay, "input": stamp}


def summary_lines(results: Results, methods: int, out) -> list[str]:
    lines = [line for line in results.summary_lines(methods, out) if not line.endswith(str(results.path))]
    explained = sum(len(r["detections"]) for r in results.records)
    empty = sorted({r["image"] for r in results.records if not r["detections"]})
    lines.append(f"{explained} detection maps for {len({r['image'] for r in results.records})} images x {methods} "
                 f"methods in {out}; results in {results.path}")
    if empty:
        lines.append(f"no detection explained in {len(empty)} image(s) (none above the threshold, or none of the "
                     f"chosen classes), e.g. {empty[0]}")
    return lines
