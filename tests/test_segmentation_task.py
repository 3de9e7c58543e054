"""The segmentation task: reading a segmenter's scores, the cut, targets and regions, the methods on the region
score against independent computations (the unsplit model, the head graph), and bad input."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cam_infer import Explainer
from cam_infer.bundle.segmentation import split_segmenter
from cam_infer.errors import CamInferError
from cam_infer.metrics.segmentation import energy_in_region, uniform_baseline
from cam_infer.tools.synthetic import SPLITS, scene, segmentation_labels
from conftest import SHARED, needs_shared
from helpers import assert_one_line_error, full_size_region_scores, run_cli

OWN = Path(str(resources.files("cam_infer") / "data" / "shapes_segmenter" / "shapes_segmenter.onnx"))
OWN_LABELS = ["background", "circle", "square", "triangle", "cross"]
PAN = SHARED / "segmentation" / "pan_mnv3s_skin_clothes_hair.onnx"
PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


@pytest.fixture(scope="session")
def own_bundle(tmp_path_factory):
    return split_segmenter(OWN, out=tmp_path_factory.mktemp("seg") / "own", labels=OWN_LABELS, preprocessing=PLAIN)


@pytest.fixture(scope="session")
def own(own_bundle):
    return Explainer(own_bundle, backend="onnxruntime", precision="f32")


def test_own_segmenter_is_read_and_cut_at_the_decoder(own_bundle):
    m = own_bundle.manifest
    assert m["task"] == "segmentation" and m["target_layer"]["module"] == "decoder"
    assert m["output"]["kind"] == "logits" and m["output"]["class_axis"] == 1 and m["output"]["shape"] == [5, 128, 128]
    assert not m["output"]["ends_in_argmax"]


def nhwc_argmax_model(classes: int = 4) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """A TensorFlow-style segmenter: NHWC float input → Conv (NCHW inside) → 3×3 Conv to class logits → bilinear
    ×2 → NHWC → ArgMax over the last axis (class ids)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((classes, 8, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["features"]),
             helper.make_node("Conv", ["features", "w2"], ["logits"]),
             helper.make_node("Resize", ["logits", "", "scales"], ["up"], mode="linear"),
             helper.make_node("Transpose", ["up"], ["up_nhwc"], perm=[0, 2, 3, 1]),
             helper.make_node("ArgMax", ["up_nhwc"], ["ids"], axis=3, keepdims=0)]
    graph = helper.make_graph(nodes, "seg", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 16, 16, 3])],
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 16, 16])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
                               numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), w1, w2


def test_an_argmax_ending_nhwc_model_is_explained_on_the_scores_before_the_argmax(tmp_path):
    import onnxruntime as ort

    model, _, _ = nhwc_argmax_model()
    bundle = split_segmenter(model, out=tmp_path / "b", preprocessing=PLAIN)
    out = bundle.manifest["output"]
    assert (out["ends_in_argmax"], out["model_layout"], out["model_class_axis"], out["shape"]) == \
        (True, "NHWC", 3, [4, 16, 16])
    x = np.random.default_rng(1).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    e = Explainer(bundle, backend="onnxruntime", precision="f32")
    scores = e.backend.forward(x)
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    cut.graph.output[0].CopyFrom(helper.make_tensor_value_info("up_nhwc", TensorProto.FLOAT, None))
    expected = ort.InferenceSession(cut.SerializeToString()).run(None, {"image": x.transpose(0, 2, 3, 1)})[0]
    np.testing.assert_allclose(scores, expected.transpose(0, 3, 1, 2), atol=1e-5)
    assert e.task.tail is not None                                  # 1×1 conv then bilinear: a linear tail


def test_a_model_whose_output_is_not_class_scores_is_refused(tmp_path, tiny_onnx_path):
    with pytest.raises(CamInferError, match=r"not class scores per pixel"):
        split_segmenter(tiny_onnx_path, out=tmp_path / "b")
    assert_one_line_error(run_cli("split", tiny_onnx_path, "--task", "segmentation", "--out", tmp_path / "c"),
                          "not class scores per pixel")


def own_scenes(count: int):
    for k in range(count):
        s = scene(SPLITS[k % len(SPLITS)], 1, k)
        yield s.image, segmentation_labels(s)


