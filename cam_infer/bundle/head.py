"""Reading a head graph that is global average pooling followed by a linear layer.

Accepted chains (each node reading the previous one's output): GlobalAveragePool, ReduceMean over the two
spatial axes or an AveragePool over the whole map → Flatten/Reshape/Squeeze/Identity/Dropout, a Transpose of
size-1 axes … → optionally Gemm, MatMul [+ Add] or a 1×1 Conv → optionally Softmax; a quantized head (QDQ or
QOperator) as the float graph it rounds. Without a linear layer the weights are the identity
(SqueezeNet cut at conv10: GAP → Softmax). The closed forms of CAM, Recipro-CAM and Ablation-CAM
use `LinearHead`; the Explainer checks it against the real head graph before trusting it.

A head the package cannot read as ONNX (an OpenVINO IR bundle's) is read by running it (`probed_linear_head`):
if it is GAP → linear, its bias is its output on zeros and W's column k its output on the map that is 1 on
channel k, 0 elsewhere, minus the bias; the same check against the head on random activations then decides.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

LARGE_PRODUCT = 50_000_000      # multiply-adds from which the product runs in ONNX Runtime (a batch-1
#                                 Recipro-CAM closed form on ResNet-50 is 100 M)
PASS_THROUGH = {"Flatten", "Reshape", "Squeeze", "Identity", "Dropout", "Cast"}


@dataclass(frozen=True)
class LinearSource:
    """Where a linear head keeps its parameters in the head graph, for graphs that reuse them
    (`cam_infer.fuse`): W = weight_scale · (tensor `weight`, transposed when `transposed`), C×K;
    b = bias_scale · tensor `bias`. `weight` None: W is the identity; `bias` None: b = 0."""

    weight: str | None = None
    transposed: bool = False
    convolution: bool = False   # `weight` is a 1×1 Conv's (C,K,1,1)
    weight_scale: float = 1.0
    bias: str | None = None
    bias_scale: float = 1.0
    probed: bool = False        # read by running the head (`probed_linear_head`): no tensor of a graph holds it


@dataclass(frozen=True)
class LinearHead:
    """``open_session``: opens an ONNX Runtime session of a graph, for the large products (the Explainer gives
    its own, with its threads); None: every product in NumPy."""

    weight: np.ndarray     # (C,K)
    bias: np.ndarray       # (C,)
    source: LinearSource = LinearSource()
    float16: bool = False  # the head graph holds W and b in float16 (and computes in it): checked within its rounding
    step: float = 0.0      # > 0: a quantized head read as the float graph it rounds, its output's quantization step
    open_session: Callable | None = field(default=None, repr=False, compare=False)
    _session: list = field(default_factory=list, repr=False, compare=False)   # the runtime product, once made
    _opening: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def logits(self, pooled: np.ndarray) -> np.ndarray:
        """Pre-softmax scores of pooled features (...,K) → (...,C). A large float32 product (Recipro-CAM's
        closed form over SESS's windows, a batch) runs as one Gemm in ONNX Runtime on the runtime's threads,
        with no spinning threads left behind: 3× NumPy's single-threaded product here."""
        if self.open_session is None or pooled.dtype != np.float32 or pooled.size * len(self.bias) < LARGE_PRODUCT:
            return pooled @ self.weight.T + self.bias
        flat = np.ascontiguousarray(pooled.reshape(-1, pooled.shape[-1]))
        return self._runtime_product(flat).reshape(*pooled.shape[:-1], len(self.bias))

    def _runtime_product(self, flat: np.ndarray) -> np.ndarray:
        with self._opening:
            if not self._session:
                self._session.append(self.open_session(gemm_model(self.weight, self.bias)))
        return self._session[0].run(None, {"pooled": flat})[0]


def gemm_model(weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """A graph computing pooled·Wᵀ + b in float32: input ``pooled`` (N,K), output ``logits`` (N,C)."""
    from onnx import TensorProto, helper

    c, k = weight.shape
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["pooled", "weight", "bias"], ["logits"], transB=1)], "linear_head",
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, c])],
        [numpy_helper.from_array(np.asarray(weight, np.float32), "weight"),
         numpy_helper.from_array(np.asarray(bias, np.float32).reshape(c), "bias")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def read_linear_head(model: onnx.ModelProto, channels: int,
                     spatial: tuple[int, int] | None = None) -> LinearHead | None:
    """The (W, b) of a GAP→linear head, or None when the head is anything else. An AveragePool whose window is the
    whole (h, w) map of the cut (`spatial`) is a GAP; a 1×1 Conv a linear layer. A quantized (QDQ) head is read
    as the float graph it rounds (`qdq_tail.dequantized`: W and b as the runtime dequantizes them), its output's
    quantization step kept for the caller's check."""
    from .qdq_tail import dequantized, is_quantized
    step = 0.0
    if is_quantized(model):
        read = dequantized(model, logits=True)
        if read is None:
            return None
        model, step = read
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant" and _attr(node, "value", None) is not None:
            consts[node.output[0]] = numpy_helper.to_array(_attr(node, "value", None))
    nodes = list(g.node)
    shape_only = _shape_computations(nodes)
    shapes = _inferred_shapes(model) if any(n.op_type == "Transpose" for n in nodes) else {}
    current = g.input[0].name
    weight, bias = np.eye(channels, dtype=np.float32), np.zeros(channels, np.float32)
    source = {}
    stage = "pool"
    for node in nodes:
        if node.op_type == "Constant" or id(node) in shape_only:
            continue
        if not node.input or node.input[0] != current:
            return None
        op = node.op_type
        if stage == "pool" and op in ("Cast", "Identity"):         # a float16 graph's Cast of its input
            pass
        elif stage == "pool":
            if op == "GlobalAveragePool" or (op == "ReduceMean" and _spatial_axes(node, consts)) or \
                    (op == "AveragePool" and _whole_window(node, spatial)):
                stage = "linear"
            else:
                return None
        elif op in PASS_THROUGH or (op == "Transpose" and _moves_only_ones(node, shapes)):
            pass
        elif stage == "linear" and op == "Gemm" and not _attr(node, "transA", 0):
            b = consts.get(node.input[1])
            if b is None:
                return None
            weight = (b if _attr(node, "transB", 0) else b.T) * _attr(node, "alpha", 1.0)
            source.update(weight=node.input[1], transposed=not _attr(node, "transB", 0),
                          weight_scale=float(_attr(node, "alpha", 1.0)))
            if len(node.input) > 2 and node.input[2]:
                if node.input[2] not in consts:
                    return None
                bias = _as_bias(consts[node.input[2]] * _attr(node, "beta", 1.0), weight.shape[:1])
                if bias is None:
                    return None
                source.update(bias=node.input[2], bias_scale=float(_attr(node, "beta", 1.0)))
            stage = "bias"
        elif stage == "linear" and op == "Conv" and _pointwise(node, consts):
            weight = consts[node.input[1]][:, :, 0, 0]
            source.update(weight=node.input[1], convolution=True)
            if len(node.input) > 2 and node.input[2]:
                if node.input[2] not in consts:
                    return None
                bias = consts[node.input[2]]
                source.update(bias=node.input[2])
            stage = "softmax" if "bias" in source else "bias"
        elif stage == "linear" and op == "MatMul" and node.input[1] in consts:
            weight = consts[node.input[1]].T
            source.update(weight=node.input[1], transposed=True)
            stage = "bias"
        elif stage == "bias" and op == "Add" and node.input[1] in consts:
            bias = _as_bias(consts[node.input[1]], weight.shape[:1])
            if bias is None:
                return None
            source.update(bias=node.input[1])
            stage = "softmax"
        elif op == "Softmax" and stage in ("linear", "bias", "softmax"):
            stage = "done"
        else:
            return None
        current = node.output[0]
    if current != g.output[0].name or weight.ndim != 2 or weight.shape[1] != channels:
        return None
    if "bias" not in source:
        bias = np.zeros(len(weight), np.float32)
    float16 = any(consts[source[name]].dtype == np.float16 for name in ("weight", "bias") if name in source)
    return LinearHead(np.ascontiguousarray(weight, np.float32), np.ascontiguousarray(bias, np.float32),
                      LinearSource(**source), float16, step)


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Each tensor's dimensions as ONNX shape inference gives them (None where unknown)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:                           # noqa: BLE001 (a graph it cannot follow: no shapes, no Transpose)
        return {}
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}


