"""Pictures a person looks at: maps put back on the original image, Explanation.save/plot, several classes
per image, captions and colour bars, the demo's labelled grid."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import SHARED, needs_shared
from cam_infer import CamInferError, Explainer, Preprocessing
from cam_infer.postprocess import caption, overlay, overlay_picture, with_colour_bar


@pytest.mark.parametrize("shape", [(300, 400), (400, 300), (224, 224), (100, 500)])
def test_to_image_undoes_resize_and_crop(shape):
    """A map that is 1 on the model's whole view marks exactly the part of the original the crop kept; a
    map's pixel goes back where `geometry` took it from."""
    prep = Preprocessing((224, 224))
    h0, w0 = shape
    back, seen = prep.to_image(np.ones((224, 224), np.float32), shape)
    assert back.shape == seen.shape == shape
    # the crop keeps a centred square of side min(h0, w0)·224/256 of the original
    side = min(h0, w0) * 224 / 256
    rows, cols = np.nonzero(seen)
    assert abs((rows.max() - rows.min() + 1) - min(h0, side)) <= 2
    assert abs((cols.max() - cols.min() + 1) - min(w0, side)) <= 2
    assert abs((rows.min() + rows.max()) / 2 - (h0 - 1) / 2) <= 1.5
    assert abs((cols.min() + cols.max()) / 2 - (w0 - 1) / 2) <= 1.5
    assert np.all(back[~seen] == 0) and back[seen].min() > 0.99
    # a marker drawn on the original lands, through geometry, where to_image puts the map's peak
    image = np.zeros((h0, w0, 3), np.uint8)
    y, x = int(h0 * 0.45), int(w0 * 0.55)
    cv2.circle(image, (x, y), 3, (255, 255, 255), -1)
    view = prep.geometry(image)[..., 0].astype(np.float32)
    peak_back, _ = prep.to_image(view / view.max(), shape)
    py, px = np.unravel_index(np.argmax(peak_back), shape)
    assert abs(py - y) <= 3 and abs(px - x) <= 3


def test_to_image_without_crop_is_a_plain_resize():
    prep = Preprocessing((64, 96), crop="none")
    saliency = np.random.default_rng(0).random((64, 96)).astype(np.float32)
    back, seen = prep.to_image(saliency, (128, 192))
    assert seen.all()
    np.testing.assert_allclose(back, np.clip(cv2.resize(saliency, (192, 128), interpolation=cv2.INTER_LINEAR), 0, 1))
    with pytest.raises(CamInferError, match="64x96"):
        prep.to_image(saliency[:10], (128, 192))


