"""Cut sets of segmenters OpenVINO reads (an IR ``.xml``, a ``.tflite``): `skip_cut_set`'s split on OpenVINO's own
graph, so a deployed IR with skip connections is explained as the file it is, never converted.

Asked for a layer T that a skip connection bypasses, the set is {T} ∪ {the op outputs computed before T that the
decoder reads around it}; asked for ``a,b``, the set must separate the image from the scores (every path from the
input to them passes through a member), else it is refused naming what the decoder reads around it. A layer is an
op's friendly name or one of its output tensors' names.

The graphs are packed as an ONNX cut set's (`detection.split.packed_graphs`): ``features`` returns the members, each
NCHW (an NHWC member transposed) and flattened, concatenated into one (N, Σ K·h·w) float32 tensor; ``head`` slices
them back and runs the rest of the model; the manifest's ``cut`` lists each member's name, shape, stride and offset.
A member a FakeQuantize makes enters the head through a copy of it, as a single cut does (`openvino_split`).
"""

from __future__ import annotations

import numpy as np

from ..errors import CamInferError
from .openvino_split import (_image_input, _layouts, _Output, _rebuild_shapes, _release_batch, enter_head_at,
                             float_output)

PACKED = "cut_packed"


class OpenVinoGraph:
    """What the walks need of an ov.Model: its ops by name, topological order, the ops the image reaches."""

    def __init__(self, model, spec):
        self.model, self.spec = model, spec
        ordered = model.get_ordered_ops()
        self.ops = {op.get_friendly_name(): op for op in ordered}
        self.order = {op.get_friendly_name(): i for i, op in enumerate(ordered)}
        self.layouts = _layouts(model, spec)
        self.dependent: set[str] = set()
        for op in ordered:
            name = op.get_friendly_name()
            if name == spec.name or any(v.get_node().get_friendly_name() in self.dependent for v in op.input_values()):
                self.dependent.add(name)

    def lookup(self, name: str) -> _Output:
        """An op by friendly name (its first output), or an output by tensor name."""
        if name in self.ops:
            return _Output(name)
        for op_name, op in self.ops.items():
            for i, out in enumerate(op.outputs()):
                if name in out.get_names():
                    return _Output(op_name, i)
        raise CamInferError(f"unknown layer '{name}': no op or tensor of this OpenVINO model has that name")

    def ancestors(self, out: _Output) -> set[str]:
        seen, stack = set(), [self.ops[out.op]]
        while stack:
            node = stack.pop()
            if node.get_friendly_name() not in seen:
                seen.add(node.get_friendly_name())
                stack.extend(v.get_node() for v in node.input_values())
        return seen

    def read_around(self, scores, members: set[_Output], before: set[str]) -> list[_Output]:
        """The image-dependent op outputs the scores are reached from without passing through `members`: computed
        before a member, or the image itself; in graph order."""
        found, seen, stack = set(), set(), [scores]
        while stack:
            value = stack.pop()
            key = _Output(value.get_node().get_friendly_name(), value.get_index())
            if key in seen or key in members:
                continue
            seen.add(key)
            if self.shape_only(value.get_node()):
                continue
            if key.op in self.dependent and (key.op in before or key.op == self.spec.name):
                found.add(key)
                continue
            stack.extend(value.get_node().input_values())
        return sorted(found, key=lambda o: (self.order[o.op], o.index))

    @staticmethod
    def shape_only(op) -> bool:
        """A ShapeOf of a tensor whose dims are known but the batch: the head reads no value of it, only a shape it
        rebuilds from its own input's batch (`_rebuild_shapes`). OpenVINO shares such shapes across blocks: in
        Ultralytics' torch → IR export of YOLO11, Detect's DFL reshape takes its batch from a ShapeOf of C2PSA's input."""
        if op.get_type_name() != "ShapeOf":
            return False
        dims = list(op.input_value(0).get_partial_shape())
        return bool(dims) and all(d.is_static for d in dims[1:])

    def shape(self, out: _Output) -> list[int] | None:
        """(K, h, w) of a member in NCHW, or None when it is not a float feature map of static size."""
        op = self.ops[out.op]
        shape = op.get_output_partial_shape(out.index)
        if not shape.is_static or shape.rank.get_length() != 4 or \
                op.get_output_element_type(out.index).get_type_name() not in ("f32", "f16", "bf16"):
            return None
        dims = [d.get_length() for d in shape]
        layout = self.layouts.get(out)
        if layout is None:
            return None
        return dims[1:] if layout == "NCHW" else [dims[3], dims[1], dims[2]]


