"""The models people ship (../shared/data/deployed, and int8 variants we quantize here): split with
`auto`, explain on real images, and compare with the original file run natively as it is (its own
layout, input dtype and batch); non-classifiers are refused with one line."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from helpers import assert_one_line_error, run_cli, two_graph_pass
from onnx import TensorProto, helper, numpy_helper

from conftest import ROOT, SHARED, STABLE_IMAGES, needs_shared
from cam_infer import Bundle, CamInferError, Explainer, split_onnx
from cam_infer.bundle import split_model
from cam_infer.postprocess import normalise

DEPLOYED = SHARED / "deployed"
PHOTOS = [SHARED / "images" / name for name in ("parrot.jpg", "pelican.jpeg", "kitten_224.png", "hot_dog.jpg")]
TEXT = [DEPLOYED / "textline.png", DEPLOYED / "textline_180.png"]
PPOCR = {"input_size": (48, 192), "preprocessing": {"crop": "none", "mean": (0.5,) * 3, "std": (0.5,) * 3,
                                                    "color": "bgr"}}
MINUS_ONE_ONE = {"preprocessing": {"mean": (0.5,) * 3, "std": (0.5,) * 3}}
# file: (split options, images, what the file is: input layout, input dtype)
MODELS = {
    "mobilenetv2-12-int8.onnx": ({}, PHOTOS, "NCHW", np.float32),
    "tfl_mobilenet_v1_0.5_160_quant.onnx": (MINUS_ONE_ONE, PHOTOS, "NCHW", np.float32),
    "tf2onnx_nchw_mobilenet_v1_0.5_160_quant.onnx": ({}, PHOTOS, "NCHW", np.uint8),
    "tf2onnx_nchwf_mobilenet_v1_0.5_160_quant.onnx": (MINUS_ONE_ONE, PHOTOS, "NCHW", np.float32),
    "tf2onnx_mobilenet_v1_0.25_128_quant.onnx": ({}, PHOTOS, "NHWC", np.uint8),
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": (PPOCR, TEXT, "NCHW", np.float32),
    "derived_ppocr_cls_fp16.onnx": (PPOCR, TEXT, "NCHW", np.float16),
    "derived_ppocr_cls_int8_qdq13.onnx": (PPOCR, TEXT, "NCHW", np.float32),
    "derived_ppocr_cls_int8_qop.onnx": (PPOCR, TEXT, "NCHW", np.float32),
    "onnx2c_mnist-8.onnx": ({"preprocessing": {"crop": "none"}}, [DEPLOYED / "digit3.png"], "NCHW", np.float32),
}
# what the originals predict on those images (checked again natively below)
EXPECTED = {"mobilenetv2-12-int8.onnx": [88, 144, 281, 934], "ch_ppocr_mobile_v2.0_cls_infer.onnx": [0, 1],
            "tfl_mobilenet_v1_0.5_160_quant.onnx": [89, 145, 282, 935], "onnx2c_mnist-8.onnx": [3]}


def native_scores(path, x: np.ndarray, layout: str, dtype) -> np.ndarray:
    """The original file on ONNX Runtime, fed as it is fed in deployment, image by image."""
    import onnxruntime as ort
    session = ort.InferenceSession(path if isinstance(path, bytes) else str(path), providers=["CPUExecutionProvider"])
    feed = x.transpose(0, 2, 3, 1) if layout == "NHWC" else x
    if dtype == np.uint8:
        feed = np.clip(np.round(feed), 0, 255).astype(np.uint8)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: feed[i:i + 1].astype(dtype)})[0].reshape(1, -1)
                           for i in range(len(x))]).astype(np.float32)


def assert_same_class(ours: np.ndarray, native: np.ndarray, message: str) -> None:
    """Our class is the original's top-1 (where quantized outputs tie, any of the tied classes)."""
    for i, c in enumerate(ours):
        assert native[i, c] == native[i].max(), f"{message}: image {i}: ours {c}, native {native[i].argmax()}"


@needs_shared
@pytest.mark.parametrize("name", list(MODELS))
def test_deployed_models_are_explained_as_the_original_predicts(tmp_path, name):
    options, images, layout, dtype = MODELS[name]
    bundle = split_onnx(DEPLOYED / name, layer="auto", out=tmp_path / "b", **options)
    x = bundle.preprocess(images)
    native = native_scores(DEPLOYED / name, x, layout, dtype)
    if name in EXPECTED:
        assert list(native.argmax(axis=1)) == EXPECTED[name]
    runtimes = [r for r, v in bundle.manifest["runtimes"].items() if v["runs"]]
    assert "onnxruntime" in runtimes
    for backend in runtimes:
        explainer = Explainer(bundle, backend=backend)
        a, y = explainer.backend.observe(x)      # the joined graph (ONNX Runtime: a quantized head apart)
        assert explainer.backend.joins == (backend == "openvino" or not bundle.quantized_head)
        a_split, y_split = two_graph_pass(bundle, x, backend)
        np.testing.assert_allclose(a, a_split.reshape(a.shape), rtol=1e-5, atol=1e-5 * np.abs(a).max())
        np.testing.assert_allclose(y, y_split.reshape(y.shape), rtol=1e-5, atol=1e-5 * np.abs(y).max())
        for method in ("recipro", "eigen"):
            e = explainer.explain(x, method)
            assert_same_class(e.targets, native, f"{name} {backend} {method}")
            assert not e.degenerate.any(), f"{name} {backend} {method}: a constant map"
            assert np.isfinite(e.maps).all() and e.saliency.shape == (len(x), *bundle.input_shape[1:])


@needs_shared
def test_a_quantoperator_model_is_cut_at_a_uint8_tensor_and_stays_int8(tmp_path):
    bundle = split_onnx(DEPLOYED / "mobilenetv2-12-int8.onnx", out=tmp_path / "b")
    m = bundle.manifest
    assert m["target_layer"]["tensor"] == "627_quantized" and m["activation"]["shape"] == [1280, 7, 7]
    assert m["activation"]["quantization"]["dtype"] == "uint8"
    assert m["verification"]["max_abs_diff"] == 0.0                          # bit for bit
    features, head = onnx.load(bundle.features_path), onnx.load(bundle.head_path)
    assert features.graph.node[-1].op_type == "DequantizeLinear"
    assert head.graph.node[0].op_type == "QuantizeLinear"
    assert sum(n.op_type == "QLinearConv" for n in features.graph.node) == 52   # the int8 model, still int8
    assert not any(n.op_type == "Conv" for n in features.graph.node)
    # the activation the methods get is exactly the dequantized uint8 tensor
    a = Explainer(bundle).backend.features(bundle.preprocess(PHOTOS[:1]))
    scale = m["activation"]["quantization"]["scale"]
    q = a / scale + m["activation"]["quantization"]["zero_point"]
    np.testing.assert_allclose(q, np.round(q), atol=1e-3)
    assert m["runtimes"]["openvino"]["runs"] is False                       # QLinearConv: OpenVINO reads no QOperator
    with pytest.raises(CamInferError, match="does not run on openvino.*use --backend onnxruntime") as refused:
        Explainer(bundle, backend="openvino")
    # one short line naming the ops OpenVINO could not convert, not its 1 500-character conversion report
    assert "cannot convert its ops QLinearConv" in str(refused.value) and "\n" not in str(refused.value)
    assert len(str(refused.value)) < 200 and "cpp" not in str(refused.value)


@needs_shared
def test_the_default_normalisation_is_refused_where_the_models_input_quantizer_says_another(tmp_path):
    """The TFLite MobileNet quantizes its input to [-1, 0.99]: split with ImageNet's mean and std (the defaults), its
    pixels beyond were clipped and it scored another image, silently (the diff of two conversions of it agreed on
    0.75 of the top-1s). The ONNX zoo's int8 MobileNetV2, calibrated on ImageNet-normalised inputs, is split as
    before; a normalisation given is the user's."""
    from cam_infer.bundle.split import input_quantized_range
    path = DEPLOYED / "tfl_mobilenet_v1_0.5_160_quant.onnx"
    assert input_quantized_range(onnx.load(path)) == pytest.approx((-1.0, 127 / 128))
    assert_one_line_error(run_cli("split", path, "--out", tmp_path / "a"),
                          "the model quantizes its input to [-1, 0.992] (its first QuantizeLinear), and the default "
                          "preprocessing (ImageNet's mean and std) gives [-2.12, 2.64]")
    assert not (tmp_path / "a").exists()
    with pytest.raises(CamInferError, match="split it with the model's own normalisation"):
        split_onnx(path, out=tmp_path / "b", preprocessing={"crop": "none"})
    assert split_onnx(path, out=tmp_path / "c", **MINUS_ONE_ONE).preprocessing.mean == (0.5,) * 3
    zoo = DEPLOYED / "mobilenetv2-12-int8.onnx"
    low, high = input_quantized_range(onnx.load(zoo))
    assert low < -2.1 and high > 2.6                                    # ImageNet's range: the defaults pass
    assert split_onnx(zoo, out=tmp_path / "d").preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))


