"""ViT Recipro-CAM — Byun & Lee, "ViT-ReciproCAM: Gradient and Attention-Free Visual Explanations for Vision
Transformer", arXiv 2310.02588; as openvino-xai 1.1.0's ``ViTReciproCAM`` computes it (its defaults are ours).

With x (T,D) the residual stream at the input of block L (P prefix tokens, then the h·w patch grid) and n = LN₁(x)
the output of that block's first LayerNorm, copy k = (i, j) of the mosaic keeps the prefix tokens and, on the grid,

    x̃_k[p] = g(p − k) · x[p],   ñ_k[p] = g(p − k) · n[p],   g = [[1,2,1],[2,4,2],[1,2,1]]/16 on the 3×3
    neighbourhood of k (``kernel="gaussian3"``, openvino-xai's ``use_gaussian``) or 1 at k (``"onehot"``), 0 elsewhere,

both tensors replaced in the model (x̃ feeds the residual, ñ the attention branch), and S_c(i, j) = logit_c of the
rest of the model on copy k (``cls_token=False``: the prefix tokens zeroed too; ``score="prob"``: the class's
probability, the softmax of the copy's logits, instead).

Exact and cheap (``reduced=True``): the zeroed tokens of a copy are all the same vector, and stay equal to each
other through every per-token op (norms, MLP, projections) and through attention (their queries are equal, so are
their rows). So a copy needs only the P prefix tokens, the ≤ 9 kernel tokens and ONE zero token standing for the m
others, its key logits raised by log m in every attention Softmax (m equal keys weigh m·e^s = e^(s + log m)). The
q, k, v projections are linear, (g·n)·W = g·(n·W): they run once on the T clean tokens and every copy gathers its
rows. A class-token head reads only the prefix rows, so after a single block's attention only the P prefix tokens go
through the output projection and the MLP (kept when the head's outputs at the clean tokens say so: checked once per
backend). The head graph is opened for it by `bundle.reduced_tail`.
``reduced=False`` runs the h·w full copies of every token, as openvino-xai does (the reference).
"""

from __future__ import annotations

import weakref
from typing import Literal

import numpy as np
import onnx

from ..cost import Passes
from ..errors import MethodNotApplicable
from .recipro import KERNELS
from .registry import Context, flat_within_rounding, fused, method, require_logits

CHUNK_TOKENS = 1 << 16            # tokens per tail run: bounds the memory of full copies


def passes(shape, options: dict, linear_head: bool) -> Passes:
    """h·w copies through the head: of P + 10 tokens each when reduced, else full head rows."""
    _, h, w = shape
    return Passes(reduced=h * w) if options["reduced"] else Passes(head=h * w)


@method("vit-recipro", needs="head", cost="1 feature pass + h·w copies of the last block(s) on ≤ P+10 tokens each",
        bench={"vit-recipro": {}, "vit-recipro (h·w full copies)": {"reduced": False}}, passes=passes, in_all=False)
def vit_recipro(ctx: Context, *, kernel: Literal["gaussian3", "onehot"] = "gaussian3", cls_token: bool = True,
                score: Literal["logit", "prob"] = "logit", reduced: bool = True) -> np.ndarray:
    """logit_c of the model's tail on the h·w mosaic copies of the stream and of the block's first LayerNorm"""
    tokens = ctx.bundle.tokens
    if tokens is None:
        raise MethodNotApplicable("method 'vit-recipro' explains vision transformers (split at a block); this bundle "
                                  "is no token model: use recipro")
    if tokens.layout != "tokens" or tokens.prefix == 0:
        raise MethodNotApplicable("method 'vit-recipro' keeps a ViT's class token in every copy (as openvino-xai "
                                  "does); this model has no prefix tokens (a Swin-style grid): use recipro")
    if not tokens.class_token:
        raise MethodNotApplicable("method 'vit-recipro' explains a class-token head; this model's head pools its "
                                  "patch tokens, not a class token: use recipro")
    require_logits(score, ctx.bundle.output_kind)
    d, h, w = ctx.activations.shape[1:]
    weights = KERNELS[kernel]
    maps = np.empty((len(ctx.activations), h, w), np.float32)
    x = tokens.join(ctx.activations, ctx.prefix)                                 # (N,T,D)
    tail = _tail(ctx, x[0], reduced)
    reduced = reduced and tail.reduces_exactly
    plan = mosaic_plan(tokens.prefix, (h, w), weights, 1.0 if cls_token else 0.0, reduced)
    scores = np.concatenate([tail.run(x, *part) for part in _chunks(plan, len(x))], axis=1)    # (N,hw,C)
    for i in range(len(x)):
        maps[i] = flat_within_rounding(ctx, ctx.class_scores(scores[i], i, score), scores[i], score).reshape(h, w)
    return maps


