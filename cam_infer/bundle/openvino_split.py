"""Cut a model that OpenVINO reads natively (an IR ``.xml``/``.bin``, a ``.tflite``, its other frontends)
into an IR bundle: ``features.xml`` and ``head.xml``, sub-models of OpenVINO's own graph. No conversion
to ONNX: what the OpenVINO backend runs is the graph the file gives. This is what openvino-xai users have.

Same rules and checks as ONNX bundles (`split.py`): both graphs take and return float32 NCHW (a uint8
NHWC input is transposed, rounded, clipped and converted at the boundary); `auto` takes the last NCHW
feature map before the global pooling that is a cut point; a quantized Softmax at the end (TFLite:
Softmax → FakeQuantize → Convert u8) is left out of the head, which returns the float logits; the split
is verified against the whole model on OpenVINO. Quantized activations are float between FakeQuantize
ops here; a cut map that a FakeQuantize makes enters the head through a copy of it, so that OpenVINO runs
the head in int8 as it runs the whole model.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CamInferError
from ..images import Preprocessing
from ..numerics import FLOAT16_TOLERANCE
from ..version import __version__
from .anatomy import VALUE_CHANGING, check_class_softmax, check_classifier_output, check_one_output, check_score_op
from .graph import InputSpec
from .manifest import FORMAT, FORMAT_VERSION, Bundle, sha256_of
from .openvino_tokens import token_cut
from .verify import VERIFY_BATCHES, Mismatch, as_source_input, compare, openvino_message, random_images

OPENVINO_SUFFIXES = (".xml", ".tflite")
NCHW_OPS = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "AvgPool", "MaxPool", "BatchNormInference",
            "MVN"}
LAYOUT_KEEPING = {"Convert", "FakeQuantize", "Add", "Multiply", "Subtract", "Divide", "Clamp", "Relu", "PRelu",
                  "Sigmoid", "HSigmoid", "HSwish", "Swish", "Tanh", "Elu", "Gelu", "Mish", "Maximum", "Minimum",
                  "Power", "SoftPlus", "Pad", "Interpolate"}
SCORE_PASS = {"Convert", "FakeQuantize", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Result"}
# OpenVINO's names of the ONNX ops `anatomy.check_score_op` knows.
ONNX_NAMES = {"Multiply": "Mul", "Divide": "Div", "Subtract": "Sub", "Power": "Pow", "Clamp": "Clip",
              "Negative": "Neg", "Maximum": "Max", "Minimum": "Min", "StridedSlice": "Slice", "VariadicSplit": "Split",
              "HSigmoid": "HardSigmoid"}


@dataclass(frozen=True)
class _Output:
    """One output of an op in OpenVINO's graph: the op's friendly name and the output index."""

    op: str
    index: int = 0


def is_openvino_source(path) -> bool:
    return Path(path).suffix.lower() in OPENVINO_SUFFIXES


def read_openvino_model(path):
    """The ov.Model of a file OpenVINO reads; a refusal in one line when it cannot."""
    return _read(Path(path))


def _read(path: Path):
    from ..backends.sessions import openvino_model
    if not path.is_file():
        raise CamInferError(f"model file '{path}' does not exist")
    try:
        return openvino_model(path)
    except Exception as exc:
        raise CamInferError(f"OpenVINO cannot read '{path}' ({openvino_message(exc)})") from None


def _ops(model) -> dict:
    return {op.get_friendly_name(): op for op in model.get_ordered_ops()}


def _input_spec(model, layout: str | None) -> InputSpec:
    if len(model.get_parameters()) != 1:
        raise CamInferError(f"the model must have exactly one image input, it has {len(model.get_parameters())}")
    param = model.get_parameters()[0]
    shape = param.get_partial_shape()
    dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
    dtype = {"f32": "float32", "f16": "float16", "u8": "uint8", "i8": "int8"}.get(param.get_element_type().get_type_name())
    if dtype is None or len(dims) != 4:
        raise CamInferError(f"the model input is {param.get_element_type().get_type_name()} {tuple(dims)}; cam-infer "
                            "needs a float, uint8 or int8 image input (N,C,H,W) or (N,H,W,C)")
    if layout is None:
        layout = "NCHW" if dims[1] in (1, 3) and dims[3] not in (1, 3) else \
            "NHWC" if dims[3] in (1, 3) and dims[1] not in (1, 3) else None
        if layout is None:
            raise CamInferError(f"cannot tell the layout of the model input {tuple(dims)}; give --layout nchw or nhwc")
    layout = layout.upper()
    channels, size = (dims[1], (dims[2], dims[3])) if layout == "NCHW" else (dims[3], (dims[1], dims[2]))
    if channels in (1, 3) and not all(size):
        raise CamInferError(f"the model input {tuple(dims)} ({layout}) has no fixed spatial size; give one with "
                            "--input-size H W")
    if channels not in (1, 3):
        raise CamInferError(f"the model input {tuple(dims)} ({layout}) is not a 1- or 3-channel image")
    return InputSpec(param.get_friendly_name(), layout, dtype, 0, channels, size)


def with_input_size(model, input_size, layout: str | None):
    """`model` with its image input's dynamic H and W fixed at `input_size` (the batch as it was); as it was where
    they are fixed or no size is given."""
    import openvino as ov

    shape = model.get_parameters()[0].get_partial_shape()
    if input_size is None or shape.rank.is_dynamic or shape.rank.get_length() != 4:
        return model
    dims = list(shape)
    first = (layout or "").upper() == "NCHW" or not layout and dims[1].is_static and dims[1].get_length() in (1, 3)
    spatial = (2, 3) if first else (1, 2)
    if all(dims[i].is_static for i in spatial):
        return model
    for i, value in zip(spatial, input_size):
        dims[i] = ov.Dimension(int(value))
    try:
        model.reshape({model.get_parameters()[0].output(0): ov.PartialShape(dims)})
    except RuntimeError as exc:               # shapes that do not meet inside (a YOLO's strides: a multiple of 32)
        node = re.search(r"with friendly_name '([^']+)'", str(exc))
        raise CamInferError(f"the model cannot take a {input_size[0]}x{input_size[1]} input: OpenVINO's shapes do not "
                            f"fit together{' at ' + repr(node.group(1)) if node else ''} (a size its strides divide "
                            "may)") from None
    return model


def _layouts(model, spec: InputSpec) -> dict[_Output, str]:
    layouts = {_Output(spec.name): spec.layout}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if not op.get_output_size():
            continue
        rank = op.get_output_partial_shape(0).rank
        if not rank.is_static or rank.get_length() != 4:
            continue
        out = _Output(op.get_friendly_name())
        known = [layouts.get(_Output(v.get_node().get_friendly_name(), v.get_index())) for v in op.input_values()]
        first = known[0] if known else None
        if kind in LAYOUT_KEEPING:               # elementwise: a constant may come first (Maximum(0, x))
            first = next((k for k in known if k), None)
        if kind in NCHW_OPS:
            layouts[out] = "NCHW"
        elif kind == "Transpose" and first:
            perm = _constant(op.input_value(1))
            if perm is not None and list(perm) == [0, 3, 1, 2] and first == "NHWC":
                layouts[out] = "NCHW"
            elif perm is not None and list(perm) == [0, 2, 3, 1] and first == "NCHW":
                layouts[out] = "NHWC"
        elif kind in LAYOUT_KEEPING and first:
            layouts[out] = first
        elif kind == "Concat":
            known = {layouts.get(_Output(v.get_node().get_friendly_name(), v.get_index())) for v in op.input_values()}
            if len(known) == 1 and None not in known:
                layouts[out] = known.pop()
    return layouts


def _constant(value):
    node = value.get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None


def _spatial(model_ops: dict, out: _Output, layouts: dict) -> int:
    """H·W of a 4-D op output, read in its layout: TFLite's logits (N,1,1,C) are NHWC, spatially 1×1."""
    shape = model_ops[out.op].get_output_partial_shape(out.index)
    dims = [d.get_length() if d.is_static else 0 for d in shape]
    if len(dims) != 4:
        return 0
    return dims[1] * dims[2] if layouts.get(out) == "NHWC" else dims[2] * dims[3]


