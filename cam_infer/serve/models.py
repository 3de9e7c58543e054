"""What `cam-infer serve` serves: a bundle (the Explainer and a method, chosen per request) or a fused model
(`cam-infer fuse`: the scores and the map in one graph). Both take batches of preprocessed images and
return named outputs; per request: the method (bundles), the class explained or the top-k.

The image input is FP32, preprocessed; or UINT8 pixels (N, H, W, 3) RGB after resizing and cropping, which
the server normalises as the bundle says (``pixels``; a quarter of the bytes on the wire).

Outputs of a bundle, as a fused model has them: ``scores`` (N,C) the model's own outputs, ``saliency``
(N,h,w) the map at the target layer's resolution, ReLU'd and min–max'd to [0,1] (``(N,k,h,w)`` with
top_classes = k), ``saliency_class`` (N,) or (N,k) int64, the class each map explains. A class-agnostic method
(activation, eigen, entropy) gives one map per image whatever ``class`` or ``top_classes`` ask, and -1 as its class.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CamInferError
from ..methods.registry import METHODS, class_agnostic, explaining
from ..images import Preprocessing
from .tensors import ProtocolError, datatype

NO_CLASS = -1                # the saliency_class of a class-agnostic map (activation, eigen, entropy)
SPINNING = "during-run"      # ONNX Runtime's threads: no futex wake-up per operator, idle between requests
SCORES = "scores"            # the scores output's name, a bundle's and a fused classifier's


@dataclass(frozen=True)
class Key:
    """What a batch shares: requests with the same key run as one batch."""

    method: str
    top_classes: int
    classes: bool                      # a class given per image (else each image's top-1 / top-k)
    pixels: bool = False               # UINT8 pixels the served graph normalises itself (`pixel_graph`)


class ServedBundle:
    kind = "bundle"
    aliases: dict[str, str] = {}        # another name a client may ask an output by → the output's name
    parameters = ("method", "class", "top_classes")         # what /infer's parameters may set
    explain_parameters = ("method", "class", "overlay")     # what /explain's query may set

    def __init__(self, path, method: str, backend: str = "auto", device: str = "CPU", threads: int | None = None,
                 precision: str = "f32", options: dict | None = None):
        from ..bundle import Bundle
        from ..explainer import Explainer
        from ..methods import get_method
        from ..runs import options_per_method
        runtime = {"threads": threads} if threads else {}
        if backend == "onnxruntime" or (backend == "auto" and Bundle.load(path).graph_format == "onnx"):
            runtime["spinning"] = SPINNING          # no spinning threads while the next request is read
        self.explainer = Explainer(path, backend=backend, device=device, precision=precision, **runtime)
        self.precision = self.explainer.backend.precision
        self.bundle = self.explainer.bundle
        self.method = self.checked_method(method)
        get_method(self.method)
        self.input_name = self.bundle.input_name
        self.input_shape = list(self.bundle.input_shape)
        self.preprocessing = self.pixels = self.bundle.preprocessing
        task = self.explainer.task.name
        self.options = options_per_method(self.served_methods(), options or {}, task)   # --option, per method
        for name, chosen in self.options.items():         # a bad value refused at start, not on every request
            METHODS[name].check_options(chosen, task)

    def served_methods(self) -> list[str]:
        """The methods a request may ask for: the task's gradient-free ones that apply to this bundle."""
        linear = self.explainer.linear_head is not None
        return [n for n in explaining(self.explainer.task.name)
                if not METHODS[n].gradient and not METHODS[n].applies(linear)]

    def checked_method(self, method: str) -> str:
        task = self.explainer.task.name
        served = [n for n in explaining(task) if not METHODS[n].gradient]
        chosen = METHODS.get(method)
        if chosen is None or chosen.gradient or method not in served:
            raise ProtocolError(f"method {method!r} is not served for this {task} model; its gradient-free methods: "
                                f"{', '.join(served)}")
        why_not = chosen.applies(self.explainer.linear_head is not None)
        if why_not:
            raise ProtocolError(why_not)
        return method

    def metadata(self) -> tuple[list, list]:
        classes = self.bundle.num_classes
        h, w = self.bundle.activation_shape[1:]
        inputs = [{"name": self.input_name, "datatype": "FP32", "shape": [-1, *self.input_shape]}]
        outputs = [{"name": "scores", "datatype": "FP32", "shape": [-1, classes]},
                   {"name": "saliency", "datatype": "FP32", "shape": [-1, h, w]},
                   {"name": "saliency_class", "datatype": "INT64", "shape": [-1]}]
        return inputs, outputs

    def key(self, parameters: dict, n: int) -> tuple[Key, list | None]:
        """The batch key of a request's parameters, and its per-image classes (or None)."""
        known_parameters(parameters, self.parameters)
        method = self.checked_method(str(parameters.get("method", self.method)))
        top_classes = _positive_int(parameters.get("top_classes", 1), "top_classes")
        classes = _classes(parameters.get("class"), n, self.bundle.num_classes, self.bundle.labels)
        if classes is not None and top_classes != 1:
            raise ProtocolError("give 'class' or 'top_classes', not both")
        if top_classes > self.bundle.num_classes:
            raise ProtocolError(f"top_classes {top_classes} is more than the model's {self.bundle.num_classes} classes")
        if class_agnostic(method):                  # one map per image whatever the class: no class asked
            return Key(method, 1, False), None
        return Key(method, top_classes, classes is not None), classes

    def run(self, x: np.ndarray, key: Key, classes: list | None) -> dict[str, np.ndarray]:
        e = self.explainer.explain(x, key.method, target=classes, top_classes=key.top_classes if key.top_classes > 1 else None,
                                   upsampled=False, **self.options.get(key.method, {}))
        explained = np.full(e.targets.shape, NO_CLASS) if e.class_agnostic else e.targets
        return {"scores": e.outputs.astype(np.float32), "saliency": e.saliency,
                "saliency_class": explained.astype(np.int64)}


