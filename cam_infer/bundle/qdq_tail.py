"""A quantized ONNX head (QDQ, or ONNX Runtime's QOperator int8 ops) read as the float graph it approximates, so
that a segmenter's tail can be read as a `LinearTail` (DeepLab converted from its TFLite: QuantizeLinear and
DequantizeLinear around the 1×1 convolution and each Resize, uint8 weights and int32 biases behind
DequantizeLinear) and a classifier's head as GAP → linear
(`head.read_linear_head`: the int8 MobileNets from tf2onnx and tflite2onnx, the zoo's QOperator MobileNetV2).

- A DequantizeLinear of a constant is the constant it stands for, computed as the runtime does:
  (q − zero_point)·scale in float32, per tensor or per channel. These are the weights the runtime multiplies by.
  A QuantizeLinear of a constant (a weight quantized in the graph) is computed too, rounded as the runtime does.
- A QOperator op (QLinearMatMul, QGemm, QLinearGlobalAveragePool, ...) is the float op it rounds, its constant
  operands dequantized (`_float_operator`).
- A QuantizeLinear → DequantizeLinear pair on a computed tensor rounds it to its scale's grid and clips it to the
  integer range; reshaping ops between the two (tf2onnx) then act on the float tensor. Read as the identity,
  the float graph differs from the head by these roundings (half a step each).
  So the caller accepts the reading only where it reproduces the quantized head within the output's steps
  (`linear_tail.read_linear_tail`, `tasks.classification.ClassificationTask.linear_head`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

QDQ = {"QuantizeLinear", "DequantizeLinear"}
RESHAPING = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"}
QOPERATOR = {"QLinearGlobalAveragePool", "QLinearMatMul", "QLinearAdd", "QGemm", "QLinearConv", "QLinearSoftmax"}
OUTPUT_GRID = {"QLinearGlobalAveragePool": 3, "QLinearSoftmax": 3, "QLinearMatMul": 6, "QLinearAdd": 6, "QGemm": 7,
               "QLinearConv": 6}                  # where each op's output scale and zero point are among its inputs


def within_steps(error: np.ndarray, step: float) -> bool:
    """Whether a float reading's |error| against its quantized head is what the head's roundings explain: at most
    2 steps of the output's quantization, half a step on average."""
    return bool(error.max() <= 2 * step + 1e-4 and error.mean() <= 0.5 * step + 1e-5)


def is_quantized(head: onnx.ModelProto) -> bool:
    return any(n.op_type in QDQ or n.op_type in QOPERATOR for n in head.graph.node)


def dequantized(head: onnx.ModelProto, logits: bool = False) -> tuple[onnx.ModelProto, float] | None:
    """(the float graph, the output's quantization step) of a quantized head; None when an integer tensor is read
    by anything but a DequantizeLinear, a QOperator op or a reshaping op (Reshape, Transpose, Squeeze, Unsqueeze,
    Flatten: tf2onnx reshapes the integers between a QuantizeLinear and its DequantizeLinear), is read on another
    grid (scale, zero point) than the one it was quantized to, or is an output. With ``logits``, the step is that
    of the logits behind a float Softmax at the end (`_output_step`)."""
    weights = {t.name: numpy_helper.to_array(t) for t in head.graph.initializer}
    weights.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in head.graph.node
                    if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    renamed: dict[str, str] = {}
    grids: dict[str, tuple] = {}                          # the head's computed integer tensors: their (scale, zero)
    folded: dict[str, np.ndarray] = {}
    kept = []
    quantized_weights: set[str] = set()
    for node in head.graph.node:
        inputs = [renamed.get(i, i) for i in node.input]
        if node.op_type == "QuantizeLinear" and node.input[0] in weights:
            quantized = _quantize(node, weights)                          # a weight quantized in the graph
            if quantized is None:
                return None
            weights[node.output[0]] = quantized
            quantized_weights.add(node.output[0])
        elif node.op_type == "DequantizeLinear" and node.input[0] in weights:
            folded[node.output[0]] = weights[node.output[0]] = _dequantize(node, weights)
        elif node.op_type == "DequantizeLinear":         # the pair's second half: the grid its first half made
            if grids.get(node.input[0]) != _grid(node, 1, weights):
                return None
            renamed[node.output[0]] = inputs[0]
        elif node.op_type == "QuantizeLinear":           # a pair on a computed tensor: read as the identity
            grids[node.output[0]] = _grid(node, 1, weights)
            renamed[node.output[0]] = inputs[0]
        elif node.op_type in QOPERATOR:                  # an int8 op (QOperator format): the float op it rounds
            made = _float_operator(node, inputs, weights, grids)
            if made is None:
                return None
            kept.append(made)
            folded.update({name: weights[name] for name in made.input if name.endswith("__float")})
        elif node.op_type in RESHAPING and node.input[0] in grids:
            grids[node.output[0]] = grids[node.input[0]]
            kept.append(_copied(node, inputs))
        elif (grids.keys() | quantized_weights).intersection(node.input):
            return None                                  # an integer tensor read as such: not a float graph
        else:
            kept.append(_copied(node, inputs))
    if grids.keys() & {o.name for o in head.graph.output}:
        return None
    nodes = kept
    outputs = []
    for out in head.graph.output:
        name = renamed.get(out.name, out.name)
        if name != out.name:
            nodes.append(helper.make_node("Identity", [name], [out.name], name=f"{out.name}__float"))
        outputs.append(out)
    initializers = [t for t in head.graph.initializer if any(t.name in n.input for n in nodes)]
    initializers += [numpy_helper.from_array(v, k) for k, v in folded.items()]
    graph = helper.make_graph(nodes, head.graph.name, list(head.graph.input), outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=list(head.opset_import), ir_version=head.ir_version)
    return model, _output_step(head, weights, logits)


