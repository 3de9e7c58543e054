"""The work for one image: explain it with every method and measure every metric → rows.

`audit_image(bundle, image, options, boxes)` depends on nothing but its arguments (the opened
Explainer is cached per process), so the same function can be mapped over images by a pool or a
cluster; `cam_infer.audit.run_audit` is the local driver.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from ..enhancers import split_variant
from ..errors import CamInferError, NotInImage, UnreadableImage
from ..images import load_image
from ..metrics import (
    auc,
    box_localisation,
    causal_frames,
    class_probabilities,
    complexity,
    energy_in_region,
    energy_pointing,
    explanation_inputs,
    pointing_hit,
    pointing_in_region,
    uniform_baseline,
)
from ..metrics.road import ARCC_PERCENTILES, PERCENTILES, arcc, arcc_coherency, road, road_defined
from ..methods.registry import class_agnostic
from ..outputs import fingerprint
from ..postprocess import encode_png, overlay
from .baselines import BASELINES, available, explain_baseline
from .re_explanations import ReExplanations

METRICS = ("adcc", "insertion", "deletion", "pointing", "energy", "box", "road", "arcc")
OPT_IN = ("road", "arcc")                       # measured only when asked for: 18 and 8 imputations per map
LOCALISATION = ("pointing", "energy", "box")    # need ground-truth boxes
FROM_MASKS = ("pointing", "energy")             # ... or masks (`cam_infer.audit.masks`)
# baseline 1: a baseline map's row (`cam_infer.audit.baselines`), not a method's.
# class_id, label, probability: the class the metrics score; a class-agnostic map (class_agnostic 1) explains
# none, and they are then the model's top-1.
COLUMNS = ("image", "method", "class_agnostic", "class_id", "label", "probability", "degenerate", "average_drop",
           "increase", "coherency", "complexity", "adcc", "insertion", "deletion", "pointing", "energy", "box_iou",
           "box_hit", "energy_baseline", "baseline", "road_morf", "road_lerf", "road", "arcc")
THUMBNAIL = 128
OVERLAYS = "overlays"                 # the report's thumbnails


@dataclass(frozen=True)
class AuditOptions:
    """Every protocol choice (research-notes §10); recorded in summary.json next to the numbers."""

    methods: tuple[str, ...]
    metrics: tuple[str, ...] | None = None  # None: every metric; the localisation ones only when boxes are given
    backend: str = "auto"
    device: str = "CPU"
    precision: str = "f32"               # f32 | bf16 | f16 | auto (the runtime's default on the device)
    target: str = "predicted"            # predicted | truth (the label of the image's boxes) | a class (label or index)
    space: str = "normalised"            # masking for Average Drop / Coherency: normalised | raw
    coherency_at: str = "input"          # input (Poppi: H×W) | map (Recipro: h×w)
    steps: int = 28                      # insertion / deletion steps (RISE: 224·8 pixels a step at 224²)
    deletion_substrate: str = "zeros"
    insertion_substrate: str = "blur"
    auc: str = "rise"
    box_threshold: float = 0.2           # of the max, CAM's rule
    iou_threshold: float = 0.5
    tolerance: float = 0.0               # pointing game, pixels (the paper: 15)
    method_options: dict = field(default_factory=dict)   # method → {option: value}
    enhance_options: dict = field(default_factory=dict)  # enhancer → {option: value}
    masks: str | None = None             # folder of ground-truth masks: pointing and energy in their regions
    baselines: tuple[str, ...] | None = None   # baseline maps scored beside the methods; None: all that can be drawn

    def to_dict(self) -> dict:
        d = asdict(self)
        d["methods"] = list(self.methods)
        d["metrics"] = None if self.metrics is None else list(self.metrics)
        d["baselines"] = None if self.baselines is None else list(self.baselines)
        return d

    def localisable(self, boxes: bool) -> tuple[str, ...]:
        """The localisation metrics the ground truth allows: all with boxes, pointing and energy with masks."""
        return tuple(m for m in LOCALISATION if boxes or (self.masks and m in FROM_MASKS))

    def resolved(self, boxes: bool) -> "AuditOptions":
        """These options with the metrics to measure spelled out: by default every metric, the localisation
        ones only when ground truth (boxes, masks) allows them; one asked for without it is an error."""
        allowed = self.localisable(boxes)
        if self.metrics is None:
            return replace(self, metrics=tuple(m for m in METRICS if m not in OPT_IN
                                               and (m in allowed or m not in LOCALISATION)))
        asked = [m for m in self.metrics if m in LOCALISATION and m not in allowed]
        if asked:
            raise CamInferError(f"metric {', '.join(asked)} needs ground-truth boxes: give --boxes FILE (boxes=...)"
                                " (pointing and energy: or --masks DIR) or leave the metrics at their default")
        return self

    def skipped_metrics(self, boxes: bool) -> tuple[str, ...]:
        """The default metrics left out for want of ground truth."""
        allowed = self.localisable(boxes)
        return tuple(m for m in LOCALISATION if m not in allowed) if self.metrics is None else ()

    @classmethod
    def from_arguments(cls, args) -> "AuditOptions":
        """From `cam-infer audit`'s arguments: method and metric lists, ``method.key=value`` options."""
        from ..methods import GRADIENT_FREE
        from ..runs import parse_option

        if "all" in args.methods.split(",") and args.methods != "all":
            raise CamInferError("'all' cannot be combined with other methods")
        methods = tuple(GRADIENT_FREE) if args.methods == "all" else tuple(m.strip() for m in args.methods.split(","))
        enhancers = [e.strip() for e in args.enhance.split(",")] if args.enhance else []
        methods = with_enhanced_variants(methods, enhancers)
        metrics = None if args.metrics == "all" else tuple(m.strip() for m in args.metrics.split(","))
        method_options: dict = {}
        for text in args.option:
            key, value = parse_option(text)
            method, dot, name = key.partition(".")
            if not dot or method not in {split_variant(m)[0] for m in methods}:
                raise CamInferError(f"--option takes method.key=value for one of the chosen methods, not '{text}'")
            method_options.setdefault(method, {})[name] = value
        enhance_options: dict = {}
        for text in args.enhance_option:
            key, value = parse_option(text)
            enhancer, dot, name = key.partition(".")
            if not dot or enhancer not in {split_variant(m)[1] for m in methods}:
                raise CamInferError(f"--enhance-option takes enhancer.key=value for one of the chosen enhancers, "
                                    f"not '{text}'")
            enhance_options.setdefault(enhancer, {})[name] = value
        return cls(methods=methods, metrics=metrics, backend=args.backend, device=args.device,
                   precision=args.precision, target=args.target,
                   space=args.space, coherency_at=args.coherency_at, steps=args.steps,
                   deletion_substrate=args.deletion_substrate, insertion_substrate=args.insertion_substrate,
                   auc=args.auc, box_threshold=args.box_threshold, tolerance=args.tolerance,
                   method_options=method_options, enhance_options=enhance_options,
                   masks=str(Path(args.masks).resolve()) if getattr(args, "masks", None) else None,
                   baselines=parse_baselines(getattr(args, "baselines", "all")))

    @classmethod
    def from_dict(cls, d: dict) -> "AuditOptions":
        metrics = None if d.get("metrics") is None else tuple(d["metrics"])
        baselines = None if d.get("baselines") is None else tuple(d["baselines"])
        return cls(**{**d, "methods": tuple(d["methods"]), "metrics": metrics, "baselines": baselines})

    def drawn_baselines(self, priors: dict | None) -> tuple[str, ...]:
        """The baselines scored: those asked for (all by default) that the ground truth given allows."""
        can = available(priors)
        if self.baselines is None:
            return can
        missing = [b for b in self.baselines if b not in can]
        if missing:
            from .baselines import NEEDS
            raise CamInferError(f"baseline {missing[0]!r} is drawn from ground-truth {NEEDS.get(missing[0], 'data')}; "
                                f"give --{NEEDS.get(missing[0], 'boxes')} or leave it out of --baselines")
        return self.baselines


