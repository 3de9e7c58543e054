"""The model-randomisation sanity check of Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018.

A method whose maps hardly change when the model's weights are replaced by random ones does not explain the
model (an edge detector passes every faithfulness metric of a natural photo but fails here). On the deployed
graph itself (the bundle's features and head graphs, which together are the model file it was split from):

* **layers** are the nodes that hold learned weights: Conv, Gemm, MatMul (and their quantized forms
  QLinearConv, QLinearMatMul, QGemm, ConvInteger, MatMulInteger), one layer per node, counted from the
  output backwards (layer 1 is the last); its weights are the initializers feeding it directly or through a
  DequantizeLinear (QDQ files). Other parameters (a BatchNormalization's, scales, zero points) are kept.
* **the draw**: a weight tensor W is replaced by a tensor of its shape and dtype drawn from N(0, std(W))
  (a float tensor), or N(mean(W), std(W)) rounded and clipped to [min(W), max(W)] (an integer tensor of a
  quantized file, so it stays within its range; its scale and zero point are kept). The generator is seeded
  with (seed, layer, tensor): a layer gets the same random weights in every step that randomises it, and a
  rerun the same maps.
* **cascading** step k: the last k layers random (the paper's Fig. 2); **independent** step k: only layer k.
  Of the n layers, `steps` depths spread evenly over 1..n are checked, always including n (every layer);
  the independent steps randomise the layers at the same depths.
* the randomised graphs keep the bundle's cut: the drawn tensors replace the originals, by name, in the
  features and head graphs (what splitting the randomised model at the same tensor gives).

Per method and step the maps of the original and the randomised model for the same class (the original
model's) are compared: Spearman rank correlation of the absolute maps and SSIM of the maps min-max
normalised to [0, 1] (`cam_infer.metrics.similarity`), averaged over the compared images: an image whose map is
flat (constant, degenerate) on either side has no ranking and is left out, as in `cam-infer diff`, and each row
says how many images were compared. A method whose mean Spearman after every layer is randomised stays above
`threshold` (0.5 by default: the maps still share more than half their ranking with the trained model's) is
flagged: its maps do not depend on the model enough. With no image compared there is no mean and no flag.
"""

from __future__ import annotations

import csv
import html
import io
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import CamInferError
from ..images import load_image
from ..metrics.similarity import spearman, ssim
from ..outputs import write_atomically
from .report import add_section

SANITY_CSV = "sanity.csv"
WEIGHTED = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "QLinearConv": (3, 8), "QLinearMatMul": (3,),
            "QGemm": (3, 6), "ConvInteger": (1,), "MatMulInteger": (1,)}     # op → inputs that are its weights
COLUMNS = ("mode", "step", "layers", "layer", "method", "images", "compared", "spearman", "ssim")
SIMILARITIES = {"spearman": spearman, "ssim": ssim}


@dataclass(frozen=True)
class SanityOptions:
    """The check's cost: `steps` depths (each a cascading and an independent model), on the first `images`
    images of the audit; `seed` for the draws; `threshold` on the final cascading Spearman for the flag.
    Defaults: 8 depths draw the curve's shape (the paper shows ~17 on Inception v3) at 16 models, each written,
    opened and passed once per image and method; 8 images because one image's Spearman of a 7×7 map varies
    widely (−0.6 to 0.7 for recipro on MobileNetV2 with every layer random) while the mean settles."""

    steps: int = 8
    images: int = 8
    seed: int = 0
    threshold: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Layer:
    """A node with learned weights; `depth` 1 is the last such node before the output."""

    depth: int
    node: str
    op: str
    weights: tuple[str, ...]


def weight_layers(graphs) -> list[Layer]:
    """The layers of the graphs (features, then head, as one model), from the output backwards."""
    found, seen = [], set()
    for model in graphs:
        initializers = {i.name for i in model.graph.initializer}
        dequantized = {n.output[0]: n.input[0] for n in model.graph.node
                       if n.op_type == "DequantizeLinear" and n.input[0] in initializers}
        for node in model.graph.node:
            if node.op_type not in WEIGHTED:
                continue
            inputs = [node.input[i] for i in WEIGHTED[node.op_type] if i < len(node.input) and node.input[i]]
            names = tuple(n if n in initializers else dequantized.get(n) for n in inputs)
            names = tuple(n for n in names if n is not None and n not in seen)
            if names:
                seen.update(names)
                found.append((node.name or node.output[0], node.op_type, names))
    return [Layer(depth, *found[-depth]) for depth in range(1, len(found) + 1)]


