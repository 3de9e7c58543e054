"""Finding the target layer and checking that the model can be cut there.

A tensor T is a *cut point* when every path from the image to the scores passes through T: the
head (the nodes needed for the scores, walking back from the output and stopping at T) then reads
nothing computed before the cut except T and constants. A skip connection around T shows up as a
*crossing tensor*: a tensor the head reads that T itself was computed from.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
from dataclasses import dataclass

from ..errors import CamInferError
from .anatomy import (Quantization, dequantized_source, feature_region, quantization_of, spatial_size,
                      tensor_layouts)
from .graph import INTEGER_TYPES, Graph
from .shapes_at_cut import rebuildable, shape_only
from .tokens import TokenLayout, TokenStream, token_layout, token_stream


@dataclass(frozen=True)
class TargetLayer:
    tensor: str               # ONNX tensor the graph is cut at (an integer tensor for quantized activations)
    requested: str            # what the user asked for
    matched_by: str           # "auto" | "tensor" | "node" | "module"
    module: str | None        # torch module path whose output this is, when known
    layout: str = "NCHW"      # of `tensor`; an NHWC map is transposed at the cut
    quantization: Quantization | None = None   # how `tensor` maps to real values, when it is integer
    tokens: TokenLayout | None = None          # a transformer's tokens: how they are seen as a grid


@dataclass(frozen=True)
class TorchNames:
    """A split of a graph exported from a torch model, where a layer is named by its module path only: the
    exporter used (a module it folded has no node of its own) and whether the caller hooks the module
    (`Explainer.from_torch`: its Python argument is ``layer=``, and ``auto`` is the last module output that works)."""
    exporter: str
    hooked: bool = False


_TORCH_NAMES: contextvars.ContextVar[TorchNames | None] = contextvars.ContextVar("torch_names", default=None)


@contextlib.contextmanager
def torch_names(names: TorchNames):
    """Within: layers are module paths of a torch model, and the refusals name only those."""
    token = _TORCH_NAMES.set(names)
    try:
        yield
    finally:
        _TORCH_NAMES.reset(token)


def _auto() -> str:
    names = _TORCH_NAMES.get()
    return "layer='auto'" if names is not None and names.hooked else "--layer auto"


def _option() -> str:
    names = _TORCH_NAMES.get()
    return "layer=" if names is not None and names.hooked else "--layer"


def _named(graph: Graph, tensor: str) -> bool:
    """Whether `tensor` can be named here: any tensor, or only a module's output in a torch model."""
    return _TORCH_NAMES.get() is None or module_of(graph, tensor) is not None


def _block_input(graph: Graph, tensor: str, which: str) -> str:
    """The block input `tensor` as the nearest valid layer, by a name the caller can give."""
    if _named(graph, tensor):
        return f"nearest valid layer: '{display_name(graph, tensor)}' (tensor '{tensor}', {which}), or {_auto()}"
    return f"{which} is tensor '{tensor}', the output of no module; use {_auto()}"


def crossing_tensors(graph: Graph, tensor: str) -> list[str]:
    """Tensors computed before `tensor` that the head would also read (empty: a cut point)."""
    before = graph.ancestors(tensor)
    shapes = rebuildable(graph, before, tensor)           # only a shape read from before: rebuilt in the head
    return read_around(graph, {tensor}, before, lambda name: not shape_only(graph, name, shapes))


def read_around(graph: Graph, members: set[str], before: set[str], counts=lambda name: True) -> list[str]:
    """The input-dependent tensors the scores are reached from without passing through `members`: computed in
    `before` (before a member) or the image itself, in graph order; `counts` leaves some of them out."""
    found: set[str] = set()
    seen: set[str] = set()
    stack = [graph.scores_output.name]
    while stack:
        name = stack.pop()
        if name in seen or name in members:
            continue
        seen.add(name)
        if name in graph.input_dependent and (name in before or name not in graph.producer):
            if counts(name):
                found.add(name)
            continue
        idx = graph.producer.get(name)
        if idx is not None:
            stack.extend(graph.node_inputs[idx])
    return sorted(found, key=lambda n: graph.order.get(n, -1))


