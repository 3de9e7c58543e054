"""Pointing of vit-recipro and attention rollout on the synthetic scenes (issue: vision transformers; target ≥ 0.9):
the pointing game (the map's peak within 15 px of a true shape, the paper's tolerance) on 25 test scenes of each
split (seed 1), each model's own class explained, the models' preprocessing (mean 0.5, std 0.25), ONNX Runtime.

    python bench/transformers_pointing.py --out bench/transformers_pointing.md [--extra NAME=FILE]

The committed test models (tests/data/transformers: ViT with 8-px patches, DeiT with 16-px patches), and any
further model trained by `export/train_transformers.py` (``--extra name=file``; the table's DeiT with 8-px
patches: ``python export/train_transformers.py deit --patch 8 --epochs 5 --per-split 600 --out /tmp/deit8``).
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
         ("vit-recipro `kernel=onehot`", "vit-recipro", {"kernel": "onehot"}), ("rollout", "rollout", {})]


def pointing(model: Path, work: Path) -> dict[str, dict[str, float]]:
    """case → split → pointing score."""
    from cam_infer import Explainer
    from cam_infer.bundle.split import split_onnx
    from cam_infer.metrics import pointing_game
    from cam_infer.tools.synthetic import SPLITS, generate
    explainer = Explainer(split_onnx(model, "auto", work / model.stem, overwrite=True))
    scores: dict[str, dict[str, float]] = {}
    for case, method, options in CASES:
        for split in SPLITS:
            drawn = generate(split, 25, 1)
            x = (np.stack([s.image for s in drawn]).astype(np.float32) / 255.0 - np.float32(0.5)) / np.float32(0.25)
            e = explainer.explain(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), method, **options)
            scores.setdefault(case, {})[split] = pointing_game(e.saliency, [s.boxes for s in drawn], tolerance=15,
                                                               degenerate=e.degenerate)
    return scores


def main() -> None:
    from cam_infer.tools.synthetic import SPLITS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the markdown here")
    parser.add_argument("--extra", action="append", default=[], help="NAME=FILE: one more model's ONNX file")
    args = parser.parse_args()
    models = {**MODELS, **dict(e.split("=", 1) for e in args.extra)}
    report = Report()
    report(f"Machine load at the start (uptime): {' '.join(f'{v:.2f}' for v in os.getloadavg())} (pointing does "
           "not depend on it)\n")
    report(f"| model | method | {' | '.join(SPLITS)} | all |")
    report("|---|---|" + "---:|" * (len(SPLITS) + 1))
    with tempfile.TemporaryDirectory() as work:
        for name, path in models.items():
            for case, by_split in pointing(Path(path), Path(work)).items():
                cells = " | ".join(f"{by_split[s]:.2f}" for s in SPLITS)
                report(f"| {name} | {case} | {cells} | {np.mean(list(by_split.values())):.2f} |")
    report.write(args.out)


if __name__ == "__main__":
    main()
