"""``cam-infer``: demo, split, export, info, explain, bench, fuse, audit, synthetic.

A user error prints one line (``cam-infer: error: ...``) and exits 1; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .version import __version__
from .errors import CamInferError, MethodNotApplicable

BACKEND_CHOICES = ["auto", "onnxruntime", "openvino", "ort", "ov"]      # cam_infer.backends.CHOICES


def _add_preprocessing(p: argparse.ArgumentParser, *, input_size_required: bool = False) -> None:
    g = p.add_argument_group("preprocessing (default: torchvision ImageNet convention)")
    g.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), required=input_size_required,
                   help="model input size (default: the model's own static shape)")
    g.add_argument("--resize", type=int, help="resize the shorter side to this before cropping (default: size/0.875)")
    g.add_argument("--crop", choices=["center", "none"], help="center crop, or none: resize straight to the input size")
    g.add_argument("--mean", nargs="+", type=float, metavar="M", help="per-channel mean, in --color order (3 values; 1 for gray)")
    g.add_argument("--std", nargs="+", type=float, metavar="S", help="per-channel std, in --color order (3 values; 1 for gray)")
    g.add_argument("--scale", type=float, help="pixel multiplier before mean/std (default 1/255)")
    g.add_argument("--color", choices=["rgb", "bgr"], help="channel order the model expects")
    g.add_argument("--labels", help="text file with one class name per line")


def _preprocessing(args) -> dict:
    fields = {k: getattr(args, k) for k in ("resize", "crop", "mean", "std", "scale", "color")}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in fields.items() if v is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cam-infer", description="Class activation maps for deployed models.")
    parser.add_argument("--version", action="version", version=f"cam-infer {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="explain synthetic scenes with the embedded model (no downloads)")
    p.add_argument("--out", default="cam-infer-demo", help="folder for the grids (default ./cam-infer-demo)")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="auto (default): ONNX Runtime for ONNX bundles, OpenVINO for IR bundles")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("split", help="split a classifier (.onnx, or .xml IR / .tflite for OpenVINO) into a bundle")
    p.add_argument("model", help="classifier file: .onnx (ONNX bundle), .xml or .tflite (OpenVINO IR bundle)")
    p.add_argument("--layer", default="auto", help="auto, ONNX tensor or node name, or torch module path")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--force", action="store_true", help="replace an existing bundle in --out")
    p.add_argument("--layout", choices=["nchw", "nhwc"], help="the input's layout, when its shape does not tell")
    _add_preprocessing(p)
    p.set_defaults(run=cmd_split)

    p = sub.add_parser("export", help="export a PyTorch model to a bundle (needs torch)")
    p.add_argument("factory", help="'package.module:callable' returning the torch.nn.Module")
    p.add_argument("--weights", help="state_dict file (loaded with torch.load(weights_only=True))")
    p.add_argument("--layer", required=True, help="torch module path of the target layer, e.g. layer4")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "legacy"])
    p.add_argument("--force", action="store_true", help="replace an existing bundle in --out")
    _add_preprocessing(p, input_size_required=True)
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("info", help="describe a bundle")
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    p.add_argument("--backend", help="also run one image on this runtime (onnxruntime | openvino) and time it")
    p.add_argument("--device", default="CPU", help="device for --backend (CPU, GPU, NPU, AUTO)")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("explain", help="explain image files; write overlays and results.json")
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("images", nargs="+", help="image files and folders (searched recursively)")
    p.add_argument("--method", default="recipro",
                   help="method name, comma-separated names, or 'all' (every gradient-free method); default recipro. "
                        "Gradient methods (gradcam, gradcam++, xgradcam, layercam, hirescam, grad-entropy) need torch")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. --option top_k=64 --option score=logit (repeatable)")
    p.add_argument("--target", help="class to explain, by index or label (default: each image's top-1)")
    p.add_argument("--out", required=True, help="folder for the overlays and results.json")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="auto (default): ONNX Runtime for ONNX bundles, OpenVINO for IR bundles")
    p.add_argument("--device", default="CPU", help="device (CPU, GPU, NPU, AUTO)")
    p.add_argument("--batch-size", type=int, default=8, help="images per call (default 8)")
    p.add_argument("--colormap", default="jet")
    p.add_argument("--alpha", type=float, default=0.5, help="heat-map weight in the overlay (default 0.5)")
    p.add_argument("--on", default="original", choices=["original", "model"],
                   help="overlay on the original image (default) or on the model's resized and cropped view")
    p.add_argument("--force", action="store_true", help="start over in --out instead of resuming")
    p.set_defaults(run=cmd_explain)

    p = sub.add_parser("bench", help="time every method against one forward pass; peak memory")
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--backend", default=None, help="comma-separated backends (default: every runtime that runs "
                                                   "the bundle)")
    p.add_argument("--method", default="all", help="comma-separated cases (see below) or 'all'")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per case, after one warm-up (default 5)")
    p.add_argument("--score-repeats", type=int, default=None, help="timed runs of full Score-CAM (default --repeats)")
    p.add_argument("--fused", action="store_true",
                   help="instead: latency of each fused model (cam-infer fuse) over the plain model, and file growth")
    bench = __import__("cam_infer.bench", fromlist=["CASES"])
    p.epilog = ("cases: " + ", ".join(repr(c) for c in bench.CASES) + "; with torch also "
                + ", ".join(repr(c) for c in bench.GRADIENT_CASES) + " (not in 'all')")
    p.set_defaults(run=cmd_bench)

    p = sub.add_parser("fuse", help="write one ONNX model that returns the scores and the saliency map")
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--method", default="recipro", help="activation, entropy, eigen, cam or recipro (default recipro)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. --option score=logit or --option squarings=12 (repeatable)")
    classes = p.add_mutually_exclusive_group()
    classes.add_argument("--top-k", type=int, default=1, help="explain the k best classes: saliency (N,k,h,w)")
    classes.add_argument("--class-input", action="store_true",
                         help="explain the class given in an int64 input 'class_id' (N,) instead of the top-1")
    p.add_argument("--raw", action="store_true", help="also output saliency_raw, the maps before ReLU and min-max")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=cmd_fuse)

    p = sub.add_parser("audit", help="every method x every metric over an image folder; CSV, JSON and an HTML report")
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("images", nargs="+", help="image files and folders (searched recursively)")
    p.add_argument("--methods", default="all", help="comma-separated methods, or 'all' (every gradient-free method)")
    p.add_argument("--metrics", default="all", help="comma-separated: adcc, insertion, deletion, pointing, energy, box; "
                                                    "or 'all' (localisation metrics need --boxes)")
    p.add_argument("--boxes", help="JSON: image file -> list of [x1,y1,x2,y2] or {\"box\": [...], \"label\": ...}")
    p.add_argument("--out", required=True, help="report folder (a rerun resumes it)")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="auto (default): ONNX Runtime for ONNX bundles, OpenVINO for IR bundles")
    p.add_argument("--device", default="CPU")
    p.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="method option, e.g. score.top_k=64 (repeatable)")
    g = p.add_argument_group("protocol (recorded in summary.json)")
    g.add_argument("--target", default="predicted",
                   help="class explained: 'predicted' (default), 'truth' (the label of the image's boxes), "
                        "or one class for every image, by label or index")
    g.add_argument("--space", default="normalised", choices=["normalised", "raw"],
                   help="explanation map x*S in the normalised input, or raw pixels (black)")
    g.add_argument("--coherency-at", default="input", choices=["input", "map"])
    g.add_argument("--steps", type=int, default=28, help="insertion/deletion steps (default 28, RISE's at 224)")
    g.add_argument("--deletion-substrate", default="zeros", choices=["zeros", "blur", "mean"])
    g.add_argument("--insertion-substrate", default="blur", choices=["zeros", "blur", "mean"])
    g.add_argument("--auc", default="rise", choices=["rise", "recipro"])
    g.add_argument("--box-threshold", type=float, default=0.2, help="fraction of the max kept for the box (0.2)")
    g.add_argument("--tolerance", type=float, default=0.0, help="pointing game tolerance in pixels (paper: 15)")
    p.add_argument("--grid", type=int, default=48, help="images shown in the HTML thumbnail grid (default 48)")
    p.add_argument("--force", action="store_true", help="start over in --out instead of resuming")
    p.set_defaults(run=cmd_audit)

    p = sub.add_parser("synthetic", help="write synthetic scenes with ground-truth boxes (for audit)")
    p.add_argument("--out", required=True, help="folder for the PNGs and boxes.json")
    p.add_argument("--split", default="cluttered", help="large, small, multiple or cluttered (default)")
    p.add_argument("-n", "--count", dest="n", type=int, default=100, help="number of scenes (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_synthetic)
    return parser


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, backend=args.backend)
    return 0


def cmd_split(args) -> int:
    from .bundle import split_model

    bundle = split_model(args.model, layer=args.layer, out=args.out,
                        input_size=tuple(args.input_size) if args.input_size else None,
                        preprocessing=_preprocessing(args), labels=args.labels, overwrite=args.force,
                        layout=args.layout)
    print(describe(bundle))
    return 0


def cmd_export(args) -> int:
    from .bundle.export import export_torch, load_factory, load_weights

    model = load_factory(args.factory)()
    if args.weights:
        load_weights(model, args.weights)
    bundle = export_torch(model, layer=args.layer, input_size=tuple(args.input_size), out=args.out,
                          exporter=args.exporter, preprocessing=_preprocessing(args), labels=args.labels,
                          overwrite=args.force)
    print(describe(bundle))
    return 0


def cmd_info(args) -> int:
    from .bundle import Bundle

    bundle = Bundle.load(args.bundle)
    print(json.dumps(bundle.manifest, indent=2) if args.json else describe(bundle))
    if args.backend:
        print(check_backend(bundle, args.backend, args.device))
    return 0


def cmd_explain(args) -> int:
    from .explainer import Explainer
    from .methods import GRADIENT, get_method
    from .runs import choose_methods, explain_files, parse_option

    options = dict(parse_option(o) for o in args.option)
    names = [m.strip() for m in args.method.split(",") if m.strip()]
    for name in names:
        if name != "all":
            get_method(name)
    gradients = "torch" if any(n in GRADIENT for n in names) else None
    explainer = Explainer(args.bundle, backend=args.backend, device=args.device, gradients=gradients)
    methods, skipped = choose_methods(names, explainer.linear_head is not None)
    if skipped:
        print(f"skipped {', '.join(skipped)}: this bundle's head is not global pooling + linear")
    results = explain_files(explainer, args.images, methods, args.out, target=args.target, options=options,
                            batch_size=args.batch_size, colormap=args.colormap, alpha=args.alpha,
                            restart=args.force, on=args.on)
    images = len({r["image"] for r in results.records})
    if results.redone:
        print(f"redid {len(results.redone)} image(s) that changed since the last run, e.g. {results.redone[0]}")
    if results.skipped:
        print(f"skipped {len(results.skipped)} file(s) that are not images: " + ", ".join(results.skipped[:5])
              + (", ..." if len(results.skipped) > 5 else "") + f" (all listed in {results.path})")
    print(f"{len(results.records)} overlays ({images} images x {len(methods)} methods) in {args.out}; "
          f"results in {results.path}")
    if results.errors:
        raise CamInferError(f"{len(results.errors)} image(s) could not be read, e.g. {results.errors[0]['error']}; "
                            f"the others are done (see {results.path})")
    return 0


def cmd_bench(args) -> int:
    from .bench import CASES, HEADER, run_cases
    from .bundle import Bundle

    bundle = Bundle.load(args.bundle)
    if args.repeats < 1 or (args.score_repeats is not None and args.score_repeats < 1):
        raise CamInferError("repeats must be at least 1")
    if args.backend is None:
        args.backend = ",".join(n for n, r in bundle.manifest.get("runtimes", {"onnxruntime": {"runs": True},
                                                                              "openvino": {"runs": True}}).items()
                                if r.get("runs"))
    if args.fused:
        return bench_fused(bundle, args)
    cases = list(CASES) if args.method == "all" else [c.strip() for c in args.method.split(",")]
    k, h, w = bundle.activation_shape
    print(f"{bundle.path}: input {bundle.input_shape}, activation {k}x{h}x{w}; batch 1; median of {args.repeats} runs")
    print(HEADER)
    run_cases(bundle.path, [b.strip() for b in args.backend.split(",")], cases, args.repeats,
              score_repeats=args.score_repeats)
    return 0


def cmd_audit(args) -> int:
    from .audit import METRICS, AuditOptions, run_audit
    from .methods import GRADIENT_FREE
    from .runs import parse_option

    methods = tuple(GRADIENT_FREE) if args.methods == "all" else tuple(m.strip() for m in args.methods.split(","))
    metrics = tuple(METRICS) if args.metrics == "all" else tuple(m.strip() for m in args.metrics.split(","))
    if args.metrics == "all" and not args.boxes:
        metrics = ("adcc", "insertion", "deletion")
    method_options: dict = {}
    for text in args.option:
        key, value = parse_option(text)
        method, dot, name = key.partition(".")
        if not dot or method not in methods:
            raise CamInferError(f"--option takes method.key=value for one of the chosen methods, not '{text}'")
        method_options.setdefault(method, {})[name] = value
    options = AuditOptions(methods=methods, metrics=metrics, backend=args.backend, device=args.device,
                           target=args.target, space=args.space, coherency_at=args.coherency_at, steps=args.steps,
                           deletion_substrate=args.deletion_substrate, insertion_substrate=args.insertion_substrate,
                           auc=args.auc, box_threshold=args.box_threshold, tolerance=args.tolerance,
                           method_options=method_options)
    if "all" in args.methods.split(",") and args.methods != "all":
        raise CamInferError("'all' cannot be combined with other methods")
    summary = run_audit(args.bundle, args.images, options, args.out, boxes=args.boxes, restart=args.force,
                        grid=args.grid)
    for method, means in summary["methods"].items():
        counts = summary["counts"].get(method, {})
        shown = ", ".join(f"{k} {v:.3f}" + (f" (n={counts[k]})" if counts.get(k, means["images"]) != means["images"]
                                             else "") for k, v in means.items() if k != "images")
        print(f"{method:<14} {means['images']} images: {shown}")
    if summary["redone"]:
        print(f"redid {len(summary['redone'])} image(s) that changed since the last run, e.g. {summary['redone'][0]}")
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} file(s) that are not images, e.g. {summary['skipped'][0]} "
              "(all listed in summary.json)")
    print(f"report: {Path(args.out) / 'index.html'} (metrics.csv, summary.json)")
    if summary["errors"]:
        raise CamInferError(f"{len(summary['errors'])} image(s) could not be read and were skipped, e.g. "
                            f"{summary['errors'][0]['error']}")
    return 0


def cmd_synthetic(args) -> int:
    import cv2

    from .synthetic import generate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    boxes = {}
    for i, scene in enumerate(generate(args.split, args.n, seed=args.seed)):
        name = f"{args.split}_{i:05d}.png"
        cv2.imwrite(str(out / name), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        boxes[name] = [{"box": [int(v) for v in b], "label": scene.class_name} for b in scene.boxes]
    (out / "boxes.json").write_text(json.dumps(boxes, indent=1) + "\n")
    print(f"{args.n} scenes ({args.split}) and boxes.json in {out}")
    return 0


def bench_fused(bundle, args) -> int:
    import tempfile

    from .bench import FUSED_CASES, FUSED_HEADER, compare_fused, format_fused_row

    cases = list(FUSED_CASES) if args.method == "all" else [c.strip() for c in args.method.split(",")]
    unknown = [c for c in cases if c not in FUSED_CASES]
    if unknown:
        raise CamInferError(f"unknown fused case {', '.join(map(repr, unknown))}; cases: {', '.join(FUSED_CASES)}")
    print(f"{bundle.path}: fused / plain model, batch 1; median of {args.repeats} runs each, alternating")
    print(FUSED_HEADER)
    with tempfile.TemporaryDirectory() as work:
        for runtime in (b.strip() for b in args.backend.split(",")):
            for case in cases:
                try:
                    row = compare_fused(bundle.path, runtime, case, args.repeats, work)
                except MethodNotApplicable:
                    continue
                print(format_fused_row(row), flush=True)
    return 0


def cmd_fuse(args) -> int:
    from .bundle import Bundle
    from .fuse import fuse, plain_model, save
    from .runs import parse_option

    bundle = Bundle.load(args.bundle)
    options = dict(parse_option(o) for o in args.option)
    if Path(args.out).exists() and not args.force:
        raise CamInferError(f"'{args.out}' exists; choose another --out or pass --force")
    model = fuse(bundle, args.method, top_k=args.top_k, class_input=args.class_input, raw=args.raw, **options)
    path = save(model, args.out, overwrite=True)
    growth = path.stat().st_size / plain_model(bundle).ByteSize() - 1
    outputs = ", ".join(f"{o.name} {_shape(o)}" for o in model.graph.output)
    inputs = ", ".join(f"{i.name} {_shape(i)}" for i in model.graph.input)
    error = json.loads(next(p.value for p in model.metadata_props if p.key == "cam_infer.check"))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {growth:+.2%} over the plain model)\n"
          f"inputs   {inputs}\noutputs  {outputs}\n"
          f"checked  against the Explainer on ONNX Runtime: max relative difference {error['relative_difference']:.2g}")
    return 0


def _shape(value_info) -> str:
    dims = value_info.type.tensor_type.shape.dim
    return "(" + ",".join(d.dim_param or str(d.dim_value) for d in dims) + ")"


def check_backend(bundle, backend_name: str, device: str) -> str:
    """Run one random image through features and head; report the backend and the time."""
    import time

    import numpy as np

    from .backends import load_backend
    from .bundle.split import random_images

    backend = load_backend(bundle, backend=backend_name, device=device)
    x = random_images(bundle.preprocessing, 1)
    backend.forward(x)  # warm-up
    start = time.perf_counter()
    scores = backend.forward(x)
    ms = (time.perf_counter() - start) * 1000
    ok = scores.shape == (1, bundle.num_classes) and bool(np.isfinite(scores).all())
    return f"runs on    {backend.describe()}: {'yes' if ok else 'NO'}, {ms:.1f} ms per image (batch 1)"


def describe(bundle) -> str:
    m = bundle.manifest
    prep = bundle.preprocessing
    target = m["target_layer"]
    verification = m["verification"]
    c, h, w = bundle.input_shape
    k, ah, aw = bundle.activation_shape
    labels = bundle.labels
    batch = ("dynamic (any batch size)" if bundle.dynamic_batch
             else f"fixed at {bundle.fixed_batch} in the source model: backends run chunks of {bundle.fixed_batch}, "
                  "the last one padded")
    model_in = m["input"]
    source_form = [f"{model_in['model_dtype']}" if model_in["model_dtype"] != "float32" else "",
                   model_in.get("model_layout", "NCHW") if model_in.get("model_layout", "NCHW") != "NCHW" else ""]
    quant = m["activation"].get("quantization")
    runtimes = m.get("runtimes", {})
    how = {"auto": "chosen automatically", "tensor": "ONNX tensor", "node": "ONNX node", "module": "torch module"}
    lines = [
        f"bundle       {bundle.path}",
        f"input        '{bundle.input_name}' float32 (N,{c},{h},{w}) NCHW"
        + (f"; the model takes {' '.join(f for f in source_form if f)} (converted at the boundary)"
           if any(source_form) else ""),
        f"preprocess   {'GRAY' if prep.channels == 1 else prep.color.upper()}, "
        + (f"resize shorter side to {prep.resize}, center crop {h}x{w}" if prep.crop == "center"
           else f"resize to {h}x{w}")
        + f", x*{prep.scale:.6g}, mean {list(prep.mean)}, std {list(prep.std)}",
        f"target layer '{target['requested']}' ({how[target['matched_by']]}) -> tensor '{target['tensor']}'"
        + (f", module '{target['module']}'" if target.get("module") and target["matched_by"] != "module" else ""),
        f"activation   (N,{k},{ah},{aw})" + (f", dequantized from {quant['dtype']} (scale {quant['scale']}, zero point "
                                            f"{quant['zero_point']}); the head re-quantizes it" if quant else ""),
        "head ops     " + ", ".join(f"{op} x{n}" for op, n in m["graphs"]["head"]["ops"].items()),
        f"output       '{m['output']['name']}': {bundle.num_classes} classes, {bundle.output_kind}"
        + (f" (the model's {' -> '.join(m['output']['left_out'])} after them is left out: probabilities are "
           "their softmax)" if m["output"].get("left_out") else ""),
        "labels       " + (f"{len(labels)} ({', '.join(labels[:3])}{', ...' if len(labels) > 3 else ''})"
                            if labels else "none (class indices)"),
        f"batch        {batch}",
        "verified     " + ("yes" if verification.get("passed") else "NO")
        + f": head(features(x)) vs model(x), batches {verification['batch_sizes']}, "
        f"max |diff| {verification['max_abs_diff']:.3g} ({verification['runtime']})",
        "runtimes     " + (", ".join(f"{n}: {'yes' if r['runs'] else 'no (' + r.get('why_not', '')[:120] + ')'}"
                                     for n, r in runtimes.items()) or "not recorded"),
        f"source       {m['provenance'].get('source') or 'in-memory model'}"
        + (f", exported with {m['provenance']['exporter']}" if m["provenance"].get("exporter") else ""),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.run(args)
        sys.stdout.flush()          # a closed pipe shows here, inside the handlers below
        return code
    except CamInferError as exc:
        print(f"cam-infer: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except BrokenPipeError:         # `cam-infer info --json | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:          # a path the user gave: read-only, missing, a file where a folder goes
        where = f" '{exc.filename}'" if exc.filename else ""
        print(f"cam-infer: error: cannot use{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cam-infer: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: still one line unless --debug
        if args.debug:
            raise
        first = " ".join(str(exc).split())[:300]
        print(f"cam-infer: internal error: {type(exc).__name__}: {first} (rerun with --debug for details)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
