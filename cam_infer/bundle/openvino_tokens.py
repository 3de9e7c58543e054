"""Vision transformers given as OpenVINO models (IR ``.xml``): the residual stream found on OpenVINO's own graph.

The same walk as on ONNX graphs (`tokens.token_stream`, `tokens.token_layout`) over the model seen as ONNX-like
nodes (`openvino_graph`): a block is a residual unit whose branch starts at a normalisation of the stream (MVN)
and holds an attention op (Softmax, or ScaledDotProductAttention, which OpenVINO fuses the attention into when it
converts a model); ``auto`` is the last block's input, a layer inside a block is refused naming the block's input.
The attention probabilities of a fused op are (N,H,T,T) = softmax(q·kᵀ·scale + mask), shaped from q and k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CamInferError
from .graph import InputSpec
from .openvino_graph import OpenVINOGraph
from .tokens import TokenLayout, TokenStream, token_layout, token_stream, whole_image_attention


@dataclass(frozen=True)
class TokenCut:
    """Where an OpenVINO transformer is cut: the op output (`op`, `index`), how its tokens are a grid, and the
    attention ops over all of an image's tokens, in order, with their probabilities' shapes (H,T,T)."""

    op: str
    index: int
    tokens: TokenLayout
    attention: tuple[str, ...]
    attention_shapes: tuple[tuple[int, ...], ...]

    def record(self) -> dict:
        """The manifest's ``activation.tokens``."""
        return {**self.tokens.to_dict(), "attention": list(self.attention),
                "attention_shapes": [list(s) for s in self.attention_shapes]}


def token_cut(model, spec: InputSpec, layer: str) -> TokenCut | None:
    """The cut of a transformer at `layer` (``auto``: the last block's input), or None for a model with no
    attention on a residual stream."""
    graph = OpenVINOGraph(model, spec)
    stream = token_stream(graph)
    if stream is None:
        return None
    tensor = stream.last_block_input if layer == "auto" else _stream_tensor(graph, stream, layer)
    tokens = token_layout(graph, stream, tensor, layer)
    value = graph.output_of(tensor)
    count = tokens.prefix + tokens.grid[0] * tokens.grid[1]
    attention = [(name, shape) for name in whole_image_attention(stream, tokens)
                 if (shape := probabilities_shape(graph, name)) and shape[1:] == (count, count)]
    return TokenCut(value.get_node().get_friendly_name(), value.get_index(), tokens,
                    tuple(a for a, _ in attention), tuple(s for _, s in attention))


def _stream_tensor(graph: OpenVINOGraph, stream: TokenStream, layer: str) -> str:
    """`layer` (an op's name) when it is a valid cut of the stream; else refused naming the nearest valid one."""
    from .layers import TargetLayer, _check_not_in_block
    valid = ", ".join(repr(v) for v in reversed(stream.valid))
    if layer not in graph.producer:
        raise CamInferError(f"unknown layer '{layer}': no op of this OpenVINO model has that name; the valid layers "
                            f"of this transformer are the residual stream between blocks: {valid}; or --layer auto")
    if layer in stream.valid:
        return layer
    _check_not_in_block(graph, stream, TargetLayer(layer, layer, "node", None))
    raise CamInferError(f"layer '{layer}' is not on the residual stream between transformer blocks; valid layers: "
                        f"{valid}; or --layer auto")


def probabilities_shape(graph: OpenVINOGraph, name: str) -> tuple[int, ...] | None:
    """(H, Tq, Tk) of one image's attention probabilities at attention op `name`: a Softmax's output, or the
    softmax inside a ScaledDotProductAttention (q (N,H,Tq,d), k (N,H,Tk,d)); None when not all known."""
    node = graph.nodes[graph.producer[name]]
    if node.op_type == "Attention":
        q, k = (graph.info(i).shape for i in node.input[:2])
        shape = None if q is None or k is None or len(q) != 4 or len(k) != 4 else (q[1], q[2], k[2])
    else:
        full = graph.info(name).shape
        shape = None if full is None or len(full) != 4 else tuple(full[1:])
    return shape if shape and all(shape) else None


def attention_model(features_path, head_path, attention: list[str], head_fusion: str = "mean"):
    """An IR bundle's two graphs joined back into one ``ov.Model`` whose outputs are the cut tokens, the attention
    probabilities of every block in `attention` fused over the heads (ReduceMean, ReduceMax or ReduceMin), and the
    scores: one pass for attention rollout. A fused attention op is computed in its parts so that its
    probabilities are a tensor (`unfused_probabilities`)."""
    import openvino as ov
    import openvino.opset13 as ops

    from ..backends.sessions import openvino_model
    features, head = openvino_model(features_path), openvino_model(head_path)
    cut = features.get_results()[0].input_value(0)
    for reader in list(head.get_parameters()[0].output(0).get_target_inputs()):
        reader.replace_source_output(cut)
    named = {op.get_friendly_name(): op for model in (features, head) for op in model.get_ordered_ops()}
    reduce = {"mean": ops.reduce_mean, "max": ops.reduce_max, "min": ops.reduce_min}[head_fusion]
    fused = []
    for name in attention:
        op = named[name]
        probabilities = unfused_probabilities(op) if op.get_type_name() == "ScaledDotProductAttention" else op.output(0)
        heads = reduce(probabilities, ops.constant(np.array([1], np.int64)), False)
        fused.append(ops.convert(heads, "f32").output(0))
    scores = head.get_results()[0].input_value(0)
    outputs = [ops.result(value) for value in (cut, *fused, scores)]
    return ov.Model(outputs, features.get_parameters(), f"attention-{head_fusion}")


def unfused_probabilities(op):
    """ScaledDotProductAttention(q, k, v, mask, scale) replaced in its graph by its parts, softmax(q·kᵀ·scale +
    mask)·v (OpenVINO's definition, scale 1/√d when not given); the probabilities' output."""
    import openvino.opset13 as ops

    if op.get_attributes().get("causal"):
        raise CamInferError(f"attention op '{op.get_friendly_name()}' is causal (a sequence model's): no image "
                            "attention to read")
    q, k, v, *rest = op.input_values()
    if rest and rest[0].get_element_type().get_type_name() == "boolean":
        raise CamInferError(f"attention op '{op.get_friendly_name()}' has a boolean mask: its probabilities are not "
                            "read by cam-infer")
    logits = ops.matmul(q, k, False, True)
    scale = rest[1] if len(rest) > 1 else ops.constant(np.array(1 / np.sqrt(q.get_partial_shape()[-1].get_length()),
                                                                q.get_element_type().to_dtype()))
    logits = ops.multiply(logits, scale)
    if rest:
        logits = ops.add(logits, rest[0])
    probabilities = ops.softmax(logits, -1)
    attended = ops.matmul(probabilities, v, False, False)
    for reader in list(op.output(0).get_target_inputs()):
        reader.replace_source_output(attended.output(0))
    return probabilities.output(0)
