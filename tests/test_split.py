"""Splitting ONNX models: layer lookup, cut points, dynamic batch, float16, verification, manifest."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tiny_onnx import mlp, tiny_cnn, to_float16

from cam_infer import Bundle, CamInferError, load_backend, split_onnx
from cam_infer.bundle.graph import Graph
from cam_infer.bundle.layers import crossing_tensors, find_target_layer, is_cut_point


def _full_model(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _images(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def test_auto_layer_is_last_spatial_cut_point_not_pooled_map():
    graph = Graph.from_model(tiny_cnn())
    target = find_target_layer(graph, "auto")
    assert target.tensor == "features"        # not 'pooled' (1x1) and not the scores
    assert target.matched_by == "auto"


def test_layer_by_tensor_name_and_by_node_name():
    graph = Graph.from_model(tiny_cnn())
    assert find_target_layer(graph, "conv3").tensor == "conv3"
    by_node = find_target_layer(graph, "relu3")     # the node 'relu3' writes tensor 'features'
    assert by_node.tensor == "features" and by_node.matched_by == "node"


def test_split_refuses_layer_bypassed_by_skip_connection():
    graph = Graph.from_model(tiny_cnn(skip=True))
    assert crossing_tensors(graph, "relu2") == ["relu1"]
    assert not is_cut_point(graph, "relu2")
    assert is_cut_point(graph, "sum")
    with pytest.raises(CamInferError, match=r"'relu2' is not a cut point: the head also reads 'relu1'.*"
                                            r"nearest valid layer: 'sum'"):
        find_target_layer(graph, "relu2")


def test_auto_skips_tensors_inside_a_residual_block(tmp_path):
    bundle = split_onnx(tiny_cnn(skip=True), layer="auto", out=tmp_path / "b")
    assert bundle.activation_name == "features"
    # the head reads only the activation: it must not contain any node of the backbone
    head = onnx.load(bundle.head_path)
    assert [i.name for i in head.graph.input] == ["features"]
    assert {n.op_type for n in head.graph.node} == {"GlobalAveragePool", "Flatten", "Gemm"}


@pytest.mark.parametrize("layer, message", [
    ("nope", r"unknown layer 'nope'.*use --layer auto"),
    ("relu", r"did you mean 'relu\d'"),
    ("pooled", r"pooled to 1x1"),
    ("logits", r"is the model.s output, not a feature map"),
    ("image", r"is the model input"),
    ("w3", r"constant"),
])
def test_unusable_layers_are_refused_with_a_way_out(layer, message):
    with pytest.raises(CamInferError, match=message):
        find_target_layer(Graph.from_model(tiny_cnn()), layer)


def test_model_without_4d_tensor_is_refused(tmp_path):
    with pytest.raises(CamInferError, match="no feature map"):
        split_onnx(mlp(), out=tmp_path / "b")


@pytest.mark.parametrize("layer", ["auto", "conv2", "conv3"])
def test_head_of_features_reproduces_model_for_several_batch_sizes(tmp_path, layer):
    model = tiny_cnn()
    bundle = split_onnx(model, layer=layer, out=tmp_path / "b")
    x = _images(5)
    expected = _full_model(model, x)
    for name in ("onnxruntime", "openvino"):
        backend = load_backend(bundle, backend=name)
        np.testing.assert_allclose(backend.head(backend.features(x)), expected, rtol=1e-4, atol=1e-5)
    v = bundle.manifest["verification"]
    assert v["passed"] and v["batch_sizes"] == [1, 3] and v["max_abs_diff"] <= 1e-4


def test_fixed_batch_model_gets_dynamic_batch_by_rewriting_reshape(tmp_path):
    model = tiny_cnn(batch=1, head="reshape")          # Reshape target [1, 16] hard-codes the batch
    bundle = split_onnx(model, out=tmp_path / "b")
    assert bundle.dynamic_batch
    head = onnx.load(bundle.head_path)
    assert head.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    x = _images(4)
    expected = np.concatenate([_full_model(model, x[i:i + 1]) for i in range(4)])
    backend = load_backend(bundle, backend="onnxruntime")
    assert backend.chunk_size("head") > 1
    np.testing.assert_allclose(backend.forward(x), expected, rtol=1e-5, atol=1e-6)


def test_model_that_only_works_at_batch_1_runs_image_by_image(tmp_path):
    model = tiny_cnn(batch=1, head="flatten0")        # Flatten(axis=0): batch 3 would break the Gemm
    bundle = split_onnx(model, out=tmp_path / "b")
    assert not bundle.dynamic_batch and bundle.manifest["batch"] == "fixed"
    x = _images(3)
    expected = np.concatenate([_full_model(model, x[i:i + 1]) for i in range(3)])
    for name in ("onnxruntime", "openvino"):
        backend = load_backend(bundle, backend=name)
        assert backend.chunk_size("features") == 1
        np.testing.assert_allclose(backend.forward(x), expected, rtol=1e-5, atol=1e-6)


def test_float16_model_takes_and_returns_float32(tmp_path):
    half = to_float16(tiny_cnn())
    bundle = split_onnx(half, out=tmp_path / "b")
    assert bundle.manifest["input"]["model_dtype"] == "float16"
    for path in (bundle.features_path, bundle.head_path):
        g = onnx.load(path).graph
        assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert g.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = _images(2)
    expected = _full_model(half, x.astype(np.float16)).astype(np.float32)
    for name in ("onnxruntime", "openvino"):
        backend = load_backend(bundle, backend=name)
        a = backend.features(x)
        assert a.dtype == np.float32
        np.testing.assert_allclose(backend.head(a), expected, rtol=2e-2, atol=2e-2)


def test_softmax_output_is_recorded_as_probabilities(tmp_path):
    assert split_onnx(tiny_cnn(softmax=True), out=tmp_path / "p").output_kind == "probabilities"
    assert split_onnx(tiny_cnn(), out=tmp_path / "l").output_kind == "logits"


def test_manifest_records_everything_info_needs(tmp_path, tiny_onnx_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\nfish\n")
    bundle = split_onnx(tiny_onnx_path, out=tmp_path / "b", labels=labels,
                        preprocessing={"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "crop": "none"})
    m = bundle.manifest
    assert m["format_version"] == 1
    assert m["input"] == {"name": "image", "shape": [None, 3, 64, 64], "layout": "NCHW", "dtype": "float32",
                          "model_dtype": "float32", "model_layout": "NCHW"}
    assert m["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and m["preprocessing"]["crop"] == "none"
    assert m["activation"] == {"name": "features", "shape": [16, 16, 16], "dtype": "float32", "quantization": None}
    assert m["output"] == {"name": "logits", "kind": "logits", "num_classes": 4, "model_output": "logits",
                           "left_out": [], "model_output_step": 0.0, "logits_step": 0.0}
    assert m["runtimes"] == {"onnxruntime": {"runs": True}, "openvino": {"runs": True}}
    assert bundle.labels == ["cat", "dog", "bird", "fish"]
    assert len(m["graphs"]["features"]["sha256"]) == 64 and m["provenance"]["source"] == "tiny.onnx"
    assert Bundle.load(tmp_path / "b").manifest == m


def test_label_count_must_match_classes(tmp_path, tiny_onnx_path):
    with pytest.raises(CamInferError, match="3 labels given, but the model has 4 classes"):
        split_onnx(tiny_onnx_path, out=tmp_path / "b", labels=["a", "b", "c"])


def test_a_labels_file_with_notes_after_the_names_says_which_lines_are_beyond_the_classes(tmp_path, tiny_onnx_path):
    """As the PASCAL VOC labels file shipped beside DeepLab: the names, a blank line, then two lines of prose."""
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\nfish\n\nand 255 is the ignore label that marks pixels excluded\nfrom it.\n")
    with pytest.raises(CamInferError, match=r"6 labels in .*, but the model has 4 classes: lines 6–7 beyond them, "
                                            r"from 'and 255 is the ignore label that marks …'"):
        split_onnx(tiny_onnx_path, out=tmp_path / "b", labels=labels)


def test_existing_bundle_is_not_replaced_without_overwrite(tmp_path, tiny_onnx_path):
    split_onnx(tiny_onnx_path, out=tmp_path / "b")
    with pytest.raises(CamInferError, match="not empty"):
        split_onnx(tiny_onnx_path, out=tmp_path / "b", layer="conv2")
    assert split_onnx(tiny_onnx_path, out=tmp_path / "b", layer="conv2", overwrite=True).activation_name == "conv2"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(CamInferError, match="not a bundle"):
        split_onnx(tiny_onnx_path, out=tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_split_leaves_the_users_model_unchanged(tiny_onnx_path, tmp_path):
    model = tiny_cnn(batch=1, head="reshape")
    before = model.SerializeToString()
    split_onnx(model, out=tmp_path / "b")
    assert model.SerializeToString() == before


def test_preprocessing_that_squeezes_the_pixels_for_an_integer_model_is_refused():
    """TensorFlow's float preprocessing ([-1, 1]) given to a uint8 model: rounded at its input, every image was
    0 or 1, and every photo the same class."""
    from cam_infer.bundle.split import _integer_range_checked
    from cam_infer.images import Preprocessing
    tf_float = Preprocessing((160, 160), mean=(127.5,) * 3, std=(127.5,) * 3, scale=1.0)
    with pytest.raises(CamInferError, match=r"maps pixels 0…255 to -1…1, and the model takes uint8 \(0…255\)"):
        _integer_range_checked(tf_float, "uint8")
    assert _integer_range_checked(tf_float, "float32") is tf_float
    raw = Preprocessing((160, 160), mean=(0.0,) * 3, std=(1.0,) * 3, scale=1.0)
    shifted = Preprocessing((160, 160), mean=(128.0,) * 3, std=(1.0,) * 3, scale=1.0)
    assert _integer_range_checked(raw, "uint8") is raw and _integer_range_checked(shifted, "int8") is shifted
    one_channel_squeezed = Preprocessing((160, 160), mean=(0.0,) * 3, std=(1.0, 1.0, 20.0), scale=1.0)
    with pytest.raises(CamInferError, match="every image would be nearly the same input"):
        _integer_range_checked(one_channel_squeezed, "uint8")


def uint8_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` taking uint8 pixels (cast to float at once), as a TensorFlow-born model takes them."""
    name = model.graph.input[0].name
    for node in model.graph.node:
        node.input[:] = [f"{name}_float" if i == name else i for i in node.input]
    model.graph.node.insert(0, onnx.helper.make_node("Cast", [name], [f"{name}_float"], to=onnx.TensorProto.FLOAT))
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.UINT8
    return model


