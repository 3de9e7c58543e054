"""Smooth Grad-CAM++ and Integrated Grad-CAM against step-by-step NumPy computations of their formulas,
with activations from the runtime and gradients from the head graph run in torch; and their reductions
(one noiseless sample is Grad-CAM++, one official step is Grad-CAM at the baseline)."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_onnx import tiny_cnn

from conftest import needs_torch
from cam_infer import CamInferError, Explainer, split_onnx
from cam_infer.bundle.verify import random_images

pytestmark = needs_torch


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    bundle = split_onnx(tiny_cnn(), layer="relu2", out=tmp_path_factory.mktemp("b") / "b")   # head: conv, GAP, Gemm
    explainer = Explainer(bundle, gradients="torch")
    return explainer, random_images(bundle.preprocessing, 2, seed=5)


def grads(explainer, x, targets):
    a = explainer.backend.features(x)
    return a.astype(np.float64), explainer.gradients(x, a, targets).astype(np.float64)


def test_one_noiseless_sample_is_gradcam_plus_plus(setup):
    explainer, x = setup
    one = explainer.explain(x, "smoothgrad-cam++", samples=1, std=0.0).maps
    np.testing.assert_allclose(one, explainer.explain(x, "gradcam++").maps, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("compat", [False, True])
def test_smoothgrad_campp_equals_the_formula(setup, compat):
    explainer, x = setup
    targets = explainer.explain(x, "gradcam").targets
    rng = np.random.default_rng(7)
    samples = []
    for _ in range(3):
        noisy = (x + 0.3 * rng.standard_normal(x.shape)).astype(np.float32)
        samples.append(grads(explainer, noisy, targets))
    a0 = explainer.backend.features(x).astype(np.float64)
    d1 = np.mean([g for _, g in samples], axis=0)
    d2 = np.mean([g ** 2 for _, g in samples], axis=0)
    d3 = np.mean([g ** 3 for _, g in samples], axis=0)
    a = samples[-1][0] if compat else a0
    relu = np.maximum(samples[-1][1] if compat else d1, 0)
    expected = np.zeros(a.shape[:1] + a.shape[2:])
    for n in range(len(x)):
        for k in range(a.shape[1]):
            total = a[n, k].sum()
            alpha = np.where(d2[n, k] != 0, d2[n, k] / (2 * d2[n, k] + total * d3[n, k] + 1e-6), 0)
            expected[n] += (alpha * relu[n, k]).sum() * a[n, k]
    got = explainer.explain(x, "smoothgrad-cam++", samples=3, std=0.3, seed=7, torchcam_compat=compat).maps
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_one_official_step_is_gradcam_at_the_baseline(setup):
    explainer, x = setup
    targets = explainer.explain(x, "gradcam").targets
    black = explainer.bundle.preprocessing.standardise(np.zeros((*x.shape[2:], 3), np.uint8))
    baseline = np.repeat(black[None], len(x), axis=0)
    expected = np.maximum(explainer.explain(baseline, "gradcam", target=targets).maps, 0)
    got = explainer.explain(x, "integrated-gradcam", steps=1, target=targets).maps
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("preset", ["official", "integral"])
def test_integrated_gradcam_equals_the_path_sum(setup, preset):
    explainer, x = setup
    targets = explainer.explain(x, "gradcam").targets
    black = explainer.bundle.preprocessing.standardise(np.zeros((*x.shape[2:], 3), np.uint8))
    m = 4
    steps = range(0, m) if preset == "official" else range(1, m + 1)
    expected = 0.0
    a_base, _ = grads(explainer, black[None], targets[:1])
    for i in steps:
        xi = (black + (i / m) * (x - black)).astype(np.float32)
        a, g = grads(explainer, xi, targets)
        term = np.einsum("nk,nkhw->nhw", g.mean(axis=(2, 3)), a if preset == "official" else a - a_base)
        expected = expected + (np.maximum(term, 0) if preset == "official" else term)
    got = explainer.explain(x, "integrated-gradcam", preset=preset, steps=m, target=targets).maps
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_options_are_checked(setup):
    explainer, x = setup
    with pytest.raises(CamInferError, match="integrated-gradcam: preset must be one of 'official', 'integral'"):
        explainer.explain(x, "integrated-gradcam", preset="riemann")
    with pytest.raises(CamInferError, match="smoothgrad-cam\\+\\+: samples must be positive"):
        explainer.explain(x, "smoothgrad-cam++", samples=0)
