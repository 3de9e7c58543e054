"""Float16 segmenters: our own segmenter and the real PAN converted by ONNX Runtime's float16 converter, with float32
input and output kept (`keep_io_types=True`) and without (float16 images in, float16 scores out). Each is split with
auto, its split checked against the float16 file itself, and explained on both runtimes; the maps, regions, audit
and fused model are compared with the float32 file's (the independent reference: the model before conversion).

Measured on ONNX Runtime 1.32 / OpenVINO (the tolerances below leave about 2× room):
- split vs the float16 file: 0 with float32 images; 1.4e-3 (own, scores up to 4) and 2.3e-3 (PAN) with float16
  images, whose Cast at the features' float32 input ONNX Runtime drops (`bundle.segmentation.split_tolerance`);
- maps vs the float32 model's: ≤ 9.7e-4 (own), ≤ 1.6e-2 (PAN recipro; the float16 PAN's own probabilities are
  up to 0.10 from the float32 PAN's, on OpenVINO too: its weights' rounding, not the runtime's arithmetic);
- regions vs the float32 model's: equal (own); 193 of 786 432 PAN pixels (ONNX Runtime; 183 OpenVINO), all where
  the float32 PAN's probability is within 0.082 of 0.5; vs the float16 file's own: equal with float32 images, 10
  pixels within 2.2e-3 of 0.5 with float16 images.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cam_infer import Explainer
from cam_infer.bundle import Bundle
from cam_infer.bundle.segmentation import split_segmenter
from cam_infer.numerics import FLOAT16_TOLERANCE
from cam_infer.tools.synthetic import SPLITS, scene
from conftest import SHARED, needs_shared
from helpers import run_cli

OWN = Path(str(resources.files("cam_infer") / "data" / "shapes_segmenter" / "shapes_segmenter.onnx"))
OWN_LABELS = ["background", "circle", "square", "triangle", "cross"]
PAN = SHARED / "segmentation" / "pan_mnv3s_skin_clothes_hair.onnx"
PAN_LABELS = ["skin", "clothes", "hair"]
PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
METHODS = ("activation", "eigen", "entropy", "recipro", "ablation")
RUNTIMES = ("onnxruntime", "openvino")
KEEP_IO = (True, False)


def float16_copy(source: Path, folder: Path, keep_io_types: bool) -> Path:
    from onnxruntime.transformers.float16 import convert_float_to_float16
    path = folder / f"{source.stem}_fp16{'' if keep_io_types else '_io'}.onnx"
    onnx.save(convert_float_to_float16(onnx.load(source), keep_io_types=keep_io_types), path)
    return path


def file_scores(path: Path, x: np.ndarray) -> np.ndarray:
    """The converted file itself on ONNX Runtime, fed its own input type."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    given = session.get_inputs()[0]
    x = x.astype(np.float16) if given.type == "tensor(float16)" else x
    return session.run(None, {given.name: x})[0].astype(np.float32)


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """The float32 bundle and a float16 bundle per keep_io_types, with the converted files."""
    folder = tmp_path_factory.mktemp("own16")
    files = {keep: float16_copy(OWN, folder, keep) for keep in KEEP_IO}
    bundles = {keep: split_segmenter(files[keep], out=folder / f"b{keep}", labels=OWN_LABELS, preprocessing=PLAIN)
               for keep in KEEP_IO}
    return split_segmenter(OWN, out=folder / "f32", labels=OWN_LABELS, preprocessing=PLAIN), bundles, files


def image(k: int = 0) -> np.ndarray:
    return scene(SPLITS[k % len(SPLITS)], 1, k).image


