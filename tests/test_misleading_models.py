"""Models whose output is not what it looks like: split refuses them in one line instead of explaining a quantity
the model never computes (a multi-label Sigmoid read through a softmax, sorted ranks read as classes, a Softmax
over the wrong axis, percentages, a second output, scores below the input's resolution, a detector's raw logits
or fixed batch). The models are built here, small, with random weights; what is accepted is checked against the
model's own output."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cam_infer import CamInferError, Explainer
from cam_infer.bundle.split import split_onnx

RNG = np.random.default_rng(0)


def _weight(name, *shape, scale=0.3):
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _save(path, nodes, inits, inputs, outputs, opset=17):
    model = helper.make_model(helper.make_graph(nodes, path.stem, inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def classifier(path, tail, tail_inits=(), outputs=("scores",), opset=17):
    """conv → relu → GAP → flatten → Gemm → 'logits' (N,10), then `tail` (nodes making `outputs` from 'logits')."""
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["feat"]),
             helper.make_node("GlobalAveragePool", ["feat"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1), *tail]
    inits = [_weight("w1", 8, 3, 3, 3), _weight("b1", 8, scale=0.1), _weight("wf", 10, 8), _weight("bf", 10),
             *tail_inits]
    return _save(path, nodes, inits, [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
                 [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], opset)


def segmenter(path, tail, tail_inits=(), up=2.0, classes=4, size=32, opset=17):
    """conv → relu → strided conv 'feat' → 1×1 conv to `classes` → Resize ×`up` → 'up', then `tail` → 'scores';
    a `size`² input."""
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1] * 4, strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["feat"]),
             helper.make_node("Conv", ["feat", "wc", "bc"], ["cls"]),
             helper.make_node("Resize", ["cls", "roi", "sc"], ["up"], mode="linear"), *tail]
    inits = [_weight("w1", 8, 3, 3, 3), _weight("b1", 8, scale=0.1), _weight("w2", 16, 8, 3, 3),
             _weight("b2", 16, scale=0.1), _weight("wc", classes, 16, 1, 1, scale=1.0),
             _weight("bc", classes, scale=0.1),
             _const("sc", np.array([1, 1, up, up], np.float32)), _const("roi", np.zeros(0, np.float32)),
             *tail_inits]
    return _save(path, nodes, inits, [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
                 [helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)], opset)


SOFTMAX = helper.make_node("Softmax", ["logits"], ["p"], axis=1)
REFUSED_CLASSIFIERS = {
    "sigmoid": ([helper.make_node("Sigmoid", ["logits"], ["scores"])], (), "ends in a Sigmoid"),
    "topk": ([SOFTMAX, helper.make_node("TopK", ["p", "k"], ["scores", "ids"])], [_const("k", np.array([5]))],
             "comes out of a TopK"),
    "percent": ([SOFTMAX, helper.make_node("Mul", ["p", "hundred"], ["scores"])], [_const("hundred", np.float32(100))],
                "probabilities changed by a Mul"),
    "slice": ([SOFTMAX, helper.make_node("Slice", ["p", "s", "e", "a"], ["scores"])],
              [_const("s", np.array([1])), _const("e", np.array([10])), _const("a", np.array([1]))],
              "comes out of a Slice"),
    "softmax over the batch": ([helper.make_node("Softmax", ["logits"], ["scores"], axis=0)], (),
                               "Softmax over axis 0, not over its classes (axis 1)"),
    "transposed": ([helper.make_node("Transpose", ["logits"], ["scores"], perm=[1, 0])], (),
                   "Transpose that moves the batch axis"),
    "transposed without a perm": ([helper.make_node("Transpose", ["logits"], ["scores"])], (),
                                  "Transpose that moves the batch axis"),
}


@pytest.mark.parametrize("name", sorted(REFUSED_CLASSIFIERS))
def test_a_classifier_whose_output_is_not_one_score_per_class_is_refused_on_both_paths(name, tmp_path):
    import openvino as ov
    from cam_infer.bundle.openvino_split import split_openvino

    tail, inits, message = REFUSED_CLASSIFIERS[name]
    path = classifier(tmp_path / "m.onnx", tail, inits)
    with pytest.raises(CamInferError, match=re.escape(message)):
        split_onnx(path, "auto", tmp_path / "b")
    ov.save_model(ov.convert_model(str(path)), str(tmp_path / "m.xml"))
    with pytest.raises(CamInferError, match=re.escape(message)):
        split_openvino(tmp_path / "m.xml", "auto", tmp_path / "ir")


def test_a_model_with_two_outputs_is_refused_naming_them(tmp_path):
    path = classifier(tmp_path / "m.onnx", [helper.make_node("Identity", ["logits"], ["scores"]),
                                            helper.make_node("Gemm", ["flat", "wa", "ba"], ["aux"], transB=1)],
                      [_weight("wa", 4, 8), _weight("ba", 4)], outputs=("aux", "scores"))
    with pytest.raises(CamInferError, match=r"the model has 2 outputs \('aux', 'scores'\)"):
        split_onnx(path, "auto", tmp_path / "b")


@pytest.mark.parametrize("tail, inits, kind", [
    ([helper.make_node("Identity", ["logits"], ["scores"])], (), "logits"),
    ([helper.make_node("Div", ["logits", "t"], ["z"]), helper.make_node("Softmax", ["z"], ["scores"], axis=1)],
     [_const("t", np.float32(2.0))], "probabilities"),                      # a temperature before the Softmax
    ([helper.make_node("LogSoftmax", ["logits"], ["scores"], axis=1)], (), "logits"),
    ([SOFTMAX, helper.make_node("Log", ["p"], ["scores"])], (), "logits"),  # log-probabilities are logits
])
def test_scores_that_are_one_per_class_are_split_and_report_the_models_own_probability(tail, inits, kind, tmp_path):
    import onnxruntime as ort

    path = classifier(tmp_path / "m.onnx", tail, inits)
    bundle = split_onnx(path, "auto", tmp_path / "b")
    assert bundle.output_kind == kind
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    e = Explainer(bundle, backend="onnxruntime").explain(x, "activation")
    logits = ort.InferenceSession(str(path)).run(None, {"image": x})[0]
    probabilities = logits if kind == "probabilities" else np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(np.ravel(e.scores), probabilities.max(axis=1), rtol=1e-5)


@pytest.mark.parametrize("tail, inits, up, message", [
    ([helper.make_node("Softmax", ["up"], ["scores"], axis=-1)], (), 2.0,
     "Softmax over axis 3, not over its classes (axis 1)"),
    ([helper.make_node("Softmax", ["up"], ["p"], axis=1), helper.make_node("Mul", ["p", "k"], ["scores"])],
     [_const("k", np.float32(255))], 2.0, "probabilities changed by a Mul"),
    ([helper.make_node("Identity", ["up"], ["scores"])], (), 1.0, "scores on a 16x16 grid, and its input is 32x32"),
])
def test_a_segmenter_whose_scores_are_not_class_scores_per_input_pixel_is_refused(tail, inits, up, message, tmp_path):
    from cam_infer.bundle.segmentation import split_segmenter

    path = segmenter(tmp_path / "s.onnx", tail, inits, up)
    with pytest.raises(CamInferError, match=re.escape(message)):
        split_segmenter(path, out=tmp_path / "b", preprocessing={"crop": "none"})


def test_a_segmenter_softmax_over_its_classes_before_a_transpose_to_nhwc_is_accepted(tmp_path):
    from cam_infer.bundle.segmentation import split_segmenter

    path = segmenter(tmp_path / "s.onnx", [helper.make_node("Softmax", ["up"], ["p"], axis=1),
                                           helper.make_node("Transpose", ["p"], ["scores"], perm=[0, 2, 3, 1])])
    bundle = split_segmenter(path, out=tmp_path / "b", preprocessing={"crop": "none"})
    assert bundle.manifest["output"]["kind"] == "softmax" and bundle.manifest["output"]["model_layout"] == "NHWC"


def test_a_segmenter_ending_in_class_ids_cast_to_float_is_recognised(tmp_path):
    from cam_infer.bundle.segmentation import is_segmenter

    path = segmenter(tmp_path / "s.onnx", [helper.make_node("ArgMax", ["up"], ["ids"], axis=1, keepdims=0),
                                           helper.make_node("Cast", ["ids"], ["scores"], to=TensorProto.FLOAT)])
    assert is_segmenter(onnx.load(path))


def detector(path, batch, sigmoid=True, rows=7, anchors_first=False):
    """Three strided convolutions, a 1×1 head per level to 4 + C `rows`, concatenated to (N, rows, 84) for a 64×64
    input (8² + 4² + 2² anchors): boxes squashed to pixels, class rows through a Sigmoid or not; `anchors_first`:
    transposed to (N, 84, rows), YOLOv5's layout."""
    nodes, inits, x, cin = [], [], "images", 3
    for i, cout in enumerate([8, 16, 16, 32, 32]):
        inits += [_weight(f"w{i}", cout, cin, 3, 3), _weight(f"b{i}", cout, scale=0.1)]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1] * 4, strides=[2, 2]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x, cin = f"r{i}", cout
    for level, (source, channels, n) in enumerate([("r2", 16, 64), ("r3", 32, 16), ("r4", 32, 4)]):
        inits += [_weight(f"hw{level}", rows, channels, 1, 1), _weight(f"hb{level}", rows, scale=0.1),
                  _const(f"hs{level}", np.array([0 if batch is None else batch, rows, n]))]
        nodes += [helper.make_node("Conv", [source, f"hw{level}", f"hb{level}"], [f"h{level}"]),
                  helper.make_node("Reshape", [f"h{level}", f"hs{level}"], [f"p{level}"])]
    inits += [_const("split", np.array([4, rows - 4])), _const("size", np.float32(32.0))]
    nodes += [helper.make_node("Concat", ["p0", "p1", "p2"], ["raw"], axis=2),
              helper.make_node("Split", ["raw", "split"], ["box", "cls"], axis=1),
              helper.make_node("Sigmoid", ["box"], ["unit"]), helper.make_node("Mul", ["unit", "size"], ["pixels"]),
              helper.make_node("Sigmoid" if sigmoid else "Identity", ["cls"], ["classes"]),
              helper.make_node("Concat", ["pixels", "classes"], ["rows" if anchors_first else "output0"], axis=1)]
    if anchors_first:
        nodes.append(helper.make_node("Transpose", ["rows"], ["output0"], perm=[0, 2, 1]))
    dim = "N" if batch is None else batch
    shape = [dim, 84, rows] if anchors_first else [dim, rows, 84]
    return _save(path, nodes, inits, [helper.make_tensor_value_info("images", TensorProto.FLOAT, [dim, 3, 64, 64])],
                 [helper.make_tensor_value_info("output0", TensorProto.FLOAT, shape)])


