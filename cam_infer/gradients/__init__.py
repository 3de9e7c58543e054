"""Gradients of the explained class's pre-softmax score with respect to the target-layer activation,
for the gradient methods (Grad-CAM and family). Both sources need PyTorch (the ``torch`` extra):

- `HeadGradients`: the bundle's head graph run in torch (`onnx_in_torch`), so activations may come
  from any runtime — gradient CAMs for a model that exists only as ONNX.
- `cam_infer.backends.torch.TorchBackend.gradients`: the user's own torch model.

Importing this package does not import torch; using a source does.
"""

from __future__ import annotations

import contextlib
import numpy as np
import onnx

from ..bundle import Bundle
from ..errors import CamInferError

TORCH_MISSING = ("gradient methods need PyTorch, which is not installed here: pip install 'cam-infer[torch]' "
                 "(or pip install torch==2.13.0); the gradient-free methods need no PyTorch")


def require_torch():
    try:
        import torch
    except ImportError:
        raise CamInferError(TORCH_MISSING) from None
    return torch


def score_gradients(torch, scores, activation, targets: np.ndarray, objective=None) -> np.ndarray:
    """∂ scores[n, targets[n]] / ∂ activation[n] for every n at once (the samples are independent);
    `objective(torch, scores) → (N,)` replaces the picked score (Finer-CAM)."""
    scores = scores.reshape(len(targets), -1)
    picked = objective(torch, scores) if objective is not None else \
        scores[torch.arange(len(targets)), torch.from_numpy(targets)]
    (grad,) = torch.autograd.grad(picked.sum(), activation)
    return grad.detach().numpy().astype(np.float32, copy=False)


class HeadGradients:
    """Gradients through the bundle's head graph, interpreted in torch. A final softmax is left out
    so that the score differentiated is the logit."""

    def __init__(self, bundle: Bundle):
        from .onnx_in_torch import TorchGraph

        if bundle.graph_format != "onnx":
            raise CamInferError("gradient methods run the head graph in torch, which reads ONNX; this is an OpenVINO "
                                "IR bundle: use a gradient-free method, or split the model's .onnx file")
        self.torch = require_torch()
        self.head = TorchGraph(onnx.load(bundle.head_path), drop_softmax=bundle.output_kind == "probabilities")

    def __call__(self, x: np.ndarray, activations: np.ndarray, targets: np.ndarray, objective=None) -> np.ndarray:
        torch = self.torch
        a = torch.from_numpy(np.ascontiguousarray(activations, np.float32)).requires_grad_(True)
        with torch.enable_grad(), one_torch_thread(torch):
            return score_gradients(torch, self.head(a), a, targets, objective)


@contextlib.contextmanager
def one_torch_thread(torch):
    """Heads are small: one thread, so that torch's pool does not spin against the runtime's next
    pass (it slowed the next ONNX Runtime forward pass up to 2×). The caller's setting is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


__all__ = ["HeadGradients", "TORCH_MISSING", "require_torch", "score_gradients"]
