"""Fused models (`cam-infer fuse`): one ONNX model returns the scores and the saliency map.

The independent reference is the Explainer's low-resolution map of the same method on the same
runtime (NumPy code), normalised by `postprocess.normalise`; the scores must be the plain model's.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from conftest import REAL_MODELS, SHARED, STABLE_IMAGES, needs_shared, needs_torch
from helpers import assert_one_line_error, run_cli

from cam_infer import Bundle, CamInferError, Explainer, split_onnx
from cam_infer.tools.demo import embedded_bundle_path
from cam_infer.bundle.split import random_images
from cam_infer.fuse import FUSED, fuse, plain_model, save
from cam_infer.fuse.assemble import TOKEN_BUILDERS
from cam_infer.postprocess import normalise

VARIANTS = {  # name → (method, options)
    "activation": ("activation", {}), "entropy": ("entropy", {}),
    "entropy negentropy": ("entropy", {"weighting": "negentropy"}),
    "eigen": ("eigen", {}), "eigen centered": ("eigen", {"centered": True}), "cam": ("cam", {}),
    "recipro": ("recipro", {}), "recipro head passes": ("recipro", {"closed_form": False}),
    "recipro gaussian3 logit": ("recipro", {"kernel": "gaussian3", "score": "logit"}),
}
SHAPES = embedded_bundle_path()
RUNTIMES = ("onnxruntime", "openvino")
EXPLAINERS: dict = {}


def explainer_on(bundle, runtime: str) -> Explainer:
    key = (str(bundle.path), runtime)
    if key not in EXPLAINERS:
        EXPLAINERS[key] = Explainer(bundle, backend=runtime)
    return EXPLAINERS[key]


class Fused:
    """A fused model saved to disk and opened in a real ONNX Runtime or OpenVINO session."""

    def __init__(self, model: onnx.ModelProto, path, runtime: str):
        save(model, path, overwrite=True)
        self.runtime = runtime
        if runtime == "onnxruntime":
            import onnxruntime as ort
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        else:
            import openvino as ov
            core = ov.Core()
            self.session = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def run(self, feeds: dict) -> dict:
        """Outputs by name."""
        if self.runtime == "onnxruntime":
            return dict(zip([o.name for o in self.session.get_outputs()], self.session.run(None, feeds)))
        results = self.session(feeds)
        return {name: results[o] for o in self.session.outputs for name in o.get_names()}


def run_fused(model, path, runtime: str, feeds: dict) -> dict:
    return Fused(model, path, runtime).run(feeds)


def assert_same_maps(fused_raw: np.ndarray, fused: np.ndarray, raw: np.ndarray, message: str) -> None:
    """Raw maps within 1e-4 of their scale; normalised maps within 1e-3 plus the float32 rounding
    that min–max amplifies on maps whose range is small against their scale (saturated softmax)."""
    scale = np.maximum(np.abs(raw).max(axis=(1, 2), keepdims=True), 1e-30)
    assert (np.abs(fused_raw - raw) <= 1e-4 * scale).all(), \
        f"{message}: raw maps differ by {(np.abs(fused_raw - raw) / scale).max():.3g} of their scale"
    expected, _ = normalise(raw)
    positive = np.maximum(raw, 0)
    span = np.maximum(positive.max(axis=(1, 2), keepdims=True) - positive.min(axis=(1, 2), keepdims=True), 1e-30)
    tolerance = 1e-3 + 2e-4 * scale / span
    assert (np.abs(fused - expected) <= tolerance).all(), \
        f"{message}: normalised maps differ by {np.abs(fused - expected).max():.3g}"


def check_against_explainer(bundle, method, options, x, tmp_path, *, top_classes=1, class_input=False):
    """Fuse once; on each runtime run it on x and on x[:1] and compare with that runtime's Explainer."""
    model = fuse(bundle, method, top_classes=top_classes, class_input=class_input, raw=True, check=False, **options)
    explainer_options = {k: v for k, v in options.items() if k != "squarings"}
    specific = FUSED[method].class_specific
    for runtime in RUNTIMES:
        explainer = explainer_on(bundle, runtime)
        session = Fused(model, tmp_path / f"{method}_{runtime}.onnx", runtime)
        scores = explainer.backend.forward(x)
        feeds = {bundle.input_name: x}
        if class_input:
            feeds["class_id"] = scores.argsort(axis=1)[:, 0].astype(np.int64)       # the least likely class
        out = session.run(feeds)
        first = session.run({k: v[:1] for k, v in feeds.items()})
        np.testing.assert_allclose(out[bundle.manifest["output"]["name"]].reshape(scores.shape), scores,
                                   atol=1e-4 * max(1.0, float(np.abs(scores).max())), rtol=0)
        if specific and not class_input:
            np.testing.assert_array_equal(out["saliency_class"].reshape(len(x), top_classes),
                                          np.argsort(-scores, axis=1)[:, :top_classes])
        classes = feeds["class_id"] if class_input else out.get("saliency_class")
        classes = None if classes is None else classes.reshape(len(x), top_classes)
        shape = (-1, top_classes, *bundle.activation_shape[1:])
        for t in range(top_classes):
            target = classes[:, t] if specific else None
            raw = explainer.explain(x, method, target=target, **explainer_options).maps
            for got, n in ((out, len(x)), (first, 1)):
                assert_same_maps(got["saliency_raw"].reshape(shape)[:, t], got["saliency"].reshape(shape)[:, t],
                                 raw[:n], f"{method} {options} on {runtime}, batch {n}")
    return model