def is_cut_point(graph: Graph, tensor: str) -> bool:
    return tensor in graph.input_dependent and not crossing_tensors(graph, tensor)


def spatial_candidates(graph: Graph) -> list[str]:
    """Feature maps, in topological order: input-dependent 4-D tensors of known layout (NCHW, or NHWC
    between TensorFlow's Transposes) with spatial size above 1×1, computed before the last spatial
    reduction (so never logits kept as (N,1,1,C)), and not a model output."""
    outputs = {o.name for o in graph.model.graph.output}
    layouts = tensor_layouts(graph)
    region = feature_region(graph, layouts)
    names = []
    for node in graph.nodes:
        for out in node.output:
            layout = layouts.get(out)
            if (out in graph.input_dependent and layout and out not in outputs and spatial_size(graph, out, layout) > 1
                    and (region is None or out in region)):
                names.append(out)
    return names


def resolve_cut(graph: Graph, tensor: str) -> tuple[str, Quantization | None]:
    """Where to cut for an activation: a dequantized tensor (QDQ) is cut at its integer source, so that
    the head re-quantizes exactly what the model had; an integer tensor needs its scale and zero point."""
    source = dequantized_source(graph, tensor)
    if source is not None:
        quant = quantization_of(graph, source)
        if quant is not None:
            return source, quant
    return tensor, quantization_of(graph, tensor)


def _usable(graph: Graph, tensor: str) -> bool:
    cut, quant = resolve_cut(graph, tensor)
    return (quant is not None or graph.info(cut).elem_type not in INTEGER_TYPES) and is_cut_point(graph, cut)


def _target(graph: Graph, tensor: str, requested: str, matched_by: str, module: str | None) -> TargetLayer:
    cut, quant = resolve_cut(graph, tensor)
    layouts = tensor_layouts(graph)
    return TargetLayer(cut, requested, matched_by, module or module_of(graph, cut),
                       layouts.get(cut) or layouts.get(tensor) or "NCHW", quant)


def module_of(graph: Graph, tensor: str) -> str | None:
    """The outermost torch module whose output `tensor` is (``layer4`` rather than ``layer4.1.relu``)."""
    idx = graph.producer.get(tensor)
    if idx is None or not graph.node_modules[idx]:
        return None
    readers = graph.consumers.get(tensor, [])
    is_output = tensor in {o.name for o in graph.model.graph.output}
    for module in graph.node_modules[idx]:
        if is_output or any(module not in graph.node_modules[r] for r in readers):
            return module
    return None


def display_name(graph: Graph, tensor: str) -> str:
    return module_of(graph, tensor) or tensor


def find_target_layer(graph: Graph, layer: str) -> TargetLayer:
    """Resolve `layer` (``auto``, tensor name, node name or torch module path) and check it. On a transformer
    (`tokens.token_stream`) ``auto`` is the input of the last block, and a layer inside a block is refused."""
    stream = token_stream(graph)
    if layer == "auto":
        if stream is not None:
            return _token_target(graph, stream, stream.last_block_input, "auto", "auto", None)
        return _auto_layer(graph)
    target = _lookup(graph, layer)
    if stream is not None and target.tensor in stream.valid:
        return _token_target(graph, stream, target.tensor, target.requested, target.matched_by, target.module)
    if stream is not None:
        _check_not_in_block(graph, stream, target)
    _check_activation(graph, target)
    return _target(graph, target.tensor, target.requested, target.matched_by, target.module)


def _token_target(graph: Graph, stream: TokenStream, tensor: str, requested: str, matched_by: str,
                  module: str | None) -> TargetLayer:
    layout = token_layout(graph, stream, tensor, requested)
    cut, quant = resolve_cut(graph, tensor)
    if not is_cut_point(graph, cut):
        raise CamInferError(f"layer '{requested}' is not a cut point of the residual stream: the head also reads "
                            f"{', '.join(repr(c) for c in crossing_tensors(graph, cut)[:4])}")
    return TargetLayer(cut, requested, matched_by, module or module_of(graph, cut), layout.layout, quant, layout)


