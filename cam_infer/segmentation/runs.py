"""`cam-infer explain` on a segmenter's bundle: image files → one overlay per explained (class, region), one for
the image (every region outlined), and `results.json` with a record per (image, method) listing its targets
(class, score, where the region came from, its pixels, and the map's energy inside it next to a uniform map's,
`metrics.segmentation`). The folder run is the one driver's (`cam_infer.jobs`), as for the other tasks; this
module is the segmenter's settings and `SegmentationWork`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CamInferError, NotInImage
from ..explainer import Explainer
from ..explanation import _safe
from ..jobs.explain import Results
from ..jobs.folders import read_stamped
from ..postprocess import check_overlay_options, check_overlays, encode_map, encode_picture
from ..runs import bundle_hashes, check_on, options_per_method, with_effective_options
from ..tasks import class_index


def explain_segmentation_files(explainer: Explainer, paths, methods: list[str], out, *, target=None,
                               region: str | None = None, options: dict | None = None, colormap: str = "jet", alpha: float = 0.5,
                               restart: bool = False, progress: bool | None = None, on: str = "original",
                               workers=None, ray: str | None = None, threads: int | None = None, report=None,
                               overlays: str = "jpg") -> Results:
    """`target`: None (each image's largest class but the background), "all" (every class present) or a list of
    classes (labels or indices). `region` (`region_of`): the pixels each class is explained over instead of where
    the model assigns it. `overlays`: "jpg" (default), "png", or "none": the maps alone, 8-bit grey PNGs at the
    model's input (`.map.png`)."""
    from ..jobs.driver import spec_for
    from ..jobs.explain import explain_job
    from ..parallel import make_runner

    check_overlay_options(colormap, alpha)
    check_overlays(overlays)
    check_on(on)
    per_method = options_per_method(methods, options or {}, "segmentation")
    if target not in (None, "all"):
        for c in target:                         # an unknown class is refused before the run, not on its first image
            class_index(c, explainer.labels, explainer.bundle.num_classes)
    region_of(region, None)                      # a malformed region is refused before the run
    runner = make_runner(workers, ray, threads)
    settings = {"bundle": bundle_hashes(explainer.bundle), "layer": explainer.bundle.layers,
                "backend": explainer.backend.describe(), "precision": explainer.backend.precision,
                "task": "segmentation", "target": target, "region": region,
                "options": per_method, "colormap": colormap, "alpha": alpha, "on": on, "overlays": overlays}
    work = SegmentationWork(spec_for(explainer, runner), tuple(methods), target, per_method, colormap, alpha, on,
                            overlays, region)
    return explain_job(paths, out, settings, methods, work, runner, restart=restart, progress=progress, report=report,
                       cost=lambda: cost_line(methods, explainer, per_method),
                       effective=lambda recorded: with_effective_options(recorded, methods, "segmentation"))


def region_of(region: str | None, image) -> object:
    """The region an image's classes are explained over, from `--region`: None; a box "X1,Y1,X2,Y2" or a pixel
    "X,Y" (numbers); a mask PNG; a folder of masks named after the images (`image`: its path; None only checks)."""
    if region is None:
        return None
    parts = region.split(",")
    if len(parts) in (2, 4) and not Path(region).exists():
        try:
            return [float(v) for v in parts]
        except ValueError:
            pass
    path = Path(region)
    if path.is_file():
        return str(path)
    if not path.is_dir():
        raise CamInferError(f"--region '{region}' is neither X1,Y1,X2,Y2, X,Y, a mask PNG nor a folder of masks")
    if image is None:
        return None
    mask = path / f"{Path(image).stem}.png"
    if not mask.is_file():
        raise CamInferError(f"no region mask for {Path(image).name} in {path} (expected {mask.name})")
    return str(mask)


def cost_line(methods, explainer=None, options: dict | None = None) -> str:
    """What the methods cost per explained target: counted on `explainer`'s bundle where a method counts its
    passes (its head rows, none where recipro's linear-tail shortcut runs), else as its registration says."""
    from ..methods import get_method
    return "cost per target: " + "; ".join(f"{m} {_cost(get_method(m, 'segmentation').implementation('segmentation'), explainer, (options or {}).get(m, {}))}"
                                           for m in methods)


def _cost(code, explainer, options: dict) -> str:
    if code.passes is None or explainer is None:
        return code.cost
    bundle = explainer.bundle
    levels = bundle.cut_levels or [{"shape": bundle.activation_shape}]
    cells = sum(int(lv["shape"][1]) * int(lv["shape"][2]) for lv in levels)
    passes = code.passes((1, 1, cells), {**code.defaults(), **options}, explainer.task.tail is not None)
    return passes.describe() if passes.head else "no head pass (the linear-tail shortcut)"


@dataclass(frozen=True)
class SegmentationWork:
    """A batch of images [(path, overlay name, methods still to do, _)] → their records, overlays or maps (one
    for each image, one per explained target) or why they could not be read (`cam_infer.jobs.driver.Job`)."""

    spec: object                            # ExplainerSpec
    methods: tuple
    target: object
    options: dict                           # method → its options
    colormap: str
    alpha: float
    on: str
    overlays: str = "jpg"
    region: str | None = None

    def __call__(self, batch) -> dict:
        out = {"inputs": {}, "rows": [], "files": {}, "errors": []}
        for path, name, needed, _ in batch:
            read = read_stamped(path, out["errors"])
            if read is not None:
                out["inputs"][str(path)] = read[1]
                self._explain(self.spec.open(), path, name, needed, *read, out)
        return out

    def _explain(self, explainer, path, name: str, needed, rgb, stamp, out: dict) -> None:
        try:
            region = region_of(self.region, path)
        except CamInferError as error:
            out["errors"].append({"image": str(path), "error": str(error)})
            return
        for method in (m for m in self.methods if m in needed):
            try:
                e = explainer.explain([rgb], method, target=self.target, region=region, **self.options[method])
            except NotInImage as error:
                out["errors"].append({"image": str(path), "error": f"{Path(path).name}: {error}"})
                return
            key = "map" if self.overlays == "none" else "overlay"
            targets = []
            for j, s in enumerate(e.items[0]):
                record = s.record()
                if not e.class_agnostic:             # a class-agnostic map is the image's one picture
                    record[key] = self._picture(e, j, f"{name}_{method}_{j}_{_safe(s.label or str(s.class_id))}", out)
                targets.append(record)
            out["rows"].append({"image": str(path), "method": method,
                                **({"class_agnostic": True} if e.class_agnostic else {}), "targets": targets,
                                "milliseconds": round(e.milliseconds, 3),
                                key: self._picture(e, None, f"{name}_{method}", out), "input": stamp})

    def _picture(self, e, j: int | None, stem: str, out: dict) -> str:
        """Target j's picture (None: the image's, every region outlined), as `overlays` asks; its file name."""
        if self.overlays != "none":
            file = f"{stem}.{self.overlays}"
            out["files"][file] = encode_picture(e.overlay(0, j, on=self.on, colormap=self.colormap,
                                                          alpha=self.alpha), self.overlays)
            return file
        items = e.items[0] if j is None else [e.items[0][j]]
        out["files"][f"{stem}.map.png"] = encode_map(np.max([s.saliency for s in items], axis=0))
        return f"{stem}.map.png"


def summary_lines(results: Results, methods: int, out) -> list[str]:
    lines = [line for line in results.summary_lines(methods, out) if not line.endswith(str(results.path))]
    explained = sum(len(r["targets"]) for r in results.records)
    lines.append(f"{explained} (class, region) maps for {len({r['image'] for r in results.records})} images x "
                 f"{methods} methods in {out}; results in {results.path}")
    return lines
