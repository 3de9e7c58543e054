"""`fuse` on an OpenVINO IR bundle: one IR model (.xml and .bin) that returns the scores and the saliency map.

    model = fuse("ir-bundle/", method="recipro")       # an ov.Model; save(model, "fused.xml")

The method's nodes are the ones the ONNX fuse writes (each method's `@fused` builder, `assemble.method_nodes`),
built as a small ONNX graph whose inputs are the cut and the scores. OpenVINO reads that graph, and it is wired onto
the bundle's features and head joined back into one model: the cut feeds it, the scores too. Where a builder runs
the head (Recipro-CAM's masked copies) or a graph made from it (ViT Recipro-CAM's opened tail), its ONNX nodes leave
a gap (`fusion.Call`) that is filled here with OpenVINO's own graph of the head: nothing of the IR is re-expressed in
ONNX. The head's weights are read where they are; a head that is no GAP→linear layer has no closed forms here, as
in `explain` on an IR bundle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import CamInferError
from ..outputs import write_atomically

CUT = "cam_infer/cut"
SCORES = "cam_infer/scores"
HEAD_WEIGHT = "cam_infer/head_weight"       # a GAP → linear head's own W and b, read where the IR holds them
HEAD_BIAS = "cam_infer/head_bias"
METADATA = "cam_infer"          # the rt_info section of the model's metadata (`bundle.model_cache.is_fused_ir`)


def joined_ir(features_path, head_path):
    """An IR bundle's features and head joined back into one graph: (the features' parameters, the cut, the head's
    result, the head as read). The head's parameter is replaced by the cut it reads (no copy of either graph)."""
    from ..backends.sessions import openvino_model
    features, head = openvino_model(features_path), openvino_model(head_path)
    cut = features.get_results()[0].input_value(0)
    read_instead(head.get_parameters()[0], cut)
    return features.get_parameters(), cut, head.get_results()[0], head


def head_tensors(head, linear_head) -> dict | None:
    """Where an IR head (an ``ov.Model``) holds the W and b that `linear_head` was read as by running it
    (`bundle.head.probed_linear_head`): a MatMul's constant operand (through the Convert of a float16-compressed IR)
    equal to W (transpose_b) or Wᵀ, and a constant added to its product equal to b. {HEAD_WEIGHT: output,
    HEAD_BIAS: output or None, "transposed": bool}, or None where no such tensors are found (a fused closed form
    then has no weights to read)."""
    weight, bias = linear_head.weight, linear_head.bias
    for op in head.get_ordered_ops():
        if op.get_type_name() != "MatMul" or op.get_attributes().get("transpose_a"):
            continue
        source, value = _constant_of(op.input_value(1))
        transposed = not op.get_attributes().get("transpose_b")            # stored (K,C)
        if value is None or value.shape != (weight.T.shape if transposed else weight.shape) or \
                not np.allclose(value.T if transposed else value, weight, rtol=0, atol=1e-6 * np.abs(weight).max()):
            continue
        added = None
        for reader in op.output(0).get_target_inputs():
            node = reader.get_node()
            if node.get_type_name() == "Add":
                added = _constant_of(node.input_value(1 - reader.get_index()))
        if added is not None and added[1] is not None and added[1].size == bias.size and \
                np.allclose(added[1].reshape(-1), bias, rtol=0, atol=1e-6 * max(1.0, np.abs(bias).max())):
            return {HEAD_WEIGHT: source, HEAD_BIAS: added[0], "transposed": transposed}
        if added is None and not bias.any():
            return {HEAD_WEIGHT: source, HEAD_BIAS: None, "transposed": transposed}
    return None


def _constant_of(value):
    """(the float output, its value) of a constant operand, a Constant or a Convert of one; (value, None) else."""
    node = value.get_node()
    if node.get_type_name() == "Convert" and node.input_value(0).get_node().get_type_name() == "Constant":
        return value, node.input_value(0).get_node().get_data().astype(np.float32)
    if node.get_type_name() == "Constant":
        return value, node.get_data().astype(np.float32)
    return value, None