@needs_shared
def test_the_default_normalisation_is_refused_where_an_ir_models_input_fake_quantize_says_another(tmp_path):
    """The float-input MobileNet converted to IR (its QuantizeLinear → DequantizeLinear now a FakeQuantize of [-1,
    0.99] right after the input, as in an NNCF-quantized IR or a float-input TFLite file) was split with ImageNet's
    mean and std, unchecked: its clipped pixels scored another image. It is refused as the ONNX file is."""
    import openvino as ov

    from cam_infer.bundle.openvino_split import input_fake_quantize_range
    ov.save_model(ov.convert_model(str(DEPLOYED / "tf2onnx_nchwf_mobilenet_v1_0.5_160_quant.onnx")),
                  str(tmp_path / "nchwf.xml"))
    assert input_fake_quantize_range(ov.Core().read_model(tmp_path / "nchwf.xml")) == pytest.approx((-1.0, 127 / 128))
    assert_one_line_error(run_cli("split", tmp_path / "nchwf.xml", "--out", tmp_path / "a"),
                          "the model quantizes its input to [-1, 0.992] (its first FakeQuantize), and the default "
                          "preprocessing (ImageNet's mean and std) gives [-2.12, 2.64]")
    assert not (tmp_path / "a").exists()
    assert split_model(tmp_path / "nchwf.xml", out=tmp_path / "b", **MINUS_ONE_ONE).preprocessing.mean == (0.5,) * 3


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_an_ir_input_fake_quantize_is_found_through_the_layout_ops_and_read_per_channel(tmp_path, layout):
    """Parameter → (an NHWC file's Transpose →) FakeQuantize: its input range, the widest of its channels; a float
    input with another consumer beside it, or none, has no range; the split refuses ImageNet's mean and std."""
    import openvino as ov
    import openvino.opset13 as ops

    shape = [1, 3, 32, 32] if layout == "NCHW" else [1, 32, 32, 3]
    image = ops.parameter(shape, np.float32, name="image")
    x = image.output(0) if layout == "NCHW" else ops.transpose(image, ops.constant(np.array([0, 3, 1, 2]))).output(0)
    low, high = np.array([-1.0, -0.5, -1.0], np.float32).reshape(1, 3, 1, 1), np.float32(127 / 128)
    x = ops.fake_quantize(x, ops.constant(low), ops.constant(high), ops.constant(low), ops.constant(high), 256)
    weights = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    x = ops.relu(ops.convolution(x, ops.constant(weights), [1, 1], [1, 1], [1, 1], [1, 1]))
    pooled = ops.reduce_mean(x, ops.constant(np.array([2, 3])), keep_dims=False)
    logits = ops.matmul(pooled, ops.constant(np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)),
                        False, False)
    model = ov.Model([ops.result(logits)], [image], "fq")
    from cam_infer.bundle.openvino_split import input_fake_quantize_range
    assert input_fake_quantize_range(model) == pytest.approx((-1.0, 127 / 128))
    ov.save_model(model, str(tmp_path / "fq.xml"))
    with pytest.raises(CamInferError, match=r"quantizes its input to \[-1, 0\.992\] \(its first FakeQuantize\)"):
        split_model(tmp_path / "fq.xml", out=tmp_path / "a")
    assert split_model(tmp_path / "fq.xml", out=tmp_path / "b", **MINUS_ONE_ONE).normalisation["mean"] == "given"
    beside = ov.Model([ops.result(logits), ops.result(ops.relu(image))], [image], "two consumers")
    assert input_fake_quantize_range(beside) is None
    plain = ov.Model([ops.result(ops.relu(image))], [image], "no quantizer")
    assert input_fake_quantize_range(plain) is None


