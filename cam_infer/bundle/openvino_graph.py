"""An OpenVINO model seen as `graph.Graph` sees an ONNX one, for the graph walks that read structure only
(`tokens.token_stream`, `tokens.token_layout`): nodes with ONNX op types, named tensors, producers and
consumers, shapes, constants.

A tensor is named after its op (``friendly name``, ``friendly name:i`` for output i > 0); Constant ops are no
nodes, their values are read with `constant`. Op types are given in ONNX's words where OpenVINO's op computes
the same thing (Multiply → Mul, Convolution → Conv, ScaledDotProductAttention → Attention, MVN →
MeanVarianceNormalization), and Gather's axis and Slice's inputs are arranged as ONNX has them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .graph import InputSpec, TensorInfo

ONNX_NAMES = {"Multiply": "Mul", "Subtract": "Sub", "Divide": "Div", "Convert": "Cast", "Convolution": "Conv",
              "MVN": "MeanVarianceNormalization", "ScaledDotProductAttention": "Attention"}
ELEMENT_TYPES = {"f32": 1, "u8": 2, "i8": 3, "i32": 6, "i64": 7, "f16": 10, "bf16": 16}


@dataclass
class Attribute:
    name: str
    i: int


@dataclass
class OpNode:
    """One op of the model as an ONNX node: its type, name, input and output tensor names, attributes."""

    op_type: str
    name: str
    input: list[str]
    output: list[str]
    op: object = field(repr=False)
    attribute: list[Attribute] = field(default_factory=list)


def tensor_name(value) -> str:
    """The name of an op's output (an ``ov.Output``) in this view."""
    name = value.get_node().get_friendly_name()
    return name if value.get_index() == 0 else f"{name}:{value.get_index()}"


class OpenVINOGraph:
    """`model` (an ``ov.Model`` with one image Parameter, `spec`) as a read-only graph of ONNX-like nodes."""

    def __init__(self, model, spec: InputSpec):
        self.model, self.input_spec = model, spec
        self.nodes: list[OpNode] = []
        self.constants: dict[str, object] = {}
        for op in model.get_ordered_ops():
            kind = op.get_type_name()
            outputs = [tensor_name(op.output(i)) for i in range(op.get_output_size())]
            if kind == "Constant":
                self.constants[outputs[0]] = op
            elif kind not in ("Parameter", "Result"):
                self.nodes.append(self._node(op, kind, outputs))

    def _node(self, op, kind: str, outputs: list[str]) -> OpNode:
        inputs = [tensor_name(v) for v in op.input_values()]
        node = OpNode(ONNX_NAMES.get(kind, kind), op.get_friendly_name(), inputs, outputs, op)
        if kind == "Gather" and len(inputs) == 3:
            axis = self.constant(inputs[2])
            node.input = inputs[:2]
            node.attribute = [Attribute("axis", int(axis)) if axis is not None else Attribute("axis", -99)]
        elif kind == "Concat":
            node.attribute = [Attribute("axis", int(op.get_attributes()["axis"]))]
        elif kind == "Slice" and len(inputs) == 5:                # OpenVINO: start, stop, step, axes
            node.input = [inputs[0], inputs[1], inputs[2], inputs[4], inputs[3]]
        return node

    def constant(self, name: str) -> np.ndarray | None:
        op = self.constants.get(name)
        return None if op is None else op.get_data()

    @property
    def initializers(self) -> dict:
        return {}

    @cached_property
    def node_inputs(self) -> list[list[str]]:
        return [n.input for n in self.nodes]

    @cached_property
    def producer(self) -> dict[str, int]:
        return {out: idx for idx, node in enumerate(self.nodes) for out in node.output}

    @cached_property
    def consumers(self) -> dict[str, list[int]]:
        result: dict[str, list[int]] = {}
        for idx, inputs in enumerate(self.node_inputs):
            for name in inputs:
                result.setdefault(name, []).append(idx)
        return result

    @cached_property
    def input_dependent(self) -> set[str]:
        dependent = {self.input_spec.name}
        for node in self.nodes:
            if any(i in dependent for i in node.input):
                dependent.update(node.output)
        return dependent

    @cached_property
    def order(self) -> dict[str, int]:
        order = {self.input_spec.name: -1}
        order.update({out: idx for idx, node in enumerate(self.nodes) for out in node.output})
        return order

    @cached_property
    def node_modules(self) -> list[tuple[str, ...]]:
        """No torch module paths are kept in an OpenVINO model."""
        return [()] * len(self.nodes)

    def ancestors(self, tensor: str) -> set[str]:
        """All tensors `tensor` is computed from, itself included."""
        seen: set[str] = set()
        stack = [tensor]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            idx = self.producer.get(name)
            if idx is not None:
                stack.extend(self.node_inputs[idx])
        return seen

    def info(self, name: str) -> TensorInfo:
        idx = self.producer.get(name)
        if idx is None:
            return TensorInfo(name, 0, None)
        op = self.nodes[idx].op
        value = op.output(self.nodes[idx].output.index(name))
        shape = value.get_partial_shape()
        dims = tuple(d.get_length() if d.is_static else None for d in shape) if shape.rank.is_static else None
        return TensorInfo(name, ELEMENT_TYPES.get(value.get_element_type().get_type_name(), 0), dims)

    def output_of(self, name: str):
        """The ``ov.Output`` that tensor `name` is."""
        idx = self.producer[name]
        return self.nodes[idx].op.output(self.nodes[idx].output.index(name))
