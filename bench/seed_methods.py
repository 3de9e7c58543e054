"""The benchmark of the smoothing/integration methods and the enhancers (issue: the seed's methods):
ResNet-50 (random weights, seed 0) and MobileNetV2 (the real ImageNet weights of ../shared/data) at 224×224
on OpenVINO CPU, batch 1.

Part 1 (`cam_infer.tools.bench`): each case's median time over one forward pass and, for methods of full passes
and enhanced cases, over the floor: the same number of full passes, batched as the method batches them
(Score-CAM family: channels × samples; SESS: 1 + its 122 windows; EVET: its 5 transforms).

Part 2 (``--torchcam``, run in a virtual environment that also has torchcam 0.5.0): torchcam's SSCAM, ISCAM
and SmoothGradCAMpp on the torch model against ours on the same weights exported to OpenVINO, timed
alternately call by call in one process, with the agreement of the two maps (Pearson r of the
normalised low-resolution maps, and the largest difference).

    python bench/seed_methods.py --work /tmp/cam-seed --out bench/seed_methods.md
    /tmp/tcvenv/bin/python bench/seed_methods.py --work /tmp/cam-seed --torchcam --out bench/torchcam.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from cam_infer.tools.bench import HEADER, Report, run_cases  # noqa: E402

CASES = ["score top_k=64", "ss-cam top_k=16", "is-cam top_k=16", "recipro", "recipro+sess", "recipro+evet",
         "eigen+sess", "smoothgrad-cam++", "integrated-gradcam"]
LAYERS = {"resnet50": "layer4", "mobilenet_v2": "features"}
PHOTO = "pelican.jpeg"


def torch_model(name: str):
    import torch

    import models
    torch.manual_seed(0)
    model = models.BUILDERS[name]()
    if name == "mobilenet_v2":
        state = torch.load(SHARED / "models" / "mobilenet_v2-torchvision-bnfolded.pth", weights_only=True)
        model.load_state_dict(state)
    return model.eval()


def bundle_for(name: str, work: Path) -> Path:
    out = work / name
    if not (out / "bundle.json").is_file():
        from cam_infer import export_torch
        export_torch(torch_model(name), layer=LAYERS[name], input_size=(224, 224), out=out, exporter="legacy",
                     overwrite=True)
    return out


def part_one(work: Path, repeats: int, report) -> None:
    for name in LAYERS:
        report(f"\n**{name}** 224×224, {LAYERS[name]}; OpenVINO CPU; batch 1; median of {repeats} runs\n")
        report(HEADER)
        run_cases(bundle_for(name, work), ["openvino"], CASES, repeats, report=report)


# --- part 2: torchcam 0.5.0 on the same weights -------------------------------------------------------------

def photo_input() -> np.ndarray:
    from cam_infer import Preprocessing
    return Preprocessing((224, 224))(SHARED / "images" / PHOTO)[None]


def torchcam_runner(extractor_class, model, layer: str, options: dict):
    """torchcam as its README shows it, the extractor made once (hooks on the model): each call is the
    forward pass, then the extractor; returns the map. Call `.remove_hooks()` on the second value after."""
    import torch

    extractor = extractor_class(model, layer, **options)

    def run(x: np.ndarray, class_idx: int) -> np.ndarray:
        tensor = torch.from_numpy(x)
        if extractor_class.__name__ == "SmoothGradCAMpp":
            model(tensor)
        else:
            with torch.inference_mode():
                model(tensor)
        return extractor(class_idx)[0][0].detach().numpy()
    return run, extractor


def agreement(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    from cam_infer.postprocess import normalise
    a = normalise(ours[None])[0][0].ravel()
    b = theirs.ravel()
    return float(np.corrcoef(a, b)[0, 1]), float(np.abs(a - b).max())


def part_two(work: Path, repeats: int, samples: dict, report) -> None:
    from torchcam.methods import ISCAM, SSCAM, SmoothGradCAMpp

    from cam_infer import Explainer

    x = photo_input()
    report(f"\ntorchcam 0.5.0 (torch {__import__('torch').__version__}, CPU) against cam-infer (OpenVINO CPU) "
           f"on the same weights, {PHOTO}, batch 1; SSCAM/ISCAM on all channels (as torchcam does) with "
           f"{', '.join(f'{n} samples per channel on {m}' for m, n in samples.items())}; median of {repeats} "
           "runs, the two libraries alternating call by call\n")
    report("| model | method | passes | torchcam ms | cam-infer ms | speed-up | map agreement (r, max diff) |\n"
           "|---|---|---:|---:|---:|---:|---|")
    for name in LAYERS:
        n = samples[name]
        pairs = [("SSCAM", SSCAM, {"num_samples": n, "std": 2.0, "batch_size": 32},
                  "ss-cam", {"preset": "torchcam", "samples": n, "std": 2.0}),
                 ("ISCAM", ISCAM, {"num_samples": n, "batch_size": 32}, "is-cam", {"preset": "torchcam", "samples": n}),
                 ("SmoothGradCAMpp", SmoothGradCAMpp, {}, "smoothgrad-cam++", {"torchcam_compat": True})]
        model = torch_model(name)
        explainer = Explainer(bundle_for(name, work), backend="openvino", gradients="torch")
        c = int(explainer.backend.forward(x).argmax())
        for label, extractor_class, options, method, ours_options in pairs:
            theirs, extractor = torchcam_runner(extractor_class, model, LAYERS[name], options)
            ours = lambda: explainer.explain(x, method, target=c, **ours_options)   # noqa: E731
            times: dict[str, list[float]] = {"theirs": [], "ours": []}
            warm = label == "SmoothGradCAMpp"          # a run of thousands of passes needs no warm-up call
            for r in range(repeats + int(warm)):
                start = time.perf_counter()
                their_map = theirs(x, c)
                middle = time.perf_counter()
                our = ours()
                end = time.perf_counter()
                if r or not warm:
                    times["theirs"].append((middle - start) * 1000)
                    times["ours"].append((end - middle) * 1000)
            extractor.remove_hooks()
            t, o = statistics.median(times["theirs"]), statistics.median(times["ours"])
            r_value, diff = agreement(our.maps[0], their_map)
            k = explainer.bundle.activation_shape[0]
            passes = f"{k}×{n}" if label != "SmoothGradCAMpp" else "4 + 4 backward"
            report(f"| {name} | {label} / {method} | {passes} | {t:.0f} | {o:.0f} | {t / o:.2f}× | r = {r_value:.3f}, "
                   f"{diff:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/cam-seed", help="where the bundles are written (reused)")
    parser.add_argument("--out", help="also write the markdown here")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torchcam", action="store_true", help="part 2 only: against torchcam 0.5.0")
    parser.add_argument("--samples", default="resnet50=1,mobilenet_v2=2",
                        help="SSCAM/ISCAM samples per channel in part 2, per model")
    args = parser.parse_args()
    report = Report()

    work = Path(args.work)
    if args.torchcam:
        samples = {k: int(v) for k, v in (p.split("=") for p in args.samples.split(","))}
        part_two(work, args.repeats, samples, report)
    else:
        part_one(work, args.repeats, report)
    report.write(args.out)


if __name__ == "__main__":
    main()