@pytest.mark.parametrize("keep", KEEP_IO)
def test_a_float16_segmenter_is_cut_in_float32_and_verified_at_float16_s_tolerance(own, keep):
    """The cut reaches the methods in float32 and the head casts it back to the float16 the model reads; the scores
    come out float32. The split reproduces the float16 file itself: exactly with float32 images, within 2⁻⁷ of
    max(1, |scores|) with float16 ones (measured 1.4e-3 of 4)."""
    _, bundles, files = own
    bundle = bundles[keep]
    verification = bundle.manifest["verification"]
    assert bundle.computes_in_float16 and verification["relative_tolerance"] == FLOAT16_TOLERANCE
    features, head = (onnx.load(bundle.graph_path(role)) for role in ("features", "head"))
    assert features.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert head.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    first = head.graph.node[0]
    assert first.op_type == "Cast" and helper.get_attribute_value(first.attribute[0]) == TensorProto.FLOAT16
    ex = Explainer(bundle, backend="onnxruntime", precision="f32")
    x = ex.preprocess([image(k) for k in range(3)])
    scores = ex.backend.forward(x)
    assert scores.dtype == np.float32
    diff = np.abs(scores - file_scores(files[keep], x)).max()
    assert diff == 0 if keep else 0 < diff <= FLOAT16_TOLERANCE * max(1.0, np.abs(scores).max())


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("keep", KEEP_IO)
def test_a_float16_segmenter_s_maps_and_regions_are_the_float32_model_s(own, keep, runtime):
    """Every gradient-free method on both runtimes: maps within 2e-3 of the float32 model's (measured 9.7e-4:
    the weights' rounding), the same classes and the same regions."""
    reference, bundles, _ = own
    half, full = (Explainer(b, backend=runtime, precision="f32") for b in (bundles[keep], reference))
    for method in METHODS:
        got, expected = (e.explain(image(), method=method, target="all").items[0] for e in (half, full))
        assert [s.class_id for s in got] == [s.class_id for s in expected] and len(got) >= 1, method
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a.region, b.region)
            np.testing.assert_allclose(a.saliency, b.saliency, atol=2e-3, err_msg=method)


def test_a_float16_head_is_read_as_its_linear_tail_within_its_rounding(own):
    """A float16 1×1 conv + resize head (Cast in, float16 W and b, the resize's scales through a Cast, Cast out) is
    read as the linear tail, its W and b the file's float16 values; the shortcut's recipro maps equal the head
    passes' within float16's rounding (the head's every op rounds to float16, the tail reads them in float32)."""
    _, bundles, files = own
    for keep in KEEP_IO:
        ex = Explainer(bundles[keep], backend="onnxruntime", precision="f32")
        tail = ex.task.tail
        assert tail is not None
        weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(files[keep]).graph.initializer}
        assert weights["classifier.weight"].dtype == np.float16
        np.testing.assert_array_equal(tail.kernel, weights["classifier.weight"].astype(np.float32))
        for score in ("prob", "logit"):
            fast = ex.explain(image(), method="recipro", target="all", score=score)
            slow = ex.explain(image(), method="recipro", target="all", score=score, shortcut=False)
            for a, b in zip(fast.items[0], slow.items[0]):
                np.testing.assert_allclose(a.raw, b.raw, atol=FLOAT16_TOLERANCE * max(1.0, np.abs(b.raw).max()))


