"""SS-CAM and IS-CAM against plain, image-by-image NumPy computations of their formulas (research notes
on the seed methods, §0–§2), and their reductions to Score-CAM."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cam_infer import CamInferError, Explainer
from cam_infer.bundle.verify import random_images
from cam_infer.methods import GRADIENT_FREE
from cam_infer.methods.is_cam import coefficients
from cam_infer.numerics import softmax


@pytest.fixture(scope="module")
def setup(tiny_bundle):
    explainer = Explainer(tiny_bundle)
    x = random_images(tiny_bundle.preprocessing, 2, seed=11)
    return explainer, x


def up(m: np.ndarray, size) -> np.ndarray:
    return cv2.resize(m.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def norm(m: np.ndarray) -> np.ndarray:
    return (m - m.min()) / (m.max() - m.min() + 1e-8)


def class_score(explainer, x: np.ndarray, c: int, kind: str) -> float:
    out = explainer.backend.forward(x[None].astype(np.float32))[0].astype(np.float64)
    return float(softmax(out)[c] if kind == "prob" else out[c])


def reference(explainer, x: np.ndarray, method: str, **o) -> np.ndarray:
    """One image, one pass at a time, the formulas as written."""
    a = explainer.backend.features(x[None])[0].astype(np.float64)
    c = int(explainer.backend.forward(x[None])[0].argmax())
    size = x.shape[1:]
    k = a.shape[0]
    weights = np.zeros(k)
    if method == "is-cam":
        n = o.get("samples", 10)
        scales = np.cumsum(np.arange(1, n + 1) / n) if o.get("preset", "torchcam") == "torchcam" else np.arange(1, n + 1) / n
        scores = [np.mean([class_score(explainer, s * up(norm(a[j]), size) * x, c, "logit") for s in scales])
                  for j in range(k)]
        weights = softmax(np.array(scores))
    else:
        preset, n, std = o.get("preset", "torchcam"), o.get("samples", 35), o.get("std", 2.0)
        rng = np.random.default_rng(o.get("seed", 0))
        scores = []
        kept = []
        for j in range(k):
            if preset == "torchcam":
                m = up(norm(a[j]), size)
                draws = [class_score(explainer, (m + std * rng.standard_normal(size, dtype=np.float32)) * x, c,
                                     "logit") for _ in range(n)]
            else:
                s = up(a[j], size)
                if s.max() - s.min() <= 1e-12 * max(1.0, abs(s.max())):
                    continue
                if preset == "paper-mask":
                    sigma = (std / (s.max() - s.min())) ** 2
                    draws = [class_score(explainer, (s + sigma * rng.standard_normal(size, dtype=np.float32)) * x,
                                         c, "prob") for _ in range(n)]
                else:
                    z = norm(s) * x
                    sigma = (std / (z.max() - z.min())) ** 2
                    draws = [class_score(explainer, z + sigma * rng.standard_normal(x.shape, dtype=np.float32), c,
                                         "prob") for _ in range(n)]
            scores.append(np.mean(draws))
            kept.append(j)
        weights[kept] = softmax(np.array(scores)) if preset == "torchcam" else np.array(scores)
    return np.tensordot(weights, a, axes=1)


def test_is_cam_coefficients_are_torchcams_cumulative_ones():
    np.testing.assert_allclose(coefficients("torchcam", 10), [0.1, 0.3, 0.6, 1.0, 1.5, 2.1, 2.8, 3.6, 4.5, 5.5],
                               rtol=1e-6)
    np.testing.assert_allclose(coefficients("linear", 4), [0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize("method, options", [
    ("is-cam", {"preset": "torchcam", "samples": 3}),
    ("is-cam", {"preset": "linear", "samples": 2}),
    ("ss-cam", {"preset": "torchcam", "samples": 3, "seed": 5}),
    ("ss-cam", {"preset": "paper-mask", "samples": 2, "std": 2.0, "seed": 1}),
    ("ss-cam", {"preset": "paper-input", "samples": 2, "std": 2.0, "seed": 2}),
])
def test_the_maps_equal_an_image_by_image_computation(setup, method, options):
    explainer, x = setup
    got = explainer.explain(x, method, **options).maps
    for i in range(len(x)):
        expected = reference(explainer, x[i], method, **options)
        np.testing.assert_allclose(got[i], expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())


def test_without_noise_ss_cam_is_score_cam(setup):
    """paper-input with no noise is the original Score-CAM (probability of n(U(A))⊙x, Σ w·A): our `score`
    with its reference weighting; torchcam's preset with no noise is torchcam's Score-CAM, which is IS-CAM
    with one linear step (scale 1); and any number of noiseless samples gives the same map."""
    explainer, x = setup
    paper = explainer.explain(x, "ss-cam", preset="paper-input", std=0.0, samples=3).maps
    score = explainer.explain(x, "score", weighting="reference").maps
    np.testing.assert_allclose(paper, score, rtol=1e-4, atol=1e-5 * np.abs(score).max())
    torchcam = explainer.explain(x, "ss-cam", preset="torchcam", std=0.0, samples=1).maps
    np.testing.assert_allclose(explainer.explain(x, "ss-cam", preset="torchcam", std=0.0, samples=4).maps, torchcam,
                               rtol=1e-5, atol=1e-6)
    one_step = explainer.explain(x, "is-cam", preset="linear", samples=1).maps
    np.testing.assert_allclose(torchcam, one_step, rtol=1e-5, atol=1e-6 * np.abs(one_step).max())


def test_a_seed_gives_the_same_map_and_top_k_all_is_all(setup):
    explainer, x = setup
    first = explainer.explain(x, "ss-cam", samples=4, seed=3).maps
    np.testing.assert_array_equal(explainer.explain(x, "ss-cam", samples=4, seed=3).maps, first)
    assert not np.allclose(explainer.explain(x, "ss-cam", samples=4, seed=4).maps, first)
    k = explainer.bundle.activation_shape[0]
    np.testing.assert_allclose(explainer.explain(x, "is-cam", samples=2, top_k=k).maps,
                               explainer.explain(x, "is-cam", samples=2).maps, rtol=1e-6)
    fewer = explainer.explain(x, "is-cam", samples=2, top_k=4).maps
    assert np.isfinite(fewer).all() and not np.allclose(fewer, explainer.explain(x, "is-cam", samples=2).maps)


def test_they_run_by_name_only_and_check_their_options(setup):
    explainer, x = setup
    assert "ss-cam" not in GRADIENT_FREE and "is-cam" not in GRADIENT_FREE     # K·N passes: not in "all"
    with pytest.raises(CamInferError, match="ss-cam: preset must be one of 'torchcam', 'paper-mask', 'paper-input'"):
        explainer.explain(x, "ss-cam", preset="paper")
    with pytest.raises(CamInferError, match="samples must be positive, not 0"):
        explainer.explain(x, "is-cam", samples=0)