def test_recipro_puts_its_energy_in_the_ground_truth_region_of_each_class(own):
    """Our own segmenter, every non-background class present, maps at the input against its label image."""
    checked = 0
    for image, truth in own_scenes(4):
        for item in own.explain(image, method="recipro", target="all").items[0]:
            region = truth == item.class_id
            if region.sum() < 300:                       # a few stray pixels: no region to measure against
                continue
            energy = energy_in_region(item.saliency, region)
            assert energy > 3 * uniform_baseline(region), (item.label, energy)
            if region.sum() >= 1000:                     # smaller shapes are 7 cells wide at the cut: the
                assert energy >= 0.5, (item.label, energy)   # upsampled map spills over their outline
            checked += 1
    assert checked >= 3


def assert_shortcut_exact(explainer, image, target):
    for score in ("prob", "logit"):
        fast = explainer.explain(image, method="recipro", target=target, score=score)
        full = explainer.explain(image, method="recipro", target=target, score=score, shortcut=False)
        for a, b in zip(fast.items[0], full.items[0]):
            np.testing.assert_allclose(a.raw, b.raw, atol=1e-6 * max(1.0, np.abs(b.raw).max()))


def test_the_linear_tail_shortcut_equals_the_head_passes(tmp_path):
    bundle = split_segmenter(nhwc_argmax_model()[0], out=tmp_path / "b", preprocessing=PLAIN)
    explainer = Explainer(bundle, backend="onnxruntime", precision="f32")
    assert explainer.task.tail is not None
    image = np.random.default_rng(2).integers(0, 2, (16, 16, 3), dtype=np.uint8)
    assert_shortcut_exact(explainer, image, "all")


@pytest.mark.slow
def test_the_linear_tail_shortcut_equals_the_head_passes_on_our_segmenter(own):
    assert_shortcut_exact(own, next(own_scenes(1))[0], "all")


def cut_model(path: Path, cut: str) -> onnx.ModelProto:
    """The unsplit model from `cut` to its output, by ONNX's own extractor (not cam-infer's cut)."""
    from onnx.utils import Extractor
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    return Extractor(model).extract_model([cut], [model.graph.output[0].name])


def brute_force_region_scores(own_bundle, image, class_id, region, rows) -> np.ndarray:
    """(1/|R|) Σ_{p∈R} logits_c(p) of the original model's tail on each row of the cut."""
    import onnxruntime as ort
    cut = own_bundle.manifest["target_layer"]["tensor"]
    session = ort.InferenceSession(cut_model(OWN, cut).SerializeToString(), providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(None, {cut: rows[i:i + 64]})[0] for i in range(0, len(rows), 64)])
    return logits[:, class_id][:, region].mean(axis=1)


