"""Export a reference architecture of models/ to a bundle at its usual CAM layer (needs torch).

    python export/reference.py resnet50 --weights resnet50.pth --out bundles/resnet50
    python export/reference.py mobilenet_v2 --weights ../shared/data/models/mobilenet_v2-torchvision-bnfolded.pth \
        --labels ../shared/data/imagenet_classes.txt --out bundles/mobilenet_v2

Without --weights the model keeps random weights (fine for speed benchmarks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402
from cam_infer import CamInferError, export_torch  # noqa: E402
from cam_infer.bundle.export import load_weights  # noqa: E402
from cam_infer.bundle.describe import describe  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(models.BUILDERS))
    parser.add_argument("--weights", help="torchvision-layout state_dict")
    parser.add_argument("--layer", help="target layer (default: the usual CAM layer)")
    parser.add_argument("--input-size", nargs=2, type=int, default=(224, 224), metavar=("H", "W"))
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--labels", help="text file with one class name per line")
    parser.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "legacy"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    try:
        model = models.BUILDERS[args.model](num_classes=args.num_classes)
        if args.weights:
            load_weights(model, args.weights)
        bundle = export_torch(model, layer=args.layer or models.CAM_LAYERS[args.model],
                              input_size=tuple(args.input_size), out=args.out, exporter=args.exporter,
                              labels=args.labels, overwrite=args.force)
    except CamInferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(describe(bundle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