def test_a_float16_head_that_is_not_a_linear_tail_is_refused(own, tmp_path):
    """The same float16 head with its logits rounded to integers between the conv and the resize (a Cast to int32
    and back, which the reading passes over as it passes over the float16 casts): no longer linear, and the tail
    differs from the graph by up to 0.5, beyond float16's tolerance: not read, recipro runs the head."""
    from cam_infer.bundle.linear_tail import read_linear_tail
    _, bundles, _ = own
    bundle = bundles[True]
    head = onnx.load(bundle.head_path)
    assert read_linear_tail(head, bundle.activation_shape) is not None
    conv = next(n for n in head.graph.node if n.op_type == "Conv")
    logits = conv.output[0]
    conv.output[0] = f"{logits}__exact"
    at = list(head.graph.node).index(conv) + 1
    head.graph.node.insert(at, helper.make_node("Cast", [f"{logits}__exact"], [f"{logits}__int"], to=TensorProto.INT32))
    head.graph.node.insert(at + 1, helper.make_node("Cast", [f"{logits}__int"], [logits], to=TensorProto.FLOAT16))
    assert read_linear_tail(head, bundle.activation_shape) is None


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_float16_segmenter_split_at_a_skipped_layer_gets_its_cut_set_in_float32(own, tmp_path, runtime):
    """``--layer encoder`` (bypassed by the skip branch): the cut set of the float16-image file, packed in float32,
    verified within float16's tolerance; its recipro maps are the float32 model's cut set's within 2e-3."""
    reference, _, files = own
    half = split_segmenter(files[False], "encoder", out=tmp_path / "half", labels=OWN_LABELS, preprocessing=PLAIN)
    full = split_segmenter(OWN, "encoder", out=tmp_path / "full", labels=OWN_LABELS, preprocessing=PLAIN)
    assert half.manifest["target_layer"]["matched_by"] == "cut set" and len(half.cut_levels) == 2
    assert half.manifest["verification"]["relative_tolerance"] == FLOAT16_TOLERANCE
    got, expected = (Explainer(b, backend=runtime, precision="f32").explain(image(), method="recipro",
                                                                              target="all").items[0]
                     for b in (half, full))
    assert [s.class_id for s in got] == [s.class_id for s in expected]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a.saliency, b.saliency, atol=2e-3)


def test_a_float16_segmenter_is_audited_against_masks_as_the_float32_one(own, tmp_path):
    from cam_infer.tools.synthetic import write_segmentation_scenes

    reference, bundles, _ = own
    scenes = write_segmentation_scenes(tmp_path / "scenes", 4)
    summaries = []
    for name, bundle in (("half", bundles[False]), ("full", reference)):
        out = tmp_path / name
        result = run_cli("audit", bundle.path, scenes / "images", "--masks", scenes / "masks", "--methods",
                         "activation,recipro", "--out", out)
        assert result.returncode == 0, result.stderr
        summaries.append(json.loads((out / "summary.json").read_text())["methods"])
    for method in ("activation", "recipro"):
        for metric in ("truth_energy", "energy"):
            assert summaries[0][method][metric] == pytest.approx(summaries[1][method][metric], abs=2e-3)
    assert summaries[0]["recipro"]["truth_energy"] >= 0.5


@pytest.mark.parametrize("keep", KEEP_IO)
def test_a_float16_segmenter_fuses_into_its_own_scores_and_the_explainer_s_map(own, keep, tmp_path):
    """The fused model computes the float16 file's scores (the same graphs, casts and all) and the explainer's map,
    on ONNX Runtime and OpenVINO."""
    import openvino as ov

    from cam_infer.segmentation.fuse import fuse_segmenter
    _, bundles, files = own
    path = tmp_path / "fused.onnx"
    onnx.save(fuse_segmenter(bundles[keep], "eigen"), path)
    ex = Explainer(bundles[keep], backend="onnxruntime", precision="f32")
    x = ex.preprocess([image(1)])
    expected = ex.explain(image(1), method="eigen", target=0, region=[0, 0, 128, 128]).items[0][0].saliency
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores, saliency = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_array_equal(scores, ex.backend.forward(x))
    np.testing.assert_allclose(saliency[0], expected, atol=1e-5)
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled({0: x})[1][0], expected, atol=1e-3)