# --- every method on every reference architecture, both runtimes, batch 1 and 4 -----------------

ARCHITECTURES = {"resnet18": ({}, 64), "resnet50": ({}, 64), "vgg16": ({"hidden": 32}, 224),
                 "mobilenet_v2": ({}, 64), "densenet121": ({}, 64), "squeezenet1_1": ({}, 64),
                 "shapes_net": ({}, 128)}


@pytest.fixture(scope="module")
def reference_bundles(tmp_path_factory):
    made = {}

    def get(name):
        if name not in made:
            import torch

            import models
            from cam_infer import export_torch
            torch.manual_seed(0)
            kwargs, size = ARCHITECTURES[name]
            model = models.BUILDERS[name](num_classes=7, **kwargs)
            made[name] = export_torch(model, layer=models.CAM_LAYERS[name], input_size=(size, size),
                                      out=tmp_path_factory.mktemp("fuse") / name, exporter="legacy")
        return made[name]
    return get


LARGE = ("vgg16", "resnet50", "densenet121", "resnet18", "mobilenet_v2")   # behind --run-slow; squeezenet1_1 stays


@needs_torch
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n for n in ARCHITECTURES])
def test_fused_maps_equal_the_explainer_on_every_reference_architecture(reference_bundles, tmp_path, name):
    bundle = reference_bundles(name)
    linear = Explainer(bundle).linear_head is not None
    x4 = random_images(bundle.preprocessing, 4, seed=1)
    for variant, (method, options) in VARIANTS.items():
        if method == "cam" and not linear:
            with pytest.raises(CamInferError, match="needs a head that is global average pooling"):
                fuse(bundle, method)
            continue
        check_against_explainer(bundle, method, options, x4, tmp_path)      # and on x4[:1]


# --- real models, real photos ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    return {name: split_onnx(SHARED / "models" / name, out=root / name, preprocessing=prep)
            for name, (prep, _, _) in REAL_MODELS.items()} if SHARED.is_dir() else {}


@needs_shared
def test_vit_recipro_on_a_cnn_ending_in_softmax_says_it_needs_a_vision_transformer(real_bundles):
    """SqueezeNet ends in a softmax and is no token model: the refusal names what is missing first."""
    from cam_infer.errors import MethodNotApplicable
    with pytest.raises(MethodNotApplicable, match="fuses on vision transformers with prefix"):
        fuse(real_bundles["squeezenet1.1-fp32.onnx"], "vit-recipro")


