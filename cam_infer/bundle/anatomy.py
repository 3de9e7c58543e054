"""What a deployed model is, read from its graph (`graph.py` reads the image input): where its spatial
reduction is; which tensors are NCHW feature maps; how a tensor is quantized; what its output is.

Deployed files are rarely the float NCHW graphs a PyTorch export gives: TensorFlow-born graphs take
NHWC uint8 images and keep NHWC tensors between Transposes, int8 graphs carry activations as uint8
(QOperator: QLinearConv, ...) or wrap float tensors in QuantizeLinear/DequantizeLinear pairs (QDQ),
and TFLite-born classifiers end in Softmax → Quantize → Dequantize. Everything here only reads the
graph; `split.py` uses it to cut.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CamInferError
from .graph import INTEGER_TYPES, Graph

# Ops whose rank-4 output is NCHW by the ONNX definition.
NCHW_PRODUCERS = {"Conv", "QLinearConv", "ConvInteger", "ConvTranspose", "BatchNormalization", "MaxPool",
                  "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "QLinearAveragePool",
                  "QLinearGlobalAveragePool", "InstanceNormalization", "LRN", "DepthToSpace", "SpaceToDepth"}
# Ops that keep the layout of their first input.
LAYOUT_KEEPING = {"Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
                  "Selu", "Mish", "Softplus", "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "QuantizeLinear",
                  "DequantizeLinear", "QLinearAdd", "QLinearMul", "QLinearLeakyRelu", "QLinearSigmoid",
                  "Identity", "Dropout", "Cast", "Pad", "Resize", "Upsample"}
# Ops a trailing score chain may pass through between the Softmax and the output.
SCORE_PASS = {"QuantizeLinear", "DequantizeLinear", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
              "Cast", "Dropout"}
# Ops after the class scores that pick, sort or regroup the classes: what comes out is not one score per class.
SELECTING = {"TopK", "ArgMax", "ArgMin", "Gather", "GatherElements", "GatherND", "Slice", "Split", "NonZero",
             "Compress", "ReduceMax", "ReduceMin", "Concat"}
# Ops that end a multi-label model: independent per-class probabilities, not one softmax over the classes.
INDEPENDENT = {"Sigmoid", "HardSigmoid", "QLinearSigmoid"}
# Ops that change values: after a Softmax, the output is no longer its probabilities (a Log is: log-probabilities
# are logits).
VALUE_CHANGING = {"Mul", "Div", "Add", "Sub", "Pow", "Clip", "Round", "Floor", "Ceil", "Neg", "Abs", "Sqrt", "Exp",
                  "Max", "Min", "QLinearMul", "QLinearAdd"}
# Where the scale and zero point of a QOperator op's output are among its inputs.
QOPERATOR_OUTPUT_QPARAMS = {"QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QLinearAdd": (6, 7), "QLinearMul": (6, 7),
                            "QuantizeLinear": (1, 2), "QLinearGlobalAveragePool": (3, 4),
                            "QLinearAveragePool": (3, 4), "QLinearSigmoid": (3, 4), "QLinearLeakyRelu": (3, 4),
                            "QLinearConcat": (0, 1)}
# Integer ops that pass their input's quantization through unchanged.
QUANT_KEEPING = {"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Slice"}


@dataclass(frozen=True)
class Quantization:
    """How an integer activation maps to real values: x = (q − zero_point) · scale."""

    tensor: str            # the integer tensor
    scale: str             # constant names
    zero_point: str | None
    axis: int | None       # per-channel axis, None for per-tensor
    elem_type: int


@dataclass(frozen=True)
class ScoreOutput:
    """The tensor the head returns and what it holds."""

    tensor: str            # logits or probabilities, float
    kind: str              # "logits" | "probabilities"
    source: str            # the model's own output
    trimmed: tuple[str, ...]   # ops after `tensor` left out of the head (a quantized Softmax)
    step: float            # quantization step of the model's output (0 for float outputs)
    dequantize: tuple[float, int] | None = None   # (scale, zero point) of an integer model output
    tensor_step: float = 0.0   # quantization step of `tensor` itself (quantized logits before a left-out Softmax)

    def model_scores(self, raw):
        """The model's own output as real values (an integer output dequantized)."""
        import numpy as np
        raw = np.asarray(raw)
        if self.dequantize is None:
            return raw.astype(np.float32)
        scale, zero = self.dequantize
        return ((raw.astype(np.float32) - zero) * scale).astype(np.float32)


