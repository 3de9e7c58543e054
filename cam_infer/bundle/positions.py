"""The clean pass with Recipro-CAM's closed-form product inside the runtime's graph.

For a GAP→linear head (W: C×K) the logits of the cut kept at one position (i, j) alone are
W·A[:, i, j]·g_ij/(h·w) + b (`methods.recipro`): every class at every position is one product
P = Aᵀ Wᵀ, (N, h·w, C), of h·w·K·C multiply-adds (63 M on MobileNetV2, 100 M on ResNet-50). Appended to
OpenVINO's joined graph (`bundle/joined.py`) as one more output it runs in the clean pass's own runtime call, at
the runtime's precision (bf16 on CPUs that have it), where a separate float32 product costs a call of its own
and its threads' wake-up (bench/precision.md: on ResNet-50 at bf16 the pass with it takes 1.04× the pass alone,
the product run apart in ONNX Runtime 0.07×). Scaling by g_ij/(h·w) and the bias stay in NumPy, on the
(N, h·w, C) result. ONNX Runtime's CPU provider computes in float32 either way and keeps the product apart
(a second session of the whole model would cost its weights again).
"""

from __future__ import annotations

import numpy as np

PRODUCTS = "cam_infer_position_products"


def openvino_position_products(model, weight: np.ndarray, cut_shape: tuple):
    """`model`, an ``ov.Model`` of the joined graph whose first output is the cut A (N, K, h, w) (changed in
    place; a clone shares its weights), with one more output, last: P = Aᵀ Wᵀ (N, h·w, C), W (C, K)."""
    import openvino.opset13 as ops

    k, h, w = cut_shape
    cut = model.get_results()[0].input_value(0)
    positions = ops.transpose(ops.reshape(cut, ops.constant(np.array([0, k, h * w], np.int64)), True),
                              ops.constant(np.array([0, 2, 1], np.int64)))
    product = ops.matmul(positions, ops.constant(np.asarray(weight, np.float32)), False, True)
    product.output(0).get_tensor().set_names({PRODUCTS})
    model.add_outputs([product.output(0)])
    return model
