"""Token models (vision transformers), read from the graph, never from names.

A transformer keeps a *residual stream* of tokens: (N,T,D) with P prefix tokens first (class,
distillation, registers) and a patch grid of h·w tokens after them (T = P + h·w), or, Swin-style,
(N,h·w,D) / (N,h,w,D) without prefix tokens. Each block adds two residual branches to it,
x ← x + attn(norm1(x)), x ← x + mlp(norm2(x)). Found here from the ops alone:

- a *residual unit* is an Add of a stream tensor x and a branch computed from a normalisation of x
  (LayerNormalization, or its decomposed form ReduceMean → Sub); it is an *attention* unit when a
  Softmax lies on the branch;
- a *block* starts at the input of an attention unit and ends where the next block starts (or at the
  last unit's output);
- the valid cuts are the block inputs and the last block's output (when the head reads patch tokens:
  a class-token head reads only the prefix tokens there, so patch tokens would not be connected to
  the output). Anything inside a block is bypassed by the residual and is no cut.

The grid (h, w) comes from the patch embedding (the last convolution before the first block), at the
input size, divided by 2 per Swin patch merging; the prefix is what is left: P = T − h·w.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CamInferError
from .graph import Graph

NORMS = {"LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization", "MeanVarianceNormalization"}
SOFTMAX = {"Softmax", "QLinearSoftmax", "Attention"}       # Attention: the whole of it in one op (OpenVINO's SDPA)
RESIDUAL_ADDS = {"Add": (0, 1), "QLinearAdd": (0, 3)}      # the two summands' positions among the inputs
MAX_PREFIX = 16          # class + distillation + registers; more is no prefix of an image model


@dataclass(frozen=True)
class TokenLayout:
    """How a cut tensor of tokens is seen as a grid: `layout` ``tokens`` (N,T,D) or ``tokens-grid`` (N,h,w,D),
    `prefix` tokens before the patch grid (h, w), `dim` D channels per token; `class_token`: the head reads the
    prefix tokens only (a class-token head), not the patch tokens (registers and a pooled head)."""

    layout: str
    prefix: int
    grid: tuple[int, int]
    dim: int
    class_token: bool = True

    @property
    def shape(self) -> tuple[int, ...]:
        """The cut tensor for one image, as the graphs hold it."""
        h, w = self.grid
        return (self.prefix + h * w, self.dim) if self.layout == "tokens" else (h, w, self.dim)

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """(D, h, w): the activation the methods see."""
        return (self.dim, *self.grid)

    def split(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens (N, *shape) → the patch grid (N,D,h,w) and the prefix tokens (N,P,D)."""
        n, (h, w) = len(tokens), self.grid
        tokens = tokens.reshape(n, -1, self.dim)
        grid = tokens[:, self.prefix:].reshape(n, h, w, self.dim).transpose(0, 3, 1, 2)
        return np.ascontiguousarray(grid, np.float32), np.ascontiguousarray(tokens[:, :self.prefix], np.float32)

    def join(self, grid: np.ndarray, prefix: np.ndarray) -> np.ndarray:
        """A grid (R,D,h,w) and one image's prefix tokens (P,D) (or (R,P,D)) → tokens (R, *shape): the prefix
        tokens kept as they were, in front of the grid's tokens in row-major order."""
        r = len(grid)
        patches = grid.reshape(r, self.dim, -1).transpose(0, 2, 1)
        if self.layout == "tokens-grid":
            return np.ascontiguousarray(patches.reshape(r, *self.shape), np.float32)
        prefix = np.broadcast_to(prefix, (r, self.prefix, self.dim))
        return np.ascontiguousarray(np.concatenate([prefix, patches], axis=1), np.float32)

    def to_dict(self) -> dict:
        return {"layout": self.layout, "prefix_tokens": self.prefix, "grid": list(self.grid), "dim": self.dim,
                "class_token": self.class_token,
                "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, record: dict) -> "TokenLayout":
        prefix = int(record["prefix_tokens"])
        return cls(record["layout"], prefix, tuple(record["grid"]), int(record["dim"]),
                   bool(record.get("class_token", prefix > 0)))


@dataclass(frozen=True)
class Block:
    input: str                 # the stream tensor the block reads
    output: str                # the stream tensor it writes (the next block's input)
    attention: tuple[str, ...]  # its attention Softmax outputs
    inside: frozenset          # tensors computed inside it (not the stream)


@dataclass(frozen=True)
class TokenStream:
    """The blocks of a transformer, in order, and the valid cuts between them."""

    blocks: tuple[Block, ...]
    valid: tuple[str, ...]     # block inputs, then the last block's output when patch tokens reach the head

    @property
    def last_block_input(self) -> str:
        return self.blocks[-1].input

    @property
    def attention(self) -> tuple[str, ...]:
        return tuple(t for b in self.blocks for t in b.attention)

    def block_of(self, tensor: str) -> int | None:
        return next((i for i, b in enumerate(self.blocks) if tensor in b.inside), None)


def whole_image_attention(stream: TokenStream, tokens) -> tuple[str, ...]:
    """The blocks' attention that may be over all the tokens of an image: every block's of a model with prefix
    tokens (a window never holds the class token), none of a Swin-style grid, whose window attention over t tokens
    cannot be told from whole-image attention by its shape when t = h·w at the cut (a 4×4 grid: 16 tokens, as a
    first stage's 4×4 windows) — and no method reads a grid model's attention (rollout needs a class token)."""
    return stream.attention if tokens.prefix else ()


def token_stream(graph: Graph) -> TokenStream | None:
    """The transformer blocks of `graph`, or None when it has no attention unit on a residual stream."""
    units = _residual_units(graph)
    if not any(u[3] for u in units):
        return None
    blocks, current = [], None
    for x, _branch, out, softmaxes, inside in units:
        if softmaxes:
            if current is not None:
                blocks.append(Block(current[0], x, current[1], frozenset(current[2] - {x})))
            current = [x, tuple(softmaxes), set(inside) | {out}]
        elif current is not None:
            current[2] |= set(inside) | {out}
        last_out = out
    blocks.append(Block(current[0], last_out, current[1], frozenset(current[2] - {last_out})))
    valid = [b.input for b in blocks]
    if not _head_reads_only_prefix(graph, last_out):
        valid.append(last_out)
    return TokenStream(tuple(blocks), tuple(valid))


def _residual_units(graph: Graph) -> list[tuple[str, str, str, list[str], set[str]]]:
    """(x, branch, x + branch, Softmax outputs on the branch, tensors of the branch) for every residual unit."""
    units = []
    for node in graph.nodes:
        if node.op_type not in RESIDUAL_ADDS or len(node.input) <= RESIDUAL_ADDS[node.op_type][1]:
            continue
        a, b = (node.input[i] for i in RESIDUAL_ADDS[node.op_type])
        if a not in graph.input_dependent or b not in graph.input_dependent or graph.info(a).rank not in (3, 4):
            continue
        for x, branch in ((a, b), (b, a)):
            inside = _between(graph, x, branch)
            if inside is None or not any(_is_norm_of(graph, graph.nodes[graph.producer[t]], x) for t in inside
                                         if t in graph.producer):
                continue
            softmaxes = [t for t in inside if graph.nodes[graph.producer[t]].op_type in SOFTMAX]
            units.append((x, branch, node.output[0], sorted(softmaxes, key=graph.order.get), inside))
            break
    return units


def _between(graph: Graph, start: str, end: str) -> set[str] | None:
    """Tensors on the paths from `start` to `end` (end included, start not); None when end does not depend on it."""
    if graph.order.get(end, -1) <= graph.order.get(start, -1):
        return None
    reaches: dict[str, bool] = {start: True}

    def visit(name: str) -> bool:
        stack = [name]
        while stack:
            top = stack[-1]
            if top in reaches:
                stack.pop()
                continue
            idx = graph.producer.get(top)
            if idx is None or top not in graph.input_dependent:
                reaches[top] = False
                stack.pop()
                continue
            pending = [i for i in graph.node_inputs[idx] if i not in reaches]
            if pending:
                stack.extend(pending)
                continue
            reaches[top] = any(reaches[i] for i in graph.node_inputs[idx])
            stack.pop()
        return reaches[name]

    if not visit(end):
        return None
    return {t for t, r in reaches.items() if r and t != start}


def _is_norm_of(graph: Graph, node, x: str) -> bool:
    """A normalisation over the channels of x: LayerNormalization(x), or ReduceMean(x) of a decomposed one; of
    DequantizeLinear(x) when x is quantized (QOperator graphs)."""
    if not node.input:
        return False
    source = node.input[0]
    if source != x and source in graph.producer:
        dequantize = graph.nodes[graph.producer[source]]
        source = dequantize.input[0] if dequantize.op_type == "DequantizeLinear" else source
    if source != x:
        return False
    return node.op_type in NORMS or node.op_type == "ReduceMean"


def _head_reads_only_prefix(graph: Graph, tensor: str) -> bool:
    """True when, after per-token ops, the head takes only leading tokens of `tensor` (a class-token head):
    a Gather of one index or a Slice of the first few on the token axis."""
    reads = head_token_reads(graph, tensor)
    return bool(reads) and max(reads) < MAX_PREFIX


def head_token_reads(graph: Graph, tensor: str) -> list[int] | None:
    """The tokens of `tensor` (N,T,D) the head takes after per-token ops, by a Gather of constant indices or a
    Slice of a constant range on the token axis (negative indices counted from the end), sorted; None where it
    reads the tokens another way (a mean over all of them, an attention)."""
    shape = graph.info(tensor).shape
    count = int(shape[1]) if shape and len(shape) == 3 and shape[1] else None
    frontier, seen, reads = [tensor], set(), set()
    per_token = NORMS | {"Identity", "Cast", "Dropout", "Mul", "Add", "Div", "Sub", "Pow", "Sqrt", "Reciprocal",
                         "DequantizeLinear", "QuantizeLinear"}          # and a decomposed norm's ReduceMean
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        for idx in graph.consumers.get(name, []):
            node = graph.nodes[idx]
            if node.op_type in ("Gather", "Slice"):
                picked = _tokens_picked(node, [_constant(graph, i) for i in node.input[1:]], count)
                if picked is None:
                    return None
                reads |= picked
            elif node.op_type in per_token or _reduces_channels(graph, node):
                frontier.extend(node.output)
            elif node.op_type != "Shape":
                return None
    return sorted(reads) or None


def _reduces_channels(graph: Graph, node) -> bool:
    """A ReduceMean over the last axis of (N,T,D) tokens: a decomposed LayerNorm's, per token."""
    if node.op_type != "ReduceMean":
        return False
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1:
        constant = _constant(graph, node.input[1])
        axes = None if constant is None else [int(a) for a in np.ravel(constant)]
    return axes is not None and [a % 3 for a in axes] == [2]


def _tokens_picked(node, consts, count: int | None) -> set[int] | None:
    """The token indices a Gather or Slice on axis 1 takes (constant ones, made non-negative with the token
    `count`), or None."""
    if node.op_type == "Gather":
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if axis % 3 != 1 or consts[0] is None:
            return None
        indices = [int(i) for i in np.ravel(consts[0])]
        if any(i < 0 for i in indices) and count is None:
            return None
        return {i % count if count else i for i in indices}
    if len(consts) < 2 or any(c is None for c in consts[:3]) or (len(consts) > 3 and consts[3] is not None
                                                                 and np.any(np.ravel(consts[3]) != 1)):
        return None
    starts, ends = consts[0].ravel(), consts[1].ravel()
    axes = consts[2].ravel() if len(consts) > 2 else np.arange(len(starts))
    if [int(a) % 3 for a in axes] != [1]:
        return None
    if count is None:
        return set(range(int(starts[0]), int(ends[0]))) if 0 <= starts[0] < ends[0] <= MAX_PREFIX else None
    start, end = (int(np.clip(v if v >= 0 else v + count, 0, count)) for v in (starts[0], ends[0]))
    return set(range(start, end))


def _constant(graph: Graph, name: str) -> np.ndarray | None:
    from onnx import numpy_helper
    if hasattr(graph, "constant"):                          # an OpenVINO model (`openvino_graph`)
        return graph.constant(name)
    if name in graph.initializers:
        return numpy_helper.to_array(graph.initializers[name])
    node = graph.nodes[graph.producer[name]] if name in graph.producer else None
    if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
        return numpy_helper.to_array(node.attribute[0].t)
    return None


def with_attention(joined, attention: list[str], head_fusion: str = "mean"):
    """A bundle's joined model (outputs: the cut, then the scores) with the attention probabilities of every block,
    fused over the heads in the graph (ReduceMean, ReduceMax or ReduceMin: an H-times smaller output to copy), as
    outputs between them: one pass gives the cut, the attention and the scores."""
    from onnx import TensorProto, helper, numpy_helper
    opset = next((o.version for o in joined.opset_import if o.domain in ("", "ai.onnx")), 13)
    reduce = {"mean": "ReduceMean", "max": "ReduceMax", "min": "ReduceMin"}[head_fusion]
    fused = [f"{a}__heads_{head_fusion}" for a in attention]
    attention, producers = list(attention), {o: n for n in joined.graph.node for o in n.output}
    for i, a in enumerate(attention):              # a quantized Softmax (QLinearSoftmax): its probabilities, dequantized
        node = producers.get(a)
        if node is not None and node.op_type == "QLinearSoftmax":
            attention[i] = f"{a}__dequantized"
            joined.graph.node.append(helper.make_node("DequantizeLinear", [a, node.input[3], node.input[4]],
                                                      [attention[i]], name=attention[i]))
    axes = {"axes": [1]} if opset < 18 else {}                  # from opset 18 the axes are an input
    if opset >= 18:
        joined.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "attention__heads_axis"))
    for a, f in zip(attention, fused):                         # float32 whatever the model computes in
        joined.graph.node.append(helper.make_node(reduce, [a] + (["attention__heads_axis"] if opset >= 18 else []),
                                                  [f"{f}__native"], name=f, keepdims=0, **axes))
        joined.graph.node.append(helper.make_node("Cast", [f"{f}__native"], [f], name=f"{f}__float", to=TensorProto.FLOAT))
    outputs = list(joined.graph.output)
    del joined.graph.output[:]
    joined.graph.output.extend([outputs[0], *(helper.make_tensor_value_info(f, TensorProto.FLOAT, None)
                                              for f in fused), *outputs[1:]])
    return joined


