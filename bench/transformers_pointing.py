"""Pointing of vit-recipro and attention rollout on the synthetic scenes (issue: vision transformers; target ≥ 0.9):
the pointing game (the map's peak within 15 px of a true shape, the paper's tolerance) on `--scenes` test scenes of
each split (seed 1; 200 by default: at 25 a split, one scene moves a split by 0.04 and "all" has a standard error
of 0.02–0.045), each model's own class explained, the models' preprocessing (mean 0.5, std 0.25), ONNX Runtime.
Each "all" is given with its standard error √(p(1−p)/n). For rollout, a class-agnostic map, the misses on
cluttered scenes are read too: how many have their peak inside a distractor's box.

    python bench/transformers_pointing.py --out bench/transformers_pointing.md [--extra NAME=FILE]

The committed test models (tests/data/transformers: ViT with 8-px patches, DeiT with 16-px patches), and any
further model trained by `export/train_transformers.py` (``--extra name=file``; e.g. a DeiT with 8-px patches:
``python export/train_transformers.py deit --patch 8 --epochs 5 --per-split 600 --out /tmp/deit8``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cam_infer.tools.bench import Report  # noqa: E402

MODELS = {"ViT, 8-px patches (committed)": ROOT / "tests/data/transformers/vit_legacy.onnx",
          "DeiT, 16-px patches (committed)": ROOT / "tests/data/transformers/deit_legacy.onnx"}
CASES = [("vit-recipro (Gaussian, the default)", "vit-recipro", {}),
         ("vit-recipro `kernel=onehot`", "vit-recipro", {"kernel": "onehot"}),
         ("rollout (mean over heads, discard 0.9: the default)", "rollout", {}),
         ("rollout `head_fusion=max`", "rollout", {"head_fusion": "max"})]


def pointing(model: Path, work: Path, scenes: int) -> dict[str, dict[str, np.ndarray]]:
    """case → split → each scene's hit (bool), and for rollout ``"cluttered misses on a distractor"``."""
    from cam_infer import Explainer
    from cam_infer.bundle.split import split_onnx
    from cam_infer.metrics.localisation import pointing_hit
    from cam_infer.tools.synthetic import SPLITS, generate
    explainer = Explainer(split_onnx(model, "auto", work / model.stem, overwrite=True))
    hits: dict[str, dict[str, np.ndarray]] = {}
    for case, method, options in CASES:
        for split in SPLITS:
            drawn = generate(split, scenes, 1)
            x = (np.stack([s.image for s in drawn]).astype(np.float32) / 255.0 - np.float32(0.5)) / np.float32(0.25)
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
            maps, degenerate = [], []
            for i in range(0, scenes, 25):
                e = explainer.explain(x[i:i + 25], method, **options)
                maps.append(e.saliency)
                degenerate.append(e.degenerate)
            maps, degenerate = np.concatenate(maps), np.concatenate(degenerate)
            hit = np.array([pointing_hit(m, s.boxes, 15, d) for m, s, d in zip(maps, drawn, degenerate)])
            hits.setdefault(case, {})[split] = hit
            if method == "rollout" and split == "cluttered":
                on_distractor = [pointing_hit(maps[i], drawn[i].distractors, 0) for i in np.flatnonzero(~hit)
                                 if len(drawn[i].distractors)]
                hits[case]["misses on a distractor"] = np.array(on_distractor, bool)
    return hits


def main() -> None:
    from cam_infer.tools.synthetic import SPLITS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the markdown here")
    parser.add_argument("--extra", action="append", default=[], help="NAME=FILE: one more model's ONNX file")
    parser.add_argument("--scenes", type=int, default=200, help="test scenes per split (seed 1)")
    args = parser.parse_args()
    models = {**MODELS, **dict(e.split("=", 1) for e in args.extra)}
    report = Report()
    report(f"Machine load at the start (uptime): {' '.join(f'{v:.2f}' for v in os.getloadavg())} (pointing does "
           f"not depend on it). {args.scenes} test scenes per split (seed 1); \"all\" ± its standard error.\n")
    report(f"| model | method | {' | '.join(SPLITS)} | all | cluttered misses with the peak on a distractor |")
    report("|---|---|" + "---:|" * (len(SPLITS) + 2))
    with tempfile.TemporaryDirectory() as work:
        for name, path in models.items():
            for case, by_split in pointing(Path(path), Path(work), args.scenes).items():
                every = np.concatenate([by_split[s] for s in SPLITS])
                p, n = float(every.mean()), len(every)
                cells = " | ".join(f"{by_split[s].mean():.3f}" for s in SPLITS)
                misses = by_split.get("misses on a distractor")
                on_distractor = "" if misses is None else f"{int(misses.sum())} of {len(misses)}"
                report(f"| {name} | {case} | {cells} | {p:.3f} ± {np.sqrt(p * (1 - p) / n):.3f} | {on_distractor} |")
    report.write(args.out)


if __name__ == "__main__":
    main()
