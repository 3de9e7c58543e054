"""An IR transformer's head graph opened up for mosaic copies (ViT Recipro-CAM, `methods.vit_recipro`): what
`reduced_tail` does to an ONNX head, done to OpenVINO's graph.

Inputs: the stream x (N,T,D) and the plan, ``copy_index`` (R,S), ``copy_weight`` (R,S,1), ``key_bias`` (R,S); output:
N·R rows of scores, image by image. Inside:

- every use of x but the block's first normalisation reads the copies  Gather(x, index)·weight  (N·R,S,D);
- the normalisation (MVN, then its per-channel Multiply and Add) runs once on the T clean tokens; a MatMul of it by a
  constant (the q, k, v projections) too, gathered after ((g·n)·W = g·(n·W)); any other use reads the norm's copies;
- key_bias is added to the attention logits: to a Softmax's input, or to a fused attention op's mask;
- Reshape targets that spell T on the token axis copy the batch and token count from their input (0);
- optionally (``prefix``), only the first tokens continue after the block's attention (its output projection and
  the residual's x cut to them), for a class-token head after a single block.
"""

from __future__ import annotations

import numpy as np

from ..errors import CamInferError

NORM_AFFINE = ("Multiply", "Add")


def reduced_tail_ir(head_path, tokens: int, prefix: int = 0):
    """The head IR with inputs (x, copy_index, copy_weight, key_bias) and a free token count, as an ``ov.Model``."""
    import openvino as ov
    import openvino.opset13 as ops

    from ..backends.sessions import openvino_model
    head = openvino_model(head_path)
    x = head.get_parameters()[0].output(0)
    index = ops.parameter([-1, -1], np.int64, name="copy_index")
    weight = ops.parameter([-1, -1, 1], np.float32, name="copy_weight")
    bias = ops.parameter([-1, -1], np.float32, name="key_bias")
    plan = (index.output(0), weight.output(0))
    norm, normalised = _first_norm(x)
    attention = [op for op in head.get_ordered_ops() if op.get_type_name() in ("Softmax", "ScaledDotProductAttention")]
    if not attention:
        raise CamInferError("vit-recipro found no attention (Softmax or ScaledDotProductAttention) in the head graph")
    x_copies = _copies(x, *plan)
    _read_instead(x, x_copies, keep=norm)
    _copy_norm_uses(normalised, plan)
    for op in attention:
        _refuse_position_bias(op, tokens)
    for op in attention:
        _bias_the_keys(op, _bias_per_copy(x, bias.output(0)))
    _free_token_count(head, tokens)
    if prefix:
        _keep_prefix_after_attention(attention[0], x_copies, prefix)
    return ov.Model([r.input_value(0) for r in head.get_results()], [head.get_parameters()[0], index, weight, bias],
                    "reduced-tail")


def _first_norm(x):
    """(the MVN reading x, the output of its affine part: MVN → Multiply(γ) → Add(β), either optional)."""
    readers = [i.get_node() for i in x.get_target_inputs()]
    norm = next((op for op in readers if op.get_type_name() == "MVN"), None)
    if norm is None:
        found = sorted({op.get_type_name() for op in readers})
        raise CamInferError(f"vit-recipro needs the block after the cut to start with a normalisation (MVN) of the "
                            f"tokens; the head reads them with {', '.join(found)}")
    out = norm.output(0)
    for kind in NORM_AFFINE:
        following = [i.get_node() for i in out.get_target_inputs()]
        if len(following) == 1 and following[0].get_type_name() == kind and _has_constant(following[0]):
            out = following[0].output(0)
    return norm, out


def _has_constant(op) -> bool:
    """Whether an input of `op` is a constant (or a constant converted: weights stored in float16)."""
    from .openvino_split import is_constant
    return any(is_constant(value) for value in op.input_values())


def _copies(tokens, index, weight):
    """Gather(tokens, index, axis 1)·weight: (N,T,X) → (N·R,S,X)."""
    import openvino.opset13 as ops
    gathered = ops.multiply(ops.gather(tokens, index, ops.constant(np.array(1, np.int64))), weight)   # (N,R,S,X)
    slots = ops.gather(ops.shape_of(index), ops.constant(np.array([1], np.int64)), ops.constant(np.array(0, np.int64)))
    width = ops.gather(ops.shape_of(tokens), ops.constant(np.array([2], np.int64)), ops.constant(np.array(0, np.int64)))
    shape = ops.concat([ops.constant(np.array([-1], np.int64)), slots, width], 0)
    return ops.reshape(gathered, shape, False).output(0)


def _read_instead(old, new, keep=None) -> None:
    """Every reader of `old` but `keep` (and the ops that make `new`) reads `new`."""
    makers = _made_from(new, old)
    for reader in list(old.get_target_inputs()):
        node = reader.get_node()
        if node is not keep and node.get_friendly_name() not in makers:
            reader.replace_source_output(new)


def _made_from(value, source) -> set[str]:
    """Names of the ops between `source` and `value` (those that compute `value` from it)."""
    names, stack = set(), [value.get_node()]
    while stack:
        node = stack.pop()
        if node.get_friendly_name() in names or node == source.get_node():
            continue
        names.add(node.get_friendly_name())
        stack.extend(v.get_node() for v in node.input_values())
    return names


def _copy_norm_uses(normalised, plan) -> None:
    """A MatMul of the norm by a constant runs on the clean tokens and is gathered after; any other use of the norm
    reads its copies."""
    others = []
    for reader in list(normalised.get_target_inputs()):
        node = reader.get_node()
        if node.get_type_name() == "MatMul" and reader.get_index() == 0 and _has_constant(node):
            product = node.output(0)
            _read_instead(product, _copies(product, *plan))
        else:
            others.append(reader)
    if others:
        copies = _copies(normalised, *plan)
        for reader in others:
            reader.replace_source_output(copies)


