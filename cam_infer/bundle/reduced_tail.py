"""A transformer's head graph opened up for mosaic copies (ViT Recipro-CAM, `methods.vit_recipro`).

The head graph of a bundle cut at a block's input reads the residual stream x (N,T,D). Its reduced tail is the same
graph with
- the output of the first block's first LayerNormalization replaced by an input ``mosaic_norm`` (N,T',D): the
  mosaic copies replace that tensor too, not only the stream;
- an input ``key_bias`` (N,T') added to the logits of every attention Softmax, broadcast over heads and queries;
- the token count free: Reshape shapes that spell T on the token axis copy it from their input instead (0);
- optionally (``prefix``), only the first tokens kept after the block's attention residual: when the model reads
  nothing but its prefix (class) tokens after a single block, the other tokens' MLP rows are never needed.

With key_bias = 0 and T' = T it computes exactly the head; with fewer tokens standing for repeated ones, key_bias =
log(multiplicity) gives each query the attention it had over all the copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import CamInferError

NORM_INPUT, BIAS_INPUT = "mosaic_norm", "key_bias"


@dataclass(frozen=True)
class LayerNorm:
    """y = (x − mean) / sqrt(var + eps) · scale + bias over the last axis."""

    scale: np.ndarray
    bias: np.ndarray
    epsilon: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        mean = x.mean(axis=-1, keepdims=True)
        var = np.square(x - mean).mean(axis=-1, keepdims=True)
        return ((x - mean) / np.sqrt(var + self.epsilon) * self.scale + self.bias).astype(np.float32)


def reduced_tail(head: onnx.ModelProto, tokens: int, prefix: int = 0) -> tuple[onnx.ModelProto, LayerNorm]:
    """The head with inputs (x, mosaic_norm, key_bias) and a free token count, and the LayerNorm it no longer runs;
    with `prefix`, only that many tokens continue after the first residual Add."""
    model = onnx.ModelProto()
    model.CopyFrom(head)
    graph = model.graph
    x = graph.input[0].name
    norm = next((n for n in graph.node if n.op_type == "LayerNormalization" and n.input[0] == x), None)
    if norm is None:
        found = sorted({n.op_type for n in graph.node if x in n.input})
        raise CamInferError(f"vit-recipro needs the block after the cut to start with a LayerNormalization of the "
                            f"tokens; the head reads them with {', '.join(found)}")
    layer_norm = _layer_norm(graph, norm)
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    if not softmaxes:
        raise CamInferError("vit-recipro found no attention Softmax in the head graph")
    _replace_uses(graph, norm.output[0], NORM_INPUT)
    graph.node.remove(norm)
    dim = graph.input[0].type.tensor_type.shape.dim
    for d, name in zip(dim, ("N", "T")):
        d.Clear()
        d.dim_param = name
    graph.input.append(helper.make_tensor_value_info(NORM_INPUT, onnx.TensorProto.FLOAT, ["N", "T", dim[2].dim_value]))
    graph.input.append(helper.make_tensor_value_info(BIAS_INPUT, onnx.TensorProto.FLOAT, ["N", "T"]))
    graph.initializer.append(numpy_helper.from_array(np.array([1, 2], np.int64), "key_bias_axes"))
    graph.node.insert(0, helper.make_node("Unsqueeze", [BIAS_INPUT, "key_bias_axes"], ["key_bias_4d"]))
    for i, softmax in enumerate(softmaxes):
        _check_last_axis(softmax)
        biased = f"{softmax.input[0]}_key_biased"
        position = list(graph.node).index(softmax)
        graph.node.insert(position, helper.make_node("Add", [softmax.input[0], "key_bias_4d"], [biased]))
        softmax.input[0] = biased
    _free_token_count(graph, tokens)
    if prefix:
        _keep_prefix_after_attention(graph, x, prefix)
    del graph.value_info[:]
    return model, layer_norm


def _layer_norm(graph: onnx.GraphProto, node: onnx.NodeProto) -> LayerNorm:
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    scale = constant_value(graph, node.input[1])
    bias = constant_value(graph, node.input[2]) if len(node.input) > 2 and node.input[2] else 0 * scale
    if axis not in (-1, 2) or scale is None or bias is None:
        raise CamInferError("vit-recipro needs the block's first LayerNormalization over the channels with constant "
                            "scale and bias")
    epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    return LayerNorm(scale.astype(np.float32), bias.astype(np.float32), float(epsilon))


def constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of tensor `name` when it is an initializer or a Constant, through Identity nodes; else None."""
    values = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    while name not in values:
        node = producers.get(name)
        if node is None or node.op_type not in ("Identity", "Constant"):
            return None
        if node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].name == "value" else None
        name = node.input[0]
    return numpy_helper.to_array(values[name])


def _replace_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _check_last_axis(softmax: onnx.NodeProto) -> None:
    axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
    if axis not in (-1, 3):
        raise CamInferError(f"vit-recipro needs attention Softmax over the keys (last axis); '{softmax.name}' uses "
                            f"axis {axis}")


def _keep_prefix_after_attention(graph: onnx.GraphProto, x: str, prefix: int) -> None:
    """Slice the first residual sum x + attn(...) to its first `prefix` tokens for everything after it."""
    add = next((n for n in graph.node if n.op_type == "Add" and x in n.input), None)
    if add is None:
        raise CamInferError("vit-recipro found no residual Add of the cut tokens in the head graph")
    kept = f"{add.output[0]}_prefix"
    _replace_uses(graph, add.output[0], kept)
    graph.initializer.extend([numpy_helper.from_array(np.array([v], np.int64), f"prefix_slice_{name}")
                              for name, v in (("start", 0), ("end", prefix), ("axis", 1))])
    position = list(graph.node).index(add) + 1
    graph.node.insert(position, helper.make_node("Slice", [add.output[0], "prefix_slice_start", "prefix_slice_end",
                                                           "prefix_slice_axis"], [kept]))


def _free_token_count(graph: onnx.GraphProto, tokens: int) -> None:
    """Reshape targets (N,T,...) that spell T on axis 1 copy the batch and the token count from their input instead."""
    for node in graph.node:
        shape = constant_value(graph, node.input[1]) if node.op_type == "Reshape" else None
        if shape is not None and shape.ndim == 1 and len(shape) >= 2 and shape[1] == tokens and np.all(shape != 0):
            freed = shape.copy()
            freed[:2] = 0                  # batch and tokens as the input has them
            name = f"{node.input[1]}_free_tokens_{node.output[0]}"
            graph.initializer.append(numpy_helper.from_array(freed.astype(np.int64), name))
            node.input[1] = name
            for attribute in node.attribute:
                if attribute.name == "allowzero":           # no 0 was in the shape: the same reshape
                    attribute.i = 0
