"""Detectors as edge boxes ship them: the real YOLOv8n of ../shared/data/deployed quantized to int8 (QDQ and
QOperator, ONNX Runtime's static quantization, Detect's decoding left in float as deployments leave it) and
converted to float16 (ONNX Runtime's converter, float32 input and output kept). Each is split exactly (the
head reads its cut as the unsplit model does), keeps its cropped class branches, and gives the maps the whole
head gives. The same network as OpenVINO IR (any batch; batch 1 as Ultralytics exports it; int8; float16
weights) is split as the IR it is and explains as its ONNX file does."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import SHARED, needs_shared
from helpers import assert_one_line_error, run_cli, without_branches

from cam_infer import Explainer
from cam_infer.bundle.graph import load_onnx
from cam_infer.detection.branches import crop_origin
from cam_infer.detection.split import split_detector
from cam_infer.errors import CamInferError
from cam_infer.images import Preprocessing

YOLO = SHARED / "deployed" / "nudenet_320n.onnx"
PHOTO = SHARED / "deployed" / "basketball1.png"
SECOND = SHARED / "deployed" / "messi5.jpg"
FORMATS = ("int8-qdq", "int8-qoperator", "float16")
pytestmark = needs_shared


def letterboxed(path) -> np.ndarray:
    prep = Preprocessing((320, 320), crop="letterbox", mean=(0, 0, 0), std=(1, 1, 1))
    image = prep.geometry(cv2.imread(str(path))[:, :, ::-1]).astype(np.float32) / 255
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None])


def quantized(out, quant_format) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    class Photos(CalibrationDataReader):
        def __init__(self):
            self.left = iter([PHOTO, SECOND])

        def get_next(self):
            path = next(self.left, None)
            return None if path is None else {"images": letterboxed(path)}

    decoding = [n.name for n in onnx.load(YOLO).graph.node
                if n.name.startswith("/model.22/") and not n.name.startswith(("/model.22/cv2", "/model.22/cv3"))]
    quantize_static(str(YOLO), str(out), Photos(), quant_format=quant_format, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=decoding)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.transformers.float16 import convert_float_to_float16
    work = tmp_path_factory.mktemp("formats")
    quantized(work / "int8-qdq.onnx", QuantFormat.QDQ)
    quantized(work / "int8-qoperator.onnx", QuantFormat.QOperator)
    onnx.save(convert_float_to_float16(onnx.load(YOLO), keep_io_types=True), work / "float16.onnx")
    return {name: work / f"{name}.onnx" for name in FORMATS}


@pytest.fixture(scope="module")
def bundles(models, tmp_path_factory):
    work = tmp_path_factory.mktemp("format-bundles")
    return {name: split_detector(path, work / name) for name, path in models.items()}


def unsplit(path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


@pytest.mark.parametrize("name", FORMATS)
def test_the_split_reproduces_the_deployed_file_exactly_and_keeps_exact_branches(models, bundles, name):
    bundle = bundles[name]
    assert bundle.manifest["verification"]["max_abs_diff"] == 0.0
    branches = [c["branch"] for c in bundle.manifest["cut"]]
    assert [b["tensor"].split("/")[2] for b in branches] == ["cv3.0", "cv3.1", "cv3.2"]
    bound = 2.0 ** -11 if name == "float16" else 0.0          # int8: exact; float16: a score's own rounding
    assert all(b["max_abs_diff"] <= bound for b in branches)
    x = np.concatenate([letterboxed(PHOTO), letterboxed(SECOND)])
    ex = Explainer(bundle, backend="onnxruntime")
    np.testing.assert_array_equal(ex.backend.forward(x), unsplit(models[name], x))
    packed = ex.backend.features(x)
    assert packed.dtype == np.float32 and np.isfinite(packed).all()


def test_an_int8_cut_reaches_the_methods_as_its_dequantized_steps(bundles):
    """The QOperator file's cut levels are uint8: the methods see (q − zero point)·scale, whole steps."""
    bundle = bundles["int8-qoperator"]
    graph = onnx.load(bundle.features_path).graph
    dequantize = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0].endswith("__float")]
    assert len(dequantize) == 3
    scales = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    packed = Explainer(bundle, backend="onnxruntime").backend.features(letterboxed(PHOTO))[0]
    for node, level in zip(dequantize, bundle.manifest["cut"]):
        scale = float(scales[node.input[1]])
        values = packed[level["offset"]:level["offset"] + int(np.prod(level["shape"]))]
        zero = float(scales[node.input[2]])
        steps = values / scale + zero
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)