def redraw(tensor: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random tensor of `tensor`'s shape and dtype with its spread: N(0, std) for floats; for integers
    N(mean, std) rounded and clipped to the original's [min, max]."""
    if np.issubdtype(tensor.dtype, np.floating):
        return rng.normal(0.0, float(tensor.std()), tensor.shape).astype(tensor.dtype)
    values = rng.normal(float(tensor.mean()), float(tensor.std()), tensor.shape)
    return np.clip(np.rint(values), tensor.min(), tensor.max()).astype(tensor.dtype)


def random_weights(graphs, layers, seed: int) -> dict[str, np.ndarray]:
    """Initializer name → its re-drawn tensor, for every weight of `layers` (seeded per layer and tensor)."""
    tensors = {i.name: i for model in graphs for i in model.graph.initializer}
    out = {}
    for layer in layers:
        for j, name in enumerate(layer.weights):
            rng = np.random.default_rng((seed, layer.depth, j))
            out[name] = redraw(numpy_helper.to_array(tensors[name]), rng)
    return out


def with_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` with the initializers named in `weights` replaced."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for i, init in enumerate(copy.graph.initializer):
        if init.name in weights:
            copy.graph.initializer[i].CopyFrom(numpy_helper.from_array(weights[init.name], init.name))
    return copy


def depths(n: int, steps: int) -> list[int]:
    """`steps` depths spread evenly over 1..n, always with n (every layer)."""
    return sorted({int(round(d)) for d in np.linspace(n / steps, n, steps)} | {n}) if steps < n else \
        list(range(1, n + 1))


def step_layers(layers: list[Layer], mode: str, k: int) -> list[Layer]:
    """The layers step k randomises: the last k (cascading) or only the k-th from the output (independent)."""
    return layers[:k] if mode == "cascading" else [layers[k - 1]]


def check_sanity(bundle, sanity: SanityOptions) -> None:
    """The check runs on ONNX classifier bundles, with at least one step and one image; anything else is
    refused with one line."""
    if not (isinstance(sanity.steps, int) and sanity.steps >= 1 and isinstance(sanity.images, int)
            and sanity.images >= 1):
        raise CamInferError(f"the sanity check needs at least one step and one image, not {sanity.steps} and "
                            f"{sanity.images}")
    if bundle.task != "classification":
        raise CamInferError(f"the sanity check runs on classifiers; this bundle's task is {bundle.task}")
    if bundle.graph_format != "onnx":
        raise CamInferError("the sanity check re-draws ONNX weights; this bundle's graphs are OpenVINO IR: "
                            "split the ONNX file instead")


def randomised_bundle(bundle, graphs, weights: dict, folder: Path):
    """The bundle with `weights` in its graphs, written to `folder` (manifest hashes updated)."""
    from ..bundle import Bundle
    from ..bundle.manifest import sha256_of, write_manifest

    manifest = dict(bundle.manifest, graphs={k: dict(v) for k, v in bundle.manifest["graphs"].items()})
    graph_files = [graph["file"] for graph in manifest["graphs"].values()]
    shutil.copytree(bundle.path, folder, ignore=shutil.ignore_patterns(*graph_files))     # written below
    for role, model in zip(("features", "head"), graphs):
        path = folder / manifest["graphs"][role]["file"]
        onnx.save(with_weights(model, weights), path)
        manifest["graphs"][role]["sha256"] = sha256_of(path)
    write_manifest(folder, manifest)
    return Bundle.load(folder)


def run_sanity(bundle, images, options, sanity: SanityOptions) -> dict:
    """The check on the first `sanity.images` image files, every method of the audit `options`, for the audit's
    class (its predicted class when the target is ``truth``; the randomised models explain the same class):
    {"options", "layers", "images", "rows" (COLUMNS), "final_spearman", "flagged": methods, "notes"}."""
    from ..bundle import Bundle
    from ..jobs.explainers import open_explainer
    from .work import audit_spec, explain_variant

    bundle = Bundle.load(bundle) if not isinstance(bundle, Bundle) else bundle
    check_sanity(bundle, sanity)
    images = list(images)[:sanity.images]
    graphs = [onnx.load(bundle.features_path), onnx.load(bundle.head_path)]
    layers = weight_layers(graphs)
    if not layers:
        raise CamInferError("the sanity check found no weight initializers (Conv, Gemm, MatMul) in the bundle")
    gradients = audit_spec(bundle.path, options).gradients
    prep = bundle.preprocessing
    x = np.stack([prep.standardise(prep.geometry(load_image(i))) for i in images])

    trained = open_explainer(bundle, options.backend, options.device, None, gradients, options.precision)
    target = None if options.target in ("predicted", "truth") else trained.class_id(options.target)
    original = {}
    for method in options.methods:
        e = explain_variant(trained, x, method, target, options)
        original[method] = (e.saliency, e.targets, np.asarray(e.degenerate, bool))
    rows = []
    with tempfile.TemporaryDirectory(prefix="cam-infer-sanity-") as work:
        for mode in ("cascading", "independent"):
            for k in depths(len(layers), sanity.steps):
                chosen = step_layers(layers, mode, k)
                folder = Path(work) / f"{mode}-{k}"
                randomised = randomised_bundle(bundle, graphs, random_weights(graphs, chosen, sanity.seed), folder)
                explainer = open_explainer(randomised, options.backend, options.device, None, gradients,
                                           options.precision)
                for method in options.methods:
                    before, targets, flat = original[method]
                    after = explain_variant(explainer, x, method, targets, options)
                    rows.append({"mode": mode, "step": k, "layers": len(chosen), "layer": layers[k - 1].node,
                                 "method": method, "images": len(images),
                                 **compared_means(before, after.saliency, flat | np.asarray(after.degenerate, bool))})
                del explainer
                shutil.rmtree(folder, ignore_errors=True)
    n = len(layers)
    final = {r["method"]: r["spearman"] for r in rows if r["mode"] == "cascading" and r["step"] == n}
    return {"options": sanity.to_dict(), "layers": [asdict(layer) for layer in layers],
            "images": [str(i) for i in images], "rows": rows,
            "final_spearman": final, "flagged": [m for m, v in final.items() if v is not None and v > sanity.threshold],
            "notes": {"flagged": f"mean Spearman of the maps after every layer is randomised above "
                                 f"{sanity.threshold}: the maps hardly depend on the model's weights",
                      "compared": "images whose two maps are compared: a flat (constant) map on either side has no "
                                  "ranking, so no similarity; the means are over the compared images (null: none)"}}


def compared_means(before: np.ndarray, after: np.ndarray, flat: np.ndarray) -> dict:
    """{"compared": the images whose maps are flat on neither side, and each similarity's mean over them (None when
    there are none)}. A flat (degenerate) map has no ranking and no structure: its Spearman and SSIM would be what its
    ties give (two constant maps scored Spearman 1, a constant map against a hot one SSIM 0.79), as in `cam-infer
    diff` (`cam_infer.diff.work.similarities`)."""
    kept = [(a, b) for a, b, f in zip(before, after, flat) if not f]
    return {"compared": len(kept), **{key: float(np.mean([measure(a, b) for a, b in kept])) if kept else None
                                      for key, measure in SIMILARITIES.items()}}


def write_sanity_csv(path: Path, result: dict) -> None:
    """sanity.csv: one row per mode, step and method."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(result["rows"])
    write_atomically(path, buffer.getvalue())


def sanity_line(result: dict) -> str:
    """What `cam-infer audit --sanity` prints: each method's Spearman after every layer is randomised, with the
    images it is over when a flat map left some out."""
    n = len(result["layers"])
    final = {r["method"]: r for r in result["rows"] if r["mode"] == "cascading" and r["step"] == n}
    shown = ", ".join(f"{m} " + ("-" if r["spearman"] is None else f"{r['spearman']:.2f}") + _left_out(r)
                      + (" FLAGGED" if m in result["flagged"] else "") for m, r in final.items())
    return f"sanity check (Spearman to the original after all {n} layers random): {shown}"


def _left_out(row: dict) -> str:
    """How many of a row's images were compared, when a flat map left some out ("" when none was)."""
    compared = row.get("compared", row["images"])          # a summary.json written before the count was kept
    if compared == row["images"]:
        return ""
    return f" ({compared} of {row['images']} images compared: flat maps left out)"


COLOURS = ("#4a7bd0", "#d0694a", "#4aa05a", "#9a4ad0", "#c0a020", "#20a0c0", "#a0a0a0", "#d04a9a")


def sanity_section(result: dict) -> str:
    """The report's section: per measure a chart of similarity vs layers randomised (cascading), one line per
    method, and a table of both modes; flagged methods named in red."""
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    n = len(result["layers"])
    threshold = result["options"]["threshold"]
    charts = "".join(_curve_chart(result["rows"], methods, measure, n, threshold if measure == "spearman" else None)
                     for measure in ("spearman", "ssim"))
    flagged = result["flagged"]
    unjudged = [m for m, v in result["final_spearman"].items() if v is None]
    flags = (f"<p class=err>Flagged: {html.escape(', '.join(flagged))}: {html.escape(result['notes']['flagged'])}"
             ".</p>" if flagged else f"<p>No method flagged (final cascading Spearman ≤ "
             f"{result['options']['threshold']} for every method{' compared' if unjudged else ''}).</p>")
    if unjudged:
        flags += (f"<p class=err>Not judged: {html.escape(', '.join(unjudged))}: with every layer random, each "
                  "image's map was flat on one side or both, so no image was compared.</p>")
    head = "<tr><th>mode</th><th>layers randomised</th><th>layer</th>" + "".join(
        f"<th>{html.escape(m)} Spearman</th><th>{html.escape(m)} SSIM</th>" for m in methods) + "</tr>"
    cells = {(r["mode"], r["step"], r["method"]): r for r in result["rows"]}
    body = ""
    for mode, step in dict.fromkeys((r["mode"], r["step"]) for r in result["rows"]):
        any_row = cells[(mode, step, methods[0])]
        shown = f"last {step}" if mode == "cascading" else f"only #{step}"
        body += (f"<tr><th>{mode}</th><td>{shown}</td><td>{html.escape(any_row['layer'])}</td>"
                 + "".join(_cells(cells[(mode, step, m)]) for m in methods) + "</tr>")
    left_out = any(r.get("compared", r["images"]) < r["images"] for r in result["rows"])
    note = (" <small>k/n</small>: the similarities are over the k of n images whose maps are flat on neither side (a "
            "constant map has no ranking); –: every image had a flat map." if left_out else "")
    return (f"<h2>Sanity check: model randomisation</h2><p>{n} weight layers, counted from the output; "
            f"{len(result['images'])} images; maps of the original vs the randomised model for the same class "
            f"(Adebayo et al. 2018). Near 0 once many layers are random: the maps depend on the model.</p>"
            f"{flags}<div class=charts>{charts}</div><table>{head}{body}</table><p>Details in {SANITY_CSV}.{note}</p>")


def _cells(row: dict) -> str:
    """A row's Spearman and SSIM cells; the images compared after the Spearman when a flat map left some out."""
    compared = row.get("compared", row["images"])
    count = f" <small>{compared}/{row['images']}</small>" if compared < row["images"] else ""
    return "".join(f"<td>{'–' if row[k] is None else f'{row[k]:.3f}'}{count if k == 'spearman' else ''}</td>"
                   for k in SIMILARITIES)


def _curve_chart(rows, methods, measure: str, n: int, threshold: float | None) -> str:
    """An inline SVG: x = layers randomised (cascading, 0 = the original: similarity 1), y = the measure in
    [-1, 1]; the flag's threshold dashed."""
    width, height, left, top = 320, 180, 40, 24
    def point(k, v):
        return left + width * k / n, top + height * (1 - v) / 2
    lines = []
    for i, m in enumerate(methods):
        steps = [(0, 1.0)] + [(r["step"], r[measure]) for r in rows if r["mode"] == "cascading" and r["method"] == m
                              and r[measure] is not None]                 # no point where no image was compared
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (point(k, v) for k, v in steps))
        colour = COLOURS[i % len(COLOURS)]
        lines.append(f"<polyline fill=none stroke='{colour}' stroke-width=2 points='{path}'></polyline>"
                     f"<text x={left + width + 8} y={top + 14 * (i + 1)} font-size=11 fill='{colour}'>"
                     f"{html.escape(m)}</text>")
    zero = point(0, 0)[1]
    title = f"{'Spearman' if measure == 'spearman' else 'SSIM'} vs layers randomised (cascading)"
    axes = (f"<line x1={left} y1={top} x2={left} y2={top + height} stroke='#888'></line>"
            f"<line x1={left} y1={zero:.1f} x2={left + width} y2={zero:.1f} stroke='#ccc'></line>"
            f"<text x=4 y={top + 10} font-size=10>1</text><text x=4 y={zero + 4:.1f} font-size=10>0</text>"
            f"<text x=4 y={top + height} font-size=10>-1</text>"
            f"<text x={left} y={top + height + 16} font-size=10>0</text>"
            f"<text x={left + width - 12} y={top + height + 16} font-size=10>{n}</text>"
            f"<text x={left + width / 2 - 70} y={top + height + 16} font-size=10>layers randomised (from the "
            "output)</text>")
    if threshold is not None:
        y = point(0, threshold)[1]
        axes += (f"<line x1={left} y1={y:.1f} x2={left + width} y2={y:.1f} stroke='#a00' stroke-dasharray='4 3'>"
                 f"</line><text x={left + 4} y={y - 3:.1f} font-size=10 fill='#a00'>flag above {threshold}</text>")
    return (f"<svg class=chart role=img aria-label='{html.escape(title)}' width={left + width + 120} "
            f"height={top + height + 24}><text x=0 y=14 font-size=13 font-weight=bold>{html.escape(title)}</text>"
            f"{axes}{''.join(lines)}</svg>")


add_section("sanity", lambda report: sanity_section(report.summary["sanity"]) if report.summary.get("sanity") else "",
            before="protocol")


__all__ = ["SANITY_CSV", "Layer", "SanityOptions", "depths", "random_weights", "redraw", "run_sanity",
           "sanity_line", "sanity_section", "step_layers", "weight_layers", "write_sanity_csv"]
