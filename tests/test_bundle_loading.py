"""Loading a bundle checks its format version and the hashes of both graphs."""

from __future__ import annotations

import json
import shutil

import numpy as np
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


def _edited(folder, edit):
    manifest = json.loads((folder / "bundle.json").read_text())
    edit(manifest)
    (folder / "bundle.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(labels=m["labels"][:2]), "'labels' has 2 names for the model's 4 classes"),
    (lambda m: m.update(labels="abcd"), "'labels' must be a list of strings"),
    (lambda m: m.update(labels=[0, 1, 2, 3]), "'labels' must be a list of strings"),
    (lambda m: m["output"].update(num_classes=-1), "'output.num_classes' must be a positive integer, not -1"),
    (lambda m: m["output"].update(kind="weird"), "'output.kind' must be one of"),
    (lambda m: m["activation"].update(shape=[8, "x", 4]), "'activation.shape' must be a list of positive integers"),
    (lambda m: m["preprocessing"].update(scale="x"), "'preprocessing': scale must be a finite number, not 'x'"),
    (lambda m: m["preprocessing"].update(scale=float("nan")), "'preprocessing': scale must be a finite number"),
    (lambda m: m["preprocessing"].update(scale=0), "'preprocessing': scale must be non-zero"),
    (lambda m: m["preprocessing"].update(std=[1, "abc", 1]), "'preprocessing': std must be a finite number, not 'abc'"),
    (lambda m: m["preprocessing"].update(colour="rgb"), "'preprocessing': .*colour"),
    (lambda m: m.pop("preprocessing"), "'preprocessing' is missing"),
    (lambda m: m["input"].pop("shape"), "'input.shape' is missing"),
    (lambda m: m.pop("output"), "'output' is missing"),
    (lambda m: m.update(batch="sometimes"), "'batch' must be 'dynamic' or 'fixed'"),
    (lambda m: m["input"].update(shape=[None, 3, 128, 64]),
     r"'input.shape' \[None, 3, 128, 64\] does not match the preprocessing's 3 channels of 128×128 pixels"),
    (lambda m: m["preprocessing"].update(channels=1, mean=[0.5], std=[0.25]),
     "'input.shape' .* preprocessing's 1 channel of 128×128 pixels"),
    (lambda m: m["activation"].update(tokens={"shape": [0, 64]}),
     "'activation.tokens.shape' must be a list of positive integers"),
])
def test_an_edited_manifest_is_one_line_naming_the_field(tmp_path, edit, message):
    from cam_infer.tools.demo import embedded_bundle_path
    shapes = shutil.copytree(embedded_bundle_path(), tmp_path / "shapes")
    assert Bundle.load(shapes).num_classes == 4 and len(Bundle.load(shapes).labels) == 4
    with pytest.raises(CamInferError, match=f"bundle.json: {message}") as refused:
        Bundle.load(_edited(shapes, edit))
    said = str(refused.value)
    assert said.count("bundle.json") == 1 and said.endswith("; re-create the bundle with cam-infer split"), said


def test_an_activation_shape_the_graph_does_not_give_is_one_line(bundle_copy, tiny_bundle):
    from cam_infer import Explainer
    k, h, w = tiny_bundle.activation_shape
    bundle = _edited(bundle_copy, lambda m: m["activation"].update(shape=[k + 1, h, w]))
    x = np.zeros((1, *tiny_bundle.input_shape), np.float32)
    with pytest.raises(CamInferError, match=f"its graph gives {k * h * w} values of 'activation' per image, and "
                                            rf"bundle.json's activation shape \[{k + 1}, {h}, {w}\]"):
        Explainer(bundle, backend="onnxruntime").explain(x, "activation")


def test_a_token_shape_the_graph_does_not_give_names_the_tokens_field(tmp_path):
    from pathlib import Path

    from cam_infer import Explainer
    from cam_infer.bundle.split import split_onnx
    model = Path(__file__).parent / "data" / "transformers" / "vit_legacy.onnx"
    bundle = split_onnx(model, "auto", tmp_path / "vit")
    (t, d) = bundle.cut_shape
    _edited(bundle.path, lambda m: m["activation"]["tokens"].update(shape=[t + 1, d]))
    x = np.zeros((1, *bundle.input_shape), np.float32)
    with pytest.raises(CamInferError, match=f"its graph gives {t * d} values of 'activation.tokens' per image, and "
                                            rf"bundle.json's activation.tokens shape \[{t + 1}, {d}\]"):
        Explainer(bundle.path, backend="onnxruntime").explain(x, "activation")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_an_input_holding_nan_or_infinity_is_refused_naming_the_images(tiny_bundle, value):
    """NaN scores would otherwise be drawn as class 0 with p=nan over a map that depends on no class."""
    from cam_infer import Explainer
    x = np.zeros((3, *tiny_bundle.input_shape), np.float32)
    x[1, 0, 2, 3] = value
    explainer = Explainer(tiny_bundle, backend="onnxruntime")
    with pytest.raises(CamInferError, match="input images? 1 of the batch holds NaN or infinite values"):
        explainer.explain(x, "recipro")
    assert explainer.explain(x[[0, 2]], "recipro").scores.shape == (2,)


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


