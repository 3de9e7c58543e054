"""`fuse` for a bundle of any task: a classifier's fused model (`assemble.fuse`), a segmenter's
(`segmentation.fuse.fuse_segmenter`) or a detector's (`detection.fuse.fuse_detector`)."""

from __future__ import annotations

import os

import onnx

from ..bundle import Bundle
from ..errors import CamInferError
from ..methods.registry import DEFAULT_METHOD
from .assemble import fuse as fuse_classifier


def default_method(task: str) -> str:
    """What `fuse` builds when no method is named: recipro for a classifier; for a segmenter or a detector, whose
    fused map is class-agnostic, eigen."""
    return DEFAULT_METHOD if task == "classification" else "eigen"


def fuse(bundle: "Bundle | str | os.PathLike", method: str | None = None, *, top_classes: int = 1,
         class_input: bool = False, raw: bool = False, check: bool = True, precision: str = "f32",
         **options) -> onnx.ModelProto:
    """The plain model plus outputs ``saliency`` (N,h,w) in [0,1] — (N,k,h,w) with ``top_classes=k`` — and,
    for class-specific methods, ``saliency_class`` (N,) or (N,k): the class each map explains. With
    ``class_input=True`` the class comes from an int64 input ``class_id`` (N,) instead; ``raw=True``
    adds ``saliency_raw``, the maps before ReLU and normalisation. ``check`` compares the fused model
    with the Explainer on ONNX Runtime (two random images) and refuses a model that differs. ``precision``: what
    the model is meant to run at (recorded as ``cam_infer.precision``); other than f32, the check also runs it on
    OpenVINO at that precision and records how far its maps are from the float32 Explainer's (bf16 rounds).
    A segmenter's or a detector's bundle gets its own fused model (`fuse_segmenter`, `fuse_detector`): a
    class-agnostic map, none of the options above but ``check`` and the method's own. ``method``: by default
    recipro for a classifier, eigen for a segmenter or a detector."""
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    method = default_method(bundle.task) if method is None else method
    if bundle.task == "classification":
        return fuse_classifier(bundle, method, top_classes=top_classes, class_input=class_input, raw=raw,
                               check=check, precision=precision, **options)
    if top_classes != 1 or class_input or raw or precision != "f32":
        raise CamInferError(f"top_classes, class_input, raw and precision are for classifiers; a {bundle.task} "
                            "bundle's fused map is class-agnostic")
    if bundle.task == "segmentation":
        from ..segmentation.fuse import fuse_segmenter
        return fuse_segmenter(bundle, method, check=check, **options)
    from ..detection.fuse import fuse_detector
    return fuse_detector(bundle, method, check=check, **options)
