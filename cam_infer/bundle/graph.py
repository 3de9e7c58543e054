"""Reading an ONNX classifier as a graph: which tensor feeds which node, shapes, constants, the image input.

Nothing here writes a model; `layers.py` decides where to cut and `split.py` writes the two graphs.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from ..errors import CamInferError

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
INTEGER_TYPES = {TensorProto.UINT8: "uint8", TensorProto.INT8: "int8"}
FLOAT16_TYPES = {TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16", TensorProto.DOUBLE: "float64"}


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and check an ONNX file; every way it can be unusable becomes a `CamInferError`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CamInferError(f"model file '{path}' does not exist")
    if os.path.isdir(path):
        raise CamInferError(f"'{path}' is a folder; give the path of an .onnx file")
    try:
        model = onnx.load(path)
    except Exception as exc:  # protobuf DecodeError, truncated external data, ...
        raise CamInferError(f"'{path}' is not a readable ONNX model ({_first_line(exc)}); "
                            "is the file complete?") from None
    if len(model.graph.node) == 0 or len(model.graph.output) == 0:
        raise CamInferError(f"'{path}' is not an ONNX model (no graph nodes or outputs found)")
    in_topological_order(model)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        # Files the checker rejects but ONNX Runtime runs are deployed as they are (e.g. a per-channel
        # `axis` on DequantizeLinear at opset 11, which quantization tools write): accept what runs.
        if not _runs_on_onnxruntime(model):
            raise CamInferError(f"'{path}' is not a valid ONNX model: {_first_line(exc)}") from None
        model.doc_string = (model.doc_string + "\n" if model.doc_string else "") + \
            f"cam-infer: onnx.checker rejects this file ({_first_line(exc)}); ONNX Runtime runs it"
    return model


def in_topological_order(model: onnx.ModelProto) -> None:
    """Put the graph's nodes in an order where each comes after the nodes it reads from, keeping the file's order
    where it already is one. ONNX asks for that order and ONNX Runtime sorts for itself, so files that break it
    run (float16 converters append the input's Cast last); everything here walks the nodes in file order."""
    g = model.graph
    known = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    reads = [[i for i in [*n.input, *sorted(_subgraph_inputs(n))] if i not in known] for n in g.node]
    producer = {out: idx for idx, node in enumerate(g.node) for out in node.output if out}
    if all(producer.get(i, -1) < idx for idx, inputs in enumerate(reads) for i in inputs):
        return
    placed, order, done = set(), [], set()

    def place(idx: int) -> None:
        stack = [(idx, iter(reads[idx]))]
        while stack:
            current, pending = stack[-1]
            name = next((i for i in pending if producer.get(i) is not None and producer[i] not in done), None)
            if name is None:
                stack.pop()
                if current not in done:
                    done.add(current)
                    order.append(current)
            elif producer[name] in placed:
                raise CamInferError(f"the model's graph has a cycle through '{name}'")
            else:
                placed.add(producer[name])
                stack.append((producer[name], iter(reads[producer[name]])))

    for idx in range(len(g.node)):
        if idx not in done:
            placed.add(idx)
            place(idx)
    nodes = [g.node[i] for i in order]
    del g.node[:]
    g.node.extend(nodes)


def _runs_on_onnxruntime(model: onnx.ModelProto) -> bool:
    from ..backends.sessions import FLOAT32, onnxruntime_session
    try:
        onnxruntime_session(model, FLOAT32, quiet=True)
        return True
    except Exception:
        return False


def checker_note(model: onnx.ModelProto) -> str | None:
    """What `load_onnx` noted about a file onnx.checker rejects and ONNX Runtime runs."""
    return next((line[len("cam-infer: "):] for line in model.doc_string.splitlines()
                 if line.startswith("cam-infer: onnx.checker")), None)


def _shapes_from_a_run(model: onnx.ModelProto, image: onnx.ValueInfoProto, names: list[str]) -> dict:
    """Shapes and types ONNX's inference cannot give (contrib ops such as com.microsoft.QLinearAdd): run
    the model once on a zero image of the concrete size with those tensors as extra outputs."""
    from ..backends.sessions import FLOAT32, onnxruntime_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known)
    try:
        session = onnxruntime_session(probe, FLOAT32, quiet=True, optimize=False)
        tt = image.type.tensor_type
        x = np.zeros([d.dim_value for d in tt.shape.dim], helper.tensor_dtype_to_np_dtype(tt.elem_type))
        values = session.run(names, {image.name: x})
    except Exception:
        return {}
    return {n: TensorInfo(n, helper.np_dtype_to_tensor_dtype(v.dtype), tuple(v.shape))
            for n, v in zip(names, values) if isinstance(v, np.ndarray)}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


