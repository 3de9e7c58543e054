"""Graphs → tensors: run a bundle's ``features`` and ``head`` graphs on a runtime.

    be = load_backend("bundle/", backend="openvino", device="CPU")
    a = be.features(x)   # (N,K,h,w) float32
    y = be.head(a)       # (N,C) float32

Every backend takes any batch size and cuts it into chunks under a memory budget, and may be called from
several threads at once. Every runtime session of the package opens through `sessions` (`RuntimeOptions`).
"""

from __future__ import annotations

import numbers

import os

from ..bundle import Bundle
from ..errors import CamInferError
from .base import Backend
from .onnxruntime import OnnxRuntimeBackend
from .openvino import OpenVINOBackend
from .sessions import RuntimeOptions

BACKENDS: dict[str, type[Backend]] = {
    "onnxruntime": OnnxRuntimeBackend,
    "openvino": OpenVINOBackend,
}
ALIASES = {"ort": "onnxruntime", "ov": "openvino"}
CHOICES = ["auto", *BACKENDS, *ALIASES]          # what --backend takes


def load_backend(bundle: "Bundle | str | os.PathLike", backend: str = "auto", **options) -> Backend:
    """Open `bundle` on `backend` (``onnxruntime``, ``openvino``, or ``auto``: ONNX Runtime for ONNX
    bundles, OpenVINO for IR bundles); options go to the backend class."""
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    name = backend_name(bundle, backend)
    runs = bundle.manifest.get("runtimes", {}).get(name, {"runs": True})
    if not runs.get("runs", True):
        others = [n for n, r in bundle.manifest["runtimes"].items() if r.get("runs") and n in BACKENDS]
        raise CamInferError(f"this bundle does not run on {name} ({runs.get('why_not', 'checked when it was made')})"
                            + (f"; use --backend {others[0]}" if others else ""))
    check_options(BACKENDS[name], name, options)
    return BACKENDS[name](bundle, **options)


def check_options(backend_class, name: str, options: dict) -> None:
    """Options the backend does not take, or threads that are no count, as one line (not a TypeError)."""
    import inspect
    taken = [p for p in inspect.signature(backend_class.__init__).parameters if p not in ("self", "bundle")]
    unknown = sorted(set(options) - set(taken))
    if unknown:
        raise CamInferError(f"the {name} backend takes no option {', '.join(map(repr, unknown))}; "
                            f"it takes {', '.join(taken)}")
    check_threads(options.get("threads"))


def check_threads(threads) -> None:
    """Runtime threads: None (the runtime's choice) or a positive integer."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1):
        raise CamInferError(f"threads must be a positive integer, not {threads!r}")


def backend_name(bundle: Bundle, backend: str) -> str:
    """The runtime `backend` names for `bundle`: ``auto`` is OpenVINO for IR bundles, ONNX Runtime otherwise; an
    unknown name is one line."""
    if not isinstance(backend, str):
        raise CamInferError(f"backend is a runtime's name ({', '.join(CHOICES)}), not {backend!r}")
    if backend == "auto":
        return "openvino" if bundle.graph_format == "openvino" else "onnxruntime"
    name = ALIASES.get(backend, backend)
    if name not in BACKENDS:
        raise CamInferError(f"unknown backend '{backend}'; choose one of: {', '.join(CHOICES)}")
    return name


def check_backend(bundle, backend_name: str, device: str, precision: str = "f32") -> str:
    """Run one random image through features and head; report the backend and the time."""
    import time

    import numpy as np

    from ..bundle.verify import random_images

    backend = load_backend(bundle, backend=backend_name, device=device, precision=precision)
    x = random_images(bundle.preprocessing, 1)
    backend.forward(x)  # warm-up
    start = time.perf_counter()
    scores = backend.forward(x)
    ms = (time.perf_counter() - start) * 1000
    ok = scores.shape == (1, *bundle.output_shape) and bool(np.isfinite(scores).all())
    return f"runs on    {backend.describe()}: {'yes' if ok else 'NO'}, {ms:.1f} ms per image (batch 1)"


__all__ = ["BACKENDS", "CHOICES", "Backend", "backend_name", "check_backend", "OnnxRuntimeBackend",
           "OpenVINOBackend", "RuntimeOptions", "load_backend"]
