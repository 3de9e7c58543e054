"""Checking a split: ``head(features(x))`` against the whole model, run as the file is (its own layout
and input dtype), on random images through the bundle's preprocessing, batch 1 and 3.

Tolerance: float32 rounding (1e-4 relative; 2e-2 for float16 models), plus one quantization step of
the model's output when it is quantized (a 1/256 difference in quantized probabilities is rounding,
not a bad split). Where the head returns the logits before a quantized Softmax, their softmax is
compared with the model's probabilities.
"""

from __future__ import annotations

import re

import numpy as np
import onnx

from ..errors import CamInferError
from ..numerics import zero_padded
from ..images import Preprocessing
from .anatomy import ScoreOutput, check_classifier_output
from .graph import InputSpec

VERIFY_BATCHES = (1, 3)


class Mismatch(Exception):
    """The split graphs run but do not reproduce the model (or do not run at all)."""


def random_images(prep: Preprocessing, n: int, seed: int = 0) -> np.ndarray:
    """`n` random RGB images through the bundle's normalisation: inputs in the model's own range."""
    rng = np.random.default_rng(seed)
    h, w = prep.input_size
    pixels = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    return np.stack([prep.standardise(p) for p in pixels])


def as_source_input(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A bundle input (N,C,H,W) float32 as the source model takes it: its layout, its dtype (integers are
    rounded and clipped, as the features graph does at its boundary)."""
    if spec.layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    if spec.dtype in ("uint8", "int8"):
        info = np.iinfo(spec.dtype)
        return np.clip(np.round(x), info.min, info.max).astype(spec.dtype)
    return np.ascontiguousarray(x.astype({"float16": np.float16, "float64": np.float64}.get(spec.dtype, np.float32)))


def session(model: onnx.ModelProto):
    """A reference session of `model`: ONNX Runtime's CPU provider in float32, whatever explanations run at."""
    import onnxruntime as ort

    from ..backends.sessions import FLOAT32, onnxruntime_session
    ort.set_default_logger_severity(4)  # a failing verification run is reported by us, not logged
    return onnxruntime_session(model, FLOAT32, quiet=True)


def runtime_message(exc: BaseException | str, limit: int | None = 600) -> str:
    """The runtime's message on one line (its second line often says what was expected), at most `limit`
    characters, cut at a word and ending in '...' when longer; ``limit=None``: all of it."""
    text = " ".join(" ".join(str(exc).split()).split(" ; "))
    if limit is None or len(text) <= limit:
        return text
    return text[:limit - 3].rsplit(" ", 1)[0] + " ..."


def openvino_message(exc: BaseException, limit: int = 400) -> str:
    """OpenVINO's message on one line without its C++ locations: a model it could not convert is named by the ops
    it failed on (its report's summary), anything else is its message cut at `limit` characters."""
    text = str(exc)
    failed = re.search(r"Conversion is failed for:\s*(.+)", text)
    if failed:
        return "OpenVINO cannot convert its ops " + " ".join(failed.group(1).split())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Exception from")]
    return runtime_message(" ".join(lines), limit) if lines else type(exc).__name__


def _run(sess, x: np.ndarray, fixed: int | None, *, scores: bool = False) -> np.ndarray:
    """Run a session on a batch; a graph with a fixed batch runs it in chunks of that size, zero-padded.
    scores: the output is class scores, and one without a batch axis ((C,) from a batch-1 model: its first
    axis is the classes, not the images) is read as `fixed` rows."""
    name = sess.get_inputs()[0].name
    output = sess.get_outputs()[0].name
    if not fixed:
        return sess.run([output], {name: x})[0]
    outs = []
    for i in range(0, len(x), fixed):
        chunk = x[i:i + fixed]
        out = sess.run([output], {name: zero_padded(chunk, fixed)})[0]
        outs.append((out.reshape(fixed, -1) if scores and out.ndim == 1 else out)[:len(chunk)])
    return np.concatenate(outs)


def verify(source: onnx.ModelProto, spec: InputSpec, scores: ScoreOutput, features: onnx.ModelProto,
           head: onnx.ModelProto, prep: Preprocessing, batch_mode: str, fixed_batch: int | None) -> dict:
    import onnxruntime as ort
    # A head that leaves out the model's quantized Softmax returns the logits before it: they are compared
    # with the model's own logits (its graph up to them), within one of their quantization steps; saturated
    # uint8 probabilities would hide logits many steps off.
    try:
        full = session(source)
        logits = session(_up_to(source, scores.tensor)) if scores.trimmed else None
    except Exception as exc:
        raise CamInferError(f"ONNX Runtime cannot run this model ({runtime_message(exc)})") from None
    try:
        feat, hd = session(features), session(head)
    except Exception as exc:
        raise Mismatch(f"ONNX Runtime cannot load the split graphs ({runtime_message(exc)})") from None
    rtol = 1e-4 if spec.dtype in ("float32", "uint8", "int8", "float64") else 2e-2
    step = scores.tensor_step if logits is not None else scores.step
    results, worst, num_classes = {}, 0.0, None
    for n in VERIFY_BATCHES:
        x = random_images(prep, n, seed=n)
        try:
            raw = _run(full, as_source_input(x, spec), fixed_batch, scores=True)
        except Exception as exc:
            raise CamInferError(f"ONNX Runtime cannot run this model on a batch of {n} "
                                f"({runtime_message(exc)})") from None
        check_classifier_output(raw.shape, scores.source, prep.input_size)
        expected = scores.model_scores(raw).reshape(n, -1)
        if logits is not None:
            expected = _run(logits, as_source_input(x, spec), fixed_batch, scores=True).reshape(n, -1)
        try:
            kept = fixed_batch if batch_mode == "fixed" else None
            got = _run(hd, _run(feat, x, kept), kept, scores=True)
        except Exception as exc:
            raise Mismatch(f"batch {n} fails to run ({runtime_message(exc)})") from None
        diff = compare(got, expected, False, rtol, step, n)
        worst = max(worst, diff)
        results[str(n)] = diff
        num_classes = expected.shape[1]
    return {"passed": True, "batch_sizes": list(VERIFY_BATCHES), "max_abs_diff": worst,
            "max_abs_diff_per_batch": results, "relative_tolerance": rtol, "output_step": step,
            "compared": "the logits before the model's quantized Softmax" if logits is not None else "the output",
            "runtime": f"onnxruntime {ort.__version__}", "inputs": "random uint8 images through the bundle "
            "preprocessing, fed to the model in its own layout and dtype", "num_classes": num_classes}


def _up_to(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """The model with `tensor` as its only output (the runtime drops what follows it)."""
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    del cut.graph.output[:]
    cut.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    return cut


def compare(got: np.ndarray, expected: np.ndarray, softmax_first: bool, rtol: float, step: float, n: int) -> float:
    """max |head(features(x)) − model(x)| for a batch of n (the head's logits through a softmax when the model's
    quantized Softmax was left out); a difference beyond float rounding plus one output step is a `Mismatch`."""
    from ..numerics import softmax

    got = got.astype(np.float32).reshape(n, -1)
    if softmax_first:
        got = softmax(got)
    if got.shape != expected.shape:
        raise Mismatch(f"batch {n}: the head returns {got.shape[1]} scores, the model {expected.shape[1]}")
    diff = float(np.max(np.abs(got - expected)))
    tol = rtol * max(1.0, float(np.max(np.abs(expected)))) + 1.01 * step
    if not diff <= tol:
        raise Mismatch(f"batch {n}: max |head(features(x)) - model(x)| = {diff:.3g} > {tol:.3g}")
    return diff


def openvino_runs(features: onnx.ModelProto, head: onnx.ModelProto) -> str | None:
    """None when OpenVINO compiles both graphs on CPU (in float32), else why not (one line)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "openvino is not installed"
    from ..backends.sessions import FLOAT32, openvino_compiled
    for role, model in (("features", features), ("head", head)):
        try:
            openvino_compiled(model, FLOAT32)
        except Exception as exc:
            return f"{role}: {openvino_message(exc)}"
    return None
