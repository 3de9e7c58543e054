"""The model-randomisation sanity check (`cam_infer.audit.sanity`): which weights each step re-draws (against
the initializers), the randomised bundle against the randomised model file run whole, int8 draws within
range, and the check's verdict on MobileNetV2: recipro's maps change, an edge map of the input does not."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from conftest import SHARED, STABLE_IMAGES, needs_shared
from helpers import assert_one_line_error, run_cli, two_graph_pass

from cam_infer import split_onnx
from cam_infer.audit import AuditOptions, SanityOptions, run_audit
from cam_infer.audit.sanity import (
    SANITY_CSV,
    compared_means,
    depths,
    random_weights,
    randomised_bundle,
    run_sanity,
    sanity_line,
    step_layers,
    weight_layers,
    with_weights,
)
from cam_infer.errors import CamInferError
from cam_infer.methods import METHODS, method
from cam_infer.metrics.similarity import spearman, ssim
from tiny_onnx import tiny_cnn


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 5-layer CNN (a skip 1x1 conv beside two convs) with its bundle; its source model."""
    model = tiny_cnn(skip=True)
    return model, split_onnx(model, out=tmp_path_factory.mktemp("sanity") / "tiny")


def graphs_of(bundle):
    return [onnx.load(bundle.features_path), onnx.load(bundle.head_path)]


def initializers(bundle) -> dict:
    return {i.name: numpy_helper.to_array(i) for g in graphs_of(bundle) for i in g.graph.initializer}