@pytest.mark.parametrize("batch, sigmoid, message", [
    (1, True, "fixed batch of 1"),
    (None, False, "not probabilities in [0, 1]"),
])
def test_a_detector_exported_with_a_fixed_batch_or_raw_class_logits_is_refused(batch, sigmoid, message, tmp_path):
    from cam_infer.detection.split import split_detector

    path = detector(tmp_path / "d.onnx", batch, sigmoid)
    with pytest.raises(CamInferError, match=re.escape(message)):
        split_detector(path, tmp_path / "b", cut="r2,r3,r4")
    split_detector(detector(tmp_path / "ok.onnx", None), tmp_path / "ok", cut="r2,r3,r4")   # the same, as exported
    split_detector(tmp_path / "ok.onnx", tmp_path / "one", cut="r2")                       # a cut of one level too


def test_a_yolov5_layout_whose_sizes_happen_to_read_as_ultralytics_is_refused_by_its_strides(tmp_path):
    """(N, 84 anchors, 85 = 4 + 1 + 80): read as (N, 4+C, anchors), 85 anchors would need a stride-64 level that
    no feature map of the model has."""
    from cam_infer.detection.split import split_detector

    path = detector(tmp_path / "v5.onnx", None, rows=85, anchors_first=True)
    with pytest.raises(CamInferError, match="no feature map of the model is at stride 64"):
        split_detector(path, tmp_path / "b", cut="r2,r3,r4")