def mosaic_plan(prefix: int, grid: tuple[int, int], kernel: np.ndarray, keep: float, reduced: bool):
    """Copy k's tokens as a gather of the clean tokens: index (hw,S), weight (hw,S,1) and key bias (hw,S).

    Full copies (S = T): every token, the prefix weighted `keep`, patch p by the kernel centred at k (0 outside it).
    Reduced (S = P + kernel cells + 1): the prefix, one token per kernel cell (−∞ key bias off the grid) and one
    zero token with key bias log(number of zeroed tokens)."""
    h, w = grid
    if not reduced:
        index = np.broadcast_to(np.arange(prefix + h * w), (h * w, prefix + h * w))
        weight = np.concatenate([np.full((h * w, prefix), keep, np.float32), kernel_masks(grid, kernel)], axis=1)
        return index, weight[..., None], np.zeros(index.shape, np.float32)
    r = kernel.shape[0] // 2
    dy, dx = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")
    ys, xs = np.broadcast_arrays(np.arange(h)[:, None, None] + dy.ravel(), np.arange(w)[None, :, None] + dx.ravel())
    inside = ((ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)).reshape(h * w, -1)
    cells = (prefix + np.clip(ys, 0, h - 1) * w + np.clip(xs, 0, w - 1)).reshape(h * w, -1)
    rows = h * w
    index = np.concatenate([np.broadcast_to(np.arange(prefix), (rows, prefix)), cells, np.zeros((rows, 1), int)], 1)
    weight = np.concatenate([np.full((rows, prefix), keep), kernel.ravel() * inside, np.zeros((rows, 1))], axis=1)
    with np.errstate(divide="ignore"):
        bias = np.concatenate([np.zeros((rows, prefix)), np.where(inside, 0.0, -np.inf),
                               np.log(rows - inside.sum(axis=1))[:, None]], axis=1)
    return index.astype(np.int64), weight.astype(np.float32)[..., None], bias.astype(np.float32)


def kernel_masks(grid: tuple[int, int], kernel: np.ndarray) -> np.ndarray:
    """(hw, hw): the weight of patch token p in mosaic copy k (the kernel centred at k, cut at the border)."""
    h, w = grid
    r = kernel.shape[0] // 2
    padded = np.zeros((h * w, h + 2 * r, w + 2 * r), np.float32)
    for k in range(h * w):
        i, j = divmod(k, w)
        padded[k, i:i + 2 * r + 1, j:j + 2 * r + 1] = kernel
    return padded[:, r:r + h, r:r + w].reshape(h * w, h * w)


