"""A quantized (QDQ) ONNX head read as the float graph it approximates, so that its tail can be read as a
`LinearTail` (DeepLab converted from its TFLite: QuantizeLinear/DequantizeLinear around the 1×1 convolution and
each Resize, uint8 weights and int32 biases behind DequantizeLinear).

- A DequantizeLinear of a constant is the constant it stands for, computed as the runtime does:
  (q − zero_point)·scale in float32, per tensor or per channel. These are the weights the runtime multiplies by.
- A QuantizeLinear → DequantizeLinear pair on a computed tensor rounds it to its scale's grid and clips it to the
  integer range. Read as the identity, the float graph differs from the head by these roundings (half a step each).
  So the caller accepts the reading only where it reproduces the quantized head within the output's steps
  (`linear_tail.read_linear_tail`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

QDQ = {"QuantizeLinear", "DequantizeLinear"}


def is_quantized(head: onnx.ModelProto) -> bool:
    return any(n.op_type in QDQ for n in head.graph.node)


def dequantized(head: onnx.ModelProto) -> tuple[onnx.ModelProto, float] | None:
    """(the float graph, the output's quantization step) of a QDQ head; None when a QuantizeLinear or
    DequantizeLinear is neither on a constant nor in a pair on a computed tensor."""
    weights = {t.name: numpy_helper.to_array(t) for t in head.graph.initializer}
    producer = {out: n for n in head.graph.node for out in n.output}
    renamed: dict[str, str] = {}
    folded: dict[str, np.ndarray] = {}
    kept = []
    for node in head.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in weights:
            folded[node.output[0]] = _dequantize(node, weights)
        elif node.op_type == "DequantizeLinear":
            source = producer.get(node.input[0])
            if source is None or source.op_type != "QuantizeLinear":
                return None
            renamed[node.output[0]] = renamed.get(source.input[0], source.input[0])
        elif node.op_type == "QuantizeLinear":
            continue                                     # read with the DequantizeLinear that follows it
        else:
            kept.append(node)
    consumed = {name for n in kept for name in n.input} | {o.name for o in head.graph.output}
    if any(n.op_type == "QuantizeLinear" and n.output[0] in consumed for n in head.graph.node):
        return None                                      # an integer tensor read as such: not a float graph
    nodes = [helper.make_node(n.op_type, [renamed.get(i, i) for i in n.input], list(n.output), name=n.name,
                              domain=n.domain, **{a.name: helper.get_attribute_value(a) for a in n.attribute})
             for n in kept]
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
    return model, _output_step(head, producer, weights)


def _dequantize(node, weights: dict) -> np.ndarray:
    """(q − zero_point)·scale as ONNX's DequantizeLinear computes it (float32; per channel along `axis`)."""
    q = weights[node.input[0]]
    scale = weights[node.input[1]].astype(np.float32)
    zero = weights[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros((), q.dtype)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q.astype(np.int64) - zero.astype(np.int64)).astype(np.float32) * scale).astype(np.float32)


def _output_step(head: onnx.ModelProto, producer: dict, weights: dict) -> float:
    """The scale of the DequantizeLinear that makes the output (through Identity ops), 0 when there is none."""
    name = head.graph.output[0].name
    while name in producer and producer[name].op_type == "Identity":
        name = producer[name].input[0]
    node = producer.get(name)
    if node is None or node.op_type != "DequantizeLinear" or node.input[1] not in weights:
        return 0.0
    return float(np.max(weights[node.input[1]]))
