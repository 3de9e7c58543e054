"""Fusing a method into the model graph: one ONNX model returns the scores and the saliency map.

`assemble.py` joins the bundle back into one graph and adds the outputs; `maps.py` holds each
method as ONNX nodes; `builder.py` writes nodes for the model's opset.
"""

from .assemble import fuse, fused_error, plain_model, save
from .maps import EIGEN_SQUARINGS, FUSED

__all__ = ["EIGEN_SQUARINGS", "FUSED", "fuse", "fused_error", "plain_model", "save"]