def test_the_default_normalisation_refusal_of_a_grayscale_model_names_its_own_default():
    """A one-channel model's default is x/255, not ImageNet's statistics, and its example has one value a flag (a
    model that takes 0..255, quantized so)."""
    from cam_infer.bundle.split import check_default_normalisation
    from cam_infer.images import Preprocessing
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])], "gray",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("q", TensorProto.UINT8, [1, 1, 8, 8])],
        [numpy_helper.from_array(np.array(1.0, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z")])
    model = helper.make_model(graph)
    with pytest.raises(CamInferError, match=r"to \[0, 255\] .* the default preprocessing \(x/255\) gives \[0, 1\]: "
                                            r".* e\.g\. --mean 0\.5 --std 0\.5 for \[-1, 1\]"):
        check_default_normalisation(model, Preprocessing(input_size=(8, 8), channels=1))


@needs_shared
def test_quantized_softmax_is_left_out_and_probabilities_stay_probabilities(tmp_path):
    bundle = split_onnx(DEPLOYED / "tfl_mobilenet_v1_0.5_160_quant.onnx", out=tmp_path / "b", **MINUS_ONE_ONE)
    m = bundle.manifest
    assert m["output"]["kind"] == "logits" and m["output"]["left_out"] == ["Softmax", "QuantizeLinear",
                                                                         "DequantizeLinear"]
    assert m["output"]["model_output_step"] == pytest.approx(1 / 256)
    assert m["activation"]["shape"] == [512, 5, 5]                          # never the (N,1,1,1001) logits
    x = bundle.preprocess(PHOTOS)
    native = native_scores(DEPLOYED / "tfl_mobilenet_v1_0.5_160_quant.onnx", x, "NCHW", np.float32)
    e = Explainer(bundle).explain(x, "recipro")
    np.testing.assert_allclose(e.scores, native[np.arange(len(x)), e.targets], atol=1 / 256 + 1e-3)
    assert e.scores.min() > 0.5                                              # not a softmax of probabilities
    assert (e.maps.max(axis=(1, 2)) - e.maps.min(axis=(1, 2)) > 1e-3).all()   # recipro resolves below 1/256


@needs_shared
def test_a_qlinearsoftmax_output_is_read_as_the_probabilities_it_holds(tmp_path):
    """PP-OCR's QOperator file ends in ONNX Runtime's QLinearSoftmax: its output is probabilities (0.996), and a
    second softmax over them made every score 0.73 and every map a squashed one."""
    name = "derived_ppocr_cls_int8_qop.onnx"
    options, images, layout, dtype = MODELS[name]
    bundle = split_onnx(DEPLOYED / name, out=tmp_path / "b", **options)
    assert bundle.output_kind == "probabilities"
    x = bundle.preprocess(images)
    native = native_scores(DEPLOYED / name, x, layout, dtype)
    e = Explainer(bundle).explain(x, "recipro")
    np.testing.assert_allclose(e.scores, native[np.arange(len(x)), e.targets], atol=1e-6)
    assert e.scores.min() > 0.99
    assert bundle.scores_step == pytest.approx(1 / 256)                       # the probabilities' step
    model = onnx.load(str(DEPLOYED / name))                # its output left integer: refused, as any integer output
    last = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    assert last.op_type == "DequantizeLinear"
    model.graph.node.remove(last)
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info(last.input[0], TensorProto.UINT8, [None, 2]))
    with pytest.raises(CamInferError, match="no float scores were found before it"):
        split_onnx(model, out=tmp_path / "integer", **options)


@needs_shared
def test_the_logits_step_is_that_of_the_logits_before_a_left_out_softmax(tmp_path):
    """The one-step rule (`numerics.within_rounding`) needs the step of the logits the head returns, not of the
    left-out Softmax's 1/256 probabilities: the scale of the DequantizeLinear that feeds the Softmax. A Recipro-CAM
    map of head rows one logit step wide (two levels: MobileNet V1 int8, the mailbox class on the samoyed) is flat."""
    steps = {}
    for name in ("tfl_mobilenet_v1_0.5_160_quant.onnx", "derived_ppocr_cls_int8_qdq13.onnx"):
        graph = onnx.load(str(DEPLOYED / name)).graph
        producer = {o: n for n in graph.node for o in n.output}
        values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        softmax = next(n for n in graph.node if n.op_type == "Softmax")
        dequantize = producer[softmax.input[0]]
        assert dequantize.op_type == "DequantizeLinear"
        steps[name] = float(np.max(values[dequantize.input[1]]))
        bundle = split_onnx(DEPLOYED / name, out=tmp_path / name, **MODELS[name][0])
        assert bundle.scores_step == pytest.approx(steps[name], rel=1e-6) and bundle.scores_step > 10 / 256
    from cam_infer.bundle import split_openvino
    ir = split_openvino(DEPLOYED / "mobilenet_v1_0.5_160_quant.tflite", out=tmp_path / "ir")
    assert ir.scores_step == pytest.approx(steps["tfl_mobilenet_v1_0.5_160_quant.onnx"], rel=1e-6)
    bundle = Bundle.load(tmp_path / "tfl_mobilenet_v1_0.5_160_quant.onnx")     # as an earlier release wrote it:
    manifest = json.loads((bundle.path / "bundle.json").read_text())          # the step read from the head graph
    del manifest["output"]["logits_step"]
    (bundle.path / "bundle.json").write_text(json.dumps(manifest))
    assert Bundle.load(bundle.path).scores_step == pytest.approx(bundle.scores_step, rel=1e-6)
    explainer = Explainer(tmp_path / "tfl_mobilenet_v1_0.5_160_quant.onnx")
    step = explainer.bundle.scores_step
    x = explainer.preprocess([SHARED / "images" / "samoyed_dog.jpg"])
    a = explainer.backend.features(x)[0]
    k, h, w = a.shape
    copies = np.zeros((h * w, k, h, w), np.float32)         # one-hot Recipro-CAM: each copy keeps one position
    for p in range(h * w):
        copies[p, :, p // w, p % w] = a[:, p // w, p % w]
    span = np.ptp(explainer.backend.head(copies), axis=0) / step                     # per class, in logit steps
    one, more = (int(np.flatnonzero((lo < span) & (span < hi))[0]) for lo, hi in ((0.5, 1.5), (2.5, np.inf)))
    flat, kept = (explainer.explain(x, "recipro", target=c, closed_form=False, score="logit") for c in (one, more))
    assert flat.degenerate[0] and np.ptp(flat.maps[0]) == 0
    assert np.ptp(kept.maps[0]) == pytest.approx(span[more] * step, rel=1e-5)          # raw, as the head gave it


@needs_shared
def test_a_half_file_with_its_weights_in_constants_is_recorded_as_computed_in_float16(tmp_path):
    """PP-OCR's fp16 file holds its float16 weights in Constant nodes, not initializers: ONNX Runtime computes it in
    float16 (its cut differs from OpenVINO's by far more than the float file's does), so its explanations, its
    fused model served on ONNX Runtime and the fused benchmark's row all say f16."""
    from cam_infer.fuse import fuse, save
    from cam_infer.serve.models import FusedRuntime
    from cam_infer.tools.bench import compare_fused
    options, images, _, _ = MODELS["derived_ppocr_cls_fp16.onnx"]
    half, full = (split_onnx(DEPLOYED / name, out=tmp_path / name, **options)
                  for name in ("derived_ppocr_cls_fp16.onnx", "ch_ppocr_mobile_v2.0_cls_infer.onnx"))
    assert half.computes_in_float16 and not full.computes_in_float16
    assert half.manifest["graphs"]["features"]["float16_weights"]               # recorded by the split
    manifest = json.loads((half.path / "bundle.json").read_text())             # a bundle of an earlier release
    for role in ("features", "head"):
        del manifest["graphs"][role]["float16_weights"]
    (half.path / "bundle.json").write_text(json.dumps(manifest))
    assert Bundle.load(half.path).computes_in_float16
    apart = {}
    for bundle in (half, full):
        x = bundle.preprocess(images)
        ort, ov = (Explainer(bundle, backend=b) for b in ("onnxruntime", "openvino"))
        assert (ort.backend.precision, ov.backend.precision) == ("f16" if bundle is half else "f32", "f32")
        assert ort.explain(x, "recipro").precision == ort.backend.precision
        a, b = ort.backend.features(x), ov.backend.features(x)
        apart[bundle is half] = np.abs(a - b).max() / np.ptp(b)
    assert apart[True] > 30 * apart[False], apart
    save(fuse(half, "recipro"), tmp_path / "fused.onnx")
    assert FusedRuntime(tmp_path / "fused.onnx", "onnxruntime", "CPU", 1).precision == "f16"
    row = compare_fused(half.path, "onnxruntime", "recipro", 1, tmp_path / "bench")
    assert row["runtime"] == "onnxruntime (f16)"


@needs_shared
def test_ablation_head_passes_on_an_int8_head_weigh_only_drops_beyond_the_logits_rounding(tmp_path):
    """The int8 MobileNetV2's logits move in steps of 0.16: zeroing one of 1 280 channels mostly moves its class's
    logit by 0 or one step. Those drops are rounding's; the map is Σ_k w_k A^k over the drops beyond 1.5 steps,
    recomputed here from head rows with one channel zeroed at a time."""
    explainer = Explainer(split_onnx(DEPLOYED / "mobilenetv2-12-int8.onnx", out=tmp_path / "b"))
    step = explainer.bundle.scores_step
    assert step == pytest.approx(0.16, abs=0.01)
    x = explainer.preprocess([SHARED / "images" / name for name in ("parrot.jpg", "coffee.png")])
    e = explainer.explain(x, "ablation", closed_form=False)
    for i, a in enumerate(explainer.backend.features(x)):
        c = int(e.targets[i])
        full = explainer.backend.head(a[None])[0, c]
        copies = np.repeat(a[None], len(a), axis=0)
        copies[np.arange(len(a)), np.arange(len(a))] = 0
        drops = full - explainer.backend.head(copies)[:, c]
        kept = np.abs(drops) > 1.5 * step
        assert 0 < kept.sum() < 0.2 * len(a) and (np.abs(drops[~kept]) > 0).any()      # one-step drops left out
        expected = np.einsum("k,khw->hw", np.where(kept, drops, 0) / abs(full), a)
        np.testing.assert_allclose(e.maps[i], expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


@needs_shared
def test_nhwc_uint8_input_is_transposed_rounded_and_clipped_at_the_boundary(tmp_path):
    bundle = split_onnx(DEPLOYED / "tf2onnx_mobilenet_v1_0.25_128_quant.onnx", out=tmp_path / "b")
    m = bundle.manifest
    assert m["input"]["shape"] == [None, 3, 128, 128] and m["input"]["model_layout"] == "NHWC"
    assert m["input"]["model_dtype"] == "uint8" and m["preprocessing"]["scale"] == 1.0
    x = bundle.preprocess(PHOTOS[:2]) + np.float32(0.3)                        # off-grid: rounded at the boundary
    x[0, 0, 0, 0], x[1, 2, 5, 5] = -40.0, 300.0                               # out of range: clipped
    native = native_scores(DEPLOYED / "tf2onnx_mobilenet_v1_0.25_128_quant.onnx", x, "NHWC", np.uint8)
    from cam_infer.numerics import softmax
    ours = softmax(Explainer(bundle).backend.forward(x))
    step = m["output"]["model_output_step"]
    np.testing.assert_allclose(ours, (native - 0) * step, atol=1.01 * step)


def _quantized_variants(tmp_path_factory):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from cam_infer import Preprocessing
    source = SHARED / "models" / "mobilenetv2-fp32-dequant.onnx"
    prep = Preprocessing((224, 224))
    calibration = [prep(p)[None] for p in [SHARED / "images" / n for n in STABLE_IMAGES]]
    folder = tmp_path_factory.mktemp("quantized")
    made = {}
    for fmt in (QuantFormat.QOperator, QuantFormat.QDQ):
        for per_channel in (False, True):
            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.items = iter([{"input": x} for x in calibration])

                def get_next(self):
                    return next(self.items, None)
            path = folder / f"mobilenetv2_{fmt.name.lower()}_{'per_channel' if per_channel else 'per_tensor'}.onnx"
            quantize_static(str(source), str(path), Reader(), quant_format=fmt, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            made[path.stem] = path
    return made


@pytest.fixture(scope="module")
def quantized_variants(tmp_path_factory):
    return _quantized_variants(tmp_path_factory)


@needs_shared
@pytest.mark.parametrize("variant", ["mobilenetv2_qoperator_per_tensor", "mobilenetv2_qoperator_per_channel",
                                     "mobilenetv2_qdq_per_tensor", "mobilenetv2_qdq_per_channel"])
def test_our_own_int8_variants_split_exactly_and_explain(tmp_path, quantized_variants, variant):
    path = quantized_variants[variant]
    bundle = split_onnx(path, out=tmp_path / "b")
    m = bundle.manifest
    assert m["activation"]["shape"] == [1280, 7, 7] and m["activation"]["quantization"] is not None
    assert m["verification"]["max_abs_diff"] <= 1e-5                       # cut at the uint8 tensor: exact
    x = bundle.preprocess(PHOTOS)
    native = native_scores(path, x, "NCHW", np.float32)
    for backend in [r for r, v in m["runtimes"].items() if v["runs"]]:
        e = Explainer(bundle, backend=backend).explain(x, "recipro")
        if backend == "onnxruntime":
            assert_same_class(e.targets, native, f"{variant} {backend}")
        assert not e.degenerate.any()
    if "qdq" in variant:
        assert m["runtimes"]["openvino"]["runs"], m["runtimes"]                # OpenVINO runs QDQ as int8
        from cam_infer.cost import reads_linear_head
        assert reads_linear_head(bundle) is None     # read as GAP → linear, accepted only on real cuts at run time


@needs_shared
def test_int8_and_float_mobilenetv2_maps_agree(tmp_path):
    """The zoo's int8 MobileNetV2 and its float re-derivation (SOURCES.md: top-1 agrees on 14/17 photos):
    on the photos where both predict the same class, the maps of that class agree."""
    int8 = Explainer(split_onnx(DEPLOYED / "mobilenetv2-12-int8.onnx", out=tmp_path / "i8"))
    fp32 = Explainer(split_onnx(SHARED / "models" / "mobilenetv2-fp32-dequant.onnx", out=tmp_path / "f32"))
    photos = [SHARED / "images" / n for n in STABLE_IMAGES]
    x = int8.preprocess(photos)
    agree = int8.explain(x, "eigen").targets == fp32.explain(x, "eigen").targets
    assert agree.sum() >= 7
    x, targets = x[agree], fp32.explain(x[agree], "eigen").targets
    for method, floor in (("recipro", 0.9), ("eigen", 0.9), ("ablation", 0.75)):
        a, b = int8.explain(x, method, target=targets), fp32.explain(x, method, target=targets)
        ours, theirs = normalise(a.maps)[0], normalise(b.maps)[0]
        r = np.array([np.corrcoef(u.ravel(), v.ravel())[0, 1] if u.std() and v.std() else 0.0
                      for u, v in zip(ours, theirs)])
        assert np.mean(r) >= floor, f"{method}: Pearson per photo {np.round(r, 3)}"


# --- refused with one line --------------------------------------------------------------------------------


def _conv_model(output_shape_kind: str) -> onnx.ModelProto:
    """A small conv net whose output is a segmentation map or a sequence of scores: not a classifier."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["r"])]
    if output_shape_kind == "segmentation":
        out = helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 4, 32, 32])
        nodes.append(helper.make_node("Identity", ["r"], ["mask"]))
    else:
        shape = numpy_helper.from_array(np.array([0, 4, -1], np.int64), "shape")
        perm = helper.make_node("Transpose", ["seq4"], ["seq"], perm=[0, 2, 1])
        nodes += [helper.make_node("Reshape", ["r", "shape"], ["seq4"]), perm]
        out = helper.make_tensor_value_info("seq", TensorProto.FLOAT, ["N", 1024, 4])
    inits = [w] + ([shape] if output_shape_kind != "segmentation" else [])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [out], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("kind, message", [("segmentation", r"is \(N,4,32,32\), not class scores \(N,C\): this looks "
                                                            r"like a segmentation"),
                                           ("sequence", r"is \(N,1024,4\), not class scores \(N,C\): this looks "
                                                        r"like a sequence model")])
def test_non_classifiers_are_refused(tmp_path, kind, message):
    with pytest.raises(CamInferError, match=message):
        split_onnx(_conv_model(kind), out=tmp_path / "b")


@needs_shared
def test_a_detector_and_an_unrunnable_file_are_refused_with_one_line(tmp_path):
    assert_one_line_error(run_cli("split", DEPLOYED / "nudenet_320n.onnx", "--task", "classification", "--out",
                                  tmp_path / "d"),
                          "is (N,22,?), not class scores (N,C): this looks like a detector (boxes and class scores "
                          "per anchor); split it with --task detection")
    assert not (tmp_path / "d").exists()
    detected = run_cli("split", DEPLOYED / "nudenet_320n.onnx", "--out", tmp_path / "auto")   # recognised by itself
    assert detected.returncode == 0 and "task         detection" in detected.stdout
    result = run_cli("split", DEPLOYED / "derived_ppocr_cls_int8_qdq.onnx", "--out", tmp_path / "q",
                     "--input-size", "48", "192")
    assert_one_line_error(result, "Unrecognized attribute: axis for operator DequantizeLinear")


def test_fixed_batch_of_16_is_padded(tmp_path):
    """A model exported with batch 16 and a constant of that batch in its head (so the batch cannot be
    released): backends run chunks of 16, the last one zero-padded, and give every image its own scores."""
    from tiny_onnx import tiny_cnn
    model = tiny_cnn(batch=16, head="reshape")
    g = model.graph
    g.initializer.append(numpy_helper.from_array(np.zeros((16, 4), np.float32), "batch_bias"))
    last = g.output[0].name
    for node in g.node:
        for i, name in enumerate(node.output):
            if name == last:
                node.output[i] = "before_bias"
    g.node.append(helper.make_node("Add", ["before_bias", "batch_bias"], [last]))
    bundle = split_onnx(model, out=tmp_path / "b")
    assert bundle.manifest["batch"] == "fixed" and bundle.fixed_batch == 16
    from cam_infer.bundle.verify import random_images
    x = random_images(bundle.preprocessing, 19, seed=3)
    import onnxruntime as ort
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    padded = np.concatenate([x, np.zeros((13, *x.shape[1:]), np.float32)])
    expected = np.concatenate([session.run(None, {"image": padded[:16]})[0], session.run(None, {"image": padded[16:]})[0]])
    for backend in ("onnxruntime", "openvino"):
        got = Explainer(bundle, backend=backend).backend.forward(x)
        np.testing.assert_allclose(got, expected[:19], rtol=1e-5, atol=1e-5)
    explainer = Explainer(bundle, backend="openvino", precision="f32")
    assert not explainer.task.in_pass.possible             # one image in a pass of 16: not the one-image graph
    one = explainer.explain(x[:1], "activation")
    np.testing.assert_allclose(one.maps[0], explainer.backend.features(x[:1])[0].mean(axis=0), rtol=1e-5, atol=1e-6)


@needs_shared
def test_grayscale_input_gets_grayscale_preprocessing(tmp_path):
    bundle = split_onnx(DEPLOYED / "onnx2c_mnist-8.onnx", out=tmp_path / "b", preprocessing={"crop": "none"})
    assert bundle.input_shape == (1, 28, 28) and bundle.preprocessing.channels == 1
    x = bundle.preprocess([DEPLOYED / "digit3.png"])
    import cv2
    gray = cv2.resize(cv2.imread(str(DEPLOYED / "digit3.png"), cv2.IMREAD_GRAYSCALE), (28, 28),
                      interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(x[0, 0], gray / 255.0, atol=1 / 255 + 1e-6)
    assert Bundle.load(tmp_path / "b").preprocessing.mean == (0.0,)


# --- files OpenVINO reads natively: TFLite and IR, cut in OpenVINO's own graph ---------------------------


def native_openvino(path, x: np.ndarray, layout: str, dtype) -> np.ndarray:
    """The original file on OpenVINO (CPU, f32 hint), image by image, fed as deployed."""
    import openvino as ov
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    feed = x.transpose(0, 2, 3, 1) if layout == "NHWC" else x
    if dtype == np.uint8:
        feed = np.clip(np.round(feed), 0, 255).astype(np.uint8)
    return np.concatenate([next(iter(compiled(feed[i:i + 1]).values())).reshape(1, -1)
                           for i in range(len(x))]).astype(np.float32)


@needs_shared
@pytest.mark.slow
def test_a_tflite_file_becomes_an_ir_bundle_that_runs_end_to_end(tmp_path):
    tflite = DEPLOYED / "mobilenet_v1_0.5_160_quant.tflite"
    labels = DEPLOYED / "imagenet_labels_1001.txt"
    result = run_cli("split", tflite, "--out", tmp_path / "b", "--labels", labels)
    assert result.returncode == 0, result.stderr
    assert "the model takes uint8 NHWC" in result.stdout and "openvino: yes, onnxruntime: no" in result.stdout
    assert "Softmax -> FakeQuantize -> Convert" in result.stdout and "(N,512,5,5)" in result.stdout
    bundle = Bundle.load(tmp_path / "b")
    assert bundle.graph_format == "openvino" and bundle.dynamic_batch
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["bundle.json", "features.bin", "features.xml",
                                                                   "head.bin", "head.xml"]
    x = bundle.preprocess(PHOTOS)
    native = native_openvino(tflite, x, "NHWC", np.uint8)
    explainer = Explainer(bundle)                                           # backend auto: OpenVINO
    assert bundle.joined_model() is None and not explainer.backend.joins    # two graphs, two calls
    assert not explainer.task.in_pass.possible          # int8: no maps in a joined pass (its int8 fusions differ)
    for method in ("recipro", "eigen", "ablation"):
        e = explainer.explain(x, method)
        assert_same_class(e.targets, native, f"tflite {method}")
        assert not e.degenerate.any()
    assert [bundle.label(int(c)) for c in e.targets] == ["macaw", "pelican", "tabby, tabby cat", "hotdog, hot dog, red hot"]
    with pytest.raises(CamInferError, match="does not run on onnxruntime.*use --backend openvino"):
        Explainer(bundle, backend="onnxruntime")
    info = run_cli("info", tmp_path / "b", "--backend", "openvino")
    assert info.returncode == 0 and "runs on    openvino CPU" in info.stdout, info.stderr
    out = run_cli("explain", tmp_path / "b", PHOTOS[0], PHOTOS[1], "--method", "all", "--out", tmp_path / "e")
    assert out.returncode == 0 and "skipped" not in out.stdout and "14 overlays" in out.stdout, out.stderr  # +cam
    audit = run_cli("audit", tmp_path / "b", PHOTOS[0], PHOTOS[1], "--methods", "recipro,eigen", "--metrics",
                    "adcc,deletion", "--out", tmp_path / "r")
    assert audit.returncode == 0 and (tmp_path / "r" / "index.html").is_file(), audit.stderr
    assert_one_line_error(run_cli("fuse", tmp_path / "b", "--out", tmp_path / "m.onnx"), "should end in .xml")
    fused = run_cli("fuse", tmp_path / "b", "--method", "recipro", "--out", tmp_path / "m.xml")  # IR in, IR out
    assert fused.returncode == 0 and "checked  against the Explainer on OpenVINO" in fused.stdout, fused.stderr
    import openvino as ov
    compiled = ov.Core().compile_model(str(tmp_path / "m.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = {n: v for o, v in compiled(x).items() for n in o.get_names()}
    assert_same_class(got["saliency_class"], native, "fused tflite recipro")
    np.testing.assert_allclose(got["saliency"], normalise(explainer.explain(x, "recipro").maps)[0], atol=1e-3)


@needs_shared
def test_an_ir_bundle_gives_the_maps_of_the_onnx_bundle_of_the_same_model(tmp_path):
    """MobileNetV2 as ONNX and as the IR OpenVINO converts it to: two independent cuts of one model."""
    import openvino as ov
    source = SHARED / "models" / "mobilenetv2-fp32-dequant.onnx"
    ov.save_model(ov.Core().read_model(str(source)), str(tmp_path / "mnv2.xml"), compress_to_fp16=False)
    ir = split_onnx_or_ir(tmp_path / "mnv2.xml", tmp_path / "ir")
    onnx_bundle = split_onnx(source, out=tmp_path / "onnx")
    assert ir.activation_shape == onnx_bundle.activation_shape == (1280, 7, 7)
    assert ir.manifest["target_layer"]["tensor"] == "features.18.relu6"          # after the ReLU6, as in ONNX
    x = ir.preprocess(PHOTOS)
    a, b = Explainer(ir), Explainer(onnx_bundle, backend="openvino")
    for method in ("recipro", "eigen", "ablation", "activation"):
        ours, theirs = a.explain(x, method), b.explain(x, method)
        np.testing.assert_array_equal(ours.targets, theirs.targets)
        np.testing.assert_allclose(ours.maps, theirs.maps, rtol=1e-3, atol=1e-4 * np.abs(theirs.maps).max())
    with pytest.raises(CamInferError, match="unknown layer 'layer4'.*features.18.relu6"):
        split_onnx_or_ir(tmp_path / "mnv2.xml", tmp_path / "x", layer="layer4")
    with pytest.raises(CamInferError, match="not a cut point"):
        split_onnx_or_ir(tmp_path / "mnv2.xml", tmp_path / "y", layer="features.16.conv.2")


def split_onnx_or_ir(path, out, **options):
    from cam_infer.bundle import split_model
    return split_model(path, out=out, **options)


@needs_shared
def test_info_shows_the_ops_openvino_refused_wrapped_at_words(tmp_path):
    """OpenVINO refuses the QOperator int8 model in ~1400 characters of C++ locations; the bundle records, and
    info shows, the ops its report's summary names (info once cut the whole report at 120 characters, mid-word)."""
    import openvino as ov
    bundle = split_onnx(DEPLOYED / "mobilenetv2-12-int8.onnx", out=tmp_path / "b")
    core = ov.Core()
    with pytest.raises(Exception) as refused:
        core.compile_model(core.read_model(onnx.load(bundle.features_path).SerializeToString(), b""), "CPU")
    whole = " ".join(str(refused.value).split())
    assert len(whole) > 600 and "Conversion is failed for: " in whole
    failed_ops = whole.split("Conversion is failed for: ")[1]
    assert "QLinearConv" in failed_ops
    info = run_cli("info", bundle.path)
    assert info.returncode == 0, info.stderr
    lines = info.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("runtimes"))
    block = lines[first:next(i for i in range(first + 1, len(lines)) if not lines[i].startswith(" "))]
    assert all(len(line) <= 100 for line in block) and len(block) > 1
    assert (f"openvino: no (features: OpenVINO cannot convert its ops {failed_ops})"
            in " ".join(line.strip() for line in block))


def _token_model() -> onnx.ModelProto:
    """A patch embedding as a ViT's: 8×8 patches of a 16×32 image → (N, 8 tokens, 1024 features). Its
    (N, few, many) output is shaped like a detector's (N, 4+C, anchors), but 1024 anchors fit no input."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((1024, 3, 8, 8)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([0, 1024, -1], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["image", "w"], ["patches"], strides=[8, 8]),
             helper.make_node("Reshape", ["patches", "shape"], ["flat"]),
             helper.make_node("Transpose", ["flat"], ["tokens"], perm=[0, 2, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 32])],
                              [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["N", 8, 1024])],
                              initializer=[w, shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


SEQUENCE = "this looks like a sequence/token output (8 tokens of 1024 features"


def test_a_token_sequence_output_is_refused_as_one(tmp_path):
    """Every path that reads a model's outputs: the classifier split (Python and CLI, which first asks
    whether it is a detector), the detector split, and OpenVINO's split of an IR."""
    model = _token_model()
    onnx.save(model, tmp_path / "tokens.onnx")
    with pytest.raises(CamInferError, match=r"is \(N,8,1024\), not class scores \(N,C\): " + re.escape(SEQUENCE)):
        split_onnx(model, out=tmp_path / "b")
    assert_one_line_error(run_cli("split", tmp_path / "tokens.onnx", "--out", tmp_path / "c"),
                          "is (N,8,1024), not class scores (N,C): " + SEQUENCE)
    assert_one_line_error(run_cli("split", tmp_path / "tokens.onnx", "--task", "detection", "--out", tmp_path / "d"),
                          "is (N,8,1024), not a detector's (N, 4+C, anchors): " + SEQUENCE)
    import openvino as ov
    ov.save_model(ov.convert_model(str(tmp_path / "tokens.onnx")), str(tmp_path / "tokens.xml"))
    with pytest.raises(CamInferError, match=re.escape(SEQUENCE)):
        split_model(tmp_path / "tokens.xml", out=tmp_path / "e")
    assert not any((tmp_path / name).exists() for name in "bcde")


# --- shipped layouts we rebuild ourselves (tests/data, made by export/deployed_int8.py) --------------------

REPO_MODELS = ROOT / "tests" / "data"
# file: (split options, what the file is: input layout, input dtype)
REBUILT = {
    "cifar10_mobilenetv2_int8_qop.onnx": (MINUS_ONE_ONE, "NCHW", np.float32),
    "tf2onnx_nhwc_mobilenetv2_0.35_96_quant.onnx": ({}, "NHWC", np.uint8),
}


def native_head_output(path, bundle: Bundle, x: np.ndarray, layout: str, dtype) -> np.ndarray:
    """What the bundle's head returns, from the original file: its output, or where the head stops before a
    left-out quantized Softmax, the file's own graph up to that tensor (the logits)."""
    model = onnx.load(path)
    name = bundle.manifest["output"]["name"]
    if name != model.graph.output[0].name:
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return native_scores(model.SerializeToString(), x, layout, dtype)


def smooth_photos(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n RGB uint8 images of smooth colour blobs (what a photo looks like to a small model, no download)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(n):
        cy, cx, r = rng.uniform(0.2, 0.8, 3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.05 + 0.1 * r))
        colour, background = rng.uniform(0, 255, (2, 3))
        images.append(background + (colour - background) * blob[..., None])
    return np.clip(np.stack(images), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(REBUILT))
def test_rebuilt_deployed_models_split_exactly_and_explain_as_the_original_predicts(tmp_path, name):
    options, layout, dtype = REBUILT[name]
    bundle = split_onnx(REPO_MODELS / name, layer="auto", out=tmp_path / "b", **options)
    assert bundle.manifest["verification"]["batch_sizes"] == [1, 3]
    x = bundle.preprocess(smooth_photos(6, 96) if layout == "NHWC" else smooth_photos(6, 48))
    native = native_scores(REPO_MODELS / name, x, layout, dtype)
    reference = native_head_output(REPO_MODELS / name, bundle, x, layout, dtype)
    assert bundle.num_classes == native.shape[1] == reference.shape[1]
    explainer = Explainer(bundle, backend="onnxruntime")
    for batch in (1, 3):                      # the split reproduces the file bit for bit, batch by batch
        for i in range(0, len(x), batch):
            np.testing.assert_array_equal(explainer.backend.forward(x[i:i + batch]), reference[i:i + batch])
            np.testing.assert_array_equal(two_graph_pass(bundle, x[i:i + batch], "onnxruntime")[1].reshape(
                -1, bundle.num_classes), reference[i:i + batch])
    for method in ("recipro", "eigen", "ablation"):
        e = explainer.explain(x, method)
        assert_same_class(e.targets, native, f"{name} {method}")
        assert np.isfinite(e.maps).all() and e.saliency.shape == (len(x), *bundle.input_shape[1:])


def test_scores_without_a_batch_axis_are_read_per_image(tmp_path):
    """A batch-1 model returning (C,) (a Reshape to [-1] after the classifier): the split counts C classes,
    not 1, and its head returns (N, C) at any batch."""
    from tiny_onnx import tiny_cnn
    model = tiny_cnn(batch=1, classes=5)
    g = model.graph
    g.node[-1].output[0] = "logits_2d"
    g.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "to_1d_shape"))
    g.node.append(helper.make_node("Reshape", ["logits_2d", "to_1d_shape"], ["logits"], name="to_1d"))
    g.output[0].CopyFrom(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [5]))
    bundle = split_onnx(model, out=tmp_path / "b")
    assert bundle.num_classes == 5
    x = np.random.default_rng(0).uniform(-2, 2, (3, 3, 64, 64)).astype(np.float32)
    import onnxruntime as ort
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    native = np.stack([session.run(None, {"image": x[i:i + 1]})[0] for i in range(3)])
    head = onnx.load(bundle.head_path)
    assert [d.dim_value or d.dim_param for d in head.graph.output[0].type.tensor_type.shape.dim] == ["N", 5]
    explainer = Explainer(bundle)
    np.testing.assert_allclose(explainer.backend.forward(x), native, rtol=1e-5, atol=1e-6)
    assert list(explainer.explain(x, "eigen").targets) == list(native.argmax(axis=1))


