"""Vision transformers given as OpenVINO IR: the residual stream read from OpenVINO's graph, the cut at the same place
as on the ONNX file the IR was converted from, and the maps equal to the ONNX bundle's."""

import numpy as np
import pytest

from cam_infer import CamInferError, Explainer
from cam_infer.bundle.openvino_split import split_openvino
from conftest import needs_torch
from test_tokens import images_for

pytestmark = needs_torch

# Both bundles are float32: three blocks of float32 rounding, ONNX Runtime against OpenVINO (the tolerance the ONNX
# bundles' own cross-runtime test uses).
ACROSS_RUNTIMES = 1e-4


@pytest.fixture(scope="session")
def ir_vits(tiny_vits, tmp_path_factory):
    """The tiny ONNX test transformers converted to IR (float32 weights), as a deployment would hold them."""
    import openvino as ov
    folder = tmp_path_factory.mktemp("ir-vits")
    paths = {}
    for name, path in tiny_vits.items():
        paths[name] = folder / f"{name}.xml"
        ov.save_model(ov.convert_model(str(path)), str(paths[name]), compress_to_fp16=False)
    return paths


@pytest.fixture(scope="session")
def ir_bundles(ir_vits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ir-vit-bundles")
    return {name: split_openvino(path, "auto", folder / name) for name, path in ir_vits.items()}


@pytest.mark.parametrize("name", ["vit", "deit", "swin"])
def test_an_ir_transformer_is_cut_where_its_onnx_file_is(ir_bundles, vit_bundles, name):
    """`auto` on the IR: the last block's input, the same tokens as the ONNX bundle's cut (same layout, prefix and
    grid in the manifest; the features graph's output equal to the ONNX features graph's on ONNX Runtime)."""
    ir, onnx_bundle = ir_bundles[name], vit_bundles[name]
    assert ir.tokens == onnx_bundle.tokens
    assert ir.manifest["activation"]["tokens"]["attention_shapes"] == \
        onnx_bundle.manifest["activation"]["tokens"]["attention_shapes"]
    assert ir.manifest["verification"]["passed"] and ir.dynamic_batch
    x = ir.preprocess(images_for(ir, 3))
    got = Explainer(ir.path).backend.features(x)
    expected = Explainer(onnx_bundle.path, backend="onnxruntime").backend.features(x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ACROSS_RUNTIMES * np.abs(expected).max())


@pytest.mark.parametrize("name", ["vit", "deit", "swin"])
def test_ir_transformer_maps_equal_the_onnx_bundles(ir_bundles, vit_bundles, name):
    images = images_for(ir_bundles[name])
    ir = Explainer(ir_bundles[name].path)
    onnx_explainer = Explainer(vit_bundles[name].path, backend="onnxruntime")
    for method in ("activation", "eigen", "entropy", "score", "ablation"):
        got = ir.explain(images, method=method).maps
        expected = onnx_explainer.explain(images, method=method).maps
        np.testing.assert_allclose(got, expected, rtol=0, atol=ACROSS_RUNTIMES * np.abs(expected).max(), err_msg=method)


@pytest.mark.parametrize("layer, found", [
    ("/blocks/blocks.2/attn/qkv/MatMul", r"inside transformer block 2 of 3 .*nearest valid layer: "
                                         r"'/blocks/blocks.2/Add_1'|nearest valid layer: '/blocks/blocks.1/Add_1'"),
    ("/blocks/blocks.2/Add", "inside transformer block 2 of 3"),
    ("/blocks/blocks.2/Add_1", "patch tokens are not connected"),
    ("/patch_embed/Conv", "comes before the first of the 3 transformer blocks: .*block 0.s input"),
    ("no-such-op", "no op of this OpenVINO model has that name; the valid layers"),
])
def test_an_ir_layer_off_the_stream_is_refused_naming_a_valid_one(ir_vits, tmp_path, layer, found):
    with pytest.raises(CamInferError, match=found):
        split_openvino(ir_vits["vit"], layer, tmp_path / "b")


def test_an_earlier_block_input_of_an_ir_transformer_is_a_valid_cut(ir_vits, tmp_path):
    bundle = split_openvino(ir_vits["vit"], "/blocks/blocks.0/Add_1", tmp_path / "b")
    assert bundle.manifest["verification"]["passed"] and bundle.tokens.grid == (8, 8)


def test_attention_without_a_recognised_stream_is_refused_not_cut_at_its_patch_embedding(tmp_path):
    """Attention over tokens but no block x + attn(norm(x)) (no normalisation on the branch): refused in one line,
    where the CNN rule would cut at the patch embedding (a map of the input, not of the model)."""
    import openvino as ov
    import torch
    from helpers import assert_one_line_error, run_cli
    from tiny_transformers import Attn, export

    class Unnormalised(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.attn, self.head = torch.nn.Conv2d(3, 16, 8, 8), Attn(16, 2), torch.nn.Linear(16, 3)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            return self.head((t + self.attn(t)).mean(1))

    export(Unnormalised(), str(tmp_path / "m.onnx"), (32, 32))
    ov.save_model(ov.convert_model(str(tmp_path / "m.onnx")), str(tmp_path / "m.xml"))
    assert_one_line_error(run_cli("split", tmp_path / "m.xml", "--out", tmp_path / "b"),
                          "has 1 attention ops over tokens but no residual stream of transformer blocks")


@pytest.mark.parametrize("name", ["vit", "deit"])
def test_rollout_on_an_ir_transformer_reads_the_probabilities_inside_its_fused_attention(ir_bundles, vit_bundles,
                                                                                        name):
    """OpenVINO fuses each block's attention into one op (no Softmax output to read); the attention model computes it
    in its parts. Rollout equals the ONNX bundle's, whose Softmax outputs are read on ONNX Runtime."""
    assert all(op.endswith("attn/MatMul_1") for op, _ in ir_bundles[name].attention)          # the fused ops
    images = images_for(ir_bundles[name])
    for options in ({}, {"head_fusion": "max", "discard_ratio": 0.5}):
        got = Explainer(ir_bundles[name].path).explain(images, method="rollout", **options).maps
        expected = Explainer(vit_bundles[name].path, backend="onnxruntime").explain(images, method="rollout",
                                                                                   **options).maps
        np.testing.assert_allclose(got, expected, rtol=0, atol=ACROSS_RUNTIMES * np.abs(expected).max())


@pytest.mark.parametrize("name", ["vit", "deit"])
def test_vit_recipro_on_an_ir_transformer_equals_the_onnx_bundles(ir_bundles, vit_bundles, name):
    """The reduced tail opened on OpenVINO's own head graph (its attention fused: the key bias goes into the fused op's
    mask): equal to the ONNX bundle's vit-recipro on ONNX Runtime, reduced and as full copies, every option."""
    images = images_for(ir_bundles[name], 3)
    ir = Explainer(ir_bundles[name].path)
    for options in ({}, {"kernel": "onehot", "cls_token": False}, {"reduced": False}, {"score": "prob"}):
        got = ir.explain(images, method="vit-recipro", **options).maps
        expected = Explainer(vit_bundles[name].path, backend="onnxruntime").explain(images, method="vit-recipro",
                                                                                   **options).maps
        np.testing.assert_allclose(got, expected, rtol=0, atol=ACROSS_RUNTIMES * np.abs(expected).max(),
                                   err_msg=str(options))


@pytest.mark.parametrize("name,options", [("vit", {}), ("deit", {}), ("vit", {"reduced": False}),
                                          ("deit", {"kernel": "onehot", "top_classes": 2})])
def test_vit_recipro_fused_into_an_ir_transformer_draws_the_explainers_maps(ir_bundles, vit_bundles, tmp_path, name,
                                                                             options):
    """`fuse` on the IR: one IR model (its opened tail OpenVINO's own graph) whose maps are the Explainer's on the IR
    bundle, and the fused ONNX model's on ONNX Runtime; any batch."""
    import onnxruntime as ort
    import openvino as ov

    from cam_infer.fuse import fuse, save
    from test_fuse import assert_same_maps
    bundle = ir_bundles[name]
    top = options.get("top_classes", 1)
    path = save(fuse(bundle, "vit-recipro", raw=True, **options), tmp_path / "fused.xml")
    core = ov.Core()
    model = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    explainer = Explainer(bundle.path)
    x = bundle.preprocess(images_for(bundle, 3))
    method_options = {k: v for k, v in options.items() if k != "top_classes"}
    for batch in (x, x[:1]):
        results = model({bundle.input_name: batch})
        got = {n: results[o] for o in model.outputs for n in o.get_names()}
        shape = (len(batch), top, *bundle.activation_shape[1:])
        classes = got["saliency_class"].reshape(len(batch), top)
        np.testing.assert_array_equal(classes, np.argsort(-explainer.backend.forward(batch), axis=1)[:, :top])
        for t in range(top):
            expected = explainer.explain(batch, "vit-recipro", target=classes[:, t], **method_options).maps
            assert_same_maps(got["saliency_raw"].reshape(shape)[:, t], got["saliency"].reshape(shape)[:, t], expected,
                             f"{name} {options} batch {len(batch)}")
    onnx_path = save(fuse(vit_bundles[name], "vit-recipro", **options), tmp_path / "fused.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, {vit_bundles[name].input_name: x})))
    results = model({bundle.input_name: x})
    got = {n: results[o] for o in model.outputs for n in o.get_names()}
    np.testing.assert_allclose(got["saliency"], expected["saliency"], atol=1e-3)


def test_a_swin_ir_fuses_no_vit_recipro_as_its_onnx_bundle_does_not(ir_bundles):
    from cam_infer.errors import MethodNotApplicable
    from cam_infer.fuse import fuse
    with pytest.raises(MethodNotApplicable, match="prefix \\(class\\) tokens only"):
        fuse(ir_bundles["swin"], "vit-recipro")


def test_vit_recipro_on_an_ir_transformer_equals_openvino_xai(ir_bundles):
    """openvino-xai 1.1.0's committed ViTReciproCAM maps of the same tiny ViT (`test_vit_recipro`), all classes."""
    from test_vit_recipro import REFERENCE, assert_same_maps
    reference = np.load(REFERENCE)
    x, maps = reference["inputs"], reference["maps"]
    explainer = Explainer(ir_bundles["vit"].path, precision="f32")
    for c in range(maps.shape[1]):
        assert_same_maps(explainer.explain(x, method="vit-recipro", target=c).maps, maps[:, c])


# --- the command line on an IR transformer, as on its ONNX file ------------------------------------------------

@pytest.fixture(scope="session")
def ir_deit_with_labels(ir_vits, tmp_path_factory):
    from cam_infer.tools.synthetic import CLASSES, write_scenes
    folder = tmp_path_factory.mktemp("ir-deit")
    bundle = split_openvino(ir_vits["deit"], "auto", folder / "bundle", labels=[*CLASSES, "none"])
    return bundle.path, write_scenes(folder / "scenes", "large", 3, seed=1)


def test_info_on_an_ir_transformer_names_its_tokens(ir_vits):
    from helpers import run_cli
    result = run_cli("info", ir_vits["deit"])
    assert result.returncode == 0, result.stderr
    assert "tensor '/blocks/blocks.1/Add_1'" in result.stdout
    assert "(tokens: 2 prefix tokens set apart + 6x10 patches), attention over all tokens in 3 blocks" in result.stdout


def test_explain_on_an_ir_transformer_from_the_command_line(ir_deit_with_labels, tmp_path):
    import json

    from helpers import run_cli
    bundle, scenes = ir_deit_with_labels
    result = run_cli("explain", bundle, scenes, "--method", "vit-recipro,rollout,eigen", "--out", tmp_path / "maps")
    assert result.returncode == 0, result.stderr
    records = json.dumps(json.loads((tmp_path / "maps" / "results.json").read_text()))
    assert all(method in records for method in ("vit-recipro", "rollout", "eigen"))


def test_audit_on_an_ir_transformer_from_the_command_line(ir_deit_with_labels, tmp_path):
    import json

    from helpers import run_cli
    bundle, scenes = ir_deit_with_labels
    result = run_cli("audit", bundle, scenes, "--boxes", scenes / "boxes.json", "--methods", "vit-recipro,rollout",
                     "--metrics", "pointing", "--out", tmp_path / "audit")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert set(summary["methods"]) == {"vit-recipro", "rollout"}


TRAINED = "tests/data/transformers"


@pytest.mark.slow
@pytest.mark.parametrize("source", ["tiny-vit", "vit_legacy", "hf_deit"])
def test_an_ir_with_float16_weights_explains_as_its_onnx_file(tiny_vits, tmp_path, source):
    """openvino's default save (weights compressed to float16, decompressed by a Convert before each MatMul): the
    reduced tail still finds the projections and the output projection; vit-recipro and rollout follow the float
    ONNX bundle to the weights' float16 rounding (correlation ≥ 0.999)."""
    import openvino as ov

    from cam_infer.bundle.split import split_onnx
    from conftest import ROOT
    path = tiny_vits["vit"] if source == "tiny-vit" else ROOT / TRAINED / f"{source}.onnx"
    ov.save_model(ov.convert_model(str(path)), str(tmp_path / "m.xml"))
    ir = split_openvino(tmp_path / "m.xml", "auto", tmp_path / "ir")
    reference = split_onnx(path, "auto", tmp_path / "onnx")
    images = images_for(ir)
    for method in ("vit-recipro", "rollout"):
        got = Explainer(ir.path).explain(images, method=method).maps
        expected = Explainer(reference.path, backend="onnxruntime").explain(images, method=method).maps
        for a, b in zip(got, expected):
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999, method


def test_an_ir_transformer_whose_attention_stays_a_softmax_explains_as_its_onnx_file(tmp_path):
    """A per-head learned temperature on the logits keeps OpenVINO from fusing the attention: the key bias then goes
    before the Softmax, and rollout reads the Softmax outputs; both equal the ONNX bundle's."""
    import openvino as ov
    import torch
    from tiny_transformers import Attn, ViT, export

    from cam_infer.bundle.split import split_onnx

    class TemperedAttn(Attn):
        def __init__(self, d, heads):
            super().__init__(d, heads)
            self.temperature = torch.nn.Parameter(torch.rand(heads, 1, 1) + 0.1)

        def forward(self, x):
            n, t, d = x.shape
            qkv = self.qkv(x).reshape(n, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
            a = ((qkv[0] @ qkv[1].transpose(-2, -1)) * self.temperature).softmax(-1)
            v = qkv[2]
            return self.proj((a @ v).transpose(1, 2).reshape(n, t, d))

    torch.manual_seed(0)
    model = ViT(size=(32, 32), depth=2)
    for block in model.blocks:
        block.attn = TemperedAttn(32, 2)
    export(model, str(tmp_path / "m.onnx"), (32, 32))
    ov.save_model(ov.convert_model(str(tmp_path / "m.onnx")), str(tmp_path / "m.xml"), compress_to_fp16=False)
    ir = split_openvino(tmp_path / "m.xml", "auto", tmp_path / "ir")
    assert all(ir.manifest["graphs"][role]["ops"].get("Softmax") == 1 for role in ("features", "head"))
    reference = split_onnx(tmp_path / "m.onnx", "auto", tmp_path / "onnx")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for method in ("vit-recipro", "rollout"):
        got = Explainer(ir.path).explain(x, method=method).maps
        expected = Explainer(reference.path, backend="onnxruntime").explain(x, method=method).maps
        np.testing.assert_allclose(got, expected, rtol=0, atol=ACROSS_RUNTIMES * np.abs(expected).max(), err_msg=method)


def test_a_position_bias_in_the_attention_refuses_vit_recipro_in_one_line_on_onnx_and_ir(tmp_path):
    """A learned (heads, T, T) bias added to the last block's attention logits (a relative position bias) differs
    between the zeroed tokens vit-recipro's reduced tail merges: refused in one line on the ONNX file (both
    runtimes) and its IR, not a runtime's broadcast error; rollout still runs."""
    import openvino as ov
    import torch
    from cam_infer.bundle import split_onnx
    from helpers import assert_one_line_error, run_cli
    from tiny_transformers import ViT, export

    class BiasedAttn(torch.nn.Module):
        def __init__(self, attn, tokens):
            super().__init__()
            self.attn, self.bias = attn, torch.nn.Parameter(torch.randn(attn.h, tokens, tokens) * 0.5)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.attn.qkv(x).reshape(b, t, 3, self.attn.h, d // self.attn.h).permute(2, 0, 3, 1, 4)
            logits = (q @ k.transpose(-2, -1)) * (d // self.attn.h) ** -0.5 + self.bias
            return self.attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d))

    torch.manual_seed(0)
    model = ViT(size=(32, 32))
    model.blocks[-1].attn = BiasedAttn(model.blocks[-1].attn, 1 + 16)
    export(model, str(tmp_path / "m.onnx"), (32, 32))
    ov.save_model(ov.convert_model(str(tmp_path / "m.onnx")), str(tmp_path / "m.xml"), compress_to_fp16=False)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    onnx_bundle = split_onnx(tmp_path / "m.onnx", layer="auto", out=tmp_path / "b")
    ir_bundle = split_openvino(tmp_path / "m.xml", "auto", tmp_path / "ir")
    for bundle, backend in ((onnx_bundle, "onnxruntime"), (onnx_bundle, "openvino"), (ir_bundle, "openvino")):
        explainer = Explainer(bundle, backend=backend)
        with pytest.raises(CamInferError, match=r"adds .* of shape \[2, 17, 17\] over the 17 token positions"):
            explainer.explain(x, "vit-recipro")
        assert np.isfinite(explainer.explain(x, "rollout").maps).all()
    import cv2
    cv2.imwrite(str(tmp_path / "photo.png"), np.full((32, 32, 3), 120, np.uint8))
    assert_one_line_error(run_cli("explain", tmp_path / "ir", tmp_path / "photo.png", "--method", "vit-recipro",
                                  "--out", tmp_path / "o"), "a position bias", during_run=True)


def test_an_ir_transformer_is_served_with_the_explainers_answers(ir_bundles):
    """`cam-infer serve` on an IR ViT bundle: a real tritonclient gets vit-recipro's and rollout's maps and the scores
    the Explainer gives in process."""
    from test_serve import Server, assert_same, expected, triton_infer

    bundle = ir_bundles["vit"]
    x = bundle.preprocess(images_for(bundle, 3))
    server = Server(bundle.path, "--method", "vit-recipro", "--name", "vit")
    try:
        client = server.client()
        assert client.is_model_ready("vit")
        explainer = Explainer(bundle, backend="openvino")
        ask = {"model": "vit", "input_name": bundle.input_name}
        assert_same(triton_infer(client, x, **ask), expected(explainer, x, "vit-recipro"))
        assert_same(triton_infer(client, x[:2], {"method": "rollout"}, **ask), expected(explainer, x[:2], "rollout"))
    finally:
        server.stop()
