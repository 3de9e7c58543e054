"""Splitting a YOLO-style detector that OpenVINO reads (an IR: Ultralytics' ``format=openvino`` export, or any ONNX
export converted by OpenVINO) into an IR bundle of task ``detection``, as `split.split_detector` splits an ONNX file:
the same cut sets (the Detect head's inputs, the backbone, or named ops), the same packing (`bundle.openvino_cut_set`),
letterbox preprocessing, measured locality and manifest; verified against the model on OpenVINO. The file is never
converted: an int8 IR keeps its FakeQuantize ops, and a cut map a FakeQuantize makes enters the head through a copy
of it (`bundle.openvino_split.enter_head_at`). Each level's class branch is cut from the IR's head as an ov.Model
and kept where it reproduces the head on crops (`openvino_branches`), so a perturbed row is a 5×5 crop through it, as
on an ONNX bundle; a level without one runs its rows through the whole head, within the measured window.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..bundle.openvino_cut_set import OpenVinoGraph, display, level_records, openvino_cut_set, packed_openvino_graphs
from ..bundle.openvino_split import (_BatchFails, _compiled, _input_spec, _ov_version, _Output, _read,
                                     split_outputs, with_input_size, write_ir_bundle)
from ..bundle.graph import rt_info_section
from ..bundle.split import read_labels
from ..bundle.verify import openvino_message, random_images
from ..errors import CamInferError
from ..images import Preprocessing
from .anatomy import check_class_rows, check_output_layout, class_names, end_to_end_refusal, metadata
from .branches import level_branches
from .decode import DEFAULTS, anchor_levels, check_thresholds, is_anchor_count
from .openvino_branches import IrBranches
from .record import detection_fields, measure_locality

SCOPE = re.compile(r"(?:^|/|__module\.)model\.(\d+)(?=[./:]|$)")       # ONNX-born /model.22/…, torch-born __module.


def is_openvino_detector(model) -> bool:
    """Whether an ov.Model ends in one (N, 4+C, anchors) output whose anchor count fits its input at strides 8, 16,
    32 …, or in an end-to-end export's (N, k, 6) picked by a TopK, or records Ultralytics' task=detect."""
    if metadata(model).get("task") == "detect":
        return True
    if len(model.get_results()) != 1 or len(model.get_parameters()) != 1:
        return False
    if _is_end_to_end(model):
        return True
    out, image = model.get_results()[0].get_output_partial_shape(0), model.get_parameters()[0].get_partial_shape()
    if out.rank.is_dynamic or out.rank.get_length() != 3 or image.rank.is_dynamic or image.rank.get_length() != 4:
        return False
    dims = [d.get_length() if d.is_static else None for d in out]
    size = [d.get_length() if d.is_static else None for d in image][2:]
    if None in dims[1:] or None in size:
        return False
    try:
        check_output_layout(model.get_results()[0].get_friendly_name(), tuple(dims[1:]), tuple(size))
    except CamInferError:
        return False
    return True


def split_openvino_detector(path, out, *, cut="detect-input", input_size_hw: tuple[int, int] | None = None,
                            labels=None, overwrite: bool = False, interpolation: str | None = None, model=None,
                            **thresholds):
    """Split a YOLO-style detector OpenVINO reads at a cut set and write a verified IR bundle (`model`: the file
    already read)."""
    unknown = set(thresholds) - set(DEFAULTS)
    if unknown:
        raise CamInferError(f"unknown NMS setting {', '.join(sorted(unknown))}; settings: {', '.join(DEFAULTS)}")
    check_thresholds(**{**DEFAULTS, **thresholds})
    path = Path(path)
    model = _read(path) if model is None else model
    if len(model.get_results()) != 1:
        raise CamInferError(f"the detector has {len(model.get_results())} outputs; cam-infer reads one (N, 4+C, "
                            "anchors) output (Ultralytics YOLOv8/YOLO11 layout)")
    model = with_input_size(model, input_size_hw or _imgsz(model), "NCHW")
    spec = _input_spec(model, "NCHW")
    if input_size_hw and tuple(map(int, input_size_hw)) != tuple(spec.size):
        raise CamInferError(f"the detector's input is fixed at {spec.size[0]}x{spec.size[1]}; --input-size "
                            f"{input_size_hw[0]} {input_size_hw[1]} does not fit it (it is for inputs of dynamic H, W)")
    model.reshape({model.get_parameters()[0].output(0): [1, spec.channels, *spec.size]})   # read at batch 1
    if spec.channels != 3 or spec.dtype not in ("float32", "float16"):
        raise CamInferError(f"the detector's input is {spec.dtype} with {spec.channels} channels; cam-infer reads "
                            "an Ultralytics export's float RGB image (N,3,H,W)")
    size = tuple(int(v) for v in spec.size)
    source = model                                  # its metadata (names), and an end-to-end export's rows
    if _is_end_to_end(model):
        model = _anchor_model(model, size)
    scores = model.get_results()[0].input_value(0)
    classes, anchors = _output_layout(model, size)
    graph = OpenVinoGraph(model, spec)
    members = _cut_members(graph, cut, scores, size[0])
    levels = level_records(graph, members, size[0])
    strides = list(anchor_levels(size, anchors).strides)
    _check_anchor_maps(graph, strides, anchors, size)
    prep = Preprocessing(size, crop="letterbox", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                         interpolation=interpolation)
    for batch_mode in ("dynamic", "fixed"):
        batch = -1 if batch_mode == "dynamic" else 1
        features, head = packed_openvino_graphs(graph, members, levels, scores, prep, batch)
        try:
            verification = _verify(model, features, head, prep, batch_mode)       # the model, read at batch 1
            break
        except _BatchFails:
            continue
    feat, hd = _compiled(features), _compiled(head)
    run_features = lambda x: next(iter(feat(x).values()))                       # noqa: E731
    run_head = lambda rows: next(iter(hd(rows).values()))                        # noqa: E731
    receptive = measure_locality(run_features, run_head, levels, prep)
    branches = level_branches(IrBranches(graph, members), levels, receptive, classes, anchor_levels(size, anchors),
                              run_head, run_features(random_images(prep, 1, seed=11)))
    names = read_labels(labels, classes) if labels is not None else \
        class_names(source, classes) or model_info_labels(source, classes)
    nms = {**DEFAULTS, **thresholds}
    if source is not model:
        verification["end_to_end"] = _compare_rows(source, model, prep)
        nms = {**nms, "max_det": min(nms["max_det"], verification["end_to_end"]["rows_per_image"]), "end_to_end": True}
    fields = detection_fields(prep, levels, strides, classes, anchors, names, cut, receptive, nms,
                              model.get_results()[0].get_friendly_name())
    for i, (_, record) in branches.items():
        fields["cut"][i]["branch"] = record
    manifest = {
        **fields,
        "input": {**fields["input"], "model_dtype": spec.dtype},
        "batch": batch_mode, **({"fixed_batch": 1} if batch_mode == "fixed" else {}),
        "verification": verification,
        "memory": {f"branch_{i}_bytes_per_item": 4 * 8 * levels[i]["shape"][0] * record["window"] ** 2
                   for i, (_, record) in branches.items()},
    }
    return write_ir_bundle(out, path, manifest, features, head, overwrite,
                           {f"branch_{i}": branch for i, (branch, _) in branches.items()})


def _is_end_to_end(model) -> bool:
    """The output is (N, k, 6) and a TopK computes it (`end_to_end`)."""
    shape = model.get_results()[0].get_output_partial_shape(0)
    return (shape.rank.is_static and shape.rank.get_length() == 3 and shape[2].is_static and shape[2].get_length() == 6
            and any(op.get_type_name() == "TopK" for op in model.get_ordered_ops()))


def _anchor_model(model, size: tuple[int, int]):
    """An end-to-end IR up to its one-to-one head's (1, 4+C, A) corners and scores, the last such op output before
    its first TopK, the corners made (cx, cy, w, h) (`end_to_end.anchor_model`, the ONNX file's twin)."""
    import openvino as ov
    import openvino.opset13 as ops
    from ..bundle.graph import names_metadata
    clone = model.clone()
    ordered = clone.get_ordered_ops()
    first = next(i for i, op in enumerate(ordered) if op.get_type_name() == "TopK")
    names = names_metadata(model)
    labels = rt_info_section(model, "model_info").get("labels", "").split()
    classes = len(names) if isinstance(names, dict) and names else len(labels) or None
    found = None
    for op in ordered[:first]:
        for out in op.outputs():
            shape = out.get_partial_shape()
            if not shape.is_static or shape.rank.get_length() != 3 or out.get_element_type().get_type_name() != "f32":
                continue
            rows, anchors = shape[1].get_length(), shape[2].get_length()
            if rows >= 5 and (classes is None or rows == 4 + classes) and is_anchor_count(size, anchors):
                found = out
    if found is None:
        raise CamInferError(end_to_end_refusal(model.get_results()[0].get_friendly_name(),
                                               (model.get_results()[0].get_output_partial_shape(0)[1], 6)))
    rows = found.get_partial_shape()[1].get_length()
    axis, step = ops.constant(np.array([1], np.int64)), ops.constant(np.array([1], np.int64))
    part = lambda a, b: ops.slice(found, ops.constant(np.array([a], np.int64)),        # noqa: E731
                                  ops.constant(np.array([b], np.int64)), step, axis)
    corner, far, scores = part(0, 2), part(2, 4), part(4, rows)
    centre = ops.multiply(ops.add(corner, far), ops.constant(np.array(0.5, np.float32)))
    boxes = ops.concat([centre, ops.subtract(far, corner), scores], 1)
    result = ops.result(boxes)
    result.set_friendly_name("anchors_before_top_k")
    return ov.Model([result], clone.get_parameters(), "end_to_end_scores")


def _compare_rows(deployed, cut, prep) -> dict:
    """`end_to_end.compare_rows` on OpenVINO, image by image (the export read at batch 1)."""
    from .end_to_end import compare_rows
    full, part = _compiled(deployed), _compiled(cut)
    one_by_one = lambda compiled: lambda x: np.concatenate(                     # noqa: E731
        [next(iter(compiled(x[i:i + 1]).values())) for i in range(len(x))])
    return compare_rows(one_by_one(full), one_by_one(part), prep, (1, 3))


def model_info_labels(model, classes: int) -> list[str] | None:
    """The class names Ultralytics' `format=openvino` export records in rt_info ``model_info/labels``: one string,
    the names separated by spaces, each name's own spaces made underscores ('tagged_square'), read as written; None
    unless it names `classes` classes."""
    names = rt_info_section(model, "model_info").get("labels", "").split()
    return names if len(names) == classes else None


def _imgsz(model) -> tuple[int, int] | None:
    """The export's ``imgsz`` metadata (Ultralytics), for an input of dynamic size."""
    import ast
    text = metadata(model).get("imgsz")
    if not text:
        return None
    size = ast.literal_eval(text)
    return (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))


