"""An OpenVINO IR classifier head that rounds between FakeQuantize ops (an int8 TFLite model as OpenVINO reads it:
FakeQuantize → AvgPool → FakeQuantize → 1×1 Convolution on dequantized uint8 weights → Add → FakeQuantize)
read as the float graph it rounds: the same head with every FakeQuantize on its data path passed over. That graph
is then read by running it (`head.probed_linear_head`), and the caller keeps the reading only where it reproduces
the int8 head within 2 steps of the logits' quantization on real-range cuts (`qdq_tail.within_steps`), as it
keeps an ONNX QDQ head's float reading (`qdq_tail.dequantized`).

A FakeQuantize of input range [l, h] and output range [l', h'] computes
round((clip(x, l, h) − l)/(h − l)·(L − 1))·(h' − l')/(L − 1) + l': passed over only where [l', h'] = [l, h], so
that it only rounds and clips; one that also rescales leaves the head unread. One on a constant (a weight) is kept:
it rounds the weight as the runtime does.
"""

from __future__ import annotations

import numpy as np

from .openvino_split import _constant

PASS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Convert"}


def rounds(model) -> bool:
    """Whether any FakeQuantize of the head (an ``ov.Model``) reads a value computed from its input."""
    return any(op.get_type_name() == "FakeQuantize" for op in _data_ops(model))


def float_head(model):
    """A copy of the head with every FakeQuantize on its data path passed over; None where one also rescales."""
    copy = model.clone()
    for op in _data_ops(copy):
        if op.get_type_name() != "FakeQuantize":
            continue
        low, high, out_low, out_high = (_constant(op.input_value(i)) for i in range(1, 5))
        if any(v is None for v in (low, high, out_low, out_high)) \
                or not (np.array_equal(*np.broadcast_arrays(low, out_low))
                        and np.array_equal(*np.broadcast_arrays(high, out_high))):
            return None
        op.output(0).replace(op.input_value(0))
    copy.validate_nodes_and_infer_types()
    return copy


def logits_step(model) -> float:
    """One quantization step of the logits: of the FakeQuantize that makes them, seen back from the result through
    reshapes (0 where none does)."""
    value = model.get_results()[0].input_value(0)
    while value.get_node().get_type_name() in PASS:
        value = value.get_node().input_value(0)
    return fake_quantize_step(value)


def fake_quantize_step(value) -> float:
    """One quantization step of the values a FakeQuantize makes (0 where `value` is no FakeQuantize's output or its
    output range is no constant)."""
    node = value.get_node()
    if node.get_type_name() != "FakeQuantize":
        return 0.0
    low, high = (_constant(node.input_value(i)) for i in (3, 4))
    if low is None or high is None:
        return 0.0
    return float(np.max(high - low)) / (int(node.get_attributes()["levels"]) - 1)


def _data_ops(model) -> list:
    """The head's ops that read, at some remove, its input (in topological order)."""
    data, ops = set(), []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Parameter" or any(v.get_node().get_name() in data
                                                    for v in op.input_values()):
            data.add(op.get_name())
            ops.append(op)
    return ops