def patch_embedding(graph: Graph, before: set[str]) -> str | None:
    """The patch embedding: the last rank-4 convolution output (of known h, w) among `before`, the tensors the first
    block is computed from."""
    found = None
    for node in graph.nodes:
        if node.op_type in ("Conv", "QLinearConv", "ConvInteger") and node.output[0] in before:
            shape = graph.info(node.output[0]).shape
            if shape and len(shape) == 4 and shape[2] and shape[3]:
                found = node.output[0]
    return found


def _data_from(graph: Graph, tensor: str, source: str, steps: int = 16) -> bool:
    """Whether `tensor` is `source` reshaped or moved (followed through each op's first input), not a tensor whose
    shape only is computed from it (a class token expanded to the batch read from the patches)."""
    for _ in range(steps):
        if tensor == source:
            return True
        if tensor not in graph.producer or not graph.nodes[graph.producer[tensor]].input:
            return False
        tensor = graph.nodes[graph.producer[tensor]].input[0]
    return False


def check_patches_last(graph: Graph, embedding: str, before: set[str], requested: str) -> None:
    """Refuse tokens joined to the sequence after the patch tokens (registers appended at the end): the prefix
    tokens are read at its front, so they would be taken for the last patches and every map shifted. Read from
    the Concat along the tokens (among `before`, what the first block is computed from) that takes the patch
    `embedding`'s tokens: they must be its last input."""
    for node in graph.nodes:
        if node.op_type != "Concat" or node.output[0] not in before or graph.info(node.output[0]).rank != 3:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % 3
        pieces = [i for i, name in enumerate(node.input) if _data_from(graph, name, embedding)]
        if axis == 1 and pieces and pieces[-1] != len(node.input) - 1:
            sizes = [(graph.info(name).shape or (None, None))[1] for name in node.input]
            total = (graph.info(node.output[0]).shape or (None, None))[1]
            if sizes.count(None) == 1 and total:                    # one piece's count from the others
                sizes[sizes.index(None)] = total - sum(n for n in sizes if n is not None)
            after = sizes[pieces[-1] + 1:]
            counted = str(sum(after)) if None not in after else "some"
            raise CamInferError(f"layer '{requested}': the model joins {counted} token(s) after the patch "
                                "tokens (a class token or registers at the end); cam-infer reads prefix tokens "
                                "(class, distillation, registers) at the front of the sequence only")