def test_verification_compares_the_logits_before_a_left_out_quantized_softmax(tmp_path):
    """The model's uint8 probabilities saturate (0 or 255/256 on confident images), so a head several logit
    steps off on an unlikely class moves them by nothing: verification compares the logits themselves."""
    from cam_infer.bundle.anatomy import score_output
    from cam_infer.bundle.graph import Graph
    from cam_infer.bundle.verify import Mismatch, verify

    path = REPO_MODELS / "tf2onnx_nhwc_mobilenetv2_0.35_96_quant.onnx"
    bundle = split_onnx(path, out=tmp_path / "b")
    graph = Graph.from_model(onnx.load(path))
    scores = score_output(graph)
    assert scores.trimmed and scores.tensor_step > 0
    features, head = onnx.load(bundle.features_path), onnx.load(bundle.head_path)
    verify(graph.model, graph.input_spec, scores, features, head, bundle.preprocessing, "dynamic", None)
    out = head.graph.output[0].name
    offset = np.zeros(bundle.num_classes, np.float32)
    offset[int(np.argmin(Explainer(bundle).backend.forward(bundle.preprocess(smooth_photos(1, 96)))))] = \
        3 * scores.tensor_step
    head.graph.initializer.append(numpy_helper.from_array(offset, "offset"))
    head.graph.node[-1].output[0] = "logits_before_offset"
    head.graph.node.append(helper.make_node("Add", ["logits_before_offset", "offset"], [out], name="offset"))
    with pytest.raises(Mismatch, match=r"batch 1: max \|head\(features\(x\)\) - model\(x\)\| = 0.87"):
        verify(graph.model, graph.input_spec, scores, features, head, bundle.preprocessing, "dynamic", None)
    lowered = numpy_helper.from_array(-offset, "offset")           # the same logit 3 steps low: refused alike
    head.graph.initializer[-1].CopyFrom(lowered)
    with pytest.raises(Mismatch, match=r"batch 1: max \|head\(features\(x\)\) - model\(x\)\| = 0.87"):
        verify(graph.model, graph.input_spec, scores, features, head, bundle.preprocessing, "dynamic", None)


