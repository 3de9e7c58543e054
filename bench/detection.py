"""The detector tables.

1. Quality: ShapesDetector (the package's own, `cam_infer/data/shapes_detector`) on 100 synthetic detection
   scenes (seed 1, never trained on), every method at both cut sets, by `cam-infer audit`: energy in the
   detection's box next to a uniform map's, pointing, specificity, and the energy on the dot that alone
   tells a tagged square from a square (outside its box) next to a uniform map's.
2. Speed: the real YOLOv8n (`../shared/data/deployed/nudenet_320n.onnx`, 320×320) on OpenVINO CPU, batch 1:
   each method's time over what the detections cost (one forward pass and NMS) and over the unsplit model
   with the same NMS, all timed in turn call by call (median of --repeats), for one detection (the best)
   and for every detection of the image; then the forward passes alone and the fused activation/eigen/entropy
   models (`cam-infer fuse`). `--model FILE`: another Ultralytics export of it (the int8 QDQ and float16 files
   `tests/test_detection_formats.py` makes), `--part speed` then appends its tables.

    python bench/detection.py --work /tmp/cam-detection --out bench/detection.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from cam_infer.tools.bench import Report  # noqa: E402

METHODS = ["activation", "eigen", "entropy", "recipro", "ablation", "score"]
SPEED_CASES = [("activation", {}), ("eigen", {}), ("entropy", {}), ("recipro", {}), ("ablation", {}),
               ("score", {"top_k": 8})]


def cli(*args) -> None:
    subprocess.run([sys.executable, "-m", "cam_infer", *map(str, args)], check=True, cwd=ROOT)


def quality(work: Path, n: int, report) -> None:
    from cam_infer.detection import split_detector
    from cam_infer.fuse import plain_model
    from cam_infer.bundle import Bundle
    import onnx

    shipped = ROOT / "cam_infer" / "data" / "shapes_detector"
    scenes = work / "scenes"
    cli("synthetic", "--split", "detection", "-n", n, "--out", scenes)
    source = work / "shapes_detector.onnx"
    onnx.save(plain_model(Bundle.load(shipped)), source)
    labels = Bundle.load(shipped).labels
    cuts = {"detect-input": shipped, "backbone": split_detector(source, work / "backbone", cut="backbone",
                                                                labels=labels, overwrite=True).path}
    report(f"\n**ShapesDetector**, {n} synthetic detection scenes (seed 1), every detection above conf 0.25; "
           "energy and marker energy next to a uniform map's (in brackets)\n")
    report("| cut | method | detections | energy in box | pointing | specificity | energy on the tag's dot "
           "(tagged squares) |\n|---|---|---:|---:|---:|---:|---:|")
    for cut, bundle in cuts.items():
        out = work / f"audit_{cut}"
        cli("audit", bundle, scenes, "--boxes", scenes / "boxes.json", "--methods", ",".join(METHODS),
            "--option", "score.top_k=16", "--out", out, "--force")
        summary = json.loads((out / "summary.json").read_text())["methods"]
        for m, v in summary.items():
            marker = (f"{v['marker_energy']:.3f} ({v['marker_fraction']:.4f}, n={v['marker_energy_n']})"
                      if "marker_energy" in v else "—")
            report(f"| {cut} | {m} | {v['detections']} | {v['energy']:.3f} ({v['box_fraction']:.3f}) | "
                   f"{v['pointing']:.3f} | {v['specificity']:.3f} | {marker} |")


def speed(work: Path, repeats: int, report, source: Path = SHARED / "deployed" / "nudenet_320n.onnx") -> None:
    from cam_infer import Explainer
    from cam_infer.detection import split_detector
    from cam_infer.detection.decode import detect

    bundle = split_detector(source, work / source.stem, overwrite=True)
    photo = SHARED / "deployed" / "basketball1.png"
    ex = Explainer(bundle, backend="openvino")
    x = ex._inputs([photo])[0]
    count = len(ex.detect(x)[0])
    plain = compiled(source)
    thresholds = ex.task.thresholds(None, None, None)
    detections = lambda: ex.detect(x)                                            # noqa: E731
    model_and_nms = lambda: detect(plain(x)[0][0], *thresholds)                  # noqa: E731
    branches = sum("branch" in level for level in bundle.manifest["cut"])
    kind = "IR bundle" if bundle.graph_format == "openvino" else "ONNX bundle"
    report(f"\n**YOLOv8n** (NudeNet 320n, `{source.name}`, {kind}; cropped class branches at {branches} of 3 "
           f"levels) 320×320 on OpenVINO CPU, batch 1, {photo.name} ({count} detections). "
           "The base is what the detections cost: one forward pass (the bundle's joined graph, the model with its "
           "cut maps as outputs, one call) and the NMS, `Explainer.detect`; beside it the unsplit model "
           "in one OpenVINO call and the same NMS, what a deployment runs without cam-infer. Each ratio comes "
           "from its own pair timed alternately, call by call (so each call follows the other of its pair); "
           f"medians of {repeats} runs, ratios are medians of the per-run ratios\n")
    report("| method | one detection: ms | ÷ detections | ÷ unsplit model + NMS | all detections: ms | ÷ detections "
           "| per detection ÷ detections |\n|---|---:|---:|---:|---:|---:|---:|")
    for method, options in SPEED_CASES:
        one = lambda: ex.explain(x, method, target=0, **options)              # noqa: E731
        every = lambda: ex.explain(x, method, **options)                        # noqa: E731
        base, one_times = alternate([detections, one], repeats)
        base_every, every_times = alternate([detections, every], repeats)
        model, one_again = alternate([model_and_nms, one], repeats)
        label = method + (f" (top_k={options['top_k']})" if options else "")
        report(f"| {label} | {median(one_times):.1f} | {ratio(one_times, base):.2f}× | "
               f"{ratio(one_again, model):.2f}× | {median(every_times):.1f} | {ratio(every_times, base_every):.2f}× | "
               f"{ratio(every_times, base_every) / count:.2f}× |")
    model, base = alternate([model_and_nms, detections], repeats)
    bare, joined = alternate([lambda: plain(x), lambda: ex.backend.forward(x)], repeats)
    if bundle.graph_format == "openvino":                     # an IR bundle: two graphs, not fused
        report(f"\ndetections (features and head + NMS): {median(base):.1f} ms; the unsplit model + NMS: "
               f"{median(model):.1f} ms (ours over it: {ratio(base, model):.2f}×). Forward passes alone: the unsplit "
               f"model {median(bare):.1f} ms; the bundle's two graphs {median(joined):.1f} ms "
               f"({ratio(joined, bare):.2f}× the unsplit model). (Each ratio from its own pair.)")
        return
    fused = {m: compiled(fused_model(bundle, m, work)) for m in ("activation", "eigen", "entropy")}
    fused_rows = {m: alternate([detections, lambda m=m: detect(fused[m](x)[0][0], *thresholds)], repeats)
                  + alternate([model_and_nms, lambda m=m: detect(fused[m](x)[0][0], *thresholds)], repeats)
                  for m in fused}
    report(f"\ndetections (joined forward pass + NMS): {median(base):.1f} ms; the unsplit model + NMS: "
           f"{median(model):.1f} ms (ours over it: {ratio(base, model):.2f}×). Forward passes alone: the unsplit "
           f"model {median(bare):.1f} ms; the bundle's joined graph {median(joined):.1f} ms "
           f"({ratio(joined, bare):.2f}× the unsplit model). `cam-infer fuse` (detections and the map in one "
           "call) + NMS: " + ", ".join(
               f"{m} {median(t):.1f} ms ({ratio(t, b):.2f}× the detections, {ratio(t2, b2):.2f}× the unsplit "
               "model + NMS)" for m, (b, t, b2, t2) in fused_rows.items()) + ". (Each ratio from its own pair.)")


def alternate(calls, repeats: int) -> list[list[float]]:
    """The calls timed in turn, call by call, `repeats` times after one warm-up: each call's ms per run."""
    times = [[] for _ in calls]
    for r in range(repeats + 1):
        for i, fn in enumerate(calls):
            start = time.perf_counter()
            fn()
            if r:
                times[i].append((time.perf_counter() - start) * 1000)
    return times


