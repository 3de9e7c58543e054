"""End-to-end detectors (Ultralytics YOLO26/YOLOv10 exported with `nms=False`): explained at the scores before
their TopK.

Such an export ends in the one-to-one head's (N, 4+C, A) tensor — boxes x1, y1, x2, y2 in input pixels and sigmoid
class scores at every anchor, as a YOLOv8 output but for the corners — and then picks its rows inside the graph: a
TopK of the anchors by their best score, a TopK of those anchors' (anchor, class) pairs, and GatherElements of their
boxes: (N, max_det, 6) rows x1, y1, x2, y2, score, class, with no anchor index. cam-infer cuts the graph before the
first TopK and turns the corners into (cx, cy, w, h), so the model it splits is an (N, 4+C, A) detector, and its
detections are the same top (anchor, class) pairs (`decode.top_pairs`). Every deployed row then maps back to its
anchor: the split checks on random images that the top pairs of the cut output are the export's rows, score for
score and class for class, with their boxes (`verify_rows`), or refuses the file.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..bundle.graph import Graph, names_metadata
from ..errors import CamInferError
from .decode import is_anchor_count, top_pairs

OUTPUT = "anchors_before_top_k"       # the cut model's output: (N, 4+C, A), boxes cx, cy, w, h
BOX_TOLERANCE = 1e-3                  # px: corners through (cx, cy, w, h) and back, in float32


def is_end_to_end(graph: Graph) -> bool:
    """The output is (N, k, 6) and a TopK computes it."""
    shape = graph.info(graph.model.graph.output[0].name).shape
    return (shape is not None and len(shape) == 3 and shape[2] == 6
            and any(node.op_type == "TopK" for node in graph.nodes))


def scores_before_top_k(graph: Graph, size: tuple[int, int]) -> str:
    """The last (N, 4+C, A) tensor, A anchors at `size`, computed before the graph's first TopK (C the classes the
    names metadata lists, where it does): the one-to-one head's decoded boxes and scores."""
    first = min(i for i, node in enumerate(graph.nodes) if node.op_type == "TopK")
    names = names_metadata(graph.model)
    rows = 4 + len(names) if isinstance(names, dict) and names else None
    found = None
    for node in graph.nodes[:first]:
        for tensor in node.output:
            shape = graph.info(tensor).shape if tensor else None
            if (shape is not None and len(shape) == 3 and isinstance(shape[1], int) and isinstance(shape[2], int)
                    and shape[1] >= 5 and (rows is None or shape[1] == rows) and is_anchor_count(size, shape[2])):
                found = tensor
    if found is None:
        raise CamInferError("the detector is an end-to-end export (a TopK picks its (N,k,6) rows), and no (N, 4+C, "
                            "anchors) tensor before its TopK was found to explain; export it with its (N, 4+C, "
                            "anchors) output (Ultralytics: nms unset, not nms=False)")
    return found