def _output_layout(model, size: tuple[int, int]) -> tuple[int, int]:
    shape = model.get_results()[0].get_output_partial_shape(0)
    dims = tuple(d.get_length() if d.is_static else None for d in shape) if shape.rank.is_static else None
    top_k = any(op.get_type_name() == "TopK" for op in model.get_ops())
    return check_output_layout(model.get_results()[0].get_friendly_name(), None if dims is None else dims[1:], size,
                               top_k)


def _cut_members(graph: OpenVinoGraph, cut, scores, height: int) -> list[_Output]:
    """The cut set `cut` names (detect-input | backbone | op names), checked to separate the image from the output."""
    if cut == "detect-input":
        names = [display(m) for m in _detect_inputs(graph)]
    elif cut == "backbone":
        names = [display(_backbone_cut(graph, scores, height))]
    else:
        names = [n.strip() for n in (cut.split(",") if isinstance(cut, str) else cut) if n.strip()]
    members = openvino_cut_set(graph, ",".join(names), scores, option="--cut")
    if members is not None and len(members) > len(names):      # a segmenter's cut is completed; a detector's is not
        around = [display(m) for m in members if display(m) not in names]
        raise CamInferError(f"{', '.join(names)} do not cut the detector: its head also reads "
                            f"{', '.join(map(repr, around[:4]))} around them; add them to --cut")
    if members is None:                          # one op every path crosses
        members = [graph.lookup(names[0])]
        if members[0].op == graph.spec.name:
            raise CamInferError(f"cut '{names[0]}' is the detector's input image, not a feature map it computes")
        if graph.shape(members[0]) is None:
            raise CamInferError(f"cut '{names[0]}' is not a float feature map (N,K,h,w) of the input")
    bad = [m for m in members if (graph.shape(m) or [0, 0])[1] == 0 or height % graph.shape(m)[1]]
    if bad:
        raise CamInferError(f"cut '{display(bad[0])}' is not a feature map at a stride of the input")
    return members


