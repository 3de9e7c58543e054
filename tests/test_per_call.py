"""The per-call path of the single-pass methods on a real MobileNetV2 (1280 channels, 7×7), at identical inputs:
every map equals a float64 NumPy twin of its formula, and the saliency the twin's normalised map resized by cv2 in
float64, on both runtimes at float32. The path was made cheaper (float32 kernels, NumPy's own loops instead of
BLAS, one row of W for Ablation-CAM's logit, resizing in place); these pin that nothing moved."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import SHARED, needs_shared
from test_kernels import numpy_first_component, numpy_spatial_entropy

pytestmark = needs_shared


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    import openvino as ov

    from cam_infer import Explainer, split_onnx
    from cam_infer.bundle import split_openvino
    folder = tmp_path_factory.mktemp("m")
    bundle = split_onnx(SHARED / "models" / "mobilenetv2-fp32-dequant.onnx", out=folder / "b")
    explainers = {name: Explainer(bundle, backend=name, precision="f32") for name in ("onnxruntime", "openvino")}
    ov.save_model(ov.convert_model(str(SHARED / "models" / "mobilenetv2-fp32-dequant.onnx")), str(folder / "m.xml"),
                  compress_to_fp16=False)                                   # the same model as IR: its own bundle
    explainers["ir"] = Explainer(split_openvino(folder / "m.xml", out=folder / "ir"), precision="f32")
    x = explainers["onnxruntime"].preprocess([SHARED / "images" / "samoyed_dog.jpg", SHARED / "images" / "coffee.png"])
    return explainers, x


def twin(method: str, a: np.ndarray, weight: np.ndarray, bias: np.ndarray, c: int) -> np.ndarray:
    """The map of one image from its activations (K,h,w), in float64."""
    a = a.astype(np.float64)
    w, b = weight.astype(np.float64), bias.astype(np.float64)
    k, h, hw = a.shape[0], a.shape[1], a.shape[1] * a.shape[2]
    if method == "activation":
        return a.mean(axis=0)
    if method == "entropy":
        return np.tensordot(numpy_spatial_entropy(a), a, axes=1)
    if method == "cam":
        return np.tensordot(w[c], a, axes=1)
    if method == "eigen":
        return numpy_first_component(a)
    if method == "ablation":                       # (y_c − y_c,k)/|y_c|, y_c,k = y_c − W_ck·mean(A^k)
        pooled = a.mean(axis=(1, 2))
        return np.tensordot(pooled * w[c] / abs(w[c] @ pooled + b[c]), a, axes=1)
    logits = a.reshape(k, hw).T @ w.T / hw + b     # recipro: every position kept alone
    logits -= logits.max(axis=1, keepdims=True)
    return (np.exp(logits[:, c]) / np.exp(logits).sum(axis=1)).reshape(h, -1)


def twin_saliency(m: np.ndarray, size: int) -> np.ndarray:
    m = np.maximum(m, 0)
    m = (m - m.min()) / (m.max() - m.min())
    return np.clip(cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR), 0, 1)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("method", ["activation", "entropy", "eigen", "cam", "ablation", "recipro"])
def test_single_pass_maps_equal_their_float64_twins_on_mobilenet_v2(mobilenet, backend, method):
    explainers, x = mobilenet
    ex = explainers[backend]
    e = ex.explain(x, method)
    a = ex.backend.features(x)
    head = ex.linear_head
    assert head is not None and a.shape[1:] == (1280, 7, 7)
    for i in range(len(x)):
        expected = twin(method, a[i], head.weight, head.bias, int(e.targets[i]))
        scale = np.abs(expected).max()
        np.testing.assert_allclose(e.maps[i], expected, rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(e.saliency[i], twin_saliency(expected, 224), atol=2e-4)
    assert e.maps.dtype == e.saliency.dtype == np.float32 and not e.degenerate.any()


@pytest.mark.parametrize("kind", ["openvino", "ir"])
@pytest.mark.parametrize("method", ["activation", "entropy", "eigen", "cam", "ablation"])
def test_maps_computed_in_the_pass_equal_their_float64_twins_and_the_general_path(mobilenet, method, kind):
    """One image, the top-1 class, default options: OpenVINO computes the map, its saliency, the class and its score
    inside the clean pass (`tasks.in_pass`); each equals the float64 twin and what the general path gives. On the
    ONNX bundle and on the same model's IR bundle (its head read by running it, its weights read in the IR).
    Eigen-CAM's power steps are certified on each photo (``settled``), so its map is the pass's, not a fallback's."""
    from cam_infer.tasks.in_pass import outputs_of
    explainers, x = mobilenet
    ex = explainers[kind]
    in_pass = ex.task.in_pass
    for i in range(len(x)):
        image = x[i:i + 1]
        assert in_pass.applies(method, 1, {"target": None, "top_classes": None, "finer": None, "enhance": None,
                                           "upsampled": True}, {})
        e = ex.explain(image, method)
        assert f"maps-{method}" in in_pass._graphs                  # the in-pass graph ran
        assert in_pass.run(method, image) is not None               # and its map was taken (eigen: settled)
        in_pass.possible = False
        try:
            general = ex.explain(image, method)
        finally:
            in_pass.possible = True
        a = ex.backend.features(image)[0]
        expected = twin(method, a, ex.linear_head.weight, ex.linear_head.bias, int(general.targets[0]))
        scale = np.abs(expected).max()
        np.testing.assert_allclose(e.maps[0], expected, rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(e.saliency[0], twin_saliency(expected, 224), atol=2e-4)
        np.testing.assert_allclose(e.saliency, general.saliency, atol=2e-4)
        np.testing.assert_array_equal(e.targets, general.targets)
        np.testing.assert_allclose(e.scores, general.scores, rtol=1e-5)
        if kind == "ir":      # the general path runs the IR's two graphs, the pass their join: float rounding apart
            np.testing.assert_allclose(e.outputs, general.outputs, rtol=0, atol=1e-5 * np.abs(general.outputs).max())
        else:
            np.testing.assert_array_equal(e.outputs, general.outputs)
        assert e.maps.dtype == e.saliency.dtype == e.scores.dtype == np.float32 and e.targets.dtype == np.int64
        assert e.degenerate.dtype == bool and not e.degenerate.any() and e.class_agnostic == general.class_agnostic
        assert e.maps.shape == general.maps.shape and e.saliency.shape == general.saliency.shape
    empty = np.zeros((0, *ex.bundle.input_shape), np.float32)          # no image: the graph's own outputs
    graph = in_pass._graphs[f"maps-{method}"]
    assert len(ex.backend.explained_pass(f"maps-{method}", graph, empty)) == len(outputs_of(method)) == \
        6 + (method == "eigen")


def test_the_pass_computes_no_map_where_the_call_asks_for_more(mobilenet):
    """A class asked for, options, several images, Finer-CAM, no upsampling, ONNX Runtime: the general path."""
    explainers, x = mobilenet
    ex = explainers["openvino"]
    plain = {"target": None, "top_classes": None, "finer": None, "enhance": None, "upsampled": True}
    in_pass = ex.task.in_pass
    assert in_pass.applies("cam", 1, plain, {})
    assert not in_pass.applies("cam", 2, plain, {})
    assert not in_pass.applies("cam", 1, {**plain, "target": 3}, {})
    assert not in_pass.applies("cam", 1, {**plain, "finer": 0.5}, {})
    assert not in_pass.applies("cam", 1, {**plain, "upsampled": False}, {})
    assert not in_pass.applies("entropy", 1, plain, {"estimator": "histogram"})
    assert in_pass.applies("eigen", 1, plain, {}) and not in_pass.applies("eigen", 1, plain, {"centered": True})
    assert not explainers["onnxruntime"].task.in_pass.possible
    e = ex.explain(x[:1], "cam", target=3)
    assert e.targets.tolist() == [3]


def _unknown_op():
    from onnx import helper
    return helper.make_model(helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "broken",
                                               [helper.make_tensor_value_info("x", 1, [1])],
                                               [helper.make_tensor_value_info("y", 1, [1])]))


