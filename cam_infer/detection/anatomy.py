"""What a YOLO-style detector is (read only): its output layout, its input size, class names from the
Ultralytics metadata, and the cut sets it can be split at (research notes, detection §3.4, §4).

Ultralytics YOLOv8/YOLO11 export, and YOLO26/YOLOv10 exported with their one-to-many head (Ultralytics' default
export, `nms` unset): input `images` (N,3,H,W) RGB/255 letterboxed; output (N, 4+C, A) with boxes (cx, cy, w, h) in
input pixels and sigmoid class scores, A = Σ_l (H/s_l)·(W/s_l) anchors, level-major and row-major. DFL decoding
(none for YOLO26: one bin), strides and the sigmoid are inside the graph; NMS is not. An end-to-end export (the
one-to-one head's top detections picked by a TopK inside the graph, (N, 300, 6)) is split before its TopK
(`end_to_end`), as ONNX file and as OpenVINO IR.

A set S of tensors is a **cut** when every path from the image to the output passes through S: propagating
"depends on the image" forward without entering S reaches no output.
"""

from __future__ import annotations

import ast
import re

import numpy as np
import onnx

from ..bundle.anatomy import declared_image_size, sequence_guess
from ..bundle.graph import Graph, image_input, names_metadata, recorded_metadata
from ..errors import CamInferError
from .decode import is_anchor_count

CUTS = ("detect-input", "backbone")
SCOPE = re.compile(r"^model\.(\d+)$")


def is_detector(model: onnx.ModelProto) -> bool:
    """Ultralytics metadata says task=detect, or the output is (N, 4+C, A) with A well above 4+C and, where
    the input size is fixed, a count of anchors at strides 8, 16, 32 … (not the features of a sequence)."""
    if metadata(model).get("task") == "detect":
        return True
    outputs = model.graph.output
    if len(outputs) != 1:
        return False
    dims = outputs[0].type.tensor_type.shape.dim
    if len(dims) != 3:
        return False
    few, many = dims[1].dim_value, dims[2].dim_value
    size = declared_image_size(model)
    if many and size and not is_anchor_count(size, many):
        return False
    return 5 <= few <= 300 and (many > 4 * few or (many == 0 and dims[2].dim_param != ""))


def metadata(model: onnx.ModelProto) -> dict:
    """What the detector file records of itself (`bundle.graph.recorded_metadata`: task, imgsz, names)."""
    return recorded_metadata(model)


def class_names(model: onnx.ModelProto, classes: int) -> list[str] | None:
    """The Ultralytics ``names`` metadata ({0: 'person', ...}) as a list, when it covers every class; refused when
    it names another count of classes than the output's rows give (an objectness row read as a class?)."""
    names = names_metadata(model)
    if isinstance(names, dict) and sorted(names) == list(range(classes)):
        return [str(names[i]) for i in range(classes)]
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        raise CamInferError(f"the model's names metadata lists {len(names)} classes, and its output has {classes} "
                            f"class rows after the 4 box rows: not the (N, 4+C, anchors) layout of those classes "
                            "(an objectness row?)")
    return None


def input_size(model: onnx.ModelProto, given: tuple[int, int] | None) -> tuple[int, int]:
    """The input's (H, W): given, fixed in the graph, or the export's ``imgsz`` metadata."""
    if given:
        return int(given[0]), int(given[1])
    dims = image_input(model).type.tensor_type.shape.dim
    if len(dims) == 4 and dims[2].dim_value and dims[3].dim_value:
        return dims[2].dim_value, dims[3].dim_value
    text = metadata(model).get("imgsz")
    if text:
        size = ast.literal_eval(text)
        return (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))
    raise CamInferError("the detector's input has no fixed size and no imgsz metadata; give --input-size H W")


def output_layout(graph: Graph, size: tuple[int, int]) -> tuple[int, int]:
    """(classes, anchors) of an Ultralytics (N, 4+C, A) output at input `size` (H,W); anything else is
    refused in one line."""
    out = graph.model.graph.output
    if len(out) != 1:
        raise CamInferError(f"the detector has {len(out)} outputs ({', '.join(o.name for o in out)}); cam-infer "
                            "reads one (N, 4+C, anchors) output (Ultralytics YOLOv8/YOLO11 layout)")
    shape = graph.info(out[0].name).shape
    top_k = any(node.op_type == "TopK" for node in graph.nodes)
    return check_output_layout(out[0].name, None if shape is None else tuple(shape[1:]), size, top_k)


def check_output_layout(name: str, dims: tuple | None, size: tuple[int, int], top_k: bool = False) -> tuple[int, int]:
    """(classes, anchors) of an output whose dims after the batch are `dims` = (4+C, anchors) at input `size`; a
    one-line refusal for anything else. `top_k`: the graph picks its output with a TopK (an end-to-end export)."""
    if dims is not None and len(dims) == 2 and dims[1] == 6 and top_k:
        raise CamInferError(end_to_end_refusal(name, dims))
    if dims is None or len(dims) != 2 or not dims[0] or not dims[1] or dims[0] < 5 or dims[1] <= dims[0]:
        shown = "?" if dims is None else "(N," + ",".join(str(d) for d in dims) + ")"
        raise CamInferError(f"the detector output '{name}' is {shown}, not (N, 4+C, anchors): cam-infer reads "
                            "the Ultralytics YOLOv8/YOLO11/YOLO26/YOLOv10 layout (YOLOv5's (N, anchors, 5+C) is not "
                            "supported yet)")
    if not is_anchor_count(size, dims[1]):
        raise CamInferError(f"the model output '{name}' is (N,{dims[0]},{dims[1]}), not a detector's "
                            f"(N, 4+C, anchors): this looks like a {sequence_guess((None, *dims), size)}, and "
                            "cam-infer explains classifiers and YOLO-style detectors only")
    return dims[0] - 4, dims[1]