@pytest.mark.parametrize("nhwc", [False, True])
def test_an_ir_segmenter_whose_classes_equal_its_height_and_width_is_read_in_the_layout_its_ops_give(tmp_path, nhwc):
    """16 classes on a 16×16 input: both readings of (1,16,16,16) fit; the ops say which, on IR as on ONNX, and the
    split reproduces the model."""
    import openvino as ov
    from cam_infer.bundle.openvino_segmentation import split_openvino_segmenter
    from cam_infer.bundle.segmentation import split_segmenter

    tail = [helper.make_node("Transpose", ["up"], ["scores"], perm=[0, 2, 3, 1])] if nhwc else \
        [helper.make_node("Identity", ["up"], ["scores"])]
    path = segmenter(tmp_path / "s.onnx", tail, classes=16, size=16)
    ov.save_model(ov.convert_model(str(path)), str(tmp_path / "s.xml"))
    for bundle in (split_segmenter(path, out=tmp_path / "onnx", preprocessing={"crop": "none"}),
                   split_openvino_segmenter(tmp_path / "s.xml", out=tmp_path / "ir", preprocessing={"crop": "none"})):
        assert bundle.manifest["output"]["model_layout"] == ("NHWC" if nhwc else "NCHW")
        assert bundle.manifest["output"]["num_classes"] == 16