def _check_not_in_block(graph: Graph, stream: TokenStream, target: TargetLayer) -> None:
    """A layer inside a transformer block (norm, attention, MLP, q/k/v, the sum between attention and MLP) is
    bypassed by the residual stream: refused, naming the block's input; a layer before the first block (the
    patch embedding) too, naming the first block's input; and the last block's output of a class-token head
    (only the prefix tokens reach the scores)."""
    index = stream.block_of(target.tensor)
    last = stream.blocks[-1].output
    first = stream.blocks[0].input
    if index is None and graph.order[target.tensor] < graph.order[first]:
        hint = _block_input(graph, first, "block 0's input")
        raise CamInferError(f"layer '{target.requested}' comes before the first of the {len(stream.blocks)} "
                            "transformer blocks: a map there shows the input (the patch embedding), not what the "
                            f"blocks make of it; {hint}")
    if index is not None:
        block = stream.blocks[index]
        nearest = block.input if block.input in stream.valid else stream.last_block_input
        hint = _block_input(graph, nearest, "the block's input")
        raise CamInferError(f"layer '{target.requested}' is inside transformer block {index} of {len(stream.blocks)} "
                            f"(the residual stream bypasses it, so it is no cut point); {hint}")
    if target.tensor == last and last not in stream.valid:
        given = stream.last_block_input
        last_input = f" '{display_name(graph, given)}'" if _named(graph, given) else f" (tensor '{given}')"
        raise CamInferError(f"layer '{target.requested}' is the last block's output, where the head reads only the "
                            "prefix (class) tokens: the patch tokens are not connected to the scores; use the last "
                            f"block's input{last_input} or {_auto()}")


def _auto_layer(graph: Graph) -> TargetLayer:
    candidates = spatial_candidates(graph)
    if not candidates:
        raise CamInferError("the model has no feature map (a 4-D activation with spatial size above 1x1 before "
                            "its global pooling); is it a convolutional image classifier?")
    hooked = _TORCH_NAMES.get() is not None and _TORCH_NAMES.get().hooked
    for tensor in reversed(candidates):
        if _usable(graph, tensor) and (not hooked or _named(graph, tensor)):
            return _target(graph, tensor, "auto", "auto", None)
    if hooked:
        raise CamInferError("no module of this model outputs a 4-D activation that is a cut point (a module's "
                            "output is what Explainer.from_torch hooks); export it with export_torch(model, "
                            "layer='auto') and explain the bundle (forward-pass methods only)")
    raise CamInferError("no 4-D activation of this model is a cut point (every one is bypassed by "
                        f"a skip connection); name a layer with {_option()}")


def _lookup(graph: Graph, layer: str) -> TargetLayer:
    if layer == graph.image_input.name:
        raise CamInferError(f"'{layer}' is the model input; name a layer inside the network or use {_auto()}")
    if layer in graph.initializers:
        raise CamInferError(f"'{layer}' is a constant (weights), not an activation; name a layer or use {_auto()}")
    if layer in graph.producer:
        return TargetLayer(layer, layer, "tensor", module_of(graph, layer))
    by_node = [n for n in graph.nodes if n.name == layer]
    if by_node:
        tensor = by_node[0].output[0]
        return TargetLayer(tensor, layer, "node", module_of(graph, tensor))
    if layer in graph.module_paths:
        return TargetLayer(_module_output(graph, layer), layer, "module", layer)
    raise CamInferError(_unknown_layer_message(graph, layer))


def _module_output(graph: Graph, module: str) -> str:
    outputs = [o for o in graph.module_outputs(module) if o in graph.input_dependent]
    if len(outputs) > 1:
        cuts = [o for o in outputs if is_cut_point(graph, o)]
        outputs = cuts or outputs
    if len(outputs) != 1:
        listed = ", ".join(f"'{o}'" for o in outputs) or "none"
        if _TORCH_NAMES.get() is not None:
            raise CamInferError(f"module '{module}' has {len(outputs)} outputs in the exported graph; name a module "
                                f"inside it that gives one, or use {_auto()}")
        raise CamInferError(f"module '{module}' has {len(outputs)} outputs in the ONNX graph ({listed}); "
                            "name one of them as --layer")
    return outputs[0]