def parse_baselines(text: str) -> tuple[str, ...] | None:
    """--baselines: all (the default), none, or a comma-separated list."""
    if text in ("all", None):
        return None
    if text == "none":
        return ()
    chosen = tuple(b.strip() for b in text.split(","))
    unknown = [b for b in chosen if b not in BASELINES]
    if unknown:
        raise CamInferError(f"unknown baseline {unknown[0]!r}; baselines: {', '.join(BASELINES)}, all, none")
    return chosen


def with_enhanced_variants(methods, enhancers) -> tuple[str, ...]:
    """Each method followed by its variants under every enhancer: (recipro, recipro+sess, eigen, eigen+sess)."""
    out: list[str] = []
    for m in methods:
        out += [m] + [f"{m}+{e}" for e in enhancers if split_variant(m)[1] is None]
    return tuple(dict.fromkeys(out))


def explain_variant(explainer, x, variant: str, target, options: "AuditOptions", priors: dict | None = None):
    """explain() of a method or a method+enhancer variant, with their options from the audit's; a baseline's
    map (`cam_infer.audit.baselines`) for a baseline's name."""
    if variant in BASELINES:
        return explain_baseline(explainer, x, variant, target, priors or {})
    method, enhancer = split_variant(variant)
    kwargs = options.method_options.get(method, {})
    if class_agnostic(method):                 # its one map does not depend on the class: scored on the top-1
        target = None
    if enhancer is None:
        return explainer.explain(x, method, target=target, **kwargs)
    return explainer.explain(x, method, target=target, enhance=enhancer,
                             enhance_options=options.enhance_options.get(enhancer, {}), **kwargs)


