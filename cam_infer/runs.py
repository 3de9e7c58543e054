"""Explaining image files in bulk: overlays on disk, a `results.json`, resumable.

    explain_files(Explainer("bundle/"), ["photos/"], ["recipro", "eigen"], "out/")

writes ``out/<stem>_<method>.jpg`` (the saliency over the image; ``overlays="png"``: lossless PNGs;
``overlays="none"``: the maps alone, 8-bit at the model's input size, in the run's array store ``out/maps/``
(`cam_infer.jobs.map_store`, read back with `read_maps`), or with ``maps="png"`` one ``<stem>_<method>.map.png``
each) and ``out/results.json``. Images are decoded one by one:
an unreadable file is recorded under ``errors`` and the others complete. The folder run itself (lock,
resume, runners, files) is `cam_infer.jobs`'; this module is what a classifier adds: its methods, options,
settings and `ExplainWork`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .errors import CamInferError, MethodNotApplicable
from .jobs.explain import Results
from .jobs.folders import read_stamped
from .methods import GRADIENT_FREE, METHODS, get_method
from .methods.registry import class_agnostic_note
from .postprocess import (caption, check_overlay_options, check_overlays, class_fields, encode_map, encode_picture,
                          map_levels, overlay_picture)


def choose_methods(names: list[str], has_linear_head: bool) -> tuple[list[str], list[str]]:
    """Expand ``all`` (every gradient-free method that applies to this model); return (chosen, skipped).
    A method asked for by name that cannot run on this model is an error (`MethodNotApplicable`)."""
    chosen, skipped = [], []
    for name in names:
        if name == "all":
            for m in GRADIENT_FREE:
                (skipped if METHODS[m].applies(has_linear_head) else chosen).append(m)
        else:
            why_not = get_method(name).applies(has_linear_head)
            if why_not:
                raise MethodNotApplicable(why_not)
            chosen.append(name)
    return list(dict.fromkeys(chosen)), skipped


def options_per_method(methods: list[str], options: dict, task: str = "classification") -> dict[str, dict]:
    """Give each method the options it takes; an option no chosen method takes is an error."""
    taken = {m: get_method(m, task).implementation(task).options for m in methods}
    for key in options:
        if not any(key in taken[m] for m in methods):
            raise CamInferError(f"no chosen method has an option '{key}' "
                                f"(options: {', '.join(f'{m}: {list(taken[m])}' for m in methods)})")
    return {m: {k: v for k, v in options.items() if k in taken[m]} for m in methods}


def effective_options(options, methods, task: str = "classification"):
    """Each method's options as it runs them: its defaults, then those given, so that an option given at its default
    is the same run as one left out. `options` as a run records them, by method (or, in a detector's or segmenter's
    run of an earlier release, one dict for all of `methods`); a method this release does not know keeps its own."""
    if not isinstance(options, dict):
        return options
    by_method = options if options and all(isinstance(v, dict) for v in options.values()) else None
    effective = {}
    for method in (by_method or methods):
        accepted = method_defaults(method, task)
        given = by_method[method] if by_method else {k: v for k, v in options.items()
                                                     if accepted is None or k in accepted}
        effective[method] = {**(accepted or {}), **given}
    return json.loads(json.dumps(effective, default=str))


def with_effective_options(settings: dict, methods, task: str = "classification") -> dict:
    """A run's settings with each method's options as it runs them (`effective_options`): what a rerun compares."""
    return {**settings, "options": effective_options(settings.get("options", {}), methods, task)}


def method_defaults(method: str, task: str) -> dict | None:
    """The options `method` takes for `task`, at their defaults; None for a method this release does not know."""
    try:
        return get_method(method, task).implementation(task).defaults()
    except CamInferError:
        return None


def parse_option(text: str) -> tuple[str, object]:
    """``key=value`` with value read as JSON when it parses (64, 0.5, true, null), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise CamInferError(f"--option takes key=value, e.g. top_k=64, not '{text}'")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def explain_files(explainer, paths, methods: list[str], out, *, target=None, options: dict | None = None,
                  batch_size: int = 8, colormap: str = "jet", alpha: float = 0.5, restart: bool = False,
                  progress: bool | None = None, on: str = "original", enhance: str | None = None,
                  enhance_options: dict | None = None, finer: dict | None = None, workers=None,
                  ray: str | None = None, threads: int | None = None, report=None, overlays: str = "jpg",
                  maps: str = "array") -> Results:
    """Explain every image with every method; write overlays and `results.json` in `out`.
    ``on="original"``: overlays over the whole original image (the map put back where the model's view
    of it was; outside that view the image is greyed); ``"model"``: over the model's resized and cropped view.
    `overlays`: "jpg" (default), "png", or "none" (the maps alone, no overlay drawn), then `maps`: "array" (default:
    every map in the run's array store, `cam_infer.jobs.map_store.read_maps`) or "png" (an 8-bit grey PNG each).
    `workers` (N or "auto": processes on this machine), `ray` (a Ray address) and `threads` (runtime threads
    per worker) choose where the batches are explained (`cam_infer.parallel`); the files are the same.
    `report(line)`, when given, hears what the run will cost before it starts (`cam_infer.cost`)."""
    from .cost import announce, classifier_plan
    from .enhancers import variants
    from .jobs.driver import spec_for
    from .jobs.explain import explain_job
    from .parallel import make_runner

    if batch_size < 1:
        raise CamInferError("batch size must be at least 1")
    check_on(on)
    check_overlay_options(colormap, alpha)
    check_overlays(overlays)
    check_maps(maps)
    runner = make_runner(workers, ray, threads)
    methods, _ = choose_methods(methods, explainer.linear_head is not None)
    per_method = options_per_method(methods, options or {})
    if target is not None:
        explainer.class_id(target)
    enhancer = None if enhance is None else {"name": enhance, "options": dict(enhance_options or {})}
    if enhance is not None:
        from .enhancers import get_enhancer
        get_enhancer(enhance)
    if finer is not None:                       # a bad γ is refused before the run, not on its first image
        from .finer import Finer
        Finer.of(finer)
    settings = {"bundle": bundle_hashes(explainer.bundle), "layer": explainer.bundle.layers,
                "backend": explainer.backend.describe(), "precision": explainer.backend.precision, "target": target,
                "options": per_method, "colormap": colormap,
                "alpha": alpha, "on": on, "overlays": overlays, **({"maps": maps} if overlays == "none" else {}),
                **({"enhance": enhancer} if enhancer else {}), **({"finer": finer} if finer else {})}
    agnostic = [m for m in methods if explainer.class_agnostic(m)] if target is not None else []
    if agnostic:
        print(f"note: {class_agnostic_note(agnostic)}")
    work = ExplainWork(spec_for(explainer, runner), tuple(methods), per_method, target, colormap, alpha, on, enhancer,
                       json.loads(json.dumps(finer)) if finer else None, overlays, maps)

    def cost() -> str:
        shown = variants([m if enhance is None else f"{m}+{enhance}" for m in methods])
        return announce(classifier_plan(explainer.bundle, shown, per_method, explainer.linear_head is not None,
                                        enhancer and {enhance: enhancer["options"]}), explainer.backend)

    return explain_job(paths, out, settings, methods, work, runner, batch_size=batch_size, restart=restart,
                       progress=progress, report=report, cost=cost,
                       effective=lambda recorded: with_effective_options(recorded, methods))