@pytest.mark.parametrize("name, backend", [(n, b) for n in FORMATS for b in ("onnxruntime", "openvino")
                                           if (n, b) != ("int8-qoperator", "openvino")])   # OpenVINO cannot read it
def test_maps_through_the_cropped_branches_equal_the_whole_heads(bundles, tmp_path, name, backend):
    """int8: exactly. float16 on ONNX Runtime: its crop kernels round a float16 score otherwise than the whole map's
    (≤ 2⁻¹¹, the format's half unit), which a map's min–max of small score changes enlarges (measured 0.008)."""
    plain = without_branches(bundles[name], tmp_path / "plain")
    cropped, whole = Explainer(bundles[name], backend), Explainer(plain, backend)
    atol = 2e-2 if name == "float16" and backend == "onnxruntime" else 2e-4
    for method in ("recipro", "ablation"):
        a, b = cropped.explain(PHOTO, method), whole.explain(PHOTO, method)
        assert len(a.items[0]) == len(b.items[0]) >= 2
        for da, db in zip(a.items[0], b.items[0]):
            np.testing.assert_allclose(da.saliency, db.saliency, atol=atol)
            assert np.corrcoef(da.saliency.ravel(), db.saliency.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("name, similar", [("int8-qdq", 0.8), ("int8-qoperator", 0.8), ("float16", 0.99)])
def test_the_deployed_files_maps_are_the_float_models_where_they_detect_the_same(bundles, tmp_path, name, similar):
    """A property, not an identity: the int8 file is another model, whose maps of the detections both models make
    should still look like the float model's (measured: 0.87–1.0; float16 1.0)."""
    reference = Explainer(split_detector(YOLO, tmp_path / "float"), "onnxruntime").explain(PHOTO, "recipro")
    got = Explainer(bundles[name], "onnxruntime").explain(PHOTO, "recipro")
    pairs = [(d, r) for d in got.items[0] for r in reference.items[0] if r.class_id == d.class_id]
    assert len(pairs) >= 2
    for d, r in pairs:
        assert np.corrcoef(d.saliency.ravel(), r.saliency.ravel())[0, 1] >= similar


@pytest.mark.parametrize("name", ["int8-qdq", "float16"])
def test_openvino_runs_them_and_scores_as_it_runs_the_deployed_file(models, bundles, name):
    import openvino as ov
    x = np.concatenate([letterboxed(PHOTO), letterboxed(SECOND)])
    ex = Explainer(bundles[name], backend="openvino")
    compiled = ov.Core().compile_model(str(models[name]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    expected = compiled(x)[0]
    got = ex.backend.forward(x)
    np.testing.assert_allclose(got[:, 4:], expected[:, 4:], atol=1e-5)      # the class scores the methods read
    if name == "float16":
        np.testing.assert_allclose(got, expected, atol=1e-3 * np.abs(expected).max())
    assert len(ex.explain(PHOTO, "recipro").items[0]) >= 2


def test_a_qoperator_detector_on_openvino_is_one_line(bundles):
    with pytest.raises(CamInferError, match="does not run on openvino.*QLinearConv") as caught:
        Explainer(bundles["int8-qoperator"], backend="openvino")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", FORMATS)
def test_eigen_fuses_into_the_deployed_file(bundles, tmp_path, name):
    from cam_infer.detection.fuse import fuse_detector
    model = fuse_detector(bundles[name], "eigen")             # checked against the explainer inside (≤ 1e-3)
    check = json.loads({p.key: p.value for p in model.metadata_props}["cam_infer.check"])
    assert check["max_difference"] <= 1e-3
    path = tmp_path / "fused.onnx"
    onnx.save(model, path)
    outputs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {
        "images": letterboxed(PHOTO)})
    assert outputs[1].shape == (1, 320, 320)


def test_a_graph_stored_out_of_order_is_read_in_order(models, tmp_path):
    """ONNX Runtime's float16 converter appends the input's Cast after the nodes that read it; ONNX Runtime sorts
    for itself, and so does the package when it reads the file (it walks nodes in file order)."""
    stored = onnx.load(models["float16"])
    position = {o: i for i, n in enumerate(stored.graph.node) for o in n.output}
    assert any(position.get(i, -1) > k for k, n in enumerate(stored.graph.node) for i in n.input)
    model = load_onnx(models["float16"])
    seen = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    for node in model.graph.node:
        assert all(i in seen for i in node.input)
        seen |= set(node.output)
    assert sorted(n.name for n in model.graph.node) == sorted(n.name for n in stored.graph.node)
    reversed_model = onnx.load(YOLO)
    nodes = list(reversed_model.graph.node)[::-1]
    del reversed_model.graph.node[:]
    reversed_model.graph.node.extend(nodes)
    onnx.save(reversed_model, tmp_path / "reversed.onnx")
    assert split_detector(tmp_path / "reversed.onnx", tmp_path / "b").manifest["verification"]["max_abs_diff"] == 0


def test_a_cycle_is_one_line(tmp_path):
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "cycle.onnx")
    with pytest.raises(CamInferError, match="cycle") as caught:
        load_onnx(tmp_path / "cycle.onnx")
    assert "\n" not in str(caught.value)
    assert_one_line_error(run_cli("split", tmp_path / "cycle.onnx", "--out", tmp_path / "b"), "cycle")


# --- OpenVINO IR ---------------------------------------------------------------------------------------------

IR_FORMATS = ("ir", "ir-batch1", "ir-int8", "ir-f16-weights")


@pytest.fixture(scope="module")
def ir_models(models, tmp_path_factory):
    import openvino as ov
    work, core = tmp_path_factory.mktemp("ir"), ov.Core()
    fixed = core.read_model(YOLO)
    fixed.reshape([1, 3, 320, 320])
    made = {"ir": (core.read_model(YOLO), False), "ir-batch1": (fixed, False),
            "ir-int8": (core.read_model(models["int8-qdq"]), False), "ir-f16-weights": (core.read_model(YOLO), True)}
    for name, (model, compress) in made.items():
        ov.save_model(model, work / f"{name}.xml", compress_to_fp16=compress)
    return {name: work / f"{name}.xml" for name in made}


@pytest.fixture(scope="module")
def ir_bundles(ir_models, tmp_path_factory):
    work = tmp_path_factory.mktemp("ir-bundles")
    return {name: split_detector(path, work / name) for name, path in ir_models.items()}


@pytest.mark.parametrize("name", IR_FORMATS)
def test_an_ir_detector_splits_as_the_ir_it_is(ir_bundles, name):
    bundle = ir_bundles[name]
    m = bundle.manifest
    assert bundle.graph_format == "openvino" and m["task"] == "detection"
    assert [lv["name"].split("/")[1:3] for lv in m["cut"]] == [["model.15", "cv2"], ["model.18", "cv2"],
                                                             ["model.21", "cv2"]]
    assert [lv["receptive_radius"] for lv in m["cut"]] == [2, 2, 2] and m["batch"] == "dynamic"
    assert m["labels"][:2] == ["FEMALE_GENITALIA_COVERED", "FACE_FEMALE"]           # the ONNX file's metadata, kept
    verified = m["verification"]                                # int8: OpenVINO compiles each graph its own way
    assert verified["scores_max_abs_diff"] <= (1e-3 if name == "ir-int8" else 1e-5)
    assert verified["boxes_max_abs_diff"] <= (3.2 if name == "ir-int8" else 1e-3)


@pytest.mark.parametrize("name, onnx_bundle", [("ir", None), ("ir-batch1", None), ("ir-int8", "int8-qdq"),
                                               ("ir-f16-weights", None)])
def test_an_ir_detector_explains_as_its_onnx_file_does(ir_bundles, bundles, tmp_path, name, onnx_bundle):
    reference = bundles[onnx_bundle] if onnx_bundle else split_detector(YOLO, tmp_path / "float")
    ours, theirs = Explainer(ir_bundles[name], "openvino"), Explainer(reference, "openvino")
    for method in ("eigen", "recipro", "ablation"):
        a, b = ours.explain(PHOTO, method), theirs.explain(PHOTO, method)
        assert [d.class_id for d in a.items[0]] == [d.class_id for d in b.items[0]] and len(a.items[0]) >= 2
        for da, db in zip(a.items[0], b.items[0]):
            np.testing.assert_allclose(da.saliency, db.saliency, atol=5e-3)     # a static graph compiles otherwise


@pytest.mark.parametrize("name", IR_FORMATS)
def test_an_ir_detector_keeps_each_levels_class_branch_cut_from_the_ir(ir_bundles, name):
    """cv3.l's class convolution, found in OpenVINO's graph (an int8 IR's after its logits' quantization: the float
    logits before it are 1.6e-5 off and refused) and written as IR; on the photo's cut maps each anchor's crop through
    it gives the whole head's class scores at that anchor."""
    bundle = ir_bundles[name]
    branches = [lv["branch"] for lv in bundle.manifest["cut"]]
    assert [b["tensor"].split("/")[2] for b in branches] == ["cv3.0", "cv3.1", "cv3.2"]
    assert all(b["window"] == 5 and b["scores"] == "sigmoid" and b["max_abs_diff"] == 0.0 for b in branches)
    assert all(b["tensor"].endswith("_DequantizeLinear") == (name == "ir-int8") for b in branches)
    assert all((bundle.path / f"branch_{i}.bin").is_file() for i in range(3))
    backend = Explainer(bundle, "openvino").backend
    packed = backend.features(letterboxed(PHOTO))
    output = backend.head(packed)[0]
    first = 0
    for i, level in enumerate(bundle.manifest["cut"]):
        c, h, w = level["shape"]
        maps = packed[0, level["offset"]:level["offset"] + c * h * w].reshape(c, h, w)
        cells = [(0, 0), (h // 2, w // 3), (h - 1, w - 2)]
        crops = np.stack([maps[:, y0:y0 + 5, x0:x0 + 5] for y0, x0 in (crop_origin(r, q, h, w, 5) for r, q in cells)])
        got = backend.branch(i, crops)
        for (r, q), scores in zip(cells, got):
            y0, x0 = crop_origin(r, q, h, w, 5)
            np.testing.assert_allclose(scores[:, r - y0, q - x0], output[4:, first + r * w + q], atol=1e-6)
        first += h * w


@pytest.mark.parametrize("name", IR_FORMATS)
def test_an_ir_detectors_maps_through_its_cropped_branches_equal_its_whole_heads(ir_bundles, tmp_path, name):
    """Measured equal to the last bit on every format; a float IR is held to 1e-5 (another CPU may pick other
    kernels for a 5×5 crop than for a 40×40 map), an int8 IR's integer kernels to exact equality."""
    plain = without_branches(ir_bundles[name], tmp_path / "plain")
    cropped, whole = Explainer(ir_bundles[name], "openvino"), Explainer(plain, "openvino")
    for method in ("recipro", "ablation"):
        a, b = cropped.explain(PHOTO, method), whole.explain(PHOTO, method)
        assert len(a.items[0]) == len(b.items[0]) >= 2
        for da, db in zip(a.items[0], b.items[0]):
            np.testing.assert_allclose(da.saliency, db.saliency, atol=0 if name == "ir-int8" else 1e-5, rtol=0)


def test_an_ir_branch_that_does_not_reproduce_the_head_is_not_written(ir_models, tmp_path, monkeypatch):
    """A window one cell short of the measured radius reproduces no anchor's scores: no branch; and a split whose
    branches all fail their check writes a bundle without them, whose rows run through the whole head."""
    import openvino as ov

    from cam_infer.bundle.openvino_cut_set import OpenVinoGraph
    from cam_infer.bundle.openvino_split import _compiled, _input_spec
    from cam_infer.detection.branches import level_branches
    from cam_infer.detection.decode import anchor_levels
    from cam_infer.detection.openvino_branches import IrBranches
    from cam_infer.detection.openvino_split import _cut_members
    model = ov.Core().read_model(ir_models["ir-batch1"])
    graph = OpenVinoGraph(model, _input_spec(model, "NCHW"))
    members = _cut_members(graph, "detect-input", model.get_results()[0].input_value(0), 320)
    full = split_detector(ir_models["ir-batch1"], tmp_path / "full")
    levels = full.manifest["cut"]
    feat, head = (_compiled(ov.Core().read_model(full.graph_path(role))) for role in ("features", "head"))
    packed = next(iter(feat(letterboxed(PHOTO)).values()))
    run = lambda rows: next(iter(head(rows).values()))                             # noqa: E731
    grid = anchor_levels((320, 320), 2100)
    short = level_branches(IrBranches(graph, members), levels, [{"radius": 1, "levels": [i]} for i in range(3)], 18,
                           grid, run, packed)
    exact = level_branches(IrBranches(graph, members), levels[:1], [{"radius": 2, "levels": [0]}], 18, grid, run,
                           packed)
    assert short == {} and list(exact) == [0]
    monkeypatch.setattr(IrBranches, "tolerance", lambda self, i, level: -1.0)
    bundle = split_detector(ir_models["ir-batch1"], tmp_path / "none")
    assert not any("branch" in lv for lv in bundle.manifest["cut"]) and not list(bundle.path.glob("branch_*"))
    assert not any(role.startswith("branch") for role in bundle.manifest["graphs"])
    maps = Explainer(bundle, "openvino").explain(PHOTO, "recipro").items[0]
    for got, expected in zip(maps, Explainer(full, "openvino").explain(PHOTO, "recipro").items[0]):
        np.testing.assert_allclose(got.saliency, expected.saliency, atol=1e-5, rtol=0)


def test_an_ir_detector_from_the_command_line(ir_models, tmp_path):
    done = run_cli("split", ir_models["ir-batch1"], "--out", tmp_path / "b")       # recognised as a detector
    assert done.returncode == 0, done.stderr
    assert "task         detection" in done.stdout and "class scores 0" in done.stdout
    backbone = run_cli("split", ir_models["ir"], "--cut", "backbone", "--out", tmp_path / "bb")
    assert backbone.returncode == 0, backbone.stderr
    assert "'/model.4/cv2/act/Mul' (64,40,40) stride 8" in backbone.stdout
    explained = run_cli("explain", ir_models["ir"], PHOTO, "--method", "recipro", "--out", tmp_path / "maps")
    assert explained.returncode == 0, explained.stderr
    assert len(list((tmp_path / "maps").glob("basketball1_recipro_*.jpg"))) >= 2
    assert_one_line_error(run_cli("fuse", tmp_path / "b", "--method", "eigen", "--out", tmp_path / "f.onnx"),
                          "this is an OpenVINO IR bundle")


def test_an_ir_detector_cut_at_its_input_is_one_line(ir_models, tmp_path):
    """The image itself passed every check of a single cut (a 4-D float map at stride 1), and OpenVINO then refused
    the features graph it gave (RuntimeError: 'Model references undeclared parameters')."""
    with pytest.raises(CamInferError, match="'images' is the detector's input image") as caught:
        split_detector(ir_models["ir"], tmp_path / "b", cut="images")
    assert "\n" not in str(caught.value)


def test_an_ir_detector_at_a_size_its_strides_do_not_divide_is_one_line(ir_models, tmp_path):
    """OpenVINO's reshape to 300×300 fails where an upsampled stride-32 map meets a stride-16 one (RuntimeError)."""
    assert_one_line_error(run_cli("split", ir_models["ir"], "--input-size", "300", "300", "--out", tmp_path / "b"),
                          "cannot take a 300x300 input: OpenVINO's shapes do not fit together at '/model.11/Concat'")


def test_a_fused_qoperator_detector_served_on_openvino_is_one_line(bundles, tmp_path):
    from cam_infer.detection.fuse import fuse_detector
    from cam_infer.serve.models import FusedRuntime
    onnx.save(fuse_detector(bundles["int8-qoperator"], "eigen"), tmp_path / "fused.onnx")
    with pytest.raises(CamInferError, match="'fused.onnx' does not run on openvino .*QLinearConv.*--backend "
                                            "onnxruntime") as caught:
        FusedRuntime(tmp_path / "fused.onnx", "openvino", "CPU", None)
    assert "\n" not in str(caught.value)


def test_an_int8_file_whose_scores_round_to_zero_is_refused(tmp_path):
    """Quantized with Detect's decoding, the output shares one scale with the boxes' 0–320 px (1.25 a step): every
    class score rounds to 0. It split and verified (max |diff| 0) and every explanation was empty ('none above the
    threshold'); the file and its IR are now refused in one line."""
    import openvino as ov
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization import quantize_static as original

    def everything(model_input, model_output, reader, **kwargs):
        original(model_input, model_output, reader, **{**kwargs, "nodes_to_exclude": []})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("onnxruntime.quantization.quantize_static", everything)
        quantized(tmp_path / "all.onnx", QuantFormat.QDQ)
    assert unsplit(tmp_path / "all.onnx", letterboxed(PHOTO))[:, 4:].max() == 0
    ov.save_model(ov.Core().read_model(tmp_path / "all.onnx"), tmp_path / "all.xml")
    for source in ("all.onnx", "all.xml"):
        assert_one_line_error(run_cli("split", tmp_path / source, "--out", tmp_path / source.replace(".", "-")),
                              "class scores are 0 at every anchor and class of random images")


def test_an_ir_detector_refuses_what_its_onnx_file_refuses(ir_models, tmp_path):
    """A name that does not cut the head alone, an input size a fixed IR does not have, class names of another count:
    each one line, as for the ONNX file (the IR had completed the cut, kept its own size, dropped the names)."""
    import openvino as ov
    assert_one_line_error(run_cli("split", ir_models["ir"], "--cut", "/model.9/cv2/act/Mul", "--out", tmp_path / "a"),
                          "do not cut the detector: its head also reads")
    assert_one_line_error(run_cli("split", ir_models["ir-batch1"], "--input-size", "640", "640", "--out",
                                  tmp_path / "b"), "the detector's input is fixed at 320x320; --input-size 640 640")
    model = ov.Core().read_model(ir_models["ir"])
    model.set_rt_info("{0: 'person', 1: 'car'}", ["framework", "names"])
    ov.save_model(model, tmp_path / "two.xml", compress_to_fp16=False)
    assert_one_line_error(run_cli("split", tmp_path / "two.xml", "--out", tmp_path / "c"),
                          "names metadata lists 2 classes")