def tensor_layouts(graph: Graph) -> dict[str, str]:
    """Layout ("NCHW" or "NHWC") of every rank-4 activation that can be known from the ops that made it."""
    spec = graph.input_spec
    layouts = {spec.name: spec.layout}
    for node in graph.nodes:
        if not node.output or not node.output[0]:
            continue
        out = node.output[0]
        if graph.info(out).rank != 4:
            continue
        first = layouts.get(node.input[0]) if node.input else None
        if node.op_type in NCHW_PRODUCERS:
            layouts[out] = "NCHW"
        elif node.op_type == "Transpose" and first:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if perm == [0, 2, 3, 1] and first == "NCHW":
                layouts[out] = "NHWC"
            elif perm == [0, 3, 1, 2] and first == "NHWC":
                layouts[out] = "NCHW"
        elif node.op_type in LAYOUT_KEEPING and first:
            layouts[out] = first
        elif node.op_type in ("Concat", "QLinearConcat"):
            known = {layouts.get(i) for i in node.input if graph.info(i).rank == 4}
            if len(known) == 1 and None not in known:
                layouts[out] = known.pop()
    return layouts


def spatial_size(graph: Graph, tensor: str, layout: str) -> int:
    shape = graph.info(tensor).shape
    if shape is None or len(shape) != 4:
        return 0
    h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    return (h or 0) * (w or 0)


def last_spatial_reduction(graph: Graph, layouts: dict[str, str]) -> int | None:
    """The node, in graph order, after which no feature map is left: a rank-4 map with spatial size
    above 1×1 goes in, a map of 1×1 or a lower rank comes out (global pooling, ReduceMean, Flatten,
    AveragePool to 1×1, a Reshape to (N,C)). Tensors computed after it are never feature maps."""
    last = None
    for idx, node in enumerate(graph.nodes):
        if not node.input or not node.output or node.op_type in ("Shape", "Size"):
            continue
        src = node.input[0]
        if src not in graph.input_dependent or src not in layouts:
            continue
        if spatial_size(graph, src, layouts[src]) <= 1:
            continue
        out = node.output[0]
        out_info = graph.info(out)
        if out_info.rank is not None and (out_info.rank < 4 or spatial_size(graph, out, layouts.get(out, layouts[src])) == 1):
            last = idx
    return last


def feature_region(graph: Graph, layouts: dict[str, str]) -> set[str] | None:
    """Tensors that may be feature maps: those computed before the last spatial reduction (None: the graph
    has no such reduction, every tensor may be)."""
    idx = last_spatial_reduction(graph, layouts)
    return None if idx is None else graph.ancestors(graph.nodes[idx].input[0])


def quantization_of(graph: Graph, tensor: str) -> Quantization | None:
    """Scale and zero point of an integer activation: from a DequantizeLinear that reads it, else from
    the QOperator op (or QuantizeLinear) that made it, looking through ops that keep quantization."""
    info = graph.info(tensor)
    if info.elem_type not in INTEGER_TYPES:
        return None
    for reader in graph.consumers.get(tensor, []):
        node = graph.nodes[reader]
        if node.op_type == "DequantizeLinear" and node.input[0] == tensor:
            return _quantization(graph, tensor, node, 1, 2, info.elem_type)
    name = tensor
    while name in graph.producer:
        node = graph.nodes[graph.producer[name]]
        if node.op_type in QOPERATOR_OUTPUT_QPARAMS:
            s, z = QOPERATOR_OUTPUT_QPARAMS[node.op_type]
            return _quantization(graph, tensor, node, s, z, info.elem_type)
        if node.op_type not in QUANT_KEEPING or not node.input:
            return None
        name = node.input[0]
    return None


def _quantization(graph: Graph, tensor: str, node, s: int, z: int, elem_type: int) -> Quantization | None:
    scale = node.input[s] if len(node.input) > s else None
    zero = node.input[z] if len(node.input) > z and node.input[z] else None
    if scale is None or scale in graph.input_dependent or (zero and zero in graph.input_dependent):
        return None
    axis = None
    if node.op_type in ("DequantizeLinear", "QuantizeLinear"):
        scale_info = graph.info(scale)
        if scale_info.shape and len(scale_info.shape) == 1 and scale_info.shape[0] not in (None, 1):
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    elif graph.info(scale).shape not in ((), (1,), None):
        return None                     # a per-channel QOperator output: not something we re-quantize
    return Quantization(tensor, scale, zero, axis, elem_type)


