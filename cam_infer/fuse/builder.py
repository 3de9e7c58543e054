"""Writing ONNX nodes with few words: unique names, small constants, and the ops whose signature
changed between opsets (axes as an attribute or as an input) written the right way for the model."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

PREFIX = "cam_infer"


class Builder:
    """Collects the nodes and constants that `cam_infer.fuse` appends to a model of opset `opset`."""

    def __init__(self, opset: int, scope: str = PREFIX):
        self.opset = opset
        self.scope = scope
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._constants: dict[tuple, str] = {}

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.scope}/{hint}_{self._count}"

    def const(self, value, hint: str = "const", dtype=np.float32) -> str:
        """A constant tensor; equal constants are stored once."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.name(hint)
            self.initializers.append(numpy_helper.from_array(array, self._constants[key]))
        return self._constants[key]

    def ints(self, values, hint: str = "ints") -> str:
        return self.const(values, hint, np.int64)

    def op(self, op_type: str, *inputs: str, outputs: int | list[str] = 1, hint: str | None = None, **attributes):
        """Append one node; returns its output name (or a tuple of names when it has several).
        `outputs`: how many outputs to name, or their names."""
        hint = hint or op_type.lower()
        names = list(outputs) if isinstance(outputs, list) else [self.name(hint) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self.name(op_type), **attributes))
        return names[0] if len(names) == 1 else tuple(names)

    def named(self, tensor: str, name: str) -> str:
        """`tensor` under the name `name`: the output of the node that makes it renamed (an Identity would do in ONNX
        Runtime, but OpenVINO merges an Identity's output names into its input's, and a compiled model's output is
        then known by an internal name too: `get_any_name()` may give that one); an Identity where no node of this
        builder makes it."""
        if not any(tensor in node.output for node in self.nodes):
            return self.op("Identity", tensor, outputs=[name])
        for node in self.nodes:
            for names in (node.input, node.output):
                for i, value in enumerate(names):
                    if value == tensor:
                        names[i] = name
        return name

    # --- ops whose axes moved from attribute to input --------------------------------------

    def reduce(self, op_type: str, x: str, axes, keepdims: bool = True, hint: str | None = None) -> str:
        """ReduceSum (axes an input from opset 13) and ReduceMean/Max/Min/L2 (from opset 18)."""
        as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if as_input:
            return self.op(op_type, x, self.ints(list(axes), "axes"), keepdims=int(keepdims), hint=hint)
        return self.op(op_type, x, axes=list(axes), keepdims=int(keepdims), hint=hint)

    def unsqueeze(self, x: str, axes, hint: str | None = None) -> str:
        return self.op("Unsqueeze", x, self.ints(list(axes), "axes"), hint=hint)

    def squeeze(self, x: str, axes, hint: str | None = None) -> str:
        return self.op("Squeeze", x, self.ints(list(axes), "axes"), hint=hint)

    def reshape(self, x: str, shape, hint: str | None = None) -> str:
        """Reshape to a constant shape (0 copies the input's dimension, -1 is inferred)."""
        return self.op("Reshape", x, self.ints(list(shape), "shape"), hint=hint)

    def scale(self, x: str, factor: float, hint: str | None = None) -> str:
        return x if factor == 1.0 else self.op("Mul", x, self.const(factor, "factor"), hint=hint)
