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
from cam_infer.enhancers.sess import offsets, resized_shape, scale_sizes, window_boxes
from cam_infer.numerics import softmax
from cam_infer.postprocess import normalise


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
        explainer.explain(x, "recipro", enhance="evet", top_classes=2)


def test_explain_cli_takes_enhance(tmp_path, tiny_bundle):
    import cv2
    photo = tmp_path / "a.png"
    cv2.imwrite(str(photo), np.random.default_rng(0).integers(0, 256, (60, 80, 3), np.uint8))
    result = run_cli("explain", tiny_bundle.path, photo, "--method", "recipro", "--enhance", "evet",
                     "--enhance-option", "transforms=[\"identity\", \"flip\"]", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["settings"]["enhance"] == {"name": "evet", "options": {"transforms": ["identity", "flip"]}}
    assert data["results"][0]["method"] == "recipro" and data["results"][0]["overlay"] == "a_recipro+evet.jpg"
    assert_one_line_error(run_cli("explain", tiny_bundle.path, photo, "--enhance", "sharpen", "--out", tmp_path / "o2"),
                          "unknown enhancer 'sharpen'")
    result = run_cli("explain", tiny_bundle.path, photo, "--enhance", "sess", "--enhance-option", "scales=2",
                     "--out", tmp_path / "o3")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "o3" / "results.json").read_text())["results"][0]["overlay"] == "a_recipro+sess.jpg"


# --- SESS -------------------------------------------------------------------------------------------------

def test_sess_windows_at_the_official_defaults():
    sizes = scale_sizes(224, 224, 12)
    assert sizes == [224 + 64 * i for i in range(12)]
    counts = [sum(1 for b in window_boxes(224, 224, sizes, None) if b[0] == i) for i in range(12)]
    assert counts == [1, 4, 4, 4, 9, 9, 9, 9, 16, 16, 16, 25] and sum(counts) == 122
    assert offsets(288, 224, 224) == [0, 64] and offsets(672, 224, 224) == [0, 224, 448]
    assert offsets(224, 224, 224) == [0]
    assert resized_shape(224, 300, 288) == (288, int(288 * 300 / 224))      # the shorter side is the scale
    assert resized_shape(300, 224, 288) == (int(288 * 300 / 224), 288)


def test_sess_with_one_scale_and_one_window_is_the_blurred_base_map(setup):
    import cv2
    explainer, x = setup
    base = explainer.explain(x, "recipro")
    plain = explainer.explain(x, "recipro", enhance="sess", enhance_options={"scales": 1, "smooth": False})
    np.testing.assert_allclose(plain.saliency, normalise(base.saliency)[0], atol=1e-6)
    smooth = explainer.explain(x, "recipro", enhance="sess", enhance_options={"scales": 1})
    expected = np.stack([cv2.GaussianBlur(m.astype(np.float64), (11, 11), 5.0, 0) for m in normalise(base.saliency)[0]])
    np.testing.assert_allclose(smooth.saliency, expected, atol=1e-6)
    np.testing.assert_array_equal(smooth.targets, base.targets)
    np.testing.assert_allclose(smooth.scores, base.scores, rtol=1e-6)
    assert smooth.method == "recipro+sess"


