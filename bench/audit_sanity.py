"""The model-randomisation sanity check on MobileNetV2 (`cam_infer.audit.sanity`, `cam-infer audit --sanity`):
what it costs per image, and what it finds on the fp32 and the int8 file.

1. Cost: `run_sanity` with the default 8 steps (16 randomised models: 8 cascading, 8 independent) on 8 photos,
   methods recipro and eigen, ONNX Runtime at f32; medians of ``--rounds`` runs, the check alternated with a
   plain explain of the same images and methods (the audit's own passes, for scale).
2. Findings: Spearman and SSIM per step on the 9 photos every model agrees on, fp32 and int8, recipro and eigen
   (and gradcam on fp32: torch gradients; the torch head interpreter does not run QOperator graphs), seed 0.

    python bench/audit_sanity.py --work /tmp/cam-sanity --out bench/audit.md    # replaces its own section
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
PHOTOS = ["chelsea.png", "coffee.png", "fruits.jpg", "hot_dog.jpg", "kitten_224.png", "parrot.jpg", "pelican.jpeg",
          "samoyed_dog.jpg", "squirrel_cls.jpg"]
MODELS = {"fp32": SHARED / "models" / "mobilenetv2-fp32-dequant.onnx",
          "int8 (QOperator)": SHARED / "deployed" / "mobilenetv2-12-int8.onnx"}
HEADING = "## Sanity check (model randomisation): cost and findings on MobileNetV2"


def bundle_of(model: Path, work: Path):
    from cam_infer import split_onnx
    from cam_infer.bundle import Bundle

    folder = work / model.stem
    return Bundle.load(folder) if folder.is_dir() else split_onnx(model, out=folder)


def cost(bundle, rounds: int) -> list[str]:
    import numpy as np

    from cam_infer.audit import AuditOptions, SanityOptions
    from cam_infer.audit.sanity import run_sanity
    from cam_infer.explainer import Explainer
    from cam_infer.images import load_image

    images = [SHARED / "images" / p for p in PHOTOS[:8]]
    options, sanity = AuditOptions(methods=("recipro", "eigen")), SanityOptions()
    explainer = Explainer(bundle, precision="f32")
    prep = bundle.preprocessing
    x = np.stack([prep.standardise(prep.geometry(load_image(i))) for i in images])
    check, plain, layers = [], [], 0
    for _ in range(rounds):
        start = time.perf_counter()
        result = run_sanity(bundle, images, options, sanity)
        check.append(time.perf_counter() - start)
        start = time.perf_counter()
        for method in options.methods:
            explainer.explain(x, method)
        plain.append(time.perf_counter() - start)
        layers = len(result["layers"])
    steps = len({r["step"] for r in result["rows"]})
    n = len(images)
    t_check, t_plain = statistics.median(check), statistics.median(plain)
    t_similar = similarity_time(len(result["rows"]) * n, bundle.preprocessing.input_size)
    explaining = (1 + 2 * steps) * t_plain
    return ["| model | layers | steps (cascading + independent) | methods | images | passes per image and method "
            "| check, s (median) | per image, s | plain explain per image, s | ratio | explaining | similarity | "
            "writing and opening the models |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| MobileNetV2 fp32 | {layers} | {steps} + {steps} | recipro, eigen | {n} | 1 + {2 * steps} | "
            f"{t_check:.1f} | {t_check / n:.2f} | {t_plain / n:.3f} | {t_check / t_plain:.0f}× | "
            f"{explaining / t_check:.0%} | {t_similar / t_check:.0%} | {1 - (explaining + t_similar) / t_check:.0%} |"]


def similarity_time(pairs: int, size) -> float:
    """Seconds for Spearman and SSIM of `pairs` maps of the input's size (the check's comparisons)."""
    import numpy as np

    from cam_infer.metrics.similarity import spearman, ssim

    a, b = np.random.default_rng(0).random((2, *size), np.float32)
    start = time.perf_counter()
    for _ in range(pairs):
        spearman(a, b), ssim(a, b)
    return time.perf_counter() - start


def findings(bundles: dict) -> list[str]:
    from cam_infer.audit import AuditOptions, SanityOptions
    from cam_infer.audit.sanity import run_sanity

    lines = ["| model | method | mode | layers randomised | images compared | Spearman | SSIM |",
             "|---|---|---|---|---:|---:|---:|"]
    flags = []
    for name, bundle in bundles.items():
        methods = ("recipro", "eigen") + (("gradcam",) if name == "fp32" else ())   # no torch head for QOperator
        result = run_sanity(bundle, [SHARED / "images" / p for p in PHOTOS], AuditOptions(methods=methods),
                            SanityOptions(steps=4, images=9))
        for r in result["rows"]:
            shown = f"last {r['step']}" if r["mode"] == "cascading" else f"only #{r['step']}"
            means = " | ".join("-" if r[k] is None else f"{r[k]:.3f}" for k in ("spearman", "ssim"))
            compared = f"{r['compared']} of {r['images']}"
            lines.append(f"| {name} | {r['method']} | {r['mode']} | {shown} | {compared} | {means} |")
        flags.append(f"{name}: flagged {', '.join(result['flagged']) or 'none'}")
    return lines + ["", "Flags (final cascading Spearman > 0.5): " + "; ".join(flags) + "."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/cam-sanity")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="the markdown file whose sanity section to replace (or append)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bundles = {name: bundle_of(model, work) for name, model in MODELS.items()}
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    lines = [HEADING, "", f"Written by `bench/audit_sanity.py`; {os.cpu_count()} cores, load during the run: "
             f"`{load}`. ONNX Runtime, f32.", "", "**Cost** (medians of "
             f"{args.rounds} rounds, the check and a plain explain alternated)", ""]
    lines += cost(bundles["fp32"], args.rounds)
    lines += ["", "**Findings** (9 photos, 4 steps, seed 0; the original map vs the randomised model's for the "
              "original's class)", ""]
    lines += findings(bundles)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from cam_infer.tools.bench import write_section
        write_section(args.out, HEADING, text)


if __name__ == "__main__":
    main()
