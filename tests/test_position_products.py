"""Recipro-CAM's closed-form product Aᵀ Wᵀ computed inside OpenVINO's clean pass (`bundle/positions.py`): equal
to a NumPy twin at float32, used by the method, and its maps the head passes' maps; ONNX Runtime keeps it apart."""

from __future__ import annotations

import numpy as np
import pytest

from cam_infer import Explainer


def _images(n: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((n, 3, size, size)).astype(np.float32)


def test_the_clean_pass_returns_the_products_of_a_numpy_twin(tiny_bundle):
    explainer = Explainer(tiny_bundle, backend="openvino")
    weight = explainer.linear_head.weight
    for n in (1, 3):                                     # OpenVINO: the static batch-1 copy, then the dynamic graph
        x = _images(n)
        a, outputs, products = explainer.backend.observe_products(x, weight)
        plain_a, plain_outputs = explainer.backend.observe(x)
        np.testing.assert_array_equal(a, plain_a)
        np.testing.assert_array_equal(outputs, plain_outputs)
        twin = np.einsum("nkp,ck->npc", a.reshape(n, a.shape[1], -1).astype(np.float64), weight.astype(np.float64))
        np.testing.assert_allclose(products, twin, rtol=1e-5, atol=1e-5 * np.abs(twin).max())


def test_a_folder_runs_products_go_one_image_per_request_on_the_static_copy(tiny_bundle):
    """In throughput mode (a folder run) the pass with the products is a clean pass like the plain one: one image per
    request on the batch-1 copy, not chunks of several on the dynamic graph (1 core-ms an image more on MobileNetV2)."""
    from cam_infer.backends.base import PRODUCTS
    latency = Explainer(tiny_bundle, backend="openvino")
    throughput = Explainer(tiny_bundle, backend="openvino", hint="throughput")
    weight, x = latency.linear_head.weight, _images(64)       # chunks of several before, whatever the requests
    before = throughput.backend.runtime_calls
    a, outputs, products = throughput.backend.observe_products(x, weight)
    assert throughput.backend.runtime_calls - before == 64
    assert (PRODUCTS, 1) in throughput.backend._compiled and (PRODUCTS, None) not in throughput.backend._compiled
    for got, want in zip((a, outputs, products), latency.backend.observe_products(x, weight)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_a_model_too_large_for_two_copies_keeps_one_compiled_copy_for_the_products(tiny_bundle, monkeypatch):
    """Over BOTH_COPIES_BYTES (ResNet-50) a second static copy for the products would cost ~60 % of the model's
    weights again: the products go on the dynamic graph, which then replaces the plain pass's static copy."""
    import cam_infer.backends.openvino as openvino_backend
    from cam_infer.backends.base import PRODUCTS
    monkeypatch.setattr(openvino_backend, "BOTH_COPIES_BYTES", 0)
    throughput = Explainer(tiny_bundle, backend="openvino", hint="throughput")
    assert set(throughput.backend._compiled) == {("joined", 1), ("head", None)}
    throughput.backend.observe_products(_images(64), throughput.linear_head.weight)
    assert set(throughput.backend._compiled) == {("head", None), (PRODUCTS, None)}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_recipro_closed_form_from_its_clean_pass_matches_the_head_passes(tiny_bundle, backend, monkeypatch):
    explainer = Explainer(tiny_bundle, backend=backend)
    calls = []
    observe_products = explainer.backend.observe_products
    monkeypatch.setattr(explainer.backend, "observe_products", lambda *a: calls.append(1) or observe_products(*a))
    x = _images(2)
    for kernel in ("onehot", "gaussian3"):
        closed = explainer.explain(x, "recipro", kernel=kernel, top_classes=2, upsampled=False).maps
        passes = explainer.explain(x, "recipro", kernel=kernel, top_classes=2, upsampled=False, closed_form=False).maps
        np.testing.assert_allclose(closed, passes, rtol=1e-5, atol=1e-6 * np.abs(passes).max())
    assert len(calls) == (2 if backend == "openvino" else 0)  # the closed forms only, each in one clean pass


def test_recipro_reads_the_products_its_clean_pass_returns(tiny_bundle, monkeypatch):
    """All-zero products leave every position at the bias's logits: a constant map, whatever the activations."""
    explainer = Explainer(tiny_bundle, backend="openvino")
    x = _images(2)
    assert np.ptp(explainer.explain(x, "recipro", upsampled=False).maps, axis=(1, 2)).min() > 0
    observe_products = explainer.backend.observe_products

    def zero_products(*args):
        a, outputs, products = observe_products(*args)
        return a, outputs, np.zeros_like(products)
    monkeypatch.setattr(explainer.backend, "observe_products", zero_products)
    np.testing.assert_array_equal(np.ptp(explainer.explain(x, "recipro", upsampled=False).maps, axis=(1, 2)), 0)
