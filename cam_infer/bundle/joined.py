"""A bundle's two graphs joined back into one: the model it was split from, nothing recomputed.

The features and head graphs come from one graph and join by the cut's tensor names; a detector's packing
(its cut maps flattened into one vector between the two) is left out. A name both compute (a quantized
model's head re-quantizes the cut under the name the features graph quantized it with) is renamed in
the head, and an initializer both hold is kept once when equal. With
``expose_cut`` the cut's tensors are outputs too, before the model's output: a method's clean pass, which
needs both, then takes one runtime call instead of two, and on OpenVINO as little time as the plain model
(YOLOv8n: 0.99–1.03× at batch 1). `cam-infer fuse` builds on the joined model without them.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

HEAD_PREFIX = "head/"


def joined_model(features: onnx.ModelProto, head: onnx.ModelProto, cut: list[dict] | None = None, *,
                 expose_cut: bool = True, name: str = "joined") -> onnx.ModelProto:
    """One model from a bundle's `features` and `head` graphs, built in `features` itself (changed in place:
    its weights are not copied). `cut`: a detector's cut levels (its graphs are packed); `expose_cut`:
    outputs are the cut's tensors (a detector's: each level, unpacked), then the model's output; else the
    model's output alone."""
    packed = cut is not None
    graph = features.graph
    feature_nodes, head_nodes = _members(features, head, packed)
    head_nodes, head_initializers = _apart(feature_nodes, graph.initializer, head_nodes, head.graph.initializer)
    if packed:
        cut_tensors = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *level["shape"]])
                       for name, level in zip(packed_levels(features, cut), cut)]
    else:
        cut_tensors = list(graph.output)
    outputs = (cut_tensors if expose_cut else []) + list(head.graph.output)
    if packed:
        del graph.node[:]
        graph.node.extend(feature_nodes)
    graph.node.extend(head_nodes)
    used = {name for n in graph.node for name in n.input}
    for i in reversed(range(len(graph.initializer))):          # the packing's shape constant
        if graph.initializer[i].name not in used:
            del graph.initializer[i]
    graph.initializer.extend(i for i in head_initializers if i.name in used)
    value_info = [v for v in list(graph.value_info) + list(head.graph.value_info)
                  + ([] if expose_cut else cut_tensors) if v.name in used]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    del graph.output[:]
    graph.output.extend(outputs)
    graph.name = name
    features.ir_version = max(features.ir_version, head.ir_version)
    known = {(fn.domain, fn.name) for fn in features.functions}
    features.functions.extend(fn for fn in head.functions if (fn.domain, fn.name) not in known)
    return features


def packed_levels(features: onnx.ModelProto, cut: list[dict]) -> list[str]:
    """The float32 tensor each of a detector's cut levels is packed from: the level itself, or its dequantized
    (int8) or cast (float16) copy, which the joined model computes too."""
    read = {n.name: n.input[0] for n in features.graph.node if _packing(n.name)}
    return [read.get(f"pack_{i}", level["name"]) for i, level in enumerate(cut)]


def head_renames(features: onnx.ModelProto, head: onnx.ModelProto, cut: list[dict] | None = None) -> dict:
    """The head's tensor names that `joined_model` renames (name → ``head/<name>``), read before joining."""
    feature_nodes, head_nodes = _members(features, head, cut is not None)
    return _renames(feature_nodes, features.graph.initializer, head_nodes, head.graph.initializer)


def head_as_joined(linear_head, head: onnx.ModelProto, renames: dict):
    """`linear_head` and a copy of the `head` graph with the names the joined model gives the head's tensors
    (`head_renames`): graphs added to the joined model read the head's own weights under them."""
    from dataclasses import replace
    if not renames:
        return linear_head, head
    if linear_head is not None:
        source = linear_head.source
        linear_head = replace(linear_head, source=replace(source, weight=renames.get(source.weight, source.weight),
                                                          bias=renames.get(source.bias, source.bias)))
    renamed = _copy(head, onnx.ModelProto)
    for init in renamed.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in renamed.graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
        node.output[:] = [renames.get(o, o) for o in node.output]
    for info in (*renamed.graph.output, *renamed.graph.value_info):
        info.name = renames.get(info.name, info.name)
    return linear_head, renamed


def _members(features: onnx.ModelProto, head: onnx.ModelProto, packed: bool):
    """The nodes of each graph that the joined model holds (a detector's packing and unpacking left out)."""
    return ([n for n in features.graph.node if not (packed and _packing(n.name))],
            [n for n in head.graph.node if not (packed and n.name.startswith("unpack_"))])


def _apart(feature_nodes, feature_initializers, head_nodes, head_initializers):
    """The head's nodes and initializers, with the tensor and node names that would clash with the features
    graph's renamed (``head/<name>``, `_renames`); an initializer equal to the features graph's of the same name
    is shared."""
    renamed = _renames(feature_nodes, feature_initializers, head_nodes, head_initializers)
    ours = {i.name: i for i in feature_initializers}
    initializers = []
    for init in head_initializers:
        if init.name in renamed:
            init = _copy(init, onnx.TensorProto)
            init.name = renamed[init.name]
        elif init.name in ours:                                   # equal: the features graph's copy serves both
            continue
        initializers.append(init)
    node_names = {n.name for n in feature_nodes if n.name}
    if not renamed and not any(n.name in node_names for n in head_nodes):
        return head_nodes, initializers
    nodes = []
    for node in head_nodes:
        node = _copy(node, onnx.NodeProto)
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.output[:] = [renamed.get(o, o) for o in node.output]
        if node.name in node_names:
            node.name = HEAD_PREFIX + node.name
        nodes.append(node)
    return nodes, initializers


def _renames(feature_nodes, feature_initializers, head_nodes, head_initializers) -> dict:
    """Head tensor name → ``head/<name>`` for every head initializer or node output whose name the features graph
    uses otherwise (an initializer of the same name and value is not renamed: it is shared)."""
    ours = {i.name: i for i in feature_initializers}
    computed = {o for n in feature_nodes for o in n.output}
    renamed = {init.name: HEAD_PREFIX + init.name for init in head_initializers
               if init.name in computed
               or (init.name in ours and ours[init.name].SerializeToString() != init.SerializeToString())}
    renamed.update({o: HEAD_PREFIX + o for n in head_nodes for o in n.output if o in computed or o in ours})
    return renamed


def _copy(proto, kind):
    copied = kind()
    copied.CopyFrom(proto)
    return copied


def _packing(name: str) -> bool:
    return name == "pack" or name.startswith("pack_")
