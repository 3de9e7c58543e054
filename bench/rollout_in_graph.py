"""Attention rollout computed inside the graph, measured against the package's rollout (issue: vision transformers;
rollout ≤ 1.2× the forward pass). Not the package's path: this script is the measurement that kept it out.

The package reads every block's attention, fused over the heads in the graph (`bundle.tokens.with_attention`), and
carries the class token's row through the blocks in NumPy (`methods.rollout.class_token_row`). Here the rest goes
into the graph too, so that only the row (T numbers per image) leaves it: per block, the discard threshold (the
k-th smallest of the T² fused entries, k = ⌊T²·discard_ratio⌋ − 1: the smallest of the T² − k largest, TopK
unsorted then ReduceMin — exactly ``np.partition``'s, ties included), the entries at or below it zeroed except
the class token's own, the row sums s and v ← (v / s)·F + v / s (``with_rollout``). The row equals the package's
(checked on every run, f32). ViT-Ti-sized model of bench/rollout.py (224×224, 12 blocks, 197 tokens, random
weights, seed 0), split with ``auto``; f32 on both runtimes; the forward pass, the package's rollout, the in-graph
rollout and the in-graph rollout without the discard (``discard_ratio=0``: no TopK) alternated call by call,
median ms per image.

    python bench/rollout_in_graph.py --work /tmp/cam-rollout --out bench/rollout_in_graph.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from cam_infer.bundle.verify import random_images
from cam_infer.tools.bench import Report  # noqa: E402

ROW = "rollout__class_row"


def with_rollout(model, count: int, discard_ratio: float, renormalise: str):
    """`tokens.with_attention`'s model (outputs: the cut, L fused attentions (N,T,T), the scores) with its
    attentions replaced by the class token's row of their rollout, (N, T): outputs the cut, the row, the scores."""
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    cut, *fused, scores = list(graph.output)
    t2 = count * count
    drop = int(t2 * discard_ratio)
    corner = np.zeros((1, count, count), bool)
    corner[0, 0, 0] = True
    start = np.zeros((1, 1, count), np.float32)
    start[0, 0, 0] = 1.0
    constants = {"start": start, "corner": corner, "zero": np.float32(0), "one": np.float32(1),
                 "flat": np.array([0, t2], np.int64), "column": np.array([-1, 1, 1], np.int64),
                 "as_row": np.array([-1, 1, count], np.int64), "out": np.array([-1, count], np.int64),
                 "largest": np.array([t2 - drop + 1], np.int64), "axis1": np.array([1], np.int64),
                 "axis2": np.array([2], np.int64)}
    graph.initializer.extend(numpy_helper.from_array(np.asarray(v), f"rollout__{k}") for k, v in constants.items())
    nodes = []

    def node(op: str, inputs: list[str], name: str, **attributes) -> str:
        nodes.append(helper.make_node(op, inputs, [f"rollout__{name}"], name=f"rollout__{name}", **attributes))
        return f"rollout__{name}"

    def reduce(op: str, x: str, axis: str, name: str) -> str:            # axes an input from opset 13 / 18 on
        as_input = opset >= (13 if op == "ReduceSum" else 18)
        return node(op, [x] + ([f"rollout__{axis}"] if as_input else []), name, keepdims=0,
                    **({} if as_input else {"axes": [int(axis[-1])]}))

    v = "rollout__start"
    for block, output in reversed(list(enumerate(fused))):
        f = output.name
        if drop:
            flat = node("Reshape", [f, "rollout__flat"], f"{block}_flat")
            largest = node("TopK", [flat, "rollout__largest"], f"{block}_largest", axis=-1, largest=1, sorted=0)
            nodes[-1].output.append(f"rollout__{block}_largest_indices")
            threshold = node("Reshape", [reduce("ReduceMin", largest, "axis1", f"{block}_threshold"),
                                         "rollout__column"], f"{block}_threshold_column")
            kept = node("Or", [node("Greater", [f, threshold], f"{block}_above"), "rollout__corner"], f"{block}_kept")
            f = node("Where", [kept, f, "rollout__zero"], f"{block}_discarded")
        sums = node("Reshape", [node("Add", [reduce("ReduceSum", f, "axis2", f"{block}_row_sums"), "rollout__one"],
                                     f"{block}_sums"), "rollout__as_row"], f"{block}_sums_row")
        if renormalise == "rows":
            v = node("Div", [v, sums], f"{block}_scaled")
            v = node("Add", [node("MatMul", [v, f], f"{block}_product"), v], f"{block}_row")
        else:
            product = node("Add", [node("MatMul", [v, f], f"{block}_product"), v], f"{block}_unscaled")
            v = node("Div", [product, sums], f"{block}_row")
    nodes.append(helper.make_node("Reshape", [v, "rollout__out"], [ROW], name=ROW))
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend([cut, helper.make_tensor_value_info(ROW, TensorProto.FLOAT, None), scores])
    return model


