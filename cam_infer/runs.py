"""Explaining image files in bulk: overlays on disk, a `results.json`, resumable.

    explain_files(Explainer("bundle/"), ["photos/"], ["recipro", "eigen"], "out/")

writes ``out/<stem>_<method>.png`` (the saliency over the model's view of the image: resized and
cropped as the bundle's preprocessing does) and ``out/results.json``. Images are decoded one by one:
an unreadable file is recorded under ``errors`` and the others complete. The results file is
rewritten atomically after every batch, so an interrupted run resumes where it stopped when it is
started again with the same settings.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CamInferError, MethodNotApplicable
from .images import load_image
from .methods import GRADIENT_FREE, METHODS, get_method
from .methods.registry import class_agnostic, class_agnostic_note
from .outputs import SAVE_EVERY, OutputLock, fingerprint, prepare_folder
from .postprocess import caption, check_overlay_options, class_fields, encode_png, overlay_picture, write_file
from .progress import Progress

# Every suffix OpenCV's decoder reads (JPEG and its aliases, PNG, BMP, TIFF, WebP, JPEG 2000, the PNM family,
# Sun raster, OpenEXR, Radiance HDR).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".jp2",
                  ".ppm", ".pgm", ".pbm", ".pnm", ".pxm", ".pfm", ".sr", ".ras", ".exr", ".hdr", ".pic"}
RESULTS = "results.json"


@dataclass
class ImageFiles:
    """The images of a run, in order, and the files of the given folders that are not images (skipped)."""

    files: list[Path]
    skipped: list[Path]
    names: dict[Path, str]            # image → its path relative to the folder it was found in (or its name)


def collect_images(paths) -> ImageFiles:
    """Files as given (any suffix: a non-image is reported later), folders searched recursively for
    image suffixes, in sorted order; every other file in those folders is listed as skipped."""
    found: list[Path] = []
    skipped: list[Path] = []
    names: dict[Path, str] = {}
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(f for f in p.rglob("*") if f.is_file()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    found.append(f)
                    names.setdefault(f, f.relative_to(p).as_posix())
                else:
                    skipped.append(f)
        elif p.is_file():
            found.append(p)
            names.setdefault(p, p.name)
        else:
            raise CamInferError(f"'{p}' does not exist")
    if not found:
        raise CamInferError("no images found in " + ", ".join(map(str, paths))
                            + (f" ({len(skipped)} other files skipped, e.g. '{skipped[0]}')" if skipped else ""))
    files = list(dict.fromkeys(found))
    return ImageFiles(files, list(dict.fromkeys(skipped)), unique_names(files, names))


def unique_names(files: list[Path], names: dict[Path, str]) -> dict[Path, str]:
    """The relative names, made unique where two inputs share one (a counter is appended)."""
    out: dict[Path, str] = {}
    taken: set[str] = set()
    for f in files:
        name, i = names[f], 2
        while name in taken:
            stem, dot, suffix = names[f].rpartition(".")
            name, i = (f"{stem}-{i}.{suffix}" if dot else f"{names[f]}-{i}"), i + 1
        taken.add(name)
        out[f] = name
    return out


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


def parse_option(text: str) -> tuple[str, object]:
    """``key=value`` with value read as JSON when it parses (64, 0.5, true, null), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise CamInferError(f"--option takes key=value, e.g. top_k=64, not '{text}'")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


