"""The README's detector tables.

1. Quality: ShapesDetector (the package's own, `cam_infer/data/shapes_detector`) on 100 synthetic detection
   scenes (seed 1, never trained on), every method at both cut sets, by `cam-infer audit`: energy in the
   detection's box next to a uniform map's, pointing, specificity, and the energy on the dot that alone
   tells a tagged square from a square (outside its box) next to a uniform map's.
2. Speed: the real YOLOv8n (`../shared/data/deployed/nudenet_320n.onnx`, 320×320) on OpenVINO CPU, batch 1:
   each method's time over one forward pass of the same image, the two timed alternately call by call
   (median of --repeats), for one detection (the best) and for every detection of the image.

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

from cam_infer.bench import Report  # noqa: E402

METHODS = ["activation", "eigen", "recipro", "ablation", "score"]
SPEED_CASES = [("activation", {}), ("eigen", {}), ("recipro", {}), ("ablation", {}), ("score", {"top_k": 8})]


def cli(*args) -> None:
    subprocess.run([sys.executable, "-m", "cam_infer", *map(str, args)], check=True, cwd=ROOT)


def quality(work: Path, n: int, report) -> None:
    from cam_infer.detection import split_detector
    from cam_infer.detection.fuse import unpacked_model
    from cam_infer.bundle import Bundle
    import onnx

    shipped = ROOT / "cam_infer" / "data" / "shapes_detector"
    scenes = work / "scenes"
    cli("synthetic", "--split", "detection", "-n", n, "--out", scenes)
    source = work / "shapes_detector.onnx"
    onnx.save(unpacked_model(Bundle.load(shipped)), source)
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


def speed(work: Path, repeats: int, report) -> None:
    from cam_infer.detection import DetectionExplainer, split_detector

    bundle = split_detector(SHARED / "deployed" / "nudenet_320n.onnx", work / "yolov8n", overwrite=True)
    photo = SHARED / "deployed" / "basketball1.png"
    ex = DetectionExplainer(bundle, backend="openvino")
    x = ex._inputs([photo])[0]
    count = len(ex.detect(x)[0])
    report(f"\n**YOLOv8n** (NudeNet 320n) 320×320 on OpenVINO CPU, batch 1, {photo.name} ({count} detections); "
           f"median of {repeats} alternating runs\n")
    report("| method | one detection: ms | ÷ forward | all detections: ms | ÷ forward | per detection ÷ forward |"
           "\n|---|---:|---:|---:|---:|---:|")
    for method, options in SPEED_CASES:
        times: dict[str, list[float]] = {"forward": [], "one": [], "all": []}
        calls = {"forward": lambda: ex.backend.forward(x),
                 "one": lambda: ex.explain(x, method, targets=0, **options),
                 "all": lambda: ex.explain(x, method, **options)}
        for r in range(repeats + 1):
            for name, fn in calls.items():
                start = time.perf_counter()
                fn()
                if r:
                    times[name].append((time.perf_counter() - start) * 1000)
        f, one, every = (statistics.median(times[k]) for k in ("forward", "one", "all"))
        label = method + (f" (top_k={options['top_k']})" if options else "")
        report(f"| {label} | {one:.1f} | {one / f:.2f}× | {every:.1f} | {every / f:.2f}× | "
               f"{(every / count) / f:.2f}× |")
    report(f"\nforward pass: {f:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/cam-detection")
    parser.add_argument("--out")
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--part", choices=["quality", "speed", "both"], default="both")
    args = parser.parse_args()
    report = Report()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.part in ("quality", "both"):
        quality(work, args.n, report)
    if args.part in ("speed", "both"):
        speed(work, args.repeats, report)
    report.write(args.out)


if __name__ == "__main__":
    main()
