"""cam-infer: class activation maps for deployed vision models on ONNX Runtime and OpenVINO.

The data path: image → `images.Preprocessing` → `backends` (features graph) → method → map.
Importing this package never imports torch; `export_torch` imports it when called.
"""

from .version import __version__  # noqa: E402

from .errors import CamInferError, UnreadableImage  # noqa: E402
from .images import Preprocessing, load_image  # noqa: E402
from .bundle import Bundle, split_onnx  # noqa: E402
from .backends import load_backend  # noqa: E402
from .explainer import Explainer, Explanation  # noqa: E402
from .postprocess import overlay  # noqa: E402
from .jobs.map_store import read_maps  # noqa: E402


def export_torch(*args, **kwargs):
    """Export a PyTorch classifier to a bundle (needs the ``torch`` extra); see `cam_infer.bundle.export`."""
    from .bundle.export import export_torch as _export_torch
    return _export_torch(*args, **kwargs)


__all__ = ["Bundle", "CamInferError", "Explainer", "Explanation", "Preprocessing", "UnreadableImage", "overlay", "export_torch",
           "load_backend", "load_image", "read_maps", "split_onnx",
           "__version__"]