@needs_shared
def test_a_linear_head_behind_a_computed_reshape_is_read(tmp_path):
    """PP-OCR's head: GlobalAveragePool → Reshape → MatMul → Add → Softmax, the Reshape's shape computed from the
    pooling's own (Shape → Slice → Concat). Its W and b are read (before: CAM refused, no closed forms); the
    closed forms equal the general path, which runs the head graph."""
    split, images, _, _ = MODELS["ch_ppocr_mobile_v2.0_cls_infer.onnx"]
    bundle = split_onnx(DEPLOYED / "ch_ppocr_mobile_v2.0_cls_infer.onnx", "auto", tmp_path / "b", **split)
    explainer = Explainer(bundle, backend="onnxruntime", precision="f32")
    assert explainer.linear_head is not None and explainer.linear_head.weight.shape == (2, bundle.activation_shape[0])
    x = explainer._inputs(images)[0]
    cam = explainer.explain(x, "cam")
    for method in ("recipro", "ablation"):
        fast = explainer.explain(x, method).maps
        general = explainer.explain(x, method, closed_form=False).maps
        np.testing.assert_allclose(fast, general, rtol=0, atol=1e-5 * np.abs(general).max())
    assert list(cam.targets) == EXPECTED["ch_ppocr_mobile_v2.0_cls_infer.onnx"]


