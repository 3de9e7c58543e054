"""Fusing a method into the model graph: one ONNX model returns the scores and the saliency map.

`assemble.py` joins the bundle back into one graph and adds the outputs; each method's ONNX builder
lives in its own module (`cam_infer.methods`, registered with `@fused`) and works on a `fusion.Fusion`;
`builder.py` writes nodes for the model's opset.
"""

from ..methods.eigen import EIGEN_SQUARINGS
from .any_task import fuse
from .assemble import fusable, fused_error, plain_model, save, summary

FUSED = fusable()

__all__ = ["EIGEN_SQUARINGS", "FUSED", "fusable", "fuse", "fused_error", "plain_model", "save", "summary"]
