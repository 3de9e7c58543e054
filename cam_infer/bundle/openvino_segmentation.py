"""Split a segmenter that OpenVINO reads (a ``.tflite`` such as DeepLabV3's, an IR) into an IR bundle of task
``segmentation``: ``features`` returns the cut (N,K,h,w), ``head`` the class scores (N,C,H,W) float32.

A graph ending in an ArgMax (OpenVINO's TopK with k = 1 over the class axis, then a Squeeze to class ids) is
cut before it: the head returns the (dequantized) scores the ArgMax reads, transposed to NCHW. ``auto`` cuts
at the input of the classifier convolution (DeepLab: ``concat_projection/Relu``, (N,256,33,33)); the split is
verified against the model's own scores on OpenVINO, within one quantization step of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CamInferError
from ..numerics import FLOAT16_TOLERANCE
from .anatomy import check_class_softmax, check_one_output, check_scores_size, refuse_changed_probabilities
from .manifest import FORMAT, FORMAT_VERSION
from .openvino_cut_set import PACKED, OpenVinoGraph, level_records, openvino_cut_set, packed_openvino_graphs
from .openvino_split import computes_in_float16, fake_quantize_step
from .openvino_split import (_BatchFails, _compiled, _constant, _cut, _input_spec, _layouts, _ops, _ov_version,
                             _Output, _reaches_parameter, _read, softmax_of, split_openvino, split_outputs,
                             write_ir_bundle)
from .verify import as_source_input, compare, openvino_message, random_images

IDS = {"Squeeze", "Convert", "Reshape", "Unsqueeze"}
TAIL = {"FakeQuantize", "Interpolate", "Transpose", "Convert", "Add", "Multiply", "Subtract", "Reshape", "Sigmoid",
        "Softmax", "SoftMax"}


def scores_of(model, spec=None):
    """(the scores' op output, their class axis, kind, ends in an ArgMax) of a segmenter, or a one-line refusal.
    The class axis: the ArgMax's, else the layout the ops give (`spec`: the image input, to follow it), else the
    one reading whose grid is the input's."""
    value = model.get_results()[0].input_value(0)
    node = value.get_node()
    while node.get_type_name() in IDS:
        value = node.input_value(0)
        node = value.get_node()
    argmax = node.get_type_name() in ("TopK", "ArgMax")
    axis = None
    if argmax:
        axis = int(node.get_attributes().get("axis", -1))
        value = node.input_value(0)
    shape = value.get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != 4 or not all(shape[i].is_static for i in (1, 2, 3)):
        raise CamInferError(f"the model output is {shape}, not class scores per pixel (N,C,H,W) or (N,H,W,C) of a "
                            "fixed size: cannot read it as a segmenter")
    dims = [d.get_length() if d.is_static else -1 for d in shape]         # the batch may be dynamic
    if axis is None and spec is not None:
        axis = _class_axis(model, spec, value, dims)
    if axis is None:
        axis = 1 if dims[1] < dims[3] else 3
    axis %= 4
    if axis not in (1, 3):
        raise CamInferError(f"the model's ArgMax is over axis {axis} of {dims}, not over its classes")
    return value, axis, _kind(value, axis), argmax


def _class_axis(model, spec, value, dims) -> int:
    """1 or 3: from the layout the graph's ops give the scores, else from the one reading whose grid is the
    input's; refused where both fit."""
    known = _layouts(model, spec).get(_Output(value.get_node().get_friendly_name(), value.get_index()))
    if known:
        return 1 if known == "NCHW" else 3
    fits = [axis for axis, grid in ((1, dims[2:]), (3, dims[1:3])) if tuple(grid) == tuple(spec.size)]
    if len(fits) != 1:
        raise CamInferError(f"cannot tell the class axis of the model output {dims} (input {spec.size[0]}x"
                            f"{spec.size[1]}): its ops do not say, and both NCHW and NHWC readings fit")
    return fits[0]


def _kind(value, class_axis: int | None) -> str:
    """softmax, sigmoid or logits: the activation the scores pass through after the classifier, if any. A Softmax
    over another axis than the classes' (followed back through Transposes), or one whose probabilities are
    scaled or shifted after it, is refused."""
    node, changed = value.get_node(), []
    while node.get_type_name() in TAIL and node.get_input_size():
        kind = node.get_type_name()
        if kind in ("Softmax", "SoftMax", "Sigmoid"):
            if changed:
                refuse_changed_probabilities(value.get_node().get_friendly_name(), kind, changed[0])
            if kind != "Sigmoid":
                check_class_softmax(*softmax_of(node), "the class scores", class_axis)
            return "sigmoid" if kind == "Sigmoid" else "softmax"
        if kind in ("Add", "Multiply", "Subtract") and not _dequantizes(node):
            changed.append(kind)
        if kind == "Transpose" and class_axis is not None:
            perm = _constant(node.input_value(1))
            order = [] if perm is None else [int(v) for v in np.ravel(perm)]
            class_axis = order[class_axis] if class_axis < len(order) else None
        node = node.input_value(0).get_node()
    return "logits"


def _dequantizes(node) -> bool:
    """Whether an Add/Multiply/Subtract is part of a dequantization: its data input comes from a Convert of an
    integer tensor (through the other steps of the same dequantization)."""
    while node.get_type_name() in ("Multiply", "Subtract", "Add"):
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Convert" and node.input_value(0).get_element_type().is_integral()


def split_openvino_file(path, layer: str = "auto", out=None, **options):
    """A file OpenVINO reads, split as what it is: a segmenter (per-pixel scores or class ids) or a classifier
    (`split_openvino`); read once, since OpenVINO names a TFLite file's ops anew at each reading."""
    model = _read(Path(path))
    if is_per_pixel(model):
        options.pop("input_size", None)                # a segmenter OpenVINO reads keeps its own input size
        return split_openvino_segmenter(path, layer, out, model=model, **options)
    return split_openvino(path, layer, out, model=model, **options)


def is_per_pixel(model) -> bool:
    """Whether an ov.Model ends in per-pixel class ids (an ArgMax) or per-pixel scores."""
    try:
        scores_of(model)
    except CamInferError:
        return False
    return True


def auto_cut(model, spec, scores) -> _Output:
    """The input of the convolution that makes the scores, when every path to them crosses it."""
    node = scores.get_node()
    while node.get_type_name() not in ("Convolution", "GroupConvolution"):
        if node.get_type_name() not in TAIL or not node.get_input_size():
            raise CamInferError("no convolution makes the class scores of this model; name a layer with --layer")
        node = node.input_value(0).get_node()
    source = node.input_value(0)
    while source.get_node().get_type_name() in ("FakeQuantize", "Convert", "Transpose"):
        source = source.get_node().input_value(0)
    name = source.get_node().get_friendly_name()
    if _reaches_parameter(model.get_results()[0], name, spec.name):
        raise CamInferError(f"the classifier's input '{name}' is not a cut point; name a layer with --layer")
    return _Output(name, source.get_index())


def split_openvino_segmenter(path, layer: str = "auto", out=None, *, preprocessing=None, labels=None,
                             overwrite: bool = False, layout: str | None = None, model=None):
    """Split a segmenter OpenVINO reads at `layer` (``auto`` or an op's friendly name) into a verified IR bundle
    (`model`: the file already read)."""
    import openvino as ov
    import openvino.opset13 as ops

    from .segmentation import without_crop
    from .split import normalisation_record, preprocessing_for, read_labels, recorded_labels, with_recorded

    if out is None:
        raise CamInferError("give an output folder for the bundle (--out)")
    path = Path(path)
    model = _read(path) if model is None else model
    given = preprocessing
    preprocessing = with_recorded(model, preprocessing)           # what the IR records (rt_info), under what is given
    check_one_output([r.get_friendly_name() for r in model.get_results()])
    spec = _input_spec(model, layout)
    scores, axis, kind, argmax = scores_of(model, spec)
    dims = [d.get_length() if d.is_static else -1 for d in scores.get_partial_shape()]
    check_scores_size(dims[2:] if axis == 1 else dims[1:3], spec.size, model.get_results()[0].get_friendly_name())
    prep = preprocessing_for(spec, without_crop(preprocessing), None)
    op_map, layouts = _ops(model), _layouts(model, spec)
    graph = OpenVinoGraph(model, spec)
    members = None if layer == "auto" else openvino_cut_set(graph, layer, scores)
    target = auto_cut(model, spec, scores) if layer == "auto" else graph.lookup(layer) if members is None else None
    levels = None if members is None else level_records(graph, members, prep.input_size[0])
    reference = ov.Model([ops.result(scores)], model.get_parameters(), "scores")
    for batch_mode in ("dynamic", "fixed"):
        batch = -1 if batch_mode == "dynamic" else 1
        features, head = _cut(model, spec, target, scores, prep, batch) if members is None else \
            packed_openvino_graphs(graph, members, levels, scores, prep, batch)
        if axis == 3:
            end = head.get_results()[0].input_value(0)
            head = ov.Model([ops.result(ops.transpose(end, ops.constant(np.array([0, 3, 1, 2], np.int64))))],
                            head.get_parameters(), "head")
        try:
            verification = _verify(reference, spec, features, head, prep, batch_mode, nhwc=axis == 3)
            break
        except _BatchFails:
            continue
    dims = [d.get_length() if d.is_static else -1 for d in scores.get_partial_shape()]
    classes, size = (dims[1], dims[2:]) if axis == 1 else (dims[3], dims[1:3])
    names = read_labels(labels, classes) if labels is not None else recorded_labels(model, classes)
    if members is None:
        k_h_w = [d.get_length() for d in list(op_map[target.op].get_output_partial_shape(target.index))[1:]]
        if layouts.get(target) == "NHWC":
            k_h_w = [k_h_w[2], k_h_w[0], k_h_w[1]]
        target_layer = {"requested": layer, "matched_by": "auto" if layer == "auto" else "node", "module": None,
                        "tensor": target.op, "layout": layouts.get(target, "NCHW")}
        activation = {"name": "activation", "shape": k_h_w, "dtype": "float32", "quantization": None}
    else:
        target_layer = {"requested": layer, "matched_by": "cut set", "module": None,
                        "tensor": ",".join(lv["name"] for lv in levels), "layout": "NCHW"}
        activation = {"name": PACKED, "shape": [sum(int(np.prod(lv["shape"])) for lv in levels)], "dtype": "float32",
                      "quantization": None}
    model_layout = "NCHW" if axis == 1 else "NHWC"
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "task": "segmentation",
        "input": {"name": "image", "shape": [None, spec.channels, *prep.input_size], "layout": "NCHW",
                  "dtype": "float32", "model_dtype": spec.dtype, "model_layout": spec.layout},
        "preprocessing": prep.to_dict(),
        "normalisation": normalisation_record(model, given, spec.dtype),
        "target_layer": target_layer,
        "activation": activation,
        "output": {"name": "scores", "kind": kind, "num_classes": int(classes), "layout": "NCHW",
                   "model_layout": model_layout, "class_axis": 1, "model_class_axis": axis,
                   "shape": [int(classes), *map(int, size)], "model_output": model.get_results()[0].get_friendly_name(),
                   "scores": scores.get_node().get_friendly_name(), "ends_in_argmax": argmax, "left_out": [],
                   "model_output_step": verification["output_step"]},
        "labels": names, "batch": batch_mode, **({"fixed_batch": 1} if batch_mode == "fixed" else {}),
        "verification": verification,
    }
    if members is not None:
        manifest["cut"] = levels
    return write_ir_bundle(out, path, manifest, features, head, overwrite)


