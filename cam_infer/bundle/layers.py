"""Finding the target layer and checking that the model can be cut there.

A tensor T is a *cut point* when every path from the image to the scores passes through T: the
head (the nodes needed for the scores, walking back from the output and stopping at T) then reads
nothing computed before the cut except T and constants. A skip connection around T shows up as a
*crossing tensor*: a tensor the head reads that T itself was computed from.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..errors import CamInferError
from .graph import Graph


@dataclass(frozen=True)
class TargetLayer:
    tensor: str               # ONNX tensor name of the activation (N,K,h,w)
    requested: str            # what the user asked for
    matched_by: str           # "auto" | "tensor" | "node" | "module"
    module: str | None        # torch module path whose output this is, when known


def crossing_tensors(graph: Graph, tensor: str) -> list[str]:
    """Tensors computed before `tensor` that the head would also read (empty: a cut point)."""
    before = graph.ancestors(tensor)
    crossing: set[str] = set()
    seen: set[str] = set()
    stack = [graph.scores_output.name]
    while stack:
        name = stack.pop()
        if name in seen or name == tensor:
            continue
        seen.add(name)
        if name in graph.input_dependent and (name in before or name not in graph.producer):
            crossing.add(name)
            continue
        idx = graph.producer.get(name)
        if idx is not None:
            stack.extend(graph.node_inputs[idx])
    return sorted(crossing, key=lambda n: graph.order.get(n, -1))


def is_cut_point(graph: Graph, tensor: str) -> bool:
    return tensor in graph.input_dependent and not crossing_tensors(graph, tensor)


def spatial_candidates(graph: Graph) -> list[str]:
    """Input-dependent 4-D tensors with spatial size above 1×1, in topological order."""
    names = []
    for node in graph.nodes:
        for out in node.output:
            info = graph.info(out)
            if out in graph.input_dependent and info.rank == 4 and _spatial_size(info.shape) > 1:
                names.append(out)
    return names


def _spatial_size(shape) -> int:
    h, w = shape[2], shape[3]
    return (h or 0) * (w or 0)


def module_of(graph: Graph, tensor: str) -> str | None:
    """The outermost torch module whose output `tensor` is (``layer4`` rather than ``layer4.1.relu``)."""
    idx = graph.producer.get(tensor)
    if idx is None:
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
    """Resolve `layer` (``auto``, tensor name, node name or torch module path) and check it."""
    if layer == "auto":
        return _auto_layer(graph)
    target = _lookup(graph, layer)
    _check_activation(graph, target)
    return target


def _auto_layer(graph: Graph) -> TargetLayer:
    candidates = spatial_candidates(graph)
    if not candidates:
        raise CamInferError("the model has no 4-D activation with spatial size above 1x1 "
                            "(is it a convolutional image classifier?)")
    for tensor in reversed(candidates):
        if is_cut_point(graph, tensor):
            return TargetLayer(tensor, "auto", "auto", module_of(graph, tensor))
    raise CamInferError("no 4-D activation of this model is a cut point (every one is bypassed by "
                        "a skip connection); name a layer with --layer")


def _lookup(graph: Graph, layer: str) -> TargetLayer:
    if layer == graph.image_input.name:
        raise CamInferError(f"'{layer}' is the model input; name a layer inside the network or use --layer auto")
    if layer in graph.initializers:
        raise CamInferError(f"'{layer}' is a constant (weights), not an activation; name a layer or use --layer auto")
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
        raise CamInferError(f"module '{module}' has {len(outputs)} outputs in the ONNX graph ({listed}); "
                            "name one of them as --layer")
    return outputs[0]


def _unknown_layer_message(graph: Graph, layer: str) -> str:
    names = sorted(set(graph.module_paths) | set(graph.producer) | {n.name for n in graph.nodes if n.name})
    close = difflib.get_close_matches(layer, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    valid = [display_name(graph, t) for t in reversed(spatial_candidates(graph)) if is_cut_point(graph, t)][:4]
    usable = f"layers that work here include {', '.join(repr(v) for v in valid)}; " if valid else ""
    return (f"unknown layer '{layer}': it is no tensor, node or torch module of this model; "
            f"{hint}{usable}or use --layer auto")


def _check_activation(graph: Graph, target: TargetLayer) -> None:
    info = graph.info(target.tensor)
    if target.tensor not in graph.input_dependent:
        raise CamInferError(f"layer '{target.requested}' is a constant, not an activation of the image")
    if info.rank != 4:
        shape = "unknown" if info.shape is None else tuple(info.shape)
        raise CamInferError(f"layer '{target.requested}' gives a tensor of shape {shape}; a CAM needs an "
                            "(N,K,h,w) activation; use --layer auto or a convolutional layer")
    if _spatial_size(info.shape) <= 1:
        raise CamInferError(f"layer '{target.requested}' is pooled to {info.shape[2]}x{info.shape[3]}; "
                            "a CAM needs spatial size above 1x1; pick an earlier layer or --layer auto")
    crossing = crossing_tensors(graph, target.tensor)
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
    return next((t for t in candidates if is_cut_point(graph, t)), None)
