"""The methods as ONNX subgraphs: activation A (N,K,h,w) → low-resolution map, inside the model.

Each function mirrors its NumPy method in `cam_infer.methods` (same formula, same options, the
docstrings there cite the papers) and returns the map tensor's name: (N,h,w) for class-agnostic
methods, (N,T,h,w) for class-specific ones, T the number of classes explained per image.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto

from ..bundle.head import LinearHead
from ..errors import CamInferError
from ..methods.recipro import KERNELS, kernel_mass
from ..methods.registry import check_choice
from .builder import Builder

TINY = 1e-30
EIGEN_SQUARINGS = 10      # 1024 power-iteration steps


@dataclass
class Fusion:
    """What a fused method may use: the graph being built and the head it ends in."""

    b: Builder
    activation: str                 # (N,K,h,w)
    shape: tuple[int, int, int]     # (K,h,w)
    targets: str | None             # (N,T) int64, for class-specific methods
    count: int                      # T
    num_classes: int
    output_kind: str                # logits | probabilities
    linear_head: LinearHead | None
    head: onnx.ModelProto

    @property
    def head_ops(self) -> str:
        return ", ".join(sorted({n.op_type for n in self.head.graph.node}))

    def channels_by_position(self) -> str:
        """A as (N,K,h·w)."""
        k, h, w = self.shape
        return self.b.reshape(self.activation, (0, k, h * w), hint="a_flat")

    def per_class(self, rows: str) -> str:
        """(N,T,h·w) → (N,T,h,w), or (N,h,w) when T = 1."""
        _, h, w = self.shape
        return self.b.reshape(rows, (0, self.count, h, w) if self.count > 1 else (0, h, w), hint="map")


@dataclass(frozen=True)
class FusedMethod:
    name: str
    fn: Callable
    class_specific: bool
    options: tuple[str, ...]


FUSED: dict[str, FusedMethod] = {}


def fused(name: str, class_specific: bool):
    def register(fn):
        params = inspect.signature(fn).parameters.values()
        FUSED[name] = FusedMethod(name, fn, class_specific, tuple(p.name for p in params if p.kind == p.KEYWORD_ONLY))
        return fn
    return register


@fused("activation", class_specific=False)
def activation(f: Fusion) -> str:
    """L = (1/K) Σ_k A^k."""
    return f.b.reduce("ReduceMean", f.activation, [1], keepdims=False, hint="map")


@fused("entropy", class_specific=False)
def entropy(f: Fusion, *, estimator: str = "spatial", weighting: str = "entropy") -> str:
    """w_k = −Σ_u p_u ln p_u / ln(h·w), p_u = max(A^k_u,0)/Σ_v max(A^k_v,0) (0 for an all-≤0 channel),
    optionally 1 − w_k; L = Σ_k w_k A^k."""
    check_choice("weighting", weighting, ("entropy", "negentropy"))
    if estimator != "spatial":
        raise CamInferError("a fused entropy map supports estimator='spatial' only (a 256-bin histogram per "
                            "channel has no compact ONNX form); use the Explainer for estimator='histogram'")
    b = f.b
    k, h, w = f.shape
    positive = b.op("Relu", f.activation)
    total = b.reduce("ReduceSum", positive, [2, 3])
    p = b.op("Div", positive, b.op("Max", total, b.const(TINY)), hint="p")
    plogp = b.op("Mul", p, b.op("Log", b.op("Max", p, b.const(TINY))))
    log_n = float(np.log(h * w)) if h * w > 1 else 1.0
    weights = b.op("Mul", b.reduce("ReduceSum", plogp, [2, 3]), b.const(-1.0 / log_n), hint="entropy")  # (N,K,1,1)
    if weighting == "negentropy":
        weights = b.op("Sub", b.const(1.0), weights, hint="negentropy")
    row = b.reshape(weights, (0, 1, k), hint="weights")                                             # (N,1,K)
    return b.reshape(b.op("MatMul", row, f.channels_by_position()), (0, h, w), hint="map")


@fused("eigen", class_specific=False)
def eigen(f: Fusion, *, centered: bool = False, squarings: int = EIGEN_SQUARINGS) -> str:
    """L = O v₁ (O = A as h·w×K, v₁ its first right singular vector) by power iteration on the
    smaller Gram matrix G, OOᵀ (then L = √λ u) or OᵀO: G is squared `squarings` times (normalised
    each time), so u ∝ G^(2^s)·v₀ — 2^s power steps in s matrix products — then the sign as the
    Explainer's. The error falls as (λ₂/λ₁)^(2^s)."""
    if not isinstance(squarings, int) or isinstance(squarings, bool) or not 0 <= squarings <= 30:
        raise CamInferError(f"squarings must be an integer in 0..30, not {squarings!r}")
    b = f.b
    k, h, w = f.shape
    columns = f.channels_by_position()                                           # Oᵀ (N,K,hw)
    if centered:
        columns = b.op("Sub", columns, b.reduce("ReduceMean", columns, [2]), hint="centered")
    rows = b.op("Transpose", columns, perm=[0, 2, 1], hint="o")                  # O (N,hw,K)
    by_position = h * w <= k
    gram = b.op("MatMul", rows, columns) if by_position else b.op("MatMul", columns, rows)
    power = gram
    for _ in range(squarings):
        power = b.op("MatMul", power, power)
        power = b.op("Div", power, b.op("Add", b.reduce("ReduceL2", power, [1, 2]), b.const(TINY)), hint="power")
    vector = _unit(b, b.op("MatMul", power, _start_vector(b, h * w if by_position else k)))   # G^(2^s)·v₀
    if by_position:
        eigenvalue = b.reduce("ReduceSum", b.op("Mul", vector, b.op("MatMul", gram, vector)), [1])
        projection = b.op("Mul", vector, b.op("Sqrt", b.op("Relu", eigenvalue)))  # (N,hw,1)
    else:
        projection = b.op("MatMul", rows, vector)
    projection = b.op("Transpose", projection, perm=[0, 2, 1], hint="projection")  # (N,1,hw)
    original = f.channels_by_position()
    if centered:
        reference = b.reduce("ReduceMean", original, [1])                           # channel mean (N,1,hw)
        agreement = _dot(b, _centred(b, projection), _centred(b, reference))
    else:
        agreement = _dot(b, projection, b.reduce("ReduceSum", original, [1]))      # Σ_k (Oᵀ L)_k
    sign = b.op("Where", b.op("Less", agreement, b.const(0.0)), b.const(-1.0), b.const(1.0), hint="sign")
    return b.reshape(b.op("Mul", projection, sign), (0, h, w), hint="map")


