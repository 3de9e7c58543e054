"""Small ONNX classifiers built with onnx.helper (no torch): the README's first command and the tests.

    python export/tiny_onnx.py tiny.onnx            # a 4-class CNN, 64x64, dynamic batch
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _weights(rng, *shape, scale=None):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (rng.standard_normal(shape) * (scale or np.sqrt(2.0 / fan_in))).astype(np.float32)


def tiny_cnn(*, batch: int | str = "N", size: int = 64, classes: int = 4, skip: bool = False,
             head: str = "flatten", softmax: bool = False, seed: int = 0) -> onnx.ModelProto:
    """conv(3→8, s2) → relu → conv(8→16, s2) → relu [→ + 1x1 conv of the first relu: a skip]
    → conv(16→16) → relu (``features``) → GAP → flatten → Gemm [→ Softmax].

    head: ``flatten`` (Flatten), ``reshape`` (Reshape to a constant [batch, -1] target: what
    fixed-batch exports write) or ``flatten0`` (Flatten(axis=0): works only for batch 1).
    """
    rng = np.random.default_rng(seed)
    inits = {
        "w1": _weights(rng, 8, 3, 3, 3), "b1": np.zeros(8, np.float32),
        "w2": _weights(rng, 16, 8, 3, 3), "b2": np.zeros(16, np.float32),
        "w3": _weights(rng, 16, 16, 3, 3), "b3": rng.standard_normal(16).astype(np.float32) * 0.1,
        "ws": _weights(rng, 16, 8, 1, 1),
        "fc_w": _weights(rng, classes, 16, scale=0.5), "fc_b": rng.standard_normal(classes).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["conv1"], name="conv1", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("Conv", ["relu1", "w2", "b2"], ["conv2"], name="conv2", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
    ]
    last = "relu2"
    if skip:
        nodes += [
            helper.make_node("Conv", ["relu1", "ws"], ["shortcut"], name="shortcut", strides=[2, 2]),
            helper.make_node("Add", ["relu2", "shortcut"], ["sum"], name="add"),
        ]
        last = "sum"
    nodes += [
        helper.make_node("Conv", [last, "w3", "b3"], ["conv3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv3"], ["features"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"], name="gap"),
    ]
    if head == "flatten":
        nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"))
    elif head == "reshape":
        inits["flat_shape"] = np.array([batch if isinstance(batch, int) else -1, 16], np.int64)
        nodes.append(helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"], name="reshape"))
    elif head == "flatten0":
        inits["fc_w0"] = inits["fc_w"]
        nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten0", axis=0))
    else:
        raise ValueError(head)
    out = "probs" if softmax else "logits"
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1))
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1))
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, classes])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def mlp(*, features: int = 12, classes: int = 3, seed: int = 0) -> onnx.ModelProto:
    """A model without any 4-D tensor: image → flatten → Gemm."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Flatten", ["image"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=[numpy_helper.from_array(_weights(rng, classes, features), "w"),
                     numpy_helper.from_array(np.zeros(classes, np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph computing in float16: float initializers and float I/O cast to float16."""
    half = onnx.ModelProto()
    half.CopyFrom(model)
    for i, tensor in enumerate(half.graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            half.graph.initializer[i].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for vi in [*half.graph.input, *half.graph.output]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    return half


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "tiny.onnx"
    onnx.save(tiny_cnn(), path)
    print(f"wrote {path}: a 4-class CNN with input 'image' (N,3,64,64)")
