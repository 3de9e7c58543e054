"""`fuse` on OpenVINO IR bundles: one IR model whose saliency is the Explainer's on the same bundle, written as
.xml/.bin, described in its rt_info, benchmarked, served and put in a model repository."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli
from test_fuse import SHAPES, assert_same_maps

from cam_infer import Bundle, CamInferError, Explainer
from cam_infer.bundle.verify import random_images
from cam_infer.errors import MethodNotApplicable
from cam_infer.fuse import fuse, plain_model, save


@pytest.fixture(scope="module")
def ir_shapes(tmp_path_factory):
    """The shapes classifier as a deployment holds it in IR (converted from its ONNX file, float32 weights), split
    with `auto`."""
    import openvino as ov

    from cam_infer.bundle import split_openvino
    folder = tmp_path_factory.mktemp("ir-shapes")
    source = save(plain_model(Bundle.load(SHAPES)), folder / "shapes.onnx")
    ov.save_model(ov.convert_model(str(source)), str(folder / "shapes.xml"), compress_to_fp16=False)
    return split_openvino(folder / "shapes.xml", "auto", folder / "bundle")


def compiled(path):
    import openvino as ov
    core = ov.Core()
    return core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def outputs(model, feeds: dict) -> dict:
    results = model(feeds)
    return {name: results[o] for o in model.outputs for name in o.get_names()}


@pytest.mark.parametrize("method,options", [("activation", {}), ("eigen", {}), ("entropy", {}), ("cam", {}),
                                            ("recipro", {}), ("recipro", {"closed_form": False}),
                                            ("recipro", {"kernel": "gaussian3", "score": "logit"})])
def test_a_fused_ir_returns_the_scores_and_the_explainers_maps(ir_shapes, tmp_path, method, options):
    """Saved as IR and run by OpenVINO: scores equal the bundle's forward pass, the class its argmax, the raw and
    normalised maps the Explainer's on the IR bundle, batch 4 and 1."""
    assert ir_shapes.graph_format == "openvino"
    path = save(fuse(ir_shapes, method, raw=True, **options), tmp_path / "fused.xml")
    assert path.with_suffix(".bin").is_file()
    model, explainer = compiled(path), Explainer(ir_shapes, backend="openvino")
    x = random_images(ir_shapes.preprocessing, 4, seed=11)
    for batch in (x, x[:1]):
        got = outputs(model, {ir_shapes.input_name: batch})
        scores = explainer.backend.forward(batch)
        np.testing.assert_allclose(got["scores"], scores, rtol=0, atol=1e-5 * np.abs(scores).max())
        e = explainer.explain(batch, method, **options)
        assert_same_maps(got["saliency_raw"], got["saliency"], e.maps, f"{method} {options}, batch {len(batch)}")
        if method in ("cam", "recipro"):
            np.testing.assert_array_equal(got["saliency_class"], scores.argmax(axis=1))