@dataclass(frozen=True)
class Recorded:
    """What a fused classifier records of its bundle (`cam-infer fuse`), read by /explain as a Bundle's."""

    preprocessing: Preprocessing
    output_kind: str                   # logits | probabilities
    labels: list[str] | None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.preprocessing.channels, *self.preprocessing.input_size)

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if self.labels else str(class_id)


class ServedFused:
    """A fused ONNX model on ONNX Runtime or OpenVINO (a fused IR on OpenVINO): its own inputs and outputs, a
    classifier's score output named ``scores`` as a bundle's (its own name kept as an alias); ``class_id`` (int64) filled from the
    request's class where the model takes one. A classifier that records its preprocessing and output kind
    (fused by this release) also answers /explain."""

    kind = "fused"
    explain_parameters = ServedBundle.explain_parameters

    def __init__(self, path, backend: str = "auto", device: str = "CPU", threads: int | None = None,
                 precision: str = "f32"):
        meta, self.inputs, self.outputs = _fused_record(Path(path))
        if "cam_infer.method" not in meta:
            raise CamInferError(f"'{path}' is not a model written by cam-infer fuse (no cam_infer.method metadata); "
                                "serve a bundle, or fuse one first")
        self.method = meta["cam_infer.method"]
        self.detector = meta.get("cam_infer.target") == "detector"
        self.class_specific = METHODS[self.method].class_specific and meta.get("cam_infer.target") not in (
            "detector", "segmenter")
        self.path = Path(path)
        recorded = meta.get("cam_infer.preprocessing")   # for UINT8 pixel inputs (older fused models lack it)
        self.pixels = Preprocessing.from_dict(json.loads(recorded)) if recorded else None
        self.runtime = FusedRuntime(self.path, backend, device, threads, precision, self.pixels)
        self.pixels_in_graph = self.runtime.pixel_model is not None
        self.precision = self.runtime.precision
        own = self.outputs[0]["name"]
        self.aliases = {} if self.detector or own == SCORES else {own: SCORES}
        if self.aliases:
            self.outputs[0] = {**self.outputs[0], "name": SCORES}
        image = [i for i in self.inputs if i["name"] != "class_id"]
        self.input_name, self.input_shape = image[0]["name"], image[0]["shape"][1:]
        self.takes_class = any(i["name"] == "class_id" for i in self.inputs)
        kind = meta.get("cam_infer.output_kind")
        explains = self.pixels is not None and kind is not None and meta.get("cam_infer.target") not in (
            "detector", "segmenter")                    # a fused segmenter's map is served as its output only
        self.labels = json.loads(meta["cam_infer.labels"]) if "cam_infer.labels" in meta else None
        self.bundle = Recorded(self.pixels, kind, self.labels) if explains else None
        self.fills_class = meta.get("cam_infer.target") not in ("detector", "segmenter") and not any(
            o["name"] == "saliency_class" for o in self.outputs)         # a class-agnostic or --class-input model
        if self.fills_class:
            self.outputs.append({"name": "saliency_class", "datatype": "INT64", "shape": [-1]})
        self.preprocessing = self.pixels if explains else None    # None: no /explain
        scores = self.outputs[0]["shape"]
        self.num_classes = scores[1] if len(scores) == 2 and scores[1] > 0 else 2**31 - 1
        top = [o for o in self.outputs if o["name"] == "saliency"]
        self.top_classes = top[0]["shape"][1] if top and len(top[0]["shape"]) == 4 else 1

    def metadata(self) -> tuple[list, list]:
        return self.inputs, self.outputs

    def key(self, parameters: dict, n: int) -> tuple[Key, list | None]:
        known_parameters(parameters, ServedBundle.parameters)
        method = str(parameters.get("method", self.method))
        if method != self.method:
            raise ProtocolError(f"this fused model computes {self.method}; it cannot change method per request")
        top_classes = _positive_int(parameters.get("top_classes", self.top_classes), "top_classes")
        if top_classes != self.top_classes:
            raise ProtocolError(f"this fused model explains the top {self.top_classes} class(es); fuse again for top_classes")
        if parameters.get("class") is not None and not self.takes_class:
            raise ProtocolError("this fused model explains its top class; fuse with --class-input to choose it"
                                if self.class_specific else
                                "this fused model's map is class-agnostic: it takes no class")
        classes = _classes(parameters.get("class"), n, self.num_classes, self.labels)
        if classes is None and self.takes_class:
            raise ProtocolError("this fused model needs 'class' (it was fused with --class-input)")
        return Key(method, top_classes, classes is not None), classes

    def run(self, x: np.ndarray, key: Key, classes: list | None) -> dict[str, np.ndarray]:
        feeds = {self.input_name: x}
        if self.takes_class:
            feeds["class_id"] = np.asarray(classes, np.int64)
        outputs = self.runtime.run(feeds, pixels=key.pixels)
        outputs = {self.aliases.get(name, name): value for name, value in outputs.items()}
        if self.fills_class:
            outputs["saliency_class"] = self._explained_classes(outputs["scores"], classes)
        return outputs

    def _explained_classes(self, scores: np.ndarray, classes: list | None) -> np.ndarray:
        """The classes the maps explain, as a bundle's `saliency_class`, for a fused model without that output: the
        requested ones (--class-input), the top ones (a top-1 model of an earlier release), or none (-1)."""
        if self.takes_class:
            return np.asarray(classes, np.int64)
        if self.class_specific:
            return scores.reshape(len(scores), -1).argmax(axis=1).astype(np.int64)
        return np.full(len(scores), NO_CLASS, np.int64)