def _moves_only_ones(node: onnx.NodeProto, shapes: dict) -> bool:
    """A Transpose that keeps the batch axis first and moves only axes of size 1 (tflite2onnx's NCHW → NHWC of a
    pooled (N,C,1,1) map): the values keep their order."""
    dims, perm = shapes.get(node.input[0]), list(_attr(node, "perm", []))
    if not dims or len(perm) != len(dims) or perm[0] != 0:
        return False
    moved = [d for d in range(1, len(dims)) if dims[d] != 1]
    return None not in dims[1:] and [p for p in perm if p in moved] == moved


def _whole_window(node: onnx.NodeProto, spatial: tuple[int, int] | None) -> bool:
    """An AveragePool over the whole (h, w) map, unpadded: a global average pooling."""
    return spatial is not None and tuple(_attr(node, "kernel_shape", ())) == tuple(spatial) and \
        not any(_attr(node, "pads", ())) and _attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", b"VALID")


def _pointwise(node: onnx.NodeProto, consts: dict) -> bool:
    """A Conv with constant (C,K,1,1) weights, ungrouped and unpadded, on the pooled (N,K,1,1) map: a linear layer."""
    w = consts.get(node.input[1]) if len(node.input) > 1 else None
    return w is not None and w.ndim == 4 and w.shape[2:] == (1, 1) and _attr(node, "group", 1) == 1 and \
        not any(_attr(node, "pads", ()))


