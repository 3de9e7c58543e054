"""The Explainer: a bundle on a backend, and `explain(x, method=...)` for any batch, for every kind of model
(the bundle's task, `cam_infer.tasks`, says what differs).

    ex = Explainer("bundle/", backend="openvino")
    e = ex.explain(ex.preprocess(["cat.jpg"]), method="recipro")
    e.saliency   # (N,H,W) in [0,1]

    ex = Explainer("det/")                                                # a detector (`split_detector`)
    e = ex.explain("street.jpg", method="recipro")                         # every detection above conf
    e = ex.explain(images, "ablation", classes=["person"], conf=0.4)       # every detection of a class
    e = ex.explain(image, "recipro", boxes=[([10, 20, 120, 200], "person")])   # a box of your own
    e.items[0][0].box_image, e.overlay(0), e.save("out/")

    ex = Explainer("bundle/", backend="openvino", gradients="torch")    # + gradcam & co. (needs torch)
    ex = Explainer.from_torch(model, layer="layer4", input_size=(224, 224))  # everything on torch
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .backends import Backend, load_backend
from .bundle import Bundle
from .errors import CamInferError
from .explanation import Explanation
from .methods.registry import DEFAULT_METHOD
from .tasks import class_index, task_of


DEFAULTS = {"upsampled": True}          # the explain() arguments whose default is not None


def model_inputs(images, preprocessing, check_input):
    """Image paths, RGB arrays, or a preprocessed (N,C,H,W) float batch → (x, the original RGB images or
    None, their names or None). A batch is checked with `check_input`; images are preprocessed."""
    from .images import as_rgb_uint8, is_pil_image, load_image

    if isinstance(images, np.ndarray) and images.ndim == 4:
        if images.dtype.kind == "f":
            x = check_input(images)
            preprocessing.check_range(x)
            return x, None, None
        if images.shape[-1] not in (1, 2, 3, 4):       # not a stack of (H,W,C) photos: an integer (N,C,H,W) batch
            raise CamInferError(f"a preprocessed (N,C,H,W) batch must be floating point, not {images.dtype} (photos "
                                "as arrays are (H,W,3), uint8 or uint16)")
    if isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)) \
            or is_pil_image(images):
        images = [images]
    if isinstance(images, (bytes, bytearray)) or not hasattr(images, "__iter__"):
        raise CamInferError("explain() takes image paths, RGB arrays (H,W,3) or a preprocessed (N,C,H,W) float batch, "
                            f"not {type(images).__name__}")
    images = list(images)                     # a generator of paths (Path.glob) is taken
    originals, names = [], []
    for item in images:
        if isinstance(item, (str, os.PathLike)):
            originals.append(load_image(item))
            names.append(Path(item).stem)
        else:
            if isinstance(item, np.ndarray) and item.dtype == np.uint16 and item.size and item.max() <= 255:
                raise CamInferError("a uint16 image holds values up to 65535, and this one none above 255: 8-bit "
                                    "pixels, read as 16-bit a black image? give them as uint8 "
                                    "(image.astype(np.uint8)); a truly dark 16-bit image: scale it up")
            originals.append(as_rgb_uint8(item))
            names.append(None)
    if not originals:
        raise CamInferError("no images given")
    x = np.stack([preprocessing.standardise(preprocessing.geometry(rgb)) for rgb in originals])
    return x, originals, (names if all(names) else None)


class Explainer:
    """A bundle opened on a backend, for every kind of model: the bundle's task (`cam_infer.tasks`) says
    what differs. Backend options (device, threads, hint, precision, ...) pass through.

    ``gradients="torch"`` enables the gradient methods (classifiers): activations still come from
    `backend`, and the gradients of the target score with respect to them from the bundle's head graph run
    in PyTorch (`cam_infer.gradients`).

    Threads: one Explainer may be called from several threads at once; each call gives what it gives alone
    (passes through a PyTorch model of `from_torch` take turns). Explaining changes no process-wide setting."""

    def __init__(self, bundle: "Bundle | str | os.PathLike", backend: "str | Backend" = "auto",
                 gradients: str | None = None, **backend_options):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.task = task_of(self.bundle)(self)
        self.task.check_request({"gradients": gradients})
        self.backend = backend if isinstance(backend, Backend) else \
            load_backend(self.bundle, backend=backend, **backend_options)
        self.task.open()
        self.linear_head = self.task.linear_head()
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
        activations, scores and gradients then come from the model itself. ``layer``: a module path, or
        ``"auto"`` (the last module whose output is a feature map the model can be cut at). ``preprocess``: a
        `Preprocessing` or its fields as a dict (default: the torchvision ImageNet convention)."""
        import tempfile

        from .backends.torch import TorchBackend
        from .bundle.export import exported_bundle

        modules = getattr(model, "named_modules", lambda: [])()
        training = [f"'{name}'" if name else "the model" for name, module in modules if module.training]
        if training or getattr(model, "training", False):
            raise CamInferError("the model is in training mode; call model.eval() first (dropout and batch "
                                "statistics would change the explanation from call to call; in training mode: "
                                f"{', '.join(training[:3]) or 'the model'}{' …' if len(training) > 3 else ''})")
        folder = tempfile.TemporaryDirectory(prefix="cam-infer-torch-")
        bundle = exported_bundle(model, layer, input_size, Path(folder.name) / "bundle", exporter=exporter,
                                 preprocessing=preprocess, labels=labels, overwrite=False, opset=None, hooked=True)
        if layer == "auto":
            layer = bundle.manifest["target_layer"]["module"]
            if layer is None:
                raise CamInferError(f"layer='auto' cuts this model at tensor '{bundle.layers[0]}', which no module "
                                    "outputs (from_torch hooks a module); name a module with layer=")
        explainer = cls(bundle, backend=TorchBackend(bundle, model, layer))
        explainer._folder = folder            # the bundle lives as long as the explainer
        return explainer

    def preprocess(self, images) -> np.ndarray:
        """Image paths or RGB arrays → (N,3,H,W) float32 as the model expects."""
        return self.bundle.preprocess(images)

    @property
    def labels(self) -> list[str] | None:
        return self.bundle.labels

    def label(self, class_id: int) -> str:
        return self.bundle.label(class_id)

    @property
    def grid(self):
        """A detector's anchors: level, stride, row and column of each (`detection.decode.anchor_levels`)."""
        return getattr(self.task, "grid", None)

    def targets_for(self, target, outputs: np.ndarray, top_classes: int | None = None) -> np.ndarray:
        """A classifier's classes to explain: (N,) for one class per image, (N,k) for several
        (``top_classes``, or one list per image, ``[[243, 281], ...]``, all of the same length)."""
        return self._task_only("targets_for")(target, outputs, top_classes)

    def class_id(self, value) -> int:
        """The index of a class given by index or name (one line's error where the bundle has no such class)."""
        return class_index(value, self.bundle.labels, self.bundle.num_classes)

    def detect(self, images, conf: float | None = None, iou: float | None = None,
               max_det: int | None = None) -> list:
        """A detector's detections of every image (`Detections`, input pixels), by the bundle's NMS thresholds
        unless given."""
        return self._task_only("detect")(self._inputs(images)[0], conf, iou, max_det)

    def _task_only(self, name: str):
        if not hasattr(self.task, name):
            raise CamInferError(f"{name}() does not apply to this bundle: it is a {self.task.name} model")
        return getattr(self.task, name)

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """A preprocessed batch (N,C,H,W), checked against the model's input; float32, C-contiguous."""
        return self.backend.check_input(x)

    def _inputs(self, images):
        """explain()'s first argument → (x, original RGB images or None, names or None)."""
        return model_inputs(images, self.bundle.preprocessing, self.check_input)

    def class_agnostic(self, method: str) -> bool:
        """Whether `method`'s maps on this bundle do not depend on the class explained: activation, eigen, entropy
        anywhere, Grad Entropy-CAM at a cut a GAP→linear head follows. Its explanations are then shown and recorded
        under no class."""
        from .methods.registry import get_method, split_variant
        return self.task.class_agnostic(get_method(split_variant(method)[0]))

    def explain(self, images, method: str = DEFAULT_METHOD, target=None, top_classes: int | None = None,
                enhance: str | None = None, enhance_options: dict | None = None, finer=None,
                upsampled: bool = True, classes=None, boxes=None, conf: float | None = None,
                iou: float | None = None, max_det: int | None = None, region=None, **options) -> Explanation:
        """Explain a batch: image paths, RGB arrays, or a preprocessed (N,C,H,W) array. Given image paths or
        arrays, the Explanation keeps them, so `overlay`/`save`/`plot` show the map on the original image.

        A classifier's target: None = each image's top-1, an int or label for every image, one per image,
        or one list per image for several classes (``[[243, 281], ...]``); ``top_classes=k``: the k best
        classes of each image. With several classes the arrays of the `Explanation` are (N,k,...). A
        class-agnostic method (activation, eigen, entropy) gives one map per image whatever `target` or
        `top_classes` say (a `ClassAgnosticWarning` says so); its `Explanation.class_agnostic` is True.
        ``finer=γ`` (or a dict of gamma, references, preset): Finer-CAM, the class score minus γ times the
        scores of the closest classes (`cam_infer.finer`). ``upsampled=False``: the saliency stays at the
        target layer's resolution, normalised but not resized (what a server returning small maps sends).

        A detector's target: None or "all" (every detection above conf), a detection index or a list of
        them (after NMS, by score); ``classes``: only the detections of these classes (labels or indices);
        ``boxes``: [(box [x1,y1,x2,y2] in the original image's pixels, class), ...] per image (one list for
        one image), each explained for the anchor that predicts it best; ``conf``, ``iou``, ``max_det``: the
        NMS thresholds (default: the bundle's). `Explanation.items` then holds one map per detection.

        A segmenter's target: a class over a region of pixels (`cam_infer.tasks.segmentation`): None (the largest
        predicted class), a class, a list of them or "all" (every class present); ``region``: a mask, box or pixel
        in the original image's pixels (default: the pixels the model assigns to the class).

        An argument that does not apply to the bundle's kind of model is an error."""
        start = time.perf_counter()
        request = {"target": target, "top_classes": top_classes, "enhance": enhance,
                   "enhance_options": enhance_options, "finer": finer, "upsampled": upsampled,
                   "classes": classes, "boxes": boxes, "conf": conf, "iou": iou, "max_det": max_det, "region": region}
        self.task.check_request({k: v for k, v in request.items() if k != "target" and v is not DEFAULTS.get(k)})
        if not isinstance(method, str):
            raise CamInferError(f"method must be one method's name (a str), not {type(method).__name__}")
        if not isinstance(upsampled, (bool, np.bool_)):
            raise CamInferError(f"upsampled must be True or False, not {upsampled!r}")
        if enhance_options is not None and enhance is None:
            raise CamInferError("enhance_options= sets an enhancer's options; give the enhancer with enhance=")
        spec = self.task.method(method)
        x, originals, names = self._inputs(images)
        request = self.task.request_for(spec, len(x), request)
        if enhance is not None:
            return self._ran_here(self.task.enhanced(x, originals, names, method, request, options, start))
        explained = self.task.explained_in_pass(spec, x, request, options, originals, names, start)
        if explained is not None:
            return self._ran_here(explained)
        activations, outputs = self.task.observe_for(spec, x, options)
        jobs = self.task.contexts(spec, x, activations, outputs, request, originals)
        maps = [self.task.run_method(spec, ctx, chosen, options) for ctx, chosen, *_ in jobs]
        return self._ran_here(self.task.explanation(spec, method, jobs, maps, request, options, originals, names,
                                                    outputs, start))

    def _ran_here(self, e: Explanation) -> Explanation:
        """`e` with where it ran, as a folder run's settings record it: the runtime, its precision, the layer."""
        e.runtime, e.precision, e.layers = self.backend.name, self.backend.precision, self.bundle.layers
        return e
