"""uint8 TFLite classifiers read by OpenVINO, shaped like two shipped files that failed (tests/data/SOURCES.md):
`auto` must find the real feature map, and the split must reproduce the file as OpenVINO runs it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli, two_graph_pass

from conftest import ROOT
from cam_infer import Bundle, Explainer
from cam_infer.bundle import split_openvino
from cam_infer.bundle.verify import random_images
from cam_infer.numerics import softmax

DATA = ROOT / "tests" / "data"
MNV2_FC = DATA / "mnv2_avgpool_fc_uint8.tflite"        # AVERAGE_POOL_2D → FULLY_CONNECTED (the iNat bird model)
MNV1_CONV = DATA / "mnv1_avgpool_conv_uint8.tflite"    # AVERAGE_POOL_2D → CONV_2D 1x1 → RESHAPE (hosted v1 quant)
# the last map before the pooling: input size / 32
FEATURE_MAPS = {MNV2_FC: (1280, 3, 3), MNV1_CONV: (256, 4, 4)}
POOLED_NAME = """import sys, openvino as ov
model = ov.Core().read_model(sys.argv[1])
pool = next(op for op in model.get_ordered_ops() if op.get_type_name() == "AvgPool")
print(next(iter(pool.output(0).get_target_inputs())).get_node().get_friendly_name())"""


def native_probabilities(path, x: np.ndarray) -> np.ndarray:
    """The original file on OpenVINO (CPU, f32 hint), image by image as its batch is 1, uint8 NHWC in; its
    uint8 probabilities as floats (k/256)."""
    import openvino as ov
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    feed = np.clip(np.round(x.transpose(0, 2, 3, 1)), 0, 255).astype(np.uint8)
    return np.concatenate([compiled(feed[i:i + 1])[0] for i in range(len(x))]).astype(np.float32) / 256


@pytest.fixture(scope="module", params=[MNV2_FC, MNV1_CONV], ids=["mnv2_fc", "mnv1_conv"])
def split(request, tmp_path_factory):
    path = request.param
    return path, split_openvino(path, "auto", tmp_path_factory.mktemp("b") / "b")


def test_auto_takes_the_last_feature_map_before_the_pooling_not_the_pooled_1x1(split):
    path, bundle = split
    assert tuple(bundle.manifest["activation"]["shape"]) == FEATURE_MAPS[path]


@pytest.mark.parametrize("batch", [1, 3])
def test_the_split_reproduces_the_file_on_openvino(split, batch):
    """head(features(x)) in one call of `batch` images vs the whole file image by image: the same uint8
    probabilities up to their own rounding (half a step of 1/256, and clipped at 255/256), not a logit step apart."""
    path, bundle = split
    x = random_images(bundle.preprocessing, batch, seed=11)
    _, logits = two_graph_pass(bundle, x, "openvino")
    native = native_probabilities(path, x)
    probabilities = np.minimum(softmax(logits.reshape(batch, -1)), 255 / 256)
    assert np.abs(probabilities - native).max() <= 0.5 / 256 + 1e-4


def test_maps_are_of_the_feature_map_and_not_degenerate(split):
    path, bundle = split
    x = random_images(bundle.preprocessing, 3, seed=5)
    for method in ("recipro", "eigen"):
        e = Explainer(bundle, backend="openvino").explain(x, method)
        assert e.maps.shape == (3, *FEATURE_MAPS[path][1:]) and not e.degenerate.any(), method
        assert np.ptp(e.maps.reshape(3, -1), axis=1).min() > 0


def test_naming_the_pooled_1x1_map_is_refused_in_one_line(tmp_path):
    # OpenVINO numbers the names it makes up per process: read them in a fresh one, as the CLI will
    pooled = subprocess.run([sys.executable, "-c", POOLED_NAME, str(MNV2_FC)], capture_output=True, text=True,
                            check=True).stdout.strip()
    result = run_cli("split", MNV2_FC, "--layer", pooled, "--out", tmp_path / "b")
    assert_one_line_error(result, "spatial size above 1x1")
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_the_bundles_load_and_name_their_cut(split):
    _, bundle = split
    again = Bundle.load(bundle.path)
    assert again.graph_format == "openvino" and again.dynamic_batch


def test_an_int8_input_gets_pixels_shifted_into_int8_not_clipped_at_127(tmp_path):
    """TF2's int8-I/O TFLite takes q = round(x/s) + z for its float input x = p/127.5 - 1 (s 0.0078431,
    z -1, from the file): the pixel minus 128 within a step. Raw pixels would clip every p above 127."""
    path = DATA / "mnv2_avgpool_fc_int8io.tflite"
    bundle = split_openvino(path, "auto", tmp_path / "b")
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    fed = np.clip(np.round(bundle.preprocessing.standardise(pixels)), -128, 127)   # as the features graph casts
    expected = np.clip(np.round((pixels.transpose(2, 0, 1) / 127.5 - 1) / 0.00784312654286623) - 1, -128, 127)
    assert np.abs(fed - expected).max() <= 1
    assert bundle.manifest["input"]["model_dtype"] == "int8"