def dequantized_source(graph: Graph, tensor: str) -> str | None:
    """For the float output of a DequantizeLinear of an activation (QDQ graphs): the integer tensor."""
    idx = graph.producer.get(tensor)
    if idx is None:
        return None
    node = graph.nodes[idx]
    if node.op_type == "DequantizeLinear" and node.input[0] in graph.input_dependent:
        return node.input[0]
    return None


def score_output(graph: Graph) -> ScoreOutput:
    """The head's output. A Softmax followed by quantization (TFLite-born graphs: probabilities in 1/256
    steps) is left out of the head, which returns the float logits before it: methods then score on the
    logits, and the reported probability is their softmax. A plain float Softmax stays ('probabilities')."""
    source = graph.scores_output.name
    name, passed = source, []
    step = output_step(graph)
    dequantize = _output_dequantization(graph) if graph.info(source).elem_type in INTEGER_TYPES else None
    while name in graph.producer:
        node = graph.nodes[graph.producer[name]]
        if node.op_type == "QLinearSoftmax" and graph.info(source).elem_type not in INTEGER_TYPES:
            return ScoreOutput(source, "probabilities", source, (), step)   # ONNX Runtime's int8 Softmax, dequantized
        if node.op_type == "Softmax":
            quantized = any(op in ("QuantizeLinear", "DequantizeLinear") for op in passed)
            if quantized or graph.info(source).elem_type in INTEGER_TYPES:
                return ScoreOutput(node.input[0], "logits", source, tuple(reversed(passed + ["Softmax"])), step,
                                   dequantize, _dequantized_step(graph, node.input[0]))
            return ScoreOutput(source, "probabilities", source, (), step)
        if node.op_type not in SCORE_PASS or not node.input:
            break
        passed.append(node.op_type)
        name = node.input[0]
    if graph.info(source).elem_type in INTEGER_TYPES:
        raise CamInferError(f"the model output '{source}' is {INTEGER_TYPES[graph.info(source).elem_type]} "
                            "and no float scores were found before it")
    return ScoreOutput(source, "logits", source, (), step)


def check_class_scores(graph: Graph) -> None:
    """Refuse a classifier whose output is not one score per class: a Softmax over another axis, an op after the
    scores that selects or sorts classes, a multi-label Sigmoid, probabilities scaled after their Softmax."""
    source = graph.scores_output.name
    name = source
    while name in graph.producer:
        node = graph.nodes[graph.producer[name]]
        if node.op_type in ("Softmax", "QLinearSoftmax"):
            check_class_softmax(softmax_axes(graph, node), graph.info(node.input[0]).shape, source)
            return
        if node.op_type not in SCORE_PASS or not node.input:
            moves_batch = node.op_type == "Transpose" and (transpose_perm(graph, node) or [0])[0] != 0
            check_score_op(node.op_type, source, softmax_behind(graph, node), moves_batch)
            return
        name = node.input[0]


def check_scores_size(size, input_size, output: str) -> None:
    """Refuse per-pixel scores at another size than the input's: a segmenter's regions and maps are read on its
    input's pixels (a lower resolution is expected upsampled in the graph)."""
    if tuple(size) != tuple(input_size):
        raise CamInferError(f"the model output '{output}' holds scores on a {size[0]}x{size[1]} grid, and its input is "
                            f"{input_size[0]}x{input_size[1]}: cam-infer reads a segmenter's scores at its input's "
                            "size (upsampled in the graph)")


def check_one_output(names: list[str]) -> None:
    """Refuse a model with several outputs: which one holds the scores cannot be read from the graph."""
    if len(names) > 1:
        shown = ", ".join(f"'{n}'" for n in names)
        raise CamInferError(f"the model has {len(names)} outputs ({shown}): cam-infer explains a model whose one "
                            "output is its scores; export it with that output alone")


