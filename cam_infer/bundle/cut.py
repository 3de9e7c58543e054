"""Cutting an ONNX graph in two at a target tensor: the `features` and `head` subgraphs, with the nodes at
both boundaries that make them take and return float32 NCHW (casts for float16, a transpose for NHWC,
round/clip/cast for integer inputs, DequantizeLinear/QuantizeLinear at a quantized cut) and a released
batch axis where the source hard-codes one.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import CamInferError
from ..version import __version__
from .anatomy import dequantized_source, quantization_of, score_output
from .graph import INTEGER_TYPES, Graph, InputSpec, TensorInfo, make_tensor_value_info
from .layers import TargetLayer
from .shapes_at_cut import rebuild, rebuildable

BOUNDARY_FLOATS = (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


def activation_name(target: TargetLayer) -> str:
    """The name of the float NCHW activation `features` returns."""
    name = target.tensor
    if target.quantization is not None:
        name += "__dequantized"
    if target.layout == "NHWC":
        name += "__nchw"
    return name


def extract(graph: Graph, target: TargetLayer, batch_mode: str) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    batch_dim: str | int = "N" if batch_mode == "dynamic" else graph.fixed_batch
    scores = score_output(graph).tensor
    tensor = target.tensor
    image = graph.info(graph.image_input.name)
    activation = graph.info(tensor)
    scores_info = graph.info(scores)
    if scores_info.elem_type == TensorProto.UNDEFINED:
        scores_info = TensorInfo(scores, graph.scores_output.type.tensor_type.elem_type, None)
    features = _subgraph(graph, graph.nodes_computing([tensor], stop=set()), "features",
                         [make_tensor_value_info(image, batch_dim)], [make_tensor_value_info(activation, batch_dim)])
    shapes = rebuildable(graph, graph.ancestors(tensor), tensor)
    head_nodes = graph.nodes_computing([scores], stop={tensor, *shapes})
    head = _subgraph(graph, head_nodes, "head",
                     [make_tensor_value_info(activation, batch_dim)], [make_tensor_value_info(scores_info, batch_dim)])
    read = {i for idx in head_nodes for i in graph.node_inputs[idx]}
    _rebuild_shapes(head, {name: shape for name, shape in shapes.items() if name in read}, tensor)
    _adapt_activation(graph, features, head, target)
    _adapt_image_input(features, graph.input_spec)
    if scores_info.rank == 1:
        _give_scores_a_batch_axis(head, scores_info, batch_dim)
    for part in (features, head):
        if batch_mode == "dynamic" and graph.fixed_batch is not None:
            _release_batch(part, graph.fixed_batch)
        _float32_boundary(part)
    return features, head


def float_view(graph: Graph, model: onnx.ModelProto, tensor: str) -> str:
    """Append to `model` what turns a cut tensor into float32 for the methods (DequantizeLinear with its own scale
    for an int8 tensor, a Cast for a float16 one) and return the float tensor's name."""
    dtype = graph.info(tensor).elem_type
    if dtype in INTEGER_TYPES:
        quant = _cut_quantization(graph, tensor)
        model.graph.node.append(helper.make_node("DequantizeLinear", [tensor, *_qparams(quant)],
                                                 [f"{tensor}__float"], name=f"{tensor}__dequantize", **_axis(quant)))
        _extend_constants(graph, model, _qparam_tensors(graph, quant))
    elif dtype in BOUNDARY_FLOATS:
        model.graph.node.append(helper.make_node("Cast", [tensor], [f"{tensor}__float"], to=TensorProto.FLOAT,
                                                 name=f"{tensor}__to_float"))
    else:
        return tensor
    return f"{tensor}__float"


