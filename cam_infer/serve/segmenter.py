"""A segmenter bundle served: the same server, batcher and protocol as a classifier's bundle; the target is a class
over a region of pixels (`cam_infer.tasks.segmentation`), as `cam-infer explain` takes it.

    POST /explain?method=recipro&class=dog&region=[40,30,200,180]&overlay=png     an image file

answers one map per explained class: its class and label (none for a class-agnostic map), the clean region score
S = (1/|R|) Σ_{p∈R} y_c(p), where the region came from and its pixels, the map at the cut's resolution (ReLU'd and
min–max'd to [0,1]), and with ``overlay=png`` the maps and the regions' outlines over the sent image. ``class`` is
an index, a label, a list of them or ``all`` (every class present); ``region`` a box ``[x1, y1, x2, y2]`` or a
pixel ``[x, y]`` in the sent image's pixels (default: the pixels the model assigns to the class).

On ``/v2/models/{name}/infer`` (preprocessed FP32 or UINT8 pixels, as for a classifier) each image gets one map:
outputs ``scores`` (N,C,H,W) the class scores, ``saliency`` (N,h,w), ``saliency_class`` (N,) (-1: class-agnostic);
parameters ``method``, ``class`` (one class, or one per image; default the largest predicted class) and ``region``
(a box or pixel in the model input's pixels, for every image of the request).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import numpy as np

from ..errors import CamInferError
from ..postprocess import normalise
from ..segmentation.cut_set import finest_grid
from .models import NO_CLASS, ServedBundle, _classes, known_parameters
from .tensors import ProtocolError


@dataclass(frozen=True)
class RegionKey:
    """What a batch of segmenter requests shares: the method, whether classes are given, the region."""

    method: str
    classes: bool
    region: tuple | None


class ServedSegmenter(ServedBundle):
    """A segmentation bundle: `ServedBundle`'s runtime and method checks, the segmentation task's targets."""
    parameters = ("method", "class", "region")
    explain_parameters = ("method", "class", "region", "overlay")

    def checked_method(self, method: str) -> str:
        from ..methods import get_method
        super().checked_method(method)
        try:
            get_method(method, "segmentation")
        except CamInferError as exc:
            raise ProtocolError(str(exc)) from None
        return method

    def metadata(self) -> tuple[list, list]:
        classes, size = self.bundle.num_classes, self.bundle.output_shape[1:]
        levels = self.bundle.cut_levels
        h, w = self.bundle.activation_shape[1:] if levels is None else finest_grid(levels)
        inputs = [{"name": self.input_name, "datatype": "FP32", "shape": [-1, *self.input_shape]}]
        outputs = [{"name": "scores", "datatype": "FP32", "shape": [-1, classes, *size]},
                   {"name": "saliency", "datatype": "FP32", "shape": [-1, h, w]},
                   {"name": "saliency_class", "datatype": "INT64", "shape": [-1]}]
        return inputs, outputs

    def key(self, parameters: dict, n: int) -> tuple[RegionKey, list | None]:
        known_parameters(parameters, self.parameters)
        method = self.checked_method(str(parameters.get("method", self.method)))
        if parameters.get("class") == "all" or isinstance(parameters.get("class"), list) and n == 1 and \
                len(parameters["class"]) > 1:
            raise ProtocolError("infer gives one map per image: 'class' is one class (or one per image); "
                                "/explain explains several classes of an image")
        classes = _classes(parameters.get("class"), n, self.bundle.num_classes, self.bundle.labels)
        return RegionKey(method, classes is not None, region_of(parameters.get("region"))), classes

    def run(self, x: np.ndarray, key: RegionKey, classes: list | None) -> dict[str, np.ndarray]:
        """One map per image: its class over its region (the class given, else the largest predicted one)."""
        scores, maps, explained = [], [], []
        for i in range(len(x)):
            e = self.explainer.explain(x[i:i + 1], key.method, target=None if classes is None else classes[i],
                                       region=None if key.region is None else list(key.region),
                                       **self.options.get(key.method, {}))
            item = e.items[0][0]
            scores.append(e.outputs[0])
            maps.append(normalise(item.raw[None])[0][0])
            explained.append(NO_CLASS if item.class_agnostic else item.class_id)
        return {"scores": np.stack(scores).astype(np.float32), "saliency": np.stack(maps),
                "saliency_class": np.asarray(explained, np.int64)}

    def explain_image(self, rgb: np.ndarray, parameters: dict, overlay: str | None) -> dict:
        """The /explain answer for one RGB image: every explained class's map, score and region."""
        method = self.checked_method(str(parameters.get("method", self.method)))
        target = parameters.get("class")
        region = region_of(parameters.get("region"))
        e = self.explainer.explain([rgb], method, target=target, region=None if region is None else list(region),
                                   **self.options.get(method, {}))
        items = e.items[0]
        answer = {"method": method, "precision": self.precision, "class_agnostic": bool(e.class_agnostic),
                  "maps": [{**s.record(), "map": map_json(normalise(s.raw[None])[0][0])} for s in items]}
        if overlay not in (None, "", "none", "png"):
            raise ProtocolError(f"overlay must be 'png' or 'none', not {overlay!r}")
        if overlay == "png":
            from ..postprocess import encode_png
            answer["overlay_png"] = base64.b64encode(encode_png(e.overlay(0))).decode()
        return answer


def map_json(saliency: np.ndarray) -> dict:
    return {"shape": list(saliency.shape), "data": np.round(saliency.astype(np.float64), 4).tolist()}


def region_of(value) -> tuple | None:
    """A request's region: a box [x1, y1, x2, y2] or a pixel [x, y] (JSON), checked."""
    if value is None:
        return None
    given = value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, list) or len(value) not in (2, 4) or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        shown = given[:60] if isinstance(given, str) and value is None else json.dumps(value)[:60]
        raise ProtocolError(f"'region' is a box [x1, y1, x2, y2] or a pixel [x, y], not {shown}")
    return tuple(float(v) for v in value)