def anchor_model(model: onnx.ModelProto, graph: Graph, tensor: str) -> onnx.ModelProto:
    """The model up to `tensor` (corners and scores before the TopK), its corners made (cx, cy, w, h): an (N, 4+C, A)
    detector with the metadata of the file."""
    from ..bundle.cut import _subgraph
    from ..bundle.graph import make_tensor_value_info
    rows, anchors = graph.info(tensor).shape[1:]
    image = make_tensor_value_info(graph.info(graph.image_input.name), "N")
    cut = _subgraph(graph, graph.nodes_computing([tensor], stop=set()), "end_to_end_scores", [image], [])
    cut.graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", rows, anchors]))
    consts = {"e2e_0": [0], "e2e_2": [2], "e2e_4": [4], "e2e_end": [rows], "e2e_axis": [1]}
    cut.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items())
    cut.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), "e2e_half"))
    if graph.info(tensor).elem_type != TensorProto.FLOAT:          # a float16 file's: the detector's float32 output
        cut.graph.node.append(helper.make_node("Cast", [tensor], ["e2e_float"], to=TensorProto.FLOAT, name="e2e_float"))
        tensor = "e2e_float"
    cut.graph.node.extend([
        helper.make_node("Slice", [tensor, "e2e_0", "e2e_2", "e2e_axis"], ["e2e_x1y1"], name="e2e_x1y1"),
        helper.make_node("Slice", [tensor, "e2e_2", "e2e_4", "e2e_axis"], ["e2e_x2y2"], name="e2e_x2y2"),
        helper.make_node("Slice", [tensor, "e2e_4", "e2e_end", "e2e_axis"], ["e2e_scores"], name="e2e_scores"),
        helper.make_node("Add", ["e2e_x1y1", "e2e_x2y2"], ["e2e_sum"], name="e2e_sum"),
        helper.make_node("Mul", ["e2e_sum", "e2e_half"], ["e2e_centre"], name="e2e_centre"),
        helper.make_node("Sub", ["e2e_x2y2", "e2e_x1y1"], ["e2e_size"], name="e2e_size"),
        helper.make_node("Concat", ["e2e_centre", "e2e_size", "e2e_scores"], [OUTPUT], axis=1, name="e2e_cxcywh")])
    del cut.metadata_props[:]
    cut.metadata_props.extend(model.metadata_props)
    onnx.checker.check_model(cut)
    return cut


def verify_rows(deployed: onnx.ModelProto, cut: onnx.ModelProto, prep) -> dict:
    """`compare_rows` of an ONNX export and its cut, on ONNX Runtime, batches of 1 and 3."""
    from ..bundle.verify import session
    full, part = session(deployed), session(cut)
    return compare_rows(lambda x: full.run(None, {full.get_inputs()[0].name: x})[0],
                        lambda x: part.run(None, {part.get_inputs()[0].name: x})[0], prep, (1, 3))


def compare_rows(run_deployed, run_cut, prep, batches) -> dict:
    """The export's (N, k, 6) rows against the top (anchor, class) pairs of the cut output on random images: the same
    scores in the same order, the same class and box at every row whose score no other row shares (the order of equal
    scores is the TopK's own); refused otherwise. `rows_per_image`, the export's k, is the bundle's max_det."""
    from ..bundle.verify import random_images
    compared, worst, k = 0, 0.0, 0
    for n in batches:
        x = random_images(prep, n, seed=20 + n)
        for image, ours in zip(run_deployed(x), run_cut(x)):
            k = len(image)
            pairs = top_pairs(ours, -1.0, k)
            if len(pairs) != k or not np.array_equal(pairs.scores, image[:, 4]):
                raise CamInferError("the scores before the end-to-end detector's TopK do not give its rows in its "
                                    "order: cam-infer cannot tell which anchor made each detection; export it with "
                                    "its (N, 4+C, anchors) output (Ultralytics: nms unset, not nms=False)")
            values, counts = np.unique(image[:, 4], return_counts=True)
            unique = np.isin(image[:, 4], values[counts == 1])
            boxes = float(np.abs(pairs.boxes[unique] - image[unique, :4]).max(initial=0.0))
            if not np.array_equal(pairs.classes[unique], image[unique, 5].astype(np.int64)) or boxes > BOX_TOLERANCE:
                raise CamInferError(f"the end-to-end detector's rows are not the boxes and classes of the anchors "
                                    f"before its TopK (boxes up to {boxes:.3g} px apart): cam-infer cannot tell which "
                                    "anchor made each detection; export it with its (N, 4+C, anchors) output "
                                    "(Ultralytics: nms unset, not nms=False)")
            compared += int(unique.sum())
            worst = max(worst, boxes)
    return {"rows_per_image": k, "rows_compared": compared, "max_box_diff": worst, "images": "random",
            "batches": list(batches)}


__all__ = ["OUTPUT", "anchor_model", "compare_rows", "is_end_to_end", "scores_before_top_k", "verify_rows"]