def plain_ir(bundle):
    """The model the bundle was split from, as one ``ov.Model``: the features and head joined, the scores out."""
    import openvino as ov
    parameters, _, scores, _ = joined_ir(bundle.features_path, bundle.head_path)
    return ov.Model([scores], parameters, "cam_infer_plain")


def read_instead(parameter, source) -> None:
    """Every reader of `parameter` reads `source` instead."""
    for reader in list(parameter.output(0).get_target_inputs()):
        reader.replace_source_output(source)


def linear_head_inputs(bundle, linear_head, inputs: list):
    """`linear_head` as the fused method's nodes see it on an IR bundle: its W and b as inputs of theirs (added to
    `inputs`) that `stitched` wires to the head's own constants; None where the head is no GAP → linear head or its
    W and b are no constants of the IR (the closed forms are then not fused)."""
    from dataclasses import replace

    from ..backends.sessions import openvino_model
    from ..bundle.head import LinearSource
    if linear_head is None:
        return None
    tensors = head_tensors(openvino_model(bundle.head_path), linear_head)
    if tensors is None:
        return None
    c, k = linear_head.weight.shape
    inputs.append(helper.make_tensor_value_info(HEAD_WEIGHT, TensorProto.FLOAT, [k, c] if tensors["transposed"]
                                                else [c, k]))
    if tensors[HEAD_BIAS] is not None:
        inputs.append(helper.make_tensor_value_info(HEAD_BIAS, TensorProto.FLOAT, None))
    return replace(linear_head, source=LinearSource(weight=HEAD_WEIGHT, transposed=tensors["transposed"],
                                                    bias=HEAD_BIAS if tensors[HEAD_BIAS] is not None else None))


