"""`cam-infer fuse` for a detector: the model itself plus an output ``saliency`` (N,H,W) in [0,1], the
class-agnostic map of `activation` or `eigen` over every cut level, combined as the explainer combines
them (each level's map ReLU'd and min–max'd, resampled bilinearly (half-pixel) to the finest level's grid,
averaged, upsampled to the input, and min–max'd again: the map explain draws).
The detections come out of ``output0`` as before; the map is the same for each of them. The per-level
maps come from the classifiers' ONNX builders (`cam_infer.methods`), one level at a time.

Class-specific detection methods (recipro, ablation, score) need a target box that only NMS, outside the
graph, gives: they are not fused.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..bundle import Bundle
from ..bundle.joined import packed_levels
from ..errors import CamInferError
from ..fuse.assemble import (OUTPUT, _normalised, _onnx_bundle, _opset, at_min_opset, batch_dim, fused_method,
                             layer_record, plain_model, record, refuse_a_different_picture)
from ..fuse.builder import Builder
from ..fuse.fusion import Fusion
from ..version import __version__

TOLERANCE = 1e-3


def fusable(task: str = "detection") -> list[str]:
    """The methods of `task` (a detector's or a segmenter's) a graph can compute: class-agnostic ones with an ONNX
    builder for one level."""
    from ..methods import METHODS, explaining
    return [m for m in explaining(task) if METHODS[m].fused is not None and not METHODS[m].class_specific]


def fuse_detector(bundle: Bundle, method: str = "eigen", *, check: bool = True, **options) -> onnx.ModelProto:
    from ..methods import get_method
    if method not in fusable():
        get_method(method, "detection")                 # an unknown method, or one that explains no detector
        raise CamInferError(f"a detector fuses {', '.join(fusable())} (class-agnostic maps); '{method}' needs a "
                            "target box that NMS gives outside the graph")
    if bundle.manifest.get("nms", {}).get("end_to_end"):
        raise CamInferError("the bundle explains an end-to-end detector at its scores before the TopK: a fused model "
                            "would return those (N, 4+C, anchors) scores, not the export's (N,k,6) rows; explain it with "
                            "explain or audit, or fuse a bundle of its (N, 4+C, anchors) export")
    fused_method(method, options)               # its options checked as the Explainer checks them
    spec = get_method(method)
    model = plain_model(_onnx_bundle(bundle))
    b = Builder(_opset(model))
    h, w = bundle.input_shape[1:]
    head = at_min_opset(bundle.head_path)
    cuts = bundle.manifest["cut"]
    finest = max((tuple(level["shape"][1:]) for level in cuts), key=lambda hw: hw[0] * hw[1])
    levels = []
    for name, level in zip(packed_levels(onnx.load(bundle.features_path), cuts), cuts):
        fusion = Fusion(b, name, tuple(level["shape"]), None, 1, bundle.num_classes, "logits", None, head)
        normalised = _normalised(b, spec.fused(fusion, **options), b.name("level_map"))
        levels.append(normalised if tuple(level["shape"][1:]) == finest else resized(b, normalised, finest))
    total = levels[0] if len(levels) == 1 else b.op("Sum", *levels, hint="levels")
    mean = b.op("Mul", total, b.const(1.0 / len(levels)), hint="mean")
    _normalised(b, resized(b, mean, (h, w)), OUTPUT)              # as the explainer normalises the combined map
    model.graph.node.extend(b.nodes)
    model.graph.initializer.extend(b.initializers)
    model.graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [batch_dim(model), h, w]))
    record(model, {"cam_infer.version": __version__, "cam_infer.method": method,
                   "cam_infer.options": json.dumps(options, sort_keys=True), "cam_infer.target": "detector",
                   "cam_infer.layer": layer_record(bundle), "cam_infer.output_kind": bundle.output_kind,
                   "cam_infer.preprocessing": json.dumps(bundle.preprocessing.to_dict())})
    onnx.checker.check_model(model)
    if check:
        error = fused_detector_error(model, bundle, method, options)
        refuse_a_different_picture(method, error, TOLERANCE)
        record(model, {"cam_infer.check": json.dumps({"max_difference": float(error)})})
    return model


def resized(b: Builder, maps: str, size: tuple[int, int]) -> str:
    """(N, h, w) → (N, H, W), bilinear, half-pixel (cv2's INTER_LINEAR)."""
    batch = b.op("Slice", b.op("Shape", maps), b.ints([0]), b.ints([1]), hint="batch")
    sizes = b.op("Concat", batch, b.ints([1, *size]), axis=0, hint="sizes")
    up = b.op("Resize", b.unsqueeze(maps, [1]), "", "", sizes, mode="linear", coordinate_transformation_mode="half_pixel",
              hint="resized")
    return b.squeeze(up, [1])


def fused_detector_error(model: onnx.ModelProto, bundle: Bundle, method: str, options: dict) -> float:
    """The largest difference between the fused map and the explainer's, and between the detections,
    on two random images (ONNX Runtime)."""
    from ..bundle.verify import random_images
    from ..explainer import Explainer
    from ..fuse.assemble import fused_outputs
    from .context import DetectionContext
    from ..methods import get_method
    from ..postprocess import normalise
    ex = Explainer(bundle, backend="onnxruntime")
    x = random_images(bundle.preprocessing, 2, seed=5)
    outputs = fused_outputs(model, {bundle.input_name: x}, batch=bundle.call_batch)
    output = outputs["output0" if "output0" in outputs else model.graph.output[0].name]
    saliency = outputs[OUTPUT]
    explained = {k: v for k, v in options.items() if k in get_method(method).options}     # not squarings=
    packed = ex.backend.features(x)
    worst = float(np.abs(output - ex.backend.head(packed)).max()) / max(1.0, float(np.abs(output).max()))
    for i in range(len(x)):
        ctx = DetectionContext(ex, x[i:i + 1], packed[i], output[i])
        raw = get_method(method).implementation("detection")(ctx, [None], **explained)[0]
        expected = normalise(np.asarray(raw, np.float32)[None])[0][0]             # the map explain draws
        worst = max(worst, float(np.abs(saliency[i] - expected).max()))
    return worst
