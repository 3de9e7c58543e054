"""vit-recipro on a ViT whose LayerNorm an export below opset 17 decomposed (ReduceMean, Sub, Pow, ReduceMean, Add,
Sqrt, Div, Mul, Add): the mosaic replaces the output of that pattern's final Add, found from the ops, and the maps
equal those of the same weights exported with one LayerNormalization op, on both runtimes.

The norms' scale γ and shift β are drawn away from 1 and 0 (a fresh LayerNorm's), so a mosaic taken before them
would differ: weighting the copies before the shift scales β with the kernel (0.15 of the largest map measured)."""

import numpy as np
import onnx
import pytest

from cam_infer import CamInferError, Explainer
from cam_infer.bundle.split import split_onnx
from conftest import needs_torch

pytestmark = needs_torch
RUNTIMES = ("onnxruntime", "openvino")
DECOMPOSED = (14, 16)
OPTIONS = ({}, {"kernel": "onehot"}, {"cls_token": False}, {"score": "prob"})
# The two files compute the same float32 LayerNorm in a different order (a fused kernel against the exported ops, if
# the runtime does not fuse them back itself): a few ulp (~1e-7 relative) per token, through one block and the head
# at most ~1e-6 of the largest score. 1e-5 of the largest map leaves a tenfold margin and is four orders of
# magnitude below what a mosaic taken at the wrong tensor changes.
BETWEEN_EXPORTS = 1e-5


def vit_with_drawn_norms():
    """The tiny test ViT (seeded) with every LayerNorm's γ and β drawn from a seeded generator."""
    import torch
    from tiny_transformers import build_tiny
    model = build_tiny("vit")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for norm in (m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)):
            norm.weight.copy_(1 + 0.5 * torch.randn(norm.weight.shape, generator=generator))
            norm.bias.copy_(0.5 * torch.randn(norm.bias.shape, generator=generator))
    return model


