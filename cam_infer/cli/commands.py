"""One function per command: call the module that does the work, print what it returns."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CamInferError
from .arguments import PREPROCESSING, PROTOCOL, preprocessing_fields


def demo(args) -> int:
    from ..tools.demo import run_demo
    run_demo(args.out, backend=args.backend, precision=args.precision, device=args.device)
    return 0


def split(args) -> int:
    from ..bundle import split_model
    from ..bundle.describe import describe
    size = tuple(args.input_size) if args.input_size else None
    if _is_detection(args):
        from ..detection.split import split_detector
        if args.layer != "auto":
            raise CamInferError(f"--layer {args.layer}: a detector is cut with --cut (detect-input, the default; "
                                "backbone; or tensor names), not --layer")
        unread = ["--" + name for name in PREPROCESSING if name != "interpolation" and getattr(args, name) is not None]
        if unread or args.layout:
            flags = ", ".join(unread + ["--layout"] * bool(args.layout))
            raise CamInferError(f"{flags}: a detector is split with the Ultralytics export's preprocessing (letterbox, "
                                "RGB, x/255, NCHW), which these would change; only --input-size and --interpolation "
                                "are read")
        thresholds = {name: value for name, value in (("conf", args.conf), ("iou", args.iou)) if value is not None}
        print(describe(split_detector(args.model, args.out, cut=args.cut or "detect-input", input_size_hw=size,
                                      labels=args.labels, overwrite=args.force, interpolation=args.interpolation,
                                      **thresholds)))
        return 0
    given = [flag for flag, value in (("--cut", args.cut), ("--conf", args.conf), ("--iou", args.iou))
             if value is not None]
    if given:
        raise CamInferError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for detectors, and this model is "
                            "not recognised as one (give --task detection if it is; a classifier or segmenter is cut "
                            "with --layer)")
    if _is_segmentation(args) and not str(args.model).lower().endswith(".onnx"):
        from ..bundle.openvino_segmentation import split_openvino_segmenter
        print(describe(split_openvino_segmenter(args.model, layer=args.layer, out=args.out, labels=args.labels,
                                                preprocessing=preprocessing_fields(args), overwrite=args.force,
                                                layout=args.layout)))
        return 0
    if _is_segmentation(args):
        from ..bundle.segmentation import split_segmenter
        print(describe(split_segmenter(args.model, layer=args.layer, out=args.out, input_size=size, labels=args.labels,
                                       preprocessing=preprocessing_fields(args), overwrite=args.force,
                                       layout=args.layout)))
        return 0
    print(describe(split_model(args.model, layer=args.layer, out=args.out, input_size=size, labels=args.labels,
                               preprocessing=preprocessing_fields(args), overwrite=args.force, layout=args.layout)))
    return 0


def _is_detection(args) -> bool:
    if args.task != "auto":
        return args.task == "detection"
    if str(args.model).lower().endswith(".xml"):        # an IR (a TFLite file's op names change at each reading)
        from ..bundle.openvino_split import read_openvino_model
        from ..detection.openvino_split import is_openvino_detector
        return is_openvino_detector(read_openvino_model(args.model))
    if not str(args.model).lower().endswith(".onnx"):
        return False
    from ..bundle.graph import load_onnx
    from ..detection.anatomy import is_detector
    return is_detector(load_onnx(args.model))


def _is_segmentation(args) -> bool:
    if args.task != "auto":
        return args.task == "segmentation"
    if not str(args.model).lower().endswith(".onnx"):      # a file OpenVINO reads: split_model recognises it
        return False
    from ..bundle.graph import load_onnx
    from ..bundle.segmentation import is_segmenter
    return is_segmenter(load_onnx(args.model))


def export(args) -> int:
    from ..bundle.describe import describe
    from ..bundle.export import export_torch, load_factory, load_weights
    model = load_factory(args.factory)()
    if args.weights:
        load_weights(model, args.weights)
    print(describe(export_torch(model, layer=args.layer, input_size=tuple(args.input_size), out=args.out,
                                exporter=args.exporter, preprocessing=preprocessing_fields(args), labels=args.labels,
                                overwrite=args.force)))
    return 0


def info(args) -> int:
    from ..backends import check_backend
    from ..bundle import Bundle
    from ..bundle.describe import describe
    if args.precision != "f32" and not args.backend:
        raise CamInferError("--precision is the precision info runs one image at on --backend; give the runtime too "
                            "(e.g. --backend openvino --precision bf16)")
    bundle = Bundle.load(args.bundle)
    print(json.dumps(bundle.manifest, indent=2) if args.json else describe(bundle))
    if args.backend:
        print(check_backend(bundle, args.backend, args.device, args.precision))
    return 0


def explain(args) -> int:
    from ..bundle import Bundle
    bundle = Bundle.load(args.bundle)
    if args.region is not None and bundle.task != "segmentation":
        raise CamInferError(f"--region is for segmenters; this bundle is a {bundle.task} model")
    detector_flags = [flag for flag, given in (("--detections", args.detections != "all"), ("--classes", args.classes),
                                               ("--box", args.box), ("--conf", args.conf is not None),
                                               ("--iou", args.iou is not None)) if given]
    if detector_flags and bundle.task != "detection":
        raise CamInferError(f"{' and '.join(detector_flags)} {'is' if len(detector_flags) == 1 else 'are'} for "
                            f"detectors; this bundle is a {bundle.task} model")
    if args.maps is not None and args.overlays != "none":
        raise CamInferError(f"--maps says how maps are written without overlays; give it with --overlays none "
                            f"(with --overlays {args.overlays} the maps are in the overlays)")
    if args.enhance_option and args.enhance is None:
        raise CamInferError("--enhance-option sets an enhancer's option; give the enhancer with --enhance")
    finer_flags = [flag for flag, value in (("--finer-references", args.finer_references),
                                            ("--finer-preset", args.finer_preset)) if value is not None]
    if finer_flags and args.finer is None:
        raise CamInferError(f"{' and '.join(finer_flags)} set Finer-CAM's comparison; give it with --finer GAMMA")
    run = {"detection": explain_detections, "segmentation": explain_segments}.get(bundle.task, explain_classes)
    results, lines = run(bundle, args)
    for line in lines:
        print(line)
    if results.errors:
        raise CamInferError(f"{len(results.errors)} image(s) could not be read or explained, e.g. "
                            f"{results.errors[0]['error']}; the others are done (see {results.path})")
    return 0


def method_names(text: str) -> list[str]:
    """--method's comma-separated names; none at all is an error, not a run that writes nothing."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise CamInferError(f"--method names no method ({text!r}); give one or more, comma-separated")
    return names


