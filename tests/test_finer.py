"""Finer-CAM as a variant of every class-specific method: CAM's closed form W_c − γ·mean_d W_d, γ = 0 is the
base method on logits, closed forms equal head passes, the official objective with one reference is the
linear one, and gradient maps follow the linear objective."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper
from tiny_onnx import tiny_cnn

from conftest import needs_torch
from cam_infer import CamInferError, Explainer, split_onnx
from cam_infer.bundle.verify import random_images
from cam_infer.errors import MethodNotApplicable
from cam_infer.finer import Finer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = tiny_cnn(classes=6)
    bundle = split_onnx(model, out=tmp_path_factory.mktemp("b") / "b")
    explainer = Explainer(bundle)
    assert explainer.linear_head is not None
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return explainer, random_images(bundle.preprocessing, 3, seed=2), weights["fc_w"]


def test_references_are_the_closest_logits():
    finer = Finer(references=2)
    np.testing.assert_array_equal(finer.references_for(np.array([5.0, 1.0, 4.5, 9.0, 5.2]), 0), [4, 2])


def test_cam_weights_are_the_class_row_minus_the_mean_of_the_references(setup):
    explainer, x, w = setup
    e = explainer.explain(x, "cam", finer={"gamma": 0.6, "references": 2})
    a = explainer.backend.features(x)
    logits = explainer.backend.forward(x)
    for n in range(len(x)):
        c = int(logits[n].argmax())
        refs = Finer(references=2).references_for(logits[n], c)
        row = w[c] - 0.6 * w[refs].mean(axis=0)
        np.testing.assert_allclose(e.maps[n], np.tensordot(row, a[n], axes=1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method, base", [("recipro", {"score": "logit"}), ("ablation", {"score": "logit"}),
                                          ("score", {"weighting": "channel-softmax"}), ("cam", {})])
def test_gamma_zero_is_the_base_method_on_logits(setup, method, base):
    explainer, x, _ = setup
    np.testing.assert_allclose(explainer.explain(x, method, finer=0.0, **base).maps,
                               explainer.explain(x, method, **base).maps, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["recipro", "ablation"])
def test_closed_forms_equal_head_passes(setup, method):
    explainer, x, _ = setup
    for preset in ("torchcam", "official"):
        finer = {"gamma": 0.8, "references": 3, "preset": preset}
        closed = explainer.explain(x, method, finer=finer).maps
        passes = explainer.explain(x, method, finer=finer, closed_form=False).maps
        np.testing.assert_allclose(closed, passes, rtol=1e-4, atol=1e-5 * np.abs(passes).max())


def test_the_official_objective_with_one_reference_is_linear(setup):
    explainer, x, _ = setup
    official = explainer.explain(x, "recipro", finer={"preset": "official", "references": 1, "gamma": 1.0}).maps
    linear = explainer.explain(x, "recipro", finer={"preset": "torchcam", "references": 1, "gamma": 1.0}).maps
    np.testing.assert_allclose(official, linear, rtol=1e-5, atol=1e-6)
    assert not np.allclose(linear, explainer.explain(x, "recipro", score="logit").maps)


@needs_torch
def test_gradient_maps_follow_the_linear_objective(tmp_path):
    bundle = split_onnx(tiny_cnn(classes=6), layer="relu2", out=tmp_path / "b")
    explainer = Explainer(bundle, gradients="torch")
    x = random_images(bundle.preprocessing, 2, seed=4)
    logits = explainer.backend.forward(x)
    e = explainer.explain(x, "gradcam", finer={"gamma": 0.5, "references": 2})
    for n in range(len(x)):
        c = int(logits[n].argmax())
        refs = Finer(references=2).references_for(logits[n], c)
        expected = explainer.explain(x[n:n + 1], "gradcam", target=c).maps[0] - 0.5 * np.mean(
            [explainer.explain(x[n:n + 1], "gradcam", target=int(d)).maps[0] for d in refs], axis=0)
        np.testing.assert_allclose(e.maps[n], expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_finer_is_refused_where_it_has_no_meaning(setup, tmp_path):
    explainer, x, _ = setup
    with pytest.raises(MethodNotApplicable, match="does not depend on the class"):
        explainer.explain(x, "eigen", finer=0.6)
    with pytest.raises(CamInferError, match="finer must be a γ"):
        explainer.explain(x, "cam", finer="strong")
    with pytest.raises(CamInferError, match="official preset needs one reference"):
        explainer.explain(x, "cam", finer={"preset": "official", "references": 3})
    for finer, message in ((-1, "finer's gamma must be 0 or more, not -1.0"), (float("nan"), "gamma must be 0 or more"),
                           ({"references": 0}, "finer's references must be at least 1, not 0"),
                           ({"preset": "paper"}, "finer's preset must be 'torchcam' or 'official', not 'paper'")):
        with pytest.raises(CamInferError, match=message):           # the bad value named, not every rule
            explainer.explain(x, "cam", finer=finer)
    probabilities = Explainer(split_onnx(tiny_cnn(softmax=True), out=tmp_path / "p"))
    with pytest.raises(CamInferError, match="finer scores logits"):
        probabilities.explain(random_images(probabilities.bundle.preprocessing, 1), "recipro", finer=0.6)


def test_explain_cli_takes_finer(tmp_path, tiny_bundle):
    import json

    import cv2
    from helpers import assert_one_line_error, run_cli
    photo = tmp_path / "a.png"
    cv2.imwrite(str(photo), np.random.default_rng(0).integers(0, 256, (60, 80, 3), np.uint8))
    result = run_cli("explain", tiny_bundle.path, photo, "--method", "all", "--finer", "0.6", "--out", tmp_path / "o")
    assert result.returncode == 0 and "class-agnostic, finer does not apply" in result.stdout, result.stderr
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert data["settings"]["finer"] == {"gamma": 0.6, "preset": "torchcam", "references": 3}
    assert {r["method"] for r in data["results"]} == {"cam", "ablation", "recipro", "score"}
    assert_one_line_error(run_cli("explain", tiny_bundle.path, photo, "--method", "eigen", "--finer", "0.6",
                                  "--out", tmp_path / "o2"), "does not depend on the class",
                          during_run=True)
