"""One ONNX model that returns the scores and the saliency of the class it predicts.

    model = fuse("bundle/", method="recipro")          # onnx.ModelProto
    scores, saliency, saliency_class = session.run(None, {"input": x})

The features and head graphs are joined back into the plain model; the method's subgraph reads the
activation, picks the class from the scores (top-1, top-k, or a `class_id` input) and normalises
each map in the graph as `postprocess.normalise` does: ReLU, min–max to [0,1], constant maps → 0.
Weights are shared with the head, never copied; masks are computed, never stored. An OpenVINO IR bundle
gives an IR model (an ``ov.Model``) with the same inputs and outputs (`fuse.ir`).
"""

from __future__ import annotations

import inspect
import io
import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..methods.registry import DEFAULT_METHOD
from ..version import __version__
from ..bundle import Bundle
from ..bundle.joined import head_as_joined, head_renames, joined_model
from ..errors import CamInferError, MethodNotApplicable
from ..numerics import zero_padded
from ..explainer import Explainer
from ..outputs import write_atomically
from ..postprocess import EPS
from .builder import Builder
from .fusion import Fusion

MIN_OPSET = 13
OUTPUT = "saliency"
RAW_OUTPUT = "saliency_raw"
CLASS_OUTPUT = "saliency_class"
CLASS_INPUT = "class_id"
TOLERANCE = 1e-3          # relative difference of the raw maps, fused vs Explainer, that the check accepts


def _onnx_bundle(bundle) -> Bundle:
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    if bundle.graph_format != "onnx":
        raise CamInferError("fusing a detector or a segmenter writes ONNX, and this is an OpenVINO IR bundle; split "
                            "the model's .onnx file to fuse it (an IR classifier fuses into IR)")
    return bundle


def plain_model(bundle: "Bundle | str | os.PathLike"):
    """The bundle's features and head joined into one model (`bundle/joined.py`): the model the bundle was
    split from (a detector without its packing), at opset ≥ 13 (older models are converted). Of an OpenVINO IR
    bundle: the two graphs joined as one ``ov.Model`` (`fuse.ir.plain_ir`)."""
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    if bundle.graph_format == "openvino":
        from .ir import plain_ir
        model = plain_ir(bundle)
    else:
        model = _joined(bundle, at_min_opset(bundle.features_path), at_min_opset(bundle.head_path))
    record(model, model_record(bundle))           # split again (as ONNX, or converted to IR), it explains the same
    return model


def model_record(bundle: Bundle) -> dict:
    """What a model the package writes records of its inputs and outputs, read back where it is split
    (`bundle.split.with_recorded`, `recorded_labels`): the bundle's preprocessing and class names."""
    entries = {"cam_infer.preprocessing": json.dumps(bundle.preprocessing.to_dict())}
    if bundle.labels:
        entries["cam_infer.labels"] = json.dumps(bundle.labels)
    return entries


def record(model, entries: dict) -> None:
    """`entries` written into what `model` records of itself, each key once (an entry replaces one of its key): an
    ONNX model's metadata_props, an IR's rt_info section ``cam_infer`` (`fuse.ir.describe`)."""
    if not isinstance(model, onnx.ModelProto):
        from .ir import describe
        describe(model, entries)
        return
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=str(value))


def _joined(bundle: Bundle, features: onnx.ModelProto, head: onnx.ModelProto) -> onnx.ModelProto:
    model = joined_model(features, head, bundle.cut_levels, expose_cut=False, name="cam_infer_fused")
    model.producer_name, model.producer_version = "cam-infer", __version__
    return model


