"""Cut sets of segmenters whose decoder reads several encoder levels (U-Net, FPN, PAN skip connections).

A layer bypassed by a skip connection is no cut point: the decoder also reads earlier encoder levels. Asked
for such a layer T, the cut is the set {T} ∪ {the tensors computed before T that the decoder reads}
(`layers.crossing_tensors`): found from the graph, never from names. Asked for several layers (``a,b``), the
set must separate the image from the scores: every path from the input to the output passes through it,
else it is refused naming the tensors the decoder reads around it.

The bundle packs the set as a detector's is (`detection.split.packed_graphs`): ``features`` returns the
members flattened into one (N, Σ K_l·h_l·w_l) tensor, ``head`` unpacks them; the manifest's ``cut`` lists
each member's name, shape, stride and offset. A method explains each member with the others kept clean
(`explain_levels`), and the members' maps are combined by the rule of the method's units (`methods.levels`):
Recipro-CAM's maps are changes of the one region score, summed; the others are in their member's own
units, each ReLU'd and min–max'd, then averaged.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..bundle.graph import INTEGER_TYPES, Graph
from ..bundle.layers import _lookup, crossing_tensors, display_name, nearest_cut_point
from ..errors import CamInferError

# Methods whose maps are changes of the one target score: the members' maps add up (`levels.same_unit`).
SAME_UNIT = frozenset({"recipro"})
CHUNK_VALUES = 2**24         # packed values per head call from one member's rows (64 MB of float32)


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
    from the scores without passing through a member (empty: the set is a cut)."""
    stop = set(tensors)
    before = set().union(*(graph.ancestors(t) for t in tensors))
    found, seen, stack = set(), set(), [graph.scores_output.name]
    while stack:
        name = stack.pop()
        if name in seen or name in stop:
            continue
        seen.add(name)
        if name in graph.input_dependent and (name in before or name not in graph.producer):
            found.add(name)
            continue
        idx = graph.producer.get(name)
        if idx is not None:
            stack.extend(graph.node_inputs[idx])
    return sorted(found, key=lambda n: graph.order.get(n, -1))


def check_member(graph: Graph, tensor: str, layer: str) -> None:
    info = graph.info(tensor)
    shape = info.shape
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise CamInferError(f"the cut set of '{layer}' has '{tensor}' of shape {shape}, not a feature map (N,K,h,w)")
    if info.elem_type in INTEGER_TYPES:
        raise CamInferError(f"the cut set of '{layer}' has the integer tensor '{tensor}'; cut sets of quantized "
                            "segmenters are not supported: use --layer auto")


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
    features, head = packed_graphs(graph, tensors, levels)
    total = sum(int(np.prod(level["shape"])) for level in levels)
    fields = {"target_layer": {"requested": layer, "matched_by": "cut set", "module": None,
                               "tensor": ",".join(tensors), "layout": "NCHW"},
              "activation": {"name": PACKED, "shape": [total], "dtype": "float32", "quantization": None},
              "cut": levels}
    return features, head, fields


def level_view(levels: list[dict], rows: np.ndarray, i: int) -> np.ndarray:
    """Member i of packed rows (R, total) as a writable (R, K, h, w) view."""
    level = levels[i]
    size = int(np.prod(level["shape"]))
    return rows[:, level["offset"]:level["offset"] + size].reshape(len(rows), *level["shape"])


class MemberHead:
    """The head seen from member i: rows (R,K,h,w) of it go back into the image's clean packed cut, the other
    members kept, through the whole head."""

    def __init__(self, backend, levels: list[dict], packed: np.ndarray, member: int):
        self.backend, self.levels, self.packed, self.member = backend, levels, packed, member

    def __call__(self, i: int, rows: np.ndarray) -> np.ndarray:
        step = max(1, CHUNK_VALUES // self.packed.shape[1])
        full = np.repeat(self.packed[i:i + 1], min(step, len(rows)), axis=0)    # the other members stay clean
        outputs = []
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            level_view(self.levels, full, self.member)[:len(chunk)] = chunk
            outputs.append(self.backend.head(full[:len(chunk)]))
        return np.concatenate(outputs)


def finest_grid(levels: list[dict]) -> tuple[int, int]:
    """(h, w) of the finest member: the grid a cut set's maps are combined on."""
    return tuple(max((lv["shape"][1:] for lv in levels), key=lambda s: s[0] * s[1]))


def refuse_gradients(spec) -> None:
    if spec.gradient:
        raise CamInferError(f"method '{spec.name}' needs gradients, which cam-infer does not take through a cut set's "
                            "packed head; use a gradient-free method, or split at one layer")


def explain_levels(code, spec, ctx, options: dict) -> np.ndarray:
    """The method's maps (T, h0, w0) on the finest member's grid: each member explained by `code` with the others
    clean, combined by the rule of the method's units."""
    from ..methods.levels import same_unit, unit_free
    refuse_gradients(spec)
    levels = ctx.bundle.cut_levels
    per_member = []
    for m in range(len(levels)):
        member = replace(ctx, activations=np.ascontiguousarray(level_view(levels, ctx.activations, m)), tail=None)
        member.head = MemberHead(ctx.backend, levels, ctx.activations, m)
        member.features = lambda x, m=m: np.ascontiguousarray(level_view(levels, ctx.backend.features(x), m))
        per_member.append(np.asarray(code(member, **options), np.float32))
    finest = finest_grid(levels)
    combine = same_unit if spec.name in SAME_UNIT else unit_free
    return np.stack([combine({m: maps[t] for m, maps in enumerate(per_member)}, tuple(finest))
                     for t in range(len(ctx.targets))])
