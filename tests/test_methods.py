"""CAM methods against closed forms and independent NumPy computations, on both backends."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from tiny_onnx import tiny_cnn

from cam_infer import CamInferError, Explainer, overlay, split_onnx
from cam_infer.methods import GRADIENT_FREE
from cam_infer.numerics import softmax
from cam_infer.postprocess import normalise


@pytest.fixture(scope="module")
def explainers(tiny_bundle):
    return {name: Explainer(tiny_bundle, backend=name) for name in ("onnxruntime", "openvino")}


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(3).standard_normal((3, 3, 64, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def fc():
    """W (C,K) and b of the tiny model's linear layer, straight from its builder."""
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t) for t in tiny_cnn().graph.initializer}
    return inits["fc_w"], inits["fc_b"]


def test_tiny_head_is_recognised_as_gap_linear_with_the_builders_weights(explainers, fc):
    head = explainers["onnxruntime"].linear_head
    np.testing.assert_array_equal(head.weight, fc[0])
    np.testing.assert_array_equal(head.bias, fc[1])


def test_a_large_linear_product_runs_in_the_runtime_and_equals_numpy():
    from cam_infer.backends.sessions import onnxruntime_session
    from cam_infer.bundle.head import LARGE_PRODUCT, LinearHead
    rng = np.random.default_rng(3)
    head = LinearHead(rng.standard_normal((300, 512)).astype(np.float32), rng.standard_normal(300).astype(np.float32),
                      open_session=onnxruntime_session)
    pooled = rng.standard_normal((2, LARGE_PRODUCT // (512 * 300) // 2 + 1, 512)).astype(np.float32)
    got = head.logits(pooled)
    assert head._session and got.shape == (*pooled.shape[:2], 300)                  # went to ONNX Runtime
    expected = pooled.astype(np.float64) @ head.weight.T.astype(np.float64) + head.bias
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    small = head.logits(pooled[0, :4])
    np.testing.assert_allclose(small, expected[0, :4], rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_linear_heads_product_runs_on_the_explainers_threads(tiny_bundle, backend):
    from cam_infer.bundle.head import LARGE_PRODUCT
    head = Explainer(tiny_bundle, backend=backend, threads=1).linear_head
    pooled = np.ones((LARGE_PRODUCT // head.weight.size + 1, head.weight.shape[1]), np.float32)
    np.testing.assert_allclose(head.logits(pooled), pooled @ head.weight.T + head.bias, rtol=1e-5, atol=1e-5)
    assert head._session[0].get_session_options().intra_op_num_threads == 1


@pytest.mark.parametrize("method", GRADIENT_FREE)
def test_every_method_agrees_across_backends_and_batches(explainers, x, method):
    ort, ov = explainers["onnxruntime"].explain(x, method), explainers["openvino"].explain(x, method)
    scale = float(np.abs(ort.maps).max())
    np.testing.assert_allclose(ov.maps, ort.maps, atol=2e-4 * scale + 1e-6)
    assert ort.saliency.shape == (3, 64, 64) and ort.saliency.dtype == np.float32
    assert 0 <= ort.saliency.min() and ort.saliency.max() <= 1
    one_by_one = np.concatenate([explainers["onnxruntime"].explain(x[i:i + 1], method).maps for i in range(3)])
    np.testing.assert_allclose(one_by_one, ort.maps, atol=1e-5 * scale + 1e-7)


def test_cam_is_the_class_row_of_the_linear_layer(explainers, x, fc):
    e = explainers["onnxruntime"].explain(x, "cam", target=2)
    a = explainers["onnxruntime"].backend.features(x)
    np.testing.assert_allclose(e.maps, np.einsum("k,nkhw->nhw", fc[0][2], a), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", ["onehot", "gaussian3"])
@pytest.mark.parametrize("score", ["prob", "logit"])
def test_recipro_closed_form_equals_head_passes_and_numpy(explainers, x, kernel, score, fc):
    ex = explainers["onnxruntime"]
    closed = ex.explain(x, "recipro", kernel=kernel, score=score).maps
    general = ex.explain(x, "recipro", kernel=kernel, score=score, closed_form=False).maps
    np.testing.assert_allclose(general, closed, rtol=1e-4, atol=1e-6)
    # independent: head pass on one masked copy per position, built with NumPy
    a = ex.backend.features(x[:1])[0]
    k, h, w = a.shape
    target = int(ex.backend.head(a[None]).argmax())
    g = np.ones((1, 1)) if kernel == "onehot" else np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    r = g.shape[0] // 2
    expected = np.empty((h, w))
    for i in range(h):
        for j in range(w):
            masked = np.zeros_like(a)
            for di in range(-r, r + 1):
                for dj in range(-r, r + 1):
                    if 0 <= i + di < h and 0 <= j + dj < w:
                        masked[:, i + di, j + dj] = g[di + r, dj + r] * a[:, i, j]
            out = ex.backend.head(masked[None])[0]
            expected[i, j] = (softmax(out) if score == "prob" else out)[target]
    np.testing.assert_allclose(closed[0], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("score", ["logit", "prob"])
def test_ablation_closed_form_equals_head_passes_and_numpy(explainers, x, score):
    ex = explainers["openvino"]
    closed = ex.explain(x, "ablation", score=score).maps
    general = ex.explain(x, "ablation", score=score, closed_form=False).maps
    np.testing.assert_allclose(general, closed, rtol=1e-3, atol=1e-4 * np.abs(closed).max())
    a = ex.backend.features(x[:1])[0]
    y = ex.backend.head(a[None])[0]
    c = int(y.argmax())
    convert = softmax if score == "prob" else (lambda v: v)
    weights = []
    for k in range(a.shape[0]):
        ablated = a.copy()
        ablated[k] = 0
        weights.append((convert(y)[c] - convert(ex.backend.head(ablated[None])[0])[c]) / abs(convert(y)[c]))
    np.testing.assert_allclose(closed[0], np.tensordot(np.array(weights), a, axes=1), rtol=1e-3,
                               atol=1e-4 * np.abs(closed).max())


def test_ablation_guard_keeps_weights_meaningful_when_the_logit_is_negative(explainers, x):
    ex = explainers["onnxruntime"]
    y = ex.backend.forward(x[:1])[0]
    worst = int(y.argmin())
    assert y[worst] < 0
    a = ex.backend.features(x[:1])[0]
    m = ex.explain(x[:1], "ablation", target=worst).maps[0]
    w = ex.linear_head.weight[worst] * a.mean(axis=(1, 2)) / abs(y[worst])   # drop in score / |y|
    np.testing.assert_allclose(m, np.tensordot(w, a, axes=1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("weighting", ["reference", "channel-softmax"])
def test_score_cam_equals_numpy_reference(explainers, x, weighting):
    ex = explainers["onnxruntime"]
    e = ex.explain(x[:2], "score", weighting=weighting)
    for n in range(2):
        a = ex.backend.features(x[n:n + 1])[0]
        c = int(e.targets[n])
        values = []
        for k in range(a.shape[0]):
            up = cv2.resize(a[k], (64, 64), interpolation=cv2.INTER_LINEAR)
            if up.max() - up.min() <= 1e-12:
                values.append(np.nan)
                continue
            mask = (up - up.min()) / (up.max() - up.min())
            out = ex.backend.forward((x[n] * mask)[None])[0]
            values.append(softmax(out)[c] if weighting == "reference" else out[c])
        values = np.array(values)
        ok = ~np.isnan(values)
        weights = np.zeros(len(values))
        weights[ok] = values[ok] if weighting == "reference" else softmax(values[ok])
        np.testing.assert_allclose(e.maps[n], np.tensordot(weights, a, axes=1), rtol=1e-4, atol=1e-5)


def test_score_top_k_keeps_channels_of_largest_spatial_std(explainers, x):
    from cam_infer.methods.score import selected_channels
    a = explainers["onnxruntime"].backend.features(x[:1])[0]
    chosen = selected_channels(a, 4)
    stds = a.reshape(a.shape[0], -1).std(axis=1)
    assert set(chosen) == set(np.argsort(-stds)[:4])
    full = explainers["onnxruntime"].explain(x[:1], "score").maps
    top = explainers["onnxruntime"].explain(x[:1], "score", top_k=4).maps
    assert not np.allclose(full, top)


def _numpy_pgc_eigencam(a):
    """pytorch-grad-cam's get_2d_projection, written out with NumPy's SVD."""
    o = a.reshape(a.shape[0], -1).T
    o = o - o.mean(axis=0)
    _, _, vt = np.linalg.svd(o, full_matrices=True)
    return (o @ vt[0]).reshape(a.shape[1:])


def test_eigen_centered_equals_pytorch_grad_cam_up_to_its_arbitrary_sign(explainers, x):
    ex = explainers["onnxruntime"]
    maps = ex.explain(x, "eigen", centered=True).maps
    for n, a in enumerate(ex.backend.features(x)):
        reference = _numpy_pgc_eigencam(a.astype(np.float64))
        sign = np.sign(np.dot(reference.ravel(), maps[n].ravel()))
        np.testing.assert_allclose(maps[n], sign * reference, rtol=1e-3, atol=1e-4 * np.abs(reference).max())
        # our sign: positively correlated with the channel mean
        assert np.corrcoef(maps[n].ravel(), a.mean(axis=0).ravel())[0, 1] > 0


def test_eigen_paper_mode_is_nonnegative_for_nonnegative_activations(explainers, x):
    ex = explainers["onnxruntime"]
    maps = ex.explain(x, "eigen").maps
    assert (maps >= -1e-5 * np.abs(maps).max()).all()
    a = ex.backend.features(x[:1])[0]
    o = a.reshape(a.shape[0], -1).T.astype(np.float64)
    u, s, vt = np.linalg.svd(o, full_matrices=False)
    np.testing.assert_allclose(np.abs(maps[0].ravel()), np.abs(s[0] * u[:, 0]), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("options", [{}, {"estimator": "histogram"}, {"weighting": "negentropy"}])
def test_entropy_cam_weights_channels_by_their_entropy(explainers, x, options):
    from test_kernels import numpy_histogram_entropy, numpy_spatial_entropy
    ex = explainers["onnxruntime"]
    maps = ex.explain(x[:1], "entropy", **options).maps
    a = ex.backend.features(x[:1])[0]
    w = numpy_histogram_entropy(a) if options.get("estimator") == "histogram" else numpy_spatial_entropy(a)
    if options.get("weighting") == "negentropy":
        w = 1 - w
    np.testing.assert_allclose(maps[0], np.tensordot(w, a, axes=1), rtol=1e-4, atol=1e-5)


def test_activation_map_is_the_channel_mean(explainers, x):
    ex = explainers["openvino"]
    np.testing.assert_allclose(ex.explain(x, "activation").maps, ex.backend.features(x).mean(axis=1), rtol=1e-6)


def test_constant_map_is_flagged_degenerate_not_nan():
    maps = np.stack([np.full((4, 4), 3.0), -np.ones((4, 4)), np.arange(16.0).reshape(4, 4)])
    out, degenerate = normalise(maps)
    assert degenerate.tolist() == [True, True, False]
    assert not np.isnan(out).any() and not out[:2].any()
    assert out[2].min() == 0 and out[2].max() == 1
    # constant but for one float32 rounding at a large magnitude (one ulp of 1e4, 9.8e-4, within EPS·|max|) is no
    # map either, while a real span at that magnitude (one part in 10⁴) is kept
    rounded = np.full((4, 4), 1e4, np.float32)
    rounded[1, 2] = np.nextafter(np.float32(1e4), np.float32(np.inf))
    real = np.float32(1e4) + np.arange(16, dtype=np.float32).reshape(4, 4) / 16
    out, degenerate = normalise(np.stack([rounded, real]))
    assert np.ptp(rounded) > 0 and degenerate.tolist() == [True, False] and not out[0].any()


def test_targets_by_index_label_and_per_image(tmp_path, x):
    bundle = split_onnx(tiny_cnn(), out=tmp_path / "b", labels=["cat", "dog", "bird", "fish"])
    ex = Explainer(bundle)
    assert ex.explain(x, "cam", target="bird").targets.tolist() == [2, 2, 2]
    assert ex.explain(x, "cam", target=[0, "fish", 1]).targets.tolist() == [0, 3, 1]
    top = ex.explain(x, "cam")
    assert top.targets.tolist() == ex.backend.forward(x).argmax(1).tolist()
    np.testing.assert_allclose(top.scores, softmax(ex.backend.forward(x)).max(1), rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "gradcam9"}, "unknown method 'gradcam9'"),
    ({"method": "cam", "target": 4}, "class 4 is out of range: this model has classes 0..3"),
    ({"method": "cam", "target": "zebra"}, "unknown class label 'zebra'"),
    ({"method": "cam", "target": [1, 2]}, "2 targets given for 3 images"),
    ({"method": "recipro", "kernel": "box"}, "kernel must be one of"),
    ({"method": "score", "top_k": 0}, "top_k must be a positive integer"),
    ({"method": "eigen", "centred": True}, "method 'eigen' has no option centred"),
])
def test_bad_requests_are_errors(explainers, x, kwargs, message):
    with pytest.raises(CamInferError, match=message):
        explainers["onnxruntime"].explain(x, **kwargs)


def test_cam_needs_a_gap_linear_head(tmp_path, x):
    ex = Explainer(split_onnx(tiny_cnn(), layer="conv2", out=tmp_path / "b"))
    assert ex.linear_head is None
    with pytest.raises(CamInferError, match="needs a head that is global average pooling followed by a linear"):
        ex.explain(x, "cam")
    general = ex.explain(x, "recipro")          # the general path still works
    assert general.maps.shape == (3, 16, 16)


def test_overlay_blends_colormap_over_image():
    image = np.full((10, 20, 3), 100, np.uint8)
    saliency = np.zeros((10, 20), np.float32)
    out = overlay(image, saliency, colormap="jet", alpha=0.5)
    jet_zero = cv2.cvtColor(cv2.applyColorMap(np.zeros((1, 1), np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)[0, 0]
    assert out.shape == (10, 20, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[3, 7], np.round(0.5 * 100 + 0.5 * jet_zero.astype(float)).astype(np.uint8))
    with pytest.raises(CamInferError, match="unknown colormap"):
        overlay(image, saliency, colormap="rainbow9")


@pytest.mark.parametrize("shape", [(40, 3, 4), (5, 6, 7)])          # channels above / below positions
@pytest.mark.parametrize("centered", [False, True])
def test_eigen_through_either_gram_matrix_is_the_svd_component(shape, centered):
    from cam_infer.methods.eigen import first_component
    a = np.abs(np.random.default_rng(1).standard_normal(shape)).astype(np.float32)
    o = a.reshape(shape[0], -1).T.astype(np.float64)
    if centered:
        o = o - o.mean(axis=0)
    u, s, _ = np.linalg.svd(o, full_matrices=False)
    got = first_component(a, centered).ravel()
    np.testing.assert_allclose(np.abs(got), np.abs(s[0] * u[:, 0]), rtol=1e-4, atol=1e-5)
    if not centered:
        assert got.sum() > 0


@pytest.mark.parametrize("gap", [0.2, 0.97])          # λ₂/λ₁: power iteration settles / hands over to eigh
def test_eigen_power_iteration_and_its_fallback_both_give_the_svd_component(gap):
    from cam_infer.kernels import power_component
    from cam_infer.methods.eigen import FLOAT32_TOLERANCE, POWER_STEPS, first_component, power_projection, start_vector
    rng = np.random.default_rng(4)
    u, _ = np.linalg.qr(rng.standard_normal((60, 8)))
    v, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    s = np.array([1.0, np.sqrt(gap), 0.3, 0.2, 0.1, 0.05, 0.02, 0.01]) * 10
    o = (u * s) @ v.T                                                  # (hw=60, K=8), σ₂²/σ₁² = gap
    a = np.ascontiguousarray(o.T.reshape(8, 6, 10)).astype(np.float32)
    assert (power_projection(o.astype(np.float32)) is None) == (gap > 0.9)
    rows = np.ascontiguousarray(o.T, np.float32)                       # the kernel the method runs gives up too
    steps = power_component(rows, start_vector(rows.sum(axis=1)), FLOAT32_TOLERANCE, POWER_STEPS)[1]
    assert (steps == 0) == (gap > 0.9)
    got = first_component(a, centered=False).ravel()
    expected = s[0] * u[:, 0] * np.sign(np.sum(v[:, 0]))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
