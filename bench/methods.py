"""The method benchmark: ResNet-18 and ResNet-50 at 224×224 (random weights, seed 0), both
backends, every case of `cam_infer.tools.bench.CASES`. Needs the torch extra (to export the two models).

    python bench/methods.py --work /tmp/cam-bench --out bench/methods.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cam_infer.tools.bench import CASES, HEADER, Report, run_cases  # noqa: E402


def bundle_for(name: str, work: Path) -> Path:
    out = work / name
    if not (out / "bundle.json").is_file():
        import torch

        import models
        from cam_infer import export_torch
        torch.manual_seed(0)
        export_torch(models.BUILDERS[name](), layer="layer4", input_size=(224, 224), out=out, exporter="legacy",
                     overwrite=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/cam-bench", help="where the two bundles are written (reused)")
    parser.add_argument("--out", help="also write the markdown table here")
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--backends", default="openvino,onnxruntime")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--score-repeats", type=int, default=3)
    args = parser.parse_args()
    report = Report()

    for name in args.models.split(","):
        path = bundle_for(name, Path(args.work))
        report(f"\n**{name}** 224×224, layer4; batch 1; median of {args.repeats} runs "
               f"(full Score-CAM: {args.score_repeats})\n")
        report(HEADER)
        run_cases(path, args.backends.split(","), args.cases.split(","), args.repeats,
                  score_repeats=args.score_repeats, report=report)
    report.write(args.out)


if __name__ == "__main__":
    main()
