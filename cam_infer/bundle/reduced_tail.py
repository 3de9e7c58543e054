"""A transformer's head graph opened up for mosaic copies (ViT Recipro-CAM, `methods.vit_recipro`).

The head graph of a bundle cut at a block's input reads the residual stream x (N,T,D). The opened tail reads the same
x and three inputs that say which copies of every image to run: ``copy_index`` (R,S), the clean token each of a copy's
S tokens is; ``copy_weight`` (R,S,1), its weight; ``key_bias`` (R,S), added to that key's logits in every attention
Softmax (broadcast over heads and queries). Its output has N·R rows, image by image. Inside:

- every use of x but the block's first LayerNorm reads the copies  Gather(x, index)·weight  (N·R,S,D);
- the LayerNorm is one LayerNormalization op or, as exports below opset 17 write it, decomposed: ReduceMean and Sub
  read x, the paths from x − μ meet again at (x − μ)/σ, then the per-channel Mul by γ and Add of β; its output is
  found from the ops alone, never from names;
- the LayerNorm runs once on the T clean tokens; a use of it that is a MatMul by a constant W (the q, k, v
  projections) runs on the clean tokens too and is gathered after, since (g·n)·W = g·(n·W): a copy's projections
  cost a gather, not a matrix product; any other use reads the norm's copies;
- the token count is free: Reshape shapes that spell T on the token axis copy it from their input instead (0);
- optionally (``prefix``), only the first tokens kept after the block's attention residual: when the model reads
  nothing but its prefix (class) tokens after a single block, the other tokens' MLP rows are never needed.

With every token once, weight 1 and key bias 0 it computes exactly the head; with fewer tokens standing for repeated
ones, key_bias = log(multiplicity) gives each query the attention it had over all the copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import CamInferError
from ..fuse.builder import Builder
from .graph import constant_value

INDEX, WEIGHT, BIAS = "copy_index", "copy_weight", "key_bias"


def reduced_tail(head: onnx.ModelProto, tokens: int, prefix: int = 0) -> onnx.ModelProto:
    """The head with inputs (x, copy_index, copy_weight, key_bias) and a free token count; with `prefix`, only that
    many tokens continue after the first residual Add."""
    model = onnx.ModelProto()
    model.CopyFrom(head)
    graph = model.graph
    x = graph.input[0].name
    norm, conversions = _first_norm(graph, x)
    if norm is None:
        found = sorted({n.op_type for n in graph.node if x in n.input})
        raise CamInferError(f"vit-recipro needs the block after the cut to start with a LayerNormalization of the "
                            f"tokens (one op, or decomposed into ReduceMean, Sub, ..., Div, Mul, Add); the head "
                            f"reads them with {', '.join(found)}")
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    if not softmaxes:
        raise CamInferError("vit-recipro found no attention Softmax in the head graph")
    for softmax in softmaxes:
        _check_last_axis(softmax)
        _check_position_bias(graph, softmax, tokens)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if any(n.op_type == "Cast" for n in conversions) and opset < 15:
        raise CamInferError(f"vit-recipro opens reduced-precision transformers of opset 15 or later; this one has "
                            f"opset {opset}")
    b = Builder(opset, scope="mosaic")
    graph.input.extend([helper.make_tensor_value_info(INDEX, onnx.TensorProto.INT64, ["R", "S"]),
                        helper.make_tensor_value_info(WEIGHT, onnx.TensorProto.FLOAT, ["R", "S", 1]),
                        helper.make_tensor_value_info(BIAS, onnx.TensorProto.FLOAT, ["R", "S"])])
    stream, x_copies = _converted_copies(graph, conversions, x, _copies(b, x))
    _replace_uses(graph, stream, x_copies, keep=norm.readers)
    _prepend(graph, b)
    _copy_norm_uses(graph, norm.output, x_copies, opset)
    _bias_the_keys(graph, softmaxes, x, opset)
    _free_token_count(graph, tokens)
    if prefix:
        _keep_prefix_after_attention(graph, x_copies, prefix)
    for output in graph.output:
        output.type.tensor_type.shape.dim[0].dim_param = "rows"            # N·R: every image's copies
    del graph.value_info[:]
    return model


CONVERSIONS = ("Cast", "QuantizeLinear", "DequantizeLinear")


def quantizes_attention(head: onnx.ModelProto) -> bool:
    """Whether the head quantizes an attention Softmax's probabilities (then one key standing for m equal keys,
    probability m·p, is not quantized as m keys of p are: the reduced copies are not exact)."""
    softmax_outputs = {n.output[0] for n in head.graph.node if n.op_type == "Softmax"}
    return any(n.op_type == "QLinearSoftmax" or n.op_type == "QuantizeLinear" and n.input[0] in softmax_outputs
               for n in head.graph.node)


@dataclass(frozen=True)
class Norm:
    """The block's first LayerNorm: the nodes that read the stream (they keep reading the clean tokens) and the
    tensor of the normalised tokens (after the scale γ and the shift β)."""
    readers: tuple
    output: str


def _first_norm(graph: onnx.GraphProto, x: str) -> tuple[Norm | None, list[onnx.NodeProto]]:
    """The block's first LayerNorm, fused or decomposed, reading x directly or through per-element conversions (a Cast
    to float16, a QuantizeLinear–DequantizeLinear pair) that nothing else reads x through; and those conversions."""
    conversions, name = [], x
    for _ in range(4):
        users = [n for n in graph.node if name in n.input]
        norm = next((n for n in users if n.op_type == "LayerNormalization" and n.input[0] == name), None)
        if norm is not None:
            return Norm((norm,), norm.output[0]), conversions
        decomposed = _decomposed_norm(graph, name, users)
        if decomposed is not None:
            return decomposed, conversions
        if len(users) != 1 or users[0].op_type not in CONVERSIONS or users[0].input[0] != name:
            return None, conversions
        conversions.append(users[0])
        name = users[0].output[0]
    return None, conversions


# What a decomposed LayerNorm computes between x − μ and (x − μ)/σ: per-token ops only.
NORM_STEPS = {"Pow", "Mul", "ReduceMean", "Add", "Sqrt", "Div", "Reciprocal", "Max", "Identity", *CONVERSIONS}
MAX_NORM_STEPS = 16


def _decomposed_norm(graph: onnx.GraphProto, x: str, users: list) -> Norm | None:
    """A LayerNorm as exports below opset 17 write it: μ = ReduceMean(x) over the channels, read only by
    Sub(x, μ); the paths from x − μ meet again at (x − μ)/σ after a second ReduceMean over the channels (the
    variance); then the per-channel scale and shift. None when x is not read that way."""
    mean = next((n for n in users if n.op_type == "ReduceMean" and n.input[0] == x and _over_channels(graph, n)), None)
    if mean is None:
        return None
    centre = next((n for n in users if n.op_type == "Sub" and list(n.input) == [x, mean.output[0]]), None)
    if centre is None or _input_uses(graph).get(mean.output[0]) != 1:
        return None                                                         # μ read by the Sub alone
    met = _where_paths_meet(graph, centre.output[0])
    if met is None:
        return None
    normalised, steps = met
    if not any(n.op_type == "ReduceMean" and _over_channels(graph, n) for n in steps):
        return None                                                         # centred only, no variance
    return Norm((mean, centre), _through_scale_and_shift(graph, normalised))


def _over_channels(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    """A ReduceMean over the last axis of (N,T,D) tokens, dimensions kept (axes an attribute, or an input from
    opset 18)."""
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = constant_value(graph, node.input[1])
        axes = None if value is None else [int(a) for a in np.ravel(value)]
    keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
    return axes is not None and keepdims == 1 and [a % 3 for a in axes] == [2]


def _where_paths_meet(graph: onnx.GraphProto, start: str) -> tuple[str, list] | None:
    """The first tensor after `start` that every path from it passes through, and the nodes on the way (for
    x − μ: (x − μ)/σ, reached directly and through the variance). None when a node on the way is no per-token
    step of a norm, reads another tensor that is not a constant, or the paths do not meet within a few nodes."""
    uses = _input_uses(graph)
    outputs = {o.name for o in graph.output}
    open_uses = {start: uses.get(start, 0)}
    nodes = list(graph.node)
    first = next(k for k, n in enumerate(nodes) if start in n.output) + 1
    steps = []
    for node in nodes[first:]:
        if not any(name in open_uses for name in node.input):
            continue
        if node.op_type not in NORM_STEPS or len(steps) == MAX_NORM_STEPS:
            return None
        for name in node.input:
            if name in open_uses:
                open_uses[name] -= 1
                if open_uses[name] == 0:
                    del open_uses[name]
            elif name and not _is_constant(graph, name):
                return None                                        # another tensor mixed in: no norm of x alone
        steps.append(node)
        if any(o in outputs for o in node.output):
            return None
        open_uses.update({o: uses[o] for o in node.output if uses.get(o)})
        if list(open_uses) == [node.output[0]] and len(steps) > 1:
            return node.output[0], steps
    return None


def _through_scale_and_shift(graph: onnx.GraphProto, normalised: str) -> str:
    """The normalised tokens after the per-channel Mul by γ and Add of β that follow them (either optional, through
    per-element conversions): the LayerNorm's output."""
    uses, output, name = _input_uses(graph), normalised, normalised
    for _ in range(6):
        users = [n for n in graph.node if name in n.input]
        if len(users) != 1 or uses.get(name) != 1:
            break
        node, others = users[0], [i for i in users[0].input if i != name]
        if node.op_type in CONVERSIONS and node.input[0] == name:
            name = node.output[0]
        elif node.op_type in ("Mul", "Add") and len(others) == 1 and _per_channel(graph, others[0]):
            name = output = node.output[0]
        else:
            break
    return output


