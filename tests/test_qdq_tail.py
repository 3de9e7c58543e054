"""A quantized (QDQ) ONNX head read as a linear tail: DeepLab converted from its TFLite has QuantizeLinear /
DequantizeLinear around its 1×1 convolution and each Resize. The reading against the quantized head itself, run
by ONNX Runtime: its weights exactly as dequantized, its region scores within the output's quantization steps,
and refused where the roundings it leaves out change the scores."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cam_infer.backends.sessions import FLOAT32, onnxruntime_session
from cam_infer.bundle.linear_tail import apply, read_linear_tail

K, CLASSES, SIDE, OUT = 8, 4, 6, 18
RNG = np.random.default_rng(3)
WEIGHTS = RNG.integers(0, 256, (CLASSES, K, 1, 1)).astype(np.uint8)
BIASES = RNG.integers(-400, 400, CLASSES).astype(np.int32)


def qdq_head(output_scale: float = 0.05, middle_scale: float = 0.05) -> onnx.ModelProto:
    """input → Q/DQ → 1×1 Conv (uint8 weights, int32 biases, dequantized) → Q/DQ → Resize ×1 → Q/DQ → Resize to
    OUT×OUT (align_corners) → Q/DQ: the shape of DeepLab's converted head."""
    a_scale, w_scale = 0.02, 0.002
    inits = [numpy_helper.from_array(np.array(v, dtype), name) for name, v, dtype in [
        ("a_scale", a_scale, np.float32), ("a_zero", 0, np.uint8), ("w_scale", w_scale, np.float32),
        ("w_zero", 128, np.uint8), ("b_scale", a_scale * w_scale, np.float32), ("b_zero", 0, np.int32),
        ("m_scale", middle_scale, np.float32), ("o_scale", output_scale, np.float32), ("o_zero", 100, np.uint8),
        ("roi", [], np.float32), ("ones", [1, 1, 1, 1], np.float32),
        ("up", [1, 1, OUT / SIDE, OUT / SIDE], np.float32)]]
    inits += [numpy_helper.from_array(WEIGHTS, "w_q"), numpy_helper.from_array(BIASES, "b_q")]
    resize = {"mode": "linear", "coordinate_transformation_mode": "align_corners"}
    nodes = [helper.make_node("QuantizeLinear", ["a", "a_scale", "a_zero"], ["a_q"]),
             helper.make_node("DequantizeLinear", ["a_q", "a_scale", "a_zero"], ["a_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"]),
             helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zero"], ["b"]),
             helper.make_node("Conv", ["a_dq", "w", "b"], ["z"], kernel_shape=[1, 1]),
             helper.make_node("QuantizeLinear", ["z", "m_scale", "o_zero"], ["z_q"]),
             helper.make_node("DequantizeLinear", ["z_q", "m_scale", "o_zero"], ["z_dq"]),
             helper.make_node("Resize", ["z_dq", "roi", "ones"], ["same"], **resize),
             helper.make_node("QuantizeLinear", ["same", "m_scale", "o_zero"], ["same_q"]),
             helper.make_node("DequantizeLinear", ["same_q", "m_scale", "o_zero"], ["same_dq"]),
             helper.make_node("Resize", ["same_dq", "roi", "up"], ["big"], **resize),
             helper.make_node("QuantizeLinear", ["big", "o_scale", "o_zero"], ["big_q"]),
             helper.make_node("DequantizeLinear", ["big_q", "o_scale", "o_zero"], ["big_dq"]),
             helper.make_node("Identity", ["big_dq"], ["class_scores"])]
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", K, SIDE, SIDE])]
    outputs = [helper.make_tensor_value_info("class_scores", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "head", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def cut() -> np.ndarray:
    return (RNG.random((1, K, SIDE, SIDE)) * 4).astype(np.float32)


@pytest.fixture(scope="module")
def head():
    return qdq_head()


def test_a_qdq_head_is_read_with_its_weights_dequantized_as_the_runtime_does(head):
    a = cut()
    tail = read_linear_tail(head, (K, SIDE, SIDE), lambda: (a, None))
    assert tail is not None and tail.ry.shape == (OUT, SIDE) and tail.activation == "none"
    dequantized = ((WEIGHTS.astype(np.int64) - 128) * np.float32(0.002)).astype(np.float32)
    np.testing.assert_array_equal(tail.kernel, dequantized)
    np.testing.assert_array_equal(tail.bias, (BIASES * np.float32(0.02 * 0.002)).astype(np.float32))


def test_the_qdq_shortcut_equals_the_quantized_head_passes_within_its_steps(head):
    """Recipro's region scores by the shortcut against the quantized head run with the cut kept at each position."""
    a = cut()
    tail = read_linear_tail(head, (K, SIDE, SIDE), lambda: (a, None))
    session = onnxruntime_session(head, FLOAT32)
    scores = session.run(None, {"a": a})[0]
    c = 2
    region = scores[0].argmax(axis=0) == c
    assert region.any()
    rows = np.zeros((SIDE * SIDE, K, SIDE, SIDE), np.float32)
    for q in range(SIDE * SIDE):
        rows[q, :, q // SIDE, q % SIDE] = a[0, :, q // SIDE, q % SIDE]
    head_scores = session.run(None, {"a": rows})[0][:, c][:, region].mean(axis=1)
    shortcut = tail.recipro_scores(a[0], c, region, "none").ravel()
    np.testing.assert_allclose(shortcut, head_scores, atol=2 * 0.05)
    probabilities = apply(session.run(None, {"a": rows})[0], "softmax")[:, c][:, region].mean(axis=1)
    np.testing.assert_allclose(tail.recipro_scores(a[0], c, region, "softmax").ravel(), probabilities, atol=0.02)


def test_a_qdq_head_whose_roundings_change_its_scores_is_not_read_as_a_linear_tail():
    """A middle quantization so coarse that it clips the logits: the float graph is not the head."""
    a = cut()
    assert read_linear_tail(qdq_head(middle_scale=0.001), (K, SIDE, SIDE), lambda: (a, None)) is None
