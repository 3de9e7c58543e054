"""Each level's class-score branch of a detection head, run on a small crop instead of the whole head.

At the Detect head's inputs an anchor's class scores depend on a (2r+1)² window of its own level only
(r measured at split time, 2 for YOLOv8's two 3×3 convolutions). A perturbation of that level that an
anchor's score is asked about (Recipro-CAM's kept cell, Ablation-CAM's zeroed channel) therefore needs
only the level's own branch (YOLOv8: cv3.l, the class convolutions) on a k×k crop, k = 2r+1, that holds
the anchor's window, not the whole head at every position of every level.

The crop is the k×k window of the grid nearest the anchor: centred on it where it can be, shifted inside
the grid at the borders. Exact for a stack of same-padded convolutions of total radius r: every cell the
anchor reads lies in the crop, and the crop's edges fall on the grid's edges exactly where the anchor's
convolutions read zero padding. Nothing here assumes that structure: a branch is kept only when it
reproduces the head's scores at every anchor of its level on the clean cut maps and on randomly zeroed
ones (`verify_branch`).

The branch is found in the head graph as a tensor computed from the level alone, on the level's grid
(exactly C channels preferred, then the fewest nodes), whose last C channels, as they are or through a
sigmoid, are the output's class scores.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..bundle.cut import _extend_constants, _subgraph, as_the_model_reads
from ..bundle.graph import Graph
from ..bundle.verify import session
from .decode import AnchorGrid

CANDIDATES = 6                  # branch tensors tried per level, smallest first
TOLERANCE = 1e-4                # on scores in [0, 1], a float32 cut (`branch_tolerance`)
SCORES = "class_scores"
FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)


def crop_origin(row: int, col: int, h: int, w: int, k: int) -> tuple[int, int]:
    """Top-left cell of the k×k crop that holds the (2r+1)² window around (row, col), inside the grid."""
    return min(max(row - k // 2, 0), h - k), min(max(col - k // 2, 0), w - k)


class OnnxBranches:
    """Where an ONNX head's class branches come from (`level_branches`): its tensors, cut out as ONNX graphs and run
    on ONNX Runtime. `openvino_branches.IrBranches` does the same on an OpenVINO IR's head."""

    suffix = "onnx"

    def __init__(self, graph: Graph, levels: list[dict]):
        self.graph, self.cut = graph, [lv["name"] for lv in levels]

    def candidates(self, i: int, level: dict, classes: int) -> list[str]:
        return branch_candidates(self.graph, level, self.cut, classes)

    def model(self, i: int, level: dict, tensor: str, classes: int, squash: str, k: int | None) -> onnx.ModelProto:
        return branch_model(self.graph, level, tensor, classes, squash, k)

    def runner(self, model: onnx.ModelProto):
        run = session(model)
        return lambda crops: run.run(None, {run.get_inputs()[0].name: crops})[0]

    def tolerance(self, i: int, level: dict) -> float:
        return branch_tolerance(self.graph, level["name"])


def level_branches(source, levels: list[dict], receptive: list[dict], classes: int, grid: AnchorGrid,
                   head_run, packed: np.ndarray) -> dict[int, tuple[object, dict]]:
    """level index → (branch graph on k×k crops, its manifest record), for the levels whose scores are
    local to their own grid and whose branch reproduces the head. `source` finds and builds the branches
    (`OnnxBranches`, `openvino_branches.IrBranches`); `packed` (1, total) holds the cut maps of one image,
    `head_run(rows)` runs the whole head. Each candidate is checked on the whole level with any spatial size and
    on every anchor's crop with the k×k graph that is written (`verify_branch`)."""
    out = {}
    clean = head_run(packed)[0]
    for i, (level, local) in enumerate(zip(levels, receptive)):
        radius = local["radius"]
        c, h, w = level["shape"]
        own = grid.level_of_stride(level["stride"])
        if radius is None or local["levels"] != [own] or 2 * radius + 1 > min(h, w):
            continue
        first = int(np.flatnonzero(grid.level == own)[0])
        tolerance = source.tolerance(i, level)
        for tensor in source.candidates(i, level, classes):
            for squash in ("sigmoid", "identity"):
                whole = source.model(i, level, tensor, classes, squash, None)
                fixed = source.model(i, level, tensor, classes, squash, 2 * radius + 1)
                if whole is None or fixed is None:
                    continue
                error = verify_branch(source.runner(whole), level, radius, first, packed, clean, head_run, tolerance,
                                      run_crops=source.runner(fixed))
                if error is not None:
                    out[i] = fixed, {"file": f"branch_{i}.{source.suffix}", "tensor": display_name(tensor),
                                     "window": 2 * radius + 1, "scores": squash, "max_abs_diff": error}
                    break
            if i in out:
                break
    return out


def display_name(tensor) -> str:
    """A branch tensor as the manifest records it: an ONNX tensor's name, an OpenVINO op output's op (``:index``)."""
    if isinstance(tensor, str):
        return tensor
    return tensor.op if tensor.index == 0 else f"{tensor.op}:{tensor.index}"


def branch_tolerance(graph: Graph, tensor: str) -> float:
    """How far a cropped branch's scores may be from the head's at a cut `tensor`: a float32 model's `TOLERANCE`; a
    float16 model's half a unit in the last place of a float16 score near 1 (2⁻¹¹: every score the file computes is
    rounded so); an int8 model's none (its branch and head run the same integer kernels, or the branch is wrong)."""
    dtype = graph.info(tensor).elem_type
    if dtype == TensorProto.FLOAT16:
        return 2.0 ** -11
    if dtype == TensorProto.BFLOAT16:
        return 2.0 ** -8
    return 0.0 if as_the_model_reads(graph, tensor, tensor, "", "")[0] else TOLERANCE