def _grid(node, scale_index: int, weights: dict) -> tuple | None:
    """(scale, zero point) of a Q/DQ or QOperator node's grid (inputs scale_index, scale_index + 1) as comparable
    values; None when the scale is not a constant."""
    if node.input[scale_index] not in weights:
        return None
    zero_name = node.input[scale_index + 1] if len(node.input) > scale_index + 1 else ""
    zero = weights.get(zero_name, np.zeros((), np.uint8)) if zero_name else np.zeros((), np.uint8)
    return (tuple(np.ravel(weights[node.input[scale_index]]).tolist()), tuple(np.ravel(zero).tolist()))


def _copied(node, inputs: list) -> onnx.NodeProto:
    """The node reading `inputs`."""
    return helper.make_node(node.op_type, inputs, list(node.output), name=node.name, domain=node.domain,
                            **{a.name: helper.get_attribute_value(a) for a in node.attribute})


BIAS_INPUT = {"QGemm": 6, "QLinearConv": 8}      # an int32 bias, in steps of input 1's scale times input 4's


def _operand_axis(node, i: int) -> int | None:
    """The axis along which a QOperator op's constant operand i is quantized per channel (its scale at input i+1,
    its zero point at i+2): a QLinearMatMul weight's columns, a QGemm weight's output rows, a QLinearConv's filters;
    None where it is per tensor (QLinearAdd)."""
    if node.op_type == "QGemm":
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    return {"QLinearMatMul": -1, "QLinearConv": 0}.get(node.op_type)


def dequantizing_node(model: onnx.ModelProto, name: str) -> tuple[onnx.NodeProto, list] | None:
    """(a DequantizeLinear node, the initializers it adds) computing, inside `model`, the float operand that the
    float reading of a QOperator head names ``<integer tensor>__float`` (`_float_operator`) from the integer tensor
    as the file stores it, by the same (q − zero point)·scale: so that a graph reading the head's float W and b (a
    fused map) carries the int8 weights rather than a float32 copy of them. None where `name` is no such operand."""
    base = name.removesuffix("__float")
    if base == name:
        return None
    weights = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in QOPERATOR or base not in node.input or base not in weights:
            continue
        i = list(node.input).index(base)
        if i == BIAS_INPUT.get(node.op_type):
            if not all(node.input[k] in weights for k in (1, 4)):
                return None
            scale = (numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
                     * numpy_helper.to_array(weights[node.input[4]]).astype(np.float32))
            scale_name = f"{base}__scale"
            node_made = helper.make_node("DequantizeLinear", [base, scale_name], [name], name=name, axis=0)
            return node_made, [numpy_helper.from_array(scale, scale_name)]
        if i in (0, 3) and len(node.input) > i + 1 and node.input[i + 1] in weights:
            axis = _operand_axis(node, i)
            operands = [base, node.input[i + 1]] + ([node.input[i + 2]] if len(node.input) > i + 2 and
                                                    node.input[i + 2] else [])
            extra = {} if axis is None else {"axis": axis}
            return helper.make_node("DequantizeLinear", operands, [name], name=name, **extra), []
    return None


