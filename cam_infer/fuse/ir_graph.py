"""The graph work of fusing into an OpenVINO IR (`fuse.ir`, and the maps a classifier computes in OpenVINO's clean pass,
`tasks.in_pass`): an IR bundle's two graphs joined back, a method's ONNX nodes (built on two inputs, the cut and the
scores) read by OpenVINO and wired onto them, the gaps those nodes leave (`fusion.Call`) filled with OpenVINO's own
graphs, and a GAP → linear head's W and b read where the IR holds them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

IR_OPSET = 17             # the method's nodes (read by OpenVINO, never by the model's own runtime)
CUT = "cam_infer/cut"
SCORES = "cam_infer/scores"
HEAD_WEIGHT = "cam_infer/head_weight"       # a GAP → linear head's own W and b, read where the IR holds them
HEAD_BIAS = "cam_infer/head_bias"


def joined_ir(features_path, head_path):
    """An IR bundle's features and head joined back into one graph: (the features' parameters, the cut, the head's
    result, the head as read). The head's parameter is replaced by the cut it reads (no copy of either graph)."""
    from ..backends.sessions import openvino_model
    features, head = openvino_model(features_path), openvino_model(head_path)
    cut = features.get_results()[0].input_value(0)
    read_instead(head.get_parameters()[0], cut)
    return features.get_parameters(), cut, head.get_results()[0], head


def head_tensors(head, linear_head) -> dict | None:
    """Where an IR head (an ``ov.Model``) holds the W and b that `linear_head` was read as by running it
    (`bundle.head.probed_linear_head`): a MatMul's constant operand equal to W (transpose_b) or Wᵀ, or a 1×1
    Convolution's (C,K,1,1) filters, read as (C,K); and a constant added to its product equal to b. A constant
    operand is a Constant or ops on constants only (the Convert of a float16-compressed IR, an int8 IR's
    Convert → Subtract → Multiply that dequantizes its uint8 weights: `_folded`), so the fused graph reads the weights
    as the IR stores them. {HEAD_WEIGHT: output, HEAD_BIAS: output or None, "transposed": bool}, or None where no
    such tensors are found (a fused closed form then carries W and b as read)."""
    weight, bias = linear_head.weight, linear_head.bias
    for op in head.get_ordered_ops():
        product = _linear_operand(op, weight)
        if product is None:
            continue
        source, transposed = product
        added = None
        for reader in op.output(0).get_target_inputs():
            node = reader.get_node()
            if node.get_type_name() == "Add":
                other = node.input_value(1 - reader.get_index())
                added = (other, _folded(other.get_node()))
        if added is not None and added[1] is not None and added[1].size == bias.size and \
                np.allclose(added[1].reshape(-1), bias, rtol=0, atol=1e-6 * max(1.0, np.abs(bias).max())):
            return {HEAD_WEIGHT: source, HEAD_BIAS: _reshaped(added[0], added[1], (bias.size,)),
                    "transposed": transposed}
        if added is None and not bias.any():
            return {HEAD_WEIGHT: source, HEAD_BIAS: None, "transposed": transposed}
    return None


def _linear_operand(op, weight: np.ndarray):
    """(W's output as (C,K), or (K,C) when transposed; transposed) where `op` multiplies by W = `weight` (C,K): a
    MatMul by a constant, or a 1×1 Convolution (stride 1, no padding) with constant filters; None else."""
    kind, attributes = op.get_type_name(), op.get_attributes()
    if kind == "MatMul" and not attributes.get("transpose_a"):
        transposed = not attributes.get("transpose_b")                  # stored (K,C)
        value = _folded(op.input_value(1).get_node())
        expected = weight.T if transposed else weight
        if value is not None and value.shape == expected.shape and _equal(value, expected):
            return _reshaped(op.input_value(1), value, value.shape), transposed
    if kind == "Convolution" and list(attributes.get("strides", [])) == [1, 1] and \
            not any(attributes.get("pads_begin", [])) and not any(attributes.get("pads_end", [])) and \
            list(attributes.get("dilations", [1, 1])) == [1, 1]:
        value = _folded(op.input_value(1).get_node())
        if value is not None and value.shape == (*weight.shape, 1, 1) and _equal(value[:, :, 0, 0], weight):
            return _reshaped(op.input_value(1), value, weight.shape), False
    return None


def _equal(value: np.ndarray, weight: np.ndarray) -> bool:
    return bool(np.allclose(value, weight, rtol=0, atol=1e-6 * np.abs(weight).max()))


def _reshaped(output, value: np.ndarray, shape: tuple):
    """`output` (holding `value`) as `shape` in float32, as the method's nodes read it: itself, or a Reshape of it,
    after a Convert where the IR holds it in another type (an IR converted from a float16 file computes in f16)."""
    import openvino.opset13 as ops
    kind = output.get_element_type()
    if kind.get_type_name() != "f32":
        one = ops.constant(np.ones((), kind.to_dtype()))
        output = ops.convert(ops.multiply(output, one), "f32").output(0)
    if value.shape == tuple(shape):
        return output
    return ops.reshape(output, ops.constant(np.array(shape, np.int64)), special_zero=False).output(0)


FOLDABLE = {"Convert": lambda a: a, "Subtract": np.subtract, "Multiply": np.multiply}