@dataclass(frozen=True)
class TensorInfo:
    name: str
    elem_type: int
    shape: tuple[int | None, ...] | None  # None: rank unknown; None entries: unknown dims

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


def _tensor_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    tt = vi.type.tensor_type
    shape = None
    if tt.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    return TensorInfo(vi.name, tt.elem_type, shape)


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names read by the subgraphs of If/Loop/Scan nodes (implicit inputs)."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
        for g in graphs:
            defined = {i.name for i in g.input} | {i.name for i in g.initializer}
            for sub in g.node:
                names |= {i for i in sub.input if i and i not in defined}
                names |= _subgraph_inputs(sub)
                defined |= set(sub.output)
    return names


@dataclass(frozen=True)
class InputSpec:
    """The model's image input as the file has it."""

    name: str
    layout: str            # "NCHW" | "NHWC"
    dtype: str             # "float32" | "float16" | "bfloat16" | "float64" | "uint8" | "int8"
    elem_type: int
    channels: int          # 1 or 3
    size: tuple[int | None, int | None]


def image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The graph input that is not an initializer (old IR<4 files list weights as inputs too)."""
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise CamInferError(f"the model must have exactly one image input, it has {len(inputs)} ({names})")
    return inputs[0]


IR_SECTIONS = (("framework", ""), ("cam_infer", "cam_infer."))   # an IR's rt_info sections read as metadata


def recorded_metadata(model) -> dict[str, str]:
    """What a model file records of itself, key → text: an ONNX model's ``metadata_props``; an OpenVINO model's
    (``ov.Model``, an IR read) rt_info, where converting an ONNX file (``ovc``, ``openvino.convert_model``, kept by
    ``openvino.save_model``) puts its ``metadata_props`` (section ``framework``, keys as they were) and where the
    package writes its own record (section ``cam_infer``, key ``preprocessing`` read as ``cam_infer.preprocessing``;
    it wins over the converted one)."""
    if isinstance(model, onnx.ModelProto):
        return {p.key: p.value for p in model.metadata_props}
    return {prefix + key: value for name, prefix in IR_SECTIONS for key, value in rt_info_section(model, name).items()}


def rt_info_section(model, name: str) -> dict[str, str]:
    """The text entries of one section of an ``ov.Model``'s rt_info (nested sections left out); {} without it."""
    if not model.has_rt_info(name):
        return {}
    section = model.get_rt_info()[name]
    if not isinstance(section, dict):
        return {}
    return {key: value.astype(str) for key, value in section.items() if not isinstance(value, dict)}


def names_metadata(model, keys=("names",)):
    """The class names a model file (ONNX, or an ``ov.Model``: `recorded_metadata`) records under the first of `keys`
    it has (``names``: Ultralytics' and the package's own models, a list or {index: name}; ``cam_infer.labels``: a
    fused model's), parsed as a Python literal; None when absent or unreadable."""
    recorded = recorded_metadata(model)
    text = next((recorded[k] for k in keys if recorded.get(k)), None)
    try:
        return ast.literal_eval(text) if text else None
    except (ValueError, SyntaxError):
        return None


def input_spec(graph: Graph, layout: str | None = None) -> InputSpec:
    """Layout, dtype and channels of the image input. NCHW when dim 1 holds the channels, NHWC when the
    last dim does; `layout` forces one. An input that is neither is refused with what it is."""
    image = graph.image_input
    tt = image.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
    dtype = {TensorProto.FLOAT: "float32", **INTEGER_TYPES, **FLOAT16_TYPES}.get(tt.elem_type)
    sequence = " (a sequence model's tokens, not an image)" if len(dims) in (2, 3) else ""
    if dtype is None:
        raise CamInferError(f"the model input '{image.name}' is of type "
                            f"{TensorProto.DataType.Name(tt.elem_type).lower()}{sequence}; cam-infer takes float, "
                            "float16, uint8 or int8 images")
    if len(dims) != 4:
        raise CamInferError(f"the model input '{image.name}' has shape {tuple(dims)}{sequence}; cam-infer needs an "
                            "image input (N,C,H,W) or (N,H,W,C)")
    if layout is not None:
        layout = layout.upper()
        if layout not in ("NCHW", "NHWC"):
            raise CamInferError(f"layout must be nchw or nhwc, not {layout.lower()!r}")
    elif dims[1] in (1, 3) and dims[3] not in (1, 3):
        layout = "NCHW"
    elif dims[3] in (1, 3) and dims[1] not in (1, 3):
        layout = "NHWC"
    else:
        raise CamInferError(f"cannot tell the layout of the model input '{image.name}' {tuple(dims)}; "
                            "give --layout nchw or nhwc")
    channels, size = (dims[1], (dims[2], dims[3])) if layout == "NCHW" else (dims[3], (dims[1], dims[2]))
    if channels not in (1, 3):
        raise CamInferError(f"the model input '{image.name}' {tuple(dims)} ({layout}) has {channels} channels; "
                            "cam-infer takes 1 (grayscale) or 3 (colour) channels")
    return InputSpec(image.name, layout, dtype, tt.elem_type, channels, size)


