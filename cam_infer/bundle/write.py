"""Writing a bundle: the manifest (everything `info` shows and the backends read) and the files, hashed,
staged and moved into place with the manifest last, so a half-written folder is never a loadable bundle.
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
from onnx import numpy_helper

from ..errors import CamInferError
from ..version import __version__
from .anatomy import score_output
from .cut import activation_name
from .graph import INTEGER_TYPES, Graph, checker_note
from .layers import TargetLayer
from .manifest import FORMAT, FORMAT_VERSION, Bundle, sha256_of, write_manifest
from .verify import openvino_runs


def _bytes_per_item(graph: Graph, names: list[str]) -> int:
    """Input + output + three times the largest tensor in between, for one image."""
    sizes = []
    for name in names:
        info = graph.info(name)
        if info.shape and all(d for d in info.shape[1:]):
            sizes.append(int(np.prod(info.shape[1:])) * 4)
    return int(sum(sorted(sizes)[-1:]) * 3 + (sizes[0] if sizes else 0)) or 1 << 20


def _nchw_shape(graph: Graph, tensor: str, layout: str) -> list:
    shape = list(graph.info(tensor).shape[1:])
    return [shape[2], shape[0], shape[1]] if layout == "NHWC" else shape


def _quantization_record(graph: Graph, target: TargetLayer) -> dict | None:
    quant = target.quantization
    if quant is None:
        return None
    scale = numpy_helper.to_array(graph.initializers[quant.scale]) if quant.scale in graph.initializers else None
    zero = (numpy_helper.to_array(graph.initializers[quant.zero_point])
            if quant.zero_point in graph.initializers else None)
    return {"tensor": quant.tensor, "dtype": INTEGER_TYPES[quant.elem_type], "axis": quant.axis,
            "scale": None if scale is None else np.asarray(scale, np.float64).round(12).tolist(),
            "zero_point": None if zero is None else np.asarray(zero).astype(int).tolist()}


def manifest_for(graph, target, prep, features, head, batch_mode, verification, num_classes, labels, source,
              provenance, normalisation: dict) -> dict:
    """`normalisation`: where the preprocessing's mean, std and scale come from (`split.normalisation_record`)."""
    spec = graph.input_spec
    scores = score_output(graph)
    feature_tensors = [graph.image_input.name] + [o for n in features.graph.node for o in n.output]
    head_tensors = [target.tensor] + [o for n in head.graph.node for o in n.output]
    note = checker_note(graph.model)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "input": {"name": features.graph.input[0].name, "shape": [None, spec.channels, *prep.input_size],
                  "layout": "NCHW", "dtype": "float32", "model_dtype": spec.dtype, "model_layout": spec.layout},
        "preprocessing": prep.to_dict(),
        "normalisation": normalisation,
        "target_layer": {"requested": target.requested, "matched_by": target.matched_by, "module": target.module,
                         "tensor": target.tensor, "layout": target.layout},
        "activation": {"name": activation_name(target), "shape": _nchw_shape(graph, target.tensor, target.layout)
                       if target.tokens is None else list(target.tokens.grid_shape),
                       "dtype": "float32", "quantization": _quantization_record(graph, target),
                       **({"tokens": tokens_record(graph, target)} if target.tokens else {})},
        "output": {"name": scores.tensor, "kind": scores.kind, "num_classes": int(num_classes),
                   "model_output": scores.source, "left_out": list(scores.trimmed), "model_output_step": scores.step,
                   "logits_step": logits_step_of(scores)},
        "labels": labels,
        "batch": batch_mode,
        **({"fixed_batch": graph.fixed_batch} if batch_mode == "fixed" else {}),
        "graphs": graphs_record(features, head),
        "runtimes": runtimes_record(features, head),
        "memory": {"features_bytes_per_item": _bytes_per_item(graph, feature_tensors),
                   "head_bytes_per_item": _bytes_per_item(graph, head_tensors)},
        "verification": verification,
        "provenance": provenance_record(source, graph.model, **({"checker": note} if note else {}), **provenance),
    }