def _input_uses(graph: onnx.GraphProto) -> dict[str, int]:
    """How many node inputs read each tensor (a node reading one twice counts twice)."""
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    return uses


def _is_constant(graph: onnx.GraphProto, name: str) -> bool:
    """A constant, or a constant dequantized or cast (weights stored in int8 or float16)."""
    return _constant_shape(graph, name) is not None


def _per_channel(graph: onnx.GraphProto, name: str) -> bool:
    """A constant of one value per channel (or one value): shape (D,), (1,1,D), () — the same for every token."""
    shape = _constant_shape(graph, name)
    return shape is not None and int(np.prod(shape[:-1], dtype=np.int64)) == 1


def _constant_shape(graph: onnx.GraphProto, name: str, depth: int = 3) -> tuple | None:
    """The shape of a constant tensor, seen through per-element conversions of constants (a weight dequantized, an
    epsilon quantized and dequantized, a value cast); None when `name` is no constant."""
    value = constant_value(graph, name)
    if value is not None:
        return value.shape
    producer = next((n for n in graph.node if name in n.output), None)
    if depth == 0 or producer is None or producer.op_type not in CONVERSIONS:
        return None
    shapes = [_constant_shape(graph, i, depth - 1) for i in producer.input if i]
    return shapes[0] if all(shape is not None for shape in shapes) else None


