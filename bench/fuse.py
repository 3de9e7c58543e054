"""The fused-model figures.

1. Latency of the fused model over the plain model: ResNet-18 and ResNet-50 at 224×224 (random
   weights, seed 0; the bundles of `bench/methods.py`), batch 1, OpenVINO and ONNX Runtime, timed
   alternately in one process; and the file size growth.
2. Fused Eigen-CAM against the exact first component (float64 eigendecomposition, the Explainer's)
   for several numbers of squarings, on the real models and photos of ../shared/data and on 64
   synthetic scenes with the embedded ShapesNet.

    python bench/fuse.py --work /tmp/cam-bench --out bench/fuse.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cam_infer.tools.bench import FUSED_CASES, FUSED_HEADER, Report, compare_fused, format_fused_row  # noqa: E402
from methods import bundle_for  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/cam-bench", help="where the bundles and fused models are written")
    parser.add_argument("--out", help="also write the markdown table here")
    parser.add_argument("--models", default="resnet18,resnet50", help="'' for none")
    parser.add_argument("--runtimes", default="openvino,onnxruntime")
    parser.add_argument("--methods", default=",".join(FUSED_CASES))
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--eigen", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure fused Eigen-CAM against the exact component (needs ../shared/data)")
    args = parser.parse_args()
    report = Report()

    for name in filter(None, args.models.split(",")):
        path = bundle_for(name, Path(args.work))
        report(f"\n**{name}** 224×224, layer4; batch 1; median of {args.repeats} runs each, "
               "plain and fused alternating\n")
        report(FUSED_HEADER)
        for runtime in args.runtimes.split(","):
            for case in args.methods.split(","):
                row = compare_fused(path, runtime, case, args.repeats, Path(args.work) / name)
                report(format_fused_row(row))
    if args.eigen:
        eigen_error(report, Path(args.work))
    report.write(args.out)


def eigen_error(report, work: Path) -> None:
    import numpy as np

    from cam_infer import Bundle, Explainer, split_onnx
    from cam_infer.backends.sessions import onnxruntime_session
    from cam_infer.tools.demo import embedded_bundle_path
    from cam_infer.fuse import fuse
    from cam_infer.fuse.assemble import RAW_OUTPUT
    from cam_infer.postprocess import normalise
    from cam_infer.tools.synthetic import generate

    shared = ROOT.parent / "shared" / "data"
    photos = sorted(p for p in (shared / "images").iterdir() if p.suffix != ".json")
    cases = []
    for name, prep in (("squeezenet1.1-fp32.onnx", {"scale": 1.0, "mean": (103.939, 116.779, 123.68),
                                                    "std": (1.0, 1.0, 1.0), "color": "bgr"}),
                       ("mobilenetv2-fp32-dequant.onnx", {})):
        bundle = split_onnx(shared / "models" / name, out=work / name, preprocessing=prep, overwrite=True)
        cases.append((f"{name} ({len(photos)} photos)", bundle, bundle.preprocess(photos)))
    shapes = Bundle.load(embedded_bundle_path())
    cases.append(("ShapesNet (64 scenes)", shapes, shapes.preprocess([s.image for s in generate("cluttered", 64)])))
    report("\n**Fused Eigen-CAM vs the exact component** (max over images; raw: |Δ| / max |map|; "
           "normalised: max |Δ| of the [0,1] map)\n")
    report("| model | squarings (power steps) | raw, uncentred | normalised | raw, centred | normalised |")
    report("|---|---|---:|---:|---:|---:|")
    for label, bundle, x in cases:
        explainer = Explainer(bundle)
        exact = {c: explainer.explain(x, "eigen", centered=c).maps for c in (False, True)}
        for squarings in (2, 4, 6, 8, 10):
            cells = []
            for centered in (False, True):
                model = fuse(bundle, "eigen", centered=centered, squarings=squarings, raw=True, check=False)
                session = onnxruntime_session(model)
                raw = np.concatenate([session.run([RAW_OUTPUT], {bundle.input_name: x[i:i + 8]})[0]
                                      for i in range(0, len(x), 8)])
                ref = exact[centered]
                scale = np.abs(ref).max(axis=(1, 2))
                cells.append(f"{(np.abs(raw - ref).max(axis=(1, 2)) / scale).max():.1e}")
                cells.append(f"{np.abs(normalise(raw)[0] - normalise(ref)[0]).max():.1e}")
            report(f"| {label} | {squarings} ({2 ** squarings}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
