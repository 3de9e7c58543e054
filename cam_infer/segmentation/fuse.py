"""`cam-infer fuse` for a segmenter: the model itself (its class scores, before any ArgMax) plus an output
``saliency`` (N,H,W) in [0,1], the class-agnostic map of `activation`, `eigen` or `entropy` at the cut, ReLU'd,
min–max'd and upsampled bilinearly (half-pixel) to the input, as the explainer draws it. The map is the same
for every class and region, so one output serves them all.

Class-specific segmentation methods (recipro, ablation, score, ...) need a target region that the clean scores
give only after an argmax outside the graph, one region per class present: they are not fused.

An OpenVINO IR bundle (a segmenter split from an IR or TFLite file) fuses into an IR model (`fuse.ir`).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..bundle import Bundle
from ..detection.fuse import TOLERANCE, fusable, resized
from ..errors import CamInferError
from ..fuse.assemble import (OUTPUT, _normalised, _onnx_bundle, _opset, at_min_opset, batch_dim, fused_method,
                             layer_record, model_record, plain_model, record, refuse_a_different_picture)
from ..fuse.builder import Builder
from ..fuse.fusion import Fusion
from ..version import __version__


def fuse_segmenter(bundle: "Bundle | str", method: str = "eigen", *, check: bool = True, **options):
    """The fused model: an onnx.ModelProto, or an ``ov.Model`` for an IR bundle."""
    from ..methods import get_method
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    if method not in fusable("segmentation"):
        raise CamInferError(f"a segmenter fuses {', '.join(fusable('segmentation'))} (class-agnostic maps); "
                            f"'{method}' needs a target region that the argmax over the clean scores gives outside "
                            "the graph")
    if bundle.cut_levels:
        raise CamInferError(f"fuse takes a segmenter split at one layer; this bundle's cut is a set of "
                            f"{len(bundle.cut_levels)} levels ({bundle.manifest['target_layer']['tensor']}): split it "
                            "with --layer auto to fuse it")
    fused_method(method, options)               # its options checked as the Explainer checks them
    spec = get_method(method, "segmentation")
    if bundle.graph_format == "openvino":
        return _fused_ir_segmenter(bundle, method, spec, options, check)
    bundle = _onnx_bundle(bundle)
    model = plain_model(bundle)
    b = Builder(_opset(model))
    h, w = bundle.input_shape[1:]
    fusion = Fusion(b, bundle.activation_name, bundle.activation_shape, None, 1, bundle.num_classes, "logits", None,
                    at_min_opset(bundle.head_path))
    normalised = _normalised(b, spec.fused(fusion, **options), b.name("cut_map"))
    b.named(resized(b, normalised, (h, w)), OUTPUT)
    model.graph.node.extend(b.nodes)
    model.graph.initializer.extend(b.initializers)
    model.graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [batch_dim(model), h, w]))
    record(model, _record(bundle, method, options))
    onnx.checker.check_model(model)
    if check:
        error = fused_segmenter_error(model, bundle, method, options)
        refuse_a_different_picture(method, error, TOLERANCE)
        record(model, {"cam_infer.check": json.dumps({"max_difference": float(error)})})
    return model


def _record(bundle: Bundle, method: str, options: dict) -> dict:
    """What a fused segmenter records of itself (ONNX metadata_props; an IR's rt_info): its preprocessing and class
    names among them, as a fused classifier's (`assemble._description`)."""
    return {"cam_infer.version": __version__, "cam_infer.method": method,
            "cam_infer.options": json.dumps(options, sort_keys=True), "cam_infer.target": "segmenter",
            "cam_infer.layer": layer_record(bundle), "cam_infer.output_kind": bundle.output_kind,
            **model_record(bundle)}


def _fused_ir_segmenter(bundle: Bundle, method: str, spec, options: dict, check: bool):
    """The IR bundle's graphs joined, with the map's nodes (built as ONNX, read by OpenVINO) on the cut."""
    from ..fuse.ir import describe
    from ..fuse.ir_graph import CUT, IR_OPSET, cut_input, method_graph, stitched
    b = Builder(IR_OPSET)
    h, w = bundle.input_shape[1:]
    fusion = Fusion(b, CUT, bundle.activation_shape, None, 1, bundle.num_classes, "logits", None, None,
                    bundle.head_path, channels_last=True)                             # OpenVINO's layout
    normalised = _normalised(b, spec.fused(fusion, **options), b.name("cut_map"))
    b.named(resized(b, normalised, (h, w)), OUTPUT)
    graph = method_graph(b, [cut_input(bundle, "N")], [(OUTPUT, TensorProto.FLOAT)], fusion.calls)
    model = stitched(bundle, graph, fusion.calls, [OUTPUT])
    record = _record(bundle, method, options)
    if check:
        error = fused_segmenter_error(model, bundle, method, options)
        refuse_a_different_picture(method, error, TOLERANCE)
        record["cam_infer.check"] = json.dumps({"max_difference": float(error)})
    describe(model, record)
    return model


def fused_segmenter_error(model, bundle: Bundle, method: str, options: dict) -> float:
    """The largest difference between the fused model's scores and map and the explainer's, on two random images
    (ONNX Runtime; a fused IR on OpenVINO, f32); the explainer's map of a region covering the image (the map is the
    same for any region)."""
    from ..bundle.verify import random_images
    from ..explainer import Explainer
    from ..fuse.assemble import fused_outputs

    x = random_images(bundle.preprocessing, 2, seed=5)
    ir = not isinstance(model, onnx.ModelProto)
    ex = Explainer(bundle, backend="openvino" if ir else "onnxruntime")
    outputs = fused_outputs(model, {bundle.input_name: x}, batch=bundle.call_batch)
    scores = outputs[model.outputs[0].get_any_name() if ir else model.graph.output[0].name]
    saliency = outputs[OUTPUT]
    worst = float(np.abs(scores - ex.backend.forward(x)).max()) / max(1.0, float(np.abs(scores).max()))
    h, w = bundle.input_shape[1:]
    from ..methods import get_method
    explained = {k: v for k, v in options.items() if k in get_method(method).options}     # not squarings=
    for i in range(len(x)):
        e = ex.explain(x[i:i + 1], method, target=0, region=[0, 0, w, h], **explained)
        worst = max(worst, float(np.abs(saliency[i] - e.items[0][0].saliency).max()))
    return worst
