"""The Explainer: a bundle on a backend, and `explain(x, method=...)` for any batch.

    ex = Explainer("bundle/", backend="openvino")
    e = ex.explain(ex.preprocess(["cat.jpg"]), method="recipro")
    e.saliency   # (N,H,W) in [0,1]

    ex = Explainer("bundle/", backend="openvino", gradients="torch")    # + gradcam & co. (needs torch)
    ex = Explainer.from_torch(model, layer="layer4", input_size=(224, 224))  # everything on torch
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

from .backends import Backend, load_backend
from .bundle import Bundle
from .bundle.head import read_linear_head
from .errors import CamInferError
from .methods import Context, get_method
from .methods.registry import softmax
from .postprocess import normalise, upsample


BLAS = ThreadpoolController()


@dataclass
class Explanation:
    method: str
    saliency: np.ndarray        # (N,H,W) float32 in [0,1], input resolution
    maps: np.ndarray            # (N,h,w) raw low-resolution maps, before ReLU and normalisation
    targets: np.ndarray         # (N,) class explained
    scores: np.ndarray          # (N,) probability of that class (softmax of the logits)
    degenerate: np.ndarray      # (N,) True where the map was constant
    milliseconds: float         # wall time of the whole call
    options: dict = field(default_factory=dict)


def class_index(value, labels: list[str] | None, classes: int) -> int:
    """A class given by label or index (int or digit string) → its index, checked."""
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        labels = labels or []
        if value not in labels:
            raise CamInferError(f"unknown class label '{value}'" + ("" if labels else "; this bundle has no labels"))
        return labels.index(value)
    index = int(value)
    if not 0 <= index < classes:
        raise CamInferError(f"class {index} is out of range: this model has classes 0..{classes - 1}")
    return index


class Explainer:
    """A bundle opened on a backend. Backend options (device, threads, hint, ...) pass through.

    ``gradients="torch"`` enables the gradient methods: activations still come from `backend`, and
    the gradients of the target score with respect to them from the bundle's head graph run in
    PyTorch (`cam_infer.gradients`)."""

    def __init__(self, bundle: "Bundle | str | os.PathLike", backend: "str | Backend" = "onnxruntime",
                 gradients: str | None = None, **backend_options):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.backend = backend if isinstance(backend, Backend) else \
            load_backend(self.bundle, backend=backend, **backend_options)
        self.linear_head = self._checked_linear_head()
        self.gradients = self._gradient_source(gradients)

    def _gradient_source(self, gradients):
        if gradients is None:
            return getattr(self.backend, "gradients", None)
        if gradients != "torch":
            raise CamInferError(f"gradients must be None or 'torch', not {gradients!r}")
        from .gradients import HeadGradients
        return HeadGradients(self.bundle)

    @classmethod
    def from_torch(cls, model, layer: str, input_size: tuple[int, int] = (224, 224), preprocess=None,
                   labels=None, exporter: str = "legacy") -> "Explainer":
        """Every method, gradient family included, on a PyTorch classifier in eval mode. The model is
        exported once to a temporary bundle (for its head graph and manifest; a few seconds); its
        activations, scores and gradients then come from the model itself. ``preprocess``: a
        `Preprocessing` or its fields as a dict (default: the torchvision ImageNet convention)."""
        import tempfile

        from .backends.torch import TorchBackend
        from .bundle.export import export_torch

        if getattr(model, "training", False):
            raise CamInferError("the model is in training mode; call model.eval() first (dropout and batch "
                                "statistics would change the explanation from call to call)")
        folder = tempfile.TemporaryDirectory(prefix="cam-infer-torch-")
        bundle = export_torch(model, layer=layer, input_size=input_size, out=Path(folder.name) / "bundle",
                              exporter=exporter, preprocessing=preprocess, labels=labels)
        explainer = cls(bundle, backend=TorchBackend(bundle, model, layer))
        explainer._folder = folder            # the bundle lives as long as the explainer
        return explainer

    def _checked_linear_head(self):
        import onnx

        head = read_linear_head(onnx.load(self.bundle.head_path), self.bundle.activation_shape[0])
        if head is None:
            return None
        a = np.abs(np.random.default_rng(0).standard_normal((2, *self.bundle.activation_shape))).astype(np.float32)
        expected = self.backend.head(a)
        got = head.logits(a.mean(axis=(2, 3)))
        if self.bundle.output_kind == "probabilities":
            got = softmax(got)
        scale = max(1.0, float(np.abs(expected).max()))
        return head if np.allclose(got, expected, atol=1e-4 * scale, rtol=1e-4) else None

    def _gradients_for(self, method: str, x, activations, targets) -> np.ndarray:
        if self.gradients is None:
            from .gradients import require_torch
            require_torch()
            raise CamInferError(f"method '{method}' needs gradients: open the Explainer with gradients='torch' "
                                "(or use Explainer.from_torch with a PyTorch model)")
        return self.gradients(x, activations, targets)

    def preprocess(self, images) -> np.ndarray:
        """Image paths or RGB arrays → (N,3,H,W) float32 as the model expects."""
        return self.bundle.preprocess(images)

    def targets_for(self, target, outputs: np.ndarray) -> np.ndarray:
        n, classes = outputs.shape
        if target is None:
            return outputs.argmax(axis=1)
        values = [target] * n if isinstance(target, (int, np.integer, str)) else list(target)
        if len(values) != n:
            raise CamInferError(f"{len(values)} targets given for {n} images")
        return np.array([self.class_id(v, classes) for v in values], np.int64)

    def class_id(self, value, classes: int) -> int:
        return class_index(value, self.bundle.labels, classes)

    def explain(self, x: np.ndarray, method: str = "recipro", target=None, **options) -> Explanation:
        """Explain a batch (N,3,H,W); target None = top-1, an int or label, or one per image."""
        start = time.perf_counter()
        chosen = get_method(method)
        x = self.backend._checked(x, self.bundle.input_shape, "input images")
        activations = self.backend.features(x)
        outputs = self.backend.head(activations)
        targets = self.targets_for(target, outputs)
        ctx = Context(x=x, activations=activations, targets=targets, outputs=outputs, backend=self.backend,
                      bundle=self.bundle, linear_head=self.linear_head)
        if chosen.needs == "gradients":
            ctx.gradients = self._gradients_for(method, x, activations, targets)
        # The runtime owns the cores: a BLAS pool that spins after each call would slow its next pass.
        with BLAS.limit(limits=1):
            maps = chosen(ctx, **options).astype(np.float32)
            normalised, degenerate = normalise(maps)
            saliency = upsample(normalised, self.bundle.input_shape[1:])
        probabilities = ctx.probabilities(outputs)
        scores = probabilities[np.arange(len(targets)), targets]
        return Explanation(method, saliency, maps, targets, scores.astype(np.float32), degenerate,
                           (time.perf_counter() - start) * 1000, dict(options))