@dataclass
class Results:
    """`results.json`: the run's settings, one record per (image, method), and unreadable images."""

    path: Path
    settings: dict
    records: list
    errors: list
    skipped: list = field(default_factory=list)
    redone: list = field(default_factory=list)     # images explained before whose file has changed since
    saved_at: float = 0.0

    @classmethod
    def open(cls, out: Path, settings: dict, restart: bool) -> "Results":
        path = out / RESULTS
        if path.exists() and not restart:
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise CamInferError(f"'{path}' is not a results file of cam-infer ({exc}); "
                                    "choose another --out or pass --force") from None
            if old.get("settings") != settings:
                raise CamInferError(f"'{out}' holds results of a run with other settings; choose another --out, "
                                    "or pass --force to start over there")
            kept = [r for r in old.get("results", []) if (out / r["overlay"]).is_file()]  # lost overlays: redo
            results = cls(path, settings, [], [])
            results.records, results.redone = _unchanged(kept)
            return results
        return cls(path, settings, [], [])

    def summary_lines(self, methods: int, out) -> list[str]:
        """What `cam-infer explain` prints after a run."""
        lines = []
        if self.redone:
            lines.append(f"redid {len(self.redone)} image(s) that changed since the last run, e.g. {self.redone[0]}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s) that are not images: " + ", ".join(self.skipped[:5])
                         + (", ..." if len(self.skipped) > 5 else "") + f" (all listed in {self.path})")
        images = len({r["image"] for r in self.records})
        lines.append(f"{len(self.records)} overlays ({images} images x {methods} methods) in {out}; "
                     f"results in {self.path}")
        return lines

    def done(self) -> set[tuple[str, str]]:
        return {(r["image"], r["method"]) for r in self.records}

    def collect(self, result: dict, out: Path) -> None:
        """A worker's result: its overlay PNGs written to `out`, its records and unreadable files kept."""
        for name, png in result["pictures"].items():
            write_file(out / name, png)
        self.records += result["records"]
        self.errors += result["errors"]
        self.save_soon()

    def save_soon(self) -> None:
        """Save if the last save is SAVE_EVERY seconds old: a killed run redoes at most that much work, and a
        long run does not rewrite a growing file after every batch."""
        if time.monotonic() - self.saved_at >= SAVE_EVERY:
            self.save()

    def save(self) -> None:
        self.saved_at = time.monotonic()
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"settings": self.settings, "results": self.records, "errors": self.errors,
                                   "skipped": self.skipped}, indent=1))
        os.replace(tmp, self.path)


def _unchanged(records: list) -> tuple[list, list]:
    """The records whose image is still the file that was explained, and the images that changed."""
    current: dict[str, dict | None] = {}
    kept, changed = [], []
    for r in records:
        image = r["image"]
        if image not in current:
            try:
                current[image] = fingerprint(image)
            except OSError:
                current[image] = None
        if r.get("input") is not None and r.get("input") == current[image]:
            kept.append(r)
        elif current[image] is not None and image not in changed:
            changed.append(image)
    return kept, changed


def overlay_names(images: list[Path]) -> dict[Path, str]:
    """Unique file stems for the overlays: the image stem, then parent_stem, then a counter."""
    names: dict[Path, str] = {}
    taken: set[str] = set()
    for image in images:
        name = image.stem
        if name in taken:
            name = f"{image.parent.name}_{image.stem}"
        base, i = name, 2
        while name in taken:
            name, i = f"{base}-{i}", i + 1
        taken.add(name)
        names[image] = name
    return names


def explain_files(explainer, paths, methods: list[str], out, *, target=None, options: dict | None = None,
                  batch_size: int = 8, colormap: str = "jet", alpha: float = 0.5, restart: bool = False,
                  progress: bool | None = None, on: str = "original", enhance: str | None = None,
                  enhance_options: dict | None = None, finer: dict | None = None, workers=None,
                  ray: str | None = None, threads: int | None = None, report=None) -> Results:
    """Explain every image with every method; write overlays and `results.json` in `out`.
    ``on="original"``: overlays over the whole original image (the map put back where the model's view
    of it was; outside that view the image is greyed); ``"model"``: over the model's resized and cropped view.
    `workers` (N or "auto": processes on this machine), `ray` (a Ray address) and `threads` (runtime threads
    per worker) choose where the batches are explained (`cam_infer.parallel`); the files are the same.
    `report(line)`, when given, hears what the run will cost before it starts (`cam_infer.cost`)."""
    from .cost import announce, classifier_plan
    from .enhancers import variants
    from .parallel import ExplainerSpec, InProcess, make_runner

    if batch_size < 1:
        raise CamInferError("batch size must be at least 1")
    if on not in ("original", "model"):
        raise CamInferError(f"overlays go on the 'original' image or the 'model' view, not {on!r}")
    check_overlay_options(colormap, alpha)
    runner = make_runner(workers, ray, threads)
    found = collect_images(paths)
    images = found.files
    methods, _ = choose_methods(methods, explainer.linear_head is not None)
    per_method = options_per_method(methods, options or {})
    if target is not None:
        explainer.class_id(target, explainer.bundle.num_classes)
    out = prepare_folder(out)
    graphs = explainer.bundle.manifest["graphs"]
    enhancer = None if enhance is None else {"name": enhance, "options": dict(enhance_options or {})}
    if enhance is not None:
        from .enhancers import get_enhancer
        get_enhancer(enhance)
    settings = {"bundle": {role: graphs[role]["sha256"] for role in ("features", "head")},
                "backend": explainer.backend.describe(), "precision": explainer.backend.precision, "target": target, "options": per_method, "colormap": colormap,
                "alpha": alpha, "on": on, **({"enhance": enhancer} if enhancer else {}),
                **({"finer": finer} if finer else {})}
    spec = ExplainerSpec.of(explainer, runner.threads)
    if isinstance(runner, InProcess):
        spec.remember(explainer)
    elif explainer.backend.name == "torch":
        raise CamInferError("workers open the bundle themselves; a PyTorch model in memory cannot be sent to them: "
                            "export it to a bundle (cam-infer export) and explain that")
    with OutputLock(out, "explain"):
        results = Results.open(out, json.loads(json.dumps(settings)), restart)
        results.skipped = [str(f) for f in found.skipped]
        agnostic = [m for m in methods if class_agnostic(m)] if target is not None else []
        if agnostic:
            print(f"note: {class_agnostic_note(agnostic)}")
        done = results.done()
        names = overlay_names(images)
        todo = [i for i in images if any((str(i), m) not in done for m in methods)]
        work = ExplainWork(spec, tuple(methods), per_method, target, colormap, alpha, on, enhancer,
                           results.settings.get("finer"))
        batches = ([(path, names[path], tuple(m for m in methods if (str(path), m) not in done))
                    for path in todo[start:start + batch_size]] for start in range(0, len(todo), batch_size))
        if report and todo:
            shown = variants([m if enhance is None else f"{m}+{enhance}" for m in methods])
            report(announce(classifier_plan(explainer.bundle, shown, per_method, explainer.linear_head is not None,
                                            enhancer and {enhance: enhancer["options"]}), explainer.backend))
        with Progress(len(todo) * len(methods), "explain", enabled=progress) as bar:
            for result in runner.map(work, batches):
                results.collect(result, out)
                bar.advance(result["images"] * len(methods))
        results.save()
    return results


