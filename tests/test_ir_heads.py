"""An OpenVINO IR classifier's head read as global average pooling → linear by running it (`bundle.head.
probed_linear_head`): the same weights its ONNX file's graph holds, CAM and the closed forms of Recipro-CAM and
Ablation-CAM equal to the ONNX bundle's, and refused exactly where the ONNX graph is not such a head."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from cam_infer import Bundle, Explainer
from cam_infer.bundle import split_onnx, split_openvino
from cam_infer.bundle.verify import random_images
from cam_infer.errors import MethodNotApplicable
from conftest import SHARED, SQUEEZENET_PREP, needs_shared, tiny_cnn
from test_fuse import SHAPES


def as_ir(model: onnx.ModelProto, folder):
    """`model` converted to an IR file (float32 weights) and split with `auto`, beside its ONNX bundle."""
    import openvino as ov
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    ov.save_model(ov.convert_model(str(folder / "model.onnx")), str(folder / "model.xml"), compress_to_fp16=False)
    return split_openvino(folder / "model.xml", "auto", folder / "ir"), split_onnx(folder / "model.onnx", "auto",
                                                                                   folder / "onnx")


@pytest.fixture(scope="module")
def shapes_pair(tmp_path_factory):
    from cam_infer.fuse import plain_model
    return as_ir(plain_model(Bundle.load(SHAPES)), tmp_path_factory.mktemp("shapes-ir"))


def test_an_ir_head_read_by_running_it_holds_the_onnx_graphs_weights(shapes_pair):
    ir, onnx_bundle = shapes_pair
    probed = Explainer(ir, backend="openvino").linear_head
    read = Explainer(onnx_bundle, backend="onnxruntime").linear_head
    assert probed is not None and probed.source.probed and not read.source.probed
    np.testing.assert_allclose(probed.weight, read.weight, rtol=0, atol=1e-6 * np.abs(read.weight).max())
    np.testing.assert_allclose(probed.bias, read.bias, rtol=0, atol=1e-6 * max(1.0, np.abs(read.bias).max()))


@pytest.mark.parametrize("method", ["cam", "recipro", "ablation"])
def test_closed_forms_on_an_ir_bundle_equal_the_onnx_bundles(shapes_pair, method):
    ir, onnx_bundle = shapes_pair
    x = random_images(ir.preprocessing, 3, seed=9)
    got = Explainer(ir, backend="openvino").explain(x, method)
    expected = Explainer(onnx_bundle, backend="openvino").explain(x, method)
    np.testing.assert_array_equal(got.targets, expected.targets)
    np.testing.assert_allclose(got.maps, expected.maps, rtol=0, atol=1e-5 * np.abs(expected.maps).max())
    masked = Explainer(ir, backend="openvino").explain(x, method, closed_form=False) if method != "cam" else None
    if masked is not None:                  # the closed form against the head run on masked copies: same maps
        np.testing.assert_allclose(got.maps, masked.maps, rtol=0, atol=1e-4 * np.abs(masked.maps).max())


def _relu_after_pooling() -> onnx.ModelProto:
    model = tiny_cnn(classes=5, seed=3)
    g = model.graph
    flatten = next(n for n in g.node if n.op_type == "Flatten")
    flatten.output[0] = "flat_pre"
    at = list(g.node).index(flatten) + 1
    g.node.insert(at, helper.make_node("Relu", ["flat_pre"], ["flat"], name="relu_after_pool"))
    return model


def _linear_without_pooling() -> onnx.ModelProto:
    """Flatten → Gemm on the whole (16,h,w) map: linear, but not in the pooled features."""
    model = tiny_cnn(classes=5, seed=4)
    g = model.graph
    gap = next(n for n in g.node if n.op_type == "GlobalAveragePool")
    flatten = next(n for n in g.node if n.op_type == "Flatten")
    g.node.remove(gap)
    flatten.input[0] = gap.input[0]
    gemm = next(n for n in g.node if n.op_type == "Gemm")
    weights = {t.name: t for t in g.initializer}
    fc = numpy_helper.to_array(weights[gemm.input[1]])
    spread = np.random.default_rng(1).standard_normal((fc.shape[0], fc.shape[1] * 16 * 16)).astype(np.float32) * 0.05
    weights[gemm.input[1]].CopyFrom(numpy_helper.from_array(spread, gemm.input[1]))
    return model


@pytest.mark.parametrize("make", [_relu_after_pooling, _linear_without_pooling], ids=["relu", "no-pooling"])
def test_a_head_that_is_not_pooling_then_linear_is_refused_on_ir_as_on_onnx(tmp_path, make):
    ir, onnx_bundle = as_ir(make(), tmp_path)
    assert Explainer(onnx_bundle, backend="onnxruntime").linear_head is None
    explainer = Explainer(ir, backend="openvino")
    assert explainer.linear_head is None
    with pytest.raises(MethodNotApplicable, match="global average pooling followed by a linear layer"):
        explainer.explain(random_images(ir.preprocessing, 1), "cam")
    x = random_images(ir.preprocessing, 2, seed=1)
    np.testing.assert_allclose(explainer.explain(x, "recipro").maps,                # head passes, as on ONNX
                               Explainer(onnx_bundle, backend="openvino").explain(x, "recipro").maps, atol=1e-5)


def _batch_bound(batch: int = 1) -> onnx.ModelProto:
    """A model of a fixed batch whose features mix the batch (2·A − mean over the batch: A itself at batch 1), so
    its split keeps the batch fixed: its IR head runs one row per call at batch 1."""
    model = tiny_cnn(batch=batch, classes=5, seed=6)
    g = model.graph
    for node in g.node:
        node.input[:] = ["bound" if name == "relu1" else name for name in node.input]
    at = next(i for i, n in enumerate(g.node) if n.output[0] == "relu1") + 1
    g.node.insert(at, helper.make_node("ReduceMean", ["relu1"], ["batch_mean"], axes=[0], keepdims=1))
    g.node.insert(at + 1, helper.make_node("Sub", ["relu1", "batch_mean"], ["centred"]))
    g.node.insert(at + 2, helper.make_node("Add", ["relu1", "centred"], ["bound"]))
    return model


def test_a_fixed_batch_ir_head_is_read_one_row_per_call_and_the_closed_forms_match_onnx(tmp_path):
    """A head compiled for batch 1 cannot take the probe's many rows at once: it is probed row by row (before, the
    Explainer failed with OpenVINO's own error), and the one-image pass computes the map as the general path does."""
    ir, onnx_bundle = as_ir(_batch_bound(), tmp_path)
    assert ir.manifest["batch"] == "fixed" and ir.fixed_batch == 1
    explainer = Explainer(ir, backend="openvino", precision="f32")
    read = Explainer(onnx_bundle, backend="onnxruntime").linear_head
    assert explainer.linear_head is not None and explainer.linear_head.source.probed
    np.testing.assert_allclose(explainer.linear_head.weight, read.weight, rtol=0, atol=1e-6 * np.abs(read.weight).max())
    x = random_images(ir.preprocessing, 3, seed=2)
    for method in ("cam", "recipro", "ablation"):
        got = explainer.explain(x, method)
        expected = Explainer(onnx_bundle, backend="onnxruntime").explain(x, method)
        np.testing.assert_array_equal(got.targets, expected.targets)
        np.testing.assert_allclose(got.maps, expected.maps, rtol=0, atol=1e-5 * np.abs(expected.maps).max())
    in_pass = explainer.task.in_pass
    assert in_pass.possible
    one = explainer.explain(x[:1], "cam")
    assert in_pass._graphs.get("maps-cam") is not None                     # computed in the pass
    in_pass.possible = False
    general = explainer.explain(x[:1], "cam")
    np.testing.assert_array_equal(one.targets, general.targets)
    np.testing.assert_allclose(one.maps, general.maps, rtol=0, atol=1e-5 * np.abs(general.maps).max())