def display(out: _Output) -> str:
    return out.op if out.index == 0 else f"{out.op}:{out.index}"


def openvino_cut_set(graph: OpenVinoGraph, layer: str, scores, option: str = "--layer") -> list[_Output] | None:
    """The cut set `layer` names: None when it is one layer every path to the scores crosses (an ordinary cut);
    else the members, checked, in the graph's order. `option`: the command-line option a refusal names."""
    names = [n.strip() for n in layer.split(",") if n.strip()]
    members = [graph.lookup(n) for n in names]
    if len(members) == 1:
        around = graph.read_around(scores, set(members), graph.ancestors(members[0]))
        if not around:
            return None
        members += around
    before = set().union(*(graph.ancestors(m) for m in members))
    missing = graph.read_around(scores, set(members), before)
    if missing:
        shown = ", ".join(repr(display(m)) for m in missing[:4]) + (" ..." if len(missing) > 4 else "")
        raise CamInferError(f"{', '.join(names)} do not separate the input from the scores: the decoder also reads "
                            f"{shown} around them; add {'it' if len(missing) == 1 else 'them'} to {option}")
    for m in members:
        if m.op == graph.spec.name or graph.shape(m) is None:
            shape = graph.ops[m.op].get_output_partial_shape(m.index)
            raise CamInferError(f"the cut set of '{layer}' has '{display(m)}' of shape {shape}, not a float feature "
                                "map (N,K,h,w) or (N,h,w,K)")
    return sorted(dict.fromkeys(members), key=lambda o: (graph.order[o.op], o.index))


def level_records(graph: OpenVinoGraph, members: list[_Output], height: int) -> list[dict]:
    levels, offset = [], 0
    for m in members:
        k, h, w = graph.shape(m)
        levels.append({"name": display(m), "shape": [k, h, w], "stride": height // h if height % h == 0 else None,
                       "offset": offset})
        offset += k * h * w
    return levels


def packed_openvino_graphs(graph: OpenVinoGraph, members: list[_Output], levels: list[dict], scores, prep,
                           batch: int):
    """features: float NCHW image → the members packed (N, Σ K·h·w); head: that vector → the scores."""
    import openvino as ov
    import openvino.opset13 as ops

    model, spec = graph.model, graph.spec
    f_model = model.clone()
    f_ops = {op.get_friendly_name(): op for op in f_model.get_ordered_ops()}
    image = _image_input(f_ops, spec, prep, batch)
    flat = []
    for m in members:
        act = f_ops[m.op].output(m.index)
        if graph.layouts.get(m) == "NHWC":
            act = ops.transpose(act, ops.constant(np.array([0, 3, 1, 2], np.int64))).output(0)
        if act.get_element_type().get_type_name() != "f32":
            act = ops.convert(act, "f32").output(0)
        flat.append(ops.reshape(act, ops.constant(np.array([0, -1], np.int64)), special_zero=True).output(0))
    packed_out = ops.concat(flat, 1) if len(flat) > 1 else flat[0]
    features = ov.Model([ops.result(packed_out)], [image], "features")

    h_model = model.clone()
    h_ops = {op.get_friendly_name(): op for op in h_model.get_ordered_ops()}
    total = sum(int(np.prod(lv["shape"])) for lv in levels)
    packed = ops.parameter([batch, total], np.float32, name=PACKED)
    for m, level in zip(members, levels):
        source = h_ops[m.op].output(m.index)
        size = int(np.prod(level["shape"]))
        a = ops.slice(packed, ops.constant(np.array([level["offset"]], np.int64)),
                      ops.constant(np.array([level["offset"] + size], np.int64)), ops.constant(np.array([1], np.int64)),
                      ops.constant(np.array([1], np.int64))).output(0)
        a = ops.reshape(a, ops.constant(np.array([0, *level["shape"]], np.int64)), special_zero=True).output(0)
        enter_head_at(source, a, graph.layouts.get(m) == "NHWC")
    end = float_output(h_ops, scores)
    _rebuild_shapes(end.get_node(), spec.name, packed)
    head = ov.Model([ops.result(end)], [packed], "head")
    if batch == -1:
        for part in (features, head):
            _release_batch(part)
    return features, head
