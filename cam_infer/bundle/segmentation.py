"""Semantic segmenters: what their output is, where to cut them, and the verified bundle (task ``segmentation``).

A segmenter returns class scores per pixel: (N,C,H,W), or (N,H,W,C) from TensorFlow, as logits, a softmax
over the classes or one sigmoid per class (classes that may overlap), at the input size or lower and often
upsampled in the graph by a Resize. A graph that ends in an ArgMax (class ids per pixel) is read on the
scores before the ArgMax: the bundle's head returns those scores, float32 NCHW, and never class ids.

    split_segmenter("deeplab.onnx", out="bundles/deeplab", labels="voc.txt")

``--layer auto`` cuts at the input of the classifier (the last convolution before the upsampling), or at
the latest feature map before it that every path to the output crosses; a layer bypassed by a skip
connection gets the cut set around it (`segmentation.cut_set`): the layer and the encoder levels the decoder
reads; ``--layer a,b`` names a cut set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import CamInferError
from ..numerics import FLOAT16_TOLERANCE
from .skip_cut_set import skip_cut_set, split_at_cut_set
from .anatomy import (check_class_softmax, check_one_output, check_scores_size, quantization_of,
                      refuse_changed_probabilities, softmax_axes, softmax_behind, tensor_layouts, transpose_perm)
from .cut import BOUNDARY_FLOATS, extract
from .graph import INTEGER_TYPES, Graph, load_onnx, reads_float16_weights
from .layers import TargetLayer, find_target_layer, is_cut_point, resolve_cut, _target
from .split import normalisation_record, preprocessing_for, read_labels, recorded_labels, with_recorded
from .verify import _run, as_source_input, compare, random_images, runtime_message, session
from .write import manifest_for, write_onnx_bundle

SCORES = "class_scores"
# Ops between the class scores and the model output that keep what a score is.
PASS_THROUGH = {"Identity", "Cast", "QuantizeLinear", "DequantizeLinear", "Squeeze", "Unsqueeze"}
# Ops between the classifier convolution and the scores: the upsampling, a layout change, the activation.
TAIL = {"Resize", "Upsample", "Transpose", "Identity", "Cast", "QuantizeLinear", "DequantizeLinear", "Softmax",
        "Sigmoid"}


@dataclass(frozen=True)
class SegmentationOutput:
    """The class scores of a segmenter, as read from its graph."""

    tensor: str            # the scores: the model output, or the ArgMax's input
    source: str            # the model's own output
    kind: str              # "logits" | "softmax" | "sigmoid"
    layout: str            # "NCHW" | "NHWC"
    num_classes: int
    size: tuple[int, int]  # (H, W) of the scores
    argmax: bool           # the model ends in an ArgMax over the class axis

    @property
    def class_axis(self) -> int:
        return 1 if self.layout == "NCHW" else 3

    def record(self) -> dict:
        """The manifest's `output` fields of a segmenter."""
        return {"kind": self.kind, "layout": "NCHW", "model_layout": self.layout, "class_axis": 1,
                "model_class_axis": self.class_axis, "num_classes": self.num_classes,
                "shape": [self.num_classes, *self.size], "model_output": self.source, "scores": self.tensor,
                "ends_in_argmax": self.argmax}


def is_segmenter(model: onnx.ModelProto) -> bool:
    """Whether a model's declared output is per-pixel: (N,C,H,W)/(N,H,W,C) scores, or an ArgMax's class ids."""
    output = model.graph.output[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in output.type.tensor_type.shape.dim]
    if len(dims) == 4:
        return sum(d not in (1, None) for d in dims[1:]) >= 2          # not a classifier's (N,C,1,1)
    producer = {out: n for n in model.graph.node for out in n.output}
    name = output.name
    while name in producer and producer[name].op_type in PASS_THROUGH and producer[name].input:
        name = producer[name].input[0]                                 # an ArgMax's ids cast to float
    return len(dims) == 3 and name in producer and producer[name].op_type == "ArgMax"


