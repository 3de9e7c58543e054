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
import warnings
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from .backends import Backend, load_backend
from .backends.sessions import FLOAT32, RuntimeOptions, onnxruntime_session
from .bundle import Bundle
from .bundle.head import read_linear_head
from .errors import CamInferError, ClassAgnosticWarning
from .explanation import Explanation
from .methods import Context, get_method
from .methods.registry import DEFAULT_METHOD, class_agnostic_note
from .numerics import softmax
from .postprocess import normalise, upsample


def class_index(value, labels: list[str] | None, classes: int) -> int:
    """A class given by label or index (int or digit string) → its index, checked.

    A label that several classes share (ImageNet's 'crane': 134 the bird, 517 the machine) is an error
    that lists them; an unknown label suggests the closest labels."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, str)):
        raise CamInferError(f"a class is an integer index or a label string, not {value!r} "
                            f"({type(value).__name__})")
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        labels = labels or []
        matches = [i for i, label in enumerate(labels) if label == value]
        if len(matches) > 1:
            raise CamInferError(f"class label '{value}' is ambiguous: classes {', '.join(map(str, matches))} are all "
                                f"called '{value}'; give the index instead")
        if not matches:
            raise CamInferError(f"unknown class label '{value}'" + (_suggestions(value, labels) if labels
                                                                    else "; this bundle has no labels"))
        return matches[0]
    index = int(value)
    if not 0 <= index < classes:
        raise CamInferError(f"class {index} is out of range: this model has classes 0..{classes - 1}")
    return index


def model_inputs(images, preprocessing, check_input):
    """Image paths, RGB arrays, or a preprocessed (N,C,H,W) float batch → (x, the original RGB images or
    None, their names or None). A batch is checked with `check_input`; images are preprocessed."""
    from .images import as_rgb_uint8, load_image

    if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype.kind == "f":
        return check_input(images), None, None
    if isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)):
        images = [images]
    originals, names = [], []
    for item in images:
        if isinstance(item, (str, os.PathLike)):
            originals.append(load_image(item))
            names.append(Path(item).stem)
        else:
            originals.append(as_rgb_uint8(item))
            names.append(None)
    if not originals:
        raise CamInferError("no images given")
    x = np.stack([preprocessing.normalise(preprocessing.geometry(rgb)) for rgb in originals])
    return x, originals, (names if all(names) else None)


def _suggestions(value: str, labels: list[str]) -> str:
    import difflib

    lower = {label.lower(): label for label in labels}
    words = [w for w in value.lower().replace("_", " ").split() if len(w) > 2]
    close = difflib.get_close_matches(value.lower(), list(lower), n=5, cutoff=0.6)
    close += [key for key in lower if any(w in key.split() for w in words) and key not in close][:5 - len(close)]
    if not close:
        return "; no label is close to it (cam-infer info BUNDLE --json lists them)"
    return "; did you mean " + ", ".join(f"'{lower[c]}' ({labels.index(lower[c])})" for c in close) + "?"


class Explainer:
    """A bundle opened on a backend. Backend options (device, threads, hint, precision, ...) pass through.

    ``gradients="torch"`` enables the gradient methods: activations still come from `backend`, and
    the gradients of the target score with respect to them from the bundle's head graph run in
    PyTorch (`cam_infer.gradients`).

    Threads: one Explainer may be called from several threads at once; each call gives what it gives alone
    (passes through a PyTorch model of `from_torch` take turns). Explaining changes no process-wide setting."""

    def __init__(self, bundle: "Bundle | str | os.PathLike", backend: "str | Backend" = "auto",
                 gradients: str | None = None, **backend_options):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        if self.bundle.task == "detection":
            raise CamInferError(f"bundle '{self.bundle.path}' is a detector: explain it with "
                                "cam_infer.detection.DetectionExplainer (cam-infer explain does so by itself)")
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

        if self.bundle.graph_format != "onnx":        # an IR bundle: methods run the head graph instead
            return None
        head = read_linear_head(onnx.load(self.bundle.head_path), self.bundle.activation_shape[0])
        if head is None:
            return None
        a = np.abs(np.random.default_rng(0).standard_normal((2, *self.bundle.activation_shape))).astype(np.float32)
        # exact against a float32 run of the head graph, whatever precision the explanations run at (a bf16
        # head would differ from the float32 closed form by its rounding, ~2^-8, and refuse a true GAP→linear head)
        reference = onnxruntime_session(self.bundle.head_path, FLOAT32, quiet=True, memory_arena=False)
        expected = reference.run(None, {reference.get_inputs()[0].name: a})[0].reshape(len(a), -1)
        got = head.logits(a.mean(axis=(2, 3)))
        if self.bundle.output_kind == "probabilities":
            got = softmax(got)
        scale = max(1.0, float(np.abs(expected).max()))
        if not np.allclose(got, expected, atol=1e-4 * scale, rtol=1e-4):
            return None
        products = RuntimeOptions(threads=self.backend.threads, spinning="during-run")
        return replace(head, open_session=partial(onnxruntime_session, runtime=products, memory_arena=False))

    def _gradients_for(self, method: str, x, activations, targets, objective=None) -> np.ndarray:
        if self.gradients is None:
            from .gradients import require_torch
            require_torch()
            raise CamInferError(f"method '{method}' needs gradients: open the Explainer with gradients='torch' "
                                "(or use Explainer.from_torch with a PyTorch model)")
        return self.gradients(x, activations, targets, objective) if objective is not None else \
            self.gradients(x, activations, targets)

    def preprocess(self, images) -> np.ndarray:
        """Image paths or RGB arrays → (N,3,H,W) float32 as the model expects."""
        return self.bundle.preprocess(images)

    def _enhanced(self, x, originals, names, method, target, top_classes, enhance, enhance_options, options, start):
        """An enhancer around the method: its fused saliency, the base explanation's classes and scores.
        `maps` then holds the fused map at input resolution (there is no low-resolution map)."""
        from .enhancers import get_enhancer

        if top_classes is not None:
            raise CamInferError("enhancers explain one class per image; give target, not top_classes")
        fused, base = get_enhancer(enhance)(self, x, method, target, options, **enhance_options)
        span = fused.max(axis=(1, 2)) - fused.min(axis=(1, 2))
        degenerate = span <= 1e-7                   # the fused maps are means of [0,1] maps: not re-normalised
        return replace(base, method=f"{method}+{enhance}", saliency=fused, maps=fused, degenerate=degenerate,
                       milliseconds=(time.perf_counter() - start) * 1000,
                       options={**options, "enhance": enhance, **enhance_options},
                       images=originals, names=names)

    def _finer(self, ctx: Context, chosen, finer):
        """Set up Finer-CAM on the context (its reference classes, from the clean logits); returns the torch
        objective for the gradient methods, or None."""
        from .errors import MethodNotApplicable
        from .finer import Finer

        finer = Finer.of(finer)
        if finer is None:
            return None
        if not chosen.class_specific:
            raise MethodNotApplicable(f"method '{chosen.name}' does not depend on the class: finer does not apply")
        if self.bundle.output_kind != "logits":
            raise CamInferError("finer scores logits, and this model ends in a softmax (its head returns "
                                "probabilities)")
        ctx.finer = finer
        ctx.finer_refs = np.stack([finer.references_for(row, int(c)) for row, c in zip(ctx.outputs, ctx.targets)])
        targets, refs = ctx.targets, ctx.finer_refs
        return lambda torch, scores: finer.torch_objective(torch, scores, targets, refs)

    def targets_for(self, target, outputs: np.ndarray, top_classes: int | None = None) -> np.ndarray:
        """The classes to explain: (N,) for one class per image, (N,k) for several (``top_classes``, or one
        list per image, ``[[243, 281], ...]``, all of the same length)."""
        n, classes = outputs.shape
        if top_classes is not None:
            if target is not None:
                raise CamInferError("give either target or top_classes, not both")
            if isinstance(top_classes, bool) or not isinstance(top_classes, (int, np.integer)) \
                    or not 1 <= top_classes <= classes:
                raise CamInferError(f"top_classes must be an integer from 1 to {classes}, not {top_classes!r}")
            return np.argsort(-outputs, axis=1, kind="stable")[:, :top_classes].astype(np.int64)
        if target is None:
            return outputs.argmax(axis=1)
        if isinstance(target, (str, bytes)) or not isinstance(target, (list, tuple, np.ndarray)):
            return np.array([self.class_id(target, classes)] * n, np.int64)
        values = list(target)
        if len(values) != n:
            raise CamInferError(f"{len(values)} targets given for {n} images")
        if values and all(isinstance(v, (list, tuple, np.ndarray)) for v in values):
            if len({len(v) for v in values}) != 1 or not len(values[0]):
                raise CamInferError("several classes per image: give each image a list of the same length, "
                                    "e.g. target=[[243, 281], [1, 2]]")
            return np.array([[self.class_id(c, classes) for c in v] for v in values], np.int64)
        return np.array([self.class_id(v, classes) for v in values], np.int64)

    def class_id(self, value, classes: int) -> int:
        return class_index(value, self.bundle.labels, classes)

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """A preprocessed batch (N,C,H,W), checked against the model's input; float32, C-contiguous."""
        return self.backend.check_input(x)

    def _inputs(self, images):
        """explain()'s first argument → (x, original RGB images or None, names or None)."""
        return model_inputs(images, self.bundle.preprocessing, self.check_input)

    def explain(self, images, method: str = DEFAULT_METHOD, target=None, top_classes: int | None = None,
                enhance: str | None = None, enhance_options: dict | None = None, finer=None,
                upsampled: bool = True, **options) -> Explanation:
        """Explain a batch: image paths, RGB arrays, or a preprocessed (N,C,H,W) array.

        A class-agnostic method (activation, eigen, entropy) gives one map per image whatever `target` or
        `top_classes` say (a `ClassAgnosticWarning` says so); its `Explanation.class_agnostic` is True.
        target: None = each image's top-1, an int or label for every image, one per image, or one list per
        image for several classes (``[[243, 281], ...]``); ``top_classes=k``: the k best classes of each
        image. With several classes the arrays of the `Explanation` are (N,k,...). Given image paths or
        arrays, the Explanation keeps them, so `overlay`/`save`/`plot` show the map on the original image.
        ``finer=γ`` (or a dict of gamma, references, preset): Finer-CAM, the class score minus γ times the
        scores of the closest classes (`cam_infer.finer`). ``upsampled=False``: the saliency stays at the
        target layer's resolution, normalised but not resized (what a server returning small maps sends)."""
        start = time.perf_counter()
        chosen = get_method(method)
        x, originals, names = self._inputs(images)
        if not chosen.class_specific and (target is not None or top_classes is not None):
            self.targets_for(target, np.zeros((len(x), self.bundle.num_classes)), top_classes)   # still checked
            warnings.warn(class_agnostic_note([method]), ClassAgnosticWarning, stacklevel=2)
            target = top_classes = None                 # one map per image: it does not depend on the class
        if enhance is not None:
            extra = {} if finer is None else {"finer": finer}
            return self._enhanced(x, originals, names, method, target, top_classes, enhance, enhance_options or {},
                                  {**options, **extra}, start)
        activations, outputs = self.backend.observe(x)
        model_outputs = outputs
        targets = self.targets_for(target, outputs, top_classes)
        k = targets.shape[1] if targets.ndim == 2 else None
        if k is not None:              # one row per (image, class): the feature pass is not repeated
            x, activations, outputs = (np.repeat(v, k, axis=0) for v in (x, activations, outputs))
        flat = targets.reshape(-1)
        ctx = Context(x=x, activations=activations, targets=flat, outputs=outputs, backend=self.backend,
                      bundle=self.bundle, linear_head=self.linear_head)
        objective = self._finer(ctx, chosen, finer)
        if chosen.needs == "gradients":
            ctx.gradients = self._gradients_for(method, x, activations, flat, objective)
            ctx.gradient_source = lambda xs, a, t: self._gradients_for(method, xs, a, t, objective)
        maps = chosen.implementation("classification")(ctx, **options).astype(np.float32)
        normalised, degenerate = normalise(maps)
        saliency = upsample(normalised, self.bundle.input_shape[1:]) if upsampled else normalised
        probabilities = ctx.probabilities(outputs)
        scores = probabilities[np.arange(len(flat)), flat].astype(np.float32)
        if k is not None:
            maps, saliency, scores, degenerate = (v.reshape(len(targets), k, *v.shape[1:])
                                                  for v in (maps, saliency, scores, degenerate))
        return Explanation(method, saliency, maps, targets, scores, degenerate, (time.perf_counter() - start) * 1000,
                           {**options, **({"finer": vars(ctx.finer)} if ctx.finer else {})}, labels=self.bundle.labels,
                           images=originals, names=names, preprocessing=self.bundle.preprocessing,
                           outputs=model_outputs, class_agnostic=not chosen.class_specific)