class FusedRuntime:
    """A fused model's session: ONNX Runtime (default) or OpenVINO, all outputs by name."""

    def __init__(self, path: Path, backend: str, device: str, threads: int | None, precision: str = "f32",
                 pixels: Preprocessing | None = None):
        from ..backends import ALIASES
        from ..backends.sessions import (Lender, RuntimeOptions, compiled_precision, onnxruntime_session,
                                         openvino_compiled, openvino_model, precision_note)
        from .pixel_graph import openvino_pixel_model, takes_pixels_in_graph
        ir = Path(path).suffix.lower() == ".xml"
        self.backend = ("openvino" if ir else "onnxruntime") if backend == "auto" else ALIASES.get(backend, backend)
        if ir and self.backend == "onnxruntime":
            raise CamInferError(f"'{path}' is a fused OpenVINO IR: it runs on openvino, not onnxruntime")
        self.pixel_model = None
        self._pixels_compiled, self._compiling = None, threading.Lock()
        if self.backend == "onnxruntime":
            runtime = RuntimeOptions(threads=threads, spinning=SPINNING, precision=precision)
            self.session = onnxruntime_session(path, runtime)
            self.names = [o.name for o in self.session.get_outputs()]
            self.precision = "f16" if half_precision(path) else "f32"     # the CPU provider computes it as it is
        elif self.backend == "openvino":
            runtime = RuntimeOptions(threads=threads, device=device, hint="latency", precision=precision)
            try:
                model = openvino_model(path)
            except RuntimeError as exc:             # an int8 QOperator file's com.microsoft ops
                from ..bundle.verify import openvino_message
                raise CamInferError(f"'{Path(path).name}' does not run on openvino ({openvino_message(exc)}); serve it "
                                    "with --backend onnxruntime") from None
            compiled = openvino_compiled(model, runtime)
            self.requests = Lender(compiled.create_infer_request)
            if takes_pixels_in_graph(pixels):       # UINT8 pixels normalised in the graph: compiled on first use
                try:
                    self.pixel_model = openvino_pixel_model(model, pixels)
                except RuntimeError:                # a graph OpenVINO cannot prepend them to: the server does it
                    self.pixel_model = None
            if self.pixel_model is not None:
                self._pixel_requests = Lender(lambda: self._compiled_pixels(runtime).create_infer_request())
            self.names = [p.get_any_name() for p in model.outputs]     # as saved (compiling may merge names)
            self.precision = compiled_precision(compiled, runtime.precision)
            precision_note(runtime.precision, self.precision, device)
        else:
            raise CamInferError(f"a fused model runs on onnxruntime or openvino, not {backend!r}")

    def _compiled_pixels(self, runtime):
        from ..backends.sessions import openvino_compiled
        with self._compiling:
            if self._pixels_compiled is None:
                self._pixels_compiled = openvino_compiled(self.pixel_model, runtime)
        return self._pixels_compiled

    def run(self, feeds: dict, pixels: bool = False) -> dict[str, np.ndarray]:
        """The outputs by name; ``pixels``: the image input is UINT8 pixels, run on the graph that normalises
        them (`pixel_model`)."""
        if self.backend == "onnxruntime":
            return dict(zip(self.names, self.session.run(None, feeds)))
        with (self._pixel_requests if pixels else self.requests).borrow() as request:
            request.infer(feeds)
            return {name: request.get_output_tensor(i).data.copy() for i, name in enumerate(self.names)}


