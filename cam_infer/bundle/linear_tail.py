"""A segmenter head that is a convolution then a bilinear resize (DeepLab's and our own segmenter's 1×1, the PAN's
3×3), read as matrices: y = act(R_y · (W∗A + b) · R_xᵀ) per class, W (C,K,k,k), b (C,), R_y (H,h), R_x (W,w)
the resize's interpolation weights along each axis (bilinear resizing is separable), act the head's Sigmoid or Softmax over
the classes, if any.

What it buys (`recipro_scores`): with the cut kept at one position q only (Recipro-CAM's one-hot mask), the
logits are b everywhere except within the resize's support of q's k×k neighbourhood (1×1: u_p·(W·A[:,q]) added,
u_p = R_y[p_y,q_y]·R_x[p_x,q_x]). The region score (1/|R|) Σ_{p∈R} y_c(p) is then computed on those few pixels, the
others giving act(b)_c: exact, and no head pass at the input's resolution per position.

The reading is checked against a float32 run of the head graph on random activations (`read_linear_tail`);
a head it does not reproduce is not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..numerics import FLOAT16_TOLERANCE
from .graph import reads_float16_weights
from .qdq_tail import dequantized, is_quantized, within_steps

ACTIVATIONS = {"Sigmoid": "sigmoid", "Softmax": "softmax"}


@dataclass(frozen=True)
class LinearTail:
    kernel: np.ndarray        # (C,K,k,k), k odd, padded to keep the size (k = 1: DeepLab's 1×1 convolution)
    bias: np.ndarray          # (C,)
    ry: np.ndarray            # (H,h)
    rx: np.ndarray            # (W,w)
    activation: str           # "none" | "sigmoid" | "softmax" (over the classes)

    @cached_property
    def supports(self) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`_supports` of R_y and R_x (weights float32), computed once per tail."""
        k = self.kernel.shape[2]
        return tuple((index, weights.astype(np.float32), valid)
                     for index, weights, valid in (_supports(self.ry, k), _supports(self.rx, k)))

    @property
    def weight(self) -> np.ndarray:
        """(C,K): the kernel's centre tap (all of it for a 1×1 convolution)."""
        r = self.kernel.shape[2] // 2
        return self.kernel[:, :, r, r]

    def logits(self, a: np.ndarray) -> np.ndarray:
        """(N,K,h,w) → the logits at the output's size (N,C,H,W), before the activation."""
        n, _, h, w = a.shape
        k = self.kernel.shape[2]
        r = k // 2
        padded = np.pad(a, ((0, 0), (0, 0), (r, r), (r, r)))
        z = sum(np.einsum("ck,nkhw->nchw", self.kernel[:, :, y, x], padded[:, :, y:y + h, x:x + w])
                for y in range(k) for x in range(k)) + self.bias[None, :, None, None]
        return np.einsum("Hh,nchw,Ww->ncHW", self.ry, z, self.rx, optimize=True)

    def scores(self, a: np.ndarray) -> np.ndarray:
        """(N,K,h,w) → what the head returns, (N,C,H,W)."""
        return apply(self.logits(a), self.activation)

    @cached_property
    def groups(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """`_groups` of the supports along y and x, computed once per tail."""
        y, x = (_groups(weights) for _, weights, _ in self.supports)
        if y[1].shape[1] * x[1].shape[1] * 2 > self.supports[0][1].shape[1] * self.supports[1][1].shape[1]:
            return (None, self.supports[0][1]), (None, self.supports[1][1])     # too few repeats to pay
        return y, x

    @cached_property
    def kernel_axes(self) -> tuple[tuple, tuple]:
        """Per axis, what `kernels.support_scores` reads: each support's output indices, the group of each
        (−1 for padding), its span (first, last) when the indices are contiguous (else (0, −1)), the indices per
        group and the groups' weights."""
        axes = []
        for (index, weights, valid), (one_hot, distinct) in zip(self.supports, self.groups):
            group = np.broadcast_to(np.arange(index.shape[1]), index.shape) if one_hot is None else \
                one_hot.argmax(axis=2)
            group = np.where(valid, group, -1).astype(np.int32)
            span = np.tile(np.array([0, -1], np.int32), (len(index), 1))
            for i, (row, kept) in enumerate(zip(index, valid)):
                if kept.any() and np.array_equal(np.sort(row[kept]), np.arange(row[kept].min(), row[kept].max() + 1)):
                    span[i] = row[kept].min(), row[kept].max()
            sizes = np.stack([np.bincount(g[g >= 0], minlength=distinct.shape[1]) for g in group]).astype(np.int32)
            axes.append((np.ascontiguousarray(index), np.ascontiguousarray(group), span, sizes,
                         np.ascontiguousarray(distinct.transpose(0, 2, 1), dtype=np.float32)))
        return tuple(axes)

    def recipro_scores(self, a: np.ndarray, c: int, region: np.ndarray, activation: str) -> np.ndarray:
        """S(q) = (1/|R|) Σ_{p∈R} act(b + Σ_n u_p(n)·W_{q−n}·A[:,q])_c for every position q of a (K,h,w) → (h,w),
        n the cells the kernel carries q to, u_p(n) = R_y[p_y,n_y]·R_x[p_x,n_x]. Pixels outside the support of
        q's cells give act(b)_c. The logits at p depend on p only through its row's weights R_y[p_y,·] and its
        column's R_x[p_x,·], which an upsampling repeats (DeepLab's 16×: 16 distinct rows of the 31 in a
        support): each distinct (row, column) pair is scored once, times the region's pixels that have it
        (`kernels.support_scores`)."""
        from ..kernels import summed_area, support_scores

        _, h, w = a.shape
        base = float(apply(self.bias.astype(np.float64)[:, None, None], activation)[c, 0, 0])
        kernel, bias = self.kernel.astype(np.float32), self.bias.astype(np.float32)
        if activation == "softmax":             # y_c = 1 / (1 + Σ_{j≠c} e^{z_j − z_c})
            others = np.arange(len(bias)) != c
            kernel, bias = kernel[others] - kernel[c], bias[others] - bias[c]
        elif activation == "sigmoid":           # y_c = 1 / (1 + e^{−z_c})
            kernel, bias = -kernel[c:c + 1], -bias[c:c + 1]
        else:
            kernel, bias = kernel[c:c + 1], bias[c:c + 1]
        region = np.ascontiguousarray(region, dtype=bool)
        out = np.empty((h, w), np.float64)
        weights = np.ascontiguousarray(kernel.transpose(1, 2, 3, 0))                   # (K,k,k,J)
        support_scores(np.ascontiguousarray(a, dtype=np.float32), weights, bias, activation != "none", region,
                       summed_area(region), *self.kernel_axes, base, out)
        return out.astype(np.float32)


def _groups(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct weight rows of each support (weights (n,L,k)): which one each of its L indices has, one-hot
    (n,L,D), and the distinct rows (n,D,k), padded to the most distinct with zero rows that no index has."""
    found = [np.unique(w, axis=0, return_inverse=True) for w in weights]
    most = max(len(rows) for rows, _ in found)
    one_hot = np.zeros((*weights.shape[:2], most), np.float32)
    distinct = np.zeros((len(weights), most, weights.shape[2]), np.float32)
    for i, (rows, which) in enumerate(found):
        one_hot[i, np.arange(weights.shape[1]), which.ravel()] = 1.0
        distinct[i, :len(rows)] = rows
    return one_hot, distinct


def _supports(r: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each low-resolution index i along one axis (r: (H,n) interpolation weights): the output indices its k
    cells i−t+k//2 reach (padded to the widest with index 0), their weights (L,k) (0 for a cell off the grid or a
    padded index) and which indices are real."""
    size, n = r.shape
    pad = k // 2
    cells = np.arange(n)[:, None] - np.arange(k)[None] + pad                              # (n,k)
    on_grid = (cells >= 0) & (cells < n)
    reach = [np.flatnonzero(r[:, cells[i][on_grid[i]]].any(axis=1)) for i in range(n)]
    widest = max(len(idx) for idx in reach)
    index = np.zeros((n, widest), np.int64)
    valid = np.zeros((n, widest), bool)
    weights = np.zeros((n, widest, k), np.float64)
    for i, idx in enumerate(reach):
        index[i, :len(idx)], valid[i, :len(idx)] = idx, True
        weights[i, :len(idx)] = r[idx][:, np.clip(cells[i], 0, n - 1)] * on_grid[i]
    return index, weights, valid


def apply(z: np.ndarray, activation: str) -> np.ndarray:
    """The activation over the class axis (0 of (C,...), 1 of (N,C,...): the one of length C)."""
    axis = 1 if z.ndim == 4 else 0
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if activation == "softmax":
        e = np.exp(z - z.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)
    return z


def read_linear_tail(head: onnx.ModelProto, activation_shape: tuple[int, int, int],
                     features_of=None) -> LinearTail | None:
    """The head as a `LinearTail` (a convolution, one or more linear Resizes, an activation), verified against
    the graph on random activations (which also checks that its Transposes cancel and that a Softmax is over
    the classes); None when it is not one. A quantized (QDQ) head is read as its float graph (`qdq_tail`) and
    accepted as `read_openvino_tail` accepts an int8 IR head: within 2 steps of its output's quantization on the
    cut of a real-range input (`features_of()`), its mean error within half a step."""
    if is_quantized(head):
        read = dequantized(head)
        if read is None or features_of is None:
            return None
        tail = read_linear_tail(read[0], activation_shape)
        return tail if tail is not None and _quantized_head_reproduced(head, tail, features_of, read[1]) else None
    # layout changes and a float16 head's casts (the cut to float16, the scores back): checked below, as the rest
    nodes = [n for n in head.graph.node if n.op_type not in ("Identity", "Transpose", "Cast")]
    weights = constant_values(head.graph)
    nodes = [n for n in nodes if n.op_type != "Constant"]
    resizes = [n for n in nodes[1:] if n.op_type == "Resize"]
    rest = nodes[1 + len(resizes):]
    if len(nodes) < 2 or nodes[0].op_type != "Conv" or nodes[1:1 + len(resizes)] != resizes or len(rest) > 1:
        return None
    conv = nodes[0]
    attributes = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    size = weights[conv.input[1]].shape[2:] if len(conv.input) > 1 and conv.input[1] in weights else None
    if size is None or attributes.get("group", 1) != 1 or size[0] != size[1] or size[0] % 2 == 0 or \
            any(s != 1 for s in attributes.get("strides", [1, 1])) or \
            any(d != 1 for d in attributes.get("dilations", [1, 1])) or \
            any(p != size[0] // 2 for p in attributes.get("pads", [0, 0, 0, 0])) or \
            any(helper.get_attribute_value(next(a for a in r.attribute if a.name == "mode")) != b"linear"
                for r in resizes):
        return None
    activation = "none"
    if rest:
        if rest[0].op_type not in ACTIVATIONS:
            return None
        activation = ACTIVATIONS[rest[0].op_type]
    weight = weights[conv.input[1]].astype(np.float32)
    bias = weights[conv.input[2]].astype(np.float32) if len(conv.input) > 2 and conv.input[2] else \
        np.zeros(len(weight), np.float32)
    k, h, w = activation_shape
    ry, rx = np.eye(h), np.eye(w)
    for resize in resizes:                               # a chain of resizes: the product of their weights
        step_y = _axis_weights(head, resize, weights, len(ry), len(rx), axis=0)
        step_x = _axis_weights(head, resize, weights, len(ry), len(rx), axis=1)
        if step_y is None or step_x is None:
            return None
        ry, rx = step_y @ ry, step_x @ rx
    tail = LinearTail(weight, bias, ry.astype(np.float32), rx.astype(np.float32), activation)
    return tail if _reproduces(head, tail, activation_shape) else None


def _quantized_head_reproduced(head: onnx.ModelProto, tail: LinearTail, features_of, step: float) -> bool:
    """The float tail against the quantized head run by ONNX Runtime on the cut of a real-range input."""
    from ..backends.sessions import FLOAT32, onnxruntime_session

    a, _ = features_of()
    session = onnxruntime_session(head, FLOAT32, quiet=True)
    expected = session.run(None, {session.get_inputs()[0].name: a})[0]
    return within_steps(np.abs(tail.scores(a) - expected), step)


def constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The graph's constants by name: initializers, Constant nodes and Casts of them (a float16 head's Resize reads
    its scales through a Cast to float32)."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Cast" and node.input[0] in values:
            to = helper.get_attribute_value(next(a for a in node.attribute if a.name == "to"))
            values[node.output[0]] = values[node.input[0]].astype(helper.tensor_dtype_to_np_dtype(to))
    return values


def _axis_weights(head, resize, weights, h, w, axis: int) -> np.ndarray | None:
    """R_y (H,h) or R_x (W,w): the head's Resize run on unit impulses along one axis (constant along the other)."""
    from ..backends.sessions import FLOAT32, onnxruntime_session

    n = h if axis == 0 else w
    impulses = np.zeros((n, 1, h, w), np.float32)
    for i in range(n):
        if axis == 0:
            impulses[i, 0, i, :] = 1.0
        else:
            impulses[i, 0, :, i] = 1.0
    inputs = ["impulses"] + list(resize.input[1:])
    initializers = [numpy_helper.from_array(weights[name], name) for name in resize.input[1:] if name in weights]
    graph = helper.make_graph([helper.make_node("Resize", inputs, ["resized"], name="resize",
                                                        **{a.name: helper.get_attribute_value(a)
                                                           for a in resize.attribute})],
                              "resize", [helper.make_tensor_value_info("impulses", onnx.TensorProto.FLOAT,
                                                                       [n, 1, h, w])],
                              [helper.make_tensor_value_info("resized", onnx.TensorProto.FLOAT, None)],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=list(head.opset_import), ir_version=head.ir_version)
    try:
        out = onnxruntime_session(model, FLOAT32, quiet=True).run(None, {"impulses": impulses})[0]
    except Exception:
        return None
    return (out[:, 0, :, 0] if axis == 0 else out[:, 0, 0, :]).T.copy()


def _reproduces(head: onnx.ModelProto, tail: LinearTail, shape) -> bool:
    """The tail against the head graph on random activations: within float32 rounding (1e-4), or within
    `FLOAT16_TOLERANCE` of a head that computes in float16 (its weights float16: the tail reads them in float32,
    the graph rounds every op's output to float16), relative to max(1, |scores|)."""
    from ..backends.sessions import FLOAT32, onnxruntime_session

    a = np.abs(np.random.default_rng(0).standard_normal((1, *shape))).astype(np.float32)
    session = onnxruntime_session(head, FLOAT32, quiet=True)
    expected = session.run(None, {session.get_inputs()[0].name: a})[0]
    got = tail.scores(a)
    tolerance = FLOAT16_TOLERANCE if reads_float16_weights(head.graph) else 1e-4
    return got.shape == expected.shape and bool(np.allclose(got, expected, rtol=tolerance,
                                                            atol=tolerance * max(1.0, np.abs(expected).max())))


# --- the same tail in an OpenVINO IR head (a TFLite DeepLab: int8 between FakeQuantize ops) -----------------

IR_PASS = {"FakeQuantize", "Transpose", "Convert", "Reshape"}


def read_openvino_tail(head, features_of, step: float) -> LinearTail | None:
    """An IR head ``[FakeQuantize] → 1×1 Convolution → Add bias → (FakeQuantize, Transpose, linear Interpolate)*``
    as a `LinearTail` in float, its weights dequantized. An int8 head rounds every FakeQuantize: the float tail
    is accepted when it reproduces the head on the cut of a real-range input (`features_of()`) within 2 steps of
    the output's quantization (`step`), its mean error within half a step; otherwise None."""
    ops = [op for op in head.get_ordered_ops() if op.get_type_name() not in ("Parameter", "Result", "Constant")]
    convs = [op for op in ops if op.get_type_name() == "Convolution"]
    if len(convs) != 1:
        return None
    conv = convs[0]
    weight = _evaluated(conv.input_value(1).get_node())
    if weight is None or weight.shape[2:] != (1, 1) or any(s != 1 for s in conv.get_attributes()["strides"]):
        return None
    after = [op for op in ops[ops.index(conv) + 1:]]
    if not after or after[0].get_type_name() != "Add":
        return None
    bias = _evaluated(after[0].input_value(1).get_node())
    if bias is None:
        return None
    h, w = (conv.get_input_partial_shape(0)[i].get_length() for i in (2, 3))
    ry, rx = np.eye(h, dtype=np.float64), np.eye(w, dtype=np.float64)
    for op in after[1:]:
        kind = op.get_type_name()
        if kind == "Interpolate":
            attributes = op.get_attributes()
            if attributes["mode"] not in ("linear", "linear_onnx", "bilinear_pillow") or attributes.get("antialias"):
                return None
            shape_in, shape_out = op.get_input_partial_shape(0), op.get_output_partial_shape(0)
            axes = [1, 2] if shape_in[3].get_length() == len(bias.ravel()) else [2, 3]
            ry = linear_weights(shape_in[axes[0]].get_length(), shape_out[axes[0]].get_length(),
                                attributes["coordinate_transformation_mode"]) @ ry
            rx = linear_weights(shape_in[axes[1]].get_length(), shape_out[axes[1]].get_length(),
                                attributes["coordinate_transformation_mode"]) @ rx
        elif kind not in IR_PASS:
            return None
    tail = LinearTail(weight.astype(np.float32), bias.ravel().astype(np.float32),
                      ry.astype(np.float32), rx.astype(np.float32), "none")
    a, expected = features_of()
    return tail if within_steps(np.abs(tail.scores(a) - expected), step) else None


def linear_weights(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """(n_out, n_in) weights of 1-D linear interpolation under an ONNX/OpenVINO coordinate transformation."""
    dst = np.arange(n_out, dtype=np.float64)
    if mode == "align_corners":
        src = dst * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros(1)
    elif mode == "asymmetric":
        src = dst * n_in / n_out
    elif mode in ("half_pixel", "pytorch_half_pixel"):
        src = (dst + 0.5) * n_in / n_out - 0.5
        if mode == "pytorch_half_pixel" and n_out == 1:
            src = np.zeros(1)
    else:
        raise ValueError(mode)
    src = np.clip(src, 0, n_in - 1)
    low = np.floor(src).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    frac = src - low
    out = np.zeros((n_out, n_in))
    np.add.at(out, (np.arange(n_out), low), 1 - frac)
    np.add.at(out, (np.arange(n_out), high), frac)
    return out


def _evaluated(node) -> np.ndarray | None:
    """A constant subgraph (Constant, Convert, Subtract, Multiply, Add: a dequantized weight) as an array."""
    kind = node.get_type_name()
    if kind == "Constant":
        return np.asarray(node.get_data(), np.float64)
    inputs = [_evaluated(node.input_value(i).get_node()) for i in range(node.get_input_size())]
    if any(v is None for v in inputs):
        return None
    if kind == "Convert":
        return inputs[0]
    return {"Subtract": np.subtract, "Multiply": np.multiply, "Add": np.add}.get(kind, lambda *_: None)(*inputs)
