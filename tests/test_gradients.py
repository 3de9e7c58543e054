"""Gradient methods: the ONNX head run in torch (op by op and whole heads, against ONNX Runtime),
its gradients against the original torch models, the six formulas against plain NumPy loops, and
the two routes (Explainer.from_torch, Explainer(bundle, gradients="torch"))."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import REAL_MODELS, SHARED, STABLE_IMAGES, needs_shared, needs_torch

from cam_infer import CamInferError, Explainer, split_onnx
from cam_infer.errors import ClassAgnosticWarning
from cam_infer.bundle.split import random_images
from cam_infer.methods import GRADIENT, GRADIENT_FREE, Context, get_method

pytestmark = needs_torch


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def torch_run(model: onnx.ModelProto, x: np.ndarray, drop_softmax: bool = False) -> np.ndarray:
    import torch

    from cam_infer.gradients.onnx_in_torch import TorchGraph
    with torch.no_grad():
        return TorchGraph(model, drop_softmax=drop_softmax)(torch.from_numpy(x)).numpy()


# --- op by op against ONNX Runtime ------------------------------------------------------------------

RNG = np.random.default_rng(0)


def const(name, shape=None, value=None, dtype=np.float32):
    value = RNG.standard_normal(shape).astype(dtype) if value is None else np.asarray(value, dtype)
    return numpy_helper.from_array(value, name)


def one_op(op, attrs=None, inits=(), extra_inputs=(), opset=17, x_shape=(2, 4, 5, 5)):
    node = helper.make_node(op, ["x", *extra_inputs], ["y"], **(attrs or {}))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


OP_CASES = {
    "Conv 3x3 pad 1 stride 2": one_op("Conv", {"pads": [1, 1, 1, 1], "strides": [2, 2]}, [const("w", (3, 4, 3, 3)),
                                                                                       const("b", (3,))], ["w", "b"]),
    "Conv asymmetric pads, groups": one_op("Conv", {"pads": [0, 1, 1, 0], "group": 2}, [const("w", (4, 2, 2, 2))], ["w"]),
    "Conv dilation": one_op("Conv", {"dilations": [2, 2]}, [const("w", (2, 4, 2, 2))], ["w"]),
    "Relu": one_op("Relu"), "Sigmoid": one_op("Sigmoid"), "HardSwish": one_op("HardSwish"),
    "HardSigmoid": one_op("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
    "Clip inputs": one_op("Clip", inits=[const("lo", value=-0.5), const("hi", value=0.7)], extra_inputs=["lo", "hi"]),
    "Clip attributes (opset 6)": one_op("Clip", {"min": -0.5, "max": 0.7}, opset=6),
    "GlobalAveragePool": one_op("GlobalAveragePool"), "GlobalMaxPool": one_op("GlobalMaxPool"),
    "AveragePool": one_op("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "AveragePool pads, count_include_pad": one_op("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                                                  "count_include_pad": 1}),
    "AveragePool pads excluded": one_op("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    "MaxPool ceil_mode": one_op("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    "MaxPool asymmetric pads": one_op("MaxPool", {"kernel_shape": [2, 2], "pads": [0, 0, 1, 1]}),
    "ReduceMean attribute axes": one_op("ReduceMean", {"axes": [2, 3], "keepdims": 0}, opset=13),
    "ReduceMean input axes (opset 18)": one_op("ReduceMean", {"keepdims": 1}, [const("ax", value=[-1, -2],
                                                                                     dtype=np.int64)], ["ax"], 18),
    "Flatten": one_op("Flatten", {"axis": 1}), "Flatten axis 2": one_op("Flatten", {"axis": 2}),
    "Reshape with 0 and -1": one_op("Reshape", inits=[const("s", value=[0, -1], dtype=np.int64)], extra_inputs=["s"]),
    "Squeeze input axes": one_op("Squeeze", inits=[const("ax", value=[2], dtype=np.int64)], extra_inputs=["ax"],
                                 x_shape=(2, 3, 1, 4)),
    "Squeeze attribute axes (opset 11)": one_op("Squeeze", {"axes": [2]}, opset=11, x_shape=(2, 3, 1, 4)),
    "Unsqueeze": one_op("Unsqueeze", inits=[const("ax", value=[1, -1], dtype=np.int64)], extra_inputs=["ax"]),
    "Add broadcast": one_op("Add", inits=[const("c", (4, 1, 1))], extra_inputs=["c"]),
    "Sub": one_op("Sub", inits=[const("c", (5,))], extra_inputs=["c"]),
    "Mul": one_op("Mul", inits=[const("c", (1, 4, 5, 5))], extra_inputs=["c"]),
    "Div": one_op("Div", inits=[const("c", value=np.full((5,), 3.0))], extra_inputs=["c"]),
    "Concat": one_op("Concat", {"axis": 1}, [const("c", (2, 3, 5, 5))], ["c"]),
    "BatchNormalization": one_op("BatchNormalization", {"epsilon": 1e-3}, [
        const("s", (4,)), const("b", (4,)), const("m", (4,)), const("v", value=RNG.uniform(0.5, 2, 4))],
        ["s", "b", "m", "v"]),
    "Softmax (opset 13, one axis)": one_op("Softmax", {"axis": 1}, x_shape=(2, 6)),
    "Softmax (opset 11, flattened from axis 1)": one_op("Softmax", {"axis": 1}, opset=11, x_shape=(2, 3, 2, 1)),
    "Dropout": one_op("Dropout"), "Identity": one_op("Identity"),
    "Transpose": one_op("Transpose", {"perm": [0, 2, 3, 1]}),
    "Einsum (a layout change at a cut)": one_op("Einsum", {"equation": "nhwc->nchw"}),
    "Gemm transB alpha beta": one_op("Gemm", {"transB": 1, "alpha": 0.5, "beta": 2.0},
                                     [const("w", (3, 6)), const("b", (3,))], ["w", "b"], x_shape=(2, 6)),
    "Gemm transA": one_op("Gemm", {"transA": 1}, [const("w", (2, 3))], ["w"], x_shape=(2, 6)),
    "MatMul": one_op("MatMul", inits=[const("w", (5, 3))], extra_inputs=["w"]),
    "Cast": one_op("Cast", {"to": TensorProto.FLOAT}),
    # the ops of transformer heads
    "LayerNormalization": one_op("LayerNormalization", {"axis": -1, "epsilon": 1e-6},
                                 [const("s", (5,)), const("b", (5,))], ["s", "b"], x_shape=(2, 3, 5)),
    "LayerNormalization without bias, two axes": one_op("LayerNormalization", {"axis": -2}, [const("s", (4, 5))],
                                                        ["s"], x_shape=(2, 3, 4, 5)),
    "Erf": one_op("Erf"), "Sqrt": one_op("Sqrt", x_shape=(3,)), "Neg": one_op("Neg"), "Tanh": one_op("Tanh"),
    "Gelu (opset 20)": one_op("Gelu", opset=20), "Gelu tanh (opset 20)": one_op("Gelu", {"approximate": "tanh"},
                                                                                opset=20),
    "Pow": one_op("Pow", inits=[const("e", value=2.0)], extra_inputs=["e"]),
    "Slice with axes and steps": one_op("Slice", inits=[const("st", value=[1, -4], dtype=np.int64),
                                                        const("en", value=[9, 5], dtype=np.int64),
                                                        const("ax", value=[1, 3], dtype=np.int64),
                                                        const("sp", value=[1, 2], dtype=np.int64)],
                                        extra_inputs=["st", "en", "ax", "sp"]),
    "Tile": one_op("Tile", inits=[const("r", value=[2, 1, 1, 3], dtype=np.int64)], extra_inputs=["r"]),
    "Expand both ways": one_op("Expand", inits=[const("sh", value=[3, 1, 1, 1, 1], dtype=np.int64)],
                               extra_inputs=["sh"]),
    "ReduceSum input axes": one_op("ReduceSum", {"keepdims": 0}, [const("ax", value=[1], dtype=np.int64)], ["ax"]),
}


@pytest.mark.parametrize("case", list(OP_CASES))
def test_each_op_matches_onnx_runtime(case):
    model = OP_CASES[case]
    x = RNG.standard_normal([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]).astype(np.float32)
    np.testing.assert_allclose(torch_run(model, x), ort_run(model, x), atol=1e-5, rtol=1e-5)


def test_shape_arithmetic_and_constants_match_onnx_runtime():
    """x.view(x.size(0), -1) as the legacy exporter writes it: Shape → Gather → Unsqueeze → Concat → Reshape."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Constant", [], ["i0"], value=numpy_helper.from_array(np.array(0, np.int64))),
        helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
        helper.make_node("Constant", [], ["ax"], value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
        helper.make_node("Constant", [], ["m1"], value=numpy_helper.from_array(np.array([-1], np.int64))),
        helper.make_node("Concat", ["n1", "m1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (3, 4, 2, 2))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = RNG.standard_normal((3, 4, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(torch_run(model, x), ort_run(model, x))


def test_split_and_integer_ops_of_transformer_heads_match_onnx_runtime():
    """q, k, v = Split(qkv) (input sizes, num_outputs); a mask from ConstantOfShape, Range, Equal
    and Where, as exporters write attention masks and positions."""
    nodes = [
        helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2),
        helper.make_node("Constant", [], ["sizes"], value=numpy_helper.from_array(np.array([1, 3], np.int64))),
        helper.make_node("Split", ["b", "sizes"], ["b1", "b2"], axis=2),
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("ConstantOfShape", ["s"], ["zeros"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Constant", [], ["r0"], value=numpy_helper.from_array(np.array(0, np.int64))),
        helper.make_node("Constant", [], ["r1"], value=numpy_helper.from_array(np.array(4, np.int64))),
        helper.make_node("Constant", [], ["r2"], value=numpy_helper.from_array(np.array(1, np.int64))),
        helper.make_node("Range", ["r0", "r1", "r2"], ["positions"]),
        helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2, np.int64))),
        helper.make_node("Equal", ["positions", "two"], ["is_two"]),
        helper.make_node("Where", ["is_two", "zeros", "x"], ["masked"]),
        helper.make_node("Concat", ["a", "masked"], ["y0"], axis=1),
        helper.make_node("Mul", ["b2", "b2"], ["y1"]),
        helper.make_node("ReduceMean", ["y1"], ["y2"], keepdims=0),
        helper.make_node("Add", ["y0", "y2"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 4, 4))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    x = RNG.standard_normal((2, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(torch_run(model, x), ort_run(model, x), rtol=1e-6, atol=1e-6)


def test_an_unsupported_op_is_named():
    from cam_infer.gradients.onnx_in_torch import TorchGraph
    with pytest.raises(CamInferError, match=r"the head graph uses LRN, Mod, which the torch head interpreter"):
        TorchGraph(helper.make_model(helper.make_graph(
            [helper.make_node("LRN", ["x"], ["t"], size=3), helper.make_node("Mod", ["t", "t"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 4, 2, 2))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])))


# --- whole heads: outputs against ONNX Runtime, gradients against the original torch model ------------

ARCHITECTURES = {"resnet18": ({}, 64), "resnet50": ({}, 64), "vgg16": ({"hidden": 32}, 224),
                 "mobilenet_v2": ({}, 64), "densenet121": ({}, 64), "squeezenet1_1": ({}, 64),
                 "shapes_net": ({}, 128)}


def torch_layer_gradients(model, layer: str, x: np.ndarray, targets: np.ndarray,
                          activations: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The reference: autograd through the original model, with the layer's output kept by a hook.
    Given `activations`, the hook puts them in place of the layer's own output, so that the torch model
    is differentiated at exactly those activations."""
    import torch
    kept = {}

    def hook(module, inputs, output):
        if activations is not None:
            output = torch.from_numpy(np.ascontiguousarray(activations, np.float32)).requires_grad_(True)
        kept["a"] = output
        return output

    handle = dict(model.named_modules())[layer].register_forward_hook(hook)
    try:
        scores = model(torch.from_numpy(x).requires_grad_(True))
        (grad,) = torch.autograd.grad(scores[torch.arange(len(x)), torch.from_numpy(targets)].sum(), kept["a"])
    finally:
        handle.remove()
    return kept["a"].detach().numpy(), grad.numpy()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    made = {}

    def get(name, exporter="legacy"):
        if (name, exporter) not in made:
            import torch

            import models
            from cam_infer import export_torch
            torch.manual_seed(0)
            kwargs, size = ARCHITECTURES[name]
            model = models.BUILDERS[name](num_classes=7, **kwargs).eval()
            bundle = export_torch(model, layer=models.CAM_LAYERS[name], input_size=(size, size),
                                  out=tmp_path_factory.mktemp("grad") / f"{name}_{exporter}", exporter=exporter)
            made[name, exporter] = (model, bundle)
        return made[name, exporter]
    return get


@pytest.mark.parametrize("exporter", ["legacy", pytest.param("dynamo", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", [n if n == "resnet18" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in ARCHITECTURES])          # one architecture by default, all with --run-slow
def test_onnx_head_in_torch_gives_the_original_models_gradients(reference, name, exporter):
    import models
    from cam_infer.gradients import HeadGradients

    if exporter == "dynamo" and name in ("vgg16", "densenet121", "resnet50"):
        pytest.skip("the dynamo export of the larger models is covered by test_reference_models; one exporter here")
    model, bundle = reference(name, exporter)
    x = random_images(bundle.preprocessing, 3, seed=4)
    targets = np.array([0, 3, 6])
    a, expected = torch_layer_gradients(model, models.CAM_LAYERS[name], x, targets)
    head = onnx.load(bundle.head_path)
    np.testing.assert_allclose(torch_run(head, a), ort_run(head, a), atol=1e-4, rtol=1e-4)
    got = HeadGradients(bundle)(x, a, targets)
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(got, expected, atol=1e-5 * scale, rtol=1e-4)


TORCH_LAYERS = {"squeezenet1.1-fp32.onnx": ("squeezenet1_1", "squeezenet1_1-torchvision-normfolded.pth",
                                            {"fire9/concat_1": "features.12", "conv10_2": "classifier.2"}),
                "mobilenetv2-fp32-dequant.onnx": ("mobilenet_v2", "mobilenet_v2-torchvision-bnfolded.pth",
                                                  {"features.17.conv.2": "features.17", "features.18": "features.18"})}


def kink_inputs(model, torch_layer: str, a: np.ndarray):
    """The inputs of the ReLU / ReLU6 that follows the layer in the head, with their kinks; None when the
    head has none. In both heads that have one, a 1×1 convolution stands between: the gradient at
    position (n,i,j) depends on the pre-activations at (n,:,i,j) only."""
    import torch
    with torch.no_grad():
        if torch_layer == "features.17":                     # MobileNetV2: conv 1x1 + BN, ReLU6, GAP, linear
            block = model.features[18]
            return block[1](block[0](torch.from_numpy(a))).numpy(), (0.0, 6.0)
        if torch_layer == "features.12":                     # SqueezeNet: dropout, conv 1x1, ReLU, GAP
            return model.classifier[1](torch.from_numpy(a)).numpy(), (0.0,)
    return None


def kink_sides(pre: np.ndarray, kinks, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Per position (N,h,w): which side of each kink every channel is on, and whether any channel lies
    within `margin` of a kink (there float rounding decides the gradient)."""
    sides = np.stack([pre > k for k in kinks])
    near = np.any([np.abs(pre - k) <= margin for k in kinks], axis=(0, 2))
    return sides, near


@needs_shared
@pytest.mark.parametrize("model_file", list(REAL_MODELS))
@pytest.mark.slow
def test_gradients_of_the_real_onnx_models_equal_their_torch_originals(tmp_path, model_file):
    """The ONNX files of ../shared/data and the torchvision state_dicts made from them: split the ONNX
    at a layer, run its head in torch, and compare with autograd through the torch model.

    Compared at identical inputs, never on float luck across a kink: OpenVINO's activations differ from
    torch's by ~1e-6, and a pre-activation within that of a ReLU6 (Clip) kink flips a mask element and
    moves a gradient by 1 %. So (1) at torch's own activations and at the runtime's, the head's gradients
    equal the torch model's at every position whose pre-activations are clear of the kinks; (2) end to
    end (runtime activations against torch's), positions differ only where the activation difference
    moved a pre-activation across a kink, which is what it explains, and such positions are rare."""
    import models
    from cam_infer import Preprocessing
    from cam_infer.bundle.export import load_weights
    from cam_infer.gradients import HeadGradients

    arch, weights, layers = TORCH_LAYERS[model_file]
    model = models.BUILDERS[arch]()
    load_weights(model, SHARED / "models" / weights)
    model.eval()
    photos = [SHARED / "images" / name for name in list(STABLE_IMAGES)[:4]]
    x_torch = np.stack([Preprocessing((224, 224))(p) for p in photos]).astype(np.float32)
    targets = np.array(list(STABLE_IMAGES.values())[:4])
    for onnx_layer, torch_layer in layers.items():
        message = f"{model_file} at {onnx_layer}"
        bundle = split_onnx(SHARED / "models" / model_file, layer=onnx_layer, out=tmp_path / onnx_layer.replace("/", "_"),
                            preprocessing=REAL_MODELS[model_file][0])
        head_gradients = HeadGradients(bundle)
        a_torch, expected = torch_layer_gradients(model, torch_layer, x_torch, targets)
        a = Explainer(bundle, backend="openvino").backend.features(bundle.preprocess(photos))
        np.testing.assert_allclose(a, a_torch, atol=2e-3 * np.abs(a_torch).max())      # the same layer
        _, expected_at_a = torch_layer_gradients(model, torch_layer, x_torch, targets, activations=a)
        scale = np.abs(expected).max()
        assert scale > 0
        clear = np.ones(a.shape[:1] + a.shape[2:], bool)          # (N,h,w) positions compared tightly
        moved = np.zeros_like(clear)
        kinks = kink_inputs(model, torch_layer, a_torch)
        if kinks is not None:
            pre_a = kink_inputs(model, torch_layer, a)[0]
            # float rounding of a head pass (1e-6 relative) plus what the activation difference moved
            margin = 1e-6 * np.abs(kinks[0]).max() + 2 * np.abs(pre_a - kinks[0]).max()
            sides_torch, near_torch = kink_sides(*kinks, margin)
            sides_a, near_a = kink_sides(pre_a, kinks[1], margin)
            moved = np.any(sides_torch != sides_a, axis=(0, 2))
            clear = ~(near_torch | near_a | moved)
            assert clear.mean() > 0.9, f"{message}: {1 - clear.mean():.1%} of positions near a kink"
        for activations, reference in ((a_torch, expected), (a, expected_at_a)):          # (1)
            got = head_gradients(x_torch, activations, targets)
            np.testing.assert_allclose(got.transpose(0, 2, 3, 1)[clear], reference.transpose(0, 2, 3, 1)[clear],
                                       atol=1e-5 * scale, rtol=1e-4, err_msg=message)
        end_to_end = np.abs(got - expected).max(axis=1)                                       # (2)
        assert end_to_end[clear].max() <= 1e-4 * scale, (message, end_to_end[clear].max() / scale)
        assert moved.mean() < 0.02, message


# --- the formulas against plain NumPy loops ----------------------------------------------------------

def loops_reference(name: str, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Each formula of research-notes §9 written out position by position (float64)."""
    k_, h, w = a.shape
    a, g = a.astype(np.float64), g.astype(np.float64)
    out = np.zeros((h, w))
    for k in range(k_):
        if name == "gradcam":
            weight = sum(g[k, i, j] for i in range(h) for j in range(w)) / (h * w)
            out += weight * a[k]
        elif name == "gradcam++":
            total = a[k].sum()
            weight = 0.0
            for i in range(h):
                for j in range(w):
                    gij = g[k, i, j]
                    if gij != 0:
                        alpha = gij ** 2 / (2 * gij ** 2 + total * gij ** 3 + 1e-6)
                        weight += alpha * max(gij, 0.0)
            out += weight * a[k]
        elif name == "xgradcam":
            total = a[k].sum() + 1e-7
            out += sum(a[k, i, j] / total * g[k, i, j] for i in range(h) for j in range(w)) * a[k]
        elif name == "layercam":
            for i in range(h):
                for j in range(w):
                    out[i, j] += max(g[k, i, j], 0.0) * a[k, i, j]
        elif name == "hirescam":
            for i in range(h):
                for j in range(w):
                    out[i, j] += g[k, i, j] * a[k, i, j]
        elif name == "grad-entropy":
            p = np.abs(g[k]).ravel()
            p = p / p.sum() if p.sum() > 0 else p
            entropy = -sum(v * np.log(v) for v in p if v > 0) / np.log(h * w)
            out += entropy * a[k]
    return out


ONE_PASS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "grad-entropy")   # the path methods:
                                                                                          # test_gradient_paths.py


@pytest.mark.parametrize("name", ONE_PASS)
def test_gradient_formulas_against_numpy_loops(name):
    rng = np.random.default_rng(5)
    a = np.maximum(rng.standard_normal((2, 6, 4, 5)), 0).astype(np.float32)
    g = rng.standard_normal((2, 6, 4, 5)).astype(np.float32)
    g[:, :, 0, 0] = 0                                # Grad-CAM++'s g = 0 rule
    g[:, 2] = 0                                      # a channel with no gradient at all
    ctx = Context(x=None, activations=a, targets=np.zeros(2, np.int64), outputs=None, backend=None, bundle=None,
                  gradients=g)
    got = get_method(name).implementation("classification")(ctx)
    for n in range(2):
        np.testing.assert_allclose(got[n], loops_reference(name, a[n], g[n]), rtol=1e-4, atol=1e-5)


def test_gradient_methods_say_how_to_get_gradients(tiny_bundle):
    x = random_images(tiny_bundle.preprocessing, 1)
    with pytest.raises(CamInferError, match="needs gradients: open the Explainer with gradients='torch'"):
        Explainer(tiny_bundle).explain(x, "gradcam")
    with pytest.raises(CamInferError, match="gradients must be None or 'torch'"):
        Explainer(tiny_bundle, gradients="jax")


# --- properties on GAP→linear heads -----------------------------------------------------------------

def test_hirescam_is_cam_over_hw_and_grad_entropy_cannot_tell_classes_apart_on_gap_heads(reference):
    model, bundle = reference("resnet18")
    explainer = Explainer(bundle, backend="openvino", gradients="torch")
    x = random_images(bundle.preprocessing, 3, seed=6)
    _, h, w = bundle.activation_shape
    for target in (1, 5):
        hires = explainer.explain(x, "hirescam", target=target).maps
        cam = explainer.explain(x, "cam", target=target).maps
        np.testing.assert_allclose(hires, cam / (h * w), atol=1e-5 * np.abs(cam).max())
    with pytest.warns(ClassAgnosticWarning, match="grad-entropy: class-agnostic"):
        explained = explainer.explain(x, "grad-entropy", target=1)          # so shown and recorded under no class
    assert explained.class_agnostic and explained.map_class(0) is None
    assert all(r["class_agnostic"] and r["class_id"] is None for image in explained.records() for r in image)
    entropy = [explained.maps, explainer.explain(x, "grad-entropy").maps]
    np.testing.assert_allclose(entropy[0], entropy[1], rtol=1e-5)
    np.testing.assert_allclose(entropy[0], explainer.backend.features(x).sum(axis=1), rtol=1e-4)  # all weights 1
    assert not np.allclose(*(explainer.explain(x, "gradcam", target=t).maps for t in (1, 5)))


def test_a_folder_run_says_once_that_grad_entropy_explains_no_class_behind_a_gap_head(tmp_path):
    from helpers import run_cli

    from cam_infer.tools.demo import embedded_bundle_path
    from cam_infer.tools.synthetic import write_scenes
    scenes = write_scenes(tmp_path / "scenes", "large", 2, seed=1)
    (scenes / "boxes.json").unlink(missing_ok=True)
    done = run_cli("explain", embedded_bundle_path(), scenes, "--method", "grad-entropy,gradcam", "--target", "1",
                   "--out", tmp_path / "maps")
    assert done.returncode == 0, done.stderr
    assert "note: grad-entropy: class-agnostic" in done.stdout and "Warning" not in done.stderr
    results = json.loads((tmp_path / "maps" / "results.json").read_text())["results"]
    assert {r["method"]: (r.get("class_agnostic", False), r["class_id"]) for r in results} == {
        "grad-entropy": (True, None), "gradcam": (False, 1)}


def test_grad_entropy_does_tell_classes_apart_on_a_vgg_head(reference):
    _, bundle = reference("vgg16")
    explainer = Explainer(bundle, gradients="torch")
    x = random_images(bundle.preprocessing, 2, seed=7)
    explained = [explainer.explain(x, "grad-entropy", target=t) for t in (1, 5)]
    assert not explained[0].class_agnostic and explained[0].map_class(0) == 1
    maps = [e.maps for e in explained]
    assert np.abs(maps[0] - maps[1]).max() > 1e-3 * np.abs(maps[0]).max()


# --- the two routes ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_from_torch_every_method_matches_the_onnx_backends(reference):
    import torch

    model, bundle = reference("resnet18")
    params = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    explainer = Explainer.from_torch(model, layer="layer4", input_size=(64, 64))
    assert explainer.backend.describe().startswith("torch")
    x = random_images(explainer.bundle.preprocessing, 3, seed=8)
    for runtime in ("onnxruntime", "openvino"):
        other = Explainer(bundle, backend=runtime, gradients="torch")
        for name in [*GRADIENT_FREE, *GRADIENT]:
            options = {"top_k": 16} if name == "score" else {}
            got = explainer.explain(x, name, target=2, **options).maps
            expected = other.explain(x, name, target=2, **options).maps
            np.testing.assert_allclose(got, expected, atol=1e-4 * max(1e-12, np.abs(expected).max()), rtol=1e-3,
                                       err_msg=f"{name} on torch vs {runtime}")
    for n, p in model.named_parameters():                  # parameters, flags and mode untouched
        assert torch.equal(p.detach(), params[n][0]) and p.requires_grad == params[n][1] and p.grad is None
    assert not model.training


def test_from_torch_with_frozen_parameters_and_a_training_model(reference):
    import torch

    import models
    torch.manual_seed(1)
    model = models.shapes_net(num_classes=4).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    explainer = Explainer.from_torch(model, layer="features", input_size=(128, 128))
    x = random_images(explainer.bundle.preprocessing, 2, seed=9)
    target = np.array([1, 2])
    _, expected = torch_layer_gradients(model, "features", x, target)   # its input requires grad
    np.testing.assert_allclose(explainer.gradients(x, explainer.backend.features(x), target), expected,
                               atol=1e-6 * np.abs(expected).max())
    assert all(not p.requires_grad for p in model.parameters())
    model.train()
    with pytest.raises(CamInferError, match=r"training mode; call model.eval\(\) first"):
        Explainer.from_torch(model, layer="features", input_size=(128, 128))
    assert model.training


def test_explain_cli_runs_gradient_methods_on_a_bundle(tmp_path):
    from helpers import run_cli
    from cam_infer.tools.demo import embedded_bundle_path
    from cam_infer.tools.synthetic import generate
    import cv2

    for i, scene in enumerate(generate("large", 2)):
        cv2.imwrite(str(tmp_path / f"s{i}.png"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    result = run_cli("explain", str(embedded_bundle_path()), str(tmp_path / "s0.png"), str(tmp_path / "s1.png"),
                     "--method", "gradcam,layercam,recipro", "--backend", "openvino", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg")) == sorted(
        f"s{i}_{m}.jpg" for i in range(2) for m in ("gradcam", "layercam", "recipro"))


def test_a_final_softmax_is_left_out_even_behind_a_reshape():
    from cam_infer.gradients.onnx_in_torch import TorchGraph

    def head(*ops):
        names = ["x"] + [f"t{i}" for i in range(len(ops) - 1)] + ["y"]
        nodes = [helper.make_node(op, [names[i]], [names[i + 1]], **attrs) for i, (op, attrs) in enumerate(ops)]
        return helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, (2, 4, 3, 3))], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
            opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    x = RNG.standard_normal((2, 4, 3, 3)).astype(np.float32)
    model = head(("GlobalAveragePool", {}), ("Softmax", {"axis": 1}), ("Flatten", {}))
    np.testing.assert_allclose(torch_run(model, x, drop_softmax=True), x.mean(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_allclose(torch_run(model, x), ort_run(model, x), rtol=1e-6)
    with pytest.raises(CamInferError, match="does not end in a Softmax that could be left out"):
        TorchGraph(head(("GlobalAveragePool", {}), ("Sigmoid", {}), ("Flatten", {})), drop_softmax=True)


@pytest.mark.slow
def test_bench_measures_named_gradient_cases():
    from cam_infer.tools.bench import run_cases
    from cam_infer.tools.demo import embedded_bundle_path

    rows = run_cases(embedded_bundle_path(), ["onnxruntime"], ["gradcam", "recipro"], 2, report=lambda line: None)
    assert [r["case"] for r in rows] == ["gradcam", "recipro"]
    assert all(r["method"] > 0 and r["forward"] > 0 and r["peak_mb"] > 0 for r in rows)