def _detect_inputs(graph: OpenVinoGraph) -> list[_Output]:
    """What the detection head reads: the image-dependent outputs of ops outside the last ``model.N`` scope (and
    outside what is computed from it) that ops inside it read, finest first."""
    scopes = op_scopes(graph)
    last = max((n for found in scopes.values() for n in found), default=None)
    if last is None:
        raise CamInferError("cannot find the detection head: the graph's op names have no Ultralytics 'model.N' "
                            "scopes; give the cut ops with --cut NAME,NAME,...")
    inside = set()                  # the scope's ops, and the unnamed ones the converter made after them
    for name in sorted(graph.ops, key=graph.order.get):
        if last in scopes[name] or any(v.get_node().get_friendly_name() in inside
                                       for v in graph.ops[name].input_values()):
            inside.add(name)
    members = []
    for name in inside:
        for value in graph.ops[name].input_values():
            source = value.get_node().get_friendly_name()
            member = _Output(source, value.get_index())
            if source not in inside and source in graph.dependent and member not in members:
                members.append(member)
    shaped = [m for m in members if graph.shape(m) is not None]
    return sorted(shaped, key=lambda m: -graph.shape(m)[1] * graph.shape(m)[2])


SHARED_ACTIVATION = re.compile(r"\.act/aten::")    # an op of a Conv's `act` module: `__module.model.23….act/aten::…`