def as_the_model_reads(graph: Graph, tensor: str, source: str, result: str, name: str):
    """Nodes (and the constants they need) that turn `source`, cut tensor `tensor` given in float32, into `result`
    as the unsplit model had it: re-quantized with the tensor's own scale and zero point (int8), cast (float16),
    or, for the float output of an int8 QDQ graph's DequantizeLinear, through a QuantizeLinear → DequantizeLinear
    pair. That pair changes no value (they are dequantized steps already), but the runtime then sees the pattern it
    fuses into integer kernels, as in the unsplit model: without it the first convolutions after the cut run in
    float and the output moves by rounding. ([], []) when the float32 tensor is what the model reads."""
    dtype = graph.info(tensor).elem_type
    origin = dequantized_source(graph, tensor)
    if dtype in INTEGER_TYPES:
        quant = _cut_quantization(graph, tensor)
        nodes = [helper.make_node("QuantizeLinear", [source, *_qparams(quant)], [result], name=f"{name}_quantize",
                                  **_axis(quant))]
    elif dtype in BOUNDARY_FLOATS:
        return [helper.make_node("Cast", [source], [result], to=dtype, name=f"{name}_cast")], []
    elif origin is not None and (quant := quantization_of(graph, origin)) is not None:
        nodes = [helper.make_node("QuantizeLinear", [source, *_qparams(quant)], [f"{result}__requantized"],
                                  name=f"{name}_quantize", **_axis(quant)),
                 helper.make_node("DequantizeLinear", [f"{result}__requantized", *_qparams(quant)], [result],
                                  name=f"{name}_dequantize", **_axis(quant))]
    else:
        return [], []
    return nodes, _qparam_tensors(graph, quant)


def _cut_quantization(graph: Graph, tensor: str):
    quant = quantization_of(graph, tensor)
    if quant is None:
        raise CamInferError(f"cut tensor '{tensor}' is an integer tensor whose scale and zero point cannot be read; "
                            "cut at another tensor")
    return quant


def _qparams(quant) -> list[str]:
    return [quant.scale] + ([quant.zero_point] if quant.zero_point else [])


def _axis(quant) -> dict:
    return {} if quant.axis is None else {"axis": quant.axis}


def _qparam_tensors(graph: Graph, quant) -> list[onnx.TensorProto]:
    return [graph.initializers[c] for c in _qparams(quant) if c in graph.initializers]


def _rebuild_shapes(head: onnx.ModelProto, shapes: dict, tensor: str) -> None:
    """Shapes of tensors before the cut that the head reads, computed from the cut's batch (`shapes_at_cut`)."""
    if not shapes:
        return
    nodes, initializers = rebuild(shapes, tensor)
    for i, node in enumerate(nodes):
        head.graph.node.insert(i, node)
    head.graph.initializer.extend(initializers)


def _adapt_activation(graph: Graph, features: onnx.ModelProto, head: onnx.ModelProto, target: TargetLayer) -> None:
    """Give the methods a float NCHW activation: DequantizeLinear (and a Transpose for NHWC maps) at the end
    of `features`; the inverse at the start of `head`, which then reads exactly what the model had."""
    quant, tensor = target.quantization, target.tensor
    if quant is None and target.layout != "NHWC":      # NCHW maps and tokens (seen as a grid by the backends)
        return
    name = activation_name(target)
    constants = [graph.initializers[c] for c in (quant.scale, quant.zero_point) if quant and c in graph.initializers]
    axis = {} if quant is None or quant.axis is None else {"axis": quant.axis}
    qparams = [] if quant is None else [quant.scale] + ([quant.zero_point] if quant.zero_point else [])
    # features: tensor → [DequantizeLinear] → [Transpose to NCHW] → name
    f, last = features.graph, tensor
    if quant is not None:
        f.node.append(helper.make_node("DequantizeLinear", [last, *qparams], [f"{tensor}__dequantized"],
                                       name=f"{tensor}__dequantize", **axis))
        last = f"{tensor}__dequantized"
    if target.layout == "NHWC":
        f.node.append(layout_change(features, last, name, f"{tensor}__to_nchw", to="NCHW"))
    _extend_constants(graph, features, constants)
    _retype_output(f.output[0], name, target.layout)
    # head: name → [Transpose back] → [QuantizeLinear] → tensor
    h, first = head.graph, name
    front = []
    if target.layout == "NHWC":
        back = f"{tensor}__nhwc" if quant is not None else tensor
        front.append(layout_change(head, first, back, f"{tensor}__to_nhwc", to="NHWC"))
        first = back
    if quant is not None:
        front.append(helper.make_node("QuantizeLinear", [first, *qparams], [tensor], name=f"{tensor}__quantize",
                                      **axis))
    for i, node in enumerate(front):
        h.node.insert(i, node)
    _extend_constants(graph, head, constants)
    _retype_output(h.input[0], name, target.layout)