def _converted_copies(graph: onnx.GraphProto, conversions: list, x: str, x_copies: str) -> tuple[str, str]:
    """(the tensor the norm reads, the copies converted the same way): the conversions run again on the copies
    (a copy's stream is quantized or cast as the model would, after the mosaic weights)."""
    if not conversions:
        return x, x_copies
    source = x_copies
    position = list(graph.node).index(conversions[-1]) + 1
    for k, node in enumerate(conversions):
        again = onnx.NodeProto()
        again.CopyFrom(node)
        again.name = f"{node.name}_copies"
        again.input[0] = source
        again.output[:] = [f"{node.output[0]}_copies"]
        source = again.output[0]
        graph.node.insert(position + k, again)
    return conversions[-1].output[0], source


def _copies(b: Builder, tokens: str) -> str:
    """Gather(tokens, index)·weight: (N,T,X) → (N·R,S,X), the weight cast like the tokens."""
    gathered = b.op("Gather", tokens, INDEX, axis=1)
    weight = WEIGHT if b.opset < 15 else b.op("CastLike", WEIGHT, gathered, hint="weight")
    gathered = b.op("Mul", gathered, weight, hint="weighted")                                  # (N,R,S,X)
    rows = b.op("Shape", INDEX, hint="rows")
    width = b.op("Slice", b.op("Shape", tokens), b.ints([2]), b.ints([3]), hint="width")
    slots = b.op("Slice", rows, b.ints([1]), b.ints([2]), hint="slots")
    return b.op("Reshape", gathered, b.op("Concat", b.ints([-1]), slots, width, axis=0), hint="copies")


