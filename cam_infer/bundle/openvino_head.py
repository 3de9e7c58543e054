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


def _data_ops(model) -> list:
    """The head's ops that read, at some remove, its input (in topological order)."""
    data, ops = set(), []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Parameter" or any(v.get_node().get_name() in data
                                                    for v in op.input_values()):
            data.add(op.get_name())
            ops.append(op)
    return ops
