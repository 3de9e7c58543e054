"""A head whose graph ends in a layout Transpose to NCHW (a TFLite segmenter's scores: NHWC in the file, the
bundle's head transposes them, 21×513×513 float32 on DeepLab) runs without it on OpenVINO: the runtime's reorder
of the full-size scores costs more than the upsampling before it, and NumPy reads an (N,H,W,C) array as (N,C,H,W)
through a transposed view, at no cost. The values are the head's own; only their memory order differs."""

from __future__ import annotations

import numpy as np

TO_NCHW = (0, 3, 1, 2)


def without_final_transpose(model):
    """(the head ov.Model without its last op, the item shape it then returns (H,W,C)) when that op is a Transpose
    by (0,3,1,2) of a 4-D tensor; else (None, None)."""
    import openvino as ov
    import openvino.opset13 as ops

    results = model.get_results()
    if len(results) != 1:
        return None, None
    node = results[0].input_value(0).get_node()
    if node.get_type_name() != "Transpose" or node.input_value(1).get_node().get_type_name() != "Constant":
        return None, None
    order = tuple(int(v) for v in node.input_value(1).get_node().get_data().ravel())
    source = node.input_value(0)
    shape = source.get_partial_shape()
    if order != TO_NCHW or shape.rank.is_dynamic or not all(d.is_static for d in list(shape)[1:]):
        return None, None
    item = tuple(d.get_length() for d in list(shape)[1:])
    return ov.Model([ops.result(source)], model.get_parameters(), model.get_friendly_name()), item


def as_nchw(outputs: np.ndarray, n: int, item: tuple) -> np.ndarray:
    """(N, H·W·C) channels-last values → an (N,C,H,W) view of them."""
    return outputs.reshape(n, *item).transpose(TO_NCHW)