def check_maps(maps: str) -> None:
    if maps not in ("array", "png"):
        raise CamInferError(f"--maps takes array or png, not {maps!r}")


def check_on(on: str) -> None:
    if on not in ("original", "model"):
        raise CamInferError(f"overlays go on the 'original' image or the 'model' view, not {on!r}")


def bundle_hashes(bundle) -> dict:
    """What a run's settings record of the bundle: its graphs' hashes."""
    return {role: bundle.manifest["graphs"][role]["sha256"] for role in ("features", "head")}


@dataclass(frozen=True)
class ExplainWork:
    """One batch of images [(path, overlay name, methods still to do, _)] → its records, overlays (or maps) and
    unreadable files (`cam_infer.jobs.driver.Job`): what every runner maps over the batches of a run."""

    spec: object                            # ExplainerSpec
    methods: tuple
    per_method: dict
    target: object
    colormap: str
    alpha: float
    on: str
    enhancer: dict | None
    finer: dict | None
    overlays: str = "jpg"
    maps: str = "array"

    def __call__(self, batch) -> dict:
        explainer = self.spec.open()
        out = {"inputs": {}, "rows": [], "files": {}, "errors": []}
        decoded = []
        for path, name, needed, _ in batch:
            read = read_stamped(path, out["errors"])
            if read:
                decoded.append((path, name, needed, *read))
                out["inputs"][str(path)] = read[1]
        for method in self.methods:
            self._explain(explainer, [d for d in decoded if method in d[2]], method, out)
        return image_major(out, [str(d[0]) for d in decoded], self.methods)

    def _explain(self, explainer, batch, method: str, out: dict) -> None:
        """One method on the batch's images (one call), their rows appended."""
        if not batch:
            return
        prep = explainer.bundle.preprocessing
        views = [prep.geometry(rgb) for *_, rgb, _ in batch]
        x = np.stack([prep.standardise(v) for v in views])
        extra = {} if self.enhancer is None else {"enhance": self.enhancer["name"],
                                                  "enhance_options": self.enhancer["options"]}
        if self.finer:
            extra["finer"] = self.finer
        target = None if explainer.class_agnostic(method) else self.target      # the run said so once, up front
        e = explainer.explain(x, method=method, target=target, **extra, **self.per_method[method])
        uniform = e.uniform
        for i, ((path, name, _, rgb, stamp), view) in enumerate(zip(batch, views)):
            class_id = int(e.targets[i])
            label = explainer.bundle.label(class_id) if explainer.bundle.labels else None
            if self.overlays == "none" and self.maps == "array":
                key, file = "map", None                          # the driver gives it its shard and slot
                out.setdefault("maps", []).append((len(out["rows"]), map_levels(e.saliency[i])))
            elif self.overlays == "none":
                key, file = "map", f"{name}_{e.method}.map.png"
                out["files"][file] = encode_map(e.saliency[i])
            else:
                key, file = "overlay", f"{name}_{e.method}.{self.overlays}"
                picture = overlay_picture(e.saliency[i], rgb if self.on == "original" else view,
                                          prep if self.on == "original" else None,
                                          caption(e.method, label, e.map_class(i), float(e.scores[i]),
                                                  bool(e.degenerate[i]), bool(uniform[i])),
                                          colormap=self.colormap, alpha=self.alpha)
                out["files"][file] = encode_picture(picture, self.overlays)
            out["rows"].append({
                "image": str(path), "method": method,
                **class_fields(class_id, label, round(float(e.scores[i]), 6), e.class_agnostic),
                "milliseconds": round(e.milliseconds / len(batch), 3),
                "degenerate": bool(e.degenerate[i]), "uniform": bool(uniform[i]), key: file, "input": stamp})


def image_major(out: dict, images: list[str], methods) -> dict:
    """A batch's rows image by image, each image's in the run's method order (they are explained method by method,
    one call each), so that results.json reads the same whatever the batch size; the array store's row positions
    follow."""
    rows = out["rows"]
    image_at, method_at = {image: i for i, image in enumerate(images)}, {m: i for i, m in enumerate(methods)}
    order = sorted(range(len(rows)), key=lambda r: (image_at[rows[r]["image"]], method_at[rows[r]["method"]]))
    moved = {old: new for new, old in enumerate(order)}
    out["rows"] = [rows[r] for r in order]
    if "maps" in out:
        out["maps"] = [(moved[position], levels) for position, levels in out["maps"]]
    return out