def _float_operator(node, inputs: list, weights: dict, grids: dict) -> onnx.NodeProto | None:
    """A QOperator node (ONNX Runtime's int8 format: QLinearMatMul, QGemm, ...) as the float node it rounds, its
    constant operands dequantized into `weights` under ``<name>__float``; None when its
    operands are not one integer tensor (on the grid it was quantized to) and constants as expected. Its output
    joins `grids` when it is quantized (read through the DequantizeLinear that follows)."""
    op = node.op_type
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def constant(i: int, axis: int | None, scale_of: int | None = None) -> str | None:
        """Operand i dequantized by its scale (input i+1, or `scale_of`) and zero point (input i+2)."""
        name = node.input[i]
        if name not in weights:
            return None
        q = weights[name]
        scale = weights[node.input[scale_of if scale_of is not None else i + 1]].astype(np.float32)
        zero = weights[node.input[i + 2]] if scale_of is None and len(node.input) > i + 2 and node.input[i + 2] \
            else np.zeros((), np.int64)
        weights[f"{name}__float"] = _scaled(q, scale, zero, axis)
        return f"{name}__float"

    def bias(i: int) -> str:
        """The int32 bias at input i, in steps of the input's scale times the weight's."""
        scale = weights[node.input[1]].astype(np.float32) * weights[node.input[4]].astype(np.float32)
        weights[f"{node.input[i]}__float"] = weights[node.input[i]].astype(np.float32) * scale
        return f"{node.input[i]}__float"

    def operand(i: int) -> str | None:
        found = grids.get(node.input[i])
        return inputs[i] if found is not None and found == _grid(node, i + 1, weights) else None

    made, quantized_output = None, True
    if op in ("QLinearGlobalAveragePool", "QLinearSoftmax"):
        if operand(0) is None or attributes.get("channels_last", 0):
            return None
        extra = {"axis": attributes.get("axis", -1)} if op == "QLinearSoftmax" else {}
        made = helper.make_node(op[len("QLinear"):], [operand(0)], [node.output[0]], **extra)
    elif op == "QLinearMatMul":
        weight = constant(3, axis=_operand_axis(node, 3))
        made = None if operand(0) is None or weight is None else \
            helper.make_node("MatMul", [operand(0), weight], [node.output[0]])
    elif op == "QLinearAdd":
        pairs = [(operand(0), constant(3, axis=None)), (operand(3), constant(0, axis=None))]
        found = next(((a, b) for a, b in pairs if a is not None and b is not None), None)
        made = None if found is None else helper.make_node("Add", list(found), [node.output[0]])
    elif op == "QGemm":
        weight = constant(3, axis=_operand_axis(node, 3))
        operands = [operand(0), weight]
        if len(node.input) > BIAS_INPUT[op] and node.input[BIAS_INPUT[op]]:
            operands.append(bias(BIAS_INPUT[op]))
        quantized_output = len(node.input) > 7 and bool(node.input[7])
        made = None if None in operands else helper.make_node(
            "Gemm", operands, [node.output[0]], alpha=attributes.get("alpha", 1.0),
            transA=attributes.get("transA", 0), transB=attributes.get("transB", 0))
    elif op == "QLinearConv":
        weight = constant(3, axis=_operand_axis(node, 3))
        operands = [operand(0), weight]
        if len(node.input) > BIAS_INPUT[op] and node.input[BIAS_INPUT[op]]:
            operands.append(bias(BIAS_INPUT[op]))
        made = None if None in operands else helper.make_node("Conv", operands, [node.output[0]], **attributes)
    if made is None:
        return None
    made.name = f"{node.name or node.output[0]}__float"
    if quantized_output:
        grids[node.output[0]] = _grid(node, OUTPUT_GRID[op], weights)
    return made


def _scaled(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int | None) -> np.ndarray:
    """(q − zero)·scale in float32, scale and zero per tensor or along `axis`."""
    if axis is not None and scale.ndim == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = zero.reshape(shape) if zero.ndim == 1 else zero
    return ((q.astype(np.int64) - zero.astype(np.int64)).astype(np.float32) * scale).astype(np.float32)


def _quantize(node, weights: dict) -> np.ndarray | None:
    """QuantizeLinear of a constant as ONNX computes it: round(x / scale) to even, plus the zero point, saturated to
    the zero point's integer type (or `output_dtype`'s, else uint8); None for other than 8- and 16-bit integers."""
    x = weights[node.input[0]].astype(np.float32)
    scale, zero = _per_axis(node, x, weights)
    dtype = zero.dtype if len(node.input) > 2 and node.input[2] else np.dtype(np.uint8)
    declared = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
    if declared:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(declared))
    if dtype not in (np.int8, np.uint8, np.int16, np.uint16):
        return None
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / scale) + zero.astype(np.int64), info.min, info.max).astype(dtype)


def _dequantize(node, weights: dict) -> np.ndarray:
    """(q − zero_point)·scale as ONNX's DequantizeLinear computes it (float32; per channel along `axis`)."""
    q = weights[node.input[0]]
    return _scaled(q, *_per_axis(node, q, weights), axis=None)


def _per_axis(node, x: np.ndarray, weights: dict) -> tuple[np.ndarray, np.ndarray]:
    """A Q/DQ node's scale (float32) and zero point, shaped to broadcast along its `axis` (per channel) or scalar."""
    scale = weights[node.input[1]].astype(np.float32)
    zero = weights[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and x.ndim > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return scale, zero


def _output_step(head: onnx.ModelProto, weights: dict, logits: bool = False) -> float:
    """The scale of the DequantizeLinear that makes the output (through Identity ops); with ``logits``, through
    reshaping ops and a float Softmax too: the step of the logits behind the probabilities (the caller compares
    logits). 0 when there is none."""
    producer = {out: n for n in head.graph.node for out in n.output}
    name = head.graph.output[0].name
    passed = RESHAPING | {"Identity", "Softmax"} if logits else {"Identity"}
    while name in producer and producer[name].op_type in passed:
        name = producer[name].input[0]
    node = producer.get(name)
    if node is None or node.op_type != "DequantizeLinear" or node.input[1] not in weights:
        return 0.0
    return float(np.max(weights[node.input[1]]))