def _chunks(plan, images: int):
    """The plan's copies in parts of at most CHUNK_TOKENS tokens over all the images."""
    step = max(1, CHUNK_TOKENS // (images * plan[0].shape[1]))
    for s in range(0, len(plan[0]), step):
        yield [a[s:s + step] for a in plan]


class Tail:
    """The opened tail graph (`bundle.reduced_tail`) compiled on the backend's runtime, at its precision."""

    def __init__(self, backend, bundle, prefix: int = 0):
        from ..bundle.graph import load_onnx
        from ..bundle.reduced_tail import quantizes_attention, reduced_tail
        self.prefix, self.backend_name = prefix, backend.name
        if bundle.graph_format == "openvino":                         # an IR bundle: OpenVINO's own graph opened
            from ..bundle.openvino_reduced_tail import reduced_tail_ir
            model, self.reduces_exactly = reduced_tail_ir(bundle.head_path, bundle.tokens.shape[0], prefix), True
        else:
            head = load_onnx(bundle.head_path)
            model = reduced_tail(head, bundle.tokens.shape[0], prefix)
            self.reduces_exactly = not quantizes_attention(head)
        if backend.name == "openvino":                 # a request lent per call: threads may run it at once
            from ..backends.openvino import Compiled
            from ..backends.sessions import openvino_compiled
            self._compiled = Compiled(openvino_compiled(model, backend.runtime))
        else:
            from ..backends.sessions import onnxruntime_session
            self._session = onnxruntime_session(model.SerializeToString(), backend.runtime)
            self._names = [i.name for i in self._session.get_inputs()]

    def run(self, x: np.ndarray, index: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """Scores (N,R,C) of the tail on the R copies (index (R,S), weight (R,S,1), key bias (R,S)) of each image's
        tokens x (N,T,D)."""
        inputs = [np.ascontiguousarray(x, np.float32), np.ascontiguousarray(index, np.int64),
                  *(np.ascontiguousarray(a, np.float32) for a in (weight, bias))]
        if self.backend_name == "openvino":
            scores = self._compiled.run(dict(enumerate(inputs)))[0]
        else:
            scores = self._session.run(None, dict(zip(self._names, inputs)))[0]
        return np.asarray(scores, np.float32).reshape(len(x), len(index), -1)

    def clean(self, tokens: np.ndarray) -> np.ndarray:
        """Scores (N,C) of the tail on clean tokens (N,T,D): every token once, weight 1, no key bias."""
        t = tokens.shape[1]
        return self.run(tokens, np.arange(t)[None], np.ones((1, t, 1), np.float32), np.zeros((1, t), np.float32))[:, 0]

    def is_the_head(self, backend, tokens: np.ndarray) -> bool:
        """Whether this tail gives the head's scores on clean tokens (T,D) (to rounding: 10⁻³ of the largest score at
        f32, 3·10⁻² at a lower precision)."""
        try:
            got = self.clean(tokens[None])
        except Exception:      # noqa: BLE001  tokens cut short do not fit a later block (each runtime its error)
            return False
        expected = backend.head(tokens[None])
        tolerance = (1e-3 if backend.precision == "f32" else 3e-2) * max(1.0, float(np.abs(expected).max()))
        return bool(np.abs(got - expected).max() <= tolerance)


_TAILS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _tail(ctx: Context, tokens: np.ndarray, reduced: bool) -> Tail:
    """The tail for this backend, built on first use: reduced copies take the prefix-only one when its scores at the
    clean tokens are the head's (a class-token head after the last block), else the whole one. A head that quantizes
    its attention probabilities runs full copies: one key standing for m is quantized once, not m times."""
    tails = _TAILS.setdefault(ctx.backend, {})
    if "whole" not in tails:
        tails["whole"] = tails["reduced"] = Tail(ctx.backend, ctx.bundle)
        if not tails["whole"].reduces_exactly:
            return tails["whole"]
        prefix_only = Tail(ctx.backend, ctx.bundle, ctx.bundle.tokens.prefix)
        tails["reduced"] = prefix_only if prefix_only.is_the_head(ctx.backend, tokens) else tails["whole"]
    return tails["reduced" if reduced else "whole"]


@fused("vit-recipro", class_specific=True)
def vit_recipro_onnx(f, *, kernel: str = "gaussian3", cls_token: bool = True, score: str = "logit",
                     reduced: bool = True) -> str:
    """The same plan in the graph: a copy of the opened tail on the cut tokens with the plan as constants (N·hw
    rows of S tokens), the target's score per copy."""
    from ..bundle.reduced_tail import quantizes_attention, reduced_tail
    b, (_, h, w) = f.b, f.shape
    count = f.token_count()
    if count <= h * w:
        raise MethodNotApplicable("method 'vit-recipro' fuses on vision transformers with prefix (class) tokens only")
    require_logits(score, f.output_kind)
    prefix = count - h * w
    one_block = f.attention_count() == 1
    reduced = reduced and (f.head is None or not quantizes_attention(f.head))     # an IR's tail reduces exactly
    index, weight, bias = mosaic_plan(prefix, (h, w), KERNELS[kernel], 1.0 if cls_token else 0.0, reduced)
    plan = [b.ints(index, "copy_index"), b.const(weight, "copy_weight"), b.const(bias, "key_bias")]
    if f.head is None:                              # an IR bundle: OpenVINO's head graph opened (explain does so too)
        from ..bundle.openvino_reduced_tail import reduced_tail_ir
        tail = reduced_tail_ir(f.ir_head, count, prefix if reduced and one_block else 0)
        scores = f.call(tail, [f.activation, *plan], 2)
    else:
        tail = reduced_tail(f.head, count, prefix if reduced and one_block else 0)
        scores = clone_graph(b, tail, [f.activation, *plan], {i.name for i in f.head.graph.initializer})
    scores = b.reshape(scores, (-1, h * w, f.num_classes), hint="scores")                # (N,hw,C)
    probability = score == "prob" and f.output_kind == "logits"
    if probability:
        scores = b.op("Softmax", scores, axis=-1)
    index_t = b.op("Expand", b.unsqueeze(f.targets, [1]), b.ints([1, h * w, 1]), hint="index")   # (N,hw,T)
    chosen = f.flat_within_step(b.op("GatherElements", scores, index_t, axis=2), probability)
    return f.per_class(b.op("Transpose", chosen, perm=[0, 2, 1]))


def clone_graph(b, model, inputs: list[str], shared: set[str]) -> str:
    """Append a copy of `model`'s nodes reading `inputs`, its tensors renamed; the initializers named in `shared`
    (the head's weights, already in the fused model) are read where they are, the others (the tail's own
    constants) added under new names."""
    graph = model.graph
    renamed = {i.name: new for i, new in zip(graph.input, inputs)}
    used = {name for node in graph.node for name in node.input}
    for init in graph.initializer:
        if init.name in shared or init.name not in used:
            continue
        copy = onnx.TensorProto()
        copy.CopyFrom(init)
        copy.name = renamed[init.name] = b.name("tail_weight")
        b.initializers.append(copy)
    for node in graph.node:
        for name in node.output:
            renamed[name] = b.name("tail")
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = b.name(f"tail_{node.op_type}")
        copy.input[:] = [renamed.get(i, i) if i else i for i in node.input]
        copy.output[:] = [renamed[o] for o in node.output]
        b.nodes.append(copy)
    return renamed[graph.output[0].name]