def _ancestors(op) -> set[str]:
    return {node.get_friendly_name() for node in _ancestors_ops(op)}


def _feature_region(model, ops: dict, layouts: dict) -> set[str] | None:
    """Ops computed before the last spatial reduction (global pooling, ReduceMean, a reshape to (N,C))."""
    last = None
    for op in model.get_ordered_ops():
        if not op.get_input_size() or op.get_type_name() in ("ShapeOf", "Result"):
            continue
        src = op.input_value(0)
        key = _Output(src.get_node().get_friendly_name(), src.get_index())
        if key not in layouts or _spatial(ops, key, layouts) <= 1 or not op.get_output_size():
            continue
        shape = op.get_output_partial_shape(0)
        if shape.rank.is_static and (shape.rank.get_length() < 4 or _spatial(ops, _Output(op.get_friendly_name()), layouts) == 1):
            last = op
    return None if last is None else _ancestors(last.input_value(0).get_node())


def _reaches_parameter(op, stop: str, parameter: str) -> bool:
    """Does a path from `op` back to the image avoid the op `stop` (then `stop` is not a cut point)?"""
    seen, stack = set(), [op]
    while stack:
        node = stack.pop()
        name = node.get_friendly_name()
        if name in seen or name == stop:
            continue
        seen.add(name)
        if name == parameter:
            return True
        stack.extend(v.get_node() for v in node.input_values())
    return False