@needs_shared
def test_a_float16_head_is_read_within_its_rounding_and_fuses_on_both_runtimes(tmp_path):
    """PP-OCR in float16: its head casts the cut to float16, then GAP → Reshape → MatMul → Add → Softmax with W and b
    float16 constants. Read as GAP → linear (before: CAM refused): CAM's maps equal the float32 model's within
    float16's rounding, the closed forms equal the general path, and the fused CAM model (W's rows cast to
    float32 in the graph) runs on ONNX Runtime and OpenVINO alike."""
    import onnxruntime
    import openvino
    from cam_infer.fuse import fuse, save
    split, images, _, _ = MODELS["derived_ppocr_cls_fp16.onnx"]
    half = Explainer(split_onnx(DEPLOYED / "derived_ppocr_cls_fp16.onnx", "auto", tmp_path / "h", **split),
                     backend="onnxruntime", precision="f32")
    full = Explainer(split_onnx(DEPLOYED / "ch_ppocr_mobile_v2.0_cls_infer.onnx", "auto", tmp_path / "f", **split),
                     backend="onnxruntime", precision="f32")
    assert half.linear_head is not None and half.linear_head.float16 and not full.linear_head.float16
    x = half._inputs(images)[0]
    cam, reference = half.explain(x, "cam"), full.explain(x, "cam")
    assert list(cam.targets) == list(reference.targets) == EXPECTED["ch_ppocr_mobile_v2.0_cls_infer.onnx"]
    np.testing.assert_allclose(cam.maps, reference.maps, rtol=0, atol=1e-2 * np.abs(reference.maps).max())
    for method in ("recipro", "ablation"):
        general = half.explain(x, method, closed_form=False).maps
        np.testing.assert_allclose(half.explain(x, method).maps, general, rtol=0, atol=1e-4 * np.abs(general).max())
    path = tmp_path / "cam.onnx"
    save(fuse(half.bundle, "cam"), path)
    on_ort = onnxruntime.InferenceSession(str(path)).run(None, {"x": x})
    on_openvino = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({0: x})
    np.testing.assert_array_equal(on_ort[2], cam.targets)
    np.testing.assert_allclose(on_openvino[1], on_ort[1], atol=5e-3)
    np.testing.assert_allclose(on_ort[1][:, 0], normalise(cam.maps.copy())[0][:, 0], atol=1e-3)


def _dequantized_initializer(path, shape: tuple) -> np.ndarray:
    """The file's integer weight of this shape through the DequantizeLinear that reads it, (q − zero)·scale, in
    float32 as ONNX defines it (computed here, not by the package)."""
    model = onnx.load(str(path))
    values = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        q = values.get(node.input[0])
        if node.op_type == "DequantizeLinear" and q is not None and q.shape == shape:
            zero = values[node.input[2]].astype(np.int64)
            return ((q.astype(np.int64) - zero).astype(np.float32) * values[node.input[1]]).astype(np.float32)
    raise AssertionError(f"no dequantized weight of shape {shape} in {path}")