def _bias_per_copy(x, bias):
    """key_bias (R,S) repeated for every image, (N·R,1,1,S): broadcast over heads and queries."""
    import openvino.opset13 as ops
    zero = ops.constant(np.array(0, np.int64))
    images = ops.gather(ops.shape_of(x), ops.constant(np.array([0], np.int64)), zero)
    repeated = ops.broadcast(ops.unsqueeze(bias, zero), ops.concat([images, ops.shape_of(bias)], 0))
    slots = ops.gather(ops.shape_of(bias), ops.constant(np.array([1], np.int64)), zero)
    return ops.reshape(repeated, ops.concat([ops.constant(np.array([-1, 1, 1], np.int64)), slots], 0), False).output(0)


def _refuse_position_bias(op, tokens: int) -> None:
    """Refuse a constant added to the attention logits over the token positions, (..., T, T) — before a Softmax or
    as a fused attention op's mask: a relative position bias differs between the zeroed tokens the reduced tail
    merges into one, so no key bias can stand for them."""
    if op.get_type_name() == "Softmax":
        frontier = [op.input_value(0).get_node()]
    else:
        frontier = [value.get_node() for value in op.input_values()[3:4]]
    seen = set()
    while frontier:
        node = frontier.pop()
        kind = node.get_type_name()
        if node.get_friendly_name() in seen or kind not in ("Add", "Multiply", "Divide", "Convert", "Constant"):
            continue
        seen.add(node.get_friendly_name())
        shape = node.get_output_partial_shape(0)
        if kind in ("Constant", "Convert") and shape.is_static and len(shape) >= 2 and \
                [d.get_length() for d in shape][-2:] == [tokens, tokens]:
            raise CamInferError(f"vit-recipro cannot run on this block: its attention adds "
                                f"'{node.get_friendly_name()}' of shape {[d.get_length() for d in shape]} over the "
                                f"{tokens} token positions (a position bias), which differs between the zeroed "
                                "tokens the method merges; the other methods are not affected")
        if kind != "Constant":
            frontier.extend(value.get_node() for value in node.input_values())


def _bias_the_keys(op, bias) -> None:
    """key_bias added to the attention logits: a Softmax's input, or the mask of a fused attention op."""
    import openvino.opset13 as ops
    if op.get_type_name() == "Softmax":
        axis = op.get_attributes().get("axis", -1)
        rank = op.get_output_partial_shape(0).rank.get_length()
        if axis not in (-1, rank - 1):
            raise CamInferError(f"vit-recipro needs attention Softmax over the keys (last axis); "
                                f"'{op.get_friendly_name()}' uses axis {axis}")
        logits = op.input_value(0)
        op.input(0).replace_source_output(ops.add(logits, ops.convert_like(bias, logits)).output(0))
        return
    q, k, v, *rest = op.input_values()
    if op.get_attributes().get("causal") or rest and rest[0].get_element_type().get_type_name() == "boolean":
        raise CamInferError(f"vit-recipro reads an image model's attention; '{op.get_friendly_name()}' is causal or "
                            "boolean-masked")
    if rest:
        op.input(3).replace_source_output(ops.add(rest[0], ops.convert_like(bias, rest[0])).output(0))
        return
    fused = ops.scaled_dot_product_attention(q, k, v, ops.convert_like(bias, q), causal=False)
    for reader in list(op.output(0).get_target_inputs()):
        reader.replace_source_output(fused.output(0))


def _free_token_count(model, tokens: int) -> None:
    """Reshape targets (N,T,...) that spell T on axis 1 copy the batch and the token count from their input instead."""
    import openvino.opset13 as ops
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Reshape" or op.input_value(1).get_node().get_type_name() != "Constant":
            continue
        shape = op.input_value(1).get_node().get_data()
        if shape.ndim == 1 and len(shape) >= 2 and shape[1] == tokens:
            freed = np.array(shape, copy=True)
            freed[:2] = 0
            op.input(1).replace_source_output(ops.constant(freed).output(0))
            op.set_special_zero(True)


def _keep_prefix_after_attention(attention, x_copies, prefix: int) -> None:
    """Only the first `prefix` tokens leave the first residual sum x + attn(...): the attention's output projection
    (the MatMul by a constant after it, through the Transpose and Reshape that merge the heads) and the residual's x
    cut to them; where the projection cannot be found, the sum itself is cut."""
    import openvino.opset13 as ops

    def first_tokens(value):
        constant = [ops.constant(np.array([v], np.int64)) for v in (0, prefix, 1, 1)]
        return ops.slice(value, *constant).output(0)

    residual = next((i.get_node() for i in x_copies.get_target_inputs() if i.get_node().get_type_name() == "Add"), None)
    if residual is None:
        raise CamInferError("vit-recipro found no residual Add of the cut tokens in the head graph")
    projection = _output_projection(attention)
    if projection is None:
        _read_instead(residual.output(0), first_tokens(residual.output(0)))
        return
    projection.input(0).replace_source_output(first_tokens(projection.input_value(0)))
    for i, value in enumerate(residual.input_values()):
        if value.get_node() == x_copies.get_node() and value.get_index() == x_copies.get_index():
            residual.input(i).replace_source_output(first_tokens(x_copies))


def _output_projection(attention):
    """The MatMul by a constant after the attention, through the ops that merge the heads; None if not found."""
    node = attention
    for _ in range(6):
        readers = list(node.output(0).get_target_inputs())
        if len(readers) != 1:
            return None
        reader, node = readers[0], readers[0].get_node()
        if node.get_type_name() == "MatMul" and _has_constant(node) and reader.get_index() == 0:
            return node
    return None