def test_a_fused_ir_draws_what_the_fused_onnx_model_draws_on_the_other_runtime(ir_shapes, tmp_path):
    """The same classifier fused from its ONNX bundle and run on ONNX Runtime: the same maps (an independent
    reference: other graph, other runtime)."""
    import onnxruntime as ort
    x = random_images(ir_shapes.preprocessing, 3, seed=4)
    onnx_path = save(fuse(Bundle.load(SHAPES), "recipro", closed_form=False), tmp_path / "fused.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x})))
    got = outputs(compiled(save(fuse(ir_shapes, "recipro"), tmp_path / "fused.xml")), {ir_shapes.input_name: x})
    np.testing.assert_allclose(got["saliency"], expected["saliency"], atol=1e-4)
    np.testing.assert_array_equal(got["saliency_class"], expected["saliency_class"])


def test_top_classes_and_class_input_in_a_fused_ir(ir_shapes, tmp_path):
    x = random_images(ir_shapes.preprocessing, 3, seed=6)
    explainer = Explainer(ir_shapes, backend="openvino")
    scores = explainer.backend.forward(x)
    top = compiled(save(fuse(ir_shapes, "recipro", top_classes=2, raw=True), tmp_path / "top.xml"))
    got = outputs(top, {ir_shapes.input_name: x})
    assert got["saliency"].shape == (3, 2, 16, 16)
    np.testing.assert_array_equal(got["saliency_class"], np.argsort(-scores, axis=1)[:, :2])
    for t in range(2):
        expected = explainer.explain(x, "recipro", target=got["saliency_class"][:, t]).maps
        assert_same_maps(got["saliency_raw"][:, t], got["saliency"][:, t], expected, f"top class {t}")
    given = compiled(save(fuse(ir_shapes, "recipro", class_input=True, raw=True), tmp_path / "given.xml"))
    assert [p.get_any_name() for p in given.inputs] == [ir_shapes.input_name, "class_id"]
    least = scores.argmin(axis=1).astype(np.int64)
    got = outputs(given, {ir_shapes.input_name: x, "class_id": least})
    assert "saliency_class" not in got
    expected = explainer.explain(x, "recipro", target=least).maps
    assert_same_maps(got["saliency_raw"], got["saliency"], expected, "class_id input")


def test_a_fused_ir_describes_itself_and_is_recognised_as_fused(ir_shapes, tmp_path):
    import openvino as ov

    from cam_infer.bundle.model_cache import is_fused_ir, is_model_file
    from cam_infer.fuse.ir import described
    path = save(fuse(ir_shapes, "eigen", precision="f32"), tmp_path / "eigen.xml")
    record = described(ov.Core().read_model(str(path)))
    assert record["cam_infer.method"] == "eigen" and record["cam_infer.precision"] == "f32"
    assert json.loads(record["cam_infer.check"])["relative_difference"] < 1e-4
    assert json.loads(record["cam_infer.preprocessing"]) == ir_shapes.preprocessing.to_dict()
    assert is_fused_ir(path) and not is_model_file(path)          # served as it is, never split again
    source = ir_shapes.path.parent / "shapes.xml"                 # the IR the bundle was split from
    assert not is_fused_ir(source) and is_model_file(source)
    assert "saliency_raw" not in {p.get_any_name() for p in ov.Core().read_model(str(path)).outputs}


def test_closed_forms_fused_into_an_ir_read_the_heads_own_weights(ir_shapes, tmp_path):
    """CAM and Recipro-CAM's closed form read the IR head's own W and b constants (found where the head, read by
    running it, holds them): the fused IR's weights file is the plain model's, plus a few bytes."""
    import openvino as ov

    from cam_infer.fuse.ir_graph import HEAD_WEIGHT, head_tensors
    head = ov.Core().read_model(str(ir_shapes.head_path))
    found = head_tensors(head, Explainer(ir_shapes, backend="openvino").linear_head)
    assert found is not None and found[HEAD_WEIGHT].get_node().get_type_name() == "Constant"
    plain = save(plain_model(ir_shapes), tmp_path / "plain.xml").with_suffix(".bin").stat().st_size
    for method in ("cam", "recipro"):
        fused = save(fuse(ir_shapes, method), tmp_path / f"{method}.xml").with_suffix(".bin").stat().st_size
        assert fused - plain < 4096, f"{method}: {fused - plain} bytes more than the plain model's weights"


@pytest.mark.parametrize("method", ["cam", "recipro"])
def test_closed_forms_fused_on_an_int8_ir_read_its_uint8_weights_through_their_dequantization(tmp_path, method):
    """A uint8 TFLite MobileNet as an IR bundle: its classifier a 1×1 Convolution whose filters are uint8 constants
    dequantized by Convert → Subtract → Multiply. CAM and the closed form found no float constant equal to W and
    carried W and b in float32 (the hosted MobileNet v1 0.5: +150 % on the model's weights); they now read the
    dequantized filters in the graph, and the maps stay the Explainer's."""
    import openvino as ov

    from cam_infer.bundle import split_openvino
    from cam_infer.fuse.ir_graph import head_tensors
    from conftest import ROOT

    bundle = split_openvino(ROOT / "tests" / "data" / "mnv1_avgpool_conv_uint8.tflite", "auto", tmp_path / "b")
    explainer = Explainer(bundle, backend="openvino", precision="f32")
    found = head_tensors(ov.Core().read_model(str(bundle.head_path)), explainer.linear_head)
    assert found is not None
    plain = save(plain_model(bundle), tmp_path / "plain.xml").with_suffix(".bin").stat().st_size
    path = save(fuse(bundle, method, raw=True), tmp_path / f"{method}.xml")
    assert path.with_suffix(".bin").stat().st_size - plain < 4096
    x = random_images(bundle.preprocessing, 2, seed=3)
    raw = outputs(compiled(path), {bundle.input_name: x})["saliency_raw"]
    expected = explainer.explain(x, method).maps
    assert np.abs(raw - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("keep_io_types", [True, False])
def test_an_ir_that_computes_in_float16_splits_and_fuses_its_closed_forms(tmp_path, keep_io_types):
    """The shapes classifier converted to float16 ONNX (ONNX Runtime's converter), then to IR: its ops compute in f16.
    With float16 images its split was refused at float32's 1e-4 ('0.000248 > 0.0001' on PP-OCR's float16 file), and
    CAM fused into it stopped with an internal error: the method read the head's f16 weight constant through a
    Convert, which OpenVINO's CPU plugin takes for a compressed weight and converts in place, under the model's own f16
    MatMul too. Now the split is verified within float16's tolerance (recorded), and CAM and Recipro-CAM fuse with
    the Explainer's maps, the weights read where the IR holds them (no float32 copy)."""
    import onnx
    import openvino as ov
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from cam_infer.bundle import split_openvino
    from cam_infer.numerics import FLOAT16_TOLERANCE
    source = save(plain_model(Bundle.load(SHAPES)), tmp_path / "shapes.onnx")
    onnx.save(convert_float_to_float16(onnx.load(source), keep_io_types=keep_io_types), tmp_path / "half.onnx")
    ov.save_model(ov.convert_model(str(tmp_path / "half.onnx")), str(tmp_path / "half.xml"), compress_to_fp16=False)
    bundle = split_openvino(tmp_path / "half.xml", "auto", tmp_path / "bundle")
    tolerance = bundle.manifest["verification"]["relative_tolerance"]
    assert tolerance == FLOAT16_TOLERANCE
    explainer = Explainer(bundle, backend="openvino", precision="f32")
    assert explainer.linear_head is not None
    plain = save(plain_model(bundle), tmp_path / "plain.xml").with_suffix(".bin").stat().st_size
    x = random_images(bundle.preprocessing, 2, seed=4)
    for method in ("cam", "recipro"):
        path = save(fuse(bundle, method, raw=True), tmp_path / f"{method}.xml")
        assert path.with_suffix(".bin").stat().st_size - plain < 4096, method
        raw = outputs(compiled(path), {bundle.input_name: x})["saliency_raw"]
        expected = explainer.explain(x, method).maps
        assert np.abs(raw - expected).max() <= 1e-3 * np.abs(expected).max(), method


def _relu_after_pooling_bundle(tmp_path):
    """A classifier whose head has a ReLU after its pooling (no GAP → linear head), as IR, split with `auto`."""
    import onnx
    import openvino as ov
    from onnx import helper

    from cam_infer.bundle import split_openvino
    from conftest import tiny_cnn
    model = tiny_cnn(classes=3, seed=5)
    flatten = next(n for n in model.graph.node if n.op_type == "Flatten")
    flatten.output[0] = "flat_pre"
    model.graph.node.insert(list(model.graph.node).index(flatten) + 1,
                            helper.make_node("Relu", ["flat_pre"], ["flat"], name="relu_after_pool"))
    onnx.save(model, tmp_path / "relu.onnx")
    ov.save_model(ov.convert_model(str(tmp_path / "relu.onnx")), str(tmp_path / "relu.xml"), compress_to_fp16=False)
    return split_openvino(tmp_path / "relu.xml", "auto", tmp_path / "relu-bundle")


def test_what_an_ir_bundle_cannot_fuse_is_refused_in_one_line(ir_shapes, tmp_path):
    relu = _relu_after_pooling_bundle(tmp_path)
    with pytest.raises(MethodNotApplicable, match="linear layer; this IR head"):
        fuse(relu, "cam")
    fuse(relu, "recipro")                                           # the head on masked copies: fused
    with pytest.raises(CamInferError, match="should end in .xml"):
        save(fuse(ir_shapes, "activation"), tmp_path / "a.onnx")
    assert_one_line_error(run_cli("fuse", str(ir_shapes.path), "--out", str(tmp_path / "b.onnx")), "should end in .xml")
    assert_one_line_error(run_cli("fuse", str(relu.path), "--method", "cam", "--out", str(tmp_path / "c.xml")),
                          "linear layer; this IR head")
    assert not list(tmp_path.glob("b.*")) and not list(tmp_path.glob("c.*"))


def test_cli_fuse_of_an_ir_bundle_writes_ir_a_repository_and_a_bench_row(ir_shapes, tmp_path):
    from helpers import triton_config
    out = tmp_path / "m" / "shapes_recipro.xml"
    result = run_cli("fuse", str(ir_shapes.path), "--method", "recipro", "--out", str(out),
                     "--repository", str(tmp_path / "repo"))
    assert result.returncode == 0, result.stderr
    assert "outputs  scores [N,4], saliency [N,16,16], saliency_class [N]" in result.stdout
    assert out.is_file() and out.with_suffix(".bin").is_file()
    config = triton_config(tmp_path / "repo" / "shapes_recipro" / "config.pbtxt")
    assert config.backend == "openvino" and config.max_batch_size == 16
    assert [i.name for i in config.input] == [ir_shapes.input_name]
    assert [o.name for o in config.output] == ["scores", "saliency", "saliency_class"]
    assert list(config.output[1].dims) == [16, 16] and list(config.output[2].reshape.shape) == []
    stored = tmp_path / "repo" / "shapes_recipro" / "1" / "model.xml"
    x = random_images(ir_shapes.preprocessing, 2, seed=1)
    np.testing.assert_array_equal(outputs(compiled(stored), {ir_shapes.input_name: x})["saliency"],
                                  outputs(compiled(out), {ir_shapes.input_name: x})["saliency"])
    bench = run_cli("bench", str(ir_shapes.path), "--fused", "--method", "eigen", "--repeats", "2")
    assert bench.returncode == 0, bench.stderr
    assert "| openvino (f32) | eigen |" in bench.stdout


def test_a_fused_ir_is_served_as_it_computes(ir_shapes, tmp_path):
    """`cam-infer serve fused.xml`: a real tritonclient gets the fused IR's own outputs (FP32 and UINT8 pixels, the
    pixels normalised in OpenVINO's graph); ONNX Runtime is refused in one line."""
    from test_serve import Server, assert_same, triton_infer
    from tritonclient import http
    path = save(fuse(ir_shapes, "recipro"), tmp_path / "shapes_recipro.xml")
    x = random_images(ir_shapes.preprocessing, 2, seed=8)
    want = outputs(compiled(path), {ir_shapes.input_name: x})
    server = Server(path)
    try:
        client = server.client()
        meta = client.get_model_metadata("shapes_recipro")
        assert meta["parameters"]["method"] == "recipro" and meta["parameters"]["precision"] == "f32"
        assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [("scores", "FP32"), ("saliency", "FP32"),
                                                                       ("saliency_class", "INT64")]
        assert_same(triton_infer(client, x, model="shapes_recipro", input_name=ir_shapes.input_name), want)
        pixels = np.clip(np.round(x.transpose(0, 2, 3, 1) * 255), 0, 255).astype(np.uint8)
        tensor = http.InferInput(ir_shapes.input_name, list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
        result = client.infer("shapes_recipro", [tensor])
        standardised = np.stack([ir_shapes.preprocessing.standardise(p) for p in pixels])
        np.testing.assert_allclose(result.as_numpy("saliency"),
                                   outputs(compiled(path), {ir_shapes.input_name: standardised})["saliency"], atol=1e-4)
    finally:
        server.stop()
    assert_one_line_error(run_cli("serve", str(path), "--backend", "onnxruntime", timeout=120),
                          "is a fused OpenVINO IR: it runs on openvino")
