"""A fused model as a model repository that Triton Inference Server and OpenVINO Model Server load as is:

    repo/
      config.json                 OpenVINO Model Server: the model list (mount repo/ at /models)
      NAME/config.pbtxt           Triton: ONNX Runtime backend (an IR: OpenVINO backend), inputs, outputs,
                                  dynamic batching
      NAME/1/model.onnx           the fused model (version 1); a fused IR: model.xml and model.bin

Triton's dims leave out the batch axis (``max_batch_size`` > 0); a per-image scalar output (N,), such as
``saliency_class``, is declared ``dims: [1]`` reshaped to ``[]``, as Triton requires.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx

from ..errors import CamInferError

TRITON_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                onnx.TensorProto.DOUBLE: "TYPE_FP64", onnx.TensorProto.INT64: "TYPE_INT64",
                onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.UINT8: "TYPE_UINT8",
                onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.BOOL: "TYPE_BOOL"}


def write_repository(model, folder: "str | os.PathLike", name: str, *, max_batch: int = 16,
                     queue_delay_us: int = 1000) -> Path:
    """Write `model` (ONNX, or an IR ``ov.Model``) into `folder` as model `name`, version 1; returns its folder."""
    if not name or "/" in name or name.startswith("."):
        raise CamInferError(f"a repository model name is one folder name, not {name!r}")
    root = Path(folder)
    version = root / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    if isinstance(model, onnx.ModelProto):
        onnx.save(model, version / "model.onnx")
    else:
        from .ir import save_ir
        save_ir(model, version / "model.xml", overwrite=True)
    (root / name / "config.pbtxt").write_text(triton_config(model, name, max_batch, queue_delay_us))
    (root / "config.json").write_text(json.dumps(
        {"model_config_list": [{"config": {"name": name, "base_path": f"/models/{name}"}}]}, indent=2) + "\n")
    return root / name


def triton_config(model, name: str, max_batch: int, queue_delay_us: int) -> str:
    inputs, outputs = tensors(model)
    runtime = 'platform: "onnxruntime_onnx"' if isinstance(model, onnx.ModelProto) else 'backend: "openvino"'
    return "\n".join([
        f'name: "{name}"', runtime, f"max_batch_size: {max_batch}",
        "input [", ",\n".join(map(_tensor, inputs)), "]", "output [", ",\n".join(map(_tensor, outputs)), "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}", ""])


def tensors(model) -> tuple[list, list]:
    """The model's inputs and outputs as (name, ONNX element type, dims with -1 for any)."""
    if isinstance(model, onnx.ModelProto):
        def row(value):
            tensor = value.type.tensor_type
            return value.name, tensor.elem_type, [d.dim_value if d.dim_value > 0 else -1 for d in tensor.shape.dim]
        initializers = {i.name for i in model.graph.initializer}
        return [row(v) for v in model.graph.input if v.name not in initializers], [row(v) for v in model.graph.output]

    def port(value):
        kind = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(value.get_element_type().to_dtype()))
        return value.get_any_name(), kind, [d.get_length() if d.is_static else -1 for d in value.get_partial_shape()]
    return [port(p) for p in model.inputs], [port(p) for p in model.outputs]


def _tensor(row: tuple) -> str:
    name, kind, dims = row
    if kind not in TRITON_TYPES:
        raise CamInferError(f"tensor {name!r} has an element type Triton does not take here")
    dims = dims[1:]
    shape = f"dims: [ {', '.join(map(str, dims))} ]" if dims else "dims: [ 1 ] reshape: { shape: [ ] }"
    return f'  {{ name: "{name}" data_type: {TRITON_TYPES[kind]} {shape} }}'