def explain_classes(bundle, args):
    from ..jobs.explainers import open_explainer
    from ..finer import Finer
    from ..runs import choose_methods, explain_files, parse_option
    names = method_names(args.method)
    explainer = open_explainer(bundle, args.backend, args.device, gradients=_gradients(names),
                               precision=args.precision, hint="throughput")
    methods, skipped = choose_methods(names, explainer.linear_head is not None)
    if skipped:
        print(f"skipped {', '.join(skipped)}: this bundle's head is not global pooling + linear")
    if args.finer is not None and "all" in names:
        from ..methods import METHODS
        agnostic = [m for m in methods if not METHODS[m].class_specific]
        methods = [m for m in methods if METHODS[m].class_specific]
        print(f"skipped {', '.join(agnostic)}: class-agnostic, finer does not apply")
    results = explain_files(explainer, args.images, methods, args.out, target=args.target,
                            options=dict(parse_option(o) for o in args.option), batch_size=args.batch_size,
                            colormap=args.colormap, alpha=args.alpha, restart=args.force, on=args.on,
                            enhance=args.enhance, enhance_options=dict(parse_option(o) for o in args.enhance_option),
                            finer=None if args.finer is None else {
                                "gamma": args.finer, "preset": args.finer_preset or Finer.preset,
                                "references": Finer.references if args.finer_references is None else
                                args.finer_references},
                            overlays=args.overlays, maps=args.maps or "array", report=_say, **_scale_out(args))
    return results, results.summary_lines(len(methods), args.out)