def _reads_prefix(graph: Graph, stream: TokenStream, prefix: int, requested: str) -> bool:
    """Whether the head reads the `prefix` leading tokens only (a class-token head), or not (it pools the patch
    tokens: the prefix are registers); where its reads cannot be followed, the prefix is taken for a class token.
    Refused where it reads a token that is neither (a class token put last: (N,T,D)[:, -1])."""
    last = stream.blocks[-1].output
    reads = head_token_reads(graph, last)
    if not prefix:
        return False
    if reads is None or max(reads) < prefix:            # unread: the prefix taken for a class token, as before
        return True
    count = graph.info(last).shape[1]
    if reads == list(range(prefix, count)):
        return False                                        # the patch tokens, pooled after
    raise CamInferError(f"layer '{requested}': the head reads token(s) {', '.join(map(str, reads[:4]))} of "
                        f"{count}, and the {prefix} prefix token(s) (class, distillation, registers) are read at "
                        "the front of the sequence: a class token put elsewhere is not supported")


def token_layout(graph: Graph, stream: TokenStream, tensor: str, requested: str) -> TokenLayout:
    """How `tensor` of `stream` is a grid: (N,h,w,D) as it is; (N,T,D) with T = prefix + h·w, (h, w) the patch
    grid of the embedding (halved per patch merging), else the input size over a common stride."""
    before = graph.ancestors(stream.blocks[0].input)
    embedding = patch_embedding(graph, before)
    if embedding is not None:
        check_patches_last(graph, embedding, before, requested)
    shape = graph.info(tensor).shape
    if shape is None or any(not d for d in shape[1:]):
        raise CamInferError(f"layer '{requested}': the shape of its tokens is unknown; give --input-size")
    if len(shape) == 4:
        return TokenLayout("tokens-grid", 0, (int(shape[1]), int(shape[2])), int(shape[3]), class_token=False)
    count, dim = int(shape[1]), int(shape[2])
    grids = []
    embedded = None if embedding is None else tuple(int(d) for d in graph.info(embedding).shape[2:])
    if embedded:
        h, w = embedded
        while h >= 1 and w >= 1:
            grids.append((h, w))
            if h % 2 or w % 2:
                break
            h, w = h // 2, w // 2
    height, width = graph.input_spec.size
    grids += [(height // s, width // s) for s in range(1, min(height, width) + 1) if not height % s and not width % s]
    for h, w in grids:
        if 0 <= count - h * w <= MAX_PREFIX:
            return TokenLayout("tokens", count - h * w, (h, w), dim,
                               _reads_prefix(graph, stream, count - h * w, requested))
    found = f"the patch embedding gives {embedded[0]}x{embedded[1]} patches" if embedded else \
        f"no grid of the {height}x{width} input fits"
    raise CamInferError(f"layer '{requested}' holds {count} tokens, which is not prefix tokens (at most {MAX_PREFIX}) "
                        f"+ a patch grid: {found}; is this an image model?")
