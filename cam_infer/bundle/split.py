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

import datetime as _dt
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import CamInferError
from ..images import Preprocessing
from ..version import __version__
from .anatomy import INTEGER_TYPES, InputSpec, check_classifier_output
from .graph import Graph, TensorInfo, checker_note, load_onnx, make_tensor_value_info
from .layers import TargetLayer, find_target_layer
from .manifest import FORMAT, FORMAT_VERSION, Bundle, sha256_of, write_manifest
from .verify import Mismatch, openvino_runs, random_images, verify

BOUNDARY_FLOATS = (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)

__all__ = ["random_images", "split_onnx"]


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
    source = None
    if isinstance(model, (str, os.PathLike)):
        source = Path(model)
        model = load_onnx(source)
    _check_declared_output(model)
    graph = Graph.from_model(model, input_size, layout)
    spec = graph.input_spec
    target = find_target_layer(graph, layer)
    prep = _preprocessing(spec, preprocessing, input_size)
    features, head, batch_mode, verification = _split_verified(graph, target, prep)
    num_classes = verification.pop("num_classes")
    labels = _labels(labels, num_classes)
    manifest = _manifest(graph, target, prep, features, head, batch_mode, verification, num_classes, labels,
                         source, provenance or {})
    return _write_bundle(Path(out), features, head, manifest, overwrite)


# --- checks and options ---------------------------------------------------------------------

def _check_declared_output(model: onnx.ModelProto) -> None:
    """Refuse a model whose declared output is not (N,C) before anything else (a detector's (N,22,2100))."""
    output = model.graph.output[0]
    dims = output.type.tensor_type.shape.dim
    if dims:
        check_classifier_output(tuple(d.dim_value if d.HasField("dim_value") else "?" for d in dims), output.name)


def _preprocessing(spec: InputSpec, prep, input_size) -> Preprocessing:
    size = tuple(input_size or spec.size)
    if isinstance(prep, Preprocessing):
        if tuple(prep.input_size) != size:
            raise CamInferError(f"preprocessing input size {prep.input_size} differs from the model's {size}")
        if prep.channels != spec.channels:
            raise CamInferError(f"preprocessing gives {prep.channels} channels, the model takes {spec.channels}")
        return prep
    fields = dict(prep or {})
    fields["input_size"] = size
    fields.setdefault("channels", spec.channels)
    if spec.dtype in INTEGER_TYPES.values():           # a model that takes raw pixels: 0..255, no normalisation
        fields.setdefault("scale", 1.0)
        fields.setdefault("mean", (0.0,) * spec.channels)
        fields.setdefault("std", (1.0,) * spec.channels)
    return Preprocessing(**fields)


def _labels(labels, num_classes: int) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        path = Path(labels)
        if not path.is_file():
            raise CamInferError(f"labels file '{path}' does not exist")
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    labels = [str(label) for label in labels]
    if len(labels) != num_classes:
        raise CamInferError(f"{len(labels)} labels given, but the model has {num_classes} classes")
    return labels


# --- building the two graphs ---------------------------------------------------------------

def _split_verified(graph: Graph, target: TargetLayer, prep: Preprocessing):
    """Dynamic batch first; if that does not reproduce the model, the fixed batch of the source."""
    attempts = ["dynamic"] if graph.fixed_batch is None else ["dynamic", "fixed"]
    failure = None
    for batch_mode in attempts:
        features, head = _extract(graph, target, batch_mode)
        try:
            verification = verify(graph.model, graph.input_spec, graph.scores, features, head, prep, batch_mode,
                                  graph.fixed_batch)
        except Mismatch as exc:
            failure = exc
            continue
        return features, head, batch_mode, verification
    raise CamInferError(f"splitting at '{target.requested}' does not reproduce the model: {failure}")


def activation_name(target: TargetLayer) -> str:
    """The name of the float NCHW activation `features` returns."""
    name = target.tensor
    if target.quantization is not None:
        name += "__dequantized"
    if target.layout == "NHWC":
        name += "__nchw"
    return name


def _extract(graph: Graph, target: TargetLayer, batch_mode: str) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    batch_dim: str | int = "N" if batch_mode == "dynamic" else graph.fixed_batch
    scores = graph.scores.tensor
    tensor = target.tensor
    image = graph.info(graph.image_input.name)
    activation = graph.info(tensor)
    scores_info = graph.info(scores)
    if scores_info.elem_type == TensorProto.UNDEFINED:
        scores_info = TensorInfo(scores, graph.scores_output.type.tensor_type.elem_type, None)
    features = _subgraph(graph, graph.nodes_computing([tensor], stop=set()), "features",
                         [make_tensor_value_info(image, batch_dim)], [make_tensor_value_info(activation, batch_dim)])
    head = _subgraph(graph, graph.nodes_computing([scores], stop={tensor}), "head",
                     [make_tensor_value_info(activation, batch_dim)], [make_tensor_value_info(scores_info, batch_dim)])
    _adapt_activation(graph, features, head, target)
    _adapt_image_input(features, graph.input_spec)
    for part in (features, head):
        if batch_mode == "dynamic" and graph.fixed_batch is not None:
            _release_batch(part, graph.fixed_batch)
        _float32_boundary(part)
    return features, head