def explain_segments(bundle, args):
    from ..jobs.explainers import open_explainer
    from ..methods import in_all
    from ..runs import parse_option
    from ..segmentation.runs import explain_segmentation_files, summary_lines
    names = method_names(args.method)
    methods = in_all("segmentation") if names == ["all"] else names
    for flag in ("finer", "enhance"):
        if getattr(args, flag) is not None:
            raise CamInferError(f"--{flag} is for classifiers; a segmenter takes --target (a class, several, or all)")
    _maps_are_pngs(args, "segmenter")
    target = None if args.target is None else "all" if args.target == "all" else args.target.split(",")
    explainer = open_explainer(bundle, args.backend, args.device, gradients=_gradients(methods),
                               precision=args.precision)
    results = explain_segmentation_files(explainer, args.images, methods, args.out, target=target, region=args.region,
                                         options=dict(parse_option(o) for o in args.option), colormap=args.colormap,
                                         alpha=args.alpha, restart=args.force, on=args.on, overlays=args.overlays,
                                         report=_say, **_scale_out(args))
    return results, summary_lines(results, len(methods), args.out)


def _gradients(names) -> str | None:
    """``torch`` when a method asked for needs gradients (the torch backend beside the runtime's), else None."""
    from ..methods import get_method
    return "torch" if any(n != "all" and get_method(n).gradient for n in names) else None


def _maps_are_pngs(args, kind: str) -> None:
    if args.maps == "array":
        raise CamInferError(f"--maps array is for classifiers; a {kind}'s maps are PNGs (--maps png, the default)")


def explain_detections(bundle, args):
    from ..detection.runs import explain_detection_files, summary_lines
    from ..jobs.explainers import open_explainer
    from ..runs import parse_option
    from ..methods import in_all
    names = method_names(args.method)
    methods = in_all("detection") if names == ["all"] else names
    for flag in ("target", "finer", "enhance"):
        if getattr(args, flag) is not None:
            raise CamInferError(f"--{flag} is for classifiers; for detections use --detections, --classes or --box")
    _maps_are_pngs(args, "detector")
    if _gradients(methods):
        raise CamInferError("gradient methods explain classifiers and segmenters here; a detector is explained "
                            "without gradients: use e.g. eigen or ablation")
    explainer = open_explainer(bundle, args.backend, args.device, precision=args.precision)
    targets = "all" if args.detections == "all" else [_integer(v, "--detections") for v in args.detections.split(",")]
    classes = [_class(c) for c in args.classes.split(",")] if args.classes else None
    boxes = [_box(b) for b in args.box] or None
    results = explain_detection_files(explainer, args.images, methods, args.out, targets=targets, classes=classes,
                                      boxes=boxes, conf=args.conf, iou=args.iou,
                                      options=dict(parse_option(o) for o in args.option), colormap=args.colormap,
                                      alpha=args.alpha, restart=args.force, on=args.on, overlays=args.overlays,
                                      report=_say,
                                      **_scale_out(args))
    return results, summary_lines(results, len(methods), args.out)