def op_scopes(graph: OpenVinoGraph) -> dict[str, list[int]]:
    """Each op's ``model.N`` scopes, read from its name; an activation op's (`SHARED_ACTIVATION`) from the op it reads.
    Ultralytics' Conv modules share one SiLU (`Conv.default_act`), and OpenVINO's PyTorch frontend names every call
    of a shared module after one of its paths: in a `format=openvino` export (Ultralytics 8.4.190, OpenVINO 2026.4)
    every Swish of the network is named `__module.model.23.cv3.2.1.1.act/aten::silu_/Swish_N`, inside Detect, which
    put the first convolution's output among the head's inputs."""
    scopes: dict[str, list[int]] = {}
    for name in sorted(graph.ops, key=graph.order.get):
        scopes[name] = [int(n) for n in SCOPE.findall(name)]
        if SHARED_ACTIVATION.search(name):
            read = [v.get_node().get_friendly_name() for v in graph.ops[name].input_values()]
            scopes[name] = next((scopes[r] for r in read if r in graph.dependent and r in scopes), scopes[name])
    return scopes


def _backbone_cut(graph: OpenVinoGraph, scores, height: int) -> _Output:
    """The last op output at stride 8 that every path from the image to the output crosses."""
    for name in sorted(graph.ops, key=lambda n: -graph.order[n]):
        member = _Output(name)
        shape = graph.shape(member) if name in graph.dependent and graph.ops[name].get_output_size() else None
        if shape is None or height % shape[1] or height // shape[1] != 8:
            continue
        if not graph.read_around(scores, {member}, graph.ancestors(member)):
            return member
    raise CamInferError("no single stride-8 op output cuts this detector; give the cut ops with --cut NAME,...")


def _check_anchor_maps(graph: OpenVinoGraph, strides: list[int], anchors: int, size: tuple[int, int]) -> None:
    grids = {tuple(s[1:]) for name in graph.dependent if name in graph.ops and graph.ops[name].get_output_size()
             and (s := graph.shape(_Output(name))) is not None}
    missing = [s for s in strides if (size[0] // s, size[1] // s) not in grids]
    if missing:
        raise CamInferError(f"the output's {anchors} anchors are the cells of levels at strides {strides}, and no "
                            f"feature map of the model is at stride {', '.join(map(str, missing))}: not an (N, 4+C, "
                            "anchors) output (a YOLOv5-style (N, anchors, 5+C) layout?)")


def _verify(reference, features, head, prep, batch_mode: str) -> dict:
    """head(features(x)) against the model on OpenVINO (f32), batch 1 and 3 (one image a call for a fixed batch).
    A float model's output within 1e-3 of its largest value. An int8 file (FakeQuantize ops): its class scores,
    which the methods explain, within 1e-3 and its boxes within 1 % of the input's size, as OpenVINO compiles the
    quantized ops of the two graphs its own way (int8 YOLOv8n files: a box edge 0.84 px apart with every score
    equal; scores 2e-4 apart with every box equal). Both differences are recorded."""
    try:
        full, feat, hd = _compiled(reference), _compiled(features), _compiled(head)
    except Exception as exc:
        if batch_mode == "dynamic":
            raise _BatchFails() from None
        raise CamInferError(f"OpenVINO cannot compile this model or its split ({openvino_message(exc)})") from None
    quantized = any(op.get_type_name() == "FakeQuantize" for op in reference.get_ordered_ops())
    worst, worst_box = 0.0, 0.0
    for n in (1, 3):
        x = random_images(prep, n, seed=n)
        expected = np.concatenate([next(iter(full(x[i:i + 1]).values())) for i in range(n)]).astype(np.float32)
        check_class_rows(expected[:, 4:])
        got = split_outputs(feat, hd, x, batch_mode)
        scores, boxes = (float(np.abs(got[:, rows] - expected[:, rows]).max())
                         for rows in (slice(4, None), slice(0, 4)))
        box_bound = 0.01 * max(prep.input_size) if quantized else 1e-3 * max(1.0, float(np.abs(expected).max()))
        if scores > (1e-3 if quantized else box_bound) or boxes > box_bound:
            if batch_mode == "dynamic":            # an int8 graph compiled for any batch can round otherwise
                raise _BatchFails()
            raise CamInferError(f"the split detector differs from the model by {max(scores, boxes):.3g} at batch {n} "
                                f"(class scores {scores:.3g}, boxes {boxes:.3g} px)")
        worst, worst_box = max(worst, scores), max(worst_box, boxes)
    return {"max_abs_diff": max(worst, worst_box), "scores_max_abs_diff": worst, "boxes_max_abs_diff": worst_box,
            "batches": [1, 3], "images": "random", "runtime": f"openvino {_ov_version()} CPU (f32)"}


__all__ = ["is_openvino_detector", "split_openvino_detector"]