def export_legacy(model, path, opset: int):
    """The legacy (TorchScript) exporter at `opset`: below 17 it writes LayerNorm as its elementary ops."""
    import torch
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), opset_version=opset, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
    return path


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{opset: ONNX file} of the same weights: 14 and 16 decomposed, 17 with LayerNormalization."""
    folder = tmp_path_factory.mktemp("decomposed-norm")
    model = vit_with_drawn_norms()
    paths = {opset: export_legacy(model, folder / f"vit{opset}.onnx", opset) for opset in (*DECOMPOSED, 17)}
    for opset, path in paths.items():
        ops = {n.op_type for n in onnx.load(path).graph.node}
        assert ("LayerNormalization" in ops) == (opset == 17) and ("ReduceMean" in ops) == (opset != 17)
    return paths


@pytest.fixture(scope="module")
def bundles(exports, tmp_path_factory):
    folder = tmp_path_factory.mktemp("decomposed-norm-bundles")
    return {opset: split_onnx(path, "auto", folder / f"b{opset}") for opset, path in exports.items()}


@pytest.fixture(scope="module")
def explainers(bundles):
    return {(opset, rt): Explainer(bundle.path, backend=rt, precision="f32") for opset, bundle in bundles.items()
            for rt in RUNTIMES}


def images(n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 64)).astype(np.float32)


@pytest.mark.parametrize("opset", DECOMPOSED)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_vit_recipro_on_a_decomposed_layernorm_equals_the_fused_one(explainers, opset, runtime):
    x = images()
    for options in OPTIONS:
        ours = explainers[opset, runtime].explain(x, method="vit-recipro", target=1, **options).maps
        fused = explainers[17, runtime].explain(x, method="vit-recipro", target=1, **options).maps
        np.testing.assert_allclose(ours, fused, rtol=BETWEEN_EXPORTS, atol=BETWEEN_EXPORTS * np.abs(fused).max(),
                                   err_msg=str(options))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_reduced_copies_equal_the_full_copies_on_a_decomposed_layernorm(bundles, explainers, runtime):
    """The cheap tail (P + 10 tokens, the prefix only after the attention) against the h·w full copies."""
    from cam_infer.methods.vit_recipro import _TAILS
    x = images()
    for options in OPTIONS:
        reduced = explainers[14, runtime].explain(x, method="vit-recipro", target=3, **options).maps
        full = explainers[14, runtime].explain(x, method="vit-recipro", target=3, reduced=False, **options).maps
        np.testing.assert_allclose(reduced, full, rtol=1e-4, atol=2e-6 * np.abs(full).max(), err_msg=str(options))
    assert _TAILS[explainers[14, runtime].backend]["reduced"].prefix == bundles[14].tokens.prefix


def test_the_opened_tail_normalises_the_clean_tokens_and_projects_them_once(bundles, explainers):
    """ReduceMean and Sub still read the cut tokens themselves, the q, k, v MatMul the decomposed norm's final Add;
    with every token once, weight 1 and no key bias the opened tail is the head."""
    from cam_infer.bundle.reduced_tail import _first_norm, reduced_tail
    from cam_infer.methods.vit_recipro import Tail
    bundle = bundles[14]
    head = onnx.load(bundle.head_path)
    x = head.graph.input[0].name
    norm, _ = _first_norm(head.graph, x)
    graph = reduced_tail(head, bundle.tokens.shape[0], bundle.tokens.prefix).graph
    readers = {n.op_type for n in graph.node if x in n.input}
    assert {"ReduceMean", "Sub"} <= readers and "Add" not in readers             # the residual reads the copies
    assert {n.op_type for n in graph.node if norm.output in n.input} == {"MatMul"}   # its shape read on the copies
    for runtime in RUNTIMES:
        backend = explainers[14, runtime].backend
        tokens = backend.features(images(3, seed=5))
        np.testing.assert_allclose(Tail(backend, bundle).clean(tokens), backend.head(tokens), rtol=1e-5, atol=1e-5)


def test_an_int8_qdq_file_of_the_decomposed_export_opens_through_its_quantize_pairs(exports, tmp_path):
    """ONNX Runtime's QDQ quantization puts QuantizeLinear–DequantizeLinear pairs before the norm, inside it (the
    variance, ε, the scale and shift dequantized): the norm is still found, and the opened tail at the clean tokens
    is the head (full copies run: the attention probabilities are quantized). ONNX Runtime compared unoptimised: its
    optimiser fuses the pairs into integer kernels differently once the graph is opened (2 output quantization steps
    apart measured here, 5 on the LayerNormalization file's QDQ quantization), OpenVINO as it runs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from cam_infer.backends.sessions import onnxruntime_session
    from cam_infer.bundle.reduced_tail import _first_norm, reduced_tail
    from cam_infer.methods.vit_recipro import Tail

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"input": image[None]} for image in images(8, seed=2)])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(exports[14]), str(tmp_path / "qdq.onnx"), Calibration(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    bundle = split_onnx(tmp_path / "qdq.onnx", "auto", tmp_path / "b")
    head = onnx.load(bundle.head_path)
    norm, conversions = _first_norm(head.graph, head.graph.input[0].name)
    assert [n.op_type for n in conversions] == ["QuantizeLinear", "DequantizeLinear"]
    assert [n.op_type for n in norm.readers] == ["ReduceMean", "Sub"]
    assert next(n for n in head.graph.node if norm.output in n.output).op_type == "Add"          # after β
    openvino = Explainer(bundle.path, backend="openvino")
    tokens = openvino.backend.features(images(2, seed=5))
    tail = Tail(openvino.backend, bundle)
    assert not tail.reduces_exactly
    np.testing.assert_allclose(tail.clean(tokens), openvino.backend.head(tokens), rtol=1e-5, atol=1e-5)
    t = tokens.shape[1]
    opened = onnxruntime_session(reduced_tail(head, t), optimize=False)
    got = opened.run(None, dict(zip([i.name for i in opened.get_inputs()], (
        tokens, np.arange(t)[None], np.ones((1, t, 1), np.float32), np.zeros((1, t), np.float32)))))[0]
    expected = onnxruntime_session(head, optimize=False).run(None, {head.graph.input[0].name: tokens})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    for runtime in RUNTIMES:
        assert Explainer(bundle.path, backend=runtime).explain(images(1), "vit-recipro").maps.shape == (1, 8, 8)


def test_the_fused_model_of_a_decomposed_export_equals_the_method(bundles, explainers):
    """fuse: the opened tail cloned into one graph, on both runtimes."""
    from cam_infer.backends.sessions import onnxruntime_session, openvino_compiled
    from cam_infer.fuse import fuse
    model = fuse(bundles[16].path, "vit-recipro", raw=True)
    x = images(2, seed=7)
    session = onnxruntime_session(model.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    ours = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))
    theirs = {name: np.asarray(v) for name, v in zip(names, openvino_compiled(model)({0: x}).values())}
    for outputs in (ours, theirs):
        expected = explainers[16, "onnxruntime"].explain(x, method="vit-recipro",
                                                         target=outputs["saliency_class"].tolist()).maps
        np.testing.assert_allclose(outputs["saliency_raw"], expected, rtol=1e-4, atol=1e-5)