@pytest.mark.parametrize("shape, found", [((1, 300, 6), "ends in its own NMS"),
                                          ((1, 336, 85), "YOLOv5-style"),                 # 16² + 8² + 4² anchors
                                          ((1, 8, 1024), "sequence/token output")])
def test_detector_layouts_not_read_yet_are_named_as_such(shape, found):
    from cam_infer.bundle.anatomy import check_classifier_output

    with pytest.raises(CamInferError, match=found):
        check_classifier_output(shape, "output0", (128, 128))


def test_an_ir_classifier_of_dynamic_image_size_asks_for_input_size_and_splits_with_it(tmp_path):
    import openvino as ov
    from cam_infer.bundle.openvino_split import split_openvino

    path = classifier(tmp_path / "m.onnx", [helper.make_node("Identity", ["logits"], ["scores"])])
    model = onnx.load(path)
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], ("H", "W")):
        dim.dim_param = name
    onnx.save(model, path)
    ov.save_model(ov.convert_model(str(path)), str(tmp_path / "m.xml"))
    with pytest.raises(CamInferError, match="has no fixed spatial size; give one with --input-size H W"):
        split_openvino(tmp_path / "m.xml", "auto", tmp_path / "none")
    bundle = split_openvino(tmp_path / "m.xml", "auto", tmp_path / "b", input_size=(40, 24))
    assert tuple(bundle.input_shape[1:]) == (40, 24) and bundle.manifest["verification"]["max_abs_diff"] < 1e-4


def test_a_detector_whose_names_count_another_number_of_classes_than_its_rows_is_refused(tmp_path):
    """(N, 4+1+3, anchors) with Ultralytics' names metadata for 3 classes: the extra row (an objectness) would be
    read as a fourth class."""
    from cam_infer.detection.split import split_detector

    path = detector(tmp_path / "d.onnx", None, rows=8)
    model = onnx.load(path)
    model.metadata_props.add(key="names", value="{0: 'a', 1: 'b', 2: 'c'}")
    onnx.save(model, path)
    with pytest.raises(CamInferError, match="names metadata lists 3 classes, and its output has 4 class rows"):
        split_detector(path, tmp_path / "b", cut="r2,r3,r4")


def test_before_opset_13_a_softmax_is_over_every_axis_from_its_own(tmp_path):
    """Softmax-11 flattens the axes from `axis` on: over (N,1,1,C) from axis 1 it is over the classes (accepted);
    over a segmenter's (N,C,H,W) from axis 1 it is over C·H·W, not per pixel (refused)."""
    from cam_infer.bundle.segmentation import split_segmenter

    tail = [helper.make_node("Reshape", ["logits", "shape"], ["z"]),
            helper.make_node("Softmax", ["z"], ["scores"], axis=1)]
    path = classifier(tmp_path / "c.onnx", tail, [_const("shape", np.array([-1, 1, 1, 10]))], opset=11)
    assert split_onnx(path, "auto", tmp_path / "c").output_kind == "probabilities"
    path = segmenter(tmp_path / "s.onnx", [helper.make_node("Softmax", ["up"], ["scores"], axis=1)], opset=11)
    with pytest.raises(CamInferError, match=re.escape("Softmax over axes 1, 2, 3 (flattened: opset < 13)")):
        split_segmenter(path, out=tmp_path / "s", preprocessing={"crop": "none"})
