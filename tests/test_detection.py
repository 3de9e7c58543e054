"""Detectors: the real YOLOv8n of ../shared/data/deployed split at its Detect inputs and at its backbone,
explained per detection on both backends; plumbing (letterbox, anchors, NMS, cut sets) against references;
each method against a direct computation with the head graph or the unsplit model."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import SHARED, needs_shared
from helpers import assert_one_line_error, run_cli, two_graph_pass, without_branches, without_progress

from cam_infer import Bundle, CamInferError
from cam_infer.bundle.graph import Graph
from cam_infer.detection.anatomy import is_cut, is_detector
from cam_infer.detection.decode import anchor_levels, boxes_xyxy, detect, iou
from cam_infer import Explainer
from cam_infer.detection.context import DetectionContext
from cam_infer.detection.split import PACKED, split_detector, with_input_size
from cam_infer.detection.targets import target_scores
from cam_infer.images import Preprocessing

YOLO = SHARED / "deployed" / "nudenet_320n.onnx"
PHOTO = SHARED / "deployed" / "basketball1.png"
pytestmark = needs_shared


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    work = tmp_path_factory.mktemp("detectors")
    return {"detect-input": split_detector(YOLO, work / "head"), "backbone": split_detector(YOLO, work / "bb",
                                                                                             cut="backbone")}


@pytest.fixture(scope="module")
def explainers(bundles):
    return {backend: Explainer(bundles["detect-input"], backend=backend)
            for backend in ("onnxruntime", "openvino")}


def full_model_output(x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(YOLO), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0]


# --- plumbing ---------------------------------------------------------------------------------------------

def test_letterbox_puts_the_image_in_the_middle_and_maps_boxes_both_ways():
    prep = Preprocessing((320, 320), crop="letterbox", mean=(0, 0, 0), std=(1, 1, 1))
    image = np.zeros((200, 400, 3), np.uint8)
    image[50:100, 100:150] = 255                                     # a white square
    view = prep.geometry(image)
    assert view.shape == (320, 320, 3) and (view[:80] == 114).all() and (view[-80:] == 114).all()
    ys, xs = np.nonzero(view[..., 0] == 255)
    assert (ys.min(), xs.min()) == (80 + 40, 80) and (ys.max(), xs.max()) == (80 + 79, 119)   # scale 0.8, pad 80
    box = prep.box_to_image([80, 120, 120, 160], image.shape)
    np.testing.assert_allclose(box, [100, 50, 150, 100], atol=1e-9)
    saliency = np.zeros((320, 320), np.float32)
    saliency[120:160, 80:120] = 1
    back, seen = prep.to_image(saliency, image.shape[:2])
    assert seen.all() and back[75, 125] > 0.99 and back[10, 300] == 0


def test_anchors_lie_inside_the_boxes_they_predict(explainers):
    ex = explainers["onnxruntime"]
    x = ex._inputs([PHOTO])[0]
    output = ex.backend.forward(x)[0]
    grid = anchor_levels((320, 320), output.shape[1])
    assert grid.strides == (8, 16, 32) and output.shape[1] == 40 * 40 + 20 * 20 + 10 * 10
    found = detect(output)
    assert len(found) >= 1
    for box, anchor in zip(found.boxes, found.anchors):
        s = grid.stride[anchor]
        cx, cy = (grid.col[anchor] + 0.5) * s, (grid.row[anchor] + 0.5) * s
        assert box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def test_nms_equals_a_brute_force_reference():
    rng = np.random.default_rng(1)
    a, c = 300, 3
    output = np.zeros((4 + c, a), np.float32)
    output[:2] = rng.uniform(20, 300, (2, a))
    output[2:4] = rng.uniform(10, 80, (2, a))
    output[4:] = rng.uniform(0, 1, (c, a)) ** 3
    found = detect(output, conf=0.2, iou_threshold=0.5)
    boxes, best, classes = boxes_xyxy(output), output[4:].max(axis=0), output[4:].argmax(axis=0)
    kept = []
    for i in sorted(np.flatnonzero(best > 0.2), key=lambda i: -best[i]):
        if all(classes[k] != classes[i] or iou(boxes[i], boxes[k][None])[0] <= 0.5 for k in kept):
            kept.append(i)
    assert found.anchors.tolist() == kept and (np.diff(found.scores) <= 0).all()


def test_cut_sets_are_checked():
    model = with_input_size(onnx.load(YOLO), (320, 320))
    graph = Graph.from_model(model, (320, 320))
    p3, p4, p5 = "/model.15/cv2/act/Mul_output_0", "/model.18/cv2/act/Mul_output_0", "/model.21/cv2/act/Mul_output_0"
    assert is_cut(graph, [p3, p4, p5]) and is_cut(graph, ["/model.4/cv2/act/Mul_output_0"])
    assert not is_cut(graph, [p5]) and not is_cut(graph, ["/model.9/cv2/act/Mul_output_0"])
    assert is_detector(model)


def test_both_cuts_reproduce_the_model_and_measure_the_heads_locality(bundles, explainers):
    head, backbone = bundles["detect-input"], bundles["backbone"]
    assert [lv["stride"] for lv in head.manifest["cut"]] == [8, 16, 32]
    assert [lv["receptive_radius"] for lv in head.manifest["cut"]] == [2, 2, 2]        # Detect's 5×5 window
    assert [lv["moves_levels"] for lv in head.manifest["cut"]] == [[0], [1], [2]]       # levels never mix
    assert backbone.manifest["cut"][0]["name"] == "/model.4/cv2/act/Mul_output_0"
    assert backbone.manifest["cut"][0]["moves_levels"] == [0, 1, 2]
    x = explainers["onnxruntime"]._inputs([PHOTO, SHARED / "deployed" / "messi5.jpg"])[0]
    expected = full_model_output(x)
    for name, bundle in bundles.items():
        for backend in ("onnxruntime", "openvino"):
            got = Explainer(bundle, backend=backend).backend.forward(x)
            np.testing.assert_allclose(got, expected, atol=2e-3 * np.abs(expected).max())
    assert head.labels[:2] == ["FEMALE_GENITALIA_COVERED", "FACE_FEMALE"]                 # from the metadata


def test_a_level_only_the_class_branch_reads_is_measured_by_the_scores_it_moves(tmp_path):
    """A cut set at Detect's first convs: cv3.0.0 feeds the stride-8 class scores and no box. Its change moves a
    random image's scores by ~5e-5, below a millionth of the boxes' 320 px: the split recorded it as reaching no
    level, and recipro and ablation never perturbed it (every stride-8 detection's map all zeros, degenerate)."""
    convs = ["/model.22/cv2.0/cv2.0.0/act/Mul_output_0", "/model.22/cv3.0/cv3.0.0/act/Mul_output_0",
             "/model.18/cv2/act/Mul_output_0", "/model.21/cv2/act/Mul_output_0"]
    bundle = split_detector(YOLO, tmp_path / "b", cut=convs)
    assert [(lv["receptive_radius"], lv["moves_levels"]) for lv in bundle.manifest["cut"][:2]] == [(1, [0]), (1, [0])]
    explained = Explainer(bundle, backend="onnxruntime").explain(PHOTO, "recipro").items[0]
    assert len(explained) >= 2 and not any(d.degenerate for d in explained)


def test_the_joined_graph_is_the_model_with_its_cut_maps_as_outputs(bundles, explainers):
    """One call for the clean pass: no packing in it, and the packed maps the split gives."""
    bundle = bundles["detect-input"]
    joined = bundle.joined_model()
    assert [o.name for o in joined.graph.output] == [lv["name"] for lv in bundle.manifest["cut"]] + ["output0"]
    assert not [n for n in joined.graph.node if n.op_type == "Concat" and PACKED in n.output]
    x = explainers["onnxruntime"]._inputs([PHOTO])[0]
    for runtime, ex in explainers.items():
        before = ex.backend.runtime_calls
        packed, output = ex.backend.observe(x)
        assert ex.backend.joins and ex.backend.runtime_calls - before == 1
        packed_split, output_split = two_graph_pass(bundle, x, runtime)
        np.testing.assert_allclose(packed, packed_split, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(output, output_split, rtol=1e-5, atol=1e-4)


# --- methods against direct computations -------------------------------------------------------------------

def context(ex, image=PHOTO):
    x = ex._inputs([image])[0]
    packed = ex.backend.features(x)
    output = ex.backend.head(packed)[0]
    return DetectionContext(ex, x, packed[0], output), detect(output)


def head_session(bundle):
    return ort.InferenceSession(str(bundle.head_path), providers=["CPUExecutionProvider"])


def targets_of(ex, image=PHOTO):
    e = ex.explain(image, "activation")
    return e.items[0]


@pytest.mark.slow
def test_recipro_at_the_detect_inputs_equals_the_full_sweep_of_every_cell(bundles, explainers):
    """The ≤26-row shortcut (the anchor's measured window, the rest filled with the all-zero level's
    score) against keeping every cell of every level in turn through the head graph on ONNX Runtime, each cell's
    score floored at the all-zero level's (the map's zero level); the same map, zero outside the window, on
    OpenVINO."""
    ex = explainers["onnxruntime"]
    ctx, found = context(ex)
    from cam_infer.detection.targets import Target
    target = Target(found.boxes[0], int(found.classes[0]), int(found.anchors[0]), float(found.scores[0]), 0)
    from cam_infer.methods.levels import same_unit
    session = head_session(bundles["detect-input"])
    maps = {}
    for li, level in enumerate(ctx.levels):
        c, h, w = level["shape"]
        rows = np.repeat(ctx.packed[None], h * w, axis=0)
        view = rows[:, level["offset"]:level["offset"] + c * h * w].reshape(h * w, c, h, w)
        keep = np.zeros((h * w, 1, h, w), np.float32)
        keep[np.arange(h * w), 0, np.arange(h * w) // w, np.arange(h * w) % w] = 1
        view *= keep
        out = np.concatenate([session.run(None, {PACKED: rows[i:i + 200]})[0] for i in range(0, h * w, 200)])
        zero = ctx.packed[None].copy()
        zero[:, level["offset"]:level["offset"] + c * h * w] = 0
        floor = session.run(None, {PACKED: zero})[0][0, 4 + target.class_id, target.anchor]
        maps[li] = np.maximum(out[:, 4 + target.class_id, target.anchor], floor).reshape(h, w)
    own = int(ctx.grid.level[target.anchor])
    for li, m in maps.items():                        # the other levels cannot move the anchor: constant maps
        assert li == own or np.ptp(m) == 0
    expected = same_unit({own: maps[own]}, (320, 320))
    got = ex.explain(PHOTO, "recipro", target=0)
    from cam_infer.methods.recipro import recipro_map
    raw = recipro_map(ctx, target, "anchor", 1)
    np.testing.assert_allclose(raw, expected, atol=1e-4 * np.abs(expected).max())
    assert ctx.head_rows == 0 and 0 < ctx.branch_rows <= 26   # its own level's window + 1, as 5×5 crops
    assert not got.items[0][0].degenerate
    on_openvino = explainers["openvino"].explain(PHOTO, "recipro", target=0).items[0][0].saliency
    saliency = got.items[0][0].saliency
    assert np.abs(on_openvino - saliency).max() < 1e-2
    assert (saliency == 0).mean() > 0.9 and (on_openvino == 0).mean() > 0.9     # nothing lifts the rest off zero


def test_split_finds_each_levels_class_branch_and_a_too_small_window_is_refused(bundles):
    """YOLOv8's cv3.l convolutions are found as the cropped branches; the same search with a radius one
    cell short of the measured one finds no branch that reproduces the head, so none is kept."""
    from cam_infer.bundle.verify import random_images, session
    from cam_infer.detection.anatomy import cut_tensors
    from cam_infer.detection.branches import OnnxBranches, crop_origin, level_branches
    from cam_infer.detection.split import level_record
    bundle = bundles["detect-input"]
    cuts = bundle.manifest["cut"]
    assert [c["branch"]["tensor"].split("/")[2] for c in cuts] == ["cv3.0", "cv3.1", "cv3.2"]
    assert all(c["branch"]["window"] == 5 and c["branch"]["scores"] == "sigmoid" for c in cuts)
    assert run_cli("info", bundle.path).stdout.count("cropped branch 5x5") == 3
    assert crop_origin(0, 0, 40, 40, 5) == (0, 0) and crop_origin(39, 20, 40, 40, 5) == (35, 18)
    proto = with_input_size(onnx.load(YOLO), (320, 320))
    graph = Graph.from_model(proto, (320, 320))
    levels = [level_record(graph, t, 320) for t in cut_tensors(graph, "detect-input", 320)]
    for level, cut in zip(levels, cuts):
        level["offset"] = cut["offset"]
    feat, hd = session(onnx.load(bundle.features_path)), session(onnx.load(bundle.head_path))
    packed = feat.run(None, {feat.get_inputs()[0].name: random_images(bundle.preprocessing, 1, seed=2)})[0]
    grid = anchor_levels((320, 320), 2100)
    run = lambda rows: hd.run(None, {PACKED: rows})[0]                            # noqa: E731
    source = OnnxBranches(graph, levels)
    found = level_branches(source, levels, [{"radius": 2, "levels": [i]} for i in range(3)], 18, grid, run, packed)
    short = level_branches(source, levels, [{"radius": 1, "levels": [i]} for i in range(3)], 18, grid, run, packed)
    assert sorted(found) == [0, 1, 2] and short == {}


def test_a_bundle_without_branches_gives_the_same_maps_through_the_whole_head(bundles, tmp_path):
    """Bundles made before the branches (or heads whose branch was not found) run every row through the
    whole head: the same maps as the cropped branches."""
    plain = without_branches(bundles["detect-input"], tmp_path / "plain")
    for backend in ("onnxruntime", "openvino"):
        cropped, whole = Explainer(bundles["detect-input"], backend), Explainer(plain, backend)
        for method in ("recipro", "ablation"):
            a, b = cropped.explain(PHOTO, method), whole.explain(PHOTO, method)
            assert len(a.items[0]) == len(b.items[0]) >= 2
            for da, db in zip(a.items[0], b.items[0]):
                np.testing.assert_allclose(da.saliency, db.saliency, atol=2e-4)


def test_ablation_equals_zeroing_each_channel_through_the_head_graph(bundles, explainers):
    ex = explainers["onnxruntime"]
    ctx, found = context(ex)
    d = ex.explain(PHOTO, "ablation", target=1).items[0][0]
    from cam_infer.methods.levels import unit_free
    from cam_infer.postprocess import normalise
    session = head_session(bundles["detect-input"])
    level = int(ctx.grid.level[d.anchor])
    lv = ctx.levels[level]
    c, h, w = lv["shape"]
    base = session.run(None, {PACKED: ctx.packed[None]})[0][0, 4 + d.class_id, d.anchor]
    drops = []
    for k in range(c):
        row = ctx.packed[None].copy()
        row[0, lv["offset"] + k * h * w:lv["offset"] + (k + 1) * h * w] = 0
        drops.append((base - session.run(None, {PACKED: row})[0][0, 4 + d.class_id, d.anchor]) / abs(base))
    a = ctx.level_maps()[level]
    expected = normalise(unit_free({level: np.tensordot(np.array(drops, np.float32), a, axes=1)}, (320, 320))[None])[0]
    np.testing.assert_allclose(d.saliency, expected[0], atol=1e-4)


def test_score_cam_weights_are_the_match_scores_of_the_unsplit_model(explainers):
    ex = explainers["onnxruntime"]
    ctx, found = context(ex)
    d = ex.explain(PHOTO, "score", target=0, top_k=3).items[0][0]
    from cam_infer.methods.levels import unit_free
    from cam_infer.detection.targets import Target
    from cam_infer.methods.masked_passes import masks
    from cam_infer.postprocess import normalise
    target = Target(np.array(d.box), d.class_id, d.anchor, d.score, 0)
    maps = {}
    for li, a in enumerate(ctx.level_maps()):
        channels = np.argsort(-a.reshape(len(a), -1).std(axis=1), kind="stable")[:3]   # top_k: largest spatial std
        m, valid = masks(a, channels, (320, 320), "upsample-then-normalise")
        outputs = full_model_output((ctx.x * m[:, None]).astype(np.float32))
        w = np.zeros(len(a), np.float32)
        w[channels[valid]] = target_scores(outputs, target, "match")[valid]
        maps[li] = np.tensordot(w, a, axes=1)
    expected = normalise(unit_free(maps, (320, 320))[None])[0][0]
    np.testing.assert_allclose(d.saliency, expected, atol=1e-3)


def test_entropy_weighs_each_levels_channels_by_their_spatial_entropy(explainers):
    """Feature Entropy-CAM on a detector, against its formula in plain NumPy (float64): per level, the channels
    weighted by the spatial Shannon entropy of their positive part, normalised by ln(h·w), then combined
    unit-free as activation and eigen are."""
    from cam_infer.methods.levels import unit_free
    from cam_infer.postprocess import normalise
    ex = explainers["onnxruntime"]
    ctx, _ = context(ex)
    e = ex.explain(PHOTO, "entropy")
    assert e.class_agnostic and len(e.items[0]) >= 2
    maps = {}
    for li, a in enumerate(ctx.level_maps()):
        positive = np.maximum(a, 0).reshape(len(a), -1).astype(np.float64)
        total = positive.sum(axis=1, keepdims=True)
        p = np.divide(positive, total, out=np.zeros_like(positive), where=total > 0)
        weights = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1) / np.log(p.shape[1])
        maps[li] = np.tensordot(weights.astype(np.float32), a, axes=1)
    expected = normalise(unit_free(maps, (320, 320))[None])[0][0]
    for d in e.items[0]:
        np.testing.assert_allclose(d.saliency, expected, atol=1e-3)


@pytest.mark.parametrize("method", ["activation", "eigen", "entropy", "recipro", "ablation"])
def test_both_backends_give_the_same_maps_and_they_fall_in_their_boxes(explainers, method):
    a = explainers["onnxruntime"].explain(PHOTO, method)
    b = explainers["openvino"].explain(PHOTO, method)
    assert [(d.class_id, d.anchor) for d in a.items[0]] == [(d.class_id, d.anchor) for d in b.items[0]]
    assert len(a.items[0]) >= 2
    for da, db in zip(a.items[0], b.items[0]):
        np.testing.assert_allclose(da.saliency, db.saliency, atol=2e-2)
    if method in ("recipro", "ablation"):                 # instance-specific: the peak lies in its own box
        for d in a.items[0]:
            y, x = np.unravel_index(np.argmax(d.saliency), d.saliency.shape)
            x1, y1, x2, y2 = d.box
            assert x1 - 8 <= x <= x2 + 8 and y1 - 8 <= y <= y2 + 8


def test_the_backbone_cut_gives_maps_with_context(bundles):
    """At the backbone the neck mixes every level: ablation there runs all 64 channels and its map
    spreads beyond the 5×5-cell window that the Detect inputs allow."""
    ex = Explainer(bundles["backbone"], backend="openvino")
    d = ex.explain(PHOTO, "ablation", target=0).items[0][0]
    x1, y1, x2, y2 = d.box
    grown = np.zeros_like(d.saliency, bool)
    grown[max(int(y1) - 40, 0):int(y2) + 40, max(int(x1) - 40, 0):int(x2) + 40] = True
    assert d.saliency[~grown].max() > 0.2                 # evidence beyond the box's neighbourhood


# --- targets and errors -----------------------------------------------------------------------------------

def test_a_box_of_your_own_picks_the_anchor_that_predicts_it(explainers):
    ex = explainers["onnxruntime"]
    detected = ex.explain(PHOTO, "recipro").items[0]
    d = detected[1]
    own = ex.explain(PHOTO, "recipro", boxes=[(d.box_image, d.label)]).items[0][0]
    assert own.anchor == d.anchor and own.index is None and own.match_iou > 0.9
    np.testing.assert_allclose(own.saliency, d.saliency, atol=1e-6)
    only = ex.explain(PHOTO, "activation", classes=[d.label]).items[0]
    assert [x.class_id for x in only] == [d.class_id]


def test_bad_targets_are_one_clear_error(explainers):
    ex = explainers["onnxruntime"]
    with pytest.raises(CamInferError, match="lies outside"):
        ex.explain(PHOTO, "recipro", boxes=[([2000, 2000, 2100, 2100], 1)])
    with pytest.raises(CamInferError, match="unknown class|not a class|no class"):
        ex.explain(PHOTO, "recipro", classes=["GIRAFFE"])
    with pytest.raises(CamInferError, match="detection 9 does not exist"):
        ex.explain(PHOTO, "recipro", target=9)
    with pytest.raises(CamInferError, match="does not explain detections"):
        ex.explain(PHOTO, "gradcam")
    none = ex.explain(PHOTO, "recipro", conf=0.99)
    assert none.items == [[]] and len(none.detections[0]) == 0
    for box in ([np.nan, 0, 10, 10], [0, 0, np.inf, 10]):
        with pytest.raises(CamInferError, match="a box's corners must be finite numbers"):
            ex.explain(PHOTO, "recipro", boxes=[(box, 0)])


@pytest.mark.parametrize("thresholds", [{"conf": 1.5}, {"conf": -0.1}, {"conf": float("nan")}, {"iou": 0},
                                        {"iou": 2}, {"max_det": 0}, {"conf": "0.3"}, {"iou": True},
                                        {"max_det": 1.5}])
def test_split_refuses_nms_thresholds_that_explain_would_refuse(tmp_path, thresholds):
    from cam_infer.detection.split import split_detector
    (name, value), = thresholds.items()                  # the one bad value, named, with what it may be
    allowed = {"conf": r"in \[0, 1\)", "iou": r"in \(0, 1\]", "max_det": "at least 1"}[name]
    kind = "a whole number" if name == "max_det" else "a number"
    with pytest.raises(CamInferError, match=rf"^{name} must be {kind} {allowed}, not {re.escape(repr(value))}$"):
        split_detector(YOLO, tmp_path / "b", **thresholds)
    assert not (tmp_path / "b").exists()
    with pytest.raises(CamInferError, match="unknown NMS setting ious"):
        split_detector(YOLO, tmp_path / "b", ious=0.5)


def test_a_detector_read_by_openvino_split_as_a_classifier_is_one_line(tmp_path):
    """The IR of YOLOv8n splits as a detector by itself (tests/test_detection_formats.py); told it is a classifier,
    it is refused in one line that says what it looks like."""
    import openvino as ov
    ir = tmp_path / "yolo.xml"
    ov.save_model(ov.convert_model(str(YOLO)), str(ir), compress_to_fp16=False)
    assert_one_line_error(run_cli("split", ir, "--task", "classification", "--input-size", "320", "320", "--out",
                                  tmp_path / "a"),
                          "this looks like a detector (boxes and class scores per anchor); split it with --task "
                          "detection")


@pytest.mark.parametrize("flags, named", [(["--mean", "0.5", "0.5", "0.5"], "--mean"), (["--color", "bgr"], "--color"),
                                         (["--crop", "center", "--scale", "1"], "--crop, --scale"),
                                         (["--layout", "nhwc"], "--layout")])
def test_a_detector_split_refuses_preprocessing_it_would_not_read(tmp_path, flags, named):
    """Before, the bundle was written with the Ultralytics preprocessing whatever these said."""
    assert_one_line_error(run_cli("split", YOLO, "--out", tmp_path / "b", *flags),
                          f"{named}: a detector is split with the Ultralytics export's preprocessing")
    assert not (tmp_path / "b").exists()


def test_a_detector_split_refuses_a_layer_it_would_not_cut_at(tmp_path):
    """Before, --layer was left unread: the bundle was cut at the Detect inputs whatever layer it named."""
    assert_one_line_error(run_cli("split", YOLO, "--out", tmp_path / "b", "--layer", "/model.9/cv2/act/Mul_output_0"),
                          "--layer /model.9/cv2/act/Mul_output_0: a detector is cut with --cut")
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_split_and_explain_from_the_command_line(tmp_path):
    result = run_cli("split", YOLO, "--out", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    assert "task         detection" in result.stdout and "5x5 cells" in result.stdout
    result = run_cli("explain", tmp_path / "b", PHOTO, SHARED / "deployed" / "messi5.jpg", "--method", "recipro,eigen",
                     "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "no detection explained in 1 image" in result.stdout
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    records = written["results"]
    assert written["settings"]["layer"] == Bundle.load(tmp_path / "b").layers and len(written["settings"]["layer"]) > 1
    basket = [r for r in records if r["image"].endswith("basketball1.png")]
    assert {r["method"] for r in basket} == {"recipro", "eigen"}
    for r in basket:
        assert r["found"] == len(r["detections"]) >= 2
        assert r.get("class_agnostic", False) == (r["method"] == "eigen")
        for d in r["detections"]:       # a class-agnostic map names no class: the detection's is kept apart
            named = ("detection_class_id", "detection_label") if r.get("class_agnostic") else ("class_id", "label")
            assert set(named) <= set(d) and not {"class_id", "label", "detection_class_id", "detection_label"} \
                - set(named) & set(d)
            file = r["overlay"] if r.get("class_agnostic") else d["overlay"]    # eigen: one picture per image
            picture = cv2.imread(str(tmp_path / "out" / file))
            assert picture is not None and picture.shape[1] > 640          # the original image, a colour bar
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480
    # a box given on the command line is explained (the CLI's default --detections all beside it is no choice)
    first = basket[0]["detections"][0]
    box = ",".join(str(v) for v in first["box"]) + f":{first.get('label', first.get('detection_label'))}"
    result = run_cli("explain", tmp_path / "b", PHOTO, "--box", box, "--method", "recipro", "--out", tmp_path / "box")
    assert result.returncode == 0, result.stderr
    (given,) = json.loads((tmp_path / "box" / "results.json").read_text())["results"][0]["detections"]
    assert given["index"] is None and given["match_iou"] > 0.9
    # a detection asked of every image that one image lacks: that image is recorded as an error, the others done
    result = run_cli("explain", tmp_path / "b", PHOTO, SHARED / "deployed" / "messi5.jpg", "--method", "recipro",
                     "--detections", "1", "--out", tmp_path / "second")
    assert result.returncode == 1 and len(without_progress(result.stderr)) == 1, result.stderr
    assert "messi5.jpg: detection 1 does not exist: the image has 0 detections" in result.stderr
    written = json.loads((tmp_path / "second" / "results.json").read_text())
    assert [r["image"] for r in written["results"]] == [str(PHOTO)] and written["results"][0]["detections"][0][
        "index"] == 1 and [e["image"] for e in written["errors"]] == [str(SHARED / "deployed" / "messi5.jpg")]
    assert written["results"][0]["detections"][0]["overlay"].startswith("basketball1_recipro_1_")   # its index
    assert_one_line_error(run_cli("explain", tmp_path / "b", PHOTO, "--box", "5000,5000,5100,5100:FACE_FEMALE",
                                  "--out", tmp_path / "o2"), "lies outside", during_run=True)
    assert_one_line_error(run_cli("explain", tmp_path / "b", PHOTO, "--classes", "GIRAFFE", "--out", tmp_path / "o3"),
                          "GIRAFFE")
    assert_one_line_error(run_cli("explain", tmp_path / "b", PHOTO, "--target", "1", "--out", tmp_path / "o4"),
                          "--target is for classifiers")
    assert_one_line_error(run_cli("explain", tmp_path / "b", PHOTO, "--method", "eigen,gradcam", "--out",
                                  tmp_path / "o6"), "a detector is explained without gradients")
    assert not (tmp_path / "o6").exists()
    assert_one_line_error(run_cli("split", SHARED / "models" / "squeezenet1.1-fp32.onnx", "--task", "detection",
                                  "--out", tmp_path / "o5"), "not (N, 4+C, anchors)")


# --- fused, audited -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["activation", "eigen", "entropy"])
def test_a_fused_detector_returns_its_detections_and_the_explainers_map(bundles, explainers, tmp_path, method):
    from cam_infer.detection.fuse import fuse_detector
    model = fuse_detector(bundles["detect-input"], method)
    path = tmp_path / "fused.onnx"
    onnx.save(model, path)
    x = explainers["onnxruntime"]._inputs([PHOTO])[0]
    e = explainers["onnxruntime"].explain(PHOTO, method)
    expected_output = full_model_output(x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output, saliency = session.run(["output0", "saliency"], {"images": x})
    np.testing.assert_allclose(output, expected_output, atol=1e-4)
    np.testing.assert_allclose(saliency[0], e.items[0][0].saliency, atol=1e-4)     # the picture explain draws,
    assert saliency.min() == 0.0 and saliency.max() == 1.0                            # min–max'd in the graph
    import openvino as ov
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled({0: x})[compiled.output("saliency")], saliency, atol=2e-3)
    result = run_cli("fuse", bundles["detect-input"].path, "--method", "recipro", "--out", tmp_path / "r.onnx")
    assert_one_line_error(result, "needs a target box")
    for method, reason in (("recipr", "unknown method 'recipr' (did you mean 'recipro'?)"),
                           ("gradcam", "method 'gradcam' does not explain detections")):
        result = run_cli("fuse", bundles["detect-input"].path, "--method", method, "--out", tmp_path / "r.onnx")
        assert_one_line_error(result, reason)


def test_the_detection_audit_measures_each_map_in_its_box_and_resumes(bundles, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("basketball1.png", "messi5.jpg"):
        (images / name).write_bytes((SHARED / "deployed" / name).read_bytes())
    result = run_cli("audit", bundles["detect-input"].path, images, "--methods", "recipro,eigen", "--out",
                     tmp_path / "audit")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "audit" / "rows.jsonl").read_text().splitlines()]
    detected = [r for r in rows if r["method"] == "recipro"]
    assert len(detected) >= 2 and all(0 <= r["energy"] <= 1 and 0 < r["box_fraction"] < 1 for r in detected)
    assert np.mean([r["energy"] for r in detected]) > 5 * np.mean([r["box_fraction"] for r in detected])
    ex = Explainer(bundles["detect-input"])
    e = ex.explain([images / "basketball1.png"], "recipro")
    saliency, _ = e.preprocessing.to_image(e.items[0][0].saliency, e.images[0].shape[:2])
    from cam_infer.detection.audit import _pixels
    from cam_infer.metrics import energy_pointing
    first = next(r for r in detected if r["image"].endswith("basketball1.png") and r["index"] == 0)
    assert first["energy"] == pytest.approx(energy_pointing(saliency, [_pixels(e.items[0][0].box_image,
                                                                                 e.images[0].shape)]), rel=1e-5)
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert summary["methods"]["recipro"]["detections"] == len(detected)
    again = run_cli("audit", bundles["detect-input"].path, images, "--methods", "recipro,eigen", "--out",
                    tmp_path / "audit")
    assert again.returncode == 0 and (tmp_path / "audit" / "rows.jsonl").read_text().count("\n") == len(rows)


def test_classifier_tools_refuse_a_detector_bundle_in_one_line(bundles):
    from cam_infer import Explainer
    with pytest.raises(CamInferError, match="top_classes= does not apply to this bundle: it is a detection model"):
        Explainer(bundles["detect-input"]).explain(PHOTO, top_classes=2)
    assert_one_line_error(run_cli("bench", bundles["detect-input"].path), "bench/detection.py")
    info = run_cli("info", bundles["backbone"].path)
    assert info.returncode == 0 and "/model.4/cv2/act/Mul_output_0" in info.stdout
    assert "head sees the whole map" in info.stdout          # its 41x41-cell field was said of a 40x40 grid