def segmentation_output(graph: Graph) -> SegmentationOutput:
    """Read the class scores of a segmenter, or refuse in one line saying what the output is."""
    source = graph.scores_output.name
    name = source
    while name in graph.producer and graph.nodes[graph.producer[name]].op_type in PASS_THROUGH - {"QuantizeLinear",
                                                                                                  "DequantizeLinear"}:
        name = graph.nodes[graph.producer[name]].input[0]
    argmax = name in graph.producer and graph.nodes[graph.producer[name]].op_type == "ArgMax"
    axis = None
    if argmax:
        node = graph.nodes[graph.producer[name]]
        name = node.input[0]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    shape = graph.info(name).shape
    if shape is None or len(shape) != 4 or any(not isinstance(d, int) or d <= 0 for d in shape[1:]):
        shown = "unknown" if shape is None else "(N," + ",".join(str(d) for d in shape[1:]) + ")"
        raise CamInferError(f"the model output '{source}' is {shown}, not class scores per pixel (N,C,H,W) or "
                            "(N,H,W,C): cannot read it as a segmenter")
    layout = _layout(graph, name, shape, axis)
    classes = shape[1] if layout == "NCHW" else shape[3]
    size = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    check_scores_size(size, graph.input_spec.size, source)
    kind = _kind(graph, name, 1 if layout == "NCHW" else 3, source)
    if classes < 2 and kind != "sigmoid":
        raise CamInferError(f"the model output '{source}' has {classes} class channel: cannot read it as class scores")
    return SegmentationOutput(name, source, kind, layout, int(classes), size, argmax)


def _layout(graph: Graph, tensor: str, shape: tuple, argmax_axis: int | None) -> str:
    """NCHW or NHWC: the ArgMax's axis, else the layout the graph's ops give, else the one whose spatial size
    divides the input's (the other reading's would not)."""
    if argmax_axis is not None:
        axis = argmax_axis % 4
        if axis not in (1, 3):
            raise CamInferError(f"the model ends in an ArgMax over axis {argmax_axis} of a {shape} tensor, "
                                "not over its classes")
        return "NCHW" if axis == 1 else "NHWC"
    known = tensor_layouts(graph).get(tensor)
    if known:
        return known
    height, width = graph.input_spec.size
    fits = [layout for layout, (h, w) in (("NCHW", shape[2:]), ("NHWC", shape[1:3]))
            if height % h == 0 and width % w == 0 and height // h == width // w]
    if len(fits) != 1:
        raise CamInferError(f"cannot tell the class axis of the model output {tuple(shape)} (input {height}x{width}); "
                            "give the layout with --layout")
    return fits[0]


def _kind(graph: Graph, tensor: str, class_axis: int | None, source: str) -> str:
    """softmax, sigmoid or logits: the activation the scores pass through after the classifier, if any; a Softmax
    over another axis than the classes' (`class_axis` of `tensor`, followed back through Transposes) is refused."""
    name = tensor
    while name in graph.producer:
        node = graph.nodes[graph.producer[name]]
        if node.op_type == "Softmax":
            check_class_softmax(softmax_axes(graph, node), graph.info(node.input[0]).shape, source, class_axis)
            return "softmax"
        if node.op_type == "Transpose" and class_axis is not None:
            perm = transpose_perm(graph, node) or []
            class_axis = perm[class_axis] if class_axis < len(perm) else None
        if node.op_type in ("Sigmoid", "QLinearSigmoid"):
            return "sigmoid"
        if node.op_type not in TAIL or not node.input:
            if node.op_type != "Log" and softmax_behind(graph, node):
                refuse_changed_probabilities(source, "Softmax", node.op_type)
            return "logits"
        name = node.input[0]
    return "logits"


def scores_model(model: onnx.ModelProto, graph: Graph, output: SegmentationOutput) -> onnx.ModelProto:
    """The model up to its class scores, as one float32 NCHW output named `SCORES` (an integer tensor
    dequantized, a float16 one cast, an NHWC one transposed); an ArgMax after them is dropped."""
    scored = onnx.ModelProto()
    scored.CopyFrom(model)
    g = scored.graph
    name = output.tensor
    if graph.info(name).elem_type in INTEGER_TYPES:
        quant = quantization_of(graph, name)
        if quant is None:
            raise CamInferError(f"the class scores '{name}' are integers of unknown scale: cannot read them")
        inputs = [name, quant.scale] + ([quant.zero_point] if quant.zero_point else [])
        g.node.append(helper.make_node("DequantizeLinear", inputs, [f"{name}__float"], name=f"{name}__dequantize"))
        name = f"{name}__float"
    if output.layout == "NHWC":
        g.node.append(helper.make_node("Transpose", [name], [f"{name}__nchw"], perm=[0, 3, 1, 2],
                                       name=f"{name}__to_nchw"))
        name = f"{name}__nchw"
    float16 = graph.info(output.tensor).elem_type in BOUNDARY_FLOATS
    g.node.append(helper.make_node("Cast", [name], [SCORES], name="class_scores", to=onnx.TensorProto.FLOAT)
                  if float16 else helper.make_node("Identity", [name], [SCORES], name="class_scores"))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(SCORES, onnx.TensorProto.FLOAT,
                                                  ["N", output.num_classes, *output.size]))
    del g.value_info[:]
    return scored