def _score_output(model):
    """(the scores' op output, ops left out, (in_low, in_high, out_low, out_high) of a u8 output or None, and
    whether the scores are probabilities: a float Softmax ends the model, seen through the reshapes after it
    (SqueezeNet's IR: Softmax, then a Reshape to (N, 1000, 1, 1)); a quantized one is left out, its logits kept)."""
    result = model.get_results()[0]
    value = result.input_value(0)
    passed, dequantize = [], None
    node = value.get_node()
    while True:
        kind = node.get_type_name()
        if kind == "Softmax":
            check_class_softmax(*softmax_of(node), result.get_friendly_name())
            if any(k in ("FakeQuantize", "Convert") for k in passed):
                return node.input_value(0), tuple(reversed(passed + ["Softmax"])), dequantize, False
            return value, (), dequantize, True
        perm = _constant(node.input_value(1)) if kind == "Transpose" else None
        if perm is not None and int(np.ravel(perm)[0]) != 0:
            check_score_op(kind, result.get_friendly_name(), moves_batch=True)
        if kind not in SCORE_PASS or not node.get_input_size():
            check_score_op(ONNX_NAMES.get(kind, kind), result.get_friendly_name(), _softmax_behind(node))
            return value, (), dequantize, False
        if kind == "FakeQuantize" and dequantize is None and value.get_element_type().get_type_name() in ("u8", "i8"):
            limits = [_constant(node.input_value(i)) for i in range(1, 5)]
            if all(v is not None for v in limits):
                dequantize = tuple(float(np.max(v)) for v in limits)
        passed.append(kind)
        node = node.input_value(0).get_node()


def softmax_of(node) -> tuple[list[int] | None, list | None]:
    """An OpenVINO Softmax's axis (as a list, made non-negative) and its input's dims (None: unknown)."""
    shape = node.get_input_partial_shape(0)
    if shape.rank.is_dynamic:
        return None, None
    dims = [d.get_length() if d.is_static else None for d in shape]
    return [node.get_attributes().get("axis", 1) % len(dims)], dims


def _softmax_behind(node) -> bool:
    """Whether a Softmax makes `node`'s input through ops that only change values (OpenVINO's ops)."""
    while True:
        kind = node.get_type_name()
        if kind == "Softmax":
            return True
        if ONNX_NAMES.get(kind, kind) not in VALUE_CHANGING | {"Log"} and kind not in SCORE_PASS:
            return False
        inputs = [node.input_value(i) for i in range(node.get_input_size()) if not is_constant(node.input_value(i))]
        if len(inputs) != 1:
            return False
        node = inputs[0].get_node()


def is_constant(value) -> bool:
    """A Constant, or one converted (a compressed model's f16 weights)."""
    node = value.get_node()
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def constant_data(value) -> np.ndarray | None:
    """The value of a Constant, or of one converted (`is_constant`), as float64; None for anything else."""
    node = value.get_node()
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return np.asarray(node.get_data(), np.float64) if node.get_type_name() == "Constant" else None