def at_min_opset(path: Path) -> onnx.ModelProto:
    """A bundle graph, converted to opset 13 when older (the ops fusing adds need 13)."""
    model = onnx.load(path)
    if _opset(model) < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:
            raise CamInferError(f"'{path.name}' has opset {_opset(model)} and could not be converted to opset "
                                f"{MIN_OPSET}, which fusing needs ({str(exc).splitlines()[0][:200]})") from None
    return model


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def fuse(bundle: "Bundle | str | os.PathLike", method: str = DEFAULT_METHOD, *, top_classes: int = 1,
         class_input: bool = False, raw: bool = False, check: bool = True, precision: str = "f32",
         **options) -> onnx.ModelProto:
    """A classifier's fused model: `cam_infer.fuse.fuse` (`any_task.fuse`) says what it holds and takes."""
    from ..backends.sessions import RuntimeOptions, precision_note, resolved_precision

    asked, precision = precision, resolved_precision(RuntimeOptions(precision=precision), "openvino")   # as it runs
    precision_note(asked, precision, "CPU")
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    ir = bundle.graph_format == "openvino"
    chosen = fused_method(method, options)
    _check_cut_kind(bundle, method)
    top_classes = _checked_top_classes(top_classes, class_input, chosen, bundle.num_classes)
    explainer = Explainer(bundle, backend="openvino" if ir else "onnxruntime")   # its linear head is read and verified
    if ir:
        model = _fused_ir(bundle, chosen, options, top_classes, class_input, explainer)
    else:
        model = _fused_onnx(bundle, chosen, options, top_classes, class_input, raw, explainer)
    entries = _description(bundle, method, options, top_classes, class_input, precision)
    if check:
        error = fused_error(model, bundle, method, options, class_input, explainer=explainer)
        hint = " (raise squarings=)" if "squarings" in inspect.signature(chosen.fused).parameters else ""
        refuse_a_different_picture(method, error, TOLERANCE, " (relative)", hint)
        checked = {"relative_difference": float(error)}
        if precision != "f32":
            checked[precision] = fused_error(model, bundle, method, options, class_input, explainer=explainer,
                                             precision=precision)
        entries["cam_infer.check"] = json.dumps(checked)
    if ir and not raw:
        model.remove_result(next(r for r in model.get_results() if RAW_OUTPUT in r.output(0).get_names()))
    record(model, entries)
    return model


def method_nodes(b: Builder, bundle: Bundle, chosen, options: dict, top_classes: int, class_input: bool,
                 cut: str, scores: str, scores_rank: int, inputs: list, batch, linear_head, head,
                 ir_head=None) -> Fusion:
    """The method's nodes on the cut: the classes (top-1, top-k or a ``class_id`` input, added to `inputs`), the raw
    maps (`RAW_OUTPUT`) and the normalised ones (`OUTPUT`). Returns the `Fusion` they were built on (its calls)."""
    targets = None
    if chosen.class_specific:
        targets = _targets(b, inputs, scores, scores_rank, top_classes, class_input, batch)
    fusion = Fusion(b, cut, bundle.activation_shape, targets, top_classes, bundle.num_classes, bundle.output_kind,
                    linear_head, head, ir_head, channels_last=ir_head is not None,      # an IR: OpenVINO's layout
                    scores_step=bundle.scores_step)
    b.named(chosen.fused(fusion, **options), RAW_OUTPUT)
    _normalised(b, RAW_OUTPUT, OUTPUT)
    return fusion


def _weights_in_graph(model, linear_head):
    """A head whose W or b the reading found in no tensor of the model (an int8 QOperator head's weights,
    dequantized from its QLinearMatMul's operands): each computed in the model by a DequantizeLinear of the integer
    tensor the file stores (`qdq_tail.dequantizing_node`), or else added in float32 as read, the head's source
    pointing at them; any other head as it is."""
    if linear_head is None or linear_head.source.probed:
        return linear_head
    names = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    source = linear_head.source
    missing = [name for name in (source.weight, source.bias) if name is not None and name not in names]
    if not missing:
        return linear_head
    from ..bundle.qdq_tail import dequantizing_node
    made = [dequantizing_node(model, name) for name in missing]
    if all(made):
        for node, initializers in made:
            model.graph.node.append(node)
            model.graph.initializer.extend(initializers)
        return linear_head
    from dataclasses import replace

    from onnx import numpy_helper

    from ..bundle.head import LinearSource
    model.graph.initializer.extend([numpy_helper.from_array(linear_head.weight, "head_weight_read"),
                                    numpy_helper.from_array(linear_head.bias, "head_bias_read")])
    return replace(linear_head, source=LinearSource(weight="head_weight_read", bias="head_bias_read"))


def _unread_copies_dropped(model: onnx.ModelProto) -> None:
    """The W and b `_weights_in_graph` added that the method's nodes do not read (a class-agnostic map reads neither,
    CAM no bias) taken out again: a file of int8 weights would otherwise carry them in float32."""
    read = {name for node in model.graph.node for name in node.input}
    for node in [n for n in model.graph.node if n.name.endswith("__float") and n.output[0] not in read]:
        model.graph.node.remove(node)
    read = {name for node in model.graph.node for name in node.input}
    copies = ("head_weight_read", "head_bias_read")
    for tensor in [t for t in model.graph.initializer if (t.name in copies or t.name.endswith("__float__scale"))
                   and t.name not in read]:
        model.graph.initializer.remove(tensor)