def _copy_norm_uses(graph: onnx.GraphProto, norm: str, x_copies: str, opset: int) -> None:
    """Projections MatMul(norm, W) gathered after the product; Shape(norm) read on the stream's copies (the same
    shape); any other use of the norm reads its copies."""
    others = []
    for node in [n for n in graph.node if norm in n.input]:
        if node.op_type == "Shape":
            node.input[0] = x_copies
        elif node.op_type == "MatMul" and node.input[0] == norm and _is_matrix(graph, node.input[1]):
            b = Builder(opset, scope=f"mosaic_{node.output[0]}")
            copies = _copies(b, node.output[0])
            _replace_uses(graph, node.output[0], copies)
            _insert_after(graph, node, b)
        else:
            others.append(node)
    if others:
        b = Builder(opset, scope="mosaic_norm")
        copies = _copies(b, norm)
        for node in others:
            node.input[:] = [copies if name == norm else name for name in node.input]
        _insert_after(graph, next(n for n in graph.node if norm in n.output), b)


def _bias_the_keys(graph: onnx.GraphProto, softmaxes: list, x: str, opset: int) -> None:
    """Add key_bias, repeated for every image and broadcast over heads and queries, to each Softmax's logits."""
    b = Builder(opset, scope="key_bias")
    images = b.op("Slice", b.op("Shape", x), b.ints([0]), b.ints([1]), hint="images")
    repeated = b.op("Expand", b.unsqueeze(BIAS, [0]), b.op("Concat", images, b.op("Shape", BIAS), axis=0))
    slots = b.op("Slice", b.op("Shape", BIAS), b.ints([1]), b.ints([2]), hint="slots")
    bias = b.op("Reshape", repeated, b.op("Concat", b.ints([-1, 1, 1]), slots, axis=0), hint="bias")   # (N·R,1,1,S)
    for softmax in softmaxes:
        like = bias if b.opset < 15 else b.op("CastLike", bias, softmax.input[0], hint="like")
        biased = b.op("Add", softmax.input[0], like, hint="biased")
        softmax.input[0] = biased
        for node in b.nodes[len(b.nodes) - (1 if b.opset < 15 else 2):]:
            graph.node.insert(list(graph.node).index(softmax), node)
        del b.nodes[len(b.nodes) - (1 if b.opset < 15 else 2):]
    _prepend(graph, b)


def _is_matrix(graph: onnx.GraphProto, name: str) -> bool:
    value = constant_value(graph, name)
    return value is not None and value.ndim == 2


def _replace_uses(graph: onnx.GraphProto, old: str, new: str, keep: tuple = ()) -> None:
    """Every node of the graph but those in `keep` reads `new` instead of `old` (call it before adding `new`'s
    producers)."""
    for node in graph.node:
        if all(node is not k for k in keep):
            node.input[:] = [new if name == old else name for name in node.input]


def _prepend(graph: onnx.GraphProto, b: Builder) -> None:
    for node in reversed(b.nodes):
        graph.node.insert(0, node)
    graph.initializer.extend(b.initializers)
    b.nodes, b.initializers = [], []


def _insert_after(graph: onnx.GraphProto, node: onnx.NodeProto, b: Builder) -> None:
    position = list(graph.node).index(node) + 1
    for k, new in enumerate(b.nodes):
        graph.node.insert(position + k, new)
    graph.initializer.extend(b.initializers)


def _check_last_axis(softmax: onnx.NodeProto) -> None:
    axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
    if axis not in (-1, 3):
        raise CamInferError(f"vit-recipro needs attention Softmax over the keys (last axis); '{softmax.name}' uses "
                            f"axis {axis}")