def classifier_input(graph: Graph) -> str | None:
    """The input of the last convolution before the scores, through the tail (upsampling, activation)."""
    name = graph.scores_output.name
    while name in graph.producer:
        node = graph.nodes[graph.producer[name]]
        if node.op_type in ("Conv", "QLinearConv", "ConvInteger"):
            return node.input[0]
        if node.op_type not in TAIL | {"Identity"} or not node.input:
            return None
        name = node.input[0]
    return None


def auto_cut(graph: Graph) -> TargetLayer:
    """The classifier's input when every path to the output crosses it, else the latest feature map before it
    that does."""
    start = classifier_input(graph)
    if start is None:
        raise CamInferError("no convolution makes the class scores of this model (the tail after it must be an "
                            "upsampling and an activation); name a layer with --layer")
    layouts = tensor_layouts(graph)
    before = graph.ancestors(start) | {start}
    for node in reversed(graph.nodes):
        for tensor in node.output:
            if tensor in before and graph.info(tensor).rank == 4 and tensor in layouts and \
                    is_cut_point(graph, resolve_cut(graph, tensor)[0]):
                return _target(graph, tensor, "auto", "auto", None)
    raise CamInferError("no feature map of this model is crossed by every path to its output; name a layer with "
                        "--layer")


def without_crop(preprocessing):
    """A segmenter's preprocessing: resized to the input without a crop unless told otherwise (every pixel of the
    image gets a class, and regions given in the image's pixels map to the scores by a scale)."""
    return preprocessing if hasattr(preprocessing, "input_size") else {"crop": "none", **(preprocessing or {})}


def split_segmenter(model: "str | os.PathLike | onnx.ModelProto", layer: str = "auto",
                    out: "str | os.PathLike | None" = None, *, input_size: tuple[int, int] | None = None,
                    preprocessing=None, labels: "list[str] | str | None" = None, overwrite: bool = False,
                    layout: str | None = None, provenance: dict | None = None):
    """Split an ONNX segmenter at `layer` (``auto``: `auto_cut`) into a verified bundle at `out`: ``features``
    returns the cut (N,K,h,w), ``head`` the class scores (N,C,H,W) float32 (before any ArgMax)."""
    if out is None:
        raise CamInferError("give an output folder for the bundle (--out)")
    source = Path(model) if isinstance(model, (str, os.PathLike)) else None
    proto = load_onnx(source) if source else model
    given = preprocessing
    preprocessing = with_recorded(proto, preprocessing)
    check_one_output([o.name for o in proto.graph.output])
    output = segmentation_output(Graph.from_model(proto, input_size, layout))
    graph = Graph.from_model(scores_model(proto, Graph.from_model(proto, input_size, layout), output), input_size,
                             layout)
    members = None if layer == "auto" else skip_cut_set(graph, layer)
    target = auto_cut(graph) if layer == "auto" else find_target_layer(graph, layer) if members is None else \
        _target(graph, members[0], layer, "cut set", None)
    prep = preprocessing_for(graph.input_spec, without_crop(preprocessing), input_size)
    if members is None:
        features, head, batch_mode, verification = _split_verified(graph, target, prep)
    else:
        features, head, cut_fields = split_at_cut_set(graph, members, layer)
        batch_mode, verification = _verified_batch(graph, features, head, prep)
    names = read_labels(labels, output.num_classes) if labels is not None else \
        recorded_labels(proto, output.num_classes)
    manifest = manifest_for(graph, target, prep, features, head, batch_mode, verification, output.num_classes, names,
                            source, provenance or {}, normalisation_record(proto, given, graph.input_spec.dtype))
    if members is not None:
        manifest.update(cut_fields)
    manifest["task"] = "segmentation"
    manifest["output"] = {**manifest["output"], **output.record(), "name": SCORES}
    return write_onnx_bundle(Path(out), features, head, manifest, overwrite)


