"""The quality table for the smoothing/integration methods and the enhancers, next to their base
methods: the pointing game (15 px) and energy pointing.

1. Synthetic scenes, all four splits (`cam-infer synthetic`), the embedded ShapesNet, by `cam-infer audit`
   with ``--enhance sess,evet`` around recipro, eigen and gradcam.
2. The real photos with approximate boxes (../shared/data/images/boxes_approx.json) on the real
   MobileNetV2 and SqueezeNet 1.1: every object is explained for its most probable candidate ImageNet class,
   and scored against its own box (the objects of 3 photos on two models: few trials, read with care);
   SS-CAM with top_k=32 and IS-CAM with top_k=64 channels there (1 280 and 512 channels otherwise).

    python bench/seed_quality.py --work /tmp/cam-quality --out bench/seed_quality.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

BASES = ["recipro", "eigen", "gradcam"]
ENHANCERS = ["sess", "evet"]
NEW = ["score", "ss-cam", "is-cam", "gradcam++", "smoothgrad-cam++", "integrated-gradcam"]
REAL_OPTIONS = {"ss-cam": {"top_k": 32}, "is-cam": {"top_k": 64}}     # real models: 1280/512 channels
SPLITS = ["large", "small", "multiple", "cluttered"]
SQUEEZENET_PREP = {"scale": 1.0, "mean": (103.939, 116.779, 123.68), "std": (1.0, 1.0, 1.0), "color": "bgr"}
REAL_MODELS = {"mobilenetv2-fp32-dequant.onnx": ("auto", None),                   # file: layer, preprocessing
               "squeezenet1.1-fp32.onnx": ("fire9/concat_1", SQUEEZENET_PREP)}    # the layer before conv10


def variants() -> list[str]:
    return [v for m in BASES for v in [m, *(f"{m}+{e}" for e in ENHANCERS)]] + NEW


def cli(*args) -> None:
    subprocess.run([sys.executable, "-m", "cam_infer", *map(str, args)], check=True, cwd=ROOT)


def synthetic(work: Path, n: int) -> dict:
    """split → method → (pointing, energy) means, from cam-infer audit."""
    out = {}
    for split in SPLITS:
        images = work / split
        if not (images / "boxes.json").is_file():          # written once: a rewrite would make audit redo them
            cli("synthetic", "--out", images, "--split", split, "-n", n)
        report = work / f"report_{split}"
        cli("audit", ROOT / "cam_infer" / "data" / "shapes", images, "--boxes", images / "boxes.json",
            "--methods", ",".join(variants()), "--metrics", "pointing,energy",
            "--tolerance", 15, "--out", report)
        summary = json.loads((report / "summary.json").read_text())
        out[split] = {m: (v["pointing"], v["energy"]) for m, v in summary["methods"].items()}
    return out


def real_photos(work: Path) -> dict:
    """method → (pointing, energy) over every object of every photo, on both real models."""
    from cam_infer import Explainer
    from cam_infer.bundle import split_model
    from cam_infer.enhancers import split_variant
    from cam_infer.images import load_image
    from cam_infer.metrics import energy_pointing, pointing_hit

    boxes = json.loads((SHARED / "images" / "boxes_approx.json").read_text())
    hits: dict[str, list] = {v: [] for v in variants()}
    for file, (layer, preprocessing) in REAL_MODELS.items():
        bundle = work / file.removesuffix(".onnx")
        if not (bundle / "bundle.json").is_file():
            split_model(SHARED / "models" / file, layer=layer, out=bundle, overwrite=True, preprocessing=preprocessing)
        explainer = Explainer(bundle, backend="openvino", gradients="torch")
        prep = explainer.bundle.preprocessing
        for name, objects in boxes.items():
            rgb = load_image(SHARED / "images" / name)
            x = prep.standardise(prep.geometry(rgb))[None]
            logits = explainer.backend.forward(x)[0]
            for obj in objects:
                box = prep.box_to_input(obj["box_xyxy"], rgb.shape)
                if box is None:
                    continue
                target = max(obj["imagenet_ids"], key=lambda c: logits[c])
                for v in hits:
                    method, enhancer = split_variant(v)
                    extra = {"enhance": enhancer} if enhancer else {}
                    extra.update(REAL_OPTIONS.get(method, {}))
                    s = explainer.explain(x, method, target=target, **extra).saliency[0]
                    hits[v].append((pointing_hit(s, [box], 15.0), energy_pointing(s, [box])))
    return {v: tuple(np.mean(np.array(h, float), axis=0)) for v, h in hits.items()}, len(hits["recipro"])


def table(columns: list[str], rows: dict[str, list[tuple[float, float]]]) -> list[str]:
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for method, values in rows.items():
        lines.append(f"| {method} | " + " | ".join(f"{p:.2f} / {e:.3f}" for p, e in values) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/cam-quality")
    parser.add_argument("--out", help="also write the markdown here")
    parser.add_argument("-n", type=int, default=100, help="scenes per split")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    scenes = synthetic(work, args.n)
    photos, trials = real_photos(work)
    columns = [f"{split} ({args.n})" for split in SPLITS] + [f"real photos ({trials})"]
    rows = {v: [scenes[split][v] for split in SPLITS] + [photos[v]] for v in variants()}
    lines = ["pointing game (15 px) / energy pointing; synthetic: ShapesNet, real: MobileNetV2 and SqueezeNet 1.1",
             "", *table(columns, rows)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