def _check_position_bias(graph: onnx.GraphProto, softmax: onnx.NodeProto, tokens: int) -> None:
    """Refuse a constant added to the attention logits over the token positions, (..., T, T): a relative position
    bias differs between the zeroed tokens the reduced tail merges into one, so no key bias can stand for them.
    One with a single value everywhere (the all-zero mask a dynamo export folds in) is the same for every pair of
    tokens: it is added as that scalar, which the reduced tail's S tokens broadcast."""
    constants = {i.name: i for i in graph.initializer}
    constants.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant"
                      for a in n.attribute if a.name == "value"})
    producer = {o: n for n in graph.node for o in n.output}
    frontier, seen = [softmax.input[0]], set()
    while frontier:
        node = producer.get(frontier.pop())
        if node is None or node.name in seen or node.op_type not in ("Add", "Mul", "Div", "Cast", "CastLike"):
            continue
        seen.add(node.name)
        for k, name in enumerate(node.input):
            shape = tuple(constants[name].dims) if name in constants else None
            if node.op_type == "Add" and shape is not None and len(shape) >= 2 and shape[-2:] == (tokens, tokens):
                values = numpy_helper.to_array(constants[name])
                if np.ptp(values) == 0:
                    scalar = f"{name}__one_value"
                    if not any(i.name == scalar for i in graph.initializer):            # several blocks share it
                        graph.initializer.append(numpy_helper.from_array(values.reshape(-1)[:1].reshape(()), scalar))
                    node.input[k] = scalar
                    continue
                raise CamInferError(f"vit-recipro cannot run on this block: its attention adds '{name}' of shape "
                                    f"{list(shape)} over the {tokens} token positions (a position bias), which differs "
                                    "between the zeroed tokens the method merges; the other methods are not affected")
            frontier.append(name)


def _keep_prefix_after_attention(graph: onnx.GraphProto, x: str, prefix: int) -> None:
    """Only the first `prefix` tokens leave the first residual sum x + attn(...): the attention's output projection
    and the residual's x are cut to them (the attention itself keeps every token); where the projection cannot be
    found, the sum itself is cut."""
    add = next((n for n in graph.node if n.op_type == "Add" and x in n.input), None)
    if add is None:
        raise CamInferError("vit-recipro found no residual Add of the cut tokens in the head graph")
    projection = _output_projection(graph, next(n for n in graph.node if n.op_type == "Softmax"))
    if projection is None:
        kept = f"{add.output[0]}_prefix"
        _replace_uses(graph, add.output[0], kept)
        graph.node.insert(list(graph.node).index(add) + 1, _first_tokens(graph, add.output[0], kept, prefix, 1))
        return
    heads = f"{projection.input[0]}_prefix"
    graph.node.insert(list(graph.node).index(projection), _first_tokens(graph, projection.input[0], heads, prefix, 1))
    projection.input[0] = heads
    stream = f"{x}_prefix"
    graph.node.insert(list(graph.node).index(add), _first_tokens(graph, x, stream, prefix, 1))
    add.input[:] = [stream if name == x else name for name in add.input]


def _output_projection(graph: onnx.GraphProto, softmax: onnx.NodeProto) -> onnx.NodeProto | None:
    """The MatMul by a constant matrix that projects the heads' outputs back to the stream: after the attention's
    product with the values, through the Transpose and Reshape that merge the heads."""
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    node, seen_values = softmax, False
    for _ in range(6):
        following = consumers.get(node.output[0], [])
        if len(following) != 1:
            return None
        node = following[0]
        if node.op_type == "MatMul" and not seen_values:
            seen_values = True
        elif node.op_type == "MatMul":
            return node if node.input[0] != "" and _is_matrix(graph, node.input[1]) else None
        elif node.op_type not in ("Transpose", "Reshape"):
            return None
    return None


def _first_tokens(graph: onnx.GraphProto, tensor: str, output: str, count: int, axis: int) -> onnx.NodeProto:
    names = [f"{output}_{part}" for part in ("start", "end", "axis")]
    graph.initializer.extend(numpy_helper.from_array(np.array([v], np.int64), name)
                             for name, v in zip(names, (0, count, axis)))
    return helper.make_node("Slice", [tensor, *names], [output])


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