def _integer(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CamInferError(f"{flag} takes 'all' or integers, not '{text}'") from None


def _class(text: str):
    text = text.strip()
    return int(text) if text.isdigit() else text


def _box(text: str):
    coords, colon, cls = text.rpartition(":")
    try:
        box = [float(v) for v in coords.split(",")]
    except ValueError:
        box = []
    if not colon or len(box) != 4 or not cls:
        raise CamInferError(f"--box takes X1,Y1,X2,Y2:CLASS, not '{text}'")
    return box, _class(cls)


def bench(args) -> int:
    from ..tools.bench import ALL_CASES, CASES, FUSED_CASES, FUSED_HEADER, GRADIENT_CASES, HEADER, case_of, check_cases, \
        run_cases, run_fused
    from ..bundle import Bundle
    from ..tasks import task_of
    bundle = Bundle.load(args.bundle)
    task = task_of(bundle).name
    if task != "classification":
        script, per = ("detection", "per detection") if task == "detection" else ("segmentation", "per target region")
        raise CamInferError(f"cam-infer bench times classifiers' methods; for a {task} bundle run bench/{script}.py "
                            f"from the repository (it times each method against the forward pass {per})")
    if args.repeats < 1 or (args.score_repeats is not None and args.score_repeats < 1):
        raise CamInferError("repeats must be at least 1")
    runtimes = [b.strip() for b in args.backend.split(",")] if args.backend else bundle.runtimes
    from ..backends import backend_name
    runtimes = [backend_name(bundle, r) for r in runtimes]    # before the table's header: an unknown one is one line
    if args.precision not in ("f32", "auto") and "onnxruntime" in runtimes:   # its CPU provider computes in float32
        if args.backend:
            raise CamInferError(f"ONNX Runtime's CPU provider computes in float32; bench --precision {args.precision} "
                                "with --backend openvino")
        runtimes = [r for r in runtimes if r != "onnxruntime"]
        print(f"onnxruntime left out: its CPU provider computes in float32, not {args.precision}")
        if not runtimes:
            raise CamInferError(f"no runtime of this bundle computes in {args.precision} here")
    cases = list(FUSED_CASES if args.fused else ALL_CASES) if args.method == "all" else \
        [c.strip() for c in args.method.split(",")]
    if args.fused:
        check_cases(cases, FUSED_CASES, "fused case")
    else:
        for case in cases:
            case_of(case, {**CASES, **GRADIENT_CASES})
    if args.fused:
        print(f"{bundle.path}: fused / plain model, batch 1; median of {args.repeats} runs each, alternating\n"
              + FUSED_HEADER)
        run_fused(bundle, runtimes, cases, args.repeats, report=lambda line: print(line, flush=True),
                  precision=args.precision)
        return 0
    k, h, w = bundle.activation_shape
    print(f"{bundle.path}: input {bundle.input_shape}, activation {k}x{h}x{w}; batch 1; median of {args.repeats} runs"
          f"\n{HEADER}")
    run_cases(bundle.path, runtimes, cases, args.repeats, score_repeats=args.score_repeats, precision=args.precision)
    return 0


def audit(args) -> int:
    from ..bundle import Bundle
    task = Bundle.load(args.bundle).task
    if args.sanity and task != "classification":
        raise CamInferError(f"--sanity runs on classifiers; a {task} audit has no sanity check yet")
    run = {"detection": audit_detections, "segmentation": audit_segments}.get(task, audit_classes)
    summary, lines = run(args)
    for line in lines:
        print(line)
    if summary["errors"]:
        raise CamInferError(f"{len(summary['errors'])} image(s) could not be read or audited and were skipped, e.g. "
                            f"{summary['errors'][0]['error']}")
    return 0


def audit_classes(args):
    from ..audit import AuditOptions, SanityOptions, run_audit, summary_lines
    from ..methods.registry import class_agnostic, class_agnostic_note
    options = AuditOptions.from_arguments(args)
    sanity = SanityOptions(args.sanity_steps, args.sanity_images, args.sanity_seed) if args.sanity else None
    summary = run_audit(args.bundle, args.images, options, args.out, boxes=args.boxes, restart=args.force,
                        grid=args.grid, report=_say, sanity=sanity, **_scale_out(args))
    lines = summary_lines(summary, args.out)
    agnostic = [m for m in options.methods if class_agnostic(m)]
    if agnostic and options.target != "predicted":
        lines.append(f"note: {class_agnostic_note(agnostic)}; their rows score the model's top-1")
    return summary, lines


def audit_segments(args):
    from ..audit.work import parse_baselines
    from ..methods import in_all
    from ..segmentation.audit import run_segmentation_audit, summary_lines
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    methods = in_all("segmentation") if names == ["all"] else names
    if args.boxes or args.enhance or args.enhance_option:
        raise CamInferError("a segmenter's audit takes --masks DIR (ground-truth label PNGs), not --boxes, --enhance "
                            "or --enhance-option")
    given = _protocol_flags_given(args)
    if given:
        raise CamInferError(f"a segmenter's audit measures energy and pointing in each explained region; "
                            f"{', '.join(given)} belong to a classifier's audit")
    if args.target == "truth":
        raise CamInferError("--target truth reads a classifier's boxes; a segmenter's audit explains the predicted "
                            "regions (the default), 'all' or named classes, and --masks measures them in the truth")
    options = _method_options(args.option, methods)
    target = None if args.target == "predicted" else "all" if args.target == "all" else args.target.split(",")
    summary = run_segmentation_audit(args.bundle, args.images, methods, args.out, masks=args.masks, target=target,
                                     backend=args.backend, device=args.device, options=options, restart=args.force,
                                     grid=args.grid, report=_say, precision=args.precision,
                                     baselines=parse_baselines(args.baselines), **_scale_out(args))
    return summary, summary_lines(summary, args.out)


def audit_detections(args):
    from ..detection.audit import run_detection_audit, summary_lines
    from ..audit.work import parse_baselines
    from ..methods import in_all
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    methods = in_all("detection") if names == ["all"] else names
    refuse_road_on_detections(args.metrics)
    refuse_classifier_audit_flags_on_detections(args)
    options = _method_options(args.option, methods)
    summary = run_detection_audit(args.bundle, args.images, methods, args.out, boxes=args.boxes, backend=args.backend,
                                  device=args.device, tolerance=args.tolerance, options=options, restart=args.force,
                                  grid=args.grid, report=_say, precision=args.precision,
                                  baselines=parse_baselines(args.baselines), **_scale_out(args))
    return summary, summary_lines(summary, args.out)


def _method_options(texts: list[str], methods=None) -> dict:
    """--option method.key=value (repeatable) → {method: {key: value}}; `methods`: the only methods allowed."""
    from ..runs import parse_option
    options: dict = {}
    for text in texts:
        key, value = parse_option(text)
        method, dot, name = key.partition(".")
        if not dot or (methods is not None and method not in methods):
            chosen = "" if methods is None else " for one of the chosen methods"
            raise CamInferError(f"--option takes method.key=value{chosen}, not '{text}'")
        options.setdefault(method, {})[name] = value
    return options


def diff(args) -> int:
    from ..diff import Side, run_diff, summary_lines
    options = _method_options(args.option)
    sides = [Side(model, backend, precision, args.device) for model, backend, precision in
             ((args.a, args.backend_a, args.precision_a), (args.b, args.backend_b, args.precision_b))]
    summary = run_diff(*sides, args.images, args.out, methods=[m.strip() for m in args.methods.split(",") if m.strip()],
                       options=options, target=args.target, restart=args.force, grid=args.grid,
                       batch_size=args.batch_size, **_scale_out(args))
    for line in summary_lines(summary, args.out):
        print(line)
    if summary["errors"]:
        raise CamInferError(f"{len(summary['errors'])} image(s) could not be read and were skipped, e.g. "
                            f"{summary['errors'][0]['error']}")
    return 0


def _protocol_flags_given(args, read: tuple = ()) -> list[str]:
    """The flags of a classifier's audit protocol given other than their defaults, but those in `read`."""
    return ["--" + name.replace("_", "-") for name, default in PROTOCOL.items()
            if name not in read and getattr(args, name) != default]


def refuse_classifier_audit_flags_on_detections(args) -> None:
    """A detector's audit explains the detections the model makes and measures pointing and energy in the boxes
    (with --tolerance): a flag of a classifier's or segmenter's audit is refused, not left unread."""
    if args.masks or args.enhance or args.enhance_option:
        raise CamInferError("a detector's audit takes --boxes (ground-truth boxes), not --masks, --enhance or "
                            "--enhance-option")
    if args.target != "predicted":
        raise CamInferError("a detector's audit explains the detections the model makes; --target is for classifiers "
                            "and segmenters")
    asked = {m.strip() for m in args.metrics.split(",") if m.strip()} - {"all", "pointing", "energy"}
    given = _protocol_flags_given(args, read=("metrics", "tolerance"))
    if asked or given:
        flags = [f"--metrics {','.join(sorted(asked))}"] if asked else []
        raise CamInferError(f"a detector's audit measures pointing and energy in the boxes (with --tolerance); "
                            f"{', '.join(flags + given)} belong to a classifier's audit")


def refuse_road_on_detections(metrics: str) -> None:
    """ROAD and ARCC are defined on a classifier's class probability; a detector's audit does not measure them."""
    asked = [m for m in ("road", "arcc") if m in [m.strip() for m in metrics.split(",")]]
    if asked:
        raise CamInferError(f"{' and '.join(asked)} score a classifier's class probability; a detector's audit "
                            "does not measure them (its metrics: pointing and energy in the boxes)")


def _say(line: str) -> None:
    """A line of a run's report, shown at once (before a long run, not after it)."""
    print(line, flush=True)


def _scale_out(args) -> dict:
    """--workers, --ray, --threads: where a folder run's work happens (`cam_infer.parallel`)."""
    return {"workers": args.workers, "ray": args.ray, "threads": args.threads}


def synthetic(args) -> int:
    from ..tools.synthetic import SPLITS, write_detection_scenes, write_scenes
    if args.split not in (*SPLITS, "detection", "segmentation"):
        raise CamInferError(f"unknown split '{args.split}'; splits: {', '.join(SPLITS)}, detection, segmentation")
    if args.n < 1:
        raise CamInferError(f"the number of scenes must be at least 1, not {args.n}")
    if args.seed is not None and args.seed < 0:
        raise CamInferError(f"the seed must be 0 or more, not {args.seed}")
    if args.split == "detection":
        out = write_detection_scenes(args.out, args.n, seed=1 if args.seed is None else args.seed)
        print(f"{args.n} detection scenes and boxes.json in {out}")
        return 0
    if args.split == "segmentation":
        from ..tools.synthetic import write_segmentation_scenes
        out = write_segmentation_scenes(args.out, args.n, seed=1 if args.seed is None else args.seed)
        print(f"{args.n} scenes (images/) and their label images (masks/) in {out}")
        return 0
    out = write_scenes(args.out, args.split, args.n, seed=args.seed or 0)
    print(f"{args.n} scenes ({args.split}) and boxes.json in {out}")
    return 0


def fuse(args) -> int:
    from ..bundle import Bundle
    from ..fuse import fuse, save
    from ..fuse.any_task import default_method
    from ..runs import parse_option
    from ..tasks import task_of
    if Path(args.out).exists() and not args.force:
        raise CamInferError(f"'{args.out}' exists; choose another --out or pass --force")
    if args.max_batch < 1:                               # checked before anything is written
        raise CamInferError("--max-batch must be at least 1")
    if args.repository and Path(args.repository).exists() and not Path(args.repository).is_dir():
        raise CamInferError(f"--repository '{args.repository}' is a file; a model repository is a folder")
    bundle = Bundle.load(args.bundle)
    if Path(args.out).resolve() in bundle.files():
        raise CamInferError(f"'{args.out}' is a file of the bundle being fused; choose another --out")
    task = task_of(bundle).name
    wanted = ".xml" if bundle.graph_format == "openvino" and task != "detection" else ".onnx"
    if Path(args.out).suffix != wanted:
        raise CamInferError(f"'{args.out}' should end in {wanted}: the fused model of this bundle is "
                            + ("OpenVINO IR (its weights go beside it, .bin)" if wanted == ".xml" else "ONNX"))
    given = [flag for flag, value in (("--top-classes", args.top_classes != 1), ("--class-input", args.class_input),
                                      ("--raw", args.raw), ("--precision", args.precision != "f32")) if value]
    if task != "classification" and given:
        raise CamInferError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for classifiers; a {task} "
                            "bundle's fused map is class-agnostic")
    args.method = default_method(task) if args.method is None else args.method
    model = fuse(bundle, args.method, top_classes=args.top_classes, class_input=args.class_input, raw=args.raw,
                 precision=args.precision, **dict(parse_option(o) for o in args.option))
    path = save(model, args.out, overwrite=True)
    print(_fused_summary(model, path, bundle, task, args.method))
    if args.repository:
        from ..fuse.repository import write_repository
        folder = write_repository(model, args.repository, path.stem, max_batch=args.max_batch)
        print(f"model repository: {folder} (Triton: config.pbtxt; OpenVINO Model Server: {folder.parent / 'config.json'},"
              " mounted at /models)")
    return 0