def median(times: list[float]) -> float:
    return statistics.median(times)


def ratio(times: list[float], base: list[float]) -> float:
    """The median of the per-run ratios (each run's calls were timed next to each other)."""
    return statistics.median([a / b for a, b in zip(times, base)])


def compiled(path: Path):
    """An OpenVINO CPU latency-mode compiled model of an ONNX file, at batch 1: x → its outputs."""
    from cam_infer.backends.sessions import FLOAT32, openvino_compiled, openvino_model
    model = openvino_model(path)
    model.reshape({model.inputs[0].get_any_name(): [1, 3, 320, 320]})
    request = openvino_compiled(model, FLOAT32.but(hint="latency")).create_infer_request()

    def run(x):
        request.infer({0: x}, share_inputs=True)
        return [request.get_output_tensor(i).data for i in range(len(request.model_outputs))]
    return run


def fused_model(bundle, method: str, work: Path) -> Path:
    import onnx

    from cam_infer.detection.fuse import fuse_detector
    path = work / f"fused_{method}.onnx"
    onnx.save(fuse_detector(bundle, method), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/cam-detection")
    parser.add_argument("--out")
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--part", choices=["quality", "speed", "both"], default="both")
    parser.add_argument("--model", type=Path, default=SHARED / "deployed" / "nudenet_320n.onnx",
                        help="the YOLOv8n file of the speed tables")
    args = parser.parse_args()
    report = Report()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.part in ("quality", "both"):
        quality(work, args.n, report)
    if args.part in ("speed", "both"):
        speed(work, args.repeats, report, args.model)
    report.write(args.out)


if __name__ == "__main__":
    main()