def _folded(node, depth: int = 0) -> np.ndarray | None:
    """The float32 value of a node computed from constants alone (a Constant; Convert, Subtract and Multiply of such
    nodes, as OpenVINO computes them in float32), or None."""
    kind = node.get_type_name()
    if kind == "Constant":
        return node.get_data().astype(np.float32)
    if kind not in FOLDABLE or depth > 4:
        return None
    operands = [_folded(v.get_node(), depth + 1) for v in node.input_values()]
    if any(v is None for v in operands):
        return None
    return np.asarray(FOLDABLE[kind](*operands), np.float32)


def _as_rows(value):
    """The scores as (N, C), as the method's graph reads them: a model whose output keeps trailing axes
    (SqueezeNet's (N, 1000, 1, 1)) flattened after the batch."""
    if value.get_partial_shape().rank.get_length() <= 2:
        return value
    import openvino.opset13 as ops
    return ops.reshape(value, ops.constant(np.array([0, -1], np.int64)), special_zero=True).output(0)


def read_instead(parameter, source) -> None:
    """Every reader of `parameter` reads `source` instead."""
    for reader in list(parameter.output(0).get_target_inputs()):
        reader.replace_source_output(source)


def linear_head_inputs(bundle, linear_head, inputs: list, b):
    """`linear_head` as the fused method's nodes see it on an IR bundle: its W and b as inputs of theirs (added to
    `inputs`) that `stitched` wires to the head's own constants; where the IR holds them in no float constant (an
    int8 head's uint8 weights, read through its float graph: `bundle.openvino_head`), W and b as read, constants of
    the method's nodes (`b`, their builder). None where the head is no GAP → linear head (no closed forms fused)."""
    from dataclasses import replace

    from ..backends.sessions import openvino_model
    from ..bundle.head import LinearSource
    if linear_head is None:
        return None
    tensors = head_tensors(openvino_model(bundle.head_path), linear_head)
    if tensors is None:
        return replace(linear_head, source=LinearSource(weight=b.const(linear_head.weight, "head_weight_read"),
                                                        bias=b.const(linear_head.bias, "head_bias_read")))
    c, k = linear_head.weight.shape
    inputs.append(helper.make_tensor_value_info(HEAD_WEIGHT, TensorProto.FLOAT, [k, c] if tensors["transposed"]
                                                else [c, k]))
    if tensors[HEAD_BIAS] is not None:
        inputs.append(helper.make_tensor_value_info(HEAD_BIAS, TensorProto.FLOAT, None))
    return replace(linear_head, source=LinearSource(weight=HEAD_WEIGHT, transposed=tensors["transposed"],
                                                    bias=HEAD_BIAS if tensors[HEAD_BIAS] is not None else None))


def method_graph(b, inputs: list, outputs: list[tuple[str, int]], calls) -> onnx.ModelProto:
    """The method's ONNX nodes as a model: `inputs` (value infos) and each call's result as inputs; `outputs`
    (name, element type) and each call's inputs as outputs."""
    gaps = [helper.make_tensor_value_info(call.output, TensorProto.FLOAT, [None] * call.rank) for call in calls]
    given = [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for call in calls for name in call.inputs]
    graph = helper.make_graph(b.nodes, "cam_infer_method", [*inputs, *gaps],
                              [helper.make_tensor_value_info(name, kind, None) for name, kind in outputs] + given,
                              b.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", b.opset)])


def stitched(bundle, method: onnx.ModelProto, calls, outputs: list[str], linear_head=None):
    """The bundle's joined IR with `method`'s outputs added: its cut and scores inputs read the joined graph's, each
    call's gap the call's graph, the head's weight and bias inputs the head's own tensors (`head_tensors` of
    `linear_head`). The model's inputs: the image, and any other input of `method` (``class_id``)."""
    import openvino as ov

    from ..backends.sessions import openvino_model
    parameters, cut, scores, head = joined_ir(bundle.features_path, bundle.head_path)
    nodes = openvino_model(method)
    inputs = {name: p for p in nodes.get_parameters() for name in p.output(0).get_names()}
    results = {name: r for r in nodes.get_results() for name in r.output(0).get_names()}
    if HEAD_WEIGHT in inputs:
        tensors = head_tensors(head, linear_head)
        for name in (HEAD_WEIGHT, HEAD_BIAS):
            if name in inputs:
                read_instead(inputs.pop(name), tensors[name])
    for name, source in ((CUT, cut), (SCORES, _as_rows(scores.input_value(0)))):
        if name in inputs:                      # not read by every method: OpenVINO drops an unread input
            read_instead(inputs.pop(name), source)
    for call in calls:
        for parameter, name in zip(call.graph.get_parameters(), call.inputs):
            read_instead(parameter, results[name].input_value(0))
        read_instead(inputs.pop(call.output), call.graph.get_results()[0].input_value(0))
    scores.output(0).get_tensor().set_names({bundle.manifest["output"]["name"]})      # the bundle's name for it
    for name in outputs:                    # one name each (OpenVINO merges an Identity's names into its input's)
        results[name].output(0).get_tensor().set_names({name})
    model = ov.Model([scores, *(results[name] for name in outputs)], [*parameters, *inputs.values()], "cam_infer_fused")
    model.validate_nodes_and_infer_types()
    return model


def cut_input(bundle, batch) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(CUT, TensorProto.FLOAT, [batch, *bundle.cut_shape])


def scores_input(bundle, batch) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, [batch, *bundle.output_shape])