def _start_vector(b: Builder, n: int) -> str:
    """v₀ᵢ = 2 + sin i, (n,1): positive, so never orthogonal to a Perron vector, and not constant,
    so never orthogonal to centred data (whose Gram matrix has 1 in its null space). Computed, not stored."""
    ids = b.op("Range", b.const(0.0), b.const(float(n)), b.const(1.0))
    return b.reshape(b.op("Add", b.op("Sin", ids), b.const(2.0)), (n, 1), hint="start")


def _unit(b: Builder, v: str) -> str:
    return b.op("Div", v, b.op("Add", b.reduce("ReduceL2", v, [1]), b.const(TINY)), hint="unit")


def _centred(b: Builder, row: str) -> str:
    return b.op("Sub", row, b.reduce("ReduceMean", row, [2]))


def _dot(b: Builder, x: str, y: str) -> str:
    """Σ over the last axis of two (N,1,n) rows → (N,1,1)."""
    return b.reduce("ReduceSum", b.op("Mul", x, y), [2])


@fused("cam", class_specific=True)
def cam(f: Fusion) -> str:
    """L^c = Σ_k W_ck A^k with W the head's own weight tensor (no copy)."""
    weights = class_rows(f, require_linear_head(f, "cam"))                      # (N,T,K)
    return f.per_class(f.b.op("MatMul", weights, f.channels_by_position()))


def class_rows(f: Fusion, head: LinearHead) -> str:
    """The rows W_t of the target classes, (N,T,K), read from the head's weight tensor."""
    b, src, k = f.b, head.source, f.shape[0]
    if src.weight is None:
        ids = b.op("Range", b.const(0, dtype=np.int64), b.const(k, dtype=np.int64), b.const(1, dtype=np.int64))
        return b.op("Cast", b.op("Equal", b.unsqueeze(f.targets, [2]), ids), to=TensorProto.FLOAT, hint="rows")
    if src.transposed:                                                       # stored (K,C)
        rows = b.op("Transpose", b.op("Gather", src.weight, f.targets, axis=1), perm=[1, 2, 0], hint="rows")
    else:                                                                    # stored (C,K)
        rows = b.op("Gather", src.weight, f.targets, axis=0, hint="rows")
    return b.scale(rows, src.weight_scale)


