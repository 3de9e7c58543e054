"""Backends: both runtimes agree, any batch size in order, chunking under a memory budget."""

from __future__ import annotations

import numpy as np
import pytest

from cam_infer import CamInferError, load_backend
from cam_infer.backends import OnnxRuntimeBackend, OpenVINOBackend
from helpers import two_graph_pass


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


def test_openvino_throughput_hint_runs_a_clean_pass_one_image_per_request_on_the_static_copy(tiny_bundle):
    latency = load_backend(tiny_bundle, "openvino")
    throughput = load_backend(tiny_bundle, "openvino", hint="throughput")
    x = _images(7)
    before = throughput.runtime_calls
    a, y = throughput.observe(x)
    assert throughput.runtime_calls - before == 7 and ("joined", 1) in throughput._compiled
    assert ("joined", None) not in throughput._compiled                   # no dynamic-batch copy was needed
    a_latency, y_latency = latency.observe(x)
    np.testing.assert_allclose(a, a_latency, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, y_latency, rtol=1e-5, atol=1e-6)
    # other graphs: a call's rows shared out over the optimal number of requests, in order
    requests = throughput.parallel_requests()
    assert throughput.chunk_size("head", 10) == -(-10 // requests) and latency.chunk_size("head", 10) >= 10
    np.testing.assert_allclose(throughput.head(a), y_latency, rtol=1e-5, atol=1e-6)


def test_a_folder_runs_spec_reopens_openvino_in_its_throughput_mode(tiny_bundle):
    from cam_infer.jobs.explainers import open_explainer
    from cam_infer.parallel import ExplainerSpec

    explainer = open_explainer(tiny_bundle, "openvino", hint="throughput")
    spec = ExplainerSpec.of(explainer)
    assert explainer.backend.hint == "throughput" and spec.hint == "throughput"
    assert ExplainerSpec(**{**spec.__dict__, "bundle": str(tiny_bundle.path)}).open().backend.hint == "throughput"
    assert open_explainer(tiny_bundle, "onnxruntime", hint="throughput").backend.name == "onnxruntime"   # no hint


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_clean_pass_runs_features_and_head_joined_in_one_call(tiny_bundle, backend):
    be = load_backend(tiny_bundle, backend)
    x = _images(5)
    before = be.runtime_calls
    a, y = be.observe(x)
    assert be.joins and be.runtime_calls - before == 1
    a_split, y_split = two_graph_pass(tiny_bundle, x, backend)
    np.testing.assert_allclose(a, a_split, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y, y_split, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(be.head(a), y, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(be.forward(x), y)
    # chunked under a small budget (OpenVINO's throughput hint: asynchronous requests), both outputs in order
    hint = {"hint": "throughput"} if backend == "openvino" else {}
    chunked = load_backend(tiny_bundle, backend, memory_budget_mb=0.2, **hint)
    before = chunked.runtime_calls
    a_chunked, y_chunked = chunked.observe(x)
    assert chunked.runtime_calls - before == -(-5 // chunked.chunk_size("joined")) > 1
    np.testing.assert_allclose(a_chunked, a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y_chunked, y, rtol=1e-5, atol=1e-6)


def test_empty_batch_gives_empty_results(tiny_bundle):
    backend = load_backend(tiny_bundle, "onnxruntime")
    assert backend.features(np.zeros((0, 3, 64, 64), np.float32)).shape == (0, 16, 16, 16)
    a, y = backend.observe(np.zeros((0, 3, 64, 64), np.float32))
    assert a.shape == (0, 16, 16, 16) and y.shape == (0, *tiny_bundle.output_shape)


def test_wrong_input_shape_is_an_error(tiny_bundle):
    with pytest.raises(CamInferError, match=r"input images must have shape \(N, 3, 64, 64\)"):
        load_backend(tiny_bundle, "onnxruntime").features(np.zeros((1, 3, 32, 32), np.float32))


def config_entry(options, key: str) -> str | None:
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:                                     # not set
        return None


def test_backend_options_are_applied(tiny_bundle, tmp_path):
    ort = load_backend(tiny_bundle, "ort", threads=1, spinning=False)
    assert isinstance(ort, OnnxRuntimeBackend)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    for spinning, entries in (({True: ("1", None), "during-run": ("1", "1"), False: ("0", None)}).items()):
        b = load_backend(tiny_bundle, "ort", spinning=spinning)
        config = b._sessions["joined"].get_session_options()
        found = tuple(config_entry(config, k) for k in ("session.intra_op.allow_spinning",
                                                         "session.force_spinning_stop"))
        assert found == entries, (spinning, found)
        np.testing.assert_array_equal(b.forward(x), ort.forward(x))
    with pytest.raises(CamInferError, match="spinning must be True, False or 'during-run', not 'sometimes'"):
        load_backend(tiny_bundle, "ort", spinning="sometimes")
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
    ("onnxruntime", {"memory_budget_mb": 0}, "memory_budget_mb must be a positive number"),
])
def test_unknown_backend_or_device_is_an_error(tiny_bundle, backend, options, message):
    with pytest.raises(CamInferError, match=message):
        load_backend(tiny_bundle, backend, **options)


@pytest.mark.parametrize("small", [True, False])
def test_openvino_runs_a_batch_of_one_on_a_static_copy(tiny_bundle, small, monkeypatch):
    """Small models keep it beside the dynamic graph; larger ones drop it at the first larger batch."""
    import cam_infer.backends.openvino as module
    monkeypatch.setattr(module, "BOTH_COPIES_BYTES", 2**40 if small else 0)
    be = load_backend(tiny_bundle, "openvino")
    x = _images(4)
    one = be.forward(x[:1])
    assert ("joined", 1) in be._compiled and ("joined", None) not in be._compiled
    batch = be.forward(x)
    assert (("joined", 1) in be._compiled) == small and ("joined", None) in be._compiled
    np.testing.assert_allclose(batch[:1], one, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(be.forward(x[:1]), one, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_joined_graph_is_read_from_memory_where_no_temporary_folder_takes_it(tiny_bundle, backend, monkeypatch):
    import tempfile

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    x = _images(3)
    expected = load_backend(tiny_bundle, backend).observe(x)
    monkeypatch.setattr(tempfile, "mkdtemp", full_disk)
    with tiny_bundle.joined_file() as source:
        assert isinstance(source, bytes)
    be = load_backend(tiny_bundle, backend)
    for got, want in zip(be.observe(x), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_precision_is_what_the_runtime_is_told(tiny_bundle):
    """f32 (the default) pins float32; auto leaves OpenVINO's own choice, as a compile without a hint has it."""
    import openvino as ov

    own = ov.Core().compile_model(str(tiny_bundle.head_path), "CPU").get_property("INFERENCE_PRECISION_HINT")
    for precision, expected in (("f32", ov.Type.f32), ("auto", own), (None, own)):
        be = load_backend(tiny_bundle, "openvino", precision=precision)
        assert be.compiled_property("INFERENCE_PRECISION_HINT") == expected, precision
    x = _images(2)
    np.testing.assert_array_equal(load_backend(tiny_bundle, "ort", precision="auto").forward(x),
                                  load_backend(tiny_bundle, "ort").forward(x))


@pytest.mark.parametrize("backend, options, message", [
    ("onnxruntime", {"precision": "bf16"}, "ONNX Runtime's CPU provider computes in float32; for precision 'bf16' "
                                           "use backend='openvino'"),
    ("openvino", {"precision": "f64"}, "unknown precision 'f64'; choose one of: f32, bf16, f16, auto"),
])
def test_a_precision_a_runtime_cannot_run_is_an_error(tiny_bundle, backend, options, message):
    with pytest.raises(CamInferError, match=message):
        load_backend(tiny_bundle, backend, **options)


def test_every_session_opens_through_the_factory():
    """ONNX Runtime sessions and OpenVINO compiled models are opened in backends/sessions.py only."""
    import re
    from pathlib import Path

    import cam_infer
    package = Path(cam_infer.__file__).parent
    opening = re.compile(r"InferenceSession\(|SessionOptions\(|compile_model\(|read_model\(|Core\(\)")
    found = [f"{path.relative_to(package)}:{number}" for path in sorted(package.rglob("*.py"))
             if path.name != "sessions.py"
             for number, line in enumerate(path.read_text().splitlines(), 1) if opening.search(line)]
    assert not found, f"sessions opened outside backends/sessions.py: {found}"