def _fused_summary(model, path: Path, bundle, task: str, method: str) -> str:
    """What `fuse` prints: a classifier's file, growth, inputs, outputs and check (`fuse.summary`); a segmenter's or a
    detector's outputs."""
    from ..fuse import summary
    size = f"(N,{bundle.input_shape[1]},{bundle.input_shape[2]})"
    if task == "segmentation":
        return f"wrote {path}: the segmenter's class scores and saliency {size}, {method} at its cut"
    if task == "detection":
        levels = len(bundle.manifest["cut"])
        return f"wrote {path}: the detector's output0 and saliency {size}, {method} over its {levels} cut levels"
    return summary(model, path, bundle)


def serve(args) -> int:
    import os

    from ..serve import serve as run_server
    token = args.token or os.environ.get("CAM_INFER_TOKEN") or None

    def ready(port: int) -> None:
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(f"serving {args.model} at http://{shown}:{port} (KServe v2: /v2/models/NAME/infer; /explain; /metrics)"
              + ("; bearer token required" if token else ""), flush=True)

    from ..runs import parse_option
    run_server(args.model, method=args.method, host=args.host, port=args.port, backend=args.backend,
               device=args.device, precision=args.precision, threads=args.threads, token=token, name=args.name,
               max_batch=args.max_batch, window_ms=args.batch_window_ms, max_body_mb=args.max_body_mb,
               options=dict(parse_option(o) for o in args.option), ready=ready)
    return 0