def _fused_onnx(bundle: Bundle, chosen, options: dict, top_classes: int, class_input: bool, raw: bool, explainer):
    features, head = at_min_opset(bundle.features_path), at_min_opset(bundle.head_path)
    renames = head_renames(features, head, bundle.cut_levels)
    model = _joined(bundle, features, head)
    linear_head, head = head_as_joined(explainer.linear_head, head, renames)
    linear_head = _weights_in_graph(model, linear_head)
    b = Builder(_opset(model))
    scores = model.graph.output[0]
    batch = batch_dim(model)
    method_nodes(b, bundle, chosen, options, top_classes, class_input, bundle.activation_name, scores.name,
                 len(scores.type.tensor_type.shape.dim), model.graph.input, batch, linear_head, head)
    model.graph.node.extend(b.nodes)
    model.graph.initializer.extend(b.initializers)
    _unread_copies_dropped(model)
    per_image = [top_classes] if top_classes > 1 else []
    outputs = [(OUTPUT, TensorProto.FLOAT, per_image + list(bundle.activation_shape[1:]))]
    if raw:
        outputs.append((RAW_OUTPUT, TensorProto.FLOAT, outputs[0][2]))
    if chosen.class_specific and not class_input:
        outputs.append((CLASS_OUTPUT, TensorProto.INT64, per_image))
    model.graph.output.extend(helper.make_tensor_value_info(name, dtype, [batch] + dims) for name, dtype, dims in outputs)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # a bug of ours, not of the user's input
        raise CamInferError(f"the fused model is not valid ONNX: {str(exc).splitlines()[0][:300]}") from None
    return model


def _fused_ir(bundle: Bundle, chosen, options: dict, top_classes: int, class_input: bool, explainer):
    """The fused IR (`fuse.ir`), with `RAW_OUTPUT` among its outputs (for the check). A head read as GAP → linear
    (by running it) gives the closed forms, reading W and b where the IR holds them as constants."""
    from .ir_graph import (CUT, IR_OPSET, SCORES, cut_input, linear_head_inputs, method_graph, scores_input,
                              stitched)
    b = Builder(IR_OPSET)
    inputs = [cut_input(bundle, "N"), scores_input(bundle, "N")]
    linear_head = linear_head_inputs(bundle, explainer.linear_head, inputs, b)
    fusion = method_nodes(b, bundle, chosen, options, top_classes, class_input, CUT, SCORES,
                          1 + len(bundle.output_shape), inputs, "N", linear_head, None, bundle.head_path)
    outputs = [(OUTPUT, TensorProto.FLOAT), (RAW_OUTPUT, TensorProto.FLOAT)]
    if chosen.class_specific and not class_input:
        outputs.append((CLASS_OUTPUT, TensorProto.INT64))
    return stitched(bundle, method_graph(b, inputs, outputs, fusion.calls), fusion.calls, [n for n, _ in outputs],
                    explainer.linear_head)


def fusable() -> dict:
    """The methods that have an ONNX builder, from the registry."""
    from ..methods import METHODS
    return {name: spec for name, spec in METHODS.items() if spec.fused is not None}


TOKEN_BUILDERS = {"vit-recipro"}      # ONNX builders that take a transformer's tokens; the others an (N,K,h,w) map


def _check_cut_kind(bundle, method: str) -> None:
    if bundle.tokens is not None and method not in TOKEN_BUILDERS:
        instead = " (or fuse vit-recipro)" if bundle.tokens.prefix else ""        # vit-recipro needs a class token
        raise MethodNotApplicable(f"fuse builds '{method}' on an (N,K,h,w) feature map, and this bundle's cut is "
                                  f"a transformer's tokens; explain it with cam-infer explain{instead}")


def fused_method(method: str, options: dict):
    """The method's spec; its options checked as the Explainer checks them, plus the builder's own."""
    from ..methods import get_method

    methods = fusable()
    if not isinstance(method, str):
        raise CamInferError(f"method must be one method's name (a str), not {type(method).__name__}")
    if method not in methods:
        get_method(method)
        raise CamInferError(f"method '{method}' cannot be fused into the model; choose one of: {', '.join(methods)}")
    spec = methods[method]
    accepted = [p.name for p in inspect.signature(spec.fused).parameters.values() if p.kind == p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise CamInferError(f"fused method '{method}' has no option {', '.join(unknown)}; "
                            f"its options: {', '.join(accepted) or 'none'}")
    spec.check_options({k: v for k, v in options.items() if k in spec.options})
    return spec


def _checked_top_classes(top_classes, class_input: bool, chosen, classes: int) -> int:
    if not isinstance(top_classes, (int, np.integer)) or isinstance(top_classes, bool) or not 1 <= top_classes <= classes:
        raise CamInferError(f"top_classes must be an integer in 1..{classes}, not {top_classes!r}")
    if not chosen.class_specific and (top_classes > 1 or class_input):
        raise CamInferError(f"method '{chosen.name}' is class-agnostic: top_classes and class_input do not apply")
    if class_input and top_classes > 1:
        raise CamInferError("choose either top_classes or class_input, not both")
    return int(top_classes)


def batch_dim(model: onnx.ModelProto):
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "N")