def split_openvino(path, layer: str = "auto", out=None, *, input_size=None, preprocessing=None, labels=None,
                   overwrite: bool = False, layout: str | None = None, model=None) -> Bundle:
    """Split a model OpenVINO reads (``.xml`` IR, ``.tflite``) at `layer` into a verified IR bundle (`model`: the
    file already read, `read_openvino_model`)."""
    from .split import (check_input_range, guessed, normalisation_record, preprocessing_for, read_labels,
                        recorded_labels, with_recorded)

    if out is None:
        raise CamInferError("give an output folder for the bundle (--out)")
    path = Path(path)
    model = with_input_size(_read(path) if model is None else model, input_size, layout)
    given = preprocessing
    preprocessing = with_recorded(model, preprocessing)           # what the IR records (rt_info), under what is given
    check_one_output([r.get_friendly_name() for r in model.get_results()])
    spec = _input_spec(model, layout)
    result_shape = model.get_results()[0].get_output_partial_shape(0)
    check_classifier_output(tuple(d.get_length() if d.is_static else "?" for d in result_shape),
                            model.get_results()[0].get_friendly_name(), tuple(spec.size))
    if input_size is not None and tuple(input_size) != tuple(spec.size):
        raise CamInferError(f"this model's input size is fixed at {spec.size}; --input-size cannot change it")
    prep = preprocessing_for(spec, preprocessing, None)
    normalisation = normalisation_record(model, given, spec.dtype)
    if guessed(normalisation):                                     # as `split.check_default_normalisation`
        check_input_range(input_fake_quantize_range(model), prep, "FakeQuantize")
    ops, layouts = _ops(model), _layouts(model, spec)
    cut = token_cut(model, spec, layer)
    if cut is None:
        _refuse_transformer(model, path)
    target = _Output(cut.op, cut.index) if cut else _find_layer(model, ops, layouts, spec, layer)
    nhwc = cut is None and layouts.get(target) == "NHWC"
    logits, left_out, dequantize, probabilities = _score_output(model)
    for batch_mode in ("dynamic", "fixed"):
        features, head = _cut(model, spec, target, logits, prep, -1 if batch_mode == "dynamic" else 1, nhwc=nhwc)
        try:
            verification = _verify(model, spec, features, head, prep, left_out, dequantize, batch_mode)
            break
        except _BatchFails:
            continue
    num_classes = verification.pop("num_classes")
    labels = read_labels(labels, num_classes) if labels is not None else recorded_labels(model, num_classes)
    k_h_w = [d.get_length() for d in list(ops[target.op].get_output_partial_shape(target.index))[1:]]
    if nhwc:
        k_h_w = [k_h_w[2], k_h_w[0], k_h_w[1]]
    step = verification.get("output_step", 0.0)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "input": {"name": "image", "shape": [None, spec.channels, *prep.input_size], "layout": "NCHW",
                  "dtype": "float32", "model_dtype": spec.dtype, "model_layout": spec.layout},
        "preprocessing": prep.to_dict(),
        "normalisation": normalisation,
        "target_layer": {"requested": layer, "matched_by": "auto" if layer == "auto" else "node", "module": None,
                         "tensor": target.op, "layout": cut.tokens.layout if cut else layouts.get(target, "NCHW")},
        "activation": {"name": "activation", "shape": list(cut.tokens.grid_shape) if cut else k_h_w,
                       "dtype": "float32", "quantization": None, **({"tokens": cut.record()} if cut else {})},
        "output": {"name": "scores", "kind": "probabilities" if probabilities else "logits",
                   "num_classes": int(num_classes), "model_output": model.get_results()[0].get_friendly_name(),
                   "left_out": list(left_out), "model_output_step": step,
                   "logits_step": 0.0 if probabilities else logits_step(head)},
        "labels": labels, "batch": batch_mode, **({"fixed_batch": 1} if batch_mode == "fixed" else {}),
        "verification": verification,
    }
    return write_ir_bundle(out, Path(path), manifest, features, head, overwrite)


