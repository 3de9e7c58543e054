"""Model → bundle: find the target layer, cut the graph there, verify, write ``bundle.json``.

`split_model` takes any file a deployment ships: ONNX (→ an ONNX bundle, both runtimes) or a file
OpenVINO reads natively, ``.xml`` IR or ``.tflite`` (→ an IR bundle, OpenVINO only).
"""

import os

from ..errors import CamInferError
from .manifest import Bundle
from .model_cache import bundle_of_file
from .openvino_segmentation import split_openvino_file
from .openvino_split import is_openvino_source, split_openvino
from .split import split_onnx

Bundle.folder_of_model_file = staticmethod(bundle_of_file)     # Bundle.load(a model file): split once, cached


def split_model(model, layer: str = "auto", out=None, **options) -> Bundle:
    """Split an ONNX model (path or ModelProto) or an OpenVINO-readable file (.xml, .tflite) into a bundle."""
    import inspect
    taken = [p for p in inspect.signature(split_onnx).parameters if p not in ("model", "layer", "out")]
    unknown = sorted(set(options) - set(taken))
    if unknown:
        raise CamInferError(f"split takes no option {', '.join(map(repr, unknown))}; it takes {', '.join(taken)}")
    if isinstance(model, (str, os.PathLike)) and is_openvino_source(model):
        options.pop("provenance", None)
        return split_openvino_file(model, layer, out, **options)
    return split_onnx(model, layer, out, **options)


__all__ = ["Bundle", "split_model", "split_onnx", "split_openvino"]
