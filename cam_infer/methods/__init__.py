"""Tensors → maps: one module per method, registered under its user-facing name.

Every method takes a `Context` (activations, targets, backend, input when it needs full passes,
gradients of the target score for the gradient methods)
and keyword options, and returns low-resolution maps (N,h,w) before ReLU and normalisation.
"""

from __future__ import annotations

from .registry import METHODS, Context, get_method, method  # noqa: F401
from . import activation, cam, eigen, entropy, recipro, ablation, score  # noqa: F401,E402
from . import gradcam, gradcam_plus_plus, xgradcam, layercam, hirescam, grad_entropy  # noqa: F401,E402

GRADIENT_FREE = tuple(name for name, m in METHODS.items() if m.needs != "gradients")
GRADIENT = tuple(name for name, m in METHODS.items() if m.needs == "gradients")

__all__ = ["Context", "GRADIENT", "GRADIENT_FREE", "METHODS", "get_method", "method"]
