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
**Reading it.** Every pass here is 4–8× its quiet time when the load is 10–17 (DeepLab's unsplit pass 120–310 ms
against 20–40 ms quiet), so single ratios move by ±0.2 from run to run: re-run on a quiet machine
(`python bench/segmentation.py --deeplab deeplab.onnx`). What the task adds beyond the pass is itemised in the
"beyond the pass" rows: the region's argmax (`kernels.class_argmax`, each class plane read in memory order; pixel
for pixel DeepLab's own ArgMax on the shared photos) and the region score (`kernels.region_means`, one pass over
the region).

**Recipro with the linear-tail shortcut.** Two changes, each measured alternately against the former code in one
process, values bit-identical (max difference 0.0 on the real models):
- the logits at an output pixel depend on it only through its row's and its column's resize weights, and DeepLab's
  16× resize repeats them: 16 distinct rows among the 31 of a support (17 with the border's zero row). Each distinct
  (row, column) pair is scored once, times the region's pixels that have it: 17×17 softmaxes of 21 classes per
  position instead of 31×31, DeepLab's shortcut at 0.41× its former time (31.9 against 78.3 ms at load 8);
- which positions' supports meet the region is counted once from per-row sums, not by two boolean reductions per
  row of positions: the PAN's shortcut at 0.61–0.64× (30.2 against 47.2 ms, 37.3 against 61.4 ms at load 8).
DeepLab's QDQ ONNX head is now read as a linear tail (`bundle/qdq_tail.py`: weights dequantized as the runtime
computes them, its Q/DQ pairs on computed tensors read as the identity, accepted within 2 output steps of the
quantized head on a real cut), so its recipro is timed on both runtimes.

**Tried and backed out, measured alternately on the real models:**
- the support softmax as a small OpenVINO graph (f32, dynamic shapes, positions batched): slower than NumPy
  (110 against 81 ms at load 8; its broadcast bias add over 4 M logits alone took 14 ms);
- DeepLab's head run without its final NHWC→NCHW Transpose, the scores read as a channels-last view: the head and
  the channels-last argmax took 83 ms against 52 ms with the Transpose (that argmax 18 ms against 1.8 ms over class
  planes);
- the region from an ArgMax (TopK) inside the head graph: 6 ms more per pass than `class_argmax`'s 1.5–2 ms;
- the features and head IR graphs joined into one compiled model (one call instead of two): 187 against 175 ms;
- output tensors the runtime writes into directly (no 22 MB copy): no difference measurable on the head (69.8
  against 70.3 ms).

**Why the misses, measured.** DeepLab's TFLite, single-pass: the bundle's pass is two runtime calls (features,
head) where the unsplit model makes one, and returns 22 MB of float32 scores where the unsplit model returns their
ArgMax (1.03× here, 1.08× quiet); the argmax (1.5–2 ms quiet, 10 ms here), the 22 MB copy (1.6–3 ms quiet) and the
region score (1 ms) come on top. What would reach 1.10×: a head that returns only what the task reads (the class
ids and the explained class's plane) from an argmax faster in the graph than OpenVINO's TopK is here. Recipro: the
shortcut's region scores (`kernels.support_scores`, one Numba kernel over the positions: no temporaries, no BLAS,
an exp that vectorises, a support outside the region skipped from a summed-area table) take 3–5 ms on DeepLab and
5–7 ms on the PAN, where NumPy took 11–13 ms quiet (55–63 ms at load 12); what is left beyond the pass is the
bundle's second runtime call and the scores' copy (DeepLab's TFLite), the argmax and the map's resize.
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
    from cam_infer.backends.sessions import leave_the_cores_to_the_runtime
    leave_the_cores_to_the_runtime()         # NumPy's BLAS on one thread, as the CLI, the server and the workers run
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
