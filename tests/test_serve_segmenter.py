"""`cam-infer serve` of a segmenter bundle: the real server on 127.0.0.1, called with plain HTTP (/explain) and with
tritonclient.http (/v2 infer); every answer equals `Explainer.explain` on the same image, class and region; bad
requests get a 4xx with one line and the server goes on. Every request loop is bounded."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli

from cam_infer import Explainer
from cam_infer.postprocess import normalise
from cam_infer.tools.synthetic import write_scenes

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install 'cam-infer[serve]')")
http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
from test_serve import ROOT, Server, assert_error  # noqa: E402  (the server harness of the classifier tests)

pytestmark = pytest.mark.integration
OWN = ROOT / "cam_infer" / "data" / "shapes_segmenter" / "shapes_segmenter.onnx"
DETECTOR = ROOT / "cam_infer" / "data" / "shapes_detector"
LABELS = ["background", "circle", "square", "triangle", "cross"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from cam_infer.bundle.segmentation import split_segmenter
    folder = tmp_path_factory.mktemp("segmenter") / "bundle"
    split_segmenter(OWN, out=folder, labels=LABELS)
    return folder


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    write_scenes(folder, "cluttered", 2)
    return sorted(folder.glob("*.png"))


@pytest.fixture(scope="module")
def explainer(bundle):
    return Explainer(bundle)


@pytest.fixture(scope="module")
def server(bundle):
    s = Server(bundle, "--method", "recipro")
    yield s
    s.stop()


def explain(server, image: Path, query: str = "") -> dict:
    status, _, raw = server.request(f"/explain{query}", image.read_bytes())
    assert status == 200, raw[:300]
    return json.loads(raw)


def low_resolution(item) -> np.ndarray:
    return normalise(item.raw[None])[0][0]


def test_explain_answers_every_class_over_its_region_as_the_explainer(server, explainer, scenes):
    e = explainer.explain([scenes[1]], "recipro", target="all")          # a triangle and a cross
    answer = explain(server, scenes[1], "?class=all&overlay=png")
    assert answer["method"] == "recipro" and answer["precision"] == "f32" and answer["class_agnostic"] is False
    assert [m["class_id"] for m in answer["maps"]] == [s.class_id for s in e.items[0]] and len(e.items[0]) >= 2
    for got, want in zip(answer["maps"], e.items[0]):
        assert got["label"] == want.label and got["region"] == "predicted"
        assert got["region_pixels"] == want.pixels and abs(got["score"] - want.score) < 1e-4
        np.testing.assert_allclose(np.array(got["map"]["data"]), low_resolution(want), atol=6e-5)
    for got, want in zip(answer["maps"], e.records()[0]):      # the served record is the Python one, energy included
        assert set(got) - {"map"} == set(want) and "energy_in_region" in want
        assert {k: v for k, v in got.items() if k != "map"} == pytest.approx(want, abs=1e-4)
    picture = cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(answer["overlay_png"]), np.uint8),
                                        cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.abs(picture.astype(int) - e.overlay(0)).max() <= 2


def test_a_box_or_pixel_region_in_the_sent_images_pixels_and_a_class_agnostic_map(server, explainer, scenes):
    box = [8, 12, 70, 90]
    query_box = "[8,12,70,90]"
    want = explainer.explain([scenes[1]], "recipro", target=1, region=box).items[0][0]
    got = explain(server, scenes[1], f"?class=circle&region={query_box}")["maps"][0]
    assert got["class_id"] == 1 and got["region"] == "box" and got["region_pixels"] == want.pixels
    assert abs(got["score"] - want.score) < 1e-4
    np.testing.assert_allclose(np.array(got["map"]["data"]), low_resolution(want), atol=6e-5)
    pixel = explain(server, scenes[1], "?class=0&region=[30,40]")["maps"][0]
    assert pixel["region"] == "pixel" and pixel["region_pixels"] == 1
    answer = explain(server, scenes[1], f"?method=eigen&class=1&region={query_box}")
    want = explainer.explain([scenes[1]], "eigen", target=1, region=box).items[0][0]
    assert answer["class_agnostic"] is True and "class_id" not in answer["maps"][0]
    assert "label" not in answer["maps"][0]
    assert answer["maps"][0]["region_class_id"] == 1 and answer["maps"][0]["region_label"] == "circle"   # class=1
    np.testing.assert_allclose(np.array(answer["maps"][0]["map"]["data"]), low_resolution(want), atol=6e-5)


def test_v2_infer_gives_each_image_its_class_map_as_the_explainer(server, explainer, scenes):
    x = np.stack([explainer.bundle.preprocessing(p) for p in scenes]).astype(np.float32)
    client = server.client()
    meta = client.get_model_metadata("bundle")
    assert meta["outputs"][0]["shape"] == [-1, 5, 128, 128]
    for parameters, targets in (({}, [None, None]), ({"class": [3, 4]}, [3, 4]),        # each image's own
                                ({"method": "eigen", "region": [0, 0, 64, 64]}, [None, None])):
        tensor = http.InferInput("images", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("bundle", [tensor], parameters=parameters)
        for i, target in enumerate(targets):
            e = explainer.explain(x[i:i + 1], parameters.get("method", "recipro"), target=target,
                                  region=parameters.get("region"))
            item = e.items[0][0]
            np.testing.assert_allclose(result.as_numpy("scores")[i], e.outputs[0], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(result.as_numpy("saliency")[i], low_resolution(item), atol=1e-5)
            assert result.as_numpy("saliency_class")[i] == (-1 if item.class_agnostic else item.class_id)


def test_serve_option_reaches_a_segmenters_methods(bundle, explainer, scenes):
    """--option on a segmenter: each method gets the options it takes, as the explainer with them."""
    with_options = Server(bundle, "--method", "score", "--option", "top_k=3", "--option", "kernel=gaussian3")
    try:
        for method, options in (("score", {"top_k": 3}), ("recipro", {"kernel": "gaussian3"})):
            want = explainer.explain([scenes[0]], method, **options).items[0][0]
            got = explain(with_options, scenes[0], f"?method={method}")["maps"][0]
            np.testing.assert_allclose(np.array(got["map"]["data"]), low_resolution(want), atol=6e-5)
        plain = explainer.explain([scenes[0]], "recipro").items[0][0]            # the option changed the map
        assert not np.allclose(low_resolution(plain), low_resolution(want), atol=1e-3)
    finally:
        with_options.stop()


def test_bad_segmenter_requests_get_one_line_4xx_and_the_server_goes_on(server, scenes):
    image = scenes[0].read_bytes()
    assert_error(server.request("/explain?class=triangle&region=[1,2,3]", image), 400, "'region' is a box")
    assert_error(server.request("/explain?method=gradcam", image), 400, "is not served")
    assert_error(server.request("/explain?region=[900,900,950,950]", image), 400, "lies outside")
    absent = [c for c in LABELS[1:] if c not in
              {m["label"] for m in explain(server, scenes[0], "?class=all")["maps"]}]
    if absent:
        assert_error(server.request(f"/explain?class={absent[0]}", image), 400, "is not in the image")
    body = {"inputs": [{"name": "images", "shape": [1, 3, 128, 128], "datatype": "FP32", "data": [0.0] * 49152}],
            "parameters": {"class": "all"}}
    assert_error(server.request("/v2/models/bundle/infer", json.dumps(body).encode(),
                                {"Content-Type": "application/json"}), 400, "one map per image")
    assert explain(server, scenes[0])["maps"]


def test_a_detector_bundle_is_still_refused_in_one_line():
    assert_one_line_error(run_cli("serve", DETECTOR, "--port", "0", timeout=240),
                          "serve explains classifier and segmenter bundles")


def test_a_segmenter_split_at_a_cut_set_is_served_on_its_finest_members_grid(tmp_path, scenes):
    from cam_infer.bundle.segmentation import split_segmenter
    bundle = split_segmenter(OWN, "encoder", out=tmp_path / "cut", labels=LABELS)
    assert len(bundle.manifest["cut"]) == 2
    s = Server(bundle.path, "--method", "eigen")
    try:
        assert s.client().get_model_metadata("cut")["outputs"][1]["shape"] == [-1, 32, 32]
        answer = explain(s, scenes[0], "?class=all")
        want = Explainer(bundle).explain([scenes[0]], "eigen", target="all").items[0]
        assert len(answer["maps"]) == len(want) and answer["class_agnostic"] is True
        np.testing.assert_allclose(np.array(answer["maps"][0]["map"]["data"]), low_resolution(want[0]), atol=6e-5)
    finally:
        s.stop()