def probed_linear_head(run: Callable, shape: tuple[int, int, int], chunk: int = 128) -> LinearHead:
    """(W, b) such that run(A) = W·mean(A) + b if the head `run` ((N,K,h,w) float32 → (N,C)) is GAP → linear:
    b = run(0), W[:, k] = run(E_k) − b with E_k one on channel k and zero elsewhere (its mean is the unit vector
    e_k). Says nothing about other heads: the caller checks the result on random activations. ``source`` names no
    tensor (the weights are not read from a graph, so `fuse` cannot reuse them)."""
    k, h, w = shape
    bias = run(np.zeros((1, k, h, w), np.float32)).reshape(-1).astype(np.float64)
    columns = []
    for start in range(0, k, chunk):
        n = min(chunk, k - start)
        unit = np.zeros((n, k, h, w), np.float32)
        unit[np.arange(n), start + np.arange(n)] = 1.0
        columns.append(run(unit).reshape(n, -1) - bias)
    weight = np.concatenate(columns).T
    return LinearHead(np.ascontiguousarray(weight, np.float32), bias.astype(np.float32), LinearSource(probed=True))


SHAPE_OPS = {"Shape", "Gather", "Slice", "Cast", "Concat", "Unsqueeze", "Squeeze", "Constant", "ConstantOfShape",
             "Identity", "Mul", "Div", "Add", "Sub", "ReduceProd"}


def _shape_computations(nodes: list) -> set[int]:
    """The nodes (by id) that only compute a Reshape's target shape (PP-OCR's Shape → Slice → Concat after the
    pooling): every output read as a Reshape's shape or by another such node. The head read past them is still
    checked against the graph's own run."""
    readers: dict[str, list] = {}
    for node in nodes:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, i))
    found: set[int] = set()
    for node in reversed(nodes):                    # readers come after their producers
        uses = [use for name in node.output for use in readers.get(name, [])]
        if node.op_type in SHAPE_OPS and uses and all((r.op_type == "Reshape" and i == 1) or id(r) in found
                                                      for r, i in uses):
            found.add(id(node))
    return found


def _as_bias(value: np.ndarray, shape: tuple) -> np.ndarray | None:
    """A constant added to the scores, as a (C,) bias; None when it is not one (e.g. one row per batch item)."""
    if np.ndim(value) > 1 and any(d != 1 for d in np.shape(value)[:-1]):
        return None
    try:
        return np.broadcast_to(np.reshape(value, np.shape(value)[-1:] or ()), shape)
    except ValueError:
        return None


def _spatial_axes(node: onnx.NodeProto, consts: dict) -> bool:
    axes = _attr(node, "axes", None)
    if axes is None and len(node.input) > 1:
        axes = consts.get(node.input[1])
    return axes is not None and {int(a) % 4 for a in np.ravel(axes)} == {2, 3}
