"""Token models: the residual stream recognised from the graph, the cut between blocks, refusals."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cam_infer import CamInferError
from cam_infer.bundle.split import split_onnx
from conftest import needs_torch

pytestmark = needs_torch


@pytest.fixture(scope="session")
def tiny_vits(tmp_path_factory):
    from tiny_transformers import export_tiny
    folder = tmp_path_factory.mktemp("tiny-vits")
    return {name: export_tiny(name, folder / f"{name}.onnx", dynamo=name == "swin") for name in ("vit", "deit", "swin")}


@pytest.fixture(scope="session")
def vit_bundles(tiny_vits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit-bundles")
    return {name: split_onnx(path, "auto", folder / name) for name, path in tiny_vits.items()}


@pytest.mark.parametrize("name, prefix, grid", [("vit", 1, (8, 8)), ("deit", 2, (6, 10)), ("swin", 0, (8, 8))])
def test_auto_cuts_at_the_last_block_input(vit_bundles, name, prefix, grid):
    bundle = vit_bundles[name]
    tokens = bundle.tokens
    assert (tokens.prefix, tokens.grid, tokens.dim) == (prefix, grid, 32)
    assert bundle.activation_shape == (32, *grid)
    last = "blocks.1" if name != "swin" else None          # the last block's input is the one before's output
    if last:
        assert bundle.manifest["target_layer"]["module"] == last
    assert len(bundle.manifest["activation"]["tokens"]["attention"]) == (3 if name != "swin" else 2)


def test_tokens_round_trip_through_the_grid(vit_bundles):
    tokens = vit_bundles["deit"].tokens
    t = np.random.default_rng(0).standard_normal((3, *tokens.shape)).astype(np.float32)
    grid, prefix = tokens.split(t)
    assert grid.shape == (3, 32, 6, 10) and prefix.shape == (3, 2, 32)
    assert np.array_equal(grid[1, :, 2, 3], t[1, 2 + 2 * 10 + 3])           # row-major after the prefix
    assert np.array_equal(tokens.join(grid[1:2], prefix[1]), t[1:2])


def test_the_features_graph_ends_at_the_stream(tiny_vits, vit_bundles):
    """features(x) is the model's own tensor at the last block's input (read from the unsplit model)."""
    bundle = vit_bundles["vit"]
    model = onnx.load(tiny_vits["vit"])
    tensor = bundle.manifest["target_layer"]["tensor"]
    model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString()).run([tensor], {"input": x})[0]
    features = ort.InferenceSession(str(bundle.features_path))
    got = features.run(None, {features.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("layer", ["blocks.2.norm1", "blocks.2.attn", "blocks.1.mlp", "/blocks/blocks.2/Add_output_0",
                                   "/blocks/blocks.2/attn/Softmax_output_0"])
def test_a_layer_inside_a_block_is_refused_naming_the_nearest(tiny_vits, tmp_path, layer):
    with pytest.raises(CamInferError, match=r"inside transformer block \d of 3 .*nearest valid layer: '(blocks\.\d|"
                                            r"/Add_output_0)'"):
        split_onnx(tiny_vits["vit"], layer, tmp_path / "b")


def test_the_last_block_output_of_a_class_token_head_is_refused(tiny_vits, tmp_path):
    with pytest.raises(CamInferError, match="patch tokens are not connected"):
        split_onnx(tiny_vits["vit"], "blocks.2", tmp_path / "b")


def test_an_earlier_block_input_is_a_valid_cut(tiny_vits, tmp_path):
    bundle = split_onnx(tiny_vits["vit"], "blocks.0", tmp_path / "b")
    assert bundle.manifest["verification"]["passed"] and bundle.tokens.grid == (8, 8)