def test_recipro_and_ablation_match_a_brute_force_on_the_unsplit_model(own, own_bundle):
    """Every perturbation of the cut recomputed through the original model's tail, region score by NumPy."""
    image, _ = next(own_scenes(1))
    x = own.preprocess([image])
    item = own.explain(image, method="recipro", score="logit", target="square").items[0][0]
    a = own.backend.features(x)[0]
    k, h, w = a.shape
    kept = np.zeros((h * w, k, h, w), np.float32)
    for q in range(h * w):
        kept[q, :, q // w, q % w] = a[:, q // w, q % w]
    expected = brute_force_region_scores(own_bundle, image, item.class_id, item.region, kept).reshape(h, w)
    np.testing.assert_allclose(item.raw, expected, atol=1e-4 * np.abs(expected).max())

    ablation = own.explain(image, method="ablation", target="square").items[0][0]
    rows = np.repeat(a[None], k + 1, axis=0)
    for c in range(k):
        rows[c + 1, c] = 0
    scores = brute_force_region_scores(own_bundle, image, item.class_id, item.region, rows)
    weights = (scores[0] - scores[1:]) / abs(scores[0])
    np.testing.assert_allclose(ablation.raw, np.einsum("k,khw->hw", weights, a), rtol=1e-4,
                               atol=1e-5 * np.abs(ablation.raw).max())


def test_targets_regions_and_their_refusals(own):
    image, truth = next(own_scenes(1))
    default = own.explain(image, method="recipro").items[0]
    present = own.explain(image, method="recipro", target="all").items[0]
    assert [d.class_id for d in default] == [max(present, key=lambda d: d.pixels).class_id]
    assert all(d.label != "background" for d in present)
    box = own.explain(image, method="recipro", target="square", region=[10, 10, 40, 30]).items[0][0]
    assert box.pixels == 30 * 20 and box.region[10:30, 10:40].all()
    pixel = own.explain(image, method="recipro", target=2, region=(5, 7)).items[0][0]
    assert pixel.pixels == 1 and pixel.region[7, 5]
    mask = truth == 2
    given = own.explain(image, method="recipro", target=2, region=mask).items[0][0]
    assert (given.region == mask).all()
    absent = next(c for c in range(1, 5) if c not in {d.class_id for d in present})
    with pytest.raises(CamInferError, match=r"is not in the image \(classes present: background \(0\), .*square"):
        own.explain(image, method="recipro", target=absent)
    with pytest.raises(CamInferError, match="give a mask of the image's size"):
        own.explain(image, method="recipro", region=np.ones((64, 64), bool))
    soft = np.where(mask, 0.95, 0.02).astype(np.float32)           # every pixel non-zero: it was the whole image
    with pytest.raises(CamInferError, match=r"a soft mask\? threshold it \(mask > 0.5\)"):
        own.explain(image, method="recipro", target=2, region=soft)
    as_float = own.explain(image, method="recipro", target=2, region=mask.astype(np.float32)).items[0][0]
    assert (as_float.region == mask).all()
    blank = np.broadcast_to(image[:1, :1], image.shape).copy()    # the scene's backdrop alone: say how to go on
    with pytest.raises(CamInferError, match=r"no pixel of the image is assigned a class .* name a class and a region"):
        own.explain(blank, method="recipro", target="all")


def test_region_is_refused_on_a_classifier(tiny_bundle):
    x = np.zeros((1, *tiny_bundle.input_shape), np.float32)
    with pytest.raises(CamInferError, match="region= does not apply"):
        Explainer(tiny_bundle, backend="onnxruntime").explain(x, region=[1, 1, 5, 5])


def test_class_agnostic_maps_carry_no_class_name_but_say_whose_region_they_are_measured_on(own):
    for image, _ in own_scenes(8):                                  # a scene where the model sees two classes
        _, scores = own.backend.observe(own.bundle.preprocessing(image)[None])
        ids = np.argmax(scores[0], axis=0)                           # the model's own classes, in NumPy
        present = [int(c) for c in np.unique(ids) if own.bundle.labels[c] != "background"]
        if len(present) >= 2:
            break
    assert len(present) >= 2
    for method in ("activation", "eigen", "entropy"):
        explanation = own.explain(image, method=method, target="all")
        assert explanation.class_agnostic
        records = explanation.records()[0]
        assert all("label" not in r and "class_id" not in r for r in records)
        assert [r["region_class_id"] for r in records] == present
        assert [r["region_label"] for r in records] == [own.bundle.labels[c] for c in present]
        for r, c in zip(records, present):
            assert r["region_pixels"] == int(np.count_nonzero(ids == c))
            assert r["score"] == pytest.approx(float(scores[0, c][ids == c].mean()), abs=1e-4)



@pytest.fixture(scope="session")
def own_ir_bundle(tmp_path_factory):
    """Our segmenter converted to OpenVINO IR, split as an IR bundle (its two graphs joined by the in-pass graph)."""
    import openvino as ov

    from cam_infer.bundle.openvino_segmentation import split_openvino_file
    folder = tmp_path_factory.mktemp("seg-ir")
    ov.save_model(ov.convert_model(str(OWN)), str(folder / "own.xml"), compress_to_fp16=False)
    return split_openvino_file(folder / "own.xml", out=folder / "bundle", labels=OWN_LABELS, preprocessing=PLAIN)


@pytest.mark.parametrize("kind", ["onnx", "ir"])
def test_class_agnostic_maps_computed_in_the_pass_equal_the_general_path(own_bundle, own_ir_bundle, kind):
    """On OpenVINO one image's activation, entropy or Eigen-CAM map is computed inside the clean pass
    (`tasks.in_pass`): one call returns the scores and the map, the cut stays in the runtime. The same scores bit for
    bit, so the same targets and regions, whatever target and region are asked; the map equal to the general path's
    and to a float64 twin on the cut; a batch or options take the general path. On the ONNX bundle and on the same
    model's IR bundle."""
    from test_kernels import numpy_first_component, numpy_spatial_entropy

    ex = Explainer(own_bundle if kind == "onnx" else own_ir_bundle, backend="openvino", precision="f32")
    in_pass = ex.task.in_pass
    images = [image for image, _ in own_scenes(2)]
    assert not in_pass.applies("eigen", 1, {}, {"centered": True}) and not in_pass.applies("activation", 2, {}, {})
    assert not in_pass.applies("entropy", 1, {}, {"estimator": "histogram"})
    for image in images:
        a = ex.backend.features(ex.preprocess([image]))[0].astype(np.float64)
        for method, twin in (("activation", a.mean(axis=0)), ("entropy", np.tensordot(numpy_spatial_entropy(a), a, 1)),
                             ("eigen", numpy_first_component(a))):
            for request in ({"target": "all"}, {"target": None, "region": [20, 20, 100, 100]}):
                assert in_pass.applies(method, 1, request, {})
                e = ex.explain(image, method=method, **request)
                assert in_pass._graphs.get(f"maps-{method}") is not None              # the in-pass graph ran
                assert in_pass.run(method, ex.preprocess([image])) is not None        # its map taken (settled)
                in_pass.possible = False
                try:
                    general = ex.explain(image, method=method, **request)
                finally:
                    in_pass.possible = True
                np.testing.assert_array_equal(e.outputs, general.outputs)
                assert [r for r in e.records()[0]] == [r for r in general.records()[0]]
                for item, other in zip(e.items[0], general.items[0], strict=True):
                    np.testing.assert_array_equal(item.region, other.region)
                    np.testing.assert_allclose(item.raw, twin, rtol=1e-4, atol=1e-5 * np.abs(twin).max())
                    np.testing.assert_allclose(item.raw, other.raw, rtol=1e-4, atol=1e-5 * np.abs(twin).max())
                    np.testing.assert_allclose(item.saliency, other.saliency, atol=2e-4)
                    assert item.saliency.dtype == np.float32 and item.class_agnostic
    empty = np.zeros((0, *ex.bundle.input_shape), np.float32)          # no image: the graph's own two outputs
    assert len(ex.backend.explained_pass("maps-activation", in_pass._graphs["maps-activation"], empty)) == 2

@needs_shared
@pytest.mark.slow
def test_pan_is_explained_per_sigmoid_channel_on_both_runtimes(tmp_path):
    bundle = split_segmenter(PAN, out=tmp_path / "pan", labels=["skin", "clothes", "hair"])
    assert (bundle.manifest["output"]["kind"], bundle.num_classes) == ("sigmoid", 3)
    image = str(SHARED / "deployed" / "messi5.jpg")
    maps = {}
    for runtime in ("onnxruntime", "openvino"):
        e = Explainer(bundle, backend=runtime, precision="f32")
        items = e.explain(image, method="ablation", target="all").items[0]
        assert {i.label for i in items} == {"skin", "clothes", "hair"}
        maps[runtime] = np.stack([i.saliency for i in items])
    assert np.abs(maps["onnxruntime"] - maps["openvino"]).max() < 1e-2
    assert_shortcut_matches_head_rows(e, image, "sigmoid")


def assert_shortcut_matches_head_rows(explainer, image, activation, tolerance=1e-3):
    """The shortcut's recipro values (a 3×3 conv then an align_corners resize and a sigmoid: the PAN's tail) against
    head passes with the cut kept at one position, at a grid of positions, for every class present."""
    assert explainer.task.tail is not None
    a, scores = explainer.backend.observe(explainer.preprocess([image]))
    _, h, w = a.shape[1:]
    positions = [(i, j) for i in range(3, h, h // 3) for j in range(5, w, w // 3)]
    rows = np.zeros((len(positions), *a.shape[1:]), np.float32)
    for r, (i, j) in enumerate(positions):
        rows[r, :, i, j] = a[0, :, i, j]
    outputs = np.concatenate([explainer.backend.head(rows[r:r + 1]) for r in range(len(rows))])
    for c in range(scores.shape[1]):
        region = scores[0, c] > 0.5
        shortcut = explainer.task.tail.recipro_scores(a[0], c, region, activation)
        np.testing.assert_allclose(outputs[:, c][:, region].mean(axis=1), [shortcut[i, j] for i, j in positions],
                                   atol=tolerance)


def test_split_recognises_a_segmenter_and_info_shows_its_class_axis(tmp_path):
    result = run_cli("split", OWN, "--out", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    info = run_cli("info", tmp_path / "b")
    assert "class axis 1 of the model's NCHW scores" in info.stdout


DEEPLAB = SHARED / "segmentation" / "deeplabv3_mnv2_dm05_pascal_quant.tflite"
VOC = SHARED / "segmentation" / "pascal_voc_segmentation_labels.txt"


@pytest.fixture(scope="session")
def deeplab(tmp_path_factory):
    from cam_infer.bundle.openvino_segmentation import split_openvino_segmenter
    labels = VOC.read_text().split("\n")[:21]
    bundle = split_openvino_segmenter(DEEPLAB, out=tmp_path_factory.mktemp("seg") / "deeplab", labels=labels)
    return Explainer(bundle, backend="openvino", precision="f32")


@needs_shared
def test_deeplab_is_cut_before_its_argmax_at_the_projection(deeplab):
    out = deeplab.bundle.manifest["output"]
    assert (out["ends_in_argmax"], out["model_class_axis"], out["kind"], out["shape"]) == (True, 3, "logits",
                                                                                        [21, 513, 513])
    assert deeplab.bundle.activation_shape == (256, 33, 33) and deeplab.bundle.preprocessing.crop == "none"
    # its int8 output has a step, but a region's mean score is finer than one step of a pixel's: no one-step rule
    assert out["model_output_step"] > 0 and deeplab.bundle.scores_step == 0


@needs_shared
@pytest.mark.parametrize("image, label", [("samoyed_dog.jpg", "dog"), ("chelsea.png", "cat"), ("both.png", "cat"),
                                          ("both.png", "dog"), ("parrot.jpg", "bird")])
def test_deeplab_recipro_puts_its_energy_in_the_predicted_region(deeplab, image, label):
    item = deeplab.explain(str(SHARED / "images" / image), method="recipro", target=label).items[0][0]
    energy, baseline = energy_in_region(item.saliency, item.region), uniform_baseline(item.region)
    assert item.label == label and energy >= 0.5 and energy - baseline >= 0.2, (energy, baseline)


@needs_shared
def test_deeplab_regions_are_the_unsplit_model_s_own_argmax_on_real_photos(deeplab):
    """The region a target is explained over: the pixels DeepLab's own ArgMax (the TFLite graph's last op, on
    OpenVINO at f32) gives its class, pixel for pixel."""
    from cam_infer.backends.sessions import FLOAT32, openvino_compiled, openvino_model
    model = openvino_compiled(openvino_model(DEEPLAB), FLOAT32)
    for image, label in [("samoyed_dog.jpg", "dog"), ("both.png", "cat"), ("parrot.jpg", "bird")]:
        x = deeplab.preprocess([str(SHARED / "images" / image)])
        own = np.asarray(model({0: x.transpose(0, 2, 3, 1).round().clip(0, 255).astype(np.uint8)})[0])[0]
        item = deeplab.explain(x, method="activation", target=label).items[0][0]
        np.testing.assert_array_equal(item.region, own == deeplab.bundle.labels.index(label))


@needs_shared
def test_deeplab_shortcut_matches_its_int8_head_within_a_quantization_step(deeplab):
    """The float tail's region scores against the int8 head run with the cut kept at one position."""
    assert deeplab.task.tail is not None
    x = deeplab.preprocess([str(SHARED / "images" / "both.png")])
    a, scores = deeplab.backend.observe(x)
    c = deeplab.bundle.labels.index("dog")
    region = scores[0].argmax(axis=0) == c
    shortcut = deeplab.task.tail.recipro_scores(a[0], c, region, "none")
    positions = [(i, j) for i in range(0, 33, 8) for j in range(2, 33, 10)]
    rows = np.zeros((len(positions), *a.shape[1:]), np.float32)
    for r, (i, j) in enumerate(positions):
        rows[r, :, i, j] = a[0, :, i, j]
    head = deeplab.backend.head(rows)[:, c][:, region].mean(axis=1)
    step = deeplab.bundle.manifest["output"]["model_output_step"]
    np.testing.assert_allclose(head, [shortcut[i, j] for i, j in positions], atol=step)


def row_by_row_recipro_scores(tail, a, c, region, activation) -> np.ndarray:
    """The shortcut pixel by pixel, one row of positions at a time, every pixel of each support scored (the
    formulation before repeated weight rows were scored once)."""
    from cam_infer.bundle.linear_tail import apply
    _, h, w = a.shape
    base = float(apply(tail.bias.astype(np.float64)[:, None, None], activation)[c, 0, 0])
    kernel, bias = tail.kernel, tail.bias.astype(np.float32)[None, :, None, None]
    if activation != "softmax":
        kernel, bias, c = kernel[c:c + 1], bias[:, c:c + 1], 0
    v = np.einsum("ckyx,khw->hwcyx", kernel, a).astype(np.float32)
    total = int(region.sum())
    (ys, ry, y_valid), (xs, rx, x_valid) = tail.supports
    region_x = region[:, xs] & x_valid[None]
    rx_t = rx.transpose(0, 2, 1)[:, None]
    out = np.full((h, w), base, np.float64)
    for i in range(h):
        inside = region_x[ys[i]].transpose(1, 0, 2) & y_valid[i][None, :, None]
        hit = inside.any(axis=(1, 2))
        if hit.any():
            z = bias + np.matmul(ry[i], np.matmul(v[i][hit], rx_t[hit]))
            kept = np.where(inside[hit], apply(z, activation)[:, c], 0).sum(axis=(1, 2), dtype=np.float64)
            out[i, hit] = (base * (total - inside[hit].sum(axis=(1, 2))) + kept) / total
    return out.astype(np.float32)


@needs_shared
def test_deeplab_softmax_shortcut_scores_each_repeated_weight_pair_once_exactly(deeplab):
    """DeepLab's 16× resize repeats the weights of 15 of the 31 rows (and columns) of a support: the shortcut
    scores 17×17 (row, column) pairs a position (16 and the border's zero row) instead of 31×31 pixels, and equals
    the pixel-by-pixel computation to float rounding at every position, and the float tail run at full size at a
    grid of them."""
    (y_group, _), (x_group, _) = deeplab.task.tail.groups
    assert y_group.shape == x_group.shape == (33, 31, 17)          # 16 weight rows, and the padding's zero row
    x = deeplab.preprocess([str(SHARED / "images" / "both.png")])
    a, scores = deeplab.backend.observe(x)
    for label in ("cat", "dog"):
        c = deeplab.bundle.labels.index(label)
        region = scores[0].argmax(axis=0) == c
        shortcut = deeplab.task.tail.recipro_scores(a[0], c, region, "softmax")
        np.testing.assert_allclose(shortcut, row_by_row_recipro_scores(deeplab.task.tail, a[0], c, region, "softmax"),
                                   rtol=1e-6, atol=1e-8)
        positions = [(i, j) for i in range(1, 33, 10) for j in range(4, 33, 9)]
        np.testing.assert_allclose([shortcut[i, j] for i, j in positions],
                                   full_size_region_scores(deeplab.task.tail, a[0], c, region, positions, "softmax"),
                                   rtol=1e-5, atol=1e-7)


def test_seg_grad_cam_differentiates_the_region_score(own_bundle):
    """On a 1×1 conv + bilinear tail ∂S/∂A[k,q] = W[c,k]·(R_yᵀ M R_x)[q]/|R|: HiResCAM's map Σ_k g^k ⊙ A^k and
    Grad-CAM's (α_k = mean_q g^k = W[c,k]/(h·w), whatever the region) in closed form."""
    pytest.importorskip("torch")
    explainer = Explainer(own_bundle, backend="onnxruntime", gradients="torch", precision="f32")
    image, _ = next(own_scenes(1))
    tail = explainer.task.tail
    a = explainer.backend.features(explainer.preprocess([image]))[0]
    for method in ("hirescam", "gradcam"):
        item = explainer.explain(image, method=method, target="square").items[0][0]
        spread = tail.ry.T.astype(np.float64) @ item.region @ tail.rx.astype(np.float64) / item.pixels   # (h,w)
        g = tail.weight[item.class_id].astype(np.float64)[:, None, None] * spread[None]
        expected = (g * a).sum(axis=0) if method == "hirescam" else np.einsum("k,khw->hw", g.mean(axis=(1, 2)), a)
        np.testing.assert_allclose(item.raw, expected, rtol=1e-4, atol=1e-6 * np.abs(item.raw).max())


def test_layers_a_skip_connection_bypasses_are_refused_naming_the_nearest_valid_one(tmp_path):
    """(A layer the skip bypasses alone gets its cut set: `test_segmentation_cut_set`.)"""
    with pytest.raises(CamInferError, match=r"encoder.1, encoder do not separate the input from the scores: the "
                                            r"decoder also reads '/skip/skip.1/skip.1.2/Relu_output_0' around them; "
                                            r"add it to --layer; nearest valid layer: 'skip'"):
        split_segmenter(OWN, layer="encoder.1,encoder", out=tmp_path / "b")


def test_a_region_mask_png_is_read_at_the_image_size(own, tmp_path):
    import cv2
    image, truth = next(own_scenes(1))
    cv2.imwrite(str(tmp_path / "mask.png"), (truth == 2).astype(np.uint8) * 255)
    item = own.explain(image, method="recipro", target="square", region=tmp_path / "mask.png").items[0][0]
    assert (item.region == (truth == 2)).all()
    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((64, 64), np.uint8))
    with pytest.raises(CamInferError, match="the region mask is 64x64, the image 128x128"):
        own.explain(image, method="recipro", region=str(tmp_path / "small.png"))


@needs_shared
@pytest.mark.slow
def test_split_recognises_the_deeplab_tflite_by_its_argmax(tmp_path):
    result = run_cli("split", DEEPLAB, "--out", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    assert "class axis 3 of the model's NHWC scores (its ArgMax after them is left out" in result.stdout


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_the_command_line_runs_seg_grad_cam_as_python_does(own_bundle, tmp_path, method):
    """`cam-infer explain SEGMENTER --method gradcam` opens the torch gradients as it does for classifiers (before:
    "open the Explainer with gradients='torch'", advice for Python users): the record is the Python Explainer's."""
    pytest.importorskip("torch")
    import cv2
    import json

    from cam_infer.metrics.segmentation import energy_in_region
    from helpers import run_cli
    image, _ = next(own_scenes(1))
    cv2.imwrite(str(tmp_path / "scene.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    result = run_cli("explain", own_bundle.path, tmp_path / "scene.png", "--method", method, "--target", "square",
                     "--backend", "onnxruntime", "--precision", "f32", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]["targets"][0]
    item = Explainer(own_bundle, backend="onnxruntime", gradients="torch", precision="f32").explain(
        image, method=method, target="square").items[0][0]
    assert record["label"] == "square" and record["region_pixels"] == int(item.region.sum())
    assert record["score"] == pytest.approx(item.score, rel=1e-5)
    assert record["energy_in_region"] == pytest.approx(energy_in_region(item.saliency, item.region), abs=1e-4)


def test_float16_scores_are_read_as_float32_by_the_compiled_kernels():
    """An fp16 model's scores: the argmax that fixes the region and the region score equal those of the same
    values in float32 (Numba reads no float16: before, an internal error)."""
    from cam_infer.tasks.segmentation import Assignment, region_scores
    scores = np.random.default_rng(3).standard_normal((4, 3, 17, 19)).astype(np.float16)
    wide = scores.astype(np.float32)
    half, full = Assignment(scores[0], "logits"), Assignment(wide[0], "logits")
    np.testing.assert_array_equal(half.values, full.values)
    region = half.regions([2])[0]
    assert region.any()
    np.testing.assert_array_equal(region_scores(scores[:, 1], region), region_scores(wide[:, 1], region))