# --- a model file where a bundle folder is taken ------------------------------------------------------------


@pytest.fixture
def model_cache(tmp_path, monkeypatch):
    """An empty bundle cache of its own, and a count of the splits made into it."""
    from cam_infer.bundle import model_cache
    monkeypatch.setenv("CAM_INFER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(model_cache, "_resolved", {})
    splits = []
    real_split = model_cache._split
    monkeypatch.setattr(model_cache, "_split", lambda *a: (splits.append(a[0]), real_split(*a)))
    return splits


def test_a_model_file_explains_as_its_split_bundle(tmp_path, tiny_onnx_path, model_cache):
    import numpy as np

    from cam_infer import Explainer, split_onnx
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    from_file = Explainer(tiny_onnx_path).explain(x, "recipro")
    explicit = Explainer(split_onnx(tiny_onnx_path, out=tmp_path / "explicit")).explain(x, "recipro")
    np.testing.assert_array_equal(from_file.saliency, explicit.saliency)
    np.testing.assert_array_equal(from_file.targets, explicit.targets)
    assert len(model_cache) == 1


def test_the_split_is_cached_by_content(tmp_path, tiny_onnx_path, model_cache):
    import onnx
    from onnx import numpy_helper

    from cam_infer.bundle import model_cache as cache
    first = Bundle.load(tiny_onnx_path).path
    assert first.parent == tmp_path / "cache" / "bundles" and (first / "bundle.json").is_file()
    cache._resolved.clear()                                        # a new process: hashed again, not split
    assert Bundle.load(tiny_onnx_path).path == first and len(model_cache) == 1
    model = onnx.load(tiny_onnx_path)                              # the same file name, other weights
    weights = model.graph.initializer[0]
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) * 2, weights.name))
    onnx.save(model, tiny_onnx_path)
    changed = Bundle.load(tiny_onnx_path).path
    assert changed != first and len(model_cache) == 2 and (first / "bundle.json").is_file()


def test_a_split_that_lost_the_race_is_dropped(tiny_onnx_path, model_cache):
    """Two first uses at once: each splits into its own temporary folder; the second rename finds the
    bundle in place and keeps it, and no temporary folder is left behind."""
    from cam_infer.bundle import model_cache as cache
    folder = Bundle.load(tiny_onnx_path).path
    before = (folder / "bundle.json").stat().st_mtime_ns
    cache._split_into(tiny_onnx_path, folder, cache._split_options(tiny_onnx_path))
    assert len(model_cache) == 2 and (folder / "bundle.json").stat().st_mtime_ns == before
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]


def test_the_cli_takes_a_model_file_and_says_so_on_one_line(tmp_path, tiny_onnx_path):
    import os

    from helpers import assert_one_line_error, run_cli
    env = dict(os.environ, CAM_INFER_CACHE_DIR=str(tmp_path / "cache"))
    first = run_cli("info", tiny_onnx_path, env=env)
    folder = tmp_path / "cache" / "bundles"
    (name,) = [p.name for p in folder.iterdir()]
    assert first.returncode == 0 and first.stderr == f"split tiny.onnx at 'features' into {folder / name}\n"
    assert f"bundle       {folder / name}" in first.stdout
    again = run_cli("info", tiny_onnx_path, env=env)
    assert again.stderr == f"split tiny.onnx at 'features' into {folder / name} (cached)\n"
    (tmp_path / "notes.txt").write_text("not a model")
    assert_one_line_error(run_cli("info", tmp_path / "notes.txt", env=env), "is a file, neither a bundle folder")


def test_serve_takes_a_model_file_and_still_a_fused_one(tmp_path, tiny_onnx_path, model_cache):
    import onnx

    from cam_infer.fuse import fuse
    from cam_infer.serve.loading import load_served
    from cam_infer.serve.models import ServedBundle, ServedFused
    served = load_served(tiny_onnx_path, None, "auto", "CPU", 1)
    assert isinstance(served, ServedBundle) and len(model_cache) == 1
    fused = tmp_path / "fused.onnx"
    onnx.save(fuse(tiny_onnx_path, "eigen"), fused)
    assert isinstance(load_served(fused, None, "auto", "CPU", 1), ServedFused) and len(model_cache) == 1
    with pytest.raises(CamInferError, match="is a fused model"):
        Bundle.load(fused)


def test_a_segmenter_file_explains_as_its_split_segmentation_bundle(tmp_path, model_cache):
    """Our segmenter's ONNX file given where a bundle is taken: split once as a segmenter (not refused as a
    classifier), the same maps as the bundle split explicitly."""
    import numpy as np

    from cam_infer import Explainer
    from cam_infer.bundle.segmentation import split_segmenter
    from conftest import ROOT
    model = ROOT / "cam_infer" / "data" / "shapes_segmenter" / "shapes_segmenter.onnx"
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    explainer = Explainer(model)
    from_file = explainer.explain([image], "activation", target="all")
    explicit = Explainer(split_segmenter(model, out=tmp_path / "explicit")).explain([image], "activation", target="all")
    assert explainer.bundle.task == "segmentation" and len(model_cache) == 1
    np.testing.assert_array_equal(from_file.items[0][0].saliency, explicit.items[0][0].saliency)
