"""Baselines and intervals on real photos, and what they cost: MobileNetV2 (fp32, OpenVINO at f32) audited on
../shared/data/images with their approximate boxes, by `cam-infer audit`.

1. The worked example of docs/guides/audits.md ("How to read an audit"): the summary with the baselines and
   95 % intervals, and the paired differences.
2. The cost of the baselines: each photo audited (`audit_image`) with ``--baselines none`` and with the default
   baselines, the two alternated photo by photo, medians over ``--rounds`` rounds, with the images the whole model
   ran on (counted); and the cost of the bootstrap (`cam_infer.audit.intervals`) on the run's own rows, median of
   5 calls.

    python bench/audit_uncertainty.py --work /tmp/cam-audit-ci --out bench/audit_uncertainty.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))                  # this checkout's cam_infer, as the audits run with cwd=ROOT
SHARED = ROOT.parent / "shared" / "data"
METHODS = "recipro,eigen,score"
OPTIONS = ["--option", "score.top_k=32"]
SHOWN = [("adcc", "ADCC ↑"), ("average_drop", "Avg Drop ↓"), ("insertion", "Insertion ↑"),
         ("deletion", "Deletion ↓"), ("pointing", "Pointing (15 px) ↑"), ("energy", "Energy ↑")]


def audit_boxes(work: Path) -> Path:
    """boxes_approx.json in the audit's format: each object's box once per ImageNet class it may be predicted as
    (a labelled box counts for maps of its class)."""
    approx = json.loads((SHARED / "images" / "boxes_approx.json").read_text())
    boxes = {name: [{"box": o["box_xyxy"], "label": c} for o in objects for c in o["imagenet_ids"]]
             for name, objects in approx.items()}
    path = work / "boxes.json"
    path.write_text(json.dumps(boxes, indent=1))
    return path


def bundle(work: Path) -> Path:
    from cam_infer.bundle import split_model

    out = work / "mobilenetv2"
    if not (out / "bundle.json").is_file():
        split_model(SHARED / "models" / "mobilenetv2-fp32-dequant.onnx", layer="auto", out=out, overwrite=True)
    return out


def audit(model: Path, boxes: Path, out: Path, *extra) -> float:
    """One audit from scratch; its wall time in seconds."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cam_infer", "audit", model, SHARED / "images", "--boxes", boxes,
                    "--methods", METHODS, *OPTIONS, "--tolerance", "15", "--backend", "openvino", "--precision", "f32",
                    "--out", out, *extra], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def bootstrap_seconds(report: Path) -> float:
    from cam_infer.audit.intervals import uncertainty
    from cam_infer.audit.report import SHOWN as COLUMNS, csv_rows

    summary = json.loads((report / "summary.json").read_text())
    rows = list(csv_rows(report / "metrics.csv"))
    directions = {c: higher for c, (_, higher) in COLUMNS.items()}
    times = []
    for _ in range(5):
        start = time.perf_counter()
        uncertainty(rows, list(summary["methods"]), list(summary["baselines"]), directions)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_photo_cost(model: Path, boxes: Path, rounds: int) -> dict:
    """Per photo, `audit_image` with the methods only and with the baselines, the two alternated photo by photo:
    median seconds of each, and the images the whole model ran on (its forward passes, counted)."""
    from cam_infer.audit import AuditOptions, audit_image
    from cam_infer.audit.baselines import dataset_priors
    from cam_infer.bundle import Bundle
    from cam_infer.audit.work import audit_spec

    truth = json.loads(boxes.read_text())
    photos = sorted(p for p in (SHARED / "images").iterdir() if p.suffix != ".json")
    base = AuditOptions(methods=tuple(METHODS.split(",")), method_options={"score": {"top_k": 32}}, tolerance=15.0,
                        backend="openvino", precision="f32").resolved(True)
    priors = dataset_priors(photos, lambda p: truth.get(p.name), Bundle.load(model).preprocessing)
    spec = audit_spec(model, base)
    explainer = spec.open()                     # opened once per process: audit_image gets this one
    forward, counted = explainer.backend.forward, [0]

    def counting(x, *args, **kwargs):
        counted[0] += len(x)
        return forward(x, *args, **kwargs)

    explainer.backend.forward = counting
    times: dict = {"none": [], "all": []}
    images: dict = {"none": [], "all": []}
    for _ in range(rounds):
        for photo in photos:
            for kind in ("none", "all"):
                options = replace(base, baselines=() if kind == "none" else None)
                counted[0] = 0
                start = time.perf_counter()
                audit_image(spec, photo, options, truth.get(photo.name), priors)
                times[kind].append(time.perf_counter() - start)
                images[kind].append(counted[0])
    return {k: (statistics.median(times[k]), statistics.median(images[k])) for k in times}


def example(summary: dict) -> list[str]:
    n = max(v["images"] for v in summary["methods"].values())
    lines = [f"**MobileNetV2, {n} photos** (mean and 95 % bootstrap interval; baselines in italics)", "",
             "| | " + " | ".join(t for _, t in SHOWN) + " |", "|---|" + "---:|" * len(SHOWN)]
    for name, found in summary["intervals"].items():
        shown = f"*{name}*" if name in summary["baselines"] else name
        cells = [f"{found[c]['mean']:.3f} [{found[c]['low']:.3f}, {found[c]['high']:.3f}] (n={found[c]['n']})"
                 if c in found else "–" for c, _ in SHOWN]
        lines.append(f"| {shown} | " + " | ".join(cells) + " |")
    lines += ["", "**Paired differences** (A − B, mean and 95 % interval; **bold**: the interval excludes 0)", "",
              "| metric | A − B | n | mean | 95 % interval |", "|---|---|---:|---:|---|"]
    for column, title in SHOWN:
        for pair in summary["paired"].get(column, []):
            text = f"{pair['mean']:+.3f} | [{pair['low']:+.3f}, {pair['high']:+.3f}]"
            text = " | ".join(f"**{t.strip()}**" for t in text.split("|")) if pair["different"] else text
            lines.append(f"| {title} | {pair['a']} − {pair['b']} | {pair['n']} | {text} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/cam-audit-ci")
    parser.add_argument("--out", help="also write the markdown here")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model, boxes = bundle(work), audit_boxes(work)
    seconds = audit(model, boxes, work / "report")
    summary = json.loads((work / "report" / "summary.json").read_text())
    cost = per_photo_cost(model, boxes, args.rounds)
    (a, a_images), (b, b_images) = cost["none"], cost["all"]
    load = os.getloadavg()
    lines = example(summary) + [
        "", f"**Cost per photo** (`audit_image` on each of the 12 photos, methods only and with the baselines "
            f"alternated photo by photo, {args.rounds} rounds, medians; load average {load[0]:.1f} on 2 cores; "
            f"methods {METHODS}, every metric: ADCC, insertion and deletion at 28 steps, pointing, energy, box)", "",
        "| per photo | seconds | images through the whole model |", "|---|---:|---:|",
        f"| methods only (`--baselines none`) | {a:.2f} | {a_images:.0f} |",
        f"| with the baselines (random-map, centre-gaussian, box-prior) | {b:.2f} (+{100 * (b - a) / a:.0f} %) | "
        f"{b_images:.0f} (+{b_images - a_images:.0f}) |",
        "", "| per audit (the 12 photos) | seconds |", "|---|---:|",
        f"| the whole `cam-infer audit` with the baselines, once | {seconds:.1f} |",
        f"| the bootstrap of every interval and comparison (B = 1000) | {bootstrap_seconds(work / 'report'):.3f} |"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
