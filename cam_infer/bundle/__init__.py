"""Model → bundle: find the target layer, cut the graph there, verify, write ``bundle.json``.

`split_model` takes any file a deployment ships: ONNX (→ an ONNX bundle, both runtimes) or a file
OpenVINO reads natively, ``.xml`` IR or ``.tflite`` (→ an IR bundle, OpenVINO only).
"""

import os

from .manifest import Bundle
from .model_cache import bundle_of_file
from .openvino_segmentation import is_per_pixel, split_openvino_segmenter
from .openvino_split import is_openvino_source, read_openvino_model, split_openvino
from .split import split_onnx

Bundle.folder_of_model_file = staticmethod(bundle_of_file)     # Bundle.load(a model file): split once, cached


def split_model(model, layer: str = "auto", out=None, **options) -> Bundle:
    """Split an ONNX model (path or ModelProto) or an OpenVINO-readable file (.xml, .tflite) into a bundle."""
    if isinstance(model, (str, os.PathLike)) and is_openvino_source(model):
        options.pop("provenance", None)
        read = read_openvino_model(model)          # once: OpenVINO names a TFLite file's ops anew at each reading
        if is_per_pixel(read):
            options.pop("input_size", None)            # a segmenter OpenVINO reads keeps its own input size
            return split_openvino_segmenter(model, layer, out, model=read, **options)
        return split_openvino(model, layer, out, model=read, **options)
    return split_onnx(model, layer, out, **options)


__all__ = ["Bundle", "split_model", "split_onnx", "split_openvino"]
