"""What a method's ONNX builder works with (`cam_infer.methods.registry.fused`): the graph being built
on the target-layer activation A (N,K,h,w), the classes explained, and the head it ends in, with the
pieces several builders share (a class's weight rows, the head on masked copies of A).

Each builder mirrors its NumPy method (same formula, same options) and returns the map tensor's name:
(N,h,w) for class-agnostic methods, (N,T,h,w) for class-specific ones, T the classes per image.

On an OpenVINO IR bundle (`fuse.ir`) the head is OpenVINO's graph, not ONNX: a builder that runs it (or a graph
made from it) leaves a gap in its ONNX nodes instead, a `Call` — the graph's inputs as outputs of the ONNX nodes,
its result as an input — which the IR model fills with the graph itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

from ..bundle.head import LinearHead
from ..errors import MethodNotApplicable
from ..numerics import ROUNDING_STEPS
from .builder import Builder

TINY = 1e-30


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
    head: onnx.ModelProto | None    # None on an IR bundle: `ir_head` is its head graph
    ir_head: object = None          # the head's IR file (IR bundles)
    calls: list = field(default_factory=list)     # the `Call`s left for the IR model to fill
    channels_last: bool = False     # the runtime holds the cut as (N,h,w,K) (OpenVINO on CPU): read it so
    scores_step: float = 0.0        # one step of a quantized head's scores (`Bundle.scores_step`)

    @property
    def head_ops(self) -> str:
        if self.head is None:
            return ", ".join(sorted({op.get_type_name() for op in self.ir_head_model().get_ordered_ops()}
                                    - {"Parameter", "Result", "Constant"}))
        return ", ".join(sorted({n.op_type for n in self.head.graph.node}))

    def flat_within_step(self, chosen: str, probability: bool) -> str:
        """`numerics.within_rounding`'s rule for a quantized head's scores, in the graph: per image and class, the
        scores (N,hw,T) at every position replaced by their mean where they span no more than 1.5 logit steps
        (times 2·max p(1−p) for probabilities of the logits): two levels that rounding drew."""
        if not self.scores_step:
            return chosen
        b = self.b
        span = b.op("Sub", b.reduce("ReduceMax", chosen, [1]), b.reduce("ReduceMin", chosen, [1]), hint="span")
        noise = b.const(ROUNDING_STEPS * self.scores_step)
        if probability:
            sensitivity = b.reduce("ReduceMax", b.op("Mul", chosen, b.op("Sub", b.const(1.0), chosen)), [1])
            noise = b.op("Mul", noise, b.op("Mul", b.const(2.0), sensitivity))
        flat = b.op("LessOrEqual", span, noise, hint="within_step")
        return b.op("Where", flat, b.reduce("ReduceMean", chosen, [1]), chosen, hint="scores_or_mean")

    def ir_head_model(self):
        """The IR head as a new ``ov.Model`` (each call of it gets its own nodes)."""
        from ..backends.sessions import openvino_model
        return openvino_model(self.ir_head)

    def token_count(self) -> int:
        """T, the tokens the head reads (N,T,D); 0 for a feature map's head."""
        if self.head is None:
            shape = self.ir_head_model().input(0).get_partial_shape()
            return shape[1].get_length() if shape.rank.get_length() == 3 and shape[1].is_static else 0
        dims = self.head.graph.input[0].type.tensor_type.shape.dim
        return dims[1].dim_value if len(dims) == 3 else 0

    def attention_count(self) -> int:
        """The head's attention ops (Softmax; OpenVINO's fused ScaledDotProductAttention)."""
        if self.head is None:
            return sum(op.get_type_name() in ("Softmax", "ScaledDotProductAttention")
                       for op in self.ir_head_model().get_ordered_ops())
        return sum(n.op_type == "Softmax" for n in self.head.graph.node)

    def call(self, graph, inputs: list[str], rank: int) -> str:
        """The output of `graph` (an ``ov.Model``) on `inputs`, left as a gap for the IR model to fill: the inputs
        become outputs ``<call>/in<i>`` of the ONNX nodes, the result an input ``<call>/out`` of rank `rank`."""
        name = f"{self.b.scope}/call{len(self.calls)}"
        given = [self.b.op("Identity", x, outputs=[f"{name}/in{i}"]) for i, x in enumerate(inputs)]
        self.calls.append(Call(graph, given, f"{name}/out", rank))
        return f"{name}/out"

    def channels_by_position(self) -> str:
        """A as (N,K,h·w), as a runtime holding the cut planar reads it without a copy."""
        k, h, w = self.shape
        return self.b.reshape(self.activation, (0, k, h * w), hint="a_flat")

    def positions_by_channel(self) -> str:
        """A as (N,h·w,K). Where the runtime holds the cut channels-last (`channels_last`: OpenVINO on CPU) this is
        a view of it, where (N,K,h·w) costs a reorder of the whole cut (0.84 ms of the PAN's 32×128×128, as long as
        its Feature Entropy-CAM's logarithm)."""
        k, h, w = self.shape
        if self.channels_last:
            return self.b.reshape(self.b.op("Transpose", self.activation, perm=[0, 2, 3, 1]), (0, h * w, k),
                                  hint="positions")
        return self.b.op("Transpose", self.channels_by_position(), perm=[0, 2, 1], hint="positions")

    def weighted_sum(self, weights: str) -> str:
        """Σ_k weights[n,t,k]·A[n,k] of weights (N,T,K) → (N,T,h·w), the cut read as the runtime holds it."""
        if self.channels_last:
            sums = self.b.op("MatMul", self.positions_by_channel(), self.b.op("Transpose", weights, perm=[0, 2, 1]))
            return self.b.op("Transpose", sums, perm=[0, 2, 1], hint="weighted")
        return self.b.op("MatMul", weights, self.channels_by_position(), hint="weighted")

    def per_class(self, rows: str) -> str:
        """(N,T,h·w) → (N,T,h,w), or (N,h,w) when T = 1."""
        _, h, w = self.shape
        return self.b.reshape(rows, (0, self.count, h, w) if self.count > 1 else (0, h, w), hint="map")

    def require_linear_head(self, name: str) -> LinearHead:
        if self.linear_head is None and self.head is None:
            raise MethodNotApplicable(f"method '{name}' needs a head that is global average pooling followed by a "
                                      f"linear layer; this IR head (its ops: {self.head_ops}) is not; fuse recipro "
                                      "instead")
        if self.linear_head is None:
            raise MethodNotApplicable(f"method '{name}' needs a head that is global average pooling followed by a "
                                      f"linear layer; this head has {self.head_ops}; fuse recipro instead")
        return self.linear_head

    def class_rows(self, head: LinearHead) -> str:
        """The rows W_t of the target classes, (N,T,K), read from the head's weight tensor."""
        b, src, k = self.b, head.source, self.shape[0]
        if src.weight is None:
            ids = b.op("Range", b.const(0, dtype=np.int64), b.const(k, dtype=np.int64), b.const(1, dtype=np.int64))
            return b.op("Cast", b.op("Equal", b.unsqueeze(self.targets, [2]), ids), to=TensorProto.FLOAT, hint="rows")
        if src.transposed:                                                       # stored (K,C)
            rows = b.op("Transpose", b.op("Gather", src.weight, self.targets, axis=1), perm=[1, 2, 0], hint="rows")
        else:                                                                    # stored (C,K)
            rows = b.op("Gather", self.weight_matrix(src), self.targets, axis=0, hint="rows")
        return b.scale(self.in_float32(head, rows), src.weight_scale)

    def linear_scores(self, head: LinearHead, positions: str) -> str:
        """W·p + b for every position vector p, with the head's own tensors: (N·hw, C)."""
        b, src = self.b, head.source
        flat = b.reshape(positions, (-1, self.shape[0]), hint="pooled")
        if src.weight is None:
            return flat
        inputs = [flat, self.in_float32(head, self.weight_matrix(src))] + \
            ([self.in_float32(head, src.bias)] if src.bias else [])
        return b.op("Gemm", *inputs, transB=int(not src.transposed), alpha=src.weight_scale, beta=src.bias_scale,
                    hint="logits")

    def weight_matrix(self, src) -> str:
        """The head's W as stored, (C,K) or (K,C); a 1×1 Conv's (C,K,1,1) reshaped to (C,K)."""
        return self.b.reshape(src.weight, (-1, self.shape[0]), hint="weight") if src.convolution else src.weight

    def in_float32(self, head: LinearHead, tensor: str) -> str:
        """A tensor of the head's W or b as the method's float32: a Cast when the head holds them in float16."""
        return self.b.op("Cast", tensor, to=TensorProto.FLOAT, hint="float32") if head.float16 else tensor

    def head_on_masked_copies(self, positions: str, kernel: np.ndarray) -> str:
        """Row (n, i·w+j) of the batch is A[n,:,i,j] placed by `kernel` around (i,j), zero elsewhere."""
        b = self.b
        k, h, w = self.shape
        ids = b.op("Range", b.const(0, dtype=np.int64), b.const(h * w, dtype=np.int64), b.const(1, dtype=np.int64))
        one_hot = b.op("Cast", b.op("Equal", b.reshape(ids, (h * w, 1, 1, 1)), b.reshape(ids, (1, 1, h, w))),
                       to=TensorProto.FLOAT, hint="one_hot")                                    # (hw,1,h,w)
        masks = one_hot
        if kernel.shape != (1, 1):
            ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
            masks = b.op("Conv", one_hot, b.const(kernel[::-1, ::-1].reshape(1, 1, *kernel.shape)),
                         pads=[ph, pw, ph, pw], hint="masks")
        spread = b.op("Mul", b.reshape(positions, (-1, h * w, k, 1, 1)), b.reshape(masks, (1, h * w, 1, h, w)))
        return self.clone_head(b.reshape(spread, (-1, k, h, w), hint="masked"))

    def clone_head(self, new_input: str) -> str:
        """Append a copy of the head graph reading `new_input`; its weights are shared, not copied (on an IR
        bundle: a `call` of the head, which the IR model fills with the head's own graph)."""
        from ..errors import CamInferError
        if self.head is None:
            head = self.ir_head_model()
            return self.call(head, [new_input], head.output(0).get_partial_shape().rank.get_length())
        graph = self.head.graph
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for n in graph.node for a in n.attribute):
            raise CamInferError("this head has control flow (If/Loop/Scan); its Recipro-CAM cannot be fused")
        renamed = {graph.input[0].name: new_input}
        for node in graph.node:
            for name in node.output:
                renamed[name] = self.b.name("head")
        for node in graph.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = self.b.name(f"head_{node.op_type}")
            copy.input[:] = [renamed.get(i, i) for i in node.input]
            copy.output[:] = [renamed[o] for o in node.output]
            self.b.nodes.append(copy)
        return renamed[graph.output[0].name]


@dataclass
class Call:
    """A graph that an IR model runs inside a fused method's ONNX nodes (`Fusion.call`)."""

    graph: object                   # ov.Model
    inputs: list[str]               # the ONNX outputs that feed its parameters, in order
    output: str                     # the ONNX input its result feeds
    rank: int
