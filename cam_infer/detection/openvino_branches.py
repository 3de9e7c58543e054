"""Each level's cropped class-score branch of a detector read by OpenVINO (an IR), cut from the IR's own graph.

The same branches as `branches` finds in an ONNX head, found the same way in the ov.Model: an op output computed
from the level alone (every image-dependent input it reads comes from the level), on the level's grid, whose last C
channels, as they are or through a Sigmoid, are the output's class scores (YOLOv8: cv3.l's last convolution, C
channels; then the Concat of cv2.l and cv3.l, 64 + C). The branch is an ov.Model from a new Parameter, the level as
float32 (N, K, k, k), to those channels (N, C, k, k): the level enters it as it enters the head
(`bundle.openvino_split.enter_head_at`: the layout, element type and quantization the model had there, so an int8
IR's branch starts from the same FakeQuantize as its head). It is kept only where `branches.verify_branch` holds on
OpenVINO: on the whole level (a copy of any spatial size) and on every anchor's k×k crop (the graph written), with the
clean cut maps and 70 % of the cells zeroed, within `IrBranches.tolerance`.
"""

from __future__ import annotations

import numpy as np

from ..bundle.openvino_cut_set import OpenVinoGraph
from ..bundle.openvino_split import _compiled, _Output, _release_batch, enter_head_at
from .branches import TOLERANCE

SCORES = "class_scores"
CANDIDATES = 12      # op outputs tried per level: an IR spells a convolution, a quantization in several ops


class IrBranches:
    """Where an IR head's class branches come from (`branches.level_branches`): op outputs of `graph` (the model at
    batch 1, as the split read it) below the cut `members`, cut out as ov.Models and run on OpenVINO's CPU at f32."""

    suffix = "xml"

    def __init__(self, graph: OpenVinoGraph, members: list[_Output]):
        self.graph, self.members = graph, members

    def candidates(self, i: int, level: dict, classes: int) -> list[_Output]:
        """Float op outputs computed from level i alone, on its grid, with at least `classes` channels: those with
        exactly `classes` first, then by fewest ops between the level and them."""
        _, h, w = level["shape"]
        only = self.computed_from_alone(self.members[i])
        found = []
        for name in only - {self.members[i].op}:
            op = self.graph.ops[name]
            for index in range(op.get_output_size()):
                out = _Output(name, index)
                shape = self.graph.shape(out)            # (K, h, w) of a float 4-D map in a known layout, or None
                if shape is None or tuple(shape[1:]) != (h, w) or shape[0] < classes:
                    continue
                found.append((shape[0] != classes, len(self.ops_between(self.members[i], out, only)),
                              self.graph.order[name], index, out))
        return [out for *_, out in sorted(found)[:CANDIDATES]]

    def computed_from_alone(self, member: _Output) -> set[str]:
        """The ops whose image-dependent inputs all come from `member`'s op or from ops that do (in graph order)."""
        only = {member.op}
        for name in sorted(self.graph.dependent, key=self.graph.order.get):
            reads = [v.get_node().get_friendly_name() for v in self.graph.ops[name].input_values()]
            reads = [r for r in reads if r in self.graph.dependent]
            if reads and all(r in only for r in reads):
                only.add(name)
        return only

    def ops_between(self, member: _Output, out: _Output, only: set[str]) -> set[str]:
        """The ops `out` is computed by from `member` (within `only`)."""
        seen, stack = set(), [out.op]
        while stack:
            name = stack.pop()
            if name in seen or name == member.op or name not in only:
                continue
            seen.add(name)
            stack.extend(v.get_node().get_friendly_name() for v in self.graph.ops[name].input_values())
        return seen

    def model(self, i: int, level: dict, tensor: _Output, classes: int, squash: str, k: int | None):
        """Level map (N, K, k, k) float32 → class scores (N, classes, k, k) float32: `tensor`'s last `classes`
        channels (through a Sigmoid for ``squash="sigmoid"``); any spatial size for k None. None where OpenVINO cannot
        make it (a reshape in the branch that holds the level's size)."""
        import openvino as ov
        import openvino.opset13 as ops

        member = self.members[i]
        clone = self.graph.model.clone()                     # shares the weights
        found = {op.get_friendly_name(): op for op in clone.get_ordered_ops()}
        spatial = [k, k] if k else [-1, -1]
        level_map = ops.parameter([-1, level["shape"][0], *spatial], np.float32, name="level")
        try:
            enter_head_at(found[member.op].output(member.index), level_map.output(0),
                          self.graph.layouts.get(member) == "NHWC")
            end = found[tensor.op].output(tensor.index)
            if self.graph.layouts.get(tensor) == "NHWC":
                end = ops.transpose(end, ops.constant(np.array([0, 3, 1, 2], np.int64))).output(0)
            channels = self.graph.shape(tensor)[0]
            end = ops.slice(end, ops.constant(np.array([channels - classes], np.int64)),
                            ops.constant(np.array([channels], np.int64)), ops.constant(np.array([1], np.int64)),
                            ops.constant(np.array([1], np.int64))).output(0)
            if squash == "sigmoid":
                end = ops.sigmoid(end).output(0)
            if end.get_element_type().get_type_name() != "f32":
                end = ops.convert(end, "f32").output(0)
            result = ops.result(end)
            result.output(0).get_tensor().set_names({SCORES})
            branch = ov.Model([result], [level_map], f"branch_{i}")
            _release_batch(branch)
            branch.validate_nodes_and_infer_types()
        except Exception:                                     # noqa: BLE001 — OpenVINO's shape errors: no branch
            return None
        return branch

    def runner(self, model):
        compiled = _compiled(model)
        return lambda crops: next(iter(compiled(crops).values()))

    def tolerance(self, i: int, level: dict) -> float:
        """A float IR's (float32 or float16 weights, both computed in float32 here): the ONNX branches' float32
        `TOLERANCE` (YOLOv8n's IRs measured 0). An int8 IR's (FakeQuantize ops between the level and its scores):
        none, `INT8_TOLERANCE`. Its branch starts from the head's FakeQuantize and ends after the logits' own, so
        OpenVINO runs the same integer kernels on the crop as on the map (int8 YOLOv8n: 0 at every level); a score
        'within its quantization step' (the logits' 0.04–0.07, a score's up to 0.018) would also pass the float
        logits before that quantization, 1.6e-5 off the head, which the model never computes."""
        only = self.computed_from_alone(self.members[i])
        quantized = any(self.graph.ops[name].get_type_name() == "FakeQuantize" for name in only)
        return INT8_TOLERANCE if quantized else TOLERANCE


INT8_TOLERANCE = 0.0


__all__ = ["IrBranches"]
