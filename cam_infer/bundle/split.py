"""Cut an ONNX classifier at a target layer into ``features.onnx`` and ``head.onnx``.

``head(features(x)) == model(x)``: checked on random images for batch 1 and 3 before anything is
written. Both graphs get a dynamic batch axis, also when the source hard-codes batch 1 (Reshape
targets that copy the batch are rewritten); when that does not verify, the graphs keep the fixed
batch and the backends run them image by image (``"batch": "fixed"`` in the manifest).
Both graphs take and return float32 NCHW whatever the file has: nodes at the boundary cast float16
inputs, transpose for NHWC inputs, and round, clip and cast for uint8/int8 inputs. A quantized
activation is cut exactly: `features` ends with DequantizeLinear (float activations for the methods)
and `head` starts with QuantizeLinear with the tensor's own scale and zero point, so the int8 model
keeps running as int8. A quantized Softmax at the end is left out of the head (`anatomy.score_output`).
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import numpy as np
import onnx

from ..errors import CamInferError
from ..images import Preprocessing
from .anatomy import check_class_scores, check_classifier_output, check_one_output, declared_image_size, score_output
from .cut import extract
from .graph import (INTEGER_TYPES, Graph, InputSpec, constant_value, load_onnx, names_metadata,
                    recorded_metadata)
from .layers import TargetLayer, find_target_layer
from .manifest import Bundle
from .verify import Mismatch, random_images, verify
from .write import manifest_for, write_bundle, write_onnx_bundle

__all__ = ["random_images", "split_onnx", "write_bundle"]

PREPROCESSING_FIELDS = tuple(f.name for f in fields(Preprocessing))     # what preprocessing= and a model's record set


def split_onnx(model: "str | os.PathLike | onnx.ModelProto", layer: str = "auto",
               out: "str | os.PathLike | None" = None, *, input_size: tuple[int, int] | None = None,
               preprocessing: "Preprocessing | dict | None" = None, labels: "list[str] | str | None" = None,
               overwrite: bool = False, provenance: dict | None = None, layout: str | None = None) -> Bundle:
    """Split `model` at `layer` and write a verified bundle to `out`; return the loaded `Bundle`.

    layer: ``auto`` (the last feature map before the global pooling that is a cut point), an ONNX tensor
    name, a node name, or a torch module path (``layer4``, ``features.29``).
    preprocessing: a `Preprocessing` or a dict of its fields overriding the defaults (ImageNet's for
    float colour inputs; x·1 with no mean/std for uint8 inputs; x/255 for grayscale).
    labels: class names, or the path of a text file with one per line.
    layout: ``nchw`` or ``nhwc`` when the input's layout cannot be told from its shape.
    """
    if out is None:
        raise CamInferError("give an output folder for the bundle (--out)")
    check_split_arguments(model, layer, out, preprocessing, labels, provenance)
    source = None
    if isinstance(model, (str, os.PathLike)):
        source = Path(model)
        model = load_onnx(source)
    _check_declared_output(model)
    given = preprocessing
    preprocessing = with_recorded(model, preprocessing)
    graph = Graph.from_model(model, input_size, layout)
    check_class_scores(graph)
    spec = graph.input_spec
    normalisation = normalisation_record(model, given, spec.dtype)
    target = find_target_layer(graph, layer)
    prep = preprocessing_for(spec, preprocessing, input_size)
    if guessed(normalisation):
        check_default_normalisation(model, prep)
    features, head, batch_mode, verification = _split_verified(graph, target, prep)
    num_classes = verification.pop("num_classes")
    labels = read_labels(labels, num_classes) if labels is not None else recorded_labels(model, num_classes)
    manifest = manifest_for(graph, target, prep, features, head, batch_mode, verification, num_classes, labels,
                            source, provenance or {}, normalisation)
    return write_onnx_bundle(Path(out), features, head, manifest, overwrite)


# --- checks and options ---------------------------------------------------------------------

def _check_declared_output(model: onnx.ModelProto) -> None:
    """Refuse a model whose declared output is not (N,C) before anything else (a detector's (N,22,2100))."""
    check_one_output([o.name for o in model.graph.output])
    output = model.graph.output[0]
    dims = output.type.tensor_type.shape.dim
    if dims:
        check_classifier_output(tuple(d.dim_value if d.HasField("dim_value") else "?" for d in dims), output.name,
                                declared_image_size(model))


def recorded_preprocessing(model) -> dict | None:
    """The preprocessing a model file records for itself (``cam_infer.preprocessing`` metadata: JSON, the fields of
    `Preprocessing`), used where none is given: the package's own segmenter, a fused model split again; the same
    record in an IR's rt_info (`recorded_metadata`: an ONNX file converted to IR, or the package's own section)."""
    text = recorded_metadata(model).get("cam_infer.preprocessing")
    if not text:
        return None
    try:
        recorded = json.loads(text)
    except ValueError:
        recorded = None
    if not isinstance(recorded, dict) or set(recorded) - set(PREPROCESSING_FIELDS):
        where = "metadata" if isinstance(model, onnx.ModelProto) else "record (the IR's rt_info)"
        raise CamInferError(f"the model's cam_infer.preprocessing {where} is not a JSON object of preprocessing "
                            f"fields ({', '.join(sorted(PREPROCESSING_FIELDS))}); give --mean/--std/--scale (or "
                            "preprocessing=)")
    recorded.pop("input_size", None)                 # the model's own input says it
    return recorded


def with_recorded(model, preprocessing):
    """The preprocessing a split uses: the fields given over those the model file records (a `Preprocessing` given
    whole is used as it is)."""
    recorded = recorded_preprocessing(model)
    if recorded is None or isinstance(preprocessing, Preprocessing):
        return preprocessing
    return {**recorded, **(preprocessing or {})}


def recorded_labels(model, num_classes: int) -> list[str] | None:
    """The class names a model file (ONNX, or an ``ov.Model``) records (``cam_infer.labels``, as a fused model records
    them, or ``names``, as Ultralytics and the package's own models write it: a list or {index: name}) when they name
    every class."""
    names = names_metadata(model, ("cam_infer.labels", "names"))
    if isinstance(names, dict) and sorted(names) == list(range(num_classes)):
        names = [names[i] for i in range(num_classes)]
    if isinstance(names, (list, tuple)) and len(names) == num_classes:
        return [str(n) for n in names]
    return None


def check_split_arguments(model, layer, out, preprocessing, labels, provenance) -> None:
    """The arguments of a split by type, each wrong one as one line (not an AttributeError from inside)."""
    if not isinstance(model, (str, os.PathLike, onnx.ModelProto)):
        raise CamInferError(f"model is an .onnx path or an onnx.ModelProto, not {type(model).__name__}")
    if not isinstance(layer, str) or not layer:
        raise CamInferError(f"layer is a name (a tensor, a node or a module path) or 'auto', not {layer!r}")
    if not isinstance(out, (str, os.PathLike)):
        raise CamInferError(f"out is a folder's path, not {type(out).__name__}")
    if preprocessing is not None and not isinstance(preprocessing, (Preprocessing, dict)):
        raise CamInferError("preprocessing is a Preprocessing or a dict of its fields, not "
                            f"{type(preprocessing).__name__}")
    if isinstance(preprocessing, dict):
        unknown = sorted(set(preprocessing) - set(PREPROCESSING_FIELDS))
        if unknown:
            raise CamInferError(f"preprocessing has no field {', '.join(map(repr, unknown))}; its fields: "
                                f"{', '.join(PREPROCESSING_FIELDS)}")
    if labels is not None and not isinstance(labels, (str, os.PathLike, list, tuple)):
        raise CamInferError(f"labels are a list of class names or a text file's path, not {type(labels).__name__}")
    if provenance is not None and not isinstance(provenance, dict):
        raise CamInferError(f"provenance is a dict, not {type(provenance).__name__}")


def preprocessing_for(spec: InputSpec, prep, input_size) -> Preprocessing:
    size = tuple(input_size or spec.size)
    if isinstance(prep, Preprocessing):
        if tuple(prep.input_size) != size:
            raise CamInferError(f"preprocessing input size {prep.input_size} differs from the model's {size}")
        if prep.channels != spec.channels:
            raise CamInferError(f"preprocessing gives {prep.channels} channels, the model takes {spec.channels}")
        return _integer_range_checked(prep, spec.dtype)
    fields = dict(prep or {})
    fields["input_size"] = size
    fields.setdefault("channels", spec.channels)
    if spec.dtype in INTEGER_TYPES.values():           # a model that takes raw pixels: 0..255 (uint8), or
        fields.setdefault("scale", 1.0)                # shifted into int8's -128..127 (pixel - 128)
        fields.setdefault("mean", (128.0 if spec.dtype == "int8" else 0.0,) * spec.channels)
        fields.setdefault("std", (1.0,) * spec.channels)
    try:
        prep = Preprocessing(**fields)
    except (TypeError, ValueError) as exc:          # a field of the wrong kind (a model's record: "resize": "abc")
        raise CamInferError(f"the preprocessing cannot be read ({exc}); give --mean/--std/--scale (or "
                            "preprocessing=)") from None
    if prep.channels != spec.channels:
        raise CamInferError(f"preprocessing gives {prep.channels} channels, the model takes {spec.channels}")
    return _integer_range_checked(prep, spec.dtype)


NORMALISATION = ("mean", "std", "scale")


def normalisation_record(model, given, dtype: str) -> dict:
    """Where each of the bundle's mean, std and scale comes from (the manifest's `normalisation`, which `info` shows):
    "given" (preprocessing=; --mean, --std, --scale), "model" (what the model file records, `recorded_preprocessing`;
    or its integer input, which takes the pixels as they are) or "default" (guessed for a float input: ImageNet's mean
    and std and x/255, x/255 alone for gray; nothing says the model was trained so)."""
    if isinstance(given, Preprocessing):
        return dict.fromkeys(NORMALISATION, "given")
    recorded = recorded_preprocessing(model) or {}
    return {key: "given" if key in (given or {}) else
            "model" if key in recorded or dtype in INTEGER_TYPES.values() else "default" for key in NORMALISATION}


def guessed(normalisation: dict) -> bool:
    """Nobody gave or recorded any of the normalisation: it is the default for a float input."""
    return set(normalisation.values()) == {"default"}


def check_default_normalisation(model: onnx.ModelProto, prep: Preprocessing) -> None:
    """Refuse the default normalisation (nobody gave or recorded one) where the model says it takes another: a float
    input quantized at once (an int8 file's first QuantizeLinear) has the range its calibration saw. ImageNet's mean
    and std give [-2.12, 2.64]; a TFLite MobileNet quantizes its input to [-1, 0.99], so every pixel beyond would be
    clipped and the model would score another image, silently. A range calibrated on ImageNet-normalised inputs
    (the ONNX zoo's int8 MobileNetV2: [-2.13, 2.63]) passes. (A model OpenVINO reads: its input's FakeQuantize,
    `openvino_split.input_fake_quantize_range`.)"""
    check_input_range(input_quantized_range(model), prep, "QuantizeLinear")


def check_input_range(quantized: tuple[float, float] | None, prep: Preprocessing, quantizer: str) -> None:
    """Refuse the default `prep` where it does not fit the range `quantized` of the model's first `quantizer` (the op
    that quantizes its float input), as `check_default_normalisation` says."""
    if quantized is None:
        return
    low, high = quantized
    given_low, given_high = prep.normalised_range()
    span = high - low
    if given_low < low - span / 2 or given_high > high + span / 2 or given_high - given_low < span / 10:
        default = "ImageNet's mean and std" if prep.channels == 3 else "x/255"
        half = " ".join(["0.5"] * prep.channels)
        raise CamInferError(f"the model quantizes its input to [{low:.3g}, {high:.3g}] (its first {quantizer}), "
                            f"and the default preprocessing ({default}) gives [{given_low:.3g}, {given_high:.3g}]: "
                            "split it with the model's own normalisation (cam-infer split --mean, --std, --scale; "
                            f"preprocessing=), e.g. --mean {half} --std {half} for [-1, 1], and give that bundle")


def input_quantized_range(model: onnx.ModelProto) -> tuple[float, float] | None:
    """[low, high] of the values a float input's QuantizeLinear (its only consumer) can represent, or None."""
    graph = model.graph
    if not graph.input or graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        return None
    consumers = [n for n in graph.node if graph.input[0].name in n.input]
    if len(consumers) != 1 or consumers[0].op_type != "QuantizeLinear" or len(consumers[0].input) < 3:
        return None
    scale, zero = (constant_value(graph, name) for name in consumers[0].input[1:3])
    if scale is None or zero is None or scale.size != 1 or zero.size != 1 or zero.dtype not in (np.uint8, np.int8):
        return None
    info = np.iinfo(zero.dtype)
    zero_point, step = float(zero.reshape(())), float(scale.reshape(()))
    return (info.min - zero_point) * step, (info.max - zero_point) * step


def _integer_range_checked(prep: Preprocessing, dtype: str) -> Preprocessing:
    """`prep`, or a refusal where the model takes integers and `prep` maps the pixels 0…255 into less than a tenth
    of the type's range: rounded and clipped to it at the model's input, every image would be nearly one input
    (TensorFlow's float preprocessing, [-1, 1], given to a uint8 model)."""
    if dtype not in INTEGER_TYPES.values():
        return prep
    info = np.iinfo(dtype)
    ends = np.array([[(pixel * prep.scale - m) / s for pixel in (0.0, 255.0)] for m, s in zip(prep.mean, prep.std)])
    kept = np.clip(ends, info.min, info.max)
    if (np.abs(kept[:, 1] - kept[:, 0]) < 0.1 * (info.max - info.min)).any():
        shift = 128 if dtype == "int8" else 0
        raise CamInferError(f"the preprocessing maps pixels 0…255 to {ends.min():g}…{ends.max():g}, and the model "
                            f"takes {dtype} ({info.min}…{info.max}): rounded to it, every image would be nearly the "
                            f"same input; a {dtype} model takes the pixels as they are (the default: mean {shift}, "
                            "std 1, scale 1)")
    return prep


def read_labels(labels, num_classes: int) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        path = Path(labels)
        if path.is_dir():
            raise CamInferError(f"labels file '{path}' is a folder; give the text file, one class name per line")
        if not path.exists():                             # a pipe (<(...)) is no regular file, and is read
            raise CamInferError(f"labels file '{path}' does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise CamInferError(f"labels file '{path}' is not UTF-8 text (one class name per line)") from None
        numbered = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        if len(numbered) > num_classes:                   # say which lines are beyond the model's classes
            (first, extra), last = numbered[num_classes], numbered[-1][0]
            where = f"line {first}" if first == last else f"lines {first}–{last}"
            raise CamInferError(f"{len(numbered)} labels in '{path}', but the model has {num_classes} classes: "
                                f"{where} beyond them, from {_shortened(extra)!r} (one class name per line, "
                                "nothing else)")
        labels = [line for _, line in numbered]
    labels = [str(label) for label in labels]
    if len(labels) != num_classes:
        raise CamInferError(f"{len(labels)} labels given, but the model has {num_classes} classes")
    return labels


def _shortened(text: str, length: int = 40) -> str:
    return text if len(text) <= length else text[:length - 1] + "…"


def _split_verified(graph: Graph, target: TargetLayer, prep: Preprocessing):
    """Dynamic batch first; if that does not reproduce the model, the fixed batch of the source."""
    attempts = ["dynamic"] if graph.fixed_batch is None else ["dynamic", "fixed"]
    failure = None
    for batch_mode in attempts:
        features, head = extract(graph, target, batch_mode)
        try:
            verification = verify(graph.model, graph.input_spec, score_output(graph), features, head, prep, batch_mode,
                                  graph.fixed_batch)
        except Mismatch as exc:
            failure = exc
            continue
        return features, head, batch_mode, verification
    raise CamInferError(f"splitting at '{target.requested}' does not reproduce the model: {failure}")
