"""The segmentation table: each method's time over the forward pass, batch 1, both runtimes, float32 on both
sides (OpenVINO's bf16 default is turned off: `precision="f32"`), on the two shared segmenters:

- DeepLabV3-MobileNetV2 dm 0.5 VOC, 513×513, uint8 (`../shared/data/segmentation`): the TFLite file as OpenVINO
  reads it (an IR bundle, OpenVINO only), and converted to QDQ ONNX by `export/deeplab_onnx.py` (tf2onnx; give
  `--tf-python` a Python that has it, or an already converted file with `--deeplab`) for both runtimes;
  explained on samoyed_dog.jpg (the dog);
- the PAN-MobileNetV3 skin/clothes/hair segmenter, 512×512, float32, on messi5.jpg (the clothes);
- our own ShapesSegmenter (`cam_infer/data/shapes_segmenter`), 128×128, float32, on a synthetic scene.

Recipro is timed where the head is read as a linear tail (its shortcut); elsewhere its head pass per position
at the output's resolution is not run (the table says why).

The base is one forward pass of the unsplit model in the same runtime at the same precision (what a deployment
runs without cam-infer); the bundle's own forward pass (cut and scores of one call) is shown beside it. Each
method call and its base are timed alternately, call by call; medians of --repeats runs, ratios are medians of
the per-run ratios.

    python bench/segmentation.py --work /tmp/cam-segmentation --out bench/segmentation.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cam_infer.tools.bench import Report  # noqa: E402
from detection import alternate, median, ratio  # noqa: E402

METHODS = ["activation", "eigen", "entropy", "recipro"]
NOTES = """
**Reading it.** This run shared the 2 cores with other jobs (load 6–10: the forward passes took 3–5× their quiet
times, DeepLab's 100–190 ms against 21–36 ms), so single ratios scatter by ±0.2; re-run it on a quiet machine.
What the task adds beyond the pass is now small and itemised in the "beyond the pass" rows: the region's argmax is
a compiled kernel reading each class plane in memory order (`kernels.class_argmax`, 2–10 ms for DeepLab's 21×513×513
scores under load, against 9 ms of NumPy's strided argmax on a quiet machine; its region is DeepLab's own ArgMax
output pixel for pixel on the shared photos), the region score under 1 ms, and one target's rows are views of the
clean pass, not copies. What remains of a single-pass call beyond the model: the copy of the 21×513×513 float32
scores out of the runtime's request (22 MB, 2–3 ms quiet), the map's upsampling to 513² (under 1 ms) and the
method. The single-pass methods land at 0.8–1.3× (one 1.5×: eigen on DeepLab's TFLite) here; the earlier quiet run
gave 1.4–1.9× on DeepLab, 9 ms of it the argmax now gone.

Recipro-CAM with the linear-tail shortcut: 2.2× on DeepLab and on the PAN (target 1.5×, missed; it was 3.0× and
2.2–3.6×). The PAN's shortcut takes half its former time (only the explained class's 3×3 kernel is applied to the
cut for sigmoid scores; the resize supports are computed once per tail): 38–41 ms under this load. DeepLab's is a
21-class softmax over each position's ~31×31 support (33 rows of up to 33 positions: ~22 M exponentials, 67 ms
under load, 33 ms quiet) — the floor of NumPy's vectorised float32 exp at ~1 ns per value is ~25 ms, so 1.5× of a
21 ms pass is out of reach in NumPy. Tried and measured slower: a Numba kernel over only the region's pixels (this
Numba has no SVML, so its exp is scalar: 159 ms against NumPy's 105 ms at load 10) and a NumPy gather of the
region's (position, pixel) pairs (163 against 75 ms). What would reach it: the softmax in the runtime's graph (a
small OpenVINO model over the positions' supports, its vectorised exp at f32 or bf16). DeepLab's QDQ ONNX head is
not read as a linear tail, so its recipro (1089 head passes of 21×513² scores) is not timed. Our segmenter's passes
take 2 ms, so its rows are dominated by the per-call Python work (1–3 ms) and by the load.
"""
BACKENDS = ["onnxruntime", "openvino"]


def models(work: Path, deeplab: Path | None, tf_python: str) -> list[tuple]:
    """(name, bundle, source model, photo, runtimes) of the segmenters, split into `work`."""
    from cam_infer.bundle.openvino_segmentation import split_openvino_segmenter
    from cam_infer.bundle.segmentation import split_segmenter

    folder = SHARED / "segmentation"
    if deeplab is None:
        deeplab = work / "deeplab.onnx"
        if not deeplab.is_file():
            subprocess.run([tf_python, str(ROOT / "export" / "deeplab_onnx.py"),
                            str(folder / "deeplabv3_mnv2_dm05_pascal_quant.tflite"), str(deeplab)], check=True)
    labels = (folder / "pascal_voc_segmentation_labels.txt").read_text().splitlines()[:21]
    no_crop = {"resize": None, "crop": "none"}
    pan = folder / "pan_mnv3s_skin_clothes_hair.onnx"
    imagenet = {"crop": "none", "scale": 1 / 255, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    tflite = folder / "deeplabv3_mnv2_dm05_pascal_quant.tflite"
    dog = SHARED / "images" / "samoyed_dog.jpg"
    return [("DeepLabV3 TFLite (513², uint8)", split_openvino_segmenter(tflite, out=work / "deeplab_ir", labels=labels,
                                                                    overwrite=True).path, tflite, dog, ["openvino"]),
            ("DeepLabV3 ONNX (513², uint8 QDQ)", split_segmenter(deeplab, out=work / "deeplab", labels=labels,
                                                              preprocessing=no_crop, overwrite=True).path,
             deeplab, dog, BACKENDS),
            ("PAN (512², float32)", split_segmenter(pan, out=work / "pan", labels=["skin", "clothes", "hair"],
                                                   preprocessing=imagenet, overwrite=True).path, pan,
             SHARED / "deployed" / "messi5.jpg", BACKENDS),
            shapes(work)]


def shapes(work: Path) -> tuple:
    from cam_infer.bundle.segmentation import split_segmenter
    from cam_infer.tools.demo import SHAPES_PREPROCESSING
    from cam_infer.tools.synthetic import write_segmentation_scenes

    source = ROOT / "cam_infer" / "data" / "shapes_segmenter" / "shapes_segmenter.onnx"
    scene = sorted((write_segmentation_scenes(work / "scenes", 4) / "images").glob("multiple_*.png"))[0]
    bundle = split_segmenter(source, out=work / "shapes", labels=["background", "circle", "square", "triangle",
                                                                  "cross"], preprocessing=SHAPES_PREPROCESSING,
                             overwrite=True)
    return "ShapesSegmenter (128², float32)", bundle.path, source, scene, BACKENDS


def unsplit(source: Path, backend: str, bundle):
    """The whole model in `backend`, float32: x (the bundle's input) → its outputs."""
    from cam_infer.backends.sessions import FLOAT32, onnxruntime_session, openvino_compiled, openvino_model

    spec = bundle.manifest["input"]
    layout = spec.get("model_layout", "NCHW")
    dtype = spec.get("model_dtype", "float32")

    def as_model_input(x):
        x = x.transpose(0, 2, 3, 1) if layout == "NHWC" else x
        return x.round().clip(0, 255).astype(dtype) if dtype == "uint8" else x.astype(dtype)

    if backend == "onnxruntime":
        session = onnxruntime_session(str(source), FLOAT32)
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: as_model_input(x)})
    request = openvino_compiled(openvino_model(source), FLOAT32.but(hint="latency")).create_infer_request()
    return lambda x: request.infer({0: as_model_input(x)})


