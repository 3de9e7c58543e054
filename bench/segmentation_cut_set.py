"""Segmenter cut sets: what explaining the encoder levels a decoder reads costs, against one forward pass of the
unsplit model and against the single cut ``--layer auto``, batch 1, float32 on both runtimes:

- our own ShapesSegmenter (`cam_infer/data/shapes_segmenter`), 128×128, cut set at ``encoder`` (its stride-8
  output and the stride-4 skip the decoder reads), on a synthetic scene; the same model as an OpenVINO IR (converted
  here, float32 weights), split on OpenVINO's graph, on OpenVINO;
- the PAN-MobileNetV3 skin/clothes/hair segmenter (`../shared/data/segmentation`), 512×512, cut set at its deepest
  encoder stage ``1062`` (with the three skip levels, strides 4, 8, 16), on the dog photo there.

Each method call and the unsplit forward pass are timed alternately, call by call; medians of --repeats runs,
ratios the medians of the per-run ratios. Recipro-CAM on a cut set is also timed against the bare head passes it
makes (the same rows through ``backend.head``, chunked as it chunks them) and against its rows through the whole
head with the softmax over the whole scores (``shortcut=False``: the path before the fast rows).

    python bench/segmentation_cut_set.py [--quick]            # rewrites bench/segmentation_cut_set.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cam_infer.tools.bench import Report  # noqa: E402
from detection import alternate, median, ratio  # noqa: E402
from segmentation import unsplit  # noqa: E402

import numpy as np  # noqa: E402

OWN = ROOT / "cam_infer" / "data" / "shapes_segmenter" / "shapes_segmenter.onnx"
PAN = SHARED / "segmentation" / "pan_mnv3s_skin_clothes_hair.onnx"
OWN_IR = "own segmenter 128² (IR)"
# (model, source, cut set layer, photo, methods on the cut set, runtimes)
CASES = [("own segmenter 128²", OWN, "encoder", None, ["activation", "eigen", "ablation", "recipro"],
          ("onnxruntime", "openvino")),
         (OWN_IR, None, "/encoder/encoder.2/encoder.2.2/Relu", None, ["activation", "eigen", "recipro"], ("openvino",)),
         ("PAN 512²", PAN, "1062", SHARED / "segmentation" / "dog_segmentation_256.bmp",
          ["activation", "eigen", "entropy"], ("onnxruntime", "openvino"))]
NOTES = """
**Reading it.** No target is set for cut sets; the figures say what one costs. The machine was loaded (load 13–18 on
2 cores at the last run: five other jobs): our own segmenter's pass takes 1–2 ms when the machine is quiet, so its
single-pass rows swing from 0.1× to 30× with the load and say little beyond "about a pass"; the PAN's (100–300 ms
passes) are steadier: 1.25–1.4× the pass at the cut set against 1.0–1.2× at the single cut. The cut set on our own
segmenter's IR (split on OpenVINO's graph) costs what the ONNX file's cut set costs on OpenVINO.