def check_score_op(op: str, output: str, after_softmax: bool = False, moves_batch: bool = False) -> None:
    """Refuse an op between the class scores and the model's output that makes the output something other than
    one score per class (ONNX op names; `openvino_split` maps its own)."""
    if op in SELECTING:
        raise CamInferError(f"the model output '{output}' comes out of a {op}, which selects, sorts or regroups the "
                            "classes: cam-infer explains one score per class; export the model without it")
    if op in INDEPENDENT:
        raise CamInferError(f"the model output '{output}' ends in a {op}: independent per-class probabilities (a "
                            "multi-label model), which cam-infer's classifier methods do not read; export the "
                            "logits before it")
    if moves_batch:
        raise CamInferError(f"the model output '{output}' comes out of a Transpose that moves the batch axis: "
                            "cam-infer reads class scores as (N,C)")
    if after_softmax and op != "Log":
        refuse_changed_probabilities(output, "Softmax", op)


def refuse_changed_probabilities(output: str, activation: str, op: str) -> None:
    """Probabilities changed after their Softmax or Sigmoid (a percentage's Mul): neither probabilities nor
    logits."""
    raise CamInferError(f"the model output '{output}' is its {activation}'s probabilities changed by a {op}: "
                        "cam-infer reads probabilities or logits; export the model without it")


def softmax_axes(graph: Graph, node) -> list[int] | None:
    """The axes an ONNX Softmax normalises over, made non-negative: its axis; before opset 13, every axis from it
    on (flattened into one). A QLinearSoftmax follows the opset its ``opset`` attribute names. None where its
    input's rank is unknown."""
    rank = graph.info(node.input[0]).rank
    opset = next((o.version for o in graph.model.opset_import if o.domain in ("", "ai.onnx")), 13)
    opset = next((a.i for a in node.attribute if a.name == "opset"), opset)
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
    if rank is None:
        return None
    return [axis % rank] if opset >= 13 else list(range(axis % rank, rank))


def check_class_softmax(axes: list[int] | None, shape, output: str, class_axis: int | None = None) -> None:
    """Refuse a Softmax that is not over the classes alone: of the `axes` it normalises over, the classes' must be
    the one longer than 1. `shape`: its input's; `class_axis`: where the classes are (None: the one axis after
    the batch longer than 1). Unknown ranks are let through."""
    if axes is None or shape is None:
        return
    if class_axis is None:
        long = [i for i, d in enumerate(shape) if i > 0 and d != 1]
        if len(long) != 1:
            return
        class_axis = long[0]
    if [a for a in axes if a == class_axis or shape[a] != 1] != [class_axis]:
        over = f"axis {axes[0]}" if len(axes) == 1 else f"axes {', '.join(map(str, axes))} (flattened: opset < 13)"
        raise CamInferError(f"the model output '{output}' comes out of a Softmax over {over}, not over its classes "
                            f"(axis {class_axis}) alone: not class probabilities")


def transpose_perm(graph: Graph, node) -> list[int] | None:
    """A Transpose's perm (without one: the axes reversed); None where that needs a rank that is unknown."""
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
    rank = graph.info(node.input[0]).rank
    return perm if perm is not None else None if rank is None else list(reversed(range(rank)))


def softmax_behind(graph: Graph, node) -> bool:
    """Whether a Softmax makes `node`'s input through ops that only change values (a percentage's Mul)."""
    while True:
        if node.op_type == "Softmax":
            return True
        if node.op_type not in VALUE_CHANGING | SCORE_PASS | {"Log"}:
            return False
        inputs = [i for i in node.input if i in graph.input_dependent]
        if len(inputs) != 1 or inputs[0] not in graph.producer:
            return False
        node = graph.nodes[graph.producer[inputs[0]]]


def _output_dequantization(graph: Graph) -> tuple[float, int] | None:
    import numpy as np
    from onnx import numpy_helper

    node = graph.nodes[graph.producer[graph.scores_output.name]] if graph.scores_output.name in graph.producer else None
    if node is None or node.op_type != "QuantizeLinear" or node.input[1] not in graph.initializers:
        return None
    scale = float(np.max(numpy_helper.to_array(graph.initializers[node.input[1]])))
    zero = int(numpy_helper.to_array(graph.initializers[node.input[2]]).max()) if len(node.input) > 2 and \
        node.input[2] in graph.initializers else 0
    return scale, zero