def _targets(b: Builder, inputs: list, scores: str, scores_rank: int, top_classes: int, class_input: bool,
             batch) -> str:
    """(N,T) int64 classes to explain (a ``class_id`` input added to the graph's `inputs`)."""
    if class_input:
        inputs.append(helper.make_tensor_value_info(CLASS_INPUT, TensorProto.INT64, [batch]))
        return b.unsqueeze(CLASS_INPUT, [1], hint="targets")
    if scores_rank != 2:
        scores = b.reshape(scores, (0, -1), hint="scores")      # (N,C,1,1) outputs
    if top_classes == 1:
        targets = b.op("ArgMax", scores, axis=1, keepdims=1, hint="targets")
        b.op("Squeeze", targets, b.ints([1], "axes"), outputs=[CLASS_OUTPUT])
        return targets
    _, targets = b.op("TopK", scores, b.ints([top_classes], "k"), axis=1, outputs=[b.name("top"), CLASS_OUTPUT])
    return targets


def _normalised(b: Builder, maps: str, output: str) -> str:
    """ReLU, then per-map min–max over the last two axes; a map whose range is ≤ EPS·max(1,|max|)
    becomes all zeros (`postprocess.normalise`)."""
    positive = b.op("Relu", maps)
    lo = b.reduce("ReduceMin", positive, [-2, -1], hint="lo")
    hi = b.reduce("ReduceMax", positive, [-2, -1], hint="hi")
    span = b.op("Sub", hi, lo, hint="span")
    flat = b.op("LessOrEqual", span, b.op("Mul", b.op("Max", b.op("Abs", hi), b.const(1.0)), b.const(EPS)))
    safe = b.op("Where", b.op("Greater", span, b.const(0.0)), span, b.const(1.0))
    return b.op("Where", flat, b.const(0.0), b.op("Div", b.op("Sub", positive, lo), safe), outputs=[output])


def _description(bundle: Bundle, method: str, options: dict, top_classes: int, class_input: bool,
                 precision: str = "f32") -> dict:
    """What the fused model records of itself (ONNX metadata_props; an IR's rt_info)."""
    target = "class_id input" if class_input else ("top-1" if top_classes == 1 else f"top-{top_classes}")
    if not fusable()[method].class_specific:
        target = "class-agnostic"                       # the map explains no class, whichever the scores rank first
    entries = {"cam_infer.version": __version__, "cam_infer.method": method,
               "cam_infer.options": json.dumps(options, sort_keys=True), "cam_infer.target": target,
               "cam_infer.layer": layer_record(bundle),
               **model_record(bundle), "cam_infer.output_kind": bundle.output_kind, "cam_infer.precision": precision}
    return entries


def layer_record(bundle: Bundle) -> str:
    """Where the fused map is computed, as a fused model records it (``cam_infer.layer``): the torch module the
    bundle was cut at, else its tensor, or a cut set's tensors (a detector's levels), comma-separated."""
    return bundle.manifest["target_layer"].get("module") or ",".join(bundle.layers)


def refuse_a_different_picture(method: str, error: float, tolerance: float, kind: str = "", hint: str = "") -> None:
    """The fused model's check: a map further than `tolerance` from the explainer's is not written."""
    if error > tolerance:
        raise CamInferError(f"the fused {method} map differs from the explainer's by {error:.2g}{kind} on random "
                            f"images{hint}; not writing a model that draws a different picture")