@dataclass
class Graph:
    """An index over one ONNX model: producers, consumers, constants, shapes, module scopes."""

    model: onnx.ModelProto
    shapes: dict[str, TensorInfo] = field(default_factory=dict)
    layout: str | None = None           # the input's layout when the user gave it; else detected

    @classmethod
    def from_model(cls, model: onnx.ModelProto, input_size: tuple[int, int] | None = None,
                   layout: str | None = None) -> "Graph":
        graph = cls(model, layout=layout)
        graph.shapes = graph._infer_shapes(input_size)
        return graph

    @cached_property
    def input_spec(self) -> InputSpec:
        return input_spec(self, self.layout)

    # --- structure -------------------------------------------------------------------------

    @cached_property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self.model.graph.node)

    @cached_property
    def initializers(self) -> dict[str, onnx.TensorProto]:
        return {t.name: t for t in self.model.graph.initializer}

    @cached_property
    def image_input(self) -> onnx.ValueInfoProto:
        return image_input(self.model)

    @cached_property
    def scores_output(self) -> onnx.ValueInfoProto:
        return self.model.graph.output[0]

    @cached_property
    def node_inputs(self) -> list[list[str]]:
        """Every tensor a node reads, including names its subgraphs read from the outer scope."""
        return [[i for i in n.input if i] + sorted(_subgraph_inputs(n)) for n in self.nodes]

    @cached_property
    def producer(self) -> dict[str, int]:
        return {out: idx for idx, node in enumerate(self.nodes) for out in node.output if out}

    @cached_property
    def consumers(self) -> dict[str, list[int]]:
        result: dict[str, list[int]] = {}
        for idx, inputs in enumerate(self.node_inputs):
            for name in inputs:
                result.setdefault(name, []).append(idx)
        return result

    @cached_property
    def input_dependent(self) -> set[str]:
        """Tensors whose value depends on the image (everything else is a constant)."""
        dependent = {self.image_input.name}
        for node, inputs in zip(self.nodes, self.node_inputs):
            if any(i in dependent for i in inputs):
                dependent.update(o for o in node.output if o)
        return dependent

    @cached_property
    def order(self) -> dict[str, int]:
        """Topological position of every tensor produced by a node (graph input: -1)."""
        order = {self.image_input.name: -1}
        order.update({out: idx for idx, node in enumerate(self.nodes) for out in node.output if out})
        return order

    def ancestors(self, tensor: str) -> set[str]:
        """All tensors `tensor` is computed from, itself included."""
        seen: set[str] = set()
        stack = [tensor]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            idx = self.producer.get(name)
            if idx is not None:
                stack.extend(self.node_inputs[idx])
        return seen

    def nodes_computing(self, tensors: list[str], stop: set[str]) -> list[int]:
        """Indices (in graph order) of the nodes needed for `tensors`, not looking past `stop`."""
        needed: set[int] = set()
        seen: set[str] = set()
        stack = list(tensors)
        while stack:
            name = stack.pop()
            if name in seen or name in stop:
                continue
            seen.add(name)
            idx = self.producer.get(name)
            if idx is not None and idx not in needed:
                needed.add(idx)
                stack.extend(self.node_inputs[idx])
        return sorted(needed)

    # --- shapes ------------------------------------------------------------------------------

    def _infer_shapes(self, input_size: tuple[int, int] | None) -> dict[str, TensorInfo]:
        """Shapes of every tensor for a batch-1 input of the model's (or the given) spatial size."""
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        image = next(i for i in model.graph.input if i.name == self.image_input.name)
        dims = image.type.tensor_type.shape.dim
        spec = self.input_spec
        if input_size is not None and (len(input_size) != 2 or min(input_size) < 1):
            raise CamInferError(f"input size must be two positive integers (H W), not {' '.join(map(str, input_size))}")
        fixed = [int(v) for v in spec.size if v]
        if input_size is not None and len(fixed) == 2 and tuple(map(int, input_size)) != tuple(fixed):
            raise CamInferError(f"the model input '{image.name}' is fixed at {fixed[0]}x{fixed[1]}; --input-size "
                                f"{' '.join(map(str, input_size))} does not fit it (it is for inputs of dynamic H, W)")
        size = input_size or spec.size
        if not size[0] or not size[1]:
            raise CamInferError(f"the model input '{image.name}' has no fixed spatial size; "
                                "give one with --input-size H W")
        concrete = [1, spec.channels, *size] if spec.layout == "NCHW" else [1, *size, spec.channels]
        for dim, value in zip(dims, concrete):
            dim.Clear()
            dim.dim_value = int(value)
        del model.graph.value_info[:]
        try:
            inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception as exc:
            raise CamInferError(f"ONNX shape inference failed on this model: {_first_line(exc)}") from None
        g = inferred.graph
        infos = [*g.input, *g.value_info, *g.output]
        shapes = {vi.name: _tensor_info(vi) for vi in infos}
        for name, tensor in self.initializers.items():
            shapes[name] = TensorInfo(name, tensor.data_type, tuple(tensor.dims))
        missing = [o for n in model.graph.node for o in n.output
                   if o and (o not in shapes or shapes[o].shape is None or None in shapes[o].shape
                             or shapes[o].elem_type == TensorProto.UNDEFINED)]
        if missing:
            shapes.update(_shapes_from_a_run(model, image, missing))
        return shapes

    def info(self, name: str) -> TensorInfo:
        return self.shapes.get(name) or TensorInfo(name, TensorProto.UNDEFINED, None)

    @cached_property
    def fixed_batch(self) -> int | None:
        """The batch size hard-coded in the model's input, or None when it is dynamic."""
        dims = self.image_input.type.tensor_type.shape.dim
        return dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None

    # --- torch module scopes -------------------------------------------------------------

    @cached_property
    def node_modules(self) -> list[tuple[str, ...]]:
        """For each node, the torch module paths it lies in, outermost first.

        From the dynamo exporter's `pkg.torch.onnx.name_scopes` metadata (``['', 'layer4',
        'layer4.1', 'layer4.1.relu', 'relu_3']``, last entry the op) or from the legacy exporter's
        node names (``/layer4/layer4.1/relu/Relu``, whose parts are full or relative paths).
        """
        return [_module_paths(node) for node in self.nodes]

    @cached_property
    def module_paths(self) -> set[str]:
        return {path for paths in self.node_modules for path in paths}

    def module_outputs(self, module: str) -> list[str]:
        """Tensors produced inside `module` and read outside it (or returned by the graph)."""
        inside = {idx for idx, paths in enumerate(self.node_modules) if module in paths}
        graph_outputs = {o.name for o in self.model.graph.output}
        outputs = []
        for idx in sorted(inside):
            for out in self.nodes[idx].output:
                readers = self.consumers.get(out, [])
                if out and (out in graph_outputs or any(r not in inside for r in readers)):
                    outputs.append(out)
        return outputs