def _adapt_activation(graph: Graph, features: onnx.ModelProto, head: onnx.ModelProto, target: TargetLayer) -> None:
    """Give the methods a float NCHW activation: DequantizeLinear (and a Transpose for NHWC maps) at the end
    of `features`; the inverse at the start of `head`, which then reads exactly what the model had."""
    quant, tensor = target.quantization, target.tensor
    if quant is None and target.layout == "NCHW":
        return
    name = activation_name(target)
    constants = [graph.initializers[c] for c in (quant.scale, quant.zero_point) if quant and c in graph.initializers]
    axis = {} if quant is None or quant.axis is None else {"axis": quant.axis}
    qparams = [] if quant is None else [quant.scale] + ([quant.zero_point] if quant.zero_point else [])
    # features: tensor → [DequantizeLinear] → [Transpose to NCHW] → name
    f, last = features.graph, tensor
    if quant is not None:
        f.node.append(helper.make_node("DequantizeLinear", [last, *qparams], [f"{tensor}__dequantized"],
                                       name=f"{tensor}__dequantize", **axis))
        last = f"{tensor}__dequantized"
    if target.layout == "NHWC":
        f.node.append(helper.make_node("Transpose", [last], [name], name=f"{tensor}__to_nchw", perm=[0, 3, 1, 2]))
    _extend_constants(graph, features, constants)
    _retype_output(f.output[0], name, graph.info(tensor), target.layout)
    # head: name → [Transpose back] → [QuantizeLinear] → tensor
    h, first = head.graph, name
    front = []
    if target.layout == "NHWC":
        back = f"{tensor}__nhwc" if quant is not None else tensor
        front.append(helper.make_node("Transpose", [first], [back], name=f"{tensor}__to_nhwc", perm=[0, 2, 3, 1]))
        first = back
    if quant is not None:
        front.append(helper.make_node("QuantizeLinear", [first, *qparams], [tensor], name=f"{tensor}__quantize",
                                      **axis))
    for i, node in enumerate(front):
        h.node.insert(i, node)
    _extend_constants(graph, head, constants)
    _retype_output(h.input[0], name, graph.info(tensor), target.layout)


def _extend_constants(graph: Graph, model: onnx.ModelProto, constants) -> None:
    present = {t.name for t in model.graph.initializer}
    model.graph.initializer.extend(c for c in constants if c.name not in present)
    # a scale or zero point made by a Constant node (not an initializer) is copied with it
    needed = {i for n in model.graph.node for i in n.input} - present - {c.name for c in constants}
    produced = {o for n in model.graph.node for o in n.output}
    for name in needed - produced:
        idx = graph.producer.get(name)
        if idx is not None and graph.nodes[idx].op_type == "Constant":
            model.graph.node.insert(0, graph.nodes[idx])


def _retype_output(value_info: onnx.ValueInfoProto, name: str, info: TensorInfo, layout: str) -> None:
    """The boundary tensor as the methods see it: float32, NCHW."""
    value_info.name = name
    value_info.type.tensor_type.elem_type = TensorProto.FLOAT
    if layout == "NHWC":
        _permute_dims(value_info, [0, 3, 1, 2])


def _permute_dims(value_info: onnx.ValueInfoProto, order: list[int]) -> None:
    dims = value_info.type.tensor_type.shape.dim
    values = [(d.dim_param, d.dim_value) for d in dims]
    for dim, k in zip(dims, order):
        param, value = values[k]
        dim.Clear()
        if param:
            dim.dim_param = param
        else:
            dim.dim_value = value


