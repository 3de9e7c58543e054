"""Backends: both runtimes agree, any batch size in order, chunking under a memory budget."""

from __future__ import annotations

import numpy as np
import pytest

from cam_infer import CamInferError, load_backend
from cam_infer.backends import OnnxRuntimeBackend, OpenVINOBackend


def _images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 64)).astype(np.float32)


def test_runtimes_agree_on_features_and_scores(tiny_bundle):
    x = _images(6)
    ort, ov = load_backend(tiny_bundle, "onnxruntime"), load_backend(tiny_bundle, "openvino")
    a_ort, a_ov = ort.features(x), ov.features(x)
    assert a_ort.shape == (6, 16, 16, 16) and a_ort.dtype == np.float32
    np.testing.assert_allclose(a_ov, a_ort, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ov.head(a_ort), ort.head(a_ort), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_small_memory_budget_cuts_batches_into_chunks_with_same_results(tiny_bundle, backend):
    x = _images(10)
    whole = load_backend(tiny_bundle, backend)
    chunked = load_backend(tiny_bundle, backend, memory_budget_mb=0.2)
    assert whole.chunk_size("features") >= 10
    assert chunked.chunk_size("features") < 10
    before = chunked.runtime_calls
    np.testing.assert_allclose(chunked.features(x), whole.features(x), rtol=1e-5, atol=1e-6)
    calls = chunked.runtime_calls - before
    # results come back in input order, each image computed on its own equals the batch
    np.testing.assert_allclose(whole.forward(x[7:8]), whole.forward(x)[7:8], rtol=1e-5, atol=1e-6)
    assert calls == -(-10 // chunked.chunk_size("features")) and calls > 1


def test_openvino_runs_many_chunks_on_asynchronous_requests(tiny_bundle):
    backend = load_backend(tiny_bundle, "openvino", hint="throughput", memory_budget_mb=0.2)
    assert backend.parallel_requests() >= 1
    x = _images(12)
    reference = load_backend(tiny_bundle, "onnxruntime").features(x)
    np.testing.assert_allclose(backend.features(x), reference, rtol=1e-4, atol=1e-5)


def test_empty_batch_gives_empty_results(tiny_bundle):
    backend = load_backend(tiny_bundle, "onnxruntime")
    assert backend.features(np.zeros((0, 3, 64, 64), np.float32)).shape == (0, 16, 16, 16)


def test_wrong_input_shape_is_an_error(tiny_bundle):
    with pytest.raises(CamInferError, match=r"input images must have shape \(N, 3, 64, 64\)"):
        load_backend(tiny_bundle, "onnxruntime").features(np.zeros((1, 3, 32, 32), np.float32))


def test_backend_options_are_applied(tiny_bundle, tmp_path):
    ort = load_backend(tiny_bundle, "ort", threads=1, spinning=False)
    assert isinstance(ort, OnnxRuntimeBackend)
    ov = load_backend(str(tiny_bundle.path), "ov", threads=1, cache_dir=str(tmp_path / "cache"), hint="throughput")
    assert isinstance(ov, OpenVINOBackend) and ov.device == "CPU"
    assert ov.compiled_property("INFERENCE_NUM_THREADS") == 1
    assert any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("backend, options, message", [
    ("tensorrt", {}, "unknown backend 'tensorrt'; choose one of: auto, onnxruntime, openvino, ort, ov"),
    ("openvino", {"device": "TPU"}, "OpenVINO device 'TPU' is not available here; available: CPU"),
    ("openvino", {"hint": "fast"}, "unknown OpenVINO hint"),
    ("onnxruntime", {"device": "GPU"}, "CPU provider cannot use device 'GPU'"),
    ("onnxruntime", {"provider": "cuda"}, "unknown ONNX Runtime provider"),
    ("onnxruntime", {"memory_budget_mb": 0}, "memory budget must be positive"),
])
def test_unknown_backend_or_device_is_an_error(tiny_bundle, backend, options, message):
    with pytest.raises(CamInferError, match=message):
        load_backend(tiny_bundle, backend, **options)
