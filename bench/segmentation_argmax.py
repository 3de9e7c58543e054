"""DeepLab's TFLite (ends in an ArgMax): where its single-pass explanations' time goes, and what one runtime call
that returns the regions instead of the 22 MB of scores would cost. OpenVINO, float32 on every side, batch 1, one
process, every variant timed alternately call by call on the same preprocessed photo; medians of --rounds rounds,
ratios the medians of the per-round ratios to the deployed model:

- the deployed file as OpenVINO reads it (uint8 NHWC input), returning its ArgMax: the base;
- the same compiled graph with the cut added as an output, then also the top score per pixel (a ReduceMax over the
  classes of the scores its ArgMax reads): what a call that reads the region from the model's own ArgMax needs;
- the bundle's clean pass as the general path runs it (`backend.observe`: the features graph, then the head graph
  returning the 21×513×513 float32 scores);
- the bundle's two IR graphs joined into one (static batch 1, the float32 NCHW input of every bundle), ending in the
  class ids (a TopK over the classes of the model-layout scores, as the deployed graph ends), then also the top score
  and the cut.

Each variant's class ids are compared with the deployed model's, pixel for pixel.

    python bench/segmentation_argmax.py --rounds 60 --out bench/segmentation_argmax.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

DEEPLAB = SHARED / "segmentation" / "deeplabv3_mnv2_dm05_pascal_quant.tflite"
PHOTOS = ["samoyed_dog.jpg", "both.png"]
CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


def deployed_ends(model):
    """(the scores its ArgMax reads, the cut: the input of the 1×1 classifier convolution's quantizer chain)."""
    topk = next(op for op in model.get_ordered_ops() if op.get_type_name() == "TopK")
    scores = topk.input_value(0)
    node = scores.get_node()
    while node.get_type_name() != "Relu":
        node = next(v.get_node() for v in node.input_values() if v.get_node().get_type_name() != "Constant")
    return scores, node.output(0)


def class_ids_and_top(scores, axis: int, ops):
    topk = ops.topk(scores, ops.constant(np.int64(1)), axis, "max", "none", "i64")
    ids = ops.squeeze(topk.output(1), ops.constant(np.array([axis], np.int64)))
    top = ops.reduce_max(scores, ops.constant(np.array([axis], np.int64)), False)
    return ids.output(0), top.output(0)


def variants(bundle_dir: Path):
    import openvino as ov
    import openvino.opset13 as ops

    from cam_infer.fuse.ir_graph import joined_ir
    core = ov.Core()
    built = {}
    built["deployed (its ArgMax)"] = ("u8", core.read_model(str(DEEPLAB)))
    model = core.read_model(str(DEEPLAB))
    _, cut = deployed_ends(model)
    model.add_outputs([cut])
    built["deployed + the cut"] = ("u8", model)
    model = core.read_model(str(DEEPLAB))
    scores, cut = deployed_ends(model)
    model.add_outputs([cut, class_ids_and_top(scores, 3, ops)[1]])
    built["deployed + the cut + top score"] = ("u8", model)
    for name, extra in (("bundle joined: ids", False), ("bundle joined: ids + top score + cut", True)):
        parameters, cut, result, _ = joined_ir(bundle_dir / "features.xml", bundle_dir / "head.xml")
        last = result.input_value(0).get_node()            # the head's NHWC → NCHW Transpose of the scores
        ids, top = class_ids_and_top(last.input_value(0), 3, ops)
        model = ov.Model([ids, top, cut] if extra else [ids], parameters, "joined")
        model.reshape({model.inputs[0]: [1, 3, 513, 513]})
        built[name] = ("f32", model)
    return {name: (kind, core.compile_model(model, "CPU", CONFIG).create_infer_request())
            for name, (kind, model) in built.items()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from cam_infer import Explainer
    from cam_infer.bundle.openvino_segmentation import split_openvino_segmenter
    from cam_infer.kernels import class_argmax

    work = Path(tempfile.mkdtemp(prefix="cam-argmax-"))
    split_openvino_segmenter(DEEPLAB, out=work / "deeplab")
    explainer = Explainer(work / "deeplab", backend="openvino", precision="f32")
    requests = variants(work / "deeplab")
    lines = ["**DeepLab's TFLite on OpenVINO (f32, batch 1): one call for the regions, measured.** "
             f"`python bench/segmentation_argmax.py --rounds {args.rounds}`; every variant alternated call by call in "
             "one process, medians of the rounds, ratios the medians of the per-round ratios (bench/segmentation.md "
             "reads them).", "",
             f"Machine load at the start (uptime): {' '.join(f'{v:.2f}' for v in os.getloadavg())}", "",
             "| photo | variant | median ms | ÷ deployed | class ids equal the deployed model's |",
             "|---|---|---:|---:|---|"]
    for photo in PHOTOS:
        x = explainer.bundle.preprocessing(SHARED / "images" / photo)[None]
        feeds = {"u8": np.ascontiguousarray(x.transpose(0, 2, 3, 1)).round().clip(0, 255).astype(np.uint8),
                 "f32": x}
        calls = {name: (lambda r=request, f=feeds[kind]: r.infer({0: f})) for name, (kind, request) in requests.items()}
        calls["bundle's pass today (features, then head: 22 MB scores)"] = lambda: explainer.backend.observe(x)
        for call in calls.values():
            for _ in range(3):
                call()
        times = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
        reference = requests["deployed (its ArgMax)"][1].infer({0: feeds["u8"]})[0]
        base = np.array(times["deployed (its ArgMax)"])
        for name, call in calls.items():
            if name in requests:
                ids = requests[name][1].infer({0: feeds[requests[name][0]]})[0]
            else:
                ids = class_argmax(np.ascontiguousarray(call()[1][0]))[None]
            same = "yes" if np.array_equal(ids.reshape(reference.shape), reference) else \
                f"no: {int(np.count_nonzero(ids.reshape(reference.shape) != reference))} pixels differ"
            lines.append(f"| {photo} | {name} | {np.median(times[name]) * 1e3:.1f} | "
                         f"{np.median(np.array(times[name]) / base):.2f}× | {same} |")
    lines += ["", f"Machine load at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