@needs_shared
def test_int8_heads_are_read_as_gap_linear_where_the_float_reading_reproduces_them(tmp_path):
    """A QDQ head read as the float graph it rounds, trusted within 2 steps of its output's quantization on real
    cuts. The same TFLite MobileNet through two converters: tflite2onnx (float weights quantized in the graph;
    AveragePool → 1×1 Conv → Transpose → Reshape) and tf2onnx (uint8 weights; the integers reshaped between
    QuantizeLinear and DequantizeLinear). Both give the file's uint8 weights dequantized here, bit for bit, and the
    same CAM maps, Σ_k W_ck A_k; the closed forms follow the head passes up to the head's rounding. PP-OCR's int8
    head, whose output saturates, is read and refused by the check (before: every int8 head refused)."""
    tfl, tf2 = (Explainer(split_onnx(DEPLOYED / name, "auto", tmp_path / name, **MINUS_ONE_ONE),
                          backend="onnxruntime", precision="f32")
                for name in ("tfl_mobilenet_v1_0.5_160_quant.onnx", "tf2onnx_nchwf_mobilenet_v1_0.5_160_quant.onnx"))
    weight = _dequantized_initializer(DEPLOYED / "tf2onnx_nchwf_mobilenet_v1_0.5_160_quant.onnx", (1001, 512, 1, 1))
    for explainer in (tfl, tf2):
        head = explainer.linear_head
        assert head is not None and head.source.convolution and head.step == pytest.approx(0.146457, rel=1e-5)
        np.testing.assert_array_equal(head.weight, weight[:, :, 0, 0])
    np.testing.assert_array_equal(tfl.linear_head.bias, tf2.linear_head.bias)
    x = tf2._inputs(PHOTOS)[0]
    cam = tf2.explain(x, "cam")
    assert list(cam.targets) == list(tfl.explain(x, "cam").targets) == EXPECTED["tfl_mobilenet_v1_0.5_160_quant.onnx"]
    a = tf2.backend.features(x)
    np.testing.assert_allclose(cam.maps, np.einsum("nk,nkhw->nhw", weight[cam.targets, :, 0, 0], a), rtol=1e-4,
                               atol=1e-5 * np.abs(cam.maps).max())
    np.testing.assert_allclose(tfl.explain(x, "cam").maps, cam.maps, rtol=1e-5, atol=1e-6)
    for method in ("recipro", "ablation"):
        closed, passes = tf2.explain(x, method), tf2.explain(x, method, closed_form=False)
        assert list(closed.targets) == list(passes.targets)
        for i in range(len(x)):
            assert np.corrcoef(closed.maps[i].ravel(), passes.maps[i].ravel())[0, 1] > 0.95, (method, i)
    import onnxruntime
    import openvino
    from cam_infer.fuse import fuse, save
    on_openvino = Explainer(tf2.bundle, backend="openvino", precision="f32")     # its own int8 kernels round apart
    for method in ("cam", "recipro"):                    # the fused graph reads W from the 1×1 Conv's (C,K,1,1)
        path = tmp_path / f"{method}.onnx"
        save(fuse(tf2.bundle, method), path)
        session = onnxruntime.InferenceSession(str(path))
        compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        for fused, explainer in ((session.run(None, {session.get_inputs()[0].name: x}), tf2),
                                 (compiled({0: x}), on_openvino)):
            explained = explainer.explain(x, method)
            np.testing.assert_array_equal(fused[2], explained.targets)
            np.testing.assert_allclose(fused[1], normalise(explained.maps.copy())[0], atol=1e-3)
    ppocr = Explainer(split_onnx(DEPLOYED / "derived_ppocr_cls_int8_qdq13.onnx", "auto", tmp_path / "p", **PPOCR))
    from cam_infer.bundle.head import read_linear_head
    assert read_linear_head(onnx.load(ppocr.bundle.head_path), 200, (1, 48)) is not None
    assert ppocr.linear_head is None
    with pytest.raises(CamInferError, match="global average pooling followed by a linear layer"):
        ppocr.explain(TEXT, "cam")


def _cam_is_the_weighted_cut(explainer, x: np.ndarray, weight: np.ndarray, classes: list):
    """CAM on images x: the expected top classes, each map Σ_k W_ck A_k on the bundle's own cut."""
    cam = explainer.explain(x, "cam")
    assert list(cam.targets) == classes
    a = explainer.backend.features(x)
    np.testing.assert_allclose(cam.maps, np.einsum("nk,nkhw->nhw", weight[cam.targets], a), rtol=1e-4,
                               atol=1e-5 * np.abs(cam.maps).max())
    return cam


@needs_shared
def test_an_int8_ir_head_is_read_through_its_float_graph_as_its_onnx_conversions_are(tmp_path):
    """The TFLite MobileNet V1 as OpenVINO reads it: FakeQuantize → AvgPool → FakeQuantize → 1×1 Convolution on uint8
    weights → Add → FakeQuantize. Its head with the FakeQuantize ops passed over is probed (`bundle.openvino_head`)
    and trusted within 2 steps of its logits' quantization: the file's uint8 weights dequantized as tf2onnx's
    conversion holds them, its bias and step as that conversion's reading, CAM = Σ_k W_ck A_k on the IR's own cut, the
    closed forms following the int8 head passes, and `fuse` adding W and b to the fused IR (no float constant of the
    IR holds them). Before: CAM refused, Recipro-CAM and Ablation-CAM by head passes."""
    from cam_infer.bundle import split_openvino
    from cam_infer.fuse import fuse, save
    bundle = split_openvino(DEPLOYED / "mobilenet_v1_0.5_160_quant.tflite", "auto", tmp_path / "b")
    explainer = Explainer(bundle, backend="openvino", precision="f32")
    onnx_head = Explainer(split_onnx(DEPLOYED / "tf2onnx_nchwf_mobilenet_v1_0.5_160_quant.onnx", "auto", tmp_path / "o",
                                     **MINUS_ONE_ONE), backend="onnxruntime").linear_head
    weight = _dequantized_initializer(DEPLOYED / "tf2onnx_nchwf_mobilenet_v1_0.5_160_quant.onnx",
                                      (1001, 512, 1, 1))[:, :, 0, 0]
    head = explainer.linear_head
    assert head is not None and head.source.probed and head.step == pytest.approx(onnx_head.step, rel=1e-6)
    np.testing.assert_allclose(head.weight, weight, rtol=0, atol=1e-6 * np.abs(weight).max())
    np.testing.assert_allclose(head.bias, onnx_head.bias, rtol=0, atol=1e-6 * np.abs(onnx_head.bias).max())
    x = bundle.preprocess(PHOTOS)
    cam = _cam_is_the_weighted_cut(explainer, x, weight, EXPECTED["tfl_mobilenet_v1_0.5_160_quant.onnx"])
    for method in ("recipro", "ablation"):
        closed, passes = explainer.explain(x, method), explainer.explain(x, method, closed_form=False)
        assert list(closed.targets) == list(passes.targets) == list(cam.targets)
        for i in range(len(x)):
            assert np.corrcoef(closed.maps[i].ravel(), passes.maps[i].ravel())[0, 1] > 0.95, (method, i)
    import openvino as ov
    path = save(fuse(bundle, "cam"), tmp_path / "cam.xml")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = {n: v for o, v in compiled(x).items() for n in o.get_names()}
    np.testing.assert_array_equal(got["saliency_class"], cam.targets)
    np.testing.assert_allclose(got["saliency"], normalise(cam.maps.copy())[0], atol=1e-3)


@needs_shared
def test_a_gaussian_closed_form_fused_on_an_int8_cut_compiles_on_openvino(tmp_path):
    """Recipro-CAM's closed form with kernel="gaussian3" scales each position of a quantized cut by its kernel mass:
    as a scale of the (N,hw,K) positions before their Reshape, OpenVINO's low-precision transformations failed to
    compile it (the fused IR refused with an internal error, the fused ONNX model written but not compiled by
    OpenVINO); the scale is now on the map, and both compile and draw the Explainer's maps."""
    import openvino as ov
    from cam_infer.bundle import split_openvino
    from cam_infer.fuse import fuse, save
    options = {"kernel": "gaussian3", "score": "logit"}
    onnx_bundle = split_onnx(DEPLOYED / "tfl_mobilenet_v1_0.5_160_quant.onnx", out=tmp_path / "o", **MINUS_ONE_ONE)
    ir_bundle = split_openvino(DEPLOYED / "mobilenet_v1_0.5_160_quant.tflite", "auto", tmp_path / "ir")
    for bundle, path in ((onnx_bundle, tmp_path / "g.onnx"), (ir_bundle, tmp_path / "g.xml")):
        explainer = Explainer(bundle, backend="openvino", precision="f32")
        x = explainer.preprocess(PHOTOS[:2])
        save(fuse(bundle, "recipro", **options), path)
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        got = {n: v for o, v in compiled(x).items() for n in o.get_names()}
        explained = explainer.explain(x, "recipro", **options)
        np.testing.assert_array_equal(got["saliency_class"], explained.targets)
        np.testing.assert_allclose(got["saliency"], normalise(explained.maps.copy())[0], atol=1e-3)


