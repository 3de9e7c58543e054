"""What `cam-infer serve` serves: a bundle folder (a classifier's or a segmenter's), a model file split into the
cache, or a fused model (.onnx; a fused IR .xml)."""

from __future__ import annotations

from pathlib import Path

from ..errors import CamInferError
from .models import ServedBundle, ServedFused
from .segmenter import ServedSegmenter
from .tensors import ProtocolError


def load_served(source, method: str | None, backend: str, device: str, threads: int | None, precision: str = "f32",
                options: dict | None = None):
    """A bundle folder or a fused model file (.onnx, .xml) → the served model; `options`: the methods' options
    (each method gets those it takes), for a bundle."""
    from ..bundle.model_cache import cached_bundle, is_model_file
    path = Path(source)
    if is_model_file(path):                  # a model file (not a fused one): its bundle, split into the cache
        path = cached_bundle(path)
    if path.is_dir():
        from ..bundle import Bundle
        from ..tasks import task_of
        task = task_of(Bundle.load(path)).name
        if task == "detection":
            raise CamInferError("serve explains classifier and segmenter bundles; for a detector, serve its fused "
                                "model (cam-infer fuse BUNDLE --method eigen --out model.onnx)")
        from ..methods.registry import DEFAULT_METHOD
        served = ServedSegmenter if task == "segmentation" else ServedBundle
        try:
            return served(path, method or DEFAULT_METHOD, backend, device, threads, precision, options)
        except ProtocolError as exc:
            raise CamInferError(str(exc)) from None
    if path.is_file() and path.suffix in (".onnx", ".xml"):
        served = ServedFused(path, backend, device, threads, precision)
        if method is not None and method != served.method:
            raise CamInferError(f"'{path}' was fused for {served.method}, not {method}")
        if options:
            raise CamInferError("a fused model computes its method with the options it was fused with; --option "
                                "is for bundles (fuse again with them: cam-infer fuse BUNDLE --option ...)")
        return served
    raise CamInferError(f"'{source}' is neither a bundle folder nor a fused model (.onnx, or .xml for OpenVINO)")
