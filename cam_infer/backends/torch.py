"""PyTorch: the user's own model, for `Explainer.from_torch`.

features(x) runs the model up to the target layer (a forward hook stops it there); head(a) runs
the bundle's head graph in torch (`gradients.onnx_in_torch`), which the bundle verified equals the
model after the layer; gradients(x, a, targets) differentiates the model's own score. The model's
parameters, ``requires_grad`` flags and train/eval mode are never changed: the hook hands the rest
of the model a fresh leaf tensor and `torch.autograd.grad` differentiates only with respect to it.

Threads: a hook on the user's module sees every pass through it, whichever thread runs it, so passes
through the model take turns (a lock); the head graph runs in any number of threads at once.
"""

from __future__ import annotations

import threading

import numpy as np

from ..bundle import Bundle
from ..errors import CamInferError
from .base import Backend


class _Stop(Exception):
    """Raised by the hook once the target layer has produced its output."""


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, bundle: Bundle, model, layer: str, *, memory_budget_mb: float = 256,
                 threads: int | None = None):
        super().__init__(bundle, memory_budget_mb=memory_budget_mb, threads=threads)
        from ..gradients import HeadGradients, require_torch
        from ..gradients.onnx_in_torch import TorchGraph
        import onnx

        self.torch = require_torch()
        modules = dict(model.named_modules())
        if layer not in modules:
            raise CamInferError(f"the model has no module '{layer}'")
        self.model, self.module = model, modules[layer]
        self._head = TorchGraph(onnx.load(bundle.head_path))
        self._head_gradients = HeadGradients(bundle) if bundle.output_kind == "probabilities" else None
        if threads:
            self.torch.set_num_threads(int(threads))
        self._model_pass = threading.Lock()         # one pass through the hooked model at a time
        self._check_cut(layer)

    def _check_cut(self, layer: str) -> None:
        """The module's output must be the tensor the exported graph is cut at: the head graph then continues the
        model from it. An exporter that folds a module into another (a BatchNorm into the convolution before it: the
        graph's node of the convolution then outputs the normalised tensor) leaves the name but not the tensor, and
        the head run on the module's output would score, and explain, another model."""
        from ..bundle.verify import random_images

        x = random_images(self.bundle.preprocessing, 2, seed=11)
        got = self.head(self.features(x)).reshape(len(x), -1)
        expected = self.forward(x)
        diff = float(np.max(np.abs(got - expected)))
        if diff > 1e-3 * max(1.0, float(np.max(np.abs(expected)))):
            raise CamInferError(f"module '{layer}' does not give the tensor the exported graph is cut at: the head "
                                f"graph run on its output differs from the model by {diff:.3g} (the exporter "
                                "folded it into or with another module, as a BatchNorm into the convolution before "
                                "it); name the module that contains both")

    def _check_eval(self) -> None:
        """Every pass explains the model in eval mode: one put back in training mode after the explainer opened
        would explain dropout's draw and the batch's statistics, and update its BatchNorms' running statistics."""
        training = [f"'{name}'" if name else "the model" for name, module in self.model.named_modules()
                    if module.training]
        if training:
            raise CamInferError(f"the model is in training mode again ({', '.join(training[:3])}"
                                f"{' …' if len(training) > 3 else ''}); call model.eval() before explaining")

    def _run(self, role: str, x: np.ndarray) -> list[np.ndarray]:
        torch = self.torch
        with torch.no_grad():
            if role == "head":
                return [self._head(torch.from_numpy(x)).numpy()]
            self._check_eval()
            captured = {}

            def stop(module, inputs, output):
                captured["a"] = output
                raise _Stop

            with self._model_pass:
                handle = self.module.register_forward_hook(stop)
                try:
                    self.model(torch.from_numpy(x))
                except _Stop:
                    pass
                finally:
                    handle.remove()
            return [captured["a"].numpy()]

    def forward(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = self._checked(x, self.bundle.input_shape, "input images")
        self._check_eval()
        with torch.no_grad(), self._model_pass:
            return self.model(torch.from_numpy(x)).reshape(len(x), -1).numpy()

    def gradients(self, x: np.ndarray, activations: np.ndarray, targets: np.ndarray, objective=None) -> np.ndarray:
        """∂y_target/∂A from the model itself; through the head graph when the model ends in a softmax
        (the model's own output is then a probability, not the pre-softmax score)."""
        if self._head_gradients is not None:
            return self._head_gradients(x, activations, targets, objective)
        from ..gradients import score_gradients

        torch = self.torch
        leaf = {}

        def swap(module, inputs, output):
            if "a" in leaf:         # a module called again: its first output is the cut `features` stops at
                return None
            leaf["a"] = output.detach().requires_grad_(True)
            return leaf["a"].clone()    # the model may change it in place (ReLU(inplace=True)); a leaf may not be

        x = self._checked(x, self.bundle.input_shape, "input images")
        self._check_eval()
        with self._model_pass:
            handle = self.module.register_forward_hook(swap)
            try:
                with torch.enable_grad():
                    scores = self.model(torch.from_numpy(x))
            finally:
                handle.remove()
        with torch.enable_grad():
            return score_gradients(torch, scores, leaf["a"], targets, objective)

    def describe(self) -> str:
        return f"torch {self.torch.__version__} ({type(self.model).__name__})"
