"""The joined graph (`bundle.joined`): features and head back in one model, names kept apart where both
graphs use one for different things."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from cam_infer.bundle.joined import joined_model


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 3])
                                           for n in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 3]) for n in outputs],
                              [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def _graphs():
    # both compute "t" in a node named "scale", and hold "c" (different values) and "shared" (equal): as a
    # quantized model's head re-quantizes the cut under the features graph's name
    features = _model([helper.make_node("Mul", ["x", "c"], ["t"], name="scale"),
                       helper.make_node("Add", ["t", "shared"], ["cut"])],
                      ["x"], ["cut"], {"c": [2.0, 2.0, 2.0], "shared": [1.0, 1.0, 1.0]})
    head = _model([helper.make_node("Mul", ["cut", "c"], ["t"], name="scale"),
                   helper.make_node("Sub", ["t", "shared"], ["y"])],
                  ["cut"], ["y"], {"c": [3.0, 4.0, 5.0], "shared": [1.0, 1.0, 1.0]})
    return features, head


def test_names_both_graphs_use_are_renamed_in_the_head_and_equal_initializers_shared():
    features, head = _graphs()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    a = _run(features, x)[0]
    y = _run(head, a)[0]
    joined = joined_model(features, head)
    onnx.checker.check_model(joined)
    got_a, got_y = _run(joined, x)
    np.testing.assert_array_equal(got_a, a)
    np.testing.assert_array_equal(got_y, y)
    assert sorted(i.name for i in joined.graph.initializer) == ["c", "head/c", "shared"]
    assert [n.name for n in joined.graph.node] == ["scale", "", "head/scale", ""]
    assert [o.name for o in joined_model(*_graphs(), expose_cut=False).graph.output] == ["y"]
