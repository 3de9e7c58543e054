"""Loading a bundle checks its format version and the hashes of both graphs."""

from __future__ import annotations

import json
import shutil

import pytest

from cam_infer import Bundle, CamInferError


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle.path, tmp_path / "copy")


def test_bundle_with_missing_graph_is_an_error(bundle_copy):
    (bundle_copy / "head.onnx").unlink()
    with pytest.raises(CamInferError, match="missing its head graph"):
        Bundle.load(bundle_copy)


def test_bundle_with_modified_graph_is_an_error(bundle_copy):
    data = bytearray((bundle_copy / "features.onnx").read_bytes())
    data[-1] ^= 0xFF
    (bundle_copy / "features.onnx").write_bytes(bytes(data))
    with pytest.raises(CamInferError, match="features graph .* was modified"):
        Bundle.load(bundle_copy)


def test_bundle_from_a_newer_format_is_an_error(bundle_copy):
    manifest = json.loads((bundle_copy / "bundle.json").read_text())
    manifest["format_version"] = 99
    (bundle_copy / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(CamInferError, match="format version 99"):
        Bundle.load(bundle_copy)


@pytest.mark.parametrize("content, message", [(None, "has no bundle.json"), ("{not json", "not valid JSON"),
                                              ('{"a": 1}', "not a cam-infer bundle manifest")])
def test_folder_that_is_not_a_bundle_is_an_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / "bundle.json").write_text(content)
    with pytest.raises(CamInferError, match=message):
        Bundle.load(tmp_path)


def test_missing_bundle_folder_is_an_error(tmp_path):
    with pytest.raises(CamInferError, match="does not exist"):
        Bundle.load(tmp_path / "nowhere")