def explainer_for(bundle, options: AuditOptions, threads: int | None = None):
    """The Explainer for these options, opened once per process (`bundle`: an opened Bundle, its folder, or
    an `ExplainerSpec`)."""
    from ..bundle import Bundle
    from ..parallel import ExplainerSpec

    if isinstance(bundle, ExplainerSpec):
        return bundle.open()
    return audit_spec(bundle.path if isinstance(bundle, Bundle) else bundle, options, threads).open()


def audit_spec(bundle, options: AuditOptions, threads: int | None = None):
    """How a worker opens the audit's Explainer: with torch gradients when a gradient method is audited, on
    OpenVINO in throughput mode (a batch of perturbed images cut over every stream)."""
    from ..methods import GRADIENT
    from ..parallel import ExplainerSpec

    gradients = "torch" if {split_variant(m)[0] for m in options.methods} & set(GRADIENT) else None
    return ExplainerSpec(os.fspath(bundle), options.backend, options.device, gradients, threads,
                         precision=options.precision, hint="throughput")


def audit_runtime(bundle, options: AuditOptions) -> tuple[str, str]:
    """The runtime and the precision the audit's passes run at (``auto`` resolved, the precision on its device):
    recorded in summary.json."""
    from ..backends import ALIASES
    from ..backends.sessions import RuntimeOptions, computed_precision

    backend = ALIASES.get(options.backend, options.backend)
    if backend == "auto":
        backend = "openvino" if bundle.graph_format == "openvino" else "onnxruntime"
    return backend, computed_precision(RuntimeOptions(precision=options.precision, device=options.device), backend,
                                       bundle)


