"""EVET around any method: the identity alone is the method, a flip is undone exactly, transforms map back
to where they came from, and the fused map is the mean over the pixels each transform keeps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli

from cam_infer import CamInferError, Explainer
from cam_infer.bundle.verify import random_images
from cam_infer.enhancers.evet import TRANSFORMS, affine, warp


@pytest.fixture(scope="module")
def setup(tiny_bundle):
    return Explainer(tiny_bundle), random_images(tiny_bundle.preprocessing, 2, seed=11)


@pytest.mark.parametrize("method", ["recipro", "eigen", "ablation"])
def test_the_identity_alone_is_the_method(setup, method):
    explainer, x = setup
    e = explainer.explain(x, method, enhance="evet", enhance_options={"transforms": ("identity",)})
    np.testing.assert_array_equal(e.saliency, explainer.explain(x, method).saliency)
    assert e.method == f"{method}+evet" and e.options["enhance"] == "evet"


def test_identity_and_flip_is_the_mean_of_the_map_and_the_flipped_map_of_the_flipped_image(setup):
    explainer, x = setup
    base = explainer.explain(x, "recipro")
    flipped = explainer.explain(x[..., ::-1].copy(), "recipro", target=base.targets)
    expected = (base.saliency + flipped.saliency[..., ::-1]) / 2                 # every pixel kept by both
    e = explainer.explain(x, "recipro", enhance="evet", enhance_options={"transforms": ("identity", "flip")})
    np.testing.assert_allclose(e.saliency, expected, atol=1e-6)
    np.testing.assert_array_equal(e.targets, base.targets)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_each_transform_maps_back_where_it_came_from(name):
    h, w = 64, 80
    image = np.zeros((1, h, w), np.float32)
    image[0, 28:36, 36:44] = 1.0                                               # a square near the centre
    matrix = affine(name, h, w)
    import cv2
    back = warp(warp(image, matrix), cv2.invertAffineTransform(matrix))
    assert abs(float(back.sum()) - float(image.sum())) < 0.1 * image.sum()
    ys, xs = np.nonzero(back[0] > 0.5)
    assert abs(ys.mean() - 31.5) < 1 and abs(xs.mean() - 39.5) < 1


def test_the_fused_map_keeps_the_class_and_is_a_map(setup):
    explainer, x = setup
    e = explainer.explain(x, "eigen", enhance="evet")
    assert e.saliency.shape == (2, *explainer.bundle.input_shape[1:])
    assert 0 <= e.saliency.min() and e.saliency.max() <= 1 and not e.degenerate.any()
    with pytest.raises(CamInferError, match="unknown enhancer 'sharpen'"):
        explainer.explain(x, "eigen", enhance="sharpen")
    with pytest.raises(CamInferError, match="unknown EVET transform 'shear'"):
        explainer.explain(x, "eigen", enhance="evet", enhance_options={"transforms": ("shear",)})
    with pytest.raises(CamInferError, match="one class per image"):
        explainer.explain(x, "eigen", enhance="evet", top_classes=2)


def test_explain_cli_takes_enhance(tmp_path, tiny_bundle):
    import cv2
    photo = tmp_path / "a.png"
    cv2.imwrite(str(photo), np.random.default_rng(0).integers(0, 256, (60, 80, 3), np.uint8))
    result = run_cli("explain", tiny_bundle.path, photo, "--method", "recipro", "--enhance", "evet",
                     "--enhance-option", "transforms=[\"identity\", \"flip\"]", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["settings"]["enhance"] == {"name": "evet", "options": {"transforms": ["identity", "flip"]}}
    assert data["results"][0]["method"] == "recipro" and data["results"][0]["overlay"] == "a_recipro+evet.png"
    assert_one_line_error(run_cli("explain", tiny_bundle.path, photo, "--enhance", "sess", "--out", tmp_path / "o2"),
                          "unknown enhancer 'sess'")