def in_graph(bundle, backend: str, discard_ratio: float):
    """The joined model with the rollout appended, compiled for `backend` at f32: x → (cut, row, scores)."""
    from cam_infer.backends.sessions import FLOAT32, onnxruntime_session, openvino_compiled
    count = bundle.tokens.prefix + bundle.tokens.grid[0] * bundle.tokens.grid[1]
    model = with_rollout(bundle.attention_model("mean"), count, discard_ratio, "rows").SerializeToString()
    if backend == "onnxruntime":
        session = onnxruntime_session(model, FLOAT32)
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[1]
    compiled = openvino_compiled(model, FLOAT32)
    return lambda x: compiled({0: x})[compiled.output(1)]


def measure(bundle_path: Path, backend: str, batch: int, repeats: int) -> dict[str, float]:
    from cam_infer import Explainer
    from cam_infer.methods.rollout import class_token_row
    explainer = Explainer(bundle_path, backend=backend, precision="f32")
    x = random_images(explainer.bundle.preprocessing, batch)             # random pixels, in the model's range
    package = lambda: class_token_row(explainer.backend.attention(x, "mean")[1], 0.9)     # noqa: E731
    graph, graph0 = in_graph(explainer.bundle, backend, 0.9), in_graph(explainer.bundle, backend, 0.0)
    np.testing.assert_allclose(graph(x), package(), rtol=1e-4, atol=1e-7)
    calls = {"forward": lambda: explainer.backend.forward(x), "package": package, "graph": lambda: graph(x),
             "graph0": lambda: graph0(x)}
    times: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(repeats + 1):
        for k, call in calls.items():
            start = time.perf_counter()
            call()
            if r:
                times[k].append((time.perf_counter() - start) * 1000 / batch)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    from rollout import bundle_for
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/cam-rollout", help="where bench/rollout.py's models are (reused)")
    parser.add_argument("--out", help="also write the markdown here")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    path = bundle_for("vit-ti", Path(args.work))
    report = Report()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    report(f"Machine load at the start (uptime): {load} (1, 5, 15 min; 2 cores shared)\n")
    report(f"**vit-ti** 224×224, 12 blocks; f32; median ms per image of {args.repeats} alternated runs; "
           "ratios to the forward pass\n")
    report("| backend | batch | forward ms | package's rollout | in the graph (TopK) | in the graph, discard_ratio=0 |")
    report("|---|---:|---:|---:|---:|---:|")
    for backend in ("onnxruntime", "openvino"):
        for batch in (1, 8):
            t = measure(path, backend, batch, args.repeats)
            f = t["forward"]
            report(f"| {backend} | {batch} | {f:.1f} | {t['package'] / f:.2f}× | {t['graph'] / f:.2f}× | "
                   f"{t['graph0'] / f:.2f}× |")
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    report(f"\nMachine load at the end: {load}")
    report.write(args.out)


if __name__ == "__main__":
    main()