def _dequantized_step(graph: Graph, tensor: str) -> float:
    """The scale of the DequantizeLinear that makes `tensor` (its largest, per channel), or 0."""
    import numpy as np
    from onnx import numpy_helper

    node = graph.nodes[graph.producer[tensor]] if tensor in graph.producer else None
    if node is None or node.op_type != "DequantizeLinear" or node.input[1] not in graph.initializers:
        return 0.0
    return float(np.max(numpy_helper.to_array(graph.initializers[node.input[1]])))


def output_step(graph: Graph) -> float:
    """The quantization step of the model's output (the scale of its last Quantize/Dequantize), or 0."""
    import numpy as np
    from onnx import numpy_helper

    name = graph.scores_output.name
    while name in graph.producer:
        node = graph.nodes[graph.producer[name]]
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[1] in graph.initializers:
            return float(np.max(numpy_helper.to_array(graph.initializers[node.input[1]])))
        if node.op_type not in SCORE_PASS or not node.input:
            break
        name = node.input[0]
    return 0.0


def sequence_guess(shape: tuple, input_size: tuple[int, int]) -> str:
    """What a (N,T,D) output whose D is no detector's anchor count looks like."""
    return (f"sequence/token output ({shape[1]} tokens of {shape[2]} features, as a transformer's or a sequence "
            f"model's; {shape[2]} is no count of detector anchors at strides 8, 16, 32 of the "
            f"{input_size[0]}x{input_size[1]} input)")


def declared_image_size(model) -> tuple[int, int] | None:
    """The (H,W) of an ONNX model's image input when its shape fixes them (NCHW or NHWC), else None."""
    weights = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim] if len(inputs) == 1 else []
    if len(dims) != 4:
        return None
    h, w = (dims[2], dims[3]) if dims[1] in (1, 3) or dims[3] not in (1, 3) else (dims[1], dims[2])
    return (h, w) if h and w else None


def check_classifier_output(shape: tuple, name: str, input_size: tuple[int, int] | None = None) -> None:
    """Class scores are (N,C), or (N,C) with 1×1 spatial axes around it; anything else is another task
    (`input_size`, the image's (H,W) when known, tells a detector's anchors from a sequence's features)."""
    dims = [d for d in shape[1:] if d != 1]
    if len(dims) <= 1:
        return
    shown = "(N," + ",".join(str(d) for d in shape[1:]) + ")"     # '?': a size that depends on the input
    guess = _task_guess(shape, input_size)
    tail = ("; split it with --task detection (YOLO-style layouts)" if guess.startswith("detector")
            else "; split it with --task segmentation" if guess.startswith("segmentation")
            else ", and cam-infer explains classifiers, YOLO-style detectors and segmenters only")
    raise CamInferError(f"the model output '{name}' is {shown}, not class scores (N,C): this looks like a {guess}"
                        + tail)


def _task_guess(shape: tuple, input_size: tuple[int, int] | None = None) -> str:
    """A guess for the refusal message only: (N,few,many) a detector when `many` is an anchor count at
    `input_size` (or that is unknown), else a token sequence; (N,many,few) a sequence."""
    from ..detection.decode import is_anchor_count
    few, many = (lambda d: isinstance(d, int) and d <= 100), (lambda d: d == "?" or (isinstance(d, int) and d > 100))
    if len(shape) == 3 and shape[2] in (6, 7) and shape[1] in (100, 300, 1000):            # max_det boxes
        return ("YOLO detector that ends in its own NMS (N, boxes, 6: box, score, class), a layout cam-infer does "
                "not read yet")
    if len(shape) == 3 and input_size and isinstance(shape[1], int) and is_anchor_count(input_size, shape[1]) \
            and isinstance(shape[2], int) and 6 <= shape[2] < shape[1]:
        return "YOLOv5-style detector (N, anchors, 5+C), a layout cam-infer does not read yet"
    if len(shape) == 3 and few(shape[1]) and many(shape[2]):
        if input_size and isinstance(shape[2], int) and not is_anchor_count(input_size, shape[2]):
            return sequence_guess(shape, input_size)
        return "detector (boxes and class scores per anchor)"
    if len(shape) == 3 and many(shape[1]) and few(shape[2]):
        return "sequence model (scores per step)"
    if len(shape) == 4:
        return "segmentation or dense-prediction model (a map per pixel)"
    return "model with more than one score per image"