Masking methods run the head once per masked row of each member, the other members clean: Ablation-CAM K rows per
member (32 + 64), Recipro-CAM h·w rows per member and target (32² + 16² = 1 280 rows). Recipro's rows are now written
in place into one buffer of packed cuts (a position's K values in, zeros back out) and scored on each cell's
receptive window only (measured on the head: 35 px for the stride-4 member, 59 px for the stride-8 one, of the 128-px
scores), the class probability computed on the window's pixels: recipro takes 0.9–1.2× the bare head passes of its
1 288 rows (its 1 280 and 4 per member for the zero row and the window's probe), against 2.0–2.5× on its former path
(masked copies of the member, the whole head, the softmax over the whole 5×128×128 scores of every row), measured in
the same run. What is left is the head passes themselves: each row runs the decoder at the full output size.
Cropping the head to each row's receptive field, as detector branches are, was not built: a crop must hold the window
and, around each of its pixels, what every member feeds it (the clean stride-8 member reaches 59 px), ~96–104 px for
the stride-4 member's rows and the whole 128 px for the stride-8 member's once aligned to the coarsest stride, so it
would cut this model's head work by about 1.5× at best (1 024 rows at ~(100/128)² of the area, 256 at all of it); it
needs a size-agnostic copy of the head, verified per bundle and run by both runtimes.

On the PAN, Recipro-CAM at the cut set would take 128² + 64² + 2·32² ≈ 22 500 passes of its decoder per target and is
not timed; a crop would not help there: the measured windows are 35 px for
its stride-4 member but the whole 512² scores for the three deeper ones (the decoder pools them globally), so no
crop of those members is exact. The single cut (`--layer auto`, with the linear-tail shortcut) is the fast way to
explain it.
"""


def scene() -> Path:
    from cam_infer.tools.synthetic import write_scenes
    folder = Path(tempfile.mkdtemp(prefix="cam-cut-set-"))
    write_scenes(folder, "cluttered", 1)
    return sorted(folder.glob("*.png"))[0]


def own_ir(work: Path) -> Path:
    """Our own segmenter as an OpenVINO IR with float32 weights, as a deployment would ship it."""
    import openvino as ov
    model = ov.convert_model(str(OWN))
    model.reshape([1, 3, 128, 128])
    xml = work / "shapes_segmenter.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


def split(source: Path, layer: str, out: Path):
    from cam_infer.bundle.openvino_segmentation import split_openvino_segmenter
    from cam_infer.bundle.segmentation import split_segmenter
    plain = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    if source.suffix == ".xml":
        return split_openvino_segmenter(source, layer, out=out, overwrite=True, preprocessing=plain)
    return split_segmenter(source, layer, out=out, overwrite=True)


def speed(name, source, layer, photo, methods, backends, work: Path, repeats: int, report, recipro_rows) -> None:
    from cam_infer import Explainer

    bundles = {cut: split(source, cut, work / f"{source.stem}-{source.suffix[1:]}-{cut.replace('/', '_')}")
               for cut in ("auto", layer)}
    members = len(bundles[layer].manifest["cut"])
    for backend in backends:
        options = {"precision": "f32"} | ({"hint": "latency"} if backend == "openvino" else {})
        explainers = {cut: Explainer(b, backend=backend, **options) for cut, b in bundles.items()}
        x = explainers["auto"]._inputs([photo])[0]
        model = unsplit(source, backend, bundles["auto"])
        for method in methods:
            for cut, ex in explainers.items():
                call = lambda ex=ex, method=method: ex.explain(x, method)           # noqa: E731
                base, times = alternate([lambda: model(x), call], repeats)
                where = "auto (one map)" if cut == "auto" else f"'{layer}' ({members} members)"
                report(f"| {name} | {backend} | {method} | {where} | {median(times):.1f} | {median(base):.1f} | "
                       f"{ratio(times, base):.2f}× |")
                if method == "recipro" and cut != "auto":
                    recipro_rows.append(recipro_against_head_passes(name, backend, ex, x, repeats))


def recipro_against_head_passes(name, backend, ex, x, repeats: int) -> str:
    """Recipro on the cut set ÷ the bare head passes of its rows (h·w per member, plus each member's zero row and
    the 3 rows of its receptive-window probe), and ÷ its former path (whole-head rows, softmax over all the scores)."""
    packed, _ = ex.backend.observe(x)
    levels = ex.bundle.cut_levels
    count = sum(lv["shape"][1] * lv["shape"][2] + 4 for lv in levels)
    rows = np.repeat(packed, count, axis=0)
    step = ex.backend.chunk_size("head", count)
    heads = lambda: [ex.backend.head(rows[i:i + step]) for i in range(0, count, step)]      # noqa: E731
    fast, bare = alternate([lambda: ex.explain(x, "recipro"), heads], repeats)
    whole, bare2 = alternate([lambda: ex.explain(x, "recipro", shortcut=False), heads], max(1, repeats // 2))
    return (f"| {name} | {backend} | {count} | {median(bare):.0f} | {median(fast):.0f} | {ratio(fast, bare):.2f}× | "
            f"{median(whole):.0f} | {ratio(whole, bare2):.2f}× |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "segmentation_cut_set.md")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "cam-cut-set")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 runs, our own segmenter only (ONNX and IR)")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    args.work.mkdir(parents=True, exist_ok=True)
    report = Report()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    report(f"**Segmenter cut sets: method ÷ forward**, batch 1, float32 on both runtimes, CPU ({os.cpu_count()} "
           f"cores, load average {load} at the start: other jobs shared the machine). Each ratio from its own pair "
           f"timed alternately call by call, medians of {repeats} runs.\n")
    report("| model | runtime | method | cut | ms | forward ms | ÷ forward |\n|---|---|---|---|---:|---:|---:|")
    recipro_rows: list[str] = []
    ir_source = own_ir(args.work)
    for name, source, layer, photo, methods, backends in CASES[:2] if args.quick else CASES:
        speed(name, source or ir_source, layer, photo or scene(), methods, backends, args.work, repeats, report,
              recipro_rows)
    report("\n**Recipro-CAM on a cut set ÷ the head passes it makes** (the same rows through the bare head, timed "
           "alternately), now and on its former path (rows through the whole head, softmax over the whole scores; "
           f"medians of {max(1, repeats // 2)} runs).\n")
    report("| model | runtime | head rows | bare head passes ms | recipro ms | ÷ head passes | former path ms | "
           "÷ head passes |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for row in recipro_rows:
        report(row)
    report(f"\nload average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    report(NOTES)
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
