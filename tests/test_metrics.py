"""Metrics against published numbers, closed forms and hand-made maps."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cam_infer import CamInferError, Explainer, split_onnx
from cam_infer.metrics import (adcc, auc, average_drop, box_from_map, box_localisation, causal_curve, coherency,
                               complexity, energy_pointing, explanation_inputs, increase_in_confidence, iou,
                               substrate_of)
from cam_infer.metrics.faithfulness import gaussian_kernel

# Recipro-CAM, CVPRW 2024, Table 1 (research-notes §1.4): Drop, Coherency, Complexity, ADCC in %.
PUBLISHED = [
    (66.42, 69.20, 15.65, 53.52), (32.88, 89.34, 26.33, 75.65), (36.72, 82.68, 28.09, 71.72),
    (26.13, 93.83, 20.27, 81.66), (21.51, 92.24, 27.48, 80.27),
    (42.90, 81.03, 23.04, 69.98), (17.85, 98.18, 44.63, 74.24), (20.67, 97.53, 43.11, 74.20),
    (12.81, 98.35, 41.78, 77.30), (20.68, 97.38, 33.60, 79.08),
    (32.99, 82.80, 22.24, 75.27), (12.82, 97.84, 43.99, 75.86), (15.21, 97.47, 42.25, 76.19),
    (8.61, 98.12, 42.05, 78.14), (15.69, 96.68, 32.90, 80.84),
    (29.38, 81.97, 22.51, 76.40), (11.38, 98.28, 43.94, 76.34), (13.37, 97.76, 42.61, 76.54),
    (7.20, 98.37, 42.04, 78.55), (15.07, 97.21, 32.45, 81.38),
    (28.06, 82.72, 25.57, 76.09), (11.12, 97.30, 48.66, 73.16), (12.70, 97.32, 47.48, 73.58),
    (7.20, 98.00, 46.86, 75.38), (13.70, 96.37, 37.36, 79.10),
    (24.12, 82.94, 25.45, 77.62), (9.74, 95.05, 46.27, 74.61), (9.49, 96.81, 49.24, 73.03),
    (5.37, 97.03, 46.83, 75.60), (12.03, 97.50, 35.62, 80.74),
]


def test_adcc_reproduces_the_30_published_rows_from_their_components():
    drop, coh, compl, published = (np.array(c) / 100 for c in zip(*PUBLISHED))
    got = adcc(coh, compl, drop)
    assert np.abs(got - published).max() * 100 < 0.05
    assert adcc(0.9224, 0.2748, 0.2151) == pytest.approx(0.8027, abs=5e-4)     # one row as scalars


def test_adcc_edge_cases_and_components():
    assert adcc(0.0, 0.1, 0.1) == 0.0 and adcc(0.9, 1.0, 0.1) == 0.0 and adcc(0.9, 0.1, 1.0) == 0.0
    assert adcc(1.0, 0.0, 0.0) == pytest.approx(1.0)
    a = np.arange(16, dtype=float).reshape(4, 4)
    assert coherency(a, 2 * a + 3) == pytest.approx(1.0) and coherency(a, -a) == pytest.approx(0.0)
    assert coherency(a, np.ones((4, 4))) == 0.0                          # undefined correlation → 0
    assert complexity(np.array([[0.0, 1.0], [0.5, 0.5]])) == pytest.approx(0.5)
    np.testing.assert_allclose(average_drop([0.8, 0.5, 0.2], [0.4, 0.6, 0.2]), [0.5, 0.0, 0.0])
    np.testing.assert_array_equal(increase_in_confidence([0.8, 0.5, 0.2], [0.4, 0.6, 0.2]), [0, 1, 0])


# --- insertion and deletion on a model whose curve is known -----------------------------------------

def mean_model(a: float) -> onnx.ModelProto:
    """logits = (a·mean(x), 0): p₀ = σ(a·mean(x)). A 1×1 conv averaging channels gives the 4-D layer."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["features"]),
             helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "mean", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(np.full((1, 3, 1, 1), 1 / 3, np.float32), "w"),
                     numpy_helper.from_array(np.array([[a], [0.0]], np.float32), "fc")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def mean_explainer(tmp_path_factory):
    bundle = split_onnx(mean_model(4.0), layer="features", out=tmp_path_factory.mktemp("mean") / "b",
                        preprocessing={"crop": "none"})
    return Explainer(bundle)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_deletion_and_insertion_follow_the_closed_form(mean_explainer):
    """Image: c on the left half, 0 on the right; the map ranks the left half first. Deleting onto
    zeros removes mass c/(H·W) per pixel until the left half is gone: p_i = σ(a·c·(1/2 − f_i)⁺),
    f_i the fraction of pixels removed; inserting onto zeros: p_i = σ(a·c·min(f_i, 1/2))."""
    a, c, steps = 4.0, 2.0, 32
    x = np.zeros((3, 16, 16), np.float32)
    x[:, :, :8] = c
    saliency = np.zeros((16, 16), np.float32)
    saliency[:, :8] = np.linspace(1.0, 0.5, 8)[None, :]                      # left half first, in any order
    f = np.minimum(np.arange(steps + 1) * math.ceil(256 / steps), 256) / 256
    deletion = causal_curve(mean_explainer, x, saliency, 0, "deletion", steps, "zeros")
    insertion = causal_curve(mean_explainer, x, saliency, 0, "insertion", steps, "zeros")
    np.testing.assert_allclose(deletion, sigmoid(a * c * np.maximum(0.5 - f, 0)), atol=1e-6)
    np.testing.assert_allclose(insertion, sigmoid(a * c * np.minimum(f, 0.5)), atol=1e-6)
    # The RISE AUC of the deletion curve against the integral ∫₀¹ σ(a·c·(1/2 − t)⁺) dt:
    integral = (math.log1p(math.exp(a * c / 2)) - math.log(2)) / (a * c) + 0.25
    assert auc(deletion) == pytest.approx(integral, abs=2e-3)
    n = steps
    assert auc(deletion, "recipro") == pytest.approx(auc(deletion) * n / (n + 1))
    # The worst order (right half first) deletes nothing for half the curve:
    late = causal_curve(mean_explainer, x, 1 - saliency, 0, "deletion", steps, "zeros")
    assert auc(late) > auc(deletion) + 0.2