@needs_shared
@pytest.mark.parametrize("model_file", list(REAL_MODELS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_maps_equal_the_explainer_on_real_models(real_bundles, tmp_path, model_file, variant):
    bundle = real_bundles[model_file]
    method, options = VARIANTS[variant]
    x = bundle.preprocess([SHARED / "images" / name for name in list(STABLE_IMAGES)[:4]])
    if options.get("score") == "logit" and bundle.output_kind == "probabilities":     # SqueezeNet
        with pytest.raises(CamInferError, match="score='logit' needs a model that outputs logits"):
            fuse(bundle, method, **options)
        return
    model = check_against_explainer(bundle, method, options, x, tmp_path)
    growth = model.ByteSize() / plain_model(bundle).ByteSize() - 1
    assert growth < 0.01, f"{variant}: the fused model is {growth:.2%} larger"


@needs_shared
def test_fused_scores_are_the_original_models_and_the_opset_7_model_is_converted(real_bundles, tmp_path):
    import onnxruntime as ort

    source = SHARED / "models" / "squeezenet1.1-fp32.onnx"
    assert onnx.load(source).opset_import[0].version == 7
    bundle = real_bundles["squeezenet1.1-fp32.onnx"]
    model = fuse(bundle, "recipro")
    x = bundle.preprocess([SHARED / "images" / name for name in STABLE_IMAGES])
    original = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    expected = np.concatenate([original.run(None, {original.get_inputs()[0].name: x[i:i + 1]})[0]
                               for i in range(len(x))])
    out = run_fused(model, tmp_path / "s.onnx", "onnxruntime", {bundle.input_name: x})
    np.testing.assert_allclose(out[bundle.manifest["output"]["name"]], expected, atol=1e-5)
    assert out["saliency_class"].tolist() == list(STABLE_IMAGES.values())


@needs_shared
def test_fused_eigen_is_the_exact_first_component_on_real_photos(real_bundles, tmp_path):
    """Power iteration with 10 squarings against the float64 eigendecomposition (the Explainer's)."""
    for bundle in real_bundles.values():
        x = bundle.preprocess([SHARED / "images" / name for name in STABLE_IMAGES])
        for centered in (False, True):
            out = run_fused(fuse(bundle, "eigen", centered=centered), tmp_path / "e.onnx", "onnxruntime",
                            {bundle.input_name: x})
            exact = normalise(Explainer(bundle).explain(x, "eigen", centered=centered).maps)[0]
            assert np.abs(out["saliency"] - exact).max() < 1e-4


def test_too_few_squarings_leave_an_error_that_the_check_refuses():
    """Zero squarings is one power step: far from converged where λ₂/λ₁ is near 1 (random images on
    the shapes model); ten squarings (1024 steps) converge there too. The check refuses the first."""
    from cam_infer.fuse.assemble import fused_error

    bundle = Bundle.load(SHAPES)
    x = random_images(bundle.preprocessing, 8, seed=0)
    errors = {s: fused_error(fuse(bundle, "eigen", squarings=s, check=False), bundle, "eigen", {}, x=x)
              for s in (0, 10)}
    assert errors[0] > 0.05 and errors[10] < 1e-5, errors
    with pytest.raises(CamInferError, match=r"differs from the explainer's by .* \(raise squarings=\)"):
        fuse(bundle, "eigen", squarings=0)


# --- choosing the class -------------------------------------------------------------------------

@pytest.mark.parametrize("method,options", [("cam", {}), ("recipro", {}), ("recipro", {"closed_form": False})])
def test_top_classes_and_class_input(tmp_path, method, options):
    bundle = Bundle.load(SHAPES)
    x = random_images(bundle.preprocessing, 3, seed=2)
    model = check_against_explainer(bundle, method, options, x, tmp_path, top_classes=3)
    shapes = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert shapes["saliency"] == ["N", 3, 16, 16] and shapes["saliency_class"] == ["N", 3]
    model = check_against_explainer(bundle, method, options, x, tmp_path, class_input=True)
    assert [i.name for i in model.graph.input] == [bundle.input_name, "class_id"]
    assert "saliency_class" not in {o.name for o in model.graph.output}


def test_fused_model_keeps_weights_shared_and_describes_itself():
    bundle = Bundle.load(SHAPES)
    plain = plain_model(bundle)
    for method in set(FUSED) - TOKEN_BUILDERS:            # vit-recipro fuses on transformers: tests/test_vit_recipro
        model = fuse(bundle, method)
        added = [t for t in model.graph.initializer if t.name not in {p.name for p in plain.graph.initializer}]
        assert sum(t.ByteSize() for t in added) < 2048, f"{method} stores constants it should compute"
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["cam_infer.method"] == method
        assert json.loads(meta["cam_infer.check"])["relative_difference"] < 1e-4
        # a class-agnostic map names no class it explains (before: "top-1", as a class-specific one)
        assert meta["cam_infer.target"] == ("top-1" if FUSED[method].class_specific else "class-agnostic"), method


def test_squarings_fuse_a_detectors_and_a_segmenters_eigen(tmp_path):
    """squarings= is the fused Eigen-CAM's own option (the power iteration in the graph): the check that compares a
    detector's or a segmenter's fused map with the explainer's handed it to the explainer, which refused it."""
    from importlib import resources

    from cam_infer.bundle.segmentation import split_segmenter
    from cam_infer.tools.demo import embedded_detector_path
    folder = resources.files("cam_infer") / "data" / "shapes_segmenter"
    segmenter = split_segmenter(str(folder / "shapes_segmenter.onnx"), out=tmp_path / "s")
    for bundle in (Bundle.load(embedded_detector_path()), segmenter):
        model = fuse(bundle, "eigen", squarings=12)
        assert json.loads({p.key: p.value for p in model.metadata_props}["cam_infer.options"]) == {"squarings": 12}


def test_the_fused_outputs_carry_their_public_names_on_openvino(tmp_path):
    """A classifier's `saliency_raw` and a segmenter's `saliency` were written by an Identity, whose output names
    OpenVINO merges into its input's: the compiled model's outputs were known as 'cam_infer/map_33' and
    'cam_infer/squeeze_169' (get_any_name), not by the names the guide gives. The last op now makes them."""
    from importlib import resources

    import openvino as ov

    from cam_infer.bundle.segmentation import split_segmenter
    folder = resources.files("cam_infer") / "data" / "shapes_segmenter"
    segmenter = split_segmenter(str(folder / "shapes_segmenter.onnx"), out=tmp_path / "s")
    core = ov.Core()
    for name, model, expected in (("classifier", fuse(Bundle.load(SHAPES), "recipro", raw=True),
                                   ["saliency", "saliency_raw", "saliency_class"]),
                                  ("segmenter", fuse(segmenter, "eigen"), ["saliency"])):
        save(model, tmp_path / f"{name}.onnx")
        compiled = core.compile_model(str(tmp_path / f"{name}.onnx"), "CPU")
        assert [o.get_any_name() for o in compiled.outputs][1:] == expected, name


def test_a_detectors_and_a_segmenters_fused_model_record_where_and_what_they_explain(tmp_path):
    """A fused detector or segmenter recorded no cam_infer.layer (and a detector no cam_infer.output_kind), which a
    classifier's records: now the cut (a detector's levels, comma-separated) and the kind of its outputs."""
    from importlib import resources

    from cam_infer.bundle.segmentation import split_segmenter
    from cam_infer.tools.demo import embedded_detector_path
    folder = resources.files("cam_infer") / "data" / "shapes_segmenter"
    segmenter = split_segmenter(str(folder / "shapes_segmenter.onnx"), out=tmp_path / "s")
    detector = Bundle.load(embedded_detector_path())
    for bundle in (detector, segmenter):
        meta = {p.key: p.value for p in fuse(bundle, "eigen").metadata_props}
        cut = bundle.manifest["target_layer"]["module"] or ",".join(bundle.layers)     # as a classifier records it
        assert meta["cam_infer.layer"] == cut, bundle.task
    assert len(detector.layers) > 1
    assert {p.key: p.value for p in fuse(detector, "eigen").metadata_props}["cam_infer.output_kind"] == "detections"


@pytest.mark.parametrize("call,message", [
    (lambda b: fuse(b, "score"), "cannot be fused into the model; choose one of: activation"),
    (lambda b: fuse(b, "eigen", steps=3), "has no option steps; its options: centered, squarings"),
    (lambda b: fuse(b, "eigen", squarings=-1), "squarings must be an integer in 0..30"),
    (lambda b: fuse(b, "entropy", estimator="histogram"), "supports estimator='spatial' only"),
    (lambda b: fuse(b, "entropy", weighting="more"), "weighting must be one of"),
    (lambda b: fuse(b, "activation", top_classes=2), "class-agnostic: top_classes and class_input do not apply"),
    (lambda b: fuse(b, "cam", top_classes=5), r"top_classes must be an integer in 1\.\.4, not 5"),
    (lambda b: fuse(b, "cam", top_classes=2, class_input=True), "either top_classes or class_input"),
    (lambda b: fuse(b, "recipro", kernel="box"), "kernel must be one of"),
])
def test_bad_fuse_requests_are_refused(call, message):
    with pytest.raises(CamInferError, match=message):
        call(Bundle.load(SHAPES))


# --- the command ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_fuse_writes_a_model_that_runs_on_both_runtimes(tmp_path):
    out = tmp_path / "m" / "shapes_cam.onnx"
    result = run_cli("fuse", str(SHAPES), "--method", "recipro", "--top-classes", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "outputs  scores (N,4), saliency (N,2,16,16), saliency_class (N,2)" in result.stdout
    bundle = Bundle.load(SHAPES)
    x = random_images(bundle.preprocessing, 5, seed=3)
    model = onnx.load(out)
    results = [run_fused(model, tmp_path / f"{r}.onnx", r, {bundle.input_name: x}) for r in RUNTIMES]
    np.testing.assert_allclose(results[0]["saliency"], results[1]["saliency"], atol=1e-3)
    assert results[0]["saliency"].shape == (5, 2, 16, 16)

    assert_one_line_error(run_cli("fuse", str(SHAPES), "--out", str(out)), "exists; choose another --out")
    assert_one_line_error(run_cli("fuse", str(SHAPES), "--method", "cam", "--option", "x=1", "--out",
                                  str(tmp_path / "x.onnx")), "fused method 'cam' has no option x")
    assert_one_line_error(run_cli("fuse", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y.onnx")),
                          "does not exist")
    assert_one_line_error(run_cli("fuse", str(SHAPES), "--out", str(tmp_path / "y.txt")), "should end in .onnx")
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.txt").exists()



def test_compare_fused_reports_its_own_ratio_and_file_growth(tmp_path):
    from cam_infer.tools.bench import compare_fused

    row = compare_fused(SHAPES, "openvino", "eigen", 3, tmp_path)
    assert row["ratio"] == row["fused"] / row["plain"] and row["plain"] > 0
    growth = (tmp_path / "fused.onnx").stat().st_size / (tmp_path / "plain.onnx").stat().st_size - 1
    assert row["growth"] == growth and 0 < growth < 0.05 and row["runtime"] == "openvino (f32)"
    from cam_infer.backends.sessions import openvino_core
    default = openvino_core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    for runtime, ran in (("openvino", default), ("onnxruntime", "f32")):
        assert compare_fused(SHAPES, runtime, "eigen", 1, tmp_path, precision="auto")["runtime"] == f"{runtime} ({ran})"


def test_bench_fused_times_fused_over_plain_on_both_runtimes():
    result = run_cli("bench", str(SHAPES), "--fused", "--method", "activation,cam", "--repeats", "2")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| onnxruntime") or
            line.startswith("| openvino")]
    assert [r.split("|")[1:3] for r in rows] == [[" onnxruntime (f32) ", " activation "], [" onnxruntime (f32) ", " cam "],
                                                 [" openvino (f32) ", " activation "], [" openvino (f32) ", " cam "]]
    assert_one_line_error(run_cli("bench", str(SHAPES), "--fused", "--method", "score"), "unknown fused case 'score'")


def _weight_name_clash(folder, head_edit=None) -> Bundle:
    """The tiny CNN's bundle with its features' last conv weight renamed ``fc_w``, the head weight's name (the join
    then renames the head's ``head/fc_w``); `head_edit` changes the head graph first."""
    from tiny_onnx import tiny_cnn

    from cam_infer.bundle.manifest import MANIFEST, sha256_of
    bundle = split_onnx(tiny_cnn(classes=5, seed=7), out=folder)
    if head_edit is not None:
        head = onnx.load(bundle.head_path)
        head_edit(head.graph)
        onnx.save(head, bundle.head_path)
    features = onnx.load(bundle.features_path)
    for init in features.graph.initializer:
        if init.name == "w3":
            init.name = "fc_w"
    for node in features.graph.node:
        node.input[:] = ["fc_w" if name == "w3" else name for name in node.input]
    onnx.save(features, bundle.features_path)
    manifest = json.loads((folder / MANIFEST).read_text())
    for role in ("features", "head"):
        manifest["graphs"][role]["sha256"] = sha256_of(getattr(bundle, f"{role}_path"))
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return Bundle.load(folder)


def _weight_in_a_constant_node(graph) -> None:
    weight = next(i for i in graph.initializer if i.name == "fc_w")
    graph.initializer.remove(weight)
    graph.node.insert(0, onnx.helper.make_node("Constant", [], ["fc_w"], value=weight))


def _relu_after_pooling(graph) -> None:
    gap = next(i for i, n in enumerate(graph.node) if n.op_type == "GlobalAveragePool")
    pooled = graph.node[gap].output[0]
    for node in graph.node[gap + 1:]:
        node.input[:] = ["pooled_relu" if name == pooled else name for name in node.input]
    graph.node.insert(gap + 1, onnx.helper.make_node("Relu", [pooled], ["pooled_relu"]))


def _fused_raw_map(bundle: Bundle, method: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    fused = fuse(bundle, method, raw=True)                                 # its own check passes, and its map:
    session = ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["saliency_raw"], {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("stored", ["initializer", "constant-node"])
def test_a_head_weight_renamed_in_the_join_is_read_under_its_new_name(tmp_path, stored):
    """When the features graph holds another tensor under the head weight's name, joining renames the head's
    (``head/<name>``), whether W is an initializer or a Constant node's output: fusing and the one-image pass read
    W from the renamed tensor, not the features graph's."""
    from cam_infer.bundle.joined import HEAD_PREFIX, head_as_joined, head_renames
    bundle = _weight_name_clash(tmp_path / "b", _weight_in_a_constant_node if stored == "constant-node" else None)
    explainer = Explainer(bundle, backend="openvino", precision="f32")
    head = explainer.linear_head
    assert head.source.weight == "fc_w"
    head_graph = onnx.load(bundle.head_path)
    moved, _ = head_as_joined(head, head_graph, head_renames(onnx.load(bundle.features_path), head_graph))
    assert moved.source.weight == HEAD_PREFIX + "fc_w" and moved.source.bias == head.source.bias
    x = random_images(bundle.preprocessing, 1, seed=4)
    in_pass = explainer.task.in_pass
    for method in ("cam", "ablation"):
        got = explainer.explain(x, method)
        assert in_pass._graphs[f"maps-{method}"] is not None                  # computed in the pass
        in_pass.possible = False
        general = explainer.explain(x, method)
        in_pass.possible = True
        np.testing.assert_allclose(got.maps, general.maps, rtol=0, atol=1e-5 * np.abs(general.maps).max())
    for method in ("cam", "recipro"):
        expected = explainer.explain(x, method).maps
        np.testing.assert_allclose(_fused_raw_map(bundle, method, x), expected, rtol=0,
                                   atol=1e-5 * np.abs(expected).max())


def test_a_copied_head_reads_its_renamed_weights(tmp_path):
    """Fused Recipro-CAM on a head that is not GAP → linear copies the head graph: the copy reads the weight the
    join renamed, not the features tensor of its old name (before: ONNX Runtime's own shape error)."""
    bundle = _weight_name_clash(tmp_path / "b", _relu_after_pooling)
    explainer = Explainer(bundle, backend="onnxruntime")
    assert explainer.linear_head is None
    x = random_images(bundle.preprocessing, 2, seed=5)
    expected = explainer.explain(x, "recipro").maps
    np.testing.assert_allclose(_fused_raw_map(bundle, "recipro", x), expected, rtol=0,
                               atol=1e-5 * np.abs(expected).max())


def _eigen_in_pass_model(k: int, h: int, w: int):
    """A graph of activations (N,K,h,w) → Eigen-CAM's in-pass map and its certificate (`eigen_in_pass`)."""
    from onnx import TensorProto, helper

    from cam_infer.fuse.builder import Builder
    from cam_infer.fuse.fusion import Fusion
    from cam_infer.methods.eigen import eigen_in_pass
    b = Builder(18)
    f = Fusion(b, "a", (k, h, w), None, 1, 1, "logits", None, None)
    b.op("Identity", eigen_in_pass(f), outputs=["map"])
    graph = helper.make_graph(b.nodes, "eigen", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", k, h, w])],
                              [helper.make_tensor_value_info("map", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("settled", TensorProto.BOOL, None)], b.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _with_spectrum(rng, k: int, hw: int, values) -> np.ndarray:
    """Activations O (hw×K) as (K,h·w) whose Gram matrix has the given leading eigenvalues (the rest 1e-3 of the
    first), from random orthonormal factors; the first right singular vector positive-summed."""
    n = min(k, hw)
    spectrum = np.full(n, values[0] * 1e-3)
    spectrum[:len(values)] = values
    u = np.linalg.qr(rng.standard_normal((hw, n)))[0]
    v = np.linalg.qr(rng.standard_normal((k, n)))[0]
    return ((u * np.sqrt(spectrum)) @ v.T).T


@pytest.mark.parametrize("k, h, w", [(40, 4, 4), (8, 5, 6)], ids=["by-position", "by-channel"])
def test_eigen_in_the_pass_is_settled_only_where_its_vector_is_within_the_tolerance(k, h, w, tmp_path):
    """The certificate of Eigen-CAM in the pass (`methods.eigen.eigen_in_pass`): on activations of known spectra,
    from a clear first component to λ₂ = λ₁, every map it settles is the exact first component (float64 eigenproblem)
    within √2·`IN_PASS_TOLERANCE`·σ₁ plus float32 rounding; an exact tie is never settled, a clear first component
    always, and ten squarings leave near-ties (λ₂/λ₁ ≥ 0.999) unsettled."""
    import onnxruntime as ort

    from test_kernels import numpy_first_component

    from cam_infer.methods.eigen import IN_PASS_TOLERANCE
    onnx.save(_eigen_in_pass_model(k, h, w), tmp_path / "e.onnx")
    session = ort.InferenceSession(str(tmp_path / "e.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    ratios = [0.1, 0.5, 0.9, 0.99, 0.995, 0.999, 0.9999, 1.0]
    cases = [(ratio, _with_spectrum(rng, k, h * w, [1.0, ratio, 0.3 * ratio])) for ratio in ratios for _ in range(6)]
    a = np.stack([o for _, o in cases]).reshape(len(cases), k, h, w).astype(np.float32)
    maps, settled = session.run(None, {"a": a})
    for (ratio, _), got, ok, cut in zip(cases, maps, settled.ravel(), a):
        if ok:
            exact = numpy_first_component(cut)
            error = np.abs(got - exact).max()
            assert error <= (np.sqrt(2) * IN_PASS_TOLERANCE + 1e-5) * np.linalg.norm(exact), (ratio, error)
        if ratio <= 0.5:
            assert ok, ratio
        if ratio >= 0.999:
            assert not ok, ratio
