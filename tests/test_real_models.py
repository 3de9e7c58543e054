"""The real ImageNet models of ../shared/data: split with auto and a named layer, and the bundle
predicts what the unsplit model predicts on real photos, on both runtimes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from conftest import REAL_MODELS, SHARED, STABLE_IMAGES, needs_shared
from cam_infer import load_backend, split_onnx

pytestmark = needs_shared


@pytest.fixture(scope="module")
def photos():
    return [SHARED / "images" / name for name in STABLE_IMAGES]


def _unsplit(model_path, x):
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    if session.get_inputs()[0].shape[0] == 1:  # SqueezeNet hard-codes batch 1
        return np.concatenate([session.run(None, {name: x[i:i + 1]})[0].reshape(1, -1) for i in range(len(x))])
    return session.run(None, {name: x})[0].reshape(len(x), -1)


@pytest.mark.parametrize("model_file", list(REAL_MODELS))
def test_real_model_splits_and_predicts_like_the_unsplit_model(tmp_path, photos, model_file):
    prep, named_layer, auto_layer = REAL_MODELS[model_file]
    model_path = SHARED / "models" / model_file
    labels = SHARED / "imagenet_classes.txt"
    auto = split_onnx(model_path, layer="auto", out=tmp_path / "auto", preprocessing=prep, labels=labels)
    named = split_onnx(model_path, layer=named_layer, out=tmp_path / "named", preprocessing=prep)
    assert auto.activation_name == auto_layer
    assert named.activation_name == named_layer
    assert auto.dynamic_batch and auto.num_classes == 1000 and auto.label(285) == "Egyptian cat"

    x = auto.preprocess(photos)
    expected = _unsplit(model_path, x)
    assert expected.argmax(1).tolist() == list(STABLE_IMAGES.values())   # our preprocessing is right
    for bundle in (auto, named):
        for backend_name in ("onnxruntime", "openvino"):
            scores = load_backend(bundle, backend=backend_name).forward(x)
            assert scores.argmax(1).tolist() == expected.argmax(1).tolist()
            np.testing.assert_allclose(scores, expected, atol=1e-4 * max(1.0, float(np.abs(expected).max())))


def test_squeezenet_outputs_are_probabilities_and_mobilenet_logits(tmp_path):
    squeeze = split_onnx(SHARED / "models" / "squeezenet1.1-fp32.onnx", out=tmp_path / "s")
    mobile = split_onnx(SHARED / "models" / "mobilenetv2-fp32-dequant.onnx", out=tmp_path / "m")
    assert squeeze.output_kind == "probabilities" and mobile.output_kind == "logits"
    assert squeeze.manifest["input"]["shape"] == [None, 3, 224, 224]


def test_closed_forms_match_head_passes_on_real_mobilenet_v2(tmp_path):
    from cam_infer import Explainer

    bundle = split_onnx(SHARED / "models" / "mobilenetv2-fp32-dequant.onnx", out=tmp_path / "m")
    ex = Explainer(bundle, backend="openvino")
    assert ex.linear_head is not None and ex.linear_head.weight.shape == (1000, 1280)
    x = bundle.preprocess([SHARED / "images" / "chelsea.png", SHARED / "images" / "parrot.jpg"])
    for method in ("recipro", "ablation"):
        closed = ex.explain(x, method).maps
        general = ex.explain(x, method, closed_form=False).maps
        np.testing.assert_allclose(general, closed, rtol=1e-3, atol=1e-4 * np.abs(closed).max())
    e = ex.explain(x, "recipro")
    assert e.targets.tolist() == [285, 88] and not e.degenerate.any()