def test_the_curves_last_frame_is_the_substrate_when_the_steps_do_not_divide_the_pixels():
    """256 pixels in 28 steps: each step deletes 10 (the last step the 6 left), and the last deletion frame is the
    substrate itself, the last insertion frame the image (a floor of 256/28 = 9 would leave 4 pixels untouched)."""
    from cam_infer.metrics.faithfulness import causal_frames
    x = np.random.default_rng(0).uniform(1, 2, (3, 16, 16)).astype(np.float32)     # no pixel equals the zeros
    saliency = np.random.default_rng(1).random((16, 16)).astype(np.float32)
    deletion = causal_frames(x, saliency, "deletion", steps=28, substrate="zeros")
    insertion = causal_frames(x, saliency, "insertion", steps=28, substrate="zeros")
    assert np.array_equal(deletion[0], x) and not deletion[-1].any()
    assert not insertion[0].any() and np.array_equal(insertion[-1], x)
    removed = [int((frame == 0).all(axis=0).sum()) for frame in deletion]
    assert removed == [min(10 * i, 256) for i in range(29)]
    first = np.argsort(-saliency.ravel(), kind="stable")[:10]               # the ten most salient go first
    assert (deletion[1].reshape(3, -1)[:, first] == 0).all()


def test_substrates_and_the_rise_kernel():
    k = gaussian_kernel(11, 5)
    assert k.shape == (11, 11) and k.sum() == pytest.approx(1.0) and np.allclose(k, k.T)
    # RISE's gkern is SciPy's gaussian_filter of a Dirac (σ 5, truncated at 4σ = 20 px, the array reflected at its
    # edges): the same by a plain 2-D correlation of the symmetric-padded Dirac with the 41×41 truncated Gaussian
    dirac = np.zeros((11, 11))
    dirac[5, 5] = 1.0
    padded = np.pad(dirac, 20, mode="symmetric")                    # NumPy's 'symmetric' is SciPy's 'reflect'
    g = np.exp(-0.5 * (np.arange(-20, 21) / 5.0) ** 2)
    g2 = np.outer(g, g) / np.outer(g, g).sum()
    reference = np.array([[(padded[a:a + 41, b:b + 41] * g2).sum() for b in range(11)] for a in range(11)])
    np.testing.assert_allclose(k, reference / reference.sum(), rtol=1e-5)
    assert k.min() / k.max() > 0.85          # the reflections fold the tails back: an almost flat 11×11 kernel
    x = np.random.default_rng(0).standard_normal((3, 20, 20)).astype(np.float32)
    assert not substrate_of(x, "zeros").any()
    np.testing.assert_allclose(substrate_of(x, "mean")[:, 5, 5], x.mean(axis=(1, 2)), rtol=1e-5)
    blurred = substrate_of(x, "blur")
    manual = sum(k[i, j] * np.pad(x, ((0, 0), (5, 5), (5, 5)))[:, i:i + 20, j:j + 20] for i in range(11) for j in range(11))
    np.testing.assert_allclose(blurred, manual, atol=1e-5)
    with pytest.raises(CamInferError, match="substrate must be one of"):
        substrate_of(x, "noise")
    with pytest.raises(CamInferError, match="auc must be one of"):
        auc([1, 0], "simpson")