def method_graph(b, inputs: list, outputs: list[tuple[str, int]], calls) -> onnx.ModelProto:
    """The method's ONNX nodes as a model: `inputs` (value infos) and each call's result as inputs; `outputs`
    (name, element type) and each call's inputs as outputs."""
    gaps = [helper.make_tensor_value_info(call.output, TensorProto.FLOAT, [None] * call.rank) for call in calls]
    given = [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for call in calls for name in call.inputs]
    graph = helper.make_graph(b.nodes, "cam_infer_method", [*inputs, *gaps],
                              [helper.make_tensor_value_info(name, kind, None) for name, kind in outputs] + given,
                              b.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", b.opset)])


def stitched(bundle, method: onnx.ModelProto, calls, outputs: list[str], linear_head=None):
    """The bundle's joined IR with `method`'s outputs added: its cut and scores inputs read the joined graph's, each
    call's gap the call's graph, the head's weight and bias inputs the head's own tensors (`head_tensors` of
    `linear_head`). The model's inputs: the image, and any other input of `method` (``class_id``)."""
    import openvino as ov

    from ..backends.sessions import openvino_model
    parameters, cut, scores, head = joined_ir(bundle.features_path, bundle.head_path)
    nodes = openvino_model(method)
    inputs = {name: p for p in nodes.get_parameters() for name in p.output(0).get_names()}
    results = {name: r for r in nodes.get_results() for name in r.output(0).get_names()}
    if HEAD_WEIGHT in inputs:
        tensors = head_tensors(head, linear_head)
        for name in (HEAD_WEIGHT, HEAD_BIAS):
            if name in inputs:
                read_instead(inputs.pop(name), tensors[name])
    for name, source in ((CUT, cut), (SCORES, scores.input_value(0))):
        if name in inputs:                      # not read by every method: OpenVINO drops an unread input
            read_instead(inputs.pop(name), source)
    for call in calls:
        for parameter, name in zip(call.graph.get_parameters(), call.inputs):
            read_instead(parameter, results[name].input_value(0))
        read_instead(inputs.pop(call.output), call.graph.get_results()[0].input_value(0))
    scores.output(0).get_tensor().set_names({bundle.manifest["output"]["name"]})      # the bundle's name for it
    for name in outputs:                    # one name each (OpenVINO merges an Identity's names into its input's)
        results[name].output(0).get_tensor().set_names({name})
    model = ov.Model([scores, *(results[name] for name in outputs)], [*parameters, *inputs.values()], "cam_infer_fused")
    model.validate_nodes_and_infer_types()
    return model


def describe(model, entries: dict) -> None:
    """The fused model's record (`assemble._description`'s entries) in its rt_info, section ``cam_infer``."""
    for key, value in entries.items():
        model.set_rt_info(str(value), [METADATA, key.removeprefix("cam_infer.")])


def described(model) -> dict:
    """What `describe` wrote, as ``cam_infer.<key>`` entries."""
    section = model.get_rt_info()[METADATA] if model.has_rt_info(METADATA) else {}
    return {f"cam_infer.{key}": value.astype(str) for key, value in section.items()}


def run(model, feeds: dict, precision: str = "f32") -> dict:
    """The fused IR on OpenVINO's CPU at `precision`: its outputs by name."""
    from ..backends.sessions import FLOAT32, openvino_compiled
    request = openvino_compiled(model, FLOAT32.but(precision=precision)).create_infer_request()
    request.infer(feeds)
    return {name: request.get_tensor(o).data.copy() for o in request.model_outputs for name in o.get_names()}


def save_ir(model, path: "str | os.PathLike", overwrite: bool = False) -> Path:
    """`model` as `path` (.xml) and its weights beside it (.bin), each written whole or not at all."""
    import tempfile

    import openvino as ov
    path = Path(path)
    if path.exists() and not overwrite:
        raise CamInferError(f"'{path}' exists; choose another --out or pass --force")
    if path.suffix != ".xml":
        raise CamInferError(f"'{path}' should end in .xml: the fused model of an OpenVINO IR bundle is IR (and its "
                            "weights go beside it, .bin)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        written = Path(scratch) / "model.xml"
        ov.save_model(model, str(written), compress_to_fp16=False)
        write_atomically(path.with_suffix(".bin"), written.with_suffix(".bin").read_bytes())
        write_atomically(path, written.read_bytes().replace(b"model.bin", path.with_suffix(".bin").name.encode()))
    return path


def summary_ir(model, path: Path, bundle) -> str:
    """What `cam-infer fuse` prints for an IR: the files, their growth, inputs, outputs and the check."""
    def shape(port) -> str:
        return str(port.get_partial_shape()).replace(" ", "").replace("?", "N", 1)

    size = path.stat().st_size + path.with_suffix(".bin").stat().st_size
    graphs = (bundle.features_path, bundle.head_path)
    plain = sum(p.stat().st_size + p.with_suffix(".bin").stat().st_size for p in graphs)
    error = json.loads(described(model)["cam_infer.check"])
    return (f"wrote {path} and {path.with_suffix('.bin').name} ({size / 1e6:.1f} MB, {size / plain - 1:+.2%} over the "
            f"bundle's graphs)\n"
            f"inputs   {', '.join(f'{p.get_any_name()} {shape(p)}' for p in model.inputs)}\n"
            f"outputs  {', '.join(f'{p.get_any_name()} {shape(p)}' for p in model.outputs)}\n"
            "checked  against the Explainer on OpenVINO (f32): max relative difference "
            f"{error['relative_difference']:.2g}"
            + "".join(f"; at {p}: {d:.2g}" for p, d in error.items() if p != "relative_difference"))


def cut_input(bundle, batch) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(CUT, TensorProto.FLOAT, [batch, *bundle.cut_shape])


def scores_input(bundle, batch) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, [batch, *bundle.output_shape])
