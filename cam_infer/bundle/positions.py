"""The clean pass with Recipro-CAM's closed-form product inside the runtime's graph.

For a GAP→linear head (W: C×K) the logits of the cut kept at one position (i, j) alone are
W·A[:, i, j]·g_ij/(h·w) + b (`methods.recipro`): every class at every position is one product
P = Aᵀ Wᵀ, (N, h·w, C), of h·w·K·C multiply-adds (63 M on MobileNetV2, 100 M on ResNet-50). Appended to the
joined graph (`bundle/joined.py`) as one more output it runs in the clean pass's own runtime call, at the
runtime's precision (bf16 on OpenVINO CPUs that have it), where a separate float32 product costs a call and
its threads' wake-up: on ResNet-50 at bf16 the pass with it takes 1.04× the pass alone, against 1.07× for the
product run apart in ONNX Runtime (bench/precision.md). Scaling by g_ij/(h·w) and the bias stay in NumPy, on
the (N, h·w, C) result.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PRODUCTS = "cam_infer_position_products"


def with_position_products(joined: onnx.ModelProto, weight: np.ndarray, cut_shape: tuple) -> onnx.ModelProto:
    """`joined` (changed in place) with one more output, last: P = Aᵀ Wᵀ (N, h·w, C) of its first output, the
    cut A (N, K, h, w), and W (C, K)."""
    k, h, w = cut_shape
    graph = joined.graph
    cut = graph.output[0].name
    graph.initializer.extend([
        numpy_helper.from_array(np.array([0, k, h * w], np.int64), f"{PRODUCTS}/shape"),
        numpy_helper.from_array(np.ascontiguousarray(np.asarray(weight, np.float32).T), f"{PRODUCTS}/weight")])
    graph.node.extend([
        helper.make_node("Reshape", [cut, f"{PRODUCTS}/shape"], [f"{PRODUCTS}/channels"], name=f"{PRODUCTS}/reshape"),
        helper.make_node("Transpose", [f"{PRODUCTS}/channels"], [f"{PRODUCTS}/positions"], perm=[0, 2, 1],
                         name=f"{PRODUCTS}/transpose"),
        helper.make_node("MatMul", [f"{PRODUCTS}/positions", f"{PRODUCTS}/weight"], [PRODUCTS],
                         name=f"{PRODUCTS}/matmul")])
    graph.output.append(helper.make_tensor_value_info(PRODUCTS, TensorProto.FLOAT, ["N", h * w, len(weight)]))
    return joined