def _adapt_image_input(features: onnx.ModelProto, spec: InputSpec) -> None:
    """`features` takes float32 NCHW: transpose to NHWC, and round, clip and cast to an integer input."""
    if spec.layout == "NCHW" and spec.dtype not in INTEGER_TYPES.values():
        return                                   # float16 NCHW inputs: `_float32_boundary` casts
    g = features.graph
    vi = g.input[0]
    current = f"{spec.name}__float_nchw"
    nodes = []
    if spec.layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [spec.name], [current], name="image__to_nhwc", perm=[0, 2, 3, 1]))
    else:
        nodes.append(helper.make_node("Identity", [spec.name], [current], name="image__float"))
    if spec.dtype in ("float16", "bfloat16", "float64"):
        nodes.append(helper.make_node("Cast", [current], [f"{spec.name}__source"], to=spec.elem_type,
                                      name="image__cast"))
        source = f"{spec.name}__source"
    elif spec.dtype in INTEGER_TYPES.values():
        info = np.iinfo(spec.dtype)
        low, high = f"{spec.name}__min", f"{spec.name}__max"
        g.initializer.extend([numpy_helper.from_array(np.array(info.min, np.float32), low),
                              numpy_helper.from_array(np.array(info.max, np.float32), high)])
        nodes += [helper.make_node("Round", [current], [f"{current}_round"], name="image__round"),
                  helper.make_node("Clip", [f"{current}_round", low, high], [f"{current}_clip"], name="image__clip"),
                  helper.make_node("Cast", [f"{current}_clip"], [f"{spec.name}__source"], to=spec.elem_type,
                                   name="image__cast")]
        source = f"{spec.name}__source"
    else:
        source = current
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == spec.name:
                node.input[i] = source
    for i, node in enumerate(nodes):
        g.node.insert(i, node)
    if spec.layout == "NHWC":
        _permute_dims(vi, [0, 3, 1, 2])
    vi.type.tensor_type.elem_type = TensorProto.FLOAT


def _subgraph(graph: Graph, node_ids: list[int], name: str, inputs, outputs) -> onnx.ModelProto:
    used = {i for idx in node_ids for i in graph.node_inputs[idx]}
    initializers = [t for n, t in graph.initializers.items() if n in used]
    body = helper.make_graph([graph.nodes[i] for i in node_ids], name, inputs, outputs, initializer=initializers)
    model = helper.make_model(body, opset_imports=list(graph.model.opset_import),
                              ir_version=max(graph.model.ir_version, 4), producer_name="cam-infer",
                              producer_version=__version__)
    model.functions.extend(graph.model.functions)
    return model


def _constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


def _release_batch(model: onnx.ModelProto, fixed: int) -> int:
    """Make Reshape targets that hard-code the batch copy it from their input (0 in ONNX Reshape)."""
    g = model.graph
    changed = 0
    for node in g.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        if any(a.name == "allowzero" and a.i == 1 for a in node.attribute):
            continue
        shape = _constant_value(g, node.input[1])
        if shape is None or shape.ndim != 1 or shape.size == 0 or shape[0] != fixed:
            continue
        released = shape.astype(np.int64).copy()
        released[0] = 0
        name = f"{node.input[1]}__any_batch_{changed}"
        g.initializer.append(numpy_helper.from_array(released, name))
        node.input[1] = name
        changed += 1
    return changed


def _rename_uses(g: onnx.GraphProto, old: str, new: str, *, outputs: bool) -> None:
    for node in g.node:
        names = node.output if outputs else node.input
        for i, n in enumerate(names):
            if n == old:
                names[i] = new
        if outputs:  # the tensor's readers follow its new name
            for i, n in enumerate(node.input):
                if n == old:
                    node.input[i] = new


def _float32_boundary(model: onnx.ModelProto) -> None:
    g = model.graph
    for vi in g.input:
        dtype = vi.type.tensor_type.elem_type
        if dtype in BOUNDARY_FLOATS:
            inner = f"{vi.name}__{TensorProto.DataType.Name(dtype).lower()}"
            _rename_uses(g, vi.name, inner, outputs=False)
            g.node.insert(0, helper.make_node("Cast", [vi.name], [inner], to=dtype, name=f"{inner}_cast"))
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    for vi in g.output:
        dtype = vi.type.tensor_type.elem_type
        if dtype in BOUNDARY_FLOATS:
            inner = f"{vi.name}__{TensorProto.DataType.Name(dtype).lower()}"
            _rename_uses(g, vi.name, inner, outputs=True)
            g.node.append(helper.make_node("Cast", [inner], [vi.name], to=TensorProto.FLOAT, name=f"{inner}_cast"))
            vi.type.tensor_type.elem_type = TensorProto.FLOAT


# --- manifest and files -------------------------------------------------------------------

def _bytes_per_item(graph: Graph, names: list[str]) -> int:
    """Input + output + three times the largest tensor in between, for one image."""
    sizes = []
    for name in names:
        info = graph.info(name)
        if info.shape and all(d for d in info.shape[1:]):
            sizes.append(int(np.prod(info.shape[1:])) * 4)
    return int(sum(sorted(sizes)[-1:]) * 3 + (sizes[0] if sizes else 0)) or 1 << 20


def _nchw_shape(graph: Graph, tensor: str, layout: str) -> list:
    shape = list(graph.info(tensor).shape[1:])
    return [shape[2], shape[0], shape[1]] if layout == "NHWC" else shape