def test_explanation_inputs_in_both_spaces():
    from cam_infer import Preprocessing
    prep = Preprocessing((4, 4), crop="none")
    view = np.full((4, 4, 3), 200, np.uint8)
    s = np.zeros((1, 4, 4), np.float32)
    s[0, :2] = 1.0
    x = prep.standardise(view)[None]
    normalised = explanation_inputs(x, s)
    raw = explanation_inputs(x, s, "raw", [view], prep)
    np.testing.assert_allclose(normalised[0, :, :2], x[0, :, :2])
    np.testing.assert_allclose(normalised[0, :, 2:], 0)
    np.testing.assert_allclose(raw[0, :, 2:], prep.standardise(np.zeros((4, 4, 3), np.uint8))[:, 2:], atol=1e-6)
    np.testing.assert_allclose(raw[0, :, :2], x[0, :, :2], atol=1e-6)


# --- localisation on hand-made maps ----------------------------------------------------------------------

def test_energy_pointing_on_hand_made_maps():
    s = np.zeros((10, 10))
    s[2:4, 5:8] = 1.0                      # rows 2–3, columns 5–7
    s[8, 0] = 2.0
    assert energy_pointing(s, [[5, 2, 7, 3]]) == pytest.approx(6 / 8)                  # x1,y1,x2,y2 inclusive
    assert energy_pointing(s, [[5, 2, 6, 3]]) == pytest.approx(4 / 8)
    assert energy_pointing(s, [[5, 2, 7, 3], [0, 8, 0, 8]]) == pytest.approx(1.0)      # union of boxes
    assert energy_pointing(s, [[5, 2, 7, 3], [5, 2, 7, 3]]) == pytest.approx(6 / 8)    # overlap counted once
    assert energy_pointing(np.zeros((4, 4)), [[0, 0, 3, 3]]) == 0.0
    assert energy_pointing(s, [[2, 5, 3, 7]]) == 0.0                                  # x/y swapped: the quirk avoided


def test_box_from_map_takes_the_largest_component_above_the_threshold():
    s = np.zeros((20, 20), np.float32)
    s[2:5, 2:5] = 1.0                       # small, brightest
    s[10:18, 6:15] = 0.5                    # large, above 20 % of the max
    s[0, 19] = 0.1                          # below the threshold
    assert box_from_map(s, 0.2) == [6, 10, 14, 17]
    assert box_from_map(s, 0.6) == [2, 2, 4, 4]
    s[4, 5] = 1.0                           # touches the small square diagonally: 8-connected
    assert box_from_map(s, 0.6) == [2, 2, 5, 4]
    assert box_from_map(np.zeros((5, 5)), 0.2) is None


def test_iou_with_the_inclusive_pixel_convention():
    assert iou([0, 0, 9, 9], [0, 0, 9, 9]) == 1.0
    assert iou([0, 0, 9, 9], [5, 5, 14, 14]) == pytest.approx(25 / 175)
    assert iou([0, 0, 0, 0], [0, 0, 0, 0]) == 1.0                      # one pixel
    assert iou([0, 0, 4, 4], [5, 0, 9, 4]) == 0.0                      # touching edges share no pixel
    assert iou([0, 0, 4, 4], [4, 0, 8, 4]) == pytest.approx(5 / 45)    # sharing one column
    s = np.zeros((20, 20))
    s[4:12, 4:12] = 1.0
    assert box_localisation(s, [[4, 4, 11, 11]]) == 1.0
    assert box_localisation(s, [[30, 30, 40, 40], [4, 4, 11, 13]]) == pytest.approx(64 / 80)
    assert box_localisation(np.zeros((5, 5)), [[0, 0, 4, 4]]) == 0.0


def test_box_to_input_follows_resize_and_crop():
    from cam_infer import Preprocessing
    prep = Preprocessing((224, 224))                   # shorter side → 256, centre crop 224
    assert prep.box_to_input([0, 0, 511, 511], (512, 512)) == [0, 0, 223, 223]
    assert prep.box_to_input([128, 128, 383, 383], (512, 512)) == [48, 48, 175, 175]
    assert prep.box_to_input([0, 0, 20, 20], (512, 512)) is None     # cut away by the crop
    stretch = Preprocessing((100, 200), crop="none")
    assert stretch.box_to_input([0, 0, 49, 49], (100, 100)) == [0, 0, 99, 49]
