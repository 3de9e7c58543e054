"""A fused model as a model repository that Triton Inference Server and OpenVINO Model Server load as is:

    repo/
      config.json                 OpenVINO Model Server: the model list (mount repo/ at /models)
      NAME/config.pbtxt           Triton: ONNX Runtime backend, inputs, outputs, dynamic batching
      NAME/1/model.onnx           the fused model (version 1)

Triton's dims leave out the batch axis (``max_batch_size`` > 0); a per-image scalar output (N,), such as
``saliency_class``, is declared ``dims: [1]`` reshaped to ``[]``, as Triton requires.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx

from ..errors import CamInferError

TRITON_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                onnx.TensorProto.DOUBLE: "TYPE_FP64", onnx.TensorProto.INT64: "TYPE_INT64",
                onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.UINT8: "TYPE_UINT8",
                onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.BOOL: "TYPE_BOOL"}


def write_repository(model: onnx.ModelProto, folder: "str | os.PathLike", name: str, *, max_batch: int = 16,
                     queue_delay_us: int = 1000) -> Path:
    """Write `model` into `folder` as model `name`, version 1; returns the model's folder."""
    if not name or "/" in name or name.startswith("."):
        raise CamInferError(f"a repository model name is one folder name, not {name!r}")
    root = Path(folder)
    version = root / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    onnx.save(model, version / "model.onnx")
    (root / name / "config.pbtxt").write_text(triton_config(model, name, max_batch, queue_delay_us))
    (root / "config.json").write_text(json.dumps(
        {"model_config_list": [{"config": {"name": name, "base_path": f"/models/{name}"}}]}, indent=2) + "\n")
    return root / name


def triton_config(model: onnx.ModelProto, name: str, max_batch: int, queue_delay_us: int) -> str:
    inputs = [_tensor(v) for v in model.graph.input if v.name not in {i.name for i in model.graph.initializer}]
    outputs = [_tensor(v) for v in model.graph.output]
    return "\n".join([
        f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch}",
        "input [", ",\n".join(inputs), "]", "output [", ",\n".join(outputs), "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}", ""])


def _tensor(value: onnx.ValueInfoProto) -> str:
    kind = value.type.tensor_type.elem_type
    if kind not in TRITON_TYPES:
        raise CamInferError(f"tensor {value.name!r} has an element type Triton's ONNX backend does not take here")
    dims = [d.dim_value if d.dim_value > 0 else -1 for d in value.type.tensor_type.shape.dim][1:]
    shape = f"dims: [ {', '.join(map(str, dims))} ]" if dims else "dims: [ 1 ] reshape: { shape: [ ] }"
    return f'  {{ name: "{value.name}" data_type: {TRITON_TYPES[kind]} {shape} }}'
