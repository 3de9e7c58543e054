"""Detectors beyond YOLOv8 as Ultralytics exports them (tests/data/detectors, made by export/ultralytics_detectors.py
from Ultralytics' own yamls at a reduced width and trained on the synthetic detection scenes): YOLO11 (C2PSA
attention, depthwise convolutions in Detect's class branch), YOLO26 and YOLOv10 exported with their one-to-many
head (Ultralytics' default export). Each splits into graphs equal to the model on both runtimes, keeps its cropped
class branches, gives the maps the whole head gives, and points into its detections' boxes. YOLO26's end-to-end
export (`nms=False`: TopK inside the graph, (N,300,6)) is split before its TopK, and every row it returns is a
detection of the bundle with its anchor, as ONNX file and as IR (converted, or Ultralytics' own)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers import assert_one_line_error, run_cli, two_graph_pass, without_branches

from cam_infer import Explainer
from cam_infer.detection.split import split_detector
from cam_infer.tools.synthetic import write_detection_scenes

DATA = Path(__file__).parent / "data" / "detectors"
MODELS = ("yolo11", "yolo26", "yolov10")
END_TO_END = DATA / "yolo26_128_end2end.onnx"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    work = tmp_path_factory.mktemp("ultralytics")
    return {name: split_detector(DATA / f"{name}_128.onnx", work / name) for name in MODELS}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = write_detection_scenes(tmp_path_factory.mktemp("scenes"), n=8, seed=1)
    return sorted(folder.glob("*.png"))


def scene_batch(scenes) -> np.ndarray:
    import cv2
    images = [cv2.imread(str(p))[:, :, ::-1] for p in scenes[:3]]          # 128×128: the letterbox is the identity
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2), np.float32) / 255


def unsplit(path, x: np.ndarray, runtime: str) -> np.ndarray:
    if runtime == "onnxruntime":
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    import openvino as ov
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled({0: x})[0].copy()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_split_equals_the_unsplit_export_on_both_runtimes(bundles, scenes, name, runtime):
    bundle = bundles[name]
    assert bundle.manifest["verification"]["max_abs_diff"] == 0.0
    x = scene_batch(scenes)
    _, got = two_graph_pass(bundle, x, runtime)
    expected = unsplit(DATA / f"{name}_128.onnx", x, runtime)
    assert got.shape == expected.shape == (3, 4 + 5, 16 * 16 + 8 * 8 + 4 * 4)
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))


@pytest.mark.parametrize("name", MODELS)
def test_the_cut_is_the_detect_inputs_and_every_level_wide_enough_keeps_an_exact_class_branch(bundles, name):
    """Detect reads model.16, .19, .22 (strides 8, 16, 32); its class branch (YOLO11/26: a depthwise 3×3, a 1×1,
    twice, then the class 1×1) reads a 5×5 window, so the 16×16 and 8×8 levels get a cropped branch and the 4×4
    one, smaller than the window, runs through the whole head."""
    cut = bundles[name].manifest["cut"]
    assert [(level["stride"], level["name"].split("/")[1]) for level in cut] == \
        [(8, "model.16"), (16, "model.19"), (32, "model.22")]
    for level in cut[:2]:
        assert level["branch"]["window"] == 5 and level["branch"]["max_abs_diff"] <= 1e-4
        assert level["branch"]["tensor"].startswith("/model.23/") and "cv3" in level["branch"]["tensor"]
    assert "branch" not in cut[2]


@pytest.mark.parametrize("name", MODELS)
def test_maps_of_a_detection_are_the_same_with_and_without_the_branches(bundles, scenes, name, tmp_path):
    plain = without_branches(bundles[name], tmp_path / "plain")
    for backend in ("onnxruntime", "openvino"):
        cropped, whole = Explainer(bundles[name], backend), Explainer(plain, backend)
        compared = 0
        for scene in scenes[:3]:
            for method in ("recipro", "ablation"):
                a, b = cropped.explain(scene, method), whole.explain(scene, method)
                assert [d.anchor for d in a.items[0]] == [d.anchor for d in b.items[0]]
                for da, db in zip(a.items[0], b.items[0]):
                    np.testing.assert_allclose(da.saliency, db.saliency, atol=2e-4)
                    compared += 1
        assert compared >= 4


@pytest.mark.parametrize("name", MODELS)
def test_a_trained_export_points_into_the_box_of_the_detection_it_explains(bundles, scenes, name):
    """Recipro-CAM at the Detect inputs: the maximum of each detection's map lies in its own box."""
    explainer = Explainer(bundles[name], "onnxruntime")
    inside = []
    for scene in scenes:
        for d in explainer.explain(scene, "recipro").items[0]:
            row, col = np.unravel_index(np.argmax(d.saliency), d.saliency.shape)
            x1, y1, x2, y2 = d.box
            inside.append(x1 - 1 <= col <= x2 + 1 and y1 - 1 <= row <= y2 + 1)
    assert len(inside) >= 8 and np.mean(inside) >= 0.9, inside


