"""Splitting a detector at a cut set: `features` returns the L cut maps packed into one (N, Σ C_l·h_l·w_l)
tensor, `head` unpacks them and runs the rest of the model to its (N, 4+C, A) output. One tensor at the
boundary keeps every backend, chunk and batch path of the classifiers; the manifest's `cut` list says
where each level lies in it.

    split_detector("yolov8n.onnx", out="bundles/yolo")                      # cut at the Detect head's inputs
    split_detector("yolov8n.onnx", cut="backbone", out="bundles/yolo-p3")    # one stride-8 map, before the neck

Checked like a classifier's split: the set cuts every path, and head(features(x)) reproduces the model on
both runtimes. The head's locality is measured, not assumed: one cell of each level is changed and the
anchors that move give each level's receptive radius in cells (Detect's 5×5 window: 2) and whether
levels mix (they do not at the Detect inputs; at a backbone cut the neck mixes everything).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..bundle.anatomy import check_one_output
from ..bundle.cut import (_adapt_image_input, _extend_constants, _float32_boundary, _subgraph, as_the_model_reads,
                          float_view)
from ..bundle.graph import Graph, load_onnx, make_tensor_value_info
from ..bundle.manifest import Bundle
from ..bundle.split import read_labels
from ..bundle.verify import session
from ..bundle.write import graphs_record, provenance_record, runtimes_record, write_onnx_bundle
from ..errors import CamInferError
from ..images import Preprocessing
from .anatomy import check_class_rows, class_names, cut_tensors, image_input, input_size, output_layout, stride_of
from .branches import OnnxBranches, level_branches
from .decode import DEFAULTS, anchor_levels, check_thresholds
from .end_to_end import anchor_model, is_end_to_end, scores_before_top_k, verify_rows
from .record import PACKED, detection_fields, measure_locality



def split_detector(model, out, *, cut="detect-input", input_size_hw: tuple[int, int] | None = None,
                   labels: "list[str] | str | None" = None, overwrite: bool = False,
                   interpolation: str | None = None, **thresholds) -> Bundle:
    """Split a YOLO-style ONNX detector (path or ModelProto) at a cut set and write a verified bundle;
    `interpolation` is the letterbox's resize filter (default bilinear, as Ultralytics). A file OpenVINO reads
    (an IR) is split as it is, into an IR bundle (`openvino_split.split_openvino_detector`)."""
    from ..bundle.openvino_split import is_openvino_source
    if isinstance(model, (str, os.PathLike)) and is_openvino_source(model):
        from .openvino_split import split_openvino_detector
        return split_openvino_detector(model, out, cut=cut, input_size_hw=input_size_hw, labels=labels,
                                       overwrite=overwrite, interpolation=interpolation, **thresholds)
    unknown = set(thresholds) - set(DEFAULTS)
    if unknown:
        raise CamInferError(f"unknown NMS setting {', '.join(sorted(unknown))}; settings: {', '.join(DEFAULTS)}")
    check_thresholds(**{**DEFAULTS, **thresholds})
    source = Path(model) if isinstance(model, (str, os.PathLike)) else None
    proto = load_onnx(model) if source else model
    check_one_output([o.name for o in proto.graph.output])
    size = input_size(proto, input_size_hw)
    proto = with_input_size(proto, size)
    graph = Graph.from_model(proto, size)
    deployed = None
    if is_end_to_end(graph):
        deployed, proto = proto, anchor_model(proto, graph, scores_before_top_k(graph, size))
        graph = Graph.from_model(proto, size)
    classes, anchors = output_layout(graph, size)          # what the model is, before how it is exported
    check_dynamic_batch(proto if deployed is None else deployed)
    tensors = cut_tensors(graph, cut, size[0])
    levels = [level_record(graph, t, size[0]) for t in tensors]
    strides = list(anchor_levels(size, anchors).strides)
    check_anchor_maps(graph, strides, anchors, size)
    features, head = packed_graphs(graph, tensors, levels)
    prep = Preprocessing(size, crop="letterbox", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                         interpolation=interpolation)
    verification = verify_detector(proto, features, head, prep)
    nms = {**DEFAULTS, **thresholds}
    if deployed is not None:
        verification["end_to_end"] = verify_rows(deployed, proto, prep)
        nms = {**nms, "max_det": min(nms["max_det"], verification["end_to_end"]["rows_per_image"]), "end_to_end": True}
    feat, hd = session(features), session(head)
    receptive = measure_locality(lambda x: feat.run(None, {feat.get_inputs()[0].name: x})[0],
                                 lambda rows: hd.run(None, {PACKED: rows})[0], levels, prep)
    branches = cropped_branches(graph, features, head, levels, receptive, classes, anchor_levels(size, anchors), prep)
    names = read_labels(labels, classes) if labels is not None else class_names(proto, classes)
    manifest = detection_manifest(graph, proto, features, head, prep, levels, strides, classes, anchors, names,
                                  cut, receptive, verification, source, nms, branches)
    return write_onnx_bundle(Path(out), features, head, manifest, overwrite,
                             {f"branch_{i}": model for i, (model, _) in branches.items()})


def check_anchor_maps(graph: Graph, strides: list[int], anchors: int, size: tuple[int, int]) -> None:
    """Refuse an output whose anchor count needs a level at a stride no feature map of the graph has (a YOLOv5
    (N, anchors, 5+C) output whose sizes happen to read as (N, 4+C, anchors))."""
    grids = {tuple(info.shape[2:]) for name, info in graph.shapes.items()
             if name in graph.input_dependent and info.shape and len(info.shape) == 4}
    missing = [s for s in strides if (size[0] // s, size[1] // s) not in grids]
    if missing:
        raise CamInferError(f"the output's {anchors} anchors are the cells of levels at strides {strides}, and no "
                            f"feature map of the model is at stride {', '.join(map(str, missing))}: not an (N, 4+C, "
                            "anchors) output (a YOLOv5-style (N, anchors, 5+C) layout?)")


def check_dynamic_batch(model: onnx.ModelProto) -> None:
    """Refuse a detector exported with a fixed batch: its graph reshapes to that batch (an Ultralytics static
    export's Reshape to (1, 4+C, n)), so it cannot run the batches the package sends."""
    dim = image_input(model).type.tensor_type.shape.dim
    if dim and dim[0].HasField("dim_value") and dim[0].dim_value > 0:
        raise CamInferError(f"the detector's input has a fixed batch of {dim[0].dim_value}: cam-infer runs detectors "
                            "at any batch; export it with a dynamic batch (Ultralytics: dynamic=True)")


def with_input_size(model: onnx.ModelProto, size: tuple[int, int]) -> onnx.ModelProto:
    """A copy whose image input has spatial size `size` and a dynamic batch."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    dims = image_input(fixed).type.tensor_type.shape.dim
    for dim, value in zip(dims[2:], size):
        dim.Clear()
        dim.dim_value = int(value)
    for dim in fixed.graph.output[0].type.tensor_type.shape.dim[1:]:
        dim.Clear()
    del fixed.graph.value_info[:]
    return fixed


def level_record(graph: Graph, tensor: str, height: int) -> dict:
    _, c, h, w = graph.info(tensor).shape
    return {"name": tensor, "shape": [int(c), int(h), int(w)], "stride": stride_of(graph, tensor, height)}


def packed_graphs(graph: Graph, tensors: list[str], levels: list[dict]) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """features: image → the cut maps, each flattened, concatenated; head: that vector → the model's output. The
    features take float32 NCHW images whatever the model takes (a float16 image cast, as `bundle.cut.extract`
    does)."""
    output = graph.model.graph.output[0].name
    image = graph.info(graph.image_input.name)
    features = _subgraph(graph, graph.nodes_computing(tensors, stop=set()), "features",
                         [make_tensor_value_info(image, "N")], [])
    head = _subgraph(graph, graph.nodes_computing([output], stop=set(tensors)), "head", [],
                     [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", *graph.info(output).shape[1:]])])
    total = sum(int(np.prod(level["shape"])) for level in levels)
    flat_shape = numpy_helper.from_array(np.array([0, -1], np.int64), "cut_flat_shape")
    features.graph.initializer.append(flat_shape)
    for i, t in enumerate(tensors):
        features.graph.node.append(helper.make_node("Reshape", [float_view(graph, features, t), "cut_flat_shape"],
                                                    [f"{t}__flat"], name=f"pack_{i}"))
    features.graph.node.append(helper.make_node("Concat", [f"{t}__flat" for t in tensors], [PACKED], axis=1,
                                                name="pack"))
    features.graph.output.append(helper.make_tensor_value_info(PACKED, TensorProto.FLOAT, ["N", total]))
    _adapt_image_input(features, graph.input_spec)          # float32 NCHW images in, as a single cut's features
    _float32_boundary(features)
    head.graph.input.append(helper.make_tensor_value_info(PACKED, TensorProto.FLOAT, ["N", total]))
    start, unpack = 0, []
    for i, (t, level) in enumerate(zip(tensors, levels)):
        size = int(np.prod(level["shape"]))
        consts = {f"unpack_{i}_start": [start], f"unpack_{i}_end": [start + size], f"unpack_{i}_axis": [1],
                  f"unpack_{i}_shape": [0, *level["shape"]]}
        head.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items())
        as_read, constants = as_the_model_reads(graph, t, f"{t}__unpacked", t, f"unpack_{i}")
        _extend_constants(graph, head, constants)
        unpack += [helper.make_node("Slice", [PACKED, f"unpack_{i}_start", f"unpack_{i}_end", f"unpack_{i}_axis"],
                                    [f"{t}__slice"], name=f"unpack_slice_{i}"),
                   helper.make_node("Reshape", [f"{t}__slice", f"unpack_{i}_shape"],
                                    [f"{t}__unpacked" if as_read else t], name=f"unpack_{i}"), *as_read]
        level["offset"] = start
        start += size
    nodes = unpack + list(head.graph.node)
    del head.graph.node[:]
    head.graph.node.extend(nodes)
    for part in (features, head):
        onnx.checker.check_model(part)
    return features, head


def verify_detector(source: onnx.ModelProto, features: onnx.ModelProto, head: onnx.ModelProto,
                    prep: Preprocessing) -> dict:
    """head(features(x)) against the model on random images, batch 1 and 3, on ONNX Runtime."""
    from ..bundle.verify import random_images
    full, feat, hd = session(source), session(features), session(head)
    worst = 0.0
    for n in (1, 3):
        x = random_images(prep, n, seed=n)
        expected = full.run(None, {full.get_inputs()[0].name: x})[0]
        check_class_rows(expected[:, 4:])
        got = hd.run(None, {PACKED: feat.run(None, {feat.get_inputs()[0].name: x})[0]})[0]
        diff = float(np.abs(got - expected).max())
        if diff > 1e-3 * max(1.0, float(np.abs(expected).max())):
            raise CamInferError(f"the split detector differs from the model by {diff:.3g} at batch {n}")
        worst = max(worst, diff)
    return {"max_abs_diff": worst, "batches": [1, 3], "images": "random"}


def cropped_branches(graph, features, head, levels, receptive, classes, grid, prep) -> dict:
    """The levels' class-score branches for cropped head passes (`branches`), checked on a random image."""
    from ..bundle.verify import random_images
    feat, hd = session(features), session(head)
    packed = feat.run(None, {feat.get_inputs()[0].name: random_images(prep, 1, seed=11)})[0]
    return level_branches(OnnxBranches(graph, levels), levels, receptive, classes, grid,
                          lambda rows: hd.run(None, {PACKED: rows})[0], packed)


def detection_manifest(graph, proto, features, head, prep, levels, strides, classes, anchors, names, cut, receptive,
                       verification, source, nms, branches) -> dict:
    total = sum(int(np.prod(level["shape"])) for level in levels)
    per_item = 4 * (3 * int(np.prod(prep.input_size)) * 8 + total * 3)
    graphs = graphs_record(features, head)
    memory = {"features_bytes_per_item": per_item, "head_bytes_per_item": per_item}
    for i, (model, record) in branches.items():
        graphs[f"branch_{i}"] = {"file": record["file"], "ops": dict(Counter(n.op_type for n in model.graph.node))}
        memory[f"branch_{i}_bytes_per_item"] = 4 * 8 * levels[i]["shape"][0] * record["window"] ** 2
    fields = detection_fields(prep, levels, strides, classes, anchors, names, cut, receptive, nms,
                              graph.model.graph.output[0].name, features.graph.input[0].name)
    for i, level in enumerate(fields["cut"]):
        if i in branches:
            level["branch"] = branches[i][1]
    return {**fields, "batch": "dynamic", "graphs": graphs, "runtimes": runtimes_record(features, head),
            "memory": memory, "verification": verification, "provenance": provenance_record(source, proto)}
