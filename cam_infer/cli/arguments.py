"""The command line's arguments: groups shared by several commands are declared once."""

from __future__ import annotations

import argparse
import re

from ..backends import CHOICES as BACKEND_CHOICES
from ..backends.sessions import PRECISIONS
from ..images import INTERPOLATIONS
from ..postprocess import COLORMAPS
from ..tasks import TASKS
from ..version import __version__

BUNDLE_HELP = "bundle folder, or a model file (.onnx, .xml, .tflite) split with auto into the user cache once"
PREPROCESSING = ("resize", "crop", "interpolation", "mean", "std", "scale", "color")


class _StoreOnce(argparse._StoreAction):
    """argparse's store, refusing an option given twice: the second value would silently replace the first
    (``--method recipro --method cam`` ran cam alone)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_given", set())
        if self.dest in given:
            parser.error(f"{option_string} is given twice; give it once (a list: comma-separated)")
        given.add(self.dest)
        super().__call__(parser, namespace, values, option_string)


VALUE_FIRST = re.compile(r"^-\.?\d")     # an argument that starts with a minus and a digit is a value


class _Parser(argparse.ArgumentParser):
    """The CLI's parser, and its subcommands': a plain option (argparse's ``store``) may be given once; an argument
    that starts with a minus and a digit is a value, also a list (``--box -50,10,100,100:person``, a box partly left
    of the image; ``--region -5,0,40,40``), where argparse takes only a plain number (-5, -0.5) for one and read the
    list as an unknown option. No option of the CLI starts so (argparse would go back to its own rule if one did)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)
        self._negative_number_matcher = VALUE_FIRST

    def error(self, message):
        """One line, as every user error of the CLI (argparse would print the usage before it)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --- argument groups declared once -----------------------------------------------------------------

# a classifier audit's protocol flags (argparse dest → default); a segmenter's audit refuses them when given
PROTOCOL = {"metrics": "all", "steps": 28, "tolerance": 0.0, "space": "normalised", "coherency_at": "input",
            "deletion_substrate": "zeros", "insertion_substrate": "blur", "auc": "rise", "box_threshold": 0.2}


def _runtime(p, backend_help="auto (default): ONNX Runtime for ONNX bundles, OpenVINO for IR bundles") -> None:
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help=backend_help)
    p.add_argument("--device", default="CPU", help="device (CPU, GPU, NPU, AUTO)")
    _precision(p)


def _precision(p, what: str = "what the runtime computes in") -> None:
    p.add_argument("--precision", default="f32", choices=PRECISIONS,
                   help=f"{what}: f32 (default: the same maps and scores on every machine), "
                        "auto (the runtime's own default on the device, as the deployment runs: bf16 on OpenVINO "
                        "CPUs with AVX-512 BF16 or AMX, f16 on GPU/NPU, f32 on ONNX Runtime's CPU provider), bf16, f16")


def _scale_out(p) -> None:
    g = p.add_argument_group("where the work runs (the files written are the same)")
    g.add_argument("--workers", metavar="N", help="N worker processes on this machine, or 'auto' (one per core): "
                                                  "throughput mode (default: this process); with --ray, N actors "
                                                  "(default: the cluster's CPUs / --threads)")
    g.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster: 'auto' (the cluster of `ray start`), "
                                                    "'local' (start one here), or HOST:PORT; needs cam-infer[ray]")
    g.add_argument("--threads", type=int, help="runtime threads per worker (default: the cores shared out; 1 on Ray)")


def _out(p, what: str, force: str) -> None:
    p.add_argument("--out", required=True, help=what)
    p.add_argument("--force", action="store_true", help=force)


def _options(p, metavar: str = "KEY=VALUE", example: str = "--option top_k=64 --option score=logit") -> None:
    p.add_argument("--option", action="append", default=[], metavar=metavar,
                   help=f"method option, e.g. {example} (repeatable)")


def _bundle_and_images(p) -> None:
    p.add_argument("bundle", help=BUNDLE_HELP)
    p.add_argument("images", nargs="+", help="image files and folders (searched recursively)")


def _preprocessing_args(p, *, input_size_required: bool = False) -> None:
    g = p.add_argument_group("preprocessing (default: torchvision ImageNet convention; raw pixels for uint8 models)")
    g.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), required=input_size_required,
                   help="model input size (default: the model's own static shape)")
    g.add_argument("--resize", type=int, help="resize the shorter side to this before cropping (default: size/0.875)")
    g.add_argument("--crop", choices=["center", "none"], help="center crop, or none: resize straight to the input size")
    g.add_argument("--interpolation", choices=list(INTERPOLATIONS),
                   help="the resize's filter, as the deployment's pipeline resizes: "
                        + "; ".join(f"{k}: {v}" for k, v in INTERPOLATIONS.items())
                        + " (default: area; bilinear for a detector's letterbox)")
    g.add_argument("--mean", nargs="+", type=float, metavar="M", help="per-channel mean (3 values; 1 for gray)")
    g.add_argument("--std", nargs="+", type=float, metavar="S", help="per-channel std (3 values; 1 for gray)")
    g.add_argument("--scale", type=float, help="pixel multiplier before mean/std (default 1/255)")
    g.add_argument("--color", choices=["rgb", "bgr"], help="channel order the model expects")
    g.add_argument("--labels", help="text file with one class name per line")


def preprocessing_fields(args) -> dict:
    fields = {k: getattr(args, k) for k in PREPROCESSING}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in fields.items() if v is not None}


def build_parser() -> argparse.ArgumentParser:
    from ..tools.bench import ALL_CASES, CASES, GRADIENT_CASES
    from ..fuse import fusable
    from ..methods import GRADIENT, GRADIENT_FREE, METHODS, explaining, in_all
    from ..methods.registry import DEFAULT_METHOD

    parser = _Parser(prog="cam-infer", description="Class activation maps for deployed models.")
    parser.add_argument("--version", action="version", version=f"cam-infer {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="explain synthetic scenes with the embedded model (no downloads)")
    p.add_argument("--out", default="cam-infer-demo", help="folder for the grids (default ./cam-infer-demo)")
    _runtime(p)

    p = sub.add_parser("split", help="split a classifier, a YOLO-style detector or a segmenter (.onnx, or .xml IR / "
                                     ".tflite for OpenVINO) into a bundle")
    p.add_argument("model", help="model file: .onnx (ONNX bundle), .xml or .tflite (OpenVINO IR bundle); a detector "
                                 "as .onnx or .xml (Ultralytics YOLOv8/YOLO11 export)")
    p.add_argument("--layer", default="auto", help="auto, ONNX tensor or node name, or torch module path; a "
                   "segmenter: a layer a skip connection bypasses, or a,b,..., gives a cut set")
    p.add_argument("--task", default="auto", choices=["auto", *TASKS],
                   help="auto (default): a detector is recognised by its metadata or its (N, 4+C, anchors) output")
    p.add_argument("--cut",
                   help="detectors: detect-input (default: the maps the detection head reads, strides 8/16/32), "
                        "backbone (one stride-8 map before the neck: maps with image context), or tensor names")
    p.add_argument("--conf", type=float, help="detectors: score threshold of the NMS (default 0.25)")
    p.add_argument("--iou", type=float, help="detectors: IoU threshold of the NMS (default 0.7)")
    _out(p, "bundle folder to write", "replace an existing bundle in --out")
    p.add_argument("--layout", choices=["nchw", "nhwc"], help="the input's layout, when its shape does not tell")
    _preprocessing_args(p)

    p = sub.add_parser("export", help="export a PyTorch model to a bundle (needs torch)")
    p.add_argument("factory", help="'package.module:callable' returning the torch.nn.Module")
    p.add_argument("--weights", help="state_dict file (loaded with torch.load(weights_only=True))")
    p.add_argument("--layer", required=True, help="torch module path of the target layer, e.g. layer4")
    _out(p, "bundle folder to write", "replace an existing bundle in --out")
    p.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "legacy"])
    _preprocessing_args(p, input_size_required=True)

    p = sub.add_parser("info", help="describe a bundle")
    p.add_argument("bundle", help=BUNDLE_HELP)
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    p.add_argument("--backend", help=f"also run one image on this runtime ({', '.join(BACKEND_CHOICES)}) and time it")
    p.add_argument("--device", default="CPU", help="device for --backend (CPU, GPU, NPU, AUTO)")
    _precision(p)

    p = sub.add_parser("explain", help="explain image files; write overlays and results.json")
    _bundle_and_images(p)
    p.add_argument("--method", default=DEFAULT_METHOD,
                   help=f"{', '.join(GRADIENT_FREE)}, comma-separated names, or 'all' (these); default {DEFAULT_METHOD}. "
                        f"Also {', '.join(n for n, m in METHODS.items() if not m.in_all and not m.gradient)} "
                        f"(by name only: many passes, or transformers only); with torch {', '.join(GRADIENT)}. A detector: "
                        f"{', '.join(in_all('detection'))} ('all'), also "
                        f"{', '.join(sorted(set(explaining('detection')) - set(in_all('detection'))))} by name")
    _options(p)
    p.add_argument("--target", help="class to explain, by index or label (default: each image's top-1)")
    _out(p, "folder for the overlays and results.json", "start over in --out instead of resuming")
    _runtime(p)
    p.add_argument("--batch-size", type=int, default=8, help="images per call (default 8)")
    _scale_out(p)
    p.add_argument("--colormap", default="jet", help=f"the heat map's colours: {', '.join(COLORMAPS)} (default jet)")
    p.add_argument("--alpha", type=float, default=0.5, help="heat-map weight in the overlay (default 0.5)")
    p.add_argument("--on", default="original", choices=["original", "model"],
                   help="overlay on the original image (default) or on the model's resized and cropped view")
    p.add_argument("--overlays", default="jpg", choices=["jpg", "png", "none"],
                   help="jpg (default: 5x faster to write than png, a fifth of the bytes), png (lossless), or none: "
                        "the maps alone, 8-bit at the model's input size (see --maps)")
    p.add_argument("--maps", choices=["array", "png"],
                   help="with --overlays none: array (a classifier's default: every map in the run's array store, "
                        "maps/NNNNN.npy shards indexed by results.json) or png (<image>_<method>.map.png each; "
                        "detectors' and segmenters' maps)")
    p.add_argument("--finer", type=float, metavar="GAMMA",
                   help="Finer-CAM: explain the class score minus GAMMA times the closest classes' (e.g. 0.6)")
    p.add_argument("--finer-references", type=int, help="classes compared with (default 3)")
    p.add_argument("--finer-preset", choices=["torchcam", "official"], help="torchcam (default) or official")
    p.add_argument("--enhance", help="wrap every method in an enhancer: evet (transformed copies, fused) or sess (scales and sliding "
                   "windows, fused)")
    p.add_argument("--enhance-option", action="append", default=[], metavar="KEY=VALUE",
                   help='enhancer option, e.g. --enhance-option transforms=["identity","flip"] (repeatable)')
    p.add_argument("--region", help="segmenters: explain the class over these pixels instead of where the model "
                   "assigns it: X1,Y1,X2,Y2 (a box), X,Y (a pixel), a mask PNG of the image's size, or a folder of "
                   "masks named <image name>.png (original image pixels)")
    g = p.add_argument_group("detector bundles (methods: activation, eigen, recipro, ablation, score; "
                             "'all': the first four)")
    g.add_argument("--detections", default="all",
                   help="'all' (default: every detection above --conf) or detection indices by score, e.g. 0,1")
    g.add_argument("--classes", help="only the detections of these classes (labels or indices, comma-separated)")
    g.add_argument("--box", action="append", default=[], metavar="X1,Y1,X2,Y2:CLASS",
                   help="explain a box of your own (original image pixels) for a class (repeatable)")
    g.add_argument("--conf", type=float, help="score threshold (default: the bundle's, 0.25)")
    g.add_argument("--iou", type=float, help="NMS IoU threshold (default: the bundle's, 0.7)")

    p = sub.add_parser("bench", help="time every method against one forward pass; peak memory")
    p.add_argument("bundle", help=BUNDLE_HELP)
    p.add_argument("--backend", help="comma-separated backends (default: every runtime that runs the bundle)")
    p.add_argument("--method", default="all", help="comma-separated cases (see below) or 'all'")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per case, after one warm-up (default 5)")
    p.add_argument("--score-repeats", type=int, default=None, help="timed runs of full Score-CAM (default --repeats)")
    _precision(p)
    p.add_argument("--fused", action="store_true",
                   help="instead: latency of each fused model (cam-infer fuse) over the plain model, and file growth")
    p.epilog = (f"cases: {', '.join(map(repr, CASES))} ('all': {', '.join(map(repr, ALL_CASES))}); with torch also "
                f"{', '.join(map(repr, GRADIENT_CASES))}; each also under an enhancer: 'recipro+sess', 'eigen+evet'")

    p = sub.add_parser("fuse", help="write one model that returns the scores and the saliency map (ONNX; an OpenVINO "
                                    "IR bundle's: IR)")
    p.add_argument("bundle", help=BUNDLE_HELP)
    p.add_argument("--method", help=f"{', '.join(fusable())} (default {DEFAULT_METHOD}; a detector's or "
                                    "segmenter's: eigen, their maps being class-agnostic)")
    _options(p, example="--option score=logit or --option squarings=12")
    classes = p.add_mutually_exclusive_group()
    classes.add_argument("--top-classes", type=int, default=1, help="explain the k best classes: saliency (N,k,h,w)")
    classes.add_argument("--class-input", action="store_true",
                         help="explain the class given in an int64 input 'class_id' (N,) instead of the top-1")
    p.add_argument("--raw", action="store_true", help="also output saliency_raw, the maps before ReLU and min-max")
    _precision(p, "what the model is meant to run at (recorded in its metadata; other than f32, its maps are also "
                  "checked on OpenVINO there)")
    _out(p, "the .onnx file to write (an OpenVINO IR bundle: the .xml, its .bin beside it)",
         "replace --out if it exists")
    p.add_argument("--repository", metavar="DIR", help="also write a model repository for Triton and OpenVINO Model "
                                                       "Server: DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx (a "
                                                       "fused IR: model.xml), "
                                                       "DIR/config.json (NAME: --out's file name)")
    p.add_argument("--max-batch", type=int, default=16, help="the repository's max_batch_size (default 16)")

    p = sub.add_parser("audit", help="every method x every metric over an image folder; CSV, JSON and an HTML report")
    _bundle_and_images(p)
    p.add_argument("--methods", default="all", help="comma-separated methods, or 'all' (every gradient-free method); "
                                                    "METHOD+ENHANCER for one enhanced variant (recipro+sess)")
    p.add_argument("--enhance", help="also audit every method under these enhancers (comma-separated: sess, evet), "
                                     "next to the base method")
    p.add_argument("--enhance-option", action="append", default=[], metavar="ENHANCER.KEY=VALUE",
                   help="enhancer option, e.g. --enhance-option sess.scales=6 (repeatable)")
    p.add_argument("--metrics", default=PROTOCOL["metrics"],
                   help="comma-separated: adcc, insertion, deletion, pointing, energy, box; "
                        "or 'all' (default: every metric, the localisation ones - pointing, energy, box - only with "
                        "--boxes); road, arcc: only when named (18 and 8 imputed images a map)")
    p.add_argument("--boxes", help="JSON: image file -> list of [x1,y1,x2,y2] or {\"box\": [...], \"label\": ...}")
    p.add_argument("--masks", help="folder of ground-truth masks: <image name>.png label images (255 = void) or "
                                   "<class>/<image name>.png binary masks (pointing and energy in their regions)")
    _out(p, "report folder (a rerun resumes it)", "start over in --out instead of resuming")
    _runtime(p)
    _options(p, "METHOD.KEY=VALUE", "score.top_k=64")
    g = p.add_argument_group("protocol (recorded in summary.json)")
    g.add_argument("--target", default="predicted", help="class explained: 'predicted' (default), 'truth' (the "
                                                          "label of the image's boxes), or one class, by label or index")
    g.add_argument("--space", default=PROTOCOL["space"], choices=["normalised", "raw"],
                   help="explanation map x*S in the normalised input, or raw pixels (black)")
    g.add_argument("--coherency-at", default=PROTOCOL["coherency_at"], choices=["input", "map"])
    g.add_argument("--steps", type=int, default=PROTOCOL["steps"],
                   help="insertion/deletion steps (default 28, RISE's at 224)")
    g.add_argument("--deletion-substrate", default=PROTOCOL["deletion_substrate"], choices=["zeros", "blur", "mean"])
    g.add_argument("--insertion-substrate", default=PROTOCOL["insertion_substrate"], choices=["zeros", "blur", "mean"])
    g.add_argument("--auc", default=PROTOCOL["auc"], choices=["rise", "recipro"])
    g.add_argument("--box-threshold", type=float, default=PROTOCOL["box_threshold"],
                   help="fraction of the max kept for the box (0.2)")
    g.add_argument("--tolerance", type=float, default=PROTOCOL["tolerance"],
                   help="pointing game tolerance in pixels (paper: 15)")
    g.add_argument("--baselines", default="all",
                   help="baseline maps scored beside the methods: all (default: random-map, centre-gaussian, and "
                        "box-prior / mask-prior with --boxes / --masks), none, or a comma-separated list")
    p.add_argument("--grid", type=int, default=48, help="images shown in the HTML thumbnail grid (default 48)")
    s = p.add_argument_group("model-randomisation sanity check (sanity.csv and a report section)")
    s.add_argument("--sanity", action="store_true", help="also re-draw the model's weights layer by layer and compare "
                                                          "each method's maps with the original's")
    s.add_argument("--sanity-steps", type=int, default=8, help="depths checked, spread over the layers (default 8)")
    s.add_argument("--sanity-images", type=int, default=8, help="the first N images of the audit (default 8)")
    s.add_argument("--sanity-seed", type=int, default=0, help="seed of the random weights (default 0)")
    _scale_out(p)

    p = sub.add_parser("diff", help="compare two models' predictions and maps on the same images (fp32 vs int8, "
                                    "v1 vs v2, two runtimes); CSV, JSON and an HTML report")
    p.add_argument("a", help="model A (the reference): " + BUNDLE_HELP)
    p.add_argument("b", help="model B (compared with A), of the same classes")
    p.add_argument("images", nargs="+", help="image files and folders (searched recursively)")
    p.add_argument("--methods", default="recipro,eigen", help="comma-separated methods, or 'all' (every gradient-free "
                                                              "method both models take); default recipro,eigen")
    _options(p, "METHOD.KEY=VALUE", "recipro.score=logit")
    p.add_argument("--target", help="class explained on both sides, by index or label (default: A's top-1 per image)")
    _out(p, "report folder (a rerun resumes it)", "start over in --out instead of resuming")
    for side in ("a", "b"):
        p.add_argument(f"--backend-{side}", default="auto", choices=BACKEND_CHOICES,
                       help=f"runtime of model {side.upper()} (default auto: ONNX Runtime for ONNX, OpenVINO for IR)")
        p.add_argument(f"--precision-{side}", default="f32", choices=PRECISIONS,
                       help=f"what model {side.upper()}'s runtime computes in (default f32; see explain --precision)")
    p.add_argument("--device", default="CPU", help="device of both runtimes (CPU, GPU, NPU, AUTO)")
    p.add_argument("--batch-size", type=int, default=8, help="images per call (default 8)")
    p.add_argument("--grid", type=int, default=12, help="most drifted images shown in index.html (default 12)")
    _scale_out(p)

    p = sub.add_parser("serve", help="serve explanations over the KServe v2 / Triton REST protocol, and /explain")
    p.add_argument("model", help="a bundle folder, a fused model (cam-infer fuse: .onnx, or .xml for OpenVINO), or "
                                 "a model file split with auto into the user cache once")
    p.add_argument("--method", help=f"bundles: the default method, overridable per request (default {DEFAULT_METHOD}); "
                                    "a fused model has its own")
    _options(p, example="--option top_k=64 (each method gets the options it takes)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    _runtime(p)
    p.add_argument("--threads", type=int, help="runtime threads (default: every core)")
    p.add_argument("--name", help="the model's name in the URLs (default: the bundle folder's or file's name)")
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' (or set CAM_INFER_TOKEN); the health "
                                   "probes stay open")
    p.add_argument("--max-batch", type=int, default=16, help="images per model call at most (default 16)")
    p.add_argument("--batch-window-ms", type=float, default=0.0,
                   help="wait this long for more requests to batch (default 0: batch what queued during the "
                        "previous call)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body (default 32 MB)")

    p = sub.add_parser("synthetic", help="write synthetic scenes with ground-truth boxes (for audit)")
    p.add_argument("--out", required=True, help="folder for the PNGs and boxes.json")
    p.add_argument("--split", default="cluttered", help="large, small, multiple or cluttered (default); or detection "
                                                        "(objects of several classes, for the detector); or segmentation (the four "
                                                        "splits in turn in images/, label images in masks/)")
    p.add_argument("-n", "--count", dest="n", type=int, default=100, help="number of scenes (default 100)")
    p.add_argument("--seed", type=int, help="default 0; detection, segmentation: 1 (their models were trained on "
                                            "seed 0)")
    return parser