def _quantization_record(graph: Graph, target: TargetLayer) -> dict | None:
    quant = target.quantization
    if quant is None:
        return None
    scale = numpy_helper.to_array(graph.initializers[quant.scale]) if quant.scale in graph.initializers else None
    zero = (numpy_helper.to_array(graph.initializers[quant.zero_point])
            if quant.zero_point in graph.initializers else None)
    return {"tensor": quant.tensor, "dtype": INTEGER_TYPES[quant.elem_type], "axis": quant.axis,
            "scale": None if scale is None else np.asarray(scale, np.float64).round(12).tolist(),
            "zero_point": None if zero is None else np.asarray(zero).astype(int).tolist()}


def _manifest(graph, target, prep, features, head, batch_mode, verification, num_classes, labels, source,
              provenance) -> dict:
    spec = graph.input_spec
    scores = graph.scores
    feature_tensors = [graph.image_input.name] + [o for n in features.graph.node for o in n.output]
    head_tensors = [target.tensor] + [o for n in head.graph.node for o in n.output]
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    openvino = openvino_runs(features, head)
    note = checker_note(graph.model)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "input": {"name": features.graph.input[0].name, "shape": [None, spec.channels, *prep.input_size],
                  "layout": "NCHW", "dtype": "float32", "model_dtype": spec.dtype, "model_layout": spec.layout},
        "preprocessing": prep.to_dict(),
        "target_layer": {"requested": target.requested, "matched_by": target.matched_by, "module": target.module,
                         "tensor": target.tensor, "layout": target.layout},
        "activation": {"name": activation_name(target), "shape": _nchw_shape(graph, target.tensor, target.layout),
                       "dtype": "float32", "quantization": _quantization_record(graph, target)},
        "output": {"name": scores.tensor, "kind": scores.kind, "num_classes": int(num_classes),
                   "model_output": scores.source, "left_out": list(scores.trimmed), "model_output_step": scores.step},
        "labels": labels,
        "batch": batch_mode,
        **({"fixed_batch": graph.fixed_batch} if batch_mode == "fixed" else {}),
        "graphs": {
            "features": {"file": "features.onnx", "ops": dict(Counter(n.op_type for n in features.graph.node))},
            "head": {"file": "head.onnx", "ops": dict(Counter(n.op_type for n in head.graph.node))},
        },
        "runtimes": {"onnxruntime": {"runs": True},
                     "openvino": {"runs": openvino is None, **({"why_not": openvino} if openvino else {})}},
        "memory": {"features_bytes_per_item": _bytes_per_item(graph, feature_tensors),
                   "head_bytes_per_item": _bytes_per_item(graph, head_tensors)},
        "verification": verification,
        "provenance": {"source": source.name if source else None,
                       "source_sha256": sha256_of(source) if source else None,
                       "opset": {o.domain or "ai.onnx": o.version for o in graph.model.opset_import},
                       "producer": f"cam-infer {__version__}", "onnx": onnx.__version__, "created": created,
                       **({"checker": note} if note else {}), **provenance},
    }


def _write_bundle(out: Path, features: onnx.ModelProto, head: onnx.ModelProto, manifest: dict,
                  overwrite: bool) -> Bundle:
    for part in (features, head):
        if part.ByteSize() > 2**31 - 1:
            raise CamInferError("graphs over 2 GB are not supported yet; split at a later layer")
    parts = {"features": features, "head": head}
    return write_bundle(out, manifest, lambda role, file: onnx.save(parts[role], file), overwrite)


def write_bundle(out: Path, manifest: dict, save, overwrite: bool) -> Bundle:
    """Write both graphs with ``save(role, path)`` (an OpenVINO IR also writes its ``.bin`` beside the
    ``.xml``), hash every file, then the manifest, last: a half-written folder is never a loadable bundle."""
    if out.exists() and not out.is_dir():
        raise CamInferError(f"output '{out}' exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise CamInferError(f"output folder '{out}' is not empty; choose another or pass --force to replace "
                                "the bundle in it")
        if not (out / "bundle.json").is_file():
            raise CamInferError(f"output folder '{out}' holds files that are not a bundle; refusing to replace them")
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    except OSError as exc:
        raise CamInferError(f"cannot write the bundle in '{out}': {exc.strerror or exc}") from None
    try:
        for role in ("features", "head"):
            entry = manifest["graphs"][role]
            save(role, staging / entry["file"])
            entry["sha256"] = sha256_of(staging / entry["file"])
            if entry.get("weights"):
                entry["weights_sha256"] = sha256_of(staging / entry["weights"])
        (out / "bundle.json").unlink(missing_ok=True)
        for file in staging.iterdir():
            os.replace(file, out / file.name)
        write_manifest(out, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Bundle.load(out)