def speed(name: str, bundle_path: Path, source: Path, photo: Path, backends, repeats: int, report) -> None:
    from cam_infer import Explainer

    for backend in backends:
        options = {"precision": "f32"} | ({"hint": "latency"} if backend == "openvino" else {})
        ex = Explainer(bundle_path, backend=backend, **options)
        x = ex._inputs([photo])[0]
        model = unsplit(source, backend, ex.bundle)
        target = ex.explain(x, "activation").items[0][0]
        bare, joined = alternate([lambda: model(x), lambda: ex.backend.forward(x)], repeats)
        report(f"| {name} | {backend} | forward: the unsplit model {median(bare):.1f} ms | | the bundle's "
               f"{median(joined):.1f} ms | {ratio(joined, bare):.2f}× |")
        breakdown(name, backend, ex, x, target, repeats, report)
        for method in METHODS:
            if method == "recipro" and ex.task.tail is None:
                report(f"| {name} | {backend} | recipro | not run | | the head is not read as a 1×1 conv + bilinear "
                       "resize (no shortcut): one head pass at the output's size per cut position |")
                continue
            call = lambda method=method: ex.explain(x, method)                    # noqa: E731
            base, times = alternate([lambda: model(x), call], repeats)
            report(f"| {name} | {backend} | {method} ({target.label}, {target.pixels} px) | {median(times):.1f} | "
                   f"{median(base):.1f} | {ratio(times, base):.2f}× |")


def breakdown(name: str, backend: str, ex, x, target, repeats: int, report) -> None:
    """Where a method's time beyond the forward pass goes: the task's work on the clean scores (the argmax that
    fixes the region, `tasks.segmentation.Assignment`) and, with a linear tail, Recipro-CAM's shortcut alone."""
    from cam_infer.tasks.segmentation import Assignment, region_scores

    cut, scores = ex.task.observe(x)
    kind = ex.bundle.output_kind
    region = Assignment(scores[0], kind).regions([target.class_id])[0]
    argmax, score = alternate([lambda: Assignment(scores[0], kind).counts(),
                               lambda: region_scores(scores[:, target.class_id], region)], repeats)
    size = "×".join(map(str, scores.shape[1:]))
    parts = f"the argmax over the {size} scores {median(argmax):.1f} ms; the region score {median(score):.1f} ms"
    if ex.task.tail is not None:
        activation = "softmax" if kind == "logits" else ex.task.tail.activation
        (tail,) = alternate([lambda: ex.task.tail.recipro_scores(cut[0], target.class_id, region, activation)],
                            repeats)
        parts += f"; recipro's linear-tail scores of the {cut.shape[2]}×{cut.shape[3]} positions {median(tail):.1f} ms"
    report(f"| {name} | {backend} | beyond the pass: {parts} | | | |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/cam-segmentation"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--deeplab", type=Path, help="DeepLab already converted to ONNX (export/deeplab_onnx.py)")
    parser.add_argument("--tf-python", default=sys.executable, help="a Python with tensorflow and tf2onnx")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    report = Report()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    report(f"**Segmentation: method ÷ forward**, batch 1, float32 on both runtimes, CPU ({os.cpu_count()} cores, "
           f"load average {load} at the start: other jobs shared the machine). Targets: single-pass methods "
           "(activation, eigen, entropy) ≤ 1.10×, recipro ≤ 1.5× (linear-tail shortcut). Each ratio from its own "
           f"pair timed alternately call by call, medians of {args.repeats} runs.\n")
    report("| model | runtime | method (target) | ms | forward ms | ÷ forward |\n|---|---|---|---:|---:|---:|")
    for name, bundle, source, photo, backends in models(args.work, args.deeplab, args.tf_python):
        speed(name, bundle, source, photo, backends, args.repeats, report)
    report(f"\nload average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    report(NOTES)
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