@fused("recipro", class_specific=True)
def recipro(f: Fusion, *, score: str = "prob", kernel: str = "onehot", closed_form: bool = True) -> str:
    """S_c(i,j) = softmax(head(A ⊙ M_ij))_c. GAP→linear heads: one MatMul of the head's weights with
    the position vectors A[:,i,j]·g_ij/(h·w). Other heads: the head applied to the h·w masked copies,
    stacked in the batch dimension, masks made in the graph (no h·w×h·w constant)."""
    check_choice("score", score, ("prob", "logit"))
    check_choice("kernel", kernel, tuple(KERNELS))
    if score == "logit" and f.output_kind == "probabilities":
        raise CamInferError("score='logit' needs a model that outputs logits; this one ends in a softmax")
    b = f.b
    k, h, w = f.shape
    positions = b.op("Transpose", f.channels_by_position(), perm=[0, 2, 1], hint="positions")   # (N,hw,K)
    if closed_form and f.linear_head is not None:
        mass = kernel_mass(KERNELS[kernel], h, w).reshape(1, h * w, 1) / (h * w)
        scores = _linear_scores(f, f.linear_head, b.op("Mul", positions, b.const(mass)))
        softmax_needed = score == "prob"
    else:
        scores = _head_on_masked_copies(f, positions, KERNELS[kernel])
        softmax_needed = score == "prob" and f.output_kind == "logits"
    scores = b.reshape(scores, (-1, h * w, f.num_classes), hint="scores")                     # (N,hw,C)
    if softmax_needed:
        scores = b.op("Softmax", scores, axis=-1)
    index = b.op("Expand", b.unsqueeze(f.targets, [1]), b.ints([1, h * w, 1]), hint="index")   # (N,hw,T)
    chosen = b.op("GatherElements", scores, index, axis=2)
    return f.per_class(b.op("Transpose", chosen, perm=[0, 2, 1]))


def _linear_scores(f: Fusion, head: LinearHead, positions: str) -> str:
    """W·p + b for every position vector p, with the head's own tensors: (N·hw, C)."""
    b, src = f.b, head.source
    flat = b.reshape(positions, (-1, f.shape[0]), hint="pooled")
    if src.weight is None:
        return flat
    inputs = [flat, src.weight] + ([src.bias] if src.bias else [])
    return b.op("Gemm", *inputs, transB=int(not src.transposed), alpha=src.weight_scale, beta=src.bias_scale,
                hint="logits")


def _head_on_masked_copies(f: Fusion, positions: str, kernel: np.ndarray) -> str:
    """Row (n, i·w+j) of the batch is A[n,:,i,j] placed by `kernel` around (i,j), zero elsewhere."""
    b = f.b
    k, h, w = f.shape
    ids = b.op("Range", b.const(0, dtype=np.int64), b.const(h * w, dtype=np.int64), b.const(1, dtype=np.int64))
    one_hot = b.op("Cast", b.op("Equal", b.reshape(ids, (h * w, 1, 1, 1)), b.reshape(ids, (1, 1, h, w))),
                   to=TensorProto.FLOAT, hint="one_hot")                                    # (hw,1,h,w)
    masks = one_hot
    if kernel.shape != (1, 1):
        ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
        masks = b.op("Conv", one_hot, b.const(kernel[::-1, ::-1].reshape(1, 1, *kernel.shape)),
                     pads=[ph, pw, ph, pw], hint="masks")
    spread = b.op("Mul", b.reshape(positions, (-1, h * w, k, 1, 1)), b.reshape(masks, (1, h * w, 1, h, w)))
    return clone_head(f, b.reshape(spread, (-1, k, h, w), hint="masked"))


def clone_head(f: Fusion, new_input: str) -> str:
    """Append a copy of the head graph reading `new_input`; its weights are shared, not copied."""
    graph = f.head.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise CamInferError("this head has control flow (If/Loop/Scan); its Recipro-CAM cannot be fused")
    renamed = {graph.input[0].name: new_input}
    for node in graph.node:
        for name in node.output:
            renamed[name] = f.b.name("head")
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f.b.name(f"head_{node.op_type}")
        copy.input[:] = [renamed.get(i, i) for i in node.input]
        copy.output[:] = [renamed[o] for o in node.output]
        f.b.nodes.append(copy)
    return renamed[graph.output[0].name]


def require_linear_head(f: Fusion, name: str) -> LinearHead:
    if f.linear_head is None:
        raise CamInferError(f"method '{name}' needs a head that is global average pooling followed by a linear "
                            f"layer; this head has {f.head_ops}; fuse recipro instead")
    return f.linear_head
