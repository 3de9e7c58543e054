"""What a model records of itself (preprocessing, class names) read from an OpenVINO IR as from its ONNX file.

Converting an ONNX file (``ovc``, ``openvino.convert_model`` then ``save_model``) keeps its ``metadata_props`` in the
IR's rt_info, section ``framework``; the package writes its own record in section ``cam_infer``. The split of an IR
reads both through the readers of the ONNX split: our segmenter converted to IR explains as its ONNX file, with no
preprocessing given (before, it got ImageNet's mean/std instead of its x/255, and wrong maps without a word).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from cam_infer import Explainer
from cam_infer.bundle import Bundle, split_model, split_onnx
from cam_infer.bundle.segmentation import split_segmenter
from cam_infer.errors import CamInferError
from cam_infer.fuse import plain_model, save
from cam_infer.images import Preprocessing
from cam_infer.tools.synthetic import SPLITS, scene

from helpers import assert_one_line_error, run_cli

ROOT = Path(__file__).resolve().parent.parent
SEGMENTER = ROOT / "cam_infer" / "data" / "shapes_segmenter" / "shapes_segmenter.onnx"
SHAPES = ROOT / "cam_infer" / "data" / "shapes"
SEGMENTER_LABELS = ["background", "circle", "square", "triangle", "cross"]


def converted(source: Path, xml: Path, rt_info: dict | None = None) -> Path:
    """`source` (.onnx) as the IR a deployment converts it to (float32 weights); `rt_info`: {(section, key): text}
    set on the model before it is saved."""
    import openvino as ov
    model = ov.convert_model(str(source))
    for (section, key), text in (rt_info or {}).items():
        model.set_rt_info(text, [section, key])
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


def without_metadata(source: Path, out: Path) -> Path:
    """`source` with no metadata_props (a model that records nothing of itself)."""
    model = onnx.load(str(source))
    del model.metadata_props[:]
    onnx.save(model, str(out))
    return out


def shapes_scenes(count: int) -> list[np.ndarray]:
    return [scene(SPLITS[k % len(SPLITS)], 1, k).image for k in range(count)]


def assert_same_segmenter_maps(ir: Bundle, reference: Bundle) -> None:
    """Every class's map of a few scenes, each bundle preprocessing the images itself, on OpenVINO f32."""
    for method in ("activation", "recipro"):
        for image in shapes_scenes(2):
            ours, theirs = (Explainer(b, backend="openvino", precision="f32").explain([image], method, target="all")
                            .items[0] for b in (ir, reference))
            assert [s.class_id for s in ours] == [s.class_id for s in theirs] and ours, method
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(a.raw, b.raw, rtol=1e-4, atol=1e-5 * np.abs(b.raw).max(), err_msg=method)


def test_our_segmenter_converted_to_ir_explains_as_its_onnx_file(tmp_path, monkeypatch):
    """Its x/255 and class names are read from the IR's rt_info (section framework, as conversion leaves them): the
    same manifest preprocessing and labels, and the same maps, as its ONNX file's bundle."""
    xml = converted(SEGMENTER, tmp_path / "segmenter.xml")
    reference = split_segmenter(SEGMENTER, out=tmp_path / "onnx")
    ir = split_model(xml, out=tmp_path / "ir")
    assert ir.graph_format == "openvino" and ir.task == "segmentation"
    assert ir.manifest["preprocessing"] == reference.manifest["preprocessing"]
    assert ir.preprocessing.scale == pytest.approx(1 / 255) and ir.preprocessing.mean == (0.0, 0.0, 0.0)
    assert ir.labels == reference.labels == SEGMENTER_LABELS
    assert_same_segmenter_maps(ir, reference)
    monkeypatch.setenv("CAM_INFER_CACHE_DIR", str(tmp_path / "cache"))      # the IR given where a bundle is taken
    assert Explainer(xml).bundle.manifest["preprocessing"] == reference.manifest["preprocessing"]


def test_preprocessing_given_for_an_ir_goes_over_what_it_records(tmp_path):
    xml = converted(SEGMENTER, tmp_path / "segmenter.xml")
    ir = split_model(xml, out=tmp_path / "ir", preprocessing={"scale": 1.0}, labels=list("abcde"))
    assert ir.preprocessing.scale == 1.0 and ir.preprocessing.crop == "none"    # the rest as recorded
    assert ir.labels == list("abcde")