def _give_scores_a_batch_axis(head: onnx.ModelProto, info: TensorInfo, batch_dim: str | int) -> None:
    """Scores without a batch axis ((C,): a Reshape to [-1] in a batch-1 model) are reshaped to (N, C) at the
    end of the head, N read from its input, so that the head returns one row of scores per image."""
    g, scores = head.graph, info.name
    flat = f"{scores}__without_batch_axis"
    _rename_uses(g, scores, flat, outputs=True)
    batch, shape = f"{scores}__batch", f"{scores}__shape"
    g.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), f"{scores}__batch_index"),
                          numpy_helper.from_array(np.array([-1], np.int64), f"{scores}__per_image")])
    g.node.extend([
        helper.make_node("Shape", [g.input[0].name], [f"{scores}__input_shape"], name=f"{scores}__input_shape"),
        helper.make_node("Gather", [f"{scores}__input_shape", f"{scores}__batch_index"], [batch], name=batch, axis=0),
        helper.make_node("Concat", [batch, f"{scores}__per_image"], [shape], name=shape, axis=0),
        helper.make_node("Reshape", [flat, shape], [scores], name=f"{scores}__with_batch_axis"),
    ])
    g.output[0].CopyFrom(helper.make_tensor_value_info(scores, info.elem_type, [batch_dim, info.shape[0]]))


def layout_change(model: onnx.ModelProto, source: str, result: str, name: str, *, to: str) -> onnx.NodeProto:
    """NCHW ↔ NHWC at a boundary the split adds, as an Einsum (a Transpose where the opset has none, below 12).
    Not a Transpose: ONNX Runtime's transpose optimizer would cancel it against the model's own Transpose next
    to it, and then fuse the int8 ops around them differently from the whole model (an integer QLinearConv
    where the model runs Conv + QuantizeLinear): results one quantization step off, growing layer by layer."""
    equation = "nchw->nhwc" if to == "NHWC" else "nhwc->nchw"
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 12:
        return helper.make_node("Transpose", [source], [result], name=name,
                                perm=[0, 2, 3, 1] if to == "NHWC" else [0, 3, 1, 2])
    return helper.make_node("Einsum", [source], [result], name=name, equation=equation)


def _extend_constants(graph: Graph, model: onnx.ModelProto, constants) -> None:
    present = {t.name for t in model.graph.initializer}
    model.graph.initializer.extend(c for c in constants if c.name not in present)
    # a scale or zero point made by a Constant node (not an initializer) is copied with it
    needed = {i for n in model.graph.node for i in n.input} - present - {c.name for c in constants}
    produced = {o for n in model.graph.node for o in n.output}
    for name in needed - produced:
        idx = graph.producer.get(name)
        if idx is not None and graph.nodes[idx].op_type == "Constant":
            model.graph.node.insert(0, graph.nodes[idx])


def _retype_output(value_info: onnx.ValueInfoProto, name: str, layout: str) -> None:
    """The boundary tensor as the methods see it: float32, NCHW."""
    value_info.name = name
    value_info.type.tensor_type.elem_type = TensorProto.FLOAT
    if layout == "NHWC":
        _permute_dims(value_info, [0, 3, 1, 2])


def _permute_dims(value_info: onnx.ValueInfoProto, order: list[int]) -> None:
    dims = value_info.type.tensor_type.shape.dim
    values = [(d.dim_param, d.dim_value) for d in dims]
    for dim, k in zip(dims, order):
        param, value = values[k]
        dim.Clear()
        if param:
            dim.dim_param = param
        else:
            dim.dim_value = value


