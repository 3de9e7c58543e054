"""Cut an ONNX classifier at a target layer into ``features.onnx`` and ``head.onnx``.

``head(features(x)) == model(x)``: checked on random images for batch 1 and 3 before anything is
written. Both graphs get a dynamic batch axis, also when the source hard-codes batch 1 (Reshape
targets that copy the batch are rewritten); when that does not verify, the graphs keep the fixed
batch and the backends run them image by image (``"batch": "fixed"`` in the manifest).
Float16/bfloat16/float64 models get Cast nodes at the graph boundary, so both graphs take and
return float32 while computing in the model's own precision.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import __version__
from ..errors import CamInferError
from ..images import Preprocessing
from .graph import Graph, TensorInfo, load_onnx, make_tensor_value_info
from .layers import TargetLayer, find_target_layer
from .manifest import FORMAT, FORMAT_VERSION, Bundle, sha256_of, write_manifest

BOUNDARY_FLOATS = (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
PASS_THROUGH = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast", "Dropout"}
VERIFY_BATCHES = (1, 3)


def split_onnx(model: "str | os.PathLike | onnx.ModelProto", layer: str = "auto",
               out: "str | os.PathLike | None" = None, *, input_size: tuple[int, int] | None = None,
               preprocessing: "Preprocessing | dict | None" = None, labels: "list[str] | str | None" = None,
               overwrite: bool = False, provenance: dict | None = None) -> Bundle:
    """Split `model` at `layer` and write a verified bundle to `out`; return the loaded `Bundle`.

    layer: ``auto`` (last 4-D activation above 1×1 that is a cut point), an ONNX tensor name, a
    node name, or a torch module path (``layer4``, ``features.29``).
    preprocessing: a `Preprocessing` or a dict of its fields overriding the ImageNet defaults.
    labels: class names, or the path of a text file with one per line.
    """
    if out is None:
        raise CamInferError("give an output folder for the bundle (--out)")
    source = None
    if isinstance(model, (str, os.PathLike)):
        source = Path(model)
        model = load_onnx(source)
    graph = Graph.from_model(model, input_size)
    _check_image_input(graph)
    target = find_target_layer(graph, layer)
    prep = _preprocessing(graph, preprocessing, input_size)
    features, head, batch_mode, verification = _split_verified(graph, target, prep)
    num_classes = verification.pop("num_classes")
    labels = _labels(labels, num_classes)
    manifest = _manifest(graph, target, prep, features, head, batch_mode, verification, num_classes, labels,
                         source, provenance or {})
    return _write_bundle(Path(out), features, head, manifest, overwrite)


# --- checks and options ---------------------------------------------------------------------

def _check_image_input(graph: Graph) -> None:
    info = graph.info(graph.image_input.name)
    if info.rank != 4 or info.shape[1] != 3:
        shape = None if info.shape is None else tuple(info.shape)
        raise CamInferError(f"the model input '{graph.image_input.name}' has shape {shape}; cam-infer needs an "
                            "NCHW image input with 3 channels")
    if info.elem_type not in (TensorProto.FLOAT, *BOUNDARY_FLOATS):
        raise CamInferError(f"the model input '{graph.image_input.name}' is not a float tensor; "
                            "quantised or integer inputs are not supported")


def _preprocessing(graph: Graph, prep, input_size) -> Preprocessing:
    size = tuple(graph.info(graph.image_input.name).shape[2:])
    if isinstance(prep, Preprocessing):
        if tuple(prep.input_size) != size:
            raise CamInferError(f"preprocessing input size {prep.input_size} differs from the model's {size}")
        return prep
    fields = dict(prep or {})
    fields["input_size"] = size
    return Preprocessing(**fields)


def _labels(labels, num_classes: int) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        path = Path(labels)
        if not path.is_file():
            raise CamInferError(f"labels file '{path}' does not exist")
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    labels = [str(label) for label in labels]
    if len(labels) != num_classes:
        raise CamInferError(f"{len(labels)} labels given, but the model has {num_classes} classes")
    return labels


# --- building the two graphs ---------------------------------------------------------------

def _split_verified(graph: Graph, target: TargetLayer, prep: Preprocessing):
    """Dynamic batch first; if that does not reproduce the model, the fixed batch of the source."""
    attempts = ["dynamic"] if graph.fixed_batch is None else ["dynamic", "fixed"]
    failure = None
    for batch_mode in attempts:
        features, head = _extract(graph, target.tensor, batch_mode)
        try:
            verification = _verify(graph.model, features, head, prep, batch_mode)
        except _Mismatch as exc:
            failure = exc
            continue
        return features, head, batch_mode, verification
    raise CamInferError(f"splitting at '{target.requested}' does not reproduce the model: {failure}")


def _extract(graph: Graph, tensor: str, batch_mode: str) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    batch_dim: str | int = "N" if batch_mode == "dynamic" else graph.fixed_batch
    scores = graph.scores_output.name
    image = graph.info(graph.image_input.name)
    activation = graph.info(tensor)
    scores_info = graph.info(scores)
    if scores_info.elem_type == TensorProto.UNDEFINED:
        scores_info = TensorInfo(scores, graph.scores_output.type.tensor_type.elem_type, None)
    features = _subgraph(graph, graph.nodes_computing([tensor], stop=set()), "features",
                         [make_tensor_value_info(image, batch_dim)], [make_tensor_value_info(activation, batch_dim)])
    head = _subgraph(graph, graph.nodes_computing([scores], stop={tensor}), "head",
                     [make_tensor_value_info(activation, batch_dim)], [make_tensor_value_info(scores_info, batch_dim)])
    for part in (features, head):
        if batch_mode == "dynamic" and graph.fixed_batch is not None:
            _release_batch(part, graph.fixed_batch)
        _float32_boundary(part)
    return features, head


def _subgraph(graph: Graph, node_ids: list[int], name: str, inputs, outputs) -> onnx.ModelProto:
    used = {i for idx in node_ids for i in graph.node_inputs[idx]}
    initializers = [t for n, t in graph.initializers.items() if n in used]
    body = helper.make_graph([graph.nodes[i] for i in node_ids], name, inputs, outputs, initializer=initializers)
    model = helper.make_model(body, opset_imports=list(graph.model.opset_import),
                              ir_version=max(graph.model.ir_version, 4), producer_name="cam-infer",
                              producer_version=__version__)
    model.functions.extend(graph.model.functions)
    return model


def _constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


def _release_batch(model: onnx.ModelProto, fixed: int) -> int:
    """Make Reshape targets that hard-code the batch copy it from their input (0 in ONNX Reshape)."""
    g = model.graph
    changed = 0
    for node in g.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        if any(a.name == "allowzero" and a.i == 1 for a in node.attribute):
            continue
        shape = _constant_value(g, node.input[1])
        if shape is None or shape.ndim != 1 or shape.size == 0 or shape[0] != fixed:
            continue
        released = shape.astype(np.int64).copy()
        released[0] = 0
        name = f"{node.input[1]}__any_batch_{changed}"
        g.initializer.append(numpy_helper.from_array(released, name))
        node.input[1] = name
        changed += 1
    return changed


def _rename_uses(g: onnx.GraphProto, old: str, new: str, *, outputs: bool) -> None:
    for node in g.node:
        names = node.output if outputs else node.input
        for i, n in enumerate(names):
            if n == old:
                names[i] = new
        if outputs:  # the tensor's readers follow its new name
            for i, n in enumerate(node.input):
                if n == old:
                    node.input[i] = new


def _float32_boundary(model: onnx.ModelProto) -> None:
    g = model.graph
    for vi in g.input:
        dtype = vi.type.tensor_type.elem_type
        if dtype in BOUNDARY_FLOATS:
            inner = f"{vi.name}__{TensorProto.DataType.Name(dtype).lower()}"
            _rename_uses(g, vi.name, inner, outputs=False)
            g.node.insert(0, helper.make_node("Cast", [vi.name], [inner], to=dtype, name=f"{inner}_cast"))
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    for vi in g.output:
        dtype = vi.type.tensor_type.elem_type
        if dtype in BOUNDARY_FLOATS:
            inner = f"{vi.name}__{TensorProto.DataType.Name(dtype).lower()}"
            _rename_uses(g, vi.name, inner, outputs=True)
            g.node.append(helper.make_node("Cast", [inner], [vi.name], to=TensorProto.FLOAT, name=f"{inner}_cast"))
            vi.type.tensor_type.elem_type = TensorProto.FLOAT


# --- verification -----------------------------------------------------------------------------

class _Mismatch(Exception):
    pass


def random_images(prep: Preprocessing, n: int, seed: int = 0) -> np.ndarray:
    """`n` random RGB images through the bundle's normalisation: inputs in the model's own range."""
    rng = np.random.default_rng(seed)
    h, w = prep.input_size
    pixels = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    return np.stack([prep.normalise(p) for p in pixels])


def _session(model: onnx.ModelProto):
    import onnxruntime as ort
    ort.set_default_logger_severity(4)  # a failing verification run is reported by us, not logged
    options = ort.SessionOptions()
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run(session, x: np.ndarray, per_image: bool) -> np.ndarray:
    inp = session.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float64 if inp.type == "tensor(double)" else np.float32
    if per_image:
        return np.concatenate([_run(session, x[i:i + 1], False) for i in range(len(x))])
    out = session.run([session.get_outputs()[0].name], {inp.name: x.astype(dtype)})[0]
    return out.astype(np.float32).reshape(len(x), -1)


def _verify(source: onnx.ModelProto, features: onnx.ModelProto, head: onnx.ModelProto,
            prep: Preprocessing, batch_mode: str) -> dict:
    import onnxruntime as ort
    try:
        full = _session(source)
    except Exception as exc:
        raise CamInferError(f"ONNX Runtime cannot run this model ({str(exc).splitlines()[0][:200]})") from None
    try:
        feat, hd = _session(features), _session(head)
    except Exception as exc:
        raise _Mismatch(f"ONNX Runtime cannot load the split graphs ({str(exc).splitlines()[0][:200]})") from None
    source_fixed = _input_batch(source) is not None
    compute_dtype = _input_dtype(source)
    rtol = 1e-4 if compute_dtype == "float32" else 2e-2
    results = {}
    worst = 0.0
    num_classes = None
    for n in VERIFY_BATCHES:
        x = random_images(prep, n, seed=n)
        try:
            expected = _run(full, x, per_image=bool(source_fixed))
            split = _run(hd, _run_raw(feat, x, batch_mode == "fixed"), per_image=batch_mode == "fixed")
        except Exception as exc:
            raise _Mismatch(f"batch {n} fails to run ({str(exc).splitlines()[0][:200]})") from None
        diff = float(np.max(np.abs(split - expected)))
        tol = rtol * max(1.0, float(np.max(np.abs(expected))))
        if not diff <= tol:
            raise _Mismatch(f"batch {n}: max |head(features(x)) - model(x)| = {diff:.3g} > {tol:.3g}")
        worst = max(worst, diff)
        results[str(n)] = diff
        num_classes = expected.shape[1]
    return {"passed": True, "batch_sizes": list(VERIFY_BATCHES), "max_abs_diff": worst,
            "max_abs_diff_per_batch": results, "relative_tolerance": rtol, "runtime": f"onnxruntime {ort.__version__}",
            "inputs": "random uint8 images through the bundle preprocessing", "num_classes": num_classes}


def _run_raw(session, x: np.ndarray, per_image: bool) -> np.ndarray:
    inp = session.get_inputs()[0]
    if per_image:
        return np.concatenate([_run_raw(session, x[i:i + 1], False) for i in range(len(x))])
    return session.run(None, {inp.name: x.astype(np.float32)})[0]


def _input_batch(model: onnx.ModelProto) -> int | None:
    init = {t.name for t in model.graph.initializer}
    image = next(i for i in model.graph.input if i.name not in init)
    dims = image.type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else None


def _input_dtype(model: onnx.ModelProto) -> str:
    init = {t.name for t in model.graph.initializer}
    image = next(i for i in model.graph.input if i.name not in init)
    return helper.tensor_dtype_to_np_dtype(image.type.tensor_type.elem_type).name


# --- manifest and files -------------------------------------------------------------------

def _output_kind(graph: Graph) -> str:
    name = graph.scores_output.name
    while name in graph.producer:
        node = graph.nodes[graph.producer[name]]
        if node.op_type == "Softmax":
            return "probabilities"
        if node.op_type not in PASS_THROUGH or not node.input:
            return "logits"
        name = node.input[0]
    return "logits"


def _bytes_per_item(graph: Graph, names: list[str]) -> int:
    """Input + output + three times the largest tensor in between, for one image."""
    sizes = []
    for name in names:
        info = graph.info(name)
        if info.shape and all(d for d in info.shape[1:]):
            sizes.append(int(np.prod(info.shape[1:])) * 4)
    return int(sum(sorted(sizes)[-1:]) * 3 + (sizes[0] if sizes else 0)) or 1 << 20


def _manifest(graph, target, prep, features, head, batch_mode, verification, num_classes, labels, source,
              provenance) -> dict:
    activation = graph.info(target.tensor)
    feature_tensors = [graph.image_input.name] + [o for n in features.graph.node for o in n.output]
    head_tensors = [target.tensor] + [o for n in head.graph.node for o in n.output]
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "input": {"name": graph.image_input.name, "shape": [None, *graph.info(graph.image_input.name).shape[1:]],
                  "layout": "NCHW", "dtype": "float32", "model_dtype": _input_dtype(graph.model)},
        "preprocessing": prep.to_dict(),
        "target_layer": {"requested": target.requested, "matched_by": target.matched_by, "module": target.module,
                         "tensor": target.tensor},
        "activation": {"name": target.tensor, "shape": list(activation.shape[1:]), "dtype": "float32"},
        "output": {"name": graph.scores_output.name, "kind": _output_kind(graph), "num_classes": int(num_classes)},
        "labels": labels,
        "batch": batch_mode,
        "graphs": {
            "features": {"file": "features.onnx", "ops": dict(Counter(n.op_type for n in features.graph.node))},
            "head": {"file": "head.onnx", "ops": dict(Counter(n.op_type for n in head.graph.node))},
        },
        "memory": {"features_bytes_per_item": _bytes_per_item(graph, feature_tensors),
                   "head_bytes_per_item": _bytes_per_item(graph, head_tensors)},
        "verification": verification,
        "provenance": {"source": source.name if source else None,
                       "source_sha256": sha256_of(source) if source else None,
                       "opset": {o.domain or "ai.onnx": o.version for o in graph.model.opset_import},
                       "producer": f"cam-infer {__version__}", "onnx": onnx.__version__, "created": created,
                       **provenance},
    }


def _write_bundle(out: Path, features: onnx.ModelProto, head: onnx.ModelProto, manifest: dict,
                  overwrite: bool) -> Bundle:
    if out.exists() and not out.is_dir():
        raise CamInferError(f"output '{out}' exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise CamInferError(f"output folder '{out}' is not empty; choose another or pass --force to replace "
                                "the bundle in it")
        if not (out / "bundle.json").is_file():
            raise CamInferError(f"output folder '{out}' holds files that are not a bundle; refusing to replace them")
    for part in (features, head):
        if part.ByteSize() > 2**31 - 1:
            raise CamInferError("graphs over 2 GB are not supported yet; split at a later layer")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        for role, part in (("features", features), ("head", head)):
            file = staging / manifest["graphs"][role]["file"]
            onnx.save(part, file)
            manifest["graphs"][role]["sha256"] = sha256_of(file)
        (out / "bundle.json").unlink(missing_ok=True)
        for file in staging.iterdir():
            os.replace(file, out / file.name)
        write_manifest(out, manifest)  # last: a half-written folder is never a loadable bundle
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Bundle.load(out)