@needs_shared
def test_a_qoperator_int8_head_is_read_as_the_float_head_it_was_quantized_from(tmp_path):
    """The zoo's int8 MobileNetV2 (QOperator: QLinearGlobalAveragePool → Reshape → QLinearMatMul → QLinearAdd): its
    head read as the float graph it rounds gives, bit for bit, the W and b of its float re-derivation
    (`mobilenetv2-fp32-dequant.onnx`, the same weights dequantized into a float Gemm); CAM is Σ_k W_ck A_k on the
    int8 cut, and `fuse` adds W and b to the fused graph (no tensor of the int8 graph holds them in float). PP-OCR's
    QOperator head (QGemm → QLinearSoftmax) is read and refused by the check: its int8 output saturates."""
    int8 = Explainer(split_onnx(DEPLOYED / "mobilenetv2-12-int8.onnx", out=tmp_path / "i8"))
    float_model = onnx.load(str(SHARED / "models" / "mobilenetv2-fp32-dequant.onnx"))
    values = {t.name: onnx.numpy_helper.to_array(t) for t in float_model.graph.initializer}
    gemm = next(n for n in float_model.graph.node if n.op_type == "Gemm")
    weight, bias = values[gemm.input[1]], values[gemm.input[2]]                   # (1000, 1280), transB = 1
    head = int8.linear_head
    assert head is not None and head.step > 0
    np.testing.assert_array_equal(head.weight, weight)
    np.testing.assert_array_equal(head.bias, bias)
    x = int8.preprocess(PHOTOS)
    cam = _cam_is_the_weighted_cut(int8, x, weight, EXPECTED["mobilenetv2-12-int8.onnx"])
    import onnxruntime
    from cam_infer.fuse import fuse, save
    save(fuse(int8.bundle, "cam"), tmp_path / "cam.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "cam.onnx"))
    fused = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_array_equal(fused[2], cam.targets)
    np.testing.assert_allclose(fused[1], normalise(cam.maps.copy())[0], atol=1e-3)
    from cam_infer.bundle.qdq_tail import dequantized
    split, images, _, _ = MODELS["derived_ppocr_cls_int8_qop.onnx"]
    ppocr = Explainer(split_onnx(DEPLOYED / "derived_ppocr_cls_int8_qop.onnx", "auto", tmp_path / "p", **split))
    assert dequantized(onnx.load(ppocr.bundle.head_path)) is not None and ppocr.linear_head is None
    with pytest.raises(CamInferError, match="global average pooling followed by a linear layer"):
        ppocr.explain(images, "cam")


@needs_shared
def test_a_class_agnostic_map_fused_on_an_int8_head_keeps_no_float_copy_of_its_weights(tmp_path):
    """The zoo's int8 MobileNetV2: W and b are added in float32 for the methods that read them (5 MB beside a
    3.7 MB model); a class-agnostic map reads neither, and its fused file kept both (+140 %, and an ONNX Runtime
    warning at every session). It is now the plain model and a few kilobytes of nodes."""
    from cam_infer.fuse import fuse, plain_model
    bundle = split_onnx(DEPLOYED / "mobilenetv2-12-int8.onnx", out=tmp_path / "i8")
    plain = plain_model(bundle).ByteSize()
    for method in ("activation", "eigen", "entropy"):
        model = fuse(bundle, method)
        assert not {t.name for t in model.graph.initializer} & {"head_weight_read", "head_bias_read"}, method
        assert model.ByteSize() < 1.01 * plain, method


@needs_shared
def test_cam_and_recipro_fused_on_a_qoperator_head_dequantize_its_int8_weights_in_the_graph(tmp_path):
    """The zoo's int8 MobileNetV2 (QOperator): CAM and Recipro-CAM's closed form read W and b, which its QLinearMatMul
    and QLinearAdd hold as integers, and the fused file carried them again in float32 (8.8 MB beside a 3.7 MB model).
    A DequantizeLinear of the file's own int8 tensors now computes them in the graph; the maps are the Explainer's."""
    import onnxruntime as ort

    from cam_infer.fuse import fuse, plain_model
    bundle = split_onnx(DEPLOYED / "mobilenetv2-12-int8.onnx", out=tmp_path / "i8")
    plain = plain_model(bundle).ByteSize()
    explainer = Explainer(bundle, backend="onnxruntime")
    x = explainer._inputs([SHARED / "images" / "samoyed_dog.jpg"])[0]
    for method in ("cam", "recipro"):
        model = fuse(bundle, method, raw=True)
        assert not [t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and
                    int(np.prod(t.dims)) >= 1000 * 1280], method         # no float32 copy of W
        assert model.ByteSize() < 1.01 * plain, method
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        raw = session.run(["saliency_raw"], {session.get_inputs()[0].name: x})[0]
        expected = explainer.explain(x, method).maps
        assert np.abs(raw - expected).max() <= 1e-5 * np.abs(expected).max(), method


def _head_graph(nodes, initializers, shape=(1, 4, 2, 2), classes=3):
    """A hand-built head graph: input `a` of `shape`, output `y` (N, classes)."""
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("a", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], classes])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_head_is_not_read_as_linear_where_its_quantization_grids_or_a_transpose_would_make_the_reading_wrong():
    """Refused at reading: a QuantizeLinear → DequantizeLinear pair on two different grids (read as the identity it
    would be off by 2×), a Transpose that moves the channels, a weight quantized to float8. Read: a 1×1 Conv without
    bias (its bias the zeros of its classes, not of its channels) and a Transpose of size-1 axes."""
    from cam_infer.bundle.head import read_linear_head
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4, 1, 1)).astype(np.float32)
    grids = {"s1": np.float32(0.01), "s2": np.float32(0.02), "z": np.uint8(0), "w": w}
    pair = _head_graph([helper.make_node("QuantizeLinear", ["a", "s1", "z"], ["q"]),
                        helper.make_node("DequantizeLinear", ["q", "s2", "z"], ["d"]),
                        helper.make_node("GlobalAveragePool", ["d"], ["p"]),
                        helper.make_node("Conv", ["p", "w"], ["c"]),
                        helper.make_node("Flatten", ["c"], ["y"])], grids)
    assert read_linear_head(pair, 4, (2, 2)) is None
    same = _head_graph([helper.make_node("QuantizeLinear", ["a", "s1", "z"], ["q"]),
                        helper.make_node("DequantizeLinear", ["q", "s1", "z"], ["d"]),
                        helper.make_node("GlobalAveragePool", ["d"], ["p"]),
                        helper.make_node("Conv", ["p", "w"], ["c"]),
                        helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
                        helper.make_node("Flatten", ["t"], ["y"])], grids)
    head = read_linear_head(same, 4, (2, 2))
    assert head is not None and head.step == 0.0 and head.bias.shape == (3,)
    np.testing.assert_array_equal(head.weight, w[:, :, 0, 0])
    moved = _head_graph([helper.make_node("GlobalAveragePool", ["a"], ["p"]),
                         helper.make_node("Reshape", ["p", "shape"], ["r"]),
                         helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
                         helper.make_node("Reshape", ["t", "flat"], ["f"]),
                         helper.make_node("MatMul", ["f", "m"], ["y"])],
                        {"shape": np.array([-1, 2, 2], np.int64), "flat": np.array([-1, 4], np.int64),
                         "m": rng.standard_normal((4, 3)).astype(np.float32)})
    assert read_linear_head(moved, 4, (2, 2)) is None
    float8 = _head_graph([helper.make_node("QuantizeLinear", ["w", "s1"], ["wq"],
                                           output_dtype=TensorProto.FLOAT8E4M3FN),
                          helper.make_node("DequantizeLinear", ["wq", "s1"], ["wd"]),
                          helper.make_node("GlobalAveragePool", ["a"], ["p"]),
                          helper.make_node("Conv", ["p", "wd"], ["c"]),
                          helper.make_node("Flatten", ["c"], ["y"])], grids)
    assert read_linear_head(float8, 4, (2, 2)) is None


@needs_shared
def test_the_int8_check_refuses_a_wrong_reading_of_a_head_that_ends_in_softmax(tmp_path):
    """tf2onnx's int8 MobileNet V1 ends in a float Softmax over 1 001 classes: compared as probabilities within 2
    steps of its logits, a reading of zeros passed. Compared as logits, the true reading passes and a reading with
    its channels or its classes shuffled, or of zeros, is refused."""
    from dataclasses import replace
    explainer = Explainer(split_onnx(DEPLOYED / "tf2onnx_nchwf_mobilenet_v1_0.5_160_quant.onnx", "auto",
                                     tmp_path / "b", **MINUS_ONE_ONE), backend="onnxruntime", precision="f32")
    assert explainer.bundle.output_kind == "probabilities"
    head, run = explainer.task._head_and_reference()
    assert explainer.task._within_steps(head, run)
    rng = np.random.default_rng(0)
    wrong = [replace(head, weight=head.weight[:, rng.permutation(head.weight.shape[1])]),
             replace(head, weight=head.weight[rng.permutation(len(head.weight))]),
             replace(head, weight=np.zeros_like(head.weight), bias=np.zeros_like(head.bias))]
    assert not any(explainer.task._within_steps(h, run) for h in wrong)