def _no_batch_of_one():
    """Reads, but cannot be compiled for one image: 3·224·224 values do not reshape to 5 rows."""
    from onnx import helper, numpy_helper
    return helper.make_model(helper.make_graph(
        [helper.make_node("Reshape", ["image", "rows"], ["y"])], "broken",
        [helper.make_tensor_value_info("image", 1, ["N", 3, 224, 224])], [helper.make_tensor_value_info("y", 1, None)],
        [numpy_helper.from_array(np.array([5, -1], np.int64), "rows")]), opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("broken", [_unknown_op, _no_batch_of_one], ids=["unknown-op", "no-batch-of-one"])
def test_a_graph_the_runtime_cannot_compile_leaves_the_call_to_the_general_path(mobilenet, broken):
    """An in-pass graph OpenVINO refuses (an op no runtime knows; a graph that cannot be compiled for one image): the
    call is computed by the general path, the same map, the graph is not tried again, and the clean pass keeps its
    copy compiled for one image."""
    explainers, x = mobilenet
    ex = explainers["openvino"]
    in_pass = ex.task.in_pass
    expected = ex.explain(x[:1], "cam")
    single = ex.backend._single
    saved = in_pass._graphs.get("maps-cam")
    in_pass._graphs["maps-cam"] = broken()
    _forget(ex.backend, "maps-cam")
    try:
        got = ex.explain(x[:1], "cam")
        assert in_pass._graphs["maps-cam"] is None
        assert ex.backend._single == single == ex.bundle.dynamic_batch
        np.testing.assert_allclose(got.maps, expected.maps, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got.targets, expected.targets)
    finally:
        in_pass._graphs["maps-cam"] = saved
        _forget(ex.backend, "maps-cam")


def _forget(backend, role: str) -> None:
    """The backend's model and compiled copies of graph `role` dropped: the next call reads and compiles it anew."""
    backend._added.pop(role, None)
    for key in [key for key in backend._compiled if key[0] == role]:
        backend._compiled.pop(key)


def test_an_eigen_map_the_certificate_does_not_settle_is_computed_by_the_general_path(mobilenet, monkeypatch):
    """Where the in-pass graph's power steps are not certified (here: a tolerance of 0, which no residual meets),
    the call's map is the general path's, computed anew; the graph ran and stays for the next call."""
    from cam_infer import Explainer
    from cam_infer.methods import eigen

    explainers, x = mobilenet
    monkeypatch.setattr(eigen, "IN_PASS_TOLERANCE", 0.0)
    ex = Explainer(explainers["openvino"].bundle, backend="openvino", precision="f32")
    in_pass = ex.task.in_pass
    e = ex.explain(x[:1], "eigen")
    assert in_pass._graphs.get("maps-eigen") is not None and in_pass.run("eigen", x[:1]) is None
    in_pass.possible = False
    general = ex.explain(x[:1], "eigen")
    np.testing.assert_array_equal(e.maps, general.maps)
    np.testing.assert_array_equal(e.saliency, general.saliency)