@pytest.mark.parametrize("method", ["cam", "recipro"])
def test_fusing_a_fixed_batch_bundle_checks_it_in_calls_of_its_batch(tmp_path, method):
    """`fuse` checks the fused model against the Explainer on two images; a bundle kept at batch 1 takes them one
    call each (before: ONNX Runtime's or OpenVINO's own error about the batch). The fused model, run at its batch,
    draws the Explainer's map on ONNX and on IR."""
    import onnxruntime as ort
    from cam_infer.fuse import fuse
    from cam_infer.fuse.ir import run
    ir, onnx_bundle = as_ir(_batch_bound(), tmp_path)
    assert ir.fixed_batch == 1 and not onnx_bundle.dynamic_batch and onnx_bundle.fixed_batch == 1
    x = random_images(ir.preprocessing, 1, seed=7)
    fused_onnx = fuse(onnx_bundle, method, raw=True)
    session = ort.InferenceSession(fused_onnx.SerializeToString(), providers=["CPUExecutionProvider"])
    fused_ir = fuse(ir, method, raw=True)
    maps = {"onnx": session.run(["saliency_raw"], {onnx_bundle.input_name: x})[0],
            "ir": run(fused_ir, {ir.input_name: x}, "f32")["saliency_raw"]}
    expected = Explainer(onnx_bundle, backend="onnxruntime").explain(x, method).maps
    for got in maps.values():
        np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_a_fused_model_of_batch_two_is_checked_in_padded_calls_of_two(tmp_path):
    """Five images through a bundle kept at batch 2: three calls, the last padded with a zero image, the rows past
    the fifth dropped; with the class as an input (padded too) and two classes per image. The features mix the
    batch, so the fused maps equal the Explainer's only when both group the images alike, as they do."""
    from cam_infer.bundle import split_onnx
    from cam_infer.fuse import fuse
    from cam_infer.fuse.assemble import fused_error
    onnx.save(_batch_bound(2), tmp_path / "model.onnx")
    bundle = split_onnx(tmp_path / "model.onnx", "auto", tmp_path / "b")
    assert bundle.manifest["batch"] == "fixed" and bundle.fixed_batch == 2
    x = random_images(bundle.preprocessing, 5, seed=1)
    for method, options in (("recipro", {"class_input": True}), ("cam", {"top_classes": 2})):
        model = fuse(bundle, method, raw=True, **options)
        error = fused_error(model, bundle, method, {}, options.get("class_input", False), x=x)
        assert error < 1e-5, (method, error)