@dataclass(frozen=True)
class AuditWork:
    """A batch of images [(path, name, _, its boxes)] → their rows and thumbnails (`audit_batch`): what every
    runner (`cam_infer.parallel`) maps over the images of an audit."""

    spec: object                          # ExplainerSpec
    options: AuditOptions
    priors: dict | None = None            # the dataset's box and mask priors (`cam_infer.audit.baselines`)

    def __call__(self, batch) -> dict:
        explainer = explainer_for(self.spec, self.options)
        curves = CausalCurves(explainer, self.options.auc)
        adccs = re_explanations(explainer, self.options, self.priors)
        out = audit_batch(batch, lambda image, boxes: audit_image(self.spec, image, self.options, boxes,
                                                                  self.priors, curves, adccs))
        adccs.flush()                                     # the batch's last re-explanations and curves, into their rows
        curves.flush()
        return out


def re_explanations(explainer, options: AuditOptions, priors: dict | None) -> ReExplanations:
    """Where ADCC's re-explanations go to be run with other images' (`ReExplanations`)."""
    return ReExplanations(lambda x, variant, targets: explain_variant(explainer, x, variant, targets, options, priors),
                          explainer.bundle.output_kind, options.coherency_at)


class CausalCurves:
    """Insertion and deletion curves of several images and maps with their frames sent to the runtime together:
    one forward call for every FLUSH_BYTES of frames (a few images' curves), each curve's AUC then written into
    its row. Frames are kept only until then: memory stays bounded whatever the batch."""

    FLUSH_BYTES = 64 * 2**20                  # ≈ 4 curves of 29 frames at 224×224

    def __init__(self, explainer, normalisation: str):
        self.explainer, self.normalisation = explainer, normalisation
        self.pending: list = []               # (row, column, frames, class id)

    def add(self, row: dict, column: str, frames: np.ndarray, class_id: int) -> None:
        self.pending.append((row, column, frames, class_id))
        if sum(p[2].nbytes for p in self.pending) >= self.FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        frames = np.concatenate([p[2] for p in self.pending])
        targets = np.concatenate([np.full(len(p[2]), p[3]) for p in self.pending])
        probabilities = class_probabilities(self.explainer, frames, targets)
        start = 0
        for row, column, curve_frames, _ in self.pending:
            row[column] = auc(probabilities[start:start + len(curve_frames)], self.normalisation)
            start += len(curve_frames)
        self.pending = []


def audit_batch(batch, audit) -> dict:
    """The driver's result (`cam_infer.jobs.driver.Job`) for a batch of images [(path, name, _, boxes)], each
    audited by `audit(path, boxes)` → {"rows", "thumbnails": method → PNG}; an unreadable image is an error."""
    out = {"inputs": {}, "rows": [], "files": {}, "errors": []}
    for image, name, _, boxes in batch:
        try:
            stamp = fingerprint(image)
            result = audit(image, boxes)
        except (UnreadableImage, OSError) as exc:
            out["errors"].append({"image": str(image), "error": str(exc)})
            continue
        except NotInImage as exc:
            out["errors"].append({"image": str(image), "error": f"{Path(image).name}: {exc}"})
            continue
        out["inputs"][str(image)] = stamp
        out["rows"] += result["rows"]
        out["files"].update({thumbnail_name(name, m): png for m, png in result["thumbnails"].items()})
    return out


def thumbnail_name(name: str, method: str) -> str:
    """An image's thumbnail in the report's overlays folder; `name` is the image's path relative to the folder
    it was found in, its '%', '/' and a leading '.' percent-encoded so that two images never share a thumbnail
    (sub/cat.png and sub__cat.png, .p.jpg and p.jpg did): sub/cat.png → overlays/sub%2Fcat.png__recipro.png."""
    flat = name.replace("%", "%25").replace("/", "%2F")
    return f"{OVERLAYS}/{'%2E' + flat[1:] if flat.startswith('.') else flat}__{method}.png"