def test_overlay_picture_captions_and_colour_bar():
    rgb = np.full((100, 150, 3), 90, np.uint8)
    saliency = np.zeros((100, 150), np.float32)
    plain = overlay(rgb, saliency)
    picture = overlay_picture(saliency, rgb, None, caption("recipro", "tabby", 281, 0.873))
    assert picture.shape[0] > 100 and picture.shape[1] > 150
    strip = picture[:picture.shape[0] - 100]
    assert (strip < 128).any() and (strip == 255).mean() > 0.5              # dark text on a white strip
    body = picture[-100:, :150]
    np.testing.assert_array_equal(body, plain)
    bar = with_colour_bar(plain)[:, 150 + 3]                                 # the bar's first column, top to bottom
    assert tuple(bar[0]) != tuple(bar[-1])
    jet = cv2.cvtColor(cv2.applyColorMap(np.array([[255], [0]], np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(bar[[0, -1]], jet[:, 0])                  # 1 at the top, 0 at the bottom
    assert caption("recipro", "tabby", 281, 0.873) == "recipro: tabby (281) p=0.87"
    assert caption("eigen", None, 3, 0.5, True) == "eigen: class 3 p=0.50 [constant map]"


def test_original_overlay_greys_what_the_model_did_not_see():
    prep = Preprocessing((64, 64))
    rgb = np.full((64, 160, 3), 200, np.uint8)                              # wide: the crop drops the sides
    picture = overlay_picture(np.ones((64, 64), np.float32), rgb, prep, None, bar=False)
    assert picture.shape == (64, 160, 3)
    _, seen = prep.to_image(np.ones((64, 64), np.float32), (64, 160))
    assert (picture[~seen] == picture[~seen][0]).all()                      # grey, no heat
    assert not (picture[seen] == picture[~seen][0]).all(axis=-1).any()


@pytest.fixture(scope="module")
def shapes_explainer():
    from cam_infer.demo import embedded_bundle_path
    return Explainer(embedded_bundle_path())


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory):
    from cam_infer.synthetic import scene
    folder = tmp_path_factory.mktemp("scenes")
    paths = []
    for i, split in enumerate(("large", "small")):
        image = cv2.copyMakeBorder(scene(split, 3, i).image, 0, 0, 40, 40, cv2.BORDER_CONSTANT, value=(30, 30, 30))
        cv2.imwrite(str(folder / f"{split}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths.append(folder / f"{split}.png")
    return paths


def test_several_classes_per_image_equal_one_class_at_a_time(shapes_explainer, scene_files):
    ex = shapes_explainer
    for method in ("recipro", "ablation", "cam"):
        top = ex.explain(scene_files, method, top_classes=2)
        assert top.saliency.shape == (2, 2, 128, 128) and top.targets.shape == (2, 2) and top.multi
        x = ex.preprocess(scene_files)
        scores = ex.backend.forward(x)
        np.testing.assert_array_equal(top.targets, np.argsort(-scores, axis=1)[:, :2])
        for j in range(2):
            single = ex.explain(x, method, target=top.targets[:, j])
            np.testing.assert_allclose(top.saliency[:, j], single.saliency, atol=1e-5)
            np.testing.assert_allclose(top.scores[:, j], single.scores, rtol=1e-5)
        given = ex.explain(scene_files, method, target=[[0, 3], ["square", 1]])
        np.testing.assert_array_equal(given.targets, [[0, 3], [ex.bundle.labels.index("square"), 1]])
    with pytest.raises(CamInferError, match="the same length"):
        ex.explain(scene_files, "recipro", target=[[0, 1], [2]])
    with pytest.raises(CamInferError, match="either target or top_classes"):
        ex.explain(scene_files, "eigen", target=1, top_classes=2)
    with pytest.raises(CamInferError, match="top_classes must be"):
        ex.explain(scene_files, "eigen", top_classes=9)


def test_save_writes_overlays_on_the_original_images_named_by_image_method_and_label(shapes_explainer, scene_files,
                                                                                       tmp_path):
    e = shapes_explainer.explain(scene_files, "recipro", top_classes=2)
    paths = e.save(tmp_path)
    labels = shapes_explainer.bundle.labels
    expected = {f"{p.stem}_recipro_{labels[c]}.png" for p, row in zip(scene_files, e.targets) for c in row}
    assert {p.name for p in paths} == expected and len(paths) == 4
    original = cv2.imread(str(scene_files[0]))
    written = cv2.cvtColor(cv2.imread(str(paths[0])), cv2.COLOR_BGR2RGB)
    assert written.shape[1] > original.shape[1] and written.shape[0] > original.shape[0]   # + caption, colour bar
    np.testing.assert_array_equal(written, e.overlay(0, 0))
    # the map over the model's view is the same map as over the original, where the model looked
    model_view = e.overlay(0, 0, on="model")
    assert model_view.shape[0] > 128
    with pytest.raises(CamInferError, match="no original image"):
        shapes_explainer.explain(shapes_explainer.preprocess(scene_files), "eigen").overlay(0)


def test_plot_draws_images_by_classes(shapes_explainer, scene_files, tmp_path):
    pytest.importorskip("matplotlib")
    e = shapes_explainer.explain(scene_files, "recipro", top_classes=3)
    fig = e.plot()
    assert len(fig.axes) == 6 and fig.axes[0].get_title() == scene_files[0].stem
    shown = fig.axes[4].get_images()[0].get_array()
    np.testing.assert_array_equal(np.asarray(shown), e.overlay(1, 1))
    fig.savefig(tmp_path / "plot.png")
    assert cv2.imread(str(tmp_path / "plot.png")) is not None


def test_demo_grid_panels_are_labelled(tmp_path):
    from cam_infer.demo import run_demo
    lines = []
    run_demo(tmp_path, report=lines.append)
    grid = cv2.imread(str(tmp_path / "large.png"))
    assert grid.shape[0] > 2 * 128 + 18              # legend strip + panel titles + the scaled scene
    assert "red = most evidence" in "\n".join(lines) and "each titled with the class" in "\n".join(lines)


@needs_shared
def test_real_photo_overlay_on_the_original(tmp_path):
    """A real photo through a real model: the saved overlay is the full photo, not the 224 crop."""
    from cam_infer import split_onnx
    bundle = split_onnx(SHARED / "models" / "mobilenetv2-fp32-dequant.onnx", layer="auto", out=tmp_path / "b")
    photo = SHARED / "images" / "parrot.jpg"
    e = Explainer(bundle).explain([photo], "recipro")
    (path,) = e.save(tmp_path / "out")
    original = cv2.imread(str(photo))
    written = cv2.imread(str(path))
    assert written.shape[1] > original.shape[1] and written.shape[0] > original.shape[0]
    assert int(e.targets[0]) == 88
