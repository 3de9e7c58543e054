"""Cut sets of segmenters whose decoder reads several encoder levels (U-Net, FPN, PAN skip connections): the split.

A layer bypassed by a skip connection is no cut point: the decoder also reads earlier encoder levels. Asked
for such a layer T, the cut is the set {T} ∪ {the tensors computed before T that the decoder reads}
(`layers.crossing_tensors`): found from the graph, never from names. Asked for several layers (``a,b``), the
set must separate the image from the scores: every path from the input to the output passes through it,
else it is refused naming the tensors the decoder reads around it.

The bundle packs the set as a detector's is (`detection.split.packed_graphs`): ``features`` returns the
members flattened into one (N, Σ K_l·h_l·w_l) tensor, ``head`` unpacks them; the manifest's ``cut`` lists
each member's name, shape, stride and offset. How methods explain it: `cam_infer.segmentation.cut_set`.
"""

from __future__ import annotations

import numpy as np

from ..errors import CamInferError
from .anatomy import quantization_of
from .graph import INTEGER_TYPES, Graph
from .layers import _lookup, crossing_tensors, display_name, nearest_cut_point, read_around, resolve_cut


def requested_layers(layer: str) -> list[str]:
    return [name.strip() for name in layer.split(",") if name.strip()]


def skip_cut_set(graph: Graph, layer: str) -> list[str] | None:
    """The cut set a request names: None when `layer` is one layer that every path to the output crosses
    (an ordinary cut); else the members, checked, in the graph's order."""
    names = requested_layers(layer)
    tensors = [_lookup(graph, name).tensor for name in names]
    if len(tensors) == 1:
        read = crossing_tensors(graph, tensors[0])
        if not read:
            return None
        tensors = tensors + read
    tensors = [resolve_cut(graph, t)[0] for t in tensors]       # a QDQ map at its integer tensor, as single cuts are
    missing = bypassing(graph, tensors)
    if missing:
        nearest = nearest_cut_point(graph, tensors[0])
        hint = f"; nearest valid layer: '{display_name(graph, nearest)}'" if nearest else ""
        raise CamInferError(f"{', '.join(names)} do not separate the input from the scores: the decoder also reads "
                            f"{', '.join(map(repr, missing[:4]))}{' ...' if len(missing) > 4 else ''} around them; "
                            f"add {'it' if len(missing) == 1 else 'them'} to --layer{hint}")
    for tensor in tensors:
        check_member(graph, tensor, layer)
    return sorted(dict.fromkeys(tensors), key=lambda t: graph.order[t])


def bypassing(graph: Graph, tensors: list[str]) -> list[str]:
    """The tensors the head reads around the set: computed before a member, or the image itself, and reached
    from the scores without passing through a member or its DequantizeLinear (empty: the set is a cut)."""
    members = set(tensors) | {graph.nodes[i].output[0] for t in tensors for i in graph.consumers.get(t, [])
                              if graph.nodes[i].op_type == "DequantizeLinear"}     # a member's real values
    return read_around(graph, members, set().union(*(graph.ancestors(t) for t in tensors)))


def check_member(graph: Graph, tensor: str, layer: str) -> None:
    info = graph.info(tensor)
    shape = info.shape
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise CamInferError(f"the cut set of '{layer}' has '{tensor}' of shape {shape}, not a feature map (N,K,h,w)")
    if info.elem_type in INTEGER_TYPES and quantization_of(graph, tensor) is None:
        raise CamInferError(f"the cut set of '{layer}' has the integer tensor '{tensor}' of unknown scale (no "
                            "DequantizeLinear reads it, no quantized op says it): cannot read its real values")


def level_records(graph: Graph, tensors: list[str]) -> list[dict]:
    height = graph.input_spec.size[0]
    records = []
    for t in tensors:
        _, k, h, w = graph.info(t).shape
        records.append({"name": t, "shape": [int(k), int(h), int(w)],
                        "stride": height // h if height % h == 0 else None})
    return records


def split_at_cut_set(graph: Graph, tensors: list[str], layer: str):
    """features and head graphs of the packed cut set, and the manifest's fields that describe it."""
    from ..detection.split import PACKED, packed_graphs
    levels = level_records(graph, tensors)
    features, head = packed_graphs(graph, tensors, levels)             # an int8 member packed as its real values
    total = sum(int(np.prod(level["shape"])) for level in levels)
    fields = {"target_layer": {"requested": layer, "matched_by": "cut set", "module": None,
                               "tensor": ",".join(tensors), "layout": "NCHW"},
              "activation": {"name": PACKED, "shape": [total], "dtype": "float32", "quantization": None},
              "cut": levels}
    return features, head, fields