def audit_image(bundle, image, options: AuditOptions, boxes=None, priors: dict | None = None,
                curves: "CausalCurves | None" = None, adccs: ReExplanations | None = None) -> dict:
    """One image file → {"rows": one dict per method, then per baseline (COLUMNS), "thumbnails": method → PNG
    bytes}. `bundle`: a Bundle, its folder, or an `ExplainerSpec` (the explainer is opened once per process).
    `boxes`: the image's ground truth, [x1,y1,x2,y2] or {"box": [...], "label": ...}, in its own pixels.
    `priors`: baseline name → its map in the model's input (the dataset's box and mask priors). `curves`: where
    the insertion and deletion curves go to be run with other images' (their rows are complete once it is
    flushed), `adccs` ADCC's re-explanations (`ReExplanations`, the same); None: this image's, run before
    returning."""
    if options.metrics is None:
        options = options.resolved(boxes=True)
    explainer = explainer_for(bundle, options)
    own_curves, own_adccs = curves is None, adccs is None
    curves = CausalCurves(explainer, options.auc) if own_curves else curves
    adccs = re_explanations(explainer, options, priors) if own_adccs else adccs
    prep = explainer.bundle.preprocessing
    rgb = load_image(image)
    view = prep.geometry(rgb)
    x = prep.standardise(view)[None]
    truth = _boxes_in_input(boxes or [], prep, rgb.shape, explainer)
    regions = _masks_in_input(options.masks, image, rgb.shape[:2], explainer) if options.masks else None
    target = _target(explainer, options, truth)
    rows, thumbnails = [], {}
    baselines = options.drawn_baselines(priors)
    for method in (*options.methods, *baselines):
        e = explain_variant(explainer, x, method, target, options, priors)
        s = e.saliency[0]
        class_id = int(e.targets[0])
        row = dict.fromkeys(COLUMNS, "")
        row.update(image=os.fspath(image), method=method, class_agnostic=int(e.class_agnostic), class_id=class_id,
                   label=explainer.bundle.label(class_id), probability=float(e.scores[0]),
                   degenerate=int(e.degenerate[0]), baseline=int(method in baselines))
        if "adcc" in options.metrics:
            adccs.add(row, method, explanation_inputs(x, e.saliency, options.space, [view], prep), e)
        for mode in ("insertion", "deletion"):
            if mode in options.metrics:
                substrate = options.insertion_substrate if mode == "insertion" else options.deletion_substrate
                curves.add(row, mode, causal_frames(x[0], s, mode, options.steps, substrate), class_id)
        if {"road", "arcc"} & set(options.metrics):
            row.update(_road(explainer, options, x, e, method, priors))
        own = [b for b, box_class in truth or () if box_class is None or box_class == class_id]
        if own:                 # an image without a box of the explained class has no localisation metrics
            row.update(_localisation(options, s, own, bool(e.degenerate[0])))
        if regions is not None and (regions.region(class_id) & regions.valid).any():     # as boxes: a mask
            row.update(_region_localisation(options, s, regions, class_id, bool(e.degenerate[0])))  # of the class
        rows.append(row)
        if method not in baselines:
            thumbnails[method] = _thumbnail(view, s)
    if own_adccs:
        adccs.flush()
    if own_curves:
        curves.flush()
    return {"rows": rows, "thumbnails": thumbnails}


def _localisation(options: AuditOptions, s: np.ndarray, own: list, degenerate: bool) -> dict:
    """Pointing, energy and box metrics of one map against the boxes of its class."""
    out = {}
    if "pointing" in options.metrics:
        out["pointing"] = int(pointing_hit(s, own, options.tolerance, degenerate))
    if "energy" in options.metrics:
        out["energy"] = energy_pointing(s, own)
    if "box" in options.metrics:
        best = box_localisation(s, own, options.box_threshold)
        out.update(box_iou=best, box_hit=int(best >= options.iou_threshold))
    return out


def _masks_in_input(folder, image, shape: tuple[int, int], explainer):
    """The image's ground-truth masks (`cam_infer.audit.masks`, found by its file name) in the model's input."""
    from .masks import read_truth

    labels = [explainer.bundle.label(i) for i in range(explainer.bundle.num_classes)]
    return read_truth(folder, Path(image).name, shape, labels).in_input(explainer.bundle.preprocessing)