def fused_error(model, bundle: Bundle, method: str, options: dict, class_input: bool = False,
                x: np.ndarray | None = None, explainer=None, precision: str = "f32") -> float:
    """max |fused raw map − Explainer map| / max |Explainer map|, per map, worst of all; random images unless `x`.
    The fused model runs on ONNX Runtime in float32, or at another `precision` on OpenVINO's CPU (a fused IR:
    always on OpenVINO); the Explainer in float32."""
    from ..bundle.split import random_images
    from ..methods import get_method

    x = random_images(bundle.preprocessing, 2) if x is None else x
    ir = not isinstance(model, onnx.ModelProto)
    explainer = explainer or Explainer(bundle, backend="openvino" if ir else "onnxruntime")
    feeds = {bundle.input_name: x}
    if class_input:
        feeds[CLASS_INPUT] = explainer.backend.forward(x).argsort(axis=1)[:, -2].astype(np.int64)  # not the top-1
    outputs = fused_outputs(model, feeds, precision, bundle.call_batch)
    maps = outputs[RAW_OUTPUT].reshape(len(x), -1, *bundle.activation_shape[1:])
    classes = feeds.get(CLASS_INPUT, outputs.get(CLASS_OUTPUT))
    classes = None if classes is None else classes.reshape(len(x), -1)
    explainer_options = {k: v for k, v in options.items() if k in get_method(method).options}
    error = 0.0
    for t in range(maps.shape[1]):
        target = None if classes is None else classes[:, t]
        expected = explainer.explain(x, method, target=target, **explainer_options).maps
        scale = np.maximum(np.abs(expected).max(axis=(1, 2)), 1e-30)
        error = max(error, float((np.abs(maps[:, t] - expected).max(axis=(1, 2)) / scale).max()))
    return error


def fused_outputs(model, feeds: dict, precision: str = "f32", batch: int | None = None) -> dict:
    """A fused model's outputs by name, `RAW_OUTPUT` among them: an ONNX model on ONNX Runtime in float32 (at
    another `precision` on OpenVINO's CPU), an IR on OpenVINO's CPU. A model of a fixed `batch` runs in zero-padded
    calls of that batch, compiled once."""
    run = _fused_runner(model, precision)
    rows = len(next(iter(feeds.values())))
    if batch is None:
        return run(feeds)
    calls = [run({k: zero_padded(v[start:start + batch], batch) for k, v in feeds.items()})
             for start in range(0, rows, batch)]
    return {name: np.concatenate([c[name] for c in calls])[:rows] for name in calls[0]}


def _fused_runner(model, precision: str):
    """feeds → outputs by name, for `fused_outputs`."""
    from .ir import runner
    if not isinstance(model, onnx.ModelProto):
        return runner(model, precision)
    from ..backends.sessions import FLOAT32, onnxruntime_session
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    exposed = {o.name for o in probe.graph.output}
    if RAW_OUTPUT not in exposed and any(RAW_OUTPUT in n.output for n in probe.graph.node):
        probe.graph.output.append(helper.make_empty_tensor_value_info(RAW_OUTPUT))
    if precision != "f32":
        return runner(probe, precision)
    session = onnxruntime_session(probe, FLOAT32)
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(None, feeds)))


def save(model, path: "str | os.PathLike", overwrite: bool = False) -> Path:
    """`model` written to `path`: an ONNX model as .onnx, an IR (``ov.Model``) as .xml with its .bin beside it."""
    if not isinstance(model, onnx.ModelProto):
        from .ir import save_ir
        return save_ir(model, path, overwrite)
    path = Path(path)
    if path.is_dir():
        raise CamInferError(f"'{path}' is a folder; --out is the fused model's file")
    if path.exists() and not overwrite:
        raise CamInferError(f"'{path}' exists; choose another --out or pass --force")
    if path.suffix != ".onnx":
        raise CamInferError(f"'{path}' should end in .onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    onnx.save(model, buffer)
    write_atomically(path, buffer.getvalue())
    return path


def summary(model, path: Path, bundle: Bundle) -> str:
    """What `cam-infer fuse` prints: the file, its growth, inputs, outputs and the check."""
    if not isinstance(model, onnx.ModelProto):
        from .ir import summary_ir
        return summary_ir(model, path, bundle)
    def shape(value_info) -> str:
        dims = value_info.type.tensor_type.shape.dim
        return "(" + ",".join(d.dim_param or str(d.dim_value) for d in dims) + ")"

    growth = path.stat().st_size / plain_model(_onnx_bundle(bundle)).ByteSize() - 1
    error = json.loads(next(p.value for p in model.metadata_props if p.key == "cam_infer.check"))
    return (f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {growth:+.2%} over the plain model)\n"
            f"inputs   {', '.join(f'{i.name} {shape(i)}' for i in model.graph.input)}\n"
            f"outputs  {', '.join(f'{o.name} {shape(o)}' for o in model.graph.output)}\n"
            f"checked  against the Explainer on ONNX Runtime: max relative difference {error['relative_difference']:.2g}"
            + "".join(f"; at {p} on OpenVINO: {d:.2g}" for p, d in error.items() if p != "relative_difference"))
