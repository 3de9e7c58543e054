"""The Open Inference Protocol's (KServe v2) tensors over REST: a JSON request with tensors as flat data
lists, or the binary tensor data extension (the JSON header's length in ``Inference-Header-Content-Length``,
then each binary tensor's raw little-endian bytes in order), as `tritonclient.http` sends and reads them.

    request = parse_request(body, header_length)      # inputs by name, requested outputs, parameters
    body, headers = encode_response(model, "1", request.id, outputs, request.binary_outputs(names))
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

DATATYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
             "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
             "FP32": np.float32, "FP64": np.float64}
NAMES = {np.dtype(v): k for k, v in DATATYPES.items()}
HEADER_LENGTH = "Inference-Header-Content-Length"


class ProtocolError(Exception):
    """A request the server cannot serve; `status` is the HTTP status it answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[dict] | None                   # the outputs asked for (None: all of them)
    parameters: dict = field(default_factory=dict)

    def wanted(self, available: list[str], aliases: dict[str, str] | None = None) -> list[str]:
        """The names of the outputs to answer with: those asked for (an alias as asked), else all."""
        if self.outputs is None:
            return available
        names = [o.get("name") for o in self.outputs]
        unknown = [n for n in names if n not in available and n not in (aliases or {})]
        if unknown:
            raise ProtocolError(f"unknown output {unknown[0]!r}; outputs: {', '.join(available)}")
        return names

    def binary_outputs(self, names: list[str]) -> set[str]:
        everything = bool(self.parameters.get("binary_data_output", False))
        asked = {o["name"]: bool((o.get("parameters") or {}).get("binary_data", everything))
                 for o in (self.outputs or [])}
        return {n for n in names if asked.get(n, everything)}


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """The body of POST /v2/models/{name}/infer → its inputs as arrays of their shape and datatype."""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} must be an integer, not {header_length!r}") from None
        if not 0 <= length <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} is {length} but the body has {len(body)} bytes")
        header, binary = body[:length], memoryview(body)[length:]
    else:
        header, binary = body, memoryview(b"")
    try:
        request = json.loads(header)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the request is not valid JSON: {exc}") from None
    except RecursionError:                       # arrays nested deeper than the decoder's recursion limit
        raise ProtocolError("the request's JSON is nested too deeply") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise ProtocolError("an inference request is a JSON object with a non-empty 'inputs' list")
    inputs, offset = {}, 0
    for entry in request["inputs"]:
        array, used = _input_tensor(entry, binary, offset)
        offset += used
        if entry["name"] in inputs:
            raise ProtocolError(f"input {entry['name']!r} is given twice")
        inputs[entry["name"]] = array
    if offset != len(binary):
        raise ProtocolError(f"the binary data has {len(binary)} bytes; the inputs use {offset}")
    outputs = request.get("outputs")
    if outputs is not None and (not isinstance(outputs, list) or not all(isinstance(o, dict) and "name" in o
                                                                         for o in outputs)):
        raise ProtocolError("'outputs' must be a list of objects with a 'name'")
    for o in outputs or []:
        _parameters_of(o, f"output {o['name']!r}")
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError("'parameters' must be a JSON object")
    return InferRequest(request.get("id"), inputs, outputs, parameters)


def _input_tensor(entry, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ProtocolError("every input needs a 'name'")
    name, shape, datatype = entry["name"], entry.get("shape"), entry.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers, not {shape!r}")
    if datatype not in DATATYPES:
        raise ProtocolError(f"input {name!r}: datatype {datatype!r} is not supported "
                            f"({', '.join(DATATYPES)})")
    dtype, count = np.dtype(DATATYPES[datatype]), math.prod(shape)    # Python's integers: no overflow to a match
    size = _parameters_of(entry, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int):
            raise ProtocolError(f"input {name!r}: 'binary_data_size' must be an integer, not {json.dumps(size)}")
        if size != count * dtype.itemsize or offset + size > len(binary):
            raise ProtocolError(f"input {name!r}: {size} binary bytes for shape {shape} of {datatype} "
                                f"({count * dtype.itemsize} expected, {len(binary) - offset} left)")
        array = np.frombuffer(binary[offset:offset + size], dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
        return _shaped(array, shape, name), size
    if "data" not in entry:
        raise ProtocolError(f"input {name!r} has neither 'data' nor binary data")
    try:
        array = np.asarray(entry["data"], dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise ProtocolError(f"input {name!r}: its data are not {datatype} numbers") from None
    if array.size != count:
        raise ProtocolError(f"input {name!r}: {array.size} values for shape {shape} ({count} expected)")
    return _shaped(array, shape, name), 0


def _shaped(array: np.ndarray, shape: list, name: str) -> np.ndarray:
    """`array` in `shape`; a shape of no values whose dimensions overflow NumPy's sizes is refused (400)."""
    try:
        return array.reshape(shape)
    except ValueError:
        raise ProtocolError(f"input {name!r}: shape {shape} is too large") from None


def _parameters_of(entry: dict, what: str) -> dict:
    """An input's or output's 'parameters': a JSON object, or absent."""
    parameters = entry.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise ProtocolError(f"{what}: 'parameters' must be a JSON object, not {json.dumps(parameters)}")
    return parameters


def encode_response(model: str, version: str, request_id, outputs: dict[str, np.ndarray],
                    binary: set[str], parameters: dict | None = None) -> tuple[bytes, dict]:
    """The response body and headers: each output as JSON data, or binary after the JSON header; `parameters`
    (the precision the model ran at) in the response's own parameters."""
    described, blobs = [], []
    for name, array in outputs.items():
        array = np.ascontiguousarray(array)
        entry = {"name": name, "datatype": NAMES[array.dtype], "shape": list(array.shape)}
        if name in binary:
            data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = array.ravel().tolist()
        described.append(entry)
    body = {"model_name": model, "model_version": version, "outputs": described}
    if parameters:
        body["parameters"] = parameters
    if request_id is not None:
        body["id"] = request_id
    header = json.dumps(body, separators=(",", ":")).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def datatype(dtype) -> str:
    return NAMES[np.dtype(dtype)]