def _fused_record(path: Path) -> tuple[dict, list, list]:
    """A fused model's cam_infer metadata, inputs and outputs (`_tensor`): an ONNX file's metadata_props, an IR's
    rt_info."""
    if path.suffix.lower() == ".xml":
        from ..backends.sessions import openvino_model
        from ..fuse.ir import described
        model = openvino_model(path)
        return described(model), [_port(p) for p in model.inputs], [_port(p) for p in model.outputs]
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    return ({p.key: p.value for p in model.metadata_props},
            [_tensor(v) for v in model.graph.input if v.name not in initializers],
            [_tensor(v) for v in model.graph.output])


# the binary tensor extension's (read by `tensors`) and Triton's reserved ones, which tritonclient sends when its
# caller sets them (a single model with no sequences or queue: taken and not acted on, as before)
PROTOCOL_PARAMETERS = ("binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout")


def known_parameters(given, allowed, where: str = "parameter") -> None:
    """Refuse (400) a parameter this model does not read: a misspelt 'class' would otherwise explain another
    class without a word."""
    unknown = sorted(set(given) - set(allowed) - set(PROTOCOL_PARAMETERS))
    if unknown:
        raise ProtocolError(f"unknown {where}{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                            f"this model takes {', '.join(allowed)}")


def _port(port) -> dict:
    """An IR input or output as `_tensor` describes an ONNX one."""
    return {"name": port.get_any_name(), "datatype": datatype(port.get_element_type().to_dtype()),
            "shape": [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]}


def _tensor(value) -> dict:
    """A graph input or output as the protocol's metadata describes it: name, datatype, shape (-1: any)."""
    from onnx.helper import tensor_dtype_to_np_dtype
    tensor = value.type.tensor_type
    return {"name": value.name, "datatype": datatype(tensor_dtype_to_np_dtype(tensor.elem_type)),
            "shape": [d.dim_value if d.dim_value > 0 else -1 for d in tensor.shape.dim]}


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProtocolError(f"parameter '{name}' must be a positive integer, not {json.dumps(value)}")
    return value


def _classes(value, n: int, num_classes: int, labels) -> list | None:
    """'class': one class for every image (an index or a label) or a list with one per image, each resolved
    as everywhere else (`explainer.class_index`: ambiguous and unknown labels are errors)."""
    from ..tasks import class_index
    if value is None:
        return None
    values = value if isinstance(value, list) else [value] * n
    if len(values) != n:
        raise ProtocolError(f"'class' has {len(values)} entries for {n} images")
    try:
        return [class_index(v, labels, num_classes) for v in values]
    except CamInferError as exc:
        raise ProtocolError(f"class {json.dumps(values[0] if len(set(map(str, values))) == 1 else values)} is not "
                            f"a class of this model: {exc}") from None


def half_precision(path) -> bool:
    """Whether an ONNX model file computes in float16 (`bundle.graph.reads_float16_weights`)."""
    import onnx

    from ..bundle.graph import reads_float16_weights
    return reads_float16_weights(onnx.load(str(path), load_external_data=False).graph)
