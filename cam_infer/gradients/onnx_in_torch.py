"""A head graph run in PyTorch, so that autograd can differentiate it.

A small interpreter of the ops classifier heads use. Each op is a function of torch tensors with
the ONNX semantics of the model's opset; an op outside `OPS` is an error that names it. Integer
tensors that only compute shapes (Shape → Gather → Concat → Reshape) stay integer tensors.
Checked against ONNX Runtime op by op and on whole heads in `tests/test_gradients.py`.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from ..errors import CamInferError


SHAPE_ONLY = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast")


def _torch():
    import torch
    return torch


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


QUANTIZED = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd", "QGemm",
             "QLinearGlobalAveragePool", "QLinearSoftmax", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}


class TorchGraph:
    """An ONNX graph with one input, callable on a torch tensor. ``drop_softmax`` leaves out a
    final Softmax so that the output is the pre-softmax score."""

    def __init__(self, model: onnx.ModelProto, drop_softmax: bool = False):
        torch = _torch()
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        g = model.graph
        self.nodes = list(g.node)
        self.input = g.input[0].name
        self.output = g.output[0].name
        if drop_softmax:
            self._bypass_final_softmax()
        unknown = sorted({n.op_type for n in self.nodes if n.op_type not in OPS or n.domain not in ("", "ai.onnx")})
        quantized = sorted(set(unknown) & QUANTIZED)
        if quantized:
            raise CamInferError(f"gradient methods need a float model, and this head is quantized "
                                f"({', '.join(quantized)}); split the float model it was quantized from, or use a "
                                "gradient-free method "
                                "(recipro, ablation, score; vit-recipro on a vision transformer)")
        if unknown:
            raise CamInferError(f"the head graph uses {', '.join(unknown)}, which the torch head interpreter does not "
                                f"support (it runs {', '.join(sorted(OPS))})")
        self.constants = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in g.initializer}
        self.attributes = [_attributes(n) for n in self.nodes]

    def _bypass_final_softmax(self) -> None:
        """Turn the Softmax that produces the output (possibly through reshapes) into an Identity."""
        producer = {o: n for n in self.nodes for o in n.output}
        node = producer.get(self.output)
        while node is not None and node.op_type in SHAPE_ONLY:
            node = producer.get(node.input[0])
        if node is None or node.op_type != "Softmax":
            raise CamInferError("the model's output is a probability but its head does not end in a Softmax "
                                "that could be left out; gradients of the pre-softmax score are not available")
        bypass = onnx.NodeProto()
        bypass.CopyFrom(node)
        bypass.op_type = "Identity"
        del bypass.attribute[:]
        self.nodes[self.nodes.index(node)] = bypass

    def __call__(self, x):
        values = dict(self.constants)
        values[self.input] = x
        for node, attrs in zip(self.nodes, self.attributes):
            inputs = [values[i] if i else None for i in node.input]
            out = OPS[node.op_type](self, inputs, attrs)
            outs = out if isinstance(out, tuple) else (out,)
            values.update(zip(node.output, outs))
        return values[self.output]


# --- the ops --------------------------------------------------------------------------------------

def _pads(attrs: dict, spatial: int) -> tuple[list[int], bool]:
    """ONNX pads [x1_begin, x2_begin, ..., x1_end, ...] → symmetric torch padding if possible."""
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise CamInferError(f"auto_pad={attrs['auto_pad']!r} is not supported by the torch head interpreter")
    return pads, pads[:spatial] == pads[spatial:]


def _padded(x, pads: list[int], value: float = 0.0):
    torch = _torch()
    spatial = len(pads) // 2
    flat = []
    for i in reversed(range(spatial)):
        flat += [pads[i], pads[i + spatial]]
    return torch.nn.functional.pad(x, flat, value=value)


def conv(g, i, a):
    F = _torch().nn.functional
    x, w, b = i[0], i[1], (i[2] if len(i) > 2 else None)
    spatial = w.dim() - 2
    pads, symmetric = _pads(a, spatial)
    if not symmetric:
        x, pads = _padded(x, pads), [0] * 2 * spatial
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    return fn(x, w, b, stride=a.get("strides", 1), padding=pads[:spatial], dilation=a.get("dilations", 1),
              groups=a.get("group", 1))


def max_pool(g, i, a):
    F = _torch().nn.functional
    x = i[0]
    kernel = a["kernel_shape"]
    pads, symmetric = _pads(a, len(kernel))
    if not symmetric:
        x, pads = _padded(x, pads, float("-inf")), [0] * 2 * len(kernel)
    return F.max_pool2d(x, kernel, a.get("strides", 1), pads[:len(kernel)], a.get("dilations", 1),
                        ceil_mode=bool(a.get("ceil_mode", 0)))


def average_pool(g, i, a):
    F = _torch().nn.functional
    x = i[0]
    kernel = a["kernel_shape"]
    pads, symmetric = _pads(a, len(kernel))
    include = bool(a.get("count_include_pad", 0))
    if not symmetric:
        if not include:
            raise CamInferError("AveragePool with asymmetric pads excluding padding is not supported")
        x, pads = _padded(x, pads), [0] * 2 * len(kernel)
    return F.avg_pool2d(x, kernel, a.get("strides", 1), pads[:len(kernel)], ceil_mode=bool(a.get("ceil_mode", 0)),
                        count_include_pad=include)


def gemm(g, i, a):
    x, w = i[0], i[1]
    if a.get("transA", 0):
        x = x.t()
    if a.get("transB", 0):
        w = w.t()
    y = a.get("alpha", 1.0) * (x @ w)
    if len(i) > 2 and i[2] is not None:
        y = y + a.get("beta", 1.0) * i[2]
    return y


def _axes(g, i, a, opset_moved: int):
    """Axes from the attribute (older opsets) or the second input."""
    if g.opset >= opset_moved and len(i) > 1 and i[1] is not None:
        return _ints(i[1])
    return list(a["axes"]) if "axes" in a else None


def _reduce(method: str, opset_moved: int):
    """ReduceMean / ReduceSum: axes from the attribute or (from `opset_moved` on) the second input."""
    def reduce(g, i, a):
        axes = _axes(g, i, a, opset_moved)
        if axes is None:
            if a.get("noop_with_empty_axes", 0):
                return i[0]
            axes = list(range(i[0].dim()))
        return getattr(i[0], method)(dim=axes, keepdim=bool(a.get("keepdims", 1)))
    return reduce


reduce_mean = _reduce("mean", 18)
reduce_sum = _reduce("sum", 13)


def softmax(g, i, a):
    x = i[0]
    axis = a.get("axis", -1 if g.opset >= 13 else 1)
    if g.opset >= 13:
        return x.softmax(dim=axis)
    axis %= x.dim()
    shape = x.shape
    return x.reshape(*shape[:axis], -1).softmax(dim=-1).reshape(shape)


def clip(g, i, a):
    torch = _torch()
    low = i[1] if len(i) > 1 and i[1] is not None else a.get("min")
    high = i[2] if len(i) > 2 and i[2] is not None else a.get("max")
    x = i[0]
    if low is not None:
        x = torch.maximum(x, torch.as_tensor(low, dtype=x.dtype))
    if high is not None:
        x = torch.minimum(x, torch.as_tensor(high, dtype=x.dtype))
    return x


def batch_norm(g, i, a):
    x, scale, bias, mean, var = i[:5]
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv = scale / (var + a.get("epsilon", 1e-5)).sqrt()
    return (x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)


def flatten(g, i, a):
    x = i[0]
    axis = a.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    lead = 1
    for d in x.shape[:axis]:
        lead *= d
    return x.reshape(lead, -1)


def reshape(g, i, a):
    x = i[0]
    shape = _ints(i[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[k] if s == 0 else s for k, s in enumerate(shape)]
    return x.reshape(shape)


def squeeze(g, i, a):
    axes = _axes(g, i, a, 13)
    x = i[0]
    if axes is None:
        return x.squeeze()
    for axis in sorted((ax % x.dim() for ax in axes), reverse=True):
        x = x.squeeze(axis)
    return x


def unsqueeze(g, i, a):
    axes = _axes(g, i, a, 13)
    x = i[0]
    rank = x.dim() + len(axes)
    for axis in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(axis)
    return x


def concat(g, i, a):
    return _torch().cat(i, dim=a["axis"])


def constant(g, i, a):
    torch = _torch()
    if "value" in a:
        return torch.from_numpy(numpy_helper.to_array(a["value"]).copy())
    for key in ("value_float", "value_int"):
        if key in a:
            return torch.tensor(a[key])
    for key in ("value_floats", "value_ints"):
        if key in a:
            return torch.tensor(list(a[key]))
    raise CamInferError("a Constant node without a supported value")


def cast(g, i, a):
    torch = _torch()
    types = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.FLOAT16: torch.float16,
             onnx.TensorProto.DOUBLE: torch.float64, onnx.TensorProto.INT64: torch.int64,
             onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.BFLOAT16: torch.bfloat16}
    if a["to"] not in types:
        raise CamInferError(f"Cast to ONNX type {a['to']} is not supported by the torch head interpreter")
    return i[0].to(types[a["to"]])


def gather(g, i, a):
    x, index = i[0], i[1].long()
    axis = a.get("axis", 0) % x.dim()
    index = index.where(index >= 0, index + x.shape[axis])
    out = x.index_select(axis, index.reshape(-1))
    return out.reshape((*x.shape[:axis], *index.shape, *x.shape[axis + 1:]))


def shape(g, i, a):
    torch = _torch()
    dims = list(i[0].shape)[a.get("start", 0):a.get("end", None)]
    return torch.tensor(dims, dtype=torch.int64)


def transpose(g, i, a):
    perm = a.get("perm", list(reversed(range(i[0].dim()))))
    return i[0].permute(*perm)


def resize(g, i, a):
    """Resize of the spatial axes (N,C,H,W): bilinear (``linear``) with half_pixel or align_corners coordinates, or
    nearest; sizes from ``sizes`` or ``scales`` (a segmenter's upsampling)."""
    torch = _torch()
    x = i[0]
    scales = i[2] if len(i) > 2 and i[2] is not None and i[2].numel() else None
    sizes = i[3] if len(i) > 3 and i[3] is not None and i[3].numel() else None
    if sizes is not None:
        size = [int(v) for v in sizes.tolist()[2:]]
    else:
        size = [int(round(d * float(f))) for d, f in zip(x.shape[2:], scales.tolist()[2:])]
    mode = a.get("mode", b"nearest")
    transform = a.get("coordinate_transformation_mode", b"half_pixel")
    if mode in (b"linear", "linear") and transform in (b"half_pixel", b"pytorch_half_pixel", b"align_corners"):
        return torch.nn.functional.interpolate(x, size=size, mode="bilinear",
                                               align_corners=transform == b"align_corners")
    if mode in (b"nearest", "nearest") and transform == b"asymmetric":
        return torch.nn.functional.interpolate(x, size=size, mode="nearest")
    raise CamInferError(f"Resize mode={mode!r}, coordinate_transformation_mode={transform!r} is not supported by "
                        "the torch head interpreter")


def einsum(g, i, a):
    equation = a["equation"]
    return _torch().einsum(equation.decode() if isinstance(equation, bytes) else equation, *i)


def _torch_fn(name):
    return lambda g, i, a: getattr(_torch(), name)(i[0])


# --- the ops of transformer heads ---------------------------------------------------------------------

def layer_norm(g, i, a):
    """LayerNormalization over the axes from `axis` on: (x − mean)/√(var + ε)·scale + bias."""
    x, scale = i[0], i[1]
    axis = a.get("axis", -1) % x.dim()
    bias = i[2] if len(i) > 2 else None
    return _torch().nn.functional.layer_norm(x, x.shape[axis:], scale, bias, a.get("epsilon", 1e-5))


def gelu(g, i, a):
    approximate = a.get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    return _torch().nn.functional.gelu(i[0], approximate=approximate)


def slice_(g, i, a):
    x = i[0]
    starts, ends = _ints(i[1]), _ints(i[2])
    axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
    steps = _ints(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step < 0:
            raise CamInferError("Slice with a negative step is not supported by the torch head interpreter")
        size = x.shape[axis]
        start = max(0, min(size, start + size if start < 0 else start))
        end = max(0, min(size, end + size if end < 0 else end))
        index[axis % x.dim()] = slice(start, end, step)
    return x[tuple(index)]


def split(g, i, a):
    x = i[0]
    axis = a.get("axis", 0) % x.dim()
    sizes = _ints(i[1]) if len(i) > 1 and i[1] is not None else list(a.get("split", []))
    if not sizes:
        parts = a["num_outputs"] if "num_outputs" in a else None
        if parts is None:
            raise CamInferError("Split without sizes or num_outputs is not supported by the torch head interpreter")
        size = -(-x.shape[axis] // parts)
        sizes = [min(size, x.shape[axis] - k * size) for k in range(parts)]
    return tuple(x.split(sizes, dim=axis))


def expand(g, i, a):
    """Expand broadcasts both ways: the result has the broadcast of x's shape and the given one."""
    torch = _torch()
    return i[0].expand(torch.broadcast_shapes(tuple(i[0].shape), tuple(_ints(i[1]))))


def where(g, i, a):
    return _torch().where(i[0].bool(), i[1], i[2])


def constant_of_shape(g, i, a):
    torch = _torch()
    value = torch.from_numpy(numpy_helper.to_array(a["value"]).copy()) if "value" in a else torch.zeros(1)
    return value.reshape(-1)[0].expand(_ints(i[0])).clone()


OPS = {
    "Gemm": gemm,
    "MatMul": lambda g, i, a: _torch().matmul(i[0], i[1]),
    "Conv": conv,
    "Relu": _torch_fn("relu"),
    "Clip": clip,
    "Sigmoid": _torch_fn("sigmoid"),
    "HardSwish": lambda g, i, a: _torch().nn.functional.hardswish(i[0]),
    "HardSigmoid": lambda g, i, a: (a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5)).clamp(0, 1),
    "GlobalAveragePool": lambda g, i, a: i[0].mean(dim=tuple(range(2, i[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda g, i, a: i[0].amax(dim=tuple(range(2, i[0].dim())), keepdim=True),
    "AveragePool": average_pool,
    "MaxPool": max_pool,
    "ReduceMean": reduce_mean,
    "Flatten": flatten,
    "Reshape": reshape,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Add": lambda g, i, a: i[0] + i[1],
    "Sub": lambda g, i, a: i[0] - i[1],
    "Mul": lambda g, i, a: i[0] * i[1],
    "Div": lambda g, i, a: i[0] / i[1],
    "Concat": concat,
    "BatchNormalization": batch_norm,
    "Softmax": softmax,
    "Dropout": lambda g, i, a: i[0],
    "Identity": lambda g, i, a: i[0],
    "Constant": constant,
    "Cast": cast,
    "Gather": gather,
    "Shape": shape,
    "Transpose": transpose,
    "Resize": resize,
    "Einsum": einsum,
    "LayerNormalization": layer_norm,
    "Erf": _torch_fn("erf"),
    "Gelu": gelu,
    "Sqrt": _torch_fn("sqrt"),
    "Neg": _torch_fn("neg"),
    "Tanh": _torch_fn("tanh"),
    "Pow": lambda g, i, a: _torch().pow(i[0], i[1]),
    "Slice": slice_,
    "Split": split,
    "Expand": expand,
    "Tile": lambda g, i, a: i[0].repeat(*_ints(i[1])),
    "Where": where,
    "Equal": lambda g, i, a: i[0] == i[1],
    "ReduceSum": reduce_sum,
    "ConstantOfShape": constant_of_shape,
    "Range": lambda g, i, a: _torch().arange(i[0].item(), i[1].item(), i[2].item(), dtype=i[0].dtype),
}