def _adapt_image_input(features: onnx.ModelProto, spec: InputSpec) -> None:
    """`features` takes float32 NCHW: transpose to NHWC, and round, clip and cast to an integer input."""
    if spec.layout == "NCHW" and spec.dtype not in INTEGER_TYPES.values():
        return                                   # float16 NCHW inputs: `_float32_boundary` casts
    g = features.graph
    vi = g.input[0]
    current = f"{spec.name}__float_nchw"
    nodes = []
    if spec.layout == "NHWC":
        nodes.append(layout_change(features, spec.name, current, "image__to_nhwc", to="NHWC"))
    else:
        nodes.append(helper.make_node("Identity", [spec.name], [current], name="image__float"))
    if spec.dtype in ("float16", "bfloat16", "float64"):
        nodes.append(helper.make_node("Cast", [current], [f"{spec.name}__source"], to=spec.elem_type,
                                      name="image__cast"))
        source = f"{spec.name}__source"
    elif spec.dtype in INTEGER_TYPES.values():
        info = np.iinfo(spec.dtype)
        low, high = f"{spec.name}__min", f"{spec.name}__max"
        g.initializer.extend([numpy_helper.from_array(np.array(info.min, np.float32), low),
                              numpy_helper.from_array(np.array(info.max, np.float32), high)])
        nodes += [helper.make_node("Round", [current], [f"{current}_round"], name="image__round"),
                  helper.make_node("Clip", [f"{current}_round", low, high], [f"{current}_clip"], name="image__clip"),
                  helper.make_node("Cast", [f"{current}_clip"], [f"{spec.name}__source"], to=spec.elem_type,
                                   name="image__cast")]
        source = f"{spec.name}__source"
    else:
        source = current
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == spec.name:
                node.input[i] = source
    for i, node in enumerate(nodes):
        g.node.insert(i, node)
    if spec.layout == "NHWC":
        _permute_dims(vi, [0, 3, 1, 2])
    vi.type.tensor_type.elem_type = TensorProto.FLOAT


def _subgraph(graph: Graph, node_ids: list[int], name: str, inputs, outputs) -> onnx.ModelProto:
    used = {i for idx in node_ids for i in graph.node_inputs[idx]}
    initializers = [t for n, t in graph.initializers.items() if n in used]
    body = helper.make_graph([graph.nodes[i] for i in node_ids], name, inputs, outputs, initializer=initializers)
    model = helper.make_model(body, opset_imports=list(graph.model.opset_import),
                              ir_version=max(graph.model.ir_version, 4), producer_name="cam-infer",
                              producer_version=__version__)
    model.functions.extend(graph.model.functions)
    return model


def _constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


def _release_batch(model: onnx.ModelProto, fixed: int) -> int:
    """Make Reshape targets that hard-code the batch copy it from their input (0 in ONNX Reshape)."""
    g = model.graph
    changed = 0
    for node in g.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        if any(a.name == "allowzero" and a.i == 1 for a in node.attribute):
            continue
        shape = _constant_value(g, node.input[1])
        if shape is None or shape.ndim != 1 or shape.size == 0 or shape[0] != fixed:
            continue
        released = shape.astype(np.int64).copy()
        released[0] = 0
        name = f"{node.input[1]}__any_batch_{changed}"
        g.initializer.append(numpy_helper.from_array(released, name))
        node.input[1] = name
        changed += 1
    return changed


def _rename_uses(g: onnx.GraphProto, old: str, new: str, *, outputs: bool) -> None:
    for node in g.node:
        names = node.output if outputs else node.input
        for i, n in enumerate(names):
            if n == old:
                names[i] = new
        if outputs:  # the tensor's readers follow its new name
            for i, n in enumerate(node.input):
                if n == old:
                    node.input[i] = new


def _float32_boundary(model: onnx.ModelProto) -> None:
    g = model.graph
    for vi in g.input:
        dtype = vi.type.tensor_type.elem_type
        if dtype in BOUNDARY_FLOATS:
            inner = f"{vi.name}__{TensorProto.DataType.Name(dtype).lower()}"
            _rename_uses(g, vi.name, inner, outputs=False)
            g.node.insert(0, helper.make_node("Cast", [vi.name], [inner], to=dtype, name=f"{inner}_cast"))
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    for vi in g.output:
        dtype = vi.type.tensor_type.elem_type
        if dtype in BOUNDARY_FLOATS:
            inner = f"{vi.name}__{TensorProto.DataType.Name(dtype).lower()}"
            _rename_uses(g, vi.name, inner, outputs=True)
            g.node.append(helper.make_node("Cast", [inner], [vi.name], to=TensorProto.FLOAT, name=f"{inner}_cast"))
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