def test_the_manifest_and_info_say_whether_the_normalisation_was_given_read_or_guessed(tmp_path, tiny_onnx_path):
    """ImageNet's mean and std guessed for a float model were recorded and shown as a normalisation given with
    --mean/--std is; now each of mean, std and scale is "given", "model" (the file's record, or an integer input) or
    "default", and a bundle written before says it was not recorded."""
    import json

    import openvino as ov
    from helpers import run_cli

    from cam_infer.audit.report import recorded_protocol
    from cam_infer.bundle import split_model
    from cam_infer.bundle.describe import describe
    from cam_infer.images import Preprocessing

    guessed = split_onnx(tiny_onnx_path, out=tmp_path / "guessed")
    assert guessed.manifest["normalisation"] == {"mean": "default", "std": "default", "scale": "default"}
    assert "normalised   the default for a float input, guessed (x/255, then ImageNet's mean and std)" in describe(
        guessed)
    given = run_cli("split", tiny_onnx_path, "--out", tmp_path / "given", "--mean", "0.5", "0.5", "0.5", "--std",
                    "0.5", "0.5", "0.5", "--scale", "0.00392156862745098")
    assert given.returncode == 0, given.stderr
    assert "\nnormalised   given\n" in given.stdout
    assert Bundle.load(tmp_path / "given").normalisation == dict.fromkeys(("mean", "std", "scale"), "given")
    assert split_onnx(tiny_onnx_path, out=tmp_path / "whole", preprocessing=Preprocessing(
        (64, 64))).normalisation == dict.fromkeys(("mean", "std", "scale"), "given")
    part = split_onnx(tiny_onnx_path, out=tmp_path / "part", preprocessing={"scale": 1 / 127.5})
    assert "normalised   mean and std the default, guessed; scale given" in describe(part)
    pixels = split_onnx(uint8_input(tiny_cnn()), out=tmp_path / "uint8")
    assert pixels.normalisation == dict.fromkeys(("mean", "std", "scale"), "model")
    assert "normalised   read from the model" in describe(pixels)
    recorded = tiny_cnn()
    onnx.helper.set_model_props(recorded, {"cam_infer.preprocessing": json.dumps({"mean": [0.5] * 3,
                                                                                   "std": [0.5] * 3})})
    assert split_onnx(recorded, out=tmp_path / "recorded", preprocessing={"color": "bgr"}).normalisation == {
        "mean": "model", "std": "model", "scale": "default"}
    ov.save_model(ov.convert_model(str(tiny_onnx_path)), str(tmp_path / "tiny.xml"))
    assert split_model(tmp_path / "tiny.xml", out=tmp_path / "ir").normalisation == dict.fromkeys(
        ("mean", "std", "scale"), "default")
    assert recorded_protocol(guessed, ())["normalisation"] == guessed.normalisation
    manifest = json.loads((tmp_path / "given" / "bundle.json").read_text())          # a bundle written before
    del manifest["normalisation"]
    (tmp_path / "given" / "bundle.json").write_text(json.dumps(manifest))
    old = Bundle.load(tmp_path / "given")
    assert old.normalisation is None and recorded_protocol(old, ())["normalisation"] == "not recorded"
    shown = run_cli("info", tmp_path / "given")
    assert shown.returncode == 0 and "\nnormalised   not recorded" in shown.stdout, shown.stderr