def ultralytics_top_k(output: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detect.get_topk_index as Ultralytics writes it: the top k anchors by their best score, then the top k of those
    anchors' (anchor, class) pairs → (scores, classes, anchors)."""
    scores = output[4:].T                                                    # (A, C)
    anchors = np.argsort(-scores.max(axis=1), kind="stable")[:k]
    pairs = scores[anchors].reshape(-1)
    top = np.argsort(-pairs, kind="stable")[:k]
    return pairs[top], top % scores.shape[1], anchors[top // scores.shape[1]]


def test_the_top_pairs_are_ultralytics_two_stage_top_k():
    from cam_infer.detection.decode import top_pairs
    rng = np.random.default_rng(0)
    output = np.concatenate([rng.uniform(0, 128, (4, 336)), rng.random((5, 336))]).astype(np.float32)
    output[4:, 7] = 1.0                                                      # one anchor scoring every class
    scores, classes, anchors = ultralytics_top_k(output, 300)
    got = top_pairs(output, -1.0, 300)
    assert np.array_equal(got.scores, scores) and np.array_equal(got.classes, classes)
    assert np.array_equal(got.anchors, anchors) and list(got.anchors[:5]) == [7] * 5
    above = top_pairs(output, 0.9, 300)
    assert np.array_equal(above.scores, scores[scores > 0.9])


@pytest.fixture(scope="module")
def end_to_end(tmp_path_factory):
    return split_detector(END_TO_END, tmp_path_factory.mktemp("e2e") / "bundle")


def test_an_end_to_end_export_is_split_before_its_top_k_and_checked_row_for_row(end_to_end):
    record = end_to_end.manifest["verification"]
    assert record["max_abs_diff"] == 0.0
    assert record["end_to_end"]["rows_per_image"] == 300 and record["end_to_end"]["rows_compared"] > 1000
    assert record["end_to_end"]["max_box_diff"] < 1e-3
    assert end_to_end.manifest["nms"]["end_to_end"] is True
    assert all("one2one_cv3" in level["branch"]["tensor"] for level in end_to_end.manifest["cut"][:2])


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_every_deployed_row_of_an_end_to_end_export_is_a_detection_with_its_anchor(end_to_end, scenes, backend):
    """The export's rows above conf 0.25 on the scenes are the bundle's detections, in order: the same class and
    box; the same score on ONNX Runtime (OpenVINO computes its own, within 1e-5)."""
    x = scene_batch(scenes)
    rows = unsplit(END_TO_END, x, "onnxruntime")
    explainer = Explainer(end_to_end, backend)
    found = explainer.detect(x)
    for image, detections in zip(rows, found):
        image = image[image[:, 4] > 0.25]
        assert len(image) == len(detections) >= 1
        assert np.array_equal(image[:, 5].astype(np.int64), detections.classes)
        assert np.abs(image[:, :4] - detections.boxes).max() < 1e-3
        if backend == "onnxruntime":
            assert np.array_equal(image[:, 4], detections.scores)
        assert np.abs(image[:, 4] - detections.scores).max() < 1e-5


def test_maps_of_an_end_to_end_detection_equal_without_branches_and_point_into_its_box(end_to_end, scenes, tmp_path):
    plain = without_branches(end_to_end, tmp_path / "plain")
    cropped, whole = Explainer(end_to_end, "onnxruntime"), Explainer(plain, "openvino")
    inside = []
    for scene in scenes:
        a, b = cropped.explain(scene, "recipro"), whole.explain(scene, "recipro")
        assert [d.anchor for d in a.items[0]] == [d.anchor for d in b.items[0]]
        for da, db in zip(a.items[0], b.items[0]):
            np.testing.assert_allclose(da.saliency, db.saliency, atol=2e-4)
            row, col = np.unravel_index(np.argmax(da.saliency), da.saliency.shape)
            inside.append(da.box[0] - 1 <= col <= da.box[2] + 1 and da.box[1] - 1 <= row <= da.box[3] + 1)
    assert len(inside) >= 8 and np.mean(inside) >= 0.8, inside          # 16 of 18 (the one-to-one head, 20 epochs)


def test_an_end_to_end_bundle_is_not_fused_in_one_line(end_to_end, tmp_path):
    assert_one_line_error(run_cli("fuse", end_to_end.path, "--method", "eigen", "--out", tmp_path / "f.onnx"),
                          "a fused model would return those (N, 4+C, anchors) scores, not the export's (N,k,6) rows")


@pytest.mark.parametrize("made", ["converted", "ultralytics"])
def test_an_end_to_end_ir_is_split_before_its_top_k_and_detects_as_its_onnx_file(end_to_end, scenes, tmp_path, made):
    """The ONNX export converted by OpenVINO, and Ultralytics' own `format=openvino, nms=False` export (torch → IR,
    batch 1, no task metadata: recognised by its TopK and (1,300,6) output)."""
    import openvino as ov
    path = DATA / "yolo26_128_end2end_openvino_model" / "best.xml"
    if made == "converted":
        path = tmp_path / "e2e.xml"
        ov.save_model(ov.Core().read_model(str(END_TO_END)), str(path))
    bundle = split_detector(path, tmp_path / "bundle")
    assert bundle.graph_format == "openvino" and bundle.manifest["nms"]["end_to_end"] is True
    rows = bundle.manifest["verification"]["end_to_end"]
    assert rows["rows_per_image"] == 300 and rows["rows_compared"] > 1000 and rows["max_box_diff"] < 1e-3
    assert [level["shape"] for level in bundle.manifest["cut"]] == [[16, 16, 16], [16, 8, 8], [16, 4, 4]]
    x = scene_batch(scenes)
    deployed = unsplit(END_TO_END, x, "onnxruntime")
    for image, detections in zip(deployed, Explainer(bundle, "openvino").detect(x)):
        image = image[image[:, 4] > 0.25]
        assert np.array_equal(image[:, 5].astype(np.int64), detections.classes)
        assert np.abs(image[:, 4] - detections.scores).max() < 1e-3
        assert np.abs(image[:, :4] - detections.boxes).max() < 0.05
    ir, onnx_file = Explainer(bundle, "openvino"), Explainer(end_to_end, "openvino")
    a, b = ir.explain(scenes[0], "recipro"), onnx_file.explain(scenes[0], "recipro")
    assert [(d.anchor, d.class_id) for d in a.items[0]] == [(d.anchor, d.class_id) for d in b.items[0]]
    for da, db in zip(a.items[0], b.items[0]):
        assert np.abs(da.saliency - db.saliency).max() < 2e-3


@pytest.mark.parametrize("name,folder", [("yolo26", "yolo26_128_openvino_model"),
                                         ("yolo11", "yolo11_128_openvino_model_fp16")])
def test_ultralytics_own_openvino_export_is_cut_at_detects_inputs_and_explains_as_its_onnx_file(bundles, scenes,
                                                                                                 tmp_path, name,
                                                                                                 folder):
    """Ultralytics' `format=openvino` export (torch → IR, batch 1; YOLO11's with half=True) names every SiLU of the
    network after one Conv of Detect ('__module.model.23.cv3.2.1.1.act/aten::silu_/Swish_N'), which made the first
    convolution's output look like an input of the head (a cut at stride 2); the activations now take the scope of
    the op they read. YOLO11's Detect also takes its batch from a ShapeOf of C2PSA's input, a shape the head now
    rebuilds instead of refusing the cut."""
    bundle = split_detector(DATA / folder / "best.xml", tmp_path / "ir")
    cut = bundle.manifest["cut"]
    assert [(level["shape"], level["stride"], level["receptive_radius"]) for level in cut] == \
        [([16, 16, 16], 8, 2), ([16, 8, 8], 16, 2), ([16, 4, 4], 32, 2)]
    assert bundle.manifest["verification"]["scores_max_abs_diff"] <= 1e-5
    assert bundle.labels == ["circle", "square", "triangle", "cross", "tagged_square"]     # rt_info model_info/labels
    ir, onnx_file = Explainer(bundle, "openvino"), Explainer(bundles[name], "openvino")
    compared = 0
    for scene in scenes[:4]:
        a, b = ir.explain(scene, "recipro"), onnx_file.explain(scene, "recipro")
        assert [(d.anchor, d.class_id) for d in a.items[0]] == [(d.anchor, d.class_id) for d in b.items[0]]
        for da, db in zip(a.items[0], b.items[0]):
            assert np.abs(da.saliency - db.saliency).max() < 2e-3
            compared += 1
    assert compared >= 4


def test_an_end_to_end_export_without_the_anchors_scores_before_its_top_k_is_refused_in_one_line(tmp_path):
    """Names metadata of 6 classes: no (N, 4+6, anchors) tensor precedes the TopK (the head's is (N, 9, 336))."""
    import onnx
    model = onnx.load(END_TO_END)
    names = next(p for p in model.metadata_props if p.key == "names")
    names.value = str({i: f"class {i}" for i in range(6)})
    onnx.save(model, tmp_path / "six.onnx")
    assert_one_line_error(run_cli("split", tmp_path / "six.onnx", "--out", tmp_path / "bundle"),
                          "the detector is an end-to-end export (a TopK picks its (N,k,6) rows), and no (N, 4+C, "
                          "anchors) tensor before its TopK was found to explain; export it with its (N, 4+C, anchors) "
                          "output (Ultralytics: nms unset, not nms=False)")


def _deployed(source: Path, kind: str, scenes, out: Path) -> Path:
    """`source` as an edge box ships it: int8 QDQ (ONNX Runtime's static quantization, calibrated on the scenes,
    Detect's box decoding left in float) or float16 (ONNX Runtime's converter, float32 image and output)."""
    import onnx
    if kind == "float16":
        from onnxruntime.transformers.float16 import convert_float_to_float16
        onnx.save(convert_float_to_float16(onnx.load(source), keep_io_types=True), out)
        return out
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = onnx.load(source)
    detect = max({n.name.split("/")[1] for n in model.graph.node if n.name.startswith("/model.")},
                  key=lambda scope: int(scope.split(".")[1]))
    decoding = [n.name for n in model.graph.node if n.name.startswith(f"/{detect}/") and not n.name.startswith(
        tuple(f"/{detect}/{branch}" for branch in ("cv2", "cv3", "one2one_cv2", "one2one_cv3")))]

    class Scenes(CalibrationDataReader):
        def __init__(self):
            self.left = iter(scene_batch(scenes)[:, None])

        def get_next(self):
            x = next(self.left, None)
            return None if x is None else {"images": x}

    quantize_static(str(source), str(out), Scenes(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=decoding)
    return out


@pytest.mark.parametrize("kind", ["int8", "float16"])
@pytest.mark.parametrize("source", [DATA / "yolo11_128.onnx", END_TO_END], ids=["yolo11", "yolo26-end-to-end"])
def test_int8_and_float16_exports_split_exactly_and_keep_their_class_branches(scenes, tmp_path, source, kind):
    """The README's detector row claims int8 and float16 files for every generation: YOLO11 and the end-to-end YOLO26
    quantized and converted as deployments do split with max |diff| 0 and keep an exact branch on their 16×16 and
    8×8 levels; the float16 end-to-end file stopped with an internal error (its float16 corners met the float32
    constant that makes them cx, cy, w, h), and is now split with its rows checked as the float32 file's are."""
    path = _deployed(source, kind, scenes, tmp_path / f"{kind}.onnx")
    bundle = split_detector(path, tmp_path / "bundle")
    assert bundle.manifest["verification"]["max_abs_diff"] == 0.0
    assert all(level.get("branch") for level in bundle.manifest["cut"][:2])
    if source == END_TO_END:
        assert bundle.manifest["verification"]["end_to_end"]["max_box_diff"] < 1e-3
    x = scene_batch(scenes)
    _, got = two_graph_pass(bundle, x, "onnxruntime")
    expected = unsplit(path, x, "onnxruntime")
    if source == END_TO_END:                     # the export's rows: compare the detections they are
        found = Explainer(bundle, "onnxruntime").detect(x)
        for image, detections in zip(expected, found):
            image = image[image[:, 4] > 0.25]
            assert np.array_equal(image[:, 4], detections.scores) and len(detections) >= 1
    else:
        assert np.abs(got - expected).max() == 0.0


def test_nms_settings_an_end_to_end_export_does_not_have_are_refused_in_one_line(end_to_end, scenes, tmp_path):
    """An IoU threshold was taken and ignored on an end-to-end bundle (it has no NMS), and a max_det above the
    export's own k explained detections the deployed model never returns; both are refused, the CLI in one line."""
    from cam_infer import CamInferError
    explainer = Explainer(end_to_end, "onnxruntime")
    x = scene_batch(scenes)[:1]
    with pytest.raises(CamInferError, match="no NMS, so an IoU threshold does not apply"):
        explainer.detect(x, iou=0.5)
    with pytest.raises(CamInferError, match="returns at most 300 detections an image; max_det 500"):
        explainer.detect(x, max_det=500)
    assert len(explainer.detect(x, max_det=1)[0]) == 1                 # fewer than its k: its best
    result = run_cli("explain", end_to_end.path, scenes[0], "--iou", "0.5", "--out", tmp_path / "out")
    assert_one_line_error(result, "no NMS, so an IoU threshold does not apply")
    result = run_cli("explain", end_to_end.path, scenes[0], "--method", "recipro", "--out", tmp_path / "ran")
    assert result.returncode == 0, result.stderr                      # no IoU threshold recorded: there is none
    import json
    settings = json.loads((tmp_path / "ran" / "results.json").read_text())["settings"]
    assert settings["iou"] is None and settings["conf"] == 0.25