def test_a_classifier_written_by_the_package_and_converted_to_ir_explains_as_its_onnx_file(tmp_path):
    """The shapes classifier's plain model (its bundle's graphs joined, as `plain_model` writes it) records the
    bundle's preprocessing and names; converted to IR, or written as IR by the package (the plain model of the IR
    bundle: section cam_infer), it splits with them."""
    shapes = Bundle.load(SHAPES)
    source = save(plain_model(shapes), tmp_path / "shapes.onnx")
    reference = split_onnx(source, out=tmp_path / "onnx")
    ir = split_model(converted(source, tmp_path / "shapes.xml"), out=tmp_path / "ir")
    for bundle in (reference, ir):
        assert bundle.preprocessing == shapes.preprocessing and bundle.labels == shapes.labels
    images = shapes_scenes(3)
    for method in ("activation", "recipro", "ablation"):
        ours = Explainer(ir, backend="openvino", precision="f32").explain(images, method)
        theirs = Explainer(reference, backend="openvino", precision="f32").explain(images, method)
        np.testing.assert_array_equal(ours.targets, theirs.targets)
        np.testing.assert_allclose(ours.maps, theirs.maps, rtol=1e-4, atol=1e-5 * np.abs(theirs.maps).max())
    again = split_model(save(plain_model(ir), tmp_path / "plain.xml"), out=tmp_path / "again")
    assert again.preprocessing == shapes.preprocessing and again.labels == shapes.labels


@pytest.mark.parametrize("section,key,text", [
    ("framework", "cam_infer.preprocessing", "{not json"),
    ("framework", "cam_infer.preprocessing", "[0.5, 0.25]"),
    ("cam_infer", "preprocessing", '{"scale": 0.5, "colour": "rgb"}'),
])
def test_an_ir_with_malformed_recorded_preprocessing_is_refused_in_one_line(tmp_path, section, key, text):
    xml = converted(SEGMENTER, tmp_path / "bad.xml", {(section, key): text})
    with pytest.raises(CamInferError, match="cam_infer.preprocessing record .the IR's rt_info. is not a JSON object"):
        split_model(xml, out=tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    assert_one_line_error(run_cli("split", xml, "--out", tmp_path / "cli"), "is not a JSON object of preprocessing")


@pytest.mark.parametrize("text,message", [('{"resize": "abc", "crop": "center"}', "the preprocessing cannot be read"),
                                          ('{"channels": 1}', "preprocessing gives 1 channels, the model takes 3")])
def test_an_ir_whose_recorded_preprocessing_does_not_fit_is_refused_in_one_line(tmp_path, text, message):
    """Fields of the wrong kind or for another input (before: a TypeError, or the runtime's error on the first
    image), refused as the ONNX file's."""
    xml = converted(SEGMENTER, tmp_path / "bad.xml", {("framework", "cam_infer.preprocessing"): text})
    bad = onnx.load(str(SEGMENTER))
    next(p for p in bad.metadata_props if p.key == "cam_infer.preprocessing").value = text
    for split in (lambda: split_model(xml, out=tmp_path / "ir"), lambda: split_segmenter(bad, out=tmp_path / "onnx")):
        with pytest.raises(CamInferError, match=message) as refused:
            split()
        assert "\n" not in str(refused.value)


def test_the_packages_own_record_goes_over_the_converted_one(tmp_path):
    xml = converted(SEGMENTER, tmp_path / "m.xml", {("cam_infer", "preprocessing"): '{"scale": 1.0}',
                                                   ("cam_infer", "labels"): '["a", "b", "c", "d", "e"]'})
    ir = split_model(xml, out=tmp_path / "ir")
    assert ir.preprocessing.scale == 1.0 and ir.labels == list("abcde")


def test_an_ir_that_records_nothing_splits_as_before(tmp_path):
    """No metadata: the defaults (ImageNet's mean and std for a float colour input), no class names, the same as
    its ONNX file's split."""
    bare = without_metadata(SEGMENTER, tmp_path / "bare.onnx")
    xml = converted(bare, tmp_path / "bare.xml")
    ir = split_model(xml, out=tmp_path / "ir")
    reference = split_segmenter(bare, out=tmp_path / "onnx")
    assert ir.manifest["preprocessing"] == reference.manifest["preprocessing"]
    assert ir.preprocessing == Preprocessing((128, 128), crop="none")
    assert ir.labels is None and reference.labels is None