def _split_verified(graph: Graph, target: TargetLayer, prep):
    """A dynamic batch first; the source's fixed batch when that does not reproduce the model."""
    failure = None
    for batch_mode in ["dynamic"] if graph.fixed_batch is None else ["dynamic", "fixed"]:
        features, head = extract(graph, target, batch_mode)
        try:
            return features, head, batch_mode, verify_segmenter(graph, features, head, prep, batch_mode)
        except CamInferError as exc:
            failure = exc
    raise failure


def _verified_batch(graph: Graph, features, head, prep) -> tuple[str, dict]:
    """A dynamic batch first; the source's fixed batch when that does not reproduce the model."""
    failure = None
    for batch_mode in ["dynamic"] if graph.fixed_batch is None else ["dynamic", "fixed"]:
        try:
            return batch_mode, verify_segmenter(graph, features, head, prep, batch_mode)
        except CamInferError as exc:
            failure = exc
    raise failure


def verify_segmenter(graph: Graph, features, head, prep, batch_mode: str = "dynamic") -> dict:
    """head(features(x)) against the model's own class scores on random images, batch 1 and 3 (ONNX Runtime,
    float32; one quantization step of the scores allowed for an integer model; `split_tolerance`)."""
    try:
        full, feat, hd = session(graph.model), session(features), session(head)
    except Exception as exc:
        raise CamInferError(f"ONNX Runtime cannot run this segmenter or its split ({runtime_message(exc)})") from None
    step = _score_step(graph)
    rtol = split_tolerance(graph)
    worst = 0.0
    for n in (1, 3):
        x = random_images(prep, n, seed=n)
        expected = _run(full, as_source_input(x, graph.input_spec), graph.fixed_batch).reshape(n, -1)
        kept = graph.fixed_batch if batch_mode == "fixed" else None
        try:
            diff = compare(_run(hd, _run(feat, x, kept), kept), expected, False, rtol, step, n)
        except Exception as exc:
            raise CamInferError(f"splitting at this layer does not reproduce the model: {exc}") from None
        worst = max(worst, diff)
    import onnxruntime as ort
    return {"passed": True, "batch_sizes": [1, 3], "max_abs_diff": worst, "relative_tolerance": rtol,
            "output_step": step, "compared": "the class scores", "runtime": f"onnxruntime {ort.__version__}",
            "inputs": "random uint8 images through the bundle preprocessing"}


def split_tolerance(graph: Graph) -> float:
    """How far head(features(x)) may be from model(x), relative to max(1, |scores|): float32 rounding (1e-4), or
    `FLOAT16_TOLERANCE` (2⁻⁷) for a model that computes in float16 (a float16 weight or image). ONNX Runtime's CPU
    provider runs most float16 ops in float32 between casts it inserts and drops the casts that meet, so a
    boundary the split adds can keep or lose one float16 rounding (2⁻¹¹) the whole model has: a float16 image's
    Cast at the features' float32 input is dropped, and the convolutions read the image unrounded. That rounding
    grows through the layers after it: measured 2.7e-4 (our segmenter, scores up to 4) and 1.8e-3 (the PAN's
    sigmoid scores) with float16 inputs, 0 with float32 ones."""
    computes_in_float16 = graph.input_spec.dtype == "float16" or reads_float16_weights(graph.model.graph)
    return FLOAT16_TOLERANCE if computes_in_float16 else 1e-4


def _score_step(graph: Graph) -> float:
    node = graph.nodes[graph.producer[SCORES]]
    while node.op_type in ("Identity", "Transpose") and node.input[0] in graph.producer:
        node = graph.nodes[graph.producer[node.input[0]]]
    if node.op_type == "DequantizeLinear" and node.input[1] in graph.initializers:
        return float(np.max(numpy_helper.to_array(graph.initializers[node.input[1]])))
    return 0.0
