"""UINT8 pixels normalised inside a fused model served on OpenVINO (`serve.pixel_graph`): the same outputs as the
server's own normalisation (`images.Preprocessing.standardise`) at float32, RGB and BGR models, with or without a
class input; a grayscale model keeps the server's normalisation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import ROOT
from cam_infer.images import Preprocessing

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install 'cam-infer[serve]')")
SHAPES = ROOT / "cam_infer" / "data" / "shapes"


@pytest.fixture(scope="module")
def fused_models(tmp_path_factory):
    from cam_infer.bundle import Bundle
    from cam_infer.fuse import fuse, save
    bundle, folder = Bundle.load(SHAPES), tmp_path_factory.mktemp("fused")
    return {"plain": save(fuse(bundle, "recipro"), folder / "plain.onnx"),
            "class input": save(fuse(bundle, "cam", class_input=True), folder / "class.onnx")}


@pytest.mark.parametrize("color", ["rgb", "bgr"])
@pytest.mark.parametrize("kind", ["plain", "class input"])
def test_uint8_pixels_in_the_openvino_graph_equal_the_servers_normalisation(fused_models, monkeypatch, kind, color):
    from cam_infer.serve import models
    from cam_infer.serve.models import ServedFused

    original = models.Preprocessing.from_dict
    monkeypatch.setattr(models.Preprocessing, "from_dict",               # the model's recorded preprocessing, in BGR
                        staticmethod(lambda d: replace(original(d), color=color, mean=(0.4, 0.5, 0.6))))
    served = ServedFused(fused_models[kind], backend="openvino", precision="f32")
    assert served.pixels_in_graph and served.pixels.color == color
    pixels = np.random.default_rng(0).integers(0, 256, (3, *served.pixels.input_size, 3), dtype=np.uint8)
    x = np.stack([served.pixels.standardise(p) for p in pixels])
    classes = [1, 0, 2] if served.takes_class else None
    key, _ = served.key({"class": classes} if classes else {}, len(x))
    want = served.run(x, key, classes)
    got = served.run(pixels, replace(key, pixels=True), classes)
    assert served.runtime._pixels_compiled is not None
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_grayscale_and_onnx_runtime_keep_the_servers_normalisation(fused_models):
    from cam_infer.serve.models import ServedFused
    from cam_infer.serve.pixel_graph import takes_pixels_in_graph

    assert not takes_pixels_in_graph(Preprocessing(input_size=(8, 8), channels=1)) and not takes_pixels_in_graph(None)
    assert not ServedFused(fused_models["plain"], backend="onnxruntime").pixels_in_graph


def test_a_graph_openvino_cannot_prepend_the_pixels_to_leaves_them_to_the_server(fused_models, monkeypatch):
    from cam_infer.serve import pixel_graph
    from cam_infer.serve.models import ServedFused

    def refuse(model, preprocessing):
        raise RuntimeError("PrePostProcessor: cannot")
    monkeypatch.setattr(pixel_graph, "openvino_pixel_model", refuse)
    served = ServedFused(fused_models["plain"], backend="openvino", precision="f32")
    assert served.pixels is not None and not served.pixels_in_graph
