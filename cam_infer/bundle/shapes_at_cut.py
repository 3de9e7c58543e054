"""Shapes the head reads from before the cut, rebuilt after it.

Exports that reshape with sizes read at run time (the legacy exporter's ``x.view(B, H*W, C)`` after a
``Shape`` of an earlier tensor; Hugging Face embeddings that read the input's shape) make the head depend on a
tensor computed before the cut, though only through its *shape*. At the bundle's fixed input size that shape is
known except the batch: ``Shape(t)`` = [N, d1, …] with N the cut's own batch. Such a ``Shape`` is no skip
connection: the head computes it as ``Concat(Shape(cut)[0:1], [d1, …])`` (sliced as the node's ``start``/``end``
say), and the split's verification checks the head on batches 1 and 3 as always.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from .graph import Graph


def rebuildable(graph: Graph, before: set[str], cut: str) -> dict[str, list[int]]:
    """Shape outputs (name → the shape's values after the batch, sliced) of tensors computed before `cut` whose
    sizes other than the batch are known."""
    found = {}
    for node in graph.nodes:
        if node.op_type != "Shape" or node.input[0] == cut or node.input[0] not in before:
            continue
        shape = graph.info(node.input[0]).shape
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            continue
        attrs = {a.name: a.i for a in node.attribute}
        start, end = attrs.get("start", 0), attrs.get("end", len(shape))
        start, end = (s + len(shape) if s < 0 else s for s in (start, end))
        found[node.output[0]] = (start, [int(d) for d in shape[max(start, 1):end]])
    return found


def shape_only(graph: Graph, tensor: str, shapes: dict) -> bool:
    """True when `tensor` depends on the image only through the rebuildable `shapes` (shape arithmetic: Gather,
    Concat, Mul... of them and constants)."""
    if tensor in shapes:
        return True
    if tensor not in graph.input_dependent or not shapes or graph.info(tensor).elem_type != TensorProto.INT64:
        return False
    seen, stack = set(), [tensor]
    while stack:
        name = stack.pop()
        if name in seen or name in shapes or name not in graph.input_dependent:
            continue
        seen.add(name)
        idx = graph.producer.get(name)
        if idx is None or graph.nodes[idx].op_type == "Shape":
            return False
        stack.extend(graph.node_inputs[idx])
    return True


def rebuild(names: dict[str, tuple[int, list[int]]], cut: str) -> tuple[list, list]:
    """Nodes and initializers that compute each shape in `names` from the cut's batch."""
    nodes, initializers = [], []
    batch = f"{cut}__batch"
    if any(start == 0 for start, _ in names.values()):
        nodes.append(helper.make_node("Shape", [cut], [batch], name=batch, start=0, end=1))
    for name, (start, dims) in names.items():
        const = f"{name}__static"
        initializers.append(numpy_helper.from_array(np.array(dims, np.int64), const))
        if start == 0:
            nodes.append(helper.make_node("Concat", [batch, const], [name], name=f"{name}__rebuilt", axis=0))
        else:
            nodes.append(helper.make_node("Identity", [const], [name], name=f"{name}__rebuilt"))
    return nodes, initializers