@needs_shared
@pytest.mark.slow
def test_the_float16_pan_is_explained_on_both_runtimes_as_the_float32_pan(tmp_path):
    """The real PAN (MobileNetV3 encoder, 3×3 conv + align-corners resize + sigmoid tail) in float16, both
    conversions: split with auto within float16's tolerance of the file, its linear tail read (shortcut within
    1e-3 of head rows), every method's maps within 3e-2 of the float32 PAN's (measured 1.6e-2), its regions the
    float32 PAN's but where that model's probability is within 0.1 of 0.5 (fewer than 0.05 % of the pixels), and
    the float16 file's own but where its probability is within float16's tolerance of 0.5."""
    from test_segmentation_task import assert_shortcut_matches_head_rows
    photo = str(SHARED / "deployed" / "messi5.jpg")
    reference = split_segmenter(PAN, out=tmp_path / "f32", labels=PAN_LABELS)
    for keep in KEEP_IO:
        path = float16_copy(PAN, tmp_path, keep)
        bundle = split_segmenter(path, out=tmp_path / f"b{keep}", labels=PAN_LABELS)
        assert bundle.manifest["verification"]["relative_tolerance"] == FLOAT16_TOLERANCE
        for runtime in RUNTIMES:
            half, full = (Explainer(b, backend=runtime, precision="f32") for b in (bundle, reference))
            x = half.preprocess([photo])
            scores, scores32 = half.backend.forward(x), full.backend.forward(x)
            flipped = (scores > 0.5) != (scores32 > 0.5)
            assert flipped.mean() < 5e-4 and np.abs(scores32[flipped] - 0.5).max() < 0.1
            if runtime == "onnxruntime":
                own_file = file_scores(path, x)
                flipped = (scores > 0.5) != (own_file > 0.5)
                assert not flipped.any() if keep else np.abs(own_file[flipped] - 0.5).max() <= FLOAT16_TOLERANCE
                assert_shortcut_matches_head_rows(half, photo, "sigmoid")
            for method in METHODS:
                got, expected = (e.explain(photo, method=method, target="all").items[0] for e in (half, full))
                assert [s.label for s in got] == [s.label for s in expected] == PAN_LABELS
                for a, b in zip(got, expected):
                    assert np.mean(a.region != b.region) < 5e-4
                    np.testing.assert_allclose(a.saliency, b.saliency, atol=3e-2, err_msg=f"{method} {runtime}")


def test_a_float16_ir_segmenter_is_split_within_float16_s_tolerance_and_explained_as_the_float32_one(own, tmp_path):
    """Our float16 segmenter converted to IR computes in float16 (its convolutions' outputs are f16), and its split
    was refused at float32's tolerance ('max |head(features(x)) - model(x)| = 0.0014 > 0.000402'). It is verified
    within 2⁻⁷ of max(1, |scores|) as the float16 ONNX file is (measured 2.1e-3 of 4); its maps are the float32
    model's within 4e-3 (measured 3.0e-3) and its regions equal; a float32 IR keeps float32's tolerance."""
    import openvino as ov

    from cam_infer.bundle.openvino_segmentation import split_openvino_segmenter
    reference, _, files = own
    for name, source in (("half", files[True]), ("full", OWN)):
        ov.save_model(ov.convert_model(str(source)), str(tmp_path / f"{name}.xml"), compress_to_fp16=False)
    half = split_openvino_segmenter(tmp_path / "half.xml", out=tmp_path / "half", labels=OWN_LABELS,
                                    preprocessing=PLAIN)
    full = split_openvino_segmenter(tmp_path / "full.xml", out=tmp_path / "full", labels=OWN_LABELS,
                                    preprocessing=PLAIN)
    assert half.manifest["verification"]["relative_tolerance"] == FLOAT16_TOLERANCE
    assert full.manifest["verification"]["relative_tolerance"] == 1e-4
    ir, onnx_f32 = (Explainer(b, backend="openvino", precision="f32") for b in (half, reference))
    for method in METHODS:
        got, expected = (e.explain(image(1), method=method, target="all").items[0] for e in (ir, onnx_f32))
        assert [s.class_id for s in got] == [s.class_id for s in expected] and len(got) >= 1, method
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a.region, b.region)
            np.testing.assert_allclose(a.saliency, b.saliency, atol=4e-3, err_msg=method)
