"""Model → bundle: find the target layer, cut the graph there, verify, write ``bundle.json``."""

from .manifest import Bundle
from .split import split_onnx

__all__ = ["Bundle", "split_onnx"]