def branch_candidates(graph: Graph, level: dict, cut: list[str], classes: int) -> list[str]:
    """Float tensors computed from this level alone, on its grid, with at least `classes` channels (an int8
    graph's integer copies left out): those with exactly `classes` first, then by fewest nodes."""
    name, (_, h, w) = level["name"], level["shape"]
    only = computed_from_alone(graph, name)
    found = []
    for t in only - {name}:
        shape = graph.info(t).shape
        on_grid = shape is not None and len(shape) == 4 and tuple(shape[2:]) == (h, w)
        if graph.info(t).elem_type in FLOATS and on_grid and isinstance(shape[1], int) and shape[1] >= classes:
            found.append((shape[1] != classes, len(graph.nodes_computing([t], stop=set(cut))), t))
    return [t for *_, t in sorted(found)[:CANDIDATES]]


def computed_from_alone(graph: Graph, tensor: str) -> set[str]:
    """Every tensor whose image-dependent inputs all come from `tensor` (graph order is topological)."""
    dependent = graph.input_dependent
    only = {tensor}
    for node, inputs in zip(graph.nodes, graph.node_inputs):
        reads = [i for i in inputs if i in dependent]
        if reads and all(i in only for i in reads):
            only.update(o for o in node.output if o)
    return only


def branch_model(graph: Graph, level: dict, tensor: str, classes: int, squash: str, k: int | None) -> onnx.ModelProto:
    """level map (N, C, k, k) → class scores (N, classes, k, k): `tensor`'s last `classes` channels."""
    c = level["shape"][0]
    spatial = [k, k] if k else ["h", "w"]
    inputs = [helper.make_tensor_value_info(level["name"], TensorProto.FLOAT, ["N", c, *spatial])]
    outputs = [helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, ["N", classes, *spatial])]
    model = _subgraph(graph, graph.nodes_computing([tensor], stop={level["name"]}), "branch", inputs, outputs)
    read_as_the_model(graph, model, level["name"])
    channels = graph.info(tensor).shape[1]
    consts = {"branch_start": [channels - classes], "branch_end": [channels], "branch_axis": [1]}
    model.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), n) for n, v in consts.items())
    cast = graph.info(tensor).elem_type != TensorProto.FLOAT             # a float16 model's scores, as float32
    squashed = "branch_squashed" if cast else SCORES
    sliced = squashed if squash == "identity" else "branch_logits"
    model.graph.node.append(helper.make_node("Slice", [tensor, "branch_start", "branch_end", "branch_axis"], [sliced],
                                             name="branch_slice"))
    if squash == "sigmoid":
        model.graph.node.append(helper.make_node("Sigmoid", [sliced], [squashed], name="branch_sigmoid"))
    if cast:
        model.graph.node.append(helper.make_node("Cast", [squashed], [SCORES], to=TensorProto.FLOAT,
                                                 name="branch_cast"))
    onnx.checker.check_model(model)
    return model


def read_as_the_model(graph: Graph, model: onnx.ModelProto, tensor: str) -> None:
    """The branch's input, the level in float32, turned first into what the model's nodes read (`as_the_model_reads`:
    int8 or float16 files)."""
    nodes, constants = as_the_model_reads(graph, tensor, tensor, f"{tensor}__read", "branch_input")
    if not nodes:
        return
    for node in model.graph.node:
        node.input[:] = [f"{tensor}__read" if name == tensor else name for name in node.input]
    for i, node in enumerate(nodes):
        model.graph.node.insert(i, node)
    _extend_constants(graph, model, constants)


def verify_branch(run, level: dict, radius: int, first: int, packed: np.ndarray, clean: np.ndarray, head_run,
                  tolerance: float = TOLERANCE, run_crops=None) -> float | None:
    """The largest difference between the branch on every anchor's crop and the head's scores at that
    anchor (its anchors start at `first`), on the clean cut maps and with 70 % of the level's cells zeroed;
    None when it is over `tolerance` (`branch_tolerance`). `run`: level maps (N, C, h, w) of any size → class scores
    (N, classes, h, w); `run_crops`: the k×k graph that is written (default `run`)."""
    c, h, w = level["shape"]
    k = 2 * radius + 1
    run_crops = run_crops or run
    start = level["offset"]
    masked = packed.copy()
    view = masked[0, start:start + c * h * w].reshape(c, h, w)
    view *= np.random.default_rng(3).random((h, w)) > 0.7
    worst = 0.0
    for rows, output in ((packed, clean), (masked, head_run(masked)[0])):
        level_map = rows[0, start:start + c * h * w].reshape(c, h, w)
        try:
            whole = run(np.ascontiguousarray(level_map[None]))[0]                  # (classes, h, w)
        except Exception:                                                       # a graph that takes no other size
            return None
        expected = output[4:, first:first + h * w].reshape(-1, h, w)
        if whole.shape != expected.shape or np.abs(whole - expected).max() > tolerance:
            return None
        crops, where = [], []
        for row in range(h):
            for col in range(w):
                y0, x0 = crop_origin(row, col, h, w, k)
                crops.append(level_map[:, y0:y0 + k, x0:x0 + k])
                where.append((row - y0, col - x0))
        got = run_crops(np.ascontiguousarray(np.stack(crops)))
        ys, xs = np.array(where).T
        cropped = got[np.arange(len(got)), :, ys, xs].T.reshape(-1, h, w)         # (classes, h, w)
        diff = float(np.abs(cropped - expected).max())
        if diff > tolerance:
            return None
        worst = max(worst, diff)
    return worst


__all__ = ["OnnxBranches", "crop_origin", "level_branches"]