def read_stamped(path, errors: list) -> tuple[np.ndarray, dict] | None:
    """(RGB image, its stamp), or None with the reason added to `errors` when it cannot be read. The stamp
    is taken before decoding: a file replaced meanwhile is redone next time."""
    try:
        stamp = fingerprint(path)
        return load_image(path), stamp
    except (CamInferError, OSError) as exc:
        errors.append({"image": str(path), "error": str(exc)})
        return None


@dataclass(frozen=True)
class ExplainWork:
    """One batch of images [(path, overlay name, methods still to do)] → its records, overlay PNGs and
    unreadable files: what every runner (`cam_infer.parallel`) maps over the batches of a run."""

    spec: object                            # ExplainerSpec
    methods: tuple
    per_method: dict
    target: object
    colormap: str
    alpha: float
    on: str
    enhancer: dict | None
    finer: dict | None

    def __call__(self, batch) -> dict:
        explainer = self.spec.open()
        out = {"records": [], "pictures": {}, "errors": [], "images": len(batch)}
        decoded = []
        for path, name, needed in batch:
            read = read_stamped(path, out["errors"])
            if read:
                decoded.append((path, name, needed, *read))
        for method in self.methods:
            self._explain(explainer, [d for d in decoded if method in d[2]], method, out)
        return out

    def _explain(self, explainer, batch, method: str, out: dict) -> None:
        if not batch:
            return
        prep = explainer.bundle.preprocessing
        views = [prep.geometry(rgb) for *_, rgb, _ in batch]
        x = np.stack([prep.normalise(v) for v in views])
        extra = {} if self.enhancer is None else {"enhance": self.enhancer["name"],
                                                  "enhance_options": self.enhancer["options"]}
        if self.finer:
            extra["finer"] = self.finer
        target = None if class_agnostic(method) else self.target      # the run said so once, up front
        e = explainer.explain(x, method=method, target=target, **extra, **self.per_method[method])
        uniform = e.uniform
        for i, ((path, name, _, rgb, stamp), view) in enumerate(zip(batch, views)):
            file = f"{name}_{e.method}.png"
            class_id = int(e.targets[i])
            label = explainer.bundle.label(class_id) if explainer.bundle.labels else None
            picture = overlay_picture(e.saliency[i], rgb if self.on == "original" else view,
                                      prep if self.on == "original" else None,
                                      caption(e.method, label, e.map_class(i), float(e.scores[i]),
                                              bool(e.degenerate[i]), bool(uniform[i])),
                                      colormap=self.colormap, alpha=self.alpha)
            out["pictures"][file] = encode_png(picture)
            out["records"].append({
                "image": str(path), "method": method,
                **class_fields(class_id, label, round(float(e.scores[i]), 6), e.class_agnostic),
                "milliseconds": round(e.milliseconds / len(batch), 3),
                "degenerate": bool(e.degenerate[i]), "uniform": bool(uniform[i]), "overlay": file, "input": stamp})