def _region_localisation(options: AuditOptions, s: np.ndarray, truth, class_id: int, degenerate: bool) -> dict:
    """Pointing and energy of one map in its class's ground-truth region (void pixels left out); the energy
    a uniform map would get (the region's share of the valid pixels). Only where the masks hold the class: a map
    of a class the image's masks do not show (a misclassified image) has no localisation metrics, as with boxes
    (a zero against a zero baseline would count it a miss in every mean)."""
    region = truth.region(class_id)
    out = {"energy_baseline": uniform_baseline(region, truth.valid)}
    if "pointing" in options.metrics:
        out["pointing"] = int(pointing_in_region(s, region, truth.valid, degenerate))
    if "energy" in options.metrics:
        out["energy"] = energy_in_region(s, region, truth.valid)
    return out


def _boxes_in_input(boxes, prep, shape, explainer) -> list[tuple[list[int], int | None]]:
    """Boxes in the model's input, each with its class index (None: a box of any class)."""
    out = []
    for entry in boxes:
        box, label = (entry.get("box"), entry.get("label")) if isinstance(entry, dict) else (entry, None)
        if box is None or len(box) != 4:
            raise CamInferError(f"a box must be [x1, y1, x2, y2] or {{\"box\": [...], \"label\": ...}}, not {entry!r}")
        class_id = None
        if label is not None:
            class_id = entry["class_id"] if "class_id" in entry else explainer.class_id(label)
        mapped = prep.box_to_input(box, shape)
        if mapped is not None:
            out.append((mapped, class_id))
    return out


def _target(explainer, options: AuditOptions, truth):
    if options.target == "predicted":
        return None
    if options.target != "truth":
        return explainer.class_id(options.target)
    classes = {class_id for _, class_id in truth if class_id is not None}
    if len(classes) != 1:
        raise CamInferError("target 'truth' needs boxes with exactly one label per image "
                            f"({'none' if not classes else ', '.join(explainer.bundle.label(c) for c in sorted(classes))} found)")
    return classes.pop()


def _road(explainer, options: AuditOptions, x, e, variant: str, priors: dict | None) -> dict:
    """ROAD (MoRF, LeRF, combined) and ARCC of one map (`cam_infer.metrics.road`); empty where undefined: a map
    so flat that a percentile keeps no pixel leaves nothing to impute from."""
    s, class_id = e.saliency[0], int(e.targets[0])
    percentiles = PERCENTILES if "road" in options.metrics else ARCC_PERCENTILES
    if not road_defined(s, percentiles):
        return {}
    scores = road(lambda batch: class_probabilities(explainer, batch, np.array([class_id])), x[0], s,
                  base=float(e.scores[0]), percentiles=percentiles)
    out = {}
    if "road" in options.metrics:
        out.update(road_morf=scores.morf(), road_lerf=scores.lerf(), road=scores.combined())
    if "arcc" in options.metrics:
        again = explain_variant(explainer, (x * s).astype(np.float32), variant, e.targets, options, priors)
        out["arcc"] = arcc(arcc_coherency(s, again.saliency[0]), complexity(s), scores.combined(ARCC_PERCENTILES))
    return out


def _thumbnail(view: np.ndarray, saliency: np.ndarray) -> bytes:
    return thumbnail_png(overlay(view, saliency))


def thumbnail_png(picture: np.ndarray) -> bytes:
    """A picture shrunk to at most THUMBNAIL pixels a side, as PNG bytes (the report's grid)."""
    h, w = picture.shape[:2]
    scale = THUMBNAIL / max(h, w)
    if scale < 1:
        picture = cv2.resize(picture, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return encode_png(picture)


__all__ = ["AuditOptions", "AuditWork", "COLUMNS", "LOCALISATION", "METRICS", "audit_image"]