@needs_shared
def test_an_ir_ending_in_softmax_then_a_reshape_reads_probabilities_and_fuses_recipro(tmp_path):
    """SqueezeNet's IR ends in Softmax, then a Reshape to (N, 1000, 1, 1): its scores are probabilities, as its ONNX
    file's are (before: recorded as logits and given a second softmax, every score near 1/1000 and a constant
    map), and fused Recipro-CAM reads the scores as (N, 1000) (before: OpenVINO's GatherElements rank error)."""
    import openvino as ov

    from cam_infer.fuse import fuse
    from cam_infer.fuse.ir import run
    source = SHARED / "models" / "squeezenet1.1-fp32.onnx"
    ov.save_model(ov.convert_model(str(source)), str(tmp_path / "squeezenet.xml"), compress_to_fp16=False)
    ir = split_openvino(tmp_path / "squeezenet.xml", "auto", tmp_path / "ir", preprocessing=SQUEEZENET_PREP)
    onnx_bundle = split_onnx(source, "auto", tmp_path / "onnx", preprocessing=SQUEEZENET_PREP)
    assert ir.output_kind == onnx_bundle.output_kind == "probabilities"
    explainer = Explainer(ir, backend="openvino", precision="f32")
    x = explainer._inputs([SHARED / "images" / "chelsea.png"])[0]
    got = explainer.explain(x, "recipro")
    expected = Explainer(onnx_bundle, backend="onnxruntime").explain(x, "recipro")
    assert got.targets[0] == expected.targets[0] == 285
    np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.maps, expected.maps, rtol=0, atol=1e-4 * np.abs(expected.maps).max())
    fused = run(fuse(ir, "recipro", raw=True), {ir.input_name: x})
    np.testing.assert_allclose(fused["saliency_raw"].reshape(got.maps.shape), got.maps, rtol=0,
                               atol=1e-5 * np.abs(got.maps).max())