def write_ir_bundle(out, path: Path, manifest: dict, features, head, overwrite: bool, extra: dict | None = None):
    """Write an IR bundle: `manifest` (its task's fields) completed with what every IR bundle records (its two graphs,
    that it runs on OpenVINO only, their memory per item, the source file), the graphs saved beside it. `extra`:
    further ov.Models by role (a detector's cropped branches, their memory already in manifest["memory"])."""
    import openvino as ov

    from .write import write_bundle
    parts = {"features": features, "head": head, **(extra or {})}
    manifest = {**manifest,
                "graphs": {role: {"file": f"{role}.xml", "weights": f"{role}.bin",
                                  "ops": dict(Counter(op.get_type_name() for op in m.get_ordered_ops()
                                                      if op.get_type_name() not in ("Parameter", "Result", "Constant")))}
                           for role, m in parts.items()},
                "runtimes": {"openvino": {"runs": True},
                             "onnxruntime": {"runs": False, "why_not": "an OpenVINO IR bundle (made from a "
                                             f"{path.suffix} file); ONNX Runtime reads ONNX only"}},
                "memory": {**manifest.get("memory", {}), "features_bytes_per_item": _bytes(features),
                           "head_bytes_per_item": _bytes(head)},
                "provenance": {"source": path.name, "source_sha256": sha256_of(path),
                               "producer": f"cam-infer {__version__}", "openvino": _ov_version(),
                               "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()}}
    return write_bundle(Path(out), manifest, lambda role, file: ov.save_model(parts[role], str(file),
                                                                             compress_to_fp16=False), overwrite)


def _ov_version() -> str:
    import openvino as ov
    return ov.__version__.split("-")[0]


def _bytes(model) -> int:
    sizes = []
    for op in model.get_ordered_ops():
        for i in range(op.get_output_size()):
            shape = op.get_output_partial_shape(i)
            if shape.rank.is_static and all(d.is_static for d in list(shape)[1:]) and shape.rank.get_length():
                sizes.append(int(np.prod([d.get_length() for d in list(shape)[1:]])) * 4)
    return int(max(sizes, default=1 << 18) * 3) or 1 << 20


def _refuse_transformer(model, path: Path) -> None:
    """Attention over tokens (Softmax over (tokens × tokens), or a fused attention op) where no residual stream of
    blocks was found (`openvino_tokens`): its feature maps here would be the patch embedding's, before every
    attention block: a map of the input, not of the model."""
    def is_attention(op) -> bool:
        if op.get_type_name() == "ScaledDotProductAttention":
            return True
        shape = op.get_output_partial_shape(0)
        return op.get_type_name() == "Softmax" and shape.rank.is_static and shape.rank.get_length() == 4 \
            and shape[2] == shape[3]

    attention = [op for op in model.get_ordered_ops() if is_attention(op)]
    if attention:
        raise CamInferError(f"'{path.name}' has {len(attention)} attention ops over tokens but no residual stream of "
                            "transformer blocks cam-infer recognises (an attention unit x + attn(norm(x))); "
                            "it is not cut at its patch embedding")


def _find_layer(model, ops: dict, layouts: dict, spec: InputSpec, layer: str) -> _Output:
    region = _feature_region(model, ops, layouts)
    result_op = model.get_results()[0]
    candidates = [out for out, lay in layouts.items()
                  if out.op != spec.name and _spatial(ops, out, layouts) > 1 and (region is None or out.op in region)
                  and ops[out.op].get_output_element_type(out.index).get_type_name() in ("f32", "f16")]
    order = {op.get_friendly_name(): i for i, op in enumerate(model.get_ordered_ops())}
    candidates.sort(key=lambda o: order[o.op])
    if layer == "auto":
        for out in reversed(candidates):
            if not _reaches_parameter(result_op, out.op, spec.name):
                return out
        raise CamInferError("no feature map of this model is a cut point; name a layer with --layer")
    if layer not in ops:
        names = [o.op for o in reversed(candidates) if not _reaches_parameter(result_op, o.op, spec.name)][:4]
        raise CamInferError(f"unknown layer '{layer}': no op of this OpenVINO model has that name; layers that work "
                            f"here include {', '.join(map(repr, names))}; or use --layer auto")
    out = _Output(layer)
    if out not in candidates:
        raise CamInferError(f"layer '{layer}' is not a float NCHW feature map with spatial size above 1x1 before the "
                            "global pooling; use --layer auto")
    if _reaches_parameter(result_op, layer, spec.name):
        raise CamInferError(f"layer '{layer}' is not a cut point: a skip connection goes around it; use --layer auto")
    return out


class _BatchFails(Exception):
    """The split graphs do not run on a batch above 1 (a reshape in the model hard-codes batch 1)."""


def _cut(model, spec: InputSpec, target: _Output, logits, prep: Preprocessing, batch: int, *, nhwc: bool | None = None):
    """features: float NCHW image → the target map (NCHW; transposed from NHWC when `nhwc`, by default when its
    layout is NHWC) or a transformer's tokens as they are (`nhwc` False); head: that map → the logits (or the
    output)."""
    import openvino as ov
    import openvino.opset13 as ops

    # features: a new float32 NCHW Parameter, adapted to what the model takes, then the model up to the target
    f_model = model.clone()
    f_ops = _ops(f_model)
    image = _image_input(f_ops, spec, prep, batch)
    act = f_ops[target.op].output(target.index)
    if nhwc is None:
        nhwc = _layouts(model, spec).get(target) == "NHWC"
    if nhwc:
        act = ops.transpose(act, ops.constant(np.array([0, 3, 1, 2], np.int64))).output(0)
    if act.get_element_type().get_type_name() != "f32":
        act = ops.convert(act, "f32").output(0)
    features = ov.Model([ops.result(act)], [image], "features")
    # head: a Parameter in place of the target map, up to the logits
    h_model = model.clone()
    h_ops = _ops(h_model)
    source = h_ops[target.op].output(target.index)
    shape = [batch, *[d.get_length() for d in list(source.get_partial_shape())[1:]]]
    activation = ops.parameter([shape[0], *(shape[1:] if not nhwc else [shape[3], shape[1], shape[2]])],
                               np.float32, name="activation")
    enter_head_at(source, activation.output(0), nhwc)
    end = float_output(h_ops, logits)
    _rebuild_shapes(end.get_node(), spec.name, activation)
    try:
        head = ov.Model([ops.result(end)], [activation], "head")
    except Exception as exc:
        raise CamInferError(f"layer '{target.op}' is not a cut point ({openvino_message(exc)})") from None
    if batch == -1:
        for part in (features, head):
            _release_batch(part)
    return features, head


def enter_head_at(source, value, nhwc: bool) -> None:
    """Feed the float32 NCHW `value` to every consumer of the cut tensor `source`, in the layout, element type and
    quantization the model had there."""
    import openvino.opset13 as ops

    if nhwc:
        value = ops.transpose(value, ops.constant(np.array([0, 2, 3, 1], np.int64))).output(0)
    if source.get_element_type().get_type_name() != "f32":
        value = ops.convert(value, source.get_element_type()).output(0)
    value = _requantized(value, source.get_node())
    for target_input in list(source.get_target_inputs()):
        target_input.replace_source_output(value)


def float_output(model_ops: dict, out):
    """The clone's `out` (found by name in `model_ops`) as float32."""
    import openvino.opset13 as ops

    end = model_ops[out.get_node().get_friendly_name()].output(out.get_index())
    if end.get_element_type().get_type_name() != "f32":
        end = ops.convert(end, "f32").output(0)
    return end


def _image_input(model_ops: dict, spec: InputSpec, prep: Preprocessing, batch: int):
    """A new float32 NCHW image Parameter in place of `model`'s input, adapted to the layout and dtype it takes."""
    import openvino.opset13 as ops

    h, w = prep.input_size
    image = ops.parameter([batch, spec.channels, h, w], np.float32, name="image")
    x = image.output(0)
    if spec.layout == "NHWC":
        x = ops.transpose(x, ops.constant(np.array([0, 2, 3, 1], np.int64))).output(0)
    if spec.dtype in ("uint8", "int8"):
        info = np.iinfo(spec.dtype)
        x = ops.convert(ops.clamp(ops.round(x, "half_to_even"), float(info.min), float(info.max)),
                        {"uint8": "u8", "int8": "i8"}[spec.dtype]).output(0)
    elif spec.dtype == "float16":
        x = ops.convert(x, "f16").output(0)
    for target_input in list(model_ops[spec.name].output(0).get_target_inputs()):
        target_input.replace_source_output(x)
    return image


def _requantized(value, producer):
    """`value` through a copy of the FakeQuantize that produced the cut map, if one did, or of the quantization and
    dequantization that did (an int8 QDQ file read by OpenVINO: FakeQuantize → Convert to u8 → Convert → Subtract
    the zero point → Multiply by the scale). The head then starts as the whole model does at that point, from a
    quantized tensor: OpenVINO runs the ops after it in int8 in both, and a float start would round some of them one
    step apart."""
    import openvino.opset13 as ops

    chain = [producer]
    while chain[-1].get_type_name() in ("Multiply", "Subtract", "Convert") and chain[-1].get_input_size():
        if any(_constant(v) is None for v in chain[-1].input_values()[1:]):
            return value
        chain.append(chain[-1].input_value(0).get_node())
    quantize = chain[-1]
    if quantize.get_type_name() != "FakeQuantize" or (len(chain) > 1 and not any(
            op.get_type_name() == "Convert" and op.get_output_element_type(0).is_integral() for op in chain)):
        return value
    limits = [quantize.input_value(i) for i in range(1, 5)]
    if any(_constant(v) is None for v in limits):
        return value
    value = ops.fake_quantize(value, *[ops.constant(_constant(v)) for v in limits],
                              quantize.get_attributes()["levels"]).output(0)
    for op in reversed(chain[:-1]):                       # the dequantization, as the model has it
        kind = op.get_type_name()
        if kind == "Convert":
            value = ops.convert(value, op.get_output_element_type(0)).output(0)
        else:
            other = ops.constant(_constant(op.input_value(1)))
            value = (ops.multiply if kind == "Multiply" else ops.subtract)(value, other).output(0)
    return value


def _rebuild_shapes(end, image: str, activation) -> None:
    """A ShapeOf in the head of a tensor from before the cut (a shape the converter shared between blocks, e.g. the
    attention's head size) whose dims are known but the batch: rebuilt as (the cut's batch, those dims)."""
    import openvino.opset13 as ops

    for op in _ancestors_ops(end):
        if op.get_type_name() != "ShapeOf" or not _reaches_parameter(op, activation.get_friendly_name(), image):
            continue
        dims = list(op.input_value(0).get_partial_shape())
        if not dims or any(not d.is_static for d in dims[1:]):
            continue
        kind = op.get_output_element_type(0)
        batch = ops.gather(ops.shape_of(activation, kind), ops.constant(np.array([0], np.int64)),
                           ops.constant(np.array(0, np.int64)))
        rest = ops.constant(np.array([d.get_length() for d in dims[1:]], kind.to_dtype()))
        rebuilt = ops.concat([batch, rest], 0) if len(dims) > 1 else batch
        for target_input in list(op.output(0).get_target_inputs()):
            target_input.replace_source_output(rebuilt.output(0))


def _ancestors_ops(op) -> list:
    seen, found, stack = set(), [], [op]
    while stack:
        node = stack.pop()
        if node.get_friendly_name() in seen:
            continue
        seen.add(node.get_friendly_name())
        found.append(node)
        stack.extend(v.get_node() for v in node.input_values())
    return found


def _release_batch(model) -> None:
    """Reshapes of the image's values whose target hard-codes the batch (1) copy it from their input instead
    (special_zero); a Reshape of constants or of shapes (a detector's anchor grid, made from the input's ShapeOf)
    keeps its leading 1, which is no batch."""
    import openvino.opset13 as ops

    dependent = {p.get_friendly_name() for p in model.get_parameters()}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "ShapeOf" and any(v.get_node().get_friendly_name() in dependent
                                                   for v in op.input_values()):
            dependent.add(op.get_friendly_name())
        if op.get_type_name() != "Reshape" or op.input_value(0).get_node().get_friendly_name() not in dependent:
            continue
        target = _constant(op.input_value(1))
        if target is None or target.ndim != 1 or not target.size or target[0] != 1:
            continue
        released = np.array(target, copy=True)
        released[0] = 0
        op.input(1).replace_source_output(ops.constant(released).output(0))
        op.set_special_zero(True)
    try:
        model.validate_nodes_and_infer_types()
    except Exception:
        pass                                   # the batch run in verification decides


def split_outputs(feat, hd, x: np.ndarray, batch_mode: str) -> np.ndarray:
    """head(features(x)) on the compiled IR graphs: in one call (a dynamic batch) or one image a call (fixed). A
    failure in one call is `_BatchFails` (the graphs are tried again at a fixed batch)."""
    chunks = [x] if batch_mode == "dynamic" else [x[i:i + 1] for i in range(len(x))]
    try:
        return np.concatenate([next(iter(hd(next(iter(feat(c).values()))).values())) for c in chunks])
    except Exception as exc:
        if batch_mode == "dynamic":
            raise _BatchFails() from None
        raise CamInferError(f"the split graphs do not run on OpenVINO ({openvino_message(exc)})") from None


def _compiled(model):
    from ..backends.sessions import FLOAT32, openvino_compiled
    return openvino_compiled(model, FLOAT32)


def _verify(model, spec: InputSpec, features, head, prep: Preprocessing, left_out, dequantize,
            batch_mode: str) -> dict:
    """head(features(x)) against the whole model on OpenVINO (CPU, f32 hint), batch 1 and 3 (image by image
    for the source, whose batch is usually fixed at 1; in one call for the split graphs when their batch is
    dynamic)."""
    try:
        full = _compiled(model)
    except Exception as exc:
        raise CamInferError(f"OpenVINO cannot compile this model ({openvino_message(exc)})") from None
    try:
        feat, hd = _compiled(features), _compiled(head)
    except Exception as exc:
        if batch_mode == "dynamic":
            raise _BatchFails() from None
        raise CamInferError(f"OpenVINO cannot compile this model or its split ({openvino_message(exc)})") from None
    step = 0.0
    if dequantize is not None:
        in_low, in_high, out_low, out_high = dequantize
        step = (in_high - in_low) / 255.0
    rtol = FLOAT16_TOLERANCE if computes_in_float16(model) else 1e-4
    results, worst, classes = {}, 0.0, None
    for n in VERIFY_BATCHES:
        x = random_images(prep, n, seed=n)
        raw = np.concatenate([next(iter(full(as_source_input(x[i:i + 1], spec)).values())) for i in range(n)])
        expected = raw.astype(np.float32).reshape(n, -1)
        if dequantize is not None:
            expected = in_low + (expected - out_low) * (in_high - in_low) / (out_high - out_low)
        got = split_outputs(feat, hd, x, batch_mode)
        try:
            diff = compare(got, expected, bool(left_out), rtol, step, n)
        except Mismatch as exc:
            if batch_mode == "dynamic" and n > 1:         # right image by image, wrong in one call: batch-bound
                raise _BatchFails() from None
            raise CamInferError(f"splitting does not reproduce the model: {exc}") from None
        worst, results[str(n)], classes = max(worst, diff), diff, expected.shape[1]
    return {"passed": True, "batch_sizes": list(VERIFY_BATCHES), "max_abs_diff": worst,
            "max_abs_diff_per_batch": results, "relative_tolerance": rtol, "output_step": step,
            "runtime": f"openvino {_ov_version()} CPU (f32)", "num_classes": classes,
            "inputs": "random uint8 images through the bundle preprocessing, fed to the model in its own layout "
                      "and dtype"}


def computes_in_float16(model) -> bool:
    """Whether an IR computes in float16: an op other than a Constant or a Convert with a float16 output (an IR
    converted from a float16 ONNX file; a float16-compressed IR converts its weights and computes in float32). Its
    split, as a float16 ONNX model's, may keep or lose at the cut a float16 rounding that the whole model has: it is
    verified within `numerics.FLOAT16_TOLERANCE` (measured 2.1e-3 on our segmenter's scores, up to 4)."""
    return any(op.get_type_name() not in ("Constant", "Convert") and op.get_output_size() > 0
               and op.get_output_element_type(0).get_type_name() == "f16" for op in model.get_ordered_ops())


LOGITS_PASS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Convert"}      # ops that move logits, seen through


def logits_step(model) -> float:
    """One quantization step of the logits: of the FakeQuantize that makes them, seen back from the result through
    reshapes (0 where none does)."""
    value = model.get_results()[0].input_value(0)
    while value.get_node().get_type_name() in LOGITS_PASS:
        value = value.get_node().input_value(0)
    return fake_quantize_step(value)


INPUT_PASS = {"Transpose", "Reshape", "Convert"}       # ops between a float input and its quantizer, seen through


def input_fake_quantize_range(model) -> tuple[float, float] | None:
    """[low, high] of the values a float input's FakeQuantize (its only consumer, seen through an NHWC file's Transpose)
    lets through unclipped, its input range; or None. An ONNX QDQ file converted to IR, an NNCF-quantized IR and a
    float-input TFLite file read by OpenVINO quantize their input so (per channel: the widest)."""
    parameters = model.get_parameters()
    if len(parameters) != 1 or parameters[0].get_element_type().get_type_name() != "f32":
        return None
    value = parameters[0].output(0)
    for _ in range(len(INPUT_PASS) + 1):
        consumers = list(value.get_target_inputs())
        if len(consumers) != 1 or consumers[0].get_index() != 0:
            return None
        node = consumers[0].get_node()
        if node.get_type_name() == "FakeQuantize":
            low, high = (constant_data(node.input_value(i)) for i in (1, 2))
            return None if low is None or high is None else (float(np.min(low)), float(np.max(high)))
        if node.get_type_name() not in INPUT_PASS:
            return None
        value = node.output(0)
    return None


def fake_quantize_step(value) -> float:
    """One quantization step of the values a FakeQuantize makes (0 where `value` is no FakeQuantize's output or its
    output range is no constant)."""
    node = value.get_node()
    if node.get_type_name() != "FakeQuantize":
        return 0.0
    low, high = (_constant(node.input_value(i)) for i in (3, 4))
    if low is None or high is None:
        return 0.0
    return float(np.max(high - low)) / (int(node.get_attributes()["levels"]) - 1)


__all__ = ["is_openvino_source", "split_openvino"]