def _module_paths(node: onnx.NodeProto) -> tuple[str, ...]:
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            return tuple(s for s in scopes[:-1] if s)
    if not node.name.startswith("/"):
        return ()
    paths: list[str] = []
    current = ""
    for part in node.name.split("/")[1:-1]:
        current = _scope_path(current, part)
        paths.append(current)
    return tuple(paths)


def _scope_path(parent: str, part: str) -> str:
    """A legacy node name's scope `part` under module path `parent`. The exporter names each module by its path
    from its last non-numeric name on (``relu``, ``layer4.1``, ``conv.1.0``): a part with a dot is the parent's own
    name (from its last non-numeric name) followed by the module's index, else the module's name in its parent."""
    atoms = parent.split(".") if parent else []
    named = [i for i, atom in enumerate(atoms) if not atom.isnumeric()]
    start = named[-1] if named else 0
    own = ".".join(atoms[start:])
    if not parent:
        return part
    if part.startswith(own + "."):
        return ".".join(atoms[:start] + [part])
    return f"{parent}.{part}"


def make_tensor_value_info(info: TensorInfo, batch_dim: str | int) -> onnx.ValueInfoProto:
    """A value info with the batch axis set to `batch_dim` (a name makes it dynamic)."""
    shape = list(info.shape) if info.shape is not None else None
    if shape:
        shape[0] = batch_dim
    return helper.make_tensor_value_info(info.name, info.elem_type, shape)


def reads_float16_weights(graph: onnx.GraphProto) -> bool:
    """Whether an operation other than a Cast reads a float16 initializer or Constant of `graph`: a half-precision
    model, which ONNX Runtime's CPU provider computes in float16 as it is."""
    half = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    half |= {n.output[0] for n in graph.node if n.op_type == "Constant" and
             any(a.t.data_type == onnx.TensorProto.FLOAT16 for a in n.attribute if a.name == "value")}
    return any(n.op_type not in ("Cast", "Constant") and half.intersection(n.input) for n in graph.node)


def constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of tensor `name` when it is an initializer or a Constant, through Identity nodes; else None."""
    values = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    while name not in values:
        node = producers.get(name)
        if node is None or node.op_type not in ("Identity", "Constant"):
            return None
        if node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].name == "value" else None
        name = node.input[0]
    return numpy_helper.to_array(values[name])