def _verify(reference, spec, features, head, prep, batch_mode: str, nhwc: bool) -> dict:
    """head(features(x)) against the model's scores (`nhwc`: made NCHW) on OpenVINO, batch 1 and 3, within one
    step of them (float16's tolerance for an IR that computes in float16: `computes_in_float16`)."""
    try:
        full = _compiled(reference)
        feat, hd = _compiled(features), _compiled(head)
    except Exception as exc:
        if batch_mode == "dynamic":
            raise _BatchFails() from None
        raise CamInferError(f"OpenVINO cannot compile this model or its split ({openvino_message(exc)})") from None
    scores = reference.get_results()[0].input_value(0)
    step = fake_quantize_step(scores)
    rtol = FLOAT16_TOLERANCE if computes_in_float16(reference) else 1e-4
    worst = 0.0
    for n in (1, 3):
        x = random_images(prep, n, seed=n)
        raw = np.concatenate([next(iter(full(as_source_input(x[i:i + 1], spec)).values())) for i in range(n)])
        expected = (raw.transpose(0, 3, 1, 2) if nhwc else raw).astype(np.float32).reshape(n, -1)
        got = split_outputs(feat, hd, x, batch_mode)
        try:
            worst = max(worst, compare(got, expected, False, rtol, step, n))
        except Exception as exc:
            raise CamInferError(f"splitting does not reproduce the model: {exc}") from None
    return {"passed": True, "batch_sizes": [1, 3], "max_abs_diff": worst, "relative_tolerance": rtol,
            "output_step": step, "compared": "the class scores", "runtime": f"openvino {_ov_version()} CPU (f32)",
            "inputs": "random uint8 images through the bundle preprocessing"}
