"""UINT8 pixels normalised inside a served OpenVINO graph, not on the server's thread.

A fused model served on OpenVINO takes FP32 input (N, C, H, W). Its copy built here takes the pixels as they come
on the wire, (N, H, W, 3) uint8 RGB, and runs the model's preprocessing as the graph's first operations (OpenVINO's
``PrePostProcessor``): x = (pixels·scale − mean) / std per channel, channels reversed for a BGR model, then NHWC →
NCHW. Those are the float32 operations of `images.Preprocessing.standardise`, in its order; they run in the same
runtime call as the model, on its threads, and the server no longer writes a 602 kB float tensor per 224² image
(bench/serve.md: the UINT8 case on OpenVINO at bf16 went from 1.14× to the FP32 case's ratio).
"""

from __future__ import annotations

import numpy as np


def takes_pixels_in_graph(preprocessing) -> bool:
    """Whether the graph can do this preprocessing: colour models (a grayscale one converts RGB → gray with
    OpenCV's own weights on the server)."""
    return preprocessing is not None and preprocessing.channels == 3


def openvino_pixel_model(model, preprocessing):
    """A copy of `model` (an ``ov.Model`` whose one image input is float (N, 3, H, W); its weights shared) whose
    image input is uint8 RGB (N, H, W, 3), normalised in the graph as `preprocessing` says."""
    import openvino as ov
    import openvino.opset13 as ops
    from openvino.preprocess import PrePostProcessor

    model = model.clone()
    image = [i for i in model.inputs if i.get_any_name() != "class_id"][0]
    steps = PrePostProcessor(model)
    pixels = steps.input(image.get_any_name())
    pixels.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    pixels.model().set_layout(ov.Layout("NCHW"))
    pre = pixels.preprocess()
    pre.convert_element_type(ov.Type.f32)
    if preprocessing.color == "bgr":
        pre.reverse_channels()
    scale, mean, std = (ops.constant(np.asarray(v, np.float32)) for v in
                        (preprocessing.scale, preprocessing.mean, preprocessing.std))
    pre.custom(lambda x: ops.divide(ops.subtract(ops.multiply(x, scale), mean), std).output(0))   # NHWC: per channel
    pre.convert_layout(ov.Layout("NCHW"))
    return steps.build()