def logits_step_of(scores) -> float:
    """One quantization step of the logits the head returns: those before a left-out quantized Softmax, or the
    output's own where it is logits; 0 for probabilities or float logits."""
    if scores.trimmed:
        return scores.tensor_step
    return scores.step if scores.kind == "logits" else 0.0


def tokens_record(graph: Graph, target: TargetLayer) -> dict:
    """How the cut's tokens are a grid, and the attention probabilities (Softmax outputs) of every block, in order,
    when each is over all the tokens of an image, (1, H, T, T) at batch 1 (`whole_image_attention`)."""
    from .tokens import token_stream, whole_image_attention
    count = target.tokens.prefix + target.tokens.grid[0] * target.tokens.grid[1]
    shapes = {a: graph.info(a).shape for a in whole_image_attention(token_stream(graph), target.tokens)}
    attention = [a for a, shape in shapes.items() if shape and len(shape) == 4 and shape[0] in (1, None)
                 and tuple(shape[2:]) == (count, count)]
    return {**target.tokens.to_dict(), "attention": attention,
            "attention_shapes": [list(shapes[a][1:]) for a in attention]}


def graphs_record(features: onnx.ModelProto, head: onnx.ModelProto) -> dict:
    """The manifest's `graphs`: each graph's file, its op counts and whether it computes in float16 (hashes are
    added when written)."""
    from .graph import reads_float16_weights
    return {role: {"file": f"{role}.onnx", "ops": dict(Counter(n.op_type for n in part.graph.node)),
                   "float16_weights": reads_float16_weights(part.graph)}
            for role, part in (("features", features), ("head", head))}


def runtimes_record(features: onnx.ModelProto, head: onnx.ModelProto) -> dict:
    """The manifest's `runtimes`: ONNX Runtime ran the verification; OpenVINO compiles both graphs, or why not."""
    openvino = openvino_runs(features, head)
    return {"onnxruntime": {"runs": True},
            "openvino": {"runs": openvino is None, **({"why_not": openvino} if openvino else {})}}


def provenance_record(source: Path | None, model: onnx.ModelProto, **extra) -> dict:
    """The manifest's `provenance`: the source file and its hash, its opsets, who made the bundle and when."""
    return {"source": source.name if source else None, "source_sha256": sha256_of(source) if source else None,
            "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
            "producer": f"cam-infer {__version__}", "onnx": onnx.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(), **extra}


def write_onnx_bundle(out: Path, features: onnx.ModelProto, head: onnx.ModelProto, manifest: dict,
                  overwrite: bool, extra: dict[str, onnx.ModelProto] | None = None) -> Bundle:
    """`extra`: further graphs by role (a detector's cropped branches), each listed in manifest["graphs"]."""
    for part in (features, head):
        if part.ByteSize() > 2**31 - 1:
            raise CamInferError("graphs over 2 GB are not supported yet; split at a later layer")
    parts = {"features": features, "head": head, **(extra or {})}
    return write_bundle(out, manifest, lambda role, file: onnx.save(parts[role], file), overwrite)


def write_bundle(out: Path, manifest: dict, save, overwrite: bool) -> Bundle:
    """Write every graph of manifest["graphs"] with ``save(role, path)`` (an OpenVINO IR also writes its ``.bin`` beside the
    ``.xml``), hash every file, then the manifest, last: a half-written folder is never a loadable bundle."""
    if out.exists() and not out.is_dir():
        raise CamInferError(f"output '{out}' exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise CamInferError(f"output folder '{out}' is not empty; choose another or pass --force to replace "
                                "the bundle in it")
        if not (out / "bundle.json").is_file():
            raise CamInferError(f"output folder '{out}' holds files that are not a bundle; refusing to replace them")
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    except OSError as exc:
        raise CamInferError(f"cannot write the bundle in '{out}': {exc.strerror or exc}") from None
    try:
        for role, entry in manifest["graphs"].items():
            save(role, staging / entry["file"])
            entry["sha256"] = sha256_of(staging / entry["file"])
            if entry.get("weights"):
                entry["weights_sha256"] = sha256_of(staging / entry["weights"])
        (out / "bundle.json").unlink(missing_ok=True)
        for file in staging.iterdir():
            os.replace(file, out / file.name)
        write_manifest(out, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Bundle.load(out)
