"""PyTorch model → ONNX → bundle. Needs the ``torch`` extra; nothing else in cam_infer imports torch.

The user's model is left as it was: the training mode of each of its modules is restored even when the
export fails, and its parameters are never touched.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import io
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..errors import CamInferError
from ..images import Preprocessing
from .layers import TorchNames, torch_names
from .manifest import Bundle
from .split import random_images, split_onnx

EXPORTERS = ("auto", "dynamo", "legacy")


def _torch():
    try:
        import torch
    except ImportError:
        raise CamInferError("exporting a PyTorch model needs torch: pip install 'cam-infer[torch]' "
                            "(on CPU-only machines: pip install torch --index-url .../cpu)") from None
    return torch


def export_torch(model, layer: str, input_size: tuple[int, int] = (224, 224),
                 out: "str | os.PathLike | None" = None, *, exporter: str = "auto",
                 preprocessing: "Preprocessing | dict | None" = None, labels=None, overwrite: bool = False,
                 opset: int | None = None) -> Bundle:
    """Export `model` to ONNX with a dynamic batch axis, split it at module `layer`, write a bundle.

    exporter: ``dynamo`` (torch.export based, records module scopes in node metadata), ``legacy``
    (TorchScript tracing, module scopes in node names) or ``auto`` (dynamo, falling back to legacy).
    The ONNX model is also checked against the torch model on random images (recorded in the
    manifest's provenance).
    """
    return exported_bundle(model, layer, input_size, out, exporter=exporter, preprocessing=preprocessing,
                           labels=labels, overwrite=overwrite, opset=opset, hooked=False)


def exported_bundle(model, layer: str, input_size: tuple[int, int], out, *, exporter: str, preprocessing, labels,
                    overwrite: bool, opset: int | None, hooked: bool) -> Bundle:
    """`export_torch`; ``hooked``: for `Explainer.from_torch`, which hooks the layer's module (``auto`` is then
    the last module output that is a cut point, and refusals speak of ``layer=``)."""
    torch = _torch()
    if exporter not in EXPORTERS:
        raise CamInferError(f"unknown exporter '{exporter}'; choose one of: {', '.join(EXPORTERS)}")
    if not isinstance(model, torch.nn.Module):
        raise CamInferError(f"expected a torch.nn.Module, got {type(model).__name__}")
    _check_module(model, layer)
    _check_float32(torch, model)
    h, w = (int(v) for v in input_size)
    prep = preprocessing if isinstance(preprocessing, Preprocessing) else \
        Preprocessing(input_size=(h, w), **dict(preprocessing or {}))
    modes = [(module, module.training) for module in model.modules()]   # each its own: a frozen BatchNorm in a
    model.eval()                                                          # training model stays in eval mode
    try:
        with tempfile.TemporaryDirectory(prefix="cam-infer-export-") as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            used = _export(torch, model, (h, w), onnx_path, exporter, opset)
            agreement = _compare_with_torch(torch, model, onnx_path, prep)
            with torch_names(TorchNames(used, hooked)):
                return split_onnx(onnx_path, layer=layer, out=out, preprocessing=preprocessing if isinstance(
                                      preprocessing, Preprocessing) else dict(preprocessing or {}),
                                  input_size=(h, w), labels=labels, overwrite=overwrite,
                                  provenance={"exporter": f"torch {torch.__version__} ({used})",
                                              "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
                                              "torch_vs_onnx_max_abs_diff": agreement})
    finally:
        for module, training in modes:
            module.training = training


def _check_module(model, layer: str) -> None:
    if layer == "auto":
        return
    names = [n for n, _ in model.named_modules() if n]
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; use 'auto' or a module path"
        raise CamInferError(f"the model has no module '{layer}'{hint}")


def _check_float32(torch, model) -> None:
    """The model is exported and run on float32 images: a float16 or float64 model would fail inside the exporter
    on the first layer whose weights are not float32."""
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in [*model.parameters(), *model.buffers()]
                     if t.is_floating_point() and t.dtype != torch.float32})
    if dtypes:
        raise CamInferError(f"the model's weights are {' and '.join(dtypes)}; cam-infer exports and explains a "
                            "float32 model: give a float32 copy, copy.deepcopy(model).float() (a float16 ONNX file "
                            "exported by other means splits as it is)")


def _export(torch, model, size: tuple[int, int], path: Path, exporter: str, opset: int | None) -> str:
    x = torch.randn(2, 3, *size)
    if exporter in ("auto", "dynamo"):
        try:
            _export_dynamo(torch, model, x, path, opset)
            return "dynamo"
        except CamInferError:
            raise
        except Exception as exc:
            if exporter == "dynamo":
                raise CamInferError(f"the dynamo exporter failed: {str(exc).strip().splitlines()[0][:300]}; "
                                    "try exporter='legacy'") from None
    try:
        _export_legacy(torch, model, x, path, opset)
    except Exception as exc:
        raise CamInferError(f"torch.onnx.export failed: {str(exc).strip().splitlines()[0][:300]}") from None
    return "legacy"


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _export_dynamo(torch, model, x, path: Path, opset: int | None) -> None:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise RuntimeError("onnxscript is not installed") from None
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet():
        torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["input"], output_names=["scores"],
                          dynamic_shapes=({0: batch},), opset_version=opset, external_data=False, verbose=False)


def _export_legacy(torch, model, x, path: Path, opset: int | None) -> None:
    with _quiet():
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"], output_names=["scores"],
                          dynamic_axes={"input": {0: "batch"}, "scores": {0: "batch"}},
                          opset_version=opset or 17, do_constant_folding=True)


def _compare_with_torch(torch, model, onnx_path: Path, prep: Preprocessing) -> float:
    from ..backends.sessions import FLOAT32, onnxruntime_session

    x = random_images(prep, 2, seed=7)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy().reshape(2, -1)
    session = onnxruntime_session(onnx_path, FLOAT32)
    got = session.run(None, {session.get_inputs()[0].name: x})[0].reshape(2, -1)
    diff = float(np.max(np.abs(got - expected)))
    if diff > 1e-3 * max(1.0, float(np.max(np.abs(expected)))):
        raise CamInferError(f"the exported ONNX model differs from the torch model by {diff:.3g}; "
                            "try the other exporter")
    return diff


def load_factory(spec: str):
    """``package.module:callable`` → the callable (the current folder is importable, as with python -m)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CamInferError(f"model factory '{spec}' must look like 'package.module:function'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CamInferError(f"cannot import '{module_name}': {exc}") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise CamInferError(f"'{module_name}' has no '{attr}'")
    if not callable(factory):
        raise CamInferError(f"'{spec}' is not callable")
    return factory


def load_weights(model, weights: "str | os.PathLike") -> None:
    """Load a state_dict file into `model` with ``torch.load(..., weights_only=True)`` (no unpickling of code)."""
    torch = _torch()
    path = Path(weights)
    if not path.is_file():
        raise CamInferError(f"weights file '{path}' does not exist")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CamInferError(f"'{path}' is not a loadable state_dict ({str(exc).strip().splitlines()[0][:200]})") \
            from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CamInferError(f"'{path}' holds a {type(state).__name__}, not a state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = " ".join(str(exc).split())
        raise CamInferError(f"'{path}' does not fit the model: {detail[:300]}") from None
    if result.missing_keys or result.unexpected_keys:
        missing = ", ".join(result.missing_keys[:3]) or "none"
        unexpected = ", ".join(result.unexpected_keys[:3]) or "none"
        raise CamInferError(f"'{path}' does not fit the model: {len(result.missing_keys)} missing keys ({missing}), "
                            f"{len(result.unexpected_keys)} unexpected ({unexpected})")