def _unknown_layer_message(graph: Graph, layer: str) -> str:
    valid = [display_name(graph, t) for t in reversed(spatial_candidates(graph))
             if _usable(graph, t) and _named(graph, t)][:4]
    usable = f"layers that work here include {', '.join(repr(v) for v in valid)}; " if valid else ""
    names = _TORCH_NAMES.get()
    if names is not None:     # a module of the model (export_torch checked) that left no node of its own
        outer = max((m for m in graph.module_paths if layer.startswith(m + ".")), key=len, default=None)
        within = f"name the module that contains it ('{outer}'), " if outer else ""
        other = "export with exporter='dynamo' (which keeps BatchNorms), " if names.exporter == "legacy" else ""
        return (f"module '{layer}' has no node of its own in the graph the {names.exporter} exporter made: it was "
                "folded into another module (a BatchNorm into the convolution before it) or computes nothing in "
                f"eval mode; {within}{other}or use {_auto()}")
    known = sorted(set(graph.module_paths) | set(graph.producer) | {n.name for n in graph.nodes if n.name})
    close = difflib.get_close_matches(layer, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return (f"unknown layer '{layer}': it is no tensor, node or torch module of this model; "
            f"{hint}{usable}or use {_auto()}")


def _check_activation(graph: Graph, target: TargetLayer) -> None:
    info = graph.info(target.tensor)
    if target.tensor not in graph.input_dependent:
        raise CamInferError(f"layer '{target.requested}' is a constant, not an activation of the image")
    if target.tensor in {o.name for o in graph.model.graph.output}:
        raise CamInferError(f"layer '{target.requested}' is the model's output, not a feature map; use {_auto()}")
    if info.rank != 4:
        shape = "unknown" if info.shape is None else tuple(info.shape)
        raise CamInferError(f"layer '{target.requested}' gives a tensor of shape {shape}; a CAM needs an "
                            f"(N,K,h,w) activation; use {_auto()} or a convolutional layer")
    layouts = tensor_layouts(graph)
    layout = layouts.get(target.tensor)
    if layout is None:
        raise CamInferError(f"layer '{target.requested}' {tuple(info.shape)}: its layout (NCHW or NHWC) cannot be "
                            f"told from the ops that made it; name a convolution's output or use {_auto()}")
    if spatial_size(graph, target.tensor, layout) <= 1:
        raise CamInferError(f"layer '{target.requested}' is pooled to 1x1; "
                            f"a CAM needs spatial size above 1x1; pick an earlier layer or {_auto()}")
    region = feature_region(graph, layouts)
    if region is not None and target.tensor not in region:
        raise CamInferError(f"layer '{target.requested}' comes after the model's global pooling: it is not a "
                            f"feature map; pick an earlier layer or {_auto()}")
    cut, quant = resolve_cut(graph, target.tensor)
    if quant is None and graph.info(cut).elem_type in INTEGER_TYPES:
        raise CamInferError(f"layer '{target.requested}' is an integer tensor whose scale and zero point cannot be "
                            f"found in the graph; name the DequantizeLinear output next to it or use {_auto()}")
    crossing = crossing_tensors(graph, cut)
    if crossing:
        listed = ", ".join(f"'{c}'" for c in crossing[:4]) + (" ..." if len(crossing) > 4 else "")
        nearest = nearest_cut_point(graph, target.tensor)
        hint = f"nearest valid layer: '{display_name(graph, nearest)}'" if nearest else "no valid layer found"
        raise CamInferError(f"layer '{target.requested}' is not a cut point: the head also reads {listed} "
                            f"(a skip connection around it); {hint}")


def nearest_cut_point(graph: Graph, tensor: str) -> str | None:
    """The valid layer closest in topological order (later one on a tie: closer to the scores)."""
    here = graph.order[tensor]
    candidates = sorted(spatial_candidates(graph), key=lambda t: (abs(graph.order[t] - here), -graph.order[t]))
    return next((t for t in candidates if _usable(graph, t) and _named(graph, t)), None)