def end_to_end_refusal(name: str, dims: tuple) -> str:
    """Why an end-to-end export (Ultralytics YOLO26/YOLOv10 with `nms=False`: the one-to-one head's scores, then a
    TopK over anchors and classes, (N, 300, 6) rows x1, y1, x2, y2, score, class) is refused when no tensor before its
    TopK holds the anchors' boxes and scores (`end_to_end`), and what to export instead."""
    return (f"the detector output '{name}' is (N,{dims[0]},6) picked by a TopK inside the graph: an end-to-end export "
            "(YOLO26/YOLOv10 one-to-one head, no NMS) with no (N, 4+C, anchors) tensor of boxes and class scores "
            "before its TopK to explain; export the (N, 4+C, anchors) output (Ultralytics: nms unset, not nms=False)")


def is_cut(graph: Graph, tensors: list[str]) -> bool:
    """Every path from the image to the output passes through `tensors`."""
    stop = set(tensors)
    reached = {graph.image_input.name}
    for node, inputs in zip(graph.nodes, graph.node_inputs):
        if any(i in reached and i not in stop for i in inputs):
            reached.update(o for o in node.output if o)
    return not any(o.name in reached and o.name not in stop for o in graph.model.graph.output)


def detect_inputs(graph: Graph) -> list[str]:
    """The tensors the detection head reads: inputs of the last ``model.N`` scope (Ultralytics' Detect) that
    depend on the image and are produced outside it, in order of decreasing resolution."""
    scopes = [int(m.group(1)) for path in graph.module_paths if (m := SCOPE.match(path))]
    if not scopes:
        raise CamInferError("cannot find the detection head: the graph has no Ultralytics 'model.N' scopes; "
                            "give the cut tensors with --cut NAME,NAME,...")
    head = f"model.{max(scopes)}"
    inside = {idx for idx, paths in enumerate(graph.node_modules) if head in paths}
    found: list[str] = []
    for idx in sorted(inside):
        for name in graph.node_inputs[idx]:
            producer = graph.producer.get(name)
            if name in graph.input_dependent and producer not in inside and name not in found:
                found.append(name)
    return sorted(found, key=lambda t: -spatial_size(graph, t))


def backbone_cut(graph: Graph, height: int) -> list[str]:
    """The last single tensor at stride 8 whose removal cuts the graph (YOLOv8: the backbone's P3 stage,
    before the neck): maps whose head, the neck and Detect, sees most of the image."""
    candidates = [t for t in graph.order if t in graph.input_dependent and stride_of(graph, t, height) == 8]
    for tensor in sorted(candidates, key=lambda t: -graph.order[t]):
        if is_cut(graph, [tensor]):
            return [tensor]
    raise CamInferError("no single stride-8 tensor cuts this detector; give the cut tensors with --cut NAME,...")


def spatial_size(graph: Graph, tensor: str) -> int:
    shape = graph.info(tensor).shape
    return int(shape[2] * shape[3]) if shape and len(shape) == 4 and shape[2] and shape[3] else 0


def stride_of(graph: Graph, tensor: str, height: int) -> int | None:
    shape = graph.info(tensor).shape
    if not shape or len(shape) != 4 or not shape[2] or height % shape[2]:
        return None
    return height // shape[2]


def cut_tensors(graph: Graph, cut, height: int) -> list[str]:
    """The cut set named by `cut` (detect-input | backbone | a list of tensor names), checked."""
    if isinstance(cut, str) and cut in CUTS:
        tensors = detect_inputs(graph) if cut == "detect-input" else backbone_cut(graph, height)
    else:
        tensors = [t.strip() for t in (cut.split(",") if isinstance(cut, str) else cut) if t.strip()]
        unknown = [t for t in tensors if t not in graph.producer]
        if unknown:
            raise CamInferError(f"no tensor named {', '.join(map(repr, unknown))} in the detector; cut sets: "
                                f"{', '.join(CUTS)}, or tensor names")
    bad = [t for t in tensors if stride_of(graph, t, height) is None]
    if bad:
        raise CamInferError(f"cut tensor '{bad[0]}' is not a feature map (N,C,h,w) of the input: its shape is "
                            f"{graph.info(bad[0]).shape}")
    if not is_cut(graph, tensors):
        raise CamInferError(f"{', '.join(tensors)} do not cut the detector: some path from the image reaches the "
                            "output around them")
    return tensors


def check_class_rows(scores: np.ndarray) -> None:
    """Refuse class rows that are not probabilities (an export without the Sigmoid on its class scores): NMS
    thresholds and the records read them as confidences in [0, 1]; and rows of one value (an int8 output whose
    quantization step, set by the boxes' 0–320 px, rounds every score to 0)."""
    low, high = float(scores.min()), float(scores.max())
    if low == high:
        raise CamInferError(f"the detector's class scores are {low:g} at every anchor and class of random images: "
                            "scores that do not move cannot be explained (an int8 file whose output is quantized in "
                            "steps its boxes' pixel range sets rounds every score to a step: quantize it with "
                            "Detect's box decoding left in float)")
    if low < 0.0 or high > 1.0:
        raise CamInferError(f"the detector's class rows hold values from {low:.3g} to {high:.3g}, not probabilities in "
                            "[0, 1]: cam-infer reads Ultralytics' (N, 4+C, anchors) output, whose class scores "
                            "pass through a Sigmoid")


__all__ = ["CUTS", "check_class_rows", "check_output_layout", "class_names", "cut_tensors", "end_to_end_refusal",
           "input_size", "is_cut", "is_detector", "output_layout"]
