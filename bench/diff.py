"""The diff benchmark: `cam-infer diff A B` against what it replaces, two plain `cam-infer explain` runs (one per
model) over the same images with the same methods, in images per second. MobileNetV2 from ../shared/data: the
float re-derivation (A) against the zoo's int8 file (B) on ONNX Runtime, and the float file on ONNX Runtime (A)
against the same file on OpenVINO (B); both sides at float32 (the int8 file runs only on ONNX Runtime), the
12 photos of ../shared/data/images, methods recipro and eigen, batch 8, this process (no workers).

Each round times one diff (`run_diff`) and one pair of explain runs (`explain_files` of A, then of B; each writes
its JPEG overlays and results.json), in alternating order, every run from scratch (`restart`) and opening its
models as a command does; a first round warms the caches (the split bundles, the kernels) and is not counted. The
table gives medians over the rounds and, for the diff, where its time goes (medians of timed pieces in one more
run: the two sides' explain calls, the three similarity measures, the A | B pictures).

    python bench/diff.py --rounds 5 --out bench/diff.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
FP32 = SHARED / "models" / "mobilenetv2-fp32-dequant.onnx"
INT8 = SHARED / "deployed" / "mobilenetv2-12-int8.onnx"
PHOTOS = SHARED / "images"
METHODS = ("recipro", "eigen")


def diff_run(a, b, out: Path) -> float:
    from cam_infer.diff import run_diff

    start = time.perf_counter()
    run_diff(a, b, [PHOTOS], out, methods=METHODS, restart=True, progress=False)
    return time.perf_counter() - start


def explain_runs(a, b, out: Path) -> float:
    from cam_infer.jobs.explainers import open_explainer
    from cam_infer.runs import explain_files

    start = time.perf_counter()
    for side, name in ((a, "a"), (b, "b")):
        explainer = open_explainer(side.model, side.backend, precision=side.precision)
        explain_files(explainer, [PHOTOS], list(METHODS), out / name, restart=True, progress=False)
    return time.perf_counter() - start


def where_the_time_goes(a, b) -> dict:
    """Medians (ms per image and method) of the diff's pieces, timed by wrapping them in one run."""
    import cam_infer.diff.work as work
    from cam_infer.diff import run_diff

    spent: dict = {"explain (A and B)": [], "similarity (3 measures)": [], "A/B picture": []}
    originals = {"pair_png": work.pair_png, "spearman": work.SIMILARITIES["spearman"],
                 "ssim": work.SIMILARITIES["ssim"], "top_iou": work.SIMILARITIES["top_iou"]}

    def timed(function, key):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            spent[key].append(time.perf_counter() - start)
            return result
        return wrapper

    work.pair_png = timed(originals["pair_png"], "A/B picture")
    for name in ("spearman", "ssim", "top_iou"):
        work.SIMILARITIES[name] = timed(originals[name], "similarity (3 measures)")
    explain = work.DiffWork._compare
    calls: list = []

    def compare(self, a_, b_, method, decoded, side_a, side_b, files):
        before = sum(spent["similarity (3 measures)"]) + sum(spent["A/B picture"])
        start = time.perf_counter()
        rows = explain(self, a_, b_, method, decoded, side_a, side_b, files)
        after = sum(spent["similarity (3 measures)"]) + sum(spent["A/B picture"])
        calls.append((time.perf_counter() - start - (after - before)) / len(decoded))
        return rows

    work.DiffWork._compare = compare
    try:
        with tempfile.TemporaryDirectory() as folder:
            run_diff(a, b, [PHOTOS], Path(folder) / "d", methods=METHODS, progress=False)
    finally:
        work.pair_png, work.DiffWork._compare = originals["pair_png"], explain
        for name in ("spearman", "ssim", "top_iou"):
            work.SIMILARITIES[name] = originals[name]
    measured = spent["similarity (3 measures)"]
    similarity = [sum(measured[i:i + 3]) for i in range(0, len(measured), 3)]
    return {"explain (A and B)": statistics.median(calls) * 1e3,
            "similarity (3 measures)": statistics.median(similarity) * 1e3,
            "A/B picture": statistics.median(spent["A/B picture"]) * 1e3}


def main() -> None:
    from cam_infer.diff import Side
    from cam_infer.jobs.folders import collect_images

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", help="also write the markdown table here")
    args = parser.parse_args()
    images = len(collect_images([PHOTOS]).files)
    pairs = {"fp32 vs int8 (ONNX Runtime)": (Side(str(FP32), "onnxruntime"), Side(str(INT8), "onnxruntime")),
             "ONNX Runtime vs OpenVINO (fp32 file, f32)": (Side(str(FP32), "onnxruntime"),
                                                            Side(str(FP32), "openvino", "f32"))}
    load = os.getloadavg()
    lines = [f"MobileNetV2 224×224, {images} photos, methods {', '.join(METHODS)}, batch 8, this process; median of "
             f"{args.rounds} rounds, diff and the two explain runs alternated; load average at the start "
             f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} (2 shared cores)", "",
             "| A vs B | diff images/s | two explain runs images/s | diff time / explain-runs time |",
             "|---|---:|---:|---:|"]
    pieces = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for title, (a, b) in pairs.items():
            diff_run(a, b, work / "warm-d")
            explain_runs(a, b, work / "warm-e")
            times: dict = {"diff": [], "explain": []}
            for r in range(args.rounds):
                order = ("diff", "explain") if r % 2 == 0 else ("explain", "diff")
                for kind in order:
                    run = diff_run if kind == "diff" else explain_runs
                    times[kind].append(run(a, b, work / f"{kind}-{r}"))
            d, e = statistics.median(times["diff"]), statistics.median(times["explain"])
            lines.append(f"| {title} | {images / d:.2f} | {images / e:.2f} | {d / e:.2f}× |")
            print(lines[-1], flush=True)
            pieces[title] = where_the_time_goes(a, b)
    lines += ["", "Where the diff's time goes (ms per image and method; medians over the batches or pairs of one more "
              "run):", "",
              "| A vs B | " + " | ".join(next(iter(pieces.values()))) + " |", "|---|" + "---:|" * 3]
    lines += [f"| {title} | " + " | ".join(f"{v:.1f}" for v in p.values()) + " |" for title, p in pieces.items()]
    lines.append(f"\nLoad average at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}.")
    lines.append("\nWhy the diff is not slower than the two runs it replaces: it decodes each image once for both "
                 "models and writes small A/B thumbnails, where the two explain runs decode every image twice and "
                 "each write "
                 "a full-size JPEG overlay per method. What it adds is the three similarity measures at 224×224 "
                 "(Spearman's two rankings and the top-20 % masks sort 50 176 pixels each; SSIM sums 7×7 windows).")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