def test_layers_are_the_weighted_nodes_counted_from_the_output(tiny):
    model, bundle = tiny
    layers = weight_layers(graphs_of(bundle))
    assert [layer.depth for layer in layers] == [1, 2, 3, 4, 5]
    assert layers[0].op == "Gemm" and layers[0].weights == ("fc_w", "fc_b")
    assert layers[-1].weights == ("w1", "b1")
    assert {w for layer in layers for w in layer.weights} == {"w1", "b1", "w2", "b2", "w3", "b3", "ws", "fc_w",
                                                              "fc_b"}
    assert depths(53, 8) == [7, 13, 20, 26, 33, 40, 46, 53] and depths(5, 8) == [1, 2, 3, 4, 5]
    assert depths(53, 1) == [53]


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_a_step_redraws_exactly_its_layers_and_the_cut_is_the_models(tiny, tmp_path, mode):
    model, bundle = tiny
    graphs = graphs_of(bundle)
    layers = weight_layers(graphs)
    before = initializers(bundle)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    for k in range(1, len(layers) + 1):
        chosen = step_layers(layers, mode, k)
        assert [layer.depth for layer in chosen] == (list(range(1, k + 1)) if mode == "cascading" else [k])
        weights = random_weights(graphs, chosen, seed=3)
        randomised = randomised_bundle(bundle, graphs, weights, tmp_path / f"{mode}{k}")
        after = initializers(randomised)
        changed = {n for n in before if not np.array_equal(before[n], after[n])}
        kernels = {layer.weights[0] for layer in chosen}
        assert kernels <= changed <= {w for layer in chosen for w in layer.weights}, (k, changed)
        assert all(after[n].dtype == before[n].dtype and after[n].shape == before[n].shape for n in before)
        # the randomised bundle is the randomised model file cut at the same tensor
        whole = ort.InferenceSession(with_weights(model, weights).SerializeToString(),
                                     providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
        np.testing.assert_allclose(two_graph_pass(randomised, x, "onnxruntime")[1], whole, rtol=1e-5, atol=1e-5)


def test_draws_are_seeded_per_layer_and_keep_the_spread(tiny):
    _, bundle = tiny
    graphs = graphs_of(bundle)
    layers = weight_layers(graphs)
    one, again, other = (random_weights(graphs, layers, seed) for seed in (0, 0, 1))
    alone = random_weights(graphs, [next(layer for layer in layers if "w2" in layer.weights)], 0)
    for name in one:
        np.testing.assert_array_equal(one[name], again[name])
    assert not np.array_equal(one["w3"], other["w3"])
    np.testing.assert_array_equal(alone["w2"], one["w2"])        # a layer is drawn the same in every step
    w = numpy_helper.to_array(next(i for i in graphs[0].graph.initializer if i.name == "w2"))
    assert one["w2"].std() == pytest.approx(w.std(), rel=0.15) and abs(one["w2"].mean()) < 0.2 * w.std()


@needs_shared
@pytest.mark.parametrize("file", ["derived_ppocr_cls_int8_qdq.onnx", "mobilenetv2-12-int8.onnx"])
def test_int8_weights_are_redrawn_within_their_range_keeping_scale_and_zero_point(file):
    model = onnx.load(SHARED / "deployed" / file)
    layers = weight_layers([model])
    assert len(layers) >= 50
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weights = random_weights([model], layers, 0)
    after = {i.name: numpy_helper.to_array(i) for i in with_weights(model, weights).graph.initializer}
    quantized = [n for n in weights if before[n].dtype in (np.int8, np.uint8)]
    assert len(quantized) >= 50
    for name in weights:
        old, new = before[name], after[name]
        assert new.dtype == old.dtype and new.shape == old.shape
        assert old.min() <= new.min() and new.max() <= old.max()
    for name in quantized:
        if before[name].size >= 64:
            assert not np.array_equal(before[name], after[name])
            assert after[name].std() == pytest.approx(before[name].std(), rel=0.35), name
    kept = set(before) - set(weights)         # scales, zero points, everything but the weights
    assert any("scale" in n for n in kept) and any("zero_point" in n for n in kept)
    assert all(np.array_equal(before[n], after[n]) for n in kept)


def sobel_edges(ctx):
    """edge magnitude of the input (independent of the model)"""
    _, _, h, w = ctx.activations.shape
    out = []
    for image in ctx.x:
        gray = image.mean(axis=0).astype(np.float32)
        edges = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
        out.append(cv2.resize(edges, (w, h), interpolation=cv2.INTER_AREA))
    return np.stack(out)


def noise_images(folder, n: int = 3):
    """A folder of n seeded 64×64 noise pictures."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 255, (64, 64, 3), np.uint8))
    return folder


@pytest.fixture
def sobel():
    method("sobel-edges", cost="1 feature pass", class_specific=False)(sobel_edges)
    yield "sobel-edges"
    del METHODS["sobel-edges"]


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("file", ["models/mobilenetv2-fp32-dequant.onnx", "deployed/mobilenetv2-12-int8.onnx"])
def test_the_check_can_fail_recipro_changes_an_edge_map_does_not(tmp_path, sobel, file):
    bundle = split_onnx(SHARED / file, out=tmp_path / "m")
    images = [SHARED / "images" / name for name in STABLE_IMAGES]
    result = run_sanity(bundle, images, AuditOptions(methods=("recipro", sobel)), SanityOptions(steps=1, images=9))
    final = {r["method"]: r for r in result["rows"] if r["mode"] == "cascading" and r["layers"] == 53}
    if "int8" in file:            # every recipro map of the randomised int8 file is constant: no image is compared
        assert (final["recipro"]["compared"], final["recipro"]["spearman"]) == (0, None)
    else:
        assert final["recipro"]["compared"] == 9 and abs(final["recipro"]["spearman"]) < 0.3
    assert final[sobel]["compared"] == 9 and final[sobel]["spearman"] > 0.99 and final[sobel]["ssim"] > 0.99
    assert result["flagged"] == [sobel]


def test_audit_sanity_writes_its_csv_summary_and_report_section(tiny, tmp_path, sobel):
    _, bundle = tiny
    folder = noise_images(tmp_path / "images")
    summary = run_audit(bundle.path, [folder], AuditOptions(methods=("recipro", sobel), metrics=("adcc",)),
                        tmp_path / "out", sanity=SanityOptions(steps=2, images=2), progress=False)
    rows = list(csv.DictReader(open(tmp_path / "out" / SANITY_CSV, newline="")))
    assert [(r["mode"], r["step"], r["method"]) for r in rows] == [
        (mode, k, m) for mode in ("cascading", "independent") for k in ("2", "5") for m in ("recipro", sobel)]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["sanity"]["flagged"] == summary["sanity"][
        "flagged"] == [sobel]
    page = (tmp_path / "out" / "index.html").read_text()
    assert "Sanity check: model randomisation" in page and "Flagged: sobel-edges" in page
    assert page.count("<polyline") == 4           # a curve per method and measure


@pytest.fixture
def flat_methods():
    """Two methods whose maps are flat: "constant-map" on every model; "flat-when-random" only on a randomised one
    (a ramp wherever the activations are the first model's, those of the trained model the check explains first)."""
    trained = []

    def constant_map(ctx):
        """one constant map"""
        return np.ones(ctx.activations.shape[:1] + ctx.activations.shape[2:], np.float32)

    def flat_when_random(ctx):
        """a ramp on the trained model, constant on a randomised one"""
        if not trained:
            trained.append(ctx.activations.copy())
        n, _, h, w = ctx.activations.shape
        ramp = np.broadcast_to(np.arange(h * w, dtype=np.float32).reshape(h, w), (n, h, w))
        return ramp if np.array_equal(ctx.activations, trained[0]) else np.ones((n, h, w), np.float32)

    for name, fn in (("constant-map", constant_map), ("flat-when-random", flat_when_random)):
        method(name, cost="1 feature pass", class_specific=False)(fn)
    yield "constant-map", "flat-when-random"
    del METHODS["constant-map"], METHODS["flat-when-random"]


def test_images_with_a_flat_map_on_either_side_are_left_out_of_the_similarities(tiny, tmp_path, flat_methods):
    """A flat map has no ranking: two constant maps had Spearman 1 (flagged as not depending on the model) and a
    constant map against a hot one SSIM 0.79 (read as alike); as in `cam-infer diff`, such images are not compared,
    the rows say how many were, and a method with none compared has no mean and no flag."""
    _, bundle = tiny
    folder = noise_images(tmp_path / "images")
    summary = run_audit(bundle.path, [folder], AuditOptions(methods=("recipro", *flat_methods), metrics=("adcc",)),
                        tmp_path / "out", sanity=SanityOptions(steps=2, images=3), progress=False)
    result = summary["sanity"]
    for row in result["rows"]:
        if row["method"] == "recipro":
            assert row["compared"] == 3 and row["spearman"] is not None and row["ssim"] is not None
        else:
            assert (row["compared"], row["spearman"], row["ssim"]) == (0, None, None), row
    assert result["final_spearman"]["constant-map"] is None and result["flagged"] == []
    rows = list(csv.DictReader(open(tmp_path / "out" / SANITY_CSV, newline="")))
    assert {(r["method"], r["images"], r["compared"], r["ssim"]) for r in rows if r["method"] != "recipro"} == {
        (m, "3", "0", "") for m in flat_methods}
    assert "Not judged: constant-map, flat-when-random" in (tmp_path / "out" / "index.html").read_text()
    line = sanity_line(result)
    assert "constant-map - (0 of 3 images compared: flat maps left out)" in line and "FLAGGED" not in line
    a, b = np.random.default_rng(1).random((2, 2, 7, 7))
    assert compared_means(a, b, np.array([True, False])) == {
        "compared": 1, "spearman": pytest.approx(spearman(a[1], b[1])), "ssim": pytest.approx(ssim(a[1], b[1]))}


def test_sanity_requests_it_cannot_do_are_one_line_errors(tiny, tmp_path):
    _, bundle = tiny
    (tmp_path / "i").mkdir()
    cv2.imwrite(str(tmp_path / "i" / "a.png"), np.zeros((64, 64, 3), np.uint8))
    assert_one_line_error(run_cli("audit", bundle.path, tmp_path / "i", "--methods", "recipro", "--sanity",
                                  "--sanity-steps", "0", "--out", tmp_path / "o"), "at least one step")
    with pytest.raises(CamInferError, match="no weight initializers"):
        run_sanity(constant_weights_bundle(tmp_path), [tmp_path / "i" / "a.png"], AuditOptions(methods=("recipro",)),
                   SanityOptions())


def constant_weights_bundle(tmp_path):
    """The tiny CNN with its weights in Constant nodes instead of initializers."""
    model = tiny_cnn()
    nodes = [onnx.helper.make_node("Constant", [], [i.name], value=i) for i in model.graph.initializer]
    nodes += list(model.graph.node)
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return split_onnx(model, out=tmp_path / "constants")


def test_detectors_and_openvino_ir_bundles_are_refused_in_one_line(tiny, tmp_path):
    import openvino as ov

    from cam_infer.bundle import split_model
    from cam_infer.tools.demo import embedded_detector_path

    model, _ = tiny
    (tmp_path / "i").mkdir()
    cv2.imwrite(str(tmp_path / "i" / "a.png"), np.zeros((64, 64, 3), np.uint8))
    assert_one_line_error(run_cli("audit", embedded_detector_path(), tmp_path / "i", "--sanity", "--out",
                                  tmp_path / "d"), "--sanity runs on classifiers")
    onnx.save(model, tmp_path / "tiny.onnx")
    ov.save_model(ov.convert_model(str(tmp_path / "tiny.onnx")), str(tmp_path / "tiny.xml"))
    ir = split_model(tmp_path / "tiny.xml", out=tmp_path / "ir")
    with pytest.raises(CamInferError, match="this bundle's graphs are OpenVINO IR: split the ONNX file instead"):
        run_audit(ir.path, [tmp_path / "i"], AuditOptions(methods=("recipro",)), tmp_path / "o",
                  sanity=SanityOptions())
