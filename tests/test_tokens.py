"""Token models: the residual stream recognised from the graph, the cut between blocks, refusals."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cam_infer import CamInferError
from cam_infer.bundle.split import split_onnx
from cam_infer.bundle import split_model
from conftest import needs_torch

pytestmark = needs_torch


@pytest.mark.parametrize("name, prefix, grid", [("vit", 1, (8, 8)), ("deit", 2, (6, 10)), ("swin", 0, (8, 8))])
def test_auto_cuts_at_the_last_block_input(vit_bundles, name, prefix, grid):
    bundle = vit_bundles[name]
    tokens = bundle.tokens
    assert (tokens.prefix, tokens.grid, tokens.dim) == (prefix, grid, 32)
    assert bundle.activation_shape == (32, *grid)
    last = "blocks.1" if name != "swin" else None          # the last block's input is the one before's output
    if last:
        assert bundle.manifest["target_layer"]["module"] == last
    # a Swin-style grid records none: its window attention looks like whole-image attention where the cut has as
    # many tokens as a window, and rollout reads a class token's row
    assert len(bundle.manifest["activation"]["tokens"]["attention"]) == (3 if name != "swin" else 0)


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


@pytest.mark.parametrize("model", ["vit", "deit", "swin"])
def test_a_layer_before_the_first_block_is_refused_naming_block_0_s_input(tiny_vits, tmp_path, model):
    """The patch embedding: a map of the input, not of the model (before, the refusal spoke of a skip connection
    and found no valid layer)."""
    from cam_infer.bundle.graph import Graph
    from cam_infer.bundle.tokens import token_stream
    first = token_stream(Graph.from_model(onnx.load(tiny_vits[model]))).blocks[0].input
    with pytest.raises(CamInferError, match=rf"comes before the first of the \d transformer blocks: .*nearest valid "
                                            rf"layer: .*tensor '{first}', block 0's input\)"):
        split_onnx(tiny_vits[model], "patch_embed", tmp_path / "b")
    assert split_onnx(tiny_vits[model], first, tmp_path / "ok").manifest["activation"]["tokens"]


def test_the_last_block_output_of_a_class_token_head_is_refused(tiny_vits, tmp_path):
    with pytest.raises(CamInferError, match="patch tokens are not connected"):
        split_onnx(tiny_vits["vit"], "blocks.2", tmp_path / "b")


def test_an_earlier_block_input_is_a_valid_cut(tiny_vits, tmp_path):
    bundle = split_onnx(tiny_vits["vit"], "blocks.0", tmp_path / "b")
    assert bundle.manifest["verification"]["passed"] and bundle.tokens.grid == (8, 8)


# --- every method on the patch grid ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def vit_explainers(vit_bundles):
    from cam_infer import Explainer
    return {(name, rt): Explainer(bundle.path, backend=rt) for name, bundle in vit_bundles.items()
            for rt in ("onnxruntime", "openvino")}


def images_for(bundle, n=2):
    _, h, w = bundle.input_shape
    return [(np.random.default_rng(i).random((h, w, 3)) * 255).astype(np.uint8) for i in range(n)]


GRADIENT_FREE = ["activation", "eigen", "entropy", "ablation", "recipro", "score", "is-cam", "ss-cam"]


@pytest.mark.parametrize("name", ["vit", "deit", "swin"])
def test_every_gradient_free_method_runs_on_tokens_and_both_runtimes_agree(vit_bundles, vit_explainers, name):
    images = images_for(vit_bundles[name])
    for method in GRADIENT_FREE + (["rollout"] if name != "swin" else []):
        options = {"samples": 2} if method in ("is-cam", "ss-cam") else {}
        got = [vit_explainers[name, rt].explain(images, method=method, **options).maps for rt in ("onnxruntime",
                                                                                                  "openvino")]
        assert got[0].shape == (2, *vit_bundles[name].tokens.grid), method
        np.testing.assert_allclose(got[0], got[1], rtol=1e-3, atol=1e-4 * np.abs(got[0]).max(), err_msg=method)


@pytest.mark.parametrize("name", ["vit", "deit"])
def test_recipro_and_ablation_put_the_grid_back_into_tokens_with_the_prefix_kept(vit_bundles, vit_explainers, name):
    """Against the torch model's own last block and head on masked / ablated tokens (prefix tokens as they were)."""
    from tiny_transformers import build_tiny, tail_logits
    bundle, ex = vit_bundles[name], vit_explainers[name, "onnxruntime"]
    images = images_for(bundle, 1)
    tokens, _ = ex.backend.observe(bundle.preprocess(images))
    p, (h, w), d = bundle.tokens.prefix, bundle.tokens.grid, bundle.tokens.dim
    model = build_tiny(name)
    clean = tail_logits(model, tokens).numpy()[0]
    c = int(clean.argmax())
    onehot = np.zeros((h * w, *tokens.shape[1:]), np.float32)
    for q in range(h * w):
        onehot[q, :p] = tokens[0, :p]
        onehot[q, p + q] = tokens[0, p + q]
    expected = tail_logits(model, onehot).numpy()[:, c].reshape(h, w)
    got = ex.explain(images, method="recipro", score="logit").maps[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    ablated = np.repeat(tokens, d, axis=0)
    ablated[np.arange(d), p:, np.arange(d)] = 0.0
    weights = (clean[c] - tail_logits(model, ablated).numpy()[:, c]) / abs(clean[c])
    grid = tokens[0, p:].reshape(h, w, d)
    np.testing.assert_allclose(ex.explain(images, method="ablation").maps[0], grid @ weights, rtol=1e-3, atol=1e-4)


def test_cam_is_refused_on_a_transformer_head(vit_explainers, vit_bundles):
    with pytest.raises(CamInferError, match="a transformer's head"):
        vit_explainers["vit", "onnxruntime"].explain(images_for(vit_bundles["vit"]), method="cam")


# --- attention rollout ----------------------------------------------------------------------------------------

def softmax_outputs_of_the_unsplit_model(path, x):
    """Every Softmax output of the original model, read by ONNX Runtime: the attention, found independently."""
    model = onnx.load(path)
    names = [n.output[0] for n in model.graph.node if n.op_type == "Softmax"]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    session = ort.InferenceSession(model.SerializeToString())
    return session.run(names, {session.get_inputs()[0].name: x})


def rollout_twin(attentions, head_fusion, discard_ratio, renormalise, prefix):
    """jacobgil/vit-explain's vit_rollout.rollout, image by image, in plain NumPy."""
    maps = []
    for i in range(len(attentions[0])):
        t = attentions[0].shape[-1]
        result = np.eye(t)
        for attention in attentions:
            fused = getattr(attention[i].astype(np.float64), head_fusion)(axis=0)
            flat = fused.reshape(-1)
            indices = np.argsort(flat, kind="stable")[:int(flat.size * discard_ratio)]
            flat[indices[indices != 0]] = 0
            a = (fused + np.eye(t)) / 2
            a = a / (a.sum(axis=-1, keepdims=True) if renormalise == "rows" else a.sum(axis=-1))
            result = a @ result
        maps.append(result[0, prefix:])
    return np.array(maps)


@pytest.mark.parametrize("name, options", [("vit", {}), ("deit", {"head_fusion": "max", "discard_ratio": 0.5}),
                                           ("vit", {"head_fusion": "min", "discard_ratio": 0.0,
                                                    "renormalise": "reference"})])
def test_rollout_equals_a_numpy_twin_on_the_unsplit_models_attention(tiny_vits, vit_bundles, vit_explainers, name,
                                                                     options):
    bundle = vit_bundles[name]
    images = images_for(bundle, 3)
    x = bundle.preprocess(images)
    full = {"head_fusion": "mean", "discard_ratio": 0.9, "renormalise": "rows", **options}
    expected = rollout_twin(softmax_outputs_of_the_unsplit_model(tiny_vits[name], x), prefix=bundle.tokens.prefix,
                            **full)
    for rt in ("onnxruntime", "openvino"):
        got = vit_explainers[name, rt].explain(images, method="rollout", **options).maps
        np.testing.assert_allclose(got.reshape(3, -1), expected, rtol=1e-4, atol=1e-7)


def test_openvino_reads_one_images_attention_from_its_static_copy(vit_bundles):
    """Like the clean pass, the attention pass of one image runs on a copy compiled for batch 1 (faster on the
    CPU plugin); the maps equal those of the dynamic graph."""
    from cam_infer import Explainer
    explainer = Explainer(vit_bundles["vit"].path, backend="openvino")
    images = images_for(vit_bundles["vit"], 3)
    one = explainer.explain(images[:1], method="rollout").maps
    assert ("attention-mean", 1) in explainer.backend._compiled
    three = explainer.explain(images, method="rollout").maps
    assert ("attention-mean", None) in explainer.backend._compiled
    np.testing.assert_allclose(one[0], three[0], rtol=1e-5, atol=1e-7)


def test_rollout_is_class_agnostic_and_refused_without_a_class_token(vit_explainers, vit_bundles):
    from cam_infer.errors import ClassAgnosticWarning
    with pytest.warns(ClassAgnosticWarning):
        explanation = vit_explainers["vit", "onnxruntime"].explain(images_for(vit_bundles["vit"]), method="rollout",
                                                                    target=1)
    assert explanation.class_agnostic
    with pytest.raises(CamInferError, match="no class token"):
        vit_explainers["swin", "onnxruntime"].explain(images_for(vit_bundles["swin"]), method="rollout")


def test_rollout_on_the_trained_windowed_swin_is_refused_in_one_line(tmp_path):
    """Not applicable (a benchmark or an "all" run passes over it), rollout and vit-recipro alike, one line, whatever
    the batch (two images: the runtime returns the windows' attention merged as (2, 1024), which once ended in a
    ValueError from a reshape before the refusal)."""
    from cam_infer import Explainer
    from cam_infer.errors import MethodNotApplicable
    from conftest import ROOT
    bundle = split_onnx(ROOT / "tests" / "data" / "transformers" / "swin_legacy.onnx", "auto", tmp_path / "swin")
    for n in (1, 2):
        for method, why in (("rollout", "no class token"), ("vit-recipro", "no prefix tokens")):
            with pytest.raises(MethodNotApplicable, match=why) as refused:
                Explainer(bundle.path).explain(np.zeros((n, 3, 128, 128), np.float32), method=method)
            assert "\n" not in str(refused.value)


def test_rollout_on_a_cnn_is_one_line(tiny_bundle):
    from cam_infer import Explainer
    with pytest.raises(CamInferError, match="has none \\(a CNN, or a Swin's attention within windows\\)"):
        Explainer(tiny_bundle.path).explain([np.zeros((64, 64, 3), np.uint8)], method="rollout")


def test_a_token_count_that_is_no_prefix_plus_grid_is_refused(tmp_path):
    from tiny_transformers import ViT, export
    export(ViT(prefix=20), str(tmp_path / "registers.onnx"), (64, 64))
    with pytest.raises(CamInferError, match=r"holds 84 tokens, which is not prefix tokens .* 8x8 patches"):
        split_onnx(tmp_path / "registers.onnx", "auto", tmp_path / "b")


# --- explain and audit on a ViT bundle, as on a CNN -------------------------------------------------------------

def test_explain_and_audit_run_on_a_vit_bundle_from_the_command_line(tiny_vits, tmp_path):
    import json

    from helpers import run_cli

    from cam_infer.tools.synthetic import CLASSES, write_scenes
    folder = write_scenes(tmp_path / "scenes", "large", 3, seed=1)
    bundle = split_onnx(tiny_vits["deit"], "auto", tmp_path / "deit", labels=[*CLASSES, "none"]).path
    result = run_cli("explain", bundle, folder, "--method", "rollout,recipro", "--out", tmp_path / "maps")
    assert result.returncode == 0, result.stderr
    records = json.loads((tmp_path / "maps" / "results.json").read_text())
    assert "rollout" in json.dumps(records) and "recipro" in json.dumps(records)
    result = run_cli("audit", bundle, folder, "--boxes", folder / "boxes.json", "--methods", "rollout,eigen",
                     "--metrics", "pointing", "--out", tmp_path / "audit")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert set(summary["methods"]) == {"rollout", "eigen"}


def test_a_layer_inside_a_block_is_one_line_on_the_command_line(tiny_vits, tmp_path):
    from helpers import assert_one_line_error, run_cli
    assert_one_line_error(run_cli("split", tiny_vits["vit"], "--layer", "blocks.2.mlp", "--out", tmp_path / "b"),
                          "inside transformer block 2 of 3")


def test_a_shape_read_from_before_the_cut_is_rebuilt_in_the_head(tmp_path):
    """The legacy exporter's Swin-style reshape reads Shape(patch embedding) in every block: only a shape, no skip
    connection; the head computes it from the cut's batch, and the split verifies on batches 1 and 3."""
    from tiny_transformers import export_tiny
    bundle = split_onnx(export_tiny("swin", tmp_path / "swin_legacy.onnx"), "auto", tmp_path / "b")
    assert bundle.manifest["verification"]["passed"] and bundle.tokens.grid == (8, 8)
    head = onnx.load(bundle.head_path)
    assert any(n.name.endswith("__rebuilt") for n in head.graph.node)
    assert all(i.name != "input" for i in head.graph.input)


@pytest.fixture(scope="session")
def deployed_vits(tiny_vits, tmp_path_factory):
    """The tiny ViT as deployments ship it: float16 (exported from the half model), int8 QDQ and QOperator
    (ONNX Runtime's static quantization, 8 calibration images)."""
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from tiny_transformers import build_tiny
    folder = tmp_path_factory.mktemp("deployed-vits")

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.feeds = iter([{"input": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.feeds, None)

    paths = {"fp16": folder / "fp16.onnx"}
    with torch.no_grad():
        torch.onnx.export(build_tiny("vit").half(), (torch.zeros(1, 3, 64, 64).half(),), str(paths["fp16"]),
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "N"}},
                          opset_version=17, dynamo=False)
    for name, kind in (("qdq", QuantFormat.QDQ), ("qop", QuantFormat.QOperator)):
        paths[name] = folder / f"{name}.onnx"
        quantize_static(str(tiny_vits["vit"]), str(paths[name]), Reader(), quant_format=kind,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return {name: split_onnx(path, "auto", folder / f"{name}-bundle") for name, path in paths.items()}


@pytest.mark.parametrize("name, runtimes", [("fp16", ("onnxruntime", "openvino")), ("qdq", ("onnxruntime", "openvino")),
                                            ("qop", ("onnxruntime",))])
def test_fp16_and_int8_vits_cut_at_the_last_block_and_explain(deployed_vits, vit_bundles, name, runtimes):
    """The int8 stream is cut at its integer tensor (dequantized for the methods, re-quantized by the head)."""
    from cam_infer import Explainer
    bundle = deployed_vits[name]
    assert bundle.manifest["verification"]["passed"] and bundle.tokens == vit_bundles["vit"].tokens
    assert (bundle.manifest["activation"]["quantization"] is not None) == (name != "fp16")
    images = images_for(bundle)
    reference = Explainer(vit_bundles["vit"].path).explain(images, method="rollout").maps
    for runtime in runtimes:
        explainer = Explainer(bundle.path, backend=runtime)
        rollout = explainer.explain(images, method="rollout").maps
        assert np.corrcoef(rollout.ravel(), reference.ravel())[0, 1] > (0.99 if name == "fp16" else 0.7)
        assert explainer.explain(images, method="recipro").maps.shape == (2, 8, 8)
        if name == "fp16":
            _vit_recipro_as_the_float_model(explainer, vit_bundles["vit"], images)


def _vit_recipro_as_the_float_model(explainer, float_bundle, images):
    """vit-recipro on the half file: its maps are the float model's, the reduced copies the full ones, to float16's
    rounding (int8: tests/test_transformer_models.py, on a trained model)."""
    from cam_infer import Explainer
    reference = Explainer(float_bundle.path).explain(images, method="vit-recipro", target=1).maps
    ours = explainer.explain(images, method="vit-recipro", target=1).maps
    full = explainer.explain(images, method="vit-recipro", target=1, reduced=False).maps
    for a, b in zip(ours, reference):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    np.testing.assert_allclose(ours, full, rtol=0, atol=4 * 2.0 ** -11 * np.abs(full).max())


@pytest.mark.integration
def test_a_vit_bundle_is_served_as_it_explains(vit_bundles, tmp_path):
    """The real server (127.0.0.1) on a ViT bundle: recipro and rollout answers equal `Explainer.explain`'s."""
    import json

    pytest.importorskip("starlette", reason="the serve extra is not installed")
    from test_serve import Server

    from cam_infer import Explainer
    bundle = vit_bundles["deit"]
    image = tmp_path / "scene.png"
    import cv2
    cv2.imwrite(str(image), images_for(bundle, 1)[0][:, :, ::-1])
    explainer = Explainer(bundle.path)
    server = Server(bundle.path, "--method", "recipro")
    try:
        for method in ("recipro", "rollout"):
            status, _, raw = server.request(f"/explain?method={method}", image.read_bytes())
            assert status == 200, raw[:300]
            answer = json.loads(raw)
            expected = explainer.explain([image], method, upsampled=False).saliency[0]
            np.testing.assert_allclose(np.array(answer["map"]["data"]), expected, atol=6e-5)
            assert bool(answer.get("class_agnostic")) is (method == "rollout")
    finally:
        server.stop()


@pytest.mark.parametrize("inputs, found", [("ids", "is of type int64 (a sequence model's tokens, not an image)"),
                                           ("features", "has shape (None, 12, 32) (a sequence model's tokens, not an")])
def test_a_sequence_model_is_no_image_model_in_one_line(tmp_path, inputs, found):
    import torch
    from helpers import assert_one_line_error, run_cli
    from tiny_transformers import Block

    class Sequence(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.block, self.head = torch.nn.Embedding(100, 32), Block(32, 2), torch.nn.Linear(32, 5)

        def forward(self, x):
            return self.head(self.block(self.embed(x) if inputs == "ids" else x)[:, 0])

    x = torch.zeros(1, 12, dtype=torch.long) if inputs == "ids" else torch.zeros(1, 12, 32)
    torch.onnx.export(Sequence().eval(), (x,), str(tmp_path / "seq.onnx"), input_names=["x"],
                      dynamic_axes={"x": {0: "N"}}, dynamo=False)
    assert_one_line_error(run_cli("split", tmp_path / "seq.onnx", "--out", tmp_path / "b"), found)


def test_attention_within_windows_is_cut_but_not_read_by_rollout(tmp_path):
    """A Swin's attention is (N·windows, heads, 16, 16): its blocks are found and cut between, but rollout, which
    needs each image's attention over all its tokens, is refused in one line."""
    from tiny_transformers import export_tiny

    from cam_infer import Explainer
    bundle = split_onnx(export_tiny("swin-windows", tmp_path / "windows.onnx", dynamo=True), "auto", tmp_path / "b")
    assert bundle.tokens.grid == (8, 8) and bundle.attention == []
    explainer = Explainer(bundle.path)
    assert explainer.explain(images_for(bundle), method="recipro").maps.shape == (2, 8, 8)
    with pytest.raises(CamInferError, match="this model has no class token \\(a Swin-style grid of tokens\\)"):
        explainer.explain(images_for(bundle), method="rollout")


def test_fusing_a_grid_method_into_a_token_model_is_one_line(vit_bundles, tmp_path):
    from helpers import assert_one_line_error, run_cli
    for model, hint in (("vit", " (or fuse vit-recipro)"), ("swin", "")):      # vit-recipro needs a class token
        result = run_cli("fuse", vit_bundles[model].path, "--method", "eigen", "--out", tmp_path / "f.onnx")
        assert_one_line_error(result, "this bundle's cut is a transformer's tokens")
        assert result.stderr.strip().endswith("explain it with cam-infer explain" + hint)


def test_bench_fused_on_a_token_model_times_the_methods_it_fuses_and_takes_the_backend_aliases(vit_bundles):
    """The default cases include grid methods, which a token cut does not fuse: left out, not an error."""
    from helpers import run_cli
    result = run_cli("bench", vit_bundles["vit"].path, "--fused", "--repeats", "1", "--backend", "ort")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| onnxruntime")]
    assert [row.split("|")[2].strip() for row in rows] == ["vit-recipro"]


def _renamed(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    for info in graph.value_info:
        if info.name == old:
            info.name = new


@pytest.mark.parametrize("side", ["head-attention-named-like-a-features-tensor",
                                  "features-attention-named-like-a-head-tensor"])
def test_attention_names_shared_across_the_cut_read_each_blocks_own_attention(tmp_path, side):
    """Two graphs of a bundle may use one tensor name (the join then renames the head's, ``head/<name>``). The
    attention of a block after the cut is read under the name the join gives it, and a block before the cut keeps
    its own: rollout equals the bundle's without the clash (before: a reshape error in either case)."""
    import json

    from cam_infer import Bundle, Explainer
    from cam_infer.bundle.manifest import MANIFEST, sha256_of
    from cam_infer.bundle.verify import random_images
    from conftest import ROOT
    plain = split_onnx(ROOT / "tests" / "data" / "transformers" / "vit_legacy.onnx", "auto", tmp_path / "plain")
    names = [name for name, _ in plain.attention]
    head_side = side.startswith("head")
    clashing = split_onnx(ROOT / "tests" / "data" / "transformers" / "vit_legacy.onnx", "auto", tmp_path / "clash")
    path = clashing.features_path if head_side else clashing.head_path
    model = onnx.load(path)
    other = {o for n in onnx.load(clashing.head_path if head_side else clashing.features_path).graph.node
             for o in n.output}
    assert (names[-1] in other) if head_side else (names[0] in other)      # the block on the other side of the cut
    victim = next(n.output[0] for n in model.graph.node if n.op_type == "Add" and n.output[0] not in names)
    _renamed(model.graph, victim, names[-1] if head_side else names[0])
    onnx.save(model, path)
    manifest = json.loads((tmp_path / "clash" / MANIFEST).read_text())
    for role in ("features", "head"):
        manifest["graphs"][role]["sha256"] = sha256_of(getattr(clashing, f"{role}_path"))
    (tmp_path / "clash" / MANIFEST).write_text(json.dumps(manifest))
    x = random_images(plain.preprocessing, 2, seed=3)
    expected = Explainer(plain, backend="onnxruntime").explain(x, "rollout").maps
    got = Explainer(Bundle.load(tmp_path / "clash"), backend="onnxruntime").explain(x, "rollout").maps
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dynamo", [False, True])
def test_a_class_token_put_after_the_patches_is_refused_not_read_as_the_first_token(tmp_path, dynamo):
    """The head reads token −1: taking token 0 as the class token would shift every map by one patch. So would
    registers appended after the patches, whatever the head reads: read from the Concat that joins the tokens, in
    the ONNX file and in its IR."""
    import openvino as ov
    import torch
    from tiny_transformers import ViT, export, export_tiny

    class TailRegisters(ViT):
        def forward(s, x):
            t = s.patch_embed(x).flatten(2).transpose(1, 2)
            registers = s.cls_token[:, :1].expand(x.shape[0], 3, -1)
            t = torch.cat([s.cls_token.expand(x.shape[0], -1, -1), t, registers], 1) + s.pos[:, :1]
            return s.head(s.norm(s.blocks(t))[:, 0])

    path = export_tiny("vit-class-last", tmp_path / "last.onnx", dynamo=dynamo)
    with pytest.raises(CamInferError, match="token\\(s\\) after the patch tokens"):
        split_onnx(path, "auto", tmp_path / "b")
    torch.manual_seed(0)
    export(TailRegisters(), str(tmp_path / "tail.onnx"), (64, 64), dynamo=dynamo)
    ov.save_model(ov.convert_model(str(tmp_path / "tail.onnx")), str(tmp_path / "tail.xml"))
    for source in ("tail.onnx", "tail.xml"):
        with pytest.raises(CamInferError, match="token\\(s\\) after the patch tokens") as refused:
            split_model(tmp_path / source, "auto", tmp_path / f"b-{source}")
        assert "\n" not in str(refused.value)


def test_registers_before_a_pooled_head_are_no_class_token_for_rollout_and_vit_recipro(tmp_path):
    """Four register tokens and a head that averages the patch tokens: split records no class token; the methods
    that read one refuse, the others explain (recipro against the brute force: each patch alone kept)."""
    import torch
    from cam_infer import Explainer
    from tiny_transformers import build_tiny, export_tiny
    bundle = split_onnx(export_tiny("vit-registers-pooled", tmp_path / "reg.onnx"), "auto", tmp_path / "b")
    assert bundle.tokens.prefix == 4 and not bundle.tokens.class_token
    assert bundle.manifest["activation"]["tokens"]["class_token"] is False
    explainer = Explainer(bundle, backend="onnxruntime")
    x = explainer.preprocess(images_for(bundle))
    for method in ("rollout", "vit-recipro"):
        with pytest.raises(CamInferError, match="head pools its patch tokens"):
            explainer.explain(x, method)
    e = explainer.explain(x[:1], "recipro")
    model, c = build_tiny("vit-registers-pooled"), int(e.targets[0])
    with torch.no_grad():
        t = model.patch_embed(torch.as_tensor(x[:1])).flatten(2).transpose(1, 2)
        t = torch.cat([model.cls_token, t], 1) + model.pos
        stream = torch.nn.Sequential(*model.blocks[:-1])(t)             # the last block's input: the cut
        expected = np.empty(64, np.float32)
        for k in range(64):
            kept = stream.clone()
            kept[:, 4:] = 0
            kept[:, 4 + k] = stream[:, 4 + k]
            u = model.norm(model.blocks[-1](kept))
            expected[k] = torch.softmax(model.head(u[:, 4:].mean(1)), -1)[0, c]
    np.testing.assert_allclose(e.maps[0].ravel(), expected, atol=2e-5)


@pytest.mark.parametrize("bias, refused", [(0.0, False), ("random", True)])
def test_a_constant_added_to_the_attention_logits_is_merged_only_where_it_is_one_value(tmp_path, bias, refused):
    """A dynamo export of a Hugging Face ViT adds its folded all-zero attention mask, (1,1,T,T), to the logits: one
    value everywhere, so vit-recipro's merged tokens stand for the zeroed ones as without it. A bias that differs
    over the positions (a relative position bias) is refused."""
    from onnx import numpy_helper
    from cam_infer import Explainer
    from tiny_transformers import export_tiny
    model = onnx.load(export_tiny("vit", tmp_path / "vit.onnx"))
    values = np.full((1, 1, 65, 65), bias, np.float32) if bias == 0.0 else \
        np.random.default_rng(0).standard_normal((1, 1, 65, 65)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(values, "mask"))
    for node in [n for n in model.graph.node if n.op_type == "Softmax"]:
        masked = node.input[0] + "__masked"
        model.graph.node.insert(list(model.graph.node).index(node),
                                onnx.helper.make_node("Add", [node.input[0], "mask"], [masked]))
        node.input[0] = masked
    onnx.save(model, tmp_path / "masked.onnx")
    explainer = Explainer(split_onnx(tmp_path / "masked.onnx", "auto", tmp_path / "b"), backend="onnxruntime")
    x = explainer.preprocess(images_for(explainer.bundle))
    if refused:
        with pytest.raises(CamInferError, match="a position bias"):
            explainer.explain(x, "vit-recipro")
        return
    plain = Explainer(split_onnx(tmp_path / "vit.onnx", "auto", tmp_path / "p"), backend="onnxruntime")
    reduced = explainer.explain(x, "vit-recipro").maps
    np.testing.assert_allclose(reduced, explainer.explain(x, "vit-recipro", reduced=False).maps, atol=1e-5)
    np.testing.assert_allclose(reduced, plain.explain(x, "vit-recipro").maps, atol=1e-5)


def test_a_vit_exported_with_its_layernorm_decomposed_still_has_its_class_token_read(tmp_path):
    """At opset 14 LayerNorm is ReduceMean, Sub, Pow, Sqrt, Div...: the head's read of token 0 is followed through
    them, so the class token is recorded and rollout reads its row; vit-recipro finds the decomposed norm's output
    (tests/test_vit_recipro_decomposed_norm.py: equal to the LayerNormalization export's maps)."""
    import torch
    from cam_infer import Explainer
    from tiny_transformers import build_tiny
    torch.onnx.export(build_tiny("vit"), (torch.randn(1, 3, 64, 64),), str(tmp_path / "v14.onnx"), opset_version=14,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "N"}}, dynamo=False)
    model = onnx.load(tmp_path / "v14.onnx")
    assert "LayerNormalization" not in {n.op_type for n in model.graph.node}
    bundle = split_onnx(tmp_path / "v14.onnx", "auto", tmp_path / "b")
    assert bundle.tokens.prefix == 1 and bundle.tokens.class_token
    explainer = Explainer(bundle, backend="onnxruntime")
    x = explainer.preprocess(images_for(bundle))
    assert explainer.explain(x, "rollout").maps.shape == (2, 8, 8)
    assert explainer.explain(x, "vit-recipro").maps.shape == (2, 8, 8)


def test_a_grid_of_tokens_without_prefix_records_no_class_token(vit_bundles):
    assert vit_bundles["swin"].tokens.prefix == 0 and not vit_bundles["swin"].tokens.class_token


def test_hirescam_where_the_head_reads_through_a_layernorm_only_is_flat_not_its_residue(vit_bundles):
    """A class-token ViT's stream before its last block reaches the head only through LayerNorms, which are
    scale-invariant: Σ_k g·A cancels to LayerNorm's ε (1e-6 of Σ_k |g·A| at float32). That residue is reported
    flat and degenerate; Grad-CAM at the same cut, and HiResCAM on the Swin (whose head pools every token through
    the residual), are maps."""
    from cam_infer import Explainer
    for name, cancels in (("vit", True), ("deit", True), ("swin", False)):
        explainer = Explainer(vit_bundles[name].path, gradients="torch")
        x = explainer.preprocess(images_for(vit_bundles[name], 3))
        hires = explainer.explain(x, "hirescam")
        assert hires.degenerate.all() == cancels and (np.ptp(hires.maps, axis=(1, 2)) == 0).all() == cancels, name
        assert not explainer.explain(x, "gradcam").degenerate.any(), name