def test_an_ir_converted_from_the_decomposed_export_equals_the_fused_onnx_file(exports, bundles, tmp_path):
    """OpenVINO's converter folds the decomposed norm into MVN, Multiply, Add: the IR bundle's vit-recipro is the
    LayerNormalization file's (across runtimes: the IR tests' 1e-4 of the largest map)."""
    import openvino as ov

    from cam_infer.bundle.openvino_split import split_openvino
    ov.save_model(ov.convert_model(str(exports[14])), str(tmp_path / "vit14.xml"), compress_to_fp16=False)
    ir = Explainer(split_openvino(tmp_path / "vit14.xml", "auto", tmp_path / "ir").path)
    x = images(2, seed=3)
    for options in ({}, {"reduced": False}):
        got = ir.explain(x, method="vit-recipro", target=2, **options).maps
        expected = Explainer(bundles[17].path, backend="onnxruntime").explain(x, method="vit-recipro", target=2,
                                                                              **options).maps
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max(), err_msg=str(options))


def test_a_block_that_only_centres_its_tokens_is_refused_in_one_line(tmp_path):
    """ReduceMean → Sub reads like a decomposed norm (the cut is found), but no variance divides it: no
    LayerNorm whose output the mosaic could replace, refused as before on both runtimes."""
    import torch

    class Centre(torch.nn.Module):
        def forward(self, x):
            return x - x.mean(-1, keepdim=True)

    model = vit_with_drawn_norms()
    model.blocks[-1].norm1 = Centre()
    bundle = split_onnx(export_legacy(model, tmp_path / "centred.onnx", 14), "auto", tmp_path / "b")
    assert bundle.tokens.class_token
    for runtime in RUNTIMES:
        with pytest.raises(CamInferError, match=r"needs the block after the cut to start with a LayerNormalization "
                                                r".*; the head reads them with Add, ReduceMean, Sub$") as refused:
            Explainer(bundle.path, backend=runtime).explain(images(1), method="vit-recipro")
        assert "\n" not in str(refused.value)


def test_a_head_that_reads_the_tokens_without_a_norm_is_refused_in_one_line(bundles):
    """The decomposed norm's ops bypassed (the projections read the cut tokens themselves): refused, naming the ops
    that read them."""
    from cam_infer.bundle.reduced_tail import _first_norm, reduced_tail
    head = onnx.load(bundles[14].head_path)
    x = head.graph.input[0].name
    norm, _ = _first_norm(head.graph, x)
    for node in head.graph.node:
        node.input[:] = [x if name == norm.output else name for name in node.input]
    for node in norm.readers:
        head.graph.node.remove(node)
    with pytest.raises(CamInferError, match=r"the head reads them with Add, MatMul, Shape$") as refused:
        reduced_tail(head, bundles[14].tokens.shape[0])
    assert "\n" not in str(refused.value)
