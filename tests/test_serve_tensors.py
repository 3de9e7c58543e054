"""The server's reading of a request on its own: a malformed KServe v2 request (`serve.tensors.parse_request`) is a
`ProtocolError` (a 400 with one line), never another exception (a 500); /explain's query values are read as the
command line reads them."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cam_infer.serve.app import _query_value
from cam_infer.serve.models import _classes
from cam_infer.serve.tensors import ProtocolError, parse_request


def request(entry: dict, **rest) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", **entry}], **rest}).encode()


NOT_AN_INTEGER = "'binary_data_size' must be an integer"


def binary(entry: dict, data: bytes) -> tuple[bytes, str]:
    header = request(entry)
    return header + data, str(len(header))


@pytest.mark.parametrize("body, length, fragment", [
    (request({"shape": [2**62, 4], "data": []}), None, "18446744073709551616 expected"),   # 2**64 values: 0 in int64
    (request({"shape": [2**32, 2**32, 0], "data": []}), None, "too large"),
    (*binary({"shape": [2**62, 4], "parameters": {"binary_data_size": 0}}, b""), "73786976294838206464 expected"),
    (*binary({"shape": [1], "parameters": {"binary_data_size": 4.0}}, b"\0" * 4), NOT_AN_INTEGER),
    (*binary({"shape": [1], "parameters": {"binary_data_size": "4"}}, b"\0" * 4), NOT_AN_INTEGER),
    (request({"shape": [1], "data": [0.0], "parameters": [1]}), None, "'parameters' must be a JSON object"),
    (request({"shape": [1], "data": [0.0]}, outputs=[{"name": "scores", "parameters": [1]}]), None,
     "output 'scores': 'parameters' must be a JSON object"),
    (b"[" * 100000 + b"]" * 100000, None, "nested too deeply"),
])
def test_a_malformed_request_is_a_protocol_error(body, length, fragment):
    with pytest.raises(ProtocolError) as caught:
        parse_request(body, length)
    assert fragment in str(caught.value) and caught.value.status == 400


def test_a_well_formed_request_still_reads_its_tensors():
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    body, length = binary({"shape": [1, 2, 3], "parameters": {"binary_data_size": x.nbytes}}, x.tobytes())
    parsed = parse_request(body, length)
    np.testing.assert_array_equal(parsed.inputs["input"], x)
    parsed = parse_request(request({"shape": [1, 2, 3], "data": x.ravel().tolist()},
                                   outputs=[{"name": "scores", "parameters": {"binary_data": True}}]), None)
    np.testing.assert_array_equal(parsed.inputs["input"], x)
    assert parsed.binary_outputs(["scores"]) == {"scores"}


def test_explains_class_query_reads_a_number_as_the_command_line_does():
    labels = ["0", "180"]                                          # PP-OCR's text direction classifier
    assert _classes(_query_value("180"), 1, 2, labels) == [1]      # cam-infer explain --target 180: class 1
    assert _classes(_query_value("1"), 1, 2, labels) == [1]
    assert _classes(_query_value("0"), 1, 2, labels) == [0]
    with pytest.raises(ProtocolError, match="out of range"):
        _classes(_query_value("7"), 1, 2, labels)
    assert _query_value("[40, 30, 200, 180]") == [40, 30, 200, 180] and _query_value("all") == "all"
    assert _query_value("[1, 180]") == [1, 180] and _query_value("true") is True


@pytest.mark.parametrize("given, shown", [("abc", "not abc"), ("[1, 2, 3]", "not [1, 2, 3]"),
                                          ([True, 2], "not [true, 2]")])
def test_a_region_that_is_neither_a_box_nor_a_pixel_is_shown_as_given(given, shown):
    from cam_infer.serve.segmenter import region_of
    with pytest.raises(ProtocolError, match=r"'region' is a box \[x1, y1, x2, y2\] or a pixel \[x, y\], "
                                            + re.escape(shown)):
        region_of(given)