def official_sess(explainer, image, target, method, sizes, pre_filter, pool, theta):
    """SESS as the official code writes it (sess.py): torch resizes, window by window, one base run each."""
    import torch
    import torch.nn.functional as F

    h, w = image.shape[1:]
    t = torch.from_numpy(image)[None]
    patches = []
    for s in sizes:
        hs, ws = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        scaled = F.interpolate(t, size=(hs, ws), mode="bilinear", align_corners=False)
        ys = list(range(0, hs - h, h)) + [hs - h]
        xs = list(range(0, ws - w, w)) + [ws - w]
        patches += [(scaled[0, :, y:y + h, x:x + w].numpy(), hs, ws, y, x) for y in ys for x in xs]
    probs = np.array([softmax(explainer.backend.forward(p[0][None]))[0, target] for p in patches])
    order = np.argsort(probs, kind="stable")
    kept = order[int(len(probs) * pre_filter):]
    full = []
    for j in kept:
        patch, hs, ws, y, x = patches[j]
        e = explainer.explain(patch[None], method, target=target)
        m = e.saliency[0].astype(np.float64)
        m = (m - m.min()) / (m.max() - m.min())
        canvas = torch.zeros(1, 1, hs, ws, dtype=torch.float64)
        canvas[0, 0, y:y + h, x:x + w] = torch.from_numpy(m * float(e.scores[0]) / probs.max())
        full.append(F.interpolate(canvas, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy())
    full = np.array(full)
    if pool == "max":
        return full.max(axis=0)
    count = (full > theta).sum(axis=0)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(np.where(full > theta, full, 0).sum(axis=0) / count)


@pytest.mark.parametrize("method, options", [("recipro", {}), ("eigen", {"pre_filter": 0.5}),
                                             ("ablation", {"pool": "max"}), ("recipro", {"theta": 0.2})])
def test_sess_against_the_official_algorithm_window_by_window(setup, method, options):
    pytest.importorskip("torch")
    explainer, x = setup
    sizes = scale_sizes(64, 64, 4)
    targets = explainer.explain(x, method).targets
    e = explainer.explain(x, method, enhance="sess", enhance_options={"scales": 4, "smooth": False, **options})
    for i in range(len(x)):
        expected = official_sess(explainer, x[i], int(targets[i]), method, sizes, options.get("pre_filter", 0.0),
                                 options.get("pool", "mean"), options.get("theta", 0.0))
        np.testing.assert_allclose(e.saliency[i], expected, atol=2e-5)


def test_sess_explains_a_batch_image_by_image_and_counts_its_passes(setup):
    explainer, x = setup
    options = {"scales": 3, "pre_filter": 0.25}
    together = explainer.explain(x, "recipro", enhance="sess", enhance_options=options)
    for i in range(len(x)):
        alone = explainer.explain(x[i:i + 1], "recipro", enhance="sess", enhance_options=options)
        np.testing.assert_array_equal(together.saliency[i], alone.saliency[0])
    windows = len(window_boxes(64, 64, scale_sizes(64, 64, 3), None))
    assert windows == 1 + 4 + 4
    before = explainer.backend.runtime_calls
    explainer.explain(x[:1], "eigen", enhance="sess", enhance_options={"scales": 3})
    assert explainer.backend.joins                           # features and head in one call (the joined graph)
    assert explainer.backend.runtime_calls - before == 2     # the input's pass, then all 9 windows in one batch


def test_sess_with_a_seeded_random_method_is_the_same_run_to_run(setup):
    explainer, x = setup
    options = {"samples": 2, "top_k": 4}
    runs = [explainer.explain(x, "ss-cam", enhance="sess", enhance_options={"scales": 2}, **options) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].saliency, runs[1].saliency)


def test_sess_refuses_bad_options(setup):
    explainer, x = setup
    for options, message in [({"scales": 0}, "at least one scale"), ({"scales": [32]}, "at least 64"),
                             ({"pool": "median"}, "'mean', 'max'"), ({"pre_filter": 1.0}, r"in \[0, 1\)"),
                             ({"step": 0}, "positive number of pixels")]:
        with pytest.raises(CamInferError, match=message):
            explainer.explain(x, "eigen", enhance="sess", enhance_options=options)
    with pytest.raises(CamInferError, match="one class per image"):
        explainer.explain(x, "recipro", enhance="sess", top_classes=2)


@pytest.mark.parametrize("enhance", ["sess", "evet"])
def test_an_enhancer_option_typo_is_a_one_line_error_naming_its_options(setup, enhance, tmp_path):
    explainer, x = setup
    with pytest.raises(CamInferError, match=f"enhancer '{enhance}' has no option scale; its options: "):
        explainer.explain(x, "eigen", enhance=enhance, enhance_options={"scale": 2})
    with pytest.raises(CamInferError, match="no option scale"):
        from cam_infer.enhancers import get_enhancer
        get_enhancer(enhance).passes(64, 64, scale=2)


def test_evet_explains_a_batch_image_by_image_with_its_copies_in_one_batch(setup):
    explainer, x = setup
    together = explainer.explain(x, "recipro", enhance="evet")
    for i in range(len(x)):
        alone = explainer.explain(x[i:i + 1], "recipro", enhance="evet")
        np.testing.assert_allclose(together.saliency[i], alone.saliency[0], atol=1e-6)
    before = explainer.backend.runtime_calls
    explainer.explain(x, "eigen", enhance="evet")
    assert explainer.backend.joins                           # features and head in one call (the joined graph)
    assert explainer.backend.runtime_calls - before == 2     # the input's pass, the 4 moved copies of both
    # images in one batch