def _fake_quantized_head(out_high: float = 6.0):
    """An IR head Parameter (1,4,2,2) → FakeQuantize [0,6] → [0,out_high] → ReduceMean → MatMul (weight through a
    FakeQuantize of its own) → Add → FakeQuantize [-8,8] (256 levels) → Result."""
    import openvino as ov
    import openvino.opset13 as ops

    def fq(value, low, high, out_low, out_high_):
        return ops.fake_quantize(value, *(np.float32(v) for v in (low, high, out_low, out_high_)), 256)

    a = ops.parameter([1, 4, 2, 2], np.float32)
    pooled = ops.reduce_mean(fq(a, 0, 6, 0, out_high), np.array([2, 3], np.int64), keep_dims=False)
    weight = fq(ops.constant(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)), -3, 3, -3, 3)
    logits = ops.add(ops.matmul(pooled, weight, False, False), ops.constant(np.ones((1, 3), np.float32)))
    return ov.Model([ops.result(fq(logits, -8, 8, -8, 8))], [a])


def test_an_ir_head_is_read_through_its_fake_quantize_ops_only_where_they_only_round():
    """`bundle.openvino_head`: the FakeQuantize ops on the data path are passed over (one on a weight is kept: it
    rounds the weight as the runtime does); one that rescales its range leaves the head unread; the logits' step is
    their FakeQuantize's (16/255); a float head does not round."""
    import openvino as ov

    from cam_infer.bundle.openvino_head import float_head, rounds
    from cam_infer.bundle.openvino_split import logits_step
    head = _fake_quantized_head()
    assert rounds(head) and logits_step(head) == pytest.approx(16 / 255)
    floated = float_head(head)
    kinds = [op.get_type_name() for op in floated.get_ordered_ops()]
    assert kinds.count("FakeQuantize") == 1 and not rounds(floated)        # the weight's, on a constant
    assert len([op for op in head.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]) == 3   # not changed
    a = np.random.default_rng(1).uniform(0, 5, (1, 4, 2, 2)).astype(np.float32)
    compiled = ov.Core().compile_model(floated, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    rounded = np.round((np.random.default_rng(0).standard_normal((4, 3)).clip(-3, 3) + 3) / 6 * 255) / 255 * 6 - 3
    np.testing.assert_allclose(compiled(a)[0], a.mean(axis=(2, 3)) @ rounded + 1, rtol=1e-5, atol=1e-5)
    assert float_head(_fake_quantized_head(out_high=3.0)) is None


def _convolution_head() -> onnx.ModelProto:
    """GAP → 1×1 Conv (the classifier as a TFLite float model writes it) → Flatten: no MatMul of the IR holds W."""
    model = tiny_cnn(classes=5, seed=7)
    g = model.graph
    weights = {t.name: t for t in g.initializer}
    fc = numpy_helper.to_array(weights["fc_w"])
    g.initializer.append(numpy_helper.from_array(fc.reshape(*fc.shape, 1, 1), "fc_w_conv"))
    for node in [n for n in g.node if n.op_type in ("Flatten", "Gemm")]:
        g.node.remove(node)
    g.node.extend([helper.make_node("Conv", ["pooled", "fc_w_conv", "fc_b"], ["scores4"], name="fc_conv"),
                   helper.make_node("Flatten", ["scores4"], ["logits"], name="flatten")])
    return model


def test_a_head_whose_ir_holds_w_in_no_matmul_gets_the_closed_forms_in_the_pass_and_fused(tmp_path):
    """An IR head GAP → 1×1 Convolution: read by running it, and W and b, which no MatMul constant of the IR holds, read
    from the Convolution's filters (C,K,1,1) and its added bias, as (C,K) and (C,), by the graph of the one-image pass
    and the fused IR (before: the pass took the general path for CAM and Ablation-CAM, and fuse refused CAM; then
    W and b were added as read, a float32 copy). The maps equal the general path's and the ONNX bundle's."""
    import openvino as ov

    from cam_infer.fuse import fuse, save
    from cam_infer.fuse.ir_graph import HEAD_WEIGHT, head_tensors
    from cam_infer.postprocess import normalise
    ir, onnx_bundle = as_ir(_convolution_head(), tmp_path)
    explainer = Explainer(ir, backend="openvino", precision="f32")
    assert explainer.linear_head is not None
    found = head_tensors(ov.Core().read_model(str(ir.head_path)), explainer.linear_head)
    assert found is not None and found["transposed"] is False
    assert found[HEAD_WEIGHT].get_node().get_type_name() == "Reshape"        # the filters as (C, K)
    x = random_images(ir.preprocessing, 2, seed=3)
    in_pass = explainer.task.in_pass
    for method in ("cam", "ablation"):
        expected = Explainer(onnx_bundle, backend="onnxruntime").explain(x, method)
        for i in range(len(x)):
            e = explainer.explain(x[i:i + 1], method)
            assert in_pass._graphs.get(f"maps-{method}") is not None            # the in-pass graph was built and ran
            np.testing.assert_array_equal(e.targets, expected.targets[i:i + 1])
            np.testing.assert_allclose(e.maps[0], expected.maps[i], rtol=0, atol=1e-5 * np.abs(expected.maps[i]).max())
    path = save(fuse(ir, "cam"), tmp_path / "cam.xml")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = {n: v for o, v in compiled(x).items() for n in o.get_names()}
    cam = explainer.explain(x, "cam")
    np.testing.assert_array_equal(got["saliency_class"], cam.targets)
    np.testing.assert_allclose(got["saliency"], normalise(cam.maps.copy())[0], atol=1e-4)


def test_the_cost_line_without_a_runtime_bounds_what_an_ir_head_costs(shapes_pair):
    """An audit whose workers run the images announces its cost without opening a runtime. An IR head is read
    by running it, so the line cannot know whether the closed forms will apply: it gives the head passes as a
    bound ("≤"), which the passes run do not exceed. Before, it announced head passes as certain, and the workers
    ran the closed form."""
    from test_cost import counting, model_and_head_rows

    from cam_infer.cost import classifier_plan, reads_linear_head
    from cam_infer.enhancers import variants
    ir, onnx_bundle = shapes_pair
    assert reads_linear_head(ir) is None and reads_linear_head(onnx_bundle) is True
    methods = ["recipro", "ablation", "activation"]
    bounded = {c.name: c.per_image for c in classifier_plan(ir, variants(methods), {}, None)}
    known = {c.name: c.per_image for c in classifier_plan(onnx_bundle, variants(methods), {}, True)}
    assert bounded["recipro"].bound and bounded["recipro"].head > 0 and bounded["recipro"].describe().startswith("≤ ")
    assert not bounded["activation"].bound and bounded["activation"].counts() == known["activation"].counts()
    explainer = Explainer(ir, backend="openvino")
    rows = counting(explainer.backend)
    x = random_images(ir.preprocessing, 1, seed=3)
    for method in ("recipro", "ablation"):
        rows.clear()
        explainer.explain(x, method)
        model, head = model_and_head_rows(rows)
        assert (model, head) == (known[method].model, known[method].head) == (1, 0), (method, rows)
        assert model <= bounded[method].model and head <= bounded[method].head
